//! The event loop: virtual time, a seeded PRNG, the network model, and the real membership
//! core of every node. Single-threaded and deterministic: the same seed replays the same run,
//! and every delivered event is folded into a trace hash that proves it.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use colony_base::SplitMix64;
use colony_swim::{Addr, Config, Meta, Name, Notification, Output, Swim, Timer};

use crate::net::NetModel;
use crate::queue::EventQueue;

/// A scheduled event.
#[derive(Debug)]
enum Event {
    Packet {
        to: usize,
        from: Addr,
        bytes: Vec<u8>,
    },
    Stream {
        to: usize,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        epoch: u32,
        timer: Timer,
    },
}

/// A gray-failure schedule: the node is stopped for `stop` out of every `period` µs (a
/// CPU-starved or GC-pausing process), from `from` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DutyCycle {
    /// Start of the first pause.
    pub from: u64,
    /// Cycle length.
    pub period: u64,
    /// Paused part of each cycle.
    pub stop: u64,
    /// End of the schedule.
    pub until: u64,
}

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    swim: Option<Swim>,
    epoch: u32,
    name: String,
    addr: Addr,
    generation: u64,
    paused_until: u64,
    duty: Option<DutyCycle>,
    /// Extra delay added to everything this node sends (a slow NIC or overloaded sender).
    pub send_delay: u64,
}

impl SimNode {
    /// The membership core, if the node is running.
    pub fn swim(&self) -> Option<&Swim> {
        self.swim.as_ref()
    }
    /// Whether the node's process exists (it may still be paused).
    pub fn is_running(&self) -> bool {
        self.swim.is_some()
    }
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    fn resume_at(&self, now: u64) -> Option<u64> {
        if now < self.paused_until {
            return Some(self.paused_until);
        }
        let d = self.duty?;
        if now < d.from || now >= d.until {
            return None;
        }
        let phase = (now - d.from) % d.period;
        (phase < d.stop).then(|| now - phase + d.stop)
    }
}

/// A notification emitted by a node at a time.
#[derive(Debug, Clone)]
pub struct Note {
    /// When.
    pub at: u64,
    /// Which node.
    pub node: usize,
    /// What.
    pub note: Notification,
}

/// The simulated world.
#[derive(Debug)]
pub struct World {
    rng: SplitMix64,
    queue: EventQueue<Event>,
    nodes: Vec<SimNode>,
    by_addr: HashMap<Addr, usize>,
    /// The network model; may be changed between steps.
    pub net: NetModel,
    config: Config,
    trace: DefaultHasher,
    delays: Vec<u64>,
    notes: Vec<Note>,
    events: u64,
    /// Call `check_invariants` on a node after each of its inputs (slower; on in tests).
    pub check_invariants: bool,
    versions: Option<Vec<BTreeMap<Name, (u64, u32)>>>,
    version_regressions: u64,
    first_regression: Option<String>,
}

/// The address of node slot `i` (10.x.y.z:8301); restarts may move a node to another slot.
pub fn slot_addr(i: usize) -> Addr {
    Addr::v4([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8301)
}

impl World {
    /// A world of `n` nodes named `n0`…, not yet started, with the given protocol config.
    pub fn new(n: usize, seed: u64, config: Config, net: NetModel) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut nodes = Vec::with_capacity(n);
        let mut by_addr = HashMap::with_capacity(n);
        for i in 0..n {
            let addr = slot_addr(i);
            let name = format!("n{i}");
            let swim = Swim::new(
                config.clone(),
                &name,
                addr,
                1,
                Meta::default(),
                rng.next_u64(),
            );
            by_addr.insert(addr, i);
            nodes.push(SimNode {
                swim: Some(swim),
                epoch: 0,
                name,
                addr,
                generation: 1,
                paused_until: 0,
                duty: None,
                send_delay: 0,
            });
        }
        Self {
            rng,
            queue: EventQueue::new(),
            nodes,
            by_addr,
            net,
            config,
            trace: DefaultHasher::new(),
            delays: Vec::new(),
            notes: Vec::new(),
            events: 0,
            check_invariants: false,
            versions: None,
            version_regressions: 0,
            first_regression: None,
        }
    }

    /// Current virtual time (µs).
    pub fn now(&self) -> u64 {
        self.queue.now()
    }
    /// The nodes.
    pub fn nodes(&self) -> &[SimNode] {
        &self.nodes
    }
    /// Mutable access to one node (schedules, delays).
    pub fn node_mut(&mut self, i: usize) -> &mut SimNode {
        &mut self.nodes[i]
    }
    /// The world's random generator (scenarios draw their choices from it, so that they replay).
    pub fn rng(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }
    /// Events processed so far.
    pub fn events(&self) -> u64 {
        self.events
    }
    /// The hash of every event delivered so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }
    /// Checks after every input that no node's view of a member ever goes back to an older
    /// (generation, incarnation). Costs memory proportional to n²: for small clusters.
    pub fn track_versions(&mut self) {
        self.versions = Some(vec![BTreeMap::new(); self.nodes.len()]);
    }

    /// Times a node's view of a member went back to an older (generation, incarnation) — a
    /// resurrected generation or a lost refutation — and the first such event.
    pub fn version_regressions(&self) -> (u64, Option<&str>) {
        (self.version_regressions, self.first_regression.as_deref())
    }

    /// Lets every node know every other (as after a completed join), without traffic.
    pub fn warm_start(&mut self) {
        let records: Vec<_> = self
            .nodes
            .iter()
            .filter_map(|n| n.swim.as_ref())
            .map(|s| colony_swim::Update::Alive {
                name: s.name().clone(),
                addr: s.addr(),
                generation: s.generation(),
                incarnation: s.incarnation(),
                meta: s.meta().clone(),
            })
            .collect();
        for node in &mut self.nodes {
            let Some(swim) = node.swim.as_mut() else {
                continue;
            };
            swim.reserve_members(records.len());
            for r in &records {
                swim.insert_member(0, r);
            }
            swim.drain_outputs();
        }
    }

    /// Starts node `i`'s timers.
    pub fn start(&mut self, i: usize) {
        let now = self.queue.now();
        if let Some(s) = self.nodes[i].swim.as_mut() {
            s.start(now);
        }
        self.route(i);
    }

    /// Node `i` joins through the nodes in `seeds`.
    pub fn join(&mut self, i: usize, seeds: &[usize]) {
        let addrs: Vec<Addr> = seeds.iter().map(|&s| self.nodes[s].addr).collect();
        let now = self.queue.now();
        if let Some(s) = self.nodes[i].swim.as_mut() {
            s.join(now, &addrs);
        }
        self.route(i);
    }

    /// Runs a closure on a running node's core and routes what it produced.
    pub fn with_node(&mut self, i: usize, f: impl FnOnce(&mut Swim, u64)) {
        let now = self.queue.now();
        if let Some(s) = self.nodes[i].swim.as_mut() {
            f(s, now);
        }
        self.route(i);
    }

    /// Kills node `i` (SIGKILL): its state and pending timers are gone.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].swim = None;
        self.nodes[i].epoch += 1;
    }

    /// Restarts node `i` with a new generation, optionally on a new address slot, and joins
    /// it through `seeds`.
    pub fn restart(&mut self, i: usize, new_slot: Option<usize>, seeds: &[usize]) {
        self.crash(i);
        let node = &mut self.nodes[i];
        if let Some(slot) = new_slot {
            self.by_addr.remove(&node.addr);
            node.addr = slot_addr(slot);
            self.by_addr.insert(node.addr, i);
        }
        node.generation += 1;
        node.swim = Some(Swim::new(
            self.config.clone(),
            &node.name,
            node.addr,
            node.generation,
            Meta::default(),
            self.rng.next_u64(),
        ));
        if let Some(v) = self.versions.as_mut() {
            v[i].clear();
        }
        self.start(i);
        self.join(i, seeds);
    }

    /// Pauses node `i` (SIGSTOP) until `until`; its inbound packets and timers wait.
    pub fn pause_until(&mut self, i: usize, until: u64) {
        self.nodes[i].paused_until = until;
    }

    /// Gives node `i` a recurring pause schedule.
    pub fn set_duty_cycle(&mut self, i: usize, duty: Option<DutyCycle>) {
        self.nodes[i].duty = duty;
    }

    /// Runs until virtual time `until`, handing every notification to `observe`.
    pub fn run_until(&mut self, until: u64, observe: &mut impl FnMut(&World, &Note)) {
        while let Some((_, event)) = self.queue.pop_until(until) {
            self.dispatch(event);
            if !self.notes.is_empty() {
                let notes = std::mem::take(&mut self.notes);
                for n in &notes {
                    observe(self, n);
                }
            }
        }
        self.queue.advance_to(until);
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.queue.schedule(at, event);
    }

    fn dispatch(&mut self, event: Event) {
        let node = match &event {
            Event::Packet { to, .. } | Event::Stream { to, .. } => *to,
            Event::Timer { node, epoch, .. } => {
                if *epoch != self.nodes[*node].epoch {
                    return;
                }
                *node
            }
        };
        if !self.nodes[node].is_running() {
            return;
        }
        if let Some(resume) = self.nodes[node].resume_at(self.queue.now()) {
            self.schedule(resume, event);
            return;
        }
        self.events += 1;
        self.queue.now().hash(&mut self.trace);
        node.hash(&mut self.trace);
        let now = self.queue.now();
        let Some(swim) = self.nodes[node].swim.as_mut() else {
            return;
        };
        match event {
            Event::Packet { from, bytes, .. } => {
                bytes.hash(&mut self.trace);
                let _ = swim.handle_packet(now, from, &bytes);
            }
            Event::Stream { bytes, .. } => {
                bytes.hash(&mut self.trace);
                let _ = swim.handle_stream(now, &bytes);
            }
            Event::Timer { timer, .. } => {
                timer.hash(&mut self.trace);
                swim.handle_timer(now, timer);
            }
        }
        if self.check_invariants {
            swim.check_invariants();
        }
        if let Some(versions) = self.versions.as_mut() {
            let seen = &mut versions[node];
            for m in swim.members() {
                let v = (m.generation, m.incarnation);
                let old = seen.insert(m.name.clone(), v);
                if let Some(o) = old.filter(|o| *o > v) {
                    self.version_regressions += 1;
                    self.first_regression.get_or_insert_with(|| {
                        format!(
                            "node {node} saw {} go back from {o:?} to {v:?} at {}",
                            m.name,
                            self.queue.now()
                        )
                    });
                    seen.insert(m.name.clone(), o);
                }
            }
        }
        self.route(node);
    }

    fn route(&mut self, i: usize) {
        let Some(swim) = self.nodes[i].swim.as_mut() else {
            return;
        };
        let outputs = swim.drain_outputs();
        let epoch = self.nodes[i].epoch;
        let from = self.nodes[i].addr;
        let send_delay = self.nodes[i].send_delay;
        for out in outputs {
            match out {
                Output::Packet { to, bytes } => {
                    let Some(&dst) = self.by_addr.get(&to) else {
                        continue;
                    };
                    let mut delays = std::mem::take(&mut self.delays);
                    self.net
                        .datagram(self.queue.now(), i, dst, &mut self.rng, &mut delays);
                    let base = self.queue.now() + send_delay;
                    match delays.as_slice() {
                        [] => {}
                        [d] => self.schedule(
                            base + d,
                            Event::Packet {
                                to: dst,
                                from,
                                bytes,
                            },
                        ),
                        several => {
                            for d in several {
                                let copy = bytes.clone();
                                self.schedule(
                                    base + d,
                                    Event::Packet {
                                        to: dst,
                                        from,
                                        bytes: copy,
                                    },
                                );
                            }
                        }
                    }
                    self.delays = delays;
                }
                Output::Stream { to, bytes } => {
                    let Some(&dst) = self.by_addr.get(&to) else {
                        continue;
                    };
                    if let Some(d) = self.net.stream(self.queue.now(), i, dst, &mut self.rng) {
                        self.schedule(
                            self.queue.now() + send_delay + d,
                            Event::Stream { to: dst, bytes },
                        );
                    }
                }
                Output::Timer { at, timer } => {
                    self.schedule(
                        at.max(self.queue.now()),
                        Event::Timer {
                            node: i,
                            epoch,
                            timer,
                        },
                    );
                }
                Output::Notify(note) => {
                    self.notes.push(Note {
                        at: self.queue.now(),
                        node: i,
                        note,
                    });
                }
            }
        }
    }
}
