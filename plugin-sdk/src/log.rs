//! Structured logging into the host's log (WIT interface `cnp:plugin/log`).
//!
//! Records are tagged with the plugin's name by the host, which also bounds their size and
//! rate (excess is dropped with a note). Each function takes a message and key/value fields:
//!
//! ```ignore
//! use cnp_plugin_sdk::log;
//!
//! log::info("retrying", &[("attempt", &failed.attempt), ("delay_ms", &delay)]);
//! log::warn("no reset time in the usage-limit message", &[]);
//! ```

use crate::bindings::cnp::plugin::log as wit;
use std::fmt::Display;

/// Severity of a log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed diagnostics.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the plugin handled.
    Warn,
    /// A failure.
    Error,
}

impl From<Level> for wit::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => wit::Level::Trace,
            Level::Debug => wit::Level::Debug,
            Level::Info => wit::Level::Info,
            Level::Warn => wit::Level::Warn,
            Level::Error => wit::Level::Error,
        }
    }
}

/// Writes one record at `level` with key/value `fields` (values are formatted with `Display`).
pub fn log(level: Level, message: impl AsRef<str>, fields: &[(&str, &dyn Display)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.to_string()))
        .collect();
    wit::log(level.into(), message.as_ref(), &fields);
}

/// Writes a [`Level::Trace`] record.
pub fn trace(message: impl AsRef<str>, fields: &[(&str, &dyn Display)]) {
    log(Level::Trace, message, fields);
}

/// Writes a [`Level::Debug`] record.
pub fn debug(message: impl AsRef<str>, fields: &[(&str, &dyn Display)]) {
    log(Level::Debug, message, fields);
}

/// Writes a [`Level::Info`] record.
pub fn info(message: impl AsRef<str>, fields: &[(&str, &dyn Display)]) {
    log(Level::Info, message, fields);
}

/// Writes a [`Level::Warn`] record.
pub fn warn(message: impl AsRef<str>, fields: &[(&str, &dyn Display)]) {
    log(Level::Warn, message, fields);
}

/// Writes a [`Level::Error`] record.
pub fn error(message: impl AsRef<str>, fields: &[(&str, &dyn Display)]) {
    log(Level::Error, message, fields);
}
