//! Bad input gets a precise 4xx and changes nothing.

use crate::support::Agent;

fn assert_refused(response: &crate::support::Response, status: u16, words: &[&str]) {
    let body = response.text();
    assert_eq!(response.status, status, "body: {body}");
    for word in words {
        assert!(body.contains(word), "expected {word:?} in {body:?}");
    }
    assert!(
        response.header("x-colony-evidence").is_some(),
        "errors carry evidence too"
    );
}

#[test]
fn bad_input_service_registration_is_refused_precisely_and_writes_nothing() {
    let agent = Agent::start();
    let before = agent.get("/v1/agent/services").json();
    let cases: &[(&str, &[&str])] = &[
        (r#"{"Name": "web", "Port": 80"#, &["decode", "line 1"]),
        (
            r#"{"Name": "web", "Port": "abc"}"#,
            &["Port", "invalid type"],
        ),
        (r#"{"Name": "web", "Port": 70000}"#, &["Port"]),
        (r#"{"Name": "web", "Tags": "not-a-list"}"#, &["Tags"]),
        (r#"{"Port": 80}"#, &["Missing service name"]),
        (
            r#"{"Name": "web", "Check": {"Args": ["/bin/true"], "Interval": "10s"}}"#,
            &["script", "not supported"],
        ),
        (
            r#"{"Name": "web", "Check": {"Interval": "10s"}}"#,
            &["TTL, HTTP or TCP"],
        ),
        (
            r#"{"Name": "web", "Check": {"HTTP": "http://127.0.0.1:1/", "Interval": "banana"}}"#,
            &["Interval", "banana"],
        ),
        (
            r#"{"Name": "web", "Check": {"HTTP": "http://127.0.0.1:1/"}}"#,
            &["Interval must be > 0"],
        ),
        (
            r#"{"Name": "web", "Check": {"TTL": "10s", "Status": "great"}}"#,
            &["status", "great"],
        ),
        (
            r#"{"Name": "web", "Check": {"TTL": "-5s"}}"#,
            &["TTL", "negative"],
        ),
        (r#"["not", "an", "object"]"#, &["decode"]),
    ];
    for (body, words) in cases {
        let response = agent.put("/v1/agent/service/register", body.as_bytes());
        assert_refused(&response, 400, words);
    }
    assert_eq!(
        agent.get("/v1/agent/services").json(),
        before,
        "no partial write"
    );
}

#[test]
fn bad_input_unknown_fields_are_ignored_as_consul_does() {
    let agent = Agent::start();
    let body = br#"{"Name": "web", "Port": 80, "SomethingNew": {"x": 1}, "check": {"ttl": "10s"}}"#;
    assert_eq!(agent.put("/v1/agent/service/register", body).status, 200);
    let services = agent.get("/v1/agent/services").json();
    assert_eq!(services["web"]["Port"], 80);
}

#[test]
fn bad_input_kv_keys_values_and_parameters_are_refused() {
    let agent = Agent::start();
    assert_refused(&agent.put("/v1/kv/", b"x"), 400, &["Missing key name"]);
    let long_key = "k".repeat(3000);
    assert_refused(
        &agent.put(&format!("/v1/kv/{long_key}"), b"x"),
        400,
        &["Key too long"],
    );
    assert_refused(&agent.put("/v1/kv/bad%FFkey", b"x"), 400, &["UTF-8"]);
    assert_refused(&agent.put("/v1/kv/nul%00key", b"x"), 400, &["NUL"]);
    let big = vec![b'x'; 512 * 1024 + 1];
    assert_refused(&agent.put("/v1/kv/big", &big), 413, &["524288"]);
    assert_refused(&agent.put("/v1/kv/k?cas=abc", b"x"), 400, &["cas"]);
    assert_refused(&agent.put("/v1/kv/k?flags=-1", b"x"), 400, &["flags"]);
    assert_refused(
        &agent.put("/v1/kv/k?acquire=no-such-session", b"x"),
        400,
        &["invalid session"],
    );
    assert_refused(&agent.get("/v1/kv/k?index=1&wait=banana"), 400, &["wait"]);
    assert_refused(&agent.get("/v1/kv/k?dc=mars"), 500, &["datacenter"]);
    // A value of exactly the limit is fine.
    let limit = vec![b'y'; 512 * 1024];
    assert_eq!(agent.put("/v1/kv/limit", &limit).status, 200);
    assert_eq!(
        agent.get("/v1/kv/nul%00key").status,
        400,
        "reads refuse the bad key too"
    );
    for key in ["k", "big"] {
        assert_eq!(
            agent.get(&format!("/v1/kv/{key}")).status,
            404,
            "{key} must not exist"
        );
    }
}

#[test]
fn bad_input_txn_is_refused_whole() {
    let agent = Agent::start();
    assert_refused(&agent.put("/v1/txn", b"{"), 400, &["decode"]);
    let unknown_verb = br#"[{"KV": {"Verb": "set", "Key": "a", "Value": "eA=="}}, {"KV": {"Verb": "explode", "Key": "b"}}]"#;
    assert_refused(
        &agent.put("/v1/txn", unknown_verb),
        400,
        &["Operation 1", "explode"],
    );
    let bad_base64 = br#"[{"KV": {"Verb": "set", "Key": "a", "Value": "!!!"}}]"#;
    assert_refused(&agent.put("/v1/txn", bad_base64), 400, &["base64"]);
    let too_many: Vec<String> = (0..65)
        .map(|i| format!(r#"{{"KV": {{"Verb": "set", "Key": "k{i}"}}}}"#))
        .collect();
    let body = format!("[{}]", too_many.join(","));
    assert_refused(&agent.put("/v1/txn", body.as_bytes()), 413, &["too many"]);
    assert_eq!(
        agent.get("/v1/kv/a").status,
        404,
        "nothing of a refused txn is applied"
    );
}

#[test]
fn bad_input_sessions_and_checks_are_refused() {
    let agent = Agent::start();
    assert_refused(
        &agent.put("/v1/session/create", br#"{"TTL": "1s"}"#),
        400,
        &["Invalid Session TTL"],
    );
    assert_refused(
        &agent.put("/v1/session/create", br#"{"Behavior": "explode"}"#),
        400,
        &["Behavior"],
    );
    assert_refused(
        &agent.put("/v1/session/create", br#"{"Checks": ["nope"]}"#),
        400,
        &["nope"],
    );
    assert_refused(
        &agent.put("/v1/session/renew/not-a-session", b""),
        404,
        &["not found"],
    );
    assert_refused(&agent.put("/v1/agent/check/pass/nope", b""), 404, &["nope"]);
    assert_refused(
        &agent.put("/v1/agent/check/update/serfHealth", br#"{"Status": "meh"}"#),
        400,
        &["meh"],
    );
    assert_refused(
        &agent.put("/v1/agent/check/pass/serfHealth", b""),
        400,
        &["not a TTL check"],
    );
    assert_refused(&agent.put("/v1/agent/maintenance", b""), 400, &["enable"]);
    assert_refused(&agent.get("/v1/health/state/sideways"), 400, &["sideways"]);
    assert_eq!(agent.get("/v1/session/list").json(), serde_json::json!([]));
}
