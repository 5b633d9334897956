//! The `colony` binary: the agent, a CLI over the HTTP API, and the benchmark driver.

mod agent_cmd;
mod bench;
mod bench_etcd;
mod bench_grpc;
mod cli;
mod client;
mod kv_transfer;
mod plot;
mod sim_cmd;

use clap::Parser;

/// mimalloc instead of glibc's malloc: the request paths allocate many small short-lived
/// buffers, where glibc's allocator showed up as ~15% of the agent's CPU (docs/decisions.md
/// §17). Built without transparent huge pages (§26).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // A task woken by the task that runs goes to the back of the queue, not next: an HTTP/2
    // connection then writes every answer its streams finished meanwhile in one write,
    // instead of one write per answer (docs/decisions.md §24). `COLONY_LIFO_SLOT=on` keeps
    // tokio's default, to measure the difference.
    #[cfg(tokio_unstable)]
    if std::env::var("COLONY_LIFO_SLOT").as_deref() != Ok("on") {
        builder.disable_lifo_slot();
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
