//! `colony bench --target etcd-grpc`: the same etcd v3 workloads (puts, linearizable and
//! serializable gets, watch latency with many watchers, lease expiry lateness) against
//! colony's etcd dialect and, with `--against-etcd`, against a real etcd started beside it,
//! alternating systems run by run so machine noise spreads evenly. Reports medians and the
//! ratio colony ÷ etcd for each figure.

use crate::bench::{BenchArgs, Figures, median, percentile, round};
use crate::bench_grpc::UnaryChannel;
use anyhow::{Context, bail};
use colony_etcdpb::etcdserverpb::{
    LeaseGrantRequest, PutRequest, PutResponse, RangeRequest, RangeResponse, StatusRequest,
    WatchCreateRequest, WatchRequest, k_v_client::KVClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient, watch_request,
};
use colony_etcdpb::mvccpb::event::EventType;
use http::Uri;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The workloads of the etcd dialect (`failover` only with several servers).
pub const WORKLOADS: [&str; 8] = [
    "put",
    "get",
    "getser",
    "consistent",
    "keepalive",
    "watch",
    "lease",
    "failover",
];

/// One server process of a system under test, restartable with the same arguments.
struct Member {
    endpoint: String,
    /// Colony's Consul HTTP API address (`None` for etcd).
    http: Option<String>,
    /// Where the process's output goes (appended across restarts).
    log: std::path::PathBuf,
    program: std::path::PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A system under test: one or more processes serving the etcd API.
struct System {
    name: &'static str,
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Drop for System {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

impl System {
    /// The endpoint single-stream workloads (watch writer, leases) use.
    fn endpoint(&self) -> &str {
        &self.members[0].endpoint
    }

    /// The endpoint the watchers use: another member than the writer's when there is one.
    fn watch_endpoint(&self) -> &str {
        &self.members[self.members.len() - 1].endpoint
    }

    fn pids(&self) -> Vec<String> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(|c| c.id().to_string()))
            .collect()
    }

    /// The position of the member every running member names as leader (through the
    /// Maintenance `Status` call: its `leader` is the leader's member ID), if they agree.
    async fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut agreed = None;
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            let channel = connect(&member.endpoint).await.ok()?;
            let status = tokio::time::timeout(
                Duration::from_millis(500),
                MaintenanceClient::new(channel).status(StatusRequest {}),
            )
            .await
            .ok()?
            .ok()?
            .into_inner();
            ids.push(status.header.map_or(0, |h| h.member_id));
            if status.leader == 0 || agreed.is_some_and(|l| l != status.leader) {
                return None;
            }
            agreed = Some(status.leader);
        }
        let leader = agreed?;
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect();
        ids.iter()
            .position(|&id| id == leader)
            .map(|position| running[position])
    }

    /// Waits until every member serves and all agree on a leader.
    async fn wait_ready(&mut self) -> anyhow::Result<usize> {
        let started = Instant::now();
        loop {
            if let Some(leader) = self.leader().await {
                return Ok(leader);
            }
            for member in &mut self.members {
                if let Some(child) = member.child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    let log = std::fs::read_to_string(&member.log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    bail!(
                        "{} ({}) exited with {status}; the end of {}:\n{}",
                        self.name,
                        member.endpoint,
                        member.log.display(),
                        tail.join("\n")
                    );
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{} did not elect a leader within 60 s", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{endpoint}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// `servers` colony agents: a `--dev` node, or servers that bootstrap together.
async fn start_colony(servers: usize) -> anyhow::Result<System> {
    let dir = tempfile::Builder::new().prefix("colony-bench-").tempdir()?;
    let exe = std::env::current_exe().context("locating the colony binary")?;
    let mut gossip = Vec::new();
    for _ in 0..servers {
        gossip.push(format!("127.0.0.1:{}", crate::bench::free_port()?));
    }
    let mut members = Vec::new();
    for (i, bind) in gossip.iter().enumerate() {
        let endpoint = format!("127.0.0.1:{}", crate::bench::free_port()?);
        let mut args: Vec<String> = vec!["agent".into(), "--node".into(), format!("bench{i}")];
        if servers == 1 {
            args.push("--dev".into());
        } else {
            args.extend([
                "--server".into(),
                "--bootstrap-expect".into(),
                servers.to_string(),
            ]);
            args.extend([
                "--rpc-addr".into(),
                format!("127.0.0.1:{}", crate::bench::free_port()?),
            ]);
            args.extend(["--retry-interval".into(), "200ms".into()]);
            for other in gossip.iter().filter(|g| *g != bind) {
                args.extend(["--retry-join".into(), other.clone()]);
            }
        }
        args.extend([
            "--log-level".into(),
            "warn".into(),
            "--bind".into(),
            bind.clone(),
        ]);
        let http = format!("127.0.0.1:{}", crate::bench::free_port()?);
        args.extend(["--http-addr".into(), http.clone()]);
        args.extend(["--grpc-addr".into(), endpoint.clone()]);
        let data_dir = dir.path().join(format!("agent{i}"));
        args.extend(["--data-dir".into(), data_dir.display().to_string()]);
        let mut member = Member {
            endpoint,
            http: Some(http),
            log: dir.path().join(format!("agent{i}.log")),
            program: exe.clone(),
            args,
            child: None,
        };
        member.spawn()?;
        members.push(member);
    }
    let mut system = System {
        name: "colony",
        members,
        _dir: dir,
    };
    system.wait_ready().await?;
    Ok(system)
}

/// `servers` etcd members (fsync on every commit, heartbeat 100 ms, election 1 s: the defaults).
async fn start_etcd(binary: &str, servers: usize) -> anyhow::Result<System> {
    let dir = tempfile::Builder::new().prefix("etcd-bench-").tempdir()?;
    let mut ports = Vec::new();
    for _ in 0..servers {
        ports.push((crate::bench::free_port()?, crate::bench::free_port()?));
    }
    let cluster: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect();
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let endpoint = format!("127.0.0.1:{client}");
        let data_dir = dir.path().join(format!("etcd{i}"));
        let args = vec![
            "--name".into(),
            format!("m{i}"),
            "--log-level".into(),
            "warn".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen-client-urls".into(),
            format!("http://{endpoint}"),
            "--advertise-client-urls".into(),
            format!("http://{endpoint}"),
            "--listen-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{peer}"),
            "--initial-cluster".into(),
            cluster.join(","),
            "--initial-cluster-state".into(),
            "new".into(),
        ];
        let mut member = Member {
            endpoint,
            http: None,
            log: dir.path().join(format!("etcd{i}.log")),
            program: binary.into(),
            args,
            child: None,
        };
        member
            .spawn()
            .context("starting etcd (Debian: apt-get install etcd-server)")?;
        members.push(member);
    }
    let mut system = System {
        name: "etcd",
        members,
        _dir: dir,
    };
    system.wait_ready().await?;
    Ok(system)
}

/// Runs the etcd-dialect benchmark.
pub async fn run(args: &BenchArgs, json_out: bool) -> anyhow::Result<std::process::ExitCode> {
    let duration = crate::bench::duration_arg(&args.duration, "duration")?;
    let warmup = crate::bench::duration_arg(&args.warmup, "warmup")?;
    let servers = usize::from(args.servers);
    let mut workloads = crate::bench::workload_list(&args.workloads, &WORKLOADS)?;
    if servers == 1 {
        if args.workloads != "all" && workloads.iter().any(|w| w == "failover") {
            bail!("the failover workload needs --servers 3 (or more)");
        }
        workloads.retain(|w| w != "failover");
    }
    let put_clients = crate::bench::client_counts(&args.put_clients)?;
    let mut systems = vec![start_colony(servers).await?];
    if args.against_etcd {
        systems.push(start_etcd(&args.etcd_bin, servers).await?);
    }
    for system in &systems {
        let endpoints: Vec<&str> = system.members.iter().map(|m| m.endpoint.as_str()).collect();
        eprintln!(
            "{}: pids {}, gRPC {}",
            system.name,
            system.pids().join(","),
            endpoints.join(",")
        );
    }
    let mut results: BTreeMap<(String, String), Vec<Figures>> = BTreeMap::new();
    for run in 1..=args.runs {
        for system in &mut systems {
            for workload in &workloads {
                let configs: Vec<usize> = match workload.as_str() {
                    "put" => put_clients.clone(),
                    "get" | "getser" | "consistent" | "keepalive" => vec![args.read_clients],
                    _ => vec![0],
                };
                for clients in configs {
                    let label = if clients > 0 {
                        format!("{workload}_c{clients}")
                    } else {
                        workload.clone()
                    };
                    eprintln!("[run {run}/{}] {} {label} ...", args.runs, system.name);
                    let figures = match workload.as_str() {
                        "watch" => watch_latency(system, args.watchers, args.watch_events).await?,
                        "failover" => failover(system).await?,
                        "lease" => lease_lateness(system, args.leases, args.lease_ttl_s).await?,
                        "keepalive" => {
                            keepalive_loop(system, clients, args.conns, warmup, duration).await?
                        }
                        "consistent" if system.members[0].http.is_some() => {
                            consul_consistent_loop(system, clients, args, warmup, duration).await?
                        }
                        "consistent" => {
                            closed_loop(system, "get", clients, args, warmup, duration).await?
                        }
                        kind => closed_loop(system, kind, clients, args, warmup, duration).await?,
                    };
                    eprintln!("           {}", crate::bench::summary_line(&figures));
                    results
                        .entry((label, system.name.to_string()))
                        .or_default()
                        .push(figures);
                }
            }
        }
    }
    report(&results, json_out);
    Ok(std::process::ExitCode::SUCCESS)
}

async fn closed_loop(
    system: &System,
    kind: &str,
    clients: usize,
    args: &BenchArgs,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let callers = KvCaller::spread(system, args).await?;
    let value = vec![b'v'; args.value_bytes];
    let first = PutRequest {
        key: b"bench/get".to_vec(),
        value: value.clone(),
        ..PutRequest::default()
    };
    callers[0]
        .clone()
        .put(first)
        .await
        .with_context(|| format!("{}: the first put", system.name))?;
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let mut tasks = Vec::with_capacity(clients);
    for worker in 0..clients {
        // Each request goes to the next member (the connections cycle through them), so even
        // one client sends two thirds of its requests through a follower of three, as the
        // many-client runs do, whichever member leads.
        let mut callers = callers.clone();
        let value = value.clone();
        let kind = kind.to_string();
        tasks.push(tokio::spawn(async move {
            let mut tally = crate::bench::Tally::new(measure_from, stop_at);
            for i in 0u64.. {
                let Some(sent) = tally.start() else { break };
                let next = (worker + i as usize) % callers.len();
                let caller = &mut callers[next];
                let answered = match kind.as_str() {
                    "put" => caller
                        .put(PutRequest {
                            key: format!("bench/w{worker}/k{}", i % 1024).into_bytes(),
                            value: value.clone(),
                            ..PutRequest::default()
                        })
                        .await
                        .is_ok(),
                    _ => caller
                        .range(RangeRequest {
                            key: b"bench/get".to_vec(),
                            serializable: kind == "getser",
                            ..RangeRequest::default()
                        })
                        .await
                        .is_ok(),
                };
                tally.record(sent, answered);
            }
            tally.finish()
        }));
    }
    crate::bench::measure_window(system.pids(), tasks, measure_from, stop_at, duration).await
}

/// Consul's consistent reads (`GET /v1/kv/<key>?consistent`, a ReadIndex round at the leader,
/// Consul's strongest read mode): the `consistent` workload's colony side, which issue 4
/// compares with etcd's linearizable Range (the same workload's etcd side). Each client keeps
/// one HTTP/1.1 connection to every member and sends each request to the next member, as the
/// gRPC clients do.
async fn consul_consistent_loop(
    system: &System,
    clients: usize,
    args: &BenchArgs,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Figures> {
    let addrs: Vec<String> = system
        .members
        .iter()
        .filter_map(|m| m.http.clone())
        .collect();
    let mut first = crate::bench::Connection::open(&addrs[0]).await?;
    let value = bytes::Bytes::from(vec![b'v'; args.value_bytes]);
    if !first
        .send(hyper::Method::PUT, "/v1/kv/bench/get", value)
        .await?
    {
        bail!("writing the key to read failed");
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let mut tasks = Vec::with_capacity(clients);
    for worker in 0..clients {
        let mut connections = Vec::with_capacity(addrs.len());
        for addr in &addrs {
            connections.push(crate::bench::Connection::open(addr).await?);
        }
        tasks.push(tokio::spawn(async move {
            let mut tally = crate::bench::Tally::new(measure_from, stop_at);
            for i in 0u64.. {
                let Some(sent) = tally.start() else { break };
                let next = (worker + i as usize) % connections.len();
                let answer = connections[next]
                    .send(
                        hyper::Method::GET,
                        "/v1/kv/bench/get?consistent",
                        bytes::Bytes::new(),
                    )
                    .await;
                tally.record(sent, matches!(answer, Ok(true)));
            }
            tally.finish()
        }));
    }
    crate::bench::measure_window(system.pids(), tasks, measure_from, stop_at, duration).await
}

/// One connection the closed-loop put and get workloads call through, by `--grpc-client`.
#[derive(Clone)]
enum KvCaller {
    Lean {
        channel: UnaryChannel,
        put: Uri,
        range: Uri,
    },
    Tonic(KVClient<Channel>),
}

impl KvCaller {
    /// One caller per connection of [`spread_endpoints`], with the client `args` names.
    async fn spread(system: &System, args: &BenchArgs) -> anyhow::Result<Vec<KvCaller>> {
        let mut callers = Vec::new();
        for endpoint in spread_endpoints(system, args.conns) {
            callers.push(if args.grpc_client == "tonic" {
                KvCaller::Tonic(KVClient::new(connect(endpoint).await?))
            } else {
                let channel = UnaryChannel::connect(endpoint).await?;
                KvCaller::Lean {
                    put: channel.method("/etcdserverpb.KV/Put")?,
                    range: channel.method("/etcdserverpb.KV/Range")?,
                    channel,
                }
            });
        }
        Ok(callers)
    }

    async fn put(&mut self, request: PutRequest) -> anyhow::Result<PutResponse> {
        match self {
            KvCaller::Lean { channel, put, .. } => channel.call(put, &request).await,
            KvCaller::Tonic(kv) => Ok(kv.put(request).await?.into_inner()),
        }
    }

    async fn range(&mut self, request: RangeRequest) -> anyhow::Result<RangeResponse> {
        match self {
            KvCaller::Lean { channel, range, .. } => channel.call(range, &request).await,
            KvCaller::Tonic(kv) => Ok(kv.range(request).await?.into_inner()),
        }
    }
}

/// The endpoints of `conns` connections per member (at least one), member after member, so
/// that closed-loop clients, taking the connections in turn, spread over every member as a
/// client given all endpoints would.
fn spread_endpoints(system: &System, conns: usize) -> impl Iterator<Item = &str> {
    (0..conns.max(1)).flat_map(|_| system.members.iter().map(|m| m.endpoint.as_str()))
}

/// A gRPC connection to each of [`spread_endpoints`].
async fn spread_channels(system: &System, conns: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for endpoint in spread_endpoints(system, conns) {
        channels.push(connect(endpoint).await?);
    }
    Ok(channels)
}

/// Leader SIGKILL: time from the kill to the first acknowledged put on a survivor (8 clients
/// keep trying, each attempt cut off after 250 ms), and to every survivor naming a new leader;
/// then the killed member restarts on its data and the cluster must agree on a leader again.
async fn failover(system: &mut System) -> anyhow::Result<Figures> {
    let leader = system.wait_ready().await?;
    let mut survivors = Vec::new();
    for (i, member) in system.members.iter().enumerate() {
        if i != leader {
            survivors.push(connect(&member.endpoint).await?);
        }
    }
    let killed_at = Instant::now();
    system.members[leader].kill();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Duration>(8);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for worker in 0..8 {
        let mut kv = KVClient::new(survivors[worker % survivors.len()].clone());
        let done_tx = done_tx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let put = kv.put(PutRequest {
                    key: format!("bench/failover/{worker}").into_bytes(),
                    value: b"x".to_vec(),
                    ..PutRequest::default()
                });
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(250), put).await {
                    let _ = done_tx.send(killed_at.elapsed()).await;
                    return;
                }
            }
        });
    }
    let first_put = tokio::time::timeout(Duration::from_secs(30), done_rx.recv())
        .await
        .ok()
        .flatten();
    stop.store(true, Ordering::Relaxed);
    let Some(first_put) = first_put else {
        bail!(
            "{}: no put succeeded within 30 s of the leader's SIGKILL",
            system.name
        );
    };
    let mut new_leader = None;
    while new_leader.is_none() && killed_at.elapsed() < Duration::from_secs(30) {
        new_leader = system.leader().await.map(|_| killed_at.elapsed());
        if new_leader.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    system.members[leader].spawn()?;
    system.wait_ready().await?;
    let mut figures = Figures::new();
    figures.insert("first_put_ms".into(), first_put.as_secs_f64() * 1000.0);
    figures.insert(
        "new_leader_ms".into(),
        new_leader.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
    );
    Ok(figures)
}

/// Closed-loop lease keep-alives: each client holds one lease and renews it over its own
/// keep-alive stream, one request in flight at a time.
async fn keepalive_loop(
    system: &System,
    clients: usize,
    conns: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Figures> {
    use colony_etcdpb::etcdserverpb::LeaseKeepAliveRequest;
    let channels = spread_channels(system, conns).await?;
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let mut tasks = Vec::with_capacity(clients);
    for worker in 0..clients {
        let mut lease = LeaseClient::new(channels[worker % channels.len()].clone());
        let id = lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await?
            .into_inner()
            .id;
        let (tx, rx) = tokio::sync::mpsc::channel::<LeaseKeepAliveRequest>(1);
        tx.send(LeaseKeepAliveRequest { id }).await?;
        let mut responses = lease
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::with_capacity(16 * 1024);
            let mut errors = 0u64;
            let mut sent = Instant::now();
            loop {
                match responses.message().await {
                    Ok(Some(response)) if response.ttl > 0 => {
                        if sent >= measure_from {
                            latencies_us.push(sent.elapsed().as_secs_f64() * 1e6);
                        }
                    }
                    _ => errors += 1,
                }
                sent = Instant::now();
                if sent >= stop_at || tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                    break;
                }
            }
            (latencies_us, errors)
        }));
    }
    crate::bench::measure_window(system.pids(), tasks, measure_from, stop_at, duration).await
}

/// Opens a watch stream with `creates` queued before the stream is awaited (etcd sends the
/// response headers only with its first message). Keep the sender to keep the stream open.
async fn open_watch(
    channel: Channel,
    creates: Vec<WatchCreateRequest>,
) -> anyhow::Result<(
    tokio::sync::mpsc::Sender<WatchRequest>,
    tonic::Streaming<colony_etcdpb::etcdserverpb::WatchResponse>,
)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(creates.len() + 1);
    for create in creates {
        tx.send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
        })
        .await?;
    }
    let inbound = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, inbound))
}

/// `watchers` watchers of one key, 100 per stream; a writer puts `events` values 10 ms apart;
/// each watcher's put-sent → event-received latency is recorded, and events that never arrive
/// are counted as lost.
async fn watch_latency(system: &System, watchers: usize, events: usize) -> anyhow::Result<Figures> {
    const PER_STREAM: usize = 100;
    static ROUND: AtomicU64 = AtomicU64::new(0);
    let key = format!("bench/watch/{}", ROUND.fetch_add(1, Ordering::Relaxed));
    let epoch = Instant::now();
    let sent_ns: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let streams = watchers.div_ceil(PER_STREAM);
    let mut ready = Vec::new();
    let mut tasks = Vec::new();
    for stream in 0..streams {
        let count = PER_STREAM.min(watchers - stream * PER_STREAM);
        let channel = connect(system.watch_endpoint()).await?;
        let create = WatchCreateRequest {
            key: key.clone().into_bytes(),
            ..WatchCreateRequest::default()
        };
        let (tx, mut inbound) = open_watch(channel, vec![create; count]).await?;
        let (created_tx, created_rx) = tokio::sync::oneshot::channel();
        ready.push(created_rx);
        let sent_ns = sent_ns.clone();
        tasks.push(tokio::spawn(async move {
            let _keep_open = tx;
            let mut created = 0;
            let mut created_tx = Some(created_tx);
            let mut latencies_us = Vec::with_capacity(count * events);
            let mut received = 0usize;
            let want = count * events;
            while received < want {
                let next = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await;
                let Ok(Ok(Some(response))) = next else { break };
                if response.created {
                    created += 1;
                    if created == count
                        && let Some(signal) = created_tx.take()
                    {
                        let _ = signal.send(());
                    }
                }
                let now_ns = epoch.elapsed().as_nanos() as u64;
                for event in response.events {
                    if event.r#type != EventType::Put as i32 {
                        continue;
                    }
                    let Some(i) = event
                        .kv
                        .and_then(|kv| String::from_utf8(kv.value).ok())
                        .and_then(|v| v.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    received += 1;
                    let sent = sent_ns[i].load(Ordering::Acquire);
                    latencies_us.push(now_ns.saturating_sub(sent) as f64 / 1000.0);
                }
            }
            (latencies_us, want - received)
        }));
    }
    for created in ready {
        tokio::time::timeout(Duration::from_secs(30), created)
            .await
            .context("watchers were not created")??;
    }
    let mut kv = KVClient::new(connect(system.endpoint()).await?);
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    for (i, sent) in sent_ns.iter().enumerate() {
        ticker.tick().await;
        sent.store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
        kv.put(PutRequest {
            key: key.clone().into_bytes(),
            value: i.to_string().into_bytes(),
            ..PutRequest::default()
        })
        .await?;
    }
    let mut latencies = Vec::new();
    let mut lost = 0;
    for task in tasks {
        let (mut lat, missing) = task.await.context("watch task")?;
        latencies.append(&mut lat);
        lost += missing;
    }
    latencies.sort_by(f64::total_cmp);
    let mut figures = Figures::new();
    figures.insert("watchers".into(), watchers as f64);
    figures.insert("p50_ms".into(), percentile(&latencies, 0.50) / 1000.0);
    figures.insert("p99_ms".into(), percentile(&latencies, 0.99) / 1000.0);
    figures.insert("lost_events".into(), lost as f64);
    Ok(figures)
}

/// `leases` leases of `ttl_s` seconds with one key each, never kept alive; lateness is the time
/// from (grant request sent + TTL) to the key's delete event. Negative would mean early.
async fn lease_lateness(system: &System, leases: usize, ttl_s: i64) -> anyhow::Result<Figures> {
    let channel = connect(system.endpoint()).await?;
    let mut kv = KVClient::new(channel.clone());
    let mut lease = LeaseClient::new(channel.clone());
    let prefix = format!("bench/lease/{}/", std::process::id());
    let now = kv
        .range(RangeRequest {
            key: b"bench/none".to_vec(),
            ..RangeRequest::default()
        })
        .await?
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    let create = WatchCreateRequest {
        key: prefix.clone().into_bytes(),
        range_end: colony_store::prefix_end(prefix.as_bytes()),
        start_revision: now + 1,
        ..WatchCreateRequest::default()
    };
    let (tx, mut inbound) = open_watch(channel, vec![create]).await?;
    let mut due: BTreeMap<Vec<u8>, Instant> = BTreeMap::new();
    for i in 0..leases {
        let sent = Instant::now();
        let granted = lease
            .lease_grant(LeaseGrantRequest { ttl: ttl_s, id: 0 })
            .await?
            .into_inner();
        let key = format!("{prefix}{i}").into_bytes();
        kv.put(PutRequest {
            key: key.clone(),
            value: b"x".to_vec(),
            lease: granted.id,
            ..PutRequest::default()
        })
        .await?;
        due.insert(key, sent + Duration::from_secs(granted.ttl.max(0) as u64));
    }
    let mut lateness_ms = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(ttl_s.max(1) as u64 * 10);
    while !due.is_empty() && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Ok(Some(response))) = tokio::time::timeout(left, inbound.message()).await else {
            break;
        };
        let arrived = Instant::now();
        for event in response.events {
            if event.r#type != EventType::Delete as i32 {
                continue;
            }
            let Some(key) = event.kv.map(|kv| kv.key) else {
                continue;
            };
            if let Some(at) = due.remove(&key) {
                let late = if arrived >= at {
                    (arrived - at).as_secs_f64() * 1000.0
                } else {
                    -((at - arrived).as_secs_f64() * 1000.0)
                };
                lateness_ms.push(late);
            }
        }
    }
    drop(tx);
    lateness_ms.sort_by(f64::total_cmp);
    let mut figures = Figures::new();
    figures.insert("late_p50_ms".into(), percentile(&lateness_ms, 0.5));
    figures.insert(
        "late_max_ms".into(),
        lateness_ms.last().copied().unwrap_or(f64::NAN),
    );
    figures.insert(
        "late_min_ms".into(),
        lateness_ms.first().copied().unwrap_or(f64::NAN),
    );
    figures.insert("never_expired".into(), due.len() as f64);
    Ok(figures)
}

fn report(results: &BTreeMap<(String, String), Vec<Figures>>, json_out: bool) {
    let mut medians: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>> = BTreeMap::new();
    for ((label, system), runs) in results {
        let keys: Vec<String> = runs
            .first()
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            let mut values: Vec<f64> = runs.iter().filter_map(|f| f.get(&key).copied()).collect();
            medians
                .entry(label.clone())
                .or_default()
                .entry(key)
                .or_default()
                .insert(system.clone(), round(median(&mut values)));
        }
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "medians": medians })).unwrap_or_default()
        );
        return;
    }
    println!("| workload | metric | colony | etcd | colony ÷ etcd |");
    println!("|---|---|---|---|---|");
    for (label, figures) in &medians {
        for (key, by_system) in figures {
            let colony = by_system.get("colony").copied();
            let etcd = by_system.get("etcd").copied();
            let show = |v: Option<f64>| v.map_or("–".to_string(), |v| Value::from(v).to_string());
            let ratio = match (colony, etcd) {
                (Some(c), Some(e)) if e != 0.0 => format!("{:.2}", c / e),
                _ => "–".to_string(),
            };
            println!(
                "| {label} | {key} | {} | {} | {ratio} |",
                show(colony),
                show(etcd)
            );
        }
    }
}
