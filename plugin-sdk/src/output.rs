//! Lines for the run's log (WIT interface `cnp:plugin/output@0.3.0`; executors only).
//!
//! What an executor writes here is stored with the run, shown live in the dashboard and sent to
//! WebSocket clients, exactly like the lines of a CLI run. Text with several lines is split on
//! `\n` (a trailing newline does not add an empty line; a `\r` before it is dropped). The host
//! cuts lines longer than its line limit and drops lines past the run's output limit.
//!
//! ```ignore
//! use cnp_plugin_sdk::output;
//!
//! output::stderr(format!("calling {url}"));
//! output::stdout(&answer); // one log line per line of the answer
//! ```

/// Which of the run's streams a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// What the work produced (the model's text, a service's answer).
    Stdout,
    /// Diagnostics.
    Stderr,
}

/// Writes `text` to the run's stdout, one log line per line.
pub fn stdout(text: impl AsRef<str>) {
    emit(Channel::Stdout, text.as_ref());
}

/// Writes `text` to the run's stderr (diagnostics), one log line per line.
pub fn stderr(text: impl AsRef<str>) {
    emit(Channel::Stderr, text.as_ref());
}

/// Writes `text` to `channel`, one log line per line.
pub fn emit(channel: Channel, text: &str) {
    for line in lines(text) {
        emit_line(channel, line);
    }
}

/// `text`'s lines: split on `\n`, without a trailing empty one and without `\r` endings. Empty
/// text is one empty line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    body.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
}

#[cfg(not(doc))]
fn emit_line(channel: Channel, line: &str) {
    use crate::bindings::cnp::plugin::output as wit;
    let channel = match channel {
        Channel::Stdout => wit::Channel::Stdout,
        Channel::Stderr => wit::Channel::Stderr,
    };
    wit::emit_line(channel, line);
}

#[cfg(doc)]
fn emit_line(_channel: Channel, _line: &str) {}

#[cfg(test)]
mod tests {
    use super::lines;

    #[test]
    fn text_splits_into_lines() {
        let split = |t| lines(t).collect::<Vec<_>>();
        assert_eq!(split("a\nb\r\nc\n"), ["a", "b", "c"]);
        assert_eq!(split("a\n\nb"), ["a", "", "b"]);
        assert_eq!(split(""), [""]);
        assert_eq!(split("\n"), [""]);
    }
}
