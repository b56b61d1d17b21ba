//! Wall-clock time, injectable for tests.

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// Where the engine reads "now". Schedules are wall-clock (UTC instants); sleeping uses tokio's
/// monotonic timer, so every due instant is converted at the moment the timer goes to sleep.
#[derive(Debug, Clone)]
pub enum Clock {
    /// The system clock.
    System,
    /// Wall time that advances with tokio's clock from a fixed start: with
    /// `tokio::time::pause()` tests move through days of schedule in microseconds, and every
    /// sleep and "now" stay consistent.
    Tokio {
        base_utc: DateTime<Utc>,
        base: Instant,
    },
}

impl Clock {
    /// A clock that reads `start` now and then follows tokio's (possibly paused) time.
    pub fn tokio_from(start: DateTime<Utc>) -> Clock {
        Clock::Tokio {
            base_utc: start,
            base: Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { base_utc, base } => {
                let elapsed = Instant::now().saturating_duration_since(*base);
                *base_utc + chrono::Duration::from_std(elapsed).unwrap_or_default()
            }
        }
    }

    /// The tokio instant at which the wall clock will read `t` (now, if `t` is past).
    pub fn instant_at(&self, t: DateTime<Utc>) -> Instant {
        let wait = (t - self.now()).to_std().unwrap_or_default();
        Instant::now() + wait
    }
}
