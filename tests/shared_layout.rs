//! A store shared with other tools and other callers loses nothing: images
//! skopeo wrote (tagged or not) and foreign entries of any media type
//! survive the library's remove and prune; a concurrent pull never loses
//! what it recorded; a corrupt store blob is fetched again instead of
//! failing forever; and waiting for the store's lock holds no runtime
//! thread and ends on a deadline or a drop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;
use oci_cache::{CacheOptions, CallOptions, Error, ErrorKind, ImageCache, Pruned};
use serde_json::{json, Value};

const PLATFORM: PlatformSpec = ("linux", "amd64", None);

/// Long enough for any of these calls to finish when the lock is free.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// The store files an image reaches: manifest, config, layer blobs.
fn image_blobs(store: &Path, image: &PushedImage) -> Vec<PathBuf> {
    let mut paths = vec![
        blob_path(store, &image.manifest_digest),
        blob_path(store, &image.config_digest),
    ];
    paths.extend(image.layer_digests.iter().map(|d| blob_path(store, d)));
    paths
}

fn sorted(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    paths
}

/// Every file under `blobs/` hashes to its name.
#[track_caller]
fn assert_blobs_intact(store: &Path) {
    for path in files_under(&store.join("blobs")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let content = std::fs::read(&path).unwrap();
        assert_eq!(
            sha256(&content),
            format!("sha256:{name}"),
            "{}",
            path.display()
        );
    }
}

/// Rewrites a content file in place (same name, other bytes), as bit rot
/// or a careless tool would.
fn corrupt(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(path, b"bit rot").unwrap();
}

fn index_entries(store: &Path) -> Vec<Value> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    index["manifests"].as_array().unwrap().clone()
}

/// Holds the store's lock as another process sharing it would, until dropped.
fn hold_store_lock(store: &Path) -> File {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(store.join(".oci-cache.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor `file` owns.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, 0, "the store's lock is free");
    file
}

fn skopeo(args: &[&str]) -> Run {
    let skopeo = require_tool(
        "skopeo",
        "apt-get install -y --no-install-recommends skopeo",
    );
    let ran = run(
        &format!("skopeo {}", args.join(" ")),
        Command::new(skopeo).args(args),
        Duration::from_secs(60),
    );
    assert!(ran.status.success(), "{}", ran.describe());
    ran
}

/// skopeo copies an untagged and a tagged image into the store; the library
/// pulls a third (sharing a layer with the untagged one) into it and a dst,
/// removes it and prunes: skopeo's images are whole, the third's own blobs
/// and tar are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_other_tools_wrote_survive_remove_and_prune() {
    let registry = Registry::start();
    let host = registry.host();
    let shared = tar_layer(&[("shared", &noise(21, 40_000))]);
    let untagged = push_image(
        &host,
        "tools/untagged",
        Some("v1"),
        vec![
            FixtureLayer::gzip(shared.clone()),
            FixtureLayer::zstd(tar_layer(&[("u", &noise(22, 30_000))])),
        ],
        false,
        PLATFORM,
    );
    let tagged = push_image(
        &host,
        "tools/tagged",
        Some("v1"),
        vec![FixtureLayer::gzip(tar_layer(&[("t", &noise(23, 30_000))]))],
        false,
        PLATFORM,
    );
    let third = push_image(
        &host,
        "lib/third",
        Some("v1"),
        vec![
            FixtureLayer::gzip(shared.clone()),
            FixtureLayer::gzip(tar_layer(&[("own", &noise(24, 30_000))])),
        ],
        false,
        PLATFORM,
    );
    assert_eq!(third.layer_digests[0], untagged.layer_digests[0]);

    let store = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let layout = store.path().to_str().unwrap().to_owned();
    for (repo, target) in [
        ("tools/untagged", format!("oci:{layout}")),
        ("tools/tagged", format!("oci:{layout}:tagged")),
    ] {
        skopeo(&[
            "--insecure-policy",
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{host}/{repo}:v1"),
            &target,
        ]);
    }
    let entries = index_entries(store.path());
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["digest"], untagged.manifest_digest.as_str());
    assert!(
        entries[0].get("annotations").is_none(),
        "skopeo wrote an untagged entry: {entries:?}"
    );
    assert_eq!(entries[1]["digest"], tagged.manifest_digest.as_str());
    assert_eq!(
        entries[1]["annotations"]["org.opencontainers.image.ref.name"],
        "tagged"
    );
    let skopeo_blobs = sorted(
        image_blobs(store.path(), &untagged)
            .into_iter()
            .chain(image_blobs(store.path(), &tagged))
            .collect(),
    );
    assert_eq!(files_under(&store.path().join("blobs")), skopeo_blobs);

    let cache = ImageCache::new(CacheOptions::new().store(store.path())).unwrap();
    let third_ref = format!("{host}/lib/third:v1");
    let image = cache.fetch_image(&third_ref, None).await.unwrap();
    cache.rootfs(&image, dst.path()).await.unwrap();
    let listed: Vec<String> = cache
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(listed, ["tagged".to_owned(), third_ref.clone()]);

    cache.remove(&third_ref).await.unwrap();
    let third_own = [
        blob_path(store.path(), &third.manifest_digest),
        blob_path(store.path(), &third.config_digest),
        blob_path(store.path(), &third.layer_digests[1]),
        tar_path(dst.path(), &third.diff_ids[1]),
        index_path(dst.path(), &third.diff_ids[1]),
    ];
    let freed: u64 = third_own
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let pruned = cache.prune(Some(dst.path())).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            files: 5,
            bytes: freed
        }
    );
    // Exactly skopeo's blobs, whole; the shared layer's tar stays, since
    // the untagged image's config names its diff_id.
    assert_eq!(files_under(&store.path().join("blobs")), skopeo_blobs);
    assert_blobs_intact(store.path());
    assert_eq!(
        files_under(dst.path()),
        layer_files(dst.path(), [untagged.diff_ids[0].as_str()])
    );
    assert_eq!(index_entries(store.path()), entries);
    assert_eq!(
        cache.prune(Some(dst.path())).await.unwrap(),
        Pruned::default()
    );

    // skopeo still reads both: the tagged one by name, the untagged one
    // through a layout whose index.json holds its entry alone (the same
    // blobs, linked, not copied).
    let inspected = skopeo(&["inspect", &format!("oci:{layout}:tagged")]);
    let inspected: Value = serde_json::from_str(&inspected.stdout).unwrap();
    assert_eq!(inspected["Digest"], tagged.manifest_digest.as_str());
    assert_eq!(inspected["Layers"], json!(tagged.layer_digests));
    let alone = tempfile::tempdir().unwrap();
    std::fs::copy(
        store.path().join("oci-layout"),
        alone.path().join("oci-layout"),
    )
    .unwrap();
    std::fs::write(
        alone.path().join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entries[0]]})).unwrap(),
    )
    .unwrap();
    std::os::unix::fs::symlink(store.path().join("blobs"), alone.path().join("blobs")).unwrap();
    let inspected = skopeo(&["inspect", &format!("oci:{}", alone.path().display())]);
    let inspected: Value = serde_json::from_str(&inspected.stdout).unwrap();
    assert_eq!(inspected["Digest"], untagged.manifest_digest.as_str());
    assert_eq!(inspected["Layers"], json!(untagged.layer_digests));
}

/// A layout another tool wrote by hand: roots without names, of any media
/// type, reaching blobs through `manifests`, `config`, `layers`, `blobs`
/// and `subject`. Prune keeps everything reached and removes only the
/// rest; list shows the named entries and does not trip over the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_whatever_any_entry_reaches() {
    let store = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let blobs = store.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |content: &[u8]| -> (String, Value) {
        let digest = sha256(content);
        std::fs::write(blob_path(store.path(), &digest), content).unwrap();
        (digest, json!(content.len()))
    };
    let descriptor = |media_type: &str, content: &[u8]| -> Value {
        let (digest, size) = put(content);
        json!({"mediaType": media_type, "digest": digest, "size": size})
    };
    let layer_tar = tar_layer(&[("a", b"layer")]);
    let layer = descriptor(OCI_LAYER_GZIP, &gzip(&layer_tar));
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer_tar)]},
    }))
    .unwrap();
    let config = descriptor(OCI_CONFIG, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer],
    }))
    .unwrap();
    let manifest = descriptor(OCI_MANIFEST, &manifest);
    let image_index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [manifest],
    }))
    .unwrap();
    let image_index = descriptor(OCI_INDEX, &image_index);
    // An artifact of a type nobody here knows: its config and blobs are
    // opaque, it refers to the image manifest as its subject.
    let artifact_config = descriptor("application/vnd.example.config", b"opaque config");
    let artifact_blob = descriptor("application/vnd.example.data", b"opaque data");
    let artifact = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.example.artifact.v1+json",
        "config": artifact_config, "blobs": [artifact_blob], "subject": manifest,
    }))
    .unwrap();
    let artifact = descriptor("application/vnd.example.artifact.v1+json", &artifact);
    // A bare blob as a root, and a manifest only an artifact's subject reaches.
    let raw = descriptor("application/octet-stream", b"a root that is no document");
    let (orphan, _) = put(b"reached by nothing");
    let named = json!({
        "mediaType": "application/vnd.example.artifact.v1+json",
        "digest": artifact["digest"], "size": artifact["size"],
        "annotations": {"org.opencontainers.image.ref.name": "example:1"},
    });
    let index = json!({
        "schemaVersion": 2,
        "manifests": [
            image_index,
            artifact,
            raw,
            named,
            {"mediaType": "application/vnd.example", "annotations": {"note": "no digest"}},
            {"mediaType": OCI_MANIFEST, "digest": "md5:abc", "size": 1},
        ],
    });
    std::fs::write(
        store.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    std::fs::write(
        store.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::create_dir(dst.path().join("sha256")).unwrap();
    let kept_tar = tar_path(dst.path(), &sha256(&layer_tar));
    let orphan_tar = tar_path(dst.path(), &sha256(b"another tar"));
    std::fs::write(&kept_tar, &layer_tar).unwrap();
    std::fs::write(&orphan_tar, b"another tar").unwrap();
    let before = files_under(&store.path().join("blobs"));

    let cache = ImageCache::new(CacheOptions::new().store(store.path())).unwrap();
    let listed = cache.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reference, "example:1");
    assert_eq!(listed[0].digest.as_str(), artifact["digest"]);
    assert_eq!(
        listed[0].media_type,
        "application/vnd.example.artifact.v1+json"
    );
    // The artifact, its config, its blob, and the image manifest (its
    // subject) with the manifest's config and layer.
    let reached: u64 = [
        &artifact,
        &artifact_config,
        &artifact_blob,
        &manifest,
        &config,
        &layer,
    ]
    .iter()
    .map(|d| d["size"].as_u64().unwrap())
    .sum();
    assert_eq!(listed[0].size, reached);

    let pruned = cache.prune(Some(dst.path())).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            files: 2,
            bytes: (b"reached by nothing".len() + b"another tar".len()) as u64
        }
    );
    let orphan_path = blob_path(store.path(), &orphan);
    let expected: Vec<PathBuf> = before.into_iter().filter(|p| *p != orphan_path).collect();
    assert_eq!(files_under(&store.path().join("blobs")), expected);
    assert_eq!(files_under(dst.path()), [kept_tar]);
    assert_eq!(
        index_entries(store.path()),
        index["manifests"].as_array().unwrap().clone()
    );
}

/// A corrupt layer, config and manifest blob in the store are removed and
/// fetched again; without a registry the error is still a digest mismatch
/// naming the blob, and the corrupt copy is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_blob_is_fetched_again() {
    let mut registry = Registry::start();
    let host = registry.host();
    let pushed = push_image(
        &host,
        "heal/app",
        Some("v1"),
        vec![
            FixtureLayer::gzip(tar_layer(&[("a", &noise(31, 60_000))])),
            FixtureLayer::zstd(tar_layer(&[("b", &noise(32, 40_000))])),
        ],
        false,
        PLATFORM,
    );
    let reference = format!("{host}/heal/app:v1");
    let store = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(CacheOptions::new().store(store.path()).attempts(1)).unwrap();
    let image = cache.fetch_image(&reference, None).await.unwrap();
    let warm = tempfile::tempdir().unwrap();
    cache.rootfs(&image, warm.path()).await.unwrap();
    let all_blobs = sorted(image_blobs(store.path(), &pushed));
    assert_eq!(files_under(&store.path().join("blobs")), all_blobs);

    let manifest = blob_path(store.path(), &pushed.manifest_digest);
    let config = blob_path(store.path(), &pushed.config_digest);
    let layer = blob_path(store.path(), &pushed.layer_digests[0]);
    for path in [&manifest, &config, &layer] {
        corrupt(path);
    }
    let image = cache.fetch_image(&reference, None).await.unwrap();
    assert_bytes(image.manifest(), &pushed.manifest, "manifest fetched again");
    assert_bytes(image.config(), &pushed.config, "config fetched again");
    let cold = tempfile::tempdir().unwrap();
    let files = cache.rootfs(&image, cold.path()).await.unwrap();
    assert_eq!(files.len(), pushed.layers.len(), "one file per layer");
    for ((mut file, fixture), diff_id) in
        files.into_iter().zip(&pushed.layers).zip(&pushed.diff_ids)
    {
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut content).unwrap();
        assert_bytes(&content, &fixture.tar, "layer tar after the refetch");
        assert!(tar_path(cold.path(), diff_id).is_file());
    }
    assert_eq!(files_under(&store.path().join("blobs")), all_blobs);
    assert_blobs_intact(store.path());
    // Each layer tar with its index.
    assert_eq!(files_under(cold.path()).len(), 4);

    // What verify removes is fetched again by the next pull.
    for path in [&manifest, &config, &layer] {
        corrupt(path);
    }
    let verified = cache.verify(None, true).await.unwrap();
    assert_eq!(
        sorted(verified.corrupt),
        sorted(vec![manifest.clone(), config.clone(), layer.clone()])
    );
    assert!(!manifest.exists() && !config.exists() && !layer.exists());
    let image = cache.fetch_image(&reference, None).await.unwrap();
    let again = tempfile::tempdir().unwrap();
    cache.rootfs(&image, again.path()).await.unwrap();
    assert_eq!(files_under(&store.path().join("blobs")), all_blobs);
    assert_blobs_intact(store.path());

    // No registry: the same corruption is a digest mismatch naming the
    // blob, and the corrupt copy does not stay to fail every later call.
    registry.stop();
    for path in [&config, &layer] {
        corrupt(path);
    }
    let Err(err) = cache.fetch_image(&reference, None).await else {
        panic!("a corrupt config with no registry is a digest mismatch");
    };
    assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
    let msg = err.message();
    assert!(msg.contains(&pushed.config_digest[7..]), "{msg}");
    assert!(!config.exists(), "the corrupt config stayed");
    let empty = tempfile::tempdir().unwrap();
    let Err(err) = cache.rootfs(&image, empty.path()).await else {
        panic!("a corrupt layer blob with no registry is a digest mismatch");
    };
    assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
    let msg = err.message();
    assert!(msg.contains(&pushed.layer_digests[0]), "{msg}");
    assert!(!layer.exists(), "the corrupt layer blob stayed");
    // The other layer, extracted alongside from its intact blob, either
    // finished (a whole, verified tar) or was abandoned when this one
    // failed; then its blocking work removes its temp file as it stops,
    // which a call without a deadline does not wait for.
    let other_tar = tar_path(empty.path(), &pushed.diff_ids[1]);
    let other_index = index_path(empty.path(), &pushed.diff_ids[1]);
    let settled = || {
        files_under(empty.path())
            .iter()
            .all(|p| *p == other_tar || *p == other_index)
    };
    let started = Instant::now();
    while !settled() && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(settled(), "{:?}", files_under(empty.path()));
    if other_tar.exists() {
        let content = std::fs::read(&other_tar).unwrap();
        assert_bytes(&content, &pushed.layers[1].tar, "the other layer's tar");
    }
}

/// A layer whose store blob is intact but whose tar does not match the
/// config's diff_id is the image's fault: the blob stays, nothing is
/// fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intact_blob_with_a_wrong_diff_id_stays() {
    let registry = Registry::start();
    let host = registry.host();
    let tar = tar_layer(&[("a", &noise(41, 20_000))]);
    let claimed = tar_layer(&[("a", &noise(42, 20_000))]);
    let layer = FixtureLayer::with_type(OCI_LAYER_GZIP, claimed, gzip(&tar));
    let pushed = push_image(
        &host,
        "heal/wrong",
        Some("v1"),
        vec![layer],
        false,
        PLATFORM,
    );
    let reference = format!("{host}/heal/wrong:v1");
    let store = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(CacheOptions::new().store(store.path())).unwrap();
    let image = cache.fetch_image(&reference, None).await.unwrap();
    // The blob, whole, in the store (a pull never stores a layer it could
    // not verify, so it is put there by hand).
    let blob = blob_path(store.path(), &pushed.layer_digests[0]);
    std::fs::write(&blob, gzip(&tar)).unwrap();
    let dst = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let Err(err) = cache.rootfs(&image, dst.path()).await else {
            panic!("a wrong diff_id is a digest mismatch");
        };
        assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
        let msg = err.message();
        assert!(msg.contains("diff_id"), "{msg}");
    }
    assert_bytes(
        &std::fs::read(&blob).unwrap(),
        &gzip(&tar),
        "the intact blob",
    );
    assert_eq!(registry.blob_gets(&pushed.layer_digests[0]), 0);
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
}

/// While another process holds the store's lock, calls that need it end
/// with `Timeout` on a 300 ms deadline, and when their future is dropped;
/// calls that need no lock go on; once the lock is free, the same calls
/// succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_store_lock_ends_calls_on_their_deadline() {
    let registry = Registry::start();
    let host = registry.host();
    push_noise_image(&host, "lock/recorded", &[(51, 20_000)]);
    push_noise_image(&host, "lock/new", &[(52, 20_000)]);
    push_noise_image(&host, "lock/removed", &[(53, 20_000)]);
    let removed = format!("{host}/lock/removed:v1");
    let (recorded, new) = (
        format!("{host}/lock/recorded:v1"),
        format!("{host}/lock/new:v1"),
    );
    let store = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(CacheOptions::new().store(store.path())).unwrap();
    cache.fetch_image(&recorded, None).await.unwrap();
    // Something to prune: a prune with nothing to delete needs no lock.
    cache.fetch_image(&removed, None).await.unwrap();
    cache.remove(&removed).await.unwrap();
    let limited = cache.with_call_options(CallOptions::new().deadline(Duration::from_millis(300)));

    let lock = hold_store_lock(store.path());
    // Opening an existing store needs no lock.
    let started = Instant::now();
    ImageCache::new(CacheOptions::new().store(store.path())).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let timed_out = |what: &str, outcome: Result<(), Error>, started: Instant| {
        let took = started.elapsed();
        assert!(
            matches!(&outcome, Err(e) if e.kind() == ErrorKind::Timeout && e.message().contains(what)),
            "{what}: {outcome:?}"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{what} took {took:?}"
        );
    };
    let started = Instant::now();
    timed_out("prune", limited.prune(None).await.map(drop), started);
    let started = Instant::now();
    timed_out("remove", limited.remove(&recorded).await, started);
    let started = Instant::now();
    timed_out(
        "fetch_image",
        limited.fetch_image(&new, None).await.map(drop),
        started,
    );
    // Dropping the call (a cancel) ends the wait as promptly.
    let started = Instant::now();
    let dropped = tokio::time::timeout(Duration::from_millis(300), cache.prune(None)).await;
    assert!(dropped.is_err(), "prune finished with the lock held");
    assert!(started.elapsed() < Duration::from_secs(5));
    // What needs no lock is served meanwhile: a warm fetch, a list.
    let warm = tokio::time::timeout(CALL_LIMIT, limited.fetch_image(&recorded, None)).await;
    warm.unwrap().unwrap();
    let listed = cache.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reference, recorded);

    drop(lock);
    limited.fetch_image(&new, None).await.unwrap();
    limited.remove(&recorded).await.unwrap();
    let pruned = limited.prune(None).await.unwrap();
    // The removed images' manifests and configs (fetch_image alone
    // stores no layer blob).
    assert_eq!(pruned.files, 4);
    let listed: Vec<String> = cache
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(listed, [new]);
}

/// On a runtime with a single thread, a fetch and a prune waiting for the
/// store's lock leave that thread free: a resolve and a warm fetch made
/// meanwhile are served while the lock is still held.
#[tokio::test(flavor = "current_thread")]
async fn a_lock_wait_leaves_a_one_thread_runtime_serving() {
    let registry = Registry::start();
    let host = registry.host();
    let recorded_image = push_noise_image(&host, "one/recorded", &[(61, 20_000)]);
    push_noise_image(&host, "one/new", &[(62, 20_000)]);
    push_noise_image(&host, "one/removed", &[(63, 20_000)]);
    let removed = format!("{host}/one/removed:v1");
    let recorded = format!("{host}/one/recorded:v1");
    let store = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(CacheOptions::new().store(store.path())).unwrap();
    cache.fetch_image(&recorded, None).await.unwrap();
    // Something to prune: a prune with nothing to delete needs no lock.
    cache.fetch_image(&removed, None).await.unwrap();
    cache.remove(&removed).await.unwrap();

    let lock = hold_store_lock(store.path());
    let released = Arc::new(AtomicBool::new(false));
    // Released from another thread: a blocking wait on this runtime's only
    // thread would otherwise never end, and the test would hang.
    let releaser = {
        let released = released.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            released.store(true, Ordering::SeqCst);
            drop(lock);
        })
    };
    let fetching = tokio::spawn({
        let (cache, new) = (cache.clone(), format!("{host}/one/new:v1"));
        async move { cache.fetch_image(&new, None).await.map(drop) }
    });
    let pruning = tokio::spawn({
        let cache = cache.clone();
        async move { cache.prune(None).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pinned = format!("{host}/one/recorded@{}", recorded_image.manifest_digest);
    let digest = cache.resolve(&pinned).await.unwrap();
    assert_eq!(digest.as_str(), recorded_image.manifest_digest);
    cache.fetch_image(&recorded, None).await.unwrap();
    assert!(
        !released.load(Ordering::SeqCst),
        "served only once the lock was released"
    );
    assert!(!fetching.is_finished() && !pruning.is_finished());
    releaser.join().unwrap();
    let finished = tokio::time::timeout(CALL_LIMIT, async {
        fetching.await.unwrap().unwrap();
        pruning.await.unwrap().unwrap()
    });
    // The removed image's manifest and config.
    assert_eq!(finished.await.unwrap().files, 2);
}

/// Prunes racing pulls of an image removed just before: whatever the
/// interleaving, the pull's image is whole afterwards, in the store and in
/// dst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_never_takes_what_a_concurrent_pull_records() {
    let registry = Registry::start();
    let host = registry.host();
    let pushed = push_noise_image(&host, "race/app", &[(71, 30_000), (72, 30_000)]);
    let reference = format!("{host}/race/app:v1");
    let store = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(CacheOptions::new().store(store.path())).unwrap();
    let image = cache.fetch_image(&reference, None).await.unwrap();
    cache.rootfs(&image, dst.path()).await.unwrap();
    // Other tools' small documents as roots, so that each prune spends a
    // while walking: long enough for a pull to record its image meanwhile.
    let fillers: Vec<Value> = (0..2000)
        .map(|i| {
            let doc = serde_json::to_vec(&json!({"schemaVersion": 2, "filler": i})).unwrap();
            let digest = sha256(&doc);
            std::fs::write(blob_path(store.path(), &digest), &doc).unwrap();
            json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": doc.len()})
        })
        .collect();
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(store.path().join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .extend(fillers.iter().cloned());
    std::fs::write(
        store.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let mut blobs = image_blobs(store.path(), &pushed);
    blobs.extend(
        fillers
            .iter()
            .map(|f| blob_path(store.path(), f["digest"].as_str().unwrap())),
    );
    let blobs = sorted(blobs);
    let tars: Vec<PathBuf> = pushed
        .diff_ids
        .iter()
        .map(|d| tar_path(dst.path(), d))
        .collect();
    let indexes: Vec<PathBuf> = pushed
        .diff_ids
        .iter()
        .map(|d| index_path(dst.path(), d))
        .collect();
    for round in 0..8 {
        cache.remove(&reference).await.unwrap();
        let pull = async {
            // Staggered, so that rounds hit different moments of the prune.
            tokio::time::sleep(Duration::from_millis(round * 5)).await;
            let image = cache.fetch_image(&reference, None).await?;
            cache.rootfs(&image, dst.path()).await.map(drop)
        };
        let (pulled, pruned) = tokio::join!(pull, cache.prune(Some(dst.path())));
        pulled.unwrap();
        pruned.unwrap();
        assert_eq!(
            files_under(&store.path().join("blobs")),
            blobs,
            "round {round}"
        );
        assert_eq!(
            files_under(&dst.path().join("sha256")),
            sorted(tars.clone()),
            "round {round}"
        );
        // An index is optional (a view rebuilds it): a prune's slice may end
        // after an index and before its tar, which the pull recorded
        // meanwhile then reuses as it is; or a prune may take an index its
        // pull just wrote when the tar was missing as it listed them.
        // Nothing else is ever there.
        for index in files_under(&dst.path().join("tar-index")) {
            assert!(
                indexes.contains(&index),
                "round {round}: {}",
                index.display()
            );
        }
    }
    assert_blobs_intact(store.path());
    assert_eq!(
        cache.verify(Some(dst.path()), false).await.unwrap().corrupt,
        Vec::<PathBuf>::new()
    );
}

/// Verify stops between chunks of a file once its deadline passes or its
/// future is dropped: a store of large (sparse) corrupt blobs, verified
/// with removal, ends promptly, and nothing changes after it returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_stops_on_its_deadline_and_when_dropped() {
    let store = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(CacheOptions::new().store(store.path())).unwrap();
    let blobs = store.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    // Holes read as zeros, so the files take no disk but a long hash each.
    for i in 0..8u8 {
        let file = File::create(blobs.join(format!("{i:02x}").repeat(32))).unwrap();
        file.set_len(1 << 30).unwrap();
    }
    let before = files_under(store.path());
    let limited = cache.with_call_options(CallOptions::new().deadline(Duration::from_millis(200)));
    let started = Instant::now();
    let outcome = limited.verify(None, true).await;
    assert!(
        matches!(&outcome, Err(e) if e.kind() == ErrorKind::Timeout && e.message().contains("verify")),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Returned once the work stopped: nothing is removed from now on.
    let after = files_under(store.path());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(files_under(store.path()), after);
    assert_eq!(
        after, before,
        "a blob was removed before it was fully hashed"
    );

    let dropped = tokio::time::timeout(Duration::from_millis(200), cache.verify(None, true)).await;
    assert!(dropped.is_err(), "verify of 8 GiB finished in 200 ms");
    // The work notices within a chunk; then nothing more changes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = files_under(store.path());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(files_under(store.path()), settled);
}

/// Opens each FIFO once for reading and writing when dropped, which
/// releases anyone blocked opening it: a test that fails because a call
/// waited on one then fails instead of hanging.
struct Unblock(Vec<PathBuf>);

impl Drop for Unblock {
    fn drop(&mut self) {
        for fifo in &self.0 {
            let _ = File::options().read(true).write(true).open(fifo);
        }
    }
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
}

/// FIFOs and symlinks planted in the store and `dst` under digest names
/// (one as a root's document) are never waited on, followed or removed by
/// list, prune, verify or disk_usage; a FIFO in place of `index.json` is
/// an error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_fifos_and_symlinks_are_not_waited_on_or_followed() {
    let store = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(CacheOptions::new().store(store.path())).unwrap();
    let blobs = store.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(dst.path().join("sha256")).unwrap();
    let target = outside.path().join("precious");
    std::fs::write(&target, b"not the library's").unwrap();
    let root_fifo = blob_path(store.path(), &sha256(b"root"));
    let fifos = vec![
        root_fifo.clone(),
        blob_path(store.path(), &sha256(b"loose")),
        tar_path(dst.path(), &sha256(b"tar")),
    ];
    let _unblock = Unblock(fifos.clone());
    for fifo in &fifos {
        mkfifo(fifo);
    }
    let links = [
        blob_path(store.path(), &sha256(b"link")),
        tar_path(dst.path(), &sha256(b"link tar")),
    ];
    for link in &links {
        std::os::unix::fs::symlink(&target, link).unwrap();
    }
    let index = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha256(b"root"), "size": 4,
         "annotations": {"org.opencontainers.image.ref.name": "planted:1"}},
    ]});
    std::fs::write(
        store.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let before_store = files_under(store.path());
    let before_dst = files_under(dst.path());
    let limit = Duration::from_secs(10);

    let listed = tokio::time::timeout(limit, cache.list())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].reference.as_str(), listed[0].size),
        ("planted:1", 0)
    );
    let pruned = tokio::time::timeout(limit, cache.prune(Some(dst.path()))).await;
    assert_eq!(pruned.unwrap().unwrap(), Pruned::default());
    let verified = tokio::time::timeout(limit, cache.verify(Some(dst.path()), true)).await;
    let verified = verified.unwrap().unwrap();
    assert_eq!((verified.checked, verified.corrupt.len()), (0, 0));
    let usage = tokio::time::timeout(limit, cache.disk_usage(Some(dst.path()))).await;
    let usage = usage.unwrap().unwrap();
    assert_eq!((usage.store_files, usage.dst_files), (0, 0));
    assert_eq!(files_under(store.path()), before_store);
    assert_eq!(files_under(dst.path()), before_dst);
    assert_eq!(std::fs::read(&target).unwrap(), b"not the library's");

    let index_path = store.path().join("index.json");
    std::fs::remove_file(&index_path).unwrap();
    mkfifo(&index_path);
    let _unblock_index = Unblock(vec![index_path.clone()]);
    for outcome in [
        tokio::time::timeout(limit, cache.prune(None))
            .await
            .unwrap()
            .map(drop),
        tokio::time::timeout(limit, cache.list())
            .await
            .unwrap()
            .map(drop),
    ] {
        assert!(
            matches!(&outcome, Err(e) if e.kind() == ErrorKind::InvalidContent && e.message().contains("index.json")),
            "{outcome:?}"
        );
    }
}
