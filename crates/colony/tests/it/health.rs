//! Health checks run by the agent, on the paths the py-consul suite does not reach.

use crate::support::{Agent, wait_until};
use std::time::{Duration, Instant};

#[test]
fn health_expired_ttl_check_deregisters_its_service_after_the_deadline() {
    let agent = Agent::start();
    let service = br#"{"Name": "batch", "ID": "batch-1", "Check": {"CheckID": "batch-ttl",
        "TTL": "1s", "Status": "passing", "DeregisterCriticalServiceAfter": "1s"}}"#;
    let registered = Instant::now();
    assert_eq!(agent.put("/v1/agent/service/register", service).status, 200);
    wait_until("the TTL to expire", Duration::from_secs(10), || {
        agent.get("/v1/agent/checks").json()["batch-ttl"]["Status"] == "critical"
    });
    assert_eq!(
        agent.get("/v1/agent/checks").json()["batch-ttl"]["Output"],
        "TTL expired"
    );
    wait_until(
        "the service to be deregistered",
        Duration::from_secs(10),
        || {
            agent
                .get("/v1/agent/services")
                .json()
                .get("batch-1")
                .is_none()
        },
    );
    assert!(
        registered.elapsed() >= Duration::from_secs(2),
        "never before TTL + DeregisterCriticalServiceAfter: {:?}",
        registered.elapsed()
    );
    assert!(
        agent
            .get("/v1/agent/checks")
            .json()
            .get("batch-ttl")
            .is_none()
    );
}
