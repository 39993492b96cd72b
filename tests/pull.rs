//! Pulling images from a real distribution registry (and, for content a
//! registry refuses to store, a fake one) through the public API: every
//! layer media type, platform selection, the store, rootfs reuse and
//! concurrency, and what failures leave behind.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::*;
use oci_cache::{CacheOptions, Error, ErrorKind, Image, ImageCache, Platform};
use serde_json::Value;
use tokio::io::AsyncReadExt;

/// What every cache here uses: three layers at a time, and `store` if any.
fn cache_options(store: Option<&Path>) -> CacheOptions {
    let options = CacheOptions::new().max_concurrent_layers(3);
    match store {
        Some(store) => options.store(store),
        None => options,
    }
}

fn platform(text: &str) -> Platform {
    text.parse()
        .unwrap_or_else(|e| panic!("parsing platform {text}: {e}"))
}

/// Reads a returned file from where it stands, which must be offset 0.
fn read_from_start(file: &mut File) -> Vec<u8> {
    let mut content = Vec::new();
    file.read_to_end(&mut content)
        .expect("reading a returned layer file");
    content
}

fn assert_read_only(file: &mut File, path: &Path) {
    assert!(
        file.write_all(b"x").is_err(),
        "the file returned for {} accepts writes",
        path.display()
    );
}

async fn stream_layer(cache: &ImageCache, image: &Image, index: usize) -> std::io::Result<Vec<u8>> {
    let mut reader = within("fetch_layer", cache.fetch_layer(image, index))
        .await
        .unwrap_or_else(|e| panic!("fetch_layer {index}: {e}"));
    let mut content = Vec::new();
    within("reading a layer stream", reader.read_to_end(&mut content)).await?;
    Ok(content)
}

/// Checks that `image` is what was pushed, layer by layer.
fn assert_image_matches(image: &Image, pushed: &PushedImage, reference: &str) {
    assert_eq!(image.reference(), reference);
    assert_eq!(image.digest().to_string(), pushed.manifest_digest);
    assert_bytes(image.manifest(), &pushed.manifest, "manifest");
    assert_bytes(image.config(), &pushed.config, "config");
    assert_eq!(image.layers().len(), pushed.layers.len());
    for (i, (layer, fixture)) in image.layers().iter().zip(&pushed.layers).enumerate() {
        assert_eq!(
            layer.media_type(),
            fixture.media_type,
            "layer {i} media type"
        );
        assert_eq!(
            layer.digest().to_string(),
            pushed.layer_digests[i],
            "layer {i} digest"
        );
        assert_eq!(layer.size(), fixture.blob.len() as u64, "layer {i} size");
        assert_eq!(
            layer.diff_id().to_string(),
            pushed.diff_ids[i],
            "layer {i} diff_id"
        );
    }
}

/// Checks returned files against the fixture tars, and that `dst` holds
/// exactly those files and nothing else.
fn assert_layer_files(dst: &Path, files: &mut [File], pushed: &PushedImage) {
    assert_eq!(files.len(), pushed.layers.len(), "one file per layer");
    let mut expected = Vec::new();
    for (i, file) in files.iter_mut().enumerate() {
        let path = tar_path(dst, &pushed.diff_ids[i]);
        let media_type = &pushed.layers[i].media_type;
        assert_bytes(
            &read_from_start(file),
            &pushed.layers[i].tar,
            &format!("returned file of layer {i} ({media_type})"),
        );
        let on_disk =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert_bytes(
            &on_disk,
            &pushed.layers[i].tar,
            &format!("{} on disk", path.display()),
        );
        assert_eq!(sha256(&on_disk), pushed.diff_ids[i]);
        assert_read_only(file, &path);
        expected.push(path);
        expected.push(index_path(dst, &pushed.diff_ids[i]));
    }
    expected.sort();
    expected.dedup();
    assert_eq!(
        files_under(dst),
        expected,
        "files in {} (temp files left?)",
        dst.display()
    );
}

fn index_json(store: &Path) -> Value {
    let path = store.join("index.json");
    serde_json::from_slice(&std::fs::read(&path).expect("reading index.json"))
        .expect("index.json is JSON")
}

fn ref_names(store: &Path) -> Vec<String> {
    index_json(store)["manifests"]
        .as_array()
        .expect("index.json has a manifests array")
        .iter()
        .map(|entry| {
            entry["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap_or("<no ref name>")
                .to_owned()
        })
        .collect()
}

fn store_blob(store: &Path, digest: &str) -> PathBuf {
    store
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_media_type_round_trips() {
    let registry = Registry::start();
    let host = registry.host();
    let oci_types = [
        OCI_LAYER_TAR,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_NONDIST_TAR,
        OCI_NONDIST_GZIP,
        OCI_NONDIST_ZSTD,
    ];
    let oci_layers = oci_types
        .iter()
        .enumerate()
        .map(|(i, t)| FixtureLayer::of_type(t, distinct_tar(&format!("oci{i}"))))
        .collect();
    let oci = push_image(
        &host,
        "types",
        Some("oci"),
        oci_layers,
        false,
        ("linux", "amd64", None),
    );
    let docker_layers = [DOCKER_LAYER_GZIP, DOCKER_FOREIGN_GZIP]
        .iter()
        .enumerate()
        .map(|(i, t)| FixtureLayer::of_type(t, distinct_tar(&format!("docker{i}"))))
        .collect();
    let docker = push_image(
        &host,
        "types",
        Some("docker"),
        docker_layers,
        true,
        ("linux", "amd64", None),
    );

    let cache = new_cache(cache_options(None));
    for (tag, pushed) in [("oci", &oci), ("docker", &docker)] {
        let reference = format!("{host}/types:{tag}");
        let image = within("fetch_image", cache.fetch_image(&reference, None))
            .await
            .unwrap_or_else(|e| panic!("fetch_image {reference}: {e}"));
        assert_image_matches(&image, pushed, &reference);

        let dst = tempfile::tempdir().unwrap();
        let mut files = within("extract_layers", cache.extract_layers(&image, dst.path()))
            .await
            .unwrap_or_else(|e| panic!("extract_layers {reference}: {e}"));
        assert_layer_files(dst.path(), &mut files, pushed);

        for (i, layer) in pushed.layers.iter().enumerate() {
            let streamed = stream_layer(&cache, &image, i)
                .await
                .unwrap_or_else(|e| panic!("streaming layer {i} ({}): {e}", layer.media_type));
            assert_bytes(
                &streamed,
                &layer.tar,
                &format!("streamed layer {i} ({})", layer.media_type),
            );
        }

        // One layer on its own, into a fresh directory.
        let single = tempfile::tempdir().unwrap();
        let last = pushed.layers.len() - 1;
        let mut file = within(
            "extract_layer",
            cache.extract_layer(&image, last, single.path()),
        )
        .await
        .unwrap_or_else(|e| panic!("extract_layer {last}: {e}"));
        let path = tar_path(single.path(), &pushed.diff_ids[last]);
        assert_bytes(
            &read_from_start(&mut file),
            &pushed.layers[last].tar,
            "extract_layer",
        );
        assert_read_only(&mut file, &path);
        assert_eq!(
            files_under(single.path()),
            layer_files(single.path(), [pushed.diff_ids[last].as_str()])
        );

        let out_of_range = cache
            .extract_layer(&image, pushed.layers.len(), single.path())
            .await;
        assert!(
            matches!(out_of_range, Err(ref e) if e.kind() == ErrorKind::InvalidArgument),
            "layer index out of range gave {:?}",
            out_of_range.map(|_| ())
        );
    }
}

/// Layers compressed by pigz and the zstd CLI, not by the flate2/zstd
/// crates the library decodes with (and the other fixtures use): an
/// encoder independent of the decoder. Each pulls, extracted and streamed,
/// to the tar it was made from, under the diff_id that tar hashes to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_compressed_by_pigz_and_the_zstd_cli_pull_to_their_tars() {
    let registry = Registry::start();
    let host = registry.host();
    // Over pigz's 128 KiB block size, so its independently compressed
    // blocks are joined; half noise, half text, so both compress unevenly.
    let big = |seed: u64| {
        let text = format!("line {seed}\n").repeat(30_000);
        tar_layer(&[
            (&format!("big{seed}/noise.bin"), &noise(seed, 400_000)),
            (&format!("big{seed}/text"), text.as_bytes()),
        ])
    };
    let tars = [
        big(7),
        big(8),
        distinct_tar("pigz-small"),
        distinct_tar("zstd-small"),
    ];
    let layers = vec![
        FixtureLayer::with_type(OCI_LAYER_GZIP, tars[0].clone(), pigz(&tars[0])),
        FixtureLayer::with_type(OCI_LAYER_ZSTD, tars[1].clone(), zstd_cli(&tars[1])),
        FixtureLayer::with_type(OCI_LAYER_GZIP, tars[2].clone(), pigz(&tars[2])),
        FixtureLayer::with_type(OCI_LAYER_ZSTD, tars[3].clone(), zstd_cli(&tars[3])),
    ];
    let pushed = push_image(
        &host,
        "oracle",
        Some("v1"),
        layers,
        false,
        ("linux", "amd64", None),
    );
    for (i, tar) in tars.iter().enumerate() {
        assert_eq!(pushed.diff_ids[i], sha256(tar), "diff_id of layer {i}");
    }

    let reference = format!("{host}/oracle:v1");
    let cache = new_cache(cache_options(None));
    let image = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .unwrap_or_else(|e| panic!("fetch_image {reference}: {e}"));
    assert_image_matches(&image, &pushed, &reference);
    let dst = tempfile::tempdir().unwrap();
    let mut files = within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .unwrap_or_else(|e| panic!("rootfs {reference}: {e}"));
    assert_layer_files(dst.path(), &mut files, &pushed);
    for (i, tar) in tars.iter().enumerate() {
        let streamed = stream_layer(&cache, &image, i)
            .await
            .unwrap_or_else(|e| panic!("streaming layer {i}: {e}"));
        assert_bytes(&streamed, tar, &format!("streamed layer {i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_layer_media_type_is_refused_by_name() {
    let registry = Registry::start();
    let host = registry.host();
    let media_type = "application/vnd.example.thing";
    let layer = FixtureLayer::with_type(
        media_type,
        distinct_tar("thing"),
        b"not a tar at all".to_vec(),
    );
    let pushed = push_image(
        &host,
        "odd",
        Some("v1"),
        vec![layer],
        false,
        ("linux", "amd64", None),
    );
    let reference = format!("{host}/odd:v1");
    let cache = new_cache(cache_options(None));
    let dst = tempfile::tempdir().unwrap();

    let unsupported = |result: Result<(), Error>, what: &str| match result {
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            let msg = e.message().to_owned();
            assert!(
                msg.contains(media_type),
                "{what}: message {msg:?} does not name the type"
            )
        }
        other => panic!("{what}: expected Error::Unsupported naming {media_type}, got {other:?}"),
    };
    match within("fetch_image", cache.fetch_image(&reference, None)).await {
        // Refusing the image up front is as good as refusing the layer.
        Err(e) => unsupported(Err(e), "fetch_image"),
        Ok(image) => {
            let extracted =
                within("extract_layers", cache.extract_layers(&image, dst.path())).await;
            unsupported(extracted.map(|_| ()), "extract_layers");
            let streamed = within("fetch_layer", cache.fetch_layer(&image, 0)).await;
            unsupported(streamed.map(|_| ()), "fetch_layer");
        }
    }
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
    assert_eq!(
        registry.blob_gets(&pushed.layer_digests[0]),
        0,
        "a layer of an unsupported type should not be downloaded"
    );
}

/// Pushes one image per platform (each with its own layer) by digest.
fn push_platform_images(
    host: &str,
    repo: &str,
    docker: bool,
) -> Vec<(PushedImage, PlatformSpec<'static>)> {
    // arm/v6 comes before arm/v7 so that a pick blind to variants goes wrong.
    let platforms: [PlatformSpec<'static>; 4] = [
        ("linux", "amd64", None),
        ("linux", "arm64", Some("v8")),
        ("linux", "arm", Some("v6")),
        ("linux", "arm", Some("v7")),
    ];
    platforms
        .into_iter()
        .map(|spec| {
            let name = format!("{}-{}-{}", spec.0, spec.1, spec.2.unwrap_or("none"));
            let layer = if docker {
                FixtureLayer::of_type(DOCKER_LAYER_GZIP, distinct_tar(&name))
            } else {
                FixtureLayer::gzip(distinct_tar(&name))
            };
            (
                push_image(host, repo, None, vec![layer], docker, spec),
                spec,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_is_picked_from_an_index_or_manifest_list() {
    let registry = Registry::start();
    let host = registry.host();
    for (docker, tag) in [(false, "oci-index"), (true, "docker-list")] {
        let images = push_platform_images(&host, "multi", docker);
        let entries: Vec<(&PushedImage, PlatformSpec)> =
            images.iter().map(|(i, p)| (i, *p)).collect();
        let (_, index_digest) = push_index(&host, "multi", tag, &entries, docker);
        let [amd64, arm64, armv6, armv7] = [&images[0].0, &images[1].0, &images[2].0, &images[3].0];
        let reference = format!("{host}/multi:{tag}");
        let cache = new_cache(cache_options(None));

        let resolved = within("resolve", cache.resolve(&reference))
            .await
            .expect("resolve");
        assert_eq!(
            resolved.to_string(),
            index_digest,
            "{tag}: resolve gives the index digest"
        );
        assert_eq!(resolved.algorithm(), "sha256");
        assert_eq!(Some(resolved.hex()), index_digest.strip_prefix("sha256:"));

        for (wanted, expected) in [
            ("linux/arm64", arm64),
            ("linux/arm64/v8", arm64),
            ("linux/arm", armv7),
            ("linux/arm/v7", armv7),
            ("linux/arm/v6", armv6),
            ("linux/amd64", amd64),
        ] {
            let image = within(
                "fetch_image",
                cache.fetch_image(&reference, Some(&platform(wanted))),
            )
            .await
            .unwrap_or_else(|e| panic!("{tag}: fetch_image for {wanted}: {e}"));
            assert_image_matches(&image, expected, &reference);
        }

        // The cache's own platform applies when the call names none.
        let arm_cache =
            ImageCache::new(CacheOptions::new().platform(platform("linux/arm64"))).unwrap();
        let image = within("fetch_image", arm_cache.fetch_image(&reference, None))
            .await
            .unwrap();
        assert_eq!(
            image.digest().to_string(),
            arm64.manifest_digest,
            "{tag}: default platform"
        );

        match within(
            "fetch_image",
            cache.fetch_image(&reference, Some(&platform("windows/amd64"))),
        )
        .await
        {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let msg = e.message().to_owned();
                for listed in ["linux/amd64", "linux/arm64", "linux/arm/v6", "linux/arm/v7"] {
                    assert!(
                        msg.contains(listed),
                        "{tag}: {msg:?} does not list {listed}"
                    );
                }
            }
            other => panic!(
                "{tag}: windows/amd64 gave {:?}, not NotFound",
                other.map(|i| i.digest().to_string())
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_image_downloads_no_layer_blobs() {
    let registry = Registry::start();
    let host = registry.host();
    let layers = (0..3)
        .map(|i| FixtureLayer::gzip(distinct_tar(&format!("l{i}"))))
        .collect();
    let pushed = push_image(
        &host,
        "lazy",
        Some("v1"),
        layers,
        false,
        ("linux", "amd64", None),
    );
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(cache_options(Some(store.path())));
    let image = within(
        "fetch_image",
        cache.fetch_image(&format!("{host}/lazy:v1"), None),
    )
    .await
    .expect("fetch_image");
    assert_eq!(image.layers().len(), 3);
    for digest in &pushed.layer_digests {
        assert_eq!(
            registry.blob_gets(digest),
            0,
            "layer {digest} was downloaded by fetch_image"
        );
        assert!(
            !store_blob(store.path(), digest).exists(),
            "layer {digest} is in the store"
        );
    }
    assert_eq!(
        registry.blob_gets(&pushed.config_digest),
        1,
        "the config is fetched once"
    );
    let stored = |digest: &str| {
        std::fs::read(store_blob(store.path(), digest))
            .unwrap_or_else(|e| panic!("{digest} is not in the store: {e}"))
    };
    assert_bytes(
        &stored(&pushed.manifest_digest),
        &pushed.manifest,
        "stored manifest",
    );
    assert_bytes(
        &stored(&pushed.config_digest),
        &pushed.config,
        "stored config",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_store_serves_rootfs_with_the_registry_gone() {
    let mut registry = Registry::start();
    let host = registry.host();
    let layers = vec![
        FixtureLayer::gzip(distinct_tar("a")),
        FixtureLayer::zstd(distinct_tar("b")),
        FixtureLayer::plain(distinct_tar("c")),
    ];
    let pushed = push_image(
        &host,
        "warm",
        Some("v1"),
        layers,
        false,
        ("linux", "amd64", None),
    );
    let reference = format!("{host}/warm:v1");
    let store = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    {
        let cache = new_cache(cache_options(Some(store.path())));
        let image = within("fetch_image", cache.fetch_image(&reference, None))
            .await
            .expect("fetch_image");
        let mut files = within("rootfs", cache.rootfs(&image, dst.path()))
            .await
            .expect("rootfs");
        assert_layer_files(dst.path(), &mut files, &pushed);
    }
    registry.stop();

    let cache = new_cache(cache_options(Some(store.path())));
    let image = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .unwrap_or_else(|e| panic!("offline fetch_image from the store: {e}"));
    assert_image_matches(&image, &pushed, &reference);
    let mut files = within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .unwrap_or_else(|e| panic!("offline rootfs into the warm dst: {e}"));
    assert_layer_files(dst.path(), &mut files, &pushed);
    // A fresh destination must be filled from the store's blobs alone.
    let fresh = tempfile::tempdir().unwrap();
    let mut files = within("rootfs", cache.rootfs(&image, fresh.path()))
        .await
        .unwrap_or_else(|e| panic!("offline rootfs into a fresh dst: {e}"));
    assert_layer_files(fresh.path(), &mut files, &pushed);
}

async fn refetch_missing_layer(with_store: bool) {
    let registry = Registry::start();
    let host = registry.host();
    let layers = (0..3)
        .map(|i| FixtureLayer::gzip(distinct_tar(&format!("m{i}"))))
        .collect();
    let pushed = push_image(
        &host,
        "partial",
        Some("v1"),
        layers,
        false,
        ("linux", "amd64", None),
    );
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(cache_options(with_store.then_some(store.path())));
    let image = within(
        "fetch_image",
        cache.fetch_image(&format!("{host}/partial:v1"), None),
    )
    .await
    .expect("fetch_image");
    let dst = tempfile::tempdir().unwrap();
    let mut files = within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .expect("first rootfs");
    assert_layer_files(dst.path(), &mut files, &pushed);
    let before: Vec<usize> = pushed
        .layer_digests
        .iter()
        .map(|d| registry.blob_gets(d))
        .collect();
    assert_eq!(
        before,
        [1, 1, 1],
        "the first rootfs fetches each layer once"
    );

    std::fs::remove_file(tar_path(dst.path(), &pushed.diff_ids[1])).unwrap();
    let mut files = within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .expect("second rootfs");
    assert_layer_files(dst.path(), &mut files, &pushed);
    let after: Vec<usize> = pushed
        .layer_digests
        .iter()
        .map(|d| registry.blob_gets(d))
        .collect();
    let expected = if with_store { [1, 1, 1] } else { [1, 2, 1] };
    assert_eq!(
        after, expected,
        "blob GETs per layer after re-running rootfs with layer 1 missing (store: {with_store})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootfs_without_store_fetches_only_the_missing_layer() {
    refetch_missing_layer(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootfs_with_store_restores_a_missing_layer_offline() {
    refetch_missing_layer(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rootfs_downloads_each_layer_once() {
    let registry = Registry::start();
    let host = registry.host();
    // Big enough that the downloads overlap in time.
    let layers = (0..3)
        .map(|i| {
            let noise: Vec<u8> = (0..600_000u32)
                .map(|n| (n.wrapping_mul(2_654_435_761) >> (i + 13)) as u8)
                .collect();
            FixtureLayer::gzip(tar_layer(&[(&format!("big{i}"), &noise)]))
        })
        .collect();
    let pushed = push_image(
        &host,
        "busy",
        Some("v1"),
        layers,
        false,
        ("linux", "amd64", None),
    );
    let cache = new_cache(cache_options(None));
    let image = within(
        "fetch_image",
        cache.fetch_image(&format!("{host}/busy:v1"), None),
    )
    .await
    .expect("fetch_image");
    let dst = tempfile::tempdir().unwrap();

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (cache, image, dst) = (cache.clone(), image.clone(), dst.path().to_owned());
            tokio::spawn(async move {
                let mut files = cache.rootfs(&image, &dst).await?;
                Ok::<_, Error>(files.iter_mut().map(read_from_start).collect::<Vec<_>>())
            })
        })
        .collect();
    for (n, task) in tasks.into_iter().enumerate() {
        let contents = within("a concurrent rootfs", task)
            .await
            .expect("task panicked")
            .unwrap_or_else(|e| panic!("rootfs in task {n}: {e}"));
        let expected: Vec<&[u8]> = pushed.layers.iter().map(|l| l.tar.as_slice()).collect();
        assert!(
            contents.iter().map(Vec::as_slice).eq(expected),
            "task {n} read other bytes"
        );
    }
    let mut files = within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .expect("rootfs after the rush");
    assert_layer_files(dst.path(), &mut files, &pushed);
    for digest in &pushed.layer_digests {
        assert_eq!(registry.blob_gets(digest), 1, "GETs of layer {digest}");
    }
}

/// Snapshot of a store for "a failure changed nothing" checks.
struct StoreState {
    index: Vec<u8>,
    files: Vec<PathBuf>,
}

fn store_state(store: &Path) -> StoreState {
    StoreState {
        index: std::fs::read(store.join("index.json")).expect("reading index.json"),
        files: files_under(store),
    }
}

/// Runs extract_layers, extract_layer, rootfs and a streamed read of the
/// single layer of `reference`, each of which must fail with a digest
/// mismatch, leaving no file in its destination and the store as it was.
async fn assert_layer_rejected(reference: &str, layer_digest: &str, diff_id: &str) {
    for with_store in [false, true] {
        let store = tempfile::tempdir().unwrap();
        let cache = new_cache(cache_options(with_store.then_some(store.path())));
        let image = within("fetch_image", cache.fetch_image(reference, None))
            .await
            .unwrap_or_else(|e| panic!("fetch_image {reference}: {e}"));
        assert_eq!(image.layers()[0].digest().to_string(), layer_digest);
        assert_eq!(image.layers()[0].diff_id().to_string(), diff_id);
        let before = with_store.then(|| store_state(store.path()));
        let dst = tempfile::tempdir().unwrap();

        let mismatch = |result: Result<(), Error>, what: &str| match result {
            Err(e) if e.kind() == ErrorKind::DigestMismatch => e.message().to_owned(),
            other => panic!("{what} (store: {with_store}): expected DigestMismatch, got {other:?}"),
        };
        mismatch(
            within("extract_layers", cache.extract_layers(&image, dst.path()))
                .await
                .map(|_| ()),
            "extract_layers",
        );
        mismatch(
            within("extract_layer", cache.extract_layer(&image, 0, dst.path()))
                .await
                .map(|_| ()),
            "extract_layer",
        );
        mismatch(
            within("rootfs", cache.rootfs(&image, dst.path()))
                .await
                .map(|_| ()),
            "rootfs",
        );
        let mut reader = within("fetch_layer", cache.fetch_layer(&image, 0))
            .await
            .unwrap_or_else(|e| {
                panic!("fetch_layer (store: {with_store}) failed before reading: {e}")
            });
        let mut sink = Vec::new();
        match within("reading a layer stream", reader.read_to_end(&mut sink)).await {
            Ok(n) => panic!(
                "the stream of a bad layer ended cleanly after {n} bytes (store: {with_store})"
            ),
            Err(e) => assert!(
                matches!(
                    e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()),
                    Some(inner) if inner.kind() == ErrorKind::DigestMismatch
                ),
                "stream error (store: {with_store}) is not a DigestMismatch: {e:?}"
            ),
        }

        assert_eq!(
            files_under(dst.path()),
            Vec::<PathBuf>::new(),
            "files left in dst (store: {with_store})"
        );
        if with_store {
            let (after, before) = (store_state(store.path()), before.unwrap());
            assert!(
                after.index == before.index,
                "index.json changed by a failed extraction"
            );
            assert_eq!(
                after.files, before.files,
                "files in the store changed by a failed extraction"
            );
            assert!(!store_blob(store.path(), layer_digest).exists());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_blob_is_a_digest_mismatch_and_leaves_nothing() {
    // (tag, layer, byte to flip, bits to flip); every case keeps the size.
    let cases = [
        // Still valid gzip of the very same tar (the header's mtime): only
        // the blob digest can tell.
        ("gzip-mtime", FixtureLayer::gzip(distinct_tar("g")), 4, 0x01),
        // One byte of file content, past the 512-byte tar header.
        (
            "tar-flip",
            FixtureLayer::plain(distinct_tar("t")),
            600,
            0x20,
        ),
    ];
    for (tag, layer, offset, bits) in cases {
        let built = build_image(
            "unused.invalid",
            "bad",
            vec![layer],
            false,
            ("linux", "amd64", None),
        );
        let mut bad_blob = built.layers[0].blob.clone();
        bad_blob[offset] ^= bits;
        assert_eq!(bad_blob.len(), built.layers[0].blob.len());
        assert_ne!(sha256(&bad_blob), built.layer_digests[0]);
        let fake = FakeRegistry::with_image(
            "bad",
            tag,
            &built.manifest,
            &built.config,
            vec![(built.layer_digests[0].clone(), bad_blob)],
        );
        let reference = format!("{}/bad:{tag}", fake.host());
        assert_layer_rejected(&reference, &built.layer_digests[0], &built.diff_ids[0]).await;
        assert!(fake.requests(&format!("/v2/bad/blobs/{}", built.layer_digests[0])) > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_diff_id_is_a_digest_mismatch_and_leaves_nothing() {
    // A registry checks blob digests but never what a config claims, so the
    // real one serves this image.
    let registry = Registry::start();
    let host = registry.host();
    let real = distinct_tar("real");
    let claimed = distinct_tar("claimed");
    let layer = FixtureLayer::with_type(OCI_LAYER_GZIP, claimed.clone(), gzip(&real));
    let pushed = push_image(
        &host,
        "liar",
        Some("v1"),
        vec![layer],
        false,
        ("linux", "amd64", None),
    );
    assert_eq!(pushed.diff_ids[0], sha256(&claimed));
    assert_layer_rejected(
        &format!("{host}/liar:v1"),
        &pushed.layer_digests[0],
        &pushed.diff_ids[0],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_is_readable_by_skopeo_and_umoci() {
    let skopeo = require_tool("skopeo", "apt-get install -y skopeo");
    let registry = Registry::start();
    let host = registry.host();
    let layers = vec![
        FixtureLayer::gzip(distinct_tar("s0")),
        FixtureLayer::gzip(distinct_tar("s1")),
    ];
    let pushed = push_image(
        &host,
        "tools",
        Some("v1"),
        layers,
        false,
        ("linux", "amd64", None),
    );
    let reference = format!("{host}/tools:v1");
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(cache_options(Some(store.path())));
    let image = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .expect("fetch_image");
    let dst = tempfile::tempdir().unwrap();
    within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .expect("rootfs");

    let output = Command::new(&skopeo)
        .arg("inspect")
        .arg(format!("oci:{}:{reference}", store.path().display()))
        .output()
        .expect("running skopeo");
    assert!(
        output.status.success(),
        "skopeo inspect failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let inspected: Value = serde_json::from_slice(&output.stdout).expect("skopeo prints JSON");
    assert_eq!(inspected["Digest"], pushed.manifest_digest.as_str());
    assert_eq!(inspected["Layers"], serde_json::json!(pushed.layer_digests));

    // skopeo copies the image out of the store, checking every blob
    // against its digest as it goes: each is the one pushed, byte for byte.
    let out = tempfile::tempdir().unwrap();
    let copied = out.path().join("copy");
    let copy = run(
        "skopeo copy",
        Command::new(&skopeo)
            .arg("copy")
            .arg("--preserve-digests")
            .arg(format!("oci:{}:{reference}", store.path().display()))
            .arg(format!("dir:{}", copied.display())),
        Duration::from_secs(60),
    );
    assert!(copy.status.success(), "skopeo copy: {}", copy.describe());
    assert_bytes(
        &std::fs::read(copied.join("manifest.json")).unwrap(),
        &pushed.manifest,
        "manifest skopeo copied",
    );
    let hex = |digest: &str| digest["sha256:".len()..].to_owned();
    assert_bytes(
        &std::fs::read(copied.join(hex(&pushed.config_digest))).unwrap(),
        &pushed.config,
        "config skopeo copied",
    );
    assert_eq!(pushed.layer_digests.len(), 2);
    for (digest, layer) in pushed.layer_digests.iter().zip(&pushed.layers) {
        assert_bytes(
            &std::fs::read(copied.join(hex(digest))).unwrap(),
            &layer.blob,
            &format!("layer {digest} skopeo copied"),
        );
    }

    let umoci = require_tool("umoci", "apt-get install -y umoci");
    let output = Command::new(umoci)
        .arg("stat")
        .arg("--image")
        .arg(format!("{}:{reference}", store.path().display()))
        .output()
        .expect("running umoci");
    assert!(
        output.status.success(),
        "umoci stat failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // umoci unpacks the stored layers with its own gzip and tar readers:
    // the root filesystem holds exactly the files pushed.
    let bundle = out.path().join("bundle");
    let unpack = run(
        "umoci unpack",
        Command::new(require_tool("umoci", "apt-get install -y umoci"))
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:{reference}", store.path().display()))
            .arg(&bundle),
        Duration::from_secs(60),
    );
    assert!(
        unpack.status.success(),
        "umoci unpack: {}",
        unpack.describe()
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        files_under(&rootfs),
        vec![
            rootfs.join("s0/empty"),
            rootfs.join("s0/file.txt"),
            rootfs.join("s1/empty"),
            rootfs.join("s1/file.txt"),
        ]
    );
    for name in ["s0", "s1"] {
        assert_bytes(
            &std::fs::read(rootfs.join(name).join("file.txt")).unwrap(),
            format!("content of {name}\n").repeat(50).as_bytes(),
            &format!("{name}/file.txt unpacked by umoci"),
        );
        assert_eq!(std::fs::read(rootfs.join(name).join("empty")).unwrap(), b"");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_digests_and_missing_tags() {
    let registry = Registry::start();
    let host = registry.host();
    let layers = vec![FixtureLayer::gzip(distinct_tar("p"))];
    let pushed = push_image(
        &host,
        "pinned",
        Some("v1"),
        layers,
        false,
        ("linux", "amd64", None),
    );
    let cache = new_cache(cache_options(None));

    let right = format!("{host}/pinned@{}", pushed.manifest_digest);
    let image = within("fetch_image", cache.fetch_image(&right, None))
        .await
        .unwrap_or_else(|e| panic!("fetch_image {right}: {e}"));
    assert_eq!(image.digest().to_string(), pushed.manifest_digest);
    assert_bytes(image.manifest(), &pushed.manifest, "manifest by digest");
    let resolved = within("resolve", cache.resolve(&right))
        .await
        .expect("resolve pinned");
    assert_eq!(resolved.to_string(), pushed.manifest_digest);

    let nowhere = format!("{host}/pinned@{}", sha256(b"this manifest exists nowhere"));
    match within("fetch_image", cache.fetch_image(&nowhere, None)).await {
        Err(ref e) if e.kind() == ErrorKind::NotFound => {}
        other => panic!(
            "{nowhere}: expected NotFound, got {:?}",
            other.map(|i| i.digest().to_string())
        ),
    }

    let missing = format!("{host}/pinned:no-such-tag");
    match within("fetch_image", cache.fetch_image(&missing, None)).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let msg = e.message().to_owned();
            assert!(
                msg.contains("pinned:no-such-tag"),
                "{msg:?} does not name the reference"
            )
        }
        other => panic!(
            "{missing}: expected NotFound, got {:?}",
            other.map(|i| i.digest().to_string())
        ),
    }
    match within("resolve", cache.resolve(&missing)).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let msg = e.message().to_owned();
            assert!(
                msg.contains("pinned:no-such-tag"),
                "{msg:?} does not name the reference"
            )
        }
        other => panic!("resolve {missing}: expected NotFound, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_json_has_one_entry_per_reference() {
    let registry = Registry::start();
    let host = registry.host();
    let one = push_image(
        &host,
        "tags",
        Some("one"),
        vec![FixtureLayer::gzip(distinct_tar("one"))],
        false,
        ("linux", "amd64", None),
    );
    let two = push_image(
        &host,
        "tags",
        Some("two"),
        vec![FixtureLayer::gzip(distinct_tar("two"))],
        true,
        ("linux", "amd64", None),
    );
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(cache_options(Some(store.path())));
    for tag in ["one", "two", "one"] {
        within(
            "fetch_image",
            cache.fetch_image(&format!("{host}/tags:{tag}"), None),
        )
        .await
        .unwrap_or_else(|e| panic!("fetch_image tags:{tag}: {e}"));
    }
    // A second cache on the same store must not duplicate either.
    let again = new_cache(cache_options(Some(store.path())));
    within(
        "fetch_image",
        again.fetch_image(&format!("{host}/tags:two"), None),
    )
    .await
    .expect("refetch");

    let mut names = ref_names(store.path());
    names.sort();
    assert_eq!(
        names,
        [format!("{host}/tags:one"), format!("{host}/tags:two")]
    );
    for entry in index_json(store.path())["manifests"].as_array().unwrap() {
        let name = entry["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap();
        let pushed = if name.ends_with(":one") { &one } else { &two };
        assert_eq!(entry["digest"], pushed.manifest_digest.as_str(), "{name}");
        assert_eq!(
            entry["mediaType"],
            pushed.manifest_media_type.as_str(),
            "{name}"
        );
        assert_eq!(entry["size"], pushed.manifest.len(), "{name}");
    }
}

/// A one-layer image on a fake registry, for the cases below.
fn fake_image(tag: &str) -> (FakeRegistry, PushedImage) {
    let built = build_image(
        "unused.invalid",
        "lies",
        vec![FixtureLayer::gzip(distinct_tar(tag))],
        false,
        ("linux", "amd64", None),
    );
    let blobs = vec![(built.layer_digests[0].clone(), built.layers[0].blob.clone())];
    let fake = FakeRegistry::with_image("lies", tag, &built.manifest, &built.config, blobs);
    (fake, built)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_contradicting_docker_content_digest_is_refused() {
    let (fake, built) = fake_image("header");
    let wrong = sha256(b"some other manifest");
    fake.route(
        "/v2/lies/manifests/header",
        Route {
            status: 200,
            content_type: OCI_MANIFEST.into(),
            headers: vec![("Docker-Content-Digest".into(), wrong.clone())],
            body: built.manifest.clone(),
        },
    );
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(cache_options(Some(store.path())));
    let before = std::fs::read(store.path().join("index.json")).unwrap();
    let reference = format!("{}/lies:header", fake.host());
    match within("fetch_image", cache.fetch_image(&reference, None)).await {
        Err(e) if e.kind() == ErrorKind::DigestMismatch => {
            let msg = e.message().to_owned();
            assert!(msg.contains(&wrong), "{msg}")
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(store.path().join("index.json")).unwrap(),
        before
    );
    assert_eq!(ref_names(store.path()), Vec::<String>::new());
    assert!(!store_blob(store.path(), &built.manifest_digest).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_longer_than_its_descriptor_is_cut_off() {
    let (fake, built) = fake_image("long");
    let mut long_blob = built.layers[0].blob.clone();
    long_blob.extend_from_slice(&[0u8; 4096]);
    fake.blob("lies", &built.layer_digests[0], long_blob);
    let dst = tempfile::tempdir().unwrap();
    let cache = new_cache(cache_options(None));
    let image = within(
        "fetch_image",
        cache.fetch_image(&format!("{}/lies:long", fake.host()), None),
    )
    .await
    .unwrap();
    match within("rootfs", cache.rootfs(&image, dst.path())).await {
        Err(e) if e.kind() == ErrorKind::DigestMismatch => {
            let msg = e.message().to_owned();
            assert!(msg.contains(&built.layer_digests[0]), "{msg}");
            assert!(
                msg.contains(&format!("{} bytes", built.layers[0].blob.len())),
                "{msg}"
            );
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_config_is_refused_before_download() {
    let (fake, built) = fake_image("huge");
    let mut manifest: Value = serde_json::from_slice(&built.manifest).unwrap();
    manifest["config"]["size"] = Value::from(5u64 << 20);
    let manifest = serde_json::to_vec(&manifest).unwrap();
    fake.add_image("lies", "huge", &manifest, &built.config, vec![]);
    let cache = new_cache(cache_options(None));
    match within(
        "fetch_image",
        cache.fetch_image(&format!("{}/lies:huge", fake.host()), None),
    )
    .await
    {
        Err(e) if e.kind() == ErrorKind::InvalidContent => {
            let msg = e.message().to_owned();
            assert!(msg.contains(&built.config_digest), "{msg}")
        }
        other => panic!("expected InvalidContent, got {other:?}"),
    }
    assert_eq!(
        fake.requests(&format!("/v2/lies/blobs/{}", built.config_digest)),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_registry_is_a_network_error_naming_the_host() {
    // Bind then drop: nothing listens on this port afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = new_cache(cache_options(None));
    let reference = format!("127.0.0.1:{port}/nobody:home");
    match within("fetch_image", cache.fetch_image(&reference, None)).await {
        Err(e) if e.kind() == ErrorKind::Network => {
            let msg = e.message().to_owned();
            assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}")
        }
        other => panic!("expected Network, got {other:?}"),
    }
    match within("resolve", cache.resolve("not a reference")).await {
        Err(e) if e.kind() == ErrorKind::InvalidArgument => {
            let msg = e.message().to_owned();
            assert!(msg.contains("not a reference"), "{msg}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_platform_is_enforced_on_single_platform_images() {
    let registry = Registry::start();
    let host = registry.host();
    let pushed = push_image(
        &host,
        "single",
        Some("arm64"),
        vec![FixtureLayer::gzip(distinct_tar("single"))],
        false,
        ("linux", "arm64", Some("v8")),
    );
    let reference = format!("{host}/single:arm64");

    // The host default picks from indexes only, as docker does.
    let image = within(
        "default",
        new_cache(cache_options(None)).fetch_image(&reference, None),
    )
    .await
    .unwrap();
    assert_eq!(image.digest().to_string(), pushed.manifest_digest);

    let cache = new_cache(cache_options(None));
    let arm64 = platform("linux/arm64");
    let image = within("arm64", cache.fetch_image(&reference, Some(&arm64)))
        .await
        .unwrap();
    assert_eq!(image.digest().to_string(), pushed.manifest_digest);

    let amd64 = platform("linux/amd64");
    match within("amd64", cache.fetch_image(&reference, Some(&amd64))).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let msg = e.message().to_owned();
            assert!(
                msg.contains("linux/arm64") && msg.contains("linux/amd64"),
                "{msg}"
            )
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    let pinned = ImageCache::new(CacheOptions::new().platform(amd64)).unwrap();
    assert!(matches!(
        within("option", pinned.fetch_image(&reference, None)).await,
        Err(ref e) if e.kind() == ErrorKind::NotFound
    ));
}

/// Pulls `reference` to rootfs in a new directory and checks that every
/// tar, bottom first, is the one pushed.
async fn pull_checked(cache: &ImageCache, reference: &str, pushed: &PushedImage) -> Image {
    let image = within("fetch_image", cache.fetch_image(reference, None))
        .await
        .unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mut files = within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .unwrap();
    assert_eq!(files.len(), pushed.layers.len(), "one file per layer");
    for (index, file) in files.iter_mut().enumerate() {
        assert_bytes(&read_from_start(file), &pushed.layers[index].tar, "layer");
    }
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_are_fetched_largest_first() {
    let registry = Registry::start();
    let host = registry.host();
    let pushed = push_noise_image(
        &host,
        "order",
        &[(7, 2_000), (8, 300_000), (9, 60_000), (10, 150_000)],
    );
    let cache = ImageCache::new(CacheOptions::new().max_concurrent_layers(1)).unwrap();
    // Files come back bottom first whatever order they were fetched in.
    pull_checked(&cache, &format!("{host}/order:v1"), &pushed).await;
    let fetched: Vec<usize> = registry
        .requests()
        .iter()
        .filter_map(|line| {
            let path = line.strip_prefix("GET /v2/order/blobs/")?;
            pushed
                .layer_digests
                .iter()
                .position(|digest| path.starts_with(digest.as_str()))
        })
        .collect();
    assert_eq!(fetched, [1, 3, 2, 0], "layer GETs, in the order served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_without_layer_blobs_keeps_manifests_and_configs_only() {
    let registry = Registry::start();
    let host = registry.host();
    let pushed = push_noise_image(&host, "lean", &[(7, 40_000), (8, 20_000)]);
    let store = tempfile::tempdir().unwrap();
    let options = CacheOptions::new()
        .store(store.path())
        .keep_layer_blobs(false);
    let cache = ImageCache::new(options).unwrap();
    let reference = format!("{host}/lean:v1");
    let image = pull_checked(&cache, &reference, &pushed).await;
    let mut expected = vec![
        store.path().join(".oci-cache.lock"),
        store.path().join("index.json"),
        store.path().join("oci-layout"),
        store_blob(store.path(), &pushed.manifest_digest),
        store_blob(store.path(), &pushed.config_digest),
    ];
    expected.sort();
    assert_eq!(files_under(store.path()), expected);
    assert_eq!(ref_names(store.path()), [reference]);

    // A layer missing from a new dst comes from the registry again.
    let again = tempfile::tempdir().unwrap();
    within("rootfs", cache.rootfs(&image, again.path()))
        .await
        .unwrap();
    for digest in &pushed.layer_digests {
        assert_eq!(registry.blob_gets(digest), 2, "GETs of {digest}");
    }
    assert_eq!(files_under(store.path()), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_rootfs_is_opened_only_when_every_layer_is_there() {
    let registry = Registry::start();
    let host = registry.host();
    let pushed = push_noise_image(&host, "warm", &[(7, 5_000), (8, 9_000), (9, 3_000)]);
    let cache = new_cache(cache_options(None));
    let image = within(
        "fetch_image",
        cache.fetch_image(&format!("{host}/warm:v1"), None),
    )
    .await
    .unwrap();
    let dst = tempfile::tempdir().unwrap();
    assert!(cache.rootfs_cached(&image, dst.path()).is_none());
    within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .unwrap();
    let mut files = cache
        .rootfs_cached(&image, dst.path())
        .expect("all layers are there");
    assert_eq!(files.len(), pushed.layers.len(), "one file per layer");
    for (index, file) in files.iter_mut().enumerate() {
        assert_bytes(&read_from_start(file), &pushed.layers[index].tar, "layer");
    }
    std::fs::remove_file(tar_path(dst.path(), &pushed.diff_ids[1])).unwrap();
    assert!(cache.rootfs_cached(&image, dst.path()).is_none());
}
