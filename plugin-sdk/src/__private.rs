//! Support for `register_plugin!`; not public API.

pub use wit_bindgen;

/// Adapts a plugin type to the generated `Guest` trait of its world: the SDK implements
/// `Guest` for `Export<T>` whenever `T` implements the world's trait.
pub struct Export<T>(core::marker::PhantomData<T>);

/// Fails to compile, naming the trait, unless `T` implements the world's trait.
#[cfg(cnp_world = "retry-strategy")]
pub const fn assert_plugin<T: crate::RetryStrategy>() {}
/// Fails to compile, naming the trait, unless `T` implements the world's trait.
#[cfg(cnp_world = "notifier")]
pub const fn assert_plugin<T: crate::Notifier>() {}
/// Fails to compile, naming the trait, unless `T` implements the world's trait.
#[cfg(cnp_world = "condition-hook")]
pub const fn assert_plugin<T: crate::ConditionHook>() {}
/// Fails to compile, naming the trait, unless `T` implements the world's trait.
#[cfg(cnp_world = "executor")]
pub const fn assert_plugin<T: crate::Executor>() {}
