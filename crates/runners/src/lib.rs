//! baton's `TurnRunner` adapters.

mod call;
pub mod echo;
pub mod http_agent;
pub mod openai;

pub use echo::EchoRunner;
pub use http_agent::HttpAgentRunner;
pub use openai::OpenAiRunner;

use std::sync::Arc;

use baton_domain::RunnerRegistry;

/// Every runner this crate provides, registered under its kind name. `http` is the
/// client the runners that call out use (built by the caller, with its TLS set up).
pub fn builtin(http: reqwest::Client) -> RunnerRegistry {
    RunnerRegistry::new()
        .with(echo::KIND, Arc::new(EchoRunner))
        .with(openai::KIND, Arc::new(OpenAiRunner::new(http.clone())))
        .with(http_agent::KIND, Arc::new(HttpAgentRunner::new(http)))
}
