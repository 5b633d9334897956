//! A deterministic, single-threaded cluster of Raft nodes: a virtual clock, a seeded network
//! that drops, duplicates, delays (hence reorders) and partitions messages, and a "disk" per
//! node that keeps only what went through the Ready contract. A crash drops the node (and
//! everything it had not persisted); a restart rebuilds it from its disk.
//!
//! The safety checkers run inside: election safety, log matching, leader completeness,
//! committed entries never overwritten, and state machine safety.

use std::collections::{BTreeMap, BTreeSet};

use colony_base::SplitMix64;
use colony_raft::{
    ConfChange, Config, Entry, EntryKind, HardState, Message, Raft, ReadState, Ready, Restored,
    Role, Snapshot,
};

/// Fault rates, per mille of steps (or of messages for the network ones).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
    pub delay_ms_max: u64,
    pub crash_per_mille: u64,
    pub restart_per_mille: u64,
    pub partition_per_mille: u64,
    pub heal_per_mille: u64,
    /// Per mille of steps in which a node with something to persist does not get to it yet
    /// (a slow fsync): its messages wait and a crash loses it.
    pub slow_disk_per_mille: u64,
    pub propose_per_mille: u64,
    /// Per mille of steps in which the leader is asked to add or remove a voter.
    pub conf_change_per_mille: u64,
    /// Per mille of steps in which every self-believed leader is asked for a ReadIndex.
    pub read_per_mille: u64,
    /// Per mille of steps in which the leader is asked to hand over to another voter.
    pub transfer_per_mille: u64,
    /// Per mille chance that a leader crashes right after applying entries of an earlier
    /// term (Raft Figure 8).
    pub figure8_crash_per_mille: u64,
}

impl Faults {
    pub fn none() -> Self {
        Self {
            delay_ms_max: 1,
            ..Self::default()
        }
    }

    pub fn rough() -> Self {
        Self {
            drop_per_mille: 30,
            duplicate_per_mille: 30,
            delay_ms_max: 12,
            crash_per_mille: 3,
            restart_per_mille: 10,
            partition_per_mille: 4,
            heal_per_mille: 8,
            slow_disk_per_mille: 300,
            propose_per_mille: 300,
            conf_change_per_mille: 0,
            read_per_mille: 50,
            transfer_per_mille: 3,
            figure8_crash_per_mille: 300,
        }
    }
}

/// What a node's disk holds: only what it persisted.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
}

impl Disk {
    fn restored(&self) -> Restored {
        Restored {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
        }
    }

    fn first_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.meta.index) + 1
    }

    fn persist(&mut self, ready: &Ready) {
        if let Some(snapshot) = &ready.snapshot {
            self.snapshot = Some(snapshot.clone());
            self.entries.clear();
        }
        if let Some(first) = ready.entries.first() {
            assert!(
                first.index >= self.first_index(),
                "overwrite of a snapshotted entry"
            );
            let keep = (first.index - self.first_index()) as usize;
            assert!(keep <= self.entries.len(), "persisted log would have a gap");
            self.entries.truncate(keep);
            self.entries.extend(ready.entries.iter().cloned());
        }
        if let Some(hard_state) = ready.hard_state {
            self.hard_state = hard_state;
        }
        for (offset, entry) in self.entries.iter().enumerate() {
            assert_eq!(entry.index, self.first_index() + offset as u64);
        }
    }

    fn compact(&mut self, index: u64, snapshot: Snapshot) {
        let drop = (index + 1 - self.first_index()) as usize;
        assert!(
            drop <= self.entries.len(),
            "compact beyond the persisted log"
        );
        self.entries.drain(..drop);
        self.snapshot = Some(snapshot);
    }
}

/// One applied entry of the test state machine: the entry's term and value (0 for no-ops).
pub type Applied = (u64, u64);

pub struct Node {
    pub raft: Raft,
    /// Applied entries, one per index from 1.
    pub applied: Vec<Applied>,
    /// A Ready taken whose fsync has not completed yet (a slow disk); the node keeps
    /// handling inputs meanwhile, and a crash loses it.
    pub pending: Option<Ready>,
}

#[derive(Debug, Clone)]
struct InFlight {
    deliver_at: u64,
    seq: u64,
    from: u64,
    to: u64,
    message: Message,
}

pub struct Cluster {
    pub seed: u64,
    pub ids: Vec<u64>,
    /// The voter set every node is built with (membership changes in the log apply on top).
    pub bootstrap: Vec<u64>,
    pub config: Config,
    pub faults: Faults,
    pub now_ms: u64,
    pub rng: SplitMix64,
    pub nodes: BTreeMap<u64, Option<Node>>,
    pub disks: BTreeMap<u64, Disk>,
    network: Vec<InFlight>,
    network_seq: u64,
    /// Directed links that lose everything: (from, to).
    pub blocked: BTreeSet<(u64, u64)>,
    /// Compact a node's log once it holds this many applied entries.
    pub compact_threshold: u64,
    restarts: u64,
    next_value: u64,
    // ----- checkers -----
    /// Every (term, leader) pair ever observed.
    pub leaders: BTreeMap<u64, u64>,
    /// The committed log as learned from applications: (term, value) per index from 1, and
    /// the largest term any node had when the entry was first seen applied.
    pub committed: Vec<Applied>,
    committed_seen_term: Vec<u64>,
    /// Values some client was told are committed (applied at some node).
    pub acked: BTreeSet<u64>,
    pub steps: u64,
    pub stats: Stats,
    /// `RAFT_TRACE=1`: print every delivered message, crash, restart, partition and role
    /// change on standard error (replay one seed with it to see what led to a failure).
    tracing: bool,
    /// ReadIndex answers handed out, per node.
    pub read_states: Vec<(u64, ReadState)>,
    /// ReadIndex requests in flight: context -> length of the committed log when asked.
    reads_asked: BTreeMap<u64, u64>,
    next_read_ctx: u64,
    /// The highest commit index any node has reported.
    commit_seen: u64,
    /// The store's state machine on every node and the clients' register histories, when
    /// the run has a KV layer ([`Cluster::with_kv`]).
    pub kv: Option<crate::kv::KvLayer>,
}

/// What happened during a run, to show the faults and paths were exercised.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub crashes: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub snapshots_installed: u64,
    pub compactions: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub conf_changes: u64,
    pub reads_confirmed: u64,
    /// Reads confirmed through a follower (its request to the leader answered).
    pub reads_forwarded: u64,
    /// Reads the node asked reported it would never answer.
    pub reads_failed: u64,
    pub transfers: u64,
    /// Checks of lease safety made while some leader held a lease.
    pub lease_checks: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.crashes += o.crashes;
        self.restarts += o.restarts;
        self.partitions += o.partitions;
        self.snapshots_installed += o.snapshots_installed;
        self.compactions += o.compactions;
        self.messages_sent += o.messages_sent;
        self.messages_dropped += o.messages_dropped;
        self.conf_changes += o.conf_changes;
        self.reads_confirmed += o.reads_confirmed;
        self.reads_forwarded += o.reads_forwarded;
        self.reads_failed += o.reads_failed;
        self.transfers += o.transfers;
        self.lease_checks += o.lease_checks;
    }
}

pub fn encode_snapshot(applied: &[Applied]) -> Vec<u8> {
    let mut out = Vec::with_capacity(applied.len() * 16);
    for (term, value) in applied {
        out.extend_from_slice(&term.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

pub fn decode_snapshot(data: &[u8]) -> Vec<Applied> {
    assert_eq!(data.len() % 16, 0, "snapshot is whole pairs");
    data.chunks(16)
        .map(|c| {
            let term = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            let value = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
            (term, value)
        })
        .collect()
}

impl Cluster {
    pub fn new(size: u64, seed: u64, config: Config, faults: Faults) -> Self {
        Self::with_bootstrap(size, size, seed, config, faults)
    }

    /// `size` nodes of which the first `voters_count` are the bootstrap voters; the others
    /// start as non-voters waiting to be added.
    pub fn with_bootstrap(
        size: u64,
        voters_count: u64,
        seed: u64,
        config: Config,
        faults: Faults,
    ) -> Self {
        let ids: Vec<u64> = (1..=size).collect();
        let bootstrap: Vec<u64> = (1..=voters_count).collect();
        let mut rng = SplitMix64::new(seed);
        let mut nodes = BTreeMap::new();
        let mut disks = BTreeMap::new();
        for &id in &ids {
            let raft = Raft::new(
                id,
                &bootstrap,
                config.clone(),
                rng.next_u64(),
                Restored::default(),
            );
            nodes.insert(
                id,
                Some(Node {
                    raft,
                    applied: Vec::new(),
                    pending: None,
                }),
            );
            disks.insert(id, Disk::default());
        }
        Self {
            seed,
            ids,
            bootstrap,
            config,
            faults,
            now_ms: 0,
            rng,
            nodes,
            disks,
            network: Vec::new(),
            network_seq: 0,
            blocked: BTreeSet::new(),
            compact_threshold: 40,
            restarts: 0,
            tracing: std::env::var("RAFT_TRACE").is_ok_and(|v| v == "1"),
            next_value: 1,
            leaders: BTreeMap::new(),
            committed: Vec::new(),
            committed_seen_term: Vec::new(),
            acked: BTreeSet::new(),
            steps: 0,
            stats: Stats::default(),
            read_states: Vec::new(),
            reads_asked: BTreeMap::new(),
            next_read_ctx: 1,
            commit_seen: 0,
            kv: None,
        }
    }

    /// Adds the KV layer: the store's state machine on every node, writes spread over
    /// `keys` keys, and reads recorded for the linearizability check.
    pub fn with_kv(mut self, keys: u64) -> Self {
        self.kv = Some(crate::kv::KvLayer::new(&self.ids, keys));
        self
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        per_mille > 0 && self.rng.below(1000) < per_mille
    }

    pub fn node(&self, id: u64) -> Option<&Raft> {
        self.nodes[&id].as_ref().map(|n| &n.raft)
    }

    pub fn node_mut(&mut self, id: u64) -> Option<&mut Raft> {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.as_mut())
            .map(|n| &mut n.raft)
    }

    pub fn live_ids(&self) -> Vec<u64> {
        self.ids
            .iter()
            .copied()
            .filter(|id| self.nodes[id].is_some())
            .collect()
    }

    /// The leader of the highest term among live nodes, if any.
    pub fn leader(&self) -> Option<u64> {
        self.live_ids()
            .into_iter()
            .filter(|&id| self.node(id).is_some_and(Raft::is_leader))
            .max_by_key(|&id| self.node(id).map(Raft::term))
    }

    pub fn applied_values(&self, id: u64) -> Vec<u64> {
        self.nodes[&id]
            .as_ref()
            .map_or(Vec::new(), |n| n.applied.iter().map(|a| a.1).collect())
    }

    // ----- network ---------------------------------------------------------------------

    fn send(&mut self, from: u64, to: u64, message: Message) {
        self.stats.messages_sent += 1;
        if self.chance(self.faults.drop_per_mille) {
            self.stats.messages_dropped += 1;
            return;
        }
        let copies = if self.chance(self.faults.duplicate_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + self.rng.below(self.faults.delay_ms_max.max(1));
            self.network_seq += 1;
            self.network.push(InFlight {
                deliver_at: self.now_ms + delay,
                seq: self.network_seq,
                from,
                to,
                message: message.clone(),
            });
        }
    }

    fn deliver_due(&mut self) {
        let now = self.now_ms;
        let (mut due, rest): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|m| m.deliver_at <= now);
        self.network = rest;
        due.sort_by_key(|m| (m.deliver_at, m.seq));
        for message in due {
            if self.blocked.contains(&(message.from, message.to)) {
                continue;
            }
            let now = self.now_ms;
            if self.tracing {
                let text = format!("{:?}", message.message);
                eprintln!(
                    "{now:>6} {} -> {}: {}",
                    message.from,
                    message.to,
                    &text[..text.len().min(160)]
                );
            }
            if let Some(raft) = self.node_mut(message.to) {
                raft.handle_message(now, message.from, message.message);
                raft.check_invariants();
            }
            self.check_after_input();
        }
    }

    // ----- disk and state machine ------------------------------------------------------

    /// Runs the Ready contract for `id`: persist, send, apply, advance (then maybe compact).
    /// A slow disk holds the Ready for later steps: leader messages go out at once, the rest
    /// waits for the fsync, and the node keeps handling inputs meanwhile.
    /// Returns whether this node, as leader, just applied an entry of an earlier term: the
    /// moment Raft Figure 8 is about, when a crash tests the commit rule hardest.
    pub fn process_ready(&mut self, id: u64, is_disk_slow: bool) -> bool {
        let Some(node) = self.nodes.get_mut(&id).and_then(|n| n.as_mut()) else {
            return false;
        };
        // Before any early message leaves: a leader's read index may be in one.
        self.commit_seen = self.commit_seen.max(node.raft.commit_index());
        let ready = match node.pending.take() {
            Some(ready) if is_disk_slow => {
                node.pending = Some(ready);
                return false;
            }
            Some(ready) => ready,
            None if node.raft.has_ready() => {
                let mut ready = node.raft.ready();
                let early = std::mem::take(&mut ready.leader_messages);
                for envelope in early {
                    self.send(id, envelope.to, envelope.message);
                }
                let node = self
                    .nodes
                    .get_mut(&id)
                    .and_then(|n| n.as_mut())
                    .expect("live");
                if is_disk_slow {
                    node.pending = Some(ready);
                    return false;
                }
                ready
            }
            None => return false,
        };
        let node = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.as_mut())
            .expect("live");
        let disk = self.disks.get_mut(&id).expect("every node has a disk");
        disk.persist(&ready);
        if let Some(snapshot) = &ready.snapshot {
            self.stats.snapshots_installed += 1;
            node.applied = decode_snapshot(&snapshot.data);
            assert_eq!(node.applied.len() as u64, snapshot.meta.index);
            if let Some(kv) = &mut self.kv {
                kv.rebuild(id, &node.applied);
            }
        }
        let term_now = node.raft.term();
        let is_older_term_applied =
            node.raft.is_leader() && ready.committed_entries.iter().any(|e| e.term < term_now);
        for entry in &ready.committed_entries {
            assert_eq!(
                entry.index,
                node.applied.len() as u64 + 1,
                "applied in order"
            );
            let value = match entry.kind {
                EntryKind::Normal => u64::from_le_bytes(entry.data[..].try_into().expect("u64")),
                EntryKind::Empty | EntryKind::ConfChange => 0,
            };
            node.applied.push((entry.term, value));
            if let Some(kv) = &mut self.kv {
                kv.apply(id, entry.index, value, self.now_ms);
            }
        }
        for read in &ready.read_states {
            // A follower's read index is its leader's commit index, which it may not know
            // yet itself.
            assert!(read.index <= self.commit_seen, "read index is committed");
            if !node.raft.is_leader() {
                self.stats.reads_forwarded += 1;
            }
            self.read_states.push((id, *read));
            if let Some(kv) = &mut self.kv {
                kv.read_released(id, read.ctx, read.index);
            }
            // Linearizable reads (thesis §6.4): the read index covers every write some
            // client was told about before the read was asked.
            if let Some(asked) = self.reads_asked.remove(&read.ctx) {
                assert!(
                    read.index >= asked,
                    "seed {}: read {} answered at index {} but {asked} entries were \
                     acknowledged before it was asked",
                    self.seed,
                    read.ctx,
                    read.index
                );
                self.stats.reads_confirmed += 1;
            }
        }
        self.stats.reads_failed += ready.read_failures.len() as u64;
        for ctx in &ready.read_failures {
            self.reads_asked.remove(ctx);
        }
        node.raft.advance();
        node.raft.check_invariants();
        if let Some(kv) = &mut self.kv {
            kv.complete_reads(id, self.now_ms);
        }
        let term = node.raft.term();
        let applied = node.applied.clone();
        for envelope in ready.messages.into_iter().chain(ready.leader_messages) {
            self.send(id, envelope.to, envelope.message);
        }
        self.record_applied(&applied, term);
        // Compact like a real node would: snapshot the state machine, then drop the log.
        let node = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.as_mut())
            .expect("live");
        let applied_index = node.raft.applied_index();
        if applied_index >= node.raft.snapshot_meta().index + self.compact_threshold {
            let data = encode_snapshot(&node.applied[..applied_index as usize]);
            node.raft.compact(applied_index, data.clone());
            self.stats.compactions += 1;
            let snapshot = node.raft.snapshot().expect("just compacted").clone();
            assert_eq!(snapshot.meta.index, applied_index);
            assert_eq!(snapshot.data, data);
            let disk = self.disks.get_mut(&id).expect("disk");
            disk.compact(applied_index, snapshot);
        }
        is_older_term_applied
    }

    /// State machine safety: every node's applied sequence is a prefix of one committed log.
    fn record_applied(&mut self, applied: &[Applied], term: u64) {
        let known = self.committed.len().min(applied.len());
        assert_eq!(
            &applied[..known],
            &self.committed[..known],
            "seed {}: state machines diverge",
            self.seed
        );
        for &entry in &applied[known..] {
            self.committed.push(entry);
            self.committed_seen_term.push(term);
            if entry.1 != 0 {
                self.acked.insert(entry.1);
            }
        }
    }

    // ----- faults ----------------------------------------------------------------------

    fn trace(&self, event: String) {
        if self.tracing {
            eprintln!("{:>6} {event}", self.now_ms);
        }
    }

    pub fn crash(&mut self, id: u64) {
        self.trace(format!("crash {id}"));
        self.stats.crashes += 1;
        self.nodes.insert(id, None);
        if let Some(kv) = &mut self.kv {
            kv.crash(id);
        }
    }

    pub fn restart(&mut self, id: u64) {
        assert!(self.nodes[&id].is_none(), "restart of a live node");
        self.trace(format!("restart {id}"));
        self.restarts += 1;
        self.stats.restarts += 1;
        let disk = &self.disks[&id];
        let seed = self.seed ^ (self.restarts << 32) ^ id;
        let raft = Raft::new(
            id,
            &self.bootstrap,
            self.config.clone(),
            seed,
            disk.restored(),
        );
        let applied = disk
            .snapshot
            .as_ref()
            .map_or(Vec::new(), |s| decode_snapshot(&s.data));
        if let Some(kv) = &mut self.kv {
            kv.rebuild(id, &applied);
        }
        self.nodes.insert(
            id,
            Some(Node {
                raft,
                applied,
                pending: None,
            }),
        );
    }

    /// Cuts `id` off from everyone, both ways.
    pub fn isolate(&mut self, id: u64) {
        for &other in &self.ids {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.trace("heal".to_string());
        self.blocked.clear();
    }

    fn random_partition(&mut self) {
        self.stats.partitions += 1;
        self.blocked.clear();
        match self.rng.below(3) {
            0 => {
                // Symmetric split into two random sides.
                let side: Vec<bool> = self.ids.iter().map(|_| self.rng.below(2) == 0).collect();
                for (a_pos, &a) in self.ids.iter().enumerate() {
                    for (b_pos, &b) in self.ids.iter().enumerate() {
                        if side[a_pos] != side[b_pos] {
                            self.blocked.insert((a, b));
                        }
                    }
                }
            }
            1 => {
                // One node cut off, often the leader, so that a stale leader keeps accepting
                // proposals into a log tail the rest of the cluster will overwrite.
                let id = match self.leader() {
                    Some(leader) if self.rng.below(2) == 0 => leader,
                    _ => self.ids[self.rng.below(self.ids.len() as u64) as usize],
                };
                self.isolate(id);
            }
            _ => {
                // One-way: some directed links lose everything.
                let links = 1 + self.rng.below(self.ids.len() as u64);
                for _ in 0..links {
                    let a = self.ids[self.rng.below(self.ids.len() as u64) as usize];
                    let b = self.ids[self.rng.below(self.ids.len() as u64) as usize];
                    if a != b {
                        self.blocked.insert((a, b));
                    }
                }
            }
        }
    }

    // ----- driving ---------------------------------------------------------------------

    /// Asks the leader to remove a random other voter (keeping at least three, or two in a
    /// three-node cluster) or to add back a node that is not a voter.
    fn random_conf_change(&mut self) {
        let Some(leader) = self.leader() else {
            return;
        };
        let voters = self.node(leader).expect("live").voters().to_vec();
        let outside: Vec<u64> = self
            .ids
            .iter()
            .copied()
            .filter(|id| !voters.contains(id))
            .collect();
        let voters_min = if self.ids.len() <= 3 { 2 } else { 3 };
        let change =
            if !outside.is_empty() && (voters.len() <= voters_min || self.rng.below(2) == 0) {
                ConfChange::AddVoter(outside[self.rng.below(outside.len() as u64) as usize])
            } else {
                let others: Vec<u64> = voters.iter().copied().filter(|&v| v != leader).collect();
                if others.is_empty() || voters.len() <= voters_min {
                    return;
                }
                ConfChange::RemoveVoter(others[self.rng.below(others.len() as u64) as usize])
            };
        let raft = self.node_mut(leader).expect("live");
        let is_accepted = raft.propose_conf_change(change).is_ok();
        raft.check_invariants();
        if is_accepted {
            self.stats.conf_changes += 1;
        }
    }

    /// The voters of the current leader (every node if there is none).
    pub fn current_voters(&self) -> Vec<u64> {
        self.leader().map_or(self.ids.clone(), |leader| {
            self.node(leader).expect("live").voters().to_vec()
        })
    }

    /// Proposes a fresh unique value at `id`; returns it if the node accepted it.
    pub fn propose_at(&mut self, id: u64) -> Option<u64> {
        let value = self.next_value;
        let raft = self.node_mut(id)?;
        let accepted = raft.propose(value.to_le_bytes().to_vec()).is_ok();
        raft.check_invariants();
        if accepted {
            self.next_value += 1;
            if let Some(kv) = &mut self.kv {
                kv.write_invoked(value, self.now_ms);
            }
            Some(value)
        } else {
            None
        }
    }

    /// One step of virtual time: deliver due messages, tick every node, run Ready for each
    /// (unless its disk is slow this step), and inject client load and faults.
    pub fn step(&mut self) {
        self.steps += 1;
        self.now_ms += 1 + self.rng.below(4);
        self.deliver_due();
        for id in self.live_ids() {
            let now = self.now_ms;
            let raft = self.node_mut(id).expect("live");
            raft.handle_tick(now);
            raft.check_invariants();
            self.check_after_input();
        }
        for id in self.live_ids() {
            let is_disk_slow = self.chance(self.faults.slow_disk_per_mille);
            if self.process_ready(id, is_disk_slow)
                && self.chance(self.faults.figure8_crash_per_mille)
            {
                self.crash(id);
            }
        }
        // Load comes in bursts with idle stretches between them: an idle leader must still
        // notice and repair what the network lost.
        let is_idle = (self.steps / 400) % 3 == 2;
        if !is_idle && self.chance(self.faults.propose_per_mille) {
            // Clients try every node that believes it leads (stale leaders included), and
            // now and then a random node (which refuses unless it leads).
            let leaders: Vec<u64> = self
                .live_ids()
                .into_iter()
                .filter(|&id| self.node(id).is_some_and(Raft::is_leader))
                .collect();
            for id in leaders {
                self.propose_at(id);
            }
            let live = self.live_ids();
            if !live.is_empty() {
                let id = live[self.rng.below(live.len() as u64) as usize];
                self.propose_at(id);
            }
        }
        if self.chance(self.faults.read_per_mille) {
            // Reads go to every node: leaders (stale ones included) confirm them with a
            // heartbeat round, followers ask their leader.
            for id in self.live_ids() {
                let ctx = self.next_read_ctx;
                let asked = self.committed.len() as u64;
                let raft = self.node_mut(id).expect("live");
                if raft.read_index(ctx).is_ok() {
                    raft.check_invariants();
                    self.reads_asked.insert(ctx, asked);
                    self.next_read_ctx += 1;
                    if let Some(kv) = &mut self.kv {
                        kv.read_invoked(ctx, self.now_ms);
                    }
                }
            }
            // Lease reads (Consul's default): a leader inside its lease answers at its
            // commit index with no quorum round.
            let now = self.now_ms;
            let leases: Vec<(u64, u64)> = self
                .live_ids()
                .into_iter()
                .filter_map(|id| {
                    let raft = self.node(id).expect("live");
                    let until = raft.lease_until_ms()?;
                    (until > now).then(|| (id, raft.commit_index()))
                })
                .collect();
            if let Some(kv) = &mut self.kv {
                for (id, index) in leases {
                    let ctx = self.next_read_ctx;
                    self.next_read_ctx += 1;
                    kv.read_invoked(ctx, now);
                    kv.read_released(id, ctx, index);
                    kv.lease_reads += 1;
                }
            }
        }
        if self.chance(self.faults.conf_change_per_mille) {
            self.random_conf_change();
        }
        if self.chance(self.faults.transfer_per_mille)
            && let Some(leader) = self.leader()
        {
            let voters = self.node(leader).expect("live").voters().to_vec();
            let others: Vec<u64> = voters.into_iter().filter(|&v| v != leader).collect();
            if !others.is_empty() {
                let target = others[self.rng.below(others.len() as u64) as usize];
                let now = self.now_ms;
                let raft = self.node_mut(leader).expect("live");
                let is_started = raft.transfer_leadership(now, target).is_ok();
                raft.check_invariants();
                self.stats.transfers += u64::from(is_started);
            }
        }
        if self.chance(self.faults.crash_per_mille) {
            let live = self.live_ids();
            if !live.is_empty() {
                let id = match self.leader() {
                    Some(leader) if self.rng.below(2) == 0 => leader,
                    _ => live[self.rng.below(live.len() as u64) as usize],
                };
                self.crash(id);
            }
        }
        if self.chance(self.faults.restart_per_mille) {
            let dead: Vec<u64> = self
                .ids
                .iter()
                .copied()
                .filter(|id| self.nodes[id].is_none())
                .collect();
            if !dead.is_empty() {
                let id = dead[self.rng.below(dead.len() as u64) as usize];
                self.restart(id);
            }
        }
        if self.chance(self.faults.partition_per_mille) {
            self.random_partition();
            self.trace(format!("partition, blocked {:?}", self.blocked));
        }
        if self.chance(self.faults.heal_per_mille) {
            self.heal();
        }
        if self.steps.is_multiple_of(16) {
            self.check_logs();
            let live = self.live_ids();
            if let Some(kv) = &mut self.kv {
                kv.check_digests(self.seed, &live);
            }
        }
    }

    /// Steps until `done` holds; panics (naming the seed) after `within_ms` of virtual time.
    pub fn run_until(&mut self, within_ms: u64, what: &str, done: impl Fn(&Cluster) -> bool) {
        let deadline = self.now_ms + within_ms;
        while !done(self) {
            assert!(
                self.now_ms < deadline,
                "seed {}: {what} did not happen within {within_ms} ms (now {} ms)\n{}",
                self.seed,
                self.now_ms,
                self.describe()
            );
            self.step();
        }
    }

    pub fn run_for(&mut self, duration_ms: u64) {
        let end = self.now_ms + duration_ms;
        while self.now_ms < end {
            self.step();
        }
    }

    /// One line per node, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for &id in &self.ids {
            match self.node(id) {
                None => out.push_str(&format!("node {id}: down\n")),
                Some(r) => out.push_str(&format!(
                    "node {id}: {:?} term {} leader {:?} first {} last {} persisted {} commit {} \
                     applied {} has_ready {}\n",
                    r.role(),
                    r.term(),
                    r.leader(),
                    r.first_index(),
                    r.last_index(),
                    r.persisted_index(),
                    r.commit_index(),
                    r.applied_index(),
                    r.has_ready()
                )),
            }
        }
        out.push_str(&format!(
            "blocked {:?}, in flight {}",
            self.blocked,
            self.network.len()
        ));
        out
    }

    // ----- checkers --------------------------------------------------------------------

    /// Election safety (Raft §5.2): at most one leader per term, ever. Lease safety: while
    /// a leader's lease runs, no leader of a later term has been elected.
    fn check_after_input(&mut self) {
        for id in self.live_ids() {
            let raft = self.node(id).expect("live");
            if raft.role() == Role::Leader {
                let term = raft.term();
                if self.tracing && !self.leaders.contains_key(&term) {
                    eprintln!("{:>6} leader {id} in term {term}", self.now_ms);
                }
                let previous = *self.leaders.entry(term).or_insert(id);
                assert_eq!(
                    previous, id,
                    "seed {}: two leaders in term {term}",
                    self.seed
                );
            }
        }
        for id in self.live_ids() {
            let raft = self.node(id).expect("live");
            let (Some(until), term) = (raft.lease_until_ms(), raft.term()) else {
                continue;
            };
            if until <= self.now_ms {
                continue;
            }
            self.stats.lease_checks += 1;
            if let Some((later, other)) = self.leaders.range(term + 1..).next() {
                panic!(
                    "seed {}: node {id} holds a lease of term {term} until {until} ms at {} ms, \
                     but node {other} was elected in term {later}",
                    self.seed, self.now_ms
                );
            }
        }
    }

    /// Log matching, leader completeness and "committed is never overwritten", over every
    /// live node's in-memory log.
    pub fn check_logs(&self) {
        let live = self.live_ids();
        for &id in &live {
            let raft = self.node(id).expect("live");
            let first = raft.first_index();
            // Committed entries held by any node equal the committed log.
            let held_committed = raft.commit_index().min(self.committed.len() as u64);
            for index in first..=held_committed {
                let known = self.committed[index as usize - 1].0;
                assert_eq!(
                    raft.term_at(index),
                    Some(known),
                    "seed {}: node {id} holds a different committed entry at {index}",
                    self.seed
                );
            }
            // Leader completeness (§5.4): a leader of a later term holds every committed entry.
            if raft.is_leader() {
                for index in first..=self.committed.len() as u64 {
                    if self.committed_seen_term[index as usize - 1] < raft.term() {
                        assert_eq!(
                            raft.term_at(index),
                            Some(self.committed[index as usize - 1].0),
                            "seed {}: leader {id} of term {} lacks committed entry {index}",
                            self.seed,
                            raft.term()
                        );
                    }
                }
            }
        }
        // Log matching (§5.3): equal (index, term) implies equal prefixes.
        for (pos, &a) in live.iter().enumerate() {
            for &b in &live[pos + 1..] {
                let (ra, rb) = (self.node(a).expect("live"), self.node(b).expect("live"));
                let low = ra.first_index().max(rb.first_index());
                let high = ra.last_index().min(rb.last_index());
                let mut matched = None;
                for index in (low..=high).rev() {
                    if ra.term_at(index) == rb.term_at(index) {
                        matched = Some(index);
                        break;
                    }
                }
                if let Some(top) = matched {
                    for index in low..=top {
                        assert_eq!(
                            ra.entry(index),
                            rb.entry(index),
                            "seed {}: logs of {a} and {b} differ at {index} below matching {top}",
                            self.seed
                        );
                    }
                }
            }
        }
    }

    /// Acknowledged values node `id` has not applied.
    fn lost_at(&self, id: u64) -> Vec<u64> {
        let applied: BTreeSet<u64> = self.applied_values(id).into_iter().collect();
        self.acked
            .iter()
            .copied()
            .filter(|v| !applied.contains(v))
            .collect()
    }

    /// After faults are gone: every node is up, one leader, a fresh value commits everywhere,
    /// and every acknowledged value is applied on every node.
    pub fn check_liveness(&mut self, within_ms: u64) {
        self.faults = Faults {
            propose_per_mille: 0,
            ..Faults::none()
        };
        self.heal();
        for id in self.ids.clone() {
            if self.nodes[&id].is_none() {
                self.restart(id);
            }
        }
        // Without any new load, the cluster converges: one leader commits its whole log and
        // every node applies it (an idle leader must repair losses on its own).
        self.run_until(within_ms, "convergence without new proposals", |c| {
            c.leader().is_some_and(|leader| {
                let raft = c.node(leader).expect("live");
                // Nodes removed from the voter set are left behind, by design.
                raft.commit_index() == raft.last_index()
                    && raft.voters().iter().all(|&id| {
                        c.node(id).is_some_and(|r| {
                            r.applied_index() == raft.commit_index()
                                && r.last_index() == raft.last_index()
                        })
                    })
            })
        });
        // A proposal accepted by a leader that is then deposed may be lost (it was never
        // acknowledged); keep proposing until one is applied everywhere.
        let deadline = self.now_ms + within_ms;
        let mut probes: Vec<u64> = Vec::new();
        let mut next_probe_ms = self.now_ms;
        loop {
            // Done when a probe is applied everywhere and so is every acknowledged value
            // (a later probe may have been acknowledged on some nodes only so far).
            let voters = self.current_voters();
            let is_done = probes
                .iter()
                .any(|p| voters.iter().all(|&id| self.applied_values(id).contains(p)))
                && voters.iter().all(|&id| self.lost_at(id).is_empty());
            if is_done {
                break;
            }
            assert!(
                self.now_ms < deadline,
                "seed {}: no proposal applied everywhere within {within_ms} ms after healing \
                 (probes {probes:?}, acknowledged values missing per node {:?})\n{}",
                self.seed,
                voters
                    .iter()
                    .map(|&id| (id, self.lost_at(id)))
                    .collect::<Vec<_>>(),
                self.describe()
            );
            self.step();
            if self.now_ms >= next_probe_ms
                && let Some(leader) = self.leader()
                && let Some(value) = self.propose_at(leader)
            {
                probes.push(value);
                next_probe_ms = self.now_ms + self.config.election_timeout_ms_min;
            }
        }
        self.check_logs();
        for id in self.current_voters() {
            assert!(self.lost_at(id).is_empty(), "checked by the loop");
        }
    }
}
