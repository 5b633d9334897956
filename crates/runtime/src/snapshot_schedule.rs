//! When to snapshot the state machine and compact the log behind it.
//!
//! A snapshot costs in proportion to the whole state, a log entry in proportion to itself.
//! With only an entry count (etcd's `--snapshot-count`) a large state is encoded and written
//! again every few seconds under a steady write load: on a 3-server cluster taking 256-byte
//! puts from 64 clients, the snapshot thread used 16% of the servers' CPU. So a snapshot is
//! due when both hold:
//!
//! - at least `every_entries` entries were applied since the last snapshot (`--snapshot-every`),
//! - and the log has grown since by at least as many bytes as the last snapshot took.
//!
//! The second bound keeps the bytes written for snapshots no larger than the bytes written to
//! the log (the disk sees at most twice the log's bytes), and still bounds what a restart
//! replays: at most as many log bytes as the state itself, or `every_entries` entries.

/// Counts log bytes since the last snapshot and says when the next one is due.
#[derive(Debug)]
pub(crate) struct SnapshotSchedule {
    every_entries: u64,
    /// Payload bytes applied since the last snapshot (or since start).
    log_bytes: u64,
    /// The last snapshot's encoded size (0 before the first).
    snapshot_bytes: u64,
}

impl SnapshotSchedule {
    /// A schedule whose last snapshot (if any) took `snapshot_bytes`.
    pub(crate) fn new(every_entries: u64, snapshot_bytes: u64) -> Self {
        Self {
            every_entries: every_entries.max(1),
            log_bytes: 0,
            snapshot_bytes,
        }
    }

    /// Entries of `bytes` payload bytes in all were applied.
    pub(crate) fn applied(&mut self, bytes: u64) {
        self.log_bytes = self.log_bytes.saturating_add(bytes);
    }

    /// Whether to snapshot now, `entries` entries after the last snapshot.
    pub(crate) fn due(&self, entries: u64) -> bool {
        entries >= self.every_entries && self.log_bytes >= self.snapshot_bytes
    }

    /// What [`SnapshotSchedule::written`] needs to know about a snapshot captured now.
    pub(crate) fn mark(&self) -> u64 {
        self.log_bytes
    }

    /// The snapshot captured at `mark` is durable and took `snapshot_bytes`: what was applied
    /// after the capture counts towards the next one.
    pub(crate) fn written(&mut self, mark: u64, snapshot_bytes: u64) {
        self.log_bytes = self.log_bytes.saturating_sub(mark);
        self.snapshot_bytes = snapshot_bytes;
    }

    /// The last snapshot's encoded size, bytes (0 before the first).
    pub(crate) fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes
    }

    /// A snapshot of `snapshot_bytes` replaced the whole state (one sent by the leader).
    pub(crate) fn installed(&mut self, snapshot_bytes: u64) {
        self.log_bytes = 0;
        self.snapshot_bytes = snapshot_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotSchedule;

    #[test]
    fn the_first_snapshot_waits_only_for_the_entry_count() {
        let schedule = SnapshotSchedule::new(100, 0);
        assert!(!schedule.due(99));
        assert!(schedule.due(100));
    }

    #[test]
    fn a_large_state_waits_for_as_many_log_bytes_as_its_snapshot_took() {
        let mut schedule = SnapshotSchedule::new(100, 0);
        schedule.applied(1_000);
        let mark = schedule.mark();
        schedule.written(mark, 50_000);
        schedule.applied(49_999);
        assert!(
            !schedule.due(500),
            "49,999 log bytes after a 50,000-byte snapshot"
        );
        schedule.applied(1);
        assert!(schedule.due(500));
        assert!(!schedule.due(99), "the entry count still applies");
    }

    #[test]
    fn bytes_applied_while_a_snapshot_is_written_count_towards_the_next() {
        let mut schedule = SnapshotSchedule::new(1, 0);
        schedule.applied(700);
        let mark = schedule.mark();
        schedule.applied(300);
        schedule.written(mark, 200);
        assert!(schedule.due(1), "300 bytes since the capture, snapshot 200");
        schedule.written(schedule.mark(), 301);
        schedule.applied(300);
        assert!(!schedule.due(1));
    }

    #[test]
    fn an_installed_snapshot_restarts_the_count() {
        let mut schedule = SnapshotSchedule::new(1, 0);
        schedule.applied(5_000);
        schedule.installed(4_000);
        assert!(!schedule.due(10));
        schedule.applied(4_000);
        assert!(schedule.due(10));
    }
}
