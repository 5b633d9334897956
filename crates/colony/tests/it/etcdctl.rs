//! The etcdctl suite: the unmodified `etcdctl` (v3) drives colony's etcd dialect, and the same
//! suite drives a real etcd, which proves the suite checks etcd's behaviour rather than ours.
//! Revisions are never hard-coded (colony's store index also counts catalog writes): each
//! case reads the revisions it needs from the responses.

use crate::support::{Agent, free_addr, wait_until};
use serde_json::Value;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

fn require(binary: &str, package: &str) -> PathBuf {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(binary))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "`{binary}` is not installed: the etcdctl suite needs Debian's {package} \
             (scripts/test installs it; by hand: apt-get install {package})"
        )
    })
}

/// Runs etcdctl against `endpoint`; returns (success, stdout, stderr).
fn etcdctl(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    etcdctl_stdin(endpoint, args, "")
}

/// An etcdctl (v3 API) command aimed at `endpoint`.
fn etcdctl_command<S: AsRef<OsStr>>(endpoint: &str, args: &[S]) -> Command {
    let mut command = Command::new(require("etcdctl", "etcd-client"));
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args);
    command
}

fn etcdctl_stdin(endpoint: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = etcdctl_command(endpoint, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn etcdctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("etcdctl output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// Runs etcdctl and insists it succeeds; returns stdout.
fn ok(endpoint: &str, args: &[&str]) -> String {
    let (success, stdout, stderr) = etcdctl(endpoint, args);
    assert!(success, "etcdctl {args:?} failed: {stderr}{stdout}");
    stdout
}

fn json(endpoint: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-w", "json"]);
    let stdout = ok(endpoint, &all);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: bad JSON {e}: {stdout}"))
}

fn revision_of(response: &Value) -> i64 {
    response["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no header revision in {response}"))
}

fn b64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A long-running etcdctl whose stdout lines arrive on a channel.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    fn start(endpoint: &str, args: &[&str]) -> Streaming {
        let mut child = etcdctl_command(endpoint, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcdctl");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Streaming { child, lines }
    }

    /// Collects lines until `done` says the collection is complete, or panics at the deadline.
    fn read_until(&self, what: &str, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
        let start = Instant::now();
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("timed out waiting for {what}; got {seen:?}"),
            }
        }
        seen
    }

    fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "etcdctl did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn put_get_prefix_rev_limit_sort(endpoint: &str) {
    let first = json(endpoint, &["put", "pg/a", "1"]);
    ok(endpoint, &["put", "pg/b", "2"]);
    ok(endpoint, &["put", "pg/c", "3"]);
    assert_eq!(
        ok(endpoint, &["get", "pg/", "--prefix"]),
        "pg/a\n1\npg/b\n2\npg/c\n3\n"
    );
    let limited = json(endpoint, &["get", "pg/", "--prefix", "--limit=2"]);
    assert_eq!(limited["kvs"].as_array().map(Vec::len), Some(2));
    assert_eq!(limited["more"], true);
    assert_eq!(limited["count"], 3);
    assert_eq!(
        ok(
            endpoint,
            &[
                "get",
                "pg/",
                "--prefix",
                "--order=DESCEND",
                "--sort-by=KEY",
                "--keys-only"
            ]
        ),
        "pg/c\n\npg/b\n\npg/a\n\n"
    );
    assert_eq!(
        ok(
            endpoint,
            &[
                "get",
                "pg/",
                "--prefix",
                "--sort-by=VALUE",
                "--order=DESCEND"
            ]
        ),
        "pg/c\n3\npg/b\n2\npg/a\n1\n"
    );
    ok(endpoint, &["put", "pg/a", "1b"]);
    let rev = revision_of(&first).to_string();
    assert_eq!(
        ok(endpoint, &["get", "pg/a", &format!("--rev={rev}")]),
        "pg/a\n1\n"
    );
    let now = json(endpoint, &["get", "pg/a"]);
    let kv = &now["kvs"][0];
    assert_eq!(kv["version"], 2);
    assert_eq!(kv["create_revision"].as_i64(), Some(revision_of(&first)));
    assert_eq!(kv["value"], b64("1b"));
    let (success, _, stderr) = etcdctl(endpoint, &["get", "pg/a", "--rev=999999999"]);
    assert!(!success);
    assert!(
        stderr.contains("required revision is a future revision"),
        "{stderr}"
    );
}

fn delete_with_prev_kv(endpoint: &str) {
    ok(endpoint, &["put", "del/a", "1"]);
    ok(endpoint, &["put", "del/b", "2"]);
    ok(endpoint, &["put", "dem", "stays"]);
    assert_eq!(
        ok(endpoint, &["del", "del/", "--prefix", "--prev-kv"]),
        "2\ndel/a\n1\ndel/b\n2\n"
    );
    assert_eq!(ok(endpoint, &["get", "del/", "--prefix"]), "");
    assert_eq!(ok(endpoint, &["del", "del/missing"]), "0\n");
    assert_eq!(ok(endpoint, &["get", "dem"]), "dem\nstays\n");
}

/// Keys are bytes, as etcd's are: a key that is not UTF-8 is stored, read back alone and by
/// prefix, and deleted, exactly as sent.
fn binary_keys(endpoint: &str) {
    use std::os::unix::ffi::OsStrExt;
    let key: &[u8] = b"bin/\xff\xfek";
    let run = |args: &[&OsStr]| {
        let output = etcdctl_command(endpoint, args)
            .output()
            .expect("etcdctl output");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "etcdctl {args:?} failed: {stderr}{stdout}"
        );
        stdout
    };
    let key_arg = OsStr::from_bytes(key);
    let os = OsStr::new;
    run(&[os("put"), key_arg, os("v1")]);
    ok(endpoint, &["put", "bin/a", "utf-8 neighbour"]);
    let listed: Value = serde_json::from_str(&run(&[
        os("get"),
        os("bin/"),
        os("--prefix"),
        os("-w"),
        os("json"),
    ]))
    .expect("JSON");
    let keys: Vec<&str> = listed["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| kv["key"].as_str().expect("key"))
        .collect();
    use base64::Engine;
    let key_b64 = base64::engine::general_purpose::STANDARD.encode(key);
    // Byte order: 0xff sorts after every ASCII byte.
    assert_eq!(keys, [b64("bin/a").as_str(), key_b64.as_str()], "{listed}");
    let alone: Value =
        serde_json::from_str(&run(&[os("get"), key_arg, os("-w"), os("json")])).expect("JSON");
    assert_eq!(alone["count"], 1, "{alone}");
    assert_eq!(alone["kvs"][0]["value"], b64("v1"));
    assert_eq!(run(&[os("del"), key_arg]), "1\n");
    assert_eq!(
        ok(endpoint, &["get", "bin/", "--prefix", "--keys-only"]),
        "bin/a\n\n"
    );
}

fn txn_compare_and_branches(endpoint: &str) {
    ok(endpoint, &["put", "txn/k", "v1"]);
    let script = "value(\"txn/k\") = \"v1\"\n\nput txn/k v2\n\nput txn/k lost\n\n";
    let (success, stdout, stderr) = etcdctl_stdin(endpoint, &["txn"], script);
    assert!(success, "{stderr}");
    assert_eq!(stdout, "SUCCESS\n\nOK\n");
    assert_eq!(
        ok(endpoint, &["get", "txn/k", "--print-value-only"]),
        "v2\n"
    );
    let (success, stdout, stderr) = etcdctl_stdin(endpoint, &["txn"], script);
    assert!(success, "{stderr}");
    assert_eq!(stdout, "FAILURE\n\nOK\n");
    assert_eq!(
        ok(endpoint, &["get", "txn/k", "--print-value-only"]),
        "lost\n"
    );
    let versions = "ver(\"txn/k\") = \"3\"\ncreate(\"txn/none\") = \"0\"\n\nget txn/k\n\n\n";
    let (success, stdout, stderr) = etcdctl_stdin(endpoint, &["txn"], versions);
    assert!(success, "{stderr}");
    assert_eq!(stdout, "SUCCESS\n\ntxn/k\nlost\n");
}

fn watch_events(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|r| r["Events"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn watch_from_old_revision_with_prev_kv(endpoint: &str) {
    let created = json(endpoint, &["put", "w/k", "a"]);
    ok(endpoint, &["put", "w/k", "b"]);
    ok(endpoint, &["del", "w/k"]);
    let rev = format!("--rev={}", revision_of(&created));
    let watch = Streaming::start(endpoint, &["watch", "w/k", &rev, "--prev-kv", "-w", "json"]);
    let lines = watch.read_until("three replayed events", |seen| {
        watch_events(seen).len() >= 3
    });
    let events = watch_events(&lines);
    assert!(events[0].get("type").is_none(), "a put: {}", events[0]);
    assert_eq!(events[0]["kv"]["value"], b64("a"));
    assert!(events[0].get("prev_kv").is_none(), "{}", events[0]);
    assert_eq!(events[1]["kv"]["value"], b64("b"));
    assert_eq!(events[1]["prev_kv"]["value"], b64("a"));
    assert_eq!(events[2]["type"], 1, "a delete: {}", events[2]);
    assert_eq!(events[2]["prev_kv"]["value"], b64("b"));

    // Live events on a prefix, from the next revision on, so none can be missed.
    let now = revision_of(&json(endpoint, &["get", "w2"]));
    let rev = format!("--rev={}", now + 1);
    let live = Streaming::start(endpoint, &["watch", "w2/", "--prefix", &rev, "-w", "json"]);
    ok(endpoint, &["put", "w2/x", "1"]);
    ok(endpoint, &["put", "elsewhere", "1"]);
    ok(endpoint, &["put", "w2/y", "2"]);
    let lines = live.read_until("two live events", |seen| watch_events(seen).len() >= 2);
    let keys: Vec<Value> = watch_events(&lines)
        .iter()
        .map(|e| e["kv"]["key"].clone())
        .collect();
    assert_eq!(keys, [b64("w2/x"), b64("w2/y")]);
}

fn lease_id(granted: &str) -> String {
    // "lease 694d7f8a1c9b2a0e granted with TTL(60s)"
    granted
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no lease ID in {granted:?}"))
        .to_string()
}

fn leases_grant_keepalive_revoke_and_expiry(endpoint: &str) {
    let granted = ok(endpoint, &["lease", "grant", "60"]);
    assert!(granted.contains("granted with TTL(60s)"), "{granted}");
    let id = lease_id(&granted);
    ok(endpoint, &["put", "lease/k", "v", &format!("--lease={id}")]);
    let ttl = ok(endpoint, &["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.contains("attached keys([lease/k])"), "{ttl}");
    assert!(ttl.contains("granted with TTL(60s)"), "{ttl}");
    let list = ok(endpoint, &["lease", "list"]);
    assert!(list.contains(&id), "{list}");
    let kept = ok(endpoint, &["lease", "keep-alive", "--once", &id]);
    assert_eq!(kept.trim(), format!("lease {id} keepalived with TTL(60)"));
    assert_eq!(
        ok(endpoint, &["lease", "revoke", &id]).trim(),
        format!("lease {id} revoked")
    );
    assert_eq!(ok(endpoint, &["get", "lease/k"]), "");
    let (success, _, stderr) =
        etcdctl(endpoint, &["put", "lease/x", "v", &format!("--lease={id}")]);
    assert!(!success);
    assert!(stderr.contains("requested lease not found"), "{stderr}");

    // A short lease nobody keeps alive takes its keys with it: never before its TTL.
    let granted_at = Instant::now();
    let short = lease_id(&ok(endpoint, &["lease", "grant", "2"]));
    ok(
        endpoint,
        &["put", "lease/short", "v", &format!("--lease={short}")],
    );
    wait_until("the short lease's key to expire", DEADLINE, || {
        ok(endpoint, &["get", "lease/short"]).is_empty()
    });
    let lived = granted_at.elapsed();
    assert!(
        lived >= Duration::from_millis(1900),
        "expired early: {lived:?}"
    );
    let expired = ok(endpoint, &["lease", "timetolive", &short]);
    assert!(expired.contains("already expired"), "{expired}");
}

fn lock_excludes_a_second_process(endpoint: &str, dir: &Path) {
    let log = dir.join("lock.log");
    let script = |name: &str, hold: &str| {
        format!(
            "echo {name}-in >> {log}; sleep {hold}; echo {name}-out >> {log}",
            log = log.display()
        )
    };
    let first = script("A", "1");
    let mut holder = Streaming::start(endpoint, &["lock", "suite-lock", "--", "sh", "-c", &first]);
    wait_until("the first process to hold the lock", DEADLINE, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("A-in"))
    });
    let second = script("B", "0");
    let mut waiter = Streaming::start(endpoint, &["lock", "suite-lock", "--", "sh", "-c", &second]);
    assert!(holder.wait_exit().success());
    assert!(waiter.wait_exit().success());
    assert_eq!(
        std::fs::read_to_string(&log).expect("lock log"),
        "A-in\nA-out\nB-in\nB-out\n",
        "the second holder ran inside the first's critical section"
    );
}

fn elect_hands_over_when_the_leader_dies(endpoint: &str) {
    let mut first = Streaming::start(endpoint, &["elect", "suite-election", "p1"]);
    first.read_until("p1 to lead", |seen| seen.iter().any(|l| l == "p1"));
    let observer = Streaming::start(endpoint, &["elect", "-l", "suite-election"]);
    observer.read_until("the observer to see p1", |seen| {
        seen.iter().any(|l| l == "p1")
    });
    let second = Streaming::start(endpoint, &["elect", "suite-election", "p2"]);
    std::thread::sleep(Duration::from_millis(300));
    // The second candidate waits while the first leads.
    assert!(
        second.lines.try_recv().is_err(),
        "p2 led while p1 was alive"
    );
    first.signal("TERM");
    first.wait_exit();
    second.read_until("p2 to lead", |seen| seen.iter().any(|l| l == "p2"));
    observer.read_until("the observer to see p2", |seen| {
        seen.iter().any(|l| l == "p2")
    });
}

fn endpoint_status_and_member_list(endpoint: &str) {
    let status = json(endpoint, &["endpoint", "status"]);
    let status = &status[0]["Status"];
    assert_eq!(status["leader"], status["header"]["member_id"], "{status}");
    assert!(
        status["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{status}"
    );
    assert!(status["raftIndex"].as_u64().unwrap_or(0) > 0, "{status}");
    assert!(status["dbSize"].as_u64().unwrap_or(0) > 0, "{status}");
    let members = json(endpoint, &["member", "list"]);
    let members = members["members"].as_array().expect("members");
    assert_eq!(members.len(), 1);
    let urls = members[0]["clientURLs"].to_string();
    assert!(urls.contains(endpoint), "{urls}");
    // Written with its scheme, the endpoint reaches the per-endpoint commands as the
    // `:authority` "http://host:port"; etcd accepts that, so must we.
    let with_scheme = format!("http://{endpoint}");
    let again = json(&with_scheme, &["endpoint", "status"]);
    assert_eq!(
        again[0]["Status"]["header"]["member_id"], status["header"]["member_id"],
        "{again}"
    );
    let hashes = json(&with_scheme, &["endpoint", "hashkv"]);
    assert!(hashes[0]["HashKV"]["hash"].as_u64().is_some(), "{hashes}");
}

fn compaction_refuses_old_revisions(endpoint: &str) {
    let old = revision_of(&json(endpoint, &["put", "cmp/k", "1"]));
    let keep = revision_of(&json(endpoint, &["put", "cmp/k", "2"]));
    ok(endpoint, &["put", "cmp/k", "3"]);
    assert_eq!(
        ok(endpoint, &["compaction", &keep.to_string()]).trim(),
        format!("compacted revision {keep}")
    );
    let (success, _, stderr) = etcdctl(endpoint, &["get", "cmp/k", &format!("--rev={old}")]);
    assert!(!success);
    assert!(
        stderr.contains("required revision has been compacted"),
        "{stderr}"
    );
    assert_eq!(
        ok(
            endpoint,
            &[
                "get",
                "cmp/k",
                &format!("--rev={keep}"),
                "--print-value-only"
            ]
        ),
        "2\n"
    );
    let (success, stdout, stderr) = etcdctl(endpoint, &["watch", "cmp/k", &format!("--rev={old}")]);
    assert!(!success);
    assert!(
        format!("{stdout}{stderr}").contains("required revision has been compacted"),
        "{stdout}{stderr}"
    );
}

fn run_suite(endpoint: &str, dir: &Path) {
    put_get_prefix_rev_limit_sort(endpoint);
    delete_with_prev_kv(endpoint);
    binary_keys(endpoint);
    txn_compare_and_branches(endpoint);
    watch_from_old_revision_with_prev_kv(endpoint);
    leases_grant_keepalive_revoke_and_expiry(endpoint);
    lock_excludes_a_second_process(endpoint, dir);
    elect_hands_over_when_the_leader_dies(endpoint);
    endpoint_status_and_member_list(endpoint);
    compaction_refuses_old_revisions(endpoint);
}

#[test]
fn etcdctl_suite_against_colony() {
    let temp = tempfile::tempdir().expect("tempdir");
    let grpc = free_addr().to_string();
    let _agent = Agent::start_in(&temp.path().join("data"), &["--grpc-addr", &grpc]);
    run_suite(&grpc, temp.path());
}

/// A single-member etcd from Debian's etcd-server, on loopback ports, killed on drop.
pub struct RealEtcd {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl RealEtcd {
    pub fn start() -> RealEtcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let client = free_addr();
        let peer = free_addr();
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
        let child = Command::new(require("etcd", "etcd-server"))
            .args(["--name", "suite"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &format!("http://{client}")])
            .args(["--advertise-client-urls", &format!("http://{client}")])
            .args(["--listen-peer-urls", &format!("http://{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
            .args(["--initial-cluster", &format!("suite=http://{peer}")])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let etcd = RealEtcd {
            child,
            endpoint: client.to_string(),
            _dir: dir,
        };
        wait_until("etcd to serve", DEADLINE, || {
            etcdctl(&etcd.endpoint, &["endpoint", "health"]).0
        });
        etcd
    }
}

impl Drop for RealEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcdctl_suite_against_real_etcd() {
    let etcd = RealEtcd::start();
    run_suite(&etcd.endpoint, etcd._dir.path());
}
