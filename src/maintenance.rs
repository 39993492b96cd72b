//! Cache management: what the layout's roots reach, and the upkeep built
//! on it: listing images, pruning blobs and layer tars nothing reaches,
//! measuring disk use, and re-hashing everything to find corruption. A layer
//! tar's index (`dst/tar-index/<alg>/<hex>`) goes with its tar: pruned
//! when the tar is unreached or gone, measured, and re-checked by verify.
//! File work runs on blocking threads that stop between files once their
//! call is dropped; the store's lock is held only to delete, never while
//! walking or hashing. Files are opened so that a FIFO, symlink or device
//! planted in the store or `dst` is skipped, never waited on or followed.

use std::collections::BTreeSet;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fs;
use crate::layer::INDEX_DIR;
use crate::store::{algorithm_dirs, Store, StoreLock};
use crate::tar_index::format::TarIndex;
use crate::work::{blocking, Stop};

/// The most bytes of a blob read as a JSON document while walking: as
/// many as a manifest or config fetched from a registry may have.
const MAX_DOCUMENT_BYTES: u64 = 4 << 20;

/// How long a prune holds the store's lock for one batch of deletions, so
/// that pulls recording images wait at most about this long.
const DELETE_SLICE: Duration = Duration::from_millis(20);

/// How many times a prune works out what is reached without the lock; if
/// `index.json` changed under it every time, the next round holds the lock
/// from the snapshot of the roots to the last deletion.
const OPTIMISTIC_ROUNDS: u32 = 3;

/// One image the store records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// The normalized reference it is recorded under.
    pub reference: String,
    /// The digest of its manifest, or of its index for a multi-platform image.
    pub digest: Digest,
    /// The media type of that manifest or index.
    pub media_type: String,
    /// Bytes of the store's blobs it reaches (shared blobs count for each image).
    pub size: u64,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub files: u64,
    pub bytes: u64,
}

impl Pruned {
    fn add(&mut self, (files, bytes): (u64, u64)) {
        self.files += files;
        self.bytes += bytes;
    }
}

/// Bytes and files under the store's blobs, and the layer tars and their
/// indexes in a `dst`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub store_bytes: u64,
    pub store_files: u64,
    /// The layer tars (not their indexes).
    pub dst_bytes: u64,
    pub dst_files: u64,
    /// The layer tars' indexes under `dst/tar-index`.
    pub index_bytes: u64,
    pub index_files: u64,
}

/// What a verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Files re-hashed: store blobs and layer tars.
    pub checked: u64,
    /// Files whose content does not hash to their name; removed if asked.
    pub corrupt: Vec<PathBuf>,
    /// Layer tar indexes checked (their own checksum, format and diff_id).
    pub indexes_checked: u64,
    /// Indexes that failed that check; removed if asked (a view rebuilds
    /// them from their tar).
    pub corrupt_indexes: Vec<PathBuf>,
}

/// The blobs and layer tars some roots reach.
#[derive(Default)]
struct Reached {
    blobs: BTreeSet<Digest>,
    diff_ids: BTreeSet<Digest>,
    /// Blobs read (or looked for) as JSON documents.
    walked: BTreeSet<Digest>,
    /// Documents reached but absent: one appearing later (a pull storing
    /// it again) may reach more, so a prune must look again.
    absent: Vec<Digest>,
}

impl Reached {
    /// What the entries of `index.json` (`roots`, as JSON) reach, named or
    /// not, whatever their media type.
    fn of_roots(store: &Store, roots: &[Value], stop: &Stop) -> Result<Reached> {
        let mut reached = Reached::default();
        let mut pending = Vec::new();
        for root in roots {
            queue(&mut pending, root, true);
        }
        reached.walk(store, pending, stop)?;
        Ok(reached)
    }

    /// Everything the `pending` blobs reach. A blob that may be a JSON
    /// document (a root, a `manifests` or `subject` entry, or anything of
    /// a JSON media type) is read from the store, and the descriptors of
    /// its `config`, `layers`, `manifests`, `blobs` and `subject` followed;
    /// an image config's `rootfs.diff_ids` keep layer tars. Blobs the store
    /// lacks, and blobs that are not JSON documents, reach only themselves.
    /// Content is not verified here: whatever a document names is kept.
    fn walk(&mut self, store: &Store, mut pending: Vec<(Digest, bool)>, stop: &Stop) -> Result<()> {
        while let Some((digest, document)) = pending.pop() {
            stop.check("walking the store")?;
            self.blobs.insert(digest.clone());
            if !document || !self.walked.insert(digest.clone()) {
                continue;
            }
            let json = match read_document(&store.blob_path(&digest))? {
                Document::Json(json) => json,
                Document::Absent => {
                    self.absent.push(digest);
                    continue;
                }
                Document::Opaque => continue,
            };
            let diff_ids = json.pointer("/rootfs/diff_ids").and_then(Value::as_array);
            for diff_id in diff_ids.into_iter().flatten().filter_map(Value::as_str) {
                self.diff_ids.extend(Digest::parse(diff_id).ok());
            }
            for key in ["config", "subject"] {
                if let Some(descriptor) = json.get(key) {
                    queue(&mut pending, descriptor, key == "subject");
                }
            }
            for key in ["layers", "manifests", "blobs"] {
                let descriptors = json.get(key).and_then(Value::as_array);
                for descriptor in descriptors.into_iter().flatten() {
                    queue(&mut pending, descriptor, key == "manifests");
                }
            }
        }
        Ok(())
    }

    /// Whether a document that was absent during the walk is there now.
    fn absent_appeared(&self, store: &Store) -> bool {
        self.absent
            .iter()
            .any(|digest| std::fs::symlink_metadata(store.blob_path(digest)).is_ok())
    }
}

/// Queues the blob `descriptor` names, if it has a digest this library
/// handles (blobs of other algorithms are never touched anyway), to be
/// read as a document if `document` or its media type is JSON.
fn queue(pending: &mut Vec<(Digest, bool)>, descriptor: &Value, document: bool) {
    let digest = descriptor.get("digest").and_then(Value::as_str);
    let Some(digest) = digest.and_then(|d| Digest::parse(d).ok()) else {
        return;
    };
    let media_type = descriptor.get("mediaType").and_then(Value::as_str);
    let json = media_type.is_none_or(|t| t.is_empty() || t.ends_with("json"));
    pending.push((digest, document || json));
}

/// What a blob read as a document turned out to be.
enum Document {
    Json(Value),
    /// Not there (yet).
    Absent,
    /// There, but no JSON: too large, not a regular file, or not JSON.
    Opaque,
}

/// The blob at `path` as JSON, if it is a regular file of at most
/// [`MAX_DOCUMENT_BYTES`] holding JSON.
fn read_document(path: &Path) -> Result<Document> {
    let Some((file, meta)) = open_regular(path)? else {
        return Ok(match std::fs::symlink_metadata(path) {
            Ok(_) => Document::Opaque,
            Err(_) => Document::Absent,
        });
    };
    if meta.len() > MAX_DOCUMENT_BYTES {
        return Ok(Document::Opaque);
    }
    let mut content = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_DOCUMENT_BYTES)
        .read_to_end(&mut content)
        .map_err(|e| Error::io_at("reading", path, e))?;
    Ok(serde_json::from_slice(&content).map_or(Document::Opaque, Document::Json))
}

/// The images `store` records under a name, in `index.json` order.
pub(crate) async fn list(store: Arc<Store>) -> Result<Vec<StoredImage>> {
    blocking(move |stop| {
        let mut images = Vec::new();
        for (reference, descriptor) in store.entries()? {
            let digest = descriptor.digest()?;
            let mut reached = Reached::default();
            reached.walk(&store, vec![(digest.clone(), true)], stop)?;
            let size = reached
                .blobs
                .iter()
                .filter_map(|blob| std::fs::symlink_metadata(store.blob_path(blob)).ok())
                .filter(Metadata::is_file)
                .map(|meta| meta.len())
                .sum();
            images.push(StoredImage {
                reference,
                digest,
                media_type: descriptor.media_type,
                size,
            });
        }
        Ok(images)
    })
    .await
}

/// Removes the store's blobs, and the layer tars under `dst`, that no
/// entry of `index.json` reaches, plus temp files their writers left when
/// they died. What is reached is worked out without the store's lock;
/// each batch of deletions takes it and first checks that `index.json`
/// (and every document found absent) is as it was, else starts over, so a
/// pull that records an image meanwhile never loses a file. Content being
/// written is in temp files its writer holds, which stay.
pub(crate) async fn prune(store: Arc<Store>, dst: Option<PathBuf>) -> Result<Pruned> {
    let mut pruned = {
        let (store, dst) = (store.clone(), dst.clone());
        blocking(move |stop| remove_dead_temps(&store, dst.as_deref(), stop)).await?
    };
    let mut round = 0;
    'roots: loop {
        round += 1;
        let exclusive = round > OPTIMISTIC_ROUNDS;
        let held = if exclusive {
            Some(store.lock().await?)
        } else {
            None
        };
        let (snapshot, reached, mut candidates, mut held) = {
            let (store, dst) = (store.clone(), dst.clone());
            blocking(move |stop| {
                let snapshot = store.index_bytes()?;
                let reached = Reached::of_roots(&store, &store.roots(&snapshot)?, stop)?;
                let candidates = unreached(&store, dst.as_deref(), &reached, stop)?;
                Ok((Arc::new(snapshot), Arc::new(reached), candidates, held))
            })
            .await?
        };
        while !candidates.is_empty() {
            let lock = match held.take() {
                Some(lock) => lock,
                None => store.lock().await?,
            };
            let (store, snapshot, reached) = (store.clone(), snapshot.clone(), reached.clone());
            let slice = (!exclusive).then_some(DELETE_SLICE);
            let batch = blocking(move |stop| {
                delete_batch(&lock, &store, &snapshot, &reached, candidates, slice, stop)
            })
            .await?;
            let Some((removed, rest)) = batch else {
                continue 'roots;
            };
            pruned.add((removed.files, removed.bytes));
            candidates = rest;
        }
        return Ok(pruned);
    }
}

/// Deletes `candidates` from the end, holding the store's lock, for up to
/// `slice`; returns what went and what is left, or `None` (nothing
/// deleted) if what the walk saw changed since: `index.json` differs from
/// `snapshot`, or a document it found absent is there now.
fn delete_batch(
    _lock: &StoreLock,
    store: &Store,
    snapshot: &[u8],
    reached: &Reached,
    mut candidates: Vec<PathBuf>,
    slice: Option<Duration>,
    stop: &Stop,
) -> Result<Option<(Pruned, Vec<PathBuf>)>> {
    if store.index_bytes()? != snapshot || reached.absent_appeared(store) {
        return Ok(None);
    }
    let started = Instant::now();
    let mut removed = Pruned::default();
    while let Some(path) = candidates.pop() {
        stop.check("pruning")?;
        if let Some(size) = remove_regular(&path)? {
            removed.add((1, size));
        }
        if slice.is_some_and(|slice| started.elapsed() >= slice) {
            break;
        }
    }
    Ok(Some((removed, candidates)))
}

/// Temp files of dead writers in the store and `dst`; each live writer
/// holds its own temp file's lock, so no store lock is needed.
fn remove_dead_temps(store: &Store, dst: Option<&Path>, stop: &Stop) -> Result<Pruned> {
    let mut pruned = Pruned::default();
    stop.check("pruning temp files")?;
    pruned.add(store.remove_stale_temps()?);
    let mut dirs = dst.map(algorithm_dirs).transpose()?.unwrap_or_default();
    dirs.extend(dst.map(index_dirs).transpose()?.unwrap_or_default());
    for dir in dirs {
        stop.check("pruning temp files")?;
        pruned.add(fs::remove_stale_temps(&dir)?);
    }
    Ok(pruned)
}

/// The algorithm directories of `dst/tar-index`, if it is a directory (a
/// symlink there is not followed: nothing under it is ours).
fn index_dirs(dst: &Path) -> Result<Vec<PathBuf>> {
    let indexes = dst.join(INDEX_DIR);
    match std::fs::symlink_metadata(&indexes) {
        Ok(meta) if meta.is_dir() => algorithm_dirs(&indexes),
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::io_at("reading the type of", &indexes, e))
        }
        _ => Ok(Vec::new()),
    }
}

/// The store blobs, `dst` layer tars and their indexes that `reached` does
/// not reach, and indexes whose tar is gone.
fn unreached(
    store: &Store,
    dst: Option<&Path>,
    reached: &Reached,
    stop: &Stop,
) -> Result<Vec<PathBuf>> {
    let mut blobs = Vec::new();
    for dir in store.blob_dirs()? {
        stop.check("listing the store")?;
        let files = content_files(&dir)?.into_iter();
        blobs.extend(
            files
                .filter(|(d, _)| !reached.blobs.contains(d))
                .map(|(_, p)| p),
        );
    }
    // Indexes go before their tars, so that none is left naming a removed
    // tar if the prune stops; one removed as a pull writes its tar again is
    // rebuilt when a view needs it.
    let mut candidates = Vec::new();
    if let Some(dst) = dst {
        for dir in index_dirs(dst)? {
            stop.check("listing tar indexes")?;
            for (diff_id, path) in content_files(&dir)? {
                let tar = crate::layer::tar_path(dst, &diff_id);
                let tar_there = std::fs::symlink_metadata(tar).is_ok_and(|m| m.is_file());
                if !tar_there || !reached.diff_ids.contains(&diff_id) {
                    candidates.push(path);
                }
            }
        }
    }
    for dir in dst.map(algorithm_dirs).transpose()?.unwrap_or_default() {
        stop.check("listing layer tars")?;
        let files = content_files(&dir)?.into_iter();
        candidates.extend(
            files
                .filter(|(d, _)| !reached.diff_ids.contains(d))
                .map(|(_, p)| p),
        );
    }
    // Deleted from the end, in name order like the listing, every index
    // and layer tar before any store blob: a pull that records its image between two
    // slices of deletion (see `delete_batch`) then finds a tar missing
    // wherever its layer blob went, and extracts it again, which brings the
    // blob back. Blobs first, a tar could stay while its blob went.
    candidates.extend(blobs);
    candidates.reverse();
    Ok(candidates)
}

/// Bytes and files of the store's blobs and of `dst`'s layer tars.
pub(crate) async fn disk_usage(store: Arc<Store>, dst: Option<PathBuf>) -> Result<DiskUsage> {
    blocking(move |stop| {
        let mut usage = DiskUsage::default();
        for dir in store.blob_dirs()? {
            for (_, path) in content_files(&dir)? {
                stop.check("measuring the store")?;
                usage.store_files += 1;
                usage.store_bytes += file_size(&path)?;
            }
        }
        for dir in dst
            .as_deref()
            .map(algorithm_dirs)
            .transpose()?
            .unwrap_or_default()
        {
            for (_, path) in content_files(&dir)? {
                stop.check("measuring layer tars")?;
                usage.dst_files += 1;
                usage.dst_bytes += file_size(&path)?;
            }
        }
        for dir in dst
            .as_deref()
            .map(index_dirs)
            .transpose()?
            .unwrap_or_default()
        {
            for (_, path) in content_files(&dir)? {
                stop.check("measuring tar indexes")?;
                usage.index_files += 1;
                usage.index_bytes += file_size(&path)?;
            }
        }
        Ok(usage)
    })
    .await
}

/// Re-hashes every store blob and every layer tar under `dst` against its
/// name, and re-checks every tar index (checksum, format, diff_id), and
/// with `remove_corrupt` deletes the ones that do not match, so that the
/// next pull fetches them again (a view rebuilds an index). Needs no lock: a corrupt file is
/// removed only if it is still the file that was hashed.
pub(crate) async fn verify(
    store: Arc<Store>,
    dst: Option<PathBuf>,
    remove_corrupt: bool,
) -> Result<Verified> {
    blocking(move |stop| {
        let mut dirs = store.blob_dirs()?;
        dirs.extend(
            dst.as_deref()
                .map(algorithm_dirs)
                .transpose()?
                .unwrap_or_default(),
        );
        let mut verified = Verified::default();
        for dir in dirs {
            for (digest, path) in content_files(&dir)? {
                stop.check("verifying")?;
                let Some((file, meta)) = open_regular(&path)? else {
                    continue;
                };
                verified.checked += 1;
                if hash_file(&digest, file, &path, stop)? == digest {
                    continue;
                }
                if remove_corrupt {
                    remove_if_same(&path, &meta)?;
                }
                verified.corrupt.push(path);
            }
        }
        let index_dirs = dst.as_deref().map(index_dirs).transpose()?;
        for dir in index_dirs.unwrap_or_default() {
            for (diff_id, path) in content_files(&dir)? {
                stop.check("verifying")?;
                let Some((mut file, meta)) = open_regular(&path)? else {
                    continue;
                };
                verified.indexes_checked += 1;
                let mut bytes = Vec::with_capacity(meta.len() as usize);
                file.read_to_end(&mut bytes)
                    .map_err(|e| Error::io_at("reading", &path, e))?;
                if TarIndex::from_bytes(bytes, &diff_id).is_ok() {
                    continue;
                }
                if remove_corrupt {
                    remove_if_same(&path, &meta)?;
                }
                verified.corrupt_indexes.push(path);
            }
        }
        Ok(verified)
    })
    .await
}

/// Whether the store's blob `digest` is corrupt, after a read of it failed
/// to verify: re-hashed, and removed if it does not match (then `true`,
/// as when it is gone or not a regular file), so that it can be fetched
/// again. `false` if it is intact: the fault was elsewhere.
pub(crate) async fn remove_if_corrupt(store: Arc<Store>, digest: Digest) -> Result<bool> {
    blocking(move |stop| {
        let path = store.blob_path(&digest);
        let Some((file, meta)) = open_regular(&path)? else {
            return Ok(true);
        };
        if hash_file(&digest, file, &path, stop)? == digest {
            return Ok(false);
        }
        remove_if_same(&path, &meta)?;
        Ok(true)
    })
    .await
}

/// The regular files of `dir` (an algorithm directory) named by a valid
/// digest; anything else there is not ours and left alone.
fn content_files(dir: &Path) -> Result<Vec<(Digest, PathBuf)>> {
    let algorithm = dir.file_name().unwrap_or_default().to_string_lossy();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io_at("listing", dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io_at("listing", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // The entry's own type: a symlink is not followed.
        if fs::is_temp(&name) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Ok(digest) = Digest::parse(&format!("{algorithm}:{name}")) {
            files.push((digest, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// `path` opened for reading with its metadata, if it is a regular file;
/// `None` if it is missing or anything else. It is neither followed if a
/// symlink (`O_NOFOLLOW`) nor waited on if a FIFO (`O_NONBLOCK`, which
/// regular files ignore), and devices are not opened at all.
fn open_regular(path: &Path) -> Result<Option<(File, Metadata)>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(Error::io_at("reading the type of", path, e))
        }
        _ => return Ok(None),
    }
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        // Replaced since: gone, a symlink (ELOOP) or a socket (ENXIO).
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(Error::io_at("opening", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io_at("reading the type of", path, e))?;
    Ok(meta.is_file().then_some((file, meta)))
}

/// The digest of `file`'s content, with `digest`'s algorithm; stops
/// between chunks once the call was dropped.
fn hash_file(digest: &Digest, mut file: File, path: &Path, stop: &Stop) -> Result<Digest> {
    let mut hasher = digest.hasher();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        stop.check("hashing")?;
        match file.read(&mut buf) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io_at("reading", path, e)),
        }
    }
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::symlink_metadata(path)
        .map_err(|e| Error::io_at("reading the size of", path, e))?
        .len())
}

/// Removes `path` if it is a regular file; its size, or `None` if it was
/// gone or had become something else meanwhile.
fn remove_regular(path: &Path) -> Result<Option<u64>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => meta,
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(Error::io_at("reading the size of", path, e))
        }
        _ => return Ok(None),
    };
    Ok(remove(path)?.then_some(meta.len()))
}

/// Removes `path` if it is still the file `meta` describes (not one a
/// writer renamed into its place since).
fn remove_if_same(path: &Path, meta: &Metadata) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => remove(path).map(drop),
        _ => Ok(()),
    }
}

/// Removes `path`; `false` if it was gone already.
fn remove(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io_at("removing", path, e)),
    }
}
