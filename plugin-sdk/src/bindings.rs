//! The bindings `wit-bindgen` generates from `../wit` for the world the enabled feature selects.
//! Nothing here is public API: the crate converts to and from its own types, and
//! `register_plugin!` reaches the export glue through it (hence `pub`, hidden).
//!
//! Every world generates the shared interfaces at the same paths (`cnp::plugin::types`, `log`,
//! `clock`), so the code that converts them is written once. Rustdoc sees a world that includes
//! all three, so the documentation shows every kind.
#![allow(missing_docs, clippy::all)]

#[cfg(all(not(doc), cnp_world = "retry-strategy"))]
wit_bindgen::generate!({
    world: "cnp:plugin/retry-strategy@0.1.0",
    path: "../wit",
    generate_all,
    pub_export_macro: true,
    export_macro_name: "__cnp_export_retry_strategy",
    default_bindings_module: "::cnp_plugin_sdk::bindings",
    runtime_path: "::cnp_plugin_sdk::__private::wit_bindgen::rt",
});

#[cfg(all(not(doc), cnp_world = "notifier"))]
wit_bindgen::generate!({
    world: "cnp:plugin/notifier@0.1.0",
    path: "../wit",
    generate_all,
    pub_export_macro: true,
    export_macro_name: "__cnp_export_notifier",
    default_bindings_module: "::cnp_plugin_sdk::bindings",
    runtime_path: "::cnp_plugin_sdk::__private::wit_bindgen::rt",
});

#[cfg(all(not(doc), cnp_world = "condition-hook", not(cnp_wit_0_2)))]
wit_bindgen::generate!({
    world: "cnp:plugin/condition-hook@0.1.0",
    path: "../wit",
    generate_all,
    pub_export_macro: true,
    export_macro_name: "__cnp_export_condition_hook",
    default_bindings_module: "::cnp_plugin_sdk::bindings",
    runtime_path: "::cnp_plugin_sdk::__private::wit_bindgen::rt",
});

/// `cnp:plugin@0.2.0`'s condition hook. Resolved together with 0.1 (whose `types`, `log` and
/// `clock` it uses), so the generated modules carry their package version; the aliases below
/// put them at the paths the rest of the crate uses.
#[cfg(all(not(doc), cnp_world = "condition-hook", cnp_wit_0_2))]
pub mod v0_2 {
    wit_bindgen::generate!({
        world: "cnp:plugin/condition-hook@0.2.0",
        path: ["../wit", "../wit/v0.2"],
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__cnp_export_condition_hook",
        default_bindings_module: "::cnp_plugin_sdk::bindings::v0_2",
        runtime_path: "::cnp_plugin_sdk::__private::wit_bindgen::rt",
    });
}

#[cfg(all(not(doc), cnp_world = "condition-hook", cnp_wit_0_2))]
pub mod cnp {
    pub mod plugin {
        pub use crate::bindings::v0_2::cnp::plugin0_1_0::{clock, log, types};
    }
}

#[cfg(all(not(doc), cnp_world = "condition-hook", cnp_wit_0_2))]
pub mod exports {
    pub mod cnp {
        pub mod plugin {
            pub use crate::bindings::v0_2::exports::cnp::plugin0_2_0::condition;
        }
    }
}

/// `cnp:plugin@0.3.0`'s executor. Resolved together with 0.1 (its `types`, `log`, `clock`) and
/// 0.2 (which 0.3's other worlds include); as for 0.2's condition hook, the version-suffixed
/// modules are aliased to the paths the rest of the crate uses, and the 0.3 interfaces get
/// unsuffixed paths too (`cnp::plugin::output`, `exports::cnp::plugin::execute`).
#[cfg(all(not(doc), cnp_world = "executor"))]
pub mod v0_3 {
    wit_bindgen::generate!({
        world: "cnp:plugin/executor@0.3.0",
        path: ["../wit", "../wit/v0.2", "../wit/v0.3"],
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__cnp_export_executor",
        default_bindings_module: "::cnp_plugin_sdk::bindings::v0_3",
        runtime_path: "::cnp_plugin_sdk::__private::wit_bindgen::rt",
    });
}

#[cfg(all(not(doc), cnp_world = "executor"))]
pub mod cnp {
    pub mod plugin {
        pub use crate::bindings::v0_3::cnp::plugin0_1_0::{clock, log, types};
        pub use crate::bindings::v0_3::cnp::plugin0_3_0::output;
    }
}

#[cfg(all(not(doc), cnp_world = "executor"))]
pub use v0_3::wasi;

#[cfg(all(not(doc), cnp_world = "executor"))]
pub mod exports {
    pub mod cnp {
        pub mod plugin {
            pub use crate::bindings::v0_3::exports::cnp::plugin0_3_0::execute;
        }
    }
}

#[cfg(doc)]
wit_bindgen::generate!({
    inline: "
        package cnp:sdk-docs;
        world all {
            include cnp:plugin/retry-strategy@0.1.0;
            include cnp:plugin/notifier@0.1.0;
            include cnp:plugin/condition-hook@0.1.0;
        }
    ",
    world: "cnp:sdk-docs/all",
    path: "../wit",
    generate_all,
    runtime_path: "::cnp_plugin_sdk::__private::wit_bindgen::rt",
});
