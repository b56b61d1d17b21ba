//! The host's clock (WIT interface `cnp:plugin/clock`).
//!
//! It is the scheduler's clock, so a plugin sees the same "now" as the engine, including in
//! tests that control time. Prefer it to `std::time::SystemTime`.

use crate::bindings::cnp::plugin::clock as wit;
use crate::PluginError;

pub use crate::types::{LocalTime, Timestamp};

/// The current time, in milliseconds since the Unix epoch.
pub fn now() -> Timestamp {
    wit::now()
}

/// The civil time of instant `at` in the IANA time zone `zone` (for example
/// `America/New_York`).
///
/// An unknown zone is a [`PluginError::Failed`] whose message names the zone; map it to
/// [`PluginError::InvalidConfig`] when the zone came from your configuration.
pub fn to_local(at: Timestamp, zone: &str) -> Result<LocalTime, PluginError> {
    wit::to_local(at, zone)
        .map(LocalTime::from)
        .map_err(|message| PluginError::Failed(format!("time zone `{zone}`: {message}")))
}
