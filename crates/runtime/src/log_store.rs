//! The durable log: entries appended in batches and synced with one fsync per batch (group
//! commit), plus a snapshot of the state machine that lets the log be truncated.
//!
//! Layout of `<data-dir>/colony.redb` (one redb file):
//! - table `log`: index (u64) -> encoded [`Entry`]
//! - table `snapshot`: `"state"` -> encoded [`StateMachine`], `"index"` -> its index (u64 LE)
//!
//! Invariant: the log holds exactly the entries `snapshot_index + 1 ..= last_index`, without
//! gaps; replaying them onto the snapshot reproduces the state that was acknowledged.

use colony_store::{Entry, StateMachine};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

const LOG_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const SNAPSHOT_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// The store file's name inside the data dir.
pub const STORE_FILE_NAME: &str = "colony.redb";
/// The lock file's name inside the data dir.
pub const LOCK_FILE_NAME: &str = "colony.lock";

/// Why the data dir could not be opened. Each message names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory could not be created or is not writable.
    #[error("data dir {path} is not usable: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another agent holds the data dir.
    #[error("data dir {dir} is in use by another colony agent (lock held on {lock})")]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The store file could not be opened, or is corrupt.
    #[error("store file {path} cannot be opened: {detail}")]
    Store {
        /// The store file.
        path: PathBuf,
        /// What redb or the decoder said.
        detail: String,
    },
}

/// Why an append did not become durable. Nothing of the batch may be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The disk is full; the batch was not written. Recoverable once space returns.
    #[error("disk full writing {path}: {source}")]
    DiskFull {
        /// The store file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Any other failure, including a failed fsync: the state of the file is unknown and the
    /// agent must stop.
    #[error("writing {path} failed: {detail}")]
    Fatal {
        /// The store file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// The durable log of one agent.
pub struct LogStore {
    /// `None` only between dropping a handle that saw an IO error and reopening the file.
    db: Option<Database>,
    needs_reopen: bool,
    path: PathBuf,
    snapshot_index: u64,
    last_index: u64,
    _lock: File,
}

/// What was recovered from disk at open.
pub struct Recovered {
    /// The state after replaying the snapshot and every logged entry.
    pub state: StateMachine,
    /// How many log entries were replayed on top of the snapshot.
    pub replayed_count: u64,
}

impl LogStore {
    /// Opens (or creates) the store in `dir`, takes the data dir's lock, and replays the log.
    ///
    /// # Errors
    /// Returns [`OpenError`] naming the directory or file that is unusable, locked or corrupt.
    pub fn open(dir: &Path) -> Result<(LogStore, Recovered), OpenError> {
        let data_dir_error = |source| OpenError::DataDir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(data_dir_error)?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let mut lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| OpenError::DataDir {
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked {
                    dir: dir.to_path_buf(),
                    lock: lock_path,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(OpenError::DataDir {
                    path: lock_path,
                    source,
                });
            }
        }
        let _ = lock
            .set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()));

        let path = dir.join(STORE_FILE_NAME);
        let store_error = |detail: String| OpenError::Store {
            path: path.clone(),
            detail,
        };
        let db = Database::create(&path).map_err(|e| store_error(e.to_string()))?;
        let (snapshot_index, state) = read_snapshot(&db).map_err(store_error)?;
        let (state, last_index, replayed_count) =
            replay(&db, snapshot_index, state).map_err(store_error)?;
        let store = LogStore {
            db: Some(db),
            needs_reopen: false,
            path,
            snapshot_index,
            last_index,
            _lock: lock,
        };
        Ok((
            store,
            Recovered {
                state,
                replayed_count,
            },
        ))
    }

    /// The store file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The index of the last durable entry.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The index covered by the snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// Appends `entries` (already encoded) after the last index and syncs them: one fsync for
    /// the whole batch. On success every entry is durable.
    ///
    /// # Errors
    /// [`AppendError::DiskFull`] if space ran out (nothing was written); [`AppendError::Fatal`]
    /// for any other failure.
    pub fn append(&mut self, entries: &[Vec<u8>]) -> Result<(), AppendError> {
        assert!(!entries.is_empty(), "empty batches are not written");
        let first = self.last_index + 1;
        let result = (|| -> Result<(), redb::Error> {
            let db = self.db.as_ref().ok_or(redb::Error::DatabaseClosed)?;
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut table = txn.open_table(LOG_TABLE)?;
                for (offset, bytes) in entries.iter().enumerate() {
                    table.insert(first + offset as u64, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        result.map_err(|e| self.classify(e))?;
        self.last_index += entries.len() as u64;
        Ok(())
    }

    /// Stores `state` (whose applied index must be the last durable index) as the snapshot and
    /// removes the log entries it covers, in one durable transaction.
    ///
    /// # Errors
    /// As [`LogStore::append`].
    pub fn write_snapshot(&mut self, state_bytes: &[u8], index: u64) -> Result<(), AppendError> {
        assert!(index <= self.last_index && index >= self.snapshot_index);
        let result = (|| -> Result<(), redb::Error> {
            let db = self.db.as_ref().ok_or(redb::Error::DatabaseClosed)?;
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            {
                let mut snapshot = txn.open_table(SNAPSHOT_TABLE)?;
                snapshot.insert("state", state_bytes)?;
                snapshot.insert("index", index.to_le_bytes().as_slice())?;
                let mut log = txn.open_table(LOG_TABLE)?;
                log.retain_in(..=index, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })();
        result.map_err(|e| self.classify(e))?;
        self.snapshot_index = index;
        Ok(())
    }

    /// Re-opens the database after an IO error (redb refuses further work on a handle that saw
    /// one) and checks that the failed batch left no trace.
    ///
    /// # Errors
    /// A message naming the file if it cannot be reopened or its log end moved.
    pub fn reopen(&mut self) -> Result<(), String> {
        if !self.needs_reopen {
            return Ok(());
        }
        self.db = None;
        let db =
            Database::create(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let last = last_log_index(&db)?.unwrap_or(self.snapshot_index);
        if last != self.last_index {
            return Err(format!(
                "{}: log ends at {last} after reopen, expected {}",
                self.path.display(),
                self.last_index
            ));
        }
        self.db = Some(db);
        self.needs_reopen = false;
        Ok(())
    }

    fn classify(&mut self, error: redb::Error) -> AppendError {
        self.needs_reopen = true;
        let io = match &error {
            redb::Error::Io(io) => Some(io),
            _ => None,
        };
        match io {
            Some(io) if is_disk_full(io) => AppendError::DiskFull {
                path: self.path.clone(),
                source: std::io::Error::new(io.kind(), io.to_string()),
            },
            _ if error.to_string().contains("No space left") => AppendError::DiskFull {
                path: self.path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::StorageFull, error.to_string()),
            },
            _ => AppendError::Fatal {
                path: self.path.clone(),
                detail: error.to_string(),
            },
        }
    }
}

fn is_disk_full(error: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    error.kind() == std::io::ErrorKind::StorageFull
        || matches!(error.raw_os_error(), Some(ENOSPC) | Some(EDQUOT))
}

fn read_snapshot(db: &Database) -> Result<(u64, StateMachine), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = match txn.open_table(SNAPSHOT_TABLE) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, StateMachine::new())),
        Err(e) => return Err(e.to_string()),
    };
    let index = match table.get("index").map_err(|e| e.to_string())? {
        Some(bytes) => {
            let raw: [u8; 8] = bytes
                .value()
                .try_into()
                .map_err(|_| "snapshot index is not 8 bytes".to_string())?;
            u64::from_le_bytes(raw)
        }
        None => return Ok((0, StateMachine::new())),
    };
    let bytes = table
        .get("state")
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("snapshot at index {index} has no state"))?;
    let state = StateMachine::from_snapshot(bytes.value())
        .map_err(|e| format!("snapshot at index {index}: {e}"))?;
    if state.applied_index() != index {
        return Err(format!(
            "snapshot claims index {index} but holds state at {}",
            state.applied_index()
        ));
    }
    Ok((index, state))
}

fn last_log_index(db: &Database) -> Result<Option<u64>, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    match txn.open_table(LOG_TABLE) {
        Ok(table) => Ok(table
            .last()
            .map_err(|e| e.to_string())?
            .map(|(k, _)| k.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn replay(
    db: &Database,
    snapshot_index: u64,
    mut state: StateMachine,
) -> Result<(StateMachine, u64, u64), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = match txn.open_table(LOG_TABLE) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((state, snapshot_index, 0)),
        Err(e) => return Err(e.to_string()),
    };
    let mut expected = snapshot_index + 1;
    let mut replayed = 0;
    for item in table.range(expected..).map_err(|e| e.to_string())? {
        let (key, value) = item.map_err(|e| e.to_string())?;
        let index = key.value();
        if index != expected {
            return Err(format!(
                "log has a gap: expected entry {expected}, found {index}"
            ));
        }
        let entry = Entry::decode(value.value())
            .map_err(|e| format!("log entry {index} is corrupt: {e}"))?;
        state.apply(index, &entry);
        expected += 1;
        replayed += 1;
    }
    state.check_invariants();
    Ok((state, expected - 1, replayed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_store::{Command, KvSetMode};

    fn put(key: &str) -> Vec<u8> {
        Entry {
            time_ms: 1,
            command: Command::KvSet {
                key: key.into(),
                value: b"v".to_vec(),
                flags: 0,
                mode: KvSetMode::Set,
            },
        }
        .encode()
    }

    #[test]
    fn log_store_reopen_replays_every_appended_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut store, recovered) = LogStore::open(dir.path()).expect("open");
            assert_eq!(recovered.state.applied_index(), 0);
            store.append(&[put("a"), put("b")]).expect("append");
            store.append(&[put("c")]).expect("append");
        }
        let (store, recovered) = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(store.last_index(), 3);
        assert_eq!(recovered.replayed_count, 3);
        assert!(recovered.state.kv_get("c").is_some());
    }

    #[test]
    fn log_store_snapshot_truncates_log_and_restores_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut store, mut recovered) = LogStore::open(dir.path()).expect("open");
            let entries = vec![put("a"), put("b")];
            store.append(&entries).expect("append");
            for (i, bytes) in entries.iter().enumerate() {
                recovered
                    .state
                    .apply(i as u64 + 1, &Entry::decode(bytes).expect("decode"));
            }
            store
                .write_snapshot(&recovered.state.to_snapshot(), 2)
                .expect("snapshot");
            store.append(&[put("c")]).expect("append");
        }
        let (store, recovered) = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(store.snapshot_index(), 2);
        assert_eq!(
            recovered.replayed_count, 1,
            "only the entry after the snapshot replays"
        );
        assert_eq!(recovered.state.applied_index(), 3);
        assert!(recovered.state.kv_get("a").is_some());
    }

    #[test]
    fn log_store_second_open_of_same_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = LogStore::open(dir.path()).expect("open");
        let error = LogStore::open(dir.path()).err().expect("locked");
        assert!(matches!(error, OpenError::Locked { .. }));
        assert!(error.to_string().contains("colony.lock"));
    }

    #[test]
    fn log_store_garbage_file_is_a_clear_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(STORE_FILE_NAME), vec![0x5a; 64 * 1024]).expect("write");
        let error = LogStore::open(dir.path()).err().expect("corrupt");
        assert!(error.to_string().contains(STORE_FILE_NAME), "{error}");
    }
}
