//! cnp — runs Claude Code CLI jobs on schedules, unattended.
//!
//! The layers, top to bottom (see ARCHITECTURE.md):
//! - [`cli`]: the `cnp` command line (`cnp serve` runs the service).
//! - [`api`]: the admin HTTP API (REST + WebSocket) the CLI talks to.
//! - [`service`]: wires config, store, manifests and the engine together; graceful shutdown.
//! - [`engine`]: the heap timer, misfire handling, the priority dispatch queue and run lifecycle.
//! - [`executor`]: runs the Claude CLI as a child process and classifies what happened.
//! - [`schedule`]: cron / interval / one-shot arithmetic in IANA time zones.
//! - [`store`]: SQLite persistence (WAL, migrations, a single batching writer).
//! - [`model`], [`config`], [`manifest`]: the shapes users write and read; [`clock`]: the
//!   wall clock every layer reads (injectable for tests), below the engine; [`telemetry`]: the
//!   OpenTelemetry traces of runs (off unless `[telemetry] otlp_endpoint`).

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod engine;
pub mod events;
pub mod executor;
pub mod job_template;
pub mod manifest;
pub mod model;
pub mod notify;
pub mod plugins;
pub mod redact;
pub mod schedule;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod workflow;
