//! One piece of work on a thread of its own (writing a snapshot), looked at without blocking
//! by the thread that started it, and waited for when it is dropped: a restart in the same
//! process never finds the work still running under it.

use std::thread::JoinHandle;

/// Work running on its own thread; its result is taken once it has finished.
pub(crate) struct BackgroundJob<T> {
    thread: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> BackgroundJob<T> {
    /// Starts `work` on a thread named `name`.
    ///
    /// # Errors
    /// The system would not start a thread.
    pub(crate) fn spawn(
        name: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<Self> {
        let thread = std::thread::Builder::new().name(name.into()).spawn(work)?;
        Ok(Self {
            thread: Some(thread),
        })
    }

    /// Whether the work has finished (its result is then ready for [`BackgroundJob::join`]).
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the work and returns its result (`Err` if it panicked).
    pub(crate) fn join(mut self) -> std::thread::Result<T> {
        match self.thread.take() {
            Some(thread) => thread.join(),
            None => unreachable!("a job's thread is taken only by join or drop"),
        }
    }
}

impl<T> Drop for BackgroundJob<T> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A runtime of its own for a dedicated thread (the writer, the raft thread) to wait on its
/// input channel with a timeout. Its timer belongs to the thread, not to the agent's runtime:
/// a timeout registered on the agent's runtime while that runtime shuts down (an agent that
/// fails to start) panics in tokio.
///
/// # Panics
/// If the OS refuses the runtime's resources (as `Runtime::new` would).
pub(crate) fn wait_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("building a thread's timer runtime")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    #[test]
    fn background_job_reports_its_result_and_is_waited_for_when_dropped() {
        let (go, wait) = mpsc::channel::<()>();
        let job = BackgroundJob::spawn("test-job", move || {
            wait.recv().expect("released");
            7
        })
        .expect("spawn");
        assert!(!job.is_finished(), "blocked until released");
        go.send(()).expect("send");
        assert_eq!(job.join().expect("no panic"), 7);

        let done = Arc::new(AtomicBool::new(false));
        let (go, wait) = mpsc::channel::<()>();
        let flag = done.clone();
        let job = BackgroundJob::spawn("test-job", move || {
            wait.recv().expect("released");
            flag.store(true, Ordering::SeqCst);
        })
        .expect("spawn");
        go.send(()).expect("send");
        drop(job);
        assert!(done.load(Ordering::SeqCst), "drop waited for the work");

        let panicked = BackgroundJob::spawn("test-job", || -> u8 { panic!("boom") })
            .expect("spawn")
            .join();
        assert!(panicked.is_err());
    }
}
