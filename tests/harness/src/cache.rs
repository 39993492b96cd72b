//! Driving the library under test: a cache built the way every test builds
//! one ([`new_cache`]), and a bound on every library call so that a hang
//! fails the test instead of the run ([`within`], [`within_for`]).
//!
//! ```no_run
//! use harness::{new_cache, within};
//! use oci_cache::CacheOptions;
//! # async fn example(reference: &str, dst: &std::path::Path) {
//! let cache = new_cache(CacheOptions::new());
//! let image = within("fetch", cache.fetch_image(reference, None)).await.unwrap();
//! let tars = within("rootfs", cache.rootfs(&image, dst)).await.unwrap();
//! # let _ = tars;
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use oci_cache::{CacheOptions, ImageCache};

/// How long [`within`] lets a library call run: far beyond any healthy
/// call on a loaded machine, far below the test run's own limits.
pub const CALL_LIMIT: Duration = Duration::from_secs(60);

/// `future`, failing the test (naming `what`) if it takes longer than
/// [`CALL_LIMIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    within_for(CALL_LIMIT, what, future).await
}

/// `future`, failing the test (naming `what`) if it takes longer than
/// `limit`.
pub async fn within_for<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// An [`ImageCache`] with `options`, or a panic saying why not.
pub fn new_cache(options: CacheOptions) -> ImageCache {
    ImageCache::new(options).expect("creating an ImageCache")
}
