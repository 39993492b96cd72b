//! A hostile registry: a fake one (see `FakeRegistry`) serving content
//! crafted to break a client — blobs that lie about their digest or size,
//! digests that try to climb out of a directory, oversized or malformed
//! metadata, nested indexes, corrupt or bloated compressed streams, lying
//! `Content-Length`s, redirect loops, cross-origin redirects and silent
//! connections.
//!
//! Every refusal is checked three ways: the exact `oci_cache::Error`
//! variant, a message that names what is involved, and nothing left behind
//! (the store's `index.json` byte-identical, no new file in the store, no
//! file in `dst`, no file anywhere else under the test's directory).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::*;
use oci_cache::{CacheOptions, CallOptions, Error, Image, ImageCache, Platform};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

const REPO: &str = "hostile";
const AMD64: PlatformSpec<'static> = ("linux", "amd64", None);
/// The 4 MiB cap on manifests and configs, as the library writes it.
const METADATA_LIMIT: &str = "4194304";

/// The kind's name and the message of an error.
fn split(err: &Error) -> (String, &str) {
    (format!("{:?}", err.kind()), err.message())
}

/// Checks that `outcome` is the `want` variant and that its message holds
/// every one of `needles`; returns the message.
#[track_caller]
fn assert_error(outcome: Result<(), Error>, want: &str, needles: &[&str], what: &str) -> String {
    let err = match outcome {
        Ok(()) => panic!("{what}: succeeded, expected {want}"),
        Err(err) => err,
    };
    let (variant, message) = split(&err);
    assert_eq!(variant, want, "{what}: wrong error variant: {err}");
    for needle in needles {
        assert!(
            message.contains(needle),
            "{what}: the {variant} message does not name {needle:?}: {message}"
        );
    }
    message.to_owned()
}

// ---------------------------------------------------------------------------
// Where the library may write, and proof that it did not

/// A temp directory holding the store (`store/`) and the layer
/// destination (`dst/`), and nothing else.
struct Scene {
    root: tempfile::TempDir,
}

/// What a [`Scene`] held at one moment.
struct Snapshot {
    index: Vec<u8>,
    store_files: Vec<PathBuf>,
    all_files: Vec<PathBuf>,
}

impl Scene {
    fn new() -> Scene {
        let root = tempfile::Builder::new()
            .prefix("oci-cache-hostile-")
            .tempdir()
            .expect("creating a temp dir");
        std::fs::create_dir(root.path().join("dst")).expect("creating dst");
        Scene { root }
    }

    fn store(&self) -> PathBuf {
        self.root.path().join("store")
    }

    fn dst(&self) -> PathBuf {
        self.root.path().join("dst")
    }

    /// A cache on this scene's store, set up by `options` otherwise.
    fn cache(&self, options: CacheOptions) -> ImageCache {
        ImageCache::new(options.store(self.store())).expect("creating an ImageCache")
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            index: std::fs::read(self.store().join("index.json")).expect("reading index.json"),
            store_files: files_under(&self.store()),
            all_files: files_under(self.root.path()),
        }
    }

    /// Nothing changed since `before`: same `index.json` bytes, the same
    /// files in the store and under the scene, and no file in `dst`.
    #[track_caller]
    fn assert_untouched(&self, before: &Snapshot, what: &str) {
        let after = self.snapshot();
        assert!(
            after.index == before.index,
            "{what}: index.json changed:\nbefore: {}\nafter:  {}",
            String::from_utf8_lossy(&before.index),
            String::from_utf8_lossy(&after.index)
        );
        assert_eq!(
            after.store_files, before.store_files,
            "{what}: files in the store changed"
        );
        assert_eq!(
            files_under(&self.dst()),
            Vec::<PathBuf>::new(),
            "{what}: files left in dst"
        );
        assert_eq!(
            after.all_files, before.all_files,
            "{what}: files appeared outside the store and dst"
        );
    }
}

/// `fetch_image` of `reference` must fail with `want` naming `needles`,
/// leaving the scene as it was.
async fn assert_fetch_refused(
    scene: &Scene,
    cache: &ImageCache,
    reference: &str,
    want: &str,
    needles: &[&str],
) -> String {
    let before = scene.snapshot();
    let what = format!("fetch_image {reference}");
    let outcome = within(&what, cache.fetch_image(reference, None))
        .await
        .map(|_| ());
    let message = assert_error(outcome, want, needles, &what);
    scene.assert_untouched(&before, &what);
    message
}

/// One layer operation's refusal: which call, its message, how long it took.
struct Refusal {
    call: &'static str,
    message: String,
    took: Duration,
}

/// After `fetch_image` of `reference` succeeds, `rootfs`, `extract_layers`,
/// `extract_layer` and a streamed `fetch_layer` must each fail with `want` naming
/// `needles`, leaving the scene as it was.
async fn assert_layers_refused(
    scene: &Scene,
    cache: &ImageCache,
    reference: &str,
    want: &str,
    needles: &[&str],
) -> Vec<Refusal> {
    let image = &within("fetch_image", cache.fetch_image(reference, None))
        .await
        .expect("fetch_image");
    let dst = scene.dst();
    let mut refusals = Vec::new();
    for call in ["rootfs", "extract_layers", "extract_layer", "fetch_layer"] {
        let before = scene.snapshot();
        let what = format!("{call} of {}", image.reference());
        let started = Instant::now();
        let outcome = match call {
            "rootfs" => within(&what, cache.rootfs(image, &dst)).await.map(|_| ()),
            "extract_layers" => within(&what, cache.extract_layers(image, &dst))
                .await
                .map(|_| ()),
            "extract_layer" => within(&what, cache.extract_layer(image, 0, &dst))
                .await
                .map(|_| ()),
            _ => read_layer(cache, image, &what).await.map(|n| {
                panic!("{what}: the stream ended cleanly after {n} bytes, expected {want}")
            }),
        };
        let took = started.elapsed();
        let message = assert_error(outcome, want, needles, &what);
        scene.assert_untouched(&before, &what);
        eprintln!("{what}: {message} ({took:.1?})");
        refusals.push(Refusal {
            call,
            message,
            took,
        });
    }
    refusals
}

/// Streams layer 0 to its end; a read error gives back the library's error.
async fn read_layer(cache: &ImageCache, image: &Image, what: &str) -> Result<usize, Error> {
    let mut reader = within(what, cache.fetch_layer(image, 0)).await?;
    let mut sink = Vec::new();
    within(what, reader.read_to_end(&mut sink))
        .await
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
                Some(inner) => inner.clone(),
                None => panic!("{what}: a read error that carries no oci_cache::Error: {e:?}"),
            },
        )
}

// ---------------------------------------------------------------------------
// Fixtures

/// A compressible tar of distinct text (about 40 KB), so that gzip and
/// zstd produce real entropy-coded blocks rather than stored ones.
fn text_tar(name: &str) -> Vec<u8> {
    let body: String = (0..2000)
        .map(|i| format!("line {i} of {name}: {}\n", i * 7919 % 1013))
        .collect();
    tar_layer(&[(&format!("{name}/file.txt"), body.as_bytes())])
}

fn image_of(layers: Vec<FixtureLayer>) -> PushedImage {
    build_image("unused.invalid", REPO, layers, false, AMD64)
}

/// Serves `image` on a new fake under `tag`, every layer blob as built.
fn serve(image: &PushedImage, tag: &str) -> FakeRegistry {
    let blobs = image
        .layer_digests
        .iter()
        .zip(&image.layers)
        .map(|(digest, layer)| (digest.clone(), layer.blob.clone()))
        .collect();
    FakeRegistry::with_image(REPO, tag, &image.manifest, &image.config, blobs)
}

fn reference(fake: &FakeRegistry, tag: &str) -> String {
    format!("{}/{REPO}:{tag}", fake.host())
}

fn blob_url(digest: &str) -> String {
    format!("/v2/{REPO}/blobs/{digest}")
}

/// `manifest` (JSON) with `edit` applied.
fn edited(manifest: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(manifest).expect("a JSON manifest");
    edit(&mut value);
    serde_json::to_vec(&value).unwrap()
}

/// A manifest route with the right `Docker-Content-Digest`.
fn manifest_route(body: &[u8], media_type: &str) -> Route {
    Route {
        status: 200,
        content_type: media_type.to_owned(),
        headers: vec![("Docker-Content-Digest".into(), sha256(body))],
        body: body.to_vec(),
    }
}

/// zstd with a content checksum, which the decoder must verify.
fn zstd_checked(data: &[u8]) -> Vec<u8> {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).expect("a zstd encoder");
    encoder.include_checksum(true).expect("zstd checksum flag");
    encoder.write_all(data).expect("zstd in memory");
    encoder.finish().expect("zstd in memory")
}

/// One layer whose blob is `blob`, exactly as given (digest and size are
/// computed over it), standing for the uncompressed `tar`.
fn layer_of(media_type: &str, tar: Vec<u8>, blob: Vec<u8>) -> FixtureLayer {
    FixtureLayer::with_type(media_type, tar, blob)
}

/// Serves a one-layer image whose layer blob is served as `served`
/// instead of the blob the manifest describes, fetches it into a fresh
/// scene, and checks every layer call fails with `want` naming `needles`
/// plus the layer's digest.
async fn assert_served_layer_refused(
    case: &str,
    layer: FixtureLayer,
    served: Option<Vec<u8>>,
    options: CacheOptions,
    want: &str,
    needles: &[&str],
) -> (PushedImage, Vec<Refusal>) {
    let image = image_of(vec![layer]);
    let fake = serve(&image, case);
    if let Some(bytes) = served {
        fake.blob(REPO, &image.layer_digests[0], bytes);
    }
    let scene = Scene::new();
    let cache = scene.cache(options);
    let mut all: Vec<&str> = vec![&image.layer_digests[0]];
    all.extend_from_slice(needles);
    let refusals = assert_layers_refused(&scene, &cache, &reference(&fake, case), want, &all).await;
    (image, refusals)
}

// ---------------------------------------------------------------------------
// 1-3: blobs and tars that are not what their digests say

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_not_matching_its_digest_is_a_digest_mismatch() {
    // (case, layer, which byte to flip)
    let cases = [
        ("tar-flip", FixtureLayer::plain(text_tar("t")), None),
        ("gzip-flip", FixtureLayer::gzip(text_tar("g")), None),
        ("zstd-flip", FixtureLayer::zstd(text_tar("z")), None),
        // The gzip header's mtime: still a valid gzip of the same tar, so
        // only the blob digest can tell.
        ("gzip-mtime", FixtureLayer::gzip(text_tar("m")), Some(4)),
    ];
    for (case, layer, at) in cases {
        let mut bad = layer.blob.clone();
        let at = at.unwrap_or(bad.len() / 2);
        bad[at] ^= 0x5a;
        assert_ne!(sha256(&bad), sha256(&layer.blob));
        assert_served_layer_refused(
            case,
            layer,
            Some(bad),
            CacheOptions::new(),
            "DigestMismatch",
            &[],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_longer_than_its_descriptor_is_a_digest_mismatch() {
    // Announced: Content-Length gives the longer size away before reading.
    let layer = FixtureLayer::gzip(text_tar("long"));
    let size = layer.blob.len().to_string();
    let mut long = layer.blob.clone();
    long.extend_from_slice(&noise(1, 4096));
    assert_served_layer_refused(
        "long-announced",
        layer.clone(),
        Some(long.clone()),
        CacheOptions::new(),
        "DigestMismatch",
        &[&size],
    )
    .await;

    // Not announced: no Content-Length, the body runs until the connection
    // closes, so only counting the bytes can tell.
    let image = image_of(vec![layer]);
    let fake = serve(&image, "long-unannounced");
    let mut raw =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            .to_vec();
    raw.extend_from_slice(&long);
    fake.raw(&blob_url(&image.layer_digests[0]), raw);
    let scene = Scene::new();
    let cache = scene.cache(CacheOptions::new());
    assert_layers_refused(
        &scene,
        &cache,
        &reference(&fake, "long-unannounced"),
        "DigestMismatch",
        &[&image.layer_digests[0], &size],
    )
    .await;
}

/// The server sends fewer bytes than the descriptor's size, with a
/// Content-Length true to what it sends, and closes cleanly. The library
/// takes it for a cut connection and resumes; when no resume helps it must
/// fail naming the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_shorter_than_its_descriptor_fails_naming_the_size() {
    for (case, options) in [
        ("short-default-attempts", CacheOptions::new()),
        ("short-one-attempt", CacheOptions::new().attempts(1)),
    ] {
        let layer = FixtureLayer::gzip(text_tar(case));
        let size = layer.blob.len();
        let short = layer.blob[..size / 2].to_vec();
        let (image, _) = assert_served_layer_refused(
            case,
            layer,
            Some(short),
            options,
            "Network",
            &[&format!("of {size} bytes")],
        )
        .await;
        assert_eq!(image.layers[0].blob.len(), size);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_not_matching_its_diff_id_is_a_digest_mismatch() {
    for (case, media_type) in [
        ("diff-id-tar", OCI_LAYER_TAR),
        ("diff-id-gzip", OCI_LAYER_GZIP),
        ("diff-id-zstd", OCI_LAYER_ZSTD),
    ] {
        let real = FixtureLayer::of_type(media_type, text_tar("real"));
        // The config claims another tar than the blob holds.
        let layer = layer_of(media_type, text_tar("claimed"), real.blob);
        let diff_id = sha256(&layer.tar);
        assert_served_layer_refused(
            case,
            layer,
            None,
            CacheOptions::new(),
            "DigestMismatch",
            &[&diff_id, "diff_id"],
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// 4: digests that must never become paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_digests_are_refused_and_never_become_paths() {
    let layer = FixtureLayer::gzip(text_tar("d"));
    let good = sha256(&layer.blob);
    let hex = good.strip_prefix("sha256:").unwrap().to_owned();
    let escape = format!("sha256:../../../escaped-{}", &hex[..16]);
    let dotdot_hex = format!("sha256:../{}", &hex[3..]);
    let upper = format!("sha256:{}", hex.to_uppercase());
    let md5 = format!("md5:{}", &hex[..32]);
    // (case, where the digest goes, digest, expected variant)
    let cases = [
        ("layer-escape", "layer", escape.clone(), "InvalidContent"),
        (
            "layer-dotdot-hex",
            "layer",
            dotdot_hex.clone(),
            "InvalidContent",
        ),
        ("layer-uppercase", "layer", upper.clone(), "InvalidContent"),
        ("layer-md5", "layer", md5.clone(), "Unsupported"),
        (
            "diff-id-escape",
            "diff_id",
            escape.clone(),
            "InvalidContent",
        ),
        ("diff-id-md5", "diff_id", md5.clone(), "Unsupported"),
        ("config-escape", "config", escape.clone(), "InvalidContent"),
        (
            "config-uppercase",
            "config",
            upper.clone(),
            "InvalidContent",
        ),
    ];
    for (case, place, digest, want) in cases {
        let image = image_of(vec![layer.clone()]);
        let mut config = image.config.clone();
        if place == "diff_id" {
            config = edited(&config, |c| c["rootfs"]["diff_ids"][0] = json!(digest));
        }
        let manifest = edited(&image.manifest, |m| match place {
            "layer" => m["layers"][0]["digest"] = json!(digest),
            "config" => m["config"]["digest"] = json!(digest),
            _ => {
                m["config"]["digest"] = json!(sha256(&config));
                m["config"]["size"] = json!(config.len());
            }
        });
        // The content is there under the hostile name too, should a
        // request for it ever go out.
        let fake = FakeRegistry::with_image(
            REPO,
            case,
            &manifest,
            &config,
            vec![
                (good.clone(), layer.blob.clone()),
                (digest.clone(), layer.blob.clone()),
            ],
        );
        let scene = Scene::new();
        let cache = scene.cache(CacheOptions::new());
        let outside = scene
            .root
            .path()
            .parent()
            .unwrap()
            .join(format!("escaped-{}", &hex[..16]));
        let mut needles = vec![digest.as_str()];
        if want == "Unsupported" {
            needles.push("md5");
        }
        let message =
            assert_fetch_refused(&scene, &cache, &reference(&fake, case), want, &needles).await;
        eprintln!("{case}: {want}: {message}");
        assert!(
            !outside.exists(),
            "{case}: {} was created outside the scene",
            outside.display()
        );
        let config_path = blob_url(&sha256(&config));
        let blob_requests: Vec<String> = fake
            .recorded_requests(None)
            .into_iter()
            .filter(|r| r.path.contains("/blobs/") && r.path != config_path)
            .map(|r| r.target)
            .collect();
        assert_eq!(
            blob_requests,
            Vec::<String>::new(),
            "{case}: blobs were requested for a refused digest"
        );
    }
}

// ---------------------------------------------------------------------------
// 5: oversized and malformed metadata

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifest_is_invalid_content_naming_the_limit() {
    let mut big =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","pad":""#
            .to_vec();
    big.extend_from_slice(&vec![b'x'; (4 << 20) + 1]);
    big.extend_from_slice(br#""}"#);
    let fake = FakeRegistry::start();
    // Announced in Content-Length.
    fake.route(
        &format!("/v2/{REPO}/manifests/announced"),
        manifest_route(&big, OCI_MANIFEST),
    );
    // Not announced: the body runs until the connection closes.
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nDocker-Content-Digest: {}\r\n\
         Connection: close\r\n\r\n",
        sha256(&big)
    )
    .into_bytes();
    raw.extend_from_slice(&big);
    fake.raw(&format!("/v2/{REPO}/manifests/unannounced"), raw);
    for tag in ["announced", "unannounced"] {
        let scene = Scene::new();
        let cache = scene.cache(CacheOptions::new());
        let name = format!("{REPO}:{tag}");
        let message = assert_fetch_refused(
            &scene,
            &cache,
            &reference(&fake, tag),
            "InvalidContent",
            &[&name, METADATA_LIMIT],
        )
        .await;
        eprintln!("manifest {tag}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_config_is_invalid_content_naming_the_limit() {
    let image = image_of(vec![FixtureLayer::gzip(text_tar("c"))]);
    // The config is served as declared: over 4 MiB of valid JSON.
    let mut config: Value = serde_json::from_slice(&image.config).unwrap();
    config["pad"] = json!("x".repeat((4 << 20) + 1));
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = edited(&image.manifest, |m| {
        m["config"]["digest"] = json!(sha256(&config));
        m["config"]["size"] = json!(config.len());
    });
    let fake = FakeRegistry::with_image(REPO, "big-config", &manifest, &config, vec![]);
    let scene = Scene::new();
    let cache = scene.cache(CacheOptions::new());
    let config_digest = sha256(&config);
    let message = assert_fetch_refused(
        &scene,
        &cache,
        &reference(&fake, "big-config"),
        "InvalidContent",
        &[&config_digest, METADATA_LIMIT],
    )
    .await;
    eprintln!("big config: {message}");
    assert_eq!(
        fake.requests(&blob_url(&config_digest)),
        0,
        "an oversized config was downloaded anyway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_or_config_that_is_not_json_is_invalid_content() {
    let image = image_of(vec![FixtureLayer::gzip(text_tar("j"))]);
    let not_json = b"<html><body>502 Bad Gateway</body></html>".to_vec();

    let fake = FakeRegistry::start();
    fake.add_image(REPO, "manifest-not-json", &not_json, &image.config, vec![]);
    let name = format!("{REPO}:manifest-not-json");
    let scene = Scene::new();
    let cache = scene.cache(CacheOptions::new());
    let message = assert_fetch_refused(
        &scene,
        &cache,
        &reference(&fake, "manifest-not-json"),
        "InvalidContent",
        &[&name],
    )
    .await;
    eprintln!("manifest not JSON: {message}");

    let manifest = edited(&image.manifest, |m| {
        m["config"]["digest"] = json!(sha256(&not_json));
        m["config"]["size"] = json!(not_json.len());
    });
    fake.add_image(REPO, "config-not-json", &manifest, &not_json, vec![]);
    let scene = Scene::new();
    let cache = scene.cache(CacheOptions::new());
    let message = assert_fetch_refused(
        &scene,
        &cache,
        &reference(&fake, "config-not-json"),
        "InvalidContent",
        &[&sha256(&not_json)],
    )
    .await;
    eprintln!("config not JSON: {message}");
}

// ---------------------------------------------------------------------------
// 6: indexes that point at indexes

/// An OCI index with one linux/amd64 entry pointing at `digest`, declared
/// as an index itself.
fn index_pointing_at(digest: &str, size: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_INDEX,
            "digest": digest,
            "size": size,
            "platform": {"os": "linux", "architecture": "amd64"},
        }],
    }))
    .unwrap()
}

/// Content addressing makes a true loop (A names B's digest, B names A's)
/// impossible to serve honestly: each digest would cover the other. So the
/// loop is closed by lying, and must be refused at the first nested index,
/// or where the lie shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_loops_are_refused() {
    let amd64: Platform = "linux/amd64".parse().unwrap();
    let fake = FakeRegistry::start();
    let manifests = format!("/v2/{REPO}/manifests");

    // A (tag) -> B (an index) -> X, where the fake serves A again.
    let x = sha256(b"where the loop closes");
    let b = index_pointing_at(&x, 1000);
    let a = index_pointing_at(&sha256(&b), b.len());
    fake.route(
        &format!("{manifests}/nested"),
        manifest_route(&a, OCI_INDEX),
    );
    fake.route(
        &format!("{manifests}/{}", sha256(&b)),
        manifest_route(&b, OCI_INDEX),
    );
    let mut lie = manifest_route(&a, OCI_INDEX);
    lie.headers = vec![("Docker-Content-Digest".into(), x.clone())];
    fake.route(&format!("{manifests}/{x}"), lie);
    let scene = Scene::new();
    let cache = scene.cache(CacheOptions::new().platform(amd64.clone()));
    let b_digest = sha256(&b);
    let message = assert_fetch_refused(
        &scene,
        &cache,
        &reference(&fake, "nested"),
        "Unsupported",
        &[&b_digest, "index"],
    )
    .await;
    eprintln!("A -> B -> A: {message}");
    assert_eq!(
        fake.requests(&format!("{manifests}/{x}")),
        0,
        "the library followed a nested index"
    );

    // A (tag) -> D, where the fake serves A itself: A points at itself.
    let d = sha256(b"the index itself, supposedly");
    let a = index_pointing_at(&d, 1000);
    fake.route(&format!("{manifests}/self"), manifest_route(&a, OCI_INDEX));
    let mut lie = manifest_route(&a, OCI_INDEX);
    lie.headers = vec![("Docker-Content-Digest".into(), d.clone())];
    fake.route(&format!("{manifests}/{d}"), lie);
    let scene = Scene::new();
    let cache = scene.cache(CacheOptions::new().platform(amd64));
    let message = assert_fetch_refused(
        &scene,
        &cache,
        &reference(&fake, "self"),
        "DigestMismatch",
        &[&d],
    )
    .await;
    eprintln!("A -> A: {message}");
    assert!(
        fake.requests(&format!("{manifests}/{d}")) <= 1,
        "the self-referencing index was fetched more than once"
    );
}

// ---------------------------------------------------------------------------
// 7: a config that does not match its manifest

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_manifest_disagreeing_on_layer_count_is_invalid_content() {
    let layers = vec![
        FixtureLayer::gzip(text_tar("one")),
        FixtureLayer::gzip(text_tar("two")),
    ];
    let image = image_of(layers);
    // (case, diff_ids kept, manifest layers kept)
    for (case, diff_ids, manifest_layers) in [("fewer-diff-ids", 1, 2), ("more-diff-ids", 2, 1)] {
        let config = edited(&image.config, |c| {
            c["rootfs"]["diff_ids"] = json!(image.diff_ids[..diff_ids].to_vec());
        });
        let manifest = edited(&image.manifest, |m| {
            m["config"]["digest"] = json!(sha256(&config));
            m["config"]["size"] = json!(config.len());
            let layers = m["layers"].as_array().unwrap()[..manifest_layers].to_vec();
            m["layers"] = json!(layers);
        });
        let blobs = image
            .layer_digests
            .iter()
            .zip(&image.layers)
            .map(|(d, l)| (d.clone(), l.blob.clone()))
            .collect();
        let fake = FakeRegistry::with_image(REPO, case, &manifest, &config, blobs);
        let scene = Scene::new();
        let cache = scene.cache(CacheOptions::new());
        let name = format!("{REPO}:{case}");
        let counts = format!("{manifest_layers} layers");
        let ids = format!("{diff_ids} diff_ids");
        let message = assert_fetch_refused(
            &scene,
            &cache,
            &reference(&fake, case),
            "InvalidContent",
            &[&name, &counts, &ids],
        )
        .await;
        eprintln!("{case}: {message}");
    }
}

// ---------------------------------------------------------------------------
// 8-10: compressed streams the decoder must reject, and unknown types

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_truncated_compressed_layers_are_invalid_content() {
    let tar = text_tar("corrupt");
    let flip_middle = |mut blob: Vec<u8>| {
        let middle = blob.len() / 2;
        for byte in &mut blob[middle..middle + 8] {
            *byte ^= 0xff;
        }
        blob
    };
    let halve = |blob: Vec<u8>| blob[..blob.len() / 2].to_vec();
    // The blob is exactly what the manifest describes (digest and size are
    // computed over the damaged bytes): only the decoder can tell.
    let cases = [
        (
            "gzip-corrupt",
            OCI_LAYER_GZIP,
            flip_middle(gzip(&tar)),
            "gzip",
        ),
        ("gzip-truncated", OCI_LAYER_GZIP, halve(gzip(&tar)), "gzip"),
        (
            "zstd-corrupt",
            OCI_LAYER_ZSTD,
            flip_middle(zstd_checked(&tar)),
            "zstd",
        ),
        ("zstd-truncated", OCI_LAYER_ZSTD, halve(zstd(&tar)), "zstd"),
        (
            "docker-gzip-truncated",
            DOCKER_LAYER_GZIP,
            halve(gzip(&tar)),
            "gzip",
        ),
    ];
    for (case, media_type, blob, codec) in cases {
        let layer = layer_of(media_type, tar.clone(), blob);
        assert_served_layer_refused(
            case,
            layer,
            None,
            CacheOptions::new(),
            "InvalidContent",
            &[codec],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_garbage_after_a_compressed_stream_is_invalid_content() {
    let tar = text_tar("trailing");
    let garbage = b"this is not another gzip member or zstd frame".to_vec();
    let cases = [
        ("gzip-trailing", OCI_LAYER_GZIP, gzip(&tar), "gzip"),
        ("zstd-trailing", OCI_LAYER_ZSTD, zstd(&tar), "zstd"),
    ];
    for (case, media_type, mut blob, codec) in cases {
        blob.extend_from_slice(&garbage);
        let layer = layer_of(media_type, tar.clone(), blob);
        assert_served_layer_refused(
            case,
            layer,
            None,
            CacheOptions::new(),
            "InvalidContent",
            &[codec],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_layer_media_type_is_unsupported_naming_it() {
    let media_type = "application/vnd.oci.image.layer.v1.tar+bzip2";
    let tar = text_tar("bzip2");
    let layer = layer_of(media_type, tar.clone(), tar);
    let digest = sha256(&layer.blob);
    assert_served_layer_refused(
        "bzip2",
        layer,
        None,
        CacheOptions::new(),
        "Unsupported",
        &[media_type],
    )
    .await;
    // Refused before any download: a fresh fake counts the requests.
    let image = image_of(vec![layer_of(
        media_type,
        text_tar("bzip2"),
        text_tar("bzip2"),
    )]);
    let fake = serve(&image, "bzip2");
    let cache = ImageCache::new(CacheOptions::new()).unwrap();
    let pulled = within(
        "fetch_image",
        cache.fetch_image(&reference(&fake, "bzip2"), None),
    )
    .await
    .expect("fetch_image");
    let dst = tempfile::tempdir().unwrap();
    let outcome = within("rootfs", cache.rootfs(&pulled, dst.path()))
        .await
        .map(|_| ());
    assert_error(
        outcome,
        "Unsupported",
        &[media_type],
        "rootfs without store",
    );
    assert_eq!(fake.requests(&blob_url(&digest)), 0);
}

// ---------------------------------------------------------------------------
// 11: redirects

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_loops_are_network_errors() {
    for case in ["self-loop", "two-step-loop"] {
        let layer = FixtureLayer::gzip(text_tar(case));
        let image = image_of(vec![layer]);
        let fake = serve(&image, case);
        let blob = blob_url(&image.layer_digests[0]);
        let host = fake.host();
        if case == "self-loop" {
            fake.redirect(&blob, 302, &format!("http://{host}{blob}"));
        } else {
            let elsewhere = "/elsewhere/b";
            fake.redirect(&blob, 302, &format!("http://{host}{elsewhere}"));
            fake.redirect(elsewhere, 302, &format!("http://{host}{blob}"));
        }
        let scene = Scene::new();
        let cache = scene.cache(CacheOptions::new());
        assert_layers_refused(
            &scene,
            &cache,
            &reference(&fake, case),
            "Network",
            &[&image.layer_digests[0], "redirect"],
        )
        .await;
        assert!(fake.requests(&blob) > 1);
    }
}

/// A registry requiring Basic auth redirects a blob to another origin (a
/// storage service): the pull succeeds, and the credentials stay with the
/// registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_blob_redirect_drops_the_credentials() {
    let (user, password) = ("hostile-user", "hostile-p4ss");
    let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
    // (case, the storage's address): another port, another loopback address.
    for (case, storage_ip) in [("other-port", "127.0.0.1"), ("other-ip", "127.0.0.2")] {
        let tar = text_tar(case);
        let layer = FixtureLayer::gzip(tar.clone());
        let image = image_of(vec![layer]);
        let registry = serve(&image, case);
        registry.require_basic_auth(user, password);
        let storage = FakeRegistry::start_on(storage_ip.parse().unwrap());
        let digest = &image.layer_digests[0];
        let stored = format!("/storage/{}", digest.replace(':', "-"));
        storage.route(
            &stored,
            Route {
                status: 200,
                content_type: "application/octet-stream".into(),
                headers: vec![],
                body: image.layers[0].blob.clone(),
            },
        );
        registry.redirect(
            &blob_url(digest),
            307,
            &format!("http://{}{stored}", storage.host()),
        );

        let scene = Scene::new();
        let cache = scene.cache(CacheOptions::new().credentials(registry.host(), user, password));
        let pulled = within(
            "fetch_image",
            cache.fetch_image(&reference(&registry, case), None),
        )
        .await
        .unwrap_or_else(|e| panic!("{case}: fetch_image: {e}"));
        let files = within("rootfs", cache.rootfs(&pulled, &scene.dst()))
            .await
            .unwrap_or_else(|e| panic!("{case}: rootfs through a redirect: {e}"));
        assert_eq!(files.len(), 1);
        let hex = image.diff_ids[0].strip_prefix("sha256:").unwrap();
        let on_disk = std::fs::read(scene.dst().join("sha256").join(hex)).expect("the layer tar");
        assert_bytes(&on_disk, &tar, "the layer fetched through the redirect");

        let at_registry = registry.recorded_requests(Some(&blob_url(digest)));
        assert!(
            at_registry
                .iter()
                .any(|r| r.header("Authorization") == Some(expected.as_str())),
            "{case}: the registry never got the credentials: {at_registry:?}"
        );
        let at_storage = storage.recorded_requests(None);
        assert!(
            !at_storage.is_empty(),
            "{case}: the redirect was not followed"
        );
        for request in &at_storage {
            assert_eq!(
                request.header("Authorization"),
                None,
                "{case}: {} {} at {} carried the registry's credentials",
                request.method,
                request.target,
                storage.host()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 12-13: silent servers and lying Content-Lengths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_blob_is_a_timeout_within_seconds() {
    for case in ["head-then-nothing", "half-then-nothing", "no-answer"] {
        let layer = FixtureLayer::gzip(noise_tar(case));
        let image = image_of(vec![layer]);
        let fake = serve(&image, case);
        let blob = blob_url(&image.layer_digests[0]);
        let pace = match case {
            "head-then-nothing" => Pace::StallAfter(0),
            "half-then-nothing" => Pace::StallAfter(image.layers[0].blob.len() / 2),
            _ => Pace::NoResponse,
        };
        fake.pace(&blob, pace);
        let scene = Scene::new();
        let cache = scene
            .cache(CacheOptions::new())
            .with_call_options(CallOptions::new().stall_timeout(Duration::from_millis(500)));
        let refusals = assert_layers_refused(
            &scene,
            &cache,
            &reference(&fake, case),
            "Timeout",
            &[&image.layer_digests[0], "stall"],
        )
        .await;
        for r in &refusals {
            assert!(
                r.took < Duration::from_secs(10),
                "{case}: {} took {:.1?} to time out a 500 ms stall",
                r.call,
                r.took
            );
        }
    }
}

/// A blob that compresses badly, so that half of it is many bytes.
fn noise_tar(name: &str) -> Vec<u8> {
    tar_layer(&[(&format!("{name}/noise"), &noise(7, 256 << 10))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_longer_than_the_body_is_a_network_error() {
    let layer = FixtureLayer::gzip(noise_tar("cl-lies"));
    let image = image_of(vec![layer]);
    let fake = serve(&image, "cl-lies");
    let blob = &image.layers[0].blob;
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        blob.len()
    )
    .into_bytes();
    raw.extend_from_slice(&blob[..blob.len() / 2]);
    fake.raw(&blob_url(&image.layer_digests[0]), raw);
    let scene = Scene::new();
    let cache = scene.cache(CacheOptions::new());
    assert_layers_refused(
        &scene,
        &cache,
        &reference(&fake, "cl-lies"),
        "Network",
        &[&image.layer_digests[0]],
    )
    .await;
}

/// A Content-Length over the descriptor's size is refused on the head
/// alone: the body never comes, so a client that read on would hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_over_the_descriptor_size_is_refused_before_reading() {
    let layer = FixtureLayer::gzip(text_tar("cl-over"));
    let image = image_of(vec![layer]);
    let fake = serve(&image, "cl-over");
    let size = image.layers[0].blob.len();
    let announced = size + 4096;
    let raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {announced}\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes();
    fake.raw_then_stall(&blob_url(&image.layer_digests[0]), raw);
    let scene = Scene::new();
    let cache = scene.cache(CacheOptions::new());
    let refusals = assert_layers_refused(
        &scene,
        &cache,
        &reference(&fake, "cl-over"),
        "DigestMismatch",
        &[
            &image.layer_digests[0],
            &announced.to_string(),
            &format!("{size} bytes"),
        ],
    )
    .await;
    for r in &refusals {
        eprintln!("cl-over: {} in {:.1?}: {}", r.call, r.took, r.message);
        assert!(
            r.took < Duration::from_secs(10),
            "{}: took {:.1?}",
            r.call,
            r.took
        );
    }
}

// ---------------------------------------------------------------------------
// 14: a decompression bomb

/// A tar of one file of `len` zero bytes: its zstd blob is tiny.
fn zeros_tar(len: usize) -> Vec<u8> {
    tar_layer(&[("bomb/zeros", &vec![0u8; len])])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bomb_is_extracted_by_default() {
    let tar = zeros_tar(64 << 20);
    let layer = FixtureLayer::zstd(tar.clone());
    assert!(layer.blob.len() < 64 << 10, "{} bytes", layer.blob.len());
    let image = image_of(vec![layer]);
    let fake = serve(&image, "bomb");
    let scene = Scene::new();
    let cache = scene.cache(CacheOptions::new());
    let pulled = within(
        "fetch_image",
        cache.fetch_image(&reference(&fake, "bomb"), None),
    )
    .await
    .expect("fetch_image");
    let files = within("rootfs", cache.rootfs(&pulled, &scene.dst()))
        .await
        .expect("rootfs of a 64 MiB zstd layer");
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0].metadata().unwrap().len(),
        tar.len() as u64,
        "size of the extracted tar"
    );
}

/// Needs `CacheOptions::max_layer_size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bomb_over_max_layer_size_is_invalid_content_naming_the_limit() {
    let limit: u64 = 1 << 20;
    let layer = FixtureLayer::zstd(zeros_tar(64 << 20));
    let (_, refusals) = assert_served_layer_refused(
        "bomb-limited",
        layer,
        None,
        CacheOptions::new().max_layer_size(limit),
        "InvalidContent",
        &[&limit.to_string(), "limit"],
    )
    .await;
    assert_eq!(refusals.len(), 4);
}
