use super::*;

fn show(report: &OverloadReport) {
    println!(
        "{:>15} {:>9}: goodput/capacity {:.3}  amplification {:.2}  p99 {:.0} ms  p99.9 {:.0} ms  recovery {:?}",
        report.scenario.as_str(),
        report.clients.as_str(),
        report.goodput_ratio_during_overload,
        report.retry_amplification,
        report.p99_latency_ms,
        report.p999_latency_ms,
        report.recovery_s
    );
    println!("    goodput/s {:?}", report.goodput_per_s);
}

#[test]
fn overload_same_seed_same_report() {
    let a = run(Scenario::RetryStorm, ClientKind::Resilient, 7);
    let b = run(Scenario::RetryStorm, ClientKind::Resilient, 7);
    assert_eq!(a, b);
    let c = run(Scenario::RetryStorm, ClientKind::Resilient, 8);
    assert_ne!(a.goodput_per_s, c.goodput_per_s);
    assert_ne!(a.trace_hash, c.trace_hash);
}

#[test]
fn overload_retry_storm_naive_collapses_resilient_holds() {
    let naive = run(Scenario::RetryStorm, ClientKind::Naive, 1);
    let resilient = run(Scenario::RetryStorm, ClientKind::Resilient, 1);
    show(&naive);
    show(&resilient);
    assert!(
        naive.goodput_ratio_during_overload < 0.2,
        "naive {}",
        naive.goodput_ratio_during_overload
    );
    assert!(
        resilient.goodput_ratio_during_overload >= 0.9,
        "resilient {}",
        resilient.goodput_ratio_during_overload
    );
    assert!(
        resilient.retry_amplification <= 1.1,
        "amplification {}",
        resilient.retry_amplification
    );
    assert!(naive.retry_amplification > 2.0);
    // Recovery within the breaker's open time (2 s) + 1 s after the dependency heals.
    assert!(
        resilient.recovery_s.is_some_and(|r| r <= 3.0),
        "recovery {:?}",
        resilient.recovery_s
    );
}

#[test]
fn overload_health_cascade_naive_collapses_resilient_holds() {
    let naive = run(Scenario::HealthCascade, ClientKind::Naive, 1);
    let resilient = run(Scenario::HealthCascade, ClientKind::Resilient, 1);
    show(&naive);
    show(&resilient);
    println!("    passing naive {:?}", naive.passing_per_s);
    println!("    passing resilient {:?}", resilient.passing_per_s);
    assert!(
        naive.goodput_ratio_during_overload < 0.2,
        "naive {}",
        naive.goodput_ratio_during_overload
    );
    assert!(
        naive.passing_per_s.iter().any(|p| *p <= 2),
        "the cascade removed backends"
    );
    assert!(
        resilient.goodput_ratio_during_overload >= 0.9,
        "resilient {}",
        resilient.goodput_ratio_during_overload
    );
    assert!(
        resilient.recovery_s.is_some_and(|r| r <= 3.0),
        "recovery {:?}",
        resilient.recovery_s
    );
}

#[test]
fn overload_thundering_herd_naive_collapses_resilient_recovers() {
    let naive = run(Scenario::ThunderingHerd, ClientKind::Naive, 1);
    let resilient = run(Scenario::ThunderingHerd, ClientKind::Resilient, 1);
    show(&naive);
    show(&resilient);
    assert!(
        naive.goodput_ratio_during_overload < 0.2,
        "naive {}",
        naive.goodput_ratio_during_overload
    );
    assert!(naive.recovery_s.is_none(), "naive never recovers");
    assert!(
        resilient.goodput_ratio_during_overload >= 0.9,
        "resilient {}",
        resilient.goodput_ratio_during_overload
    );
    assert!(
        resilient.recovery_s.is_some_and(|r| r <= 3.0),
        "recovery {:?}",
        resilient.recovery_s
    );
    assert!(
        resilient.retry_amplification <= 1.1,
        "amplification {}",
        resilient.retry_amplification
    );
}

/// The targets hold across seeds, not just for seed 1.
#[test]
fn overload_targets_hold_across_seeds() {
    for seed in 2..5 {
        for scenario in Scenario::ALL {
            let naive = run(scenario, ClientKind::Naive, seed);
            let resilient = run(scenario, ClientKind::Resilient, seed);
            assert!(
                naive.goodput_ratio_during_overload < 0.2,
                "{scenario:?} seed {seed}: naive {}",
                naive.goodput_ratio_during_overload
            );
            assert!(
                resilient.goodput_ratio_during_overload >= 0.9,
                "{scenario:?} seed {seed}: resilient {}",
                resilient.goodput_ratio_during_overload
            );
            assert!(
                resilient.recovery_s.is_some_and(|r| r <= 3.0),
                "{scenario:?} seed {seed}: recovery {:?}",
                resilient.recovery_s
            );
        }
    }
}

/// The report serialises with the field names the CLI prints.
#[test]
fn overload_report_serialises_with_documented_fields() {
    let report = run(Scenario::RetryStorm, ClientKind::Naive, 1);
    let json = serde_json::to_value(&report).expect("serialises");
    for field in [
        "scenario",
        "clients",
        "capacity_rps",
        "goodput_ratio_during_overload",
        "retry_amplification",
        "p99_latency_ms",
        "recovery_s",
        "goodput_per_s",
    ] {
        assert!(json.get(field).is_some(), "missing {field}");
    }
    assert_eq!(json["scenario"], "retry-storm");
    assert_eq!(json["clients"], "naive");
    assert!(json["recovery_s"].is_null(), "naive never recovers");
    assert_eq!(json["goodput_per_s"].as_array().map(Vec::len), Some(60));
}
