//! Judging the recorded histories with checkers this project did not write: the Wing–Gong–Lowe
//! linearizability checker of `todc-utils`, per register key, with its etcd (read / write /
//! compare-and-swap) specification; and `adya` (Elle's approach) on the list-append
//! transactions, for strict serializability.

use super::workload::{Mop, Outcome, RegisterOp, RegisterRecord, TxnRecord};
use std::collections::BTreeMap;
use todc_utils::linearizability::WGLChecker;
use todc_utils::linearizability::history::{Action, History};
use todc_utils::specifications::etcd::{EtcdOperation, EtcdSpecification, EtcdStatus};

/// The keys whose register history is not linearizable, with the history for the report.
pub fn non_linearizable_registers(records: &[RegisterRecord]) -> Vec<(u32, String)> {
    let mut by_key: BTreeMap<u32, Vec<&RegisterRecord>> = BTreeMap::new();
    for record in records {
        by_key.entry(record.key).or_default().push(record);
    }
    let mut bad = Vec::new();
    for (key, records) in by_key {
        if !WGLChecker::<EtcdSpecification>::is_linearizable(register_history(&records)) {
            let mut lines: Vec<String> = records
                .iter()
                .map(|r| {
                    format!(
                        "  [{}..{}] p{} {:?} {:?}",
                        r.invoked, r.completed, r.process, r.op, r.outcome
                    )
                })
                .collect();
            lines.sort();
            bad.push((key, lines.join("\n")));
        }
    }
    bad
}

/// One key's operations as a `todc-utils` history: calls and responses in real-time order, the
/// responses of unknown operations at the very end (they may take effect any time after their
/// call), as its etcd log reader does.
fn register_history(records: &[&RegisterRecord]) -> History<EtcdOperation> {
    let mut events: Vec<(u64, usize, Action<EtcdOperation>)> = Vec::new();
    for record in records {
        let status = match record.outcome {
            Outcome::Ok => EtcdStatus::Okay,
            Outcome::Fail => EtcdStatus::Fail,
            Outcome::Info => EtcdStatus::Unknown,
        };
        let op = match record.op {
            RegisterOp::Read(value) => EtcdOperation::Read(status, value),
            RegisterOp::Write(value) => EtcdOperation::Write(status, value),
            RegisterOp::Cas(from, to) => EtcdOperation::CompareAndSwap(status, (from, to)),
        };
        events.push((record.invoked, record.process, Action::Call(op)));
        let at = if record.outcome == Outcome::Info {
            u64::MAX
        } else {
            record.completed
        };
        events.push((at, record.process, Action::Response(op)));
    }
    events.sort_by_key(|(at, _, _)| *at);
    History::from_actions(events.into_iter().map(|(_, p, a)| (p, a)).collect())
}

/// The transactions as an Elle-format JSON-lines history (`invoke` then `ok` / `fail` /
/// `info`, in real-time order), the format `adya check` reads.
pub fn elle_history(txns: &[TxnRecord]) -> String {
    let mut events: Vec<(u64, serde_json::Value)> = Vec::new();
    for txn in txns {
        let invoke: Vec<serde_json::Value> = txn.mops.iter().map(|m| mop_json(m, false)).collect();
        events.push((
            txn.invoked,
            serde_json::json!({"type": "invoke", "process": txn.process, "value": invoke}),
        ));
        let kind = match txn.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        };
        let done: Vec<serde_json::Value> = txn
            .mops
            .iter()
            .map(|m| mop_json(m, txn.outcome == Outcome::Ok))
            .collect();
        events.push((
            txn.completed,
            serde_json::json!({"type": kind, "process": txn.process, "value": done}),
        ));
    }
    events.sort_by_key(|(at, _)| *at);
    let mut text = String::new();
    for (index, (_, mut event)) in events.into_iter().enumerate() {
        event["index"] = index.into();
        text.push_str(&event.to_string());
        text.push('\n');
    }
    text
}

fn mop_json(mop: &Mop, completed: bool) -> serde_json::Value {
    match mop {
        Mop::Read(key, Some(list)) if completed => serde_json::json!(["r", key, list]),
        Mop::Read(key, _) => serde_json::json!(["r", key, null]),
        Mop::Append(key, value) => serde_json::json!(["append", key, value]),
    }
}

/// `adya`'s verdict on the list-append history for strict serializability: `Ok(summary)` when
/// valid, `Err(report)` with every anomaly otherwise (including an inconclusive check).
pub fn adya_strict_serializable(history_jsonl: &str) -> Result<String, String> {
    let history = adya::History::from_json(history_jsonl)
        .map_err(|e| format!("adya could not parse the history: {e}"))?;
    let opts = adya::Opts {
        models: vec!["strict-serializable".into()],
        timeout: std::time::Duration::from_secs(10),
        ..adya::Opts::default()
    };
    let report = adya::check(&history, adya::Workload::ListAppend, &opts);
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    match report.valid {
        adya::Valid::True => Ok(format!(
            "adya: strict-serializable, {} history lines",
            history_jsonl.lines().count()
        )),
        _ => Err(json),
    }
}

#[cfg(test)]
mod tests {
    //! The checkers, fed through this module's conversions, must reject known-bad histories:
    //! otherwise a green fault test would prove nothing.

    use super::*;
    use crate::faults::workload::{Mop, RegisterRecord, TxnRecord};

    fn register(
        key: u32,
        process: usize,
        op: RegisterOp,
        outcome: Outcome,
        span: (u64, u64),
    ) -> RegisterRecord {
        RegisterRecord {
            key,
            process,
            op,
            outcome,
            invoked: span.0,
            completed: span.1,
        }
    }

    #[test]
    fn faults_checker_rejects_a_stale_read_and_accepts_an_unknown_write_seen_late() {
        // Write 1 acknowledged, then (strictly later) a read still sees nothing: not linearizable.
        let stale = [
            register(7, 0, RegisterOp::Write(1), Outcome::Ok, (0, 1)),
            register(7, 1, RegisterOp::Read(None), Outcome::Ok, (2, 3)),
        ];
        assert_eq!(non_linearizable_registers(&stale).len(), 1);
        // A write of unknown outcome may take effect after its call: a later read seeing it is fine.
        let late = [
            register(7, 0, RegisterOp::Write(1), Outcome::Info, (0, 1)),
            register(7, 1, RegisterOp::Read(None), Outcome::Ok, (2, 3)),
            register(7, 1, RegisterOp::Read(Some(1)), Outcome::Ok, (4, 5)),
        ];
        assert!(non_linearizable_registers(&late).is_empty());
        // A compare-and-set that failed although the value it compared with was current.
        let bad_cas = [
            register(7, 0, RegisterOp::Write(1), Outcome::Ok, (0, 1)),
            register(7, 0, RegisterOp::Cas(1, 2), Outcome::Fail, (2, 3)),
        ];
        assert_eq!(non_linearizable_registers(&bad_cas).len(), 1);
    }

    #[test]
    fn faults_checker_finds_a_lost_append_and_write_skew_in_transactions() {
        let txn = |process, mops, outcome, invoked, completed| TxnRecord {
            process,
            mops,
            outcome,
            invoked,
            completed,
        };
        // An acknowledged append to list 1 that a later read does not show.
        let lost = [
            txn(0, vec![Mop::Append(1, 10)], Outcome::Ok, 0, 1),
            txn(1, vec![Mop::Append(1, 11)], Outcome::Ok, 2, 3),
            txn(2, vec![Mop::Read(1, Some(vec![11]))], Outcome::Ok, 4, 5),
        ];
        assert!(adya_strict_serializable(&elle_history(&lost)).is_err());
        // Write skew: each reads both lists empty and appends to a different one.
        let skew = [
            txn(
                0,
                vec![
                    Mop::Read(1, Some(vec![])),
                    Mop::Read(2, Some(vec![])),
                    Mop::Append(1, 1),
                ],
                Outcome::Ok,
                0,
                2,
            ),
            txn(
                1,
                vec![
                    Mop::Read(1, Some(vec![])),
                    Mop::Read(2, Some(vec![])),
                    Mop::Append(2, 2),
                ],
                Outcome::Ok,
                1,
                3,
            ),
            txn(
                2,
                vec![Mop::Read(1, Some(vec![1])), Mop::Read(2, Some(vec![2]))],
                Outcome::Ok,
                4,
                5,
            ),
        ];
        assert!(adya_strict_serializable(&elle_history(&skew)).is_err());
        let fine = [
            txn(0, vec![Mop::Append(1, 10)], Outcome::Ok, 0, 1),
            txn(
                1,
                vec![Mop::Read(1, Some(vec![10])), Mop::Append(2, 3)],
                Outcome::Ok,
                2,
                3,
            ),
            txn(2, vec![Mop::Read(2, Some(vec![3]))], Outcome::Ok, 4, 5),
        ];
        assert!(adya_strict_serializable(&elle_history(&fine)).is_ok());
    }
}
