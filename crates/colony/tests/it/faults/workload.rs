//! The clients of the fault tests: threads issuing reads, writes and compare-and-sets on
//! single-key registers, and list-append transactions, through the Consul HTTP API of a random
//! server, recording every operation's invocation and completion in real-time order.
//!
//! Outcomes follow Jepsen's convention: `Ok` (acknowledged), `Fail` (definitely not applied),
//! `Info` (unknown: a timeout or an error after the request was sent). A client whose operation
//! ended `Info` continues as a new process, so each process has at most one open operation.

use super::bed::Bed;
use crate::support::{Response, http_with_timeout, prometheus_value};
use base64::Engine as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a client waits for one HTTP answer before calling the operation unknown.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Operations on one key before it is retired for a fresh one (keeps each key's history short,
/// so the linearizability search stays fast).
const OPS_PER_REGISTER: u32 = 60;

/// Transactions touching one list key before it is retired.
const OPS_PER_LIST: u32 = 40;

/// Keys in use at once, per workload.
const LIVE_KEYS: usize = 12;

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// Definitely not applied.
    Fail,
    /// May or may not have been applied.
    Info,
}

/// A single-register operation, with what it returned.
#[derive(Debug, Clone, Copy)]
pub enum RegisterOp {
    /// A read (`?consistent` or default) and the value it saw (`None`: no such key).
    Read(Option<u32>),
    /// A plain write of a unique value.
    Write(u32),
    /// Compare-and-set: from the value a previous read saw (through its `ModifyIndex`) to a new one.
    Cas(u32, u32),
}

/// One register operation, between its invocation and completion sequence numbers.
#[derive(Debug, Clone)]
pub struct RegisterRecord {
    pub key: u32,
    pub process: usize,
    pub op: RegisterOp,
    pub outcome: Outcome,
    pub invoked: u64,
    pub completed: u64,
}

/// A list-append micro-operation: read a list, or append a unique value to it.
#[derive(Debug, Clone)]
pub enum Mop {
    /// The list read (`None` before completion or when the transaction did not commit).
    Read(u32, Option<Vec<u32>>),
    Append(u32, u32),
}

/// One list-append transaction.
#[derive(Debug, Clone)]
pub struct TxnRecord {
    pub process: usize,
    pub mops: Vec<Mop>,
    pub outcome: Outcome,
    pub invoked: u64,
    pub completed: u64,
}

/// Counts of what the clients saw, for the report.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub fail: AtomicU64,
    pub info: AtomicU64,
}

/// Keys in rotation: each is used for a bounded number of operations, then replaced.
struct KeyPool {
    live: Vec<(u32, u32)>,
    next: u32,
    budget: u32,
}

impl KeyPool {
    fn new(budget: u32) -> KeyPool {
        KeyPool {
            live: (0..LIVE_KEYS as u32).map(|k| (k, budget)).collect(),
            next: LIVE_KEYS as u32,
            budget,
        }
    }

    /// `count` distinct live keys, each charged one operation.
    fn take(&mut self, rng: &mut Rng, count: usize) -> Vec<u32> {
        let mut keys = Vec::new();
        while keys.len() < count {
            let slot = rng.below(self.live.len());
            let (key, left) = &mut self.live[slot];
            if keys.contains(key) {
                continue;
            }
            keys.push(*key);
            *left -= 1;
            if *left == 0 {
                self.live[slot] = (self.next, self.budget);
                self.next += 1;
            }
        }
        keys
    }

    fn all_used(&self) -> std::ops::Range<u32> {
        0..self.next
    }
}

/// A small xorshift generator, seeded per thread (the test's choices need no cryptography).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The shared state of all client threads.
pub struct Workload {
    bed: Arc<Bed>,
    servers: Vec<SocketAddr>,
    stop: AtomicBool,
    sequence: AtomicU64,
    next_value: AtomicU32,
    next_process: AtomicUsize,
    register_keys: Mutex<KeyPool>,
    list_keys: Mutex<KeyPool>,
    /// Every register operation.
    pub registers: Mutex<Vec<RegisterRecord>>,
    /// Every list-append transaction.
    pub txns: Mutex<Vec<TxnRecord>>,
    /// Outcome counts over both workloads.
    pub tally: Tally,
}

impl Workload {
    /// A workload against the servers' HTTP addresses.
    pub fn new(bed: Arc<Bed>, servers: Vec<SocketAddr>) -> Arc<Workload> {
        Arc::new(Workload {
            bed,
            servers,
            stop: AtomicBool::new(false),
            sequence: AtomicU64::new(0),
            next_value: AtomicU32::new(1),
            next_process: AtomicUsize::new(0),
            register_keys: Mutex::new(KeyPool::new(OPS_PER_REGISTER)),
            list_keys: Mutex::new(KeyPool::new(OPS_PER_LIST)),
            registers: Mutex::new(Vec::new()),
            txns: Mutex::new(Vec::new()),
            tally: Tally::default(),
        })
    }

    /// Starts `registers` register clients and `lists` list-append clients.
    pub fn start(
        self: &Arc<Self>,
        registers: usize,
        lists: usize,
    ) -> Vec<std::thread::JoinHandle<()>> {
        let mut threads = Vec::new();
        for i in 0..registers + lists {
            let workload = Arc::clone(self);
            let is_register = i < registers;
            threads.push(std::thread::spawn(move || {
                workload.bed.enter_client_host();
                let mut rng = Rng::new(i as u64 + 1);
                let mut process = workload.new_process();
                while !workload.stop.load(Ordering::Relaxed) {
                    let outcome = if is_register {
                        workload.register_op(&mut rng, process)
                    } else {
                        workload.list_txn(&mut rng, process)
                    };
                    if outcome == Outcome::Info {
                        process = workload.new_process();
                    }
                }
            }));
        }
        threads
    }

    /// Asks every client to finish its current operation and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The register keys used so far.
    pub fn register_keys_used(&self) -> std::ops::Range<u32> {
        self.register_keys.lock().expect("workload lock").all_used()
    }

    /// The list keys used so far.
    pub fn list_keys_used(&self) -> std::ops::Range<u32> {
        self.list_keys.lock().expect("workload lock").all_used()
    }

    fn new_process(&self) -> usize {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    fn tick(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::SeqCst)
    }

    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Ok => &self.tally.ok,
            Outcome::Fail => &self.tally.fail,
            Outcome::Info => &self.tally.info,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn server(&self, rng: &mut Rng) -> SocketAddr {
        self.servers[rng.below(self.servers.len())]
    }

    /// A read of a register, recorded (only when it answered: a failed read has no effect to
    /// check). Even processes read with `?consistent` (ReadIndex), odd ones with Consul's
    /// default mode (the leader's lease): both must be linearizable. Returns the value and
    /// its `ModifyIndex`.
    pub fn read_register(
        &self,
        server: SocketAddr,
        key: u32,
        process: usize,
    ) -> Option<(Option<u32>, u64)> {
        let invoked = self.tick();
        let mode = if process.is_multiple_of(2) {
            "?consistent"
        } else {
            ""
        };
        let answer = get_value(server, &format!("/v1/kv/reg/{key}{mode}"))?;
        let value = answer.as_ref().map(|(bytes, _)| parse_u32(bytes));
        self.record_register(key, process, RegisterOp::Read(value), Outcome::Ok, invoked);
        Some((value, answer.map_or(0, |(_, index)| index)))
    }

    fn register_op(&self, rng: &mut Rng, process: usize) -> Outcome {
        let key = self
            .register_keys
            .lock()
            .expect("workload lock")
            .take(rng, 1)[0];
        let server = self.server(rng);
        match rng.below(100) {
            0..40 => {
                self.read_register(server, key, process);
                Outcome::Ok
            }
            40..75 => {
                let value = self.next_value.fetch_add(1, Ordering::Relaxed);
                let invoked = self.tick();
                let outcome = match put(
                    server,
                    &format!("/v1/kv/reg/{key}"),
                    value.to_string().as_bytes(),
                ) {
                    Some(body) if body == "true" => Outcome::Ok,
                    _ => Outcome::Info,
                };
                self.record_register(key, process, RegisterOp::Write(value), outcome, invoked);
                outcome
            }
            _ => {
                let Some((Some(current), index)) = self.read_register(server, key, process) else {
                    return Outcome::Ok;
                };
                let value = self.next_value.fetch_add(1, Ordering::Relaxed);
                let invoked = self.tick();
                let path = format!("/v1/kv/reg/{key}?cas={index}");
                let outcome = match put(server, &path, value.to_string().as_bytes()).as_deref() {
                    Some("true") => Outcome::Ok,
                    Some("false") => Outcome::Fail,
                    _ => Outcome::Info,
                };
                self.record_register(
                    key,
                    process,
                    RegisterOp::Cas(current, value),
                    outcome,
                    invoked,
                );
                outcome
            }
        }
    }

    fn record_register(
        &self,
        key: u32,
        process: usize,
        op: RegisterOp,
        outcome: Outcome,
        invoked: u64,
    ) {
        let completed = self.tick();
        self.registers
            .lock()
            .expect("workload lock")
            .push(RegisterRecord {
                key,
                process,
                op,
                outcome,
                invoked,
                completed,
            });
        self.count(outcome);
    }

    /// One transaction over 1-3 list keys: read each key's list and `ModifyIndex` consistently,
    /// then commit a Consul transaction that checks every index it read and sets the appended
    /// lists, so it commits only if nothing it read has changed.
    fn list_txn(&self, rng: &mut Rng, process: usize) -> Outcome {
        let width = 1 + rng.below(3);
        let keys = self
            .list_keys
            .lock()
            .expect("workload lock")
            .take(rng, width);
        let mut mops: Vec<Mop> = keys
            .iter()
            .map(|&key| {
                if rng.below(2) == 0 {
                    Mop::Read(key, None)
                } else {
                    Mop::Append(key, self.next_value.fetch_add(1, Ordering::Relaxed))
                }
            })
            .collect();
        let server = self.server(rng);
        let invoked = self.tick();
        let mut reads = Vec::new();
        for &key in &keys {
            match get_value(server, &format!("/v1/kv/list/{key}?consistent")) {
                Some(answer) => {
                    reads.push(answer.map(|(bytes, index)| (parse_list(&bytes), index)))
                }
                None => return self.record_txn(process, mops, Outcome::Fail, invoked),
            }
        }
        let ops: Vec<serde_json::Value> = mops
            .iter()
            .zip(&reads)
            .map(|(mop, read)| {
                let (list, index) = read.clone().unwrap_or_default();
                match mop {
                    Mop::Read(key, _) if index == 0 => serde_json::json!(
                        {"KV": {"Verb": "check-not-exists", "Key": format!("list/{key}")}}
                    ),
                    Mop::Read(key, _) => serde_json::json!(
                        {"KV": {"Verb": "check-index", "Key": format!("list/{key}"), "Index": index}}
                    ),
                    Mop::Append(key, value) => {
                        let mut list = list;
                        list.push(*value);
                        let text: Vec<String> = list.iter().map(u32::to_string).collect();
                        let encoded = base64::engine::general_purpose::STANDARD.encode(text.join(","));
                        serde_json::json!({"KV": {
                            "Verb": "cas", "Key": format!("list/{key}"), "Value": encoded, "Index": index
                        }})
                    }
                }
            })
            .collect();
        let body = serde_json::to_vec(&ops).expect("json");
        let outcome = match http_with_timeout(server, "PUT", "/v1/txn", &body, CLIENT_TIMEOUT) {
            Ok(response) if response.status == 200 => Outcome::Ok,
            Ok(response) if response.status == 409 => Outcome::Fail,
            _ => Outcome::Info,
        };
        if outcome == Outcome::Ok {
            for (mop, read) in mops.iter_mut().zip(&reads) {
                if let Mop::Read(_, seen) = mop {
                    *seen = Some(read.clone().map(|(list, _)| list).unwrap_or_default());
                }
            }
        }
        self.record_txn(process, mops, outcome, invoked)
    }

    fn record_txn(
        &self,
        process: usize,
        mops: Vec<Mop>,
        outcome: Outcome,
        invoked: u64,
    ) -> Outcome {
        let completed = self.tick();
        self.txns.lock().expect("workload lock").push(TxnRecord {
            process,
            mops,
            outcome,
            invoked,
            completed,
        });
        self.count(outcome);
        outcome
    }

    /// A Prometheus counter summed over the servers that answer (restarted ones count from 0).
    pub fn counter_total(&self, name: &str) -> f64 {
        let value = |server: &SocketAddr| {
            let path = "/v1/agent/metrics?format=prometheus";
            let response = http_with_timeout(*server, "GET", path, b"", CLIENT_TIMEOUT).ok()?;
            prometheus_value(&response.text(), name)
        };
        self.servers.iter().filter_map(value).sum()
    }

    /// A final consistent read of list `key`, retried until some server answers.
    pub fn final_list(&self, key: u32) -> Vec<u32> {
        for attempt in 0..100 {
            let server = self.servers[attempt % self.servers.len()];
            if let Some(answer) = get_value(server, &format!("/v1/kv/list/{key}?consistent")) {
                return answer
                    .map(|(bytes, _)| parse_list(&bytes))
                    .unwrap_or_default();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no server answered a consistent read of list/{key} after the faults healed");
    }
}

/// GET a key: `Some(Some((value, ModifyIndex)))`, `Some(None)` when absent, `None` on error.
fn get_value(server: SocketAddr, path: &str) -> Option<Option<(Vec<u8>, u64)>> {
    let response: Response = http_with_timeout(server, "GET", path, b"", CLIENT_TIMEOUT).ok()?;
    match response.status {
        404 => Some(None),
        200 => {
            let json = response.json();
            let entry = json.get(0)?;
            let index = entry.get("ModifyIndex")?.as_u64()?;
            let value = entry.get("Value")?.as_str().unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value)
                .ok()?;
            Some(Some((bytes, index)))
        }
        _ => None,
    }
}

/// PUT, returning the body of a 200 answer.
fn put(server: SocketAddr, path: &str, body: &[u8]) -> Option<String> {
    let response = http_with_timeout(server, "PUT", path, body, CLIENT_TIMEOUT).ok()?;
    (response.status == 200).then(|| response.text().trim().to_string())
}

fn parse_u32(bytes: &[u8]) -> u32 {
    let text = String::from_utf8_lossy(bytes);
    text.parse()
        .unwrap_or_else(|_| panic!("register holds {text:?}, not a number the test wrote"))
}

fn parse_list(bytes: &[u8]) -> Vec<u32> {
    let text = String::from_utf8_lossy(bytes);
    if text.is_empty() {
        return Vec::new();
    }
    text.split(',')
        .map(|item| {
            item.parse()
                .unwrap_or_else(|_| panic!("list holds {text:?}"))
        })
        .collect()
}
