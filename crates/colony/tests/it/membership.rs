//! Membership across real processes: agents join over UDP/TCP on loopback, a SIGKILLed agent
//! is declared failed (and its catalog node goes critical), a graceful leave is "left", client
//! agents forward server APIs to the server, and garbage datagrams are counted, not fatal.

use crate::support::Agent;
use std::time::{Duration, Instant};

/// The gossip address of an agent, read from its own member list.
fn gossip_addr(agent: &Agent) -> String {
    let members = agent.get("/v1/colony/members").json();
    let me = members["Members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["Self"] == true)
        .expect("self listed")
        .clone();
    me["Addr"].as_str().expect("addr").to_string()
}

/// Consul status of `name` as `observer` sees it.
fn status(observer: &Agent, name: &str) -> Option<u64> {
    observer
        .get("/v1/agent/members")
        .json()
        .as_array()
        .expect("array")
        .iter()
        .find(|m| m["Name"] == name)
        .and_then(|m| m["Status"].as_u64())
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn membership_agents_join_detect_a_killed_member_and_see_a_leave() {
    let server = Agent::start();
    let seed = gossip_addr(&server);
    let mut c1 = Agent::start_client("c1", &["--join", &seed]);
    let mut c2 = Agent::start_client("c2", &["--retry-join", &seed, "--retry-interval", "200ms"]);
    wait_until(
        "all three alive everywhere",
        Duration::from_secs(10),
        || {
            [&server, &c1, &c2].iter().all(|a| {
                ["test-node", "c1", "c2"]
                    .iter()
                    .all(|n| status(a, n) == Some(1))
            })
        },
    );
    // The catalog knows the clients as nodes with a passing serfHealth check.
    // (Registration follows the membership event asynchronously.)
    wait_until("c1 registered as passing", Duration::from_secs(5), || {
        let checks = server.get("/v1/health/node/c1").json();
        checks[0]["CheckID"] == "serfHealth" && checks[0]["Status"] == "passing"
    });

    // A client agent has no store: it forwards server APIs to the server it knows.
    let kv = c1.get("/v1/kv/anything");
    assert_eq!(kv.status, 404, "{}", kv.text());
    assert_eq!(kv.header("x-colony-forwarded-to"), Some("test-node"));

    // SIGKILL c2: failed (4) everywhere, and its catalog node goes critical.
    c2.child.kill().expect("kill");
    let _ = c2.child.wait();
    let killed = Instant::now();
    wait_until("c2 failed everywhere", Duration::from_secs(15), || {
        status(&server, "c2") == Some(4) && status(&c1, "c2") == Some(4)
    });
    eprintln!("c2 detected failed after {:?}", killed.elapsed());
    wait_until("c2 critical in the catalog", Duration::from_secs(5), || {
        server.get("/v1/health/node/c2").json()[0]["Status"] == "critical"
    });
    let passing = server.get("/v1/health/state/critical").json();
    assert!(
        passing
            .as_array()
            .expect("array")
            .iter()
            .any(|c| c["Node"] == "c2")
    );

    // Graceful leave of c1: "left" (3), the process exits cleanly, the node leaves the catalog.
    let left = c1.put("/v1/agent/leave", b"");
    assert_eq!(left.status, 200);
    wait_until("c1 exits", Duration::from_secs(10), || {
        matches!(c1.child.try_wait(), Ok(Some(_)))
    });
    assert!(c1.child.wait().expect("status").success());
    wait_until("c1 left", Duration::from_secs(5), || {
        status(&server, "c1") == Some(3)
    });
    wait_until("c1 deregistered", Duration::from_secs(5), || {
        server.get("/v1/catalog/node/c1").status == 404
            || server.get("/v1/catalog/node/c1").text() == "null"
    });
    // A failed member can be force-left.
    assert_eq!(server.put("/v1/agent/force-leave/c2", b"").status, 200);
    wait_until("c2 force-left", Duration::from_secs(5), || {
        status(&server, "c2") == Some(3)
    });
}

#[test]
fn membership_garbage_datagrams_are_counted_and_dropped() {
    let agent = Agent::start();
    let gossip = gossip_addr(&agent);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let payloads: [&[u8]; 5] = [b"", b"CS", b"CS\x01", b"CS\x09junk", &[0xff; 1400]];
    for p in payloads {
        socket.send_to(p, &gossip).expect("send");
    }
    wait_until("decode errors counted", Duration::from_secs(5), || {
        agent.get("/v1/colony/members").json()["DecodeErrors"].as_u64() >= Some(4)
    });
    // Still serving and still a healthy single member.
    assert_eq!(agent.get("/v1/agent/members").json()[0]["Status"], 1);
}

#[test]
fn membership_user_events_reach_other_agents() {
    let server = Agent::start();
    let client = Agent::start_client("c1", &["--join", &gossip_addr(&server)]);
    let fired = client.put("/v1/event/fire/deploy?service=web", b"v2");
    assert_eq!(fired.status, 200, "{}", fired.text());
    let doc = fired.json();
    assert_eq!(doc["Name"], "deploy");
    assert_eq!(doc["ServiceFilter"], "web");
    wait_until("event on the server", Duration::from_secs(5), || {
        let list = server.get("/v1/event/list?name=deploy").json();
        list.as_array()
            .is_some_and(|l| l.len() == 1 && l[0]["ID"] == doc["ID"] && l[0]["Payload"] == "djI=")
    });
}

fn decode_errors(agent: &Agent) -> u64 {
    agent.get("/v1/colony/members").json()["DecodeErrors"]
        .as_u64()
        .unwrap_or_default()
}

#[test]
fn membership_encrypted_gossip_refuses_strangers_and_rotates_keys() {
    use base64::Engine as _;
    let key = |b: u8| base64::engine::general_purpose::STANDARD.encode([b; 32]);
    let (k1, k2) = (key(1), key(2));
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Agent::start_in(&temp.path().join("data"), &["--encrypt", &k1]);
    let seed = gossip_addr(&server);
    let c1 = Agent::start_client("c1", &["--encrypt", &k1, "--join", &seed]);
    // A member with another key and one without encryption cannot get in: the server counts
    // their messages as undecryptable.
    let c2 = Agent::start_client(
        "c2",
        &[
            "--encrypt",
            &k2,
            "--retry-join",
            &seed,
            "--retry-interval",
            "200ms",
        ],
    );
    let c3 = Agent::start_client("c3", &["--retry-join", &seed, "--retry-interval", "200ms"]);
    wait_until("strangers refused", Duration::from_secs(10), || {
        decode_errors(&server) >= 2
    });
    assert_eq!(status(&server, "c2"), None);
    assert_eq!(status(&server, "c3"), None);
    assert_eq!(status(&server, "c1"), Some(1));

    // Rotate to k2 with the CLI on one member; each step reaches every member by gossip, and
    // `--use` / `--remove` wait until the previous step has spread.
    for args in [
        ["keyring", "--install", &k2],
        ["keyring", "--use", &k2],
        ["keyring", "--remove", &k1],
    ] {
        let (code, _, stderr) = crate::support::cli(server.addr, &args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
    }
    wait_until("c1 rotated too", Duration::from_secs(15), || {
        let (_, listing, _) = crate::support::cli(c1.addr, &["keyring", "--list"]);
        listing.trim() == format!("{k2} (primary)")
    });
    // The listing counts the members holding each key, from the fingerprints they announce.
    wait_until(
        "both members announce k2 alone",
        Duration::from_secs(15),
        || {
            let ring = server.get("/v1/operator/keyring").json();
            ring[0]["Keys"] == serde_json::json!({ k2.clone(): 2 })
                && ring[0]["PrimaryKeys"] == serde_json::json!({ k2.clone(): 2 })
                && ring[0]["NumNodes"] == 2
        },
    );
    // The announcements are colony's own events: not listed, and not for users to fire.
    let events = server.get("/v1/event/list").json();
    assert!(
        !events.to_string().contains("_colony-"),
        "internal events hidden: {events}"
    );
    let spoof = server.put("/v1/event/fire/_colony-keyring", b"install x");
    assert_eq!(spoof.status, 400, "{}", spoof.text());
    // c2 (k2) now gets in on its next retry; c3 (plaintext) still cannot.
    wait_until(
        "c2 admitted after rotation",
        Duration::from_secs(15),
        || {
            [&server, &c1, &c2].iter().all(|a| {
                ["test-node", "c1", "c2"]
                    .iter()
                    .all(|n| status(a, n) == Some(1))
            })
        },
    );
    assert_eq!(status(&server, "c3"), None);
    assert_eq!(
        c3.get("/v1/agent/members").json().as_array().map(Vec::len),
        Some(1)
    );
    // A bad key is refused with a reason.
    let bad = server.request("POST", "/v1/operator/keyring", br#"{"Key": "c2hvcnQ="}"#);
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("32 bytes"), "{}", bad.text());

    // The rotation is saved in the data dir: restarted with its original --encrypt key, the
    // server keeps k2 (the saved keyring takes precedence) and c1 still talks to it.
    let mut server = server;
    assert!(server.terminate().success());
    let file = temp.path().join("data").join("serf").join("local.keyring");
    assert_eq!(
        std::fs::read_to_string(&file).expect("keyring file").trim(),
        k2
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the keyring file is private: {mode:o}");
    let restarted = Agent::start_in(&temp.path().join("data"), &["--encrypt", &k1]);
    let (_, listing, _) = crate::support::cli(restarted.addr, &["keyring", "--list"]);
    assert_eq!(listing.trim(), format!("{k2} (primary)"));
}
