//! What applying one committed write costs the state machine, the writer thread's share of a
//! put-heavy load: an etcd put of a 256-byte value over a state of 65,536 keys (the
//! `colony bench` put workload's key space at 64 clients), with and without `prev_kv`, and a
//! ten-key transaction.
//!
//! `cargo bench -p colony-store --bench apply`

use std::hint::black_box;

use colony_store::{Command, Entry, KvOp, KvTxn, PutOp, StateMachine};
use criterion::{Criterion, criterion_group, criterion_main};

const KEYS: u64 = 65_536;

fn key(i: u64) -> colony_store::Key {
    format!("bench/{:05}", i % KEYS).as_str().into()
}

fn put(i: u64, prev_kv: bool) -> Command {
    Command::KvTxn(KvTxn::single(KvOp::Put(PutOp {
        key: key(i),
        value: vec![b'v'; 256],
        prev_kv,
        ..PutOp::default()
    })))
}

/// A state holding every key once.
fn filled() -> StateMachine {
    let mut state = StateMachine::new();
    for i in 0..KEYS {
        apply(&mut state, put(i, false));
    }
    state
}

fn apply(state: &mut StateMachine, command: Command) -> bool {
    let index = state.applied_index() + 1;
    let entry = Entry {
        time_ms: index,
        command,
    };
    let (outcome, changes) = state.apply(index, &entry);
    black_box(&outcome);
    !changes.is_empty()
}

fn apply_puts(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    let mut state = filled();
    // A stride coprime with the key count visits keys in a scattered order, as 64 clients do.
    let mut i = 0u64;
    for (name, prev_kv) in [
        ("etcd put, 65,536 keys", false),
        ("etcd put with prev_kv, 65,536 keys", true),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    i += 40_503;
                    put(i, prev_kv)
                },
                |command| apply(&mut state, command),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.bench_function("etcd txn of 10 puts, 65,536 keys", |b| {
        b.iter_batched(
            || {
                let ops = (0..10)
                    .map(|_| {
                        i += 40_503;
                        let Command::KvTxn(txn) = put(i, false) else {
                            unreachable!("a put is a txn")
                        };
                        txn.success.into_iter().next().expect("one op")
                    })
                    .collect();
                Command::KvTxn(KvTxn {
                    success: ops,
                    ..KvTxn::default()
                })
            },
            |command| apply(&mut state, command),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, apply_puts);
criterion_main!(benches);
