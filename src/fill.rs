//! The meeting point of a ranged download and the single pass that reads
//! it: ranges land at their offsets in a file in any order, and the reader
//! waits for the contiguous prefix (the watermark) to grow past what it has
//! read. The file, not memory, holds what arrived out of order; the download
//! side starts no range further than a lead ahead of the reader, so a slow
//! reader (a busy CPU, a caller reading a stream slowly) paces the download
//! as a single stream's backpressure would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{Error, Result};

/// How often a waiting reader looks at its own stop flag: the download side
/// wakes it at once for everything else.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Which bytes of a `size`-byte file are written, and whether the download
/// failed.
pub(crate) struct Fill {
    size: u64,
    state: Mutex<State>,
    grown: Condvar,
    /// Where the reader has read up to, and the wake-up of range tasks
    /// waiting for it to move on.
    read: AtomicU64,
    reader_moved: Notify,
}

#[derive(Default)]
struct State {
    /// Every byte before this is written.
    contiguous: u64,
    /// Written ranges past the watermark: start to end (exclusive).
    ahead: BTreeMap<u64, u64>,
    failed: Option<Error>,
}

impl Fill {
    pub(crate) fn new(size: u64) -> Fill {
        Fill {
            size,
            state: Mutex::default(),
            grown: Condvar::new(),
            read: AtomicU64::new(0),
            reader_moved: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that bytes `start..end` are in the file.
    pub(crate) fn written(&self, start: u64, end: u64) {
        let mut state = self.state();
        if start > state.contiguous {
            // A range's writes extend its one entry: the map holds one
            // entry per range ahead, however many writes it took.
            match state.ahead.range_mut(..=start).next_back() {
                Some((_, before)) if *before >= start => *before = (*before).max(end),
                _ => {
                    state.ahead.insert(start, end);
                }
            }
            return;
        }
        state.contiguous = state.contiguous.max(end);
        while let Some((&next, &next_end)) = state.ahead.first_key_value() {
            if next > state.contiguous {
                break;
            }
            state.ahead.remove(&next);
            state.contiguous = state.contiguous.max(next_end);
        }
        drop(state);
        self.grown.notify_all();
    }

    /// Ends the wait of the reader with `error` (the first one recorded
    /// wins; a finished file ignores it).
    pub(crate) fn fail(&self, error: Error) {
        let mut state = self.state();
        if state.failed.is_none() && state.contiguous < self.size {
            state.failed = Some(error);
        }
        drop(state);
        self.grown.notify_all();
    }

    /// Waits until bytes past `read` are in the file and returns the
    /// watermark; `read` at the end returns at once. `stop` says the
    /// reader's call was dropped, and gives the error to return then.
    pub(crate) fn wait_past(&self, read: u64, stop: impl Fn() -> Option<Error>) -> Result<u64> {
        if self.read.swap(read, Ordering::Relaxed) != read {
            self.reader_moved.notify_waiters();
        }
        let mut state = self.state();
        loop {
            if state.contiguous > read || read >= self.size {
                return Ok(state.contiguous);
            }
            if let Some(err) = &state.failed {
                return Err(err.clone());
            }
            if let Some(err) = stop() {
                return Err(err);
            }
            state = self
                .grown
                .wait_timeout(state, STOP_CHECK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until the reader is less than `lead` bytes before `start`, the
    /// first byte of a range about to be asked for.
    pub(crate) async fn wait_for_reader(&self, start: u64, lead: u64) {
        loop {
            // Registered before the check, so a move in between still wakes us.
            let moved = self.reader_moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if self.read.load(Ordering::Relaxed).saturating_add(lead) > start {
                return;
            }
            moved.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_follows_the_contiguous_prefix() {
        let fill = Fill::new(30);
        fill.written(10, 20);
        fill.written(20, 25);
        assert_eq!(fill.state().contiguous, 0);
        assert_eq!(
            fill.state().ahead.len(),
            1,
            "adjacent writes share an entry"
        );
        fill.written(0, 10);
        assert_eq!(fill.wait_past(0, || None).unwrap(), 25);
        fill.written(25, 30);
        assert_eq!(fill.wait_past(25, || None).unwrap(), 30);
        // A failure after the end changes nothing.
        fill.fail(Error::network("late"));
        assert_eq!(fill.wait_past(30, || None).unwrap(), 30);
    }

    #[test]
    fn a_range_starts_only_within_the_lead_of_the_reader() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let fill = Fill::new(100);
        let within = |start| {
            runtime.block_on(async {
                let wait = fill.wait_for_reader(start, 10);
                tokio::time::timeout(Duration::from_millis(50), wait).await
            })
        };
        assert!(within(9).is_ok(), "byte 9 is within 10 of a reader at 0");
        assert!(within(10).is_err(), "byte 10 is not");
        fill.written(0, 30);
        assert_eq!(fill.wait_past(5, || None).unwrap(), 30);
        assert!(within(14).is_ok(), "the reader at 5 lets byte 14 start");
        assert!(within(15).is_err());
        // A waiting range starts as soon as the reader moves.
        runtime.block_on(async {
            let waiting = fill.wait_for_reader(20, 10);
            tokio::pin!(waiting);
            assert!(futures_util::poll!(waiting.as_mut()).is_pending());
            assert_eq!(fill.wait_past(11, || None).unwrap(), 30);
            tokio::time::timeout(Duration::from_millis(50), waiting)
                .await
                .expect("woken by the reader's move");
        });
    }

    #[test]
    fn a_failure_or_a_stop_ends_the_wait() {
        let fill = Fill::new(10);
        fill.written(0, 4);
        let stopped = fill.wait_past(4, || Some(Error::canceled("stopped")));
        assert_eq!(stopped.unwrap_err().message(), "stopped");
        fill.fail(Error::network("cut"));
        assert_eq!(fill.wait_past(0, || None).unwrap(), 4);
        assert_eq!(fill.wait_past(4, || None).unwrap_err().message(), "cut");
    }
}
