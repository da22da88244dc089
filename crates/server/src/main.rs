//! The `baton` binary: the command line with the built-in runners.

use baton_domain::RunnerRegistry;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    baton_server::exit_code(baton_server::run(RunnerRegistry::new()).await)
}
