//! Tests of the state machine's rules, each against Consul's documented semantics.

use crate::*;
use std::collections::BTreeMap;

struct Harness {
    state: StateMachine,
    time_ms: u64,
}

impl Harness {
    fn new() -> Self {
        let mut harness = Harness {
            state: StateMachine::new(),
            time_ms: 1_000,
        };
        harness.apply(Command::CatalogRegister(registration(
            "n1",
            vec![node_check("n1")],
        )));
        harness
    }

    fn apply(&mut self, command: Command) -> Outcome {
        let index = self.state.applied_index() + 1;
        let (outcome, _) = self.state.apply(
            index,
            &Entry {
                time_ms: self.time_ms,
                command,
            },
        );
        self.state.check_invariants();
        outcome
    }

    fn set(&mut self, key: &str, value: &str, mode: KvSetMode) -> Outcome {
        self.apply(Command::KvSet {
            key: key.into(),
            value: value.into(),
            flags: 0,
            mode,
        })
    }

    fn session(&mut self, id: &str, behavior: SessionBehavior, lock_delay_ms: u64) {
        let session = Session {
            id: id.into(),
            name: String::new(),
            node: "n1".into(),
            node_checks: vec![NODE_HEALTH_CHECK_ID.into()],
            service_checks: vec![],
            behavior,
            ttl_ms: 0,
            lock_delay_ms,
            lease_id: id.bytes().map(i64::from).sum(),
            create_index: 0,
            modify_index: 0,
        };
        assert_eq!(self.apply(Command::SessionCreate(session)), Outcome::Done);
    }
}

fn registration(node: &str, checks: Vec<Check>) -> CatalogRegistration {
    CatalogRegistration {
        node: Node {
            id: format!("id-{node}"),
            name: node.into(),
            address: "127.0.0.1".into(),
            tagged_addresses: BTreeMap::new(),
            meta: BTreeMap::new(),
            create_index: 0,
            modify_index: 0,
        },
        service: None,
        checks,
        replace_service_checks: false,
    }
}

fn node_check(node: &str) -> Check {
    Check {
        node: node.into(),
        id: NODE_HEALTH_CHECK_ID.into(),
        name: "Serf Health Status".into(),
        status: HealthStatus::Passing,
        notes: String::new(),
        output: String::new(),
        service_id: String::new(),
        service_name: String::new(),
        service_tags: vec![],
        definition: CheckDefinition::default(),
        status_observed_ms: 0,
        create_index: 0,
        modify_index: 0,
    }
}

#[test]
fn kv_cas_zero_creates_only_when_absent() {
    let mut h = Harness::new();
    assert_eq!(h.set("k", "a", KvSetMode::Cas(0)), Outcome::Bool(true));
    assert_eq!(h.set("k", "b", KvSetMode::Cas(0)), Outcome::Bool(false));
    assert_eq!(h.state.kv_get("k").expect("exists").value[..], b"a"[..]);
}

#[test]
fn kv_cas_stale_index_is_refused() {
    let mut h = Harness::new();
    h.set("k", "a", KvSetMode::Set);
    let index = h.state.kv_get("k").expect("exists").modify_index;
    h.set("k", "b", KvSetMode::Set);
    assert_eq!(h.set("k", "c", KvSetMode::Cas(index)), Outcome::Bool(false));
    let current = h.state.kv_get("k").expect("exists").modify_index;
    assert_eq!(
        h.set("k", "c", KvSetMode::Cas(current)),
        Outcome::Bool(true)
    );
    let entry = h.state.kv_get("k").expect("exists");
    assert!(entry.create_index < entry.modify_index);
}

#[test]
fn kv_delete_missing_key_still_moves_the_kv_index() {
    let mut h = Harness::new();
    let before = h.state.table_index(Table::Kvs);
    h.apply(Command::KvDelete {
        key: "nope".into(),
        recurse: false,
        cas: None,
    });
    assert!(h.state.table_index(Table::Kvs) > before);
}

#[test]
fn kv_list_keys_folds_at_separator() {
    let mut h = Harness::new();
    for key in ["a/b/c", "a/b/d", "a/e", "b"] {
        h.set(key, "", KvSetMode::Set);
    }
    assert_eq!(h.state.kv_list_keys("a/", Some("/")), vec!["a/b/", "a/e"]);
    assert_eq!(h.state.kv_list_keys("", None).len(), 4);
}

#[test]
fn lock_second_session_cannot_acquire() {
    let mut h = Harness::new();
    h.session("s1", SessionBehavior::Release, 0);
    h.session("s2", SessionBehavior::Release, 0);
    assert_eq!(
        h.set("lock", "x", KvSetMode::Acquire("s1".into())),
        Outcome::Bool(true)
    );
    assert_eq!(
        h.set("lock", "y", KvSetMode::Acquire("s2".into())),
        Outcome::Bool(false)
    );
    assert_eq!(
        h.set("lock", "z", KvSetMode::Acquire("s1".into())),
        Outcome::Bool(true)
    );
    let entry = h.state.kv_get("lock").expect("exists");
    assert_eq!(
        entry.lock_index, 1,
        "re-acquire by the holder is not a new acquisition"
    );
    assert_eq!(entry.session.as_deref(), Some("s1"));
}

#[test]
fn lock_acquire_with_unknown_session_is_rejected() {
    let mut h = Harness::new();
    let outcome = h.set("lock", "x", KvSetMode::Acquire("ghost".into()));
    assert!(matches!(outcome, Outcome::Rejected(r) if r.message.contains("invalid session")));
    assert!(h.state.kv_get("lock").is_none(), "nothing written");
}

#[test]
fn lock_destroy_releases_and_lock_delay_blocks_then_expires() {
    let mut h = Harness::new();
    h.session("s1", SessionBehavior::Release, 15_000);
    h.session("s2", SessionBehavior::Release, 0);
    h.set("lock", "x", KvSetMode::Acquire("s1".into()));
    h.apply(Command::SessionDestroy { id: "s1".into() });
    assert_eq!(h.state.kv_get("lock").expect("kept").session, None);
    h.time_ms += 14_999;
    assert_eq!(
        h.set("lock", "y", KvSetMode::Acquire("s2".into())),
        Outcome::Bool(false)
    );
    h.time_ms += 1;
    assert_eq!(
        h.set("lock", "y", KvSetMode::Acquire("s2".into())),
        Outcome::Bool(true)
    );
    assert_eq!(h.state.kv_get("lock").expect("kept").lock_index, 2);
}

#[test]
fn lock_behavior_delete_deletes_held_keys() {
    let mut h = Harness::new();
    h.session("s1", SessionBehavior::Delete, 0);
    h.set("lock", "x", KvSetMode::Acquire("s1".into()));
    h.apply(Command::SessionDestroy { id: "s1".into() });
    assert!(h.state.kv_get("lock").is_none());
}

#[test]
fn session_check_going_critical_invalidates_session() {
    let mut h = Harness::new();
    h.session("s1", SessionBehavior::Release, 0);
    h.set("lock", "x", KvSetMode::Acquire("s1".into()));
    h.apply(Command::CheckUpdate {
        node: "n1".into(),
        check_id: NODE_HEALTH_CHECK_ID.into(),
        status: HealthStatus::Critical,
        output: "down".into(),
    });
    assert!(h.state.session("s1").is_none());
    assert_eq!(h.state.kv_get("lock").expect("kept").session, None);
}

#[test]
fn session_create_with_critical_check_is_refused() {
    let mut h = Harness::new();
    h.apply(Command::CheckUpdate {
        node: "n1".into(),
        check_id: NODE_HEALTH_CHECK_ID.into(),
        status: HealthStatus::Critical,
        output: String::new(),
    });
    let session = Session {
        id: "s".into(),
        name: String::new(),
        node: "n1".into(),
        node_checks: vec![NODE_HEALTH_CHECK_ID.into()],
        service_checks: vec![],
        behavior: SessionBehavior::Release,
        ttl_ms: 0,
        lock_delay_ms: 0,
        lease_id: 7,
        create_index: 0,
        modify_index: 0,
    };
    let outcome = h.apply(Command::SessionCreate(session));
    assert!(matches!(outcome, Outcome::Rejected(r) if r.message.contains("critical")));
}

#[test]
fn txn_failure_rolls_back_everything() {
    let mut h = Harness::new();
    h.set("a", "1", KvSetMode::Set);
    let outcome = h.apply(Command::Txn {
        ops: vec![
            TxnOp::Set {
                key: "a".into(),
                value: b"2".to_vec(),
                flags: 0,
            },
            TxnOp::Set {
                key: "new".into(),
                value: b"x".to_vec(),
                flags: 0,
            },
            TxnOp::Get {
                key: "missing".into(),
            },
        ],
    });
    assert!(matches!(outcome, Outcome::Txn(TxnOutcome::RolledBack(ref e)) if e[0].op_index == 2));
    assert_eq!(h.state.kv_get("a").expect("kept").value[..], b"1"[..]);
    assert!(h.state.kv_get("new").is_none());
}

#[test]
fn catalog_deregister_service_removes_its_checks() {
    let mut h = Harness::new();
    let mut reg = registration("n1", vec![]);
    reg.service = Some(Service {
        node: "n1".into(),
        id: "web-1".into(),
        name: "web".into(),
        tags: vec!["v1".into()],
        address: String::new(),
        port: 80,
        meta: BTreeMap::new(),
        weights: Weights::default(),
        enable_tag_override: false,
        create_index: 0,
        modify_index: 0,
    });
    let mut check = node_check("n1");
    check.id = "web-http".into();
    check.service_id = "web-1".into();
    reg.checks = vec![check];
    assert_eq!(h.apply(Command::CatalogRegister(reg)), Outcome::Done);
    assert_eq!(
        h.state
            .check("n1", "web-http")
            .expect("registered")
            .service_name,
        "web"
    );
    h.apply(Command::CatalogDeregister {
        node: "n1".into(),
        service_id: Some("web-1".into()),
        check_id: None,
    });
    assert!(h.state.check("n1", "web-http").is_none());
    assert!(h.state.check("n1", NODE_HEALTH_CHECK_ID).is_some());
}

fn arbitrary_command() -> impl proptest::strategy::Strategy<Value = Command> {
    use proptest::prelude::*;
    let key = prop::sample::select(vec!["a", "a/b", "a/c", "b", "lock"]);
    let session = prop::sample::select(vec!["s1", "s2"]);
    prop_oneof![
        (key.clone(), any::<u8>(), 0i64..3).prop_map(|(k, v, lease)| Command::KvTxn(
            KvTxn::single(KvOp::Put(PutOp {
                key: k.into(),
                value: vec![v],
                lease,
                ..PutOp::default()
            }))
        )),
        key.clone()
            .prop_map(|k| Command::KvTxn(KvTxn::single(KvOp::Delete(DeleteOp {
                range: KeyRange::prefix(k),
                prev_kv: true,
            })))),
        (0u64..40).prop_map(|revision| Command::KvCompact { revision }),
        (key.clone(), any::<u8>()).prop_map(|(k, v)| Command::KvSet {
            key: k.into(),
            value: vec![v],
            flags: 0,
            mode: KvSetMode::Set
        }),
        (key.clone(), 0u64..20).prop_map(|(k, i)| Command::KvSet {
            key: k.into(),
            value: vec![],
            flags: 0,
            mode: KvSetMode::Cas(i)
        }),
        (key.clone(), session.clone()).prop_map(|(k, s)| Command::KvSet {
            key: k.into(),
            value: vec![],
            flags: 0,
            mode: KvSetMode::Acquire(s.into())
        }),
        (key.clone(), any::<bool>()).prop_map(|(k, r)| Command::KvDelete {
            key: k.into(),
            recurse: r,
            cas: None
        }),
        session
            .clone()
            .prop_map(|s| Command::SessionDestroy { id: s.into() }),
        session.prop_map(|s| Command::SessionCreate(Session {
            lease_id: if s == "s1" { 1 } else { 2 },
            id: s.into(),
            name: String::new(),
            node: "n1".into(),
            node_checks: vec![],
            service_checks: vec![],
            behavior: SessionBehavior::Release,
            ttl_ms: 0,
            lock_delay_ms: 5,
            create_index: 0,
            modify_index: 0,
        })),
    ]
}

proptest::proptest! {
    #[test]
    fn apply_is_deterministic_and_snapshots_round_trip(
        commands in proptest::collection::vec(arbitrary_command(), 1..60)
    ) {
        let mut a = Harness::new();
        let mut b = Harness::new();
        for command in commands {
            a.time_ms += 1;
            b.time_ms += 1;
            let left = a.apply(command.clone());
            let right = b.apply(command);
            proptest::prop_assert_eq!(left, right);
        }
        proptest::prop_assert_eq!(&a.state, &b.state);
        let bytes = a.state.to_snapshot();
        let mut streamed = Vec::new();
        a.state.write_snapshot(&mut streamed).expect("write to a Vec");
        proptest::prop_assert_eq!(&streamed, &bytes);
        let restored = StateMachine::from_snapshot(&bytes).expect("snapshot");
        proptest::prop_assert_eq!(restored, a.state);
    }
}

/// A writer that takes `room` bytes, then fails as a full disk does.
struct FullAfter {
    room: usize,
}

impl std::io::Write for FullAfter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::Error::from_raw_os_error(28));
        }
        let taken = bytes.len().min(self.room);
        self.room -= taken;
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_streamed_snapshot_reports_the_writers_own_error() {
    let mut harness = Harness::new();
    for n in 0..50 {
        harness.apply(Command::KvSet {
            key: format!("k{n}"),
            value: vec![7; 100],
            flags: 0,
            mode: KvSetMode::Set,
        });
    }
    let full = harness.state.to_snapshot().len();
    for room in [0, 1, full / 2, full - 1] {
        let error = harness
            .state
            .write_snapshot(&mut FullAfter { room })
            .expect_err("the writer runs out of room");
        assert_eq!(error.raw_os_error(), Some(28), "room {room}: {error}");
    }
    harness
        .state
        .write_snapshot(&mut FullAfter { room: full })
        .expect("exactly enough room");
}

/// Values became reference-counted `Bytes` after snapshots were written with `Vec<u8>`
/// values: both must encode alike, so that existing data directories still load.
#[test]
fn kv_entry_values_encode_exactly_as_vectors_did() {
    #[derive(serde::Serialize)]
    struct VecValued {
        key: String,
        value: Vec<u8>,
        flags: u64,
        session: Option<String>,
        lock_index: u64,
        create_index: u64,
        modify_index: u64,
        version: u64,
        lease: i64,
    }
    let value: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let old = VecValued {
        key: "k".into(),
        value: value.clone(),
        flags: 7,
        session: Some("s".into()),
        lock_index: 2,
        create_index: 3,
        modify_index: 4,
        version: 5,
        lease: -6,
    };
    let old_bytes = postcard::to_allocvec(&old).expect("encode");
    let entry: crate::KvEntry = postcard::from_bytes(&old_bytes).expect("decode");
    assert_eq!(&entry.value[..], &value[..]);
    assert_eq!(entry.lease, -6);
    assert_eq!(postcard::to_allocvec(&entry).expect("encode"), old_bytes);
}
