//! Cache management through the Rust API against a real registry: list,
//! remove, prune (store and dst), disk usage and verify, with exact files
//! and byte counts, and temp files of dead writers cleaned while those of
//! live ones stay.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use harness::*;
use oci_cache::{CacheOptions, ErrorKind, ImageCache, Pruned};

const PLATFORM: PlatformSpec = ("linux", "amd64", None);

/// The store files an image reaches: manifest, config, layer blobs.
fn image_blobs(store: &Path, image: &PushedImage) -> Vec<PathBuf> {
    let mut paths = vec![
        blob_path(store, &image.manifest_digest),
        blob_path(store, &image.config_digest),
    ];
    paths.extend(image.layer_digests.iter().map(|d| blob_path(store, d)));
    paths
}

fn total_size(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn sorted(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    paths
}

/// Two images sharing their first layer, pulled into a store and a dst.
struct Pulled {
    _registry: Registry,
    cache: ImageCache,
    store: tempfile::TempDir,
    dst: tempfile::TempDir,
    refs: [String; 2],
    images: [PushedImage; 2],
}

async fn pull_two_images() -> Pulled {
    let registry = Registry::start();
    let host = registry.host();
    let shared = tar_layer(&[("shared", &noise(1, 50_000))]);
    let push = |repo: &str, seed: u64| {
        let own = tar_layer(&[(repo, &noise(seed, 70_000))]);
        let layers = vec![FixtureLayer::gzip(shared.clone()), FixtureLayer::zstd(own)];
        push_image(&host, repo, Some("v1"), layers, false, PLATFORM)
    };
    let images = [push("first", 2), push("second", 3)];
    let refs = [format!("{host}/first:v1"), format!("{host}/second:v1")];
    let store = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(CacheOptions::new().store(store.path())).unwrap();
    for reference in &refs {
        let image = cache.fetch_image(reference, None).await.unwrap();
        cache.rootfs(&image, dst.path()).await.unwrap();
    }
    Pulled {
        _registry: registry,
        cache,
        store,
        dst,
        refs,
        images,
    }
}

/// The index paths of both images' layer tars.
fn all_indexes(p: &Pulled) -> Vec<PathBuf> {
    p.images
        .iter()
        .flat_map(|image| &image.diff_ids)
        .map(|diff_id| index_path(p.dst.path(), diff_id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_disk_usage_count_what_is_there() {
    let p = pull_two_images().await;
    let listed = p.cache.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    for ((stored, reference), image) in listed.iter().zip(&p.refs).zip(&p.images) {
        assert_eq!(&stored.reference, reference);
        assert_eq!(stored.digest.as_str(), image.manifest_digest);
        assert_eq!(stored.media_type, image.manifest_media_type);
        assert_eq!(stored.size, total_size(&image_blobs(p.store.path(), image)));
    }

    let usage = p.cache.disk_usage(Some(p.dst.path())).await.unwrap();
    let blobs = files_under(&p.store.path().join("blobs"));
    let tars = files_under(&p.dst.path().join("sha256"));
    let indexes = files_under(&p.dst.path().join("tar-index"));
    assert_eq!(indexes, sorted(all_indexes(&p)));
    // 3 layer blobs (one shared), 2 configs, 2 manifests; 3 tars, and
    // their 3 indexes counted apart.
    assert_eq!((usage.store_files, usage.dst_files), (7, 3));
    assert_eq!(usage.store_bytes, total_size(&blobs));
    assert_eq!(usage.dst_bytes, total_size(&tars));
    assert_eq!(usage.index_files, 3);
    assert_eq!(usage.index_bytes, total_size(&indexes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_then_prune_drops_only_what_nothing_else_reaches() {
    let p = pull_two_images().await;
    let (store, dst) = (p.store.path(), p.dst.path());
    let first_only: Vec<PathBuf> = image_blobs(store, &p.images[0])
        .into_iter()
        .filter(|path| !image_blobs(store, &p.images[1]).contains(path))
        .chain([
            tar_path(dst, &p.images[0].diff_ids[1]),
            index_path(dst, &p.images[0].diff_ids[1]),
        ])
        .collect();
    let freed = total_size(&first_only);

    p.cache.remove(&p.refs[0]).await.unwrap();
    assert!(matches!(
        p.cache.remove(&p.refs[0]).await,
        Err(ref e) if e.kind() == ErrorKind::NotFound
    ));
    let listed: Vec<String> = p
        .cache
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect();
    assert_eq!(listed, [p.refs[1].clone()]);
    // Removing a reference alone deletes nothing.
    for path in &first_only {
        assert!(path.exists(), "{}", path.display());
    }

    let pruned = p.cache.prune(Some(dst)).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            files: first_only.len() as u64,
            bytes: freed
        }
    );
    for path in &first_only {
        assert!(!path.exists(), "{} survived the prune", path.display());
    }
    let mut kept = image_blobs(store, &p.images[1]);
    kept.extend([
        store.join(".oci-cache.lock"),
        store.join("index.json"),
        store.join("oci-layout"),
    ]);
    assert_eq!(files_under(store), sorted(kept));
    // The indexes of the tars still used stay with them.
    let kept_tars: Vec<PathBuf> = p.images[1]
        .diff_ids
        .iter()
        .flat_map(|d| [tar_path(dst, d), index_path(dst, d)])
        .collect();
    assert_eq!(files_under(dst), sorted(kept_tars));
    assert_eq!(p.cache.prune(Some(dst)).await.unwrap(), Pruned::default());

    // What is left still serves the remaining image with no registry.
    let image = p.cache.fetch_image(&p.refs[1], None).await.unwrap();
    p.cache.rootfs(&image, dst).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_and_removes_corrupt_blobs_and_tars() {
    let p = pull_two_images().await;
    let (store, dst) = (p.store.path(), p.dst.path());
    let clean = p.cache.verify(Some(dst), false).await.unwrap();
    assert_eq!((clean.checked, clean.corrupt.len()), (10, 0));
    assert_eq!((clean.indexes_checked, clean.corrupt_indexes.len()), (3, 0));

    let blob = blob_path(store, &p.images[1].layer_digests[0]);
    let tar = tar_path(dst, &p.images[1].diff_ids[0]);
    for path in [&blob, &tar] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(path, b"bit rot").unwrap();
    }
    // One index flipped by a bit: counted apart from blobs and tars.
    let index = index_path(dst, &p.images[1].diff_ids[1]);
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[70] ^= 1;
    std::fs::set_permissions(&index, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&index, &bytes).unwrap();
    let found = p.cache.verify(Some(dst), false).await.unwrap();
    assert_eq!(found.checked, 10);
    assert_eq!(
        sorted(found.corrupt),
        sorted(vec![blob.clone(), tar.clone()])
    );
    assert_eq!(found.indexes_checked, 3);
    assert_eq!(found.corrupt_indexes, vec![index.clone()]);
    assert!(index.exists(), "verify without removal removed an index");
    assert!(
        blob.exists() && tar.exists(),
        "verify without removal removed something"
    );

    let removed = p.cache.verify(Some(dst), true).await.unwrap();
    assert_eq!(removed.corrupt.len(), 2);
    assert_eq!(removed.corrupt_indexes, vec![index.clone()]);
    assert!(!blob.exists() && !tar.exists() && !index.exists());
    // The next rootfs brings both back, whole.
    let image = p.cache.fetch_image(&p.refs[1], None).await.unwrap();
    let mut files = p.cache.rootfs(&image, dst).await.unwrap();
    assert_eq!(files.len(), p.images[1].layers.len(), "one file per layer");
    for (file, layer) in files.iter_mut().zip(&p.images[1].layers) {
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        assert_bytes(&content, &layer.tar, "restored layer");
    }
    assert_eq!(
        sha256(&std::fs::read(&blob).unwrap()),
        p.images[1].layer_digests[0]
    );
    let again = p.cache.verify(Some(dst), false).await.unwrap();
    assert_eq!(again.corrupt.len(), 0);
    // The re-extracted tar's index is written again; the removed index of
    // an intact tar stays absent until a view needs it.
    assert_eq!((again.indexes_checked, again.corrupt_indexes.len()), (2, 0));
    assert!(index_path(dst, &p.images[1].diff_ids[0]).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_indexes_without_their_tar_and_dead_index_temps() {
    let p = pull_two_images().await;
    let dst = p.dst.path();
    // A tar gone (removed by hand): its index goes at the next prune.
    let gone = &p.images[0].diff_ids[1];
    let orphan = index_path(dst, gone);
    let orphan_size = std::fs::metadata(&orphan).unwrap().len();
    std::fs::remove_file(tar_path(dst, gone)).unwrap();
    // A dead writer's temp index goes too; a symlink or a foreign name in
    // the index directory is not ours and stays.
    let index_dir = orphan.parent().unwrap().to_owned();
    let dead = index_dir.join(".tmp-dead");
    std::fs::write(&dead, b"half an index").unwrap();
    let link = index_dir.join(&sha256(b"planted")[7..]);
    std::os::unix::fs::symlink(&orphan, &link).unwrap();
    let foreign = index_dir.join("notes.txt");
    std::fs::write(&foreign, b"mine").unwrap();
    let before = p.cache.disk_usage(Some(dst)).await.unwrap();
    assert_eq!((before.index_files, before.dst_files), (3, 2), "{before:?}");

    let pruned = p.cache.prune(Some(dst)).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            files: 2,
            bytes: orphan_size + 13
        }
    );
    let mut expected: Vec<PathBuf> = all_indexes(&p)
        .into_iter()
        .filter(|path| path != &orphan)
        .chain([link.clone(), foreign.clone()])
        .collect();
    expected.extend(
        p.images
            .iter()
            .flat_map(|image| &image.diff_ids)
            .filter(|d| *d != gone)
            .map(|d| tar_path(dst, d)),
    );
    assert_eq!(files_under(dst), sorted(expected));
    let after = p.cache.disk_usage(Some(dst)).await.unwrap();
    let left: Vec<PathBuf> = all_indexes(&p)
        .into_iter()
        .filter(|path| path != &orphan)
        .collect();
    assert_eq!(
        (after.index_files, after.index_bytes),
        (2, total_size(&sorted(left))),
        "{after:?}"
    );
    // The next rootfs brings the tar back with its index.
    let image = p.cache.fetch_image(&p.refs[0], None).await.unwrap();
    p.cache.rootfs(&image, dst).await.unwrap();
    assert!(orphan.is_file() && tar_path(dst, gone).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_files_of_dead_writers_go_and_live_ones_stay() {
    let store = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let blobs = store.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(dst.path().join("sha256")).unwrap();
    let dead_blob = blobs.join(".tmp-dead");
    let dead_tar = dst.path().join("sha256/.tmp-dead");
    let live_tar = dst.path().join("sha256/.tmp-live");
    for path in [&dead_blob, &dead_tar, &live_tar] {
        std::fs::write(path, b"half a layer").unwrap();
    }
    // A live writer holds its temp file's lock.
    let live = std::fs::File::open(&live_tar).unwrap();
    // SAFETY: flock on a descriptor `live` owns.
    assert_eq!(unsafe { libc::flock(live.as_raw_fd(), libc::LOCK_EX) }, 0);

    // Opening the store cleans its own temp files.
    let cache = ImageCache::new(CacheOptions::new().store(store.path())).unwrap();
    assert!(!dead_blob.exists());
    // A prune cleans dst's, except the one being written.
    let pruned = cache.prune(Some(dst.path())).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            files: 1,
            bytes: 12
        }
    );
    assert!(!dead_tar.exists() && live_tar.exists());
    drop(live);
    // Another test of this binary that starts a registry forks: until the
    // child execs, it holds a copy of every descriptor, `live`'s lock
    // included, so a prune at that moment rightly leaves the file.
    let mut pruned = 0;
    for _ in 0..50 {
        pruned += cache.prune(Some(dst.path())).await.unwrap().files;
        if pruned > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(pruned, 1);
    assert!(!live_tar.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_needs_a_store() {
    let cache = ImageCache::new(CacheOptions::new()).unwrap();
    assert!(matches!(cache.list().await, Err(ref e) if e.kind() == ErrorKind::InvalidArgument));
    assert!(matches!(
        cache.prune(None).await,
        Err(ref e) if e.kind() == ErrorKind::InvalidArgument
    ));
    assert!(matches!(
        cache.remove("a/b:c").await,
        Err(ref e) if e.kind() == ErrorKind::InvalidArgument
    ));
}
