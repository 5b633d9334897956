//! A disk that fills while the agent runs: writes are refused with a clear error, reads keep
//! being served, storage reports Floor mode, and writes work again once space returns.

use crate::support::{Agent, mount_tmpfs, wait_until};
use std::time::Duration;

#[test]
fn disk_full_refuses_writes_serves_reads_and_recovers() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mount_dir = temp.path().join("small-disk");
    let Some(_mount) = mount_tmpfs(&mount_dir, "size=64m") else {
        let message = "DISK-FULL TEST NOT RUN: cannot mount a tmpfs (needs root)";
        assert!(
            std::env::var_os("CI").is_none(),
            "{message}: CI must be able to run it"
        );
        eprintln!("\n*** {message} ***\n");
        return;
    };
    let agent = Agent::start_in(&mount_dir.join("data"), &[]);
    assert_eq!(agent.put("/v1/kv/before", b"kept").status, 200);
    let filler = mount_dir.join("filler");
    std::fs::write(&filler, vec![0u8; 40 * 1024 * 1024]).expect("filler");

    let value = vec![b'v'; 256 * 1024];
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for i in 0..200 {
        let response = agent.put(&format!("/v1/kv/fill/{i}"), &value);
        match response.status {
            200 => acknowledged.push(i),
            _ => {
                refusal = Some(response);
                break;
            }
        }
    }
    let refusal = refusal.expect("the disk filled up within 50 MB of writes");
    // The log preallocates 16 MiB segments: the refusal comes when the next one cannot be made.
    assert_eq!(refusal.status, 507, "{}", refusal.text());
    assert!(refusal.text().contains("disk full"), "{}", refusal.text());
    assert!(
        refusal.text().contains("small-disk"),
        "names the file: {}",
        refusal.text()
    );

    assert_eq!(
        agent.get("/v1/kv/before?raw").text(),
        "kept",
        "reads are still served"
    );
    assert_eq!(
        agent.get("/v1/colony/modes").json()["storage"]["mode"],
        "floor"
    );
    let small = agent.put("/v1/kv/small", b"x");
    assert_eq!(
        small.status,
        507,
        "floor mode refuses every write: {}",
        small.text()
    );

    std::fs::remove_file(&filler).expect("free space");
    wait_until("writes accepted again", Duration::from_secs(30), || {
        agent.put("/v1/kv/after", b"back").status == 200
    });
    let mode = agent.get("/v1/colony/modes").json()["storage"]["mode"].clone();
    assert!(
        mode == "recovery" || mode == "target",
        "mode after recovery: {mode}"
    );
    for i in acknowledged {
        assert_eq!(
            agent.get(&format!("/v1/kv/fill/{i}")).status,
            200,
            "acked write {i} kept"
        );
    }
    assert_eq!(agent.get("/v1/kv/after?raw").text(), "back");
}
