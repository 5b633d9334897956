//! Per-call overhead of the client's policies and layers, beside well-known anchors in the
//! same run: governor (GCRA), tower's own concurrency limit and retry budget,
//! tower-resilience's circuit breaker and bulkhead, and the hashring and jumphash crates.
//!
//! Layers are measured by calling them over an always-ready service whose future is
//! `std::future::Ready`, polled once with a no-op waker: what remains is the layer's cost.
//!
//! Run: `cargo bench -p colony-client --bench client -- --warm-up-time 1 --measurement-time 2`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use colony_client::hash::{
    BoundedLoad, Distributor, Jump, MAGLEV_TABLE_SIZE, Maglev, Rendezvous, Ring, mix64,
};
use colony_client::layer::balance::{Balance, Change};
use colony_client::layer::breaker::BreakerLayer;
use colony_client::layer::bulkhead::BulkheadLayer;
use colony_client::layer::deadline::{DeadlineLayer, WithDeadline};
use colony_client::layer::fallback::FallbackLayer;
use colony_client::layer::hedge::{HedgeConfig, HedgeLayer};
use colony_client::layer::limit::LimitLayer;
use colony_client::layer::rate::RateLayer;
use colony_client::layer::retry::{Idempotency, RetryConfig, RetryIdempotentErrors, RetryLayer};
use colony_client::layer::shed::{HasPriority, ShedLayer, ShedLimit};
use colony_client::layer::throttle::ThrottleLayer;
use colony_client::layer::{BoxError, Clock, Observe};
use colony_client::policy::backoff::{Backoff, Jitter};
use colony_client::policy::balance::BalanceConfig;
use colony_client::policy::breaker::{Breaker, BreakerConfig, CallOutcome};
use colony_client::policy::budget::{BudgetConfig, RetryBudget};
use colony_client::policy::bulkhead::BulkheadConfig;
use colony_client::policy::limit::{ConcurrencyLimiter, LimitAlgorithm, LimitConfig};
use colony_client::policy::rate::{Gcra, Quota};
use colony_client::policy::shed::{Priority, ShedConfig};
use colony_client::policy::throttle::ThrottleConfig;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceBuilder};

fn poll_once<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("benchmarked futures complete at once"),
    }
}

/// Calls `service` once, polls the answer and drops it; whether it succeeded.
///
/// The answer is consumed here rather than handed to criterion: a `Result` with a boxed
/// error is 16 bytes, written by the inlined layers field by field and copied out whole,
/// a failed store-to-load forward that added 4–6 ns to every layer and anchor alike.
fn call<S: Service<R>, R>(service: &mut S, request: R) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("benchmarked services are always ready"),
    }
    poll_once(service.call(request)).is_ok()
}

#[derive(Debug, Clone, Copy)]
struct Ready;

impl<R> Service<R> for Ready {
    type Response = u32;
    type Error = Infallible;
    type Future = std::future::Ready<Result<u32, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: R) -> Self::Future {
        std::future::ready(Ok(1))
    }
}

#[derive(Debug, Clone, Copy)]
struct Get;

impl Idempotency for Get {
    fn is_idempotent(&self) -> bool {
        true
    }
}

/// The request the stacks are sent: idempotent, with no deadline of its own.
fn get() -> WithDeadline<Get> {
    WithDeadline {
        request: Get,
        deadline: None,
    }
}

impl HasPriority for Get {
    fn priority(&self) -> Priority {
        Priority::Normal
    }
}

/// AIMD starting at, and capped at, `limit` calls in flight.
fn aimd_limit(limit: u32) -> LimitConfig {
    LimitConfig {
        algorithm: LimitAlgorithm::aimd(),
        limit_initial: limit,
        limit_min: 1,
        limit_max: limit,
    }
}

fn breaker_config() -> BreakerConfig {
    BreakerConfig::default()
}

fn breakers(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker");
    let breaker = Breaker::new(breaker_config()).expect("valid");
    group.bench_function("colony core (acquire + success)", |b| {
        b.iter(|| {
            let (permit, _) = breaker.try_acquire(black_box(0));
            breaker.on_result(0, permit.expect("closed"), CallOutcome::success(0))
        })
    });
    let mut layer = BreakerLayer::new(
        Breaker::new(breaker_config()).expect("valid"),
        Observe::silent("b"),
    )
    .layer(Ready);
    group.bench_function("colony layer", |b| b.iter(|| call(&mut layer, ())));
    let mut anchor = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .minimum_number_of_calls(20)
        .build()
        .expect("valid")
        .layer(Ready);
    group.bench_function("tower-resilience layer", |b| {
        b.iter(|| call(&mut anchor, ()))
    });
    group.bench_function("bare service (baseline)", |b| {
        b.iter(|| call(&mut Ready, ()))
    });
    group.finish();
}

fn limiters(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate");
    let gcra = Gcra::new(Quota::per_second(1_000_000_000, u32::MAX));
    let mut now = 0u64;
    group.bench_function("colony gcra core (time given)", |b| {
        b.iter(|| {
            now += 1;
            gcra.check(black_box(now))
        })
    });
    let clock = Clock::new();
    let gcra_clocked = Gcra::new(Quota::per_second(1_000_000_000, u32::MAX));
    group.bench_function("colony gcra core + clock read", |b| {
        b.iter(|| gcra_clocked.check(clock.now_ns()))
    });
    let governor = governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::MAX));
    group.bench_function("governor direct check", |b| b.iter(|| governor.check()));
    let mut layer = RateLayer::new(
        Quota::per_second(1_000_000_000, u32::MAX),
        Observe::silent("r"),
        clock.clone(),
    )
    .layer(Ready);
    group.bench_function("colony rate layer", |b| b.iter(|| call(&mut layer, ())));
    group.finish();

    let mut group = c.benchmark_group("concurrency");
    let config = aimd_limit(1_000);
    let mut layer = LimitLayer::new(
        ConcurrencyLimiter::new(config),
        Observe::silent("l"),
        clock.clone(),
    )
    .layer(Ready);
    group.bench_function("colony adaptive limit layer", |b| {
        b.iter(|| call(&mut layer, ()))
    });
    let mut anchor = tower::limit::ConcurrencyLimitLayer::new(1_000).layer(Ready);
    group.bench_function("tower concurrency limit layer", |b| {
        b.iter(|| call(&mut anchor, ()))
    });
    group.finish();

    let mut group = c.benchmark_group("budget");
    let budget = RetryBudget::new(BudgetConfig::default());
    let mut now = 0u64;
    group.bench_function("colony deposit + withdraw", |b| {
        b.iter(|| {
            now += 1_000;
            budget.deposit(now);
            budget.try_withdraw(now)
        })
    });
    use tower::retry::budget::Budget;
    let tps = tower::retry::budget::TpsBudget::new(Duration::from_secs(10), 10, 0.1);
    group.bench_function("tower TpsBudget deposit + withdraw", |b| {
        b.iter(|| {
            tps.deposit();
            tps.withdraw()
        })
    });
    group.finish();
}

/// A current-thread tokio runtime with timers: the deadline layer arms one per call.
fn timer_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime builds")
}

fn stack(c: &mut Criterion) {
    // The deadline layer arms a tokio timer per call, so this group runs inside a runtime.
    let runtime = timer_runtime();
    let _entered = runtime.enter();
    let clock = Clock::new();
    let balance = Balance::new(
        BalanceConfig::default(),
        Observe::silent("bal"),
        clock.clone(),
        1,
    );
    for i in 0..10 {
        balance.update(Change::Insert(i, None, Ready));
    }
    let backoff = Backoff {
        base_ns: 1_000_000,
        cap_ns: 100_000_000,
        jitter: Jitter::Full,
    };
    let mut stack = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(1), clock.clone()))
        .layer(RateLayer::new(
            Quota::per_second(1_000_000_000, u32::MAX),
            Observe::silent("r"),
            clock.clone(),
        ))
        .layer(BreakerLayer::with_clock(
            Breaker::new(breaker_config()).expect("valid"),
            Observe::silent("b"),
            clock.clone(),
        ))
        .layer(RetryLayer::new(
            RetryConfig {
                retries_max: 3,
                backoff,
                deposits: true,
            },
            Arc::new(RetryBudget::new(BudgetConfig::default())),
            RetryIdempotentErrors,
            Observe::silent("retry"),
            clock.clone(),
            1,
        ))
        .service(balance.clone());
    let mut group = c.benchmark_group("stack");
    group.bench_function("deadline+rate+breaker+retry+balance", |b| {
        b.iter(|| call(&mut stack, get()))
    });
    let mut retry_only = RetryLayer::new(
        RetryConfig {
            retries_max: 3,
            backoff,
            deposits: true,
        },
        Arc::new(RetryBudget::new(BudgetConfig::default())),
        RetryIdempotentErrors,
        Observe::silent("retry"),
        clock.clone(),
        1,
    )
    .layer(Ready);
    group.bench_function("retry alone", |b| b.iter(|| call(&mut retry_only, get())));
    let mut deadline_only = DeadlineLayer::new(Duration::from_secs(1), clock.clone()).layer(Ready);
    group.bench_function("deadline alone", |b| {
        b.iter(|| call(&mut deadline_only, get()))
    });
    // The balancing core alone: pick and report with the time given (no clock, no future).
    // The report is consumed here (whether it ejected): the `Option<Ejection>` is written
    // field by field and copying it out whole to criterion stalled on store forwarding.
    let core = colony_client::policy::balance::Balancer::new(BalanceConfig::default());
    let mut core = core;
    for _ in 0..10 {
        core.add(None);
    }
    let mut rng = colony_base::SplitMix64::new(1);
    let mut now = 0u64;
    group.bench_function("balance core (pick + result, time given)", |b| {
        b.iter(|| {
            now += 100;
            let index = core.pick(black_box(now), &mut rng).expect("endpoints");
            core.handle_result(now + 50, index, 50, true).is_none()
        })
    });
    let mut balance_only = balance;
    group.bench_function("balance (p2c peak-ewma) alone", |b| {
        b.iter(|| call(&mut balance_only, get()))
    });
    // The same with every call timed: calls here start ~25 ns apart, so with the default
    // gap of 1 µs the handle above times one in about forty and counts the other successes
    // without reading the clock again.
    let mut balance_timed = Balance::new(
        BalanceConfig {
            rtt_sample_gap_ns: 0,
            ..BalanceConfig::default()
        },
        Observe::silent("bal"),
        clock.clone(),
        1,
    );
    for i in 0..10 {
        balance_timed.update(Change::Insert(i, None, Ready));
    }
    group.bench_function("balance alone, every call timed", |b| {
        b.iter(|| call(&mut balance_timed, get()))
    });
    // tower's own P2C over PeakEwma (10 endpoints, the same time constant and initial RTT).
    let endpoints: Vec<_> = (0..10)
        .map(|_| {
            tower::load::PeakEwma::new(
                Ready,
                Duration::from_millis(30),
                10e9,
                tower::load::CompleteOnResponse::default(),
            )
        })
        .collect();
    let mut tower_p2c: tower::balance::p2c::Balance<_, ()> =
        tower::balance::p2c::Balance::new(tower::discover::ServiceList::new::<()>(endpoints));
    group.bench_function("tower p2c balance over PeakEwma", |b| {
        b.iter(|| call(&mut tower_p2c, ()))
    });
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("hash lookup (100 nodes)");
    let mut ring = Ring::new(160);
    let mut rendezvous = Rendezvous::new();
    let mut jump = Jump::new();
    let mut maglev = Maglev::new(MAGLEV_TABLE_SIZE);
    let mut bounded = BoundedLoad::new(160, 1.25);
    let mut anchor_ring = hashring::HashRing::new();
    for node in 0..100u64 {
        ring.add(mix64(node));
        rendezvous.add(mix64(node));
        jump.add(mix64(node));
        maglev.add(mix64(node));
        bounded.add(mix64(node));
        for replica in 0..160u32 {
            anchor_ring.add((node, replica));
        }
    }
    let mut key = 0u64;
    let mut next = move || {
        key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
        key
    };
    group.bench_function("colony ring (160 vnodes)", |b| b.iter(|| ring.get(next())));
    group.bench_function("hashring crate (160 vnodes)", |b| {
        b.iter(|| anchor_ring.get(&next()).copied())
    });
    group.bench_function("colony jump", |b| b.iter(|| jump.get(next())));
    let jumphash = jumphash::JumpHasher::new();
    group.bench_function("jumphash crate", |b| b.iter(|| jumphash.slot(&next(), 100)));
    group.bench_function("colony maglev", |b| b.iter(|| maglev.get(next())));
    group.bench_function("colony rendezvous", |b| b.iter(|| rendezvous.get(next())));
    group.bench_function("colony bounded-load (assign)", |b| {
        b.iter(|| {
            let node = bounded.assign(next());
            bounded.release(node.expect("nodes exist"));
            node
        })
    });
    group.finish();
}

/// The layers the groups above leave out, each alone over `Ready`: bulkhead (beside
/// tower-resilience's), priority shedding, client-side throttling, hedging (past its first
/// 100 samples it sets a hedge delay on every call; the timer itself is set up only for a
/// call still pending after its first poll, never here) and fallback.
fn more_layers(c: &mut Criterion) {
    // The hedge layer would set up a tokio timer for a pending call: it needs a runtime.
    let runtime = timer_runtime();
    let _entered = runtime.enter();
    let clock = Clock::new();
    let mut group = c.benchmark_group("layers");
    let mut bulkhead = BulkheadLayer::new(
        BulkheadConfig {
            concurrency_max: 10,
            queue_max: 10,
            queue_timeout_ns: 1_000_000,
        },
        Observe::silent("k"),
    )
    .layer(Ready);
    group.bench_function("colony bulkhead layer", |b| {
        b.iter(|| call(&mut bulkhead, ()))
    });
    let mut anchor = tower_resilience_bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(10)
        .max_wait_duration(Duration::from_millis(1))
        .build()
        .expect("valid")
        .layer(Ready);
    group.bench_function("tower-resilience bulkhead layer", |b| {
        b.iter(|| call(&mut anchor, ()))
    });
    let mut shed = ShedLayer::new(
        ShedConfig::default(),
        ShedLimit::Fixed(10),
        Observe::silent("s"),
    )
    .layer(Ready);
    group.bench_function("colony shed layer", |b| b.iter(|| call(&mut shed, Get)));
    let mut throttle = ThrottleLayer::new(
        ThrottleConfig::default(),
        Observe::silent("t"),
        clock.clone(),
        1,
    )
    .layer(Ready);
    group.bench_function("colony throttle layer", |b| {
        b.iter(|| call(&mut throttle, ()))
    });
    let hedge = |latency_sample_gap_ns| {
        HedgeLayer::new(
            HedgeConfig {
                latency_sample_gap_ns,
                ..HedgeConfig::default()
            },
            Arc::new(RetryBudget::new(BudgetConfig::default())),
            RetryIdempotentErrors,
            Observe::silent("h"),
            clock.clone(),
        )
        .layer(Ready)
    };
    let mut hedge_sampled = hedge(HedgeConfig::default().latency_sample_gap_ns);
    group.bench_function("colony hedge layer", |b| {
        b.iter(|| call(&mut hedge_sampled, get()))
    });
    let mut hedge_timed = hedge(0);
    group.bench_function("colony hedge layer, every latency recorded", |b| {
        b.iter(|| call(&mut hedge_timed, get()))
    });
    // The fallback sits over layers that box their errors: `Ready`'s, boxed (a no-op map).
    let boxed = tower::util::MapErrLayer::new(|never: Infallible| -> BoxError { match never {} });
    let mut fallback = FallbackLayer::new(|_| Some(0u32)).layer(boxed.layer(Ready));
    group.bench_function("colony fallback layer", |b| {
        b.iter(|| call(&mut fallback, ()))
    });
    group.finish();
}

/// Runs `iters` calls of one closure from `make` on this thread while a second closure from
/// `make`, on another thread, calls the same shared layer in a loop: the cost per call under
/// contention (the machine has two cores; run unpinned).
fn contended<H: FnMut() + Send + 'static>(iters: u64, make: &impl Fn() -> H) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(2));
    let mut theirs = make();
    let helper = {
        let (stop, started) = (stop.clone(), started.clone());
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::spawn(move || {
            let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
            started.wait();
            while !stop.load(Ordering::Relaxed) {
                theirs();
            }
        })
    };
    let mut mine = make();
    started.wait();
    let start = Instant::now();
    for _ in 0..iters {
        mine();
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    helper.join().expect("the helper thread does not panic");
    elapsed
}

/// A closure factory calling a clone of `service` with `()` and discarding the answer.
fn caller<S>(service: &S) -> impl Fn() -> Box<dyn FnMut() + Send> + '_
where
    S: Service<(), Response = u32> + Clone + Send + 'static,
{
    move || {
        let mut service = service.clone();
        Box::new(move || {
            let _ = black_box(call(&mut service, ()));
        })
    }
}

fn paths(c: &mut Criterion) {
    let runtime = timer_runtime();
    let _entered = runtime.enter();
    let clock = Clock::new();
    let breaker = BreakerLayer::with_clock(
        Breaker::new(breaker_config()).expect("valid"),
        Observe::silent("b"),
        clock.clone(),
    )
    .layer(Ready);
    let rate = RateLayer::new(
        Quota::per_second(1_000_000_000, u32::MAX),
        Observe::silent("r"),
        clock.clone(),
    )
    .layer(Ready);
    let limit = LimitLayer::new(
        ConcurrencyLimiter::new(aimd_limit(1_000)),
        Observe::silent("l"),
        clock.clone(),
    )
    .layer(Ready);
    let tower_limit = tower::limit::ConcurrencyLimitLayer::new(1_000).layer(Ready);
    let balance = Balance::new(
        BalanceConfig::default(),
        Observe::silent("bal"),
        clock.clone(),
        1,
    );
    for i in 0..10 {
        balance.update(Change::Insert(i, None, Ready));
    }

    // Two threads on one shared instance.
    let mut group = c.benchmark_group("contention (2 threads)");
    let make = caller(&breaker);
    group.bench_function("colony breaker layer", |b| {
        b.iter_custom(|iters| contended(iters, &make))
    });
    let make = caller(&rate);
    group.bench_function("colony rate layer", |b| {
        b.iter_custom(|iters| contended(iters, &make))
    });
    let governor = Arc::new(governor::RateLimiter::direct(governor::Quota::per_second(
        NonZeroU32::MAX,
    )));
    let make = || {
        let governor = governor.clone();
        move || {
            let _ = black_box(governor.check());
        }
    };
    group.bench_function("governor direct check", |b| {
        b.iter_custom(|iters| contended(iters, &make))
    });
    let make = caller(&limit);
    group.bench_function("colony adaptive limit layer", |b| {
        b.iter_custom(|iters| contended(iters, &make))
    });
    let make = caller(&tower_limit);
    group.bench_function("tower concurrency limit layer", |b| {
        b.iter_custom(|iters| contended(iters, &make))
    });
    let make = || {
        let mut balance = balance.clone();
        move || {
            let request = get();
            let _ = black_box(call(&mut balance, request));
        }
    };
    group.bench_function("colony balance (p2c peak-ewma)", |b| {
        b.iter_custom(|iters| contended(iters, &make))
    });
    group.finish();

    // Refusals: the layer says no without calling the service.
    let mut group = c.benchmark_group("rejecting");
    let open = BreakerLayer::with_clock(
        Breaker::new(BreakerConfig {
            open_ns: 3_600_000_000_000,
            open_ns_max: 3_600_000_000_000,
            ..breaker_config()
        })
        .expect("valid"),
        Observe::silent("b"),
        clock.clone(),
    );
    open.breaker().force_open(clock.now_ns());
    let mut open = open.layer(Ready);
    group.bench_function("colony breaker layer (open)", |b| {
        b.iter(|| assert!(!call(&mut open, ()), "open"))
    });
    // One request an hour (the quota's fields are public).
    let hourly = Quota {
        emission_ns: 3_600_000_000_000,
        burst: 1,
    };
    let mut limited = RateLayer::new(hourly, Observe::silent("r"), clock.clone()).layer(Ready);
    let _ = call(&mut limited, ());
    group.bench_function("colony rate layer (limited)", |b| {
        b.iter(|| assert!(!call(&mut limited, ()), "limited"))
    });
    let governor = governor::RateLimiter::direct(governor::Quota::per_hour(NonZeroU32::MIN));
    let _ = governor.check();
    group.bench_function("governor direct check (limited)", |b| {
        b.iter(|| governor.check().expect_err("limited"))
    });
    let full = LimitLayer::new(
        ConcurrencyLimiter::new(aimd_limit(1)),
        Observe::silent("l"),
        clock.clone(),
    );
    // One call that never finishes holds the only place.
    let mut hold = full.layer(tower::service_fn(|()| {
        std::future::pending::<Result<u32, Infallible>>()
    }));
    let ready = hold.poll_ready(&mut Context::from_waker(Waker::noop()));
    assert!(
        matches!(ready, Poll::Ready(Ok(()))),
        "the limit layer is always ready"
    );
    let _held = hold.call(());
    assert_eq!(full.inflight(), 1, "one call holds the only place");
    let mut full = full.layer(Ready);
    group.bench_function("colony adaptive limit layer (at limit)", |b| {
        b.iter(|| assert!(!call(&mut full, ()), "at the limit"))
    });
    group.finish();

    // What one more layer costs inside a stack under a deadline layer (its clock reads are
    // shared): compare with `stack/deadline alone`.
    let mut group = c.benchmark_group("in a stack");
    let mut with_limit = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(1), clock.clone()))
        .layer(LimitLayer::new(
            ConcurrencyLimiter::new(aimd_limit(1_000)),
            Observe::silent("l"),
            clock.clone(),
        ))
        .service(Ready);
    let request = || get();
    group.bench_function("deadline+limit", |b| {
        b.iter(|| call(&mut with_limit, request()))
    });
    let mut with_balance = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(1), clock.clone()))
        .service(balance.clone());
    group.bench_function("deadline+balance", |b| {
        b.iter(|| call(&mut with_balance, request()))
    });
    let mut with_both = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(1), clock.clone()))
        .layer(LimitLayer::new(
            ConcurrencyLimiter::new(aimd_limit(1_000)),
            Observe::silent("l"),
            clock.clone(),
        ))
        .service(balance.clone());
    group.bench_function("deadline+limit+balance", |b| {
        b.iter(|| call(&mut with_both, request()))
    });
    let mut deadline_only = DeadlineLayer::new(Duration::from_secs(1), clock.clone()).layer(Ready);
    group.bench_function("deadline alone", |b| {
        b.iter(|| call(&mut deadline_only, request()))
    });
    group.finish();
}

criterion_group!(
    benches,
    breakers,
    limiters,
    stack,
    more_layers,
    paths,
    hashing
);
criterion_main!(benches);
