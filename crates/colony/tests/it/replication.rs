//! Replicated servers as real processes on loopback: a cluster forms through gossip with
//! `--bootstrap-expect`, writes sent to any server are replicated, the leader's SIGKILL is
//! survived, a restarted server catches up, a new server is added and a dead one removed.

use crate::support::{cli, colony_bin, free_addr, http, mount_tmpfs, prometheus_value, wait_until};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The election timeout the servers of these tests use (etcd's and colony's default).
const ELECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// One server process; killed on drop.
struct Server {
    name: String,
    http: SocketAddr,
    gossip: SocketAddr,
    rpc: SocketAddr,
    grpc: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn new(dir: &Path, name: &str) -> Server {
        Server {
            name: name.to_string(),
            http: free_addr(),
            gossip: free_addr(),
            rpc: free_addr(),
            grpc: free_addr(),
            data_dir: dir.join(name),
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    fn start(&mut self, expect: usize, join: Option<SocketAddr>, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = Command::new(colony_bin());
        command
            .args(["agent", "--server", "--node", &self.name])
            .args(["--bootstrap-expect", &expect.to_string()])
            .args(["--http-addr", &self.http.to_string()])
            .args(["--bind", &self.gossip.to_string()])
            .args(["--rpc-addr", &self.rpc.to_string()])
            .args(["--grpc-addr", &self.grpc.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(extra);
        if let Some(seed) = join {
            command
                .args(["--retry-join", &seed.to_string()])
                .args(["--retry-interval", "200ms"]);
        }
        let child = command
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn colony agent");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get_text(&self, path: &str) -> Option<(u16, String)> {
        http(self.http, "GET", path, b"")
            .ok()
            .map(|r| (r.status, r.text()))
    }

    /// The leader's RPC address as this server reports it ("" if none).
    fn leader(&self) -> Option<String> {
        let (status, text) = self.get_text("/v1/status/leader")?;
        (status == 200).then(|| text.trim_matches('"').to_string())
    }

    fn peers(&self) -> Vec<String> {
        self.get_text("/v1/status/peers")
            .and_then(|(_, text)| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    fn put(&self, key: &str, value: &str) -> Option<u16> {
        http(self.http, "PUT", &format!("/v1/kv/{key}"), value.as_bytes())
            .ok()
            .map(|r| r.status)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    servers: Vec<Server>,
    /// The directory the servers' files are in, when the cluster made it.
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `n` servers that bootstrap together, and waits until all agree on a leader.
    fn start(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = Cluster::start_in(dir.path(), n, extra);
        cluster.dir = Some(dir);
        cluster
    }

    /// As [`Cluster::start`], with the servers' files in `dir` (`dir/s1`, `dir/s2`, ...).
    fn start_in(dir: &Path, n: usize, extra: &[&str]) -> Cluster {
        let mut servers: Vec<Server> = (1..=n)
            .map(|i| Server::new(dir, &format!("s{i}")))
            .collect();
        let seed = servers[0].gossip;
        for (i, server) in servers.iter_mut().enumerate() {
            server.start(n, (i > 0).then_some(seed), extra);
        }
        let cluster = Cluster { servers, dir: None };
        cluster.wait_for_leader(&[], Duration::from_secs(30));
        cluster
    }

    /// Starts every (stopped) server again on its data dir, all joining the first, and waits
    /// until they agree on a leader.
    fn start_all_again(&mut self) {
        let seed = self.servers[0].gossip;
        let count = self.servers.len();
        for (i, server) in self.servers.iter_mut().enumerate() {
            server.start(count, (i > 0).then_some(seed), &[]);
        }
        self.wait_for_leader(&[], Duration::from_secs(30));
    }

    fn dump_logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("--- {} ---\n{}", s.name, s.log_text()))
            .collect()
    }

    /// Waits until every running server except `skip` names the same leader, which is one of
    /// them; returns its position.
    fn wait_for_leader(&self, skip: &[usize], deadline: Duration) -> usize {
        let start = Instant::now();
        loop {
            let running: Vec<&Server> = self
                .servers
                .iter()
                .enumerate()
                .filter(|(i, s)| !skip.contains(i) && s.child.is_some())
                .map(|(_, s)| s)
                .collect();
            let leaders: Vec<Option<String>> = running.iter().map(|s| s.leader()).collect();
            if let Some(Some(leader)) = leaders.first()
                && !leader.is_empty()
                && leaders.iter().all(|l| l.as_deref() == Some(leader))
                && let Some(position) = self
                    .servers
                    .iter()
                    .position(|s| s.rpc.to_string() == *leader && s.child.is_some())
            {
                return position;
            }
            assert!(
                start.elapsed() < deadline,
                "no agreed leader after {deadline:?}: {leaders:?}\n{}",
                self.dump_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn replication_three_servers_agree_on_a_leader_and_serve_writes_from_any_server() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    // A server can hear the leader's heartbeat before the configuration entry reaches it,
    // so each one's peer list is awaited, not read once.
    let mut expected: Vec<String> = cluster.servers.iter().map(|s| s.rpc.to_string()).collect();
    expected.sort();
    for server in &cluster.servers {
        wait_until(
            &format!("{} to list every server as a peer", server.name),
            Duration::from_secs(10),
            || {
                let mut peers = server.peers();
                peers.sort();
                peers == expected
            },
        );
    }
    // Every server takes writes (followers forward them) and every server reads them back.
    for (i, server) in cluster.servers.iter().enumerate() {
        assert_eq!(
            server.put(&format!("from/{i}"), &format!("v{i}")),
            Some(200)
        );
    }
    for server in &cluster.servers {
        for i in 0..3 {
            let (status, text) = server
                .get_text(&format!("/v1/kv/from/{i}?raw&consistent"))
                .expect("read");
            assert_eq!(
                (status, text.as_str()),
                (200, format!("v{i}").as_str()),
                "{}",
                server.name
            );
        }
    }
    // A follower's stale read says it is stale and how long since it heard the leader.
    let follower = &cluster.servers[(leader + 1) % 3];
    let response = http(follower.http, "GET", "/v1/kv/from/0?stale", b"").expect("stale read");
    assert_eq!(response.status, 200);
    assert!(response.header("x-consul-lastcontact").is_some());
    let evidence = response
        .header("x-colony-evidence")
        .unwrap_or_default()
        .to_string();
    assert!(
        evidence.contains("freshness=\"bounded-stale\""),
        "{evidence}"
    );
    let response = http(follower.http, "GET", "/v1/kv/from/0?stale&consistent", b"").expect("read");
    assert_eq!(response.status, 400, "{}", response.text());
    // The leader's catalog knows every server (each registered itself through the leader).
    wait_until("three catalog nodes", Duration::from_secs(10), || {
        cluster.servers[leader]
            .get_text("/v1/catalog/nodes")
            .is_some_and(|(_, text)| (1..=3).all(|i| text.contains(&format!("\"s{i}\""))))
    });
    let (_, config) = cluster.servers[leader]
        .get_text("/v1/operator/raft/configuration")
        .expect("configuration");
    let config: serde_json::Value = serde_json::from_str(&config).expect("json");
    let servers = config["Servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 3);
    assert_eq!(servers.iter().filter(|s| s["Leader"] == true).count(), 1);
    // The operator CLI lists the same voters, and removes one through the leader's agent.
    let (code, out, err) = cli(
        cluster.servers[leader].http,
        &["operator", "raft", "list-peers"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains("\tleader\t")).count(),
        1,
        "{out}"
    );
    assert_eq!(out.lines().count(), 4, "a header and three voters: {out}");
    // remove-peer is for servers that are gone (a live one would be added back).
    let removed_at = (leader + 2) % 3;
    cluster.servers[removed_at].kill();
    let removed = &cluster.servers[removed_at];
    // By the ID list-peers shows (columns: node, ID, address, state, voter).
    let removed_id = out
        .lines()
        .find(|line| line.contains(&removed.rpc.to_string()))
        .and_then(|line| line.split('\t').nth(1))
        .unwrap_or_else(|| panic!("{} in {out}", removed.rpc))
        .to_string();
    let (code, _, err) = cli(
        cluster.servers[leader].http,
        &["operator", "raft", "remove-peer", "--id", &removed_id],
    );
    assert_eq!(code, 0, "{err}");
    wait_until("two voters", Duration::from_secs(10), || {
        cluster.servers[leader].peers().len() == 2
    });
    assert_eq!(cluster.servers[leader].put("with-two", "v"), Some(200));
}

#[test]
fn replication_leader_sigkill_writes_resume_within_two_election_timeouts() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    let survivor = (leader + 1) % 3;
    assert_eq!(cluster.servers[survivor].put("before", "1"), Some(200));
    cluster.servers[leader].kill();
    let killed = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        if cluster.servers[survivor].put("after", "2") == Some(200) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "no write succeeded after the leader died\n{}",
            cluster.dump_logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let failover = killed.elapsed();
    assert!(
        failover < 2 * ELECTION_TIMEOUT,
        "the first write after the leader's SIGKILL took {failover:?} ({attempts} attempts)\n{}",
        cluster.dump_logs()
    );
    let new_leader = cluster.wait_for_leader(&[leader], Duration::from_secs(5));
    assert_ne!(new_leader, leader);
    for (i, server) in cluster.servers.iter().enumerate() {
        if i == leader {
            continue;
        }
        let (_, text) = server
            .get_text("/v1/kv/before?raw&consistent")
            .expect("read");
        assert_eq!(
            text, "1",
            "an acknowledged write survives the failover on {}",
            server.name
        );
    }
    // The new leader mirrors membership: the dead server's node check goes critical.
    let dead_name = cluster.servers[leader].name.clone();
    wait_until(
        "the dead server's node check is critical",
        Duration::from_secs(30),
        || {
            cluster.servers[new_leader]
                .get_text(&format!("/v1/health/node/{dead_name}"))
                .is_some_and(|(_, text)| text.contains("serfHealth") && text.contains("critical"))
        },
    );
    // The old leader restarts, rejoins as a follower and catches up.
    let seed = cluster.servers[new_leader].gossip;
    cluster.servers[leader].start(3, Some(seed), &[]);
    wait_until("the old leader catches up", Duration::from_secs(20), || {
        cluster.servers[leader]
            .get_text("/v1/kv/after?raw&stale")
            .is_some_and(|(status, text)| status == 200 && text == "2")
    });
    wait_until(
        "the restarted server's node check passes",
        Duration::from_secs(30),
        || {
            cluster.servers[new_leader]
                .get_text(&format!("/v1/health/node/{dead_name}?consistent"))
                .is_some_and(|(_, text)| text.contains("serfHealth") && text.contains("passing"))
        },
    );
}

#[test]
fn replication_new_server_is_added_and_dead_server_is_removed() {
    let extra = ["--dead-server-cleanup", "2s"];
    let mut cluster = Cluster::start(3, &extra);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    for i in 0..20 {
        assert_eq!(
            cluster.servers[leader].put(&format!("k/{i}"), "v"),
            Some(200)
        );
    }
    // A fourth server with the same --bootstrap-expect sees four servers: it does not
    // bootstrap, and the leader adds it as a voter; it receives the whole log.
    let dir = cluster.dir.as_ref().expect("own dir").path().to_path_buf();
    let mut fourth = Server::new(&dir, "s4");
    fourth.start(3, Some(cluster.servers[leader].gossip), &extra);
    cluster.servers.push(fourth);
    wait_until("four voters", Duration::from_secs(20), || {
        cluster.servers[leader].peers().len() == 4
    });
    wait_until(
        "the new server has the data",
        Duration::from_secs(20),
        || {
            cluster.servers[3]
                .get_text("/v1/kv/k/19?raw&stale")
                .is_some_and(|(status, _)| status == 200)
        },
    );
    // It dies; after the cleanup time the leader removes it (three remain, a quorum).
    cluster.servers[3].kill();
    wait_until(
        "the dead server is removed",
        Duration::from_secs(30),
        || cluster.servers[leader].peers().len() == 3,
    );
    assert_eq!(cluster.servers[leader].put("after-cleanup", "v"), Some(200));
}

#[test]
fn replication_without_quorum_consistent_reads_fail_and_stale_reads_answer() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    assert_eq!(cluster.servers[leader].put("k", "v"), Some(200));
    let survivor = (leader + 1) % 3;
    wait_until(
        "the survivor has the write",
        Duration::from_secs(10),
        || {
            cluster.servers[survivor]
                .get_text("/v1/kv/k?raw&stale")
                .is_some_and(|(status, _)| status == 200)
        },
    );
    for (i, server) in cluster.servers.iter_mut().enumerate() {
        if i != survivor {
            server.kill();
        }
    }
    let server = &cluster.servers[survivor];
    let (status, text) = server.get_text("/v1/kv/k?consistent").expect("answer");
    assert_eq!(status, 503, "a consistent read without quorum: {text}");
    let response = http(server.http, "GET", "/v1/kv/k?raw&stale", b"").expect("stale read");
    assert_eq!((response.status, response.text().as_str()), (200, "v"));
    let last_contact: u64 = response
        .header("x-consul-lastcontact")
        .and_then(|v| v.parse().ok())
        .expect("last contact header");
    assert!(
        last_contact >= 1_000,
        "the leader was lost over 10 s ago: {last_contact}"
    );
    let (status, _) = server.get_text("/v1/kv/k?max_stale=500ms").expect("answer");
    assert_eq!(status, 503, "a read older than max_stale cannot be served");
}

/// Sends `signal` to a running server's process.
fn signal(server: &Server, signal: rustix::process::Signal) {
    let child = server.child.as_ref().expect("running");
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, signal).expect("signal the server");
}

/// The freshness a read's evidence names, if it answered 200.
fn read_freshness(server: &Server, path: &str) -> Option<String> {
    let response = http(server.http, "GET", path, b"").ok()?;
    let evidence = response.header("x-colony-evidence")?.to_string();
    let (_, rest) = evidence.split_once("freshness=\"")?;
    (response.status == 200).then(|| rest.split('"').next().unwrap_or_default().to_string())
}

/// Consul's default reads rest on the leader's lease. A leader whose followers stop
/// answering (paused, their sockets open) must stop calling its own state fresh once the
/// lease (0.9 election timeouts from the last answered heartbeat) can have lapsed, and gets
/// it back when they answer again.
#[test]
fn replication_leader_lease_lapses_when_the_followers_stop_answering() {
    use rustix::process::Signal;
    let cluster = Cluster::start(3, &[]);
    let first = cluster.wait_for_leader(&[], Duration::from_secs(5));
    assert_eq!(cluster.servers[first].put("k", "v"), Some(200));
    // The lease needs a commit in the leader's term and a heartbeat round answered since;
    // on a loaded machine it can lapse for a moment, or leadership move, before the pause.
    let mut leader = first;
    wait_until("a leader with a lease", Duration::from_secs(10), || {
        let holder = (0..3).find(|&i| {
            read_freshness(&cluster.servers[i], "/v1/kv/k?stale").as_deref() == Some("fresh")
        });
        leader = holder.unwrap_or(leader);
        holder.is_some()
    });
    let server = &cluster.servers[leader];
    assert_eq!(read_freshness(server, "/v1/kv/k").as_deref(), Some("fresh"));
    let followers: Vec<&Server> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| &cluster.servers[i])
        .collect();
    for follower in &followers {
        signal(follower, Signal::STOP);
    }
    let paused = Instant::now();
    let lapsed_by = ELECTION_TIMEOUT * 9 / 10 + Duration::from_millis(50);
    let mut lapsed_seen = false;
    while paused.elapsed() < 3 * ELECTION_TIMEOUT {
        let sent = paused.elapsed();
        if let Some(freshness) = read_freshness(server, "/v1/kv/k?stale") {
            if sent > lapsed_by {
                assert_ne!(freshness, "fresh", "a read sent {sent:?} after the pause");
            }
            lapsed_seen |= freshness == "bounded-stale";
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(lapsed_seen, "the leader's reads turned bounded-stale");
    for follower in &followers {
        signal(follower, Signal::CONT);
    }
    wait_until(
        "a leader with a lease again",
        Duration::from_secs(15),
        || {
            cluster.servers.iter().any(|s| {
                read_freshness(s, "/v1/kv/k?stale").as_deref() == Some("fresh")
                    && s.get_text("/v1/kv/k?raw")
                        .is_some_and(|(status, _)| status == 200)
            })
        },
    );
}

#[test]
fn replication_etcdctl_writes_on_one_follower_and_reads_linearizably_on_another() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    let (a, b) = (
        &cluster.servers[(leader + 1) % 3],
        &cluster.servers[(leader + 2) % 3],
    );
    let etcdctl = |server: &Server, args: &[&str]| {
        let (ok, out, _) = etcdctl_on(server, args);
        (ok, out)
    };
    for i in 0..10 {
        let (ok, _) = etcdctl(a, &["put", &format!("e/{i}"), &format!("v{i}")]);
        assert!(ok, "put on a follower");
        // Linearizable: the other follower sees the acknowledged write at once.
        let (ok, out) = etcdctl(b, &["get", &format!("e/{i}"), "--print-value-only"]);
        assert!(ok);
        assert_eq!(out.trim(), format!("v{i}"));
    }
}

#[test]
fn replication_etcdctl_lists_the_voters_and_moves_the_leader() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    let etcdctl = etcdctl_on;
    // Every voter, with its name and where its gRPC API listens (learned by gossip).
    let (ok, out, err) = etcdctl(&cluster.servers[leader], &["member", "list", "-w", "json"]);
    assert!(ok, "member list: {err}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("member list JSON");
    let members = list["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{out}");
    for server in &cluster.servers {
        let member = members
            .iter()
            .find(|m| m["name"] == server.name.as_str())
            .unwrap_or_else(|| panic!("{} missing from {out}", server.name));
        assert_eq!(
            member["clientURLs"][0],
            format!("http://{}", server.grpc).as_str(),
            "{out}"
        );
    }
    // Status names the leader by member ID; move it to a follower.
    let (ok, out, err) = etcdctl(
        &cluster.servers[leader],
        &["endpoint", "status", "-w", "json"],
    );
    assert!(ok, "endpoint status: {err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let leader_id = status[0]["Status"]["leader"].as_u64().expect("leader id");
    let target = members
        .iter()
        .map(|m| m["ID"].as_u64().expect("member ID"))
        .find(|&id| id != leader_id)
        .expect("a follower");
    // etcdctl sends MoveLeader only to an endpoint whose Status says it leads.
    let follower = (leader + 1) % 3;
    let (ok, _, err) = etcdctl(
        &cluster.servers[follower],
        &["move-leader", &format!("{target:x}")],
    );
    assert!(!ok && err.contains("no leader endpoint"), "{err}");
    let (ok, out, err) = etcdctl(
        &cluster.servers[leader],
        &["move-leader", &format!("{target:x}")],
    );
    assert!(ok, "move-leader: {err}{out}");
    let new_leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    assert_ne!(new_leader, leader, "leadership moved");
    let (_, out, _) = etcdctl(
        &cluster.servers[new_leader],
        &["endpoint", "status", "-w", "json"],
    );
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(status[0]["Status"]["leader"].as_u64(), Some(target));
    // An unknown member is refused as etcd refuses it.
    let (ok, _, err) = etcdctl(&cluster.servers[new_leader], &["move-leader", "1234"]);
    assert!(!ok && err.contains("bad leader transferee"), "{err}");
}

#[test]
fn replication_client_agent_forwards_to_the_servers_and_moves_on_when_one_dies() {
    let mut cluster = Cluster::start(3, &[]);
    let client = crate::support::Agent::start_client(
        "c1",
        &["--join", &cluster.servers[0].gossip.to_string()],
    );
    wait_until(
        "the client knows the leader",
        Duration::from_secs(10),
        || client.get("/v1/status/leader").json() != "",
    );
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    assert_eq!(
        client.get("/v1/status/leader").json(),
        cluster.servers[leader].rpc.to_string()
    );
    assert_eq!(
        client
            .get("/v1/status/peers")
            .json()
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    // Writes through the client reach every server; consistent reads through it see them.
    let put = client.put("/v1/kv/via/client", b"one");
    assert_eq!(put.status, 200, "{}", put.text());
    for server in &cluster.servers {
        assert_eq!(
            server.get_text("/v1/kv/via/client?raw&consistent"),
            Some((200, "one".to_string()))
        );
    }
    // Kill the server the client forwards to: the next request goes to another one.
    let served_by = client
        .get("/v1/kv/via/client?consistent")
        .header("x-colony-forwarded-to")
        .expect("forwarded")
        .to_string();
    let victim = cluster
        .servers
        .iter()
        .position(|s| s.name == served_by)
        .unwrap_or_else(|| panic!("{served_by} is not a server"));
    cluster.servers[victim].kill();
    let killed = Instant::now();
    let mut answer = client.put("/v1/kv/via/client", b"two");
    while answer.status != 200 && killed.elapsed() < 4 * ELECTION_TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
        answer = client.put("/v1/kv/via/client", b"two");
    }
    assert_eq!(
        answer.status,
        200,
        "{}\n{}",
        answer.text(),
        cluster.dump_logs()
    );
    let read = client.get("/v1/kv/via/client?raw&consistent");
    assert_eq!(read.text(), "two");
    assert_ne!(
        read.header("x-colony-forwarded-to"),
        Some(served_by.as_str())
    );
}

/// Bytes free on the filesystem holding `path`.
fn available_bytes(path: &Path) -> u64 {
    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .expect("df prints the available bytes")
}

fn storage_mode(server: &Server) -> String {
    server
        .get_text("/v1/colony/modes")
        .and_then(|(_, text)| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|modes| modes["storage"]["mode"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A leader whose disk fills: its storage goes to Floor, it hands leadership to a server
/// with room, and writes go on; meanwhile it answers stale reads and refuses others at once
/// with the reason. When space returns it catches up and leaves Floor, and no acknowledged
/// write is missing anywhere.
#[test]
fn replication_a_leader_whose_disk_fills_hands_over_and_recovers() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut mounts = Vec::new();
    for i in 1..=3 {
        let Some(mount) = mount_tmpfs(&temp.path().join(format!("s{i}")), "size=160m") else {
            let message = "REPLICATED DISK-FULL TEST NOT RUN: cannot mount a tmpfs (needs root)";
            assert!(
                std::env::var_os("CI").is_none(),
                "{message}: CI must be able to run it"
            );
            eprintln!("\n*** {message} ***\n");
            return;
        };
        mounts.push(mount);
    }
    let cluster = Cluster::start_in(temp.path(), 3, &[]);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    let full = &cluster.servers[leader];
    let writer = &cluster.servers[(leader + 1) % 3];
    assert_eq!(full.put("before", "kept"), Some(200));
    // Leave the leader less room than its next log segment needs.
    let filler = full.data_dir.join("filler");
    let room = available_bytes(&full.data_dir);
    std::fs::write(&filler, vec![0u8; (room - 6 * 1024 * 1024) as usize]).expect("filler");
    let value = "v".repeat(256 * 1024);
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        if writer.put(&format!("fill/{i}"), &value) == Some(200) {
            acknowledged.push(i);
        }
        if storage_mode(full) == "floor" {
            break;
        }
    }
    assert_eq!(storage_mode(full), "floor", "{}", cluster.dump_logs());
    // Leadership leaves the full disk, and writes go on, even those sent to it.
    wait_until("leadership moved", Duration::from_secs(15), || {
        writer
            .leader()
            .is_some_and(|l| !l.is_empty() && l != full.rpc.to_string())
    });
    assert_eq!(writer.put("after", "moved"), Some(200));
    assert_eq!(
        full.put("via-full", "x"),
        Some(200),
        "forwarded to the new leader"
    );
    // The full server answers stale reads and refuses the others at once, saying why.
    assert_eq!(
        full.get_text("/v1/kv/before?stale&raw"),
        Some((200, "kept".to_string()))
    );
    let asked = Instant::now();
    let (status, text) = full.get_text("/v1/kv/before").expect("answer");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("disk is full"), "{text}");
    assert!(asked.elapsed() < Duration::from_secs(2), "refused at once");
    // Space returns: it persists what it held, catches up and leaves Floor.
    std::fs::remove_file(&filler).expect("free space");
    wait_until("the full server caught up", Duration::from_secs(30), || {
        full.get_text("/v1/kv/via-full?raw") == Some((200, "x".to_string()))
    });
    wait_until("storage out of floor", Duration::from_secs(30), || {
        matches!(storage_mode(full).as_str(), "recovery" | "target")
    });
    for server in &cluster.servers {
        for i in &acknowledged {
            let (status, _) = server
                .get_text(&format!("/v1/kv/fill/{i}?stale"))
                .expect("answer");
            assert_eq!(status, 200, "acknowledged write {i} on {}", server.name);
        }
    }
    drop(cluster);
    drop(mounts);
}

/// etcdctl against one server of the cluster (its endpoint written with the scheme, as
/// operators do); (success, stdout, stderr).
fn etcdctl_on(server: &Server, args: &[&str]) -> (bool, String, String) {
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://{}", server.grpc))
        .args(args)
        .output()
        .expect("etcdctl is installed (scripts/test installs etcd-client)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// The leader measures lease TTLs and keep-alives renew there, so a follower's TimeToLive
/// asks the leader: it shows the leader's count-down, and the renewed TTL after a keep-alive.
#[test]
fn replication_etcd_time_to_live_on_a_follower_reflects_keepalives_on_the_leader() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    let follower = &cluster.servers[(leader + 1) % 3];
    let (ok, out, err) = etcdctl_on(
        &cluster.servers[leader],
        &["lease", "grant", "20", "-w", "json"],
    );
    assert!(ok, "grant: {err}");
    let grant: serde_json::Value = serde_json::from_str(&out).expect("grant JSON");
    let id = format!("{:x}", grant["ID"].as_u64().expect("lease ID"));
    let ttl_on = |server: &Server| -> i64 {
        let (ok, out, err) = etcdctl_on(server, &["lease", "timetolive", &id, "-w", "json"]);
        assert!(ok, "timetolive: {err}");
        let answer: serde_json::Value = serde_json::from_str(&out).expect("timetolive JSON");
        answer["ttl"].as_i64().expect("ttl")
    };
    // Let the TTL run down a while, then renew it once on the leader.
    let started = Instant::now();
    wait_until("the TTL to run down", Duration::from_secs(15), || {
        ttl_on(&cluster.servers[leader]) <= 15
    });
    assert!(started.elapsed() >= Duration::from_secs(4));
    let before = ttl_on(follower);
    assert!(
        before <= 15,
        "the follower reports the leader's count-down, not the granted TTL: {before}"
    );
    let (ok, _, err) = etcdctl_on(
        &cluster.servers[leader],
        &["lease", "keep-alive", "--once", &id],
    );
    assert!(ok, "keep-alive: {err}");
    let on_follower = ttl_on(follower);
    assert!(
        on_follower >= 18,
        "the follower reports the renewed TTL, not its own count-down: {on_follower}"
    );
}

/// The value of a counter in a server's Prometheus metrics (0 when absent).
fn counter(server: &Server, name: &str) -> f64 {
    server
        .get_text("/v1/agent/metrics?format=prometheus")
        .and_then(|(_, text)| prometheus_value(&text, name))
        .unwrap_or(0.0)
}

/// Writes the `i`-th value of `key` through `writer`, then requires a `?consistent` read of
/// it on `reader` to see that value.
fn write_then_read_consistently(writer: &Server, reader: &Server, key: &str, i: usize) {
    let value = format!("c{i}");
    assert_eq!(writer.put(key, &value), Some(200));
    let (status, body) = reader
        .get_text(&format!("/v1/kv/{key}?raw&consistent"))
        .expect("read");
    assert_eq!(
        (status, body.as_str()),
        (200, value.as_str()),
        "consistent read {i}"
    );
}

/// A follower's default read asks the leader for the index to wait for; inside its lease
/// the leader answers at once (no quorum round), while a `?consistent` read still gets a
/// quorum-confirmed index — with three servers the follower and the leader are that quorum,
/// and the leader's RPC task answers without either Raft thread (read_gate.rs). Both see
/// every write acknowledged before they were sent, on any server.
#[test]
fn replication_follower_default_reads_ride_the_leader_lease_and_see_every_write() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    let (writer, reader) = (
        &cluster.servers[(leader + 1) % 3],
        &cluster.servers[(leader + 2) % 3],
    );
    let answers = "colony_lease_read_index_answers_total";
    // The lease needs a commit in the leader's term and a heartbeat round answered.
    assert_eq!(writer.put("lease/k", "v"), Some(200));
    wait_until("a leader with a lease", Duration::from_secs(10), || {
        read_freshness(&cluster.servers[leader], "/v1/kv/lease/k?stale").as_deref() == Some("fresh")
    });
    let before = counter(&cluster.servers[leader], answers);
    for i in 0..20 {
        let value = format!("v{i}");
        assert_eq!(writer.put("lease/k", &value), Some(200));
        let (status, body) = reader.get_text("/v1/kv/lease/k?raw").expect("read");
        assert_eq!((status, body.as_str()), (200, value.as_str()), "read {i}");
        assert_eq!(
            read_freshness(reader, "/v1/kv/lease/k").as_deref(),
            Some("fresh")
        );
    }
    let after_default = counter(&cluster.servers[leader], answers);
    // Each of the 20 reads asked once; a lease lapsing under a loaded machine (no heartbeat
    // answered for 0.9 s) would send a few through the quorum round instead, so ask for most.
    assert!(
        after_default >= before + 15.0,
        "the leader answered the follower's default reads from its lease: {before} -> {after_default}"
    );
    let gate_answers = "colony_follower_read_index_answers_total";
    let gate_before = counter(&cluster.servers[leader], gate_answers);
    for i in 0..10 {
        write_then_read_consistently(writer, reader, "lease/k", i);
    }
    assert_eq!(
        counter(&cluster.servers[leader], answers),
        after_default,
        "?consistent reads do not use the lease"
    );
    let gate_after = counter(&cluster.servers[leader], gate_answers);
    // Each of the 10 reads asked once; an election on a loaded machine would send a few
    // through the Raft path instead (the term changed), so ask for most.
    assert!(
        gate_after >= gate_before + 7.0,
        "the leader answered the follower's consistent reads from its gate: {gate_before} -> {gate_after}"
    );
}

/// A leader's own `?consistent` reads are confirmed by another voter's RPC task (with
/// three servers, the leader and either follower are a quorum) instead of a heartbeat round
/// through the Raft threads (read_gate.rs), and see every write acknowledged before they
/// were sent, whichever server took it.
#[test]
fn replication_leader_consistent_reads_are_confirmed_by_a_voter_and_see_every_write() {
    let cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    let server = &cluster.servers[leader];
    let writers = [
        &cluster.servers[(leader + 1) % 3],
        &cluster.servers[(leader + 2) % 3],
        server,
    ];
    let confirmations = "colony_leader_read_confirmations_total";
    // The path needs an entry of the leader's term committed.
    assert_eq!(writers[0].put("confirm/k", "v"), Some(200));
    let before = counter(server, confirmations);
    for i in 0..12 {
        write_then_read_consistently(writers[i % 3], server, "confirm/k", i);
    }
    let after = counter(server, confirmations);
    // Each of the 12 reads asked once; an election on a loaded machine would send a few
    // through the Raft path instead, so ask for most.
    assert!(
        after >= before + 8.0,
        "a follower confirmed the leader's term for its consistent reads: {before} -> {after}"
    );
}

/// Servers snapshot their state and compact their logs as they go (the snapshot is written
/// off the raft thread); a server that was down while the others compacted past everything
/// it holds catches up by installing the leader's snapshot, and keeps it across a restart.
#[test]
fn replication_compacted_logs_catch_up_a_lagging_server_by_snapshot() {
    let extra = ["--snapshot-every", "50"];
    let mut cluster = Cluster::start(3, &extra);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    let lagging = (leader + 1) % 3;
    cluster.servers[lagging].kill();
    for i in 0..200 {
        assert_eq!(
            cluster.servers[leader].put(&format!("snap/k{i}"), &format!("v{i}")),
            Some(200),
            "put {i}"
        );
    }
    let snapshots = "colony_store_snapshots_total";
    wait_until("the leader's snapshots", Duration::from_secs(10), || {
        counter(&cluster.servers[leader], snapshots) >= 2.0
    });

    let seed = cluster.servers[leader].gossip;
    let restart = |server: &mut Server| {
        server.start(3, Some(seed), &extra);
        wait_until(
            "the lagging server has every write",
            Duration::from_secs(20),
            || server.get_text("/v1/kv/snap/k199?stale&raw") == Some((200, "v199".to_string())),
        );
    };
    restart(&mut cluster.servers[lagging]);
    let log = cluster.servers[lagging].log_text();
    assert!(
        log.contains("installed a snapshot from the leader"),
        "the lagging server caught up by snapshot:\n{}",
        cluster.dump_logs()
    );
    assert!(
        cluster.servers[leader]
            .log_text()
            .contains("snapshot written; the log is compacted up to it"),
        "{}",
        cluster.dump_logs()
    );
    // What it installed is durable: after another restart it still answers on its own.
    cluster.servers[lagging].kill();
    restart(&mut cluster.servers[lagging]);
    let (status, first) = cluster.servers[lagging]
        .get_text("/v1/kv/snap/k0?stale&raw")
        .expect("read");
    assert_eq!((status, first.as_str()), (200, "v0"));
}

/// A rolling restart, as an upgrade does it: each server in turn gets SIGTERM (a server does
/// not leave the cluster on it, as Consul's servers do not), exits, and starts again on its
/// data dir; the next one goes only once the restarted server is back among the voters and
/// has caught up. Writes go on throughout, to whichever server answers. At the end every
/// acknowledged write reads back from every server, and the three are still the voters.
#[test]
fn replication_rolling_restart_keeps_every_write_and_every_voter() {
    let mut cluster = Cluster::start(3, &[]);
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..3 {
        write_keys(&cluster, &mut acknowledged, 20);
        stop_gracefully(&mut cluster, round);
        write_keys(&cluster, &mut acknowledged, 20);
        let last = acknowledged.last().expect("writes").clone();
        start_and_catch_up(&mut cluster, round, &last);
    }
    write_keys(&cluster, &mut acknowledged, 20);
    for server in &cluster.servers {
        assert_has_every_write(&cluster, server, &acknowledged);
    }
}

/// SIGTERMs server `index` (a server does not leave the cluster on it) and waits for its
/// clean exit.
fn stop_gracefully(cluster: &mut Cluster, index: usize) {
    signal(&cluster.servers[index], rustix::process::Signal::TERM);
    let name = cluster.servers[index].name.clone();
    let mut child = cluster.servers[index].child.take().expect("running");
    let mut status = None;
    wait_until(
        &format!("{name} to stop on SIGTERM"),
        Duration::from_secs(10),
        || {
            status = child.try_wait().expect("wait");
            status.is_some()
        },
    );
    let status = status.expect("exited");
    assert!(status.success(), "{name} exited with {status}");
}

/// Starts server `index` again on its data dir and waits until it is a voter again and has
/// applied `key` (written while it was down).
fn start_and_catch_up(cluster: &mut Cluster, index: usize, key: &str) {
    let seed = cluster.servers[(index + 1) % cluster.servers.len()].gossip;
    cluster.servers[index].start(3, Some(seed), &[]);
    cluster.wait_for_leader(&[], Duration::from_secs(20));
    let restarted = &cluster.servers[index];
    wait_until(
        "the restarted server to be a voter again and caught up",
        Duration::from_secs(20),
        || restarted.peers().len() == 3 && has_applied(restarted, key),
    );
}

/// A lock held through a rolling restart of every server stays held: its session, renewed
/// every second through whichever server answers, is carried over by each new leader with a
/// fresh TTL (as Consul does) and never expires. The session has no health checks (`Checks:
/// []`); with the default `serfHealth` of the node it was created on, the restart of that
/// node would invalidate it, in colony as in Consul.
#[test]
fn replication_a_lock_held_through_a_rolling_restart_stays_held() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut cluster = Cluster::start(3, &[]);
    let created = http(
        cluster.servers[0].http,
        "PUT",
        "/v1/session/create",
        br#"{"TTL": "10s", "Checks": []}"#,
    )
    .expect("create");
    assert_eq!(created.status, 200, "{}", created.text());
    let session = created.json()["ID"].as_str().expect("an ID").to_string();
    let acquire = format!("/v1/kv/service/leader?acquire={session}");
    let acquired = http(cluster.servers[0].http, "PUT", &acquire, b"me").expect("acquire");
    assert_eq!(acquired.text().trim(), "true");
    let stop = Arc::new(AtomicBool::new(false));
    let renewer = {
        let addrs: Vec<SocketAddr> = cluster.servers.iter().map(|s| s.http).collect();
        let (stop, session) = (stop.clone(), session.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let path = format!("/v1/session/renew/{session}");
                // Any server that answers renews it (a stopped one refuses the connection).
                let _ = addrs
                    .iter()
                    .find(|addr| http(**addr, "PUT", &path, b"").is_ok_and(|r| r.status == 200));
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..3 {
        stop_gracefully(&mut cluster, round);
        write_keys(&cluster, &mut acknowledged, 5);
        let last = acknowledged.last().expect("writes").clone();
        start_and_catch_up(&mut cluster, round, &last);
    }
    stop.store(true, Ordering::SeqCst);
    renewer.join().expect("renewer");
    for server in &cluster.servers {
        let (status, text) = server
            .get_text("/v1/kv/service/leader?consistent")
            .expect("read");
        assert_eq!(status, 200, "{}: {text}", server.name);
        let holder: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            holder[0]["Session"],
            session,
            "{}: the lock is still held\n{}",
            server.name,
            cluster.dump_logs()
        );
    }
}

/// Whether `server` has applied the write of `key` (a stale read finds it).
fn has_applied(server: &Server, key: &str) -> bool {
    server
        .get_text(&format!("/v1/kv/{key}?stale"))
        .is_some_and(|(status, _)| status == 200)
}

/// Waits until `server` lists three voters at known addresses (a server that has just
/// started learns the others' addresses from gossip), then asserts that it reads every key
/// of `acknowledged` (each written with itself as value) with a consistent read.
fn assert_has_every_write(cluster: &Cluster, server: &Server, acknowledged: &[String]) {
    wait_until(
        &format!("{} to list three voters", server.name),
        Duration::from_secs(20),
        || server.peers().len() == 3,
    );
    for key in acknowledged {
        assert_eq!(
            server.get_text(&format!("/v1/kv/{key}?raw&consistent")),
            Some((200, key.clone())),
            "{} lost {key}\n{}",
            server.name,
            cluster.dump_logs()
        );
    }
}

/// Writes `count` new keys through any running server, retrying each (an election may be
/// under way) for up to ten election timeouts; adds them to `acknowledged`.
fn write_keys(cluster: &Cluster, acknowledged: &mut Vec<String>, count: usize) {
    for _ in 0..count {
        let key = format!("rolling/k{}", acknowledged.len());
        let mut attempt = 0;
        wait_until(
            &format!("a server to take {key}"),
            10 * ELECTION_TIMEOUT,
            || {
                let running: Vec<&Server> = cluster
                    .servers
                    .iter()
                    .filter(|s| s.child.is_some())
                    .collect();
                attempt += 1;
                running[attempt % running.len()].put(&key, &key) == Some(200)
            },
        );
        acknowledged.push(key);
    }
}

/// The whole cluster loses power: every server is SIGKILLed at once, then all start again
/// together on their data dirs. They must come back as the same cluster — not bootstrap a
/// second history, although each sees the other two and `--bootstrap-expect 3` again — and
/// keep every acknowledged write at its index.
#[test]
fn replication_whole_cluster_crash_and_restart_keeps_its_history() {
    let mut cluster = Cluster::start(3, &[]);
    let mut acknowledged: Vec<String> = Vec::new();
    write_keys(&cluster, &mut acknowledged, 60);
    let first = acknowledged[0].clone();
    let index_of = |server: &Server, key: &str| -> Option<u64> {
        let response = http(server.http, "GET", &format!("/v1/kv/{key}?stale"), b"").ok()?;
        (response.status == 200).then(|| response.json()[0]["ModifyIndex"].as_u64())?
    };
    let first_index = index_of(&cluster.servers[0], &first).expect("written");
    for server in &mut cluster.servers {
        server.kill();
    }
    cluster.start_all_again();
    write_keys(&cluster, &mut acknowledged, 10);
    for server in &cluster.servers {
        assert_has_every_write(&cluster, server, &acknowledged);
        assert_eq!(
            index_of(server, &first),
            Some(first_index),
            "{}: the first write keeps its index (one history)",
            server.name
        );
    }
}

/// The voters' IDs in a server's Raft configuration.
fn voter_ids(server: &Server) -> Vec<String> {
    server
        .get_text("/v1/operator/raft/configuration")
        .and_then(|(_, text)| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|config| {
            config["Servers"].as_array().map(|servers| {
                servers
                    .iter()
                    .filter_map(|s| s["ID"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// A failed disk replaced: a server comes back under the same name and addresses with an
/// empty data dir, hence a new Raft ID. The leader adds the new ID; the old one, which no
/// member of the cluster announces any more, counts as a dead server and is removed after
/// the cleanup time — it must not stay a voter forever, where one more failure would cost
/// the quorum of four.
#[test]
fn replication_a_server_replaced_with_an_empty_disk_takes_over_its_old_place() {
    let mut cluster = Cluster::start(3, &["--dead-server-cleanup", "1s"]);
    let before = voter_ids(&cluster.servers[0]);
    assert_eq!(before.len(), 3, "{before:?}");
    let replaced = &mut cluster.servers[2];
    replaced.kill();
    std::fs::remove_dir_all(&replaced.data_dir).expect("wipe the data dir");
    let seed = cluster.servers[0].gossip;
    cluster.servers[2].start(3, Some(seed), &["--dead-server-cleanup", "1s"]);
    wait_until(
        "three voters: the two that stayed and the replaced server's new ID",
        Duration::from_secs(30),
        || {
            let now = voter_ids(&cluster.servers[0]);
            let kept = now.iter().filter(|id| before.contains(id)).count();
            now.len() == 3 && kept == 2 && voter_ids(&cluster.servers[2]) == now
        },
    );
    let mut acknowledged = Vec::new();
    write_keys(&cluster, &mut acknowledged, 10);
    assert_has_every_write(&cluster, &cluster.servers[2], &acknowledged);
}

/// A server of another datacenter joins this datacenter's gossip by mistake (its `--join`
/// points here). It is never made a voter here — each side's servers keep to their own
/// datacenter, as Consul's ignore a LAN member of another one — and the leader says so.
#[test]
fn replication_a_server_of_another_datacenter_is_never_made_a_voter() {
    let mut cluster = Cluster::start(3, &[]);
    let dir = cluster.dir.as_ref().expect("own dir").path().to_path_buf();
    let mut stranger = Server::new(&dir, "x1");
    stranger.start(1, Some(cluster.servers[0].gossip), &["--datacenter", "dc2"]);
    // It leads a cluster of its own (of one), made only of dc2's servers.
    wait_until(
        "the dc2 server to lead itself",
        Duration::from_secs(20),
        || stranger.leader().as_deref() == Some(stranger.rpc.to_string().as_str()),
    );
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(10));
    wait_until(
        "the dc1 leader to notice the dc2 server",
        Duration::from_secs(20),
        || {
            cluster.servers[leader]
                .log_text()
                .contains("a server of another datacenter is in this gossip pool")
        },
    );
    // A few leader duty rounds later (every 500 ms), the voters are still dc1's three.
    std::thread::sleep(Duration::from_secs(2));
    for server in &cluster.servers {
        assert_eq!(voter_ids(server).len(), 3, "{}", cluster.dump_logs());
    }
    assert_eq!(voter_ids(&stranger).len(), 1, "{}", stranger.log_text());
    cluster.servers.push(stranger);
}

/// A server renamed and moved to another RPC port: it restarts on its data dir (so with its
/// Raft ID) under a new node name. Membership then holds the old name, failed, and the new
/// one, alive, both with that ID. The server is alive: it stays a voter (it must not be
/// removed as dead after the cleanup time and added back), and the others reach it at its
/// new address (the failed name's old address must not win), so it keeps up.
#[test]
fn replication_a_renamed_server_keeps_its_place_among_the_voters() {
    let mut cluster = Cluster::start(3, &["--dead-server-cleanup", "500ms"]);
    let before = {
        let mut ids = voter_ids(&cluster.servers[0]);
        ids.sort();
        ids
    };
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(10));
    let renamed = if leader == 2 { 1 } else { 2 };
    cluster.servers[renamed].kill();
    // A name that sorts before the old one (membership lists members by name).
    let old_name = cluster.servers[renamed].name.clone();
    cluster.servers[renamed].name = format!("renamed-{old_name}");
    cluster.servers[renamed].rpc = free_addr();
    let seed = cluster.servers[leader].gossip;
    cluster.servers[renamed].start(3, Some(seed), &["--dead-server-cleanup", "500ms"]);
    let changes_logged = |server: &Server| server.log_text().matches("changing the voters").count();
    let changes_before = changes_logged(&cluster.servers[leader]);
    let new_name = cluster.servers[renamed].name.clone();
    wait_until(
        "the leader to see the old name failed and the new one alive",
        Duration::from_secs(20),
        || {
            let members: serde_json::Value = cluster.servers[leader]
                .get_text("/v1/agent/members")
                .and_then(|(_, text)| serde_json::from_str(&text).ok())
                .unwrap_or_default();
            let status = |name: &str| {
                members
                    .as_array()
                    .and_then(|all| all.iter().find(|m| m["Name"] == name))
                    .and_then(|m| m["Status"].as_u64())
            };
            status(&old_name) == Some(4) && status(&new_name) == Some(1)
        },
    );
    // Several cleanup times and leader duty rounds (every 500 ms) later: the same voters,
    // and no voter change at all.
    std::thread::sleep(Duration::from_secs(3));
    let mut after = voter_ids(&cluster.servers[leader]);
    after.sort();
    assert_eq!(after, before, "{}", cluster.dump_logs());
    assert_eq!(
        changes_logged(&cluster.servers[leader]),
        changes_before,
        "no voter was removed and added back\n{}",
        cluster.dump_logs()
    );
    let mut acknowledged = Vec::new();
    write_keys(&cluster, &mut acknowledged, 5);
    let last = acknowledged.last().expect("written").clone();
    wait_until(
        "the renamed server to apply the latest write",
        Duration::from_secs(10),
        || has_applied(&cluster.servers[renamed], &last),
    );
}

/// Scaling out and back in: two more servers join a cluster of three (five voters), then
/// two servers leave gracefully (`/v1/agent/leave`) — one of them the leader — and are
/// removed from the voters at once, as Consul removes a server that left. Writes work at
/// every step, and every acknowledged one is on the three that remain.
#[test]
fn replication_scales_out_to_five_and_back_in_to_three_with_graceful_leaves() {
    let mut cluster = Cluster::start(3, &[]);
    let mut acknowledged = Vec::new();
    write_keys(&cluster, &mut acknowledged, 10);
    let dir = cluster.dir.as_ref().expect("own dir").path().to_path_buf();
    for name in ["s4", "s5"] {
        let mut server = Server::new(&dir, name);
        server.start(3, Some(cluster.servers[0].gossip), &[]);
        cluster.servers.push(server);
    }
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(10));
    wait_until("five voters", Duration::from_secs(30), || {
        cluster.servers[leader].peers().len() == 5
    });
    write_keys(&cluster, &mut acknowledged, 10);
    // The leader leaves first, then one more server.
    let leaving = [leader, if leader == 4 { 3 } else { 4 }];
    for (step, &index) in leaving.iter().enumerate() {
        let answer = http(cluster.servers[index].http, "PUT", "/v1/agent/leave", b"")
            .expect("leave answers");
        assert_eq!(answer.status, 200);
        let mut child = cluster.servers[index].child.take().expect("running");
        let left_at = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            assert!(
                left_at.elapsed() < Duration::from_secs(15),
                "{} did not stop after leaving",
                cluster.servers[index].name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let skip: Vec<usize> = leaving[..=step].to_vec();
        let now_leader = cluster.wait_for_leader(&skip, Duration::from_secs(20));
        wait_until(
            "the server that left is removed from the voters",
            Duration::from_secs(20),
            || cluster.servers[now_leader].peers().len() == 4 - step,
        );
        write_keys(&cluster, &mut acknowledged, 10);
    }
    for server in cluster.servers.iter().filter(|s| s.child.is_some()) {
        assert_has_every_write(&cluster, server, &acknowledged);
    }
}

/// An etcd watch on a follower outlives the leader: the follower applies what the next
/// leader commits, so one `etcdctl watch` stream connected to it sees the events from before
/// and after the leader's SIGKILL without reconnecting.
#[test]
fn replication_an_etcd_watch_on_a_follower_survives_the_leaders_death() {
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    let (watched, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let dir = cluster.dir.as_ref().expect("own dir").path().to_path_buf();
    let out_path = dir.join("watch.out");
    let out = std::fs::File::create(&out_path).expect("watch output");
    let mut watch = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!(
            "--endpoints=http://{}",
            cluster.servers[watched].grpc
        ))
        .args(["watch", "--prefix", "w/"])
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl is installed (scripts/test installs etcd-client)");
    let seen =
        |text: &str| std::fs::read_to_string(&out_path).is_ok_and(|events| events.contains(text));
    // Until the watch is registered, puts go unseen: put until one shows.
    wait_until("the watch to see a put", Duration::from_secs(10), || {
        etcdctl_on(&cluster.servers[other], &["put", "w/0", "before"]).0 && seen("w/0\nbefore")
    });
    cluster.servers[leader].kill();
    wait_until(
        "a put to succeed after the failover",
        Duration::from_secs(20),
        || etcdctl_on(&cluster.servers[other], &["put", "w/1", "after"]).0,
    );
    wait_until(
        "the same watch stream to see the put made under the new leader",
        Duration::from_secs(10),
        || seen("w/1\nafter"),
    );
    assert!(
        watch.try_wait().expect("wait").is_none(),
        "the watch stream stayed open through the failover"
    );
    let _ = watch.kill();
    let _ = watch.wait();
}

/// The whole cluster moves: every server stops and starts again on its data dir at new
/// addresses (gossip, RPC, HTTP, gRPC — containers rescheduled with new IPs). The Raft
/// configuration holds IDs, not addresses, and each server learns the others' new RPC
/// addresses from gossip: they elect a leader and keep every acknowledged write, with no
/// manual recovery step (Consul needs a `peers.json` here).
#[test]
fn replication_the_whole_cluster_moved_to_new_addresses_comes_back() {
    let mut cluster = Cluster::start(3, &[]);
    let mut acknowledged: Vec<String> = Vec::new();
    write_keys(&cluster, &mut acknowledged, 30);
    for server in &mut cluster.servers {
        server.kill();
        server.http = free_addr();
        server.gossip = free_addr();
        server.rpc = free_addr();
        server.grpc = free_addr();
    }
    cluster.start_all_again();
    write_keys(&cluster, &mut acknowledged, 10);
    for server in &cluster.servers {
        assert_has_every_write(&cluster, server, &acknowledged);
    }
}

/// A keep-alive that cannot reach a leader (the cluster lost its quorum) ends the stream with
/// `Unavailable`, as etcd's does, and the client retries. It must not answer TTL 0: clients
/// read that as "the lease is gone" and give up the locks and elections they hold with it,
/// although the lease lives on and the next leader keeps it.
#[test]
fn replication_an_etcd_keepalive_without_a_leader_is_an_error_not_an_expiry() {
    use colony_etcdpb::etcdserverpb::LeaseKeepAliveRequest;
    use colony_etcdpb::etcdserverpb::lease_client::LeaseClient;
    let mut cluster = Cluster::start(3, &[]);
    let leader = cluster.wait_for_leader(&[], Duration::from_secs(5));
    let (ok, out, err) = etcdctl_on(
        &cluster.servers[leader],
        &["lease", "grant", "60", "-w", "json"],
    );
    assert!(ok, "{err}");
    let granted: serde_json::Value = serde_json::from_str(&out).expect("json");
    let id = granted["ID"].as_i64().expect("a lease ID");
    let survivor = (leader + 1) % 3;
    cluster.servers[leader].kill();
    cluster.servers[(leader + 2) % 3].kill();
    let grpc = cluster.servers[survivor].grpc;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let answer = runtime.block_on(async move {
        let channel = crate::support::grpc_channel(&grpc.to_string()).await;
        let (requests, rx) = tokio::sync::mpsc::channel(1);
        requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .expect("queue");
        let stream = LeaseClient::new(channel)
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        match stream {
            Err(status) => Err(status),
            Ok(response) => {
                let mut responses = response.into_inner();
                tokio::time::timeout(Duration::from_secs(30), responses.message())
                    .await
                    .expect("an answer within 30 s")
            }
        }
    });
    match answer {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        Ok(Some(response)) => panic!(
            "a keep-alive without a leader was answered TTL {}",
            response.ttl
        ),
        Ok(None) => panic!("the stream ended without an error"),
    }
}
