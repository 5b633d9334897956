//! The seeded simulation sweep: each seed runs a 3- or 5-node cluster under message loss,
//! duplication, delay and reordering, symmetric and one-way partitions, crashes that lose
//! unpersisted state, restarts from disk, slow disks, compaction and snapshot catch-up, with
//! clients proposing unique values throughout. The cluster checks safety after every input;
//! a liveness phase then removes every fault and requires progress and no lost write.
//!
//! Replay one seed: `RAFT_SEED=N cargo test -p colony-raft --test it sim_`.
//! More seeds: `RAFT_SEEDS=2000 cargo test -p colony-raft --test it sim_`; seeds not run
//! before: `RAFT_SEED_OFFSET=20000` (each sweep then starts that far past its first seed);
//! longer runs: `RAFT_STEPS=30000`.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::Instant;

use colony_raft::Config;

use crate::cluster::{Cluster, Faults, Stats};

/// The simulation's timing, with batching and pipelining limits varied by seed: one entry per
/// append splits a new leader's no-op from the older entries before it, which is what exposes
/// a commit rule that counts replicas of earlier terms (Raft §5.4.2, Figure 8).
pub fn sim_config(seed: u64) -> Config {
    Config {
        heartbeat_interval_ms: 20,
        election_timeout_ms_min: 150,
        append_entries_max: [1, 2, 8][(seed % 3) as usize],
        append_bytes_max: 64,
        inflight_max: [1, 4][((seed / 3) % 2) as usize],
        uncommitted_entries_max: 256,
        pre_vote: true,
        check_quorum: true,
    }
}

fn seeds(default_count: u64, base: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("RAFT_SEED") {
        return vec![seed.parse().expect("RAFT_SEED is a number")];
    }
    let count = std::env::var("RAFT_SEEDS").ok().map_or(default_count, |s| {
        s.parse().expect("RAFT_SEEDS is a number")
    });
    let offset = std::env::var("RAFT_SEED_OFFSET").ok().map_or(0, |s| {
        s.parse::<u64>().expect("RAFT_SEED_OFFSET is a number")
    });
    (0..count).map(|i| base + offset + i).collect()
}

fn run_seed(size: u64, seed: u64, steps: u64) -> Cluster {
    run_seed_with(size, seed, steps, None)
}

/// A seed's run, with the KV layer over `kv_keys` keys if given.
fn run_seed_with(size: u64, seed: u64, steps: u64, kv_keys: Option<u64>) -> Cluster {
    // Half the seeds also add and remove voters, one at a time.
    let conf_change_per_mille = if seed.is_multiple_of(2) { 5 } else { 0 };
    let mut faults = Faults {
        conf_change_per_mille,
        ..Faults::rough()
    };
    if seed % 5 == 4 {
        // A storm: a fifth of messages lost, a tenth duplicated, long delays, frequent
        // crashes and partitions.
        faults.drop_per_mille = 200;
        faults.duplicate_per_mille = 100;
        faults.delay_ms_max = 40;
        faults.crash_per_mille = 10;
        faults.partition_per_mille = 10;
    }
    let mut cluster = Cluster::new(size, seed, sim_config(seed), faults);
    if let Some(keys) = kv_keys {
        cluster = cluster.with_kv(keys);
    }
    for _ in 0..steps {
        cluster.step();
    }
    cluster.check_liveness(20 * sim_config(seed).election_timeout_ms_min);
    cluster
}

fn sweep(name: &str, size: u64, seeds: &[u64], steps: u64) {
    let steps = std::env::var("RAFT_STEPS")
        .ok()
        .map_or(steps, |s| s.parse().expect("RAFT_STEPS is a number"));
    let started = Instant::now();
    let (mut committed, mut terms, mut acked) = (0usize, 0u64, 0usize);
    let mut stats = Stats::default();
    for &seed in seeds {
        let outcome = catch_unwind(AssertUnwindSafe(|| run_seed(size, seed, steps)));
        match outcome {
            Ok(cluster) => {
                committed += cluster.committed.len();
                acked += cluster.acked.len();
                stats += cluster.stats;
                terms += cluster.leaders.keys().max().copied().unwrap_or(0);
            }
            Err(panic) => {
                eprintln!(
                    "{name}: seed {seed} failed; replay with \
                     RAFT_SEED={seed} cargo test -p colony-raft --test it {name}"
                );
                resume_unwind(panic);
            }
        }
    }
    eprintln!(
        "{name}: {} seeds x {steps} steps on {size} nodes in {:?}: {committed} entries \
         committed, {acked} client values acknowledged, {terms} terms elected in all; {stats:?}",
        seeds.len(),
        started.elapsed()
    );
    assert!(acked > seeds.len(), "the sweep made progress");
    if seeds.len() > 10 {
        assert!(
            stats.snapshots_installed > 0,
            "snapshot catch-up was exercised"
        );
        assert!(
            stats.crashes > 0 && stats.partitions > 0,
            "faults were injected"
        );
        assert!(stats.lease_checks > 0, "leader leases were checked");
        assert!(
            stats.reads_forwarded > 0,
            "followers' reads were confirmed through their leader"
        );
    }
}

#[test]
fn sim_three_nodes_under_faults_stay_safe_and_recover() {
    sweep("sim_three_nodes", 3, &seeds(600, 1_000), 3_000);
}

#[test]
fn sim_five_nodes_under_faults_stay_safe_and_recover() {
    sweep("sim_five_nodes", 5, &seeds(400, 5_000), 3_000);
}

/// Colony's store state machine on every node, under the same faults: at equal applied
/// index every node's state machine is byte-identical, and the clients' writes and
/// ReadIndex reads, per key, form a linearizable register history (judged by todc-utils).
#[test]
fn sim_kv_state_machines_agree_and_reads_are_linearizable() {
    let seeds = seeds(60, 9_000);
    let steps = std::env::var("RAFT_STEPS")
        .ok()
        .map_or(2_000, |s| s.parse().expect("RAFT_STEPS is a number"));
    let started = Instant::now();
    let (mut reads, mut digest_checks, mut lease_reads) = (0, 0, 0);
    for &seed in &seeds {
        let size = if seed % 4 == 3 { 5 } else { 3 };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let cluster = run_seed_with(size, seed, steps, Some(16));
            let kv = cluster.kv.as_ref().expect("KV layer");
            let bad = kv.non_linearizable_keys();
            assert!(
                bad.is_empty(),
                "seed {seed}: non-linearizable keys:\n{}",
                bad.iter()
                    .map(|(key, history)| format!("k{key}:\n{history}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            (kv.reads_completed(), kv.digest_checks, kv.lease_reads)
        }));
        match outcome {
            Ok((r, d, l)) => {
                reads += r;
                digest_checks += d;
                lease_reads += l;
            }
            Err(panic) => {
                eprintln!(
                    "sim_kv: seed {seed} failed; replay with \
                     RAFT_SEED={seed} cargo test -p colony-raft --test it sim_kv"
                );
                resume_unwind(panic);
            }
        }
    }
    eprintln!(
        "sim_kv: {} seeds x {steps} steps in {:?}: {reads} linearizable reads ({lease_reads} \
         from a lease), {digest_checks} state-machine comparisons",
        seeds.len(),
        started.elapsed()
    );
    assert!(reads > seeds.len(), "reads were answered and checked");
    assert!(lease_reads > seeds.len() as u64, "lease reads were made");
    assert!(
        digest_checks > seeds.len() as u64,
        "state machines were compared"
    );
}

/// The same seed gives the same run: the core draws no outside randomness.
#[test]
fn sim_same_seed_same_history() {
    let a = run_seed(3, 42, 1_000);
    let b = run_seed(3, 42, 1_000);
    assert_eq!(a.committed, b.committed);
    assert_eq!(a.leaders, b.leaders);
    assert_eq!(a.now_ms, b.now_ms);
}

/// Seeds known to reach rare interleavings with this version of the harness, run on every
/// test run whatever `RAFT_SEEDS` says. Seed 2218 on three nodes reaches Raft Figure 8: a
/// leader applies an entry of an earlier term and crashes, and a node without that entry
/// campaigns; a commit rule that counts replicas of earlier terms fails it (leader
/// completeness). Any change to the harness reshuffles runs, so after one, find such seeds
/// again with a deliberately broken core and `RAFT_SEEDS=4000`.
const KNOWN_SEEDS: &[(u64, u64)] = &[(3, 2218)];

#[test]
fn sim_known_seeds_stay_safe() {
    for &(size, seed) in KNOWN_SEEDS {
        let outcome = catch_unwind(AssertUnwindSafe(|| run_seed(size, seed, 3_000)));
        if let Err(panic) = outcome {
            eprintln!(
                "known seed {seed} on {size} nodes failed; replay with \
                 RAFT_SEED={seed} cargo test -p colony-raft --test it sim_three_nodes"
            );
            resume_unwind(panic);
        }
    }
}
