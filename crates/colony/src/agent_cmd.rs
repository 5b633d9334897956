//! `colony agent`: runs an agent until SIGINT/SIGTERM.

use anyhow::{Context, bail};
use colony_api::membership::MembershipState;
use colony_modes::slow_disk::SlowDiskPolicy;
use colony_runtime::gossip::{Gossip, GossipConfig};
use colony_runtime::keyring::{Keyring, load_keyring, parse_key, save_keyring};
use colony_runtime::{Agent, AgentConfig, ClusterConfig};
use colony_swim::Meta;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
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
    /// Directory for the log, snapshots, node ID and the gossip keyring (client agents keep
    /// only the keyring there).
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
    /// Snapshot the state and delete covered log segments after this many entries (etcd's
    /// --snapshot-count default), once the log has also grown by as many bytes as the last
    /// snapshot took. The writer (or raft) thread copies the state; a background thread
    /// serializes and writes it.
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
    /// Gossip address, UDP and TCP on one port: IP or IP:PORT (port 8301 by default; 0 picks
    /// a free one). Default: 127.0.0.1:8301 with --dev, 0.0.0.0:8301 otherwise.
    #[arg(long, value_name = "IP[:PORT]")]
    pub bind: Option<String>,
    /// Join the cluster through this member at start-up (repeatable); the agent exits if none
    /// answers.
    #[arg(long = "join", value_name = "ADDR")]
    pub join: Vec<String>,
    /// Like --join, but keep retrying every --retry-interval until one answers (repeatable).
    #[arg(long = "retry-join", value_name = "ADDR")]
    pub retry_join: Vec<String>,
    /// Time between two --retry-join attempts.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub retry_interval: String,
    /// Failure domain (rack, zone) advertised in this member's metadata.
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// Encrypt gossip with this AES-256-GCM key (base64 of 32 bytes; `colony keygen` makes
    /// one). Every member must hold it; rotate with `colony keyring`.
    #[arg(
        long,
        value_name = "KEY",
        env = "COLONY_ENCRYPT",
        hide_env_values = true
    )]
    pub encrypt: Option<String>,
    /// Gossip without Lifeguard (plain SWIM), for comparison.
    #[arg(long)]
    pub no_lifeguard: bool,
    /// Address of the DNS interface, UDP and TCP (`<service>.service.consul` and the rest of
    /// Consul's forms; port 0 picks a free one; `off` disables it). Default 127.0.0.1:8600; if
    /// that default port is taken (another agent on this host), the agent runs without DNS
    /// and says so, while an address given here that cannot be bound stops the start.
    #[arg(long, value_name = "IP:PORT")]
    pub dns_addr: Option<String>,
    /// The domain the DNS interface answers for.
    #[arg(long, default_value = "consul", value_name = "DOMAIN")]
    pub dns_domain: String,
    /// TTL of DNS answers about services (Consul's dns_config.service_ttl).
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub dns_service_ttl: String,
    /// TTL of DNS answers about nodes (Consul's dns_config.node_ttl).
    #[arg(long, default_value = "0s", value_name = "DURATION")]
    pub dns_node_ttl: String,
    /// The most service instances in a UDP answer (0: as many as fit); the others are left out
    /// without setting TC, as Consul's udp_answer_limit does. TCP answers hold all that fit.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub dns_udp_answer_limit: usize,
    /// Answer only instances whose checks all pass (by default, warning ones are included and
    /// only critical ones left out).
    #[arg(long)]
    pub dns_only_passing: bool,
    /// Address of the etcd v3 gRPC API (servers only; port 0 picks a free one; `off`
    /// disables it).
    #[arg(long, default_value = "127.0.0.1:2379", value_name = "IP:PORT")]
    pub grpc_addr: String,
    /// Replicate the store with Raft among servers: form a new cluster once this many
    /// servers see each other through gossip (give every server the same value; a server
    /// started later, when the cluster exists, is added as a voter by the leader). Without
    /// it, --server runs a single-node store.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=9))]
    pub bootstrap_expect: Option<u64>,
    /// Address of the internal RPC port (Raft and forwarded requests) of a server;
    /// default: the gossip bind IP, port 8300 (a free port when --bind's port is 0).
    #[arg(long, value_name = "IP:PORT")]
    pub rpc_addr: Option<String>,
    /// Raft heartbeat interval of a replicated server.
    #[arg(long, default_value = "100ms", value_name = "DURATION")]
    pub raft_heartbeat: String,
    /// Raft election timeout (lower bound; each timeout is drawn from [T, 2T)).
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub raft_election_timeout: String,
    /// Remove a server from the voters once membership has seen it failed this long, if the
    /// rest keep a quorum (Consul's autopilot dead-server cleanup).
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub dead_server_cleanup: String,
    /// A server whose fsync p99 stays this many times the other servers' median (and 20 ms
    /// above it) for 3 s marks its storage Degraded and, if it leads, hands leadership to the server
    /// with the fastest disk. 0 turns the comparison off.
    #[arg(long, default_value_t = 3.0, value_name = "FACTOR")]
    pub slow_disk_factor: f64,
}

/// The replication settings, or `None` for a single-node server.
fn cluster_config(args: &AgentArgs, http_ip: IpAddr) -> anyhow::Result<Option<ClusterConfig>> {
    let Some(expect) = args.bootstrap_expect else {
        return Ok(None);
    };
    if args.dev && expect > 1 {
        bail!("--dev is a single server; --bootstrap-expect {expect} needs --server");
    }
    let (rpc_addr, advertise) = rpc_address(args, http_ip)?;
    let ms = |text: &str, flag: &str| {
        colony_base::parse_go_duration_ms(text).with_context(|| format!("invalid --{flag}"))
    };
    let raft = colony_raft::Config {
        heartbeat_interval_ms: ms(&args.raft_heartbeat, "raft-heartbeat")?,
        election_timeout_ms_min: ms(&args.raft_election_timeout, "raft-election-timeout")?,
        ..colony_raft::Config::default()
    };
    raft.validate()
        .map_err(|e| anyhow::anyhow!("--raft-heartbeat/--raft-election-timeout: {e}"))?;
    Ok(Some(ClusterConfig {
        rpc_addr,
        rpc_advertise: advertise,
        bootstrap_expect: expect as usize,
        raft,
        dead_server_cleanup_ms: ms(&args.dead_server_cleanup, "dead-server-cleanup")?,
        slow_disk: slow_disk_policy(args.slow_disk_factor)?,
    }))
}

/// The slow-disk comparison with `--slow-disk-factor` (must be 0, to turn it off, or > 1).
fn slow_disk_policy(factor: f64) -> anyhow::Result<SlowDiskPolicy> {
    if !factor.is_finite() || factor < 0.0 || (factor > 0.0 && factor <= 1.0) {
        bail!("--slow-disk-factor must be 0 (off) or greater than 1, not {factor}");
    }
    Ok(SlowDiskPolicy {
        factor,
        ..SlowDiskPolicy::default()
    })
}

/// Where a server's RPC port listens, and the IP others reach it at: `--rpc-addr`, else the
/// gossip bind IP with port 8300 (port 0, a free one, when the gossip port is 0 too, so that
/// test agents on one host never collide).
fn rpc_address(args: &AgentArgs, http_ip: IpAddr) -> anyhow::Result<(SocketAddr, IpAddr)> {
    let (bind, advertise) = gossip_addresses(args, http_ip)?;
    let addr = match &args.rpc_addr {
        None => SocketAddr::new(bind.ip(), if bind.port() == 0 { 0 } else { 8300 }),
        Some(text) => text
            .parse()
            .with_context(|| format!("invalid --rpc-addr {text:?}: expected IP:PORT"))?,
    };
    Ok((addr, advertise))
}

/// Where gossip binds and what it advertises.
fn gossip_addresses(args: &AgentArgs, http_ip: IpAddr) -> anyhow::Result<(SocketAddr, IpAddr)> {
    let default_ip: IpAddr = if args.dev {
        [127, 0, 0, 1].into()
    } else {
        [0, 0, 0, 0].into()
    };
    let bind = match &args.bind {
        None => SocketAddr::new(default_ip, 8301),
        Some(text) => colony_api::membership::parse_gossip_addr(text)
            .map_err(|e| anyhow::anyhow!("invalid --bind: {}", e.message))?,
    };
    let advertise = match args.advertise {
        Some(ip) => ip,
        None if !bind.ip().is_unspecified() => bind.ip(),
        None => http_ip,
    };
    if advertise.is_unspecified() {
        bail!(
            "cannot advertise {advertise}: other nodes cannot reach an unspecified address; \
             pass --advertise with a routable IP (or --bind with one)"
        );
    }
    Ok((bind, advertise))
}

fn parse_seeds(list: &[String], flag: &str) -> anyhow::Result<Vec<SocketAddr>> {
    list.iter()
        .map(|a| {
            colony_api::membership::parse_gossip_addr(a)
                .map_err(|e| anyhow::anyhow!("invalid --{flag}: {}", e.message))
        })
        .collect()
}

/// The gossip keyring: the one saved in the data dir (`serf/local.keyring`, which holds the
/// rotations made since the first start) if there is one, else `--encrypt`'s key, saved there
/// for the next start. Without a data dir the keyring lives in memory only.
fn gossip_keyring(
    args: &AgentArgs,
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<(Option<Keyring>, Option<PathBuf>)> {
    let file = data_dir.map(|dir| dir.join("serf").join("local.keyring"));
    let saved = match &file {
        Some(path) => load_keyring(path)?,
        None => None,
    };
    let keyring = match (saved, &args.encrypt) {
        (Some(ring), Some(_)) => {
            tracing::warn!(
                file = %file.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
                "--encrypt ignored: the saved keyring takes precedence (it holds later rotations)"
            );
            Some(ring)
        }
        (Some(ring), None) => Some(ring),
        (None, Some(key)) => {
            let ring = Keyring::new(parse_key(key).context("--encrypt")?);
            if let Some(path) = &file {
                save_keyring(path, &ring)?;
            }
            Some(ring)
        }
        (None, None) => None,
    };
    Ok((keyring, file))
}

/// Starts membership and joins the seeds given on the command line.
async fn start_gossip(
    args: &AgentArgs,
    node_name: &str,
    http_ip: IpAddr,
    server: Option<&Agent>,
    data_dir: Option<&std::path::Path>,
    grpc_url: Option<String>,
) -> anyhow::Result<Arc<Gossip>> {
    let (bind, advertise) = gossip_addresses(args, http_ip)?;
    let join = parse_seeds(&args.join, "join")?;
    let retry_join = parse_seeds(&args.retry_join, "retry-join")?;
    let retry_ms = colony_base::parse_go_duration_ms(&args.retry_interval)
        .context("invalid --retry-interval")?
        .max(100);
    let mut tags = std::collections::BTreeMap::new();
    if let Some(agent) = server {
        if let Some(id) = agent.raft_id() {
            tags.insert(
                colony_runtime::cluster::TAG_RAFT_ID.to_string(),
                id.to_string(),
            );
        }
        if let Some(addr) = agent.rpc_addr() {
            tags.insert(
                colony_runtime::cluster::TAG_RPC_ADDR.to_string(),
                addr.to_string(),
            );
        }
        if let Some(url) = grpc_url {
            tags.insert(colony_runtime::cluster::TAG_GRPC_URL.to_string(), url);
        }
    }
    // Every agent says its datacenter (`/v1/agent/members` shows it, as Consul's `dc` tag);
    // servers and client agents use it to keep to their own datacenter's servers.
    tags.insert(
        colony_runtime::cluster::TAG_DATACENTER.to_string(),
        args.datacenter.clone(),
    );
    let meta = Meta {
        role: if server.is_some() { "server" } else { "client" }.to_string(),
        zone: args.zone.clone().unwrap_or_default(),
        tags,
    };
    let swim = colony_swim::Config {
        lifeguard: !args.no_lifeguard,
        ..colony_swim::Config::lan()
    };
    let (keyring, keyring_file) = gossip_keyring(args, data_dir)?;
    let gossip = Gossip::start(GossipConfig {
        node_name: node_name.to_string(),
        bind,
        advertise,
        meta,
        swim,
        keyring,
        keyring_file,
    })
    .await
    .context("membership failed to start")?;
    if !join.is_empty() {
        if !gossip.join(join.clone()).await {
            bail!("could not join the cluster: none of {join:?} answered within 5s");
        }
        tracing::info!("joined the cluster");
    }
    if !retry_join.is_empty() {
        let gossip = gossip.clone();
        tokio::spawn(async move {
            loop {
                if gossip.join(retry_join.clone()).await {
                    tracing::info!("joined the cluster");
                    return;
                }
                tracing::warn!(seeds = ?retry_join, "join failed; retrying");
                tokio::time::sleep(Duration::from_millis(retry_ms)).await;
            }
        });
    }
    Ok(gossip)
}

/// A client agent: membership and its endpoints; everything that needs a server is
/// forwarded to one over its RPC port (503 while none is known).
async fn run_client(args: AgentArgs, http_addr: SocketAddr) -> anyhow::Result<ExitCode> {
    let node_name = args.node.clone().unwrap_or_else(hostname);
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen on {} for HTTP", http_addr))?;
    let dns = bind_dns(&args).await?;
    let gossip = start_gossip(
        &args,
        &node_name,
        http_addr.ip(),
        None,
        args.data_dir.as_deref(),
        None,
    )
    .await?;
    tracing::info!(node = %node_name, http = %http_addr, gossip = %gossip.local_addr(), "colony client agent running");
    let stop = Arc::new(tokio::sync::Notify::new());
    let (_, advertise) = gossip_addresses(&args, http_addr.ip())?;
    let link = Arc::new(colony_runtime::client_agent::ClientLink::new(
        gossip.clone(),
        colony_runtime::rpc::OriginNode {
            name: node_name.clone(),
            address: advertise.to_string(),
        },
        &args.datacenter,
    ));
    let local = colony_api::local_state::LocalState::open(&node_name, args.data_dir.as_deref())
        .map_err(anyhow::Error::msg)?
        .in_datacenter(&args.datacenter);
    if let Some(file) = local.file() {
        let kept = local.registrations();
        tracing::info!(
            file = %file.display(),
            services = kept.services.len(),
            checks = kept.checks.len(),
            "this agent's registrations"
        );
    } else {
        tracing::warn!(
            "no --data-dir: services and checks registered through this agent are kept in \
             memory only, and after a restart anti-entropy removes them from the catalog \
             (as Consul does for an agent whose data dir is lost)"
        );
    }
    let checks = colony_runtime::client_agent::ClientChecks::start(link.clone());
    let forwarder = Arc::new(colony_api::forward::ClientForwarder::new(
        link,
        checks.clone(),
        Arc::new(local),
    ));
    let anti_entropy = colony_api::anti_entropy::spawn(forwarder.clone());
    let router = colony_api::membership::client_router(
        MembershipState {
            gossip: gossip.clone(),
            datacenter: args.datacenter.clone(),
            server: false,
            stop: stop.clone(),
        },
        forwarder,
    );
    let dns = serve_dns(dns, router.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(colony_api::serve(listener, router, async move {
        let _ = stop_rx.await;
    }));
    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "leaving the cluster and shutting down");
            gossip.leave().await;
        }
        () = stop.notified() => tracing::info!("left the cluster; shutting down"),
    }
    checks.stop();
    anti_entropy.abort();
    dns.stop();
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(ExitCode::SUCCESS)
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
        return run_client(args, http_addr).await;
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
        cluster: cluster_config(&args, http_addr.ip())?,
    };
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen on {} for HTTP", http_addr))?;
    let dns = bind_dns(&args).await?;
    let agent = Agent::start(config)
        .await
        .context("agent failed to start")?;
    let grpc_listener = match bind_grpc(&args.grpc_addr).await {
        Ok(listener) => listener,
        Err(error) => {
            agent.shutdown();
            return Err(error);
        }
    };
    if agent.rpc_addr().is_none() {
        // A single-node server opens its RPC port too, for client agents' requests.
        let opened = match rpc_address(&args, advertise) {
            Ok((addr, rpc_advertise)) => agent
                .serve_rpc(addr, rpc_advertise)
                .await
                .map_err(anyhow::Error::from),
            Err(error) => Err(error),
        };
        if let Err(error) = opened {
            agent.shutdown();
            return Err(error);
        }
    }
    let grpc_url = grpc_listener
        .as_ref()
        .and_then(|listener| listener.local_addr().ok())
        .map(|local| format!("http://{local}"));
    let gossip = match start_gossip(
        &args,
        agent.node_name(),
        advertise,
        Some(&agent),
        Some(&data_dir),
        grpc_url,
    )
    .await
    {
        Ok(gossip) => gossip,
        Err(error) => {
            agent.shutdown();
            return Err(error);
        }
    };
    colony_runtime::member_catalog::spawn(agent.clone(), gossip.clone());
    colony_runtime::cluster::spawn_server_tracking(agent.clone(), gossip.clone());
    let grpc_addr = match grpc_listener {
        Some(listener) => {
            let local = listener.local_addr().context("gRPC listener address")?;
            let ctx = colony_etcd::EtcdContext::new(
                agent.clone(),
                &args.datacenter,
                format!("http://{local}"),
            );
            let mut stopping = agent.shutdown_signal();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                };
                if let Err(error) = colony_etcd::serve(listener, ctx, stop).await {
                    tracing::error!(%error, "etcd gRPC API stopped");
                }
            });
            local.to_string()
        }
        None => "off".to_string(),
    };
    tracing::info!(
        node = agent.node_name(),
        http = %http_addr,
        grpc = %grpc_addr,
        rpc = ?agent.rpc_addr(),
        gossip = %gossip.local_addr(),
        data_dir = %data_dir.display(),
        dev = args.dev,
        "colony agent running"
    );
    let stop = Arc::new(tokio::sync::Notify::new());
    let membership = MembershipState {
        gossip: gossip.clone(),
        datacenter: args.datacenter.clone(),
        server: true,
        stop: stop.clone(),
    };
    let router = colony_api::router(agent.clone(), membership);
    agent.set_http_forwarder(colony_api::forward::http_forwarder(router.clone()));
    let dns = serve_dns(dns, router.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(colony_api::serve(listener, router, async move {
        let _ = stop_rx.await;
    }));
    let exit = tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down");
            ExitCode::SUCCESS
        }
        () = stop.notified() => {
            tracing::info!("left the cluster; shutting down");
            ExitCode::SUCCESS
        }
        message = agent.fatal_error() => {
            tracing::error!(%message, "stopping: storage failed");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    };
    agent.shutdown();
    dns.stop();
    let _ = stop_tx.send(());
    // Parked blocking queries may wait minutes; give in-flight requests a moment, then go.
    if tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .is_err()
    {
        tracing::debug!("closing connections still open after 2s");
    }
    agent.stop_replication().await;
    Ok(exit)
}

/// The DNS interface of a running agent (nothing when it is off).
struct DnsHandle(Option<tokio::sync::oneshot::Sender<()>>);

impl DnsHandle {
    fn stop(self) {
        if let Some(stop) = self.0 {
            let _ = stop.send(());
        }
    }
}

/// The default DNS address (Consul's).
const DNS_ADDR_DEFAULT: &str = "127.0.0.1:8600";

/// The DNS interface's sockets and settings, bound before the agent starts (so that a bad
/// flag or a taken port stops the start before anything runs); `None` when it is off.
type DnsBound = Option<(colony_api::dns::DnsSockets, colony_api::dns::DnsConfig)>;

/// Reads the --dns-* flags and binds --dns-addr.
async fn bind_dns(args: &AgentArgs) -> anyhow::Result<DnsBound> {
    let given = args.dns_addr.as_deref();
    let text = given.unwrap_or(DNS_ADDR_DEFAULT);
    if text.is_empty() || text == "off" {
        return Ok(None);
    }
    let addr: SocketAddr = text
        .parse()
        .with_context(|| format!("invalid --dns-addr {text:?}: expected IP:PORT or off"))?;
    let seconds = |value: &str, flag: &str| -> anyhow::Result<u32> {
        let ms = colony_base::parse_go_duration_ms(value)
            .with_context(|| format!("invalid --{flag} {value:?}"))?;
        u32::try_from(ms / 1000).with_context(|| format!("--{flag} {value:?} is too long"))
    };
    let mut config = colony_api::dns::DnsConfig::new(&args.dns_domain, &args.datacenter)
        .map_err(|error| anyhow::anyhow!("invalid --dns-domain {:?}: {error}", args.dns_domain))?;
    config.service_ttl_s = seconds(&args.dns_service_ttl, "dns-service-ttl")?;
    config.node_ttl_s = seconds(&args.dns_node_ttl, "dns-node-ttl")?;
    config.udp_answer_limit = args.dns_udp_answer_limit;
    config.only_passing = args.dns_only_passing;
    match colony_api::dns::DnsSockets::bind(addr).await {
        Ok(sockets) => Ok(Some((sockets, config))),
        Err(error) if given.is_none() => {
            tracing::warn!(
                %error,
                addr = %addr,
                "DNS interface off: its default address is taken (another agent on this host?); \
                 give --dns-addr to choose another"
            );
            Ok(None)
        }
        Err(error) => Err(error).with_context(|| format!("cannot listen on {addr} for DNS")),
    }
}

/// Serves DNS on the bound sockets, answering through `router`.
fn serve_dns(bound: DnsBound, router: colony_api::Router) -> DnsHandle {
    let Some((sockets, config)) = bound else {
        return DnsHandle(None);
    };
    match sockets.local_addr() {
        Ok(local) => {
            tracing::info!(dns = %local, domain = %config.domain.to_dotted(), "DNS interface running");
        }
        Err(error) => tracing::warn!(%error, "DNS socket has no address"),
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(colony_api::dns::serve(
        sockets,
        router,
        config,
        async move {
            let _ = stop_rx.await;
        },
    ));
    DnsHandle(Some(stop_tx))
}

/// Binds the etcd gRPC listener, unless `addr` is `off` (or empty).
async fn bind_grpc(addr: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if addr.is_empty() || addr == "off" {
        return Ok(None);
    }
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("invalid --grpc-addr {addr:?}: expected IP:PORT or off"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for gRPC"))?;
    Ok(Some(listener))
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
