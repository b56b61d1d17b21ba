//! Host bindings for `wit/` (the `cnp:plugin/host` world: every plugin kind's exports at once).

#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "cnp:plugin/host",
    exports: { default: async },
});

// `self::`: under `rustdoc --test` the crate itself (`cnp`) is also an extern name.
pub use self::cnp::plugin::{clock, log, types};
pub use self::exports::cnp::plugin::{condition, notify, retry};

/// The WIT package version this host implements; components must match its major (for 0.x,
/// its minor) version.
pub const WIT_PACKAGE: &str = "cnp:plugin";
pub const WIT_VERSION: (u64, u64, u64) = (0, 1, 0);
