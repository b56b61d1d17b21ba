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

#[cfg(all(not(doc), cnp_world = "condition-hook"))]
wit_bindgen::generate!({
    world: "cnp:plugin/condition-hook@0.1.0",
    path: "../wit",
    generate_all,
    pub_export_macro: true,
    export_macro_name: "__cnp_export_condition_hook",
    default_bindings_module: "::cnp_plugin_sdk::bindings",
    runtime_path: "::cnp_plugin_sdk::__private::wit_bindgen::rt",
});

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
