//! Host bindings for `wit/` (the `cnp:plugin/host` world: every plugin kind's exports at once)
//! and for `wit/v0.2` (the 0.2 `condition-hook` world: a condition hook that sees its workflow
//! upstreams). 0.2 uses 0.1's `types`, `log` and `clock`, so both share the same Rust types and
//! host imports.

#![allow(missing_docs, clippy::all)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "cnp:plugin/host",
    exports: { default: async },
});

// `self::`: under `rustdoc --test` the crate itself (`cnp`) is also an extern name.
pub use self::cnp::plugin::{clock, log, types};
pub use self::exports::cnp::plugin::{condition, notify, retry};

/// `cnp:plugin@0.2.0`'s condition hook. Resolved together with `../wit` (0.1 and WASI), so the
/// generated modules carry their package version (`plugin0_2_0`).
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: ["../wit", "../wit/v0.2"],
        world: "cnp:plugin/condition-hook@0.2.0",
        exports: { default: async },
        with: {
            "cnp:plugin/types@0.1.0": super::types,
            "cnp:plugin/log@0.1.0": super::log,
            "cnp:plugin/clock@0.1.0": super::clock,
        },
    });
}

/// The 0.2 condition interface (`cnp:plugin/condition@0.2.0`).
pub use self::v0_2::exports::cnp::plugin0_2_0::condition as condition_0_2;

/// `cnp:plugin@0.3.0`'s executor: does a job's work instead of the Claude CLI. Resolved
/// together with 0.1 and 0.2; it uses 0.1's `types`, `log` and `clock`.
pub mod v0_3 {
    wasmtime::component::bindgen!({
        path: ["../wit", "../wit/v0.2", "../wit/v0.3"],
        world: "cnp:plugin/executor@0.3.0",
        exports: { default: async },
        with: {
            "cnp:plugin/types@0.1.0": super::types,
            "cnp:plugin/log@0.1.0": super::log,
            "cnp:plugin/clock@0.1.0": super::clock,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        },
    });
}

/// The executor interface (`cnp:plugin/execute@0.3.0`) and the host's `output` import.
pub use self::v0_3::cnp::plugin0_3_0::output;
pub use self::v0_3::exports::cnp::plugin0_3_0::execute;

/// The WIT package version this host implements; components must match its major (for 0.x,
/// its minor) version.
pub const WIT_PACKAGE: &str = "cnp:plugin";
pub const WIT_VERSION: (u64, u64, u64) = (0, 1, 0);
/// [`WIT_VERSION`] as text.
pub const WIT_VERSION_TEXT: &str = "0.1.0";
/// The versions a component's exported interface may carry, per interface: retry and notify
/// are 0.1 only (0.2 and 0.3 include 0.1's worlds unchanged), condition 0.1 or 0.2, execute 0.3.
pub const CONDITION_VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];
/// The version of the executor interface (`cnp:plugin/execute@0.3.0`).
pub const EXECUTE_VERSION: &str = "0.3.0";
