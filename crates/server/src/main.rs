//! The `baton` binary: the command line with the built-in runners.

use baton_domain::RunnerRegistry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    baton_server::run(RunnerRegistry::new()).await
}
