//! Errors keep their cause: a read-only or full `dst` is `Io` with the OS
//! error number, a refused connection is `Network` with `ECONNREFUSED`, a
//! registry's 404, 401 or 503 answer is `NotFound`, `Unauthorized` or
//! `Network` with that status, a refused certificate keeps the TLS error in the chain, and the
//! text of every error is unchanged: `"<kind>: <message>"`.

use std::path::{Path, PathBuf};

use harness::*;
use oci_cache::{CacheOptions, Error, ErrorKind, ImageCache};

/// The texts of `err`'s chain of causes, outermost first.
fn causes(err: &Error) -> Vec<String> {
    let mut texts = Vec::new();
    let mut next = std::error::Error::source(err);
    while let Some(cause) = next {
        texts.push(cause.to_string());
        next = cause.source();
    }
    texts
}

/// `err` is of `kind`, with exactly this OS error and HTTP status, and its
/// text is the kind's words, then its message, as before `Error` kept causes.
#[track_caller]
fn assert_error(err: &Error, kind: ErrorKind, os_errno: Option<i32>, http_status: Option<u16>) {
    assert_eq!(err.kind(), kind, "{err:?}");
    assert_eq!(err.os_errno(), os_errno, "{err:?}");
    assert_eq!(err.http_status(), http_status, "{err:?}");
    let prefix = match kind {
        ErrorKind::Io => "io",
        ErrorKind::Network => "network",
        ErrorKind::NotFound => "not found",
        ErrorKind::Unauthorized => "unauthorized",
        other => panic!("no expected text for {other:?}"),
    };
    assert_eq!(err.to_string(), format!("{prefix}: {}", err.message()));
}

/// A registry holding `repo:v1`, one incompressible layer of `len` bytes.
fn registry_with(repo: &str, len: usize) -> (Registry, String, PushedImage) {
    let registry = Registry::start();
    let host = registry.host();
    let pushed = push_noise_image(&host, repo, &[(7, len)]);
    let reference = format!("{host}/{repo}:v1");
    (registry, reference, pushed)
}

/// The tar a layer is written to under `dst`.
fn tar_in(dst: &Path, diff_id: &str) -> PathBuf {
    dst.join("sha256").join(&diff_id["sha256:".len()..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_dst_is_io_with_erofs() {
    let (_registry, reference, _pushed) = registry_with("readonly", 4096);
    let dst = Tmpfs::mount("ro,size=1m");
    let cache = ImageCache::new(CacheOptions::new()).unwrap();
    let image = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .unwrap();

    let err = within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .unwrap_err();
    assert_error(&err, ErrorKind::Io, Some(libc::EROFS), None);
    assert!(
        err.message().contains(&*dst.path().to_string_lossy())
            && err.message().contains("Read-only file system"),
        "{err}"
    );
    assert_eq!(
        causes(&err),
        vec![std::io::Error::from_raw_os_error(libc::EROFS).to_string()]
    );
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dst_is_io_with_enospc_with_or_without_the_reserve() {
    let (_registry, reference, pushed) = registry_with("full", 2 << 20);
    let dst = Tmpfs::mount("size=1m");
    let image_of = |cache: &ImageCache| {
        let cache = cache.clone();
        let reference = reference.clone();
        async move { cache.fetch_image(&reference, None).await.unwrap() }
    };
    let tar = tar_in(dst.path(), &pushed.diff_ids[0]);

    // The reserve (5% of the tmpfs by default) refuses the layer before the
    // disk fills: as good as full, so ENOSPC too.
    let cache = ImageCache::new(CacheOptions::new()).unwrap();
    let image = within("fetch_image", image_of(&cache)).await;
    let err = within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .unwrap_err();
    assert_error(&err, ErrorKind::Io, Some(libc::ENOSPC), None);
    assert!(
        err.message().contains(&*tar.to_string_lossy())
            && err.message().contains("(free_space_reserve)"),
        "{err}"
    );
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());

    // Without a reserve, the disk fills: the OS's ENOSPC.
    let cache = ImageCache::new(CacheOptions::new().free_space_reserve(0)).unwrap();
    let image = within("fetch_image", image_of(&cache)).await;
    let err = within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .unwrap_err();
    assert_error(&err, ErrorKind::Io, Some(libc::ENOSPC), None);
    assert!(
        err.message().contains(&*tar.to_string_lossy())
            && err.message().contains("No space left on device"),
        "{err}"
    );
    assert!(!causes(&err).is_empty(), "{err:?}");
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_network_with_econnrefused() {
    let host = dead_host();
    let cache = ImageCache::new(CacheOptions::new().attempts(1)).unwrap();
    let err = within(
        "fetch_image",
        cache.fetch_image(&format!("{host}/x:v1"), None),
    )
    .await
    .unwrap_err();
    assert_error(&err, ErrorKind::Network, Some(libc::ECONNREFUSED), None);
    assert!(err.message().contains(&host), "{err}");
    assert!(!causes(&err).is_empty(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_not_found_with_its_status() {
    let (registry, _reference, _pushed) = registry_with("present", 1024);
    let cache = ImageCache::new(CacheOptions::new()).unwrap();
    let reference = format!("{}/absent:v1", registry.host());
    let err = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .unwrap_err();
    assert_error(&err, ErrorKind::NotFound, None, Some(404));
    assert!(err.message().contains("absent"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_unauthorized_with_its_status_and_no_secret() {
    let registry = Registry::start_with(RegistrySetup::new().htpasswd());
    let host = registry.host();
    let reference = format!("{host}/locked:v1");

    let anonymous = ImageCache::new(CacheOptions::new()).unwrap();
    let wrong = ImageCache::new(CacheOptions::new().credentials(
        &host,
        TEST_USER,
        "not-the-password-3f9c1",
    ))
    .unwrap();
    for (what, cache) in [("anonymous", anonymous), ("a wrong password", wrong)] {
        let err = within(what, cache.fetch_image(&reference, None))
            .await
            .unwrap_err();
        assert_error(&err, ErrorKind::Unauthorized, None, Some(401));
        assert!(err.message().contains(&host), "{what}: {err}");
        let debug = format!("{err:?} {err:#?}");
        assert!(!debug.contains("not-the-password-3f9c1"), "{what}: {debug}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_certificate_keeps_the_tls_error_in_the_chain() {
    let registry = Registry::start_with(RegistrySetup::new().tls());
    let host = registry.tls_host();
    let cache = ImageCache::new(CacheOptions::new().attempts(1)).unwrap();
    let err = within(
        "fetch_image",
        cache.fetch_image(&format!("{host}/x:v1"), None),
    )
    .await
    .unwrap_err();
    assert_error(&err, ErrorKind::Network, None, None);
    let chain = causes(&err);
    assert!(
        chain
            .iter()
            .any(|cause| cause.to_lowercase().contains("certificate")),
        "no TLS error among the causes: {chain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_network_with_its_status() {
    let fake = FakeRegistry::start();
    fake.fail_first("/v2/down/manifests/v1", 5, 503, &[]);
    let cache = ImageCache::new(CacheOptions::new().attempts(1)).unwrap();
    let reference = format!("{}/down:v1", fake.host());
    let err = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .unwrap_err();
    assert_error(&err, ErrorKind::Network, None, Some(503));
    assert!(err.message().contains("503"), "{err}");
    assert_eq!(fake.requests("/v2/down/manifests/v1"), 1);
}
