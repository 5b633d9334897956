use super::*;
use proptest::prelude::*;

const MS: u64 = 1_000_000;

fn config() -> BreakerConfig {
    BreakerConfig {
        window: WindowKind::Count { calls: 4 },
        failure_rate_threshold: 0.5,
        slow_rate_threshold: 0.5,
        slow_call_ns: Some(100 * MS),
        calls_min: 4,
        open_ns: 1_000 * MS,
        open_ns_max: 3_000 * MS,
        half_open_probes: 2,
        consecutive_failures_trip: None,
    }
}

#[derive(Debug, Clone, Copy)]
enum Call {
    Ok,
    Fail,
    Slow,
}

/// One row: at `at_ms` make a call with outcome `call`; expect it admitted or not, and the
/// state after.
struct Row {
    at_ms: u64,
    call: Call,
    admitted: bool,
    state: BreakerState,
}

fn row(at_ms: u64, call: Call, admitted: bool, state: BreakerState) -> Row {
    Row {
        at_ms,
        call,
        admitted,
        state,
    }
}

fn run_table(breaker: &Breaker, rows: &[Row]) {
    for (i, row) in rows.iter().enumerate() {
        let now = row.at_ms * MS;
        let (result, _) = breaker.try_acquire(now);
        assert_eq!(result.is_ok(), row.admitted, "row {i}: admitted");
        if let Ok(permit) = result {
            let outcome = match row.call {
                Call::Ok => CallOutcome::success(MS),
                Call::Fail => CallOutcome::failure(MS),
                Call::Slow => CallOutcome::success(200 * MS),
            };
            breaker.on_result(now, permit, outcome);
        }
        breaker.check_invariants();
        assert_eq!(breaker.state(), row.state, "row {i}: state");
    }
}

use BreakerState::{Closed, HalfOpen, Open};
use Call::{Fail, Ok as Good, Slow};

#[test]
fn breaker_table_trip_probe_close_and_backoff() {
    let breaker = Breaker::new(config()).expect("valid config");
    run_table(
        &breaker,
        &[
            // Below calls_min nothing trips, even at 100% failures.
            row(0, Fail, true, Closed),
            row(1, Fail, true, Closed),
            row(2, Good, true, Closed),
            // Fourth call: 3 failures of 4 ≥ 50% → open for 1 s.
            row(3, Fail, true, Open),
            row(500, Good, false, Open),
            // Open time elapsed: half-open, first probe succeeds.
            row(1_003, Good, true, HalfOpen),
            // Second probe fails: open again for 2 s (backoff doubles).
            row(1_004, Fail, true, Open),
            row(3_003, Good, false, Open),
            row(3_004, Good, true, HalfOpen),
            row(3_005, Good, true, Closed),
            // Closed again with a fresh window: two failures of four is exactly 50% → trips,
            // and the open time is back to 1 s.
            row(3_006, Good, true, Closed),
            row(3_007, Fail, true, Closed),
            row(3_008, Good, true, Closed),
            row(3_009, Fail, true, Open),
            row(4_008, Good, false, Open),
            row(4_009, Good, true, HalfOpen),
        ],
    );
    assert_eq!(breaker.trips_total(), 3);
}

#[test]
fn breaker_table_slow_calls_trip() {
    let breaker = Breaker::new(config()).expect("valid config");
    run_table(
        &breaker,
        &[
            row(0, Slow, true, Closed),
            row(1, Good, true, Closed),
            row(2, Good, true, Closed),
            row(3, Slow, true, Open),
        ],
    );
}

#[test]
fn breaker_open_backoff_is_capped() {
    let breaker = Breaker::new(config()).expect("valid config");
    let mut now = 0;
    let mut opens = Vec::new();
    for _ in 0..4 {
        let transition = breaker.force_open(now).expect("was not open");
        let open_ns = transition.open_ns.expect("opening has a duration");
        opens.push(open_ns / MS);
        now += open_ns;
        let (permit, transition) = breaker.try_acquire(now);
        assert!(permit.is_ok());
        assert_eq!(transition.map(|t| t.to), Some(HalfOpen));
    }
    assert_eq!(opens, vec![1_000, 2_000, 3_000, 3_000]);
}

#[test]
fn breaker_half_open_admits_only_probes() {
    let breaker = Breaker::new(config()).expect("valid config");
    breaker.force_open(0);
    let (first, _) = breaker.try_acquire(1_000 * MS);
    let (second, _) = breaker.try_acquire(1_000 * MS);
    let (third, _) = breaker.try_acquire(1_000 * MS);
    assert!(first.expect("first probe").is_probe());
    assert!(second.expect("second probe").is_probe());
    assert_eq!(third, Err(BreakerRejection::ProbesExhausted));
}

#[test]
fn breaker_cancelled_probe_frees_its_slot() {
    let breaker = Breaker::new(config()).expect("valid config");
    breaker.force_open(0);
    let (first, _) = breaker.try_acquire(1_000 * MS);
    let (second, _) = breaker.try_acquire(1_000 * MS);
    assert!(breaker.try_acquire(1_000 * MS).0.is_err());
    breaker.on_cancel(first.expect("probe"));
    let (third, _) = breaker.try_acquire(1_000 * MS);
    breaker.on_result(1_000 * MS, second.expect("probe"), CallOutcome::success(0));
    breaker.on_result(
        1_000 * MS,
        third.expect("freed slot"),
        CallOutcome::success(0),
    );
    assert_eq!(breaker.state(), Closed);
}

#[test]
fn breaker_stale_permit_is_ignored() {
    let breaker = Breaker::new(config()).expect("valid config");
    let (stale, _) = breaker.try_acquire(0);
    breaker.force_open(0);
    let (probe, _) = breaker.try_acquire(1_000 * MS);
    // The old permit's failure must not reopen the half-open breaker.
    assert_eq!(
        breaker.on_result(1_000 * MS, stale.expect("closed"), CallOutcome::failure(0)),
        None
    );
    assert_eq!(breaker.state(), HalfOpen);
    assert!(probe.is_ok());
}

#[test]
fn breaker_adaptive_trips_on_failure_cluster_below_calls_min() {
    let mut config = config();
    config.window = WindowKind::Count { calls: 100 };
    config.calls_min = 50;
    config.consecutive_failures_trip = Some(3);
    let breaker = Breaker::new(config).expect("valid config");
    run_table(
        &breaker,
        &[
            row(0, Fail, true, Closed),
            row(1, Fail, true, Closed),
            row(2, Good, true, Closed),
            row(3, Fail, true, Closed),
            row(4, Fail, true, Closed),
            row(5, Fail, true, Open),
        ],
    );
}

#[test]
fn breaker_time_window_forgets_old_failures() {
    let mut config = config();
    config.window = WindowKind::Time {
        buckets: 10,
        bucket_ns: 100 * MS,
    };
    let breaker = Breaker::new(config).expect("valid config");
    run_table(
        &breaker,
        &[
            row(0, Fail, true, Closed),
            row(10, Fail, true, Closed),
            row(20, Fail, true, Closed),
            // 1.4 s later those failures are out of the window (10 buckets of 100 ms,
            // rounded up to 2^27 ns: 1.34 s); had they counted, the second row here
            // (5 calls, 4 failures) would trip.
            row(1_400, Good, true, Closed),
            row(1_401, Fail, true, Closed),
            row(1_402, Good, true, Closed),
            row(1_403, Fail, true, Open),
        ],
    );
}

#[test]
fn breaker_config_rejects_nonsense() {
    let mut bad = config();
    bad.failure_rate_threshold = 0.0;
    assert!(Breaker::new(bad).is_err());
    let mut bad = config();
    bad.open_ns_max = 10;
    assert!(Breaker::new(bad).is_err());
    let mut bad = config();
    bad.window = WindowKind::Count { calls: 0 };
    assert!(Breaker::new(bad).is_err());
}

proptest! {
    /// Against a model of the last 10 outcomes: the breaker opens exactly when a failure
    /// brings a full window to the threshold, never below `calls_min`.
    #[test]
    fn breaker_never_trips_below_threshold(outcomes in proptest::collection::vec(any::<bool>(), 1..200)) {
        let mut config = config();
        config.window = WindowKind::Count { calls: 10 };
        config.calls_min = 10;
        config.slow_call_ns = None;
        let breaker = Breaker::new(config).expect("valid config");
        let mut recent: Vec<bool> = Vec::new();
        for (i, failed) in outcomes.into_iter().enumerate() {
            let now = i as u64 * MS;
            let (permit, _) = breaker.try_acquire(now);
            let Ok(permit) = permit else { break };
            let outcome = if failed { CallOutcome::failure(0) } else { CallOutcome::success(0) };
            breaker.on_result(now, permit, outcome);
            breaker.check_invariants();
            recent.push(failed);
            let last: Vec<bool> = recent.iter().rev().take(10).copied().collect();
            let failures = last.iter().filter(|f| **f).count();
            // Rates are evaluated when a failure is recorded (a success cannot raise them).
            let should_open = failed && last.len() == 10 && failures * 2 >= 10;
            prop_assert_eq!(breaker.state() == Open, should_open);
        }
    }
}

#[test]
fn permit_keeps_its_generation_and_whether_it_probes() {
    for generation in [0, 1, 41, u64::MAX >> 1] {
        for probe in [false, true] {
            let permit = Permit::new(generation, probe);
            assert_eq!(permit.generation(), generation);
            assert_eq!(permit.is_probe(), probe);
            assert_eq!(
                format!("{permit:?}"),
                format!("Permit {{ generation: {generation}, probe: {probe} }}")
            );
        }
    }
}
