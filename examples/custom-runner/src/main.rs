//! baton with one more runner kind, `shout`: the whole `baton` command line (serve,
//! agent, key, …) with a runner of your own registered by name.

use std::sync::Arc;

use async_trait::async_trait;
use baton_domain::{RunnerError, RunnerRegistry, TurnInput, TurnRunner, TurnSink};
use serde_json::Value;

/// Answers with the user's words in capitals, one streamed word at a time.
struct Shout;

#[async_trait]
impl TurnRunner for Shout {
    fn validate_config(&self, _config: &Value) -> Result<(), String> {
        Ok(())
    }

    async fn run(&self, input: TurnInput, sink: TurnSink) -> Result<(), RunnerError> {
        let said = input
            .last_user_message()
            .and_then(|m| m.content.as_text())
            .unwrap_or("");
        for (i, word) in said.split_whitespace().enumerate() {
            let space = if i == 0 { "" } else { " " };
            sink.text_delta(format!("{space}{}", word.to_uppercase()))
                .await
                .map_err(|_| RunnerError::new("turn_closed", "the turn ended"))?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let runners = RunnerRegistry::new().with("shout", Arc::new(Shout));
    baton_server::exit_code(baton_server::run(runners).await)
}
