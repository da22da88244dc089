//! The `baton` binary: the command line with the built-in runners.

use baton_domain::RunnerRegistry;

/// mimalloc instead of glibc's malloc: a sixth of the server's CPU under load was
/// glibc's allocator (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    baton_server::exit_code(baton_server::run(RunnerRegistry::new()).await)
}
