//! A client agent keeps its own registrations (Consul's agent local state) and anti-entropy
//! keeps the catalog's view of its node equal to them: registrations made with no server
//! reachable are written once one is, and a client that left and came back (its node
//! deregistered meanwhile) puts its services back from its data dir, removing what it
//! does not keep.

use crate::forwarding::gossip_addr;
use crate::support::{Agent, wait_until};
use std::time::Duration;

/// Service IDs the server's catalog holds for `node`.
fn services_of(server: &Agent, node: &str) -> Vec<String> {
    let answer = server.get(&format!("/v1/catalog/node/{node}")).json();
    let mut ids: Vec<String> = answer["Services"]
        .as_object()
        .map(|services| services.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Check IDs the server's catalog holds for `node`.
fn checks_of(server: &Agent, node: &str) -> Vec<String> {
    let answer = server.get(&format!("/v1/health/node/{node}")).json();
    let mut ids: Vec<String> = answer
        .as_array()
        .map(|checks| {
            checks
                .iter()
                .filter_map(|c| c["CheckID"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

#[test]
fn anti_entropy_writes_registrations_made_while_no_server_was_reachable() {
    let client = Agent::start_client("c2", &[]);
    // Invalid registrations are refused here, with the server's reasons.
    let bad = client.put("/v1/agent/service/register", br#"{"Port": 80}"#);
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(
        bad.text().contains("Missing service name"),
        "{}",
        bad.text()
    );
    let bad = client.put("/v1/agent/service/register", b"{\"Name\": ");
    assert_eq!(bad.status, 400, "{}", bad.text());

    // Valid ones are kept, pending, while no server is known.
    let kept = client.put(
        "/v1/agent/service/register",
        br#"{"name": "api", "id": "api-1", "port": 9000, "check": {"TTL": "30s"}}"#,
    );
    assert_eq!(kept.status, 200, "{}", kept.text());
    assert_eq!(kept.header("x-colony-sync"), Some("pending"));
    assert!(
        kept.header("x-colony-evidence")
            .is_some_and(|e| e.contains("node:c2")),
        "{:?}",
        kept.header("x-colony-evidence")
    );
    let kept = client.put(
        "/v1/agent/check/register",
        br#"{"Name": "api disk", "CheckID": "api-disk", "ServiceID": "api-1", "TTL": "30s"}"#,
    );
    assert_eq!(kept.status, 200, "{}", kept.text());
    let kept = client.put(
        "/v1/agent/service/register",
        br#"{"name": "gone", "port": 9001}"#,
    );
    assert_eq!(kept.status, 200, "{}", kept.text());
    let dropped = client.put("/v1/agent/service/deregister/gone", b"");
    assert_eq!(dropped.status, 200, "{}", dropped.text());
    // Its agent endpoints answer from what it keeps, and say so.
    let services = client.get("/v1/agent/services");
    assert_eq!(services.status, 200, "{}", services.text());
    assert_eq!(services.header("x-colony-sync"), Some("local"));
    let services = services.json();
    assert_eq!(services["api-1"]["Port"], 9000, "{services}");
    assert!(services["gone"].is_null(), "{services}");
    assert_eq!(
        client.get("/v1/agent/service/api-1").json()["Service"],
        "api"
    );
    assert_eq!(client.get("/v1/agent/service/gone").status, 404);
    let checks = client.get("/v1/agent/checks").json();
    assert_eq!(checks["service:api-1"]["Status"], "critical", "{checks}");
    assert_eq!(checks["api-disk"]["ServiceName"], "api", "{checks}");
    assert_eq!(checks["api-disk"]["Node"], "c2", "{checks}");
    // A check of a service this agent does not keep needs a server to say whether the
    // service exists: with none, the answer is the servers' absence.
    let unknown = client.put(
        "/v1/agent/check/register",
        br#"{"Name": "x", "ServiceID": "elsewhere", "TTL": "30s"}"#,
    );
    assert_eq!(unknown.status, 503, "{}", unknown.text());

    // Its metrics say what waits for a server.
    let metrics = client.get("/v1/agent/metrics?format=prometheus").text();
    assert!(
        metrics.contains("colony_local_registrations_pending 2"),
        "{metrics}"
    );

    // A server joins: anti-entropy writes what the client kept, and only that.
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Agent::start_in(
        &temp.path().join("data"),
        &["--join", &gossip_addr(&client)],
    );
    wait_until(
        "the kept registrations reach the catalog",
        Duration::from_secs(15),
        || services_of(&server, "c2") == ["api-1"],
    );
    wait_until("with their checks", Duration::from_secs(5), || {
        let checks = checks_of(&server, "c2");
        checks.contains(&"service:api-1".to_string()) && checks.contains(&"api-disk".to_string())
    });
    let instance = &server.get("/v1/catalog/service/api").json()[0];
    assert_eq!(instance["ServicePort"], 9000, "{instance}");
    assert!(server.get("/v1/catalog/service/gone").json() == serde_json::json!([]));
    let metric = |text: &str, name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.parse::<u64>().ok())
    };
    wait_until("nothing pending", Duration::from_secs(5), || {
        let text = client.get("/v1/agent/metrics?format=prometheus").text();
        metric(&text, "colony_local_registrations_pending") == Some(0)
            && metric(&text, "colony_anti_entropy_registered_total") == Some(2)
    });
    let text = client.get("/v1/agent/metrics?format=prometheus").text();
    assert!(
        metric(&text, "colony_anti_entropy_rounds_failed_total").is_some_and(|n| n > 0),
        "rounds failed while alone: {text}"
    );
}

#[test]
fn anti_entropy_restores_a_restarted_client_agents_services_from_its_data_dir() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Agent::start_in(&temp.path().join("server"), &[]);
    let client_dir = temp.path().join("c1");
    let client_args = |dir: &std::path::Path| {
        vec![
            "--data-dir".to_string(),
            dir.display().to_string(),
            "--join".to_string(),
            gossip_addr(&server),
        ]
    };
    let args = client_args(&client_dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = Agent::start_client("c1", &args);
    wait_until("the client forwards", Duration::from_secs(10), || {
        client.get("/v1/kv/anything").status == 404
    });
    let registered = client.put(
        "/v1/agent/service/register",
        br#"{"name": "web", "id": "web-1", "port": 8080, "check": {"TTL": "30s"}}"#,
    );
    assert_eq!(registered.status, 200, "{}", registered.text());
    assert!(registered.header("x-colony-sync").is_none());
    assert_eq!(services_of(&server, "c1"), ["web-1"]);
    let file = std::fs::read_to_string(client_dir.join("local").join("registrations.json"))
        .expect("the client keeps its registrations in its data dir");
    assert!(file.contains("web-1"), "{file}");

    // The client leaves: the servers deregister its node and services.
    assert!(client.terminate().success());
    wait_until("c1 leaves the catalog", Duration::from_secs(10), || {
        server.get("/v1/catalog/node/c1").status == 404
            || server.get("/v1/catalog/node/c1").json().is_null()
    });
    assert!(services_of(&server, "c1").is_empty());
    // Meanwhile someone registers a service for c1 through the catalog.
    let stray = server.put(
        "/v1/catalog/register",
        br#"{"Node": "c1", "Address": "127.0.0.1", "Service": {"ID": "stray", "Service": "stray"}}"#,
    );
    assert_eq!(stray.status, 200, "{}", stray.text());
    assert_eq!(services_of(&server, "c1"), ["stray"]);

    // Back with the same data dir, the client puts its own service back (with its check)
    // and removes the one it does not keep, with nobody registering anything.
    let client = Agent::start_client("c1", &args);
    wait_until("anti-entropy restores c1", Duration::from_secs(15), || {
        services_of(&server, "c1") == ["web-1"]
    });
    assert!(checks_of(&server, "c1").contains(&"service:web-1".to_string()));
    assert!(client.get("/v1/agent/services").json()["web-1"].is_object());
}

#[test]
fn anti_entropy_writes_a_change_made_while_the_server_was_down_over_the_older_version() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server_dir = temp.path().join("server");
    let mut server = Agent::start_in(&server_dir, &[]);
    let client = Agent::start_client("c3", &["--join", &gossip_addr(&server)]);
    wait_until("the client forwards", Duration::from_secs(10), || {
        client.get("/v1/kv/anything").status == 404
    });
    let first = client.put(
        "/v1/agent/service/register",
        br#"{"name": "db", "id": "db-1", "port": 5432}"#,
    );
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.header("x-colony-sync").is_none());

    // The server goes away; the client takes a new version of the service meanwhile.
    assert!(server.terminate().success());
    let changed = client.put(
        "/v1/agent/service/register",
        br#"{"name": "db", "id": "db-1", "port": 6543}"#,
    );
    assert_eq!(changed.status, 200, "{}", changed.text());
    assert_eq!(changed.header("x-colony-sync"), Some("pending"));

    // Back on its data, the server's catalog has the old version until anti-entropy
    // writes the new one.
    let server = Agent::start_in(&server_dir, &["--join", &gossip_addr(&client)]);
    wait_until(
        "the new port reaches the catalog",
        Duration::from_secs(15),
        || server.get("/v1/catalog/service/db").json()[0]["ServicePort"] == 6543,
    );
}
