//! A baseline in the same simulator: the `foca` crate (sans-IO SWIM with memberlist's LAN
//! parameters, but no Lifeguard, no anti-entropy by state digest) driven on the same
//! [`EventQueue`] and [`NetModel`] as colony's core, through the same join-idle-kill phases
//! as [`crate::scenario::run_membership`], so that the two are compared on equal terms.
//!
//! Dissemination is timed with foca's custom broadcasts (small rumours piggybacked on its
//! messages, as colony's metadata updates are on its own): each node notes when it first
//! hears each rumour. foca has no suspicion notifications: up to 500 nodes, each node's
//! member list is scanned after every input for suspected members. Members up and down
//! give join convergence, detection times, false failures and traffic.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::rc::Rc;
use std::time::Duration;

use colony_base::SplitMix64;
use foca::{
    BroadcastHandler, Foca, Identity, Invalidates, Member, Notification, PostcardCodec, Runtime,
    Timer,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::net::NetModel;
use crate::queue::EventQueue;
use crate::scenario::SpreadFigures;

const SECOND: u64 = 1_000_000;
/// Largest cluster whose suspicions are tracked (each input scans the node's member list).
const SUSPICION_TRACKING_MAX: usize = 500;
/// foca's LAN gossip period (µs), the unit of a dissemination round.
const GOSSIP_PERIOD: u64 = 200_000;

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
    /// Nodes killed after the rumours.
    pub kill: usize,
    /// Rumours (custom broadcasts) whose dissemination is timed, one every 3 s.
    pub injections: usize,
    /// Start with full membership everywhere instead of joining through node 0.
    pub warm: bool,
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
    /// Join, dissemination (foca's custom broadcasts) and detection, as colony's are measured.
    #[serde(flatten)]
    pub spread: SpreadFigures,
    /// Live members ever declared down by anyone.
    pub false_positive_failures: u64,
    /// Same, as declarations (one per observer).
    pub false_failure_declarations: u64,
    /// Suspicion episodes (member, incarnation) raised against members that were alive,
    /// seen by scanning every node's member list after each input (up to 500 nodes; `None`
    /// above, where the scan would dominate the run).
    pub false_positive_suspicions: Option<u64>,
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

/// A rumour's identity: its origin and the origin's counter; a newer one from the same
/// origin replaces an older one in foca's broadcast queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RumourKey {
    origin: u32,
    rev: u32,
}

impl Invalidates for RumourKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.origin == other.origin && self.rev >= other.rev
    }
}

/// Why a custom broadcast was refused (only a malformed one is).
#[derive(Debug, thiserror::Error)]
#[error("a rumour is 8 bytes, got {0}")]
struct BadRumour(usize);

/// One node's custom-broadcast handler: accepts each rumour once (so foca forwards it a
/// bounded number of times) and logs the first hearing for the world to time.
struct Rumours {
    node: usize,
    latest: HashMap<u32, u32>,
    heard: Rc<RefCell<Vec<(usize, RumourKey)>>>,
}

impl BroadcastHandler<SlotId> for Rumours {
    type Key = RumourKey;
    type Error = BadRumour;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&SlotId>,
    ) -> Result<Option<RumourKey>, BadRumour> {
        let bytes: [u8; 8] = data.try_into().map_err(|_| BadRumour(data.len()))?;
        let word = u64::from_le_bytes(bytes);
        let key = RumourKey {
            origin: word as u32,
            rev: (word >> 32) as u32,
        };
        if self
            .latest
            .get(&key.origin)
            .is_some_and(|&rev| rev >= key.rev)
        {
            return Ok(None);
        }
        self.latest.insert(key.origin, key.rev);
        self.heard.borrow_mut().push((self.node, key));
        Ok(Some(key))
    }
}

/// A rumour on the wire: origin in the low half, counter in the high half.
fn rumour(key: RumourKey) -> [u8; 8] {
    ((u64::from(key.rev) << 32) | u64::from(key.origin)).to_le_bytes()
}

type Node = Foca<SlotId, PostcardCodec, SmallRng, Rumours>;

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
    /// Whether suspicions are tracked (a scan of the member list after every input).
    track_suspicions: bool,
    /// First time each (slot, generation, incarnation) was seen suspected by anyone.
    suspicions: BTreeMap<(u32, u32, u32), u64>,
    /// Nodes that have known every other node at least once, and when the last one did.
    full: Vec<bool>,
    full_count: usize,
    converged_at: Option<u64>,
    /// (observer, member) down declarations, with when.
    downs: Vec<(u64, usize, usize)>,
    /// Rumours heard since the last input, filled by the handlers.
    heard: Rc<RefCell<Vec<(usize, RumourKey)>>>,
    /// Per rumour, when each node first heard it.
    hearings: BTreeMap<(u32, u32), BTreeMap<usize, u64>>,
}

impl BaselineWorld {
    fn new(n: usize, seed: u64, net: NetModel) -> Self {
        let mut rng = SplitMix64::new(seed);
        let heard = Rc::new(RefCell::new(Vec::new()));
        let size =
            NonZeroU32::new(u32::try_from(n.max(1)).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
        let nodes = (0..n)
            .map(|i| {
                let id = SlotId {
                    slot: i as u32,
                    generation: 0,
                };
                let node_rng = SmallRng::seed_from_u64(rng.next_u64());
                let handler = Rumours {
                    node: i,
                    latest: HashMap::new(),
                    heard: Rc::clone(&heard),
                };
                Some(Foca::with_custom_broadcast(
                    id,
                    foca::Config::new_lan(size),
                    node_rng,
                    PostcardCodec,
                    handler,
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
            track_suspicions: n <= SUSPICION_TRACKING_MAX,
            suspicions: BTreeMap::new(),
            full: vec![false; n],
            full_count: 0,
            converged_at: None,
            downs: Vec::new(),
            heard,
            hearings: BTreeMap::new(),
        }
    }

    fn input(&mut self, i: usize, f: impl FnOnce(&mut Node, &mut Outputs)) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let mut out = Outputs::default();
        f(node, &mut out);
        if self.track_suspicions {
            let now = self.queue.now();
            for member in node.iter_membership_state() {
                if member.state() == foca::State::Suspect {
                    let id = member.id();
                    self.suspicions
                        .entry((id.slot, id.generation, u32::from(member.incarnation())))
                        .or_insert(now);
                }
            }
        }
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
        for (node, key) in self.heard.borrow_mut().drain(..) {
            self.hearings
                .entry((key.origin, key.rev))
                .or_default()
                .entry(node)
                .or_insert(now);
        }
    }

    /// Lets every node know every other (as after a completed join), without traffic.
    fn warm_start(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            let others = (0..n).filter(|&j| j != i).map(|j| {
                Member::alive(SlotId {
                    slot: j as u32,
                    generation: 0,
                })
            });
            self.input(i, |node, out| {
                let _ = node.apply_many(others, false, out);
            });
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
    if s.warm {
        world.warm_start();
        world.converged_at = Some(0);
    } else {
        let seed_id = SlotId {
            slot: 0,
            generation: 0,
        };
        for i in 1..n {
            world.input(i, |node, out| {
                let _ = node.announce(seed_id, out);
            });
        }
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

    let victims: BTreeSet<usize> = (n - s.kill.min(n - 1)..n).collect();
    let healthy = n - victims.len();
    let mut rumours = Vec::new();
    for k in 0..s.injections {
        let origin = 1 + (k * 7919) % (healthy - 1).max(1);
        let key = RumourKey {
            origin: origin as u32,
            rev: k as u32,
        };
        let at = world.queue.now();
        rumours.push((at, key));
        world.input(origin, |node, _| {
            let _ = node.add_broadcast(&rumour(key));
        });
        world.run_until(at + 3 * SECOND);
    }
    let mut rounds = Vec::new();
    let mut informed = 0usize;
    for (at, key) in &rumours {
        let got = world
            .hearings
            .remove(&(key.origin, key.rev))
            .unwrap_or_default();
        let targets = (0..healthy).filter(|&i| i != key.origin as usize);
        let mut last = Some(*at);
        for i in targets {
            match got.get(&i) {
                Some(&t) => {
                    informed += 1;
                    last = last.map(|l| l.max(t));
                }
                None => last = None,
            }
        }
        if let Some(last) = last {
            rounds.push(((last - at) as f64 / GOSSIP_PERIOD as f64).ceil());
        }
    }
    rounds.sort_by(f64::total_cmp);
    let pairs = rumours.len() * (healthy - 1);

    let kill_at = world.queue.now();
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
        spread: SpreadFigures::from_samples(
            converged.map(|at| at as f64 / 1000.0),
            &rounds,
            (informed, pairs),
            &complete,
            first,
        ),
        false_positive_failures: false_failed.len() as u64,
        false_failure_declarations: false_declarations,
        false_positive_suspicions: world.track_suspicions.then(|| {
            world
                .suspicions
                .iter()
                .filter(|((slot, _, _), at)| {
                    !(victims.contains(&(*slot as usize)) && **at >= kill_at)
                })
                .count() as u64
        }),
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
            injections: 3,
            warm: false,
        }
    }

    #[test]
    fn foca_baseline_joins_detects_and_replays_by_seed() {
        let a = run_foca_baseline(&scenario(3));
        assert!(a.spread.join_convergence_ms.is_some(), "{a:?}");
        assert!(a.spread.dissemination_informed > 0.8, "{a:?}");
        assert!(a.spread.dissemination_rounds_max.is_some(), "{a:?}");
        assert_eq!(
            a.spread.detected, 1,
            "the killed node is declared down everywhere: {a:?}"
        );
        assert_eq!(a.false_positive_failures, 0, "{a:?}");
        assert_eq!(
            a.false_positive_suspicions,
            Some(0),
            "no live member suspected on a lossless network: {a:?}"
        );
        assert!(a.msgs_per_node_per_s > 0.5, "{a:?}");
        let b = run_foca_baseline(&scenario(3));
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_eq!(a.spread.detection_ms_p50, b.spread.detection_ms_p50);
        let c = run_foca_baseline(&scenario(4));
        assert_ne!(a.trace_hash, c.trace_hash);
    }

    #[test]
    fn foca_baseline_warm_start_knows_everyone_without_a_join() {
        let mut s = scenario(5);
        s.warm = true;
        s.kill = 3;
        let r = run_foca_baseline(&s);
        assert_eq!(r.spread.join_convergence_ms, Some(0.0), "{r:?}");
        assert_eq!(r.spread.detected, 3, "every victim declared down: {r:?}");
        assert!(
            r.spread.detection_ms_p50 <= r.spread.detection_ms_max
                && r.spread.detection_ms_p50 >= r.spread.first_detection_ms,
            "percentiles are ordered: {r:?}"
        );
        assert!(r.spread.dissemination_informed > 0.8, "{r:?}");
    }

    /// Plain SWIM suspects live members when probes and their indirect paths are lost; the
    /// scan of member lists sees it.
    #[test]
    fn foca_baseline_counts_suspicions_of_live_members_under_loss() {
        let mut s = scenario(3);
        s.warm = true;
        s.net.loss = 0.2;
        let r = run_foca_baseline(&s);
        assert!(r.false_positive_suspicions.is_some_and(|n| n > 0), "{r:?}");
    }
}
