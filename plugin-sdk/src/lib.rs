//! Write [cnp](https://example.invalid/cnp) plugins in Rust: retry strategies, notification
//! channels, condition hooks and executors, compiled to WebAssembly components (`wasm32-wasip2`) that the
//! cnp scheduler loads from its plugins folder.
//!
//! A plugin is a `cdylib` crate that depends on this crate alone, with exactly **one** of its
//! features enabled; the feature picks the WIT world (`cnp:plugin@0.1.0`, or `@0.3.0` for an
//! executor) the component targets and the trait to implement:
//!
//! | feature          | trait               | exported interface     |
//! |------------------|---------------------|------------------------|
//! | `retry-strategy` | [`RetryStrategy`]   | `cnp:plugin/retry`     |
//! | `notifier`       | [`Notifier`]        | `cnp:plugin/notify`    |
//! | `condition-hook` | [`ConditionHook`]   | `cnp:plugin/condition` |
//! | `executor`       | [`Executor`]        | `cnp:plugin/execute@0.3.0` |
//!
//! Implement the trait on a unit struct and register it with [`register_plugin!`]:
//!
//! ```ignore
//! use cnp_plugin_sdk::{ExecutionInfo, JobInfo, PluginError, RetryDecision, RetryStrategy};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct Config { delay_ms: u64 }
//!
//! struct FixedDelay;
//!
//! impl RetryStrategy for FixedDelay {
//!     type Config = Config;
//!
//!     fn next_retry(config: Config, _job: JobInfo, _failed: ExecutionInfo)
//!         -> Result<RetryDecision, PluginError> {
//!         Ok(RetryDecision::after_ms(config.delay_ms.max(1_000)))
//!     }
//! }
//!
//! cnp_plugin_sdk::register_plugin!(FixedDelay);
//! ```
//!
//! # What the SDK does for you
//!
//! * **Configuration.** The host passes the plugin's configuration as JSON text. The SDK parses
//!   it into your trait's `Config` type (see [`config::parse`]): an empty string, `null` or `{}`
//!   gives `Config::default()`, and a parse error becomes [`PluginError::InvalidConfig`] naming
//!   the field and position. The `validate-config` export is that parse followed by your trait's
//!   `validate`.
//! * **Host services.** [`log`] writes structured records into the host's log, [`clock`] reads
//!   the scheduler's clock and converts instants to civil time, (with the `notifier` and
//!   `executor` features) `http` makes blocking outgoing HTTP requests, and (with `executor`)
//!   `output` writes lines to the run's live log.
//! * **The sandbox.** Each call runs on a fresh instance: nothing survives between calls. There is
//!   no filesystem, no environment, no sockets; HTTP (notifiers, executors) reaches only the hosts its
//!   sidecar file grants. Calls have time and memory limits; a panic, a trap, a timeout or an
//!   error makes cnp fall back to its built-in behaviour and record why.
//!
//! # Features
//!
//! Enabling none or more than one world feature is a compile error. Cargo unifies a
//! dependency's features across the packages of one build, so a workspace holding plugins of
//! different kinds builds them one at a time (`cargo build -p <plugin>`).
//!
//! The guide `docs/plugin-authoring.md` in the cnp repository walks through building, testing
//! and installing a plugin.
#![deny(missing_docs)]

// Lets the generated bindings and the macros name this crate the same way inside and outside it.
extern crate self as cnp_plugin_sdk;

#[cfg(all(not(doc), cnp_world_conflict))]
compile_error!(
    "cnp-plugin-sdk: enable exactly ONE of the features `retry-strategy`, `notifier`, \
     `condition-hook`, `executor` (a plugin targets one world). If this is a workspace of several plugins, \
     cargo has unified their features: build each plugin on its own with `cargo build -p <name>`."
);

#[cfg(all(not(doc), cnp_world_none))]
compile_error!(
    "cnp-plugin-sdk: enable one of the features `retry-strategy`, `notifier`, \
     `condition-hook` or `executor`, e.g. `cnp-plugin-sdk = { path = \"...\", features = [\"notifier\"] }`."
);

#[doc(hidden)]
pub mod bindings;
pub mod config;
mod types;

#[cfg(any(doc, cnp_one_world))]
pub mod clock;
#[cfg(any(doc, cnp_one_world))]
pub mod log;

#[cfg(any(doc, cnp_world = "condition-hook"))]
mod condition;
#[cfg(any(doc, cnp_world = "executor"))]
mod executor;
#[cfg(any(doc, cnp_world = "notifier", cnp_world = "executor"))]
pub mod http;
#[cfg(any(doc, cnp_world = "notifier"))]
mod notify;
#[cfg(any(doc, cnp_world = "executor"))]
pub mod output;
#[cfg(any(doc, cnp_world = "retry-strategy"))]
mod retry;

#[doc(hidden)]
pub mod __private;
mod macros;

pub use types::{ExecutionInfo, JobInfo, LocalTime, OutcomeKind, PluginError, Timestamp};

#[cfg(any(doc, cnp_world = "condition-hook"))]
pub use condition::{ConditionHook, RunContext, Trigger, Verdict};
#[cfg(any(doc, cnp_wit_0_2))]
pub use condition::{RunStatus, UpstreamRun};
#[cfg(any(doc, cnp_world = "executor"))]
pub use executor::{Executor, Outcome, RunRequest, RunResult, TokenPrices, TokenUsage};
#[cfg(any(doc, cnp_world = "notifier"))]
pub use notify::{Event, EventKind, Notifier};
#[cfg(any(doc, cnp_world = "retry-strategy"))]
pub use retry::{RetryDecision, RetryStrategy};

/// `serde_json`, re-exported so a plugin can build JSON (`cnp_plugin_sdk::serde_json::json!`)
/// without depending on it.
pub use serde_json;
