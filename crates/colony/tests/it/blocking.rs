//! Blocking queries wake on change, time out without one, and cost no polling.

use crate::support::{Agent, http, wait_until};
use std::time::{Duration, Instant};

/// Waits until the agent reports `count` parked blocking queries, so that a test's write
/// exercises the wake-up path rather than racing the query.
fn wait_parked(agent: &Agent, count: usize) {
    let line = format!("colony_blocking_queries_parked {count}");
    wait_until(
        &format!("{count} parked queries"),
        Duration::from_secs(20),
        || {
            agent
                .get("/v1/agent/metrics?format=prometheus")
                .text()
                .lines()
                .any(|l| l == line)
        },
    );
}

#[test]
fn blocking_kv_query_wakes_on_put() {
    let agent = Agent::start();
    let first = agent.put("/v1/kv/watched", b"1");
    assert_eq!(first.status, 200);
    let index = agent.get("/v1/kv/watched").index();
    let addr = agent.addr;
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let response = http(
            addr,
            "GET",
            &format!("/v1/kv/watched?index={index}&wait=20s"),
            b"",
        )
        .expect("blocking get");
        (response, started.elapsed())
    });
    wait_parked(&agent, 1);
    agent.put("/v1/kv/unrelated", b"x");
    agent.put("/v1/kv/watched", b"2");
    let (response, elapsed) = waiter.join().expect("waiter");
    assert!(response.index() > index);
    assert_eq!(response.json()[0]["Value"], "Mg==");
    assert!(
        elapsed < Duration::from_secs(10),
        "woke on the change, not the timeout: {elapsed:?}"
    );
}

#[test]
fn blocking_query_without_change_returns_after_wait_with_same_index() {
    let agent = Agent::start();
    agent.put("/v1/kv/still", b"1");
    let index = agent.get("/v1/kv/still").index();
    let started = Instant::now();
    let response = agent.get(&format!("/v1/kv/still?index={index}&wait=1s"));
    let elapsed = started.elapsed();
    assert_eq!(response.index(), index);
    assert!(
        elapsed >= Duration::from_millis(1000),
        "returned early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(3000),
        "wait plus jitter is bounded: {elapsed:?}"
    );
}

#[test]
fn blocking_health_query_wakes_on_ttl_check_pass() {
    let agent = Agent::start();
    let service = br#"{"Name": "api", "Check": {"CheckID": "api-ttl", "TTL": "30s"}}"#;
    assert_eq!(agent.put("/v1/agent/service/register", service).status, 200);
    let before = agent.get("/v1/health/service/api?passing");
    assert_eq!(
        before.json(),
        serde_json::json!([]),
        "a new TTL check starts critical"
    );
    let index = before.index();
    let addr = agent.addr;
    let waiter = std::thread::spawn(move || {
        http(
            addr,
            "GET",
            &format!("/v1/health/service/api?passing&index={index}&wait=20s"),
            b"",
        )
        .expect("blocking get")
    });
    wait_parked(&agent, 1);
    assert_eq!(
        agent
            .put("/v1/agent/check/pass/api-ttl?note=ok", b"")
            .status,
        200
    );
    let response = waiter.join().expect("waiter");
    assert!(response.index() > index);
    let entries = response.json();
    assert_eq!(entries.as_array().expect("list").len(), 1);
    let checks = entries[0]["Checks"].as_array().expect("checks");
    let ttl = checks
        .iter()
        .find(|c| c["CheckID"] == "api-ttl")
        .expect("the TTL check");
    assert_eq!(ttl["Output"], "ok");
    assert_eq!(ttl["Status"], "passing");
}

#[test]
fn blocking_many_parked_queries_all_wake_and_are_counted() {
    let agent = Agent::start();
    agent.put("/v1/kv/herd", b"0");
    let index = agent.get("/v1/kv/herd").index();
    let addr = agent.addr;
    let waiters: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                http(
                    addr,
                    "GET",
                    &format!("/v1/kv/herd?index={index}&wait=30s"),
                    b"",
                )
                .expect("blocking get")
                .index()
            })
        })
        .collect();
    crate::support::wait_until("200 parked queries", Duration::from_secs(20), || {
        let metrics = agent.get("/v1/agent/metrics?format=prometheus").text();
        metrics
            .lines()
            .any(|l| l == "colony_blocking_queries_parked 200")
    });
    agent.put("/v1/kv/herd", b"1");
    for waiter in waiters {
        assert!(waiter.join().expect("waiter") > index);
    }
}
