//! Acknowledged writes survive SIGTERM, SIGKILL and log truncation.

use crate::support::{Agent, free_addr, http, spawn_agent, wait_until};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn durability_restart_brings_back_kv_services_checks_and_sessions() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("data");
    let session_id;
    {
        let mut agent = Agent::start_in(&data, &[]);
        assert_eq!(agent.put("/v1/kv/config/app?flags=7", b"v1").text(), "true");
        let service = br#"{"Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["a"],
            "Check": {"TTL": "30s", "Status": "passing"}}"#;
        assert_eq!(agent.put("/v1/agent/service/register", service).status, 200);
        let created = agent
            .put("/v1/session/create", br#"{"Name": "s", "TTL": "30s"}"#)
            .json();
        session_id = created["ID"].as_str().expect("id").to_string();
        let acquired = agent.put(&format!("/v1/kv/locks/a?acquire={session_id}"), b"holder");
        assert_eq!(acquired.text(), "true");
        assert!(agent.terminate().success(), "clean exit on SIGTERM");
    }
    let agent = Agent::start_in(&data, &[]);
    let entry = agent.get("/v1/kv/config/app").json();
    assert_eq!(entry[0]["Value"], "djE=");
    assert_eq!(entry[0]["Flags"], 7);
    let services = agent.get("/v1/agent/services").json();
    assert_eq!(services["web-1"]["Port"], 8080);
    let checks = agent.get("/v1/agent/checks").json();
    assert_eq!(checks["service:web-1"]["Status"], "passing");
    let session = agent.get(&format!("/v1/session/info/{session_id}")).json();
    assert_eq!(session[0]["ID"], session_id.as_str());
    let lock = agent.get("/v1/kv/locks/a").json();
    assert_eq!(lock[0]["Session"], session_id.as_str());
}

/// Writers record every acknowledged PUT; the agent is killed with SIGKILL mid-stream; after a
/// restart every acknowledged key must hold its value.
fn kill_during_writes(kill_after: Duration) {
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("data");
    let addr = free_addr();
    let log = temp.path().join("agent.log");
    let mut child = spawn_agent(addr, &data, &["--snapshot-every", "200"], &log);
    wait_until("agent ready", Duration::from_secs(20), || {
        http(addr, "GET", "/v1/status/leader", b"").is_ok_and(|r| r.status == 200)
    });
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let acked = acked.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let key = format!("w{writer}/k{i}");
                    let value = format!("value-{writer}-{i}");
                    match http(addr, "PUT", &format!("/v1/kv/{key}"), value.as_bytes()) {
                        Ok(r) if r.status == 200 && r.body == b"true" => {
                            acked.lock().expect("lock").insert(key, value);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        !acked.is_empty(),
        "some writes were acknowledged before the kill"
    );
    let agent = Agent::start_in(&data, &[]);
    let all = agent.get("/v1/kv/?recurse").json();
    let stored: HashMap<String, String> = all
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let value = e["Value"].as_str().unwrap_or_default();
            let bytes = base64_decode(value);
            (
                e["Key"].as_str().expect("key").to_string(),
                String::from_utf8(bytes).expect("utf8"),
            )
        })
        .collect();
    for (key, value) in &acked {
        assert_eq!(
            stored.get(key),
            Some(value),
            "acknowledged write {key} lost"
        );
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

#[test]
fn durability_sigkill_during_writes_loses_no_acknowledged_write() {
    for kill_after_ms in [150, 600, 1300] {
        kill_during_writes(Duration::from_millis(kill_after_ms));
    }
}

#[test]
fn durability_snapshots_truncate_the_log_and_restore() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("data");
    {
        let mut agent = Agent::start_in(&data, &["--snapshot-every", "50"]);
        for i in 0..300 {
            assert_eq!(
                agent
                    .put(&format!("/v1/kv/s/{}", i % 40), format!("{i}").as_bytes())
                    .status,
                200
            );
        }
        let metrics = agent.get("/v1/agent/metrics?format=prometheus").text();
        let snapshots: f64 = metrics
            .lines()
            .find(|l| l.starts_with("colony_store_snapshots_total"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
            .expect("snapshot counter");
        // The first after 50 entries; the next once the log has also grown by the first
        // one's size (the history in a snapshot grows with the log, so they space out).
        assert!(
            snapshots >= 2.0,
            "expected two snapshots in 300 entries, saw {snapshots}"
        );
        assert!(agent.terminate().success());
    }
    let agent = Agent::start_in(&data, &["--snapshot-every", "50"]);
    let entries = agent.get("/v1/kv/s/?recurse").json();
    assert_eq!(entries.as_array().expect("list").len(), 40);
    let last = agent.get("/v1/kv/s/19?raw");
    assert_eq!(last.text(), "299");
}
