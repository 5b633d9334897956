//! `colony agent`: runs an agent until SIGINT/SIGTERM.

use anyhow::{Context, bail};
use colony_runtime::{Agent, AgentConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `colony agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Development mode: a single node that is its own server, data in a fresh temporary
    /// directory unless --data-dir is given.
    #[arg(long)]
    pub dev: bool,
    /// Run as a server (holds the authoritative store). Needs --data-dir.
    #[arg(long)]
    pub server: bool,
    /// Directory for the log, snapshots and node ID.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node name (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Datacenter name.
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,
    /// Address advertised to other nodes (default: the HTTP address's IP).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<std::net::IpAddr>,
    /// Snapshot the state and delete covered log segments every this many entries (etcd's
    /// --snapshot-count default). A snapshot serializes the whole state on the writer thread.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub snapshot_every: u64,
    /// Smallest session TTL accepted (Consul's default: 10s).
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub session_ttl_min: String,
    /// Log level: error, warn, info, debug, trace (or a tracing filter).
    #[arg(long, default_value = "info", env = "COLONY_LOG_LEVEL")]
    pub log_level: String,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "colony".to_string())
}

fn init_logging(args: &AgentArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log-level {:?}", args.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Runs the agent; returns when it has shut down.
pub async fn run(args: AgentArgs, http_addr: &str) -> anyhow::Result<ExitCode> {
    init_logging(&args)?;
    let http_addr: SocketAddr = http_addr
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("invalid --http-addr {http_addr:?}: expected IP:PORT"))?;
    if !args.dev && !args.server {
        bail!(
            "client agents (without --server or --dev) need the gossip membership layer, which \
             is not built yet: run with --dev, or --server --data-dir DIR"
        );
    }
    let session_ttl_ms_min = colony_base::parse_go_duration_ms(&args.session_ttl_min)
        .context("invalid --session-ttl-min")?;
    let advertise = args.advertise.unwrap_or_else(|| http_addr.ip());
    if advertise.is_unspecified() {
        bail!(
            "cannot advertise {advertise}: other nodes cannot reach an unspecified address; \
             pass --advertise with a routable IP"
        );
    }
    let (data_dir, _temp_dir) = match (&args.data_dir, args.dev) {
        (Some(dir), _) => (dir.clone(), None),
        (None, true) => {
            let temp = tempfile::Builder::new()
                .prefix("colony-dev-")
                .tempdir()
                .context("cannot create a temporary data dir")?;
            (temp.path().to_path_buf(), Some(temp))
        }
        (None, false) => bail!("--server needs --data-dir DIR"),
    };
    let config = AgentConfig {
        node_name: args.node.clone().unwrap_or_else(hostname),
        datacenter: args.datacenter.clone(),
        data_dir: data_dir.clone(),
        advertise_addr: advertise.to_string(),
        server: true,
        dev: args.dev,
        snapshot_every_entries: args.snapshot_every.max(1),
        session_ttl_ms_min,
        http_addr: http_addr.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen on {} for HTTP", http_addr))?;
    let agent = Agent::start(config)
        .await
        .context("agent failed to start")?;
    tracing::info!(
        node = agent.node_name(),
        http = %http_addr,
        data_dir = %data_dir.display(),
        dev = args.dev,
        "colony agent running"
    );
    let router = colony_api::router(agent.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(colony_api::serve(listener, router, async move {
        let _ = stop_rx.await;
    }));
    let exit = tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down");
            ExitCode::SUCCESS
        }
        message = agent.fatal_error() => {
            tracing::error!(%message, "stopping: storage failed");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    };
    agent.shutdown();
    let _ = stop_tx.send(());
    // Parked blocking queries may wait minutes; give in-flight requests a moment, then go.
    if tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .is_err()
    {
        tracing::debug!("closing connections still open after 2s");
    }
    Ok(exit)
}

async fn shutdown_signal() -> &'static str {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}
