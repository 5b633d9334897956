//! Multi-version KV: a bounded history of key changes, so that reads can ask for the KV as it
//! was at an older revision and watchers can resume from one (etcd's MVCC model). A revision
//! is the log index that made the change, so the etcd dialect and Consul's `ModifyIndex` count
//! the same way.
//!
//! The history keeps every change at or after its *compacted revision*: a read at an older
//! revision, or a watch starting before it, is answered with [`Compacted`]. It is compacted
//! explicitly (etcd's `Compact`) and, so memory stays bounded, automatically once it holds
//! more than [`HISTORY_EVENTS_MAX`] events or [`HISTORY_BYTES_MAX`] bytes of keys and values.
//! Both triggers depend only on the applied entries, so replicas compact identically.

use crate::types::KvEntry;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

/// The most key changes the history keeps before compacting its oldest revisions.
pub const HISTORY_EVENTS_MAX: usize = 100_000;
/// The most key and value bytes the history keeps before compacting its oldest revisions.
pub const HISTORY_BYTES_MAX: usize = 32 * 1024 * 1024;

/// A span of keys in etcd's convention: `end` empty means the single key `start`; `end` equal
/// to `[0]` means every key at or after `start`; otherwise keys in `[start, end)`, compared as
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyRange {
    /// First key (inclusive).
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    /// End key (exclusive), or empty for one key, or `[0]` for no upper bound.
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
}

impl KeyRange {
    /// The single key `key`.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            start: key.into(),
            end: Vec::new(),
        }
    }

    /// Every key starting with `prefix` (etcd's `WithPrefix`).
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let start = prefix.into();
        let end = prefix_end(&start);
        KeyRange { start, end }
    }

    /// Whether the range names one key.
    pub fn is_single_key(&self) -> bool {
        self.end.is_empty()
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            return key == self.start.as_slice();
        }
        key >= self.start.as_slice() && (self.end == [0] || key < self.end.as_slice())
    }

    /// Whether every key after `key` (in byte order) is outside the range.
    pub(crate) fn is_past(&self, key: &[u8]) -> bool {
        if self.end.is_empty() {
            return key > self.start.as_slice();
        }
        self.end != [0] && key >= self.end.as_slice()
    }

    /// Where a scan of a key-ordered map for this range starts.
    pub(crate) fn scan_from(&self) -> &[u8] {
        &self.start
    }
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte below
/// 0xff incremented and what follows dropped; `[0]` (no bound) if every byte is 0xff or the
/// prefix is empty.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One change to one key at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEvent {
    /// The revision (log index) that made the change.
    pub revision: u64,
    /// The key.
    pub key: crate::Key,
    /// The entry after the change, or `None` if the key was deleted.
    pub kv: Option<Arc<KvEntry>>,
    /// The entry before the change, or `None` if the key did not exist.
    pub prev: Option<Arc<KvEntry>>,
}

impl KvEvent {
    fn bytes(&self) -> usize {
        self.key.len() + self.kv.as_ref().map_or(0, |kv| kv.value.len())
    }
}

/// The change history since the compacted revision.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KvHistory {
    events: VecDeque<KvEvent>,
    bytes: usize,
    compacted: u64,
}

/// The revision asked for is older than the history keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("required revision {asked} has been compacted (compacted revision {compacted})")]
pub struct Compacted {
    /// The revision asked for.
    pub asked: u64,
    /// The oldest revision still readable.
    pub compacted: u64,
}

impl KvHistory {
    /// The oldest revision that can still be read or watched from (0 if never compacted).
    pub fn compacted_revision(&self) -> u64 {
        self.compacted
    }

    /// How many events the history holds.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the history holds no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Records a change; revisions must not decrease.
    pub(crate) fn record(&mut self, event: KvEvent) {
        debug_assert!(
            self.events
                .back()
                .is_none_or(|last| last.revision <= event.revision)
        );
        self.bytes += event.bytes();
        self.events.push_back(event);
    }

    /// Drops the oldest revisions while the history is over its budget. Events of one revision
    /// go together, and the revision being applied (`current`) is never dropped.
    pub(crate) fn trim(&mut self, current: u64) {
        while self.events.len() > HISTORY_EVENTS_MAX || self.bytes > HISTORY_BYTES_MAX {
            let Some(oldest) = self.events.front().map(|e| e.revision) else {
                break;
            };
            if oldest >= current {
                break;
            }
            self.compact(oldest + 1);
        }
    }

    /// Forgets every change before `revision`; reads and watches from `revision` on still work.
    pub(crate) fn compact(&mut self, revision: u64) {
        while let Some(front) = self.events.front() {
            if front.revision >= revision {
                break;
            }
            self.bytes -= front.bytes();
            self.events.pop_front();
        }
        self.compacted = self.compacted.max(revision);
    }

    /// Every change at or after `revision`, oldest first.
    ///
    /// # Errors
    /// [`Compacted`] if changes at `revision` may have been forgotten.
    pub fn since(&self, revision: u64) -> Result<impl Iterator<Item = &KvEvent>, Compacted> {
        if revision < self.compacted {
            return Err(Compacted {
                asked: revision,
                compacted: self.compacted,
            });
        }
        let first = self.events.partition_point(|e| e.revision < revision);
        Ok(self.events.range(first..))
    }

    /// Every change after `revision`, newest first (to undo them).
    pub(crate) fn after_newest_first(&self, revision: u64) -> impl Iterator<Item = &KvEvent> {
        self.events
            .iter()
            .rev()
            .take_while(move |e| e.revision > revision)
    }
}
