//! Layer calls: `oci_fetch_layer` and its `oci_layer_reader`, and the calls
//! that hand out layer tar files as fds (`oci_extract_layer`,
//! `oci_extract_layers`, `oci_rootfs`).

use std::ffi::{c_char, c_int};
use std::fs::File;
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::cache::oci_cache;
use super::image::oci_image;
use super::options::oci_call_options;
use super::{
    arg, arg_arc, arg_mut, boundary, free_box, oci_error, oci_status, out, str_arg,
    to_boxed_mut_ptr, Castable, Failure, Outcome, OwnershipBox, OCI_E_BUFFER_TOO_SMALL,
};
use crate::call::CallOptions;
use crate::error::Error;
use crate::layer::LayerReader;

/// A layer being streamed, uncompressed. Use from one thread at a time. It
/// keeps the cache's internals alive, so it may outlive its cache and image.
pub struct oci_layer_reader {
    reader: LayerReader,
    cache: Arc<oci_cache>,
    // The token of the options `oci_fetch_layer` was given: reads obey it too.
    cancel: CallOptions,
}

impl Castable for oci_layer_reader {
    type Ownership = OwnershipBox;
}

/// Starts streaming layer `index` of `image`, uncompressed. Read it with
/// `oci_layer_reader_read`. `OCI_E_UNSUPPORTED` for a layer media type the
/// library does not handle, `OCI_E_INVALID_ARGUMENT` for an index out of range.
#[no_mangle]
pub extern "C" fn oci_fetch_layer(
    cache: *const oci_cache,
    image: *const oci_image,
    index: usize,
    options: *const oci_call_options,
    reader_out: *mut *mut oci_layer_reader,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache = arg_arc(cache, "cache")?;
        let image = arg(image, "image")?;
        let reader_out = out(reader_out, "reader_out")?;
        let reader = cache.run(options, |cache| async move {
            cache.fetch_layer(&image.image, index).await
        })?;
        let cancel = oci_call_options::cancel_of(options)
            .map_or_else(CallOptions::new, |token| CallOptions::new().cancel(token));
        *reader_out = to_boxed_mut_ptr(oci_layer_reader {
            reader,
            cache,
            cancel,
        });
        Ok(())
    })
}

/// Reads up to `cap` bytes into `buf` and stores the count in `*n_out`.
/// The cancel token of the options given to `oci_fetch_layer` applies to
/// every read.
/// `*n_out == 0` means the end of the layer, and nothing else: it is
/// reported only after the blob's digest and size and the tar's diff_id
/// were verified; a mismatch is an error (`OCI_E_DIGEST_MISMATCH`), and a
/// failure inside the library (`OCI_E_INTERNAL`) too, never an end. `cap`
/// must be at least 1: `cap == 0` is `OCI_E_INVALID_ARGUMENT`. After an
/// error from the layer, every read fails the same way.
#[no_mangle]
pub extern "C" fn oci_layer_reader_read(
    reader: *mut oci_layer_reader,
    buf: *mut u8,
    cap: usize,
    n_out: *mut usize,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let reader = arg_mut(reader, "reader")?;
        out(buf, "buf")?;
        let n_out = out(n_out, "n_out")?;
        if cap == 0 {
            // A zero count must only ever mean the end of the layer.
            return Err(Failure::invalid(
                "cap is 0: a read needs room for at least one byte",
            ));
        }
        // SAFETY: the caller gives `cap` writable bytes at `buf`.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf, cap) };
        let oci_layer_reader {
            reader,
            cache,
            cancel,
        } = reader;
        let read = cache.wait(
            None,
            cancel.bounded(|| "reading a layer".into(), async {
                reader.read(buf).await.map_err(|e| {
                    Error::from_io(e, |e| {
                        Error::io(format!("reading a layer: {e}")).with_source(e)
                    })
                })
            }),
        )?;
        *n_out = read;
        Ok(())
    })
}

/// Frees `reader`, stopping its download. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_layer_reader_free(reader: *mut oci_layer_reader) {
    free_box(reader)
}

/// Writes layer `index` of `image` to `dst/<alg>/<hex of diff_id>`
/// (replacing any file there) and stores in `*fd_out` a fresh descriptor
/// of it: `O_RDONLY | O_CLOEXEC`, offset 0, owned by the caller. `dst` must
/// exist. The file appears whole and verified, or not at all.
#[no_mangle]
pub extern "C" fn oci_extract_layer(
    cache: *const oci_cache,
    image: *const oci_image,
    index: usize,
    dst: *const c_char,
    options: *const oci_call_options,
    fd_out: *mut c_int,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache = arg_arc(cache, "cache")?;
        let image = arg(image, "image")?;
        let dst = Path::new(str_arg(dst, "dst")?);
        let fd_out = out(fd_out, "fd_out")?;
        let file = cache.run(options, |cache| async move {
            cache.extract_layer(&image.image, index, dst).await
        })?;
        *fd_out = file.into_raw_fd();
        Ok(())
    })
}

/// Extracts every layer of `image` into `dst` concurrently, replacing files
/// already there, and stores one fd per layer in `fds_out` (bottom layer
/// first), each as in `oci_extract_layer`. `fds_cap` below the layer count
/// gives `OCI_E_BUFFER_TOO_SMALL` before any work. On failure no fd is open.
#[no_mangle]
pub extern "C" fn oci_extract_layers(
    cache: *const oci_cache,
    image: *const oci_image,
    dst: *const c_char,
    options: *const oci_call_options,
    fds_out: *mut c_int,
    fds_cap: usize,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        layer_files(cache, image, dst, fds_out, fds_cap, |cache, image, dst| {
            cache.run(options, |cache| async move {
                cache.extract_layers(&image.image, dst).await
            })
        })
    })
}

/// Like `oci_extract_layers`, but layers already in `dst` are opened without
/// touching the network; only missing ones are fetched. The warm path of a
/// container start. Only regular files are handed out, opened without
/// following a link or blocking on a FIFO: a symlink, FIFO, socket or
/// device at a layer's path counts as missing and is replaced by the
/// fetched layer; a directory there fails with `OCI_E_IO` naming it, as
/// does a symlink in place of `dst/sha256`. A store layer blob found corrupt while extracting is
/// removed and fetched again (once); if that fails too, the status is still
/// `OCI_E_DIGEST_MISMATCH`, naming the blob.
#[no_mangle]
pub extern "C" fn oci_rootfs(
    cache: *const oci_cache,
    image: *const oci_image,
    dst: *const c_char,
    options: *const oci_call_options,
    fds_out: *mut c_int,
    fds_cap: usize,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        layer_files(cache, image, dst, fds_out, fds_cap, |cache, image, dst| {
            if let Some(files) = cache.rootfs_cached(&image.image, dst, options)? {
                return Ok(files);
            }
            cache.run(options, |cache| async move {
                cache.rootfs(&image.image, dst).await
            })
        })
    })
}

/// The checks and fd hand-over shared by the calls returning all layers.
fn layer_files(
    cache: *const oci_cache,
    image: *const oci_image,
    dst: *const c_char,
    fds_out: *mut c_int,
    fds_cap: usize,
    files: impl FnOnce(&oci_cache, &oci_image, &Path) -> Outcome<Vec<File>>,
) -> Outcome {
    let cache = arg_arc(cache, "cache")?;
    let image = arg(image, "image")?;
    let dst = Path::new(str_arg(dst, "dst")?);
    out(fds_out, "fds_out")?;
    let needed = image.image.layers().len();
    if fds_cap < needed {
        return Err(Failure::new(
            OCI_E_BUFFER_TOO_SMALL,
            format!(
                "fds_out holds {fds_cap} fds; {} has {needed} layers",
                image.image.reference()
            ),
        ));
    }
    let files = files(&cache, image, dst)?;
    for (i, file) in files.into_iter().enumerate() {
        // SAFETY: `fds_out` has room for `fds_cap >= needed` ints.
        unsafe { *fds_out.add(i) = file.into_raw_fd() };
    }
    Ok(())
}
