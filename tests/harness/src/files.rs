//! Files a pull leaves behind: where the store and `dst` keep a digest
//! ([`blob_path`], [`tar_path`]), every file under a tree
//! ([`files_under`]), and byte comparison that reports digests
//! ([`assert_bytes`]).
//!
//! ```no_run
//! use harness::{files_under, tar_path};
//! # let (dst, diff_id) = (std::path::Path::new("/tmp/dst"), "sha256:00");
//! let tar = tar_path(dst, diff_id);
//! assert_eq!(files_under(dst), vec![tar]);
//! ```

use std::path::{Path, PathBuf};

use crate::fixtures::sha256;

/// Every non-directory entry under `dir` (hidden ones included), sorted;
/// empty if `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("reading a directory entry");
            let file_type = entry.file_type().expect("file type");
            if file_type.is_dir() {
                pending.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Byte equality that reports sizes and digests instead of dumping bytes.
#[track_caller]
pub fn assert_bytes(actual: &[u8], expected: &[u8], what: &str) {
    assert!(
        actual == expected,
        "{what}: got {} bytes ({}), expected {} bytes ({})",
        actual.len(),
        sha256(actual),
        expected.len(),
        sha256(expected)
    );
}

/// Where a store keeps the blob `digest` (`sha256:<hex>`):
/// `<store>/blobs/sha256/<hex>`.
pub fn blob_path(store: &Path, digest: &str) -> PathBuf {
    store.join("blobs/sha256").join(hex_of(digest))
}

/// Where a pull into `dst` puts the tar of `diff_id` (`sha256:<hex>`):
/// `<dst>/sha256/<hex>`.
pub fn tar_path(dst: &Path, diff_id: &str) -> PathBuf {
    dst.join("sha256").join(hex_of(diff_id))
}

/// The layer tars of `diff_ids` under `dst` with their indexes (written
/// with every tar that parses), sorted, without duplicates: what `dst`
/// holds after a rootfs of layers that are all tars.
pub fn layer_files<'a>(dst: &Path, diff_ids: impl IntoIterator<Item = &'a str>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = diff_ids
        .into_iter()
        .flat_map(|d| [tar_path(dst, d), index_path(dst, d)])
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Where the index of the layer tar of `diff_id` lives under `dst`.
pub fn index_path(dst: &Path, diff_id: &str) -> PathBuf {
    dst.join("tar-index").join("sha256").join(hex_of(diff_id))
}

fn hex_of(digest: &str) -> &str {
    digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("{digest:?} is not a sha256 digest"))
}
