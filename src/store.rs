//! The local store: a plain OCI image layout (`oci-layout`, `index.json`,
//! `blobs/<alg>/<hex>`) that skopeo, umoci and oras read unchanged.
//! `index.json` is the tag table: each image the cache keeps is an entry
//! whose `org.opencontainers.image.ref.name` annotation is its normalized
//! reference. Blobs are content-addressed and verified when read back.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fs::{self, PendingFile, CONTENT_MODE, MUTABLE_MODE};
use crate::manifest::{Descriptor, OCI_INDEX};

/// The annotation that names an image in `index.json`.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout on disk.
pub(crate) struct Store {
    root: PathBuf,
    // Serializes read-modify-write cycles of index.json within this process.
    index_lock: Mutex<()>,
}

impl Store {
    /// Opens the layout at `root`, creating it (and `root`) if missing.
    pub(crate) fn open(root: &Path) -> Result<Store> {
        fs::create_dir_all(&root.join("blobs"))?;
        let layout = root.join("oci-layout");
        if !layout.exists() {
            fs::write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#, MUTABLE_MODE)?;
        }
        let store = Store {
            root: root.to_owned(),
            index_lock: Mutex::new(()),
        };
        if !store.index_path().exists() {
            store.write_index(
                &json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] }),
            )?;
        }
        Ok(store)
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
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
            Error::InvalidContent(format!(
                "{}: entry for {name}: {e}",
                self.index_path().display()
            ))
        })?;
        Ok(Some(descriptor))
    }

    /// The content of blob `digest`, verified, or `None` if the store lacks it.
    pub(crate) fn read_blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        let path = self.blob_path(digest);
        let content = match std::fs::read(&path) {
            Ok(content) => content,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading", &path, e)),
        };
        digest.verify(&content, &format!("store blob {}", path.display()))?;
        Ok(Some(content))
    }

    /// The blob `digest` opened for reading, or `None` if the store lacks it.
    /// The caller verifies what it reads.
    pub(crate) fn open_blob(&self, digest: &Digest) -> Result<Option<File>> {
        fs::open_if_exists(&self.blob_path(digest))
    }

    /// Stores `content`, which the caller has verified to be `digest`.
    pub(crate) fn write_blob(&self, digest: &Digest, content: &[u8]) -> Result<()> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        fs::create_dir_all(path.parent().expect("blob paths have a parent"))?;
        fs::write_atomic(&path, content, CONTENT_MODE)
    }

    /// Starts writing blob `digest`; the caller commits it once verified.
    pub(crate) fn ingest(&self, digest: &Digest) -> Result<PendingFile> {
        let path = self.blob_path(digest);
        fs::create_dir_all(path.parent().expect("blob paths have a parent"))?;
        PendingFile::create(path, CONTENT_MODE)
    }

    /// Records `descriptor` in `index.json` under `name`, replacing any entry
    /// of that name and keeping every other entry exactly as it was.
    pub(crate) fn tag(&self, name: &str, descriptor: &Descriptor) -> Result<()> {
        let _guard = self
            .index_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut index = self.read_index()?;
        let mut entry = serde_json::to_value(descriptor).expect("descriptors serialize");
        entry["annotations"][REF_NAME] = Value::String(name.to_owned());
        let Some(manifests) = index.get_mut("manifests").and_then(Value::as_array_mut) else {
            return Err(self.malformed_index("no manifests array"));
        };
        manifests.retain(|e| ref_name(e) != Some(name));
        manifests.push(entry);
        self.write_index(&index)
    }

    fn read_index(&self) -> Result<Value> {
        let path = self.index_path();
        let content = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
        serde_json::from_slice(&content).map_err(|e| self.malformed_index(&e.to_string()))
    }

    fn write_index(&self, index: &Value) -> Result<()> {
        let content = serde_json::to_vec(index).expect("JSON values serialize");
        fs::write_atomic(&self.index_path(), &content, MUTABLE_MODE)
    }

    fn malformed_index(&self, why: &str) -> Error {
        Error::InvalidContent(format!("{}: {why}", self.index_path().display()))
    }
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
        let store = Store::open(dir.path()).unwrap();
        let foreign = r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:ab","size":1,"annotations":{"org.opencontainers.image.ref.name":"other"},"vendor":{"k":1}}]}"#;
        std::fs::write(dir.path().join("index.json"), foreign).unwrap();

        store.tag("a:1", &descriptor(b"one")).unwrap();
        store.tag("a:1", &descriptor(b"two")).unwrap();
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
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::sha256_of(b"content");
        assert_eq!(store.read_blob(&digest).unwrap(), None);
        store.write_blob(&digest, b"content").unwrap();
        assert_eq!(store.read_blob(&digest).unwrap().unwrap(), b"content");
        let path = store.blob_path(&digest);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"tampered").unwrap();
        assert!(matches!(
            store.read_blob(&digest),
            Err(Error::DigestMismatch(_))
        ));
    }
}
