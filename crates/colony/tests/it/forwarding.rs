//! Client agents forward the HTTP API to a server over its RPC port: a lone client answers
//! 503, the same client serves KV, catalog, sessions, blocking queries and its own services
//! once a server has joined, its `/v1/agent/*` endpoints act on the client's node, and it
//! runs its own node's checks.

use crate::support::{Agent, wait_until};
use std::time::{Duration, Instant};

/// The gossip address of an agent, read from its own member list.
pub(crate) fn gossip_addr(agent: &Agent) -> String {
    let members = agent.get("/v1/colony/members").json();
    members["Members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["Self"] == true)
        .expect("self listed")["Addr"]
        .as_str()
        .expect("addr")
        .to_string()
}

#[test]
fn forwarding_client_agent_serves_the_api_through_a_server() {
    // Alone, a client agent knows no server: 503 with Consul's reason, no leader.
    let client = Agent::start_client("c1", &[]);
    let lone = client.get("/v1/kv/anything");
    assert_eq!(lone.status, 503, "{}", lone.text());
    assert!(
        lone.text().contains("No known Consul servers"),
        "{}",
        lone.text()
    );
    assert_eq!(client.get("/v1/status/leader").json(), "");

    // A dev server joins the client; the client learns its RPC address through gossip.
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Agent::start_in(
        &temp.path().join("data"),
        &["--join", &gossip_addr(&client)],
    );
    wait_until("the client forwards", Duration::from_secs(10), || {
        client.get("/v1/kv/anything").status == 404
    });
    assert_ne!(client.get("/v1/status/leader").json(), "");

    // KV: a write through the client is on the server; reads through the client say which
    // server answered and carry its index and evidence.
    let put = client.put("/v1/kv/app/config", b"blue");
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json(), true);
    let on_server = server.get("/v1/kv/app/config?raw");
    assert_eq!(on_server.text(), "blue");
    let read = client.get("/v1/kv/app/config?raw");
    assert_eq!(read.text(), "blue");
    assert_eq!(read.header("x-colony-forwarded-to"), Some("test-node"));
    assert!(read.header("x-consul-index").is_some());
    assert!(read.header("x-colony-evidence").is_some());
    // CAS through the client: a stale index loses.
    let index = client.get("/v1/kv/app/config").json()[0]["ModifyIndex"]
        .as_u64()
        .expect("index");
    assert_eq!(
        client
            .put(&format!("/v1/kv/app/config?cas={}", index + 100), b"red")
            .json(),
        false
    );
    // Errors come back as the server gave them.
    let bad = client.put("/v1/kv/app/config?cas=notanumber", b"x");
    assert_eq!(bad.status, 400, "{}", bad.text());

    // A blocking query through the client returns when a write lands on the server.
    let index = read.header("x-consul-index").expect("index").to_string();
    let writer = std::thread::spawn({
        let server_addr = server.addr;
        move || {
            std::thread::sleep(Duration::from_millis(300));
            crate::support::http(server_addr, "PUT", "/v1/kv/app/config", b"green")
                .expect("write")
                .status
        }
    });
    let started = Instant::now();
    let woken = client.get(&format!("/v1/kv/app/config?index={index}&wait=20s&raw"));
    assert_eq!(writer.join().expect("writer"), 200);
    assert_eq!(woken.text(), "green");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the write"
    );

    // Agent endpoints act on the client's node: its service lands under c1, not the server.
    let registered = client.put(
        "/v1/agent/service/register",
        br#"{"name": "web", "id": "web-1", "port": 8080, "tags": ["v1"]}"#,
    );
    assert_eq!(registered.status, 200, "{}", registered.text());
    let instances = server.get("/v1/catalog/service/web").json();
    assert_eq!(instances[0]["Node"], "c1", "{instances}");
    assert_eq!(instances[0]["ServicePort"], 8080);
    assert!(client.get("/v1/agent/services").json()["web-1"].is_object());
    assert!(server.get("/v1/agent/services").json()["web-1"].is_null());
    // A session created through the client belongs to the client's node (once membership
    // has brought that node into the catalog with a passing serfHealth check).
    wait_until("c1 in the catalog", Duration::from_secs(10), || {
        server.get("/v1/health/node/c1").json()[0]["Status"] == "passing"
    });
    let session = client
        .put("/v1/session/create", br#"{"TTL": "30s"}"#)
        .json();
    let id = session["ID"].as_str().expect("session id");
    assert_eq!(
        server.get(&format!("/v1/session/info/{id}")).json()[0]["Node"],
        "c1"
    );
    let deregistered = client.put("/v1/agent/service/deregister/web-1", b"");
    assert_eq!(deregistered.status, 200, "{}", deregistered.text());
    assert_eq!(
        server.get("/v1/catalog/service/web").json(),
        serde_json::json!([])
    );

    // The client runs its node's checks: a TCP check on a port the test listens on passes,
    // and goes critical once the port closes; a TTL check passes when told through the
    // client and goes critical when its TTL runs out.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("addr").port();
    let body = format!(
        r#"{{"name": "db", "id": "db-1", "port": {port},
            "checks": [
              {{"CheckID": "db-tcp", "Name": "tcp", "TCP": "127.0.0.1:{port}", "Interval": "200ms"}},
              {{"CheckID": "db-ttl", "Name": "ttl", "TTL": "1s"}}
            ]}}"#
    );
    let registered = client.put("/v1/agent/service/register", body.as_bytes());
    assert_eq!(registered.status, 200, "{}", registered.text());
    let check_status = |id: &str| {
        server
            .get("/v1/health/node/c1")
            .json()
            .as_array()
            .expect("checks")
            .iter()
            .find(|c| c["CheckID"] == id)
            .map(|c| c["Status"].as_str().unwrap_or_default().to_string())
    };
    wait_until("the TCP check passes", Duration::from_secs(10), || {
        check_status("db-tcp").as_deref() == Some("passing")
    });
    drop(listener);
    wait_until("the TCP check fails", Duration::from_secs(10), || {
        check_status("db-tcp").as_deref() == Some("critical")
    });
    let passed = client.put("/v1/agent/check/pass/db-ttl?note=ok", b"");
    assert_eq!(passed.status, 200, "{}", passed.text());
    assert_eq!(check_status("db-ttl").as_deref(), Some("passing"));
    wait_until("the TTL check expires", Duration::from_secs(10), || {
        check_status("db-ttl").as_deref() == Some("critical")
    });
    let checks = client.get("/v1/agent/checks").json();
    assert_eq!(checks["db-ttl"]["Output"], "TTL expired", "{checks}");
    // Updates keep a TTL check passing past its TTL, and it expires again once they stop:
    // each update through the client restarts the TTL the client runs.
    for _ in 0..6 {
        let update = client.put("/v1/agent/check/update/db-ttl", br#"{"Status": "passing"}"#);
        assert_eq!(update.status, 200, "{}", update.text());
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(check_status("db-ttl").as_deref(), Some("passing"));
    }
    wait_until(
        "the TTL check expires again",
        Duration::from_secs(10),
        || check_status("db-ttl").as_deref() == Some("critical"),
    );

    // The client's own description stays local.
    let me = client.get("/v1/agent/self").json();
    assert_eq!(me["Config"]["NodeName"], "c1");
    assert_eq!(me["Config"]["Server"], false);

    // So do its metrics: membership as it sees it (two members alive: itself and the
    // server), in Prometheus text and in Consul's JSON; the server adds the same families
    // to its own registry.
    let text = client.get("/v1/agent/metrics?format=prometheus").text();
    assert!(
        text.contains("colony_gossip_members{state=\"alive\"} 2"),
        "{text}"
    );
    let probes_ok = text
        .lines()
        .find_map(|line| line.strip_prefix("colony_gossip_probes_ok_total "))
        .and_then(|value| value.parse::<u64>().ok())
        .expect("probes counter");
    assert!(probes_ok > 0, "the client has probed the server: {text}");
    let json = client.get("/v1/agent/metrics").json();
    let alive = json["Gauges"]
        .as_array()
        .expect("gauges")
        .iter()
        .find(|g| g["Name"] == "colony.gossip.members" && g["Labels"]["state"] == "alive")
        .map(|g| g["Value"].clone());
    assert_eq!(alive, Some(serde_json::json!(2)), "{json}");
    let server_text = server.get("/v1/agent/metrics?format=prometheus").text();
    assert!(
        server_text.contains("colony_gossip_members{state=\"alive\"} 2")
            && server_text.contains("colony_store_applied_entries_total")
            && server_text.trim_end().ends_with("# EOF"),
        "{server_text}"
    );
}
