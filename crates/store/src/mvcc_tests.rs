//! Tests of the etcd dialect's KV: revisions, history, ranges, transactions and leases, each
//! against etcd's documented semantics.

use crate::*;
use std::collections::BTreeMap;

fn apply(state: &mut StateMachine, command: Command) -> Outcome {
    let index = state.applied_index() + 1;
    let (outcome, _) = state.apply(
        index,
        &Entry {
            time_ms: 1_000 + index,
            command,
        },
    );
    state.check_invariants();
    outcome
}

fn put(state: &mut StateMachine, key: &str, value: &str, lease: i64) -> Outcome {
    apply(
        state,
        Command::KvTxn(KvTxn::single(KvOp::Put(PutOp {
            key: key.into(),
            value: value.into(),
            lease,
            prev_kv: true,
            ..PutOp::default()
        }))),
    )
}

fn range(state: &StateMachine, query: RangeQuery) -> Result<RangeResult, RangeError> {
    state.kv_range(&query)
}

fn keys(result: &RangeResult) -> Vec<&str> {
    result
        .kvs
        .iter()
        .map(|e| e.key.as_str().expect("UTF-8 key"))
        .collect()
}

fn with_node() -> StateMachine {
    let mut state = StateMachine::new();
    apply(
        &mut state,
        Command::CatalogRegister(CatalogRegistration {
            node: Node {
                id: "id".into(),
                name: "n1".into(),
                address: "127.0.0.1".into(),
                tagged_addresses: BTreeMap::new(),
                meta: BTreeMap::new(),
                create_index: 0,
                modify_index: 0,
            },
            service: None,
            checks: vec![],
            replace_service_checks: false,
        }),
    );
    state
}

fn lease(state: &mut StateMachine, id: i64) {
    let session = Session {
        id: format!("session-{id}"),
        name: String::new(),
        node: "n1".into(),
        node_checks: vec![],
        service_checks: vec![],
        behavior: SessionBehavior::Delete,
        ttl_ms: 10_000,
        lock_delay_ms: 0,
        lease_id: id,
        create_index: 0,
        modify_index: 0,
    };
    assert_eq!(apply(state, Command::SessionCreate(session)), Outcome::Done);
}

#[test]
fn versions_count_writes_since_creation_and_reset_on_delete() {
    let mut state = StateMachine::new();
    put(&mut state, "k", "a", 0);
    put(&mut state, "k", "b", 0);
    let entry = state.kv_get("k").expect("written").clone();
    assert_eq!(
        (entry.version, entry.create_index, entry.modify_index),
        (2, 1, 2)
    );
    apply(
        &mut state,
        Command::KvTxn(KvTxn::single(KvOp::Delete(DeleteOp {
            range: KeyRange::key("k"),
            prev_kv: false,
        }))),
    );
    put(&mut state, "k", "c", 0);
    let entry = state.kv_get("k").expect("written again");
    assert_eq!((entry.version, entry.create_index), (1, 4));
}

#[test]
fn ranges_follow_etcd_key_conventions() {
    let mut state = StateMachine::new();
    for key in ["a", "a/1", "a/2", "a0", "b", "c"] {
        put(&mut state, key, key, 0);
    }
    let query = |range: KeyRange| RangeQuery {
        range,
        ..RangeQuery::default()
    };
    let prefix = range(&state, query(KeyRange::prefix("a/"))).expect("read");
    assert_eq!(keys(&prefix), ["a/1", "a/2"]);
    let from_b = range(
        &state,
        query(KeyRange {
            start: b"b".to_vec(),
            end: vec![0],
        }),
    )
    .expect("read");
    assert_eq!(keys(&from_b), ["b", "c"]);
    let span = range(
        &state,
        query(KeyRange {
            start: b"a/".to_vec(),
            end: b"b".to_vec(),
        }),
    )
    .expect("read");
    assert_eq!(keys(&span), ["a/1", "a/2", "a0"]);
    let all = range(&state, query(KeyRange::prefix(""))).expect("read");
    assert_eq!(all.count, 6);
    let one = range(&state, query(KeyRange::key("a"))).expect("read");
    assert_eq!(keys(&one), ["a"]);
    // A start key that is not UTF-8 still bounds the scan as bytes.
    let binary_start = range(
        &state,
        query(KeyRange {
            start: vec![b'a', 0xff],
            end: vec![0],
        }),
    )
    .expect("read");
    assert_eq!(keys(&binary_start), ["b", "c"]);
    assert_eq!(prefix_end(b"a\xff\xff"), b"b");
    assert_eq!(prefix_end(b"\xff"), [0]);
}

#[test]
fn sort_limit_and_filters_apply_in_etcds_order() {
    let mut state = StateMachine::new();
    put(&mut state, "p/c", "1", 0); // rev 1
    put(&mut state, "p/a", "3", 0); // rev 2
    put(&mut state, "p/b", "2", 0); // rev 3
    put(&mut state, "p/c", "9", 0); // rev 4
    let base = RangeQuery {
        range: KeyRange::prefix("p/"),
        ..RangeQuery::default()
    };
    let by_create = range(
        &state,
        RangeQuery {
            sort_target: SortTarget::Create,
            limit: 1,
            ..base.clone()
        },
    )
    .expect("read");
    assert_eq!(keys(&by_create), ["p/c"]);
    assert!(by_create.more);
    assert_eq!(by_create.count, 3);
    let by_mod_desc = range(
        &state,
        RangeQuery {
            sort_target: SortTarget::Mod,
            sort_order: SortOrder::Descend,
            ..base.clone()
        },
    )
    .expect("read");
    assert_eq!(keys(&by_mod_desc), ["p/c", "p/b", "p/a"]);
    let by_value = range(
        &state,
        RangeQuery {
            sort_target: SortTarget::Value,
            ..base.clone()
        },
    )
    .expect("read");
    assert_eq!(keys(&by_value), ["p/b", "p/a", "p/c"]);
    let older_creations = range(
        &state,
        RangeQuery {
            max_create_revision: 2,
            sort_target: SortTarget::Create,
            sort_order: SortOrder::Descend,
            limit: 1,
            ..base.clone()
        },
    )
    .expect("read");
    assert_eq!(keys(&older_creations), ["p/a"]);
    let counted = range(
        &state,
        RangeQuery {
            count_only: true,
            ..base.clone()
        },
    )
    .expect("read");
    assert!(counted.kvs.is_empty());
    assert_eq!(counted.count, 3);
    let keys_only = range(
        &state,
        RangeQuery {
            keys_only: true,
            ..base
        },
    )
    .expect("read");
    assert!(keys_only.kvs.iter().all(|e| e.value.is_empty()));
}

#[test]
fn compaction_and_future_revisions_are_refused() {
    let mut state = StateMachine::new();
    for i in 0..5 {
        put(&mut state, "k", &i.to_string(), 0);
    }
    let at = |state: &StateMachine, revision| {
        range(
            state,
            RangeQuery {
                range: KeyRange::key("k"),
                revision,
                ..RangeQuery::default()
            },
        )
    };
    assert_eq!(at(&state, 2).expect("kept").kvs[0].value[..], b"1"[..]);
    assert!(matches!(at(&state, 6), Err(RangeError::Future { .. })));
    assert_eq!(
        apply(&mut state, Command::KvCompact { revision: 3 }),
        Outcome::Done
    );
    assert!(matches!(at(&state, 2), Err(RangeError::Compacted(_))));
    assert_eq!(
        at(&state, 3)
            .expect("compacted revision itself is kept")
            .kvs[0]
            .value[..],
        b"2"[..]
    );
    assert!(state.history().since(2).is_err());
    assert_eq!(state.history().since(3).expect("kept").count(), 3);
    let again = apply(&mut state, Command::KvCompact { revision: 3 });
    assert!(matches!(again, Outcome::Rejected(r) if r.message == reject::COMPACTED));
    let future = apply(&mut state, Command::KvCompact { revision: 99 });
    assert!(matches!(future, Outcome::Rejected(r) if r.message == reject::FUTURE_REV));
}

#[test]
fn txn_compares_pick_a_branch_and_apply_at_one_revision() {
    let mut state = StateMachine::new();
    put(&mut state, "lock/x", "", 0);
    // etcd's lock recipe: create the key only if it does not exist, else read it.
    let create_if_absent = |key: &str| {
        Command::KvTxn(KvTxn {
            compares: vec![Compare {
                range: KeyRange::key(key),
                op: CompareOp::Equal,
                target: CompareTarget::Create(0),
            }],
            success: vec![
                KvOp::Put(PutOp {
                    key: key.into(),
                    value: b"mine".to_vec(),
                    ..PutOp::default()
                }),
                KvOp::Put(PutOp {
                    key: format!("{key}/owner").into(),
                    value: b"me".to_vec(),
                    ..PutOp::default()
                }),
            ],
            failure: vec![KvOp::Range(RangeQuery {
                range: KeyRange::key(key),
                ..RangeQuery::default()
            })],
        })
    };
    let Outcome::KvTxn(taken) = apply(&mut state, create_if_absent("lock/x")) else {
        panic!("a txn result");
    };
    assert!(!taken.succeeded);
    assert!(matches!(&taken.results[0], KvOpResult::Range(r) if r.kvs[0].value.is_empty()));
    let Outcome::KvTxn(created) = apply(&mut state, create_if_absent("lock/y")) else {
        panic!("a txn result");
    };
    assert!(created.succeeded);
    let revision = state.applied_index();
    assert_eq!(state.kv_get("lock/y").expect("put").modify_index, revision);
    assert_eq!(
        state.kv_get("lock/y/owner").expect("put").modify_index,
        revision
    );
    // A missing key never matches a value compare, but compares as zero on the other fields.
    let value_of_missing = Command::KvTxn(KvTxn {
        compares: vec![Compare {
            range: KeyRange::key("nope"),
            op: CompareOp::NotEqual,
            target: CompareTarget::Value(b"x".to_vec()),
        }],
        ..KvTxn::default()
    });
    assert!(matches!(apply(&mut state, value_of_missing), Outcome::KvTxn(r) if !r.succeeded));
    // A range compare holds only if every key in the range satisfies it.
    let all_versions = |version| {
        Command::KvTxn(KvTxn {
            compares: vec![Compare {
                range: KeyRange::prefix("lock/"),
                op: CompareOp::Equal,
                target: CompareTarget::Version(version),
            }],
            ..KvTxn::default()
        })
    };
    assert!(matches!(apply(&mut state, all_versions(1)), Outcome::KvTxn(r) if r.succeeded));
    assert!(matches!(apply(&mut state, all_versions(2)), Outcome::KvTxn(r) if !r.succeeded));
}

#[test]
fn a_txn_range_at_its_own_revision_is_refused_not_applied() {
    let mut state = StateMachine::new();
    put(&mut state, "k", "v", 0);
    let own_revision = state.applied_index() + 1;
    let txn = Command::KvTxn(KvTxn {
        success: vec![
            KvOp::Range(RangeQuery {
                range: KeyRange::key("k"),
                revision: own_revision,
                ..RangeQuery::default()
            }),
            KvOp::Put(PutOp {
                key: "k".into(),
                value: b"w".to_vec(),
                ..PutOp::default()
            }),
        ],
        ..KvTxn::default()
    });
    let outcome = apply(&mut state, txn);
    assert!(matches!(outcome, Outcome::Rejected(r) if r.message == reject::FUTURE_REV));
    assert_eq!(state.kv_get("k").expect("kept").value[..], b"v"[..]);
}

#[test]
fn reads_inside_a_txn_see_its_earlier_writes() {
    let mut state = StateMachine::new();
    let txn = Command::KvTxn(KvTxn {
        success: vec![
            KvOp::Put(PutOp {
                key: "k".into(),
                value: b"new".to_vec(),
                ..PutOp::default()
            }),
            KvOp::Range(RangeQuery {
                range: KeyRange::key("k"),
                ..RangeQuery::default()
            }),
        ],
        ..KvTxn::default()
    });
    let Outcome::KvTxn(result) = apply(&mut state, txn) else {
        panic!("a txn result");
    };
    assert!(matches!(&result.results[1], KvOpResult::Range(r) if r.kvs[0].value[..] == b"new"[..]));
}

#[test]
fn binary_keys_are_ranged_watched_leased_and_snapshotted_as_bytes() {
    let mut state = with_node();
    lease(&mut state, 9);
    let binary: &[u8] = b"bin/\xff\x00\x80";
    let put_bytes = |key: &[u8], lease: i64| {
        Command::KvTxn(KvTxn::single(KvOp::Put(PutOp {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..PutOp::default()
        })))
    };
    let (_, changes) = state.apply(
        state.applied_index() + 1,
        &Entry {
            time_ms: 5_000,
            command: put_bytes(binary, 9),
        },
    );
    assert!(changes.contains(&Change::Key(binary.into())), "{changes:?}");
    apply(&mut state, put_bytes(b"bin/a", 0));
    apply(&mut state, put_bytes(b"bin/\xfe", 0));
    let listed = range(
        &state,
        RangeQuery {
            range: KeyRange::prefix("bin/"),
            ..RangeQuery::default()
        },
    )
    .expect("range");
    let keys: Vec<&[u8]> = listed.kvs.iter().map(|e| e.key.as_bytes()).collect();
    assert_eq!(keys, [&b"bin/a"[..], b"bin/\xfe", binary], "bytewise order");
    assert_eq!(state.kv_get(binary).map(|e| e.lease), Some(9));
    // Consul's key listing shows the bytes that are not UTF-8 as U+FFFD.
    assert_eq!(
        state.kv_list_keys("bin/", None),
        ["bin/a", "bin/\u{fffd}", "bin/\u{fffd}\0\u{fffd}"]
    );
    let restored = StateMachine::from_snapshot(&state.to_snapshot()).expect("snapshot");
    assert_eq!(restored, state);
    apply(
        &mut state,
        Command::SessionDestroy {
            id: "session-9".into(),
        },
    );
    assert!(
        state.kv_get(binary).is_none(),
        "revoking the lease deletes the key"
    );
    let last = state.history().since(state.applied_index()).expect("kept");
    assert_eq!(
        last.map(|e| e.key.clone()).collect::<Vec<_>>(),
        [Key::from(binary)]
    );
}

#[test]
fn leases_attach_keys_and_revoking_deletes_them_in_one_revision() {
    let mut state = with_node();
    lease(&mut state, 42);
    put(&mut state, "svc/a", "1", 42);
    put(&mut state, "svc/b", "2", 42);
    put(&mut state, "other", "3", 0);
    // Re-putting without the lease detaches the key.
    put(&mut state, "svc/b", "2", 0);
    assert_eq!(state.lease_keys(42).collect::<Vec<_>>(), ["svc/a"]);
    let unknown = put(&mut state, "x", "", 7);
    assert!(matches!(unknown, Outcome::Rejected(r) if r.message == reject::LEASE_NOT_FOUND));
    assert!(state.kv_get("x").is_none());
    put(&mut state, "svc/c", "4", 42);
    apply(
        &mut state,
        Command::SessionDestroy {
            id: "session-42".into(),
        },
    );
    let revoked_at = state.applied_index();
    assert!(state.kv_get("svc/a").is_none() && state.kv_get("svc/c").is_none());
    assert!(state.kv_get("svc/b").is_some());
    let deletions: Vec<&KvEvent> = state.history().since(revoked_at).expect("kept").collect();
    assert_eq!(deletions.len(), 2);
    assert!(deletions.iter().all(|e| e.kv.is_none()));
    assert!(state.lease_session(42).is_none());
    let duplicate = Session {
        id: "again".into(),
        name: String::new(),
        node: "n1".into(),
        node_checks: vec![],
        service_checks: vec![],
        behavior: SessionBehavior::Delete,
        ttl_ms: 0,
        lock_delay_ms: 0,
        lease_id: 43,
        create_index: 0,
        modify_index: 0,
    };
    assert_eq!(
        apply(&mut state, Command::SessionCreate(duplicate.clone())),
        Outcome::Done
    );
    let clash = apply(
        &mut state,
        Command::SessionCreate(Session {
            id: "other".into(),
            ..duplicate
        }),
    );
    assert!(matches!(clash, Outcome::Rejected(r) if r.message == reject::LEASE_EXISTS));
}

#[test]
fn ignore_value_and_ignore_lease_need_an_existing_key() {
    let mut state = with_node();
    lease(&mut state, 5);
    let keep = |ignore_value, ignore_lease| {
        Command::KvTxn(KvTxn::single(KvOp::Put(PutOp {
            key: "k".into(),
            value: b"v2".to_vec(),
            lease: 0,
            prev_kv: false,
            ignore_value,
            ignore_lease,
        })))
    };
    let missing = apply(&mut state, keep(true, false));
    assert!(matches!(missing, Outcome::Rejected(r) if r.message == reject::KEY_NOT_FOUND));
    put(&mut state, "k", "v1", 5);
    apply(&mut state, keep(true, true));
    let entry = state.kv_get("k").expect("kept");
    assert_eq!(
        (entry.value.as_ref(), entry.lease, entry.version),
        (&b"v1"[..], 5, 2)
    );
}

fn arbitrary_write() -> impl proptest::strategy::Strategy<Value = Command> {
    use proptest::prelude::*;
    let key = prop::sample::select(vec!["a", "a/b", "a/c", "b", "c/d"]);
    prop_oneof![
        4 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Command::KvTxn(KvTxn::single(
            KvOp::Put(PutOp { key: k.into(), value: vec![v], ..PutOp::default() })
        ))),
        1 => key.clone().prop_map(|k| Command::KvTxn(KvTxn::single(KvOp::Delete(DeleteOp {
            range: KeyRange::prefix(k),
            prev_kv: false,
        })))),
        1 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Command::KvSet {
            key: k.into(),
            value: vec![v],
            flags: 0,
            mode: KvSetMode::Set,
        }),
        1 => (key, any::<bool>()).prop_map(|(k, recurse)| Command::KvDelete {
            key: k.into(),
            recurse,
            cas: None,
        }),
        1 => Just(Command::Noop),
        // A transaction that reads at any revision, then writes: refused or applied, never a
        // panic.
        1 => (0u64..100, any::<u8>()).prop_map(|(revision, v)| Command::KvTxn(KvTxn {
            success: vec![
                KvOp::Range(RangeQuery {
                    range: KeyRange::prefix(""),
                    revision,
                    ..RangeQuery::default()
                }),
                KvOp::Put(PutOp { key: "a".into(), value: vec![v], ..PutOp::default() }),
            ],
            ..KvTxn::default()
        })),
    ]
}

proptest::proptest! {
    /// Reading at any retained revision gives exactly the KV as it was then, and the history
    /// replays every change in order.
    #[test]
    fn reads_at_old_revisions_match_the_past(
        writes in proptest::collection::vec(arbitrary_write(), 1..80),
        compact_at in 0usize..80,
    ) {
        let mut state = StateMachine::new();
        let mut past: Vec<BTreeMap<Key, KvEntry>> = vec![BTreeMap::new()];
        for (i, write) in writes.into_iter().enumerate() {
            apply(&mut state, write);
            if i == compact_at {
                let revision = state.applied_index() / 2 + 1;
                apply(&mut state, Command::KvCompact { revision });
            }
            while past.len() <= state.applied_index() as usize {
                past.push(state.kv_in_range(&KeyRange::prefix("")).map(|e| (e.key.clone(), e.clone())).collect());
            }
        }
        let compacted = state.history().compacted_revision();
        for revision in 1..=state.applied_index() {
            let read = state.kv_range(&RangeQuery {
                range: KeyRange::prefix(""),
                revision,
                ..RangeQuery::default()
            });
            if revision < compacted {
                proptest::prop_assert!(read.is_err());
                continue;
            }
            let expected: Vec<KvEntry> = past[revision as usize].values().cloned().collect();
            proptest::prop_assert_eq!(read.expect("retained").kvs, expected);
        }
        // Replaying the retained history over the state at the compacted revision gives now.
        let start = compacted.max(1);
        let mut replay = past[start as usize - 1].clone();
        for event in state.history().since(start).expect("retained") {
            match &event.kv {
                Some(kv) => replay.insert(event.key.clone(), (**kv).clone()),
                None => replay.remove(event.key.as_bytes()),
            };
        }
        let now: BTreeMap<Key, KvEntry> = state.kv_in_range(&KeyRange::prefix("")).map(|e| (e.key.clone(), e.clone())).collect();
        proptest::prop_assert_eq!(replay, now);
    }
}

#[test]
fn a_txn_touching_many_keys_records_one_event_per_key_with_its_first_previous_entry() {
    // More keys than `note_kv` scans before it switches to a set, with the first key
    // written again last: one event per key, each with the entry from before the txn.
    let mut state = StateMachine::new();
    put(&mut state, "k00", "old", 0);
    let mut ops: Vec<KvOp> = (0..12)
        .map(|i| {
            KvOp::Put(PutOp {
                key: format!("k{i:02}").as_str().into(),
                value: format!("v{i}").into_bytes(),
                ..PutOp::default()
            })
        })
        .collect();
    ops.push(KvOp::Put(PutOp {
        key: "k00".into(),
        value: b"last".to_vec(),
        prev_kv: true,
        ..PutOp::default()
    }));
    let Outcome::KvTxn(result) = apply(
        &mut state,
        Command::KvTxn(KvTxn {
            success: ops,
            ..KvTxn::default()
        }),
    ) else {
        panic!("a txn result");
    };
    // The second put of k00 sees the first one's value as its previous entry.
    assert!(matches!(
        result.results.last(),
        Some(KvOpResult::Put { prev: Some(prev) }) if prev.value[..] == b"v0"[..]
    ));
    let revision = state.applied_index();
    let events: Vec<&KvEvent> = state.history().since(revision).expect("kept").collect();
    assert_eq!(events.len(), 12, "one event per key");
    let first = events
        .iter()
        .find(|e| e.key.as_bytes() == b"k00")
        .expect("k00's event");
    let after = first.kv.as_ref().expect("k00 exists after");
    assert_eq!(&after.value[..], b"last");
    assert_eq!(after.version, 3, "written three times since created");
    let before = first.prev.as_ref().expect("k00 existed before");
    assert_eq!(&before.value[..], b"old");
    for event in events.iter().filter(|e| e.key.as_bytes() != b"k00") {
        assert!(event.prev.is_none(), "{:?} is new", event.key);
        assert_eq!(event.kv.as_ref().map(|kv| kv.version), Some(1));
    }
}
