//! Where the fault tests' servers run: each in its own network namespace on a bridge the test
//! builds (partitions by nftables inside the hosts' namespaces), or on `linkemu.py`, a
//! userspace switch that also delays, jitters, duplicates and drops frames per link (this
//! kernel has no `tc netem`), or, where namespaces cannot be made, on loopback with process
//! faults only, said loudly.
//!
//! Nothing is added to the root namespace: the servers and the workload's client host live in
//! namespaces named `<prefix>-h<i>`, joined by a bridge in `<prefix>-sw`; the workload's threads
//! enter the client namespace with `setns(2)`.

use crate::support::free_addr;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// The nftables table the fault rules live in, inside a host's namespace.
const FAULT_TABLE: &str = "colony_fault";

/// The last octet of the workload's client host.
const CLIENT_HOST: u8 = 100;

/// The ports one server listens on.
#[derive(Debug, Clone, Copy)]
pub struct ServerAddrs {
    /// Consul HTTP API.
    pub http: SocketAddr,
    /// Gossip (UDP + TCP).
    pub gossip: SocketAddr,
    /// Internal RPC (Raft and forwarding).
    pub rpc: SocketAddr,
    /// etcd gRPC.
    pub grpc: SocketAddr,
}

/// The running `linkemu.py`: rules go to its stdin, one JSON object per line.
pub struct Emulator {
    child: Child,
    rules: ChildStdin,
}

/// The test bed: namespaces with a bridge or the link emulator, or loopback.
pub enum Bed {
    /// Servers in namespaces `<prefix>-h1..=n`, the client in `<prefix>-h100`; joined by a
    /// bridge, or by the link emulator when there is one.
    Netns {
        prefix: String,
        subnet: u8,
        n: usize,
        emulator: Option<Mutex<Emulator>>,
    },
    /// Servers on loopback ports; no network faults possible.
    Loopback { addrs: Vec<ServerAddrs> },
}

impl Bed {
    /// Builds a namespace bed for `n` servers on `10.<subnet>.0.0/24`, or explains why it cannot.
    pub fn netns(prefix: &str, subnet: u8, n: usize) -> Result<Bed, String> {
        check_netns_tools()?;
        let bed = Bed::Netns {
            prefix: prefix.to_string(),
            subnet,
            n,
            emulator: None,
        };
        bed.remove_namespaces();
        let sw = format!("{prefix}-sw");
        run("ip", &["netns", "add", &sw])?;
        run("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        let hosts: Vec<u8> = (1..=n as u8).chain([CLIENT_HOST]).collect();
        for host in hosts {
            let ns = format!("{prefix}-h{host}");
            let port = format!("v{host}");
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                    "netns", &sw,
                ],
            )?;
            run(
                "ip",
                &["-n", &sw, "link", "set", &port, "master", "br0", "up"],
            )?;
            let addr = format!("10.{subnet}.0.{host}/24");
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(bed)
    }

    /// Builds a namespace bed for `n` servers joined by `linkemu.py` (seeded by `seed`), so
    /// that links can also be delayed, jittered and duplicated ([`Bed::degrade_links`]).
    pub fn netns_emulated(prefix: &str, subnet: u8, n: usize, seed: u64) -> Result<Bed, String> {
        check_netns_tools()?;
        if !tool_exists("python3") {
            return Err("`python3` is not installed (it runs the link emulator)".into());
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err("/dev/net/tun is missing (the link emulator needs TAP devices)".into());
        }
        let mut bed = Bed::Netns {
            prefix: prefix.to_string(),
            subnet,
            n,
            emulator: None,
        };
        bed.remove_namespaces();
        let hosts: Vec<String> = (1..=n as u8)
            .chain([CLIENT_HOST])
            .map(|h| h.to_string())
            .collect();
        for ns in std::iter::once("sw".to_string()).chain(hosts.iter().map(|h| format!("h{h}"))) {
            run("ip", &["netns", "add", &format!("{prefix}-{ns}")])?;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/faults/linkemu.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &format!("{prefix}-sw"), "python3", script])
            .args(["--prefix", prefix, "--subnet", &subnet.to_string()])
            .args(["--hosts", &hosts.join(","), "--seed", &seed.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {script}: {e}"))?;
        let rules = child.stdin.take().expect("piped stdin");
        let mut ready = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let _ = BufReader::new(stdout).read_line(&mut ready);
        let emulator = Emulator { child, rules };
        if let Bed::Netns { emulator: slot, .. } = &mut bed {
            *slot = Some(Mutex::new(emulator));
        }
        if ready.trim() != "ready" {
            return Err(format!(
                "the link emulator did not start (said {ready:?}; its errors are above)"
            ));
        }
        Ok(bed)
    }

    /// Sends one link rule to the emulator, e.g. `{"from": 1, "to": "*", "delay_ms": 30}`
    /// (see `linkemu.py`).
    pub fn degrade_links(&self, rule: &str) {
        let Bed::Netns {
            emulator: Some(emulator),
            ..
        } = self
        else {
            panic!("link delay and duplication need the emulated bed");
        };
        let mut emulator = emulator.lock().expect("emulator lock");
        writeln!(emulator.rules, "{rule}")
            .and_then(|()| emulator.rules.flush())
            .unwrap_or_else(|e| panic!("sending a rule to the link emulator: {e}"));
    }

    /// Whether links can be delayed and duplicated ([`Bed::degrade_links`]).
    pub fn has_link_emulator(&self) -> bool {
        matches!(
            self,
            Bed::Netns {
                emulator: Some(_),
                ..
            }
        )
    }

    /// A loopback bed for `n` servers.
    pub fn loopback(n: usize) -> Bed {
        let addrs = (0..n)
            .map(|_| ServerAddrs {
                http: free_addr(),
                gossip: free_addr(),
                rpc: free_addr(),
                grpc: free_addr(),
            })
            .collect();
        Bed::Loopback { addrs }
    }

    /// Whether network faults (partitions, loss) can be injected.
    pub fn has_network_faults(&self) -> bool {
        matches!(self, Bed::Netns { .. })
    }

    /// Server `i`'s addresses (1-based).
    pub fn addrs(&self, i: usize) -> ServerAddrs {
        match self {
            Bed::Netns { subnet, .. } => {
                let ip = IpAddr::V4(Ipv4Addr::new(10, *subnet, 0, i as u8));
                ServerAddrs {
                    http: SocketAddr::new(ip, 8500),
                    gossip: SocketAddr::new(ip, 8301),
                    rpc: SocketAddr::new(ip, 8300),
                    grpc: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2379),
                }
            }
            Bed::Loopback { addrs } => addrs[i - 1],
        }
    }

    /// A command that runs `program` on server host `i`.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        match self {
            Bed::Netns { prefix, .. } => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", &format!("{prefix}-h{i}")])
                    .arg(program);
                command
            }
            Bed::Loopback { .. } => Command::new(program),
        }
    }

    /// Moves the calling thread into the client host's namespace (no-op on loopback), so the
    /// sockets it opens next reach the servers' addresses.
    pub fn enter_client_host(&self) {
        if let Bed::Netns { prefix, .. } = self {
            let path = format!("/var/run/netns/{prefix}-h{CLIENT_HOST}");
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns({path}): {e}"));
        }
    }

    /// Drops all traffic between server `i` and each server in `others`, both ways (clients
    /// still reach every server).
    pub fn cut(&self, i: usize, others: &[usize]) {
        for &other in others {
            self.drop_rule(i, "in", &format!("ip saddr {}", self.ip(other)));
            self.drop_rule(i, "out", &format!("ip daddr {}", self.ip(other)));
        }
    }

    /// Drops what server `from` sends to each server in `to` (one way: `from` still receives).
    pub fn cut_one_way(&self, from: usize, to: &[usize]) {
        for &other in to {
            self.drop_rule(from, "out", &format!("ip daddr {}", self.ip(other)));
        }
    }

    /// Drops `percent` % of the packets server `i` receives from other servers.
    pub fn lossy(&self, i: usize, percent: u32) {
        let client = self.client_ip();
        self.drop_rule(
            i,
            "in",
            &format!(
                "ip saddr != {client} ip saddr != 127.0.0.1 numgen random mod 100 < {percent}"
            ),
        );
    }

    /// Removes every fault rule from every host, and every link rule from the emulator.
    pub fn heal(&self) {
        if self.has_link_emulator() {
            self.degrade_links(r#"{"clear": true}"#);
        }
        if let Bed::Netns { prefix, n, .. } = self {
            for i in 1..=*n {
                let ns = format!("{prefix}-h{i}");
                let _ = run(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &ns,
                        "nft",
                        "delete",
                        "table",
                        "inet",
                        FAULT_TABLE,
                    ],
                );
            }
        }
    }

    fn drop_rule(&self, i: usize, chain: &str, matcher: &str) {
        let Bed::Netns { prefix, .. } = self else {
            panic!("network faults need the namespace bed");
        };
        let ns = format!("{prefix}-h{i}");
        let nft = |args: &str| {
            let words: Vec<&str> = ["netns", "exec", &ns, "nft"]
                .into_iter()
                .chain(args.split(' '))
                .collect();
            run("ip", &words).unwrap_or_else(|e| panic!("{e}"));
        };
        // `add` is idempotent: the first rule on a host also makes the table and chains.
        nft(&format!("add table inet {FAULT_TABLE}"));
        for (name, hook) in [("in", "input"), ("out", "output")] {
            nft(&format!(
                "add chain inet {FAULT_TABLE} {name} {{ type filter hook {hook} priority 0 ; }}"
            ));
        }
        nft(&format!(
            "add rule inet {FAULT_TABLE} {chain} {matcher} drop"
        ));
    }

    fn ip(&self, i: usize) -> IpAddr {
        self.addrs(i).rpc.ip()
    }

    fn client_ip(&self) -> String {
        match self {
            Bed::Netns { subnet, .. } => format!("10.{subnet}.0.{CLIENT_HOST}"),
            Bed::Loopback { .. } => "127.0.0.1".into(),
        }
    }

    fn remove_namespaces(&self) {
        if let Bed::Netns { prefix, n, .. } = self {
            let hosts = (1..=*n)
                .map(|i| i.to_string())
                .chain([CLIENT_HOST.to_string()]);
            for host in hosts {
                let ns = format!("{prefix}-h{host}");
                kill_namespace_processes(&ns);
                let _ = run("ip", &["netns", "del", &ns]);
            }
            let _ = run("ip", &["netns", "del", &format!("{prefix}-sw")]);
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Bed::Netns {
            emulator: Some(emulator),
            ..
        } = self
        {
            // SIGTERM first: the emulator prints what it forwarded, dropped and duplicated.
            let emulator = emulator.get_mut().unwrap_or_else(|p| p.into_inner());
            let pid = rustix::process::Pid::from_child(&emulator.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while matches!(emulator.child.try_wait(), Ok(None))
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = emulator.child.kill();
            let _ = emulator.child.wait();
        }
        self.remove_namespaces();
    }
}

/// Whether this process can make namespaces and nftables rules.
fn check_netns_tools() -> Result<(), String> {
    if !is_root() {
        return Err("not running as root".into());
    }
    if !tool_exists("ip") {
        return Err("`ip` (iproute2) is not installed".into());
    }
    if !tool_exists("nft") {
        return Err("`nft` (nftables) is not installed".into());
    }
    Ok(())
}

/// Kills whatever still runs inside namespace `ns` (left by a crashed earlier run).
fn kill_namespace_processes(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Some(pid) = pid.parse().ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn tool_exists(name: &str) -> bool {
    Command::new(name)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
