//! Per-call settings and the one place a call ends early: a deadline for
//! the whole call, a stall timeout for each network wait that overrides the
//! cache's, cancel tokens, and a progress callback, carried by an
//! [`ImageCache`](crate::ImageCache) made with
//! [`with_call_options`](crate::ImageCache::with_call_options). However a
//! call ends early (deadline, cancel, drop), it returns only after the
//! blocking work it started has stopped and removed its temp files.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::work::{Progress, ProgressFn, Work};

/// Cancels the calls it was given to (see [`CallOptions::cancel`]): once
/// [`cancel`](Self::cancel)ed, from any thread, every call using it ends
/// with [`ErrorKind::Canceled`](crate::ErrorKind::Canceled), now and later. Clones share one state.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<CancelState>);

#[derive(Default)]
struct CancelState {
    // Set once: the first reason given is the one calls report.
    reason: OnceLock<String>,
    wake: Notify,
}

impl CancelToken {
    /// A token not canceled yet.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Ends every call using this token. Canceling again does nothing.
    pub fn cancel(&self) {
        self.cancel_because("its cancel token was triggered");
    }

    /// Cancels with `reason`, which the calls' errors give after naming the
    /// call; the first reason wins.
    pub(crate) fn cancel_because(&self, reason: impl Into<String>) {
        let _ = self.0.reason.set(reason.into());
        self.0.wake.notify_waiters();
    }

    /// Whether the token was canceled.
    pub fn is_canceled(&self) -> bool {
        self.reason().is_some()
    }

    fn reason(&self) -> Option<&str> {
        self.0.reason.get().map(String::as_str)
    }

    /// Completes with the reason once the token is canceled.
    async fn canceled(&self) -> &str {
        loop {
            // Made before the check, so a cancel in between still wakes us.
            let woken = self.0.wake.notified();
            if let Some(reason) = self.reason() {
                return reason;
            }
            woken.await;
        }
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("canceled", &self.is_canceled())
            .finish()
    }
}

/// Settings for the calls made through one [`ImageCache`](crate::ImageCache)
/// view. Dropping a call's future cancels it; these add time limits, cancel
/// tokens and progress reports.
#[derive(Clone, Default)]
pub struct CallOptions {
    deadline: Option<Duration>,
    // None: the cache's stall timeout; Some(None): none for these calls.
    stall_timeout: Option<Option<Duration>>,
    cancel: Vec<CancelToken>,
    progress: Option<ProgressFn>,
}

impl CallOptions {
    /// No deadline, the cache's stall timeout, no cancel token, no progress
    /// reports.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// Fails each call with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) once it has run this long
    /// (`None`: no deadline, the default).
    pub fn deadline(mut self, limit: impl Into<Option<Duration>>) -> CallOptions {
        self.deadline = limit.into();
        self
    }

    /// Fails a call with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) when a registry sends nothing
    /// (no response, or no next bytes of one) for this long, instead of the
    /// cache's [`CacheOptions::stall_timeout`](crate::CacheOptions::stall_timeout)
    /// (60 s unless changed there). `None` turns the stall timeout off for
    /// these calls; not calling this keeps the cache's.
    pub fn stall_timeout(mut self, limit: impl Into<Option<Duration>>) -> CallOptions {
        self.stall_timeout = Some(limit.into());
        self
    }

    /// Ends each call with [`ErrorKind::Canceled`](crate::ErrorKind::Canceled) once `token` is canceled, or
    /// at its start if it already is, after the call's blocking work has
    /// stopped and removed its temp files. Each token given this way ends
    /// the calls (none by default); a call that already returned is not
    /// affected.
    pub fn cancel(mut self, token: CancelToken) -> CallOptions {
        self.cancel.push(token);
        self
    }

    /// Calls `report` as layers are downloaded and written.
    pub fn progress(mut self, report: impl Fn(&Progress) + Send + Sync + 'static) -> CallOptions {
        self.progress = Some(Arc::new(report));
        self
    }

    /// The stall timeout these calls set instead of the cache's, if any.
    pub(crate) fn stall_override(&self) -> Option<Option<Duration>> {
        self.stall_timeout
    }

    pub(crate) fn progress_fn(&self) -> Option<ProgressFn> {
        self.progress.clone()
    }

    /// Runs `call` until it completes, its deadline passes or a cancel
    /// token is canceled; `what` names the call in the error (made only
    /// then). A token canceled already ends the call before it starts. A
    /// call that fails or is cut short returns only once the blocking work
    /// it started has stopped and removed its temp files, so a caller never
    /// sees what a failed call half-wrote.
    pub(crate) async fn bounded<T>(
        &self,
        what: impl FnOnce() -> String,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        if let Some(reason) = self.cancel.iter().find_map(CancelToken::reason) {
            return Err(Error::canceled(format!("{}: {reason}", what())));
        }
        // On the heap: every public call passes through here, and the
        // layers around it (scope, timeout, select) would otherwise each
        // hold the whole call's state inline, making the caller's future
        // large enough to overflow a 2 MiB thread stack in debug builds.
        let (work, call) = Work::scope(Box::pin(call));
        let limited = async {
            match self.deadline {
                None => Ended::Done(call.await),
                Some(limit) => tokio::time::timeout(limit, call)
                    .await
                    .map_or(Ended::Deadline(limit), Ended::Done),
            }
        };
        let ended = tokio::select! {
            // A cancel seen with the result wins, as it would have a moment later.
            biased;
            reason = first_canceled(&self.cancel) => Ended::Canceled(reason.to_owned()),
            ended = limited => ended,
        };
        let outcome = match ended {
            Ended::Done(outcome) => outcome,
            Ended::Deadline(limit) => Err(Error::timeout(format!(
                "{}: not done within its {limit:?} deadline",
                what()
            ))),
            Ended::Canceled(reason) => Err(Error::canceled(format!("{}: {reason}", what()))),
        };
        if outcome.is_err() {
            work.stopped().await;
        }
        outcome
    }
}

/// How a bounded call ended.
enum Ended<T> {
    Done(Result<T>),
    Deadline(Duration),
    Canceled(String),
}

/// The reason of the first of `tokens` to be canceled; never, for none.
async fn first_canceled(tokens: &[CancelToken]) -> &str {
    if tokens.is_empty() {
        return std::future::pending().await;
    }
    let waits = tokens.iter().map(|token| Box::pin(token.canceled()));
    futures_util::future::select_all(waits).await.0
}

impl fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallOptions")
            .field("deadline", &self.deadline)
            .field("stall_timeout", &self.stall_timeout)
            .field("cancel", &self.cancel)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}
