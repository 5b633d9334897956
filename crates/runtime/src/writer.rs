//! The log writer: one thread that batches proposals, makes each batch durable with a single
//! fsync (group commit), applies it to the state machine, answers the proposers and wakes
//! watchers. It also runs the storage mode machine: a full disk sends storage to Floor (writes
//! refused, reads served) and probes bring it back through Recovery.

use crate::background::BackgroundJob;
use crate::log_store::{AppendError, LogStore};
use crate::metrics::Metrics;
use crate::snapshot_schedule::SnapshotSchedule;
use crate::watch_hub::WatchHub;
use colony_modes::{Hysteresis, Mode, ModeMachine, Signal};
use colony_store::{Command, Entry, Outcome, StateMachine};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// The most proposals made durable by one fsync.
pub const BATCH_ENTRIES_MAX: usize = 1024;
/// How many proposals may wait for the writer before proposers wait to enqueue.
pub const QUEUE_PROPOSALS_MAX: usize = 16 * 1024;
/// How often a Floor-mode store probes whether writes work again.
const FLOOR_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// A committed and applied command.
#[derive(Debug)]
pub struct Applied {
    /// The log index it was applied at.
    pub index: u64,
    /// What the state machine answered.
    pub outcome: Outcome,
}

/// Why a write was not made. A refused write changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Storage is in Floor mode (the disk is full): writes are refused until it recovers.
    #[error("storage is in floor mode, writes are refused: {reason}")]
    Refused {
        /// What put storage in Floor mode.
        reason: String,
    },
    /// The replicated cluster could not take the write (no leader, leadership lost).
    #[error(transparent)]
    Cluster(#[from] crate::raft_node::ClusterError),
    /// The agent is stopping.
    #[error("agent is shutting down")]
    ShuttingDown,
    /// The write failed in a way that leaves the disk's state unknown; the agent is stopping.
    #[error("write failed, agent stopping: {0}")]
    Fatal(String),
}

pub(crate) struct Proposal {
    pub(crate) command: Command,
    pub(crate) reply: oneshot::Sender<Result<Applied, WriteError>>,
}

/// The storage subsystem's mode, shared with the API for reporting.
pub struct StorageMode {
    machine: Mutex<ModeMachine>,
    reason: Mutex<String>,
    /// Set while a replicated server's disk is known full: every signal counts as Failed,
    /// so no other evidence (fsync latency rounds) lifts storage out of Floor meanwhile.
    disk_full: std::sync::atomic::AtomicBool,
}

impl StorageMode {
    pub(crate) fn new(now_ms: u64) -> Self {
        StorageMode {
            machine: Mutex::new(ModeMachine::new(Hysteresis::default(), now_ms)),
            reason: Mutex::new(String::new()),
            disk_full: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.machine.lock().expect("mode lock poisoned").mode()
    }

    /// Why the mode was last changed.
    pub fn reason(&self) -> String {
        self.reason.lock().expect("mode lock poisoned").clone()
    }

    /// Whether a replicated server's disk is known full (its raft thread cannot persist, so
    /// it applies nothing new).
    pub fn is_disk_full(&self) -> bool {
        self.disk_full.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records whether the disk is full (a replicated server's raft thread knows).
    pub(crate) fn set_disk_full(&self, full: bool) {
        self.disk_full
            .store(full, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn signal(&self, metrics: &Metrics, now_ms: u64, signal: Signal, reason: &str) {
        let signal = if self.disk_full.load(std::sync::atomic::Ordering::SeqCst) {
            Signal::Failed
        } else {
            signal
        };
        let transition = self
            .machine
            .lock()
            .expect("mode lock poisoned")
            .handle_signal(now_ms, signal);
        if let Some(t) = transition {
            *self.reason.lock().expect("mode lock poisoned") = reason.to_string();
            metrics.set_mode("storage", t.to);
            tracing::warn!(
                subsystem = "storage",
                from = t.from.as_str(),
                to = t.to.as_str(),
                reason,
                "mode change"
            );
        }
    }
}

/// A snapshot being encoded and written by a background thread.
pub(crate) struct SnapshotInFlight {
    /// The schedule's mark at the capture.
    mark: u64,
    /// Answers the snapshot's index and encoded size.
    job: BackgroundJob<Result<(u64, u64), AppendError>>,
}

pub(crate) struct Writer {
    pub(crate) store: LogStore,
    pub(crate) state: Arc<RwLock<StateMachine>>,
    pub(crate) hub: Arc<WatchHub>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) mode: Arc<StorageMode>,
    pub(crate) fatal: watch::Sender<Option<String>>,
    /// When the next snapshot is due.
    pub(crate) schedule: SnapshotSchedule,
    pub(crate) wall_ms: fn() -> u64,
    /// The snapshot being written by a background thread, if any.
    pub(crate) snapshot_in_flight: Option<SnapshotInFlight>,
}

impl Writer {
    /// Runs until every proposer is gone or a fatal error stops the agent.
    pub(crate) fn run(mut self, runtime: tokio::runtime::Handle, mut rx: mpsc::Receiver<Proposal>) {
        let _context = runtime.enter();
        let waiting = crate::background::wait_runtime();
        let mut last_probe = Instant::now();
        loop {
            let floor = self.mode.mode() == Mode::Floor;
            let wait = if floor {
                FLOOR_PROBE_INTERVAL
            } else {
                Duration::from_secs(3600)
            };
            // The timeout is made inside `block_on`, so that its timer is the waiting
            // runtime's: one made out here would take the agent's runtime from the entered
            // context, and panic when that runtime shuts down under it.
            let first =
                match waiting.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                    Ok(Some(proposal)) => Some(proposal),
                    Ok(None) => return,
                    Err(_) => None,
                };
            if floor && last_probe.elapsed() >= FLOOR_PROBE_INTERVAL {
                last_probe = Instant::now();
                if self.probe().is_err() {
                    return;
                }
            }
            let Some(first) = first else { continue };
            let mut batch = vec![first];
            while batch.len() < BATCH_ENTRIES_MAX {
                match rx.try_recv() {
                    Ok(proposal) => batch.push(proposal),
                    Err(_) => break,
                }
            }
            if self.mode.mode() == Mode::Floor {
                let reason = self.mode.reason();
                for proposal in batch {
                    let _ = proposal.reply.send(Err(WriteError::Refused {
                        reason: reason.clone(),
                    }));
                }
                continue;
            }
            if self.commit(batch).is_err() {
                return;
            }
        }
    }

    /// Tries one Noop write while in Floor mode; success is evidence that writes work again.
    /// A failed append leaves the log unchanged, so the probe simply tries again.
    fn probe(&mut self) -> Result<(), ()> {
        let (reply, _) = oneshot::channel();
        self.commit(vec![Proposal {
            command: Command::Noop,
            reply,
        }])
    }

    /// Makes `batch` durable, applies it, answers. `Err` means the writer must stop.
    fn commit(&mut self, batch: Vec<Proposal>) -> Result<(), ()> {
        assert!(!batch.is_empty() && batch.len() <= BATCH_ENTRIES_MAX);
        let time_ms = (self.wall_ms)();
        let (entries, replies): (Vec<Entry>, Vec<_>) = batch
            .into_iter()
            .map(|p| {
                (
                    Entry {
                        time_ms,
                        command: p.command,
                    },
                    p.reply,
                )
            })
            .unzip();
        let encoded: Vec<Vec<u8>> = entries.iter().map(Entry::encode).collect();
        let bytes: usize = encoded.iter().map(Vec::len).sum();
        let started = Instant::now();
        if let Err(error) = self.store.append(&encoded) {
            return self.handle_append_error(error, replies);
        }
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .commit_batch_entries
            .observe(entries.len() as f64);
        self.mode.signal(
            &self.metrics,
            crate::agent::mono_ms(),
            Signal::Healthy,
            "writes are durable again",
        );

        let last_index = self.store.last_index();
        let first_index = last_index + 1 - entries.len() as u64;
        let mut applied = Vec::with_capacity(entries.len());
        {
            let mut state = self.state.write().expect("state lock poisoned");
            for (offset, entry) in entries.iter().enumerate() {
                let index = first_index + offset as u64;
                applied.push((index, state.apply(index, entry)));
            }
            assert_eq!(state.applied_index(), last_index);
        }
        self.metrics.applied_entries.inc_by(applied.len() as u64);
        for ((index, (outcome, changes)), reply) in applied.into_iter().zip(replies) {
            let _ = reply.send(Ok(Applied { index, outcome }));
            self.hub.notify(&changes, index);
        }
        self.schedule.applied(bytes as u64);
        self.collect_snapshot()?;
        let due = self.schedule.due(last_index - self.store.snapshot_index());
        if due && self.snapshot_in_flight.is_none() {
            self.start_snapshot(last_index);
        }
        Ok(())
    }

    /// Copies the state at `index` and writes it as a snapshot on a background thread, so that
    /// commits do not wait for a whole-state encoding and a large file write.
    fn start_snapshot(&mut self, index: u64) {
        let state = self.state.read().expect("state lock poisoned").clone();
        assert_eq!(state.applied_index(), index);
        let file = self.store.snapshot_file();
        let mark = self.schedule.mark();
        match BackgroundJob::spawn("colony-snapshot", move || {
            // Streamed to the file as it is encoded: no second copy of the state in memory.
            file.write_with(index, |out| state.write_snapshot(out))
                .map(|bytes| (index, bytes))
        }) {
            Ok(job) => self.snapshot_in_flight = Some(SnapshotInFlight { mark, job }),
            // Tried again after the next commit; the log keeps growing meanwhile.
            Err(error) => tracing::warn!(%error, "could not start the snapshot writer thread"),
        }
    }

    /// Takes the result of a finished background snapshot: deletes the segments it covers, or
    /// handles its failure like a failed append. `Err` means the writer must stop.
    fn collect_snapshot(&mut self) -> Result<(), ()> {
        if !self
            .snapshot_in_flight
            .as_ref()
            .is_some_and(|in_flight| in_flight.job.is_finished())
        {
            return Ok(());
        }
        let Some(SnapshotInFlight { mark, job }) = self.snapshot_in_flight.take() else {
            return Ok(());
        };
        match job.join() {
            Err(_) => {
                tracing::error!("the snapshot thread stopped without an answer; retrying later");
                Ok(())
            }
            Ok(Ok((index, bytes))) => {
                self.schedule.written(mark, bytes);
                self.store.handle_snapshot_written(index);
                self.metrics.snapshots.inc();
                tracing::debug!(index, "snapshot written");
                Ok(())
            }
            Ok(Err(error)) => self.handle_append_error(error, Vec::new()),
        }
    }

    fn handle_append_error(
        &mut self,
        error: AppendError,
        replies: Vec<oneshot::Sender<Result<Applied, WriteError>>>,
    ) -> Result<(), ()> {
        match error {
            AppendError::DiskFull { .. } => {
                let reason = error.to_string();
                tracing::error!(%reason, "disk full: storage enters floor mode, writes refused");
                self.mode.signal(
                    &self.metrics,
                    crate::agent::mono_ms(),
                    Signal::Failed,
                    &reason,
                );
                for reply in replies {
                    let _ = reply.send(Err(WriteError::Refused {
                        reason: reason.clone(),
                    }));
                }
                Ok(())
            }
            AppendError::Fatal { .. } => {
                let message = error.to_string();
                tracing::error!(%message, "unrecoverable storage error: stopping the agent");
                for reply in replies {
                    let _ = reply.send(Err(WriteError::Fatal(message.clone())));
                }
                let _ = self.fatal.send(Some(message));
                Err(())
            }
        }
    }
}
