//! Which Claude session a run uses when its job says `session: continue_job`: the session of
//! the job's latest successful run while it is younger than the session timeout, else a new
//! one — and, when the CLI no longer knows the session, a new one after all (once).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Engine;
use crate::model::{Job, Outcome, SessionMode};

/// What a run does about its session.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SessionPlan {
    /// The job does not ask for its own session (`session: new`, or it names one itself).
    AsConfigured,
    /// A new conversation, and why.
    Fresh(String),
    /// Resume `session_id`, and why.
    Resume { session_id: String, why: String },
}

/// Decides the session of a run of `job` starting at `now`.
pub(super) async fn plan(engine: &Engine, job: &Job, now: DateTime<Utc>) -> SessionPlan {
    let o = &job.execution_options;
    if o.session != SessionMode::ContinueJob {
        return SessionPlan::AsConfigured;
    }
    let timeout = o
        .session_timeout
        .map(Duration::from_secs)
        .unwrap_or(engine.shared.settings.session_timeout);
    let last = match engine.shared.store.last_session(job.id.clone()).await {
        Ok(l) => l,
        Err(e) => {
            return SessionPlan::Fresh(format!(
                "new session: cannot read the job's last session ({e})"
            ))
        }
    };
    let Some((execution_id, session_id, ended)) = last else {
        return SessionPlan::Fresh(
            "new session: the job has no successful run with a session yet".into(),
        );
    };
    let age = (now - ended).to_std().unwrap_or_default();
    let show =
        |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    if age > timeout {
        SessionPlan::Fresh(format!(
            "new session: the last one ({session_id}, run {execution_id}) ended {} ago, more than session_timeout {}",
            show(age),
            show(timeout)
        ))
    } else {
        SessionPlan::Resume {
            why: format!(
                "resuming session {session_id} of run {execution_id} (ended {} ago, session_timeout {})",
                show(age),
                show(timeout)
            ),
            session_id,
        }
    }
}

/// Whether the CLI refused to resume because it does not know the session (expired, or
/// another machine's).
pub(super) fn unknown_session(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::InvalidArguments { message }
        if message.to_ascii_lowercase().contains("no conversation found with session id"))
}
