//! `type: log`: the message as a line of cnp's own log (tracing target `cnp::notify`).

use super::Outcome;

/// Logs `text` (failures as warnings).
pub fn deliver(event: &str, job: Option<&str>, text: &str, failure: bool) -> Outcome {
    let job = job.unwrap_or("-");
    if failure {
        tracing::warn!(target: "cnp::notify", event, job, "{text}");
    } else {
        tracing::info!(target: "cnp::notify", event, job, "{text}");
    }
    Outcome::ok("logged", 1)
}
