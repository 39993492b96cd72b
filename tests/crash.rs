//! Crash safety and sharing, with real processes: pulls killed with SIGKILL
//! at random moments leave no partial file under a final name, an
//! `index.json` that parses, and temp files the next open or a prune
//! removes; eight processes pulling overlapping images into one store and
//! one `dst` at once, watched by a reader that never sees a torn
//! `index.json`, end with every reference recorded and every file verified;
//! pulls killed again and again into one store and `dst` leave no temp file
//! with content once the next pull completes. Every test runs half its
//! pulls with ranged download on (a threshold below its layers' size), so
//! the same holds for blobs written range by range. The test binary
//! re-runs itself as the pulling child.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;
use oci_cache::{CacheOptions, ImageCache};

/// Set in a child: which test it belongs to.
const CHILD: &str = "OCI_CRASH_CHILD";

/// Set in a child that downloads its blobs in ranges.
const RANGED: &str = "OCI_CRASH_RANGED";

/// A cache on `store`, with ranged download of every layer blob here
/// (they are all above 64 KiB) if `ranged`, else with one stream a blob.
fn options(store: impl Into<PathBuf>, ranged: bool) -> CacheOptions {
    let options = CacheOptions::new().store(store.into());
    match ranged {
        true => options.range_threshold(64 << 10).range_connections(4),
        false => options.range_threshold(0),
    }
}

/// Starts this binary as a child running test `name`, which pulls `refs`
/// into `store` and `dst` (see [`child_pull`]), in ranges if `ranged`.
fn spawn_child(name: &str, store: &Path, dst: &Path, refs: &[String], ranged: bool) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1"])
        .env(CHILD, name)
        .env(RANGED, if ranged { "1" } else { "0" })
        .env("OCI_CRASH_STORE", store)
        .env("OCI_CRASH_DST", dst)
        .env("OCI_CRASH_REFS", refs.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning a child pull")
}

fn in_child(name: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|child| child == name)
}

/// The child's side: pulls every reference in `OCI_CRASH_REFS` to rootfs.
async fn child_pull() {
    let var = |name: &str| std::env::var(name).unwrap();
    let dst = PathBuf::from(var("OCI_CRASH_DST"));
    let cache = ImageCache::new(options(var("OCI_CRASH_STORE"), var(RANGED) == "1")).unwrap();
    for reference in var("OCI_CRASH_REFS").split(',') {
        let image = cache.fetch_image(reference, None).await.unwrap();
        cache.rootfs(&image, &dst).await.unwrap();
    }
}

/// Checks that every file under a final name in `store` and `dst` is
/// whole (hashes to its name) and that `index.json` parses. Returns the
/// temp files found.
#[track_caller]
fn assert_consistent(store: &Path, dst: &Path, when: &str) -> Vec<PathBuf> {
    let index = std::fs::read(store.join("index.json")).unwrap();
    serde_json::from_slice::<serde_json::Value>(&index)
        .unwrap_or_else(|e| panic!("{when}: index.json does not parse: {e}"));
    let mut temps = Vec::new();
    for dir in [store.join("blobs/sha256"), dst.join("sha256")] {
        for path in files_under(&dir) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                temps.push(path);
                continue;
            }
            let content = std::fs::read(&path).unwrap();
            assert_eq!(
                sha256(&content),
                format!("sha256:{name}"),
                "{when}: {} is partial or corrupt",
                path.display()
            );
        }
    }
    // A tar index under its final name is whole (its trailing checksum,
    // docs/tar-index.md, matches) and names a tar that is there.
    for path in files_under(&dst.join("tar-index/sha256")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") {
            temps.push(path);
            continue;
        }
        let content = std::fs::read(&path).unwrap();
        let (body, checksum) = content.split_at(content.len().saturating_sub(32));
        assert!(
            content.starts_with(b"OCITIDX\0")
                && sha256(body) == format!("sha256:{}", hex(checksum)),
            "{when}: index {} is partial or corrupt",
            path.display()
        );
        let tar = tar_path(dst, &format!("sha256:{name}"));
        assert!(tar.is_file(), "{when}: index {} has no tar", path.display());
    }
    temps
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pulls_leave_nothing_partial() {
    let name = "killed_pulls_leave_nothing_partial";
    if in_child(name) {
        return child_pull().await;
    }
    let registry = Registry::start();
    let host = registry.host();
    let pushed = push_noise_image(&host, "crash", &[1, 2, 3, 4].map(|seed| (seed, 1 << 18)));
    let refs = [format!("{host}/crash:v1")];
    let work = tempfile::tempdir().unwrap();

    // An uninterrupted child pull succeeds.
    let whole = work.path().join("whole");
    for ranged in [false, true] {
        let (store, dst) = (
            whole.join(format!("store{ranged}")),
            whole.join(format!("dst{ranged}")),
        );
        std::fs::create_dir_all(&dst).unwrap();
        let status = spawn_child(name, &store, &dst, &refs, ranged)
            .wait()
            .unwrap();
        assert!(
            status.success(),
            "an uninterrupted child pull failed (ranged: {ranged})"
        );
    }

    let runs = 50;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut left_temps = Vec::new();
    let mut interrupted = 0;
    for run in 0..runs {
        let dir = work.path().join(format!("run{run}"));
        let (store, dst) = (dir.join("store"), dir.join("dst"));
        std::fs::create_dir_all(&dst).unwrap();
        let ranged = run % 2 == 1;
        let mut child = spawn_child(name, &store, &dst, &refs, ranged);
        // Killed on progress, not on a clock: once the child has written
        // 1 to 9 of the 10 files it ends with (6 blobs, 4 tars; a temp file
        // counts), then up to 5 ms later.
        seed = xorshift(seed);
        let written = 1 + (seed % 9) as usize;
        let dirs = [store.join("blobs/sha256"), dst.join("sha256")];
        wait_for(&mut child, &format!("{written} files"), || {
            dirs.iter().map(|dir| files_under(dir).len()).sum::<usize>() >= written
        });
        seed = xorshift(seed);
        std::thread::sleep(Duration::from_micros(seed % 5_000));
        child.kill().unwrap();
        child.wait().unwrap();
        if !store.join("index.json").exists() {
            // Killed before the store existed: nothing to check, but a temp
            // file it had begun (index.json's) is pruned below like the rest.
            let cache = ImageCache::new(options(&store, ranged)).unwrap();
            left_temps.push((cache, dst));
            continue;
        }
        assert_consistent(&store, &dst, &format!("after kill {run}"));
        if files_under(&dst.join("sha256")).len() < pushed.layers.len() {
            interrupted += 1;
        }

        // Opening the store again removes what the killed writer held;
        // only a temp file killed in the instant between its creation and
        // its lock may stay, empty, for a prune to take.
        let cache = ImageCache::new(options(&store, ranged)).unwrap();
        for temp in assert_consistent(&store, &dst, &format!("reopened after kill {run}")) {
            if temp.starts_with(&store) {
                assert_eq!(
                    std::fs::metadata(&temp).unwrap().len(),
                    0,
                    "{}",
                    temp.display()
                );
            }
        }
        let image = cache.fetch_image(&refs[0], None).await.unwrap();
        let mut files = cache.rootfs(&image, &dst).await.unwrap();
        assert_eq!(files.len(), pushed.layers.len(), "layers after the rerun");
        for (index, file) in files.iter_mut().enumerate() {
            let mut content = Vec::new();
            std::io::Read::read_to_end(file, &mut content).unwrap();
            assert_bytes(&content, &pushed.layers[index].tar, "layer after the rerun");
        }
        left_temps.push((cache, dst));
    }
    assert!(
        interrupted >= runs / 4,
        "only {interrupted} of {runs} kills landed before the last layer was written"
    );
    // Past the grace period of temp files that were never locked, a prune
    // of each store and dst leaves no temp file anywhere.
    std::thread::sleep(Duration::from_secs(3));
    for (cache, dst) in &left_temps {
        cache.prune(Some(dst)).await.unwrap();
    }
    let temps: Vec<PathBuf> = files_under(work.path())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .collect();
    assert_eq!(temps, Vec::<PathBuf>::new(), "temp files after prune");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_share_one_store_and_dst() {
    let name = "eight_processes_share_one_store_and_dst";
    if in_child(name) {
        return child_pull().await;
    }
    let registry = Registry::start();
    let host = registry.host();
    // Layers overlap: 11 and 12 are in two images each, 13 in all three.
    let images = [
        push_noise_image(&host, "one", &[11, 12, 13, 14].map(|seed| (seed, 300_000))),
        push_noise_image(&host, "two", &[12, 13, 15].map(|seed| (seed, 300_000))),
        push_noise_image(&host, "three", &[13, 11, 16].map(|seed| (seed, 300_000))),
    ];
    let refs: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|repo| format!("{host}/{repo}:v1"))
        .collect();
    let work = tempfile::tempdir().unwrap();
    let (store, dst) = (work.path().join("store"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();

    let mut children: Vec<Child> = (0..8)
        .map(|n| {
            // Each child pulls the three images in its own order; half of
            // them download in ranges.
            let mut order = refs.clone();
            order.rotate_left(n % 3);
            if n % 2 == 1 {
                order.reverse();
            }
            spawn_child(name, &store, &dst, &order, n % 4 < 2)
        })
        .collect();
    // Meanwhile a reader keeps parsing index.json: never torn.
    let mut reads = 0;
    while children
        .iter_mut()
        .any(|child| child.try_wait().unwrap().is_none())
    {
        if let Ok(bytes) = std::fs::read(store.join("index.json")) {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .unwrap_or_else(|e| panic!("read {reads} of index.json is torn: {e}"));
            reads += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(reads > 0, "index.json was never read during the pulls");
    for (n, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "child {n}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    assert_eq!(
        assert_consistent(&store, &dst, "after 8 pulls"),
        Vec::<PathBuf>::new()
    );
    let cache = ImageCache::new(CacheOptions::new().store(&store)).unwrap();
    let mut listed: Vec<String> = cache
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|image| image.reference)
        .collect();
    listed.sort();
    let mut expected_refs = refs.clone();
    expected_refs.sort();
    assert_eq!(listed, expected_refs, "references in index.json");

    let mut tars: Vec<PathBuf> = images
        .iter()
        .flat_map(|image| &image.diff_ids)
        .map(|diff_id| tar_path(&dst, diff_id))
        .collect();
    tars.sort();
    tars.dedup();
    let mut expected: Vec<PathBuf> = images
        .iter()
        .flat_map(|image| &image.diff_ids)
        .map(|diff_id| index_path(&dst, diff_id))
        .chain(tars.iter().cloned())
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(files_under(&dst), expected, "layer tars and indexes in dst");
    let verified = cache.verify(Some(&dst), false).await.unwrap();
    assert_eq!(verified.corrupt, Vec::<PathBuf>::new());
    // 6 distinct layer blobs, 3 configs and 3 manifests.
    assert_eq!(verified.checked, 12 + tars.len() as u64);
    assert_eq!(verified.indexes_checked, tars.len() as u64);
    assert_eq!(verified.corrupt_indexes, Vec::<PathBuf>::new());
}

/// The next state of a xorshift64 generator (fixed seeds: runs repeat).
fn xorshift(mut seed: u64) -> u64 {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    seed
}

/// Polls `ready` every millisecond until it holds or `child` has exited
/// (a pull that finished first is a run with nothing interrupted).
fn wait_for(child: &mut Child, what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() && child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the child pull showed no {what} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The temp files under `dirs` that hold data.
fn temps_with_content(dirs: &[&Path]) -> Vec<PathBuf> {
    dirs.iter()
        .flat_map(|dir| files_under(dir))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pulls_into_one_dst_leave_no_garbage_after_the_next_pull() {
    let name = "killed_pulls_into_one_dst_leave_no_garbage_after_the_next_pull";
    if in_child(name) {
        return child_pull().await;
    }
    let registry = Registry::start();
    let host = registry.host();
    let pushed = push_noise_image(&host, "garbage", &[21, 22, 23].map(|seed| (seed, 6 << 20)));
    let refs = [format!("{host}/garbage:v1")];
    let work = tempfile::tempdir().unwrap();
    let (store, dst) = (work.path().join("store"), work.path().join("dst"));
    std::fs::create_dir_all(&dst).unwrap();
    // Each run starts as a restarted runtime whose pull never finished:
    // no layer tar or layer blob yet, so every run writes temp files.
    let unfinished = || {
        for diff_id in &pushed.diff_ids {
            let _ = std::fs::remove_file(index_path(&dst, diff_id));
            let _ = std::fs::remove_file(tar_path(&dst, diff_id));
        }
        for digest in &pushed.layer_digests {
            let _ = std::fs::remove_file(blob_path(&store, digest));
        }
    };

    let status = spawn_child(name, &store, &dst, &refs, false)
        .wait()
        .unwrap();
    assert!(status.success(), "an uninterrupted child pull failed");

    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut most_garbage = 0;
    for run in 0..20 {
        unfinished();
        let mut child = spawn_child(name, &store, &dst, &refs, run % 2 == 1);
        // Killed on progress, not on a clock: once a temp file holds
        // data, then up to 20 ms later (a 6 MiB layer takes longer).
        wait_for(&mut child, "a temp file with content", || {
            !temps_with_content(&[&store, &dst]).is_empty()
        });
        seed = xorshift(seed);
        std::thread::sleep(Duration::from_micros(seed % 20_000));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_consistent(&store, &dst, &format!("after kill {run}"));
        most_garbage = most_garbage.max(temps_with_content(&[&store, &dst]).len());
    }
    assert!(
        most_garbage > 0,
        "no kill left a temp file: the test proves nothing"
    );

    // One complete pull, as the restarted runtime would make.
    unfinished();
    let cache = ImageCache::new(CacheOptions::new().store(&store)).unwrap();
    let image = cache.fetch_image(&refs[0], None).await.unwrap();
    let mut files = cache.rootfs(&image, &dst).await.unwrap();
    assert_eq!(
        files.len(),
        pushed.layers.len(),
        "layers after the complete pull"
    );
    for (index, file) in files.iter_mut().enumerate() {
        let mut content = Vec::new();
        std::io::Read::read_to_end(file, &mut content).unwrap();
        assert_bytes(
            &content,
            &pushed.layers[index].tar,
            "layer after the complete pull",
        );
    }
    assert_consistent(&store, &dst, "after the complete pull");
    assert_eq!(
        temps_with_content(&[&store, &dst]),
        Vec::<PathBuf>::new(),
        "temp files with content after one complete pull"
    );
}
