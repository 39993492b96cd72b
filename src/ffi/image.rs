//! `oci_image`: a fetched image (manifest, config, layers) and its getters.

use std::ffi::{c_char, CString};
use std::sync::Arc;

use super::cache::oci_cache;
use super::options::oci_call_options;
use super::{
    arg_arc, boundary, c_string, free_box, getter, oci_error, oci_status, optional_str_arg, out,
    str_arg, to_boxed_mut_ptr, Castable, Outcome, OwnershipBox,
};
use crate::cache::Image;
use crate::platform::Platform;

/// An image's manifest and config for one platform, and its layers.
/// Immutable and thread-safe. It keeps the cache's internals alive, so it
/// may outlive the `oci_cache` it came from. Strings it returns live as long
/// as the image.
pub struct oci_image {
    pub(crate) image: Image,
    // Keeps the cache's runtime and clients alive for as long as the image.
    _cache: Arc<oci_cache>,
    reference: CString,
    digest: CString,
    config: CString,
    layers: Vec<LayerStrings>,
}

struct LayerStrings {
    digest: CString,
    diff_id: CString,
    media_type: CString,
}

impl Castable for oci_image {
    type Ownership = OwnershipBox;
}

impl oci_image {
    fn new(image: Image, cache: Arc<oci_cache>) -> Outcome<oci_image> {
        let layers = image
            .layers()
            .iter()
            .map(|layer| {
                Ok(LayerStrings {
                    digest: c_string(layer.digest().as_str().as_bytes(), "a layer digest")?,
                    diff_id: c_string(layer.diff_id().as_str().as_bytes(), "a diff_id")?,
                    media_type: c_string(layer.media_type().as_bytes(), "a layer media type")?,
                })
            })
            .collect::<Outcome<Vec<_>>>()?;
        Ok(oci_image {
            reference: c_string(image.reference().as_bytes(), "the reference")?,
            digest: c_string(image.digest().as_str().as_bytes(), "the digest")?,
            config: c_string(image.config(), "the image config")?,
            layers,
            image,
            _cache: cache,
        })
    }
}

/// Fetches the manifest and config of `reference` for `platform`
/// (`"os/arch[/variant]"`; NULL = the cache's platform), following an index
/// or manifest list to the platform's manifest. Layer blobs are not
/// downloaded. `OCI_E_NOT_FOUND` for a missing tag, repository or platform
/// (the message lists the platforms available). A store manifest or config
/// that fails to verify is removed and fetched again (once); if that fails
/// too, the status is still `OCI_E_DIGEST_MISMATCH`, naming it. Recording
/// the image in the store waits for the store's lock (held by another
/// process, say) without holding a runtime thread, as long as it takes
/// unless the options' deadline or cancel token ends the wait.
#[no_mangle]
pub extern "C" fn oci_fetch_image(
    cache: *const oci_cache,
    reference: *const c_char,
    platform: *const c_char,
    options: *const oci_call_options,
    image_out: *mut *mut oci_image,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache = arg_arc(cache, "cache")?;
        let reference = str_arg(reference, "reference")?;
        let platform: Option<Platform> = optional_str_arg(platform, "platform")?
            .map(str::parse)
            .transpose()?;
        let image_out = out(image_out, "image_out")?;
        let image = cache.run(options, |cache| async move {
            cache.fetch_image(reference, platform.as_ref()).await
        })?;
        *image_out = to_boxed_mut_ptr(oci_image::new(image, cache)?);
        Ok(())
    })
}

/// The normalized reference, e.g. `"docker.io/library/alpine:3.20"`; NULL if `image` is NULL.
#[no_mangle]
pub extern "C" fn oci_image_reference(image: *const oci_image) -> *const c_char {
    getter(image, std::ptr::null(), |i| Some(i.reference.as_ptr()))
}

/// The digest of the platform's image manifest, `"sha256:<hex>"`; NULL if `image` is NULL.
#[no_mangle]
pub extern "C" fn oci_image_digest(image: *const oci_image) -> *const c_char {
    getter(image, std::ptr::null(), |i| Some(i.digest.as_ptr()))
}

/// The image config, JSON, NUL-terminated; NULL if `image` is NULL.
#[no_mangle]
pub extern "C" fn oci_image_config(image: *const oci_image) -> *const c_char {
    getter(image, std::ptr::null(), |i| Some(i.config.as_ptr()))
}

/// The number of layers; 0 if `image` is NULL.
#[no_mangle]
pub extern "C" fn oci_image_layer_count(image: *const oci_image) -> usize {
    getter(image, 0, |i| Some(i.layers.len()))
}

/// The digest of layer `index`'s compressed blob; NULL if out of range.
#[no_mangle]
pub extern "C" fn oci_image_layer_digest(image: *const oci_image, index: usize) -> *const c_char {
    getter(image, std::ptr::null(), |i| {
        Some(i.layers.get(index)?.digest.as_ptr())
    })
}

/// The diff_id (digest of the uncompressed tar) of layer `index`; NULL if out of range.
#[no_mangle]
pub extern "C" fn oci_image_layer_diff_id(image: *const oci_image, index: usize) -> *const c_char {
    getter(image, std::ptr::null(), |i| {
        Some(i.layers.get(index)?.diff_id.as_ptr())
    })
}

/// The media type of layer `index`'s blob; NULL if out of range.
#[no_mangle]
pub extern "C" fn oci_image_layer_media_type(
    image: *const oci_image,
    index: usize,
) -> *const c_char {
    getter(image, std::ptr::null(), |i| {
        Some(i.layers.get(index)?.media_type.as_ptr())
    })
}

/// The size in bytes of layer `index`'s compressed blob; -1 if out of range.
#[no_mangle]
pub extern "C" fn oci_image_layer_size(image: *const oci_image, index: usize) -> i64 {
    getter(image, -1, |i| {
        i64::try_from(i.image.layers().get(index)?.size()).ok()
    })
}

/// Frees `image`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_image_free(image: *mut oci_image) {
    free_box(image)
}
