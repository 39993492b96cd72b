//! Cache management: what the store's references reach, and the upkeep
//! built on it: listing images, pruning blobs and layer tars nothing
//! reaches, measuring disk use, and re-hashing everything to find
//! corruption. Everything here runs on a blocking thread.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fs;
use crate::manifest::{self, Document};
use crate::store::{algorithm_dirs, Store};

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

/// Bytes and files under the store's blobs and the layer tars of a `dst`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub store_bytes: u64,
    pub store_files: u64,
    pub dst_bytes: u64,
    pub dst_files: u64,
}

/// What a verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Files re-hashed: store blobs and layer tars.
    pub checked: u64,
    /// Files whose content does not hash to their name; removed if asked.
    pub corrupt: Vec<PathBuf>,
}

/// The blobs and layer tars the store's references reach.
#[derive(Default)]
struct Reached {
    blobs: BTreeSet<Digest>,
    diff_ids: BTreeSet<Digest>,
}

impl Reached {
    /// Everything `top` reaches. Manifests and configs are read from the
    /// store (verified); an index's manifests the store lacks (platforms
    /// never pulled) reach nothing.
    fn walk(&mut self, store: &Store, top: Digest) -> Result<()> {
        let mut documents = vec![top];
        while let Some(digest) = documents.pop() {
            if !self.blobs.insert(digest.clone()) {
                continue;
            }
            let Some(bytes) = store.read_blob(&digest)? else {
                continue;
            };
            match manifest::parse(&bytes, &format!("store manifest {digest}"))?.0 {
                Document::Index { manifests } => {
                    for entry in manifests {
                        documents.push(entry.digest()?);
                    }
                }
                Document::Manifest { config, layers } => {
                    for layer in layers {
                        self.blobs.insert(layer.digest()?);
                    }
                    let config_digest = config.digest()?;
                    self.blobs.insert(config_digest.clone());
                    if let Some(config) = store.read_blob(&config_digest)? {
                        let what = format!("store config {config_digest}");
                        let summary = manifest::config_summary(&config, &what)?;
                        self.diff_ids.extend(summary.diff_ids);
                    }
                }
            }
        }
        Ok(())
    }

    fn of_store(store: &Store) -> Result<Reached> {
        let mut reached = Reached::default();
        for (_, descriptor) in store.entries()? {
            reached.walk(store, descriptor.digest()?)?;
        }
        Ok(reached)
    }
}

/// The images `store` records, in `index.json` order.
pub(crate) fn list(store: &Store) -> Result<Vec<StoredImage>> {
    let mut images = Vec::new();
    for (reference, descriptor) in store.entries()? {
        let digest = descriptor.digest()?;
        let mut reached = Reached::default();
        reached.walk(store, digest.clone())?;
        let mut size = 0;
        for blob in &reached.blobs {
            if let Ok(meta) = std::fs::metadata(store.blob_path(blob)) {
                size += meta.len();
            }
        }
        images.push(StoredImage {
            reference,
            digest,
            media_type: descriptor.media_type,
            size,
        });
    }
    Ok(images)
}

/// Removes the store's blobs, and the layer tars under `dst`, that no
/// recorded image reaches, plus temp files their writers left when they
/// died. Holds the store's lock throughout, so content a concurrent pull
/// is recording is reachable before this looks; content being written is
/// in temp files its writer holds, which stay.
pub(crate) fn prune(store: &Store, dst: Option<&Path>) -> Result<Pruned> {
    store.locked(|| {
        let reached = Reached::of_store(store)?;
        let mut pruned = Pruned::default();
        let mut count = |(files, bytes): (u64, u64)| {
            pruned.files += files;
            pruned.bytes += bytes;
        };
        count(store.remove_stale_temps()?);
        for dir in store.blob_dirs()? {
            count(remove_unreached(&dir, &reached.blobs)?);
        }
        if let Some(dst) = dst {
            for dir in algorithm_dirs(dst)? {
                count(fs::remove_stale_temps(&dir)?);
                count(remove_unreached(&dir, &reached.diff_ids)?);
            }
        }
        Ok(pruned)
    })
}

/// Bytes and files of the store's blobs and of `dst`'s layer tars.
pub(crate) fn disk_usage(store: &Store, dst: Option<&Path>) -> Result<DiskUsage> {
    let mut usage = DiskUsage::default();
    for dir in store.blob_dirs()? {
        for (_, path) in content_files(&dir)? {
            usage.store_files += 1;
            usage.store_bytes += file_size(&path)?;
        }
    }
    for dir in dst.map(algorithm_dirs).transpose()?.unwrap_or_default() {
        for (_, path) in content_files(&dir)? {
            usage.dst_files += 1;
            usage.dst_bytes += file_size(&path)?;
        }
    }
    Ok(usage)
}

/// Re-hashes every store blob and every layer tar under `dst` against its
/// name, and with `remove_corrupt` deletes the ones that do not match, so
/// that the next pull fetches them again.
pub(crate) fn verify(store: &Store, dst: Option<&Path>, remove_corrupt: bool) -> Result<Verified> {
    let mut dirs = store.blob_dirs()?;
    dirs.extend(dst.map(algorithm_dirs).transpose()?.unwrap_or_default());
    let mut verified = Verified::default();
    for dir in dirs {
        for (digest, path) in content_files(&dir)? {
            verified.checked += 1;
            if hash_file(&digest, &path)? == digest {
                continue;
            }
            if remove_corrupt {
                remove(&path)?;
            }
            verified.corrupt.push(path);
        }
    }
    Ok(verified)
}

/// The files of `dir` (an algorithm directory) named by a valid digest;
/// anything else there is not ours and left alone.
fn content_files(dir: &Path) -> Result<Vec<(Digest, PathBuf)>> {
    let algorithm = dir.file_name().unwrap_or_default().to_string_lossy();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
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

fn remove_unreached(dir: &Path, reached: &BTreeSet<Digest>) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for (digest, path) in content_files(dir)? {
        if !reached.contains(&digest) {
            bytes += file_size(&path)?;
            files += 1;
            remove(&path)?;
        }
    }
    Ok((files, bytes))
}

fn hash_file(digest: &Digest, path: &Path) -> Result<Digest> {
    let mut file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut hasher = digest.hasher();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading", path, e)),
        }
    }
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::symlink_metadata(path)
        .map_err(|e| Error::io("reading the size of", path, e))?
        .len())
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("removing", path, e)),
        _ => Ok(()),
    }
}
