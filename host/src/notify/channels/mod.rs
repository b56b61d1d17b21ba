//! The channels: how one rendered message reaches people.

pub mod email;
pub mod log;
pub mod plugin;
pub mod system;
pub mod webhook;

/// A delivery's result: a short receipt (`HTTP 200`, `SMTP 250`) and the attempts it took, or
/// why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: Result<String, String>,
    pub attempts: u32,
}

impl Outcome {
    pub fn ok(receipt: impl Into<String>, attempts: u32) -> Outcome {
        Outcome {
            result: Ok(receipt.into()),
            attempts,
        }
    }

    pub fn failed(error: impl Into<String>, attempts: u32) -> Outcome {
        Outcome {
            result: Err(error.into()),
            attempts,
        }
    }
}

/// An error and its causes on one line (without URLs, which may hold secrets).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    msg
}
