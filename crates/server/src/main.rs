//! The `baton` binary: the command line with the built-in runners.

use baton_domain::RunnerRegistry;

/// jemalloc instead of glibc's malloc: ~11 % of the server's CPU under load was
/// glibc's allocator (docs/benchmarks.md, issue 14).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    baton_server::exit_code(baton_server::run(RunnerRegistry::new()).await)
}
