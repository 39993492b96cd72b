//! Per-call settings: a deadline for the whole call, a stall timeout for
//! each network wait, and a progress callback, carried by an
//! [`ImageCache`](crate::ImageCache) made with
//! [`with_call_options`](crate::ImageCache::with_call_options).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
    /// Compressed bytes received so far (from the registry or the store).
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

/// Settings for the calls made through one [`ImageCache`](crate::ImageCache)
/// view. Dropping a call's future cancels it; these add time limits and
/// progress reports.
#[derive(Clone, Default)]
pub struct CallOptions {
    deadline: Option<Duration>,
    stall_timeout: Option<Duration>,
    progress: Option<ProgressFn>,
}

impl CallOptions {
    /// No deadline, no stall timeout, no progress reports.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// Fails each call with [`Error::Timeout`] once it has run this long
    /// (`None`: no deadline, the default).
    pub fn deadline(mut self, limit: impl Into<Option<Duration>>) -> CallOptions {
        self.deadline = limit.into();
        self
    }

    /// Fails a call with [`Error::Timeout`] when a registry sends nothing
    /// (no response, or no next bytes of one) for this long (`None`: no
    /// limit, the default).
    pub fn stall_timeout(mut self, limit: impl Into<Option<Duration>>) -> CallOptions {
        self.stall_timeout = limit.into();
        self
    }

    /// Calls `report` as layers are downloaded and written.
    pub fn progress(mut self, report: impl Fn(&Progress) + Send + Sync + 'static) -> CallOptions {
        self.progress = Some(Arc::new(report));
        self
    }

    pub(crate) fn stall_limit(&self) -> Option<Duration> {
        self.stall_timeout
    }

    pub(crate) fn progress_fn(&self) -> Option<ProgressFn> {
        self.progress.clone()
    }

    /// Runs `call` within the deadline, if there is one.
    pub(crate) async fn bounded<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        let Some(limit) = self.deadline else {
            return call.await;
        };
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(Error::Timeout(format!(
                "the call did not finish within its {limit:?} deadline"
            )))
        })
    }
}

impl fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallOptions")
            .field("deadline", &self.deadline)
            .field("stall_timeout", &self.stall_timeout)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}
