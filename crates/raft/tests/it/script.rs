//! Scenario scripts (`crates/raft/testdata/*.txt`), in the spirit of etcd-raft's interaction
//! tests: each line starting with `> ` is a command run on a fault-free cluster with 1 ms
//! links; the lines after it, up to the next command or blank line, are its expected output.
//! `RAFT_UPDATE_EXPECT=1 cargo test -p colony-raft --test it script` rewrites the
//! expectations; review the diff like code.
//!
//! Commands: `cluster <size> [voters=<n>] [seed=<s>]`, `elect`, `propose <node> <count>`,
//! `run <ms>`, `isolate <node>`, `block <from> <to>`, `heal`, `crash <node>`,
//! `restart <node>`, `transfer <from> <to>`, `add <node>`, `remove <node>`,
//! `compact-threshold <entries>`, `status`.

use std::fmt::Write as _;
use std::path::Path;

use colony_raft::ConfChange;

use crate::cluster::{Cluster, Faults};
use crate::sim::sim_config;

fn status(cluster: &Cluster) -> String {
    let mut out = String::new();
    for &id in &cluster.ids {
        match cluster.node(id) {
            None => writeln!(out, "n{id} down").expect("string"),
            Some(r) => writeln!(
                out,
                "n{id} {:?} term={} leader={} last={} commit={} applied={} voters={:?}",
                r.role(),
                r.term(),
                r.leader().map_or("-".to_string(), |l| l.to_string()),
                r.last_index(),
                r.commit_index(),
                r.applied_index(),
                r.voters()
            )
            .expect("string"),
        }
    }
    out
}

fn number(word: Option<&str>, what: &str) -> u64 {
    word.unwrap_or_else(|| panic!("missing {what}"))
        .parse()
        .unwrap_or_else(|_| panic!("{what} is a number"))
}

fn run_command(cluster: &mut Option<Cluster>, line: &str) -> String {
    let mut words = line.split_whitespace();
    let command = words.next().expect("a command");
    if command == "cluster" {
        let size = number(words.next(), "size");
        let (mut voters, mut seed) = (size, 1);
        for option in words {
            match option.split_once('=') {
                Some(("voters", v)) => voters = number(Some(v), "voters"),
                Some(("seed", v)) => seed = number(Some(v), "seed"),
                _ => panic!("unknown option {option}"),
            }
        }
        let mut config = sim_config(seed);
        config.append_entries_max = 8;
        *cluster = Some(Cluster::with_bootstrap(
            size,
            voters,
            seed,
            config,
            Faults::none(),
        ));
        return String::new();
    }
    let c = cluster.as_mut().expect("`cluster` comes first");
    let mut arg = || words.next();
    match command {
        "elect" => {
            c.run_until(3_000, "a leader", |c| c.leader().is_some());
            c.run_for(100);
            let leader = c.leader().expect("elected");
            let term = c.node(leader).expect("up").term();
            format!("leader n{leader} term={term}\n")
        }
        "propose" => {
            let node = number(arg(), "node");
            let count = number(arg(), "count");
            let mut accepted = 0;
            for _ in 0..count {
                accepted += u64::from(c.propose_at(node).is_some());
            }
            format!("accepted {accepted} of {count}\n")
        }
        "run" => {
            c.run_for(number(arg(), "ms"));
            String::new()
        }
        "isolate" => {
            c.isolate(number(arg(), "node"));
            String::new()
        }
        "block" => {
            let from = number(arg(), "from");
            let to = number(arg(), "to");
            c.blocked.insert((from, to));
            String::new()
        }
        "heal" => {
            c.heal();
            String::new()
        }
        "crash" => {
            c.crash(number(arg(), "node"));
            String::new()
        }
        "restart" => {
            c.restart(number(arg(), "node"));
            String::new()
        }
        "compact-threshold" => {
            c.compact_threshold = number(arg(), "entries");
            String::new()
        }
        "transfer" => {
            let from = number(arg(), "from");
            let to = number(arg(), "to");
            let now = c.now_ms;
            let raft = c.node_mut(from).expect("up");
            format!("{:?}\n", raft.transfer_leadership(now, to))
        }
        "add" | "remove" => {
            let node = number(arg(), "node");
            let change = if command == "add" {
                ConfChange::AddVoter(node)
            } else {
                ConfChange::RemoveVoter(node)
            };
            let leader = c.leader().expect("a leader");
            let raft = c.node_mut(leader).expect("up");
            format!("{:?}\n", raft.propose_conf_change(change))
        }
        "status" => status(c),
        _ => panic!("unknown command {command}"),
    }
}

/// Runs one script; returns the script with the actual outputs in place of the expected ones.
fn run_script(text: &str) -> String {
    let mut cluster = None;
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(command) = line.strip_prefix("> ") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        out.push_str(line);
        out.push('\n');
        // Skip the old expectation.
        while lines
            .peek()
            .is_some_and(|l| !l.is_empty() && !l.starts_with("> "))
        {
            lines.next();
        }
        out.push_str(&run_command(&mut cluster, command));
    }
    out
}

#[test]
fn script_testdata_matches() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let update = std::env::var("RAFT_UPDATE_EXPECT").is_ok_and(|v| v == "1");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "scripts in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable script");
        let actual = run_script(&text);
        if update {
            std::fs::write(&file, &actual).expect("writable script");
        } else {
            assert_eq!(
                actual,
                text,
                "{} differs; rerun with RAFT_UPDATE_EXPECT=1 and review the diff",
                file.display()
            );
        }
    }
}
