//! `register_plugin!`, and the per-world export macro it expands to.

/// Registers a plugin type: exports the WIT world of the enabled feature, implemented by
/// `$plugin`'s trait impl. Use it once per plugin crate, at the top level.
///
/// | feature          | `$plugin` must implement                  | world            |
/// |------------------|-------------------------------------------|------------------|
/// | `retry-strategy` | [`RetryStrategy`](crate::RetryStrategy)   | `retry-strategy` |
/// | `notifier`       | [`Notifier`](crate::Notifier)             | `notifier`       |
/// | `condition-hook` | [`ConditionHook`](crate::ConditionHook)   | `condition-hook` |
/// | `executor`       | [`Executor`](crate::Executor)             | `executor` (0.3) |
///
/// ```ignore
/// struct BusinessHours;
/// impl cnp_plugin_sdk::ConditionHook for BusinessHours { /* ... */ }
/// cnp_plugin_sdk::register_plugin!(BusinessHours);
/// ```
#[macro_export]
macro_rules! register_plugin {
    ($plugin:ty $(,)?) => {
        const _: () = {
            $crate::__private::assert_plugin::<$plugin>();
            type CnpPluginExport = $crate::__private::Export<$plugin>;
            $crate::__cnp_export_world!(CnpPluginExport);
        };
    };
}

#[cfg(all(not(doc), cnp_world = "retry-strategy"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cnp_export_world {
    ($export:ident) => {
        $crate::bindings::__cnp_export_retry_strategy!($export with_types_in $crate::bindings);
    };
}

#[cfg(all(not(doc), cnp_world = "notifier"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cnp_export_world {
    ($export:ident) => {
        $crate::bindings::__cnp_export_notifier!($export with_types_in $crate::bindings);
    };
}

#[cfg(all(not(doc), cnp_world = "condition-hook", not(cnp_wit_0_2)))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cnp_export_world {
    ($export:ident) => {
        $crate::bindings::__cnp_export_condition_hook!($export with_types_in $crate::bindings);
    };
}

#[cfg(all(not(doc), cnp_world = "condition-hook", cnp_wit_0_2))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cnp_export_world {
    ($export:ident) => {
        $crate::bindings::v0_2::__cnp_export_condition_hook!($export with_types_in $crate::bindings::v0_2);
    };
}

#[cfg(all(not(doc), cnp_world = "executor"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __cnp_export_world {
    ($export:ident) => {
        $crate::bindings::v0_3::__cnp_export_executor!($export with_types_in $crate::bindings::v0_3);
    };
}
