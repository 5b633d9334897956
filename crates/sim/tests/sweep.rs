//! Seed sweep: many small clusters under random faults (loss, duplication, reordering,
//! partitions both ways, a crash, a paused member, a restart on a new address), then a quiet
//! period, then the invariants: every live node sees every other live node alive, no live node
//! stays failed after a partition heals, a dead node is failed everywhere, and no view ever
//! goes back to an older incarnation (checked after every event). Node invariants are checked
//! after every input.
//!
//! Replay one seed: `COLONY_SWEEP_SEED=17 cargo test -p colony-sim --test sweep`.
//! More seeds: `COLONY_SWEEP_SEEDS=1000 cargo test -p colony-sim --test sweep` (the dev
//! profile optimises this crate); seeds not run before: `COLONY_SWEEP_FROM=20001` (the first
//! seed; 1 by default).

use colony_base::SplitMix64;
use colony_sim::{Latency, NetModel, Partition, World};
use colony_swim::{Config, SECOND, State};

#[derive(Debug)]
struct Plan {
    nodes: usize,
    net: NetModel,
    crash: Option<(usize, u64)>,
    pause: Option<(usize, u64, u64)>,
    restart: Option<(usize, u64)>,
}

fn plan(seed: u64) -> Plan {
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    let nodes = 4 + rng.below(9) as usize;
    let mut net = NetModel {
        latency: Latency::Uniform(100, 100 + rng.below(5_000)),
        loss: rng.below(11) as f64 / 100.0,
        duplicate: rng.below(6) as f64 / 100.0,
        reorder: rng.below(6) as f64 / 100.0,
        ..NetModel::default()
    };
    if rng.below(2) == 0 {
        let first = 1 + rng.below(nodes as u64 - 1) as usize;
        net.partitions.push(Partition {
            sizes: vec![first, nodes - first],
            start: (5 + rng.below(20)) * SECOND,
            duration: (5 + rng.below(60)) * SECOND,
            one_way: rng.below(3) == 0,
        });
    }
    let pick = |rng: &mut SplitMix64| 1 + rng.below(nodes as u64 - 1) as usize;
    let crash = (rng.below(2) == 0).then(|| (pick(&mut rng), (5 + rng.below(40)) * SECOND));
    let pause = (rng.below(2) == 0).then(|| {
        (
            pick(&mut rng),
            (5 + rng.below(40)) * SECOND,
            (1 + rng.below(10)) * SECOND,
        )
    });
    let restart = (rng.below(3) == 0).then(|| (pick(&mut rng), (10 + rng.below(40)) * SECOND));
    Plan {
        nodes,
        net,
        crash,
        pause,
        restart,
    }
}

fn run(seed: u64) -> Result<(), String> {
    let p = plan(seed);
    let mut world = World::new(p.nodes, seed, Config::lan(), p.net.clone());
    world.check_invariants = true;
    world.track_versions();
    for i in 0..p.nodes {
        world.start(i);
    }
    for i in 1..p.nodes {
        world.join(i, &[0]);
    }
    let mut crashed = None;
    let mut events: Vec<(u64, u8)> = Vec::new();
    if let Some((_, at)) = p.crash {
        events.push((at, 0));
    }
    if let Some((_, at, _)) = p.pause {
        events.push((at, 1));
    }
    if let Some((_, at)) = p.restart {
        events.push((at, 2));
    }
    events.sort_unstable();
    let mut ignore = |_: &World, _: &colony_sim::Note| {};
    // A restarted node keeps retrying its join (as `--retry-join` does) while it knows nobody.
    let mut rejoining: Option<usize> = None;
    let mut advance = |world: &mut World, until: u64, rejoining: Option<usize>| {
        while world.now() < until {
            let step = (world.now() + 5 * SECOND).min(until);
            world.run_until(step, &mut ignore);
            if let Some(node) = rejoining
                && world.nodes()[node]
                    .swim()
                    .is_some_and(|s| s.cluster_size() == 1)
            {
                world.join(node, &[0]);
            }
        }
    };
    for (at, what) in events {
        advance(&mut world, at, rejoining);
        match what {
            0 => {
                let (victim, _) = p.crash.expect("planned");
                world.crash(victim);
                crashed = Some(victim);
            }
            1 => {
                let (node, at, length) = p.pause.expect("planned");
                world.pause_until(node, at + length);
            }
            _ => {
                let (node, _) = p.restart.expect("planned");
                if Some(node) != crashed {
                    world.restart(node, Some(p.nodes + node), &[0]);
                    rejoining = Some(node);
                }
            }
        }
    }
    // Faults end by ~110 s; then a quiet period (loss stays: it is the link, not a fault).
    advance(&mut world, 200 * SECOND, rejoining);
    if let (n, Some(first)) = world.version_regressions() {
        return Err(format!("{n} version regressions; first: {first}"));
    }
    let live: Vec<usize> = (0..p.nodes)
        .filter(|&i| world.nodes()[i].is_running())
        .collect();
    for &i in &live {
        let swim = world.nodes()[i].swim().expect("running");
        for &j in &live {
            if i == j {
                continue;
            }
            let name = world.nodes()[j].name();
            let state = swim.member(name).map(|m| m.state);
            if state != Some(State::Alive) {
                return Err(format!("n{i} sees live {name} as {state:?}"));
            }
        }
        if let Some(dead) = crashed {
            let name = world.nodes()[dead].name();
            let state = swim.member(name).map(|m| m.state);
            if !matches!(state, Some(State::Dead | State::Left) | None) {
                return Err(format!("n{i} still sees crashed {name} as {state:?}"));
            }
        }
    }
    Ok(())
}

/// The number in environment variable `name`, or `default` if it is unset; a value that is
/// not a number stops the test rather than quietly running the default sweep.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {v:?}"))
    })
}

#[test]
fn seed_sweep_membership_invariants() {
    let seeds: Vec<u64> = match std::env::var("COLONY_SWEEP_SEED") {
        Ok(one) => vec![one.parse().expect("COLONY_SWEEP_SEED is a number")],
        Err(_) => {
            let n = env_number("COLONY_SWEEP_SEEDS", 48);
            let first = env_number("COLONY_SWEEP_FROM", 1);
            (first..first + n).collect()
        }
    };
    let mut failures = Vec::new();
    for seed in seeds {
        let outcome = std::panic::catch_unwind(|| run(seed));
        let error = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into()),
        };
        failures.push(format!(
            "seed {seed} ({:?}): {error}\n  replay: COLONY_SWEEP_SEED={seed} cargo test -p colony-sim --test sweep",
            plan(seed)
        ));
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn same_seed_same_trace() {
    let hash = |seed| {
        let p = plan(seed);
        let mut world = World::new(p.nodes, seed, Config::lan(), p.net);
        for i in 0..p.nodes {
            world.start(i);
        }
        for i in 1..p.nodes {
            world.join(i, &[0]);
        }
        world.run_until(30 * SECOND, &mut |_, _| {});
        world.trace_hash()
    };
    assert_eq!(hash(7), hash(7));
    assert_ne!(hash(7), hash(8));
}
