//! Cache management: `oci_cache_list` and its `oci_image_list`,
//! `oci_cache_remove`, `oci_cache_prune`, `oci_cache_disk_usage`,
//! `oci_cache_disk_usage_report` and its `oci_disk_usage`, and
//! `oci_cache_verify` and its `oci_verify_report` (tar indexes included).
//! Each is a skin over the `ImageCache` method of the same name and needs a
//! cache with a store.

use std::ffi::{c_char, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::cache::oci_cache;
use super::options::oci_call_options;
use super::{
    arg_arc, boundary, c_string, free_box, getter, oci_error, oci_status, optional_str_arg, out,
    str_arg, to_boxed_mut_ptr, Castable, Outcome, OwnershipBox,
};
use crate::maintenance::{DiskUsage, StoredImage};

/// The images a store records, from `oci_cache_list`. Immutable: may be
/// read from any thread. Strings it returns live as long as the list.
pub struct oci_image_list {
    images: Vec<ListEntry>,
}

struct ListEntry {
    reference: CString,
    digest: CString,
    media_type: CString,
    size: i64,
}

/// What `oci_cache_verify` found. Immutable: may be read from any thread.
/// Strings it returns live as long as the report.
pub struct oci_verify_report {
    checked: u64,
    corrupt: Vec<CString>,
    indexes_checked: u64,
    corrupt_indexes: Vec<CString>,
}

impl Castable for oci_image_list {
    type Ownership = OwnershipBox;
}

impl Castable for oci_verify_report {
    type Ownership = OwnershipBox;
}

/// What `oci_cache_disk_usage_report` counted: bytes and files of the
/// store's blobs and of a `dst`'s layer tars and their indexes, from one
/// walk. Immutable: may be read from any thread.
pub struct oci_disk_usage {
    usage: DiskUsage,
}

impl Castable for oci_disk_usage {
    type Ownership = OwnershipBox;
}

impl ListEntry {
    fn new(image: &StoredImage) -> Outcome<ListEntry> {
        Ok(ListEntry {
            reference: c_string(image.reference.as_bytes(), "a recorded reference")?,
            digest: c_string(image.digest.as_str().as_bytes(), "a recorded digest")?,
            media_type: c_string(image.media_type.as_bytes(), "a recorded media type")?,
            size: i64::try_from(image.size).unwrap_or(i64::MAX),
        })
    }
}

/// `dst` as a path; NULL is `None`.
fn optional_dst<'a>(dst: *const c_char) -> Outcome<Option<&'a Path>> {
    Ok(optional_str_arg(dst, "dst")?.map(Path::new))
}

/// Stores in `*list_out` the images the cache's store records in its
/// `index.json` under a name (entries with an
/// `org.opencontainers.image.ref.name` annotation), in that order: the
/// normalized reference, the digest and media type of the manifest or index
/// recorded, and the bytes of the store's blobs each reaches (a blob shared
/// by images counts for each). Other entries (other tools') are skipped.
/// Takes no lock. Free the list with `oci_image_list_free`.
/// `OCI_E_INVALID_ARGUMENT` for a cache without a store.
#[no_mangle]
pub extern "C" fn oci_cache_list(
    cache: *const oci_cache,
    options: *const oci_call_options,
    list_out: *mut *mut oci_image_list,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache = arg_arc(cache, "cache")?;
        let list_out = out(list_out, "list_out")?;
        let images = cache.run(options, |cache| async move { cache.list().await })?;
        let images = images
            .iter()
            .map(ListEntry::new)
            .collect::<Outcome<Vec<_>>>()?;
        *list_out = to_boxed_mut_ptr(oci_image_list { images });
        Ok(())
    })
}

/// Reads entry `index` of `list` with `get`; NULL, out of range (or a
/// panic) gives `fallback`.
fn entry<T: Copy>(
    list: *const oci_image_list,
    index: usize,
    fallback: T,
    get: impl FnOnce(&ListEntry) -> T,
) -> T {
    getter(list, fallback, |l| l.images.get(index).map(get))
}

/// The number of images in `list`; 0 if `list` is NULL.
#[no_mangle]
pub extern "C" fn oci_image_list_count(list: *const oci_image_list) -> usize {
    getter(list, 0, |l| Some(l.images.len()))
}

/// The normalized reference image `index` is recorded under, e.g.
/// `"docker.io/library/alpine:3.20"`; NULL if `list` is NULL or `index`
/// out of range.
#[no_mangle]
pub extern "C" fn oci_image_list_reference(
    list: *const oci_image_list,
    index: usize,
) -> *const c_char {
    entry(list, index, std::ptr::null(), |e| e.reference.as_ptr())
}

/// The digest recorded for image `index`, `"sha256:<hex>"`: its manifest's,
/// or its index's for a multi-platform image; NULL if `list` is NULL or
/// `index` out of range.
#[no_mangle]
pub extern "C" fn oci_image_list_digest(
    list: *const oci_image_list,
    index: usize,
) -> *const c_char {
    entry(list, index, std::ptr::null(), |e| e.digest.as_ptr())
}

/// The media type of the manifest or index recorded for image `index`;
/// NULL if `list` is NULL or `index` out of range.
#[no_mangle]
pub extern "C" fn oci_image_list_media_type(
    list: *const oci_image_list,
    index: usize,
) -> *const c_char {
    entry(list, index, std::ptr::null(), |e| e.media_type.as_ptr())
}

/// The bytes of the store's blobs image `index` reaches (manifests, configs
/// and the layer blobs the store holds); -1 if `list` is NULL or `index`
/// out of range.
#[no_mangle]
pub extern "C" fn oci_image_list_size(list: *const oci_image_list, index: usize) -> i64 {
    entry(list, index, -1, |e| e.size)
}

/// Frees `list`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_image_list_free(list: *mut oci_image_list) {
    free_box(list)
}

/// Drops `reference` from the store's `index.json`. Its blobs, and its
/// layer tars in any `dst`, stay until `oci_cache_prune`. While another
/// thread or process holds the store's lock this waits, without holding a
/// runtime thread, until the options' deadline (`OCI_E_TIMEOUT`) or cancel
/// token (`OCI_E_CANCELED`) ends the wait; by default it waits as long as
/// it takes. `OCI_E_NOT_FOUND` if the store does not record `reference`;
/// `OCI_E_INVALID_ARGUMENT` for a malformed reference or a cache without a
/// store.
#[no_mangle]
pub extern "C" fn oci_cache_remove(
    cache: *const oci_cache,
    reference: *const c_char,
    options: *const oci_call_options,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache = arg_arc(cache, "cache")?;
        let reference = str_arg(reference, "reference")?;
        cache.run(
            options,
            |cache| async move { cache.remove(reference).await },
        )
    })
}

/// Removes the store's blobs, and the layer tars under `dst` (NULL: the
/// store only), that no entry of the store's `index.json` reaches, and
/// temporary files left by writers that died. Every entry is a root, with
/// or without a name (as skopeo and other tools write them), whatever its
/// media type: everything it reaches through `manifests`, `config`,
/// `layers`, `blobs` and `subject` stays, and so do the layer tars of every
/// reached config's diff_ids. Stores the number of files removed in
/// `*files_out` and their bytes in `*bytes_out`. Safe while other threads
/// and processes pull into the same store and `dst`: what they are writing
/// or have just recorded is never removed. The store's lock is held only
/// to delete, in batches of about 20 ms, and waited for without holding a
/// runtime thread; the options' deadline (`OCI_E_TIMEOUT`) or cancel token
/// (`OCI_E_CANCELED`) ends the prune between files (what was removed until
/// then stays removed). `dst` must exist. `OCI_E_INVALID_ARGUMENT` for a
/// cache without a store.
#[no_mangle]
pub extern "C" fn oci_cache_prune(
    cache: *const oci_cache,
    dst: *const c_char,
    options: *const oci_call_options,
    files_out: *mut u64,
    bytes_out: *mut u64,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache = arg_arc(cache, "cache")?;
        let dst = optional_dst(dst)?;
        let files_out = out(files_out, "files_out")?;
        let bytes_out = out(bytes_out, "bytes_out")?;
        let pruned = cache.run(options, |cache| async move { cache.prune(dst).await })?;
        *files_out = pruned.files;
        *bytes_out = pruned.bytes;
        Ok(())
    })
}

/// Stores in `*store_bytes_out` the bytes of the store's blobs, and in
/// `*dst_bytes_out` those of the layer tars under `dst` (NULL: 0). `dst`
/// must exist. `OCI_E_INVALID_ARGUMENT` for a cache without a store. For
/// the file counts too, see `oci_cache_disk_usage_report`.
#[no_mangle]
pub extern "C" fn oci_cache_disk_usage(
    cache: *const oci_cache,
    dst: *const c_char,
    options: *const oci_call_options,
    store_bytes_out: *mut u64,
    dst_bytes_out: *mut u64,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache = arg_arc(cache, "cache")?;
        let dst = optional_dst(dst)?;
        let store_bytes_out = out(store_bytes_out, "store_bytes_out")?;
        let dst_bytes_out = out(dst_bytes_out, "dst_bytes_out")?;
        let usage = cache.run(options, |cache| async move { cache.disk_usage(dst).await })?;
        *store_bytes_out = usage.store_bytes;
        *dst_bytes_out = usage.dst_bytes;
        Ok(())
    })
}

/// Stores in `*usage_out` the bytes and the number of files of the store's
/// blobs, of the layer tars under `dst` and of their indexes under
/// `dst/tar-index` (NULL `dst`: 0 for both), counted in one walk; read
/// them with `oci_disk_usage_store_bytes` and the accessors after it, and
/// free the report with `oci_disk_usage_free`. A report rather than more
/// out-parameters, so later counts are new accessors, not a new signature.
/// `dst` must exist. `OCI_E_INVALID_ARGUMENT` for a cache without a store.
#[no_mangle]
pub extern "C" fn oci_cache_disk_usage_report(
    cache: *const oci_cache,
    dst: *const c_char,
    options: *const oci_call_options,
    usage_out: *mut *mut oci_disk_usage,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache = arg_arc(cache, "cache")?;
        let dst = optional_dst(dst)?;
        let usage_out = out(usage_out, "usage_out")?;
        let usage = cache.run(options, |cache| async move { cache.disk_usage(dst).await })?;
        *usage_out = to_boxed_mut_ptr(oci_disk_usage { usage });
        Ok(())
    })
}

/// The bytes of the store's blobs; 0 if `usage` is NULL.
#[no_mangle]
pub extern "C" fn oci_disk_usage_store_bytes(usage: *const oci_disk_usage) -> u64 {
    getter(usage, 0, |u| Some(u.usage.store_bytes))
}

/// The number of the store's blobs; 0 if `usage` is NULL.
#[no_mangle]
pub extern "C" fn oci_disk_usage_store_files(usage: *const oci_disk_usage) -> u64 {
    getter(usage, 0, |u| Some(u.usage.store_files))
}

/// The bytes of the layer tars under `dst` (0 without one); 0 if `usage`
/// is NULL.
#[no_mangle]
pub extern "C" fn oci_disk_usage_dst_bytes(usage: *const oci_disk_usage) -> u64 {
    getter(usage, 0, |u| Some(u.usage.dst_bytes))
}

/// The number of layer tars under `dst` (0 without one); 0 if `usage` is
/// NULL.
#[no_mangle]
pub extern "C" fn oci_disk_usage_dst_files(usage: *const oci_disk_usage) -> u64 {
    getter(usage, 0, |u| Some(u.usage.dst_files))
}

/// The bytes of the layer tars' indexes under `dst/tar-index` (0 without a
/// `dst`); 0 if `usage` is NULL. They are not part of
/// `oci_disk_usage_dst_bytes`.
#[no_mangle]
pub extern "C" fn oci_disk_usage_index_bytes(usage: *const oci_disk_usage) -> u64 {
    getter(usage, 0, |u| Some(u.usage.index_bytes))
}

/// The number of layer tar indexes under `dst/tar-index` (0 without a
/// `dst`); 0 if `usage` is NULL. They are not part of
/// `oci_disk_usage_dst_files`.
#[no_mangle]
pub extern "C" fn oci_disk_usage_index_files(usage: *const oci_disk_usage) -> u64 {
    getter(usage, 0, |u| Some(u.usage.index_files))
}

/// Frees `usage`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_disk_usage_free(usage: *mut oci_disk_usage) {
    free_box(usage)
}

/// Re-hashes every store blob, and every layer tar under `dst` (NULL: the
/// store only), against its name, and stores in `*report_out` how many
/// files were checked and the paths of those that did not match. With
/// `remove_corrupt` those files are deleted, so that the next pull or
/// `oci_rootfs` fetches them again. Free the report with
/// `oci_verify_report_free`. Takes no lock; the options' deadline or cancel
/// token ends it between chunks of a file. Files that are not regular
/// (symlinks, FIFOs) are skipped, never followed or waited on. The layer
/// tars' indexes under `dst/tar-index` are re-checked too (their checksum,
/// format and diff_id), and with `remove_corrupt` a bad one is deleted.
/// Indexes are reported apart from blobs and tars
/// (`oci_verify_report_indexes_checked`,
/// `oci_verify_report_corrupt_index_path`): a bad index loses no content,
/// as a view rebuilds it from its tar. `dst` must exist.
/// `OCI_E_INVALID_ARGUMENT` for a cache without a store.
#[no_mangle]
pub extern "C" fn oci_cache_verify(
    cache: *const oci_cache,
    dst: *const c_char,
    remove_corrupt: bool,
    options: *const oci_call_options,
    report_out: *mut *mut oci_verify_report,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache = arg_arc(cache, "cache")?;
        let dst = optional_dst(dst)?;
        let report_out = out(report_out, "report_out")?;
        let verified = cache.run(options, |cache| async move {
            cache.verify(dst, remove_corrupt).await
        })?;
        *report_out = to_boxed_mut_ptr(oci_verify_report {
            checked: verified.checked,
            corrupt: c_paths(&verified.corrupt, "a corrupt file's path")?,
            indexes_checked: verified.indexes_checked,
            corrupt_indexes: c_paths(&verified.corrupt_indexes, "a corrupt index's path")?,
        });
        Ok(())
    })
}

/// `paths` for C; one with a NUL byte is `OCI_E_INVALID_CONTENT` naming
/// `what`.
fn c_paths(paths: &[PathBuf], what: &str) -> Outcome<Vec<CString>> {
    paths
        .iter()
        .map(|path| c_string(path.as_os_str().as_bytes(), what))
        .collect()
}

/// The number of files re-hashed: store blobs and layer tars (indexes are
/// counted by `oci_verify_report_indexes_checked`); 0 if `report` is NULL.
#[no_mangle]
pub extern "C" fn oci_verify_report_checked(report: *const oci_verify_report) -> u64 {
    getter(report, 0, |r| Some(r.checked))
}

/// The number of files whose content did not match their digest; 0 if
/// `report` is NULL.
#[no_mangle]
pub extern "C" fn oci_verify_report_corrupt_count(report: *const oci_verify_report) -> usize {
    getter(report, 0, |r| Some(r.corrupt.len()))
}

/// The path of corrupt file `index`: under the store's `blobs`, or under
/// `dst` as `realpath()` spells it. Removed if `oci_cache_verify` was asked
/// to. NULL if `report` is NULL or `index` out of range.
#[no_mangle]
pub extern "C" fn oci_verify_report_corrupt_path(
    report: *const oci_verify_report,
    index: usize,
) -> *const c_char {
    getter(report, std::ptr::null(), |r| {
        Some(r.corrupt.get(index)?.as_ptr())
    })
}

/// The number of layer tar indexes under `dst/tar-index` re-checked
/// (checksum, format and diff_id); 0 without a `dst`, or if `report` is
/// NULL.
#[no_mangle]
pub extern "C" fn oci_verify_report_indexes_checked(report: *const oci_verify_report) -> u64 {
    getter(report, 0, |r| Some(r.indexes_checked))
}

/// The number of indexes that failed that check; 0 if `report` is NULL.
/// They are not part of `oci_verify_report_corrupt_count`.
#[no_mangle]
pub extern "C" fn oci_verify_report_corrupt_index_count(report: *const oci_verify_report) -> usize {
    getter(report, 0, |r| Some(r.corrupt_indexes.len()))
}

/// The path of corrupt index `index`: under `dst/tar-index`, with `dst` as
/// `realpath()` spells it. Removed if `oci_cache_verify` was asked to; the
/// next view of its layer writes it again from the tar. NULL if `report`
/// is NULL or `index` out of range.
#[no_mangle]
pub extern "C" fn oci_verify_report_corrupt_index_path(
    report: *const oci_verify_report,
    index: usize,
) -> *const c_char {
    getter(report, std::ptr::null(), |r| {
        Some(r.corrupt_indexes.get(index)?.as_ptr())
    })
}

/// Frees `report`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_verify_report_free(report: *mut oci_verify_report) {
    free_box(report)
}
