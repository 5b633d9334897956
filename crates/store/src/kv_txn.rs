//! The etcd dialect's KV operations: ranges (at any retained revision, filtered, sorted and
//! limited), puts with leases, range deletes, and transactions guarded by compares. One
//! [`KvTxn`] is one log entry and one revision, as in etcd: a lone put is a transaction with no
//! compares and one operation.

use crate::command::{Outcome, Rejection, RejectionKind};
use crate::mvcc::{Compacted, KeyRange};
use crate::state::{ApplyCtx, StateMachine};
use crate::types::KvEntry;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a range orders its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order (ascending), unless a sort target other than the key is given.
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// Which field a range sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The modify revision.
    Mod,
    /// The value.
    Value,
}

/// A read of a key range.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeQuery {
    /// The keys.
    pub range: KeyRange,
    /// Read the KV as it was at this revision (0: the current one).
    pub revision: u64,
    /// Return at most this many (0: no limit).
    pub limit: u64,
    /// Result order.
    pub sort_order: SortOrder,
    /// Result sort field.
    pub sort_target: SortTarget,
    /// Omit values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Keep only entries modified at or after this revision (0: no bound).
    pub min_mod_revision: u64,
    /// Keep only entries modified at or before this revision (0: no bound).
    pub max_mod_revision: u64,
    /// Keep only entries created at or after this revision (0: no bound).
    pub min_create_revision: u64,
    /// Keep only entries created at or before this revision (0: no bound).
    pub max_create_revision: u64,
}

/// What a range found.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RangeResult {
    /// The entries, filtered, sorted and limited.
    pub kvs: Vec<KvEntry>,
    /// Whether the limit cut entries off.
    pub more: bool,
    /// How many keys the range holds (before filters and the limit).
    pub count: u64,
}

/// Why a range could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The revision is older than the history keeps.
    #[error(transparent)]
    Compacted(#[from] Compacted),
    /// The revision has not happened yet.
    #[error("required revision {asked} is a future revision (current {current})")]
    Future {
        /// The revision asked for.
        asked: u64,
        /// The current revision.
        current: u64,
    },
}

/// Write one key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PutOp {
    /// The key.
    pub key: crate::Key,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The lease to attach the key to (0: none).
    pub lease: i64,
    /// Return the entry as it was before.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// Delete a key range.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeleteOp {
    /// The keys.
    pub range: KeyRange,
    /// Return the deleted entries.
    pub prev_kv: bool,
}

/// What a compare looks at, with the value to compare against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The version (0 for a missing key).
    Version(u64),
    /// The create revision (0 for a missing key).
    Create(u64),
    /// The modify revision (0 for a missing key).
    Mod(u64),
    /// The value (a missing key never matches).
    #[serde(with = "serde_bytes")]
    Value(Vec<u8>),
    /// The lease (0 for a missing key or none).
    Lease(i64),
}

/// How a compare relates the entry's field to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// Equal.
    Equal,
    /// Field greater than target.
    Greater,
    /// Field less than target.
    Less,
    /// Not equal.
    NotEqual,
}

/// A guard of a transaction: holds if every key in the range satisfies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The keys.
    pub range: KeyRange,
    /// The relation.
    pub op: CompareOp,
    /// The field and the value to compare it with.
    pub target: CompareTarget,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Read a range.
    Range(RangeQuery),
    /// Write a key.
    Put(PutOp),
    /// Delete a range.
    Delete(DeleteOp),
    /// A nested transaction.
    Txn(KvTxn),
}

/// A transaction: if every compare holds, apply `success`, else `failure`; atomically, at one
/// revision.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KvTxn {
    /// Guards.
    pub compares: Vec<Compare>,
    /// Operations if every guard holds.
    pub success: Vec<KvOp>,
    /// Operations otherwise.
    pub failure: Vec<KvOp>,
}

impl KvTxn {
    /// The operations that run when the compares do (`true`) or do not hold.
    pub fn branch(&self, succeeded: bool) -> &[KvOp] {
        if succeeded {
            &self.success
        } else {
            &self.failure
        }
    }

    /// A transaction of one unconditional operation.
    pub fn single(op: KvOp) -> Self {
        KvTxn {
            compares: Vec::new(),
            success: vec![op],
            failure: Vec::new(),
        }
    }
}

/// The result of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOpResult {
    /// A range's result.
    Range(RangeResult),
    /// A put; the previous entry if asked for.
    Put {
        /// The entry before the put.
        prev: Option<KvEntry>,
    },
    /// A delete: how many keys went, and them if asked for.
    Delete {
        /// Keys deleted.
        deleted: u64,
        /// The deleted entries (if `prev_kv`).
        prev: Vec<KvEntry>,
    },
    /// A nested transaction's result.
    Txn(KvTxnResult),
}

/// The result of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KvTxnResult {
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    /// One result per operation of the branch that ran.
    pub results: Vec<KvOpResult>,
}

/// The error messages the etcd dialect maps to etcd's own.
pub mod reject {
    /// A lease is granted with an ID already in use.
    pub const LEASE_EXISTS: &str = "lease already exists";
    /// A put names a lease that does not exist.
    pub const LEASE_NOT_FOUND: &str = "requested lease not found";
    /// `ignore_value`/`ignore_lease` on a missing key.
    pub const KEY_NOT_FOUND: &str = "key not found";
    /// A range at a compacted revision.
    pub const COMPACTED: &str = "mvcc: required revision has been compacted";
    /// A range at a future revision.
    pub const FUTURE_REV: &str = "mvcc: required revision is a future revision";
}

impl StateMachine {
    /// Reads a range at `query.revision` (0: now).
    ///
    /// # Errors
    /// [`RangeError`] if the revision is compacted or in the future.
    pub fn kv_range(&self, query: &RangeQuery) -> Result<RangeResult, RangeError> {
        self.kv_range_pending(query, &[])
    }

    /// Reads a range, first undoing `pending` (changes of the entry being applied, first-touch
    /// previous entries) if an older revision is asked for.
    pub(crate) fn kv_range_pending(
        &self,
        query: &RangeQuery,
        pending: &[(crate::Key, Option<KvEntry>)],
    ) -> Result<RangeResult, RangeError> {
        let current = self.applied_index() + u64::from(!pending.is_empty());
        if query.revision > current {
            return Err(RangeError::Future {
                asked: query.revision,
                current,
            });
        }
        let at_current = query.revision == 0 || query.revision == current;
        let mut entries: Vec<KvEntry> = if at_current {
            self.kv_in_range(&query.range).cloned().collect()
        } else {
            let compacted = self.history().compacted_revision();
            if query.revision < compacted {
                return Err(RangeError::Compacted(Compacted {
                    asked: query.revision,
                    compacted,
                }));
            }
            let mut view: BTreeMap<crate::Key, KvEntry> = self
                .kv_in_range(&query.range)
                .map(|e| (e.key.clone(), e.clone()))
                .collect();
            let mut restore = |key: &crate::Key, prev: Option<&KvEntry>| {
                if !query.range.contains(key) {
                    return;
                }
                match prev {
                    Some(entry) => view.insert(key.clone(), entry.clone()),
                    None => view.remove(key),
                };
            };
            for (key, prev) in pending.iter().rev() {
                restore(key, prev.as_ref());
            }
            for event in self.history().after_newest_first(query.revision) {
                restore(&event.key, event.prev.as_deref());
            }
            view.into_values().collect()
        };
        let count = entries.len() as u64;
        entries.retain(|e| passes_filters(query, e));
        let order = match query.sort_order {
            SortOrder::None => SortOrder::Ascend,
            order => order,
        };
        if query.sort_target != SortTarget::Key || order == SortOrder::Descend {
            sort_entries(&mut entries, query.sort_target, order);
        }
        let mut more = false;
        if query.limit > 0 && entries.len() as u64 > query.limit {
            entries.truncate(query.limit as usize);
            more = true;
        }
        if query.count_only {
            entries.clear();
        } else if query.keys_only {
            for entry in &mut entries {
                entry.value.clear();
            }
        }
        Ok(RangeResult {
            kvs: entries,
            more,
            count,
        })
    }

    /// Current entries in `range`, in key order.
    pub fn kv_in_range<'a>(&'a self, range: &'a KeyRange) -> impl Iterator<Item = &'a KvEntry> {
        self.kv
            .range::<[u8], _>((
                std::ops::Bound::Included(range.scan_from()),
                std::ops::Bound::Unbounded,
            ))
            .map(|(_, entry)| entry)
            .skip_while(|entry| entry.key.as_bytes() < range.start.as_slice())
            .take_while(|entry| !range.is_past(entry.key.as_bytes()))
    }

    /// Answers a transaction that only reads, without a log entry.
    ///
    /// # Errors
    /// [`RangeError`] if a range in the branch that runs asks for an unreadable revision.
    ///
    /// # Panics
    /// Panics if the transaction writes.
    pub fn kv_txn_read(&self, txn: &KvTxn) -> Result<KvTxnResult, RangeError> {
        let succeeded = txn.compares.iter().all(|c| self.compare_holds(c));
        let branch = txn.branch(succeeded);
        let mut results = Vec::with_capacity(branch.len());
        for op in branch {
            results.push(match op {
                KvOp::Range(query) => KvOpResult::Range(self.kv_range(query)?),
                KvOp::Txn(nested) => KvOpResult::Txn(self.kv_txn_read(nested)?),
                KvOp::Put(_) | KvOp::Delete(_) => panic!("kv_txn_read is for read-only txns"),
            });
        }
        Ok(KvTxnResult { succeeded, results })
    }

    /// Applies an etcd-style transaction.
    pub(crate) fn apply_kv_txn(&mut self, ctx: &mut ApplyCtx, txn: &KvTxn) -> Outcome {
        // As etcd does, every branch is chosen against the state before the transaction, then
        // the chosen operations are checked, then applied; a failed check changes nothing.
        let path = self.choose_branches(txn);
        if let Err(rejection) = self.check_ops(txn, &path, &mut 0) {
            return Outcome::Rejected(rejection);
        }
        let result = self.run_txn(ctx, txn, &path, &mut 0);
        Outcome::KvTxn(result)
    }

    /// Evaluates every compare of `txn` and its nested transactions on the chosen branches, in
    /// depth-first order.
    fn choose_branches(&self, txn: &KvTxn) -> Vec<bool> {
        let mut path = Vec::new();
        self.choose_into(txn, &mut path);
        path
    }

    fn choose_into(&self, txn: &KvTxn, path: &mut Vec<bool>) {
        let succeeded = txn.compares.iter().all(|c| self.compare_holds(c));
        path.push(succeeded);
        let branch = txn.branch(succeeded);
        for op in branch {
            if let KvOp::Txn(nested) = op {
                self.choose_into(nested, path);
            }
        }
    }

    fn compare_holds(&self, compare: &Compare) -> bool {
        let mut entries = self.kv_in_range(&compare.range).peekable();
        if entries.peek().is_none() {
            return match &compare.target {
                CompareTarget::Value(_) => false,
                _ => compare_entry(compare, None),
            };
        }
        entries.all(|e| compare_entry(compare, Some(e)))
    }

    fn check_ops(&self, txn: &KvTxn, path: &[bool], at: &mut usize) -> Result<(), Rejection> {
        let succeeded = path[*at];
        *at += 1;
        let branch = txn.branch(succeeded);
        for op in branch {
            match op {
                KvOp::Range(query) => {
                    // As etcd checks against the read view before the transaction: the
                    // revision this transaction creates is still in the future.
                    let current = self.applied_index();
                    if query.revision > current {
                        return Err(invalid(reject::FUTURE_REV));
                    }
                    if query.revision != 0 && query.revision < self.history().compacted_revision() {
                        return Err(invalid(reject::COMPACTED));
                    }
                }
                KvOp::Put(put) => {
                    if (put.ignore_value || put.ignore_lease) && !self.kv.contains_key(&put.key) {
                        return Err(Rejection {
                            kind: RejectionKind::NotFound,
                            message: reject::KEY_NOT_FOUND.into(),
                        });
                    }
                    if put.lease != 0
                        && !put.ignore_lease
                        && self.lease_session(put.lease).is_none()
                    {
                        return Err(Rejection {
                            kind: RejectionKind::NotFound,
                            message: reject::LEASE_NOT_FOUND.into(),
                        });
                    }
                }
                KvOp::Delete(_) => {}
                KvOp::Txn(nested) => self.check_ops(nested, path, at)?,
            }
        }
        Ok(())
    }

    fn run_txn(
        &mut self,
        ctx: &mut ApplyCtx,
        txn: &KvTxn,
        path: &[bool],
        at: &mut usize,
    ) -> KvTxnResult {
        let succeeded = path[*at];
        *at += 1;
        let branch = txn.branch(succeeded);
        let mut results = Vec::with_capacity(branch.len());
        for op in branch {
            let result = match op {
                KvOp::Range(query) => KvOpResult::Range(
                    self.kv_range_pending(query, ctx.pending_kv())
                        .expect("checked before applying"),
                ),
                KvOp::Put(put) => KvOpResult::Put {
                    prev: self.kv_put(ctx, put),
                },
                KvOp::Delete(delete) => {
                    let keys: Vec<crate::Key> = self
                        .kv_in_range(&delete.range)
                        .map(|e| e.key.clone())
                        .collect();
                    let mut prev = Vec::new();
                    for key in &keys {
                        if let Some(entry) = self.kv_remove(ctx, key)
                            && delete.prev_kv
                        {
                            prev.push(entry);
                        }
                    }
                    KvOpResult::Delete {
                        deleted: keys.len() as u64,
                        prev,
                    }
                }
                KvOp::Txn(nested) => KvOpResult::Txn(self.run_txn(ctx, nested, path, at)),
            };
            results.push(result);
        }
        KvTxnResult { succeeded, results }
    }
}

fn invalid(message: &str) -> Rejection {
    Rejection {
        kind: RejectionKind::Invalid,
        message: message.into(),
    }
}

fn passes_filters(query: &RangeQuery, entry: &KvEntry) -> bool {
    (query.min_mod_revision == 0 || entry.modify_index >= query.min_mod_revision)
        && (query.max_mod_revision == 0 || entry.modify_index <= query.max_mod_revision)
        && (query.min_create_revision == 0 || entry.create_index >= query.min_create_revision)
        && (query.max_create_revision == 0 || entry.create_index <= query.max_create_revision)
}

fn sort_entries(entries: &mut [KvEntry], target: SortTarget, order: SortOrder) {
    // A stable sort keeps key order among equal fields, as etcd's does.
    match target {
        SortTarget::Key => entries.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => entries.sort_by_key(|e| e.version),
        SortTarget::Create => entries.sort_by_key(|e| e.create_index),
        SortTarget::Mod => entries.sort_by_key(|e| e.modify_index),
        SortTarget::Value => entries.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        entries.reverse();
    }
}

fn compare_entry(compare: &Compare, entry: Option<&KvEntry>) -> bool {
    use std::cmp::Ordering;
    let ordering = match &compare.target {
        CompareTarget::Version(v) => entry.map_or(0, |e| e.version).cmp(v),
        CompareTarget::Create(v) => entry.map_or(0, |e| e.create_index).cmp(v),
        CompareTarget::Mod(v) => entry.map_or(0, |e| e.modify_index).cmp(v),
        CompareTarget::Lease(v) => entry.map_or(0, |e| e.lease).cmp(v),
        CompareTarget::Value(v) => match entry {
            Some(e) => e.value.as_ref().cmp(v.as_slice()),
            None => return false,
        },
    };
    match compare.op {
        CompareOp::Equal => ordering == Ordering::Equal,
        CompareOp::Greater => ordering == Ordering::Greater,
        CompareOp::Less => ordering == Ordering::Less,
        CompareOp::NotEqual => ordering != Ordering::Equal,
    }
}
