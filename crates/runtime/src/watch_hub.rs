//! Wakes blocking queries when what they watch changes, without polling: each watched topic
//! has a `tokio::sync::watch` channel carrying the index of its last change, created on first
//! subscription and dropped once nobody listens.

use colony_store::{Change, Table};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// What a blocking query watches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// One KV key (its bytes).
    Key(Vec<u8>),
    /// Every KV key under a prefix (its bytes).
    Prefix(Vec<u8>),
    /// A whole table.
    Table(Table),
}

#[derive(Default)]
struct Channels {
    keys: HashMap<Vec<u8>, watch::Sender<u64>>,
    prefixes: HashMap<Vec<u8>, watch::Sender<u64>>,
    tables: HashMap<Table, watch::Sender<u64>>,
    sweep_at_len: usize,
}

/// The registry of watch channels.
#[derive(Default)]
pub struct WatchHub {
    channels: Mutex<Channels>,
}

const SWEEP_LEN_MIN: usize = 1024;

impl WatchHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to `topic`. Subscribe *before* reading the state, then wait on the receiver:
    /// a change applied in between is then still seen.
    pub fn subscribe(&self, topic: &Topic) -> watch::Receiver<u64> {
        let mut channels = self.channels.lock().expect("hub lock poisoned");
        let map = match topic {
            Topic::Key(key) => channels.keys.entry(key.clone()),
            Topic::Prefix(prefix) => channels.prefixes.entry(prefix.clone()),
            Topic::Table(table) => {
                return channels
                    .tables
                    .entry(*table)
                    .or_insert_with(|| watch::channel(0).0)
                    .subscribe();
            }
        };
        let receiver = map.or_insert_with(|| watch::channel(0).0).subscribe();
        let len = channels.keys.len() + channels.prefixes.len();
        if len >= channels.sweep_at_len.max(SWEEP_LEN_MIN) {
            channels
                .keys
                .retain(|_, sender| sender.receiver_count() > 0);
            channels
                .prefixes
                .retain(|_, sender| sender.receiver_count() > 0);
            channels.sweep_at_len = 2 * (channels.keys.len() + channels.prefixes.len());
        }
        receiver
    }

    /// Wakes every watcher: the whole state was replaced at `index` (a snapshot installed).
    pub fn notify_all(&self, index: u64) {
        let channels = self.channels.lock().expect("hub lock poisoned");
        let senders = channels
            .keys
            .values()
            .chain(channels.prefixes.values())
            .chain(channels.tables.values());
        for sender in senders {
            sender.send_replace(index);
        }
    }

    /// Wakes the watchers of every change applied at `index`.
    pub fn notify(&self, changes: &[Change], index: u64) {
        let mut channels = self.channels.lock().expect("hub lock poisoned");
        for change in changes {
            match change {
                Change::Table(table) => {
                    if let Some(sender) = channels.tables.get(table) {
                        sender.send_replace(index);
                    }
                }
                Change::Key(key) => {
                    if let Some(sender) = channels.keys.get(key.as_bytes()) {
                        sender.send_replace(index);
                        if sender.receiver_count() == 0 {
                            channels.keys.remove(key.as_bytes());
                        }
                    }
                    if channels.prefixes.is_empty() {
                        continue;
                    }
                    // Whichever is fewer: the watched prefixes, or the key's prefixes (one
                    // lookup per length, each hashing up to the whole key, so a long etcd
                    // key with a few prefix watchers must not take the second way).
                    if channels.prefixes.len() <= key.len() {
                        for (prefix, sender) in &channels.prefixes {
                            if key.starts_with(prefix) {
                                sender.send_replace(index);
                            }
                        }
                    } else {
                        for end in 0..=key.len() {
                            if let Some(sender) = channels.prefixes.get(&key[..end]) {
                                sender.send_replace(index);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_key_change_wakes_key_and_prefix_watchers_only() {
        let hub = WatchHub::new();
        let mut key = hub.subscribe(&Topic::Key("a/b".into()));
        let prefix = hub.subscribe(&Topic::Prefix("a/".into()));
        let root = hub.subscribe(&Topic::Prefix(Vec::new()));
        let other = hub.subscribe(&Topic::Key("c".into()));
        hub.notify(&[Change::Key("a/b".into())], 7);
        assert!(key.has_changed().expect("open"));
        assert!(prefix.has_changed().expect("open"));
        assert!(root.has_changed().expect("open"));
        assert!(!other.has_changed().expect("open"));
        assert_eq!(*key.borrow_and_update(), 7);
    }

    #[test]
    fn hub_matches_keys_and_prefixes_that_are_not_utf8_bytewise() {
        let hub = WatchHub::new();
        let key: &[u8] = b"b/\xff\x80";
        let mut exact = hub.subscribe(&Topic::Key(key.to_vec()));
        // A prefix that ends inside what would be a multi-byte character.
        let mut partial = hub.subscribe(&Topic::Prefix(b"b/\xff".to_vec()));
        let other = hub.subscribe(&Topic::Prefix(b"b/\xfe".to_vec()));
        hub.notify(&[Change::Key(key.into())], 3);
        assert_eq!(*exact.borrow_and_update(), 3);
        assert_eq!(*partial.borrow_and_update(), 3);
        assert!(!other.has_changed().expect("open"));
    }

    #[test]
    fn hub_matches_prefixes_whether_watched_prefixes_or_key_prefixes_are_fewer() {
        // More watched prefixes than the key has bytes: each of the key's prefixes is looked up.
        let hub = WatchHub::new();
        let mut matching = hub.subscribe(&Topic::Prefix(b"k".to_vec()));
        let others: Vec<_> = (0..8)
            .map(|i| hub.subscribe(&Topic::Prefix(format!("other{i}").into_bytes())))
            .collect();
        hub.notify(&[Change::Key("k1".into())], 4);
        assert_eq!(*matching.borrow_and_update(), 4);
        assert!(others.iter().all(|o| !o.has_changed().expect("open")));
        // A long key and one watched prefix: the watched prefixes are scanned.
        let long = vec![b'x'; 100_000];
        let mut under = hub.subscribe(&Topic::Prefix(b"xx".to_vec()));
        hub.notify(&[Change::Key(long.into())], 5);
        assert_eq!(*under.borrow_and_update(), 5);
        assert!(!matching.has_changed().expect("open"));
    }

    #[test]
    fn hub_drops_channels_nobody_listens_to() {
        let hub = WatchHub::new();
        for i in 0..(SWEEP_LEN_MIN * 2) {
            drop(hub.subscribe(&Topic::Key(format!("k{i}").into_bytes())));
        }
        let len = hub.channels.lock().expect("lock").keys.len();
        assert!(
            len < SWEEP_LEN_MIN * 2,
            "abandoned channels are swept, {len} left"
        );
    }
}
