//! The state machine: applies entries, answers queries.

use crate::command::{
    CatalogRegistration, Command, Entry, KvSetMode, Outcome, Rejection, RejectionKind,
};
use crate::kv_txn::PutOp;
use crate::mvcc::{KvEvent, KvHistory};
use crate::types::{Check, HealthStatus, KvEntry, Node, Service, Session, SessionBehavior};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

/// A table of the state, for blocking-query indexes and watch topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Table {
    /// KV entries (including deletions).
    Kvs,
    /// Catalog nodes.
    Nodes,
    /// Service instances.
    Services,
    /// Health checks.
    Checks,
    /// Sessions.
    Sessions,
}

const TABLES: usize = 5;

/// Something an applied entry changed, so that watchers of it can wake.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// A KV key was written or deleted (prefix watchers of it wake too).
    Key(crate::Key),
    /// A table moved to a new index.
    Table(Table),
}

/// The whole replicated state. Equal entry sequences give equal states.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    applied_index: u64,
    table_index: [u64; TABLES],
    pub(crate) kv: BTreeMap<crate::Key, KvEntry>,
    /// Keys whose lock was released by a session invalidation, and until when (entry time, ms)
    /// they stay unacquirable.
    lock_delays: BTreeMap<crate::Key, u64>,
    nodes: BTreeMap<String, Node>,
    /// Keyed by (node, service ID).
    services: BTreeMap<(String, String), Service>,
    /// Keyed by (node, check ID).
    checks: BTreeMap<(String, String), Check>,
    sessions: BTreeMap<String, Session>,
    /// Session ID by lease ID (the etcd dialect's name for a session).
    leases: BTreeMap<i64, String>,
    /// Keys attached to each lease.
    lease_keys: BTreeMap<i64, BTreeSet<crate::Key>>,
    /// Recent KV changes, for reads at older revisions and watches that resume.
    history: KvHistory,
}

/// The version byte every snapshot starts with. Bump it when the state changes shape.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 2;

/// Why a snapshot could not be loaded. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot was written by another format version.
    #[error(
        "snapshot format version {0}, this build reads version {SNAPSHOT_FORMAT_VERSION} (written by an incompatible colony)"
    )]
    UnknownVersion(u8),
    /// The payload is malformed or truncated.
    #[error("malformed snapshot: {0}")]
    Malformed(#[from] postcard::Error),
}

pub(crate) struct ApplyCtx {
    pub(crate) index: u64,
    pub(crate) time_ms: u64,
    pub(crate) changes: Vec<Change>,
    /// Every KV key this entry touched, in first-touch order, with its entry before the first
    /// touch: turned into history events (and lease bookkeeping) once the entry is applied.
    kv_touched: Vec<(crate::Key, Option<KvEntry>)>,
    /// The keys of `kv_touched`, once it holds [`TOUCHED_SCAN_MAX`] or more (a shorter list
    /// is scanned: most entries touch one key).
    kv_touched_set: HashSet<crate::Key>,
}

/// Below this many touched keys, `note_kv` scans the list instead of hashing.
const TOUCHED_SCAN_MAX: usize = 8;

impl ApplyCtx {
    /// Remembers `key`'s entry before this entry first changes it.
    fn note_kv(&mut self, key: &[u8], before: Option<&KvEntry>) {
        let seen = if self.kv_touched.len() < TOUCHED_SCAN_MAX {
            self.kv_touched.iter().any(|(k, _)| k.as_bytes() == key)
        } else {
            if self.kv_touched_set.is_empty() {
                let keys = self.kv_touched.iter().map(|(k, _)| k.clone());
                self.kv_touched_set.extend(keys);
            }
            !self.kv_touched_set.insert(key.into())
        };
        if !seen {
            self.kv_touched.push((key.into(), before.cloned()));
        }
    }

    /// The keys changed so far by this entry, with their previous entries.
    pub(crate) fn pending_kv(&self) -> &[(crate::Key, Option<KvEntry>)] {
        &self.kv_touched
    }

    pub(crate) fn touch(&mut self, table: Table) {
        let change = Change::Table(table);
        if !self.changes.contains(&change) {
            self.changes.push(change);
        }
    }
}

impl StateMachine {
    /// An empty state at index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The index at which `table` last changed.
    pub fn table_index(&self, table: Table) -> u64 {
        self.table_index[table as usize]
    }

    /// The largest index among `tables` (at least 1, as Consul never returns index 0).
    pub fn max_table_index(&self, tables: &[Table]) -> u64 {
        tables
            .iter()
            .map(|t| self.table_index(*t))
            .max()
            .unwrap_or(0)
            .max(1)
    }

    /// Serializes the whole state for a snapshot.
    pub fn to_snapshot(&self) -> Vec<u8> {
        self.to_snapshot_sized(0)
    }

    /// [`StateMachine::to_snapshot`] into a buffer that starts with room for
    /// `capacity_hint` bytes (the previous snapshot's size, say), so that a large state is not
    /// copied again each time the buffer grows.
    pub fn to_snapshot_sized(&self, capacity_hint: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(capacity_hint.max(1));
        out.push(SNAPSHOT_FORMAT_VERSION);
        postcard::to_extend(self, out).expect("encoding to a Vec cannot fail")
    }

    /// Writes the bytes [`StateMachine::to_snapshot`] returns to `out`, as they are encoded
    /// (no copy of the whole encoding is held).
    ///
    /// # Errors
    /// The first error `out` returned.
    pub fn write_snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&[SNAPSHOT_FORMAT_VERSION])?;
        encode_into(self, out)
    }

    /// Restores a state from [`StateMachine::to_snapshot`] bytes.
    ///
    /// # Errors
    /// Returns [`SnapshotError`] if the bytes are not a snapshot.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let (&version, payload) = bytes.split_first().ok_or(SnapshotError::Malformed(
            postcard::Error::DeserializeUnexpectedEnd,
        ))?;
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(SnapshotError::UnknownVersion(version));
        }
        let state: StateMachine = postcard::from_bytes(payload)?;
        state.check_invariants();
        Ok(state)
    }

    /// Applies the entry at `index`, which must be the next one.
    ///
    /// # Panics
    /// Panics if `index` is not `applied_index() + 1`: skipping or repeating an entry would
    /// silently fork replicas.
    pub fn apply(&mut self, index: u64, entry: &Entry) -> (Outcome, Vec<Change>) {
        assert_eq!(
            index,
            self.applied_index + 1,
            "entries must be applied in order"
        );
        let mut ctx = ApplyCtx {
            index,
            time_ms: entry.time_ms,
            changes: Vec::new(),
            kv_touched: Vec::new(),
            kv_touched_set: HashSet::new(),
        };
        let outcome = match &entry.command {
            Command::Noop => Outcome::Done,
            Command::KvSet {
                key,
                value,
                flags,
                mode,
            } => self.kv_set(&mut ctx, key.as_bytes(), value, *flags, mode),
            Command::KvDelete { key, recurse, cas } => {
                self.kv_delete(&mut ctx, key.as_bytes(), *recurse, *cas)
            }
            Command::Txn { ops } => Outcome::Txn(self.apply_txn(&mut ctx, ops)),
            Command::CatalogRegister(registration) => self.catalog_register(&mut ctx, registration),
            Command::CatalogDeregister {
                node,
                service_id,
                check_id,
            } => {
                self.catalog_deregister(&mut ctx, node, service_id.as_deref(), check_id.as_deref())
            }
            Command::CheckUpdate {
                node,
                check_id,
                status,
                output,
            } => self.check_update(&mut ctx, node, check_id, *status, output),
            Command::SessionCreate(session) => self.session_create(&mut ctx, session),
            Command::SessionDestroy { id } => {
                self.session_invalidate(&mut ctx, id);
                Outcome::Done
            }
            Command::KvTxn(txn) => self.apply_kv_txn(&mut ctx, txn),
            Command::KvCompact { revision } => self.kv_compact(*revision),
        };
        self.record_kv_changes(&mut ctx);
        self.applied_index = index;
        for change in &ctx.changes {
            if let Change::Table(table) = change {
                self.table_index[*table as usize] = index;
            }
        }
        #[cfg(debug_assertions)]
        self.check_invariants();
        (outcome, ctx.changes)
    }

    /// Checks the structural invariants; panics on violation. O(n): tests and debug builds.
    pub fn check_invariants(&self) {
        for (key, entry) in &self.kv {
            assert_eq!(key, &entry.key);
            assert!(entry.create_index <= entry.modify_index);
            assert!(entry.modify_index <= self.applied_index);
            if let Some(session) = &entry.session {
                assert!(
                    self.sessions.contains_key(session),
                    "lock held by a dead session"
                );
                assert!(entry.lock_index > 0);
            }
            assert!(entry.version >= 1, "a live key was written at least once");
            if entry.lease != 0 {
                assert!(
                    self.leases.contains_key(&entry.lease),
                    "key attached to a dead lease"
                );
                assert!(self.lease_keys[&entry.lease].contains(key));
            }
        }
        for (lease, keys) in &self.lease_keys {
            assert!(!keys.is_empty(), "empty lease key sets are dropped");
            for key in keys {
                assert_eq!(self.kv.get(key).map(|e| e.lease), Some(*lease));
            }
        }
        for (lease, session) in &self.leases {
            assert_eq!(self.sessions.get(session).map(|s| s.lease_id), Some(*lease));
        }
        assert_eq!(self.leases.len(), self.sessions.len());
        for ((node, id), service) in &self.services {
            assert!(self.nodes.contains_key(node), "service on a missing node");
            assert_eq!(id, &service.id);
        }
        for ((node, id), check) in &self.checks {
            assert!(self.nodes.contains_key(node), "check on a missing node");
            assert_eq!(id, &check.id);
            if !check.service_id.is_empty() {
                let key = (node.clone(), check.service_id.clone());
                assert!(
                    self.services.contains_key(&key),
                    "check on a missing service"
                );
            }
        }
        for session in self.sessions.values() {
            assert!(
                self.nodes.contains_key(&session.node),
                "session on a missing node"
            );
        }
        for index in self.table_index {
            assert!(index <= self.applied_index);
        }
    }

    // ===== KV =====

    fn kv_set(
        &mut self,
        ctx: &mut ApplyCtx,
        key: &[u8],
        value: &[u8],
        flags: u64,
        mode: &KvSetMode,
    ) -> Outcome {
        let existing = self.kv.get(key);
        match mode {
            KvSetMode::Set => {}
            KvSetMode::Cas(0) if existing.is_some() => return Outcome::Bool(false),
            KvSetMode::Cas(0) => {}
            KvSetMode::Cas(index) => match existing {
                Some(entry) if entry.modify_index == *index => {}
                _ => return Outcome::Bool(false),
            },
            KvSetMode::Acquire(session) => {
                if !self.sessions.contains_key(session) {
                    return rejected_invalid_session(session);
                }
                if self
                    .lock_delays
                    .get(key)
                    .is_some_and(|until| *until > ctx.time_ms)
                {
                    return Outcome::Bool(false);
                }
                if let Some(holder) = existing.and_then(|e| e.session.as_ref())
                    && holder != session
                {
                    return Outcome::Bool(false);
                }
            }
            KvSetMode::Release(session) => match existing.and_then(|e| e.session.as_ref()) {
                Some(holder) if holder == session => {}
                _ => return Outcome::Bool(false),
            },
        }
        self.kv_write(ctx, key, value, flags, mode);
        Outcome::Bool(true)
    }

    /// Writes a KV entry unconditionally, applying the lock effect of `mode`.
    pub(crate) fn kv_write(
        &mut self,
        ctx: &mut ApplyCtx,
        key: &[u8],
        value: &[u8],
        flags: u64,
        mode: &KvSetMode,
    ) -> KvEntry {
        let lease = self.kv.get(key).map_or(0, |e| e.lease);
        let entry = self.kv_upsert(ctx, key, value, flags, lease);
        match mode {
            KvSetMode::Acquire(session) => {
                if entry.session.as_ref() != Some(session) {
                    entry.session = Some(session.clone());
                    entry.lock_index += 1;
                }
            }
            KvSetMode::Release(_) => entry.session = None,
            KvSetMode::Set | KvSetMode::Cas(_) => {}
        }
        entry.clone()
    }

    /// etcd's put: writes `put.key` (keeping its flags and any Consul lock, and its value or
    /// lease where `put` says to ignore them), recording the change for history and
    /// watchers; the entry before, if `put.prev_kv` asks for it. The hot path of a put-heavy
    /// load: one lookup of an existing key here (and one more when the history is recorded).
    pub(crate) fn kv_put(&mut self, ctx: &mut ApplyCtx, put: &PutOp) -> Option<KvEntry> {
        let index = ctx.index;
        let key = put.key.as_bytes();
        ctx.changes.push(Change::Key(put.key.clone()));
        ctx.touch(Table::Kvs);
        if let Some(entry) = self.kv.get_mut(key) {
            ctx.note_kv(key, Some(entry));
            let prev = put.prev_kv.then(|| entry.clone());
            if !put.ignore_value {
                entry.value = bytes::Bytes::copy_from_slice(&put.value);
            }
            if !put.ignore_lease {
                entry.lease = put.lease;
            }
            entry.modify_index = index;
            entry.version += 1;
            return prev;
        }
        ctx.note_kv(key, None);
        let entry = KvEntry {
            value: bytes::Bytes::copy_from_slice(&put.value),
            version: 1,
            lease: put.lease,
            ..KvEntry::created(put.key.clone(), index)
        };
        self.kv.insert(put.key.clone(), entry);
        None
    }

    /// Writes a KV entry attached to `lease` (etcd's put keeps any Consul lock on it),
    /// recording the change for history and watchers.
    pub(crate) fn kv_upsert(
        &mut self,
        ctx: &mut ApplyCtx,
        key: &[u8],
        value: &[u8],
        flags: u64,
        lease: i64,
    ) -> &mut KvEntry {
        let index = ctx.index;
        ctx.note_kv(key, self.kv.get(key));
        ctx.changes.push(Change::Key(key.into()));
        ctx.touch(Table::Kvs);
        let entry = self
            .kv
            .entry(key.into())
            .or_insert_with(|| KvEntry::created(key.into(), index));
        entry.value = bytes::Bytes::copy_from_slice(value);
        entry.flags = flags;
        entry.modify_index = index;
        entry.version += 1;
        entry.lease = lease;
        entry
    }

    /// Turns the keys this entry touched into history events and keeps the lease index in
    /// step.
    fn record_kv_changes(&mut self, ctx: &mut ApplyCtx) {
        for (key, before) in std::mem::take(&mut ctx.kv_touched) {
            let after = self.kv.get(&key);
            // A write moves the modify index, so most changes differ there: compare it before
            // the whole entry (its value can be large).
            let unchanged = match (after, &before) {
                (Some(a), Some(b)) => a.modify_index == b.modify_index && a == b,
                (None, None) => true,
                _ => false,
            };
            if unchanged {
                continue;
            }
            let old_lease = before.as_ref().map_or(0, |e| e.lease);
            let new_lease = after.map_or(0, |e| e.lease);
            if old_lease != new_lease {
                if old_lease != 0
                    && let Some(keys) = self.lease_keys.get_mut(&old_lease)
                {
                    keys.remove(&key);
                    if keys.is_empty() {
                        self.lease_keys.remove(&old_lease);
                    }
                }
                if new_lease != 0 {
                    self.lease_keys
                        .entry(new_lease)
                        .or_default()
                        .insert(key.clone());
                }
            }
            let kv = after.cloned().map(Arc::new);
            self.history.record(KvEvent {
                revision: ctx.index,
                key,
                kv,
                prev: before.map(Arc::new),
            });
        }
        ctx.kv_touched_set.clear();
        self.history.trim(ctx.index);
    }

    /// Forgets KV history before `revision` (etcd's compaction).
    fn kv_compact(&mut self, revision: u64) -> Outcome {
        if revision > self.applied_index {
            return rejected(
                RejectionKind::Invalid,
                crate::kv_txn::reject::FUTURE_REV.into(),
            );
        }
        if revision <= self.history.compacted_revision() {
            return rejected(
                RejectionKind::Invalid,
                crate::kv_txn::reject::COMPACTED.into(),
            );
        }
        self.history.compact(revision);
        Outcome::Done
    }

    /// The KV change history.
    pub fn history(&self) -> &KvHistory {
        &self.history
    }

    /// The session that lease `lease` names.
    pub fn lease_session(&self, lease: i64) -> Option<&Session> {
        self.leases.get(&lease).and_then(|id| self.sessions.get(id))
    }

    /// The keys attached to lease `lease`, in key order.
    pub fn lease_keys(&self, lease: i64) -> impl Iterator<Item = &crate::Key> {
        self.lease_keys.get(&lease).into_iter().flatten()
    }

    fn kv_delete(
        &mut self,
        ctx: &mut ApplyCtx,
        key: &[u8],
        recurse: bool,
        cas: Option<u64>,
    ) -> Outcome {
        if recurse {
            self.kv_delete_tree(ctx, key);
            return Outcome::Bool(true);
        }
        match (cas, self.kv.get(key)) {
            (Some(0), existing) => return Outcome::Bool(existing.is_none()),
            (Some(index), Some(entry)) if entry.modify_index != index => {
                return Outcome::Bool(false);
            }
            (Some(_), None) => return Outcome::Bool(false),
            _ => {}
        }
        self.kv_remove(ctx, key);
        Outcome::Bool(true)
    }

    pub(crate) fn kv_remove(&mut self, ctx: &mut ApplyCtx, key: &[u8]) -> Option<KvEntry> {
        // Deleting a missing key still moves the KV index, as Consul's tombstones do, so that
        // blocking queries on it observe the delete.
        ctx.note_kv(key, self.kv.get(key));
        ctx.changes.push(Change::Key(key.into()));
        ctx.touch(Table::Kvs);
        self.kv.remove(key)
    }

    pub(crate) fn kv_delete_tree(&mut self, ctx: &mut ApplyCtx, prefix: &[u8]) -> Vec<KvEntry> {
        let keys: Vec<crate::Key> = self
            .kv_keys_with_prefix(prefix)
            .map(|e| e.key.clone())
            .collect();
        ctx.touch(Table::Kvs);
        keys.iter()
            .filter_map(|key| self.kv_remove(ctx, key))
            .collect()
    }

    /// The entry for `key`, if any.
    pub fn kv_get(&self, key: impl AsRef<[u8]>) -> Option<&KvEntry> {
        self.kv.get(key.as_ref())
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn kv_keys_with_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = &'a KvEntry> + 'a {
        self.kv
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .map(|(_, entry)| entry)
    }

    /// Keys under `prefix`, folded at the first `separator` after the prefix (Consul's
    /// `?keys&separator=`): `a/b/c` under `a/` with `/` lists as `a/b/`.
    pub fn kv_list_keys(&self, prefix: &str, separator: Option<&str>) -> Vec<String> {
        let prefix = prefix.as_bytes();
        let separator = separator.filter(|s| !s.is_empty()).map(str::as_bytes);
        let mut keys: Vec<String> = Vec::new();
        for entry in self.kv_keys_with_prefix(prefix) {
            let after = &entry.key[prefix.len()..];
            let folded = match separator.and_then(|sep| find(after, sep).map(|at| (at, sep))) {
                Some((at, sep)) => &entry.key[..prefix.len() + at + sep.len()],
                None => entry.key.as_bytes(),
            };
            let key = String::from_utf8_lossy(folded).into_owned();
            if keys.last() != Some(&key) {
                keys.push(key);
            }
        }
        keys
    }

    /// The blocking index for a KV answer: the largest modify index among `entries`, or the KV
    /// table's index when there are none.
    pub fn kv_result_index<'a>(&self, entries: impl Iterator<Item = &'a KvEntry>) -> u64 {
        entries
            .map(|e| e.modify_index)
            .max()
            .unwrap_or_else(|| self.max_table_index(&[Table::Kvs]))
    }

    /// Until when (entry time, ms) `key` stays unacquirable after a session invalidation.
    pub fn lock_delay_until(&self, key: impl AsRef<[u8]>) -> Option<u64> {
        self.lock_delays.get(key.as_ref()).copied()
    }

    // ===== Catalog =====

    fn catalog_register(&mut self, ctx: &mut ApplyCtx, reg: &CatalogRegistration) -> Outcome {
        let node_name = reg.node.name.clone();
        if node_name.is_empty() {
            return rejected(RejectionKind::Invalid, "missing node name".into());
        }
        for check in &reg.checks {
            let has_service = !check.service_id.is_empty();
            let service_known = self
                .services
                .contains_key(&(node_name.clone(), check.service_id.clone()))
                || reg
                    .service
                    .as_ref()
                    .is_some_and(|s| s.id == check.service_id);
            if has_service && !service_known {
                return rejected(
                    RejectionKind::NotFound,
                    format!(
                        "check {:?} refers to unknown service {:?}",
                        check.id, check.service_id
                    ),
                );
            }
        }
        self.upsert_node(ctx, &reg.node);
        if let Some(service) = &reg.service {
            self.upsert_service(ctx, &node_name, service);
            if reg.replace_service_checks {
                let doomed: Vec<String> = self
                    .node_checks(&node_name)
                    .filter(|c| c.service_id == service.id)
                    .filter(|c| !reg.checks.iter().any(|new| new.id == c.id))
                    .map(|c| c.id.clone())
                    .collect();
                for check in doomed {
                    self.remove_check(ctx, &node_name, &check);
                }
            }
        }
        for check in &reg.checks {
            self.upsert_check(ctx, &node_name, check);
        }
        Outcome::Done
    }

    fn upsert_node(&mut self, ctx: &mut ApplyCtx, node: &Node) {
        let existing = self.nodes.get(&node.name);
        let same = existing.is_some_and(|old| {
            old.id == node.id
                && old.address == node.address
                && old.tagged_addresses == node.tagged_addresses
                && old.meta == node.meta
        });
        if same {
            return;
        }
        let create_index = existing.map_or(ctx.index, |old| old.create_index);
        let mut stored = node.clone();
        stored.create_index = create_index;
        stored.modify_index = ctx.index;
        self.nodes.insert(node.name.clone(), stored);
        ctx.touch(Table::Nodes);
    }

    fn upsert_service(&mut self, ctx: &mut ApplyCtx, node: &str, service: &Service) {
        let key = (node.to_string(), service.id.clone());
        let existing = self.services.get(&key);
        let mut stored = service.clone();
        stored.node = node.to_string();
        stored.create_index = existing.map_or(ctx.index, |old| old.create_index);
        stored.modify_index = existing.map_or(ctx.index, |old| old.modify_index);
        if existing == Some(&stored) {
            return;
        }
        stored.modify_index = ctx.index;
        self.services.insert(key, stored.clone());
        ctx.touch(Table::Services);
        // Checks carry a copy of the service's name and tags; keep them in step.
        let mut touched = false;
        for check in self.checks.values_mut() {
            if check.node == node && check.service_id == stored.id {
                check.service_name = stored.name.clone();
                check.service_tags = stored.tags.clone();
                check.modify_index = ctx.index;
                touched = true;
            }
        }
        if touched {
            ctx.touch(Table::Checks);
        }
    }

    fn upsert_check(&mut self, ctx: &mut ApplyCtx, node: &str, check: &Check) {
        let key = (node.to_string(), check.id.clone());
        let existing = self.checks.get(&key);
        let mut stored = check.clone();
        stored.node = node.to_string();
        if let Some(service) = self
            .services
            .get(&(node.to_string(), check.service_id.clone()))
        {
            stored.service_name = service.name.clone();
            stored.service_tags = service.tags.clone();
        } else {
            stored.service_name.clear();
            stored.service_tags.clear();
        }
        stored.create_index = existing.map_or(ctx.index, |old| old.create_index);
        stored.modify_index = existing.map_or(ctx.index, |old| old.modify_index);
        if let Some(old) = existing
            && old.status == stored.status
        {
            // A re-registration that does not change the status keeps the observation time.
            stored.status_observed_ms = old.status_observed_ms;
        }
        if existing == Some(&stored) {
            return;
        }
        stored.modify_index = ctx.index;
        let is_critical = stored.status == HealthStatus::Critical;
        self.checks.insert(key, stored);
        ctx.touch(Table::Checks);
        if is_critical {
            self.invalidate_sessions_on_check(ctx, node, &check.id);
        }
    }

    fn catalog_deregister(
        &mut self,
        ctx: &mut ApplyCtx,
        node: &str,
        service_id: Option<&str>,
        check_id: Option<&str>,
    ) -> Outcome {
        if !self.nodes.contains_key(node) {
            return Outcome::Done;
        }
        if let Some(service_id) = service_id {
            let key = (node.to_string(), service_id.to_string());
            if self.services.remove(&key).is_none() {
                return rejected(
                    RejectionKind::NotFound,
                    format!("unknown service ID {service_id:?}"),
                );
            }
            ctx.touch(Table::Services);
            let doomed: Vec<String> = self
                .checks
                .values()
                .filter(|c| c.node == node && c.service_id == service_id)
                .map(|c| c.id.clone())
                .collect();
            for check in doomed {
                self.remove_check(ctx, node, &check);
            }
            return Outcome::Done;
        }
        if let Some(check_id) = check_id {
            if !self
                .checks
                .contains_key(&(node.to_string(), check_id.to_string()))
            {
                return rejected(
                    RejectionKind::NotFound,
                    format!("unknown check ID {check_id:?}"),
                );
            }
            self.remove_check(ctx, node, check_id);
            return Outcome::Done;
        }
        let sessions: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.node == node)
            .map(|s| s.id.clone())
            .collect();
        for session in sessions {
            self.session_invalidate(ctx, &session);
        }
        self.checks.retain(|(n, _), _| n != node);
        self.services.retain(|(n, _), _| n != node);
        self.nodes.remove(node);
        ctx.touch(Table::Checks);
        ctx.touch(Table::Services);
        ctx.touch(Table::Nodes);
        Outcome::Done
    }

    fn remove_check(&mut self, ctx: &mut ApplyCtx, node: &str, check_id: &str) {
        self.checks
            .remove(&(node.to_string(), check_id.to_string()));
        ctx.touch(Table::Checks);
        self.invalidate_sessions_on_check(ctx, node, check_id);
    }

    fn check_update(
        &mut self,
        ctx: &mut ApplyCtx,
        node: &str,
        check_id: &str,
        status: HealthStatus,
        output: &str,
    ) -> Outcome {
        let Some(check) = self
            .checks
            .get_mut(&(node.to_string(), check_id.to_string()))
        else {
            return rejected(
                RejectionKind::NotFound,
                format!("unknown check ID {check_id:?}"),
            );
        };
        if check.status == status && check.output == output {
            return Outcome::Done;
        }
        if check.status != status {
            check.status_observed_ms = ctx.time_ms;
        }
        check.status = status;
        check.output = output.to_string();
        check.modify_index = ctx.index;
        ctx.touch(Table::Checks);
        if status == HealthStatus::Critical {
            self.invalidate_sessions_on_check(ctx, node, check_id);
        }
        Outcome::Done
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// All nodes, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Service instances on `node`.
    pub fn node_services<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|(_, s)| s)
    }

    /// Checks on `node`.
    pub fn node_checks<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Check> + 'a {
        self.checks
            .range((node.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == node)
            .map(|(_, c)| c)
    }

    /// One check.
    pub fn check(&self, node: &str, check_id: &str) -> Option<&Check> {
        self.checks.get(&(node.to_string(), check_id.to_string()))
    }

    /// One service instance.
    pub fn service(&self, node: &str, service_id: &str) -> Option<&Service> {
        self.services
            .get(&(node.to_string(), service_id.to_string()))
    }

    /// Every service instance.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// Every check.
    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.values()
    }

    /// Instances of the service called `name`.
    pub fn service_instances<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Service> + 'a {
        self.services.values().filter(move |s| s.name == name)
    }

    // ===== Sessions =====

    fn session_create(&mut self, ctx: &mut ApplyCtx, session: &Session) -> Outcome {
        if self.sessions.contains_key(&session.id) {
            return rejected(
                RejectionKind::Invalid,
                format!("session {:?} already exists", session.id),
            );
        }
        if !self.nodes.contains_key(&session.node) {
            return rejected(
                RejectionKind::NotFound,
                format!("unknown node {:?}", session.node),
            );
        }
        for check_id in session.all_checks() {
            match self.check(&session.node, check_id) {
                None => {
                    return rejected(
                        RejectionKind::NotFound,
                        format!("missing check {check_id:?} registration"),
                    );
                }
                Some(check) if check.status == HealthStatus::Critical => {
                    return rejected(
                        RejectionKind::Invalid,
                        format!("check {check_id:?} is in critical state"),
                    );
                }
                Some(_) => {}
            }
        }
        if session.lease_id <= 0 {
            return rejected(
                RejectionKind::Invalid,
                format!("session {:?} needs a positive lease ID", session.id),
            );
        }
        if self.leases.contains_key(&session.lease_id) {
            return rejected(
                RejectionKind::Invalid,
                crate::kv_txn::reject::LEASE_EXISTS.into(),
            );
        }
        let mut stored = session.clone();
        stored.create_index = ctx.index;
        stored.modify_index = ctx.index;
        self.leases.insert(stored.lease_id, stored.id.clone());
        self.sessions.insert(stored.id.clone(), stored);
        ctx.touch(Table::Sessions);
        Outcome::Done
    }

    fn invalidate_sessions_on_check(&mut self, ctx: &mut ApplyCtx, node: &str, check_id: &str) {
        let doomed: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.node == node && s.all_checks().any(|c| c == check_id))
            .map(|s| s.id.clone())
            .collect();
        for id in doomed {
            self.session_invalidate(ctx, &id);
        }
    }

    /// Destroys a session: its locks are released (setting the lock delay) or their keys
    /// deleted, per its behavior.
    fn session_invalidate(&mut self, ctx: &mut ApplyCtx, id: &str) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        self.leases.remove(&session.lease_id);
        ctx.touch(Table::Sessions);
        // Keys attached to the lease go with it (etcd's lease revoke), in key order. Keys
        // attached earlier in this same entry are not indexed yet: look at those too.
        let mut attached: BTreeSet<crate::Key> = self
            .lease_keys
            .get(&session.lease_id)
            .cloned()
            .unwrap_or_default();
        for (key, _) in ctx.pending_kv() {
            if self
                .kv
                .get(key)
                .is_some_and(|e| e.lease == session.lease_id)
            {
                attached.insert(key.clone());
            }
        }
        for key in attached {
            if self
                .kv
                .get(&key)
                .is_some_and(|e| e.lease == session.lease_id)
            {
                self.kv_remove(ctx, &key);
            }
        }
        let held: Vec<crate::Key> = self
            .kv
            .values()
            .filter(|e| e.session.as_deref() == Some(id))
            .map(|e| e.key.clone())
            .collect();
        for key in held {
            if session.lock_delay_ms > 0 {
                self.lock_delays
                    .insert(key.clone(), ctx.time_ms + session.lock_delay_ms);
            }
            match session.behavior {
                SessionBehavior::Release => {
                    ctx.note_kv(&key, self.kv.get(&key));
                    let entry = self.kv.get_mut(&key).expect("held key exists");
                    entry.session = None;
                    entry.modify_index = ctx.index;
                    entry.version += 1;
                    ctx.changes.push(Change::Key(key));
                    ctx.touch(Table::Kvs);
                }
                SessionBehavior::Delete => {
                    self.kv_remove(ctx, &key);
                }
            }
        }
        // Expired lock delays are dropped here so the map stays bounded by live delays.
        let now = ctx.time_ms;
        self.lock_delays.retain(|_, until| *until > now);
    }

    /// One session.
    pub fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    /// Every session.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }
}

fn rejected(kind: RejectionKind, message: String) -> Outcome {
    Outcome::Rejected(Rejection { kind, message })
}

pub(crate) fn rejected_invalid_session(session: &str) -> Outcome {
    rejected(
        RejectionKind::NotFound,
        format!("invalid session {session:?}"),
    )
}

/// Writes `value`'s postcard encoding to `out` as it is produced (the bytes
/// `postcard::to_allocvec` would return), for encodings too large to want a second copy:
/// postcard writes into a 64 KiB buffer, handed to `out` each time it fills.
///
/// # Errors
/// The first error `out` returned.
pub fn encode_into<T: serde::Serialize + ?Sized>(
    value: &T,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut error = None;
    let flavor = ChunkFlavor {
        buffer: Vec::with_capacity(ENCODE_CHUNK_BYTES),
        out,
        error: &mut error,
    };
    match postcard::serialize_with_flavor(value, flavor) {
        Ok(()) => Ok(()),
        Err(postcard_error) => {
            Err(error
                .unwrap_or_else(|| std::io::Error::other(format!("encoding: {postcard_error}"))))
        }
    }
}

/// The buffer [`encode_into`] fills before each write.
const ENCODE_CHUNK_BYTES: usize = 64 * 1024;

/// postcard's output for [`encode_into`]: bytes go into `buffer` (postcard pushes many of
/// them one at a time, so this must be cheap), and a full buffer goes to `out`. The first
/// error `out` returns is left in `error`: postcard's own error cannot carry it.
struct ChunkFlavor<'a, 'b> {
    buffer: Vec<u8>,
    out: &'a mut dyn std::io::Write,
    error: &'b mut Option<std::io::Error>,
}

impl ChunkFlavor<'_, '_> {
    fn write_out(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.out.write_all(bytes).map_err(|error| {
            self.error.get_or_insert(error);
            postcard::Error::SerializeBufferFull
        })
    }

    fn spill(&mut self) -> postcard::Result<()> {
        let buffer = std::mem::take(&mut self.buffer);
        let written = self.write_out(&buffer);
        self.buffer = buffer;
        self.buffer.clear();
        written
    }
}

impl postcard::ser_flavors::Flavor for ChunkFlavor<'_, '_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.buffer.len() == ENCODE_CHUNK_BYTES {
            self.spill()?;
        }
        self.buffer.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if self.buffer.len() + bytes.len() > ENCODE_CHUNK_BYTES {
            self.spill()?;
            if bytes.len() > ENCODE_CHUNK_BYTES {
                return self.write_out(bytes);
            }
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<()> {
        self.spill()
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
