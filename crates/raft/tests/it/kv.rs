//! The KV layer of a simulated run: every node applies its committed entries to colony's
//! real store state machine (`colony_store::StateMachine`), and clients' writes and reads
//! form per-key register histories judged by the Wing–Gong–Lowe checker of `todc-utils`.
//!
//! The harness proposes unique values; value `v` is the command "set key `k{v % keys}` to
//! `v`", applied at its log index (no-ops and membership entries apply as `Noop`, as the
//! server does). A write is invoked when a node accepts the proposal and completes when the
//! first node applies it (a client could be told then); a write no node ever applied did
//! not happen. A read is invoked by a ReadIndex request on a node that believes it leads and
//! completes when that node has applied up to the read index and reads the key from its
//! state machine. A lease read is the same at the leader's commit index, asked while its
//! lease runs, with no quorum round. Every 16 steps, any two nodes at the same applied index must hold
//! byte-identical state machines.

use std::collections::BTreeMap;

use colony_store::{Command, Entry, KvSetMode, StateMachine};
use todc_utils::linearizability::WGLChecker;
use todc_utils::linearizability::history::{Action, History};
use todc_utils::specifications::etcd::{EtcdOperation, EtcdSpecification, EtcdStatus};

struct Read {
    key: u64,
    invoked: u64,
    completed: u64,
    value: Option<u32>,
}

pub struct KvLayer {
    keys: u64,
    machines: BTreeMap<u64, StateMachine>,
    /// value -> (key, invoked at)
    writes: BTreeMap<u64, (u64, u64)>,
    /// value -> first applied at
    write_applied: BTreeMap<u64, u64>,
    /// ReadIndex context -> (key, invoked at)
    reads_asked: BTreeMap<u64, (u64, u64)>,
    /// Released reads waiting for their node to apply up to the index: (node, ctx, index).
    reads_waiting: Vec<(u64, u64, u64)>,
    reads: Vec<Read>,
    /// Applied index -> digest of the state machine there, as first seen.
    digests: BTreeMap<u64, u64>,
    pub digest_checks: u64,
    /// Reads a leader answered from its lease.
    pub lease_reads: u64,
}

fn command_for(keys: u64, value: u64) -> Command {
    if value == 0 {
        return Command::Noop;
    }
    Command::KvSet {
        key: format!("k{}", value % keys),
        value: value.to_string().into_bytes(),
        flags: 0,
        mode: KvSetMode::Set,
    }
}

fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl KvLayer {
    pub fn new(ids: &[u64], keys: u64) -> Self {
        KvLayer {
            keys,
            machines: ids.iter().map(|&id| (id, StateMachine::new())).collect(),
            writes: BTreeMap::new(),
            write_applied: BTreeMap::new(),
            reads_asked: BTreeMap::new(),
            reads_waiting: Vec::new(),
            reads: Vec::new(),
            digests: BTreeMap::new(),
            digest_checks: 0,
            lease_reads: 0,
        }
    }

    /// The key a ReadIndex request with this context reads.
    pub fn read_key(&self, ctx: u64) -> u64 {
        ctx % self.keys
    }

    pub fn write_invoked(&mut self, value: u64, now_ms: u64) {
        self.writes.insert(value, (value % self.keys, now_ms));
    }

    pub fn read_invoked(&mut self, ctx: u64, now_ms: u64) {
        self.reads_asked.insert(ctx, (self.read_key(ctx), now_ms));
    }

    /// Node `id` applies the entry at `index` carrying `value` (0: not a client write).
    pub fn apply(&mut self, id: u64, index: u64, value: u64, now_ms: u64) {
        let machine = self.machines.entry(id).or_default();
        let entry = Entry {
            time_ms: 0,
            command: command_for(self.keys, value),
        };
        machine.apply(index, &entry);
        assert_eq!(machine.applied_index(), index, "applied in order");
        if value != 0 {
            self.write_applied.entry(value).or_insert(now_ms);
        }
    }

    /// Node `id`'s state machine, rebuilt from its applied values (after a restart or a
    /// snapshot install).
    pub fn rebuild(&mut self, id: u64, applied: &[(u64, u64)]) {
        let mut machine = StateMachine::new();
        for (position, &(_, value)) in applied.iter().enumerate() {
            let entry = Entry {
                time_ms: 0,
                command: command_for(self.keys, value),
            };
            machine.apply(position as u64 + 1, &entry);
        }
        self.machines.insert(id, machine);
    }

    /// A crashed node's machine and the reads it was about to answer are gone.
    pub fn crash(&mut self, id: u64) {
        self.machines.remove(&id);
        self.reads_waiting.retain(|(node, _, _)| *node != id);
    }

    pub fn read_released(&mut self, id: u64, ctx: u64, index: u64) {
        if self.reads_asked.contains_key(&ctx) {
            self.reads_waiting.push((id, ctx, index));
        }
    }

    /// Answers node `id`'s released reads whose index it has applied.
    pub fn complete_reads(&mut self, id: u64, now_ms: u64) {
        let Some(machine) = self.machines.get(&id) else {
            return;
        };
        let applied = machine.applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_waiting)
            .into_iter()
            .partition(|&(node, _, index)| node == id && index <= applied);
        self.reads_waiting = waiting;
        for (_, ctx, _) in ready {
            let Some((key, invoked)) = self.reads_asked.remove(&ctx) else {
                continue;
            };
            let value = machine.kv_get(format!("k{key}")).map(|entry| {
                std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|text| text.parse::<u32>().ok())
                    .expect("values are numbers")
            });
            self.reads.push(Read {
                key,
                invoked,
                completed: now_ms,
                value,
            });
        }
    }

    /// State machines identical at equal applied index, for the live nodes.
    pub fn check_digests(&mut self, seed: u64, live: &[u64]) {
        for id in live {
            let Some(machine) = self.machines.get(id) else {
                continue;
            };
            let index = machine.applied_index();
            let hash = digest(&machine.to_snapshot());
            let first = *self.digests.entry(index).or_insert(hash);
            assert_eq!(
                first, hash,
                "seed {seed}: node {id}'s state machine at index {index} differs from \
                 another node's at the same index"
            );
            self.digest_checks += 1;
        }
    }

    /// Reads answered, for the sweep's report.
    pub fn reads_completed(&self) -> usize {
        self.reads.len()
    }

    /// Keys whose history is not linearizable, with the history, for the failure message.
    pub fn non_linearizable_keys(&self) -> Vec<(u64, String)> {
        let mut events: BTreeMap<u64, Vec<(u64, usize, Action<EtcdOperation>)>> = BTreeMap::new();
        let mut process = 0usize;
        for (&value, &(key, invoked)) in &self.writes {
            // A write no node applied never happened (the run ends with every fault healed
            // and every node caught up).
            let Some(&completed) = self.write_applied.get(&value) else {
                continue;
            };
            let op = EtcdOperation::Write(EtcdStatus::Okay, value as u32);
            let list = events.entry(key).or_default();
            list.push((invoked, process, Action::Call(op)));
            list.push((completed, process, Action::Response(op)));
            process += 1;
        }
        for read in &self.reads {
            let op = EtcdOperation::Read(EtcdStatus::Okay, read.value);
            let list = events.entry(read.key).or_default();
            list.push((read.invoked, process, Action::Call(op)));
            list.push((read.completed, process, Action::Response(op)));
            process += 1;
        }
        let mut bad = Vec::new();
        for (key, mut list) in events {
            // Calls before responses at the same instant: operations that touch overlap.
            list.sort_by_key(|(at, _, action)| (*at, matches!(action, Action::Response(_))));
            let described: Vec<String> = list
                .iter()
                .map(|(at, p, action)| format!("  {at} p{p} {action:?}"))
                .collect();
            let history = History::from_actions(list.into_iter().map(|(_, p, a)| (p, a)).collect());
            if !WGLChecker::<EtcdSpecification>::is_linearizable(history) {
                bad.push((key, described.join("\n")));
            }
        }
        bad
    }
}
