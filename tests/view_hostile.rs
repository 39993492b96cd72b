//! The image view against hostile layer tars and bad index files on disk
//! (issue 13), through the public API. Each hostile tar is made by hand
//! (see `RawTar`), served by the fake registry, and viewed: every case has
//! the outcome docs/tar-index.md documents, every file the view hands out
//! lies inside one of the image's own tars, and nothing is written but the
//! tars and their indexes in `dst`. An index on disk that is corrupt,
//! truncated, another layer's, made for a tar of another length, a link, a
//! FIFO or an empty directory is rebuilt, never trusted.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use harness::*;
use oci_cache::{CacheOptions, Error, ErrorKind, FileKind, ImageCache, View};

const REPO: &str = "hostile-view";

/// A temp directory holding the store (`store/`), the layers' destination
/// (`dst/`) and `outside/`, host files that hostile names and links point
/// at; nothing else may appear in it.
struct Scene {
    root: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let root = tempfile::Builder::new()
            .prefix("oci-cache-view-hostile-")
            .tempdir()
            .expect("a temp dir");
        std::fs::create_dir(root.path().join("dst")).unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir_all(outside.join("etc")).unwrap();
        std::fs::write(outside.join("etc/passwd"), "host passwd").unwrap();
        std::fs::write(outside.join("secret"), "host secret").unwrap();
        Scene { root }
    }

    fn dst(&self) -> PathBuf {
        self.root.path().join("dst")
    }

    fn store(&self) -> PathBuf {
        self.root.path().join("store")
    }

    fn outside(&self) -> PathBuf {
        self.root.path().join("outside")
    }

    fn cache(&self) -> ImageCache {
        new_cache(CacheOptions::new().store(self.store()))
    }

    /// The scene holds the store, `dst` holding exactly `in_dst`, and
    /// `outside` as it was made.
    #[track_caller]
    fn assert_only(&self, in_dst: &[PathBuf], what: &str) {
        let mut want = files_under(&self.store());
        want.extend_from_slice(in_dst);
        want.push(self.outside().join("etc/passwd"));
        want.push(self.outside().join("secret"));
        want.sort();
        assert_eq!(files_under(self.root.path()), want, "{what}: files");
        assert_eq!(
            std::fs::read(self.outside().join("etc/passwd")).unwrap(),
            b"host passwd"
        );
        assert_eq!(
            std::fs::read(self.outside().join("secret")).unwrap(),
            b"host secret"
        );
    }
}

/// Layer tars (bottom first) served as plain layers of `REPO:tag` by `fake`.
fn serve(fake: &FakeRegistry, tag: &str, tars: Vec<Vec<u8>>) -> PushedImage {
    let layers = tars.into_iter().map(FixtureLayer::plain).collect();
    let image = build_image(
        "unused.invalid",
        REPO,
        layers,
        false,
        ("linux", host_arch(), None),
    );
    let blobs = image
        .layer_digests
        .iter()
        .zip(&image.layers)
        .map(|(digest, layer)| (digest.clone(), layer.blob.clone()))
        .collect();
    fake.add_image(REPO, tag, &image.manifest, &image.config, blobs);
    image
}

/// `ImageCache::view` of `REPO:tag` on `fake`, layers in the scene's dst.
async fn try_view(scene: &Scene, fake: &FakeRegistry, tag: &str) -> Result<View, Error> {
    try_view_with(&scene.cache(), scene, fake, tag).await
}

/// [`try_view`] with `cache`.
async fn try_view_with(
    cache: &ImageCache,
    scene: &Scene,
    fake: &FakeRegistry,
    tag: &str,
) -> Result<View, Error> {
    let reference = format!("{}/{REPO}:{tag}", fake.host());
    let image = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .unwrap_or_else(|e| panic!("fetch_image {reference}: {e}"));
    within("view", cache.view(&image, scene.dst())).await
}

/// The image's tars in `dst`: (device, inode) to length.
fn tars_of(dst: &Path, image: &PushedImage) -> BTreeMap<(u64, u64), u64> {
    image
        .diff_ids
        .iter()
        .map(|diff_id| {
            let meta = std::fs::symlink_metadata(tar_path(dst, diff_id)).unwrap();
            assert!(meta.is_file());
            ((meta.dev(), meta.ino()), meta.len())
        })
        .collect()
}

/// Regular file `path`'s bytes from the fd the view hands out, after
/// checking that fd is one of `tars` and the bytes lie inside it.
fn read_checked(
    view: &View,
    path: &str,
    tars: &BTreeMap<(u64, u64), u64>,
) -> Result<Vec<u8>, Error> {
    let (file, offset, size) = view.open_file(path)?;
    let meta = file.metadata().unwrap();
    let len = tars
        .get(&(meta.dev(), meta.ino()))
        .unwrap_or_else(|| panic!("{path}: the fd is not one of the image's tars"));
    assert_eq!(meta.len(), *len);
    let end = offset.checked_add(size).expect("offset + size overflows");
    assert!(
        end <= *len,
        "{path}: {offset}+{size} beyond the tar's {len}"
    );
    let mut data = vec![0; size as usize];
    file.read_exact_at(&mut data, offset).unwrap();
    Ok(data)
}

/// One path as the view shows it: `file MODE Llayer "content"`,
/// `dir MODE Llayer`, `symlink "target" Llayer`, `char M:m`, `block M:m`,
/// `fifo`, or the error kind of its stat (or of opening a file).
fn describe(view: &View, path: &str, tars: &BTreeMap<(u64, u64), u64>) -> String {
    let stat = match view.stat(path) {
        Ok(stat) => stat,
        Err(e) => return format!("{:?}", e.kind()),
    };
    let (mode, layer) = (stat.mode, stat.layer);
    match stat.kind {
        FileKind::Regular => match read_checked(view, path, tars) {
            Ok(data) => {
                assert_eq!(stat.size, data.len() as u64, "{path}: stat size");
                format!(
                    "file {mode:o} L{layer} {:?}",
                    String::from_utf8_lossy(&data)
                )
            }
            Err(e) => format!("file {mode:o} L{layer} {:?}", e.kind()),
        },
        FileKind::Directory => format!("dir {mode:o} L{layer}"),
        FileKind::Symlink => {
            let target = view.read_link(path).unwrap();
            assert_eq!(stat.size, target.len() as u64, "{path}: stat size");
            format!("symlink {target:?} L{layer}")
        }
        FileKind::CharDevice => format!("char {}:{}", stat.dev_major, stat.dev_minor),
        FileKind::BlockDevice => format!("block {}:{}", stat.dev_major, stat.dev_minor),
        FileKind::Fifo => "fifo".to_owned(),
    }
}

/// Every path of the view from the root, depth first in listing order, as
/// [`describe`] shows it.
fn walk(view: &View, tars: &BTreeMap<(u64, u64), u64>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = vec!["/".to_owned()];
    while let Some(path) = pending.pop() {
        let shown = describe(view, &path, tars);
        let is_dir = shown.starts_with("dir ");
        out.push((path.clone(), shown));
        if is_dir {
            let names = view.read_dir(&path).unwrap();
            for name in names.iter().rev() {
                pending.push(match path.as_str() {
                    "/" => format!("/{name}"),
                    dir => format!("{dir}/{name}"),
                });
            }
        }
    }
    out
}

#[track_caller]
fn assert_tree(got: &[(String, String)], want: &[(&str, &str)]) {
    let got: Vec<(&str, &str)> = got.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect();
    assert_eq!(got, want);
}

/// A view of one image, walked.
struct Viewed {
    view: View,
    /// What [`walk`] shows.
    tree: Vec<(String, String)>,
    /// The image's tars, as [`tars_of`] gives them.
    tars: BTreeMap<(u64, u64), u64>,
}

/// The view of the single image `tars` is served as, walked, with the
/// scene holding exactly the tars and their indexes after it.
async fn view_of(scene: &Scene, tars: Vec<Vec<u8>>) -> Viewed {
    let fake = FakeRegistry::start();
    let image = serve(&fake, "v1", tars);
    let view = try_view(scene, &fake, "v1")
        .await
        .unwrap_or_else(|e| panic!("view: {e}"));
    let tars = tars_of(&scene.dst(), &image);
    let tree = walk(&view, &tars);
    let ids = image.diff_ids.iter().map(String::as_str);
    scene.assert_only(&layer_files(&scene.dst(), ids), "after the view");
    Viewed { view, tree, tars }
}

/// The error of a lookup `op` of `path`.
fn error_of(view: &View, op: &str, path: &str) -> (ErrorKind, String) {
    let outcome = match op {
        "stat" => view.stat(path).map(drop),
        "resolve" => view.resolve(path).map(drop),
        "open_file" => view.open_file(path).map(drop),
        "read_link" => view.read_link(path).map(drop),
        "read_dir" => view.read_dir(path).map(drop),
        other => panic!("no operation {other}"),
    };
    let err = outcome.expect_err(&format!("{op} {path} succeeded"));
    (err.kind(), err.message().to_owned())
}

// ---------------------------------------------------------------------------
// Names and paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_absolute_names_are_cleaned_into_the_root() {
    let scene = Scene::new();
    let tar = RawTar::new()
        .dir("../", 0o750)
        .file("../../etc/passwd", b"dotdot")
        .file("/etc/shadow", b"absolute")
        .file("./a/../../b", b"b")
        .dir("/../usr/", 0o755)
        .file("usr/../../../usr/bin-x", b"x")
        .symlink("/../etc/link", "../../../etc/passwd")
        .hardlink("../hard", "/../../etc/passwd")
        .finish();
    let Viewed { view, tree, tars } = view_of(&scene, vec![tar]).await;
    assert_tree(
        &tree,
        &[
            ("/", "dir 750 L0"),
            ("/b", "file 644 L0 \"b\""),
            // Made up for the entries below it: 0755, 0:0.
            ("/etc", "dir 755 L0"),
            ("/etc/link", "symlink \"../../../etc/passwd\" L0"),
            ("/etc/passwd", "file 644 L0 \"dotdot\""),
            ("/etc/shadow", "file 644 L0 \"absolute\""),
            ("/hard", "file 644 L0 \"dotdot\""),
            ("/usr", "dir 755 L0"),
            ("/usr/bin-x", "file 644 L0 \"x\""),
        ],
    );
    assert_eq!(view.resolve("/etc/link").unwrap(), "/etc/passwd");
    assert_eq!(view.resolve("/../../../etc/link").unwrap(), "/etc/passwd");
    assert_eq!(read_checked(&view, "/etc/link", &tars).unwrap(), b"dotdot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_directory_named_as_the_root_is_refused() {
    let scene = Scene::new();
    let fake = FakeRegistry::start();
    for (tag, name) in [("slash", "/"), ("dotdot", ".."), ("dot-slash", "./")] {
        let tar = RawTar::new().file(name, b"root?").finish();
        let image = serve(&fake, tag, vec![tar]);
        let err = try_view(&scene, &fake, tag).await.unwrap_err();
        let tar_file = tar_path(&scene.dst(), &image.diff_ids[0]);
        assert_eq!(err.kind(), ErrorKind::InvalidContent, "{name}: {err}");
        assert_eq!(
            err.message(),
            format!(
                "layer tar {}: tar entry at byte 0 names the root but is not a directory",
                tar_file.display()
            ),
            "{name}"
        );
        // The tar is pulled (it is the one its digest names); no index.
        let before: Vec<PathBuf> = std::fs::read_dir(scene.dst().join("sha256"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(before.contains(&tar_file));
        assert!(!index_path(&scene.dst(), &image.diff_ids[0]).exists());
    }
    let mut tars: Vec<PathBuf> = files_under(&scene.dst());
    tars.sort();
    assert_eq!(tars.len(), 3);
    assert!(tars
        .iter()
        .all(|t| t.parent().unwrap() == scene.dst().join("sha256")));
    scene.assert_only(&tars, "after the refusals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_paths_follow_tar_order() {
    let scene = Scene::new();
    let tar = RawTar::new()
        // A later file replaces an earlier one.
        .file("f", b"first")
        .file_mode("f", 0o600, b"second")
        // A directory replacing a directory keeps what is below it.
        .dir("d", 0o755)
        .file("d/x", b"kept")
        .dir("d", 0o700)
        // A file replacing a directory removes what was below it.
        .dir("e", 0o755)
        .file("e/x", b"removed")
        .file("e", b"now a file")
        // Below a file nothing is made, even once a directory replaces it.
        .file("g", b"g")
        .file("g/x", b"never made")
        .dir("g", 0o711)
        .symlink("s", "f")
        .file("s", b"file over link")
        .file("t", b"t")
        .symlink("t", "f")
        // Below a symlink, nothing is made either (not followed).
        .symlink("l", "d")
        .file("l/y", b"not through the link")
        .finish();
    let Viewed { view, tree, .. } = view_of(&scene, vec![tar]).await;
    assert_tree(
        &tree,
        &[
            ("/", "dir 755 L0"),
            ("/d", "dir 700 L0"),
            ("/d/x", "file 644 L0 \"kept\""),
            ("/e", "file 644 L0 \"now a file\""),
            ("/f", "file 600 L0 \"second\""),
            ("/g", "dir 711 L0"),
            ("/l", "symlink \"d\" L0"),
            ("/s", "file 644 L0 \"file over link\""),
            ("/t", "symlink \"f\" L0"),
        ],
    );
    assert_eq!(
        error_of(&view, "stat", "/e/x"),
        (
            ErrorKind::NotFound,
            "/e/x: no such file or directory in the image".to_owned()
        )
    );
    assert_eq!(view.read_dir("/l").unwrap(), ["x"]);
}

// ---------------------------------------------------------------------------
// Links

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_resolve_inside_the_root_whatever_their_targets() {
    let scene = Scene::new();
    // The host's own copy of what the links name, which they must not reach.
    let host_secret = scene.outside().join("secret");
    let host_secret = host_secret.to_str().unwrap();
    let climb = "../".repeat(40);
    let tar = RawTar::new()
        .dir("etc", 0o755)
        .file("etc/passwd", b"image passwd")
        .dir("a", 0o755)
        .dir("a/b", 0o755)
        .symlink("a/b/up", "../../../../..")
        .symlink("esc", "a/b/up/etc/passwd")
        .symlink("abs", "/../../etc/passwd")
        .symlink("chain1", "a/b/up/../chain2")
        .symlink("chain2", "/a/b/../../../etc/passwd")
        .symlink("host", host_secret)
        .pax(&[("linkpath", format!("{climb}etc/passwd").as_bytes())])
        .symlink("climb", "placeholder")
        .symlink("loop-a", "loop-b")
        .symlink("loop-b", "loop-a")
        .symlink("self", "self")
        .symlink("deeper", "deeper/x")
        .symlink("empty", "")
        .finish();
    let Viewed { view, tars, .. } = view_of(&scene, vec![tar]).await;
    for (path, want) in [
        ("/esc", "/etc/passwd"),
        ("/abs", "/etc/passwd"),
        ("/chain1", "/etc/passwd"),
        ("/climb", "/etc/passwd"),
        ("/a/b/up", "/"),
        ("/a/b/up/a/b/up/etc", "/etc"),
    ] {
        assert_eq!(view.resolve(path).unwrap(), want, "{path}");
    }
    for path in ["/esc", "/abs", "/chain1", "/climb"] {
        assert_eq!(
            read_checked(&view, path, &tars).unwrap(),
            b"image passwd",
            "{path}"
        );
    }
    // An absolute target is the image's path, never the host's.
    let missing = ErrorKind::NotFound;
    assert_eq!(
        error_of(&view, "resolve", "/host"),
        (
            missing,
            "/host: no such file or directory in the image".into()
        )
    );
    assert_eq!(error_of(&view, "open_file", "/host").0, missing);
    let too_many = |path: &str| {
        (
            ErrorKind::InvalidContent,
            format!("{path}: too many levels of symbolic links (more than 40)"),
        )
    };
    for path in ["/loop-a", "/self", "/deeper"] {
        assert_eq!(error_of(&view, "resolve", path), too_many(path));
        assert_eq!(error_of(&view, "open_file", path), too_many(path));
        assert_eq!(error_of(&view, "read_dir", path), too_many(path));
        let below = format!("{path}/x");
        assert_eq!(error_of(&view, "stat", &below), too_many(&below));
        // lstat does not follow the last component.
        assert_eq!(view.stat(path).unwrap().kind, FileKind::Symlink);
    }
    // An empty target names nothing (Linux cannot even make such a link).
    assert_eq!(view.read_link("/empty").unwrap(), "");
    assert_eq!(
        error_of(&view, "resolve", "/empty"),
        (
            missing,
            "/empty: no such file or directory in the image".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_links_are_followed_and_forty_one_are_too_many() {
    let scene = Scene::new();
    let mut tar = RawTar::new().file("end", b"the end");
    // l0 -> l1 -> ... -> l40 -> end: from l1, 40 links; from l0, 41.
    for i in 0..40 {
        tar = tar.symlink(&format!("l{i}"), &format!("l{}", i + 1));
    }
    tar = tar.symlink("l40", "end");
    // The same count through directories: d0/ -> d1/ -> ... -> d41 (a real
    // directory), each link an intermediate component.
    tar = tar.dir("d41", 0o755).file("d41/leaf", b"leaf");
    for i in 0..41 {
        tar = tar.symlink(&format!("d{i}"), &format!("d{}/", i + 1));
    }
    let Viewed { view, tars, .. } = view_of(&scene, vec![tar.finish()]).await;
    assert_eq!(view.resolve("/l1").unwrap(), "/end");
    assert_eq!(read_checked(&view, "/l1", &tars).unwrap(), b"the end");
    assert_eq!(view.resolve("/d1/leaf").unwrap(), "/d41/leaf");
    assert_eq!(read_checked(&view, "/d1/leaf", &tars).unwrap(), b"leaf");
    let too_many = |path: &str| {
        (
            ErrorKind::InvalidContent,
            format!("{path}: too many levels of symbolic links (more than 40)"),
        )
    };
    assert_eq!(error_of(&view, "resolve", "/l0"), too_many("/l0"));
    assert_eq!(error_of(&view, "open_file", "/l0"), too_many("/l0"));
    assert_eq!(error_of(&view, "stat", "/d0/leaf"), too_many("/d0/leaf"));
    // Not following the last link, l0 is one more link away from the limit.
    assert_eq!(view.read_link("/l0").unwrap(), "l1");
    assert_eq!(view.stat("/d0").unwrap().kind, FileKind::Symlink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardlinks_to_missing_later_and_odd_targets() {
    let scene = Scene::new();
    let low = RawTar::new()
        .file("later", b"lower later")
        .dir("dir", 0o755)
        .finish();
    let high = RawTar::new()
        .hardlink("to-missing", "nowhere")
        // Extraction links to what is on disk then: the lower layer's file.
        .hardlink("to-later", "later")
        .file("later", b"upper later")
        // Only a later entry of its own tar: extraction fails to link.
        .hardlink("to-only-later", "only-later")
        .file("only-later", b"only later")
        .hardlink("to-dir", "dir")
        .hardlink("to-self", "to-self")
        .hardlink("cycle-a", "cycle-b")
        .hardlink("cycle-b", "cycle-a")
        .hardlink("climbing", "../../later")
        // The data at link time stays the link's when the target changes.
        .file("target", b"old target")
        .hardlink("to-old", "target")
        .file("target", b"new target")
        .hardlink("to-link", "to-old")
        .finish();
    let Viewed { view, tree, .. } = view_of(&scene, vec![low, high]).await;
    assert_tree(
        &tree,
        &[
            ("/", "dir 755 L0"),
            ("/climbing", "file 644 L1 \"upper later\""),
            ("/cycle-a", "NotFound"),
            ("/cycle-b", "NotFound"),
            ("/dir", "dir 755 L0"),
            ("/later", "file 644 L1 \"upper later\""),
            ("/only-later", "file 644 L1 \"only later\""),
            ("/target", "file 644 L1 \"new target\""),
            ("/to-dir", "NotFound"),
            ("/to-later", "file 644 L1 \"lower later\""),
            ("/to-link", "file 644 L1 \"old target\""),
            ("/to-missing", "NotFound"),
            ("/to-old", "file 644 L1 \"old target\""),
            ("/to-only-later", "NotFound"),
            ("/to-self", "NotFound"),
        ],
    );
    assert_eq!(
        error_of(&view, "open_file", "/to-missing"),
        (
            ErrorKind::NotFound,
            "/to-missing: the hardlink's target nowhere is not in the image".into()
        )
    );
}

// ---------------------------------------------------------------------------
// Sizes

/// A header of `name` (type `typeflag`) whose size field is `field`.
fn sized(name: &str, typeflag: u8, field: &[u8; 12]) -> [u8; TAR_BLOCK] {
    let mut header = raw_header(name.as_bytes(), typeflag, 0o644, 0, b"");
    header[124..136].copy_from_slice(field);
    seal_header(&mut header);
    header
}

/// A base-256 size field holding `value`.
fn base256(value: i128) -> [u8; 12] {
    let bytes = value.to_be_bytes();
    let mut field = [0u8; 12];
    field.copy_from_slice(&bytes[4..]);
    if value >= 0 {
        field[0] |= 0x80;
    }
    field
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_sizes_are_refused_when_the_view_opens() {
    let after = |tar: RawTar| tar.file("after", b"after").finish();
    let meg = 1u64 << 20;
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "octal-beyond-the-end",
            after(
                RawTar::new()
                    .block(sized("big", b'0', b"77777777777\0"))
                    .data(b"5byte"),
            ),
            "tar is truncated: it ends at byte {len} inside an entry".into(),
        ),
        (
            "base256-beyond-i64",
            after(RawTar::new().block(sized("big", b'0', &base256(1 << 80)))),
            "tar header at byte 0 has a malformed or overflowing size field".into(),
        ),
        (
            "base256-i64-max",
            after(RawTar::new().block(sized("big", b'0', &base256(i64::MAX.into())))),
            // It fits an offset, so it is only a tar cut short.
            "tar is truncated: it ends at byte {len} inside an entry".into(),
        ),
        (
            "base256-negative",
            after(RawTar::new().block(sized("big", b'0', &base256(-1)))),
            "tar header at byte 0 has a negative size".into(),
        ),
        (
            "pax-beyond-the-end",
            after(
                RawTar::new()
                    .pax(&[("size", b"1000000")])
                    .file("big", b"5byte"),
            ),
            "tar is truncated: it ends at byte {len} inside an entry".into(),
        ),
        (
            "pax-u64-max",
            after(
                RawTar::new()
                    .pax(&[("size", b"18446744073709551615")])
                    .file("big", b""),
            ),
            "tar entry at byte 1024 has a size (18446744073709551615) that overflows".into(),
        ),
        (
            "pax-beyond-u64",
            after(
                RawTar::new()
                    .pax(&[("size", b"18446744073709551616")])
                    .file("big", b""),
            ),
            "tar PAX header at byte 512 has a malformed size: \"18446744073709551616\"".into(),
        ),
        (
            "pax-header-too-big",
            after(
                RawTar::new()
                    .block(raw_header(b"PaxHeader", b'x', 0o644, 2 * meg, b""))
                    .data(&vec![b'x'; 2 * meg as usize]),
            ),
            format!(
                "tar header at byte 0 has a {}-byte extended header (at most {meg} are read)",
                2 * meg
            ),
        ),
    ];
    assert_views_refused(cases).await;
}

/// Each `(tag, tar, message)`: the tar is pulled (it is the layer its
/// digest names) but not indexed, and the view fails with InvalidContent
/// naming the tar, `{len}` in the message standing for the tar's length;
/// nothing but the tars is left.
async fn assert_views_refused(cases: Vec<(&str, Vec<u8>, String)>) {
    let scene = Scene::new();
    let fake = FakeRegistry::start();
    let mut tars = Vec::new();
    for (tag, tar, want) in cases {
        // A truncated tar ends where the tar does.
        let want = want.replace("{len}", &tar.len().to_string());
        let image = serve(&fake, tag, vec![tar]);
        let err = try_view(&scene, &fake, tag).await.unwrap_err();
        let tar_file = tar_path(&scene.dst(), &image.diff_ids[0]);
        assert_eq!(err.kind(), ErrorKind::InvalidContent, "{tag}: {err}");
        assert_eq!(
            err.message(),
            format!("layer tar {}: {want}", tar_file.display()),
            "{tag}"
        );
        tars.push(tar_file);
    }
    tars.sort();
    scene.assert_only(&tars, "tars only, no index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_extraction_could_not_make_or_costs_too_much_is_refused() {
    let long = "d/".repeat(2047) + "xy";
    let with_pax = |key: &str, value: &str, tar: RawTar| tar.pax(&[(key, value.as_bytes())]);
    // Each entry implies 2000 directories: megabytes of index for 5 KB.
    let mut deep = RawTar::new();
    for i in 0..5 {
        let path = format!("p{i}/{}f", "a/".repeat(2000));
        deep = with_pax("path", &path, deep).file("placeholder", b"");
    }
    let cases = vec![
        (
            "path-too-long",
            with_pax("path", &long, RawTar::new())
                .file("placeholder", b"")
                .finish(),
            "tar entry at byte 5120 has a 4096-byte path (at most 4095, as Linux allows)".into(),
        ),
        (
            "link-too-long",
            with_pax("linkpath", &long, RawTar::new())
                .symlink("link", "placeholder")
                .finish(),
            "tar entry at byte 5120 has a 4096-byte link target (at most 4095, as Linux allows)"
                .into(),
        ),
        (
            "deep-implied-tree",
            deep.finish(),
            "tar implies directories it has no entries for, more than an index keeps \
             ({limit} bytes of paths and records)"
                .into(),
        ),
    ];
    let limit = |tar: &[u8]| (16u64 << 20) + tar.len() as u64;
    let cases = cases
        .into_iter()
        .map(|(tag, tar, want): (&str, Vec<u8>, String)| {
            let want = want.replace("{limit}", &limit(&tar).to_string());
            (tag, tar, want)
        })
        .collect();
    assert_views_refused(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_only_entries_carry_no_data_whatever_their_size_says() {
    let scene = Scene::new();
    let huge = b"77777777777\0";
    let tar = RawTar::new()
        .block(sized("dir", b'5', huge))
        .block(sized("fifo", b'6', huge))
        .file("dir/after", b"read right after the headers")
        .finish();
    let Viewed { tree, .. } = view_of(&scene, vec![tar]).await;
    assert_tree(
        &tree,
        &[
            ("/", "dir 755 L0"),
            ("/dir", "dir 644 L0"),
            ("/dir/after", "file 644 L0 \"read right after the headers\""),
            ("/fifo", "fifo"),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_tiny_entries() {
    const N: usize = 100_000;
    let scene = Scene::new();
    let mut tar = Vec::with_capacity((N + 3) * TAR_BLOCK);
    let mut header = raw_header(b"", b'0', 0o644, 0, b"");
    for i in 0..N {
        let name = format!("d{}/f{i}", i % 100);
        header[..100].fill(0);
        header[..name.len()].copy_from_slice(name.as_bytes());
        seal_header(&mut header);
        tar.extend_from_slice(&header);
    }
    tar.extend(RawTar::new().file("d99/last", b"last one").finish());
    let started = Instant::now();
    let fake = FakeRegistry::start();
    let image = serve(&fake, "v1", vec![tar]);
    // No store: a second copy of 50 MB would only slow the test down.
    let cache = new_cache(CacheOptions::new());
    let view = try_view_with(&cache, &scene, &fake, "v1").await.unwrap();
    eprintln!("100k entries: pulled and viewed in {:?}", started.elapsed());
    let tars = tars_of(&scene.dst(), &image);
    let names = view.read_dir("/").unwrap();
    assert_eq!(names.len(), 100);
    assert_eq!((names[0].as_str(), names[99].as_str()), ("d0", "d99"));
    assert_eq!(view.read_dir("/d42").unwrap().len(), N / 100);
    assert_eq!(view.read_dir("/d99").unwrap().len(), N / 100 + 1);
    assert_eq!(describe(&view, "/d99/f99999", &tars), "file 644 L0 \"\"");
    assert_eq!(
        describe(&view, "/d99/last", &tars),
        "file 644 L0 \"last one\""
    );
    let ids = image.diff_ids.iter().map(String::as_str);
    scene.assert_only(&layer_files(&scene.dst(), ids), "after the view");
}

// ---------------------------------------------------------------------------
// GNU sparse files

/// An old-GNU sparse header (`S`) for `stored` bytes of a `real`-byte file,
/// its map one segment at `at`, with one extension block after it.
fn gnu_sparse(name: &str, stored: &[u8], at: u64, real: u64) -> RawTar {
    let mut header = raw_header(name.as_bytes(), b'S', 0o644, stored.len() as u64, b"");
    header[257..265].copy_from_slice(b"ustar  \0");
    let octal = |value: u64| format!("{value:011o}\0").into_bytes();
    header[386..398].copy_from_slice(&octal(at));
    header[398..410].copy_from_slice(&octal(stored.len() as u64));
    header[482] = 1;
    header[483..495].copy_from_slice(&octal(real));
    seal_header(&mut header);
    // The extension block: no more segments, no more blocks (byte 504).
    RawTar::new()
        .block(header)
        .block([0; TAR_BLOCK])
        .data(stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gnu_sparse_files_are_unsupported_not_misread() {
    let scene = Scene::new();
    let mut tar = gnu_sparse("old-sparse", b"0123456789", 4096, 1 << 20).finish();
    tar.truncate(tar.len() - 2 * TAR_BLOCK);
    let map = b"1\n4096\n4\n";
    let pax_data = [&map[..], &[0; TAR_BLOCK - 9][..], b"data"].concat();
    let rest = RawTar::new()
        .hardlink("link-to-sparse", "old-sparse")
        .pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"pax-sparse"),
            ("GNU.sparse.realsize", b"8192"),
        ])
        .file("GNUSparseFile.0/pax-sparse", &pax_data)
        .file("plain", b"plain after them")
        .finish();
    tar.extend(rest);
    let Viewed { view, tree, .. } = view_of(&scene, vec![tar]).await;
    assert_tree(
        &tree,
        &[
            ("/", "dir 755 L0"),
            ("/link-to-sparse", "file 644 L0 Unsupported"),
            ("/old-sparse", "file 644 L0 Unsupported"),
            ("/pax-sparse", "file 644 L0 Unsupported"),
            ("/plain", "file 644 L0 \"plain after them\""),
        ],
    );
    for path in ["/old-sparse", "/link-to-sparse", "/pax-sparse"] {
        assert_eq!(
            error_of(&view, "open_file", path),
            (
                ErrorKind::Unsupported,
                format!(
                    "{path} is a GNU sparse file, whose data cannot be read from its layer tar"
                )
            )
        );
    }
    // stat's size is the bytes the tar stores, not the file's real size.
    assert_eq!(view.stat("/old-sparse").unwrap().size, 10);
    assert_eq!(view.stat("/pax-sparse").unwrap().size, 516);
}
// ---------------------------------------------------------------------------
// Bad index files on disk

/// Two layers of ordinary files on a real registry, viewed once into a
/// scene: the registry, the scene, the image, and each layer's index as
/// written by the pull.
async fn pulled_two_layers() -> (Registry, Scene, PushedImage, Vec<Vec<u8>>) {
    use TarEntry::*;
    let registry = Registry::start();
    let layers = vec![
        layer_tar(&[
            Dir("etc", 0o755),
            File("etc/os-release", 0o644, b"ID=base\n".to_vec()),
        ]),
        layer_tar(&[File("motd", 0o600, b"hello\n".to_vec())]),
    ];
    let layers = layers.into_iter().map(FixtureLayer::gzip).collect();
    let platform = ("linux", host_arch(), None);
    let image = push_image(
        &registry.host(),
        "indexed",
        Some("v1"),
        layers,
        false,
        platform,
    );
    let scene = Scene::new();
    let view = view_from(&registry, &scene).await.unwrap();
    check_content(&view, "first view");
    let indexes = image
        .diff_ids
        .iter()
        .map(|d| std::fs::read(index_path(&scene.dst(), d)).unwrap())
        .collect();
    (registry, scene, image, indexes)
}

/// `ImageCache::view` of the image [`pulled_two_layers`] pushed, by a new
/// cache on the scene's store, into the scene's dst.
async fn view_from(registry: &Registry, scene: &Scene) -> Result<View, Error> {
    let cache = scene.cache();
    let reference = format!("{}/indexed:v1", registry.host());
    let image = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .unwrap();
    within("view", cache.view(&image, scene.dst())).await
}

/// The view shows layer 0's file, its metadata and the merged root.
#[track_caller]
fn check_content(view: &View, what: &str) {
    let (file, offset, size) = view.open_file("/etc/os-release").unwrap();
    let mut data = vec![0; size as usize];
    file.read_exact_at(&mut data, offset).unwrap();
    assert_eq!(data, b"ID=base\n", "{what}");
    let stat = view.stat("/etc/os-release").unwrap();
    assert_eq!(
        (stat.kind, stat.mode, stat.size, stat.layer, stat.mtime_sec),
        (FileKind::Regular, 0o644, 8, 0, 1_700_000_000),
        "{what}"
    );
    assert_eq!(view.read_dir("/").unwrap(), ["etc", "motd"], "{what}");
}

/// `index` with its trailing checksum made right again after an edit.
fn resealed(mut index: Vec<u8>) -> Vec<u8> {
    use sha2::Digest as _;
    let body = index.len() - 32;
    let sum = sha2::Sha256::digest(&index[..body]);
    index[body..].copy_from_slice(&sum);
    index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_index_on_disk_is_rebuilt_never_trusted() {
    let (registry, scene, image, indexes) = pulled_two_layers().await;
    let dst = scene.dst();
    let path = index_path(&dst, &image.diff_ids[0]);
    let good = &indexes[0];
    // The index of layer 0's tar: the root, etc, etc/os-release.
    assert_eq!(good[24..32], 3u64.to_le_bytes());
    let os_release = 64 + 2 * 112;
    let tar_len = std::fs::metadata(tar_path(&dst, &image.diff_ids[0]))
        .unwrap()
        .len();
    let mut beyond = good.clone();
    beyond[os_release + 56..os_release + 64].copy_from_slice(&(tar_len - 4).to_le_bytes());
    let mut longer_tar = good.clone();
    longer_tar[56..64].copy_from_slice(&(tar_len + 512).to_le_bytes());
    let mut flipped = good.clone();
    flipped[os_release + 56] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", noise(13, good.len())),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("one byte short", good[..good.len() - 1].to_vec()),
        ("empty", Vec::new()),
        ("another layer's", indexes[1].clone()),
        ("a flipped bit", flipped),
        ("resealed, data past the tar's end", resealed(beyond)),
        ("resealed, of a tar 512 bytes longer", resealed(longer_tar)),
    ];
    let expected = layer_files(&dst, image.diff_ids.iter().map(String::as_str));
    for (what, bytes) in cases {
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let view = view_from(&registry, &scene)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        check_content(&view, what);
        assert_rebuilt(&path, good, what);
        scene.assert_only(&expected, what);
    }
    // Longer than any index of its tar: rebuilt without being read (it is
    // sparse, so it costs no disk; read, it would cost 1 GiB of memory).
    std::fs::remove_file(&path).unwrap();
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let view = view_from(&registry, &scene).await.unwrap();
    check_content(&view, "huge");
    assert_rebuilt(&path, good, "huge");
    scene.assert_only(&expected, "huge");
}

#[track_caller]
fn assert_rebuilt(path: &Path, good: &[u8], what: &str) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert!(meta.is_file(), "{what}: {:?}", meta.file_type());
    assert_bytes(&std::fs::read(path).unwrap(), good, what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_fifo_or_empty_directory_in_place_of_an_index_is_replaced_unopened() {
    let (registry, scene, image, indexes) = pulled_two_layers().await;
    let dst = scene.dst();
    let path = index_path(&dst, &image.diff_ids[0]);
    let good = &indexes[0];
    let expected = layer_files(&dst, image.diff_ids.iter().map(String::as_str));

    // A link to a valid copy elsewhere: replaced, the copy left alone.
    let copy = scene.outside().join("index-copy");
    std::fs::write(&copy, good).unwrap();
    std::fs::remove_file(&path).unwrap();
    symlink(&copy, &path).unwrap();
    let view = view_from(&registry, &scene).await.unwrap();
    check_content(&view, "link");
    assert_rebuilt(&path, good, "link");
    assert_bytes(&std::fs::read(&copy).unwrap(), good, "the link's target");
    std::fs::remove_file(&copy).unwrap();
    scene.assert_only(&expected, "link");

    // A FIFO with no writer: opening it would block; `within` bounds it.
    std::fs::remove_file(&path).unwrap();
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_fifo());
    let view = view_from(&registry, &scene).await.unwrap();
    check_content(&view, "FIFO");
    assert_rebuilt(&path, good, "FIFO");
    scene.assert_only(&expected, "FIFO");

    // An empty directory.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let view = view_from(&registry, &scene).await.unwrap();
    check_content(&view, "directory");
    assert_rebuilt(&path, good, "directory");
    scene.assert_only(&expected, "directory");

    // A directory with something in it is not the library's to remove.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("kept"), "kept").unwrap();
    let err = view_from(&registry, &scene).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert_eq!(
        err.message(),
        format!(
            "removing directory {}: Directory not empty (os error 39)",
            path.display()
        )
    );
    assert_eq!(std::fs::read(path.join("kept")).unwrap(), b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_index_directory_is_never_followed() {
    let (registry, scene, image, indexes) = pulled_two_layers().await;
    let dst = scene.dst();
    // A copy of the index tree elsewhere, one index corrupt: a view that
    // followed the link would rewrite it.
    let planted = scene.outside().join("tar-index");
    std::fs::create_dir_all(planted.join("sha256")).unwrap();
    let planted_index = |i: usize| index_path(&scene.outside(), &image.diff_ids[i]);
    std::fs::write(planted_index(0), b"corrupt").unwrap();
    std::fs::write(planted_index(1), &indexes[1]).unwrap();
    let (keep0, keep1) = (planted_index(0), planted_index(1));
    for linked in ["tar-index", "tar-index/sha256"] {
        std::fs::remove_dir_all(dst.join("tar-index")).unwrap();
        if linked == "tar-index/sha256" {
            std::fs::create_dir(dst.join("tar-index")).unwrap();
        }
        let target = scene.outside().join(linked);
        symlink(&target, dst.join(linked)).unwrap();
        let err = view_from(&registry, &scene).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{linked}: {err}");
        assert_eq!(
            err.message(),
            format!(
                "{} is a symbolic link; links below dst and the store are never followed",
                dst.join(linked).display()
            )
        );
        assert_eq!(std::fs::read(&keep0).unwrap(), b"corrupt", "{linked}");
        assert_bytes(&std::fs::read(&keep1).unwrap(), &indexes[1], linked);
        assert!(std::fs::symlink_metadata(dst.join(linked))
            .unwrap()
            .file_type()
            .is_symlink());
        let mut files = files_under(&scene.outside());
        files.sort();
        let mut want = vec![
            scene.outside().join("etc/passwd"),
            scene.outside().join("secret"),
            keep0.clone(),
            keep1.clone(),
        ];
        want.sort();
        assert_eq!(files, want, "{linked}: nothing new outside");
    }
}
