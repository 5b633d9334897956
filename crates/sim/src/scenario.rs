//! The membership scenario behind `colony sim membership`: join (or warm start), an idle
//! window, metadata updates whose dissemination is timed, then killed nodes whose detection is
//! timed, with optional loss, latency, partitions and gray (paused) members throughout.

use std::collections::{BTreeMap, BTreeSet};

use colony_swim::{Config, Meta, Notification, SECOND};
use serde::Serialize;

use crate::net::NetModel;
use crate::world::{DutyCycle, Note, World};

/// What to run.
#[derive(Debug, Clone)]
pub struct MembershipScenario {
    /// Cluster size.
    pub nodes: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Simulated duration (µs).
    pub duration: u64,
    /// Network behaviour.
    pub net: NetModel,
    /// Fraction of nodes paused `slow_stop` out of every `slow_period` (gray failure).
    pub slow_fraction: f64,
    /// Paused part of each cycle of a slow node.
    pub slow_stop: u64,
    /// Cycle length of a slow node.
    pub slow_period: u64,
    /// If nonzero, slow nodes are not paused: everything they send is delayed by this much
    /// (µs) — an overloaded sender whose probes and acks leave late, Lifeguard's case.
    pub slow_send_delay: u64,
    /// Nodes killed (SIGKILL) after the dissemination measurements.
    pub kill: usize,
    /// Metadata updates whose dissemination is timed.
    pub injections: usize,
    /// Start with full membership everywhere instead of joining through node 0.
    pub warm: bool,
    /// Protocol parameters (Lifeguard on or off among them).
    pub config: Config,
    /// Check every node's invariants after every input (slow; for tests).
    pub check_invariants: bool,
    /// Restarts per simulated second (same name, new address, new generation) after the kill
    /// phase, until the end of the run.
    pub churn_per_s: f64,
}

impl Default for MembershipScenario {
    fn default() -> Self {
        Self {
            nodes: 50,
            seed: 1,
            duration: 60 * SECOND,
            net: NetModel::default(),
            slow_fraction: 0.0,
            slow_stop: 1_600_000,
            slow_period: 2 * SECOND,
            slow_send_delay: 0,
            kill: 1,
            injections: 5,
            warm: false,
            config: Config::lan(),
            check_invariants: false,
            churn_per_s: 0.0,
        }
    }
}

/// How fast news spreads, as every membership implementation in the simulator measures it
/// (times in ms of virtual time; `None` when the run ended before the event).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpreadFigures {
    /// All nodes started at 0 and joined node 0 (or started warm, then 0): time until every
    /// node knew all others.
    pub join_convergence_ms: Option<f64>,
    /// Rounds (gossip intervals of 200 ms) until every live node had an update: median over
    /// updates.
    pub dissemination_rounds_p50: Option<f64>,
    /// Same, 99th percentile.
    pub dissemination_rounds_p99: Option<f64>,
    /// Same, slowest update.
    pub dissemination_rounds_max: Option<f64>,
    /// Fraction of (update, live node) pairs informed by the end of the update phase.
    pub dissemination_informed: f64,
    /// Per killed node, time until every live node declared it failed: median over victims.
    pub detection_ms_p50: Option<f64>,
    /// Same, 99th percentile.
    pub detection_ms_p99: Option<f64>,
    /// Same, worst victim.
    pub detection_ms_max: Option<f64>,
    /// Earliest failure declaration of a killed node.
    pub first_detection_ms: Option<f64>,
    /// Victims whose detection completed.
    pub detected: usize,
}

impl SpreadFigures {
    /// The figures from their samples: `rounds` per update that reached every live node and
    /// `detections_ms` per victim every live node declared failed (both sorted), and
    /// `informed` as (informed, total) (update, node) pairs.
    pub fn from_samples(
        join_convergence_ms: Option<f64>,
        rounds: &[f64],
        informed: (usize, usize),
        detections_ms: &[f64],
        first_detection_ms: Option<f64>,
    ) -> Self {
        let (informed, total) = informed;
        SpreadFigures {
            join_convergence_ms,
            dissemination_rounds_p50: percentile(rounds, 0.5),
            dissemination_rounds_p99: percentile(rounds, 0.99),
            dissemination_rounds_max: rounds.last().copied(),
            dissemination_informed: if total == 0 {
                1.0
            } else {
                informed as f64 / total as f64
            },
            detection_ms_p50: percentile(detections_ms, 0.5),
            detection_ms_p99: percentile(detections_ms, 0.99),
            detection_ms_max: detections_ms.last().copied(),
            first_detection_ms,
            detected: detections_ms.len(),
        }
    }
}

/// What a run measured. Times in milliseconds of virtual time; `None` when the run ended
/// before the event (for example a detection that did not complete within `duration`).
#[derive(Debug, Clone, Serialize)]
pub struct MembershipResult {
    /// Cluster size.
    pub nodes: usize,
    /// Seed.
    pub seed: u64,
    /// Hash of every delivered event: equal seeds and options give equal hashes.
    pub trace_hash: String,
    /// Whether Lifeguard was on.
    pub lifeguard: bool,
    /// Join, dissemination and detection, measured alike for every implementation.
    #[serde(flatten)]
    pub spread: SpreadFigures,
    /// Earliest suspicion of a killed node.
    pub first_suspicion_ms: Option<f64>,
    /// Suspicion episodes (member, incarnation) raised against members that were alive.
    pub false_positive_suspicions: u64,
    /// Suspicion episodes raised against healthy members (neither slow nor killed): the
    /// false positives Lifeguard exists to prevent.
    pub false_suspicions_of_healthy: u64,
    /// Live members ever declared failed by anyone.
    pub false_positive_failures: u64,
    /// Same, as declarations (one per observer).
    pub false_failure_declarations: u64,
    /// After the last partition healed: time until every live node saw every other live node
    /// alive again.
    pub partition_heal_ms: Option<f64>,
    /// Restarts performed by the churn phase.
    pub churn_restarts: u64,
    /// Time until every live node knew a restarted node's new generation alive: median.
    pub churn_accept_ms_p50: Option<f64>,
    /// Same, 99th percentile.
    pub churn_accept_ms_p99: Option<f64>,
    /// Restarts whose acceptance did not complete before the node restarted again or the run
    /// ended.
    pub churn_unaccepted: u64,
    /// Memory of node 0's membership table per member known (an upper bound; see
    /// `Swim::table_bytes`).
    pub table_bytes_per_member: f64,
    /// Largest membership table seen, relative to the number of live members.
    pub max_table_ratio: f64,
    /// Times a view went back to an older generation or incarnation (tracked when churning
    /// at up to 500 nodes).
    pub version_regressions: u64,
    /// Datagrams and stream frames sent per node per second in the idle window.
    pub msgs_per_node_per_s: f64,
    /// Bytes sent per node per second in the idle window.
    pub bytes_per_node_per_s: f64,
    /// Events the simulator processed.
    pub events: u64,
    /// Wall time of the run.
    pub wall_ms: f64,
    /// Simulated seconds per wall second.
    pub sim_seconds_per_wall_second: f64,
    /// Simulated node-seconds per wall second.
    pub node_seconds_per_wall_second: f64,
    /// Curves for plotting: (ms since injection, fraction informed) of the first injection.
    #[serde(skip)]
    pub dissemination_curve: Vec<(f64, f64)>,
    /// (ms since kill, fraction of live nodes that marked the first victim failed).
    #[serde(skip)]
    pub detection_curve: Vec<(f64, f64)>,
}

/// Percentile (nearest rank) of a sorted slice.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[derive(Default)]
struct Observations {
    alive_counts_done: BTreeSet<usize>,
    converged_at: Option<u64>,
    inject: Vec<(u64, String, BTreeMap<usize, u64>)>,
    killed: BTreeMap<String, (u64, BTreeMap<usize, u64>)>,
    false_suspects: BTreeSet<(String, u32)>,
    slow_names: BTreeSet<String>,
    false_failed: BTreeSet<String>,
    false_failed_events: u64,
    first_suspicion: Option<u64>,
    /// Restarted name → (restart time, new generation, observers that know it).
    churn: BTreeMap<String, (u64, u64, BTreeSet<usize>)>,
    churn_accepted: Vec<f64>,
    churn_unaccepted: u64,
}

/// Runs the scenario.
pub fn run_membership(s: &MembershipScenario) -> MembershipResult {
    let wall = std::time::Instant::now();
    let n = s.nodes.max(1);
    let mut world = World::new(n, s.seed, s.config.clone(), s.net.clone());
    world.check_invariants = s.check_invariants;
    let mut obs = Observations::default();
    if s.warm {
        world.warm_start();
        obs.converged_at = Some(0);
    }
    for i in 0..n {
        world.start(i);
    }

    // Phase 1: join (all at once through node 0, as the Serf harness does).
    if !s.warm {
        for i in 1..n {
            world.join(i, &[0]);
        }
    }
    let join_deadline = (60 * SECOND).min(s.duration);
    while obs.converged_at.is_none() && world.now() < join_deadline {
        let step = world.now() + 100_000;
        run(&mut world, step, n, &mut obs);
    }

    // Gray members: paused most of the time from now on (never node 0, never victims).
    let settle = world.now() + 5 * SECOND;
    let mut candidates: Vec<usize> = (1..n).collect();
    shuffle(&mut candidates, &mut world);
    let slow_count = ((s.slow_fraction * n as f64).round() as usize).min(candidates.len());
    let slow: Vec<usize> = candidates.drain(..slow_count).collect();
    for &i in &slow {
        obs.slow_names.insert(world.nodes()[i].name().to_string());
        if s.slow_send_delay > 0 {
            world.node_mut(i).send_delay = s.slow_send_delay;
            continue;
        }
        world.set_duty_cycle(
            i,
            Some(DutyCycle {
                from: settle,
                period: s.slow_period,
                stop: s.slow_stop,
                until: u64::MAX,
            }),
        );
    }

    // Phase 2: idle window, traffic measured.
    run(&mut world, settle, n, &mut obs);
    let idle = 10 * SECOND;
    let before = traffic(&world);
    run(&mut world, settle + idle, n, &mut obs);
    let after = traffic(&world);
    let live = world
        .nodes()
        .iter()
        .filter(|x| x.is_running())
        .count()
        .max(1) as f64;
    let secs = idle as f64 / SECOND as f64;
    let msgs = (after.0 - before.0) as f64 / live / secs;
    let bytes = (after.1 - before.1) as f64 / live / secs;

    // Phase 3: metadata updates from random healthy nodes, one every 3 s.
    let mut t = settle + idle;
    for k in 0..s.injections {
        let from = candidates
            .get(k % candidates.len().max(1))
            .copied()
            .unwrap_or(0);
        let name = world.nodes()[from].name().to_string();
        obs.inject.push((t, name, BTreeMap::new()));
        world.with_node(from, |swim, now| {
            let mut meta = Meta::default();
            meta.tags.insert("rev".into(), format!("{k}"));
            let _ = swim.set_meta(now, meta);
        });
        t += 3 * SECOND;
        run(&mut world, t.min(s.duration), n, &mut obs);
    }

    // Phase 4: kill.
    let victims: Vec<usize> = candidates.iter().rev().take(s.kill).copied().collect();
    let kill_at = world.now();
    for &v in &victims {
        obs.killed.insert(
            world.nodes()[v].name().to_string(),
            (kill_at, BTreeMap::new()),
        );
        world.crash(v);
    }
    let end = s.duration.max(kill_at);
    let heal_at = s.net.partitions.iter().map(|p| p.start + p.duration).max();
    let mut healed_at = None;
    let mut restarts = 0u64;
    let mut max_table_ratio = 0.0f64;
    if s.churn_per_s > 0.0 && n <= 500 {
        world.track_versions();
    }
    let churn_gap = if s.churn_per_s > 0.0 {
        (SECOND as f64 / s.churn_per_s) as u64
    } else {
        u64::MAX
    };
    let mut next_churn = kill_at.saturating_add(churn_gap);
    let mut next_sample = kill_at;
    while world.now() < end {
        let step = (world.now() + 100_000)
            .min(end)
            .min(next_churn.max(world.now() + 1));
        run(&mut world, step, n, &mut obs);
        if world.now() >= next_churn && !candidates.is_empty() {
            next_churn += churn_gap;
            let pick = candidates[world.rng().below(candidates.len() as u64) as usize];
            if !victims.contains(&pick) {
                let slot = n + restarts as usize;
                restarts += 1;
                let name = world.nodes()[pick].name().to_string();
                if obs.churn.remove(&name).is_some() {
                    obs.churn_unaccepted += 1;
                }
                world.restart(pick, Some(slot), &[0]);
                let generation = world.nodes()[pick].swim().map_or(0, |x| x.generation());
                obs.churn
                    .insert(name, (world.now(), generation, BTreeSet::new()));
            }
        }
        if world.now() >= next_sample {
            next_sample += 10 * SECOND;
            max_table_ratio = max_table_ratio.max(table_ratio(&world));
        }
        if healed_at.is_none() && heal_at.is_some_and(|h| world.now() >= h) && one_view(&world) {
            healed_at = Some(world.now());
        }
    }
    max_table_ratio = max_table_ratio.max(table_ratio(&world));

    // Results.
    let live_nodes: Vec<usize> = (0..n).filter(|&i| world.nodes()[i].is_running()).collect();
    let gossip = s.config.gossip_interval as f64;
    let mut rounds = Vec::new();
    let mut informed_pairs = 0usize;
    let mut total_pairs = 0usize;
    let mut dissemination_curve = Vec::new();
    for (k, (at, origin, got)) in obs.inject.iter().enumerate() {
        let targets: Vec<usize> = live_nodes
            .iter()
            .copied()
            .filter(|&i| world.nodes()[i].name() != origin)
            .collect();
        total_pairs += targets.len();
        informed_pairs += targets.iter().filter(|i| got.contains_key(i)).count();
        if targets.iter().all(|i| got.contains_key(i)) {
            let last = targets.iter().map(|i| got[i]).max().unwrap_or(*at);
            rounds.push(((last - at) as f64 / gossip).ceil());
        }
        if k == 0 {
            dissemination_curve = curve(*at, got, targets.len());
        }
    }
    rounds.sort_by(f64::total_cmp);
    let mut detections = Vec::new();
    let mut first = None::<u64>;
    let mut detection_curve = Vec::new();
    for (k, (_, (at, seen))) in obs.killed.iter().enumerate() {
        let observers = &live_nodes;
        if let Some(&f) = seen.values().min() {
            first = Some(first.map_or(f - at, |x| x.min(f - at)));
        }
        if !observers.is_empty() && observers.iter().all(|i| seen.contains_key(i)) {
            let last = observers.iter().map(|i| seen[i]).max().unwrap_or(*at);
            detections.push((last - at) as f64 / 1000.0);
        }
        if k == 0 {
            detection_curve = curve(*at, seen, observers.len());
        }
    }
    detections.sort_by(f64::total_cmp);
    let mut churn_accepted = std::mem::take(&mut obs.churn_accepted);
    churn_accepted.sort_by(f64::total_cmp);
    let wall_s = wall.elapsed().as_secs_f64();
    let sim_s = world.now() as f64 / SECOND as f64;
    MembershipResult {
        nodes: n,
        seed: s.seed,
        trace_hash: format!("{:016x}", world.trace_hash()),
        lifeguard: s.config.lifeguard,
        spread: SpreadFigures::from_samples(
            obs.converged_at.map(|t| t as f64 / 1000.0),
            &rounds,
            (informed_pairs, total_pairs),
            &detections,
            first.map(|f| f as f64 / 1000.0),
        ),
        first_suspicion_ms: obs.first_suspicion.map(|f| f as f64 / 1000.0),
        partition_heal_ms: heal_at
            .and_then(|h| healed_at.map(|t| t.saturating_sub(h) as f64 / 1000.0)),
        churn_restarts: restarts,
        churn_accept_ms_p50: percentile(&churn_accepted, 0.5),
        churn_accept_ms_p99: percentile(&churn_accepted, 0.99),
        churn_unaccepted: obs.churn_unaccepted + obs.churn.len() as u64,
        max_table_ratio,
        table_bytes_per_member: world.nodes()[0].swim().map_or(0.0, |s| {
            s.table_bytes() as f64 / s.members().len().max(1) as f64
        }),
        version_regressions: world.version_regressions().0,
        false_positive_suspicions: obs.false_suspects.len() as u64,
        false_suspicions_of_healthy: obs
            .false_suspects
            .iter()
            .filter(|(name, _)| !obs.slow_names.contains(name))
            .count() as u64,
        false_positive_failures: obs.false_failed.len() as u64,
        false_failure_declarations: obs.false_failed_events,
        msgs_per_node_per_s: msgs,
        bytes_per_node_per_s: bytes,
        events: world.events(),
        wall_ms: wall_s * 1000.0,
        sim_seconds_per_wall_second: sim_s / wall_s.max(1e-9),
        node_seconds_per_wall_second: sim_s * n as f64 / wall_s.max(1e-9),
        dissemination_curve,
        detection_curve,
    }
}

fn run(world: &mut World, until: u64, n: usize, obs: &mut Observations) {
    world.run_until(until, &mut |w: &World, note: &Note| record(w, note, n, obs));
}

fn record(w: &World, note: &Note, n: usize, obs: &mut Observations) {
    match &note.note {
        Notification::Up(_)
            if obs.converged_at.is_none()
                && w.nodes()[note.node]
                    .swim()
                    .is_some_and(|s| s.cluster_size() == n) =>
        {
            obs.alive_counts_done.insert(note.node);
            if obs.alive_counts_done.len() == n {
                obs.converged_at = Some(note.at);
            }
        }
        Notification::Up(name) | Notification::Updated(name) if obs.churn.contains_key(&**name) => {
            let live = w.nodes().iter().filter(|x| x.is_running()).count();
            let known = w.nodes()[note.node]
                .swim()
                .and_then(|s| s.member(name))
                .map(|m| m.generation);
            let accepted = match obs.churn.get_mut(&**name) {
                Some((at, generation, seen)) if known == Some(*generation) => {
                    seen.insert(note.node);
                    (seen.len() + 1 >= live).then_some(*at)
                }
                _ => None,
            };
            if let Some(at) = accepted {
                obs.churn.remove(&**name);
                obs.churn_accepted.push((note.at - at) as f64 / 1000.0);
            }
        }
        Notification::Updated(name) => {
            if let Some(entry) = obs
                .inject
                .iter_mut()
                .rev()
                .find(|(_, origin, _)| **origin == **name)
            {
                entry.2.entry(note.node).or_insert(note.at);
            }
        }
        Notification::Suspect(name) => {
            if let Some((at, _)) = obs.killed.get(&**name) {
                let t = note.at - at;
                obs.first_suspicion = Some(obs.first_suspicion.map_or(t, |x| x.min(t)));
            } else {
                let inc = w.nodes()[note.node]
                    .swim()
                    .and_then(|s| s.member(name))
                    .map_or(0, |m| m.incarnation);
                obs.false_suspects.insert((name.to_string(), inc));
            }
        }
        Notification::Failed(name) => match obs.killed.get_mut(&**name) {
            Some((_, seen)) => {
                seen.entry(note.node).or_insert(note.at);
            }
            None => {
                obs.false_failed.insert(name.to_string());
                obs.false_failed_events += 1;
            }
        },
        _ => {}
    }
}

/// Whether every live node sees every other live node alive.
fn one_view(w: &World) -> bool {
    let live: Vec<&str> = w
        .nodes()
        .iter()
        .filter(|x| x.is_running())
        .map(|x| x.name())
        .collect();
    w.nodes().iter().filter_map(|x| x.swim()).all(|s| {
        live.iter().all(|name| {
            **name == **s.name()
                || s.member(name)
                    .is_some_and(|m| m.state == colony_swim::State::Alive)
        })
    })
}

/// Largest table (members known, self included) relative to the live member count.
fn table_ratio(w: &World) -> f64 {
    let live = w.nodes().iter().filter(|x| x.is_running()).count().max(1) as f64;
    w.nodes()
        .iter()
        .filter_map(|x| x.swim())
        .map(|s| (s.members().len() + 1) as f64 / live)
        .fold(0.0, f64::max)
}

fn curve(at: u64, got: &BTreeMap<usize, u64>, total: usize) -> Vec<(f64, f64)> {
    let mut times: Vec<u64> = got.values().map(|t| t - at).collect();
    times.sort_unstable();
    let total = total.max(1) as f64;
    let mut out = vec![(0.0, 0.0)];
    for (k, t) in times.iter().enumerate() {
        out.push((*t as f64 / 1000.0, (k + 1) as f64 / total));
    }
    out
}

fn traffic(w: &World) -> (u64, u64) {
    w.nodes()
        .iter()
        .filter_map(|n| n.swim())
        .fold((0, 0), |(m, b), s| {
            let st = s.stats();
            (
                m + st.packets_out + st.streams_out,
                b + st.bytes_out + st.stream_bytes_out,
            )
        })
}

fn shuffle(v: &mut [usize], world: &mut World) {
    for k in (1..v.len()).rev() {
        let j = world.rng().below(k as u64 + 1) as usize;
        v.swap(k, j);
    }
}
