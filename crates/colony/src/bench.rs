//! `colony bench`: an HTTP load generator built into the binary, so that measuring needs
//! nothing else installed. By default it starts its own agent (so that it can also measure the
//! agent's CPU and memory), runs each workload once per run, interleaved across runs so that
//! machine noise spreads evenly, and reports medians.

use crate::client::ApiClient;
use anyhow::{Context, bail};
use hyper::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `colony bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which API to load: consul-http (colony's Consul dialect) or etcd-grpc (its etcd
    /// dialect; add --against-etcd to measure a real etcd in the same run).
    #[arg(long, default_value = "consul-http", value_parser = ["consul-http", "etcd-grpc"])]
    pub(crate) target: String,
    /// Workloads to run, comma-separated (or all). consul-http: put, get (default
    /// consistency), get-stale (?stale), get-consistent (?consistent), health, wake, parked,
    /// fsync. etcd-grpc: put, get (linearizable), getser (serializable), consistent
    /// (colony: Consul's ?consistent GET over HTTP; etcd: linearizable Range), keepalive,
    /// watch, lease.
    #[arg(long, default_value = "all")]
    pub(crate) workloads: String,
    /// Concurrent clients for put (comma-separated list).
    #[arg(long, default_value = "1,64")]
    pub(crate) put_clients: String,
    /// Concurrent clients for get and health.
    #[arg(long, default_value_t = 64)]
    pub(crate) read_clients: usize,
    /// Measured time per closed-loop workload and run.
    #[arg(long, default_value = "5s")]
    pub(crate) duration: String,
    /// Warm-up before each measured window (not counted).
    #[arg(long, default_value = "1s")]
    pub(crate) warmup: String,
    /// How many runs (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Value size of puts, bytes.
    #[arg(long, default_value_t = 256)]
    pub(crate) value_bytes: usize,
    /// etcd-grpc: also start a real etcd (single member, fsync on every commit as colony) and
    /// run every workload against both, alternating.
    #[arg(long)]
    pub(crate) against_etcd: bool,
    /// etcd-grpc: the etcd binary for --against-etcd.
    #[arg(long, default_value = "etcd", value_name = "PATH")]
    pub(crate) etcd_bin: String,
    /// etcd-grpc: the client of the put and get workloads: lean (calls written straight onto
    /// HTTP/2, the least client CPU per call, so the most of the machine is left to the
    /// server measured) or tonic (tonic's `Channel`, as Rust applications use it).
    #[arg(long, default_value = "lean", value_parser = ["lean", "tonic"])]
    pub(crate) grpc_client: String,
    /// etcd-grpc: gRPC connections the closed-loop clients share.
    #[arg(long, default_value_t = 4)]
    pub(crate) conns: usize,
    /// etcd-grpc: watchers of one key in the watch workload.
    #[arg(long, default_value_t = 1000)]
    pub(crate) watchers: usize,
    /// etcd-grpc: puts (10 ms apart) each watcher must see in the watch workload.
    #[arg(long, default_value_t = 100)]
    pub(crate) watch_events: usize,
    /// etcd-grpc: leases in the lease workload, one key each, never kept alive.
    #[arg(long, default_value_t = 8)]
    pub(crate) leases: usize,
    /// etcd-grpc: servers per system: 1 (a single node) or 3/5 (colony servers with
    /// --bootstrap-expect, and with --against-etcd an etcd cluster of as many members), with
    /// the clients spread over all of them; adds the `failover` workload.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=7))]
    pub(crate) servers: u8,
    /// etcd-grpc: TTL of those leases, seconds.
    #[arg(long, default_value_t = 2)]
    pub(crate) lease_ttl_s: i64,
    /// Parked blocking queries in the `parked` workload.
    #[arg(long, default_value_t = 10_000)]
    parked: usize,
    /// Wake-ups measured per run in the `wake` workload.
    #[arg(long, default_value_t = 200)]
    wakes: usize,
    /// Benchmark the agent at --http-addr instead of starting one (agent CPU and memory are
    /// then not measured).
    #[arg(long)]
    external: bool,
    /// Where the started agent keeps its data (and where the fsync probe writes): default a
    /// fresh directory under the system temp dir.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

/// One measured figure set of one workload in one run.
pub(crate) type Figures = BTreeMap<String, f64>;

struct Target {
    client: ApiClient,
    pid: Option<u32>,
    child: Option<Child>,
    _temp: Option<tempfile::TempDir>,
    data_dir: PathBuf,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn duration_arg(text: &str, name: &str) -> anyhow::Result<Duration> {
    colony_base::parse_go_duration_ms(text)
        .map(Duration::from_millis)
        .with_context(|| format!("invalid --{name}"))
}

/// Runs the benchmark.
pub async fn run(
    args: BenchArgs,
    http_addr: &str,
    json_out: bool,
) -> anyhow::Result<std::process::ExitCode> {
    raise_fd_limit();
    if args.target == "etcd-grpc" {
        return crate::bench_etcd::run(&args, json_out).await;
    }
    let duration = duration_arg(&args.duration, "duration")?;
    let warmup = duration_arg(&args.warmup, "warmup")?;
    let workloads = workload_list(
        &args.workloads,
        &[
            "put",
            "get",
            "get-stale",
            "get-consistent",
            "health",
            "wake",
            "parked",
            "fsync",
        ],
    )?;
    let put_clients = client_counts(&args.put_clients)?;
    let target = start_target(&args, http_addr).await?;
    let mut results: BTreeMap<String, Vec<Figures>> = BTreeMap::new();
    for run in 1..=args.runs {
        for workload in &workloads {
            let configs: Vec<usize> = if workload == "put" {
                put_clients.clone()
            } else {
                vec![0]
            };
            for clients in configs {
                let label = if workload == "put" {
                    format!("put_c{clients}")
                } else {
                    workload.clone()
                };
                eprintln!("[run {run}/{}] {label} ...", args.runs);
                let figures = match workload.as_str() {
                    "put" => {
                        closed_loop(&target, "put", clients, args.value_bytes, warmup, duration)
                            .await?
                    }
                    "get" | "get-stale" | "get-consistent" => {
                        let kind = match workload.as_str() {
                            "get-stale" => "get-stale",
                            "get-consistent" => "get-consistent",
                            _ => "get",
                        };
                        closed_loop(
                            &target,
                            kind,
                            args.read_clients,
                            args.value_bytes,
                            warmup,
                            duration,
                        )
                        .await?
                    }
                    "health" => {
                        closed_loop(&target, "health", args.read_clients, 0, warmup, duration)
                            .await?
                    }
                    "wake" => wake_latency(&target, args.wakes).await?,
                    "parked" if args.external => parked_queries(&target, args.parked).await?,
                    // A fresh agent per run: RSS never shrinks, so an agent that already
                    // parked (and freed) queries would hide the cost of parking again.
                    "parked" => {
                        let fresh = start_target(&args, http_addr).await?;
                        parked_queries(&fresh, args.parked).await?
                    }
                    "fsync" => fsync_probe(&target.data_dir, duration)?,
                    _ => unreachable!("workloads were validated"),
                };
                eprintln!("           {}", summary_line(&figures));
                results.entry(label).or_default().push(figures);
            }
        }
    }
    report(&results, json_out);
    Ok(std::process::ExitCode::SUCCESS)
}

/// The workloads `--workloads` names (`all`: every one of `known`).
///
/// # Errors
/// A name not in `known`.
pub(crate) fn workload_list(text: &str, known: &[&str]) -> anyhow::Result<Vec<String>> {
    if text == "all" {
        return Ok(known.iter().map(|w| w.to_string()).collect());
    }
    let workloads: Vec<String> = text.split(',').map(|w| w.trim().to_string()).collect();
    if let Some(unknown) = workloads.iter().find(|w| !known.contains(&w.as_str())) {
        bail!("unknown workload {unknown:?}: use {}", known.join(", "));
    }
    Ok(workloads)
}

/// The client counts of `--put-clients` (comma-separated).
///
/// # Errors
/// A count that is not a number.
pub(crate) fn client_counts(text: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(|c| c.trim().parse().context("invalid --put-clients"))
        .collect()
}

/// A loopback port for a server the bench starts: free for TCP and UDP now, not handed out
/// before by this process, and below the kernel's ephemeral range. A port from that range
/// (what binding port 0 gives) can be taken by any outbound connection's local end before
/// the server binds it, and a server started a moment later then failed with "Address
/// already in use" (seen on gossip ports, right after a previous run's connections).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    const FIRST: u16 = 10_000;
    let ephemeral_low = ephemeral_port_low();
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if ephemeral_low <= FIRST {
        // An unusual range: fall back to the kernel's choice.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        given.push(port);
        return Ok(port);
    }
    let span = u64::from(ephemeral_low - FIRST);
    // Where to start looking: different for concurrent benches (not a core: the clock is
    // fine here).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let start = (u64::from(std::process::id()) * 7_919 + nanos) % span;
    for step in 0..span {
        let port = FIRST + ((start + step) % span) as u16;
        if given.contains(&port) {
            continue;
        }
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port between {FIRST} and {ephemeral_low}")
}

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_port_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
}

fn raise_fd_limit() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

async fn start_target(args: &BenchArgs, http_addr: &str) -> anyhow::Result<Target> {
    if args.external {
        let client = ApiClient::new(http_addr);
        client.get("/v1/status/leader").await?.ok()?;
        let data_dir = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
        return Ok(Target {
            client,
            pid: None,
            child: None,
            _temp: None,
            data_dir,
        });
    }
    let (temp, base) = match &args.data_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temp = tempfile::Builder::new().prefix("colony-bench-").tempdir()?;
            let path = temp.path().to_path_buf();
            (Some(temp), path)
        }
    };
    let data_dir = base.join("agent");
    let addr = format!("127.0.0.1:{}", free_port()?);
    let exe = std::env::current_exe().context("locating the colony binary")?;
    let child = Command::new(exe)
        .args([
            "agent",
            "--dev",
            "--node",
            "bench",
            "--log-level",
            "warn",
            "--http-addr",
            &addr,
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let pid = child.id();
    let client = ApiClient::new(&addr);
    let started = Instant::now();
    while !client
        .get("/v1/status/leader")
        .await
        .is_ok_and(|a| a.status.is_success())
    {
        if started.elapsed() > Duration::from_secs(20) {
            bail!("the agent did not start within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "agent started: pid {pid}, http {addr}, data dir {}",
        data_dir.display()
    );
    Ok(Target {
        client,
        pid: Some(pid),
        child: Some(child),
        _temp: temp,
        data_dir: base,
    })
}

/// CPU seconds (user + system) consumed by `pid` so far.
pub(crate) fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |x| x.1)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn metric(client: &ApiClient, name: &str) -> f64 {
    let Ok(answer) = client.get("/v1/agent/metrics?format=prometheus").await else {
        return 0.0;
    };
    String::from_utf8_lossy(&answer.body)
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn closed_loop(
    target: &Target,
    kind: &'static str,
    clients: usize,
    value_bytes: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let client = &target.client;
    match kind {
        "get" | "get-stale" | "get-consistent" => {
            client
                .put("/v1/kv/bench/get", vec![b'g'; value_bytes])
                .await?
                .ok()?;
        }
        "health" => {
            let service = json!({"Name": "bench-svc", "Port": 1, "Check": {"CheckID": "bench-ttl", "TTL": "1h"}});
            client.register_service(&service).await?;
            client
                .put("/v1/agent/check/pass/bench-ttl", Vec::new())
                .await?
                .ok()?;
        }
        _ => {}
    }
    let value = Arc::new(vec![b'v'; value_bytes]);
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let pids: Vec<String> = target.pid.iter().map(u32::to_string).collect();
    let batches_before = metric(client, "colony_store_commit_batch_entries_count").await;
    let entries_before = metric(client, "colony_store_commit_batch_entries_sum").await;
    let mut tasks = Vec::with_capacity(clients);
    for worker in 0..clients {
        let value = bytes::Bytes::from(value.to_vec());
        let mut connection = Connection::open(client.authority()).await?;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new(measure_from, stop_at);
            for i in 0u64.. {
                let Some(sent) = tally.start() else { break };
                let result = match kind {
                    "put" => {
                        let path = format!("/v1/kv/bench/w{worker}/k{}", i % 1024);
                        connection.send(Method::PUT, &path, value.clone()).await
                    }
                    "get" | "get-stale" | "get-consistent" => {
                        // Consul's three read modes: default (leader lease), ?stale (any
                        // server, from its own state), ?consistent (ReadIndex at the leader).
                        let path = match kind {
                            "get-stale" => "/v1/kv/bench/get?stale",
                            "get-consistent" => "/v1/kv/bench/get?consistent",
                            _ => "/v1/kv/bench/get",
                        };
                        connection
                            .send(Method::GET, path, bytes::Bytes::new())
                            .await
                    }
                    _ => {
                        let path = "/v1/health/service/bench-svc?passing";
                        connection
                            .send(Method::GET, path, bytes::Bytes::new())
                            .await
                    }
                };
                tally.record(sent, matches!(result, Ok(true)));
            }
            tally.finish()
        }));
    }
    let mut figures = measure_window(pids, tasks, measure_from, stop_at, duration).await?;
    if kind == "put" {
        let batches =
            metric(client, "colony_store_commit_batch_entries_count").await - batches_before;
        let entries =
            metric(client, "colony_store_commit_batch_entries_sum").await - entries_before;
        figures.insert("entries_per_fsync".into(), entries / batches.max(1.0));
    }
    Ok(figures)
}

/// One closed-loop client's record: the latencies (µs) of the successes sent inside the
/// measured window, and the failures.
pub(crate) struct Tally {
    measure_from: Instant,
    stop_at: Instant,
    latencies_us: Vec<f64>,
    errors: u64,
}

impl Tally {
    /// A record for a client measured from `measure_from` until `stop_at`.
    pub(crate) fn new(measure_from: Instant, stop_at: Instant) -> Self {
        Self {
            measure_from,
            stop_at,
            latencies_us: Vec::with_capacity(16 * 1024),
            errors: 0,
        }
    }

    /// The time the next request is sent, or `None` once the window is over.
    pub(crate) fn start(&self) -> Option<Instant> {
        let sent = Instant::now();
        (sent < self.stop_at).then_some(sent)
    }

    /// Records the request sent at `sent`: a success is timed if it was sent in the window.
    pub(crate) fn record(&mut self, sent: Instant, ok: bool) {
        if !ok {
            self.errors += 1;
        } else if sent >= self.measure_from {
            self.latencies_us.push(sent.elapsed().as_secs_f64() * 1e6);
        }
    }

    /// (latencies in µs, failures), as [`measure_window`] takes them.
    pub(crate) fn finish(self) -> (Vec<f64>, u64) {
        (self.latencies_us, self.errors)
    }
}

/// Awaits a closed-loop window: samples the servers' (`pids`, summed) and this process's CPU over the
/// measured part only, gathers each worker's (latencies in µs, errors), and computes
/// throughput, latency percentiles and CPU per operation.
pub(crate) async fn measure_window(
    pids: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<(Vec<f64>, u64)>>,
    measure_from: Instant,
    stop_at: Instant,
    duration: Duration,
) -> anyhow::Result<Figures> {
    tokio::time::sleep_until(tokio::time::Instant::from_std(measure_from)).await;
    let servers_cpu =
        || -> Option<f64> { (!pids.is_empty()).then(|| pids.iter().map(|p| cpu_seconds(p)).sum()) };
    let cpu_start = servers_cpu();
    let client_cpu_start = cpu_seconds("self");
    tokio::time::sleep_until(tokio::time::Instant::from_std(stop_at)).await;
    let cpu_end = servers_cpu();
    let client_cpu_end = cpu_seconds("self");
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut lat, err) = task.await.context("load task")?;
        latencies.append(&mut lat);
        errors += err;
    }
    latencies.sort_by(f64::total_cmp);
    let ops = latencies.len() as f64;
    let mut figures = Figures::new();
    figures.insert("ops_per_s".into(), ops / duration.as_secs_f64());
    figures.insert("p50_ms".into(), percentile(&latencies, 0.50) / 1000.0);
    figures.insert("p99_ms".into(), percentile(&latencies, 0.99) / 1000.0);
    figures.insert("errors".into(), errors as f64);
    figures.insert(
        "client_cpu_us_per_op".into(),
        (client_cpu_end - client_cpu_start) * 1e6 / ops.max(1.0),
    );
    if let (Some(a), Some(b)) = (cpu_start, cpu_end) {
        figures.insert("server_cpu_us_per_op".into(), (b - a) * 1e6 / ops.max(1.0));
        figures.insert("server_cpu_cores".into(), (b - a) / duration.as_secs_f64());
    }
    Ok(figures)
}

/// One keep-alive HTTP/1.1 connection owned by one load worker: no pool, no shared state, so
/// the load generator costs as little CPU as it can (it shares the machine with the agent).
pub(crate) struct Connection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    authority: String,
}

/// A TCP connection to `authority` (`host:port`) for small request/response exchanges, which
/// must not wait for Nagle's algorithm (TCP_NODELAY).
pub(crate) async fn connect_nodelay(authority: &str) -> anyhow::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl Connection {
    pub(crate) async fn open(authority: &str) -> anyhow::Result<Connection> {
        let stream = connect_nodelay(authority).await?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        Ok(Connection {
            sender,
            authority: authority.to_string(),
        })
    }

    /// Sends one request and reads the whole answer; `Ok(true)` for a 2xx.
    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: bytes::Bytes,
    ) -> anyhow::Result<bool> {
        use http_body_util::BodyExt as _;
        self.sender.ready().await?;
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.authority.as_str())
            .body(http_body_util::Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let ok = response.status().is_success();
        response.into_body().collect().await?;
        Ok(ok)
    }
}

/// Blocking-query wake-up: one parked GET, one PUT; time from sending the PUT to the parked
/// GET's answer.
async fn wake_latency(target: &Target, wakes: usize) -> anyhow::Result<Figures> {
    let client = &target.client;
    client.put("/v1/kv/bench/wake", b"0".to_vec()).await?.ok()?;
    let mut latencies = Vec::with_capacity(wakes);
    for i in 0..wakes {
        let index = client.get("/v1/kv/bench/wake").await?.ok()?.index();
        let parked_before = metric(client, "colony_blocking_queries_parked").await;
        let watcher = {
            let client = client.clone();
            tokio::spawn(async move {
                let answer = client
                    .get(&format!("/v1/kv/bench/wake?index={index}&wait=30s"))
                    .await;
                (answer, Instant::now())
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(client, "colony_blocking_queries_parked").await <= parked_before {
            if Instant::now() > deadline {
                bail!("the watcher did not park");
            }
        }
        let sent = Instant::now();
        client
            .put("/v1/kv/bench/wake", format!("{i}").into_bytes())
            .await?
            .ok()?;
        let (answer, woke) = watcher.await.context("watcher task")?;
        if answer?.index() <= index {
            bail!("the watcher woke without a new index");
        }
        latencies.push(woke.duration_since(sent).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let mut figures = Figures::new();
    figures.insert("wake_p50_ms".into(), percentile(&latencies, 0.50));
    figures.insert("wake_p99_ms".into(), percentile(&latencies, 0.99));
    figures.insert("wake_max_ms".into(), percentile(&latencies, 1.0));
    Ok(figures)
}

/// Parks `count` blocking queries on one key, measures the agent's extra memory, then wakes
/// them all with one PUT and measures how long each took to answer.
async fn parked_queries(target: &Target, count: usize) -> anyhow::Result<Figures> {
    let client = &target.client;
    client.put("/v1/kv/bench/herd", b"0".to_vec()).await?.ok()?;
    let index = client.get("/v1/kv/bench/herd").await?.ok()?.index();
    let rss_before = target.pid.map(rss_mib);
    let parked_before = metric(client, "colony_blocking_queries_parked").await;
    let mut watchers = Vec::with_capacity(count);
    for _ in 0..count {
        let client = client.clone();
        watchers.push(tokio::spawn(async move {
            let answer = client
                .get(&format!("/v1/kv/bench/herd?index={index}&wait=60s"))
                .await;
            (answer.map(|a| a.index()).unwrap_or(0), Instant::now())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(client, "colony_blocking_queries_parked").await < parked_before + count as f64 {
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} queries parked within 60 s",
                metric(client, "colony_blocking_queries_parked").await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_parked = target.pid.map(rss_mib);
    let sent = Instant::now();
    client.put("/v1/kv/bench/herd", b"1".to_vec()).await?.ok()?;
    let mut latencies = Vec::with_capacity(count);
    let mut stale = 0;
    for watcher in watchers {
        let (new_index, woke) = watcher.await.context("watcher task")?;
        if new_index <= index {
            stale += 1;
        }
        latencies.push(woke.duration_since(sent).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let mut figures = Figures::new();
    figures.insert("parked".into(), count as f64);
    figures.insert("not_woken_by_change".into(), f64::from(stale));
    figures.insert("wake_all_p50_ms".into(), percentile(&latencies, 0.50));
    figures.insert("wake_all_p99_ms".into(), percentile(&latencies, 0.99));
    figures.insert("wake_all_max_ms".into(), percentile(&latencies, 1.0));
    if let (Some(before), Some(parked)) = (rss_before, rss_parked) {
        figures.insert("extra_rss_mib".into(), parked - before);
        figures.insert(
            "bytes_per_parked_query".into(),
            (parked - before) * 1024.0 * 1024.0 / count as f64,
        );
    }
    Ok(figures)
}

/// This disk's durability ceiling: 4 KiB write + fdatasync in a loop.
fn fsync_probe(dir: &Path, duration: Duration) -> anyhow::Result<Figures> {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("fsync-probe");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let block = vec![0x5au8; 4096];
    let mut latencies = Vec::new();
    let started = Instant::now();
    let mut offset = 0u64;
    while started.elapsed() < duration {
        let t = Instant::now();
        file.write_all_at(&block, offset)?;
        file.sync_data()?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        offset = (offset + 4096) % (4096 * 256);
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    latencies.sort_by(f64::total_cmp);
    let mut figures = Figures::new();
    figures.insert(
        "fsync_per_s".into(),
        latencies.len() as f64 / started.elapsed().as_secs_f64(),
    );
    figures.insert("fsync_p50_ms".into(), percentile(&latencies, 0.50));
    figures.insert("fsync_p99_ms".into(), percentile(&latencies, 0.99));
    Ok(figures)
}

pub(crate) fn summary_line(figures: &Figures) -> String {
    figures
        .iter()
        .map(|(k, v)| format!("{k}={}", round(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn round(value: f64) -> f64 {
    if value.abs() >= 100.0 {
        value.round()
    } else {
        (value * 1000.0).round() / 1000.0
    }
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn report(results: &BTreeMap<String, Vec<Figures>>, json_out: bool) {
    let mut medians: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for (label, runs) in results {
        let keys: Vec<String> = runs
            .first()
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            let mut values: Vec<f64> = runs.iter().filter_map(|f| f.get(&key).copied()).collect();
            let per_run: Vec<f64> = values.iter().map(|v| round(*v)).collect();
            let m = median(&mut values);
            medians
                .entry(label.clone())
                .or_default()
                .insert(key, json!({ "median": round(m), "runs": per_run }));
        }
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "medians": medians })).unwrap_or_default()
        );
        return;
    }
    println!("| workload | metric | median | per run |");
    println!("|---|---|---|---|");
    for (label, figures) in &medians {
        for (key, value) in figures {
            println!(
                "| {label} | {key} | {} | {} |",
                value["median"], value["runs"]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    /// Ports handed out are distinct, bindable for TCP and UDP, and below the ephemeral
    /// range that outbound connections draw their local ports from.
    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let low = super::ephemeral_port_low();
        let mut ports = Vec::new();
        for _ in 0..50 {
            let port = super::free_port().expect("a free port");
            assert!(!ports.contains(&port), "{port} handed out twice");
            if low > 10_000 {
                assert!((10_000..low).contains(&port), "{port} not below {low}");
            }
            let tcp = std::net::TcpListener::bind(("127.0.0.1", port)).expect("TCP bind");
            let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).expect("UDP bind");
            drop((tcp, udp));
            ports.push(port);
        }
    }
}
