//! Start-up refuses unusable data dirs and addresses with a message naming the culprit.

use crate::support::{Agent, colony_bin, free_addr, mount_tmpfs};
use std::process::Command;

fn agent_error(args: &[&str]) -> (i32, String) {
    let output = Command::new(colony_bin())
        .args(args)
        .args(["--grpc-addr", "127.0.0.1:0"])
        .output()
        .expect("run colony");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn startup_data_dir_locked_by_another_agent_is_refused() {
    let first = Agent::start();
    let addr = free_addr().to_string();
    let dir = first.data_dir.to_string_lossy().to_string();
    let (code, stderr) = agent_error(&["agent", "--dev", "--http-addr", &addr, "--data-dir", &dir]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("in use by another colony agent"),
        "{stderr}"
    );
    assert!(stderr.contains("colony.lock"), "{stderr}");
    assert_eq!(
        first.get("/v1/status/leader").status,
        200,
        "the first agent is unharmed"
    );
}

#[test]
fn startup_data_dir_that_is_a_file_is_refused() {
    let temp = tempfile::tempdir().expect("tempdir");
    let file = temp.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let dir = file.join("data").to_string_lossy().to_string();
    let addr = free_addr().to_string();
    let (code, stderr) = agent_error(&["agent", "--dev", "--http-addr", &addr, "--data-dir", &dir]);
    assert_ne!(code, 0);
    assert!(stderr.contains("plain-file"), "{stderr}");
}

#[test]
fn startup_read_only_data_dir_is_refused_naming_it() {
    let temp = tempfile::tempdir().expect("tempdir");
    let read_only = temp.path().join("read-only-disk");
    let Some(_mount) = mount_tmpfs(&read_only, "ro,size=1m") else {
        let message = "READ-ONLY DATA DIR TEST NOT RUN: cannot mount a tmpfs (needs root)";
        assert!(
            std::env::var_os("CI").is_none(),
            "{message}: CI must be able to run it"
        );
        eprintln!("\n*** {message} ***\n");
        return;
    };
    let dir = read_only.join("data").to_string_lossy().to_string();
    let addr = free_addr().to_string();
    let (code, stderr) = agent_error(&["agent", "--dev", "--http-addr", &addr, "--data-dir", &dir]);
    assert_ne!(code, 0);
    assert!(stderr.contains("read-only-disk"), "{stderr}");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
}

#[test]
fn startup_corrupt_snapshot_is_refused_naming_it() {
    let temp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(temp.path()).expect("mkdir");
    std::fs::write(temp.path().join("snapshot"), vec![0xA5u8; 128 * 1024]).expect("write");
    let dir = temp.path().to_string_lossy().to_string();
    let addr = free_addr().to_string();
    let (code, stderr) = agent_error(&["agent", "--dev", "--http-addr", &addr, "--data-dir", &dir]);
    assert_ne!(code, 0);
    assert!(stderr.contains("snapshot"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn startup_truncated_log_segment_is_refused_naming_it() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("data");
    {
        let mut agent = Agent::start_in(&data, &[]);
        for i in 0..50 {
            agent.put(&format!("/v1/kv/key{i}"), b"some value");
        }
        assert!(agent.terminate().success());
    }
    let segment = std::fs::read_dir(data.join("wal"))
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .max()
        .expect("a segment");
    let len = std::fs::metadata(&segment).expect("segment exists").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open");
    file.set_len(len / 3).expect("truncate");
    let addr = free_addr().to_string();
    let dir = data.to_string_lossy().to_string();
    let (code, stderr) = agent_error(&["agent", "--dev", "--http-addr", &addr, "--data-dir", &dir]);
    assert_ne!(code, 0, "a truncated log must not open as if shorter");
    let name = segment
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(
        stderr.contains(&name) && stderr.contains("truncated"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn startup_damaged_log_record_is_refused_naming_the_segment() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("data");
    {
        let mut agent = Agent::start_in(&data, &[]);
        for i in 0..20 {
            agent.put(&format!("/v1/kv/key{i}"), b"some value");
        }
        assert!(agent.terminate().success());
    }
    // Make the first segment a sealed one by adding a later (empty) segment after it, then
    // damage a record in it: only the last segment may have a torn tail.
    let wal = data.join("wal");
    let first = std::fs::read_dir(&wal)
        .expect("wal")
        .map(|e| e.expect("e").path())
        .max()
        .expect("seg");
    let bytes = std::fs::read(&first).expect("read");
    let next = wal.join(format!("{:020}.wal", 10_000));
    std::fs::write(&next, &bytes).expect("copy");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xEE; 4], 100).expect("damage");
    let addr = free_addr().to_string();
    let dir = data.to_string_lossy().to_string();
    let (code, stderr) = agent_error(&["agent", "--dev", "--http-addr", &addr, "--data-dir", &dir]);
    assert_ne!(code, 0);
    let name = first
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(stderr.contains(&name), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn startup_unspecified_advertise_address_is_refused() {
    let addr = format!("0.0.0.0:{}", free_addr().port());
    let (code, stderr) = agent_error(&["agent", "--dev", "--http-addr", &addr]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--advertise"), "{stderr}");
}

#[test]
fn startup_bad_or_taken_dns_address_is_refused_naming_it() {
    let addr = free_addr().to_string();
    let (code, stderr) = agent_error(&[
        "agent",
        "--dev",
        "--http-addr",
        &addr,
        "--bind",
        "127.0.0.1:0",
        "--dns-addr",
        "nonsense",
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("invalid --dns-addr \"nonsense\""),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A DNS address given and taken (here by a UDP socket) stops the start.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let taken_addr = taken.local_addr().expect("address").to_string();
    let (code, stderr) = agent_error(&[
        "agent",
        "--dev",
        "--http-addr",
        &free_addr().to_string(),
        "--bind",
        "127.0.0.1:0",
        "--dns-addr",
        &taken_addr,
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&format!("cannot listen on {taken_addr} for DNS")),
        "{stderr}"
    );
}

#[test]
fn startup_client_agent_refuses_to_advertise_an_unspecified_gossip_address() {
    let addr = format!("0.0.0.0:{}", free_addr().port());
    let (code, stderr) = agent_error(&[
        "agent",
        "--node",
        "c",
        "--http-addr",
        &addr,
        "--bind",
        "0.0.0.0:0",
    ]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("cannot advertise 0.0.0.0") && stderr.contains("--advertise"),
        "{stderr}"
    );
}

#[test]
fn startup_damaged_keyring_file_is_refused_naming_it() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join("data");
    std::fs::create_dir_all(dir.join("serf")).expect("mkdir");
    std::fs::write(dir.join("serf").join("local.keyring"), "not a key\n").expect("write");
    let addr = free_addr().to_string();
    let dir = dir.to_str().expect("utf-8 path");
    let (code, stderr) = agent_error(&["agent", "--dev", "--http-addr", &addr, "--data-dir", dir]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("local.keyring") && stderr.contains("damaged"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
