//! The success path of every layer allocates nothing: the allocation-counter crate's
//! counting global allocator (per thread, so parallel tests do not disturb each other)
//! around a burst of calls.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

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
use colony_client::policy::breaker::{Breaker, BreakerConfig};
use colony_client::policy::budget::{BudgetConfig, RetryBudget};
use colony_client::policy::bulkhead::BulkheadConfig;
use colony_client::policy::limit::{ConcurrencyLimiter, LimitAlgorithm, LimitConfig};
use colony_client::policy::rate::Quota;
use colony_client::policy::shed::{Priority, ShedConfig};
use colony_client::policy::throttle::ThrottleConfig;
use tower::{Layer, Service, ServiceBuilder};

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

impl HasPriority for Get {
    fn priority(&self) -> Priority {
        Priority::Normal
    }
}

fn call<S: Service<R>, R>(service: &mut S, request: R) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    matches!(
        pin!(service.call(request)).poll(&mut cx),
        Poll::Ready(Ok(_))
    )
}

/// Allocations made by 1,000 successful calls, after 100 warm-up calls.
fn allocations<S: Service<R>, R: Clone>(mut service: S, request: R) -> u64 {
    for _ in 0..100 {
        assert!(call(&mut service, request.clone()));
    }
    let info = allocation_counter::measure(|| {
        for _ in 0..1_000 {
            assert!(call(&mut service, request.clone()));
        }
    });
    info.count_total
}

#[test]
fn alloc_success_path_of_every_layer_allocates_nothing() {
    // The counter works: a vector allocates.
    let control = allocation_counter::measure(|| {
        std::hint::black_box(vec![1u8; 16]);
    });
    assert!(control.count_total > 0, "allocator counts");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime builds");
    let _entered = runtime.enter();
    let clock = Clock::new();
    let request = WithDeadline {
        request: Get,
        deadline: None,
    };
    let breaker = BreakerLayer::new(
        Breaker::new(BreakerConfig::default()).expect("valid"),
        Observe::silent("b"),
    );
    assert_eq!(allocations(breaker.layer(Ready), ()), 0, "breaker");
    let rate = RateLayer::new(
        Quota::per_second(1_000_000_000, u32::MAX),
        Observe::silent("r"),
        clock.clone(),
    );
    assert_eq!(allocations(rate.layer(Ready), ()), 0, "rate");
    let limiter = ConcurrencyLimiter::new(LimitConfig::new(LimitAlgorithm::gradient2()));
    assert_eq!(
        allocations(
            LimitLayer::new(limiter, Observe::silent("l"), clock.clone()).layer(Ready),
            ()
        ),
        0,
        "limit"
    );
    let bulkhead = BulkheadLayer::new(
        BulkheadConfig {
            concurrency_max: 10,
            queue_max: 10,
            queue_timeout_ns: 1,
        },
        Observe::silent("k"),
    );
    assert_eq!(allocations(bulkhead.layer(Ready), ()), 0, "bulkhead");
    let shed = ShedLayer::new(
        ShedConfig::default(),
        ShedLimit::Fixed(10),
        Observe::silent("s"),
    );
    assert_eq!(allocations(shed.layer(Ready), request.clone()), 0, "shed");
    let deadline = DeadlineLayer::new(Duration::from_secs(1), clock.clone());
    assert_eq!(
        allocations(deadline.layer(Ready), request.clone()),
        0,
        "deadline"
    );
    let budget = Arc::new(RetryBudget::new(BudgetConfig::default()));
    let backoff = Backoff {
        base_ns: 1_000_000,
        cap_ns: 10_000_000,
        jitter: Jitter::Full,
    };
    let retry = RetryLayer::new(
        RetryConfig {
            retries_max: 3,
            backoff,
            deposits: true,
        },
        budget,
        RetryIdempotentErrors,
        Observe::silent("retry"),
        clock.clone(),
        1,
    );
    assert_eq!(
        allocations(retry.clone().layer(Ready), request.clone()),
        0,
        "retry"
    );
    let balance = Balance::new(
        BalanceConfig::default(),
        Observe::silent("bal"),
        clock.clone(),
        1,
    );
    // String keys, as discovery gives them: a call must not clone its endpoint's key.
    for i in 0..10u32 {
        balance.update(Change::Insert(format!("10.0.0.{i}:8500"), None, Ready));
    }
    assert_eq!(allocations(balance.clone(), request.clone()), 0, "balance");
    let throttle = ThrottleLayer::new(
        ThrottleConfig::default(),
        Observe::silent("t"),
        clock.clone(),
        1,
    );
    assert_eq!(allocations(throttle.layer(Ready), ()), 0, "throttle");
    // Past `samples_min` (every latency recorded) the hedge knows its quantile and sets a
    // delay on every call.
    let hedge = HedgeLayer::new(
        HedgeConfig {
            samples_min: 10,
            latency_sample_gap_ns: 0,
            ..HedgeConfig::default()
        },
        Arc::new(RetryBudget::new(BudgetConfig::default())),
        RetryIdempotentErrors,
        Observe::silent("h"),
        clock.clone(),
    );
    assert_eq!(allocations(hedge.layer(Ready), request.clone()), 0, "hedge");
    let boxed = tower::util::MapErrLayer::new(|never: Infallible| -> BoxError { match never {} });
    let fallback = FallbackLayer::new(|_| Some(0u32));
    assert_eq!(
        allocations(fallback.layer(boxed.layer(Ready)), ()),
        0,
        "fallback"
    );
    let stack = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_secs(1), clock.clone()))
        .layer(RateLayer::new(
            Quota::per_second(1_000_000_000, u32::MAX),
            Observe::silent("r"),
            clock.clone(),
        ))
        .layer(BreakerLayer::with_clock(
            Breaker::new(BreakerConfig::default()).expect("valid"),
            Observe::silent("b"),
            clock.clone(),
        ))
        .layer(retry)
        .service(balance);
    assert_eq!(allocations(stack, request), 0, "full stack");
}
