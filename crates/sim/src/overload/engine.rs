//! The event loop, the servers and the two kinds of client.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use colony_base::SplitMix64;

use super::report::{Metrics, OverloadReport};
use super::{ClientKind, Scenario};
use crate::queue::EventQueue;
use colony_client::policy::backoff::{Backoff, Jitter};
use colony_client::policy::balance::{BalanceConfig, Balancer};
use colony_client::policy::breaker::{Breaker, BreakerConfig, CallOutcome, Permit, WindowKind};
use colony_client::policy::budget::{BudgetConfig, RetryBudget};
use colony_client::policy::limit::{ConcurrencyLimiter, LimitAlgorithm, LimitConfig, Sample};
use colony_client::policy::rate::{KeyedGcra, Quota};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const ATTEMPT_TIMEOUT_NS: u64 = S;
const CHECK_TIMEOUT_NS: u64 = 500 * MS;
const RETRIES_MAX: u32 = 3;

/// Fixed parameters of one scenario (see the module doc).
#[derive(Debug, Clone)]
pub(super) struct Params {
    pub(super) clients: usize,
    pub(super) duration_ns: u64,
    /// (workers, service time) per backend.
    backends: Vec<(u32, u64)>,
    /// Offered logical load: (from, rps) steps.
    load_steps: Vec<(u64, f64)>,
    /// Worker count changes: (at, backend, workers).
    worker_changes: Vec<(u64, usize, u32)>,
    pub(super) capacity_rps: f64,
    pub(super) overload_ns: (u64, u64),
    pub(super) heal_ns: u64,
    health_checks: bool,
    /// Herd: (keys, flush time, hit latency).
    cache: Option<(u32, u64, u64)>,
}

impl Params {
    pub(super) fn of(scenario: Scenario) -> Self {
        match scenario {
            Scenario::RetryStorm => Params {
                clients: 10,
                duration_ns: 60 * S,
                backends: vec![(50, 50 * MS)],
                load_steps: vec![(0, 1_000.0)],
                worker_changes: vec![(10 * S, 0, 25), (40 * S, 0, 50)],
                capacity_rps: 500.0,
                overload_ns: (10 * S, 40 * S),
                heal_ns: 40 * S,
                health_checks: false,
                cache: None,
            },
            Scenario::HealthCascade => Params {
                clients: 10,
                duration_ns: 60 * S,
                backends: vec![(5, 50 * MS); 10],
                load_steps: vec![(0, 500.0), (10 * S, 2_000.0), (40 * S, 500.0)],
                worker_changes: vec![],
                capacity_rps: 1_000.0,
                overload_ns: (10 * S, 40 * S),
                heal_ns: 40 * S,
                health_checks: true,
                cache: None,
            },
            Scenario::ThunderingHerd => Params {
                clients: 10,
                duration_ns: 60 * S,
                backends: vec![(5, 20 * MS)],
                load_steps: vec![(0, 5_000.0)],
                worker_changes: vec![],
                capacity_rps: 5_000.0,
                overload_ns: (10 * S, 20 * S),
                heal_ns: 10 * S,
                health_checks: false,
                cache: Some((2_000, 10 * S, MS)),
            },
        }
    }

    pub(super) fn backends_count(&self) -> usize {
        self.backends.len()
    }

    fn load_rps(&self, now_ns: u64) -> f64 {
        self.load_steps
            .iter()
            .rev()
            .find(|(from, _)| *from <= now_ns)
            .map_or(0.0, |(_, rps)| *rps)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ev {
    Arrival { client: usize },
    Done { backend: usize, attempt: u64 },
    Timeout { attempt: u64 },
    Retry { logical: u64 },
    HealthTick,
    Workers { backend: usize, workers: u32 },
    Flush,
}

#[derive(Debug)]
struct Backend {
    workers: u32,
    busy: u32,
    service_ns: u64,
    queue: VecDeque<u64>,
    is_passing: bool,
    checks_failed: u32,
    checks_passed: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptState {
    Pending,
    Answered,
    TimedOut,
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// `None` for a health check.
    logical: Option<u64>,
    backend: usize,
    start_ns: u64,
    state: AttemptState,
    /// Events still to come for it (answer and timeout).
    events_left: u8,
    /// Resilient clients: the limiter's in-flight count at start, and the breaker permit.
    inflight: u32,
    permit: Option<Permit>,
}

#[derive(Debug)]
struct Logical {
    client: usize,
    start_ns: u64,
    key: u32,
    retries: u32,
    previous_delay_ns: u64,
}

/// The suite's policy cores, one set per client.
struct Resilient {
    limiter: ConcurrencyLimiter,
    budget: RetryBudget,
    breaker: Breaker,
    balancer: Balancer,
    fills: KeyedGcra<u32>,
    backoff: Backoff,
}

impl Resilient {
    fn new(backends: usize) -> Self {
        let mut balancer = Balancer::new(BalanceConfig {
            ejection_base_ns: S,
            rtt_initial_ns: 50 * MS,
            ..BalanceConfig::default()
        });
        for _ in 0..backends {
            balancer.add(None);
        }
        let breaker = Breaker::new(BreakerConfig {
            window: WindowKind::Count { calls: 100 },
            failure_rate_threshold: 0.5,
            calls_min: 20,
            open_ns: 2 * S,
            open_ns_max: 8 * S,
            half_open_probes: 5,
            ..BreakerConfig::default()
        })
        .expect("valid breaker config");
        Self {
            limiter: ConcurrencyLimiter::new(LimitConfig::new(LimitAlgorithm::vegas())),
            budget: RetryBudget::new(BudgetConfig {
                ratio: 0.1,
                retries_min_per_s: 1.0,
                window_ns: 10 * S,
            }),
            breaker,
            balancer,
            fills: KeyedGcra::new(Quota::per_second(5, 1), 1 << 16),
            backoff: Backoff {
                base_ns: 10 * MS,
                cap_ns: S,
                jitter: Jitter::Decorrelated,
            },
        }
    }
}

/// The simulated world.
pub(super) struct World {
    scenario: Scenario,
    kind: ClientKind,
    seed: u64,
    params: Params,
    now_ns: u64,
    events: EventQueue<Ev>,
    /// Every event handled, folded in order: equal seeds give equal hashes.
    trace: DefaultHasher,
    rng: SplitMix64,
    backends: Vec<Backend>,
    attempts: HashMap<u64, Attempt>,
    logicals: HashMap<u64, Logical>,
    next_id: u64,
    round_robin: Vec<usize>,
    resilient: Vec<Resilient>,
    /// Per key: `true` while fresh; a stale value stays readable after expiry.
    cache: Vec<bool>,
    metrics: Metrics,
}

impl World {
    pub(super) fn new(scenario: Scenario, kind: ClientKind, seed: u64) -> Self {
        let params = Params::of(scenario);
        let backends = params
            .backends
            .iter()
            .map(|(workers, service_ns)| Backend {
                workers: *workers,
                busy: 0,
                service_ns: *service_ns,
                queue: VecDeque::new(),
                is_passing: true,
                checks_failed: 0,
                checks_passed: 0,
            })
            .collect::<Vec<_>>();
        let resilient = match kind {
            ClientKind::Naive => Vec::new(),
            ClientKind::Resilient => (0..params.clients)
                .map(|_| Resilient::new(backends.len()))
                .collect(),
        };
        let cache = vec![true; params.cache.map_or(0, |(keys, _, _)| keys as usize)];
        let metrics = Metrics::new(params.duration_ns);
        Self {
            scenario,
            kind,
            seed,
            now_ns: 0,
            events: EventQueue::new(),
            trace: DefaultHasher::new(),
            rng: SplitMix64::new(seed),
            backends,
            attempts: HashMap::new(),
            logicals: HashMap::new(),
            next_id: 0,
            round_robin: vec![0; params.clients],
            resilient,
            cache,
            metrics,
            params,
        }
    }

    fn schedule(&mut self, at_ns: u64, event: Ev) {
        assert!(at_ns >= self.now_ns, "scheduling in the past");
        self.events.schedule(at_ns, event);
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn exponential_ns(&mut self, rate_per_s: f64) -> u64 {
        let uniform = ((self.rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        (-uniform.ln() / rate_per_s * 1e9) as u64
    }

    pub(super) fn run(mut self) -> OverloadReport {
        for client in 0..self.params.clients {
            let rate = self.params.load_rps(0) / self.params.clients as f64;
            let first = self.exponential_ns(rate);
            self.schedule(first, Ev::Arrival { client });
        }
        for (at, backend, workers) in self.params.worker_changes.clone() {
            self.schedule(at, Ev::Workers { backend, workers });
        }
        if self.params.health_checks {
            self.schedule(S, Ev::HealthTick);
        }
        if let Some((_, flush_ns, _)) = self.params.cache {
            self.schedule(flush_ns, Ev::Flush);
        }
        while let Some((at_ns, event)) = self.events.pop_until(self.params.duration_ns - 1) {
            self.now_ns = at_ns;
            (at_ns, event).hash(&mut self.trace);
            self.handle(event);
        }
        self.metrics.report(
            self.scenario,
            self.kind,
            &self.params,
            self.seed,
            self.trace.finish(),
        )
    }

    fn handle(&mut self, event: Ev) {
        match event {
            Ev::Arrival { client } => self.handle_arrival(client),
            Ev::Done { backend, attempt } => self.handle_done(backend, attempt),
            Ev::Timeout { attempt } => self.handle_timeout(attempt),
            Ev::Retry { logical } => self.try_logical(logical),
            Ev::HealthTick => self.handle_health_tick(),
            Ev::Workers { backend, workers } => {
                self.backends[backend].workers = workers;
                self.start_work(backend);
            }
            Ev::Flush => self.cache.iter_mut().for_each(|filled| *filled = false),
        }
    }

    fn handle_arrival(&mut self, client: usize) {
        let rate = self.params.load_rps(self.now_ns) / self.params.clients as f64;
        let next = self.now_ns + self.exponential_ns(rate).max(1);
        self.schedule(next, Ev::Arrival { client });
        let key = self.rng.below(self.cache.len().max(1) as u64) as u32;
        let id = self.id();
        self.logicals.insert(
            id,
            Logical {
                client,
                start_ns: self.now_ns,
                key,
                retries: 0,
                previous_delay_ns: 10 * MS,
            },
        );
        self.metrics.offered(self.now_ns);
        if let ClientKind::Resilient = self.kind {
            self.resilient[client].budget.deposit(self.now_ns);
        }
        self.try_logical(id);
    }

    /// One try of a logical request: a cache hit, an attempt sent, or a fast local failure.
    fn try_logical(&mut self, id: u64) {
        let Some(logical) = self.logicals.get(&id) else {
            return;
        };
        let (client, key) = (logical.client, logical.key);
        if self.cache.get(key as usize).copied().unwrap_or(false) {
            let hit_ns = self.params.cache.map_or(0, |(_, _, hit)| hit);
            self.metrics.attempt(self.now_ns);
            self.succeed(id, self.now_ns + hit_ns);
            return;
        }
        match self.kind {
            ClientKind::Naive => {
                let passing: Vec<usize> = (0..self.backends.len())
                    .filter(|b| self.backends[*b].is_passing)
                    .collect();
                if passing.is_empty() {
                    self.fail(id);
                    return;
                }
                let backend = passing[self.round_robin[client] % passing.len()];
                self.round_robin[client] += 1;
                self.send(id, backend, 0, None);
            }
            ClientKind::Resilient => {
                let now = self.now_ns;
                let cores = &mut self.resilient[client];
                if self.params.cache.is_some() && cores.fills.check(&key, now).is_err() {
                    // This key was refreshed a moment ago (single flight per key).
                    self.refuse(id);
                    return;
                }
                let (permit, _) = cores.breaker.try_acquire(now);
                let Ok(permit) = permit else {
                    self.refuse(id);
                    return;
                };
                let Ok(inflight) = cores.limiter.try_acquire() else {
                    // Never sent: a probe gives its slot back.
                    cores.breaker.on_cancel(permit);
                    self.refuse(id);
                    return;
                };
                let backend = cores
                    .balancer
                    .pick(now, &mut self.rng)
                    .expect("backends exist");
                self.send(id, backend, inflight, Some(permit));
            }
        }
    }

    fn send(&mut self, logical: u64, backend: usize, inflight: u32, permit: Option<Permit>) {
        let id = self.id();
        let timeout_at = match self.kind {
            ClientKind::Naive => self.now_ns + ATTEMPT_TIMEOUT_NS,
            ClientKind::Resilient => {
                let deadline = self.logicals[&logical].start_ns + ATTEMPT_TIMEOUT_NS;
                (self.now_ns + ATTEMPT_TIMEOUT_NS)
                    .min(deadline)
                    .max(self.now_ns + 1)
            }
        };
        self.attempts.insert(
            id,
            Attempt {
                logical: Some(logical),
                backend,
                start_ns: self.now_ns,
                state: AttemptState::Pending,
                events_left: 2,
                inflight,
                permit,
            },
        );
        self.metrics.attempt(self.now_ns);
        self.schedule(timeout_at, Ev::Timeout { attempt: id });
        self.enqueue(backend, id);
    }

    fn enqueue(&mut self, backend: usize, attempt: u64) {
        self.backends[backend].queue.push_back(attempt);
        self.start_work(backend);
    }

    fn start_work(&mut self, backend: usize) {
        loop {
            let server = &mut self.backends[backend];
            if server.busy >= server.workers {
                return;
            }
            let Some(attempt) = server.queue.pop_front() else {
                return;
            };
            server.busy += 1;
            let done_at = self.now_ns + server.service_ns;
            self.schedule(done_at, Ev::Done { backend, attempt });
        }
    }

    /// Records the first of an attempt's two events (its answer or its timeout) as its
    /// outcome; the second finds it settled and is ignored. Returns the attempt if this
    /// event settled it.
    fn settle(&mut self, id: u64, outcome: AttemptState) -> Option<Attempt> {
        let attempt = self
            .attempts
            .get_mut(&id)
            .expect("attempt known until both events");
        attempt.events_left -= 1;
        let was_pending = attempt.state == AttemptState::Pending;
        if was_pending {
            attempt.state = outcome;
        }
        let settled = was_pending.then_some(*attempt);
        if attempt.events_left == 0 {
            self.attempts.remove(&id);
        }
        settled
    }

    /// Resilient clients: feed one attempt's outcome to the client's limiter, breaker and
    /// balancer.
    fn feed_cores(&mut self, attempt: &Attempt, logical: u64, is_success: bool) {
        let ClientKind::Resilient = self.kind else {
            return;
        };
        let Some(client) = self.logicals.get(&logical).map(|l| l.client) else {
            return;
        };
        let now = self.now_ns;
        let rtt_ns = now - attempt.start_ns;
        let cores = &mut self.resilient[client];
        let is_dropped = !is_success;
        cores.limiter.release(Sample {
            now_ns: now,
            rtt_ns,
            inflight: attempt.inflight,
            is_dropped,
        });
        if let Some(permit) = attempt.permit {
            let outcome = if is_success {
                CallOutcome::success(rtt_ns)
            } else {
                CallOutcome::failure(rtt_ns)
            };
            cores.breaker.on_result(now, permit, outcome);
        }
        cores
            .balancer
            .handle_result(now, attempt.backend, rtt_ns, is_success);
    }

    fn handle_done(&mut self, backend: usize, id: u64) {
        self.backends[backend].busy -= 1;
        self.start_work(backend);
        // None: the client gave up already, and the work was wasted.
        let Some(attempt) = self.settle(id, AttemptState::Answered) else {
            return;
        };
        let Some(logical) = attempt.logical else {
            self.handle_check_result(backend, true);
            return;
        };
        self.feed_cores(&attempt, logical, true);
        if let Some(key) = self.logicals.get(&logical).map(|l| l.key)
            && let Some(filled) = self.cache.get_mut(key as usize)
        {
            *filled = true;
        }
        self.succeed(logical, self.now_ns);
    }

    fn handle_timeout(&mut self, id: u64) {
        let Some(attempt) = self.settle(id, AttemptState::TimedOut) else {
            return;
        };
        let Some(logical) = attempt.logical else {
            self.handle_check_result(attempt.backend, false);
            return;
        };
        self.feed_cores(&attempt, logical, false);
        match self.kind {
            ClientKind::Naive => {
                let Some(state) = self.logicals.get_mut(&logical) else {
                    return;
                };
                if state.retries < RETRIES_MAX {
                    state.retries += 1;
                    self.try_logical(logical);
                } else {
                    self.fail(logical);
                }
            }
            ClientKind::Resilient => {
                self.refuse(logical);
            }
        }
    }

    /// Resilient clients, when a try is refused or fails: the fallback answers with the
    /// stale cached value if there is one (herd); otherwise retry or fail.
    fn refuse(&mut self, id: u64) {
        if !self.logicals.contains_key(&id) {
            return;
        }
        if let Some((_, _, hit_ns)) = self.params.cache {
            self.metrics.fallback();
            self.succeed(id, self.now_ns + hit_ns);
            return;
        }
        self.retry_or_fail(id);
    }

    /// Resilient clients: schedule a retry if the budget, the retry count and the deadline
    /// allow one; otherwise the logical request fails.
    fn retry_or_fail(&mut self, id: u64) {
        let Some(logical) = self.logicals.get(&id) else {
            return;
        };
        let cores = &self.resilient[logical.client];
        let delay_ns =
            cores
                .backoff
                .delay_ns(logical.retries, logical.previous_delay_ns, &mut self.rng);
        let at_ns = self.now_ns + delay_ns;
        let deadline = logical.start_ns + ATTEMPT_TIMEOUT_NS;
        if logical.retries >= RETRIES_MAX
            || at_ns >= deadline
            || !cores.budget.try_withdraw(self.now_ns)
        {
            self.fail(id);
            return;
        }
        let logical = self.logicals.get_mut(&id).expect("checked above");
        logical.retries += 1;
        logical.previous_delay_ns = delay_ns;
        self.schedule(at_ns, Ev::Retry { logical: id });
    }

    fn succeed(&mut self, id: u64, at_ns: u64) {
        let logical = self.logicals.remove(&id).expect("succeeds once");
        self.metrics.success(self.now_ns, at_ns - logical.start_ns);
    }

    fn fail(&mut self, id: u64) {
        self.logicals.remove(&id);
    }

    fn handle_health_tick(&mut self) {
        self.schedule(self.now_ns + S, Ev::HealthTick);
        // Discovery's view: resilient clients hear of critical backends and treat them as
        // ejections, which their balancer caps at half of the backends.
        if let ClientKind::Resilient = self.kind {
            let critical: Vec<usize> = (0..self.backends.len())
                .filter(|b| !self.backends[*b].is_passing)
                .collect();
            for cores in &mut self.resilient {
                for backend in &critical {
                    cores.balancer.handle_peer_ejection(self.now_ns, *backend);
                }
            }
        }
        for backend in 0..self.backends.len() {
            let id = self.id();
            self.attempts.insert(
                id,
                Attempt {
                    logical: None,
                    backend,
                    start_ns: self.now_ns,
                    state: AttemptState::Pending,
                    events_left: 2,
                    inflight: 0,
                    permit: None,
                },
            );
            self.schedule(self.now_ns + CHECK_TIMEOUT_NS, Ev::Timeout { attempt: id });
            self.enqueue(backend, id);
        }
    }

    fn handle_check_result(&mut self, backend: usize, is_pass: bool) {
        let server = &mut self.backends[backend];
        if is_pass {
            server.checks_passed += 1;
            server.checks_failed = 0;
            if !server.is_passing && server.checks_passed >= 2 {
                server.is_passing = true;
            }
        } else {
            server.checks_failed += 1;
            server.checks_passed = 0;
            if server.is_passing && server.checks_failed >= 3 {
                server.is_passing = false;
            }
        }
        let passing = self.backends.iter().filter(|b| b.is_passing).count();
        self.metrics.passing(self.now_ns, passing);
    }
}
