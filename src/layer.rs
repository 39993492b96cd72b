//! Layers: the pipeline that turns a compressed blob (decoded by its codec,
//! see `codec`) into a verified, uncompressed tar, either a file created
//! atomically at `dst/<alg>/<hex of diff_id>` or a stream. The blob is read
//! once: the same pass hashes it, copies it to the store if asked, and feeds
//! the decompressor, whose output is hashed against the diff_id. That work
//! runs on a blocking thread fed from the network through a bounded channel;
//! the output's hash and write run on a second thread, so that a layer
//! keeps two cores busy. A tar's index (see `tar_index`) lives at
//! `dst/tar-index/<alg>/<hex of diff_id>`, built on demand by
//! [`ensure_index`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as sync_mpsc, Arc};
use std::task::{ready, Context, Poll};
use std::thread::{self, Scope, ScopedJoinHandle};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::codec::Codec;
use crate::digest::{check_size, Digest, Hasher};
use crate::error::{Error, Result};
use crate::fill::Fill;
use crate::fs::{self, Dir, PendingFile, Reserve, CONTENT_MODE};
use crate::http::BlobStream;
use crate::registry::RangedBlob;
use crate::tar_index::format::{self as index_format, TarIndex};
use crate::tar_index::{self, parse::Parser};
use crate::work::{Progress, ProgressFn, Work};

/// Chunks in flight between the network and the decompressor, and between
/// the decompressor and a stream's reader.
const CHANNEL_DEPTH: usize = 4;
/// Uncompressed bytes the decompressor fills before handing them to the
/// tar's writer thread, which hashes and writes them and reports progress:
/// large enough that the hand-over costs little, small enough that progress
/// shows while a 1 MiB layer is under way.
const OUTPUT_BUFFER: usize = 256 << 10;
/// The buffers of one layer, recycled between its two threads: one being
/// filled, the others queued or being hashed and written. Bounds the memory
/// (this many times [`OUTPUT_BUFFER`]) and allocates nothing per chunk.
const OUTPUT_BUFFERS: usize = 8;

/// What a layer's bytes must match.
pub(crate) struct LayerCheck {
    /// Names the layer in error messages, e.g. `layer 2 (sha256:…) of REF`.
    pub what: String,
    /// The layer's index in its image, for progress reports.
    pub index: usize,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    /// Decodes the blob, from its media type.
    pub codec: &'static Codec,
    /// The most uncompressed bytes accepted, against decompression bombs.
    pub max_size: Option<u64>,
    pub progress: Option<ProgressFn>,
}

/// Where a layer's compressed bytes come from.
pub(crate) enum Blob {
    /// Chunks from the network.
    Remote(BlobStream),
    Local(File),
    /// Ranges from the network landing in `file` (the store's temp blob
    /// file): the pass reads its contiguous prefix as it grows. `buffer`
    /// holds that file when the store keeps no copy, and drops (removes)
    /// it at the end; else the file is the copy, already written.
    Ranged {
        file: File,
        download: RangedBlob,
        buffer: Option<PendingFile>,
    },
}

/// Where the tar of `diff_id` lives under `dst`.
pub(crate) fn tar_path(dst: &Path, diff_id: &Digest) -> PathBuf {
    dst.join(diff_id.algorithm()).join(diff_id.hex())
}

/// The directory under `dst` holding the tar indexes, one subdirectory per
/// digest algorithm, as the tars have.
pub(crate) const INDEX_DIR: &str = "tar-index";

/// Where the index of the tar of `diff_id` lives under `dst`.
#[cfg(test)]
pub(crate) fn index_path(dst: &Path, diff_id: &Digest) -> PathBuf {
    dst.join(INDEX_DIR)
        .join(diff_id.algorithm())
        .join(diff_id.hex())
}

/// The index of `tar`, the layer tar of `diff_id` under `dst` (opened by
/// the caller, who keeps reading it): the one on disk if it checks out (its
/// checksum, version, diff_id and the tar's size), else built by one
/// sequential read of `tar` that also checks it hashes to its name, and
/// written atomically in its place (a corrupt one, a symlink, a FIFO or an
/// empty directory there is replaced, never read or followed; a directory
/// with something in it is an error naming it). `DigestMismatch` when the
/// tar is not the one its name says; `InvalidContent` when it does not
/// parse as a tar. Blocks: call it on a blocking thread.
pub(crate) fn ensure_index(
    dst: &Path,
    diff_id: &Digest,
    tar: &File,
    reserve: Reserve,
) -> Result<TarIndex> {
    let (algorithm, name) = (diff_id.algorithm(), diff_id.hex());
    let tar_path = tar_path(dst, diff_id);
    let what = format!("layer tar {}", tar_path.display());
    let tar_size = tar
        .metadata()
        .map_err(|e| Error::io_at("reading the size of", &tar_path, e))?
        .len();
    let root = Dir::open(dst)?;
    let existing = match root.sub(INDEX_DIR)? {
        Some(indexes) => indexes.sub(algorithm)?,
        None => None,
    };
    if let Some(dir) = existing {
        match TarIndex::open_in(&dir, name, diff_id, tar_size) {
            Ok(Some(index)) => return Ok(index),
            Ok(None) => {}
            // Corrupt, truncated, another version or another tar's (its
            // diff_id or its size), or too long to read: rebuilt.
            Err(e) if e.kind() == crate::ErrorKind::InvalidContent => {}
            Err(e) => return Err(e),
        }
    }
    // A reader of its own, so the caller's file offset stays where it was.
    let reader = fs::reopen_read_only(tar).map_err(|e| Error::io_at("reopening", &tar_path, e))?;
    let bytes = tar_index::build_from_tar(reader, diff_id, &what)?;
    let dir = root.create_sub(INDEX_DIR)?.create_sub(algorithm)?;
    // A rename cannot replace a directory: an empty one holds nothing to
    // lose, so it goes; one with something in it is left, and refused.
    dir.remove_empty_dir(name)?;
    fs::write_atomic(&dir, name, &bytes, CONTENT_MODE, reserve)?;
    TarIndex::from_bytes(bytes, diff_id)
}

/// Where [`extract`] writes a layer tar.
pub(crate) struct Target {
    /// The caller's directory; the tar goes to [`tar_path`] under it.
    pub dst: PathBuf,
    /// What the tar's writes leave free.
    pub reserve: Reserve,
    /// Whether to remove dead writers' temp files in `dst/<alg>` first.
    pub sweep: bool,
}

/// Writes the layer to [`tar_path`] atomically, after both digests matched,
/// commits `copy` (the blob's store copy) likewise, and opens the tar afresh.
/// `dst/<alg>` is created or opened without following a link; a link or
/// FIFO in the tar's place is replaced, a directory there is an error.
pub(crate) async fn extract(
    check: LayerCheck,
    blob: Blob,
    copy: Option<PendingFile>,
    target: Target,
) -> Result<File> {
    let input = Input::start(blob, copy, &check);
    // Dropping this future (a deadline, a cancel) stops the blocking work at
    // its next read, which then removes its temp files.
    let _abandon = Abandon(input.abandoned.clone(), input.feeder.clone());
    let running = Work::enter();
    let abandoned = input.abandoned.clone();
    let what = format!("{}: extracting", check.what);
    blocking(&what, move || {
        let _running = running;
        let dir = Dir::open(&target.dst)?.create_sub(check.diff_id.algorithm())?;
        if target.sweep {
            // Best effort: what a failed sweep leaves, a prune removes.
            let _ = fs::remove_stale_temps_in(&dir);
            let indexes = Dir::open(&target.dst)
                .and_then(|root| root.sub(INDEX_DIR))
                .and_then(|indexes| {
                    indexes
                        .map(|i| i.sub(check.diff_id.algorithm()))
                        .transpose()
                });
            if let Ok(Some(Some(indexes))) = indexes {
                let _ = fs::remove_stale_temps_in(&indexes);
            }
        }
        let name = check.diff_id.hex();
        let tar = PendingFile::create(&dir, name, CONTENT_MODE, target.reserve)?;
        let (tar, copy, parser) = unpack(&check, input, tar, true)?;
        // A call that ended early leaves nothing new, even a finished layer.
        if abandoned.load(Ordering::Relaxed) {
            return Err(Error::canceled(format!(
                "{}: the call was dropped",
                check.what
            )));
        }
        tar.commit()?;
        copy.map_or(Ok(()), PendingFile::commit)?;
        if let Some(parser) = parser {
            write_index(&target.dst, &check.diff_id, parser, target.reserve);
        }
        dir.open_regular(name)?.ok_or_else(|| {
            Error::io(format!(
                "{} was replaced by something else as it was written",
                dir.join(name).display()
            ))
        })
    })
    .await
}

/// Writes the index of the tar of `diff_id` that `parser` read as the tar
/// was written, after the tar was committed: an index never names a tar
/// that is not durable. Best effort: a tar that does not parse, or an index
/// that cannot be written, leaves no index, and [`ensure_index`] tries again
/// (and reports the tar's parse error) when a view needs it; the tar itself
/// is fine either way.
fn write_index(dst: &Path, diff_id: &Digest, parser: Parser, reserve: Reserve) {
    let size = parser.position();
    let Ok(entries) = parser.finish() else {
        return;
    };
    let Ok(bytes) = index_format::build(entries, diff_id, size) else {
        return;
    };
    let written = Dir::open(dst)
        .and_then(|root| root.create_sub(INDEX_DIR))
        .and_then(|indexes| indexes.create_sub(diff_id.algorithm()))
        .and_then(|dir| fs::write_atomic(&dir, diff_id.hex(), &bytes, CONTENT_MODE, reserve));
    // Nothing to undo: a failed write removed its temp file.
    drop(written);
}

/// Streams the uncompressed layer. The stream ends only after both digests
/// matched; a mismatch is an error, never an end of stream, and so is a
/// panic in the worker (a progress callback's, say): the reader gets
/// [`ErrorKind::Internal`](crate::ErrorKind::Internal).
pub(crate) fn stream(check: LayerCheck, blob: Blob, copy: Option<PendingFile>) -> LayerReader {
    let input = Input::start(blob, copy, &check);
    let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
    let failure = sender.clone();
    tokio::task::spawn_blocking(move || {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            unpack(&check, input, ChannelWriter(sender), false)
                .and_then(|(_, copy, _)| copy.map_or(Ok(()), PendingFile::commit))
        }))
        .unwrap_or_else(|panic| {
            Err(Error::panicked(
                &format!("{}: streaming", check.what),
                &*panic,
            ))
        });
        if let Err(err) = outcome {
            // Nobody is left to tell if the reader is gone.
            let _ = failure.blocking_send(Err(err.into_io()));
        }
    });
    LayerReader {
        receiver,
        chunk: Bytes::new(),
        failed: None,
    }
}

/// Decompresses and verifies a blob held in `file` into memory, without a
/// runtime: [`unpack`] for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn unpack_local(check: &LayerCheck, file: File) -> Result<Vec<u8>> {
    let input = Input::start(Blob::Local(file), None, check);
    unpack(check, input, Vec::new(), false).map(|(out, _, _)| out)
}

/// Marks the work of a dropped call as abandoned and stops its download.
struct Abandon(Arc<AtomicBool>, Option<AbortHandle>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(feeder) = &self.1 {
            feeder.abort();
        }
    }
}

/// Runs `work` on a blocking thread; a panic there (a progress callback's,
/// say) is an [`ErrorKind::Internal`](crate::ErrorKind::Internal) naming `what`, after the work's temp files
/// were dropped by the unwinding.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => Err(Error::panicked(what, &*err.into_panic())),
        Err(_) => Err(Error::canceled("the runtime shut down during extraction")),
    }
}

/// Decompresses `input` into `out`, checking the blob's size and digest and
/// the output's diff_id. Returns `out` and the blob's store copy, neither
/// committed, and with `index` the tar's headers parsed from the same bytes
/// (the parser holds its error if they do not parse). The output is hashed and written to `out` by a second thread
/// (see [`Split`]), which has ended when this returns; a panic there goes
/// on here.
fn unpack<W: Write + Send>(
    check: &LayerCheck,
    mut input: Input,
    out: W,
    index: bool,
) -> Result<(W, Option<PendingFile>, Option<Parser>)> {
    let reporter = check.progress.clone().map(|report| Reporter {
        report,
        layer: check.index,
        digest: check.digest.clone(),
        total: check.size,
    });
    let hashing = HashingWriter {
        inner: out,
        hasher: check.diff_id.hasher(),
        written: 0,
        downloaded: 0,
        reporter,
        parser: index.then(Parser::new),
    };
    let limit = check.max_size.map(|limit| (limit, check.what.as_str()));
    let downloaded = input.downloaded.clone();
    let (decoded, written) = thread::scope(|scope| {
        let (mut split, writer) = Split::start(scope, hashing, limit, downloaded.clone())?;
        let decoded = check.codec.decode(&mut input, |tar| split.fill_from(tar));
        // The writer's own failure (a full disk, a panicking progress
        // callback) comes first: what the decoder saw after it is its echo.
        let written = split.finish(decoded.is_ok(), writer)?;
        Ok::<_, Error>((decoded, written))
    })?;
    if let Err(err) = decoded {
        // Errors of our own come from the network or the output: report them.
        // Anything else is the decoder's, and a corrupt blob usually shows up
        // there first, so check the blob before blaming the compression.
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return Err(Error::from_io(err, Error::io_bare));
        }
        input.finish(&check.what)?;
        return Err(Error::invalid_content(format!(
            "{}: corrupt {} stream: {err}",
            check.what, check.codec.name
        )));
    }
    let copy = input.finish(&check.what)?;
    let what = format!("{} uncompressed (diff_id)", check.what);
    written
        .hasher
        .finish()
        .check_matches(&check.diff_id, &what)?;
    if let Some(reporter) = &written.reporter {
        let downloaded = downloaded.load(Ordering::Relaxed);
        reporter.report(downloaded, written.written, Some(written.written));
    }
    Ok((written.inner, copy, written.parser))
}

/// The decompressor's side of a layer's two threads: fills buffers from the
/// pool and hands each full one to the writer thread ([`write_tar`]), which
/// hashes and writes it and hands it back.
struct Split<'a> {
    buffer: Vec<u8>,
    filled: usize,
    full: sync_mpsc::SyncSender<Filled>,
    empty: sync_mpsc::Receiver<Vec<u8>>,
    total: u64,
    /// The most bytes accepted, and the layer named when it is exceeded.
    limit: Option<(u64, &'a str)>,
    /// The compressed bytes read so far ([`Input`]'s count).
    downloaded: Arc<AtomicU64>,
}

/// A buffer handed to the writer thread.
struct Filled {
    buffer: Vec<u8>,
    len: usize,
    /// The compressed bytes read when it was handed over: its progress
    /// report says that, as it would have on one thread.
    downloaded: u64,
}

/// The writer thread, which returns the output once every byte went through.
type Writer<'scope, W> = ScopedJoinHandle<'scope, Result<HashingWriter<W>>>;

impl<'a> Split<'a> {
    /// Starts the writer thread on `out`, within `scope`.
    fn start<'scope, W: Write + Send + 'scope>(
        scope: &'scope Scope<'scope, '_>,
        out: HashingWriter<W>,
        limit: Option<(u64, &'a str)>,
        downloaded: Arc<AtomicU64>,
    ) -> Result<(Split<'a>, Writer<'scope, W>)> {
        let (full, queued) = sync_mpsc::sync_channel(OUTPUT_BUFFERS);
        let (recycled, empty) = sync_mpsc::sync_channel(OUTPUT_BUFFERS);
        for _ in 1..OUTPUT_BUFFERS {
            // Cannot fail: the channel holds them all and its receiver lives.
            let _ = recycled.send(vec![0; OUTPUT_BUFFER]);
        }
        let writer = thread::Builder::new()
            .name("oci-cache-tar".into())
            .spawn_scoped(scope, move || write_tar(out, queued, recycled))
            .map_err(|e| {
                Error::io(format!("starting a layer's writer thread: {e}")).with_source(e)
            })?;
        let split = Split {
            buffer: vec![0; OUTPUT_BUFFER],
            filled: 0,
            full,
            empty,
            total: 0,
            limit,
            downloaded,
        };
        Ok((split, writer))
    }

    /// Reads `tar` to its end straight into the pool's buffers.
    fn fill_from(&mut self, tar: &mut dyn Read) -> io::Result<()> {
        loop {
            if self.filled == OUTPUT_BUFFER {
                self.hand_over()?;
            }
            let n = match tar.read(&mut self.buffer[self.filled..]) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            self.filled += n;
            self.total += n as u64;
            if let Some((limit, what)) = self.limit.filter(|(limit, _)| self.total > *limit) {
                return Err(Error::invalid_content(format!(
                    "{what}: uncompresses to more than the {limit}-byte limit (max_layer_size)"
                ))
                .into_io());
            }
        }
    }

    /// Queues the full buffer for the writer and takes an empty one.
    fn hand_over(&mut self) -> io::Result<()> {
        // Either channel is closed only once the writer has stopped on a
        // failure of its own, which `finish` reports instead of this.
        let stopped = || Error::internal("the layer's writer thread stopped").into_io();
        let next = self.empty.recv().map_err(|_| stopped())?;
        let filled = Filled {
            buffer: std::mem::replace(&mut self.buffer, next),
            len: std::mem::take(&mut self.filled),
            downloaded: self.downloaded.load(Ordering::Relaxed),
        };
        self.full.send(filled).map_err(|_| stopped())
    }

    /// Hands over the last, partly filled buffer if `complete` (else the
    /// output is dropped unfinished), waits for the writer and returns the
    /// output, or the writer's failure; a panic there goes on here.
    fn finish<W>(mut self, complete: bool, writer: Writer<'_, W>) -> Result<HashingWriter<W>> {
        if complete && self.filled > 0 {
            // A failure shows in the writer's outcome.
            let _ = self.hand_over();
        }
        // Ends the writer's loop.
        drop(self);
        writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// The writer thread of a layer: hashes and writes each buffer `queued`,
/// and hands it back through `recycled`, until the decompressor is done.
fn write_tar<W: Write>(
    mut out: HashingWriter<W>,
    queued: sync_mpsc::Receiver<Filled>,
    recycled: sync_mpsc::SyncSender<Vec<u8>>,
) -> Result<HashingWriter<W>> {
    for filled in queued {
        out.downloaded = filled.downloaded;
        out.write_all(&filled.buffer[..filled.len])
            .map_err(|e| Error::from_io(e, Error::io_bare))?;
        // The decompressor may be gone already; never blocks: the channel
        // holds every buffer of the pool.
        let _ = recycled.send(filled.buffer);
    }
    out.flush().map_err(|e| Error::from_io(e, Error::io_bare))?;
    Ok(out)
}

/// The compressed bytes, read synchronously by the decompressor, hashed and
/// copied to the store as they pass.
struct Input {
    source: Source,
    chunk: Bytes,
    hasher: Hasher,
    received: u64,
    // `received`, for progress reports made on the output side.
    downloaded: Arc<AtomicU64>,
    // Set when the call that started this work was dropped.
    abandoned: Arc<AtomicBool>,
    // The task pulling a remote blob, stopped when the work is abandoned so
    // that a read blocked on a silent registry wakes up at once.
    feeder: Option<AbortHandle>,
    size: u64,
    copy: Option<PendingFile>,
    digest: Digest,
}

enum Source {
    Channel(mpsc::Receiver<io::Result<Bytes>>),
    File(File),
    /// A ranged download's file, read up to its watermark; the store copy
    /// is this file, so nothing read is written again.
    Ranged {
        file: File,
        fill: Arc<Fill>,
        _buffer: Option<PendingFile>,
    },
}

impl Input {
    /// Starts reading `blob`; a remote one is pulled by a task on the runtime.
    fn start(blob: Blob, copy: Option<PendingFile>, check: &LayerCheck) -> Input {
        let mut feeder = None;
        let source = match blob {
            Blob::Local(file) => Source::File(file),
            Blob::Remote(mut stream) => {
                let (sender, receiver) = mpsc::channel(CHANNEL_DEPTH);
                let task = tokio::spawn(async move {
                    while let Some(chunk) = stream.next().await {
                        let last = chunk.is_err();
                        if sender.send(chunk).await.is_err() || last {
                            break;
                        }
                    }
                });
                feeder = Some(task.abort_handle());
                Source::Channel(receiver)
            }
            Blob::Ranged {
                file,
                mut download,
                buffer,
            } => {
                feeder = download.task.take();
                Source::Ranged {
                    file,
                    fill: download.fill.clone(),
                    _buffer: buffer,
                }
            }
        };
        Input {
            source,
            chunk: Bytes::new(),
            hasher: check.digest.hasher(),
            received: 0,
            downloaded: Arc::default(),
            abandoned: Arc::default(),
            feeder,
            size: check.size,
            copy,
            digest: check.digest.clone(),
        }
    }

    /// Reads what the decompressor left, then checks size and digest.
    fn finish(mut self, what: &str) -> Result<Option<PendingFile>> {
        io::copy(&mut self, &mut io::sink()).map_err(|e| Error::from_io(e, Error::io_bare))?;
        check_size(self.received, self.size, what)?;
        let hasher = std::mem::replace(&mut self.hasher, self.digest.hasher());
        hasher.finish().check_matches(&self.digest, what)?;
        Ok(self.copy.take())
    }
}

impl Drop for Input {
    /// A pass that ended early (a failure, a dropped stream reader) stops
    /// the download feeding it: ranges would otherwise go on landing in a
    /// removed file.
    fn drop(&mut self) {
        if let Some(feeder) = &self.feeder {
            feeder.abort();
        }
    }
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.abandoned.load(Ordering::Relaxed) {
            let err = Error::canceled(format!("blob {}: the call was dropped", self.digest));
            return Err(err.into_io());
        }
        let n = match &mut self.source {
            Source::File(file) => file.read(buf).map_err(|e| {
                Error::io(format!("reading store blob {}: {e}", self.digest))
                    .with_source(e)
                    .into_io()
            })?,
            Source::Channel(receiver) => {
                if self.chunk.is_empty() {
                    match receiver.blocking_recv() {
                        Some(chunk) => self.chunk = chunk?,
                        None if self.abandoned.load(Ordering::Relaxed) => {
                            let err = Error::canceled(format!(
                                "blob {}: the call was dropped",
                                self.digest
                            ));
                            return Err(err.into_io());
                        }
                        None => return Ok(0),
                    }
                }
                let n = buf.len().min(self.chunk.len());
                buf[..n].copy_from_slice(&self.chunk.split_to(n));
                n
            }
            Source::Ranged { file, fill, .. } => {
                let (read, digest, abandoned) = (self.received, &self.digest, &self.abandoned);
                let stop = || {
                    abandoned
                        .load(Ordering::Relaxed)
                        .then(|| Error::canceled(format!("blob {digest}: the call was dropped")))
                };
                let ready = fill.wait_past(read, stop).map_err(Error::into_io)?;
                let want = buf.len().min((ready - read) as usize);
                std::os::unix::fs::FileExt::read_at(file, &mut buf[..want], read).map_err(|e| {
                    Error::io(format!("reading store blob {}: {e}", self.digest))
                        .with_source(e)
                        .into_io()
                })?
            }
        };
        let written = matches!(self.source, Source::Ranged { .. });
        self.received += n as u64;
        self.downloaded.store(self.received, Ordering::Relaxed);
        if self.received > self.size {
            let err = Error::digest_mismatch(format!(
                "blob {} is larger than its descriptor's {} bytes",
                self.digest, self.size
            ));
            return Err(err.into_io());
        }
        self.hasher.update(&buf[..n]);
        if let Some(copy) = self.copy.as_mut().filter(|_| !written) {
            copy.write_all(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Hashes and counts what passes through it, reporting progress.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    written: u64,
    /// The compressed bytes read when the bytes being written were made.
    downloaded: u64,
    reporter: Option<Reporter>,
    /// Reads the tar's headers for its index, when one is written.
    parser: Option<Parser>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        if let Some(parser) = &mut self.parser {
            // A failure stays in the parser: the tar is written all the same.
            let _ = parser.feed(&buf[..n]);
        }
        self.written += n as u64;
        if let Some(reporter) = &self.reporter {
            reporter.report(self.downloaded, self.written, None);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Sends one layer's progress reports.
struct Reporter {
    report: ProgressFn,
    layer: usize,
    digest: Digest,
    total: u64,
}

impl Reporter {
    fn report(&self, downloaded: u64, written: u64, written_total: Option<u64>) {
        (self.report)(&Progress {
            layer: self.layer,
            digest: self.digest.clone(),
            downloaded,
            download_total: Some(self.total),
            written,
            written_total,
        });
    }
}

/// Hands the decompressor's output to a [`LayerReader`].
struct ChannelWriter(mpsc::Sender<io::Result<Bytes>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| Error::canceled("the layer reader was dropped").into_io())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An uncompressed layer, streamed (see [`crate::ImageCache::fetch_layer`]).
///
/// Read errors are `io::Error`s that wrap an [`Error`]; get it back with
/// `err.get_ref().and_then(|e| e.downcast_ref::<oci_cache::Error>())`. An
/// error is final: every later read returns it again. A read returns 0 (the
/// end) only once the layer was verified: a panic in the work behind it (a
/// progress callback's) is [`ErrorKind::Internal`](crate::ErrorKind::Internal), never an end.
pub struct LayerReader {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
    failed: Option<Error>,
}

impl AsyncRead for LayerReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(err) = &this.failed {
                return Poll::Ready(Err(err.clone().into_io()));
            }
            if !this.chunk.is_empty() {
                let n = buf.remaining().min(this.chunk.len());
                buf.put_slice(&this.chunk.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(this.receiver.poll_recv(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(chunk)) => this.chunk = chunk,
                Some(Err(err)) => this.failed = Some(Error::from_io(err, Error::io_bare)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::ErrorKind;
    use tokio::io::AsyncReadExt;

    /// A plain-tar layer of `content` held in a local file, whose progress
    /// callback panics at the first report `panic_at` accepts.
    fn panicking_layer(content: &[u8], panic_at: fn(&Progress) -> bool) -> (LayerCheck, Blob) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content).unwrap();
        io::Seek::rewind(&mut file).unwrap();
        let digest = Digest::sha256_of(content);
        let check = LayerCheck {
            what: "layer 0 of test".into(),
            index: 0,
            digest: digest.clone(),
            size: content.len() as u64,
            diff_id: digest,
            codec: Codec::of("application/vnd.oci.image.layer.v1.tar").unwrap(),
            max_size: None,
            progress: Some(Arc::new(move |report: &Progress| {
                if panic_at(report) {
                    panic!("progress callback failed on purpose");
                }
            })),
        };
        (check, Blob::Local(file))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    /// A small layer tar: a directory, a file and a symlink.
    fn small_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_ustar();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        builder.append_data(&mut dir, "etc/", io::empty()).unwrap();
        let mut file = tar::Header::new_ustar();
        file.set_mode(0o644);
        file.set_size(5);
        builder
            .append_data(&mut file, "etc/hosts", &b"hello"[..])
            .unwrap();
        let mut link = tar::Header::new_ustar();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        builder
            .append_link(&mut link, "etc/alias", "hosts")
            .unwrap();
        builder.into_inner().unwrap()
    }

    /// A dst holding `tar` as a layer tar, and its diff_id.
    fn dst_with(tar: &[u8]) -> (tempfile::TempDir, Digest) {
        let dst = tempfile::tempdir().unwrap();
        let diff_id = Digest::sha256_of(tar);
        let path = tar_path(dst.path(), &diff_id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, tar).unwrap();
        (dst, diff_id)
    }

    fn ensure(dst: &Path, diff_id: &Digest) -> Result<TarIndex> {
        let tar = File::open(tar_path(dst, diff_id)).unwrap();
        ensure_index(dst, diff_id, &tar, Reserve::OFF)
    }

    /// The index bytes `build_from_tar` makes of `tar`.
    fn expected_index(tar: &[u8], diff_id: &Digest) -> Vec<u8> {
        tar_index::build_from_tar(tar, diff_id, "test tar").unwrap()
    }

    /// Every non-directory under `dst`, relative to it, sorted.
    fn files(dst: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![dst.to_owned()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                if entry.file_type().unwrap().is_dir() {
                    pending.push(entry.path());
                } else {
                    let path = entry.path();
                    found.push(path.strip_prefix(dst).unwrap().display().to_string());
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn a_tar_with_no_index_gets_one_on_demand() {
        let tar = small_tar();
        let (dst, diff_id) = dst_with(&tar);
        let index = ensure(dst.path(), &diff_id).unwrap();
        let path = index_path(dst.path(), &diff_id);
        assert_eq!(
            path,
            dst.path().join("tar-index/sha256").join(diff_id.hex())
        );
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written, expected_index(&tar, &diff_id));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o444
        );
        assert_eq!(index.lookup(b"etc/hosts").unwrap().size(), 5);
        // The second call reads it back, rewriting nothing.
        let before = std::fs::metadata(&path).unwrap().ino();
        ensure(dst.path(), &diff_id).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), before);
        let hex = diff_id.hex();
        assert_eq!(
            files(dst.path()),
            [format!("sha256/{hex}"), format!("tar-index/sha256/{hex}")]
        );
    }

    #[test]
    fn a_bad_index_is_rebuilt_never_trusted() {
        let tar = small_tar();
        let (dst, diff_id) = dst_with(&tar);
        let good = expected_index(&tar, &diff_id);
        let mut other = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(3);
        other.append_data(&mut header, "x", &b"abc"[..]).unwrap();
        let other = other.into_inner().unwrap();
        let wrong_diff_id = expected_index(&other, &Digest::sha256_of(&other));
        let mut corrupt = good.clone();
        corrupt[80] ^= 1;
        let truncated = good[..good.len() - 1].to_vec();
        // Well formed and of this diff_id, but for a tar of another size.
        let mut other_size = good[..good.len() - 32].to_vec();
        other_size[56..64].copy_from_slice(&(tar.len() as u64 + 512).to_le_bytes());
        let sum = <sha2::Sha256 as sha2::Digest>::digest(&other_size);
        other_size.extend_from_slice(&sum);
        let path = index_path(dst.path(), &diff_id);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for (what, content) in [
            ("corrupt", corrupt),
            ("truncated", truncated),
            ("wrong diff_id", wrong_diff_id),
            ("another tar size", other_size),
            ("empty", Vec::new()),
        ] {
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, &content).unwrap();
            let index = ensure(dst.path(), &diff_id).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(index.lookup(b"etc/hosts").unwrap().size(), 5, "{what}");
            assert_eq!(std::fs::read(&path).unwrap(), good, "{what}: rewritten");
        }

        // A symlink to a valid index elsewhere is replaced, not followed.
        let outside = tempfile::tempdir().unwrap();
        let planted = outside.path().join("index");
        std::fs::write(&planted, &good).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&planted, &path).unwrap();
        ensure(dst.path(), &diff_id).unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(std::fs::read(&path).unwrap(), good);
        assert_eq!(std::fs::read(&planted).unwrap(), good, "left alone");

        // A FIFO is replaced without being opened: opening it would block
        // with no writer, so the call runs on a thread with a deadline.
        std::fs::remove_file(&path).unwrap();
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        let (sender, receiver) = sync_mpsc::channel();
        let (dst_path, id) = (dst.path().to_owned(), diff_id.clone());
        thread::spawn(move || {
            let _ = sender.send(ensure(&dst_path, &id).map(drop));
        });
        let outcome = receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("ensure_index blocked on a FIFO");
        outcome.unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(std::fs::read(&path).unwrap(), good);
        let hex = diff_id.hex();
        assert_eq!(
            files(dst.path()),
            [format!("sha256/{hex}"), format!("tar-index/sha256/{hex}")]
        );

        // An empty directory is replaced; one with something in it is not
        // this library's to remove.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        ensure(dst.path(), &diff_id).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), good);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("kept"), "kept").unwrap();
        let err = ensure(dst.path(), &diff_id).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(
            err.message()
                .starts_with(&format!("removing directory {}: ", path.display())),
            "{err}"
        );
        assert_eq!(std::fs::read(path.join("kept")).unwrap(), b"kept");
    }

    #[test]
    fn no_index_comes_of_a_wrong_or_malformed_tar() {
        let tar = small_tar();
        let (dst, diff_id) = dst_with(&tar);
        // A tar that does not hash to its name.
        let tar_file = tar_path(dst.path(), &diff_id);
        std::fs::write(&tar_file, [&tar[..], &[0u8; 512][..]].concat()).unwrap();
        let err = ensure(dst.path(), &diff_id).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
        assert!(
            err.message().contains(&tar_file.display().to_string()),
            "{err}"
        );
        // A verified tar that does not parse: no index, the parse error.
        let garbage = vec![b'x'; 1024];
        let (bad_dst, bad_id) = dst_with(&garbage);
        let err = ensure(bad_dst.path(), &bad_id).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidContent, "{err}");
        let bad_path = tar_path(bad_dst.path(), &bad_id);
        assert!(
            err.message()
                .starts_with(&format!("layer tar {}: ", bad_path.display())),
            "{err}"
        );
        assert_eq!(files(dst.path()), [format!("sha256/{}", diff_id.hex())]);
        assert_eq!(files(bad_dst.path()), [format!("sha256/{}", bad_id.hex())]);
    }

    /// Extracts `tar`, compressed as `media_type` says, into a new dst.
    fn extract_layer(tar: &[u8], media_type: &str) -> (tempfile::TempDir, Digest) {
        let dst = tempfile::tempdir().unwrap();
        let diff_id = extract_into(dst.path(), tar, media_type);
        (dst, diff_id)
    }

    /// Extracts `tar`, compressed as `media_type` says, into `dst`; returns
    /// its diff_id.
    fn extract_into(dst: &Path, tar: &[u8], media_type: &str) -> Digest {
        let blob = match media_type.rsplit('+').next() {
            Some("gzip") => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                encoder.write_all(tar).unwrap();
                encoder.finish().unwrap()
            }
            Some("zstd") => zstd::encode_all(tar, 1).unwrap(),
            _ => tar.to_vec(),
        };
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&blob).unwrap();
        io::Seek::rewind(&mut file).unwrap();
        let diff_id = Digest::sha256_of(tar);
        let check = LayerCheck {
            what: "layer 0 of test".into(),
            index: 0,
            digest: Digest::sha256_of(&blob),
            size: blob.len() as u64,
            diff_id: diff_id.clone(),
            codec: Codec::of(media_type).unwrap(),
            max_size: None,
            progress: None,
        };
        let target = Target {
            dst: dst.to_owned(),
            reserve: Reserve::OFF,
            sweep: true,
        };
        runtime()
            .block_on(extract(check, Blob::Local(file), None, target))
            .unwrap();
        diff_id
    }

    #[test]
    fn extracting_a_layer_writes_its_index_in_the_same_pass() {
        // Larger than a writer buffer, so headers straddle buffers.
        let mut builder = tar::Builder::new(Vec::new());
        for i in 0..40 {
            let content = vec![i as u8; 10_000 + i * 777];
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o640);
            header.set_size(content.len() as u64);
            let name = format!("dir{}/{}-{}", i % 3, "long".repeat(30), i);
            builder
                .append_data(&mut header, name, &content[..])
                .unwrap();
        }
        let tar = builder.into_inner().unwrap();
        assert!(tar.len() > 2 * OUTPUT_BUFFER);
        for media_type in [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar",
        ] {
            let (dst, diff_id) = extract_layer(&tar, media_type);
            let written = std::fs::read(index_path(dst.path(), &diff_id)).unwrap();
            assert_eq!(written, expected_index(&tar, &diff_id), "{media_type}");
            let hex = diff_id.hex();
            assert_eq!(
                files(dst.path()),
                [format!("sha256/{hex}"), format!("tar-index/sha256/{hex}")],
                "{media_type}"
            );
            assert_eq!(std::fs::read(tar_path(dst.path(), &diff_id)).unwrap(), tar);
        }
    }

    #[test]
    fn a_layer_that_does_not_parse_is_extracted_with_no_index() {
        let garbage = vec![b'x'; 3000];
        let (dst, diff_id) = extract_layer(&garbage, "application/vnd.oci.image.layer.v1.tar");
        assert_eq!(files(dst.path()), [format!("sha256/{}", diff_id.hex())]);
        assert_eq!(
            std::fs::read(tar_path(dst.path(), &diff_id)).unwrap(),
            garbage
        );
        // The view asking for the index gets the parse error.
        let err = ensure(dst.path(), &diff_id).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidContent, "{err}");
    }

    #[test]
    fn a_symlink_in_place_of_the_index_directory_is_never_followed() {
        let tar = small_tar();
        let (dst, diff_id) = dst_with(&tar);
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dst.path().join(INDEX_DIR)).unwrap();
        let err = ensure(dst.path(), &diff_id).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert_eq!(
            err.message(),
            format!(
                "{} is a symbolic link; links below dst and the store are never followed",
                dst.path().join(INDEX_DIR).display()
            )
        );
        // The pass still writes the tar, and no index through the link.
        let other = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), other.path().join(INDEX_DIR)).unwrap();
        let plain = "application/vnd.oci.image.layer.v1.tar";
        let other_id = extract_into(other.path(), &tar, plain);
        assert_eq!(
            std::fs::read(tar_path(other.path(), &other_id)).unwrap(),
            tar
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_panic_in_the_stream_worker_is_an_internal_error_not_an_end() {
        // Big enough for several reports: the panic comes at the first one,
        // mid-layer, and at the last one, after every byte went out, where
        // a dropped channel would look most like a complete layer.
        let content = vec![7u8; 3 * OUTPUT_BUFFER + 5];
        let first: fn(&Progress) -> bool = |_| true;
        let last: fn(&Progress) -> bool = |p| p.written_total.is_some();
        for (when, panic_at) in [("first", first), ("last", last)] {
            let (check, blob) = panicking_layer(&content, panic_at);
            let runtime = runtime();
            let (read, result) = runtime.block_on(async {
                let mut reader = stream(check, blob, None);
                let mut read = Vec::new();
                let result = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    reader.read_to_end(&mut read),
                )
                .await
                .expect("the reader ends");
                // Once failed, every read fails the same way.
                let again = reader.read(&mut [0; 16]).await;
                assert!(again.is_err(), "read after the error: {again:?}");
                (read, result)
            });
            let err = result.expect_err("a panicked worker must not end the stream cleanly");
            let err = Error::from_io(err, |e| panic!("not a library error: {e}"));
            assert_eq!(
                err.kind(),
                ErrorKind::Internal,
                "panic at the {when} report: {err:?}, want Error::Internal"
            );
            let message = err.message();
            assert!(
                message.contains("layer 0 of test: streaming panicked")
                    && message.contains("progress callback failed on purpose"),
                "{message}"
            );
            assert!(
                content.starts_with(&read),
                "{when}: {} bytes read",
                read.len()
            );
            if when == "last" {
                assert_eq!(read.len(), content.len(), "every byte went out first");
            }
        }
    }

    #[test]
    fn a_panic_in_the_extract_worker_is_an_internal_error_leaving_nothing() {
        let content = vec![9u8; 2 * OUTPUT_BUFFER];
        let dst = tempfile::tempdir().unwrap();
        let (check, blob) = panicking_layer(&content, |p| p.written > 0);
        let diff_id = check.diff_id.clone();
        let target = Target {
            dst: dst.path().to_owned(),
            reserve: crate::fs::Reserve::OFF,
            sweep: false,
        };
        let result = runtime().block_on(extract(check, blob, None, target));
        let Err(err) = &result else {
            panic!("{result:?}, want Error::Internal")
        };
        assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
        let message = err.message();
        assert!(
            message.contains("layer 0 of test: extracting panicked")
                && message.contains("progress callback failed on purpose"),
            "{message}"
        );
        assert!(!tar_path(dst.path(), &diff_id).exists());
        let left: Vec<_> = std::fs::read_dir(dst.path().join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
