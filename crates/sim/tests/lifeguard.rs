//! Lifeguard's claim, checked on the simulator: when some members are slow senders (their
//! probes and acks leave late), plain SWIM lets them suspect and fail healthy members, and
//! Lifeguard's local health awareness holds most of those false positives back.

use colony_sim::{MembershipScenario, run_membership};
use colony_swim::{Config, SECOND};

fn slow_senders(lifeguard: bool) -> colony_sim::MembershipResult {
    run_membership(&MembershipScenario {
        nodes: 20,
        seed: 7,
        duration: 60 * SECOND,
        slow_fraction: 0.1,
        slow_send_delay: 1_200_000,
        kill: 0,
        injections: 1,
        config: Config {
            lifeguard,
            ..Config::lan()
        },
        ..MembershipScenario::default()
    })
}

#[test]
fn lifeguard_holds_back_false_positives_caused_by_slow_senders() {
    let with = slow_senders(true);
    let without = slow_senders(false);
    assert!(
        without.false_suspicions_of_healthy > 0,
        "the scenario must provoke plain SWIM: {without:?}"
    );
    assert!(
        with.false_suspicions_of_healthy * 3 <= without.false_suspicions_of_healthy * 2,
        "Lifeguard should cut false suspicions of healthy members by a third or more: \
         {} with, {} without",
        with.false_suspicions_of_healthy,
        without.false_suspicions_of_healthy
    );
    assert!(
        with.false_positive_failures <= without.false_positive_failures,
        "and never declare more members failed: {} with, {} without",
        with.false_positive_failures,
        without.false_positive_failures
    );
}
