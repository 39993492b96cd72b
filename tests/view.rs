//! The image view (issue 13) through the public API, against a real
//! registry: the standard view image, walked through the view, is the tree
//! umoci unpacks, whatever the layers' compression; symlinks and hardlinks
//! resolve inside the image root; every error says what and where; the
//! view outlives its cache and image and hands out close-on-exec fds.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::*;
use oci_cache::{CacheOptions, ErrorKind, FileKind, ImageCache, View};

/// The view of `reference`, its layers written to `dst`.
async fn view_of(cache: &ImageCache, reference: &str, dst: &Path) -> View {
    let image = within("fetch_image", cache.fetch_image(reference, None))
        .await
        .unwrap_or_else(|e| panic!("fetch_image {reference}: {e}"));
    within("view", cache.view(&image, dst))
        .await
        .unwrap_or_else(|e| panic!("view {reference}: {e}"))
}

/// The bytes of regular file `path`, read from the fd the view hands out.
fn content(view: &View, path: &str) -> Vec<u8> {
    let (file, offset, size) = view
        .open_file(path)
        .unwrap_or_else(|e| panic!("open_file {path}: {e}"));
    let mut data = vec![0; size as usize];
    file.read_exact_at(&mut data, offset)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"));
    data
}

/// Every path under `path` as the view shows it, in the oracle's terms.
fn walk(view: &View, path: &str, tree: &mut BTreeMap<String, Node>) {
    let stat = view
        .stat(path)
        .unwrap_or_else(|e| panic!("stat {path}: {e}"));
    let kind = match stat.kind {
        FileKind::Regular => NodeKind::File,
        FileKind::Directory => NodeKind::Dir,
        FileKind::Symlink => NodeKind::Symlink,
        FileKind::CharDevice => NodeKind::CharDevice,
        FileKind::BlockDevice => NodeKind::BlockDevice,
        FileKind::Fifo => NodeKind::Fifo,
    };
    let target = (kind == NodeKind::Symlink).then(|| view.read_link(path).unwrap());
    let digest = (kind == NodeKind::File).then(|| sha256(&content(view, path)));
    let device = matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice)
        .then_some((stat.dev_major, stat.dev_minor));
    let node = Node {
        kind,
        mode: stat.mode,
        uid: stat.uid,
        gid: stat.gid,
        size: stat.size,
        target,
        digest,
        device,
    };
    let is_dir = node.kind == NodeKind::Dir;
    tree.insert(path.to_owned(), node);
    if is_dir {
        let names = view
            .read_dir(path)
            .unwrap_or_else(|e| panic!("read_dir {path}: {e}"));
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{path} is listed out of order");
        for name in names {
            let child = match path {
                "/" => format!("/{name}"),
                dir => format!("{dir}/{name}"),
            };
            walk(view, &child, tree);
        }
    }
}

/// The fd flags and the file status flags of `file`.
fn fd_flags(file: &File) -> (i32, i32) {
    // SAFETY: fcntl on a descriptor `file` owns.
    unsafe {
        (
            libc::fcntl(file.as_raw_fd(), libc::F_GETFD),
            libc::fcntl(file.as_raw_fd(), libc::F_GETFL),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_of_every_compression_is_the_tree_umoci_unpacks() {
    let registry = Registry::start();
    let host = registry.host();
    let platform = ("linux", host_arch(), None);
    type Compress = fn(Vec<u8>) -> FixtureLayer;
    let compressions: [(&str, Compress); 3] = [
        ("gzip", FixtureLayer::gzip),
        ("zstd", FixtureLayer::zstd),
        ("plain", FixtureLayer::plain),
    ];
    for (tag, compress) in compressions {
        let layers = view_layers()
            .iter()
            .map(|l| compress(layer_tar(l)))
            .collect();
        push_image(&host, "view", Some(tag), layers, false, platform);
    }
    // One oracle: the layers' content is the same whatever the compression.
    let oracle = unpacked_tree(&host, "view:gzip");
    assert_eq!(oracle.len(), 27, "{:#?}", oracle.keys());
    let dst = tempfile::tempdir().unwrap();
    let mut kept = None;
    for (tag, _) in compressions {
        let cache = new_cache(CacheOptions::new());
        let view = view_of(&cache, &format!("{host}/view:{tag}"), dst.path()).await;
        let mut tree = BTreeMap::new();
        walk(&view, "/", &mut tree);
        assert_eq!(tree, oracle, "{tag}");
        kept = Some(view);
    }
    // The cache and image are gone; the view still reads its own fds.
    let view = kept.unwrap();
    assert_eq!(view.layer_count(), 2);
    assert_eq!(content(&view, "/etc/os-release"), b"ID=top\n");

    // What the oracle does not hold: layers, times, and where data is.
    let stat = view.stat("/etc/os-release").unwrap();
    assert_eq!(
        (stat.layer, stat.mtime_sec, stat.mtime_nsec),
        (1, 1_700_000_000, 0)
    );
    assert_eq!(view.stat("/etc/passwd").unwrap().layer, 0);
    // A hardlink has its target's type, mode and data, and its own layer.
    let link = view.stat("/etc/os-release-link").unwrap();
    assert_eq!(
        (link.kind, link.mode, link.size, link.layer),
        (FileKind::Regular, 0o644, 7, 1)
    );
    // A directory a tar makes up (layer 1 has etc/ only through its
    // entries) is the lower layer's; one no tar has is 0755 0:0.
    assert_eq!(view.stat("/etc").unwrap().layer, 0);
    let made_up = view.stat("/pax").unwrap();
    assert_eq!(
        (made_up.kind, made_up.mode, made_up.uid, made_up.layer),
        (FileKind::Directory, 0o755, 0, 1)
    );
    let root = view.stat("/").unwrap();
    assert_eq!(
        (root.kind, root.mode, root.layer),
        (FileKind::Directory, 0o755, 0)
    );
    assert_eq!(view.stat("").unwrap(), root);
    let null = view.stat("/dev/null").unwrap();
    assert_eq!(
        (null.kind, null.dev_major, null.dev_minor),
        (FileKind::CharDevice, 1, 3)
    );
    // Every fd is read-only and close-on-exec, and a fresh one each time.
    let (first, _, _) = view.open_file("/usr/lib/libc.so").unwrap();
    let (second, offset, size) = view.open_file("/lib/libc.so").unwrap();
    assert_ne!(first.as_raw_fd(), second.as_raw_fd());
    for file in [&first, &second] {
        let (fd, status) = fd_flags(file);
        assert_eq!(fd & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        assert_eq!(status & libc::O_ACCMODE, libc::O_RDONLY);
    }
    let mut data = vec![0; size as usize];
    first.read_exact_at(&mut data, offset).unwrap();
    assert_eq!(data, [7; 5000]);
    // Each has a file offset of its own, at 0: seeking and reading one
    // moves no other.
    let (mut first, mut second) = (first, second);
    first.seek(SeekFrom::Start(offset)).unwrap();
    let mut head = [0; 10];
    first.read_exact(&mut head).unwrap();
    assert_eq!(head, [7; 10]);
    assert_eq!(second.stream_position().unwrap(), 0);
    assert_eq!(first.stream_position().unwrap(), offset + 10);
    second.seek(SeekFrom::Start(offset + size - 1)).unwrap();
    assert_eq!(first.stream_position().unwrap(), offset + 10);
    // The view's own fds too: every fd this process has open on a layer
    // tar is close-on-exec.
    drop((first, second));
    let tars = dst.path().join("sha256");
    let mut seen = 0;
    for fd in std::fs::read_dir("/proc/self/fd").unwrap() {
        let fd = fd.unwrap();
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target.starts_with(&tars) {
            let fd: i32 = fd.file_name().to_str().unwrap().parse().unwrap();
            // SAFETY: fcntl reads the flags of an open descriptor.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC, "{target:?}");
            seen += 1;
        }
    }
    assert_eq!(seen, 2, "one fd per layer");
    // Extended attributes come from the entry's PAX records; the last
    // component is not followed.
    let pax = "/pax/\u{e9}t\u{e9}-with-a-name-that-pax-carries";
    assert_eq!(
        view.xattrs(pax).unwrap(),
        [("user.origin".to_owned(), b"pax".to_vec())]
    );
    assert_eq!(view.xattrs("/etc/passwd").unwrap(), []);
    assert_eq!(view.xattrs("/").unwrap(), []);
    assert_eq!(
        view.xattrs("/removed").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // Shared between threads.
    let view = std::sync::Arc::new(view);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let view = view.clone();
            std::thread::spawn(move || content(&view, "/etc/passwd"))
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().unwrap(), b"root:x:0:0::/root:/bin/sh\n");
    }
}

/// A GNU tar of one sparse file, `sparse`, made by GNU tar itself.
fn sparse_tar() -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let file = File::create(tmp.path().join("sparse")).unwrap();
    file.set_len(1 << 20).unwrap();
    file.write_all_at(b"data", 1 << 19).unwrap();
    let out = tmp.path().join("sparse.tar");
    let made = run(
        "tar -S",
        Command::new("tar")
            .args(["-S", "--format=gnu", "--owner=0", "--group=0", "-cf"])
            .arg(&out)
            .arg("-C")
            .arg(tmp.path())
            .arg("sparse"),
        Duration::from_secs(30),
    );
    assert!(made.status.success(), "{}", made.describe());
    std::fs::read(out).unwrap()
}

/// Two layers of links: symlinks of every shape, a loop, a dangling link,
/// a hardlink to a lower layer's file, a sparse file, and a name that is
/// not UTF-8.
fn link_layers() -> Vec<Vec<u8>> {
    use TarEntry::*;
    let low = layer_tar(&[
        Dir("etc", 0o755),
        File("etc/passwd", 0o600, b"passwd".to_vec()),
        Dir("usr", 0o755),
        Dir("usr/lib", 0o755),
        File("usr/lib/os-release", 0o644, b"ID=links\n".to_vec()),
        Symlink("lib", "usr/lib"),
        Symlink("etc/os-release", "../usr/lib/os-release"),
        Symlink("abs", "/etc/passwd"),
        Symlink("escape", "../../../../etc/passwd"),
        Symlink("up", "usr/lib/../.."),
        Symlink("dangling", "nowhere"),
        Symlink("loop-a", "loop-b"),
        Symlink("loop-b", "loop-a"),
        Symlink("to-dir", "/usr"),
        Symlink("to-null", "dev/null"),
        Dir("dev", 0o755),
        CharDevice("dev/null", 1, 3),
        Fifo("dev/fifo"),
    ]);
    let mut high = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Link);
    header.set_mode(0o777);
    header.set_size(0);
    high.append_link(&mut header, "hard-lower", "etc/passwd")
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Link);
    header.set_size(0);
    high.append_link(&mut header, "hard-nowhere", "not/there")
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(3);
    let raw = std::ffi::OsStr::from_bytes(b"not-utf8-\xff");
    high.append_data(&mut header, raw, &b"raw"[..]).unwrap();
    let mut high = high.into_inner().unwrap();
    // The sparse file's entries, then the end of the archive.
    high.truncate(high.len() - 1024);
    high.extend(sparse_tar());
    vec![low, high]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_resolve_inside_the_root_and_errors_name_the_path() {
    let registry = Registry::start();
    let host = registry.host();
    let layers = link_layers().into_iter().map(FixtureLayer::plain).collect();
    push_image(
        &host,
        "links",
        Some("v1"),
        layers,
        false,
        ("linux", host_arch(), None),
    );
    let dst = tempfile::tempdir().unwrap();
    let cache = new_cache(CacheOptions::new());
    let view = view_of(&cache, &format!("{host}/links:v1"), dst.path()).await;

    let resolved = |path: &str| view.resolve(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (path, want) in [
        ("/", "/"),
        ("", "/"),
        ("etc/passwd", "/etc/passwd"),
        ("/lib", "/usr/lib"),
        ("/lib/os-release", "/usr/lib/os-release"),
        ("/etc/os-release", "/usr/lib/os-release"),
        ("/abs", "/etc/passwd"),
        // `..` never rises above the image's root.
        ("/escape", "/etc/passwd"),
        ("/../../etc/./passwd", "/etc/passwd"),
        // In a target, `..` is taken from where the walk is; in the
        // caller's path it is lexical.
        ("/up", "/"),
        ("/lib/..", "/"),
        ("/lib/../etc", "/etc"),
        ("/to-dir/lib", "/usr/lib"),
    ] {
        assert_eq!(resolved(path), want, "{path}");
    }
    assert_eq!(content(&view, "/etc/os-release"), b"ID=links\n");
    assert_eq!(content(&view, "/escape"), b"passwd");
    assert_eq!(
        view.read_link("/etc/os-release").unwrap(),
        "../usr/lib/os-release"
    );
    assert_eq!(view.read_link("/escape").unwrap(), "../../../../etc/passwd");
    let link = view.stat("/etc/os-release").unwrap();
    assert_eq!(
        (link.kind, link.size, link.mode),
        (FileKind::Symlink, 21, 0o777)
    );
    assert_eq!(
        view.read_dir("/lib").unwrap(),
        ["os-release"],
        "read_dir follows the path"
    );
    assert_eq!(view.read_dir("/up").unwrap(), view.read_dir("/").unwrap());

    // A hardlink to a lower layer's file: its data and mode, its own layer.
    let hard = view.stat("/hard-lower").unwrap();
    assert_eq!(
        (hard.kind, hard.mode, hard.size, hard.layer),
        (FileKind::Regular, 0o600, 6, 1)
    );
    assert_eq!(content(&view, "/hard-lower"), b"passwd");

    // A name that is not UTF-8 cannot be listed.
    assert_eq!(
        view.read_dir("/").unwrap(),
        [
            "abs",
            "dangling",
            "dev",
            "escape",
            "etc",
            "hard-lower",
            "hard-nowhere",
            "lib",
            "loop-a",
            "loop-b",
            "sparse",
            "to-dir",
            "to-null",
            "up",
            "usr"
        ]
    );

    // Every error: its kind, and the path asked for in its message.
    let cases: [(&str, &str, ErrorKind); 17] = [
        ("stat", "/missing", ErrorKind::NotFound),
        ("stat", "/etc/passwd/x", ErrorKind::NotFound),
        ("stat", "/dangling/x", ErrorKind::NotFound),
        ("stat", "/loop-a/x", ErrorKind::InvalidContent),
        ("resolve", "/dangling", ErrorKind::NotFound),
        ("resolve", "/loop-a", ErrorKind::InvalidContent),
        ("open_file", "/dangling", ErrorKind::NotFound),
        ("open_file", "/hard-nowhere", ErrorKind::NotFound),
        ("open_file", "/usr", ErrorKind::InvalidArgument),
        ("open_file", "/to-null", ErrorKind::InvalidArgument),
        ("open_file", "/dev/fifo", ErrorKind::InvalidArgument),
        ("open_file", "/", ErrorKind::InvalidArgument),
        ("open_file", "/sparse", ErrorKind::Unsupported),
        ("read_link", "/etc/passwd", ErrorKind::InvalidArgument),
        ("read_link", "/missing", ErrorKind::NotFound),
        ("read_dir", "/etc/passwd", ErrorKind::InvalidArgument),
        ("read_dir", "/missing", ErrorKind::NotFound),
    ];
    for (op, path, kind) in cases {
        let err = match op {
            "stat" => view.stat(path).map(drop),
            "resolve" => view.resolve(path).map(drop),
            "open_file" => view.open_file(path).map(drop),
            "read_link" => view.read_link(path).map(drop),
            _ => view.read_dir(path).map(drop),
        }
        .expect_err(&format!("{op} {path}"));
        assert_eq!(err.kind(), kind, "{op} {path}: {err}");
        assert!(err.message().starts_with(path), "{op} {path}: {err}");
    }
    let err = view.open_file("/to-null").unwrap_err();
    assert_eq!(
        err.message(),
        "/to-null is a character device, not a regular file"
    );
    let err = view.open_file("/dev/fifo").unwrap_err();
    assert_eq!(err.message(), "/dev/fifo is a FIFO, not a regular file");
    let err = view.read_dir("/etc/passwd").unwrap_err();
    assert_eq!(
        err.message(),
        "/etc/passwd is a regular file, not a directory"
    );
    // A sparse file is still a regular file to stat (its size is what the
    // tar stores, not its real size: the index does not keep that).
    assert_eq!(view.stat("/sparse").unwrap().kind, FileKind::Regular);
}

/// A tree of files, a symlink and a hardlink, built into an image by umoci
/// (whose 0.4 tars end without padding or end marker) and pushed by skopeo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_umoci_builds_reads_as_umoci_unpacks_it() {
    let registry = Registry::start();
    let host = registry.host();
    let umoci = require_tool("umoci", "apt-get install -y umoci");
    let skopeo = require_tool("skopeo", "apt-get install -y skopeo");
    let work = tempfile::tempdir().unwrap();
    let files = work.path().join("files");
    std::fs::create_dir_all(files.join("share/doc")).unwrap();
    std::fs::write(files.join("share/doc/readme"), b"read me\n").unwrap();
    std::fs::write(files.join("odd-size"), vec![b'z'; 1001]).unwrap();
    std::os::unix::fs::symlink("share/doc/readme", files.join("link")).unwrap();
    std::fs::hard_link(files.join("odd-size"), files.join("hard")).unwrap();
    let layout = format!("{}:built", work.path().join("layout").display());
    let limit = Duration::from_secs(60);
    for (what, args) in [
        (
            "umoci init",
            vec!["init", "--layout", layout.split(':').next().unwrap()],
        ),
        ("umoci new", vec!["new", "--image", &layout]),
        (
            "umoci insert",
            vec![
                "insert",
                "--image",
                &layout,
                files.to_str().unwrap(),
                "/opt/app",
            ],
        ),
    ] {
        let ran = run(what, Command::new(&umoci).args(args), limit);
        assert!(ran.status.success(), "{}", ran.describe());
    }
    let ran = run(
        "skopeo copy",
        Command::new(&skopeo)
            .args(["copy", "--dest-tls-verify=false", &format!("oci:{layout}")])
            .arg(format!("docker://{host}/built:latest")),
        limit,
    );
    assert!(ran.status.success(), "{}", ran.describe());
    let oracle = unpacked_tree(&host, "built:latest");
    let cache = new_cache(CacheOptions::new());
    let dst = tempfile::tempdir().unwrap();
    let view = view_of(&cache, &format!("{host}/built:latest"), dst.path()).await;
    let mut tree = BTreeMap::new();
    walk(&view, "/", &mut tree);
    assert_eq!(tree, oracle);
    assert_eq!(content(&view, "/opt/app/hard"), vec![b'z'; 1001]);
    assert_eq!(
        view.resolve("/opt/app/link").unwrap(),
        "/opt/app/share/doc/readme"
    );
}
