//! baton's `TurnRunner` adapters.

pub mod echo;

pub use echo::EchoRunner;

use std::sync::Arc;

use baton_domain::RunnerRegistry;

/// Every runner this crate provides, registered under its kind name.
pub fn builtin() -> RunnerRegistry {
    RunnerRegistry::new().with(echo::KIND, Arc::new(EchoRunner))
}
