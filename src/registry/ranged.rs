//! Parallel ranged download of one large blob: bounded ranges fetched over
//! several connections at once from the host that answered the first one,
//! each written at its offset into the caller's file (see `fill`), and a
//! range whose connection is cut asked again from where it stopped. Ranges
//! are started in order and at most a few per connection ahead of the
//! reader: where the reader (inflate, on the same CPUs) is the bound, as on
//! loopback, downloading far ahead would only take CPU from it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use reqwest::header::CONTENT_RANGE;
use reqwest::{Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};

use super::{backoff, content_length, served_range, BlobSource, RangeConfig};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::fill::Fill;
use crate::fs;
use crate::http::{error_chain, host_of, Limits};
use crate::work::{Work, WorkGuard};

/// The largest range asked for in one request.
const MAX_RANGE: u64 = 32 << 20;
/// The smallest, so that a small threshold does not make tiny requests.
const MIN_RANGE: u64 = 64 << 10;

/// How a blob is cut into ranges.
pub(super) struct Plan {
    size: u64,
    range: u64,
    connections: usize,
}

impl Plan {
    /// The ranges of a `size`-byte blob, or None when it is fetched as one
    /// stream: ranged download off (threshold 0, fewer than 2 connections),
    /// a blob below the threshold, or one that fits in a single range.
    pub(super) fn new(size: u64, config: RangeConfig) -> Option<Plan> {
        if config.threshold == 0 || size < config.threshold || config.connections < 2 {
            return None;
        }
        let range = size
            .div_ceil(config.connections as u64)
            .clamp(MIN_RANGE, MAX_RANGE);
        (size > range).then_some(Plan {
            size,
            range,
            connections: config.connections,
        })
    }

    fn count(&self) -> u64 {
        self.size.div_ceil(self.range)
    }

    /// How far ahead of the reader a range may start: two per connection,
    /// so that every connection has its next range while the reader waits
    /// on the oldest one.
    fn lead(&self) -> u64 {
        2 * self.connections as u64 * self.range
    }

    /// The first and last byte of range `index`.
    fn bounds(&self, index: u64) -> (u64, u64) {
        let first = index * self.range;
        (first, (first + self.range).min(self.size) - 1)
    }

    /// The last byte of the first range, asked for by the first request.
    pub(super) fn first(&self) -> u64 {
        self.bounds(0).1
    }

    /// Whether `response` to the first request is exactly its range; if
    /// not (a 200 for the whole blob, another range, a bad Content-Range),
    /// the blob comes as one stream.
    pub(super) fn serves_first(&self, response: &Response) -> bool {
        let (first, last) = self.bounds(0);
        answers(response, (first, last), self.size)
    }
}

/// Whether `response` is a 206 for bytes `first..=last` of a `size`-byte
/// blob, whose length (if announced) is that of the range.
fn answers(response: &Response, (first, last): (u64, u64), size: u64) -> bool {
    let total = response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.rsplit_once('/'))
        .map(|(_, total)| total.trim());
    response.status() == StatusCode::PARTIAL_CONTENT
        && served_range(response.headers()) == Some((first, last))
        && (total == Some("*") || total == Some(size.to_string().as_str()))
        && content_length(response.headers()).is_none_or(|n| n == last - first + 1)
}

/// A ranged download under way: `fill` tells the reader what has landed
/// in the file; aborting `task` stops every range. Dropped with its task
/// still in it (the call ended before a reader took it), it stops the
/// download.
pub(crate) struct RangedBlob {
    pub fill: Arc<Fill>,
    pub task: Option<AbortHandle>,
}

impl Drop for RangedBlob {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A response to a range request, with its place under the host's cap.
type Answer = (Response, Option<OwnedSemaphorePermit>);

/// What every range task of one blob shares.
struct Shared {
    plan: Plan,
    source: BlobSource,
    digest: Digest,
    what: String,
    limits: Limits,
    file: File,
    fill: Arc<Fill>,
    /// The host's cap on range requests in flight.
    permits: Arc<Semaphore>,
    /// Tries per range on a transient failure.
    attempts: u32,
    /// The next range no task has taken.
    next: AtomicU64,
}

/// Starts fetching `plan`'s ranges into `file`, the first from `first`
/// (the answer to the first request, with its place under the host's
/// cap), the rest with new requests to the same source. The tasks count as the current call's work (see [`Work`]):
/// a call that ends early waits until they have stopped.
pub(super) fn start(
    plan: Plan,
    (source, digest, what, limits): (BlobSource, Digest, String, Limits),
    first: (Response, Option<OwnedSemaphorePermit>),
    file: File,
    permits: Arc<Semaphore>,
    attempts: u32,
) -> RangedBlob {
    let fill = Arc::new(Fill::new(plan.size));
    let tasks = plan.connections.min(plan.count() as usize);
    let running: Vec<Option<WorkGuard>> = (0..=tasks).map(|_| Work::enter()).collect();
    let shared = Arc::new(Shared {
        plan,
        source,
        digest,
        what,
        limits,
        file,
        fill: fill.clone(),
        permits,
        attempts: attempts.max(1),
        next: AtomicU64::new(1),
    });
    let mut running = running.into_iter();
    let coordinator = running.next().flatten();
    let mut workers = JoinSet::new();
    let mut first = Some(first);
    for guard in running {
        let (shared, first) = (shared.clone(), first.take());
        workers.spawn(async move {
            let _running = guard;
            shared.work(first).await
        });
    }
    let task = tokio::spawn(async move {
        let _running = coordinator;
        // Aborted (the call was dropped): the reader stops waiting.
        let _canceled = CancelOnDrop(shared.fill.clone());
        while let Some(done) = workers.join_next().await {
            let outcome = done.unwrap_or_else(|err| {
                Err(match err.try_into_panic() {
                    Ok(panic) => Error::panicked("a range download", &*panic),
                    Err(_) => Error::canceled("a range download was stopped"),
                })
            });
            if let Err(err) = outcome {
                // Dropping the set stops the other ranges.
                shared.fill.fail(err);
                return;
            }
        }
    });
    RangedBlob {
        fill,
        task: Some(task.abort_handle()),
    }
}

/// Fails the fill (if unfinished) when the download task ends.
struct CancelOnDrop(Arc<Fill>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0
            .fail(Error::canceled("the ranged download was stopped"));
    }
}

/// How the host answered a range request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Served {
    /// With exactly that range.
    Range,
    /// With the whole blob (a 200): it ignored the `Range`.
    Whole,
}

impl Shared {
    /// Fetches ranges until none is left: first the one `first` answers.
    async fn work(&self, mut first: Option<Answer>) -> Result<()> {
        let count = self.plan.count();
        let mut index = if first.is_some() {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        while index < count {
            let answer = first.take();
            let span = self.plan.bounds(index);
            if answer.is_none() {
                self.fill.wait_for_reader(span.0, self.plan.lead()).await;
            }
            if self.fetch(span, answer).await? == Served::Whole {
                // The host stopped serving ranges (a mirror or a cache in
                // front of it changed its mind): the ranges no task has
                // taken come in one request, the others finish theirs.
                let rest = self.next.swap(count, Ordering::Relaxed);
                if rest < count {
                    let (start, _) = self.plan.bounds(rest);
                    self.fetch((start, self.plan.size - 1), None).await?;
                }
                return Ok(());
            }
            index = self.next.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes bytes `first..=last` into the file, from `response` if given;
    /// a connection cut or refused is tried again for the rest of these
    /// bytes only, up to the configured attempts.
    async fn fetch(
        &self,
        (first, last): (u64, u64),
        mut response: Option<Answer>,
    ) -> Result<Served> {
        let mut at = first;
        let mut attempt = 1;
        loop {
            match self.copy(&mut at, (first, last), response.take()).await {
                Ok(served) => {
                    fs::start_writeback(&self.file, first, last - first + 1);
                    return Ok(served);
                }
                Err(err) if err.kind() == ErrorKind::Network && attempt < self.attempts => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Copies bytes `*at..=last` of range `first..=last` into the file,
    /// from `response` or a new request; `*at` follows what was written. A
    /// new request answered with the whole blob is read up to `last`, the
    /// bytes before `*at` skipped.
    async fn copy(
        &self,
        at: &mut u64,
        (first, last): (u64, u64),
        response: Option<Answer>,
    ) -> Result<Served> {
        let (response, _permit, served) = match response {
            Some((response, permit)) => (response, permit, Served::Range),
            None => {
                let permit = self.permits.clone().acquire_owned().await.ok();
                let response = self
                    .source
                    .get(&self.digest, (*at, Some(last)), &self.what, self.limits)
                    .await
                    .map_err(|failed| failed.error)?;
                let served = if answers(&response, (*at, last), self.plan.size) {
                    Served::Range
                } else if response.status() == StatusCode::OK
                    && content_length(response.headers()).is_none_or(|n| n == self.plan.size)
                {
                    Served::Whole
                } else {
                    return Err(Error::invalid_content(format!(
                        "{}: asked for bytes {at}-{last}, the registry answered {} with {:?}",
                        self.what,
                        response.status(),
                        response.headers().get(CONTENT_RANGE)
                    )));
                };
                (response, permit, served)
            }
        };
        let from = host_of(response.url());
        let mut body = response.bytes_stream();
        // The bytes of the blob the body carries, and the offset of its next.
        let (body_start, body_end) = match served {
            Served::Range => (*at, last + 1),
            Served::Whole => (0, self.plan.size),
        };
        let mut offset = body_start;
        loop {
            if served == Served::Whole && *at > last {
                return Ok(served);
            }
            let next = self
                .limits
                .stalling(&from, body.next())
                .await
                .map_err(|stalled| Error::timeout(format!("{}: {stalled}", self.what)))?;
            match next {
                Some(Ok(bytes)) => {
                    let end = offset + bytes.len() as u64;
                    if end > body_end {
                        return Err(Error::digest_mismatch(format!(
                            "{}: the registry sent more than bytes {body_start}-{}",
                            self.what,
                            body_end - 1
                        )));
                    }
                    // The part of this chunk that is still to be written.
                    let (start, stop) = ((*at).max(offset), end.min(last + 1));
                    if start < stop {
                        let part = &bytes[(start - offset) as usize..(stop - offset) as usize];
                        self.file.write_all_at(part, start).map_err(|e| {
                            Error::io(format!(
                                "{}: writing bytes {start}-{} to the store: {e}",
                                self.what,
                                stop - 1
                            ))
                            .with_source(e)
                        })?;
                        self.fill.written(start, stop);
                        *at = stop;
                    }
                    offset = end;
                }
                None if *at > last => return Ok(served),
                None => {
                    return Err(Error::network(format!(
                        "{}: the connection closed at byte {at} of bytes {first}-{last}",
                        self.what
                    )))
                }
                Some(Err(err)) => {
                    return Err(Error::network(format!(
                        "{}: reading from the registry: {}",
                        self.what,
                        error_chain(&err)
                    ))
                    .with_source(err.without_url()))
                }
            }
        }
    }
}
