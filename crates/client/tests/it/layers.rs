use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use colony_client::layer::breaker::BreakerLayer;
use colony_client::layer::bulkhead::BulkheadLayer;
use colony_client::layer::deadline::{Deadline, HasDeadline, WithDeadline};
use colony_client::layer::fallback::FallbackLayer;
use colony_client::layer::hedge::{HedgeConfig, HedgeLayer};
use colony_client::layer::limit::LimitLayer;
use colony_client::layer::rate::RateLayer;
use colony_client::layer::retry::{Idempotency, RetryConfig, RetryIdempotentErrors, RetryLayer};
use colony_client::layer::shed::{HasPriority, ShedLayer, ShedLimit};
use colony_client::layer::{BoxError, Clock, Error, Observe};
use colony_client::policy::backoff::{Backoff, Jitter};
use colony_client::policy::breaker::{
    Breaker, BreakerConfig, BreakerRejection, BreakerState, WindowKind,
};
use colony_client::policy::budget::{BudgetConfig, RetryBudget};
use colony_client::policy::bulkhead::{BulkheadConfig, BulkheadRejection};
use colony_client::policy::limit::{ConcurrencyLimiter, LimitAlgorithm, LimitConfig};
use colony_client::policy::rate::Quota;
use colony_client::policy::shed::{Priority, ShedConfig};
use tower::{Layer, Service, ServiceExt, service_fn};

fn error_of(result: &Result<impl Sized, BoxError>) -> Option<Error> {
    result
        .as_ref()
        .err()
        .and_then(|e| Error::from_box(e).cloned())
}

#[derive(Debug, Clone)]
struct Request {
    idempotent: bool,
    priority: Priority,
}

impl Idempotency for Request {
    fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

impl HasPriority for Request {
    fn priority(&self) -> Priority {
        self.priority
    }
}

fn get() -> WithDeadline<Request> {
    WithDeadline {
        request: Request {
            idempotent: true,
            priority: Priority::Normal,
        },
        deadline: None,
    }
}

/// A breaker that trips after 5 failures in a window of 10 calls, stays open 1 s, then lets
/// one probe through; on tokio's clock.
fn probing_breaker_layer() -> BreakerLayer {
    let config = BreakerConfig {
        window: WindowKind::Count { calls: 10 },
        calls_min: 5,
        open_ns: 1_000_000_000,
        half_open_probes: 1,
        ..BreakerConfig::default()
    };
    BreakerLayer::with_clock(
        Breaker::new(config).expect("valid"),
        Observe::silent("dep"),
        Clock::tokio(),
    )
}

#[tokio::test(start_paused = true)]
async fn breaker_layer_trips_rejects_falls_back_and_recovers() {
    let healthy = Arc::new(AtomicU32::new(0));
    let flag = healthy.clone();
    let service = service_fn(move |_: ()| {
        let ok = flag.load(Ordering::SeqCst) == 1;
        async move {
            if ok {
                Ok::<_, BoxError>("fresh")
            } else {
                Err("down".into())
            }
        }
    });
    let layer = probing_breaker_layer();
    let mut service = layer.layer(service);
    for _ in 0..5 {
        let result = service.ready().await.expect("ready").call(()).await;
        assert!(result.is_err());
    }
    assert_eq!(layer.breaker().state(), BreakerState::Open);
    let refused = service.ready().await.expect("ready").call(()).await;
    assert!(matches!(
        error_of(&refused),
        Some(Error::Breaker(BreakerRejection::Open { .. }))
    ));
    // The fallback answers refusals only.
    let mut with_fallback = FallbackLayer::new(|_: &Error| Some("cached")).layer(service.clone());
    assert_eq!(
        with_fallback
            .ready()
            .await
            .expect("ready")
            .call(())
            .await
            .expect("fallback"),
        "cached"
    );
    // The dependency heals; after the open time one probe closes the breaker.
    healthy.store(1, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(1_001)).await;
    let probe = service.ready().await.expect("ready").call(()).await;
    assert_eq!(probe.expect("probe passes"), "fresh");
    assert_eq!(layer.breaker().state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_layer_queues_then_rejects_and_times_out() {
    let service = service_fn(|delay_ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        Ok::<_, BoxError>(delay_ms)
    });
    let config = BulkheadConfig {
        concurrency_max: 1,
        queue_max: 1,
        queue_timeout_ns: 50_000_000,
    };
    let layer = BulkheadLayer::new(config, Observe::silent("bulk"));
    let service = layer.layer(service);
    let first = tokio::spawn(service.clone().oneshot(100));
    tokio::task::yield_now().await;
    assert_eq!(layer.bulkhead().inflight(), 1);
    let queued = tokio::spawn(service.clone().oneshot(10));
    tokio::task::yield_now().await;
    assert_eq!(layer.bulkhead().queued(), 1);
    let full = service.clone().oneshot(1).await;
    assert_eq!(
        error_of(&full),
        Some(Error::Bulkhead(BulkheadRejection::Full))
    );
    // The queued call waits 50 ms at most; the first call holds its slot for 100 ms.
    let timed_out = queued.await.expect("task");
    assert_eq!(
        error_of(&timed_out),
        Some(Error::Bulkhead(BulkheadRejection::QueueTimeout))
    );
    assert_eq!(first.await.expect("task").expect("first succeeds"), 100);
    // Released: the next call goes straight through.
    assert_eq!(service.clone().oneshot(1).await.expect("slot free"), 1);
    assert_eq!(
        (layer.bulkhead().inflight(), layer.bulkhead().queued()),
        (0, 0)
    );
}

fn retry_layer(budget: Arc<RetryBudget>) -> RetryLayer<RetryIdempotentErrors> {
    let backoff = Backoff {
        base_ns: 10_000_000,
        cap_ns: 100_000_000,
        jitter: Jitter::Full,
    };
    let config = RetryConfig {
        retries_max: 3,
        backoff,
        deposits: true,
    };
    RetryLayer::new(
        config,
        budget,
        RetryIdempotentErrors,
        Observe::silent("retry"),
        Clock::tokio(),
        7,
    )
}

fn flaky(
    failures: u32,
) -> (
    Arc<AtomicU32>,
    impl Service<WithDeadline<Request>, Response = u32, Error = BoxError, Future: Send> + Clone,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let service = service_fn(move |_: WithDeadline<Request>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n <= failures {
                Err::<u32, BoxError>("flaky".into())
            } else {
                Ok(n)
            }
        }
    });
    (calls, service)
}

#[tokio::test(start_paused = true)]
async fn retry_layer_retries_idempotent_only_within_budget_and_deadline() {
    let budget = Arc::new(RetryBudget::new(BudgetConfig::default()));
    let (calls, service) = flaky(2);
    let answer = retry_layer(budget.clone())
        .layer(service)
        .oneshot(get())
        .await;
    assert_eq!(answer.expect("third attempt succeeds"), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Not idempotent: one attempt.
    let (calls, service) = flaky(2);
    let mut request = get();
    request.request.idempotent = false;
    assert!(
        retry_layer(budget.clone())
            .layer(service)
            .oneshot(request)
            .await
            .is_err()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A deadline that a backoff would pass: no retry.
    let (calls, service) = flaky(2);
    let clock = Clock::tokio();
    let mut request = get();
    request.deadline = Some(Deadline {
        at_ns: clock.now_ns() + 1_000,
    });
    assert!(request.deadline().is_some());
    assert!(
        retry_layer(budget)
            .layer(service)
            .oneshot(request)
            .await
            .is_err()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // An empty budget (no reserve, no deposits beyond this one): no retry.
    let empty = Arc::new(RetryBudget::new(BudgetConfig {
        ratio: 0.0,
        retries_min_per_s: 0.0,
        ..BudgetConfig::default()
    }));
    let (calls, service) = flaky(2);
    assert!(
        retry_layer(empty)
            .layer(service)
            .oneshot(get())
            .await
            .is_err()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn hedge_layer_sends_backup_after_quantile_and_cancels_loser() {
    // Call n takes 1 ms, except every 20th takes 1 s (the slow tail).
    let calls = Arc::new(AtomicU32::new(0));
    let dropped = Arc::new(AtomicU32::new(0));
    let (counter, drops) = (calls.clone(), dropped.clone());
    let service = service_fn(move |_: WithDeadline<Request>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        struct OnDrop(Arc<AtomicU32>, bool);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let guard = OnDrop(drops.clone(), false);
        async move {
            let mut guard = guard;
            let ms = if n % 20 == 19 { 1_000 } else { 1 };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            guard.1 = true;
            Ok::<_, BoxError>(ms)
        }
    });
    let budget = Arc::new(RetryBudget::new(BudgetConfig::default()));
    let config = HedgeConfig {
        samples_min: 50,
        ..HedgeConfig::default()
    };
    let hedge = HedgeLayer::new(
        config,
        budget,
        RetryIdempotentErrors,
        Observe::silent("hedge"),
        Clock::tokio(),
    );
    let service = hedge.layer(service);
    let mut worst = Duration::ZERO;
    for _ in 0..400 {
        let start = tokio::time::Instant::now();
        service.clone().oneshot(get()).await.expect("answers");
        worst = worst.max(start.elapsed());
    }
    let sent = calls.load(Ordering::SeqCst);
    // Before 50 samples the tail is not hedged; afterwards every slow call is.
    assert!(
        worst >= Duration::from_millis(1_000),
        "warm-up calls are not hedged"
    );
    assert!(sent > 400 && sent <= 420, "hedges sent: {}", sent - 400);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        sent - 400,
        "every losing call was cancelled"
    );
}

/// One handle calling one call after another, recording the latency of one call in three
/// (`latency_sample_gap_ns` of 3 ms against calls 1 ms apart): the tracked quantile still
/// finds the slow tail, and after the warm-up every slow call is hedged.
#[tokio::test(start_paused = true)]
async fn hedge_layer_hedges_the_tail_from_sampled_latencies() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let service = service_fn(move |_: WithDeadline<Request>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let ms = if n % 20 == 19 { 1_000 } else { 1 };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, BoxError>(ms)
        }
    });
    let config = HedgeConfig {
        quantile: 0.9,
        samples_min: 30,
        latency_sample_gap_ns: 3_000_000,
        ..HedgeConfig::default()
    };
    let mut service = HedgeLayer::new(
        config,
        Arc::new(RetryBudget::new(BudgetConfig::default())),
        RetryIdempotentErrors,
        Observe::silent("hedge"),
        Clock::tokio(),
    )
    .layer(service);
    let mut worst_after_warmup = Duration::ZERO;
    for i in 0..600 {
        let start = tokio::time::Instant::now();
        let call = service.ready().await.expect("ready").call(get());
        call.await.expect("answers");
        if i >= 300 {
            worst_after_warmup = worst_after_warmup.max(start.elapsed());
        }
    }
    assert!(
        worst_after_warmup < Duration::from_millis(100),
        "slow calls after the warm-up were hedged: worst {worst_after_warmup:?}"
    );
    let hedges = calls.load(Ordering::SeqCst) - 600;
    assert!((15..=30).contains(&hedges), "hedges sent: {hedges}");
}

#[tokio::test(start_paused = true)]
async fn rate_limit_and_shed_layers_refuse_with_typed_errors() {
    let echo =
        service_fn(|r: WithDeadline<Request>| async move { Ok::<_, BoxError>(r.request.priority) });
    let rate = RateLayer::new(
        Quota::per_second(10, 2),
        Observe::silent("rate"),
        Clock::tokio(),
    );
    let mut limited = rate.layer(echo);
    assert!(
        limited
            .ready()
            .await
            .expect("ready")
            .call(get())
            .await
            .is_ok()
    );
    assert!(
        limited
            .ready()
            .await
            .expect("ready")
            .call(get())
            .await
            .is_ok()
    );
    let refused = limited.ready().await.expect("ready").call(get()).await;
    assert!(matches!(error_of(&refused), Some(Error::Rate(_))));
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(
        limited
            .ready()
            .await
            .expect("ready")
            .call(get())
            .await
            .is_ok()
    );

    // A shedder at limit 10: 8 slow normal calls fill normal's 80%; critical still enters.
    let slow = service_fn(|r: WithDeadline<Request>| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, BoxError>(r.request.priority)
    });
    let shed = ShedLayer::new(
        ShedConfig::default(),
        ShedLimit::Fixed(10),
        Observe::silent("shed"),
    );
    let service = shed.layer(slow);
    let mut running = Vec::new();
    for _ in 0..8 {
        running.push(tokio::spawn(service.clone().oneshot(get())));
    }
    tokio::task::yield_now().await;
    let normal = service.clone().oneshot(get()).await;
    assert_eq!(error_of(&normal), Some(Error::Shed(Priority::Normal)));
    let mut critical = get();
    critical.request.priority = Priority::Critical;
    assert_eq!(
        service
            .clone()
            .oneshot(critical)
            .await
            .expect("critical admitted"),
        Priority::Critical
    );
    for task in running {
        assert!(task.await.expect("task").is_ok());
    }
}

/// An AIMD limit layer starting at `limit_initial` (bounds 1..=100), on tokio's clock.
fn aimd_limit_layer(limit_initial: u32) -> LimitLayer {
    let config = LimitConfig {
        limit_initial,
        limit_min: 1,
        limit_max: 100,
        algorithm: LimitAlgorithm::aimd(),
    };
    LimitLayer::new(
        ConcurrencyLimiter::new(config),
        Observe::silent("limit"),
        Clock::tokio(),
    )
}

#[tokio::test(start_paused = true)]
async fn limit_layer_refuses_over_limit_and_exports_limit() {
    let slow = service_fn(|_: ()| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, BoxError>(())
    });
    let layer = aimd_limit_layer(2);
    let service = layer.layer(slow);
    let a = tokio::spawn(service.clone().oneshot(()));
    let b = tokio::spawn(service.clone().oneshot(()));
    tokio::task::yield_now().await;
    let refused = service.clone().oneshot(()).await;
    assert!(matches!(error_of(&refused), Some(Error::Limit(_))));
    a.await.expect("task").expect("ok");
    b.await.expect("task").expect("ok");
    // Both calls used the whole limit without drops: AIMD grew it.
    assert!(
        layer.limiter().limit() > 2,
        "limit {}",
        layer.limiter().limit()
    );
}

/// Four threads calling one limit layer at once never have more calls inside it than its
/// limit: the layer counts its calls by the references their futures hold, and a call
/// compares the count only after taking its own.
#[test]
fn limit_layer_never_admits_over_its_limit_under_contention() {
    const LIMIT: u32 = 3;
    let layer = LimitLayer::new(
        ConcurrencyLimiter::new(LimitConfig {
            limit_initial: LIMIT,
            limit_min: LIMIT,
            limit_max: LIMIT,
            algorithm: LimitAlgorithm::aimd(),
        }),
        Observe::silent("limit"),
        Clock::new(),
    );
    let inside = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let refused = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (inside, most, refused) = (inside.clone(), most.clone(), refused.clone());
            let service = layer.layer(service_fn(move |()| {
                let inside = inside.clone();
                let most = most.clone();
                async move {
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // Stay inside a while, so that the threads overlap.
                    for _ in 0..50 {
                        std::hint::spin_loop();
                    }
                    std::thread::yield_now();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, BoxError>(())
                }
            }));
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                for _ in 0..20_000 {
                    let result = runtime.block_on(service.clone().oneshot(()));
                    if matches!(error_of(&result), Some(Error::Limit(_))) {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("caller thread");
    }
    assert!(
        most.load(Ordering::SeqCst) <= LIMIT,
        "{} calls were inside a layer limited to {LIMIT}",
        most.load(Ordering::SeqCst)
    );
    assert_eq!(layer.inflight(), 0, "every place was given back");
    // The test means something only if the threads got in each other's way.
    assert!(
        refused.load(Ordering::Relaxed) > 0 || most.load(Ordering::SeqCst) == LIMIT,
        "the callers never contended"
    );
}

/// A call abandoned before it finished (a deadline above it fired, a hedge lost, the caller
/// went away) gives its slot back, and says nothing about the limit: otherwise every
/// timeout would leak a slot until the limiter refused everything, for good.
#[tokio::test(start_paused = true)]
async fn limit_layer_gets_its_slot_back_from_a_cancelled_call() {
    let never = service_fn(|_: ()| std::future::pending::<Result<(), BoxError>>());
    let layer = aimd_limit_layer(2);
    let service = layer.layer(never);
    for round in 0..10 {
        let timed_out =
            tokio::time::timeout(Duration::from_millis(5), service.clone().oneshot(())).await;
        assert!(timed_out.is_err(), "round {round}: the call never finishes");
        assert_eq!(
            layer.inflight(),
            0,
            "round {round}: the abandoned call still holds a slot"
        );
    }
    assert_eq!(layer.limiter().limit(), 2, "a cancellation is no sample");
    // Polled once (so admitted) and then dropped.
    let mut call = Box::pin(service.clone().oneshot(()));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    assert!(first.is_pending());
    assert_eq!(layer.inflight(), 1);
    drop(call);
    assert_eq!(layer.inflight(), 0);
}

#[tokio::test(start_paused = true)]
async fn throttle_layer_rejects_locally_when_backend_refuses() {
    use colony_client::layer::throttle::ThrottleLayer;
    use colony_client::policy::throttle::ThrottleConfig;
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    // The backend accepts its first 50 requests, then refuses everything.
    let backend = service_fn(move |_: ()| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 50 {
                Ok::<_, BoxError>(())
            } else {
                Err("overloaded".into())
            }
        }
    });
    let layer = ThrottleLayer::new(
        ThrottleConfig::default(),
        Observe::silent("t"),
        Clock::tokio(),
        9,
    );
    let service = layer.layer(backend);
    let mut throttled = 0;
    for _ in 0..2_000 {
        let result = service.clone().oneshot(()).await;
        if matches!(error_of(&result), Some(Error::Throttled)) {
            throttled += 1;
        }
    }
    let reached = calls.load(Ordering::SeqCst);
    // With K = 2 the backend sees 2× what it accepted (100), then request R goes through
    // with probability 101/(R + 1): about 100 + 101·ln(2000/100) ≈ 400 in all, a fifth of
    // the 2,000 a naive client sends.
    assert!((300..500).contains(&reached), "backend saw {reached}");
    assert_eq!(throttled + reached, 2_000);
}

/// Retries and hedges drawing on one budget: against a backend that fails half the time and
/// is slow 10% of the time, total attempts stay within the budget's 10% (plus its reserve).
#[tokio::test(start_paused = true)]
async fn retry_and_hedge_share_one_budget() {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let backend = service_fn(move |_: WithDeadline<Request>| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let ms = if n % 10 == 3 { 500 } else { 2 };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if n.is_multiple_of(2) {
                Ok::<_, BoxError>(())
            } else {
                Err("flaky".into())
            }
        }
    });
    let budget = Arc::new(RetryBudget::new(BudgetConfig {
        ratio: 0.1,
        retries_min_per_s: 0.0,
        window_ns: 60_000_000_000,
    }));
    let hedge_config = HedgeConfig {
        samples_min: 20,
        deposits: false,
        ..HedgeConfig::default()
    };
    let hedge = HedgeLayer::new(
        hedge_config,
        budget.clone(),
        RetryIdempotentErrors,
        Observe::silent("h"),
        Clock::tokio(),
    );
    let retry = retry_layer_with_clock(budget, Clock::tokio());
    let service = retry.layer(hedge.layer(backend));
    let logical = 1_000u32;
    for _ in 0..logical {
        let _ = service.clone().oneshot(get()).await;
    }
    let attempts = calls.load(Ordering::SeqCst);
    let amplification = f64::from(attempts) / f64::from(logical);
    assert!(amplification <= 1.1 + 1e-9, "amplification {amplification}");
    assert!(amplification > 1.05, "the budget was used: {amplification}");
}

fn retry_layer_with_clock(
    budget: Arc<RetryBudget>,
    clock: Clock,
) -> RetryLayer<RetryIdempotentErrors> {
    let backoff = Backoff {
        base_ns: 1_000_000,
        cap_ns: 10_000_000,
        jitter: Jitter::Full,
    };
    let config = RetryConfig {
        retries_max: 3,
        backoff,
        deposits: true,
    };
    RetryLayer::new(
        config,
        budget,
        RetryIdempotentErrors,
        Observe::silent("retry"),
        clock,
        7,
    )
}

#[tokio::test(start_paused = true)]
async fn deadline_layer_abandons_slow_calls_only() {
    use colony_client::layer::deadline::DeadlineLayer;
    let service = service_fn(|request: WithDeadline<u64>| async move {
        tokio::time::sleep(Duration::from_millis(request.request)).await;
        Ok::<_, BoxError>(request.request)
    });
    let layer = DeadlineLayer::new(Duration::from_secs(1), Clock::tokio());
    let deadline = layer.layer(service);
    let fast = deadline
        .clone()
        .oneshot(WithDeadline {
            request: 999,
            deadline: None,
        })
        .await;
    assert_eq!(fast.expect("answers before the deadline"), 999);
    let start = tokio::time::Instant::now();
    let slow = deadline
        .clone()
        .oneshot(WithDeadline {
            request: 5_000,
            deadline: None,
        })
        .await;
    assert_eq!(error_of(&slow), Some(Error::DeadlineExceeded));
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "abandoned at the deadline"
    );
    // A deadline the caller set is kept, not replaced by the layer's budget.
    let clock = Clock::tokio();
    let at_ns = clock.now_ns() + 100_000_000;
    let start = tokio::time::Instant::now();
    let mut layer_with_clock = DeadlineLayer::new(Duration::from_secs(1), clock).layer(service_fn(
        |request: WithDeadline<u64>| async move {
            tokio::time::sleep(Duration::from_millis(request.request)).await;
            Ok::<_, BoxError>(request.request)
        },
    ));
    let own = layer_with_clock
        .ready()
        .await
        .expect("ready")
        .call(WithDeadline {
            request: 5_000,
            deadline: Some(Deadline { at_ns }),
        })
        .await;
    assert_eq!(error_of(&own), Some(Error::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn keyed_rate_layer_limits_each_key_alone() {
    use colony_client::layer::rate::KeyedRateLayer;
    let echo = service_fn(|tenant: &'static str| async move { Ok::<_, BoxError>(tenant) });
    let layer = KeyedRateLayer::new(
        Quota::per_second(10, 1),
        1_600,
        |tenant: &&'static str| *tenant,
        Observe::silent("keyed"),
        Clock::tokio(),
    );
    let mut service = layer.layer(echo);
    assert!(
        service
            .ready()
            .await
            .expect("ready")
            .call("a")
            .await
            .is_ok()
    );
    let refused = service.ready().await.expect("ready").call("a").await;
    assert!(matches!(error_of(&refused), Some(Error::Rate(_))));
    // Another key has its own quota.
    assert!(
        service
            .ready()
            .await
            .expect("ready")
            .call("b")
            .await
            .is_ok()
    );
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(
        service
            .ready()
            .await
            .expect("ready")
            .call("a")
            .await
            .is_ok()
    );
}

/// Cancelled calls give back what they held in the other stateful layers too: a bulkhead
/// slot (running or queued) and a half-open breaker's probe.
#[tokio::test(start_paused = true)]
async fn cancelled_calls_give_back_bulkhead_slots_and_breaker_probes() {
    let never = service_fn(|_: ()| std::future::pending::<Result<(), BoxError>>());
    let config = BulkheadConfig {
        concurrency_max: 1,
        queue_max: 1,
        queue_timeout_ns: 10_000_000_000,
    };
    let bulkhead = BulkheadLayer::new(config, Observe::silent("bulk"));
    let service = bulkhead.layer(never);
    let running = tokio::spawn(service.clone().oneshot(()));
    tokio::task::yield_now().await;
    let queued = tokio::spawn(service.clone().oneshot(()));
    tokio::task::yield_now().await;
    assert_eq!(
        (bulkhead.bulkhead().inflight(), bulkhead.bulkhead().queued()),
        (1, 1)
    );
    queued.abort();
    assert!(queued.await.is_err_and(|e| e.is_cancelled()));
    assert_eq!(bulkhead.bulkhead().queued(), 0, "the queued place is back");
    running.abort();
    assert!(running.await.is_err_and(|e| e.is_cancelled()));
    assert_eq!(
        bulkhead.bulkhead().inflight(),
        0,
        "the running slot is back"
    );

    // A breaker tripped by failures, then half-open with one probe: a cancelled probe lets
    // the next call probe instead of leaving the breaker waiting for a result forever.
    let fail_then_hang = {
        let calls = Arc::new(AtomicU32::new(0));
        service_fn(move |_: ()| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 5 {
                    Err::<(), BoxError>("down".into())
                } else {
                    std::future::pending().await
                }
            }
        })
    };
    let breaker = probing_breaker_layer();
    let service = breaker.layer(fail_then_hang);
    for _ in 0..5 {
        assert!(service.clone().oneshot(()).await.is_err());
    }
    assert_eq!(breaker.breaker().state(), BreakerState::Open);
    tokio::time::advance(Duration::from_millis(1_001)).await;
    for round in 0..3 {
        let probe =
            tokio::time::timeout(Duration::from_millis(5), service.clone().oneshot(())).await;
        assert!(
            probe.is_err(),
            "round {round}: the probe was admitted (it hangs) rather than refused"
        );
    }
    assert_eq!(breaker.breaker().state(), BreakerState::HalfOpen);
}
