//! Nothing on disk is trusted, and a pull never fills the disk: links,
//! FIFOs, directories and dangling links planted under `dst` and the store
//! are never followed, opened in a way that blocks, or handed out; every
//! directory and file the library creates has its documented mode under
//! umask 0; a cold extract sweeps dead writers' temp files from `dst`; and
//! writes keep a free-space reserve on a small tmpfs. Every test sets umask
//! 0 (it is process-wide, so all of them do) and runs under a watchdog that
//! ends the binary if a call hangs.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;
use oci_cache::{CacheOptions, Error, ErrorKind, Image, ImageCache};

/// Ends the whole binary if the test holding it runs past its limit: a
/// call blocked in a syscall (a FIFO's open) cannot be timed out from
/// inside its runtime.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn start(what: &'static str, limit: Duration) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let seen = done.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !seen.load(Ordering::Relaxed) {
                if started.elapsed() > limit {
                    use std::io::Write;
                    // Straight to fd 2: the harness's capture dies with us.
                    let _ = writeln!(std::io::stderr(), "{what} hung for {limit:?}: aborting");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Every test's start: umask 0, and a watchdog.
fn hostile_umask(what: &'static str) -> Watchdog {
    // SAFETY: umask only sets the process's file mode mask.
    unsafe { libc::umask(0) };
    Watchdog::start(what, Duration::from_secs(90))
}

/// A registry holding a two-layer image, and a work dir with `dst` made
/// and the store not yet.
struct Fixture {
    _registry: Registry,
    work: tempfile::TempDir,
    store: PathBuf,
    dst: PathBuf,
    pushed: PushedImage,
    reference: String,
}

impl Fixture {
    fn new(repo: &str) -> Fixture {
        let registry = Registry::start();
        let pushed = push_noise_image(&registry.host(), repo, &[(1, 40_000), (2, 60_000)]);
        let reference = format!("{}/{repo}:v1", registry.host());
        let work = tempfile::tempdir().unwrap();
        let (store, dst) = (work.path().join("store"), work.path().join("dst"));
        std::fs::create_dir(&dst).unwrap();
        std::fs::create_dir(work.path().join("outside")).unwrap();
        Fixture {
            _registry: registry,
            work,
            store,
            dst,
            pushed,
            reference,
        }
    }

    fn cache(&self) -> ImageCache {
        ImageCache::new(CacheOptions::new().store(&self.store)).unwrap()
    }

    /// A directory outside `dst` and the store, where nothing may appear.
    fn outside(&self) -> PathBuf {
        self.work.path().join("outside")
    }

    async fn image(&self, cache: &ImageCache) -> Image {
        cache.fetch_image(&self.reference, None).await.unwrap()
    }

    async fn rootfs(&self, cache: &ImageCache) -> Result<Vec<File>, Error> {
        let image = self.image(cache).await;
        cache.rootfs(&image, &self.dst).await
    }

    /// `dst/sha256/<hex>` of layer `index`.
    fn tar(&self, index: usize) -> PathBuf {
        tar_path(&self.dst, &self.pushed.diff_ids[index])
    }

    /// `store/blobs/sha256/<hex>` of `digest`.
    fn blob(&self, digest: &str) -> PathBuf {
        self.store
            .join("blobs/sha256")
            .join(&digest["sha256:".len()..])
    }

    /// The files are the layers, byte for byte, and each layer's path
    /// holds a regular file (mode 0444) that is the same file.
    #[track_caller]
    fn assert_layers(&self, files: Vec<File>) {
        assert_eq!(files.len(), self.pushed.layers.len());
        for (index, mut file) in files.into_iter().enumerate() {
            let mut content = Vec::new();
            file.read_to_end(&mut content).unwrap();
            assert_eq!(sha256(&content), self.pushed.diff_ids[index]);
            assert_bytes(&content, &self.pushed.layers[index].tar, "layer");
            let at_path = std::fs::symlink_metadata(self.tar(index)).unwrap();
            assert!(
                at_path.file_type().is_file(),
                "{}",
                self.tar(index).display()
            );
            assert_eq!(at_path.permissions().mode() & 0o7777, 0o444);
            assert_eq!(
                std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap()),
                std::os::unix::fs::MetadataExt::ino(&at_path)
            );
        }
    }
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o666) }, 0);
}

/// The temp files anywhere under `dir`.
fn temps_under(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect()
}

#[track_caller]
fn expect_io(result: Result<impl Sized, Error>, needles: &[&str]) -> String {
    match result {
        Err(e) if e.kind() == ErrorKind::Io => {
            let msg = e.message().to_owned();
            for needle in needles {
                assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
            }
            msg
        }
        Err(other) => panic!("expected Error::Io, got {other:?}"),
        Ok(_) => panic!("expected Error::Io, got success"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_to_a_file_outside_is_replaced_never_followed() {
    let _watchdog = hostile_umask("symlink_to_a_file_outside_is_replaced_never_followed");
    let f = Fixture::new("link");
    let cache = f.cache();
    f.assert_layers(f.rootfs(&cache).await.unwrap());

    // Stands in for /etc/shadow.
    let shadow = f.outside().join("shadow");
    std::fs::write(&shadow, b"root:$6$secret:19000::::::\n").unwrap();
    std::fs::set_permissions(&shadow, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(f.tar(1)).unwrap();
    symlink(&shadow, f.tar(1)).unwrap();

    let image = f.image(&cache).await;
    assert!(cache.rootfs_cached(&image, &f.dst).is_none());
    f.assert_layers(f.rootfs(&cache).await.unwrap());
    assert_eq!(
        std::fs::read(&shadow).unwrap(),
        b"root:$6$secret:19000::::::\n"
    );
    assert_eq!(
        std::fs::metadata(&shadow).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(files_under(&f.outside()), vec![shadow]);
    assert_eq!(temps_under(f.work.path()), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_in_dst_and_store_never_block_and_are_replaced() {
    let _watchdog = hostile_umask("fifos_in_dst_and_store_never_block_and_are_replaced");
    let f = Fixture::new("fifo");
    let cache = f.cache();
    f.assert_layers(f.rootfs(&cache).await.unwrap());

    // A FIFO for a layer tar: the warm path skips it, rootfs replaces it
    // from the store's blob.
    std::fs::remove_file(f.tar(0)).unwrap();
    mkfifo(&f.tar(0));
    let image = f.image(&cache).await;
    assert!(cache.rootfs_cached(&image, &f.dst).is_none());
    f.assert_layers(f.rootfs(&cache).await.unwrap());

    // A FIFO for a layer blob in the store, and for its tar: both fetched
    // again from the registry and replaced.
    let blob = f.blob(&f.pushed.layer_digests[1]);
    std::fs::remove_file(&blob).unwrap();
    mkfifo(&blob);
    std::fs::remove_file(f.tar(1)).unwrap();
    f.assert_layers(f.rootfs(&cache).await.unwrap());
    assert!(std::fs::symlink_metadata(&blob).unwrap().is_file());
    assert_bytes(
        &std::fs::read(&blob).unwrap(),
        &f.pushed.layers[1].blob,
        "layer blob in the store",
    );

    // A FIFO for the manifest blob: fetched again, replaced.
    let manifest = f.blob(&f.pushed.manifest_digest);
    std::fs::remove_file(&manifest).unwrap();
    mkfifo(&manifest);
    let image = f.image(&cache).await;
    assert_eq!(image.manifest(), f.pushed.manifest.as_slice());
    assert_bytes(
        &std::fs::read(&manifest).unwrap(),
        &f.pushed.manifest,
        "manifest blob",
    );

    // FIFOs named like temp files: opening the store and a cold extract
    // sweep past them without blocking, and leave them (not regular files).
    let store_fifo = f.store.join(".tmp-fifo");
    let blobs_fifo = f.store.join("blobs/sha256/.tmp-fifo");
    let dst_fifo = f.dst.join("sha256/.tmp-fifo");
    for fifo in [&store_fifo, &blobs_fifo, &dst_fifo] {
        mkfifo(fifo);
    }
    let fresh = f.cache();
    std::fs::remove_file(f.tar(0)).unwrap();
    f.assert_layers(f.rootfs(&fresh).await.unwrap());
    for fifo in [&store_fifo, &blobs_fifo, &dst_fifo] {
        assert!(std::fs::symlink_metadata(fifo)
            .unwrap()
            .file_type()
            .is_fifo());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_for_a_layer_is_an_io_error_naming_it() {
    let _watchdog = hostile_umask("a_directory_for_a_layer_is_an_io_error_naming_it");
    let f = Fixture::new("dir");
    let cache = f.cache();
    f.assert_layers(f.rootfs(&cache).await.unwrap());
    std::fs::remove_file(f.tar(0)).unwrap();
    std::fs::create_dir(f.tar(0)).unwrap();
    std::fs::write(f.tar(0).join("kept"), b"kept").unwrap();

    let image = f.image(&cache).await;
    assert!(cache.rootfs_cached(&image, &f.dst).is_none());
    expect_io(
        f.rootfs(&cache).await,
        &[&f.tar(0).to_string_lossy(), "Is a directory"],
    );
    assert_eq!(std::fs::read(f.tar(0).join("kept")).unwrap(), b"kept");
    assert_eq!(temps_under(f.work.path()), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dangling_symlink_is_replaced_and_its_target_never_created() {
    let _watchdog = hostile_umask("a_dangling_symlink_is_replaced_and_its_target_never_created");
    let f = Fixture::new("dangling");
    let cache = f.cache();
    f.assert_layers(f.rootfs(&cache).await.unwrap());
    let target = f.outside().join("created-by-following");
    std::fs::remove_file(f.tar(0)).unwrap();
    symlink(&target, f.tar(0)).unwrap();

    f.assert_layers(f.rootfs(&cache).await.unwrap());
    assert!(std::fs::symlink_metadata(&target).is_err());
    assert_eq!(files_under(&f.outside()), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dst_sha256_as_a_symlink_is_an_io_error_naming_it() {
    let _watchdog = hostile_umask("dst_sha256_as_a_symlink_is_an_io_error_naming_it");
    let f = Fixture::new("dstlink");
    let cache = f.cache();
    // The outside directory even holds the right files under the right
    // names: the warm path must not take them either.
    for (index, diff_id) in f.pushed.diff_ids.iter().enumerate() {
        let planted = f.outside().join(&diff_id["sha256:".len()..]);
        std::fs::write(&planted, &f.pushed.layers[index].tar).unwrap();
    }
    let before = files_under(&f.outside());
    symlink(f.outside(), f.dst.join("sha256")).unwrap();

    let image = f.image(&cache).await;
    assert!(cache.rootfs_cached(&image, &f.dst).is_none());
    let sha256_dir = f.dst.join("sha256");
    expect_io(
        cache.rootfs(&image, &f.dst).await,
        &[&sha256_dir.to_string_lossy(), "symbolic link"],
    );
    expect_io(
        cache.extract_layer(&image, 0, &f.dst).await,
        &[&sha256_dir.to_string_lossy(), "symbolic link"],
    );
    assert_eq!(files_under(&f.outside()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_blob_dirs_as_symlinks_are_io_errors_naming_them() {
    let _watchdog = hostile_umask("store_blob_dirs_as_symlinks_are_io_errors_naming_them");
    let f = Fixture::new("storelink");

    // blobs/sha256 a link: the first blob write fails, naming it.
    std::fs::create_dir_all(f.store.join("blobs")).unwrap();
    symlink(f.outside(), f.store.join("blobs/sha256")).unwrap();
    let cache = f.cache();
    let sha256_dir = f.store.join("blobs/sha256");
    expect_io(
        cache.fetch_image(&f.reference, None).await,
        &[&sha256_dir.to_string_lossy(), "symbolic link"],
    );
    assert_eq!(files_under(&f.outside()), Vec::<PathBuf>::new());
    drop(cache);

    // blobs a link: opening the store fails, naming it.
    std::fs::remove_dir_all(&f.store).unwrap();
    std::fs::create_dir(&f.store).unwrap();
    symlink(f.outside(), f.store.join("blobs")).unwrap();
    let blobs = f.store.join("blobs");
    expect_io(
        ImageCache::new(CacheOptions::new().store(&f.store)),
        &[&blobs.to_string_lossy(), "symbolic link"],
    );
    assert_eq!(files_under(&f.outside()), Vec::<PathBuf>::new());

    // The store path itself may be a link: the caller's choice.
    let real = f.work.path().join("real-store");
    std::fs::create_dir(&real).unwrap();
    let linked = f.work.path().join("linked-store");
    symlink(&real, &linked).unwrap();
    let cache = ImageCache::new(CacheOptions::new().store(&linked)).unwrap();
    let image = cache.fetch_image(&f.reference, None).await.unwrap();
    f.assert_layers(cache.rootfs(&image, &f.dst).await.unwrap());
    assert!(real
        .join("blobs/sha256")
        .join(&f.pushed.manifest_digest[7..])
        .is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dangling_lock_file_symlink_is_an_error_and_creates_nothing() {
    let _watchdog = hostile_umask("a_dangling_lock_file_symlink_is_an_error_and_creates_nothing");
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let target = work.path().join("lock-target");
    std::fs::create_dir(&store).unwrap();
    symlink(&target, store.join(".oci-cache.lock")).unwrap();
    let lock = store.join(".oci-cache.lock");
    expect_io(
        ImageCache::new(CacheOptions::new().store(&store)),
        &[&lock.to_string_lossy(), "symbolic link"],
    );
    assert!(std::fs::symlink_metadata(&target).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_do_not_depend_on_the_umask() {
    let _watchdog = hostile_umask("modes_do_not_depend_on_the_umask");
    let f = Fixture::new("modes");
    // The store and a parent of it do not exist yet: the library makes both.
    let parent = f.work.path().join("made");
    let store = parent.join("store");
    let cache = ImageCache::new(CacheOptions::new().store(&store)).unwrap();
    let image = cache.fetch_image(&f.reference, None).await.unwrap();
    f.assert_layers(cache.rootfs(&image, &f.dst).await.unwrap());

    let mut seen = Vec::new();
    let mut pending = vec![parent.clone(), f.dst.join("sha256")];
    while let Some(dir) = pending.pop() {
        let mode = std::fs::symlink_metadata(&dir)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "{}", dir.display());
        seen.push(dir.clone());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let expected = match name.as_str() {
                "index.json" | "oci-layout" | ".oci-cache.lock" => 0o644,
                _ => 0o444,
            };
            assert!(meta.is_file(), "{}", entry.path().display());
            assert_eq!(
                meta.permissions().mode() & 0o7777,
                expected,
                "{}",
                entry.path().display()
            );
            seen.push(entry.path());
        }
    }
    // made, store, blobs, blobs/sha256, dst/sha256; three store files at
    // the root; manifest, config, two layer blobs; two tars.
    assert_eq!(seen.len(), 5 + 3 + 4 + 2, "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_extract_sweeps_dead_writers_temp_files_from_dst() {
    let _watchdog = hostile_umask("a_cold_extract_sweeps_dead_writers_temp_files_from_dst");
    let f = Fixture::new("sweep");
    std::fs::create_dir(f.dst.join("sha256")).unwrap();
    let dead = f.dst.join("sha256/.tmp-dead");
    std::fs::write(&dead, vec![7u8; 100_000]).unwrap();
    // A live writer's temp file: its flock is held.
    let live = f.dst.join("sha256/.tmp-live");
    let held = File::create(&live).unwrap();
    std::fs::write(&live, b"being written").unwrap();
    // SAFETY: flock on a descriptor `held` owns.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&held),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(locked, 0);

    let cache = f.cache();
    f.assert_layers(f.rootfs(&cache).await.unwrap());
    assert!(!dead.exists(), "the dead writer's temp file is still there");
    assert_eq!(std::fs::read(&live).unwrap(), b"being written");
    drop(held);
}

/// Pushes `repo:v1` with one gzip layer: a tar of `len` zero bytes, which
/// compresses to almost nothing (a decompression bomb in miniature).
fn push_zeros(host: &str, repo: &str, len: usize) -> PushedImage {
    let layer = FixtureLayer::gzip(tar_layer(&[("zeros", &vec![0u8; len])]));
    push_image(
        host,
        repo,
        Some("v1"),
        vec![layer],
        false,
        ("linux", "amd64", None),
    )
}

/// Nothing was left behind under `root` (a tmpfs holding `store` and
/// `dst`): no temp file, no tar, no blob of `layer_digest`.
#[track_caller]
fn assert_nothing_left(root: &Path, dst: &Path, store: &Path, layer_digest: &str) {
    assert_eq!(temps_under(root), Vec::<PathBuf>::new());
    assert_eq!(files_under(dst), Vec::<PathBuf>::new());
    let blob = store.join("blobs/sha256").join(&layer_digest[7..]);
    assert!(!blob.exists(), "{}", blob.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_space_reserve_stops_a_layer_that_would_fill_the_disk() {
    let _watchdog = hostile_umask("the_free_space_reserve_stops_a_layer_that_would_fill_the_disk");
    let registry = Registry::start();
    let host = registry.host();
    let bomb = push_zeros(&host, "bomb", 40 << 20);
    let small = push_noise_image(&host, "small", &[(5, 1 << 20)]);
    let tmpfs = Tmpfs::mount("size=32m");
    let (store, dst) = (tmpfs.path().join("store"), tmpfs.path().join("dst"));
    std::fs::create_dir(&dst).unwrap();

    // Default reserve: 5% of 32 MiB.
    let cache = ImageCache::new(CacheOptions::new().store(&store)).unwrap();
    let image = cache
        .fetch_image(&format!("{host}/bomb:v1"), None)
        .await
        .unwrap();
    let tar = tar_path(&dst, &bomb.diff_ids[0]);
    expect_io(
        cache.rootfs(&image, &dst).await,
        &[
            &format!("writing {}", tar.display()),
            "would leave less than the 1.6 MiB free-space reserve on",
            "(free_space_reserve)",
        ],
    );
    assert_nothing_left(tmpfs.path(), &dst, &store, &bomb.layer_digests[0]);

    // A layer that fits is written whole.
    let image = cache
        .fetch_image(&format!("{host}/small:v1"), None)
        .await
        .unwrap();
    let mut files = cache.rootfs(&image, &dst).await.unwrap();
    let mut content = Vec::new();
    files[0].read_to_end(&mut content).unwrap();
    assert_bytes(&content, &small.layers[0].tar, "the small layer");

    // A reserve set by the caller also guards the store's blob copy:
    // 28 MiB leaves no room for 4 MiB of incompressible layer.
    let big = push_noise_image(&host, "big", &[(6, 4 << 20)]);
    let strict = ImageCache::new(
        CacheOptions::new()
            .store(&store)
            .free_space_reserve(28 << 20),
    )
    .unwrap();
    let image = strict
        .fetch_image(&format!("{host}/big:v1"), None)
        .await
        .unwrap();
    let msg = expect_io(
        strict.rootfs(&image, &dst).await,
        &[
            "would leave less than the 28 MiB free-space reserve on",
            "(free_space_reserve)",
        ],
    );
    assert!(
        msg.contains(&dst.to_string_lossy().into_owned())
            || msg.contains(&*store.to_string_lossy()),
        "{msg}"
    );
    assert_eq!(temps_under(tmpfs.path()), Vec::<PathBuf>::new());
    assert!(!tar_path(&dst, &big.diff_ids[0]).exists());
    assert!(!store
        .join("blobs/sha256")
        .join(&big.layer_digests[0][7..])
        .exists());
    drop((cache, strict, files));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reserve_a_full_disk_is_a_clean_io_error() {
    let _watchdog = hostile_umask("without_a_reserve_a_full_disk_is_a_clean_io_error");
    let registry = Registry::start();
    let host = registry.host();
    let bomb = push_zeros(&host, "bomb", 24 << 20);
    let tmpfs = Tmpfs::mount("size=16m");
    let (store, dst) = (tmpfs.path().join("store"), tmpfs.path().join("dst"));
    std::fs::create_dir(&dst).unwrap();

    let cache = ImageCache::new(CacheOptions::new().store(&store).free_space_reserve(0)).unwrap();
    let image = cache
        .fetch_image(&format!("{host}/bomb:v1"), None)
        .await
        .unwrap();
    let tar = tar_path(&dst, &bomb.diff_ids[0]);
    expect_io(
        cache.rootfs(&image, &dst).await,
        &[&tar.to_string_lossy(), "No space left on device"],
    );
    assert_nothing_left(tmpfs.path(), &dst, &store, &bomb.layer_digests[0]);
    drop(cache);
}
