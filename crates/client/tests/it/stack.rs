use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use colony_client::layer::balance::{Balance, Change};
use colony_client::layer::breaker::BreakerLayer;
use colony_client::layer::deadline::{DeadlineLayer, WithDeadline};
use colony_client::layer::rate::RateLayer;
use colony_client::layer::retry::{Idempotency, RetryConfig, RetryIdempotentErrors, RetryLayer};
use colony_client::layer::{BoxError, Clock, Observe};
use colony_client::policy::backoff::{Backoff, Jitter};
use colony_client::policy::balance::BalanceConfig;
use colony_client::policy::breaker::{Breaker, BreakerConfig};
use colony_client::policy::budget::{BudgetConfig, RetryBudget};
use colony_client::policy::rate::Quota;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

#[derive(Debug, Clone)]
struct Get;

impl Idempotency for Get {
    fn is_idempotent(&self) -> bool {
        true
    }
}

/// deadline + rate + breaker + retry + balancer, over two endpoints of which one always fails:
/// the balancer ejects it, retries cover the failures before that, and every call succeeds.
#[tokio::test(start_paused = true)]
async fn full_stack_survives_a_failing_endpoint() {
    let clock = Clock::tokio();
    let hits = [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0))];
    let balance = Balance::new(
        BalanceConfig {
            consecutive_errors_eject: 3,
            ..BalanceConfig::default()
        },
        Observe::silent("balance"),
        clock.clone(),
        1,
    );
    for (i, counter) in hits.iter().enumerate() {
        let counter = counter.clone();
        let endpoint = service_fn(move |_: WithDeadline<Get>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if i == 0 {
                    Err::<u32, BoxError>("broken".into())
                } else {
                    Ok(1)
                }
            }
        });
        balance.update(Change::Insert(format!("10.0.0.{i}:8500"), None, endpoint));
    }
    let budget = Arc::new(RetryBudget::new(BudgetConfig::default()));
    let backoff = Backoff {
        base_ns: 1_000_000,
        cap_ns: 10_000_000,
        jitter: Jitter::Equal,
    };
    let stack = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(1), clock.clone()))
        .layer(RateLayer::new(
            Quota::per_second(10_000, 100),
            Observe::silent("rate"),
            clock.clone(),
        ))
        .layer(BreakerLayer::with_clock(
            Breaker::new(BreakerConfig::default()).expect("valid"),
            Observe::silent("breaker"),
            clock.clone(),
        ))
        .layer(RetryLayer::new(
            RetryConfig {
                retries_max: 3,
                backoff,
                deposits: true,
            },
            budget,
            RetryIdempotentErrors,
            Observe::silent("retry"),
            clock.clone(),
            3,
        ))
        .service(balance);
    for _ in 0..200 {
        let answer = stack
            .clone()
            .oneshot(WithDeadline {
                request: Get,
                deadline: None,
            })
            .await;
        assert_eq!(answer.expect("every call succeeds"), 1);
    }
    let broken = hits[0].load(Ordering::SeqCst);
    assert!(
        broken <= 10,
        "the broken endpoint was ejected after a few errors: {broken}"
    );
}

/// Endpoints removed while calls to them (and to the endpoint that takes their index) are in
/// flight: every call still completes, and the balancer's pending counts stay consistent
/// (its assertions would panic otherwise).
#[tokio::test(start_paused = true)]
async fn balance_survives_removal_during_calls() {
    let balance = Balance::new(
        BalanceConfig::default(),
        Observe::silent("b"),
        Clock::tokio(),
        5,
    );
    for i in 0..3u32 {
        let endpoint = service_fn(move |_: ()| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, BoxError>(i)
        });
        balance.update(Change::Insert(i, None, endpoint));
    }
    let calls: Vec<_> = (0..30)
        .map(|_| tokio::spawn(balance.clone().oneshot(())))
        .collect();
    tokio::task::yield_now().await;
    balance.update(Change::Remove(0));
    for call in calls {
        assert!(call.await.expect("task").is_ok());
    }
    assert_eq!(balance.len(), 2);
    for _ in 0..20 {
        let answer = balance.clone().oneshot(()).await.expect("answers");
        assert_ne!(answer, 0, "the removed endpoint gets no calls");
    }
}

/// Calls through one balancer handle to ten replicas, one of them 50 times slower than the
/// others (1 ms), on paused time: `waves` waves `1 ms` apart of `burst` calls sent at one
/// instant, or, with `burst` 0, 1,000 calls one after another. Returns the calls the slow
/// replica got, after checking that every call, timed or not, ended its count.
async fn slow_replica_calls(rtt_sample_gap_ns: u64, burst: usize) -> u32 {
    let hits: Vec<_> = (0..10).map(|_| Arc::new(AtomicU32::new(0))).collect();
    let mut balance = Balance::new(
        BalanceConfig {
            rtt_sample_gap_ns,
            ..BalanceConfig::default()
        },
        Observe::silent("b"),
        Clock::tokio(),
        9,
    );
    for (i, counter) in hits.iter().enumerate() {
        let counter = counter.clone();
        let latency = Duration::from_millis(if i == 0 { 50 } else { 1 });
        let endpoint = service_fn(move |_: ()| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(latency).await;
                Ok::<_, BoxError>(())
            }
        });
        balance.update(Change::Insert(i, None, endpoint));
    }
    if burst == 0 {
        for _ in 0..1_000 {
            balance
                .ready()
                .await
                .expect("ready")
                .call(())
                .await
                .expect("answered");
        }
    } else {
        let mut calls = Vec::new();
        for _ in 0..200 {
            for _ in 0..burst {
                calls.push(tokio::spawn(balance.ready().await.expect("ready").call(())));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for call in calls {
            call.await.expect("task").expect("answered");
        }
    }
    for key in 0..10 {
        assert_eq!(balance.pending(&key), Some(0), "endpoint {key} idle");
    }
    hits[0].load(Ordering::SeqCst)
}

/// The balancer times at most one call per `rtt_sample_gap_ns` per handle and counts the
/// other successes without their RTT. In bursts sent at one instant (the default gap: only
/// each burst's first call is timed) and in calls one after another with a gap of 5 ms (a
/// fast call in five timed), the slow replica still gets under 5% of the calls; with no
/// sample after the first (an endless gap) it would get several times more, so the
/// samples, not the calls in flight alone, keep it off.
#[tokio::test(start_paused = true)]
async fn balance_keeps_off_a_slow_replica_when_most_calls_go_untimed() {
    let bursts = slow_replica_calls(BalanceConfig::default().rtt_sample_gap_ns, 10).await;
    assert!(
        bursts <= 100,
        "in bursts the slow replica got {bursts} of 2000"
    );
    let sampled = slow_replica_calls(5_000_000, 0).await;
    assert!(sampled <= 50, "one by one it got {sampled} of 1000");
    let blind = slow_replica_calls(u64::MAX, 0).await;
    assert!(
        blind >= 2 * sampled.max(25),
        "without samples it got only {blind} of 1000"
    );
}

/// Every stateful layer returns to idle after calls that end any way they can: answered,
/// failed, refused, cut off by their deadline, or aborted by the caller mid-flight. A place
/// leaked by one abandoned call is invisible at first and, a few thousand timeouts later,
/// refuses everything: this drives 2,000 such calls through deadline + shed + bulkhead +
/// limit + breaker + balancer over three endpoints with random latencies, then checks that
/// nothing is still counted.
#[tokio::test(start_paused = true)]
async fn every_layer_returns_to_idle_after_cancelled_calls() {
    use colony_base::SplitMix64;
    use colony_client::layer::bulkhead::BulkheadLayer;
    use colony_client::layer::limit::LimitLayer;
    use colony_client::layer::shed::{HasPriority, ShedLayer, ShedLimit};
    use colony_client::policy::bulkhead::BulkheadConfig;
    use colony_client::policy::limit::{ConcurrencyLimiter, LimitAlgorithm, LimitConfig};
    use colony_client::policy::shed::{Priority, ShedConfig};

    #[derive(Debug, Clone)]
    struct Call {
        latency_ms: u64,
        fails: bool,
    }
    impl HasPriority for Call {
        fn priority(&self) -> Priority {
            Priority::Normal
        }
    }

    let clock = Clock::tokio();
    let balance = Balance::new(
        BalanceConfig::default(),
        Observe::silent("balance"),
        clock.clone(),
        7,
    );
    let keys: Vec<String> = (0..3).map(|i| format!("10.0.0.{i}:8500")).collect();
    for key in &keys {
        let endpoint = service_fn(|call: WithDeadline<Call>| async move {
            tokio::time::sleep(Duration::from_millis(call.request.latency_ms)).await;
            if call.request.fails {
                Err::<(), BoxError>("failed".into())
            } else {
                Ok(())
            }
        });
        balance.update(Change::Insert(key.clone(), None, endpoint));
    }
    let shed = ShedLayer::new(
        ShedConfig::default(),
        ShedLimit::Fixed(150),
        Observe::silent("shed"),
    );
    let bulkhead = BulkheadLayer::new(
        BulkheadConfig {
            concurrency_max: 60,
            queue_max: 20,
            queue_timeout_ns: 30_000_000,
        },
        Observe::silent("bulkhead"),
    );
    let limit = LimitLayer::new(
        ConcurrencyLimiter::new(LimitConfig {
            limit_initial: 40,
            limit_min: 10,
            limit_max: 200,
            algorithm: LimitAlgorithm::vegas(),
        }),
        Observe::silent("limit"),
        clock.clone(),
    );
    let breaker = BreakerLayer::with_clock(
        Breaker::new(BreakerConfig::default()).expect("valid"),
        Observe::silent("breaker"),
        clock.clone(),
    );
    let stack = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_millis(50), clock.clone()))
        .layer(shed.clone())
        .layer(bulkhead.clone())
        .layer(limit.clone())
        .layer(breaker)
        .service(balance.clone());

    let mut rng = SplitMix64::new(42);
    let mut tasks = Vec::new();
    for _ in 0..2_000 {
        let call = Call {
            // Up to 100 ms, over a 50 ms deadline: about half the calls are cut off.
            latency_ms: rng.below(100),
            fails: rng.below(10) == 0,
        };
        let abort_after_ms = (rng.below(4) == 0).then(|| rng.below(60));
        let task = tokio::spawn(stack.clone().oneshot(WithDeadline {
            request: call,
            deadline: None,
        }));
        if let Some(ms) = abort_after_ms {
            let handle = task.abort_handle();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                handle.abort();
            });
        }
        tasks.push(task);
        // About one call per millisecond: some 50 in flight, near the limits.
        tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
    }
    let mut ended = [0usize; 3];
    for task in tasks {
        match task.await {
            Ok(Ok(())) => ended[0] += 1,
            Ok(Err(_)) => ended[1] += 1,
            Err(error) => {
                assert!(error.is_cancelled(), "a call panicked: {error}");
                ended[2] += 1;
            }
        }
    }
    assert!(
        ended.iter().all(|n| *n > 100),
        "answered, failed or refused, aborted: {ended:?} (each way must be exercised)"
    );
    assert_eq!(limit.inflight(), 0, "limit");
    assert_eq!(
        (bulkhead.bulkhead().inflight(), bulkhead.bulkhead().queued()),
        (0, 0),
        "bulkhead"
    );
    assert_eq!(shed.shedder().inflight(), 0, "shed");
    for key in &keys {
        assert_eq!(balance.pending(key), Some(0), "balancer pending for {key}");
    }
}
