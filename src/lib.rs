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
//! Modules point one way, top to bottom:
//!
//! - `ffi`: the C ABI, each function a thin skin inside one panic boundary,
//!   over `cache` and the value types of `call`, `work`, `layer`,
//!   `maintenance` and `platform`; it only blocks on a call and delivers its
//!   progress reports.
//! - `cache`: [`ImageCache`]; `cache::options` holds the [`CacheOptions`]
//!   builder, `cache::image` the [`Image`] and [`Layer`] values. It uses:
//!   - `registry`: remote access, with `auth` (token exchange), `credentials`
//!     (`credentials::search` the search order, `credentials::auth_file`
//!     auth-file parsing, `credentials::helper` the credential-helper
//!     runner), `hosts` (per-registry hosts.toml mirrors) and
//!     `registry::ranged` (parallel ranged download of one large blob);
//!   - `maintenance`: list, prune, disk usage and verify, over `store`;
//!   - `store`: the local OCI image layout;
//!   - `layer`: the decompress-and-verify pipeline of layer blobs (which
//!     follows a ranged download's contiguous prefix through `fill`);
//!   - `view`: the [`View`] of an image's files, read through each layer
//!     tar's index (`tar_index`) with the layers merged by `lookup`.
//! - Leaf modules, which use only each other: `call` ([`CallOptions`]: a
//!   call's deadline, stall timeout, [`CancelToken`]s, and the wait for its
//!   blocking work to clean up when it ends early), `work` ([`Progress`]
//!   reports and the blocking work a call tracks), `codec` (the codec
//!   table: layer media types and their decoders, see
//!   [`layer_media_types`]), `inflate` (gzip through ISA-L's igzip, the
//!   `isal` feature's FFI, which `codec` uses), `http` (network time limits, bounded bodies,
//!   the blob stream type), `fill` (where a ranged download's file is
//!   written up to, which the single pass follows), `reference` (image
//!   references, parsed without compiling a regex), `tls` (registry
//!   clients' TLS: system roots read once, for the first https host),
//!   `tar_index` (the index of a layer tar: an incremental header parser,
//!   the index file's writer and reader, see `docs/tar-index.md`),
//!   `digest`, `manifest`, `platform`, `fs`, `error`.

mod auth;
mod cache;
mod call;
mod codec;
mod credentials;
mod digest;
mod error;
pub mod ffi;
mod fill;
mod fs;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hosts;
mod http;
#[cfg(feature = "isal")]
mod inflate;
mod layer;
mod lookup;
mod maintenance;
mod manifest;
mod platform;
mod reference;
mod registry;
mod store;
mod tar_index;
mod tls;
mod view;
mod work;

pub use cache::{CacheOptions, Image, ImageCache, Layer};
pub use call::{CallOptions, CancelToken};
pub use codec::layer_media_types;
pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
pub use layer::LayerReader;
pub use maintenance::{DiskUsage, Pruned, StoredImage, Verified};
pub use platform::Platform;
pub use view::{FileKind, Stat, View};
pub use work::{Progress, ProgressFn};
