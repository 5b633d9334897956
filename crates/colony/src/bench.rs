//! `colony bench`: an HTTP load generator built into the binary.

/// Options of `colony bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Runs the benchmark.
pub async fn run(_args: BenchArgs, _json: bool) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
