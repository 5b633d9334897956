//! A baseline in the same simulator: the `foca` crate (sans-IO SWIM with memberlist's LAN
//! parameters, but no Lifeguard, no anti-entropy by state digest) driven on the same
//! [`EventQueue`] and [`NetModel`] as colony's core, through the same join-idle-kill phases
//! as [`crate::scenario::run_membership`], so that the two are compared on equal terms.
//!
//! What foca does not expose is not measured: it has no metadata updates to time (so no
//! dissemination rounds) and no suspicion notifications (so no false suspicions); what it
//! does expose (members up and down) gives join convergence, detection times, false failures
//! and traffic.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::time::Duration;

use colony_base::SplitMix64;
use foca::{Foca, Identity, Notification, PostcardCodec, Runtime, Timer};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::net::NetModel;
use crate::queue::EventQueue;
use crate::scenario::percentile;

const SECOND: u64 = 1_000_000;

/// A node's identity in the baseline: its slot (the address) and a generation that a
/// restart would renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlotId {
    slot: u32,
    generation: u32,
}

impl Identity for SlotId {
    type Addr = u32;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            slot: self.slot,
            generation: self.generation.wrapping_add(1),
        })
    }

    fn addr(&self) -> u32 {
        self.slot
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// What to run; the same phases and network as a colony membership scenario.
#[derive(Debug, Clone)]
pub struct BaselineScenario {
    /// Cluster size.
    pub nodes: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Simulated duration (µs).
    pub duration: u64,
    /// Network behaviour.
    pub net: NetModel,
    /// Nodes killed after the idle window.
    pub kill: usize,
}

/// What a baseline run measured (times in ms of virtual time).
#[derive(Debug, Clone, Serialize)]
pub struct BaselineResult {
    /// Which implementation ran.
    pub implementation: &'static str,
    /// Cluster size.
    pub nodes: usize,
    /// Seed.
    pub seed: u64,
    /// Hash of every delivered event: equal seeds give equal hashes.
    pub trace_hash: String,
    /// All nodes joined node 0 at 0: time until every node knew all others.
    pub join_convergence_ms: Option<f64>,
    /// Per killed node, time until every live node declared it down: median over victims.
    pub detection_ms_p50: Option<f64>,
    /// Same, 99th percentile.
    pub detection_ms_p99: Option<f64>,
    /// Same, worst victim.
    pub detection_ms_max: Option<f64>,
    /// Earliest down declaration of a killed node.
    pub first_detection_ms: Option<f64>,
    /// Victims whose detection completed.
    pub detected: usize,
    /// Live members ever declared down by anyone.
    pub false_positive_failures: u64,
    /// Same, as declarations (one per observer).
    pub false_failure_declarations: u64,
    /// Datagrams sent per node per second in the idle window.
    pub msgs_per_node_per_s: f64,
    /// Bytes sent per node per second in the idle window.
    pub bytes_per_node_per_s: f64,
    /// Events the simulator processed.
    pub events: u64,
    /// Wall time of the run.
    pub wall_ms: f64,
}

#[derive(Debug)]
enum Event {
    Packet { to: usize, bytes: Vec<u8> },
    Timer { node: usize, timer: Timer<SlotId> },
}

/// What one node's input produced.
#[derive(Default)]
struct Outputs {
    sends: Vec<(SlotId, Vec<u8>)>,
    timers: Vec<(Timer<SlotId>, Duration)>,
    ups: Vec<SlotId>,
    downs: Vec<SlotId>,
}

impl Runtime<SlotId> for Outputs {
    fn notify(&mut self, notification: Notification<'_, SlotId>) {
        match notification {
            Notification::MemberUp(id) => self.ups.push(*id),
            Notification::MemberDown(id) => self.downs.push(*id),
            _ => {}
        }
    }

    fn send_to(&mut self, to: SlotId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<SlotId>, after: Duration) {
        self.timers.push((event, after));
    }
}

type Node = Foca<SlotId, PostcardCodec, SmallRng, foca::NoCustomBroadcast>;

struct BaselineWorld {
    queue: EventQueue<Event>,
    rng: SplitMix64,
    net: NetModel,
    nodes: Vec<Option<Node>>,
    trace: DefaultHasher,
    delays: Vec<u64>,
    events: u64,
    packets_out: u64,
    bytes_out: u64,
    /// Per node, the members it currently holds up.
    known: Vec<usize>,
    /// Nodes that have known every other node at least once, and when the last one did.
    full: Vec<bool>,
    full_count: usize,
    converged_at: Option<u64>,
    /// (observer, member) down declarations, with when.
    downs: Vec<(u64, usize, usize)>,
}

impl BaselineWorld {
    fn new(n: usize, seed: u64, net: NetModel) -> Self {
        let mut rng = SplitMix64::new(seed);
        let size =
            NonZeroU32::new(u32::try_from(n.max(1)).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        let nodes = (0..n)
            .map(|i| {
                let id = SlotId {
                    slot: i as u32,
                    generation: 0,
                };
                let node_rng = SmallRng::seed_from_u64(rng.next_u64());
                Some(Foca::new(
                    id,
                    foca::Config::new_lan(size),
                    node_rng,
                    PostcardCodec,
                ))
            })
            .collect();
        Self {
            queue: EventQueue::new(),
            rng,
            net,
            nodes,
            trace: DefaultHasher::new(),
            delays: Vec::new(),
            events: 0,
            packets_out: 0,
            bytes_out: 0,
            known: vec![0; n],
            full: vec![false; n],
            full_count: 0,
            converged_at: None,
            downs: Vec::new(),
        }
    }

    fn input(&mut self, i: usize, f: impl FnOnce(&mut Node, &mut Outputs)) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let mut out = Outputs::default();
        f(node, &mut out);
        self.route(i, out);
    }

    fn route(&mut self, i: usize, out: Outputs) {
        let now = self.queue.now();
        for (to, bytes) in out.sends {
            let dst = to.slot as usize;
            self.packets_out += 1;
            self.bytes_out += bytes.len() as u64;
            let mut delays = std::mem::take(&mut self.delays);
            self.net.datagram(now, i, dst, &mut self.rng, &mut delays);
            for d in &delays {
                self.queue.schedule(
                    now + d,
                    Event::Packet {
                        to: dst,
                        bytes: bytes.clone(),
                    },
                );
            }
            self.delays = delays;
        }
        for (timer, after) in out.timers {
            let after = u64::try_from(after.as_micros()).unwrap_or(u64::MAX);
            self.queue
                .schedule(now.saturating_add(after), Event::Timer { node: i, timer });
        }
        self.known[i] += out.ups.len();
        self.known[i] = self.known[i].saturating_sub(out.downs.len());
        if !self.full[i] && self.known[i] + 1 >= self.nodes.len() {
            self.full[i] = true;
            self.full_count += 1;
            if self.full_count == self.nodes.len() {
                self.converged_at = Some(now);
            }
        }
        for id in out.downs {
            self.downs.push((now, i, id.slot as usize));
        }
    }

    fn run_until(&mut self, until: u64) {
        while let Some((now, event)) = self.queue.pop_until(until) {
            self.events += 1;
            now.hash(&mut self.trace);
            match event {
                Event::Packet { to, bytes } => {
                    to.hash(&mut self.trace);
                    bytes.hash(&mut self.trace);
                    self.input(to, |node, out| {
                        let _ = node.handle_data(&bytes, out);
                    });
                }
                Event::Timer { node, timer } => {
                    node.hash(&mut self.trace);
                    self.input(node, |foca, out| {
                        let _ = foca.handle_timer(timer, out);
                    });
                }
            }
        }
        self.queue.advance_to(until);
    }
}

/// Runs the baseline: join through node 0, 10 s idle (traffic measured), then `kill` nodes
/// crash and detection is timed until `duration`.
pub fn run_foca_baseline(s: &BaselineScenario) -> BaselineResult {
    let wall = std::time::Instant::now();
    let n = s.nodes.max(2);
    let mut world = BaselineWorld::new(n, s.seed, s.net.clone());
    let seed_id = SlotId {
        slot: 0,
        generation: 0,
    };
    for i in 1..n {
        world.input(i, |node, out| {
            let _ = node.announce(seed_id, out);
        });
    }
    let join_deadline = (60 * SECOND).min(s.duration);
    while world.converged_at.is_none() && world.queue.now() < join_deadline {
        let step = world.queue.now() + 100_000;
        world.run_until(step);
    }
    let converged = world.converged_at;

    let idle_from = world.queue.now() + 5 * SECOND;
    world.run_until(idle_from);
    let before = (world.packets_out, world.bytes_out);
    let idle = 10 * SECOND;
    world.run_until(idle_from + idle);
    let secs = idle as f64 / SECOND as f64;
    let msgs = (world.packets_out - before.0) as f64 / n as f64 / secs;
    let bytes = (world.bytes_out - before.1) as f64 / n as f64 / secs;

    let kill_at = world.queue.now();
    let victims: BTreeSet<usize> = (n - s.kill.min(n - 1)..n).collect();
    for &v in &victims {
        world.nodes[v] = None;
    }
    world.downs.clear();
    world.run_until(s.duration.max(kill_at));

    let live = n - victims.len();
    let mut seen: BTreeMap<usize, BTreeMap<usize, u64>> = BTreeMap::new();
    let mut false_failed = BTreeSet::new();
    let mut false_declarations = 0u64;
    for &(at, observer, member) in &world.downs {
        if victims.contains(&observer) {
            continue;
        }
        if victims.contains(&member) {
            seen.entry(member)
                .or_default()
                .entry(observer)
                .or_insert(at);
        } else {
            false_failed.insert(member);
            false_declarations += 1;
        }
    }
    let mut complete: Vec<f64> = seen
        .values()
        .filter(|observers| observers.len() >= live)
        .filter_map(|observers| observers.values().max())
        .map(|at| (at - kill_at) as f64 / 1000.0)
        .collect();
    complete.sort_by(f64::total_cmp);
    let first = seen
        .values()
        .flat_map(|observers| observers.values())
        .min()
        .map(|at| (at - kill_at) as f64 / 1000.0);
    BaselineResult {
        implementation: "foca 2.0",
        nodes: n,
        seed: s.seed,
        trace_hash: format!("{:016x}", world.trace.finish()),
        join_convergence_ms: converged.map(|at| at as f64 / 1000.0),
        detection_ms_p50: percentile(&complete, 50.0),
        detection_ms_p99: percentile(&complete, 99.0),
        detection_ms_max: complete.last().copied(),
        first_detection_ms: first,
        detected: complete.len(),
        false_positive_failures: false_failed.len() as u64,
        false_failure_declarations: false_declarations,
        msgs_per_node_per_s: msgs,
        bytes_per_node_per_s: bytes,
        events: world.events,
        wall_ms: wall.elapsed().as_secs_f64() * 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(seed: u64) -> BaselineScenario {
        BaselineScenario {
            nodes: 20,
            seed,
            duration: 60 * SECOND,
            net: NetModel::default(),
            kill: 1,
        }
    }

    #[test]
    fn foca_baseline_joins_detects_and_replays_by_seed() {
        let a = run_foca_baseline(&scenario(3));
        assert!(a.join_convergence_ms.is_some(), "{a:?}");
        assert_eq!(
            a.detected, 1,
            "the killed node is declared down everywhere: {a:?}"
        );
        assert_eq!(a.false_positive_failures, 0, "{a:?}");
        assert!(a.msgs_per_node_per_s > 0.5, "{a:?}");
        let b = run_foca_baseline(&scenario(3));
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_eq!(a.detection_ms_p50, b.detection_ms_p50);
        let c = run_foca_baseline(&scenario(4));
        assert_ne!(a.trace_hash, c.trace_hash);
    }
}
