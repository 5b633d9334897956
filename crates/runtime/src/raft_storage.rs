//! What a replicated server keeps on disk for Raft, under `DATA_DIR/raft/`:
//!
//! ```text
//! raft/colony.lock     held by the agent using the dir
//! raft/wal/*.wal       the Raft log: one record per entry (term, kind, command bytes)
//! raft/snapshot        the newest snapshot: index, term, voters and the state machine image
//! raft/hard-state      term, vote and commit index
//! ```
//!
//! The log reuses [`LogStore`]'s segment format (checksummed records, one `fdatasync` per
//! batch); Raft's needs on top of it are overwriting a conflicting suffix
//! ([`LogStore::truncate_from`]) and replacing the whole log by a snapshot from the leader
//! ([`LogStore::reset`]). The hard state is small and changes only with the term or the vote,
//! so it is rewritten whole (temporary file, fsync, rename, directory fsync) when they change;
//! a commit index that moved alone is not worth an fsync (a restarted node learns it again).

use crate::log_store::{AppendError, LogStore, OpenError, SEGMENT_BYTES_DEFAULT};
use colony_raft::{Entry, HardState, Restored, Snapshot};
use colony_store::StateMachine;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The directory inside the data dir that holds a replicated server's state.
pub const RAFT_DIR_NAME: &str = "raft";
const HARD_STATE_FILE_NAME: &str = "hard-state";
const HARD_STATE_MAGIC: &[u8; 8] = b"CLNYHS01";
const HARD_STATE_BYTES: usize = 8 + 8 + 8 + 8 + 4;
/// Version byte in front of every encoded log record and snapshot.
const RAFT_FORMAT_VERSION: u8 = 1;

/// A replicated server's Raft state on disk.
pub struct RaftStorage {
    dir: PathBuf,
    log: LogStore,
    /// What the hard-state file holds.
    saved: HardState,
}

/// What [`RaftStorage::open`] restored.
pub struct RaftRecovered {
    /// What to build the Raft node from.
    pub restored: Restored,
    /// The state machine at the snapshot's index (empty without one); committed entries
    /// after it come out of the Raft node again and are re-applied.
    pub state: StateMachine,
}

impl RaftStorage {
    /// Opens (or creates) `DATA_DIR/raft`.
    ///
    /// # Errors
    /// [`OpenError`] naming the damaged or unusable file.
    pub fn open(data_dir: &Path) -> Result<(RaftStorage, RaftRecovered), OpenError> {
        let dir = data_dir.join(RAFT_DIR_NAME);
        let (mut log, raw) = LogStore::open_raw(&dir, SEGMENT_BYTES_DEFAULT)?;
        let hard_path = dir.join(HARD_STATE_FILE_NAME);
        let mut hard_state = read_hard_state(&hard_path)?;
        let snapshot_path = dir.join(crate::log_store::SNAPSHOT_FILE_NAME);
        let (snapshot, state) = match raw.snapshot {
            None => (None, StateMachine::new()),
            Some((index, payload)) => {
                let snapshot: Snapshot =
                    decode(&payload).map_err(|detail| corrupt(&snapshot_path, detail))?;
                if snapshot.meta.index != index {
                    return Err(corrupt(
                        &snapshot_path,
                        format!(
                            "file says index {index}, snapshot says {}",
                            snapshot.meta.index
                        ),
                    ));
                }
                let state = StateMachine::from_snapshot(&snapshot.data)
                    .map_err(|e| corrupt(&snapshot_path, e.to_string()))?;
                if state.applied_index() != index {
                    return Err(corrupt(
                        &snapshot_path,
                        format!(
                            "claims index {index} but holds state at {}",
                            state.applied_index()
                        ),
                    ));
                }
                (Some(snapshot), state)
            }
        };
        let snapshot_meta = snapshot.as_ref().map(|s| s.meta).unwrap_or_default();
        let wal = dir.join(crate::log_store::WAL_DIR_NAME);
        let mut entries = Vec::with_capacity(raw.records.len());
        let mut keep_log = true;
        for (index, payload) in &raw.records {
            let entry: Entry = decode(payload)
                .map_err(|detail| corrupt(&wal, format!("entry {index}: {detail}")))?;
            if entry.index != *index {
                return Err(corrupt(
                    &wal,
                    format!("record {index} holds entry {}", entry.index),
                ));
            }
            if *index == snapshot_meta.index && snapshot_meta.index > 0 {
                // Entries after the snapshot are ours only if the log agrees with it there
                // (a crash while installing a leader's snapshot can leave the old log).
                keep_log = entry.term == snapshot_meta.term;
            }
            if *index > snapshot_meta.index {
                entries.push(entry);
            }
        }
        if let Some(first) = entries.first()
            && first.index != snapshot_meta.index + 1
        {
            keep_log = false;
        }
        if !keep_log {
            tracing::warn!(dir = %dir.display(), "the log does not continue the snapshot; dropping it");
            entries.clear();
            log.reset(snapshot_meta.index)
                .map_err(|e| corrupt(&wal, e.to_string()))?;
        }
        let last_index = entries.last().map_or(snapshot_meta.index, |e| e.index);
        hard_state.commit = hard_state.commit.clamp(snapshot_meta.index, last_index);
        let last_term = entries.last().map_or(snapshot_meta.term, |e| e.term);
        if last_term > hard_state.term {
            return Err(corrupt(
                &hard_path,
                format!(
                    "term {} is older than the log's last term {last_term}",
                    hard_state.term
                ),
            ));
        }
        let storage = RaftStorage {
            dir,
            log,
            saved: hard_state,
        };
        Ok((
            storage,
            RaftRecovered {
                restored: Restored {
                    hard_state,
                    snapshot,
                    entries,
                },
                state,
            },
        ))
    }

    /// Whether nothing was ever persisted: a server that has not bootstrapped or joined.
    pub fn is_fresh(&self) -> bool {
        self.saved.term == 0 && self.log.last_index() == 0 && self.log.snapshot_index() == 0
    }

    /// The index of the last durable entry.
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    /// Makes a Ready's `snapshot`, `entries` and `hard_state` durable, in that order.
    ///
    /// # Errors
    /// [`AppendError::DiskFull`]: nothing after the last durable write changed, and the same
    /// call can be made again once space returns. [`AppendError::Fatal`]: the disk's state is
    /// unknown and the server must stop.
    pub fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<(), AppendError> {
        if let Some(snapshot) = snapshot {
            self.write_snapshot(snapshot)?;
            self.log.reset(snapshot.meta.index)?;
        }
        if let Some(first) = entries.first() {
            if first.index <= self.log.last_index() {
                self.log.truncate_from(first.index)?;
            }
            assert_eq!(
                first.index,
                self.log.last_index() + 1,
                "Raft hands over entries that continue the log"
            );
            let encoded: Vec<Vec<u8>> = entries.iter().map(encode).collect();
            self.log.append(&encoded)?;
        }
        if let Some(hard_state) = hard_state
            && (hard_state.term != self.saved.term || hard_state.voted_for != self.saved.voted_for)
        {
            self.write_hard_state(hard_state)?;
        }
        Ok(())
    }

    fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), AppendError> {
        self.snapshot_writer().write(snapshot)
    }

    /// A handle that writes a snapshot the node took of its own state from another thread;
    /// once it has, [`RaftStorage::handle_snapshot_written`] drops the segments it covers.
    pub fn snapshot_writer(&self) -> SnapshotWriter {
        SnapshotWriter {
            file: self.log.snapshot_file(),
        }
    }

    /// Records that a snapshot written through [`RaftStorage::snapshot_writer`] at `index`
    /// is durable, and deletes the log segments it covers.
    pub fn handle_snapshot_written(&mut self, index: u64) {
        self.log.handle_snapshot_written(index);
    }

    fn write_hard_state(&mut self, hard_state: HardState) -> Result<(), AppendError> {
        let path = self.dir.join(HARD_STATE_FILE_NAME);
        let temp = self.dir.join(format!("{HARD_STATE_FILE_NAME}.tmp"));
        let mut bytes = Vec::with_capacity(HARD_STATE_BYTES);
        bytes.extend_from_slice(HARD_STATE_MAGIC);
        bytes.extend_from_slice(&hard_state.term.to_le_bytes());
        bytes.extend_from_slice(&hard_state.voted_for.unwrap_or(0).to_le_bytes());
        bytes.extend_from_slice(&hard_state.commit.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let written = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        // A full disk leaves the old file in place (temp + rename): recoverable.
        written.map_err(|error| crate::log_store::classify(&path, error))?;
        self.saved = hard_state;
        Ok(())
    }
}

fn read_hard_state(path: &Path) -> Result<HardState, OpenError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(HardState::default());
        }
        Err(source) => {
            return Err(OpenError::DataDir {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if bytes.len() != HARD_STATE_BYTES || &bytes[..8] != HARD_STATE_MAGIC {
        return Err(corrupt(path, "not a colony hard-state file".into()));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[32..36].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[..32]) != crc {
        return Err(corrupt(path, "fails its checksum".into()));
    }
    let voted_for = word(16);
    Ok(HardState {
        term: word(8),
        voted_for: (voted_for != 0).then_some(voted_for),
        commit: word(24),
    })
}

/// Writes (encodes, writes, fsyncs) one snapshot; it does not touch the log, so it may run
/// on another thread while the raft thread keeps appending.
pub struct SnapshotWriter {
    file: crate::log_store::SnapshotFile,
}

impl SnapshotWriter {
    /// Where the snapshot lives.
    pub fn path(&self) -> PathBuf {
        self.file.path()
    }

    /// Encodes `snapshot` and makes it durable (temp file, fsync, rename), streamed to the
    /// file as it is encoded (the bytes `encode` would return, without a second copy of the
    /// state in memory).
    ///
    /// # Errors
    /// [`AppendError::DiskFull`] or [`AppendError::Fatal`]; the previous snapshot stays valid.
    pub fn write(&self, snapshot: &Snapshot) -> Result<(), AppendError> {
        self.file
            .write_with(snapshot.meta.index, |out| {
                out.write_all(&[RAFT_FORMAT_VERSION])?;
                colony_store::encode_into(snapshot, out)
            })
            .map(drop)
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![RAFT_FORMAT_VERSION]).expect("encoding into a Vec cannot fail")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        None => Err("empty record".into()),
        Some((&RAFT_FORMAT_VERSION, rest)) => {
            let (value, tail) = postcard::take_from_bytes(rest).map_err(|e| e.to_string())?;
            if tail.is_empty() {
                Ok(value)
            } else {
                Err(format!("{} trailing bytes", tail.len()))
            }
        }
        Some((version, _)) => Err(format!("unknown format version {version}")),
    }
}

fn corrupt(path: &Path, detail: String) -> OpenError {
    OpenError::Corrupt {
        path: path.to_path_buf(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_raft::{EntryKind, SnapshotMeta};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            data: vec![index as u8; 10],
        }
    }

    /// Entries and snapshots written before their byte fields were encoded as byte strings
    /// (`serde_bytes`) used postcard's sequence of `u8`: the bytes must be the same, so
    /// that logs and snapshots on disk stay readable.
    #[test]
    fn raft_storage_byte_fields_encode_as_before() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct PlainEntry {
            index: u64,
            term: u64,
            kind: EntryKind,
            data: Vec<u8>,
        }
        let data: Vec<u8> = (0..=255u8).chain(0..44).collect();
        let new = Entry {
            data: data.clone(),
            ..entry(300, 7)
        };
        let old = PlainEntry {
            index: 300,
            term: 7,
            kind: EntryKind::Normal,
            data,
        };
        let encoded = postcard::to_allocvec(&old).expect("encode");
        assert_eq!(postcard::to_allocvec(&new).expect("encode"), encoded);
        assert_eq!(
            postcard::from_bytes::<Entry>(&encoded).expect("decode"),
            new
        );
        let snapshot = Snapshot {
            meta: SnapshotMeta { index: 9, term: 2 },
            voters: vec![1, 2, 3],
            data: vec![7; 200],
        };
        let plain = (
            SnapshotMeta { index: 9, term: 2 },
            vec![1u64, 2, 3],
            vec![7u8; 200],
        );
        assert_eq!(
            postcard::to_allocvec(&snapshot).expect("encode"),
            postcard::to_allocvec(&plain).expect("encode")
        );
    }

    #[test]
    fn raft_storage_restores_what_was_persisted_with_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut storage, recovered) = RaftStorage::open(dir.path()).expect("open");
            assert!(storage.is_fresh());
            assert_eq!(recovered.restored, Restored::default());
            let hard = HardState {
                term: 2,
                voted_for: Some(7),
                commit: 0,
            };
            storage
                .persist(None, &[entry(1, 1), entry(2, 1), entry(3, 1)], Some(hard))
                .expect("persist");
            // A new leader overwrites index 3 onwards.
            storage
                .persist(
                    None,
                    &[entry(3, 2), entry(4, 2)],
                    Some(HardState { commit: 3, ..hard }),
                )
                .expect("persist");
        }
        let (storage, recovered) = RaftStorage::open(dir.path()).expect("reopen");
        assert!(!storage.is_fresh());
        let restored = recovered.restored;
        assert_eq!(restored.hard_state.term, 2);
        assert_eq!(restored.hard_state.voted_for, Some(7));
        assert_eq!(
            restored.entries,
            vec![entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2)]
        );
    }

    #[test]
    fn raft_storage_snapshot_from_leader_replaces_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = StateMachine::new();
        for index in 1..=5 {
            state.apply(
                index,
                &colony_store::Entry {
                    time_ms: 1,
                    command: colony_store::Command::Noop,
                },
            );
        }
        let snapshot = Snapshot {
            meta: SnapshotMeta { index: 5, term: 3 },
            voters: vec![1, 2, 3],
            data: state.to_snapshot(),
        };
        {
            let (mut storage, _) = RaftStorage::open(dir.path()).expect("open");
            let hard = HardState {
                term: 3,
                voted_for: None,
                commit: 0,
            };
            storage
                .persist(None, &[entry(1, 1), entry(2, 1)], Some(hard))
                .expect("persist");
            storage
                .persist(Some(&snapshot), &[entry(6, 3)], None)
                .expect("persist");
        }
        let (_, recovered) = RaftStorage::open(dir.path()).expect("reopen");
        assert_eq!(recovered.restored.snapshot, Some(snapshot));
        assert_eq!(recovered.restored.entries, vec![entry(6, 3)]);
        assert_eq!(recovered.state.applied_index(), 5);
        assert_eq!(recovered.restored.hard_state.commit, 5);
    }

    #[test]
    fn raft_storage_damaged_hard_state_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(RaftStorage::open(dir.path()).expect("open"));
        let path = dir.path().join(RAFT_DIR_NAME).join(HARD_STATE_FILE_NAME);
        std::fs::write(&path, b"garbage").expect("write");
        let error = RaftStorage::open(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("hard-state"), "{error}");
    }
}
