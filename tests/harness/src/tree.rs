//! Layer trees for the image view's tests: tars with every kind of entry an
//! image carries (directories, symlinks, hardlinks, devices, FIFOs, long
//! and PAX names, xattrs, whiteouts and opaque markers), a standard
//! multi-layer image of them, and the oracle the view is held to: the tree
//! `umoci raw unpack` makes of the same image, walked into a map.
//!
//! ```no_run
//! use harness::*;
//! let registry = Registry::start();
//! let layers = view_layers().iter().map(|l| FixtureLayer::gzip(layer_tar(l))).collect();
//! let pushed = push_image(&registry.host(), "view", Some("v1"), layers, false, ("linux", host_arch(), None));
//! let tree = unpacked_tree(&registry.host(), "view:v1");
//! assert_eq!(tree["/etc/os-release"].kind, NodeKind::File);
//! # let _ = pushed;
//! ```

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::fixtures::sha256;
use crate::tools::{require_tool, run};

/// One entry of a layer tar. Paths are as the tar names them (no leading
/// slash); every entry is owned by `uid`:`gid` 0:0 unless `Owned` says.
#[derive(Debug, Clone)]
pub enum TarEntry {
    Dir(&'static str, u32),
    File(&'static str, u32, Vec<u8>),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    CharDevice(&'static str, u32, u32),
    BlockDevice(&'static str, u32, u32),
    Fifo(&'static str),
    /// `dir/.wh.name`: hides `dir/name` of the layers below.
    Whiteout(&'static str),
    /// `dir/.wh..wh..opq`: hides what the layers below hold in `dir`.
    Opaque(&'static str),
    /// A file whose name and xattrs go in a PAX header.
    Pax(String, Vec<(String, Vec<u8>)>, Vec<u8>),
    /// An entry with another owner.
    Owned(Box<TarEntry>, u32, u32),
}

/// The tar of `entries`, in order. Names longer than 100 bytes get GNU
/// long-name headers (the `tar` crate's way); [`TarEntry::Pax`] gets a PAX
/// header.
pub fn layer_tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        append(&mut builder, entry, (0, 0));
    }
    builder.into_inner().expect("finishing a tar in memory")
}

fn append(builder: &mut tar::Builder<Vec<u8>>, entry: &TarEntry, owner: (u32, u32)) {
    use tar::EntryType as T;
    let mut header = tar::Header::new_gnu();
    header.set_uid(owner.0.into());
    header.set_gid(owner.1.into());
    header.set_mtime(1_700_000_000);
    header.set_mode(0o644);
    header.set_size(0);
    let (path, data): (String, Vec<u8>) = match entry {
        TarEntry::Dir(path, mode) => {
            header.set_entry_type(T::Directory);
            header.set_mode(*mode);
            (format!("{path}/"), Vec::new())
        }
        TarEntry::File(path, mode, content) => {
            header.set_entry_type(T::Regular);
            header.set_mode(*mode);
            (path.to_string(), content.clone())
        }
        TarEntry::Symlink(path, target) | TarEntry::Hardlink(path, target) => {
            let kind = match entry {
                TarEntry::Symlink(..) => T::Symlink,
                _ => T::Link,
            };
            header.set_entry_type(kind);
            header.set_mode(0o777);
            builder
                .append_link(&mut header, path, target)
                .expect("appending a link");
            return;
        }
        TarEntry::CharDevice(path, major, minor) | TarEntry::BlockDevice(path, major, minor) => {
            let kind = match entry {
                TarEntry::CharDevice(..) => T::Char,
                _ => T::Block,
            };
            header.set_entry_type(kind);
            header.set_device_major(*major).expect("a device number");
            header.set_device_minor(*minor).expect("a device number");
            (path.to_string(), Vec::new())
        }
        TarEntry::Fifo(path) => {
            header.set_entry_type(T::Fifo);
            (path.to_string(), Vec::new())
        }
        TarEntry::Whiteout(path) => {
            header.set_entry_type(T::Regular);
            let (dir, name) = path.rsplit_once('/').map_or(("", *path), |(d, n)| (d, n));
            let marker = format!(".wh.{name}");
            (join(dir, &marker), Vec::new())
        }
        TarEntry::Opaque(dir) => {
            header.set_entry_type(T::Regular);
            (join(dir, ".wh..wh..opq"), Vec::new())
        }
        TarEntry::Pax(path, xattrs, content) => {
            let mut records = pax_record("path", path.as_bytes());
            for (name, value) in xattrs {
                records.extend(pax_record(&format!("SCHILY.xattr.{name}"), value));
            }
            let mut pax = tar::Header::new_ustar();
            pax.set_entry_type(T::XHeader);
            pax.set_size(records.len() as u64);
            pax.set_mode(0o644);
            pax.set_path("PaxHeader").expect("a short name");
            pax.set_cksum();
            builder
                .append(&pax, records.as_slice())
                .expect("a PAX header");
            header.set_entry_type(T::Regular);
            header.set_size(content.len() as u64);
            // The ustar name is a placeholder: the PAX path replaces it.
            header.set_path("pax-placeholder").expect("a short name");
            header.set_cksum();
            builder
                .append(&header, content.as_slice())
                .expect("a PAX entry");
            return;
        }
        TarEntry::Owned(inner, uid, gid) => return append(builder, inner, (*uid, *gid)),
    };
    header.set_size(data.len() as u64);
    builder
        .append_data(&mut header, path, data.as_slice())
        .expect("appending to a tar in memory");
}

/// One PAX record: `LEN key=value\n`, LEN counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// A name of the standard view image longer than ustar's 100 bytes, in
/// directories that have no entries of their own.
pub const VIEW_LONG_NAME: &str =
    "deep/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb/file";

/// The standard view image, bottom layer first: every rule of merging
/// layers, and every kind of entry.
pub fn view_layers() -> Vec<Vec<TarEntry>> {
    use TarEntry::*;
    vec![
        vec![
            Dir("etc", 0o755),
            File("etc/os-release", 0o644, b"ID=base\n".to_vec()),
            File("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n".to_vec()),
            Dir("usr", 0o755),
            Dir("usr/lib", 0o755),
            File("usr/lib/libc.so", 0o755, vec![7; 5000]),
            Symlink("lib", "usr/lib"),
            Dir("opaque", 0o755),
            File("opaque/low", 0o644, b"low".to_vec()),
            Dir("was-dir", 0o755),
            File("was-dir/child", 0o644, b"child".to_vec()),
            File("was-file", 0o600, b"a file".to_vec()),
            File("removed", 0o644, b"removed".to_vec()),
            Dir("removed-dir", 0o755),
            File("removed-dir/x", 0o644, b"x".to_vec()),
            Dir("dev", 0o755),
            CharDevice("dev/null", 1, 3),
            BlockDevice("dev/sda", 8, 0),
            Fifo("dev/fifo"),
        ],
        vec![
            File("etc/os-release", 0o644, b"ID=top\n".to_vec()),
            Hardlink("etc/os-release-link", "etc/os-release"),
            Opaque("opaque"),
            File("opaque/mid", 0o640, b"mid".to_vec()),
            File("was-dir", 0o644, b"now a file".to_vec()),
            Dir("was-file", 0o700),
            File("was-file/inside", 0o644, b"inside".to_vec()),
            Whiteout("removed"),
            Whiteout("removed-dir"),
            Symlink("etc/abs", "/etc/passwd"),
            Symlink("etc/rel", "../usr/lib/libc.so"),
            File(VIEW_LONG_NAME, 0o644, b"long name".to_vec()),
            Pax(
                "pax/\u{e9}t\u{e9}-with-a-name-that-pax-carries".to_owned(),
                vec![("user.origin".to_owned(), b"pax".to_vec())],
                b"pax content".to_vec(),
            ),
            Owned(
                Box::new(File("owned", 0o4755, b"setuid".to_vec())),
                1000,
                100,
            ),
        ],
    ]
}

/// What a path of an unpacked image is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

/// One path of an unpacked image, as the view must report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// `mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Files: their length; symlinks: their target's; else 0.
    pub size: u64,
    /// Symlinks: their target.
    pub target: Option<String>,
    /// Files: `sha256:<hex>` of their content.
    pub digest: Option<String>,
    /// Devices: (major, minor).
    pub device: Option<(u32, u32)>,
}

/// The tree of image `reference` (`repo:tag`) on the registry at `host`,
/// unpacked by umoci with its layers applied in order, whiteouts included:
/// absolute path to node, the root as `/`.
pub fn unpacked_tree(host: &str, reference: &str) -> BTreeMap<String, Node> {
    let skopeo = require_tool("skopeo", "apt-get install -y skopeo");
    let umoci = require_tool("umoci", "apt-get install -y umoci");
    let work = tempfile::tempdir().expect("a temp dir");
    let layout = work.path().join("layout");
    let rootfs = work.path().join("rootfs");
    let copied = run(
        "skopeo copy",
        Command::new(skopeo)
            .arg("copy")
            .arg("--src-tls-verify=false")
            .arg(format!("docker://{host}/{reference}"))
            .arg(format!("oci:{}:oracle", layout.display())),
        Duration::from_secs(60),
    );
    assert!(copied.status.success(), "{}", copied.describe());
    let unpacked = run(
        "umoci raw unpack",
        Command::new(umoci)
            .args(["raw", "unpack", "--image"])
            .arg(format!("{}:oracle", layout.display()))
            .arg(&rootfs),
        Duration::from_secs(60),
    );
    assert!(unpacked.status.success(), "{}", unpacked.describe());
    let mut tree = BTreeMap::new();
    walk(&rootfs, &rootfs, &mut tree);
    tree
}

fn walk(root: &Path, path: &Path, tree: &mut BTreeMap<String, Node>) {
    let meta = std::fs::symlink_metadata(path).expect("walking the unpacked tree");
    let kind = meta.file_type();
    let name = format!("/{}", path.strip_prefix(root).unwrap().display());
    let device = (kind.is_char_device() || kind.is_block_device()).then(|| {
        let rdev = meta.rdev();
        (libc_major(rdev), libc_minor(rdev))
    });
    let (node_kind, size, target, digest) = if kind.is_dir() {
        (NodeKind::Dir, 0, None, None)
    } else if kind.is_symlink() {
        let target = std::fs::read_link(path).unwrap().display().to_string();
        (NodeKind::Symlink, target.len() as u64, Some(target), None)
    } else if kind.is_file() {
        let content = std::fs::read(path).unwrap();
        (
            NodeKind::File,
            content.len() as u64,
            None,
            Some(sha256(&content)),
        )
    } else if kind.is_char_device() {
        (NodeKind::CharDevice, 0, None, None)
    } else if kind.is_block_device() {
        (NodeKind::BlockDevice, 0, None, None)
    } else {
        (NodeKind::Fifo, 0, None, None)
    };
    let node = Node {
        kind: node_kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size,
        target,
        digest,
        device,
    };
    let is_dir = node.kind == NodeKind::Dir;
    tree.insert(name.replace("//", "/"), node);
    if is_dir {
        for child in std::fs::read_dir(path).unwrap() {
            walk(root, &child.unwrap().path(), tree);
        }
    }
}

/// The major number of a device number, as glibc's `major()` splits it.
fn libc_major(rdev: u64) -> u32 {
    (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)) as u32
}

/// The minor number of a device number, as glibc's `minor()` splits it.
fn libc_minor(rdev: u64) -> u32 {
    (((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)) as u32
}

/// Hand-made tar bytes, for what the `tar` crate refuses to write: `..`
/// and absolute names, entries below files, duplicate paths, overflowing
/// size fields, GNU sparse headers. Every header is a ustar block (mode
/// 0644 unless given, owner 0:0, mtime 1700000000) with a valid checksum,
/// unless [`RawTar::block`] adds one as it is.
///
/// ```no_run
/// use harness::{raw_header, RawTar};
/// let mut huge = raw_header(b"huge", b'0', 0o644, 0, b"");
/// huge[124..136].copy_from_slice(b"77777777777\0");
/// harness::seal_header(&mut huge);
/// let tar = RawTar::new().file("../../etc/passwd", b"inside").block(huge).finish();
/// # let _ = tar;
/// ```
#[derive(Debug, Default, Clone)]
pub struct RawTar {
    bytes: Vec<u8>,
}

/// The tar block size.
pub const TAR_BLOCK: usize = 512;

impl RawTar {
    pub fn new() -> RawTar {
        RawTar::default()
    }

    /// A regular file, mode 0644.
    pub fn file(self, name: &str, content: &[u8]) -> RawTar {
        self.file_mode(name, 0o644, content)
    }

    pub fn file_mode(self, name: &str, mode: u32, content: &[u8]) -> RawTar {
        let header = raw_header(name.as_bytes(), b'0', mode, content.len() as u64, b"");
        self.block(header).data(content)
    }

    pub fn dir(self, name: &str, mode: u32) -> RawTar {
        self.block(raw_header(name.as_bytes(), b'5', mode, 0, b""))
    }

    pub fn symlink(self, name: &str, target: &str) -> RawTar {
        let header = raw_header(name.as_bytes(), b'2', 0o777, 0, target.as_bytes());
        self.block(header)
    }

    pub fn hardlink(self, name: &str, target: &str) -> RawTar {
        let header = raw_header(name.as_bytes(), b'1', 0o644, 0, target.as_bytes());
        self.block(header)
    }

    /// A PAX extended header (`x`) with `records`, for the next entry.
    pub fn pax(self, records: &[(&str, &[u8])]) -> RawTar {
        let data: Vec<u8> = records
            .iter()
            .flat_map(|(key, value)| pax_record(key, value))
            .collect();
        let header = raw_header(b"PaxHeader", b'x', 0o644, data.len() as u64, b"");
        self.block(header).data(&data)
    }

    /// One block, as given.
    pub fn block(mut self, block: [u8; TAR_BLOCK]) -> RawTar {
        self.bytes.extend_from_slice(&block);
        self
    }

    /// `data`, padded with zeros to whole blocks.
    pub fn data(mut self, data: &[u8]) -> RawTar {
        self.bytes.extend_from_slice(data);
        self.bytes
            .resize(self.bytes.len().next_multiple_of(TAR_BLOCK), 0);
        self
    }

    /// The tar, ended by the two zero blocks of the end-of-archive marker.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0; 2 * TAR_BLOCK]);
        self.bytes
    }
}

/// A ustar header block: `name` and `link` at most 100 bytes each (use a
/// PAX `path` record for longer names), owner 0:0, mtime 1700000000, the
/// checksum set.
pub fn raw_header(name: &[u8], typeflag: u8, mode: u32, size: u64, link: &[u8]) -> [u8; TAR_BLOCK] {
    assert!(name.len() <= 100 && link.len() <= 100, "too long for ustar");
    let mut block = [0u8; TAR_BLOCK];
    block[..name.len()].copy_from_slice(name);
    octal_field(&mut block[100..108], mode.into());
    octal_field(&mut block[108..116], 0);
    octal_field(&mut block[116..124], 0);
    octal_field(&mut block[124..136], size);
    octal_field(&mut block[136..148], 1_700_000_000);
    block[156] = typeflag;
    block[157..157 + link.len()].copy_from_slice(link);
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    seal_header(&mut block);
    block
}

/// Sets a header's checksum field from its other bytes, as POSIX sums them.
pub fn seal_header(block: &mut [u8; TAR_BLOCK]) {
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// `value` as a zero-padded, NUL-terminated octal field filling `field`.
fn octal_field(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}
