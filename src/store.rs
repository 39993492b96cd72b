//! The local store: a plain OCI image layout (`oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`) that skopeo, umoci and oras read unchanged.
//! `index.json` is the tag table: each image the cache keeps is an entry
//! whose `org.opencontainers.image.ref.name` annotation is its normalized
//! reference. Blobs are content-addressed and verified when read back.
//! Changes to `index.json` hold an advisory lock on `.oci-cache.lock` and
//! merge into what is on disk, so processes sharing a store never lose
//! each other's entries; readers see the old or the new file, never a mix.
//! The lock is waited for asynchronously, off the runtime's threads, so a
//! deadline or cancel ends the wait. Every entry of `index.json`, named or
//! not, is a root: other tools' images in the layout count as much as ours.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::digest::{hex_length, Digest};
use crate::error::{Error, Result};
use crate::fs::{self, Dir, PendingFile, Reserve, CONTENT_MODE, MUTABLE_MODE};
use crate::manifest::{Descriptor, OCI_INDEX};

/// The annotation that names an image in `index.json`.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The file whose advisory lock guards changes to the layout.
const LOCK_FILE: &str = ".oci-cache.lock";

/// The longest pause between two tries of a busy lock file.
const LOCK_POLL_MAX: Duration = Duration::from_millis(50);

/// An OCI image layout on disk.
pub(crate) struct Store {
    root: PathBuf,
    // The root opened once: everything below is reached through it without
    // following links.
    dir: Dir,
    // What blob writes leave free.
    reserve: Reserve,
    // flock is per open file, so tasks of this process take turns here
    // before they take the file lock.
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// A blob written and fsynced ahead of [`Store::record`], which names it
/// (see [`Store::stage_blob`]); dropped unrecorded, its temp file goes.
pub(crate) struct Staged {
    digest: Digest,
    file: PendingFile,
}

/// The layout's lock, held (against every task and process sharing the
/// store) until dropped. Functions that need it take a reference to it.
pub(crate) struct StoreLock {
    _across_processes: File,
    _in_process: tokio::sync::OwnedMutexGuard<()>,
}

impl Store {
    /// Opens the layout at `root`, creating it (and `root`) if missing, and
    /// removes temp files that processes killed mid-write left behind. Blob
    /// writes keep `reserve` free.
    pub(crate) fn open(root: &Path, reserve: Reserve) -> Result<Store> {
        let dir = Dir::create(root)?;
        dir.create_sub("blobs")?;
        let store = Store {
            root: root.to_owned(),
            dir,
            reserve,
            lock: Arc::default(),
        };
        let missing = |name| Ok::<_, Error>(store.dir.open_regular(name)?.is_none());
        // Only a new layout needs the lock (waited for on this thread:
        // opening is synchronous), so opening an existing one never waits.
        if missing("oci-layout")? || missing("index.json")? {
            let _lock = fs::lock_file(&store.dir, LOCK_FILE)?;
            // Both files of a new layout at once: one fsync of the root for
            // the two (either may appear alone after a crash: the next
            // open writes the other).
            let empty_index = index_content(&json!({
                "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []
            }));
            let mut files: Vec<(&str, &[u8])> = Vec::new();
            if missing("oci-layout")? {
                files.push(("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#));
            }
            if missing("index.json")? {
                files.push(("index.json", &empty_index));
            }
            fs::write_atomic_all(&store.dir, &files, MUTABLE_MODE, Reserve::OFF)?;
        }
        // Each writer holds its own temp file's lock: no layout lock needed.
        store.remove_stale_temps()?;
        Ok(store)
    }

    /// Waits for the layout's lock, against every task and process that
    /// shares the store. The wait is asynchronous (a busy lock file is
    /// tried again after short sleeps), so it never holds a runtime
    /// thread, and dropping the future (a deadline, a cancel) ends it.
    pub(crate) async fn lock(&self) -> Result<StoreLock> {
        let in_process = self.lock.clone().lock_owned().await;
        let file = fs::open_lock_file(&self.dir, LOCK_FILE)?;
        let path = self.root.join(LOCK_FILE);
        let mut pause = Duration::from_millis(1);
        while !fs::try_lock(&file, &path)? {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LOCK_POLL_MAX);
        }
        Ok(StoreLock {
            _across_processes: file,
            _in_process: in_process,
        })
    }

    /// Removes temp files no live writer holds, in the layout's root and
    /// blob directories. Returns how many files and bytes went.
    pub(crate) fn remove_stale_temps(&self) -> Result<(u64, u64)> {
        let mut removed = fs::remove_stale_temps_in(&self.dir)?;
        let blobs = self.dir.create_sub("blobs")?;
        for dir in algorithm_dirs(&self.root.join("blobs"))? {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            let Some(dir) = blobs.sub(&name.unwrap_or_default())? else {
                continue;
            };
            let (files, bytes) = fs::remove_stale_temps_in(&dir)?;
            removed = (removed.0 + files, removed.1 + bytes);
        }
        Ok(removed)
    }

    /// `blobs/<alg>` for every algorithm present. A link in place of
    /// `blobs` is an error naming it, never walked (nor are links in place
    /// of `blobs/<alg>`: [`algorithm_dirs`] lists directories only).
    pub(crate) fn blob_dirs(&self) -> Result<Vec<PathBuf>> {
        self.dir.create_sub("blobs")?;
        algorithm_dirs(&self.root.join("blobs"))
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// `blobs/<alg>`, never through a link; `None` if missing and not `create`.
    fn blob_dir(&self, algorithm: &str, create: bool) -> Result<Option<Dir>> {
        let blobs = self.dir.create_sub("blobs")?;
        if create {
            return blobs.create_sub(algorithm).map(Some);
        }
        blobs.sub(algorithm)
    }

    /// Where the blob `digest` lives (whether or not it is there).
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    /// The descriptor `index.json` records for `name`, if any.
    pub(crate) fn lookup(&self, name: &str) -> Result<Option<Descriptor>> {
        let index = self.read_index()?;
        let Some(entry) = entries(&index).iter().find(|e| ref_name(e) == Some(name)) else {
            return Ok(None);
        };
        let descriptor = serde_json::from_value(entry.clone()).map_err(|e| {
            Error::invalid_content(format!(
                "{}: entry for {name}: {e}",
                self.index_path().display()
            ))
        })?;
        Ok(Some(descriptor))
    }

    /// The content of blob `digest`, verified, or `None` if the store lacks it.
    /// Anything but a regular file there counts as missing.
    pub(crate) fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let path = self.blob_path(digest);
        let Some(dir) = self.blob_dir(digest.algorithm(), false)? else {
            return Ok(None);
        };
        let Some(content) = dir.read_regular(digest.hex())? else {
            return Ok(None);
        };
        digest.verify(&content, &format!("store blob {}", path.display()))?;
        Ok(Some(content))
    }

    /// The blob `digest` opened for reading, or `None` if the store lacks it.
    /// The caller verifies what it reads. Anything but a regular file there
    /// counts as missing.
    pub(crate) fn open_blob(&self, digest: &Digest) -> Result<Option<File>> {
        match self.blob_dir(digest.algorithm(), false)? {
            Some(dir) => dir.open_regular(digest.hex()),
            None => Ok(None),
        }
    }

    /// Removes blob `digest` (found corrupt), if it is there.
    pub(crate) fn remove_blob(&self, digest: &Digest) -> Result<()> {
        if let Some(dir) = self.blob_dir(digest.algorithm(), false)? {
            dir.remove(digest.hex())?;
        }
        Ok(())
    }

    /// Starts storing blob `digest` (verified by the caller) ahead of
    /// [`record`](Self::record), without the lock: its content is written
    /// and fsynced now, while the caller waits for the rest of the image
    /// (an image's manifest while its config downloads), and named only by
    /// `record`, under the lock. `None` if the store has it already.
    /// Dropped unrecorded, its temp file goes.
    pub(crate) fn stage_blob(&self, digest: &Digest, content: &[u8]) -> Result<Option<Staged>> {
        let dir = self.blob_dir(digest.algorithm(), true)?.expect("created");
        if dir.open_regular(digest.hex())?.is_some() {
            return Ok(None);
        }
        let mut file = fs::write_pending(&dir, digest.hex(), content, CONTENT_MODE, self.reserve)?;
        file.sync()?;
        Ok(Some(Staged {
            digest: digest.clone(),
            file,
        }))
    }

    /// Stores `blobs` (verified by the caller) and the `staged` ones that
    /// the store lacks, with one directory fsync per algorithm directory
    /// rather than per blob. A link or FIFO in a blob's place is replaced.
    /// `alongside` (see [`fs::commit_all`]) is fsynced with the first of them.
    pub(crate) fn write_blobs(
        &self,
        blobs: &[(Digest, Vec<u8>)],
        mut staged: Vec<Staged>,
        mut alongside: Option<&mut PendingFile>,
    ) -> Result<()> {
        let mut algorithms: Vec<String> = blobs
            .iter()
            .map(|(d, _)| d)
            .chain(staged.iter().map(|s| &s.digest))
            .map(|d| d.algorithm().to_owned())
            .collect();
        algorithms.sort_unstable();
        algorithms.dedup();
        for algorithm in algorithms {
            let dir = self.blob_dir(&algorithm, true)?.expect("created");
            let mut names: Vec<String> = Vec::new();
            let mut files = Vec::new();
            // Those staged first (already synced), then the rest; a blob
            // that appeared meanwhile is kept and its staged copy dropped.
            let (mine, others) = staged
                .into_iter()
                .partition(|s| s.digest.algorithm() == algorithm);
            staged = others;
            // Whether blob `hex` is still to be stored: neither taken in
            // this call already nor in the store.
            let mut wanted = |hex: &str| -> Result<bool> {
                if names.iter().any(|n| n == hex) || dir.open_regular(hex)?.is_some() {
                    return Ok(false);
                }
                names.push(hex.to_owned());
                Ok(true)
            };
            for Staged { digest, file } in mine {
                if wanted(digest.hex())? {
                    files.push(file);
                }
            }
            for (digest, content) in blobs.iter().filter(|(d, _)| d.algorithm() == algorithm) {
                if wanted(digest.hex())? {
                    files.push(fs::write_pending(
                        &dir,
                        digest.hex(),
                        content,
                        CONTENT_MODE,
                        self.reserve,
                    )?);
                }
            }
            if !files.is_empty() {
                fs::commit_all(&dir, files, alongside.take())?;
            }
        }
        Ok(())
    }

    /// Starts writing blob `digest`; the caller commits it once verified.
    pub(crate) fn ingest(&self, digest: &Digest) -> Result<PendingFile> {
        let dir = self.blob_dir(digest.algorithm(), true)?.expect("created");
        PendingFile::create(&dir, digest.hex(), CONTENT_MODE, self.reserve)
    }

    /// Stores `blobs` (verified by the caller) and the `staged` ones, then records `top` in
    /// `index.json` under `name` unless it is recorded already: all under
    /// the lock, so a concurrent prune never sees the blobs unreferenced.
    pub(crate) fn record(
        &self,
        _lock: &StoreLock,
        name: &str,
        blobs: &[(Digest, Vec<u8>)],
        staged: Vec<Staged>,
        top: &Descriptor,
    ) -> Result<()> {
        // The new index.json is written first and fsynced with the blobs,
        // but named only once they are committed and their directory
        // fsynced: one fsync less to wait for.
        let recorded = self.lookup(name)?.map(|d| d.digest);
        let mut index = if recorded.as_deref() != Some(top.digest.as_str()) {
            Some(self.tagged(name, top)?)
        } else {
            None
        };
        self.write_blobs(blobs, staged, index.as_mut())?;
        match index {
            Some(index) => index.commit(),
            None => Ok(()),
        }
    }

    /// Every entry of `index.json` that names an image, as (name,
    /// descriptor). Entries this library cannot read as a descriptor with
    /// a valid digest (other tools') are skipped, not an error.
    pub(crate) fn entries(&self) -> Result<Vec<(String, Descriptor)>> {
        let index = self.read_index()?;
        Ok(entries(&index)
            .iter()
            .filter_map(|entry| {
                let name = ref_name(entry)?.to_owned();
                let descriptor: Descriptor = serde_json::from_value(entry.clone()).ok()?;
                descriptor.digest().ok()?;
                Some((name, descriptor))
            })
            .collect())
    }

    /// The bytes of `index.json` now: what [`roots`](Self::roots) reads, and what tells
    /// a later look whether it changed meanwhile.
    /// A FIFO there is refused, not waited on.
    pub(crate) fn index_bytes(&self) -> Result<Vec<u8>> {
        self.dir
            .read_regular("index.json")?
            .ok_or_else(|| self.malformed_index("missing or not a regular file"))
    }

    /// Drops the entry for `name` from `index.json`; its blobs stay until
    /// a prune. `NotFound` if no entry has that name.
    pub(crate) fn remove(&self, _lock: &StoreLock, name: &str) -> Result<()> {
        let mut index = self.read_index()?;
        let Some(manifests) = index.get_mut("manifests").and_then(Value::as_array_mut) else {
            return Err(self.malformed_index("no manifests array"));
        };
        let before = manifests.len();
        manifests.retain(|e| ref_name(e) != Some(name));
        if manifests.len() == before {
            return Err(Error::not_found(format!(
                "{name} is not recorded in {}",
                self.index_path().display()
            )));
        }
        self.write_index(&index)
    }

    /// Every entry of `index_bytes` (see [`index_bytes`](Self::index_bytes)),
    /// named or not, whatever its media type: the roots of a prune. A
    /// malformed `index.json` is an error, since what it keeps is unknown.
    pub(crate) fn roots(&self, index_bytes: &[u8]) -> Result<Vec<Value>> {
        let index: Value = serde_json::from_slice(index_bytes)
            .map_err(|e| self.malformed_index(&e.to_string()))?;
        match index.get("manifests") {
            Some(Value::Array(manifests)) => Ok(manifests.clone()),
            _ => Err(self.malformed_index("no manifests array")),
        }
    }

    /// `index.json` with `descriptor` recorded under `name`, replacing any
    /// entry of that name and keeping every other entry exactly as it was:
    /// written, for the caller, who holds the lock, to commit.
    fn tagged(&self, name: &str, descriptor: &Descriptor) -> Result<PendingFile> {
        let mut index = self.read_index()?;
        let mut entry = serde_json::to_value(descriptor).expect("descriptors serialize");
        entry["annotations"][REF_NAME] = Value::String(name.to_owned());
        let Some(manifests) = index.get_mut("manifests").and_then(Value::as_array_mut) else {
            return Err(self.malformed_index("no manifests array"));
        };
        manifests.retain(|e| ref_name(e) != Some(name));
        manifests.push(entry);
        fs::write_pending(
            &self.dir,
            "index.json",
            &index_content(&index),
            MUTABLE_MODE,
            Reserve::OFF,
        )
    }

    fn read_index(&self) -> Result<Value> {
        let content = self.index_bytes()?;
        serde_json::from_slice(&content).map_err(|e| self.malformed_index(&e.to_string()))
    }

    fn write_index(&self, index: &Value) -> Result<()> {
        fs::write_atomic(
            &self.dir,
            "index.json",
            &index_content(index),
            MUTABLE_MODE,
            Reserve::OFF,
        )
    }

    fn malformed_index(&self, why: &str) -> Error {
        Error::invalid_content(format!("{}: {why}", self.index_path().display()))
    }
}

/// The bytes of `index.json` holding `index`.
fn index_content(index: &Value) -> Vec<u8> {
    serde_json::to_vec(index).expect("JSON values serialize")
}

/// `dir/<alg>` for every digest algorithm directory under `dir`: the
/// layout of `blobs` and of a `dst`.
pub(crate) fn algorithm_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io_at("listing", dir, e))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io_at("listing", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if hex_length(&name).is_some() && entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn entries(index: &Value) -> &[Value] {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn ref_name(entry: &Value) -> Option<&str> {
    entry.get("annotations")?.get(REF_NAME)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn descriptor(content: &[u8]) -> Descriptor {
        Descriptor {
            media_type: crate::manifest::OCI_MANIFEST.into(),
            digest: Digest::sha256_of(content).to_string(),
            size: content.len() as u64,
            ..Descriptor::default()
        }
    }

    #[test]
    fn tags_replace_their_own_entry_and_keep_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Reserve::default()).unwrap();
        let foreign = r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:ab","size":1,"annotations":{"org.opencontainers.image.ref.name":"other"},"vendor":{"k":1}}]}"#;
        std::fs::write(dir.path().join("index.json"), foreign).unwrap();

        store
            .tagged("a:1", &descriptor(b"one"))
            .unwrap()
            .commit()
            .unwrap();
        store
            .tagged("a:1", &descriptor(b"two"))
            .unwrap()
            .commit()
            .unwrap();
        let found = store.lookup("a:1").unwrap().unwrap();
        assert_eq!(found.digest, Digest::sha256_of(b"two").to_string());

        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        let entries = entries(&index);
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0]["vendor"]["k"], 1,
            "unknown fields of other entries survive"
        );
        assert!(store.lookup("missing").unwrap().is_none());
    }

    #[test]
    fn read_blob_verifies_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Reserve::default()).unwrap();
        let digest = Digest::sha256_of(b"content");
        assert_eq!(store.read_blob(&digest).unwrap(), None);
        let other = Digest::sha256_of(b"other");
        let blobs = [
            (digest.clone(), b"content".to_vec()),
            (other.clone(), b"other".to_vec()),
            (digest.clone(), b"content".to_vec()),
        ];
        store.write_blobs(&blobs, Vec::new(), None).unwrap();
        assert_eq!(store.read_blob(&digest).unwrap().unwrap(), b"content");
        assert_eq!(store.read_blob(&other).unwrap().unwrap(), b"other");
        let mut names = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>();
        names.sort();
        let mut want = vec![digest.hex().to_owned(), other.hex().to_owned()];
        want.sort();
        assert_eq!(names, want, "each blob once, no temp file left");
        // Blobs already there are kept as they are, not written again.
        store.write_blobs(&blobs[..1], Vec::new(), None).unwrap();
        assert_eq!(store.read_blob(&digest).unwrap().unwrap(), b"content");

        // Staged blobs are named by write_blobs, and go when dropped.
        let third = Digest::sha256_of(b"third");
        let fourth = Digest::sha256_of(b"fourth");
        assert!(
            store.stage_blob(&digest, b"content").unwrap().is_none(),
            "stored already"
        );
        drop(store.stage_blob(&fourth, b"fourth").unwrap().unwrap());
        let staged = store.stage_blob(&third, b"third").unwrap().unwrap();
        store.write_blobs(&blobs[..1], vec![staged], None).unwrap();
        assert_eq!(store.read_blob(&third).unwrap().unwrap(), b"third");
        assert_eq!(store.read_blob(&fourth).unwrap(), None);
        let mut names = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>();
        names.sort();
        want.push(third.hex().to_owned());
        want.sort();
        assert_eq!(names, want, "no temp file left");
        let path = store.blob_path(&digest);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"tampered").unwrap();
        assert!(matches!(
            store.read_blob(&digest),
            Err(ref e) if e.kind() == ErrorKind::DigestMismatch
        ));
    }
}
