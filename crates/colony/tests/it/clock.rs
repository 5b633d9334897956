//! The wall clock stepped under a running agent (NTP, an operator, a resumed VM): TTLs are
//! measured on the monotonic clock, so a step changes no expiry. The step is made with
//! libfaketime (`scripts/test` installs it), which moves only the process's wall clock.

use crate::support::{colony_bin, free_addr, http, wait_until};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A dev agent whose wall clock is the real one shifted by what `offset_file` says
/// (libfaketime re-reads it on every clock read).
struct SteppedAgent {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for SteppedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, offset_file: &Path) -> SteppedAgent {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's libfaketime (scripts/test does)"
    );
    let addr = free_addr();
    let log = std::fs::File::create(dir.join("agent.log")).expect("log");
    let child = Command::new(colony_bin())
        .args(["agent", "--dev", "--node", "clock-node"])
        .args(["--http-addr", &addr.to_string()])
        .args(["--bind", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(["--dns-addr", "off"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME_TIMESTAMP_FILE", offset_file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn colony agent");
    let agent = SteppedAgent { child, addr };
    wait_until("the agent to answer", Duration::from_secs(20), || {
        http(addr, "GET", "/v1/status/leader", b"").is_ok_and(|r| r.status == 200)
    });
    agent
}

fn create_session(addr: std::net::SocketAddr, ttl: &str) -> String {
    let body = format!("{{\"TTL\": \"{ttl}\"}}");
    let response = http(addr, "PUT", "/v1/session/create", body.as_bytes()).expect("create");
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["ID"].as_str().expect("an ID").to_string()
}

fn session_exists(addr: std::net::SocketAddr, id: &str) -> bool {
    http(addr, "GET", &format!("/v1/session/info/{id}"), b"")
        .is_ok_and(|r| r.json().as_array().is_some_and(|a| !a.is_empty()))
}

/// The agent's wall clock as its metrics report it, in ms.
fn agent_wall_ms(addr: std::net::SocketAddr) -> u64 {
    let metrics = http(addr, "GET", "/v1/agent/metrics", b"")
        .expect("metrics")
        .json();
    metrics["Timestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("a Timestamp")
}

fn real_wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Two sessions, of 60 s and 10 s (Consul's shortest TTL). The agent's wall clock jumps two hours ahead, and the short
/// session is renewed (the TTL timer wakes). Measured on the wall clock, the long session
/// would now be two hours overdue and expire at once; measured on the monotonic clock, the
/// short one expires when its 10 s run out and the long one lives on.
#[test]
fn clock_a_wall_clock_step_expires_no_session_early() {
    let dir = tempfile::tempdir().expect("tempdir");
    let offset_file = dir.path().join("faketime");
    std::fs::write(&offset_file, "+0\n").expect("offset");
    let agent = start(dir.path(), &offset_file);
    let long = create_session(agent.addr, "60s");
    let short = create_session(agent.addr, "10s");
    std::fs::write(&offset_file, "+2h\n").expect("step the clock");
    wait_until(
        "the agent's wall clock to be two hours ahead",
        Duration::from_secs(10),
        || agent_wall_ms(agent.addr) > real_wall_ms() + 3_600_000,
    );
    let renewed = http(
        agent.addr,
        "PUT",
        &format!("/v1/session/renew/{short}"),
        b"",
    )
    .expect("renew");
    assert_eq!(renewed.status, 200, "{}", renewed.text());
    wait_until(
        "the short session to expire after its TTL",
        Duration::from_secs(20),
        || !session_exists(agent.addr, &short),
    );
    assert!(
        session_exists(agent.addr, &long),
        "the 60 s session expired early after the wall clock stepped"
    );
}
