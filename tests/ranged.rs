//! Parallel ranged download of one large blob, through a proxy that records
//! every request in front of a real registry: ranges are bounded and cover
//! the blob exactly once, a cut range is asked again from where it stopped,
//! a corrupt range fails the digest and leaves nothing, and a server that
//! ignores `Range` still serves the blob as one stream, and a call that
//! runs out of time stops every range and removes the temp blob file
//! before it returns.

use std::path::{Path, PathBuf};

use harness::*;
use std::time::{Duration, Instant};

use oci_cache::{CacheOptions, CallOptions, ErrorKind, ImageCache};

const REPO: &str = "ranged/big";
/// Above the threshold, and four ranges of 384 KiB at four connections.
const LAYER_BYTES: usize = 3 << 19;
const THRESHOLD: u64 = 256 << 10;
const CONNECTIONS: usize = 4;

fn ranged_options(store: &Path, keep: bool) -> CacheOptions {
    CacheOptions::new()
        .store(store)
        .keep_layer_blobs(keep)
        .range_threshold(THRESHOLD)
        .range_connections(CONNECTIONS)
}

/// The registry, the proxy in front of it and the image pushed to it.
fn setup() -> (Registry, RecordingProxy, PushedImage) {
    let registry = Registry::start();
    let pushed = push_noise_image(&registry.host(), REPO, &[(7, LAYER_BYTES)]);
    let proxy = RecordingProxy::start(&registry.host());
    (registry, proxy, pushed)
}

/// The `Range` of every request for `digest`'s blob, in the order sent.
fn blob_ranges(proxy: &RecordingProxy, digest: &str) -> Vec<Option<String>> {
    let path = format!("/v2/{REPO}/blobs/{digest}");
    proxy
        .requests()
        .into_iter()
        .filter(|r| r.target.split('?').next() == Some(path.as_str()))
        .inspect(|r| assert_eq!(r.method, "GET", "{r:?}"))
        .map(|r| r.range)
        .collect()
}

/// `bytes=A-B` as (A, B); panics on an open-ended or missing range.
fn bounded(range: &Option<String>) -> (u64, u64) {
    let text = range.as_deref().expect("a ranged request has a Range");
    let (first, last) = text
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .unwrap_or_else(|| panic!("malformed range {text}"));
    let last = last
        .parse()
        .unwrap_or_else(|_| panic!("open-ended or malformed range {text}"));
    (first.parse().unwrap(), last)
}

/// The ranges of a `size`-byte blob as the library cuts it.
fn expected_ranges(size: u64) -> Vec<(u64, u64)> {
    let range = size.div_ceil(CONNECTIONS as u64);
    (0..size.div_ceil(range))
        .map(|i| (i * range, ((i + 1) * range).min(size) - 1))
        .collect()
}

/// Asserts that `ranges` cover `0..size` exactly once.
fn assert_cover_once(mut ranges: Vec<(u64, u64)>, size: u64) {
    ranges.sort();
    let mut next = 0;
    for (first, last) in &ranges {
        assert_eq!(*first, next, "gap or overlap in {ranges:?}");
        assert!(last >= first, "{ranges:?}");
        next = last + 1;
    }
    assert_eq!(next, size, "{ranges:?} do not end at the blob's end");
}

/// Files under the store's blob directory: manifest and config, plus
/// `extra`.
fn assert_store_blobs(store: &Path, pushed: &PushedImage, extra: &[&str]) {
    let mut expected: Vec<PathBuf> = [&pushed.manifest_digest, &pushed.config_digest]
        .into_iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .map(|digest| blob_path(store, digest))
        .collect();
    expected.sort();
    assert_eq!(
        files_under(&store.join("blobs")),
        expected,
        "store blobs (temp files left?)"
    );
}

async fn pull(cache: &ImageCache, host: &str, dst: &Path) -> oci_cache::Result<Vec<std::fs::File>> {
    let image = within(
        "fetch_image",
        cache.fetch_image(&format!("{host}/{REPO}:v1"), None),
    )
    .await
    .expect("fetch_image");
    within("rootfs", cache.rootfs(&image, dst)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_ranges_cover_the_blob_once_with_or_without_kept_blobs() {
    let (_registry, proxy, pushed) = setup();
    let (blob, tar) = (&pushed.layers[0].blob, &pushed.layers[0].tar);
    let digest = &pushed.layer_digests[0];
    let size = blob.len() as u64;
    assert!(size >= THRESHOLD);
    for keep in [true, false] {
        let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let before = proxy.requests().len();
        let cache = new_cache(ranged_options(store.path(), keep));
        let files = pull(&cache, &proxy.host(), dst.path())
            .await
            .unwrap_or_else(|e| panic!("keep {keep}: {e}"));
        assert_eq!(files.len(), 1);
        let tar_file = tar_path(dst.path(), &pushed.diff_ids[0]);
        assert_bytes(&std::fs::read(&tar_file).unwrap(), tar, "layer tar");
        assert_eq!(
            files_under(dst.path()),
            layer_files(dst.path(), [pushed.diff_ids[0].as_str()])
        );
        if keep {
            assert_bytes(
                &std::fs::read(blob_path(store.path(), digest)).unwrap(),
                blob,
                "store blob",
            );
            assert_store_blobs(store.path(), &pushed, &[digest]);
        } else {
            assert_store_blobs(store.path(), &pushed, &[]);
        }
        let ranges: Vec<_> = blob_ranges(&proxy, digest)
            .into_iter()
            .skip(if keep { 0 } else { CONNECTIONS })
            .collect();
        assert_eq!(ranges.len(), CONNECTIONS, "keep {keep}: {ranges:?}");
        let ranges: Vec<_> = ranges.iter().map(bounded).collect();
        assert_eq!(
            {
                let mut sorted = ranges.clone();
                sorted.sort();
                sorted
            },
            expected_ranges(size)
        );
        assert_cover_once(ranges, size);
        assert!(proxy.requests().len() > before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_cut_midway_is_asked_again_for_the_rest_of_that_range_only() {
    let (_registry, proxy, pushed) = setup();
    let digest = &pushed.layer_digests[0];
    let size = pushed.layers[0].blob.len() as u64;
    let ranges = expected_ranges(size);
    let (first, last) = ranges[1];
    proxy.fault_once(&format!("bytes={first}-{last}"), Fault::CutAfter(1000));
    let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache = new_cache(ranged_options(store.path(), true));
    pull(&cache, &proxy.host(), dst.path())
        .await
        .expect("a cut range is retried");
    assert_bytes(
        &std::fs::read(tar_path(dst.path(), &pushed.diff_ids[0])).unwrap(),
        &pushed.layers[0].tar,
        "layer tar",
    );
    assert_bytes(
        &std::fs::read(blob_path(store.path(), digest)).unwrap(),
        &pushed.layers[0].blob,
        "store blob",
    );
    let mut sent: Vec<_> = blob_ranges(&proxy, digest).iter().map(bounded).collect();
    sent.sort();
    let mut expected = ranges.clone();
    expected.push((first + 1000, last));
    expected.sort();
    assert_eq!(sent, expected, "one retry, of the rest of the cut range");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_with_wrong_bytes_is_a_digest_mismatch_leaving_nothing() {
    let (_registry, proxy, pushed) = setup();
    let size = pushed.layers[0].blob.len() as u64;
    let (first, last) = expected_ranges(size)[2];
    for keep in [true, false] {
        proxy.fault_once(&format!("bytes={first}-{last}"), Fault::FlipByte(5));
        let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = new_cache(ranged_options(store.path(), keep));
        let err = pull(&cache, &proxy.host(), dst.path())
            .await
            .expect_err("a corrupt range must fail");
        assert_eq!(err.kind(), ErrorKind::DigestMismatch, "keep {keep}: {err}");
        assert!(
            err.message().contains(&pushed.layer_digests[0]),
            "{}",
            err.message()
        );
        assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
        assert_store_blobs(store.path(), &pushed, &[]);
    }
}

/// An image of one gzip layer of noise from `seed`, built for a
/// [`FakeRegistry`] to serve (nothing is pushed).
fn fake_image(seed: u64) -> PushedImage {
    let tar = tar_layer(&[("f", &noise(seed, LAYER_BYTES))]);
    build_image(
        "unused.invalid",
        REPO,
        vec![FixtureLayer::gzip(tar)],
        false,
        ("linux", "amd64", None),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_ignoring_range_serves_the_blob_as_one_stream() {
    let image = fake_image(11);
    let digest = image.layer_digests[0].clone();
    let fake = FakeRegistry::with_image(
        REPO,
        "v1",
        &image.manifest,
        &image.config,
        vec![(digest.clone(), image.layers[0].blob.clone())],
    );
    for keep in [true, false] {
        let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = new_cache(ranged_options(store.path(), keep));
        pull(&cache, &fake.host(), dst.path())
            .await
            .unwrap_or_else(|e| panic!("keep {keep}: {e}"));
        assert_bytes(
            &std::fs::read(tar_path(dst.path(), &image.diff_ids[0])).unwrap(),
            &image.layers[0].tar,
            "layer tar",
        );
        assert_eq!(
            files_under(dst.path()),
            layer_files(dst.path(), [image.diff_ids[0].as_str()])
        );
        let kept: &[&str] = if keep { &[&digest] } else { &[] };
        assert_store_blobs(store.path(), &image, kept);
    }
    let gets: Vec<_> = fake
        .recorded_requests(Some(&format!("/v2/{REPO}/blobs/{digest}")))
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2, "one stream per pull: {gets:?}");
    let size = image.layers[0].blob.len() as u64;
    let first = format!("bytes=0-{}", expected_ranges(size)[0].1);
    for get in gets {
        assert_eq!(get.header("range"), Some(first.as_str()), "{get:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_stops_every_range_and_removes_the_temp_file_before_returning() {
    let (_registry, proxy, pushed) = setup();
    let size = pushed.layers[0].blob.len() as u64;
    for keep in [true, false] {
        let (first, last) = expected_ranges(size)[1];
        proxy.fault_once(&format!("bytes={first}-{last}"), Fault::StallAfter(1000));
        let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cache = new_cache(ranged_options(store.path(), keep));
        let image = within(
            "fetch_image",
            cache.fetch_image(&format!("{}/{REPO}:v1", proxy.host()), None),
        )
        .await
        .expect("fetch_image");
        let limit = Duration::from_secs(1);
        let bounded = cache.with_call_options(CallOptions::new().deadline(limit));
        let started = Instant::now();
        let err = within("rootfs", bounded.rootfs(&image, dst.path()))
            .await
            .expect_err("a stalled range must not finish the layer");
        assert_eq!(err.kind(), ErrorKind::Timeout, "keep {keep}: {err}");
        assert!(started.elapsed() < limit * 5, "{:?}", started.elapsed());
        // Checked at once: nothing may wait for a later cleanup.
        assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
        assert_store_blobs(store.path(), &pushed, &[]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_range_answered_wrong_falls_back_to_one_stream() {
    let image = fake_image(13);
    let digest = image.layer_digests[0].clone();
    let blob = image.layers[0].blob.clone();
    let size = blob.len();
    let fake = FakeRegistry::with_image(REPO, "v1", &image.manifest, &image.config, vec![]);
    let path = format!("/v2/{REPO}/blobs/{digest}");
    // Every answer is a 206 naming bytes 0-9 but carrying the whole blob:
    // not the range asked for, so the blob is asked again without a Range.
    fake.route(
        &path,
        Route {
            status: 206,
            content_type: "application/octet-stream".into(),
            headers: vec![("Content-Range".into(), format!("bytes 0-9/{size}"))],
            body: blob,
        },
    );
    let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache = new_cache(ranged_options(store.path(), true));
    pull(&cache, &fake.host(), dst.path())
        .await
        .expect("one stream after a wrong range");
    assert_bytes(
        &std::fs::read(tar_path(dst.path(), &image.diff_ids[0])).unwrap(),
        &image.layers[0].tar,
        "layer tar",
    );
    assert_store_blobs(store.path(), &image, &[&digest]);
    let ranges: Vec<_> = fake
        .recorded_requests(Some(&path))
        .into_iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.header("range").map(str::to_owned))
        .collect();
    let first = format!("bytes=0-{}", expected_ranges(size as u64)[0].1);
    assert_eq!(ranges, vec![Some(first), None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_range_answered_with_the_whole_blob_is_read_from_that_answer() {
    let (_registry, proxy, pushed) = setup();
    let digest = &pushed.layer_digests[0];
    let size = pushed.layers[0].blob.len() as u64;
    let expected = expected_ranges(size);
    let (first, last) = expected[2];
    proxy.fault_once(&format!("bytes={first}-{last}"), Fault::IgnoreRange);
    let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache = new_cache(ranged_options(store.path(), true));
    pull(&cache, &proxy.host(), dst.path())
        .await
        .expect("a range served whole is cut to the range");
    assert_bytes(
        &std::fs::read(tar_path(dst.path(), &pushed.diff_ids[0])).unwrap(),
        &pushed.layers[0].tar,
        "layer tar",
    );
    assert_store_blobs(store.path(), &pushed, &[digest]);
    assert_eq!(
        files_under(dst.path()),
        layer_files(dst.path(), [pushed.diff_ids[0].as_str()])
    );
    // Each range asked once: the whole blob answered for one of them was
    // read up to that range's end, not asked again.
    let asked: Vec<(u64, u64)> = blob_ranges(&proxy, digest).iter().map(bounded).collect();
    assert_cover_once(asked, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_that_answered_the_first_range_serves_every_range() {
    let (registry, mirror, pushed) = setup();
    // The reference names a second proxy in front of the same registry;
    // the mirror comes first and has the blob, so all of it comes from
    // there.
    let named = RecordingProxy::start(&registry.host());
    let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache = new_cache(ranged_options(store.path(), true).mirror(named.host(), mirror.host()));
    pull(&cache, &named.host(), dst.path())
        .await
        .expect("pull through the mirror");
    assert_bytes(
        &std::fs::read(tar_path(dst.path(), &pushed.diff_ids[0])).unwrap(),
        &pushed.layers[0].tar,
        "layer tar",
    );
    let digest = &pushed.layer_digests[0];
    assert_eq!(blob_ranges(&named, digest), Vec::<Option<String>>::new());
    let size = pushed.layers[0].blob.len() as u64;
    let mut sent: Vec<_> = blob_ranges(&mirror, digest).iter().map(bounded).collect();
    sent.sort();
    assert_eq!(sent, expected_ranges(size));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_store_or_below_the_threshold_the_blob_is_one_plain_request() {
    let (_registry, proxy, pushed) = setup();
    let digest = &pushed.layer_digests[0];
    let size = pushed.layers[0].blob.len() as u64;
    let no_store = CacheOptions::new()
        .range_threshold(THRESHOLD)
        .range_connections(CONNECTIONS);
    let store = tempfile::tempdir().unwrap();
    let above_blob = ranged_options(store.path(), true).range_threshold(size + 1);
    for (what, options) in [("no store", no_store), ("below", above_blob)] {
        let before = blob_ranges(&proxy, digest).len();
        let dst = tempfile::tempdir().unwrap();
        let cache = new_cache(options);
        pull(&cache, &proxy.host(), dst.path())
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_bytes(
            &std::fs::read(tar_path(dst.path(), &pushed.diff_ids[0])).unwrap(),
            &pushed.layers[0].tar,
            what,
        );
        assert_eq!(blob_ranges(&proxy, digest)[before..], [None], "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_range_is_authorized_by_the_registry_token() {
    let registry =
        Registry::start_with(RegistrySetup::new().token_auth(TokenPolicy::new().anonymous_pull()));
    let tar = tar_layer(&[("f", &noise(17, LAYER_BYTES))]);
    let pushed = push_image_to(
        &registry.endpoint(),
        REPO,
        Some("v1"),
        vec![FixtureLayer::gzip(tar)],
        false,
        ("linux", "amd64", None),
    );
    let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache = new_cache(ranged_options(store.path(), true));
    pull(&cache, &registry.host(), dst.path())
        .await
        .expect("a ranged pull with bearer tokens");
    assert_bytes(
        &std::fs::read(blob_path(store.path(), &pushed.layer_digests[0])).unwrap(),
        &pushed.layers[0].blob,
        "store blob",
    );
    // One GET per range, none refused: the token learned for the manifest
    // went with every range.
    assert_eq!(
        registry.blob_gets(&pushed.layer_digests[0]),
        CONNECTIONS,
        "{:#?}",
        registry.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_counts_the_contiguous_bytes_up_to_the_blob_size() {
    let (_registry, proxy, pushed) = setup();
    let size = pushed.layers[0].blob.len() as u64;
    let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reports = seen.clone();
    let cache = new_cache(ranged_options(store.path(), true)).with_call_options(
        CallOptions::new().progress(move |p| {
            reports
                .lock()
                .unwrap()
                .push((p.downloaded, p.download_total))
        }),
    );
    pull(&cache, &proxy.host(), dst.path())
        .await
        .expect("ranged pull");
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 1, "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "downloaded goes back: {seen:?}"
    );
    assert!(seen.iter().all(|&(_, total)| total == Some(size)));
    assert_eq!(seen.last().unwrap().0, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_range_times_out_leaving_nothing() {
    let (_registry, proxy, pushed) = setup();
    let size = pushed.layers[0].blob.len() as u64;
    let (first, last) = expected_ranges(size)[3];
    proxy.fault_once(&format!("bytes={first}-{last}"), Fault::StallAfter(1000));
    let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = ranged_options(store.path(), true).stall_timeout(Duration::from_millis(500));
    let cache = new_cache(options);
    let err = pull(&cache, &proxy.host(), dst.path())
        .await
        .expect_err("a stalled range must time out");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.message().contains("stall_timeout"), "{}", err.message());
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
    assert_store_blobs(store.path(), &pushed, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_gets_at_most_eight_ranges_at_once_over_every_blob() {
    let registry = Registry::start();
    // Two layers of different sizes (so their ranges differ), 8 ranges
    // each at 8 connections: 16 wanted at once, 8 allowed.
    let pushed = push_noise_image(&registry.host(), REPO, &[(3, 3 << 19), (5, 5 << 18)]);
    let proxy = RecordingProxy::start(&registry.host());
    // Every range stalls, so every request the cap lets out stays out.
    for blob in pushed.layers.iter().map(|l| &l.blob) {
        let size = blob.len() as u64;
        let range = size.div_ceil(8);
        for i in 0..size.div_ceil(range) {
            let (first, last) = (i * range, ((i + 1) * range).min(size) - 1);
            proxy.fault_once(&format!("bytes={first}-{last}"), Fault::StallAfter(0));
        }
    }
    let (store, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let options = ranged_options(store.path(), true)
        .range_connections(8)
        .stall_timeout(Duration::from_secs(6));
    let cache = new_cache(options);
    let (host, dst_path) = (proxy.host(), dst.path().to_owned());
    let pulling = tokio::spawn(async move { pull(&cache, &host, &dst_path).await });
    // The high-water mark is read before the first stall timeout: once a
    // range gives up, its slot goes to another range, and the proxy may see
    // that request before it sees the abandoned connection close.
    let deadline = Instant::now() + Duration::from_secs(4);
    while proxy.most_ranges_in_flight() < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let most_in_flight = proxy.most_ranges_in_flight();
    let err = pulling
        .await
        .expect("the pull task")
        .expect_err("every range stalls");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(most_in_flight, 8);
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_layer_follows_its_ranges_too() {
    let (_registry, proxy, pushed) = setup();
    let digest = &pushed.layer_digests[0];
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(ranged_options(store.path(), false));
    let reference = format!("{}/{REPO}:v1", proxy.host());
    let image = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .expect("fetch_image");
    let mut reader = within("fetch_layer", cache.fetch_layer(&image, 0))
        .await
        .expect("fetch_layer");
    let mut streamed = Vec::new();
    within(
        "reading the layer",
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut streamed),
    )
    .await
    .expect("reading the layer");
    assert_bytes(&streamed, &pushed.layers[0].tar, "streamed layer");
    let size = pushed.layers[0].blob.len() as u64;
    let mut sent: Vec<_> = blob_ranges(&proxy, digest).iter().map(bounded).collect();
    sent.sort();
    assert_eq!(sent, expected_ranges(size));
    assert_store_blobs(store.path(), &pushed, &[]);
}
