//! The meeting point of a ranged download and the single pass that reads
//! it: ranges land at their offsets in a file in any order, and the reader
//! waits for the contiguous prefix (the watermark) to grow past what it has
//! read. The file, not memory, holds what arrived out of order.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

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
