//! oci-cache turns an OCI image reference into verified, uncompressed layer
//! tar files on local disk, for container runtimes.
//!
//! An [`ImageCache`] resolves references against a local OCI image layout
//! first and a registry second. [`ImageCache::fetch_image`] reads an image's
//! manifest and config for a platform; [`ImageCache::rootfs`] returns one
//! open file per layer, bottom first, fetching only the layers not already
//! on disk. Every byte is checked: blobs against their digest and size,
//! uncompressed tars against the config's diff_ids, manifests against pinned
//! digests. Files appear atomically under `dst/<alg>/<hex of diff_id>`.
//!
//! ```no_run
//! # async fn demo() -> oci_cache::Result<()> {
//! use oci_cache::{CacheOptions, ImageCache};
//!
//! let cache = ImageCache::new(CacheOptions::new().store("/var/lib/images"))?;
//! let image = cache.fetch_image("127.0.0.1:5000/debian:12", None).await?;
//! let layers = cache.rootfs(&image, "/var/lib/layers".as_ref()).await?;
//! for (layer, file) in image.layers().iter().zip(&layers) {
//!     println!("{} {} bytes", layer.diff_id(), file.metadata().map_or(0, |m| m.len()));
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Modules point one way: `cache` uses `registry` (remote access, with
//! `auth` and `http`), `store` (the local layout), `maintenance` (list,
//! prune, verify over the store) and `layer` (media types, decompression,
//! verification); those use only the leaf modules (`digest`, `manifest`,
//! `platform`, `fs`, `error`).

mod auth;
mod cache;
mod call;
mod credentials;
mod digest;
mod error;
pub mod ffi;
mod fs;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hosts;
mod http;
mod layer;
mod maintenance;
mod manifest;
mod platform;
mod registry;
mod store;

pub use cache::{CacheOptions, Image, ImageCache, Layer};
pub use call::{CallOptions, Progress, ProgressFn};
pub use digest::Digest;
pub use error::{Error, Result};
pub use layer::LayerReader;
pub use maintenance::{DiskUsage, Pruned, StoredImage, Verified};
pub use platform::Platform;
