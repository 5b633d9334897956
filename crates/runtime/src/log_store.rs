//! The durable log: entries appended in batches with one `fdatasync` per batch (group commit),
//! plus a snapshot of the state machine that lets old log segments be deleted.
//!
//! Layout of a data dir:
//! ```text
//! colony.lock                       held (flock) by the agent using the dir
//! snapshot                          the state machine at some index (may be absent)
//! wal/00000000000000000001.wal      segments, named by the index of their first entry
//! wal/00000000000000052345.wal
//! ```
//! A segment is created at its full size and zero-filled before use, so that appending never
//! changes the file's size or allocation: `fdatasync` then writes the data only, and a segment
//! shorter than its created size is detectably truncated.
//!
//! A segment starts with a 16-byte header (`CLNYWAL1`, then its created size as u64 LE), then
//! holds records one after another, then zeros:
//! ```text
//! | payload_len: u32 LE | crc32: u32 LE | index: u64 LE | payload (an encoded Entry) |
//! ```
//! `crc32` covers the index and the payload. A zero `payload_len` ends the segment's records.
//!
//! Recovery: every record must be valid, except at the end of the *last* segment, where a
//! write torn by a crash (never acknowledged: acknowledgement follows `fdatasync`) is zeroed
//! and logged. A torn write is told from damage by its zeros: the segment was zero-filled
//! before use, and a sector the crash kept from the disk still reads as zeros, so a torn
//! record has a part, within one 512-byte sector, that is all zeros (etcd's WAL makes the
//! same test). A record that fails its checksum with data in every sector was damaged after
//! it was written — it may have been acknowledged, and records after it too — so that, like
//! any other damage, is an error naming the file and offset, never a silent truncation.
//!
//! Invariant: the entries `snapshot_index + 1 ..= last_index` are in the segments, without
//! gaps; replaying them onto the snapshot reproduces the acknowledged state.

use colony_store::{Entry, StateMachine};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data dir.
pub const LOCK_FILE_NAME: &str = "colony.lock";
/// The snapshot file's name inside the data dir.
pub const SNAPSHOT_FILE_NAME: &str = "snapshot";
/// The largest append buffer kept for the next batch.
const SCRATCH_KEPT_BYTES_MAX: usize = 4 << 20;
/// A snapshot is written and synced this many bytes at a time.
const SNAPSHOT_SYNC_BYTES: usize = 1 << 20;
/// The directory of log segments inside the data dir.
pub const WAL_DIR_NAME: &str = "wal";
/// The size a segment is created with (a batch larger than this gets a segment of its own).
pub const SEGMENT_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;
/// The largest record payload accepted when reading; anything larger is corruption.
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = 64 * 1024 * 1024;

const RECORD_HEADER_BYTES: u64 = 16;
const SEGMENT_MAGIC: &[u8; 8] = b"CLNYWAL1";
const SEGMENT_HEADER_BYTES: u64 = 16;
const SNAPSHOT_MAGIC: &[u8; 8] = b"CLNYSNP1";
const SNAPSHOT_HEADER_BYTES: usize = 8 + 8 + 8 + 4;

/// Why the data dir could not be opened. Each message names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory could not be created or is not writable.
    #[error("data dir {path} is not usable: {source}")]
    DataDir {
        /// The directory or file.
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
    /// A file of the store is damaged.
    #[error("store file {path} is damaged: {detail}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong, with the offset where it applies.
        detail: String,
    },
}

/// Why an append did not become durable. Nothing of the batch may be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The disk is full; nothing of the batch was made durable. Recoverable once space returns.
    #[error("disk full writing {path}: {source}")]
    DiskFull {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Any other failure, including a failed fsync: the state of the file is unknown and the
    /// agent must stop.
    #[error("writing {path} failed: {detail}")]
    Fatal {
        /// The file being written.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

struct Segment {
    path: PathBuf,
    file: File,
    first_index: u64,
    size_bytes: u64,
    /// Where the next record goes.
    write_offset: u64,
}

/// The durable log of one agent.
pub struct LogStore {
    dir: PathBuf,
    wal_dir: PathBuf,
    /// Older segments, oldest first: (first index, path).
    sealed: Vec<(u64, PathBuf)>,
    active: Segment,
    snapshot_index: u64,
    last_index: u64,
    segment_bytes: u64,
    _lock: File,
    /// The buffer a batch is encoded into, kept between appends: a new one each time would
    /// often be fresh memory, whose pages the kernel zeroes on first touch.
    scratch: Vec<u8>,
}

/// What was recovered from disk at open.
pub struct Recovered {
    /// The state after replaying the snapshot and every logged entry.
    pub state: StateMachine,
    /// How many log entries were replayed on top of the snapshot.
    pub replayed_count: u64,
}

/// Called with each record's index and payload while a segment is scanned; an error names
/// what is wrong with the payload.
type RecordVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), String> + 'a;

/// What [`LogStore::open_raw`] found on disk.
pub struct RawRecovered {
    /// The snapshot file's index and payload, if there is one.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Every record of the segments, contiguous, in index order.
    pub records: Vec<(u64, Vec<u8>)>,
}

/// Where record `index` starts in a segment whose first record is `first_index`.
fn record_offset(file: &File, index: u64, first_index: u64) -> std::io::Result<u64> {
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut header = [0u8; RECORD_HEADER_BYTES as usize];
    for _ in first_index..index {
        file.read_exact_at(&mut header, offset)?;
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        if len == 0 {
            return Err(std::io::Error::other(format!(
                "record {index} is not in the segment"
            )));
        }
        offset += RECORD_HEADER_BYTES + u64::from(len);
    }
    Ok(offset)
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::DataDir {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, detail: String) -> OpenError {
    OpenError::Corrupt {
        path: path.to_path_buf(),
        detail,
    }
}

impl LogStore {
    /// Opens (or creates) the store in `dir`, takes the data dir's lock, and replays the log.
    ///
    /// # Errors
    /// [`OpenError`] naming the directory or file that is unusable, locked or damaged.
    pub fn open(dir: &Path) -> Result<(LogStore, Recovered), OpenError> {
        Self::open_with_segment_bytes(dir, SEGMENT_BYTES_DEFAULT)
    }

    /// As [`LogStore::open`], with a chosen segment size (tests use small ones).
    ///
    /// # Errors
    /// As [`LogStore::open`].
    pub fn open_with_segment_bytes(
        dir: &Path,
        segment_bytes: u64,
    ) -> Result<(LogStore, Recovered), OpenError> {
        assert!(
            segment_bytes >= 4096,
            "segments smaller than a page make no sense"
        );
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock = take_lock(dir)?;
        let (snapshot_index, mut state) = read_snapshot(&dir.join(SNAPSHOT_FILE_NAME))?;
        let mut replayed_count = 0;
        let store = Self::open_segments(
            dir,
            segment_bytes,
            lock,
            snapshot_index,
            &mut |index, payload| {
                // Records the snapshot covers are skipped; the rest continue the state.
                if index == state.applied_index() + 1 {
                    let entry = Entry::decode(payload).map_err(|e| e.to_string())?;
                    state.apply(index, &entry);
                    replayed_count += 1;
                }
                Ok(())
            },
        )?;
        state.check_invariants();
        assert_eq!(state.applied_index(), store.last_index);
        Ok((
            store,
            Recovered {
                state,
                replayed_count,
            },
        ))
    }

    /// Scans the segments of `dir` (whose lock is held and whose snapshot covers up to
    /// `snapshot_index`), calling `visit` with each record, and returns the store positioned
    /// after the last record. A segment that starts beyond the records before it (and the
    /// snapshot) is a gap: an error naming it.
    fn open_segments(
        dir: &Path,
        segment_bytes: u64,
        lock: File,
        snapshot_index: u64,
        visit: &mut RecordVisitor<'_>,
    ) -> Result<LogStore, OpenError> {
        let wal_dir = dir.join(WAL_DIR_NAME);
        std::fs::create_dir_all(&wal_dir).map_err(io_error(&wal_dir))?;
        let mut segments = list_segments(&wal_dir)?;
        let mut last_index = snapshot_index;
        let mut active = None;
        let segments_count = segments.len();
        for (position, (first_index, path)) in segments.iter().enumerate() {
            let is_last = position + 1 == segments_count;
            if *first_index > last_index + 1 {
                return Err(corrupt(
                    path,
                    format!(
                        "log has a gap: expected an entry at index {}",
                        last_index + 1
                    ),
                ));
            }
            let scan = scan_segment(path, *first_index, is_last, &mut |index, payload| {
                visit(index, payload)?;
                last_index = last_index.max(index);
                Ok(())
            })?;
            if is_last {
                active = Some(scan);
            }
        }
        let active = match active {
            Some(segment) => segment,
            None => create_segment(&wal_dir, snapshot_index + 1, segment_bytes)
                .map_err(|e| corrupt(&wal_dir, format!("cannot create the first segment: {e}")))?,
        };
        segments.pop();
        Ok(LogStore {
            dir: dir.to_path_buf(),
            wal_dir,
            sealed: segments,
            active,
            snapshot_index,
            last_index,
            segment_bytes,
            _lock: lock,
            scratch: Vec::new(),
        })
    }

    /// Opens (or creates) a log whose payloads the caller interprets: nothing is decoded or
    /// replayed. Returns the snapshot file's index and payload, and every record in the
    /// segments (which may start at or before the snapshot's index; the caller decides what
    /// to keep and calls [`LogStore::reset`] to drop the rest).
    ///
    /// # Errors
    /// As [`LogStore::open`].
    pub fn open_raw(dir: &Path, segment_bytes: u64) -> Result<(LogStore, RawRecovered), OpenError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock = take_lock(dir)?;
        let snapshot = read_snapshot_raw(&dir.join(SNAPSHOT_FILE_NAME))?;
        let snapshot_index = snapshot.as_ref().map_or(0, |(index, _)| *index);
        let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
        let store = Self::open_segments(
            dir,
            segment_bytes,
            lock,
            snapshot_index,
            &mut |index, payload| {
                if let Some((last, _)) = records.last()
                    && index != last + 1
                {
                    return Err(format!("does not follow entry {last}"));
                }
                records.push((index, payload.to_vec()));
                Ok(())
            },
        )?;
        Ok((store, RawRecovered { snapshot, records }))
    }

    /// Durably removes the entries from `index` on, so that the next append writes `index`
    /// (Raft overwriting a follower's conflicting suffix). Later segments are deleted first
    /// (newest first), then the tail of the segment holding `index` is zeroed: a crash in
    /// between leaves a shorter but contiguous log.
    ///
    /// # Errors
    /// As [`LogStore::append`].
    ///
    /// # Panics
    /// If `index` is not after the snapshot.
    pub fn truncate_from(&mut self, index: u64) -> Result<(), AppendError> {
        assert!(
            index > self.snapshot_index,
            "cannot truncate into the snapshot"
        );
        if index > self.last_index {
            return Ok(());
        }
        while self.active.first_index > index {
            let (first, path) = self.sealed.pop().expect("a segment holds every index");
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| classify(&path, e))?;
            let size_bytes = file.metadata().map_err(|e| classify(&path, e))?.len();
            let reopened = Segment {
                path,
                file,
                first_index: first,
                size_bytes,
                write_offset: SEGMENT_HEADER_BYTES,
            };
            let newer = std::mem::replace(&mut self.active, reopened);
            drop(newer.file);
            std::fs::remove_file(&newer.path).map_err(|e| classify(&newer.path, e))?;
            File::open(&self.wal_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| classify(&self.wal_dir, e))?;
        }
        let offset = record_offset(&self.active.file, index, self.active.first_index)
            .map_err(|e| classify(&self.active.path, e))?;
        let zeros = vec![0u8; (self.active.size_bytes - offset) as usize];
        self.active
            .file
            .write_all_at(&zeros, offset)
            .and_then(|()| self.active.file.sync_data())
            .map_err(|e| classify(&self.active.path, e))?;
        self.active.write_offset = offset;
        self.last_index = index - 1;
        Ok(())
    }

    /// Drops the whole log after a snapshot at `index` was written (Raft installing a
    /// snapshot from its leader): every segment is deleted, newest first, and an empty one
    /// starts at `index + 1`.
    ///
    /// # Errors
    /// As [`LogStore::append`].
    pub fn reset(&mut self, index: u64) -> Result<(), AppendError> {
        let mut doomed: Vec<PathBuf> = self.sealed.drain(..).map(|(_, path)| path).collect();
        doomed.push(self.active.path.clone());
        for path in doomed.iter().rev() {
            std::fs::remove_file(path).map_err(|e| classify(path, e))?;
        }
        File::open(&self.wal_dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| classify(&self.wal_dir, e))?;
        self.active = create_segment(&self.wal_dir, index + 1, self.segment_bytes)
            .map_err(|e| classify(&self.wal_dir, e))?;
        self.snapshot_index = index;
        self.last_index = index;
        Ok(())
    }

    /// The data dir, for messages.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The index of the last durable entry.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// The index covered by the snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// Appends `entries` (already encoded) after the last index and makes them durable with
    /// one `fdatasync`.
    ///
    /// # Errors
    /// [`AppendError::DiskFull`] if space ran out (nothing was made durable, the log is
    /// unchanged); [`AppendError::Fatal`] for any other failure.
    pub fn append(&mut self, entries: &[Vec<u8>]) -> Result<(), AppendError> {
        assert!(!entries.is_empty(), "empty batches are not written");
        let first = self.last_index + 1;
        let batch_bytes: u64 = entries
            .iter()
            .map(|e| RECORD_HEADER_BYTES + e.len() as u64)
            .sum::<u64>();
        if self.active.write_offset + batch_bytes + RECORD_HEADER_BYTES > self.active.size_bytes {
            self.roll_segment(first, batch_bytes)?;
        }
        let mut buffer = std::mem::take(&mut self.scratch);
        buffer.clear();
        buffer.reserve(batch_bytes as usize);
        for (offset, payload) in entries.iter().enumerate() {
            encode_record(&mut buffer, first + offset as u64, payload);
        }
        assert_eq!(buffer.len() as u64, batch_bytes);
        let segment = &mut self.active;
        let written = segment
            .file
            .write_all_at(&buffer, segment.write_offset)
            .and_then(|()| segment.file.sync_data());
        // An unusually large batch's buffer is not kept.
        if buffer.capacity() <= SCRATCH_KEPT_BYTES_MAX {
            self.scratch = buffer;
        }
        if let Err(error) = written {
            return Err(classify(&segment.path, error));
        }
        segment.write_offset += batch_bytes;
        self.last_index += entries.len() as u64;
        Ok(())
    }

    fn roll_segment(&mut self, first_index: u64, batch_bytes: u64) -> Result<(), AppendError> {
        let size = self.segment_bytes.max(batch_bytes + RECORD_HEADER_BYTES);
        let segment = create_segment(&self.wal_dir, first_index, size)
            .map_err(|error| classify(&self.wal_dir, error))?;
        let sealed = std::mem::replace(&mut self.active, segment);
        self.sealed.push((sealed.first_index, sealed.path));
        Ok(())
    }

    /// Stores `state_bytes` (the state at `index`, which must be durable) as the snapshot, then
    /// deletes the segments it covers entirely.
    ///
    /// # Errors
    /// As [`LogStore::append`]; the previous snapshot stays valid on error.
    pub fn write_snapshot(&mut self, state_bytes: &[u8], index: u64) -> Result<(), AppendError> {
        assert!(index <= self.last_index && index >= self.snapshot_index);
        self.snapshot_file().write(state_bytes, index)?;
        self.handle_snapshot_written(index);
        Ok(())
    }

    /// The size of the snapshot on disk, bytes (0 if there is none).
    pub fn snapshot_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join(SNAPSHOT_FILE_NAME))
            .map_or(0, |m| m.len().saturating_sub(SNAPSHOT_HEADER_BYTES as u64))
    }

    /// A handle that writes snapshot files from another thread while the log keeps appending.
    pub fn snapshot_file(&self) -> SnapshotFile {
        SnapshotFile {
            dir: self.dir.clone(),
        }
    }

    /// Records that a snapshot at `index` is durable and deletes the segments it covers.
    ///
    /// # Panics
    /// If `index` is older than the current snapshot or newer than the log.
    pub fn handle_snapshot_written(&mut self, index: u64) {
        assert!(index >= self.snapshot_index, "snapshots only move forward");
        assert!(
            index <= self.last_index,
            "a snapshot cannot be ahead of the log"
        );
        self.snapshot_index = index;
        // The oldest sealed segment ends just before the next segment starts; delete it while
        // the snapshot covers all of it. The active segment is never deleted.
        while !self.sealed.is_empty() {
            let next_first = self
                .sealed
                .get(1)
                .map_or(self.active.first_index, |(first, _)| *first);
            if next_first > index + 1 {
                break;
            }
            let (_, old) = self.sealed.remove(0);
            if let Err(error) = std::fs::remove_file(&old) {
                tracing::warn!(file = %old.display(), %error, "could not delete a covered segment");
            }
        }
    }
}

/// Writes the snapshot file of one data dir: to a temporary file, synced, renamed over the
/// old snapshot, directory synced. A crash at any point leaves either snapshot intact.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    dir: PathBuf,
}

impl SnapshotFile {
    /// Where the snapshot lives.
    pub fn path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE_NAME)
    }

    /// Writes `state_bytes`, the state at `index`.
    ///
    /// # Errors
    /// [`AppendError::DiskFull`] or [`AppendError::Fatal`]; the previous snapshot stays valid.
    pub fn write(&self, state_bytes: &[u8], index: u64) -> Result<(), AppendError> {
        self.write_with(index, |out| out.write_all(state_bytes))
            .map(drop)
    }

    /// Writes the state at `index` as `encode` produces it, streamed: `encode` writes into a
    /// 1 MiB buffer that goes to the file (and is made durable) each time it fills, so no
    /// copy of the whole encoding is ever held in memory. The header, which holds the
    /// payload's length and checksum, is written last, before the rename. Returns the
    /// payload's length, bytes.
    ///
    /// # Errors
    /// [`AppendError::DiskFull`] or [`AppendError::Fatal`] (including an error `encode`
    /// returned); the previous snapshot stays valid.
    pub fn write_with(
        &self,
        index: u64,
        encode: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<u64, AppendError> {
        use std::io::{Seek as _, SeekFrom};
        let path = self.dir.join(SNAPSHOT_FILE_NAME);
        let temp = self.dir.join(format!("{SNAPSHOT_FILE_NAME}.tmp"));
        let written = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(&[0; SNAPSHOT_HEADER_BYTES])?;
            let mut sink = SnapshotSink {
                file,
                buffer: Vec::with_capacity(SNAPSHOT_SYNC_BYTES),
                hasher: crc32fast::Hasher::new(),
                len: 0,
            };
            encode(&mut sink)?;
            sink.write_buffer()?;
            let SnapshotSink {
                mut file,
                hasher,
                len,
                ..
            } = sink;
            let mut header = Vec::with_capacity(SNAPSHOT_HEADER_BYTES);
            header.extend_from_slice(SNAPSHOT_MAGIC);
            header.extend_from_slice(&index.to_le_bytes());
            header.extend_from_slice(&len.to_le_bytes());
            header.extend_from_slice(&hasher.finalize().to_le_bytes());
            assert_eq!(header.len(), SNAPSHOT_HEADER_BYTES);
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            File::open(&self.dir)?.sync_all()?;
            Ok(len)
        })();
        written.map_err(|error| {
            let _ = std::fs::remove_file(&temp);
            classify(&path, error)
        })
    }
}

/// Where a snapshot's payload is encoded to: a buffer written to the file, checksummed and
/// made durable each time it holds [`SNAPSHOT_SYNC_BYTES`]. Durable slice by slice, because
/// one large write-back would hold up the log's own fsyncs (every acknowledged write) until
/// all of it is on disk.
struct SnapshotSink {
    file: File,
    buffer: Vec<u8>,
    hasher: crc32fast::Hasher,
    len: u64,
}

impl SnapshotSink {
    fn write_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buffer)?;
        self.file.sync_data()?;
        self.hasher.update(&self.buffer);
        self.len += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }
}

impl std::io::Write for SnapshotSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = SNAPSHOT_SYNC_BYTES - self.buffer.len();
        let taken = bytes.len().min(room);
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == SNAPSHOT_SYNC_BYTES {
            self.write_buffer()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn take_lock(dir: &Path) -> Result<File, OpenError> {
    let lock_path = dir.join(LOCK_FILE_NAME);
    let mut lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
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
    Ok(lock)
}

/// A write error as [`AppendError`]: a full disk (or quota) is recoverable, anything else not.
pub(crate) fn classify(path: &Path, error: std::io::Error) -> AppendError {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let full = error.kind() == std::io::ErrorKind::StorageFull
        || matches!(error.raw_os_error(), Some(ENOSPC) | Some(EDQUOT));
    if full {
        AppendError::DiskFull {
            path: path.to_path_buf(),
            source: error,
        }
    } else {
        AppendError::Fatal {
            path: path.to_path_buf(),
            detail: error.to_string(),
        }
    }
}

fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}.wal")
}

fn create_segment(wal_dir: &Path, first_index: u64, size_bytes: u64) -> std::io::Result<Segment> {
    let path = wal_dir.join(segment_name(first_index));
    let temp = wal_dir.join(format!("{}.tmp", segment_name(first_index)));
    let result = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&temp)?;
        // Zero-fill rather than set_len: the blocks are then allocated, so appends neither
        // change metadata nor hit ENOSPC, and fdatasync writes only data.
        file.write_all(SEGMENT_MAGIC)?;
        file.write_all(&size_bytes.to_le_bytes())?;
        let zeros = vec![0u8; 1024 * 1024];
        let mut remaining = size_bytes - SEGMENT_HEADER_BYTES;
        while remaining > 0 {
            let chunk = remaining.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..chunk])?;
            remaining -= chunk as u64;
        }
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        File::open(wal_dir)?.sync_all()?;
        Ok(file)
    })();
    match result {
        Ok(file) => Ok(Segment {
            path,
            file,
            first_index,
            size_bytes,
            write_offset: SEGMENT_HEADER_BYTES,
        }),
        Err(error) => {
            let _ = std::fs::remove_file(&temp);
            Err(error)
        }
    }
}

fn list_segments(wal_dir: &Path) -> Result<Vec<(u64, PathBuf)>, OpenError> {
    let mut segments = Vec::new();
    for item in std::fs::read_dir(wal_dir).map_err(io_error(wal_dir))? {
        let item = item.map_err(io_error(wal_dir))?;
        let name = item.file_name().to_string_lossy().to_string();
        if name.ends_with(".tmp") {
            // A segment whose creation did not finish holds no entries.
            let _ = std::fs::remove_file(item.path());
            continue;
        }
        let first_index = name
            .strip_suffix(".wal")
            .and_then(|stem| stem.parse::<u64>().ok())
            .ok_or_else(|| corrupt(&item.path(), "unexpected file in the log directory".into()))?;
        segments.push((first_index, item.path()));
    }
    segments.sort();
    Ok(segments)
}

fn encode_record(buffer: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buffer.extend_from_slice(&hasher.finalize().to_le_bytes());
    buffer.extend_from_slice(&index.to_le_bytes());
    buffer.extend_from_slice(payload);
}

/// Reads a segment's records, calling `visit` for each; returns the segment positioned for
/// appending. In the last segment a torn record ends the log and is zeroed.
/// The sector size a torn write is judged at: disks persist whole sectors or none, and 512
/// bytes divides every sector size in use.
const SECTOR_BYTES: usize = 512;

/// Whether some part of `data[start..end]` that lies within one sector is all zeros: the mark
/// of a write a crash tore (see the module doc).
fn has_zero_sector_part(data: &[u8], start: usize, end: usize) -> bool {
    let mut from = start;
    while from < end {
        let to = ((from / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end);
        if data[from..to].iter().all(|b| *b == 0) {
            return true;
        }
        from = to;
    }
    false
}

fn scan_segment(
    path: &Path,
    first_index: u64,
    is_last: bool,
    visit: &mut RecordVisitor<'_>,
) -> Result<Segment, OpenError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    let size_bytes = file.metadata().map_err(io_error(path))?.len();
    let data = std::fs::read(path).map_err(io_error(path))?;
    if data.len() < SEGMENT_HEADER_BYTES as usize || &data[..8] != SEGMENT_MAGIC {
        return Err(corrupt(
            path,
            "not a colony log segment (bad header)".into(),
        ));
    }
    let created_bytes = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    if data.len() as u64 != created_bytes || size_bytes != created_bytes {
        return Err(corrupt(
            path,
            format!(
                "segment is {} bytes but was created with {created_bytes}: truncated",
                data.len()
            ),
        ));
    }
    let mut offset = SEGMENT_HEADER_BYTES as usize;
    let mut expected = first_index;
    let torn = loop {
        if offset + RECORD_HEADER_BYTES as usize > data.len() {
            break None;
        }
        let header = &data[offset..offset + RECORD_HEADER_BYTES as usize];
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        if len == 0 {
            let rest = &data[offset..];
            if rest.iter().any(|b| *b != 0) {
                break Some(format!(
                    "non-zero bytes after the last record at offset {offset}"
                ));
            }
            break None;
        }
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let end = offset + RECORD_HEADER_BYTES as usize + len as usize;
        if len > RECORD_PAYLOAD_BYTES_MAX || end > data.len() {
            let damage = format!("record at offset {offset} claims {len} bytes");
            if !has_zero_sector_part(&data, offset, end.min(data.len())) {
                return Err(corrupt(
                    path,
                    format!("{damage}, with data in every sector"),
                ));
            }
            break Some(damage);
        }
        let payload = &data[offset + RECORD_HEADER_BYTES as usize..end];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&index.to_le_bytes());
        hasher.update(payload);
        if hasher.finalize() != crc {
            let damage = format!("record at offset {offset} fails its checksum");
            if !has_zero_sector_part(&data, offset, end) {
                return Err(corrupt(
                    path,
                    format!(
                        "{damage}, with data in every sector: damaged after it was written, \
                         not torn by a crash (it, and the records after it, may have been \
                         acknowledged)"
                    ),
                ));
            }
            break Some(damage);
        }
        if index != expected {
            return Err(corrupt(
                path,
                format!("record at offset {offset} has index {index}, expected {expected}"),
            ));
        }
        visit(index, payload)
            .map_err(|e| corrupt(path, format!("entry {index} at offset {offset}: {e}")))?;
        expected += 1;
        offset = end;
    };
    if let Some(damage) = torn {
        if !is_last {
            return Err(corrupt(path, damage));
        }
        tracing::warn!(
            file = %path.display(),
            offset,
            %damage,
            "discarding a torn write at the end of the log (never acknowledged)"
        );
        let zeros = vec![0u8; data.len() - offset];
        file.write_all_at(&zeros, offset as u64)
            .and_then(|()| file.sync_data())
            .map_err(io_error(path))?;
    }
    Ok(Segment {
        path: path.to_path_buf(),
        file,
        first_index,
        size_bytes,
        write_offset: offset as u64,
    })
}

fn read_snapshot(path: &Path) -> Result<(u64, StateMachine), OpenError> {
    let Some((index, payload)) = read_snapshot_raw(path)? else {
        return Ok((0, StateMachine::new()));
    };
    let state = StateMachine::from_snapshot(&payload).map_err(|e| corrupt(path, e.to_string()))?;
    if state.applied_index() != index {
        return Err(corrupt(
            path,
            format!(
                "claims index {index} but holds state at {}",
                state.applied_index()
            ),
        ));
    }
    Ok((index, state))
}

/// Reads and checks a snapshot file: its index and payload, or `None` if there is none.
fn read_snapshot_raw(path: &Path) -> Result<Option<(u64, Vec<u8>)>, OpenError> {
    let mut bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(path)(error)),
    };
    if bytes.len() < SNAPSHOT_HEADER_BYTES || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt(path, "not a colony snapshot (bad header)".into()));
    }
    let index = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    let payload = bytes.split_off(SNAPSHOT_HEADER_BYTES);
    if payload.len() as u64 != len {
        return Err(corrupt(
            path,
            format!("holds {} bytes of state, header says {len}", payload.len()),
        ));
    }
    if crc32fast::hash(&payload) != crc {
        return Err(corrupt(path, "state fails its checksum".into()));
    }
    Ok(Some((index, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use colony_store::{Command, KvSetMode};

    fn put(key: &str) -> Vec<u8> {
        put_sized(key, 100)
    }

    /// A write of `key` with a value of `value_bytes`.
    fn put_sized(key: &str, value_bytes: usize) -> Vec<u8> {
        Entry {
            time_ms: 1,
            command: Command::KvSet {
                key: key.into(),
                value: vec![b'v'; value_bytes],
                flags: 0,
                mode: KvSetMode::Set,
            },
        }
        .encode()
    }

    /// An entry over a kilobyte, so that its record crosses sector boundaries.
    fn big_put(key: &str) -> Vec<u8> {
        put_sized(key, 1200)
    }

    fn open_small(dir: &Path) -> Result<(LogStore, Recovered), OpenError> {
        LogStore::open_with_segment_bytes(dir, 8192)
    }

    #[test]
    fn log_store_reopen_replays_every_appended_entry_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut store, recovered) = open_small(dir.path()).expect("open");
            assert_eq!(recovered.state.applied_index(), 0);
            for i in 0..200 {
                store.append(&[put(&format!("k{i}"))]).expect("append");
            }
            assert!(store.sealed.len() > 2, "small segments roll over");
        }
        let (store, recovered) = open_small(dir.path()).expect("reopen");
        assert_eq!(store.last_index(), 200);
        assert_eq!(recovered.replayed_count, 200);
        assert!(recovered.state.kv_get("k199").is_some());
    }

    #[test]
    fn log_store_snapshot_deletes_covered_segments_and_restores_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut store, mut recovered) = open_small(dir.path()).expect("open");
            for i in 0..150u64 {
                let bytes = put(&format!("k{i}"));
                store.append(std::slice::from_ref(&bytes)).expect("append");
                recovered
                    .state
                    .apply(i + 1, &Entry::decode(&bytes).expect("decode"));
            }
            let segments_before = store.sealed.len();
            store
                .write_snapshot(&recovered.state.to_snapshot(), 150)
                .expect("snapshot");
            assert!(
                store.sealed.len() < segments_before,
                "covered segments deleted"
            );
            store.append(&[put("after")]).expect("append");
        }
        let (store, recovered) = open_small(dir.path()).expect("reopen");
        assert_eq!(store.snapshot_index(), 150);
        assert_eq!(recovered.state.applied_index(), 151);
        assert!(recovered.state.kv_get("k0").is_some());
        assert!(recovered.state.kv_get("after").is_some());
    }

    /// A record that crosses a sector boundary, of which the crash kept the second sector
    /// from the disk (it reads as zeros): a torn write, discarded.
    #[test]
    fn log_store_torn_tail_in_last_segment_is_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment;
        let second_start =
            SEGMENT_HEADER_BYTES as usize + RECORD_HEADER_BYTES as usize + put("a").len();
        {
            let (mut store, _) = open_small(dir.path()).expect("open");
            store.append(&[put("a"), big_put("b")]).expect("append");
            segment = store.active.path.clone();
        }
        let second_end = second_start + RECORD_HEADER_BYTES as usize + big_put("b").len();
        assert!(second_start < SECTOR_BYTES && second_end > 2 * SECTOR_BYTES);
        let file = OpenOptions::new().write(true).open(&segment).expect("open");
        file.write_all_at(&[0; SECTOR_BYTES], SECTOR_BYTES as u64)
            .expect("tear");
        let (mut store, recovered) = open_small(dir.path()).expect("a torn tail is repaired");
        assert_eq!(recovered.state.applied_index(), 1);
        store.append(&[put("c")]).expect("append after repair");
        drop(store);
        let (_, recovered) = open_small(dir.path()).expect("reopen");
        assert!(recovered.state.kv_get("c").is_some());
        assert!(recovered.state.kv_get("b").is_none());
    }

    /// A byte flipped in a record of the last segment, records after it intact: not a torn
    /// write (no sector of it reads as zeros), so the log refuses to open, naming the file
    /// and offset, instead of dropping that record and every later one.
    #[test]
    fn log_store_damage_in_the_last_segment_is_an_error_not_a_truncation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment;
        {
            let (mut store, _) = open_small(dir.path()).expect("open");
            store.append(&[put("a"), put("b")]).expect("append");
            store.append(&[put("c")]).expect("append");
            segment = store.active.path.clone();
        }
        let file = OpenOptions::new().write(true).open(&segment).expect("open");
        let second_payload =
            SEGMENT_HEADER_BYTES as usize + RECORD_HEADER_BYTES as usize * 2 + put("a").len() + 3;
        file.write_all_at(&[0xFF], second_payload as u64)
            .expect("damage");
        let error = open_small(dir.path()).err().expect("damage is refused");
        let message = error.to_string();
        assert!(message.contains(&segment_name(1)), "{message}");
        assert!(message.contains("fails its checksum"), "{message}");
        assert!(message.contains("not torn"), "{message}");
        // Nothing was zeroed: the records after the damaged one are still on disk.
        let bytes = std::fs::read(&segment).expect("read");
        let third = second_payload - 3 + put("b").len();
        assert!(bytes[third..third + 8].iter().any(|b| *b != 0));
    }

    #[test]
    fn log_store_zero_sector_parts_mark_torn_writes() {
        let mut data = vec![7u8; 2048];
        assert!(!has_zero_sector_part(&data, 100, 1500));
        data[512..600].fill(0);
        assert!(
            !has_zero_sector_part(&data, 100, 1500),
            "a zero run inside a sector part"
        );
        data[1024..1100].fill(0);
        assert!(
            has_zero_sector_part(&data, 100, 1100),
            "the last part is all zeros"
        );
        assert!(!has_zero_sector_part(&data, 100, 1200));
        data[0..512].fill(0);
        assert!(
            has_zero_sector_part(&data, 300, 700),
            "the first part is all zeros"
        );
        assert!(
            !has_zero_sector_part(&data, 5, 5),
            "an empty range has no parts"
        );
    }

    #[test]
    fn log_store_damage_in_a_sealed_segment_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first;
        {
            let (mut store, _) = open_small(dir.path()).expect("open");
            for i in 0..100 {
                store.append(&[put(&format!("k{i}"))]).expect("append");
            }
            first = store.sealed[0].1.clone();
        }
        let file = OpenOptions::new().write(true).open(&first).expect("open");
        file.write_all_at(&[0xFF], SEGMENT_HEADER_BYTES + 40)
            .expect("damage");
        let error = open_small(dir.path()).err().expect("damaged");
        assert!(error.to_string().contains(&segment_name(1)), "{error}");
    }

    #[test]
    fn log_store_truncated_segment_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let segment;
        {
            let (mut store, _) = open_small(dir.path()).expect("open");
            store.append(&[put("a")]).expect("append");
            segment = store.active.path.clone();
        }
        OpenOptions::new()
            .write(true)
            .open(&segment)
            .expect("open")
            .set_len(5000)
            .expect("cut");
        let error = open_small(dir.path()).err().expect("truncated");
        assert!(error.to_string().contains("truncated"), "{error}");
    }

    #[test]
    fn log_store_second_open_of_same_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = open_small(dir.path()).expect("open");
        let error = open_small(dir.path()).err().expect("locked");
        assert!(matches!(error, OpenError::Locked { .. }));
        assert!(error.to_string().contains(LOCK_FILE_NAME));
    }

    #[test]
    fn log_store_garbage_snapshot_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(SNAPSHOT_FILE_NAME), vec![0x5a; 1024]).expect("write");
        let error = open_small(dir.path()).err().expect("corrupt");
        assert!(error.to_string().contains(SNAPSHOT_FILE_NAME), "{error}");
    }

    fn raw(n: u8) -> Vec<u8> {
        vec![n; 700]
    }

    fn raw_indexes(dir: &Path) -> Vec<(u64, u8)> {
        let (_, recovered) = LogStore::open_raw(dir, 8192).expect("open");
        recovered
            .records
            .iter()
            .map(|(index, payload)| (*index, payload[0]))
            .collect()
    }

    #[test]
    fn log_store_truncate_from_drops_the_suffix_across_segments_durably() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut store, recovered) = LogStore::open_raw(dir.path(), 8192).expect("open");
            assert!(recovered.snapshot.is_none() && recovered.records.is_empty());
            for n in 1..=30u8 {
                store.append(&[raw(n)]).expect("append");
            }
            assert!(
                !store.sealed.is_empty(),
                "30 records of 700 bytes span segments"
            );
            store.truncate_from(12).expect("truncate");
            assert_eq!(store.last_index(), 11);
            store
                .append(&[raw(112), raw(113)])
                .expect("append after truncate");
        }
        let records = raw_indexes(dir.path());
        let expected: Vec<(u64, u8)> = (1..=11u64)
            .map(|i| (i, i as u8))
            .chain([(12, 112), (13, 113)])
            .collect();
        assert_eq!(records, expected);
    }

    #[test]
    fn log_store_truncate_at_a_segment_start_keeps_the_earlier_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = LogStore::open_raw(dir.path(), 8192).expect("open");
        for n in 1..=30u8 {
            store.append(&[raw(n)]).expect("append");
        }
        let boundary = store.active.first_index;
        store.truncate_from(boundary).expect("truncate");
        assert_eq!(store.last_index(), boundary - 1);
        drop(store);
        let records = raw_indexes(dir.path());
        assert_eq!(records.len() as u64, boundary - 1);
    }

    #[test]
    fn log_store_streamed_snapshot_spanning_several_slices_reads_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 3.5 slices, written in odd-sized pieces that straddle the slice boundaries.
        let payload: Vec<u8> = (0..SNAPSHOT_SYNC_BYTES * 7 / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        {
            let (store, _) = LogStore::open_raw(dir.path(), 8192).expect("open");
            store
                .snapshot_file()
                .write_with(0, |out| {
                    for piece in payload.chunks(100_003) {
                        out.write_all(piece)?;
                    }
                    Ok(())
                })
                .expect("snapshot");
        }
        let (_, recovered) = LogStore::open_raw(dir.path(), 8192).expect("open");
        assert_eq!(recovered.snapshot, Some((0, payload)));
    }

    #[test]
    fn log_store_failed_streamed_snapshot_keeps_the_previous_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = LogStore::open_raw(dir.path(), 8192).expect("open");
        let file = store.snapshot_file();
        file.write(b"the good one", 0).expect("snapshot");
        let error = file
            .write_with(0, |out| {
                out.write_all(&[1; SNAPSHOT_SYNC_BYTES + 10])?;
                Err(std::io::Error::from_raw_os_error(28))
            })
            .expect_err("the encoder failed");
        assert!(matches!(error, AppendError::DiskFull { .. }), "{error}");
        assert!(
            !dir.path()
                .join(format!("{SNAPSHOT_FILE_NAME}.tmp"))
                .exists()
        );
        drop(store);
        let (_, recovered) = LogStore::open_raw(dir.path(), 8192).expect("open");
        assert_eq!(recovered.snapshot, Some((0, b"the good one".to_vec())));
    }

    #[test]
    fn log_store_reset_after_a_snapshot_starts_an_empty_log_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut store, _) = LogStore::open_raw(dir.path(), 8192).expect("open");
            for n in 1..=20u8 {
                store.append(&[raw(n)]).expect("append");
            }
            store
                .snapshot_file()
                .write(b"image at 50", 50)
                .expect("snapshot");
            store.reset(50).expect("reset");
            store.append(&[raw(51)]).expect("append after reset");
        }
        let (store, recovered) = LogStore::open_raw(dir.path(), 8192).expect("open");
        assert_eq!(recovered.snapshot, Some((50, b"image at 50".to_vec())));
        assert_eq!(recovered.records.len(), 1);
        assert_eq!(recovered.records[0].0, 51);
        assert_eq!(store.last_index(), 51);
    }
}
