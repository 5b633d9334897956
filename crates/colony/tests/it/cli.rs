//! The CLI as a user runs it: help everywhere, KV commands, locks that exclude.

use crate::support::{Agent, cli, colony_bin};
use std::process::Command;

#[test]
fn cli_every_command_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["agent"],
        &["kv"],
        &["kv", "get"],
        &["kv", "put"],
        &["kv", "delete"],
        &["kv", "list"],
        &["kv", "export"],
        &["kv", "import"],
        &["services"],
        &["services", "register"],
        &["catalog"],
        &["members"],
        &["lock"],
        &["watch"],
        &["watch", "key"],
        &["bench"],
        &["sim"],
        &["sim", "membership"],
        &["sim", "overload"],
        &["keygen"],
        &["keyring"],
        &["operator"],
        &["operator", "raft"],
        &["operator", "raft", "list-peers"],
        &["operator", "raft", "remove-peer"],
    ];
    for command in commands {
        let output = Command::new(colony_bin())
            .args(*command)
            .arg("--help")
            .output()
            .expect("run");
        assert!(output.status.success(), "colony {command:?} --help failed");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("Usage"),
            "{command:?}"
        );
    }
}

#[test]
fn cli_kv_round_trip_and_json_output() {
    let agent = Agent::start();
    let (code, out, err) = cli(agent.addr, &["kv", "put", "app/name", "colony"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("wrote"));
    let (code, out, _) = cli(agent.addr, &["kv", "get", "app/name"]);
    assert_eq!((code, out.trim()), (0, "colony"));
    let (code, out, _) = cli(agent.addr, &["kv", "get", "app/name", "--json"]);
    assert_eq!(code, 0);
    let entry: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(entry["Key"], "app/name");
    cli(agent.addr, &["kv", "put", "app/sub/x", "1"]);
    let (_, out, _) = cli(agent.addr, &["kv", "list", "app/", "--separator", "/"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        vec!["app/name", "app/sub/"]
    );
    let (code, _, err) = cli(
        agent.addr,
        &["kv", "put", "app/name", "other", "--cas", "1"],
    );
    assert_ne!(code, 0, "stale cas must fail");
    assert!(err.contains("stale"), "{err}");
    let (code, _, _) = cli(agent.addr, &["kv", "delete", "app/", "--recurse"]);
    assert_eq!(code, 0);
    let (code, _, err) = cli(agent.addr, &["kv", "get", "app/name"]);
    assert_ne!(code, 0);
    assert!(err.contains("no key"), "{err}");
}

/// `kv export` writes Consul's export format; `kv import` reads it back (under another
/// prefix), reads Consul's own documents (any field case), and refuses a bad document
/// before writing anything.
#[test]
fn cli_kv_export_and_import_move_a_tree_in_consuls_format() {
    let agent = Agent::start();
    // A binary value, flags, and a "folder" key with no value.
    assert_eq!(
        agent
            .put("/v1/kv/app/bin?flags=42", &[0, 159, 146, 150])
            .status,
        200
    );
    assert_eq!(agent.put("/v1/kv/app/text", b"hello").status, 200);
    assert_eq!(agent.put("/v1/kv/app/dir/", b"").status, 200);
    assert_eq!(agent.put("/v1/kv/other", b"x").status, 200);
    let (code, out, err) = cli(agent.addr, &["kv", "export", "app/"]);
    assert_eq!(code, 0, "{err}");
    let document: serde_json::Value = serde_json::from_str(&out).expect("json");
    let entries = document.as_array().expect("an array");
    assert_eq!(entries.len(), 3, "{out}");
    assert_eq!(
        entries[0],
        serde_json::json!({"key": "app/bin", "flags": 42, "value": "AJ+Slg=="})
    );
    assert_eq!(
        entries[1]["value"], "",
        "a folder key exports an empty value"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tree.json");
    std::fs::write(&file, &out).expect("write");
    let at_file = format!("@{}", file.display());
    let (code, out, err) = cli(agent.addr, &["kv", "import", &at_file, "--prefix", "copy/"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 3 keys"), "{out}");
    let copied = agent.get("/v1/kv/copy/app/bin").json();
    assert_eq!(copied[0]["Value"], "AJ+Slg==");
    assert_eq!(copied[0]["Flags"], 42);
    assert_eq!(agent.get("/v1/kv/copy/app/text?raw").text(), "hello");
    assert_eq!(agent.get("/v1/kv/copy/app/dir/").status, 200);

    // A document as Consul's Go code may write it, field names in any case.
    let consul = r#"[{"Key": "from-consul/a", "Flags": 1, "Value": "b25l"}]"#;
    let (code, _, err) = cli(agent.addr, &["kv", "import", consul]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(agent.get("/v1/kv/from-consul/a?raw").text(), "one");

    // The second entry is bad: nothing is written, and the error says where.
    let bad = r#"[{"key": "bad/first", "value": "eA=="}, {"key": "bad/second", "value": "%%"}]"#;
    let (code, _, err) = cli(agent.addr, &["kv", "import", bad]);
    assert_ne!(code, 0);
    assert!(err.contains("entry 1") && err.contains("base64"), "{err}");
    assert_eq!(agent.get("/v1/kv/bad/first").status, 404, "nothing written");
    let (code, _, err) = cli(agent.addr, &["kv", "import", "{\"key\": 1}"]);
    assert_ne!(code, 0);
    assert!(err.contains("JSON array"), "{err}");
}

#[test]
fn cli_services_register_list_and_catalog() {
    let agent = Agent::start();
    let temp = tempfile::tempdir().expect("tempdir");
    let file = temp.path().join("svc.json");
    std::fs::write(
        &file,
        br#"{"Name": "db", "ID": "db-1", "Port": 5432, "Tags": ["primary"]}"#,
    )
    .expect("write");
    let (code, _, err) = cli(
        agent.addr,
        &["services", "register", file.to_str().expect("utf8")],
    );
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = cli(agent.addr, &["services", "list"]);
    assert!(out.contains("db-1") && out.contains("5432"), "{out}");
    let (_, out, _) = cli(agent.addr, &["catalog", "services", "--json"]);
    let services: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(services["db"], serde_json::json!(["primary"]));
    let (_, out, _) = cli(agent.addr, &["members"]);
    assert!(out.contains("test-node") && out.contains("alive"), "{out}");
    let (code, _, _) = cli(agent.addr, &["services", "deregister", "db-1"]);
    assert_eq!(code, 0);
    let (_, out, _) = cli(agent.addr, &["catalog", "services", "--json"]);
    assert!(!out.contains("\"db\""), "{out}");
}

#[test]
fn cli_services_register_accepts_consul_service_definition_files() {
    let agent = Agent::start();
    let temp = tempfile::tempdir().expect("tempdir");
    let single = temp.path().join("single.json");
    std::fs::write(&single, br#"{"service": {"name": "cache", "port": 6379}}"#).expect("write");
    let many = temp.path().join("many.json");
    std::fs::write(
        &many,
        br#"{"Services": [{"Name": "a", "Port": 1}, {"Name": "b", "Port": 2}]}"#,
    )
    .expect("write");
    let empty = temp.path().join("empty.json");
    std::fs::write(&empty, br#"{"services": []}"#).expect("write");
    for file in [&single, &many] {
        let (code, _, err) = cli(
            agent.addr,
            &["services", "register", file.to_str().expect("utf8")],
        );
        assert_eq!(code, 0, "{err}");
    }
    let services = agent.get("/v1/agent/services").json();
    assert_eq!(services["cache"]["Port"], 6379);
    assert_eq!(services["a"]["Port"], 1);
    assert_eq!(services["b"]["Port"], 2);
    let (code, _, err) = cli(
        agent.addr,
        &["services", "register", empty.to_str().expect("utf8")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("no service definition"), "{err}");
}

#[test]
fn cli_lock_excludes_concurrent_holders_and_passes_exit_code() {
    let agent = Agent::start();
    let temp = tempfile::tempdir().expect("tempdir");
    let journal = temp.path().join("journal");
    let script = format!(
        "echo start >> {0}; sleep 0.4; echo end >> {0}",
        journal.to_str().expect("utf8")
    );
    let addr = agent.addr;
    let holders: Vec<_> = (0..3)
        .map(|_| {
            let script = script.clone();
            std::thread::spawn(move || {
                cli(addr, &["lock", "jobs/nightly", "--", "sh", "-c", &script])
            })
        })
        .collect();
    for holder in holders {
        let (code, _, err) = holder.join().expect("holder");
        assert_eq!(code, 0, "{err}");
    }
    let lines: Vec<String> = std::fs::read_to_string(&journal)
        .expect("journal")
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 6);
    for pair in lines.chunks(2) {
        assert_eq!(
            pair,
            ["start", "end"],
            "critical sections overlapped: {lines:?}"
        );
    }
    let (code, _, _) = cli(addr, &["lock", "jobs/other", "--", "sh", "-c", "exit 3"]);
    assert_eq!(code, 3, "the command's exit code is passed through");
}

#[test]
fn cli_watch_key_prints_each_change() {
    use std::io::BufRead;
    let agent = Agent::start();
    let mut watcher = Command::new(colony_bin())
        .args(["watch", "key", "feature/flag", "--json"])
        .env("COLONY_HTTP_ADDR", agent.addr.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let stdout = watcher.stdout.take().expect("stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_tx.send(line.expect("utf8 line")).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| -> serde_json::Value {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("no output for {what}"));
        serde_json::from_str(&line).expect("json line")
    };
    assert_eq!(next("the initial state")["value"], serde_json::Value::Null);
    agent.put("/v1/kv/feature/flag", b"on");
    assert_eq!(next("the first change")["value"][0]["Value"], "b24=");
    agent.put("/v1/kv/feature/flag", b"off");
    assert_eq!(next("the second change")["value"][0]["Value"], "b2Zm");
    let _ = watcher.kill();
    let _ = watcher.wait();
}

#[test]
fn cli_sim_overload_shows_collapse_and_survival_as_json() {
    let output = Command::new(colony_bin())
        .args(["sim", "overload", "--scenario", "retry-storm", "--json"])
        .output()
        .expect("run colony sim overload");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let reports = reports.as_array().expect("one report per kind of client");
    assert_eq!(reports.len(), 2);
    for report in reports {
        for field in [
            "scenario",
            "clients",
            "capacity_rps",
            "goodput_ratio_during_overload",
            "retry_amplification",
            "p99_latency_ms",
            "recovery_s",
            "trace_hash",
        ] {
            assert!(report.get(field).is_some(), "{field} missing in {report}");
        }
        assert_eq!(report["scenario"], "retry-storm");
    }
    let goodput = |kind: &str| {
        reports
            .iter()
            .find(|r| r["clients"] == kind)
            .and_then(|r| r["goodput_ratio_during_overload"].as_f64())
            .expect("goodput")
    };
    assert!(
        goodput("naive") < 0.2,
        "naive clients collapse: {}",
        goodput("naive")
    );
    assert!(
        goodput("resilient") >= 0.9,
        "resilient clients hold: {}",
        goodput("resilient")
    );
}

#[test]
fn cli_sim_membership_runs_foca_as_a_baseline_and_refuses_what_it_cannot_model() {
    let run = |extra: &[&str]| {
        Command::new(colony_bin())
            .args([
                "--json",
                "sim",
                "membership",
                "--nodes",
                "12",
                "--impl",
                "foca",
            ])
            .args(extra)
            .output()
            .expect("run colony sim membership --impl foca")
    };
    let output = run(&["--seed", "5"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(result["implementation"], "foca 2.0");
    assert_eq!(result["nodes"], 12);
    assert_eq!(
        result["detected"], 1,
        "the killed member is declared down: {result}"
    );
    assert_eq!(result["false_positive_failures"], 0, "{result}");
    assert!(result["join_convergence_ms"].as_f64().is_some(), "{result}");
    assert!(
        result["dissemination_informed"]
            .as_f64()
            .is_some_and(|f| f > 0.8),
        "rumours spread (foca sends each only 4 times at this size, so not always to all): {result}"
    );
    assert!(
        result["dissemination_rounds_max"]
            .as_f64()
            .is_some_and(|r| r >= 1.0),
        "{result}"
    );
    let again: serde_json::Value =
        serde_json::from_slice(&run(&["--seed", "5"]).stdout).expect("JSON");
    assert_eq!(
        result["trace_hash"], again["trace_hash"],
        "same seed, same run"
    );

    let refused = run(&["--slow-fraction", "0.1"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(
            "--impl foca runs the join (or warm start), idle, rumour and kill phases only"
        ),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// `colony bench --target etcd-grpc` on three servers it starts itself: puts and each read
/// workload run and are answered without errors (a smoke test of the load generator, not a
/// measurement: one short run).
#[test]
fn cli_bench_etcd_puts_and_reads_on_three_servers() {
    let output = Command::new(colony_bin())
        .args([
            "bench",
            "--target",
            "etcd-grpc",
            "--servers",
            "3",
            "--workloads",
            "put,get,consistent",
            "--put-clients",
            "4",
            "--read-clients",
            "4",
            "--runs",
            "1",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--json",
        ])
        .output()
        .expect("run bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    for workload in ["put_c4", "get_c4", "consistent_c4"] {
        let figures = &report["medians"][workload];
        let ops = figures["ops_per_s"]["colony"].as_f64();
        assert!(ops.is_some_and(|ops| ops > 0.0), "{workload}: {report}");
        assert_eq!(figures["errors"]["colony"], 0.0, "{workload}: {report}");
    }
}

/// The load generator's gRPC client reads the call's status: puts over the etcd request limit
/// (1.5 MiB) are refused by the server, and the bench stops with that status instead of
/// counting them as answered.
#[test]
fn cli_bench_etcd_reports_a_refused_put() {
    let output = Command::new(colony_bin())
        .args([
            "bench",
            "--target",
            "etcd-grpc",
            "--workloads",
            "put",
            "--put-clients",
            "1",
            "--value-bytes",
            "2000000",
            "--runs",
            "1",
            "--duration",
            "200ms",
            "--warmup",
            "0s",
        ])
        .output()
        .expect("run bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("gRPC status"), "{stderr}");
}
