//! The work a call does, below the API: [`Progress`] reports, the [`Work`]
//! tracker a call uses to wait until its blocking work has stopped and
//! cleaned up, and [`blocking`], which runs one piece of that work with a
//! [`Stop`] flag. A leaf: `call`, `layer`, `maintenance` and `cache` use it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// How far one layer has got. Reported from the threads doing the work, in
/// order for each layer; several layers may report at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The layer's index in the image, bottom first.
    pub layer: usize,
    /// The digest of the layer's compressed blob.
    pub digest: Digest,
    /// Compressed bytes received so far (from the registry or the store);
    /// for a blob downloaded in ranges, the contiguous bytes from its start
    /// (those the single pass has read), never bytes still out of order.
    pub downloaded: u64,
    /// The compressed blob's size, from its descriptor.
    pub download_total: Option<u64>,
    /// Uncompressed bytes written so far.
    pub written: u64,
    /// The uncompressed size: known only once the layer is complete.
    pub written_total: Option<u64>,
}

/// Receives [`Progress`] reports.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

tokio::task_local! {
    static WORK: Work;
}

/// The blocking work one call has started (layer extractions), so that a
/// call ending early (a deadline, a cancel) can wait until that work has
/// noticed, stopped and cleaned up, instead of returning while temp files
/// still exist.
#[derive(Clone, Default)]
pub(crate) struct Work(Arc<WorkState>);

#[derive(Default)]
struct WorkState {
    running: Mutex<usize>,
    idle: tokio::sync::Notify,
}

impl Work {
    /// The calling task's tracker (a new one outside any call), and
    /// `future` running with it in scope.
    pub(crate) fn scope<F: Future>(future: F) -> (Work, impl Future<Output = F::Output>) {
        let work = WORK.try_with(Work::clone).unwrap_or_default();
        (work.clone(), WORK.scope(work, future))
    }

    /// Registers one piece of blocking work of the current call, if it is
    /// tracked; the work holds the guard until it has finished.
    pub(crate) fn enter() -> Option<WorkGuard> {
        let work = WORK.try_with(Work::clone).ok()?;
        *work.0.running.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Some(WorkGuard(work))
    }

    /// Completes once no registered work is running.
    pub(crate) async fn stopped(&self) {
        loop {
            let idle = self.0.idle.notified();
            if *self.0.running.lock().unwrap_or_else(|p| p.into_inner()) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Held by running blocking work; see [`Work::enter`].
pub(crate) struct WorkGuard(Work);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        let state = &(self.0).0;
        let mut running = state.running.lock().unwrap_or_else(|p| p.into_inner());
        *running -= 1;
        if *running == 0 {
            state.idle.notify_waiters();
        }
    }
}

/// The stop flag of blocking work started by [`blocking`]: set once the
/// call that started it was dropped (a deadline, a cancel), so that the
/// work, which checks it between files, returns instead of running on.
#[derive(Clone, Default)]
pub(crate) struct Stop(Arc<AtomicBool>);

impl Stop {
    /// `Canceled`, naming `what`, once the call was dropped. Nobody sees
    /// that error (the call has ended): it only unwinds the work.
    pub(crate) fn check(&self, what: &str) -> Result<()> {
        if self.0.load(Ordering::Relaxed) {
            return Err(Error::canceled(format!("{what}: the call was dropped")));
        }
        Ok(())
    }
}

/// Sets the flag of a [`Stop`] when dropped.
struct StopOnDrop(Stop);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        (self.0).0.store(true, Ordering::Relaxed);
    }
}

/// Runs `work` on a blocking thread, off the runtime's workers, as part of
/// the current call: dropping the returned future sets the work's stop
/// flag, and the call (see [`Work`]) waits until the work has returned.
/// A panic in the work goes on in the caller.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce(&Stop) -> Result<T> + Send + 'static,
) -> Result<T> {
    let stop = Stop::default();
    let _stop_on_drop = StopOnDrop(stop.clone());
    let running = Work::enter();
    let outcome = tokio::task::spawn_blocking(move || {
        let _running = running;
        work(&stop)
    })
    .await;
    match outcome {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(Error::canceled("the runtime shut down")),
    }
}
