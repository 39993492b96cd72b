//! The tar index of a layer: where each entry of a verified layer tar is,
//! so a view can stat, list and read files without scanning the tar.
//! `parse` reads tar headers incrementally, `format` builds, writes and reads
//! the index file (specified in `docs/tar-index.md`); this module builds one
//! from a tar already on disk.

// Wired into the pass and the view next.

pub(crate) mod format;
pub(crate) mod parse;

use std::io::Read;

use format::build;
use parse::Parser;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// How much of a tar is read at a time when building on demand.
const CHUNK: usize = 256 * 1024;

/// Builds the index of the tar read from `tar` (named `what` in errors) in
/// one sequential read that also hashes it: a tar that does not hash to
/// `diff_id` is [`ErrorKind::DigestMismatch`](crate::ErrorKind), a malformed
/// one `InvalidContent`. Returns the index file's bytes.
pub(crate) fn build_from_tar(mut tar: impl Read, diff_id: &Digest, what: &str) -> Result<Vec<u8>> {
    let mut hasher = diff_id.hasher();
    let mut parser = Parser::new();
    let mut buf = vec![0; CHUNK];
    // A malformed tar is reported only once it is known to be the right
    // tar: a wrong one is a digest mismatch, whatever its content.
    let mut parsed = Ok(());
    loop {
        let n = match tar.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(format!("reading {what}: {e}")).with_source(e)),
        };
        hasher.update(&buf[..n]);
        if parsed.is_ok() {
            parsed = parser.feed(&buf[..n]);
        }
    }
    hasher.finish().check_matches(diff_id, what)?;
    parsed.map_err(|e| in_tar(e, what))?;
    let size = parser.position();
    let entries = parser.finish().map_err(|e| in_tar(e, what))?;
    build(entries, diff_id, size).map_err(|e| in_tar(e, what))
}

/// `e` with `what` (the tar) named in its message.
fn in_tar(e: Error, what: &str) -> Error {
    Error::new(e.kind(), format!("{what}: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, Instant, SystemTime};

    use super::format::TarIndex;
    use super::parse::{clean, testing, Kind};
    use super::*;
    use crate::ErrorKind;

    fn c_path(path: &Path) -> std::ffi::CString {
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap()
    }

    /// A tree with every kind of entry GNU tar writes, long names and links,
    /// a hardlink, devices, a FIFO, an xattr and a nanosecond mtime.
    fn fixture(root: &Path) {
        let etc = root.join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("os-release"), "ID=test\n").unwrap();
        let release = File::options()
            .write(true)
            .open(etc.join("os-release"))
            .unwrap();
        release
            .set_modified(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
            .unwrap();
        let name = c_path(&etc.join("os-release"));
        // SAFETY: valid C strings and buffer.
        let set = unsafe {
            libc::setxattr(
                name.as_ptr(),
                c"user.test".as_ptr(),
                b"value".as_ptr().cast(),
                5,
                0,
            )
        };
        assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
        std::fs::hard_link(etc.join("os-release"), root.join("hard")).unwrap();
        std::fs::write(root.join("su"), "#!").unwrap();
        std::fs::set_permissions(root.join("su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        // > 100 bytes, then > 255 bytes (in components a file system allows).
        std::fs::write(root.join("n".repeat(120)), "long").unwrap();
        let deep = root
            .join("a".repeat(90))
            .join("b".repeat(90))
            .join("c".repeat(90));
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("deep-file"), "deep").unwrap();
        symlink("t/".repeat(80), root.join("long-link")).unwrap();
        symlink("../etc/os-release", root.join("rel-link")).unwrap();
        for (name, mode, dev) in [
            ("fifo", libc::S_IFIFO | 0o600, 0),
            ("null", libc::S_IFCHR | 0o666, libc::makedev(1, 3)),
            ("loop0", libc::S_IFBLK | 0o660, libc::makedev(7, 0)),
        ] {
            // SAFETY: a valid C string.
            let made = unsafe { libc::mknod(c_path(&root.join(name)).as_ptr(), mode, dev) };
            assert_eq!(made, 0, "mknod {name}: {}", std::io::Error::last_os_error());
        }
        std::fs::write(root.join("empty"), "").unwrap();
    }

    /// Runs GNU tar on `dir` into `out` with `args`.
    fn gnu_tar(dir: &Path, out: &Path, args: &[&str]) {
        let status = Command::new("tar")
            .args(args)
            .arg("-cf")
            .arg(out)
            .arg("-C")
            .arg(dir)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success(), "tar {args:?}");
    }

    fn index_of(tar: &[u8]) -> TarIndex {
        let diff_id = Digest::sha256_of(tar);
        let bytes = build_from_tar(tar, &diff_id, "fixture").unwrap();
        TarIndex::from_bytes(bytes, &diff_id).unwrap()
    }

    /// Checks every entry the `tar` crate reads against the index.
    fn agrees_with_the_tar_crate(tar: &[u8], index: &TarIndex) {
        let mut archive = tar::Archive::new(tar);
        let mut seen = 0;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = clean(&entry.path_bytes());
            let e = index
                .lookup(&path)
                .unwrap_or_else(|| panic!("{path:?} not indexed"));
            let header = entry.header().clone();
            let name = String::from_utf8_lossy(&path).into_owned();
            let kind = match header.entry_type() {
                tar::EntryType::Regular => Kind::File,
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => Kind::Symlink,
                tar::EntryType::Link => Kind::Hardlink,
                tar::EntryType::Char => Kind::Char,
                tar::EntryType::Block => Kind::Block,
                tar::EntryType::Fifo => Kind::Fifo,
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(e.kind(), kind, "{name}");
            assert_eq!(e.mode(), header.mode().unwrap() & 0o7777, "{name}");
            assert_eq!(u64::from(e.uid()), header.uid().unwrap(), "{name}");
            assert_eq!(u64::from(e.gid()), header.gid().unwrap(), "{name}");
            assert_eq!(e.mtime_sec(), header.mtime().unwrap() as i64, "{name}");
            match kind {
                Kind::File => {
                    assert_eq!(e.data_offset(), entry.raw_file_position(), "{name}");
                    assert_eq!(e.size(), entry.size(), "{name}");
                }
                Kind::Symlink => {
                    assert_eq!(e.link(), &*entry.link_name_bytes().unwrap(), "{name}")
                }
                Kind::Hardlink => {
                    assert_eq!(e.link(), clean(&entry.link_name_bytes().unwrap()), "{name}");
                    assert!(e.is_link_resolved(), "{name}");
                    let target = index.lookup(e.link()).unwrap();
                    assert_eq!(
                        (e.data_offset(), e.size()),
                        (target.data_offset(), target.size())
                    );
                }
                Kind::Char | Kind::Block => {
                    let dev = (
                        header.device_major().unwrap(),
                        header.device_minor().unwrap(),
                    );
                    assert_eq!((Some(e.dev_major()), Some(e.dev_minor())), dev, "{name}");
                }
                Kind::Dir | Kind::Fifo => assert_eq!(e.size(), 0),
            }
            let mut xattrs = Vec::new();
            if let Some(pax) = entry.pax_extensions().unwrap() {
                for ext in pax {
                    let ext = ext.unwrap();
                    if let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                        xattrs.push((key.to_vec(), ext.value_bytes().to_vec()));
                    }
                }
            }
            let indexed: Vec<_> = e
                .xattrs()
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect();
            assert_eq!(indexed, xattrs, "{name}");
            seen += 1;
        }
        // Everything but the implicit directories comes from a tar entry.
        let explicit = (0..index.len())
            .filter(|&i| !index.entry(i).is_implicit())
            .count();
        assert_eq!(explicit, seen);
    }

    #[test]
    fn gnu_tar_archives_in_every_format_match_the_tar_crate() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        fixture(&tree);
        let deep = [
            "a".repeat(90),
            "b".repeat(90),
            "c".repeat(90),
            "deep-file".into(),
        ]
        .join("/");
        for (format, args) in [
            ("gnu", &["--format=gnu"][..]),
            ("pax", &["--format=pax", "--xattrs"][..]),
        ] {
            let out = tmp.path().join(format!("{format}.tar"));
            gnu_tar(&tree, &out, args);
            let tar = std::fs::read(&out).unwrap();
            let index = index_of(&tar);
            agrees_with_the_tar_crate(&tar, &index);
            let read = |path: &str| {
                let e = index
                    .lookup(path.as_bytes())
                    .unwrap_or_else(|| panic!("{format}: {path}"));
                tar[e.data_offset() as usize..][..e.size() as usize].to_vec()
            };
            assert_eq!(read(&deep), b"deep", "{format}");
            assert_eq!(read(&"n".repeat(120)), b"long", "{format}");
            assert_eq!(read("hard"), b"ID=test\n", "{format}");
            assert_eq!(read("etc/os-release"), b"ID=test\n", "{format}");
            assert_eq!(
                index.lookup(b"long-link").unwrap().link(),
                "t/".repeat(80).as_bytes()
            );
            assert_eq!(index.lookup(b"su").unwrap().mode(), 0o4755);
            let null = index.lookup(b"null").unwrap();
            assert_eq!(
                (null.kind(), null.dev_major(), null.dev_minor()),
                (Kind::Char, 1, 3)
            );
            assert_eq!(index.lookup(b"fifo").unwrap().kind(), Kind::Fifo);
            assert_eq!(index.tar_size(), tar.len() as u64);
            if format == "pax" {
                let release = index.lookup(b"etc/os-release").unwrap();
                assert_eq!(release.xattrs(), [(&b"user.test"[..], &b"value"[..])]);
                assert_eq!(
                    (release.mtime_sec(), release.mtime_nsec()),
                    (1_700_000_000, 123_456_789)
                );
            }
        }
    }

    #[test]
    fn gnu_sparse_files_are_recorded_as_unsupported() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        // More than 4 data segments: old GNU sparse needs extension blocks.
        let sparse = File::create(tree.join("sparse")).unwrap();
        sparse.set_len(16 << 20).unwrap();
        for i in 0..10u64 {
            std::os::unix::fs::FileExt::write_all_at(&sparse, &[b'x'; 4096], i << 20).unwrap();
        }
        std::fs::write(tree.join("z-after"), "after").unwrap();
        for format in ["gnu", "pax"] {
            let out = tmp.path().join(format!("{format}.tar"));
            gnu_tar(&tree, &out, &["-S", &format!("--format={format}")]);
            let tar = std::fs::read(&out).unwrap();
            let index = index_of(&tar);
            let e = index
                .lookup(b"sparse")
                .unwrap_or_else(|| panic!("{format}"));
            assert!(e.is_sparse(), "{format}");
            assert_eq!(e.kind(), Kind::File);
            assert_eq!(
                index.children(b"").count(),
                2,
                "{format}: no GNUSparseFile.0 entry"
            );
            let after = index.lookup(b"z-after").unwrap();
            assert!(!after.is_sparse());
            assert_eq!(
                &tar[after.data_offset() as usize..][..5],
                b"after",
                "{format}"
            );
        }
    }

    /// Hands out at most one byte per read.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn one_byte_reads_build_the_same_index() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        fixture(&tree);
        let out = tmp.path().join("x.tar");
        gnu_tar(&tree, &out, &["--format=pax", "--xattrs"]);
        let tar = std::fs::read(&out).unwrap();
        let diff_id = Digest::sha256_of(&tar);
        let whole = build_from_tar(&tar[..], &diff_id, "x").unwrap();
        assert_eq!(build_from_tar(Trickle(&tar), &diff_id, "x").unwrap(), whole);
    }

    #[test]
    fn wrong_truncated_and_corrupt_tars_are_refused() {
        let tar = [testing::file(b"f", b"hello"), testing::end()].concat();
        let e = build_from_tar(&tar[..], &Digest::sha256_of(b"other"), "layer X").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DigestMismatch);
        assert!(e.message().starts_with("layer X: expected"), "{e}");
        let cut = &tar[..515];
        let e = build_from_tar(cut, &Digest::sha256_of(cut), "layer X").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidContent);
        assert!(e.message().starts_with("layer X: tar is truncated"), "{e}");
        let mut corrupt = tar.clone();
        corrupt[3] = b'!';
        let e = build_from_tar(&corrupt[..], &Digest::sha256_of(&corrupt), "layer X").unwrap_err();
        assert!(e.message().contains("bad checksum"), "{e}");
    }

    #[test]
    fn a_hundred_thousand_tiny_entries() {
        const N: usize = 100_000;
        let mut tar = Vec::with_capacity(N * 512 + 1024);
        // One header patched per entry: building 100k from scratch is slow
        // in a debug build.
        let mut header = testing::header(b"", b'0', 0, b"");
        for i in 0..N {
            let name = format!("d{}/f{i}", i % 100);
            header[..100].fill(0);
            header[..name.len()].copy_from_slice(name.as_bytes());
            testing::seal(&mut header);
            tar.extend_from_slice(&header);
        }
        tar.extend(testing::end());
        let diff_id = Digest::sha256_of(b"not hashed here");
        let start = Instant::now();
        let mut parser = Parser::new();
        parser.feed(&tar).unwrap();
        let size = parser.position();
        let entries = parser.finish().unwrap();
        let parsed = start.elapsed();
        let start = Instant::now();
        let bytes = build(entries, &diff_id, size).unwrap();
        let built = start.elapsed();
        let start = Instant::now();
        let index = TarIndex::from_bytes(bytes, &diff_id).unwrap();
        let opened = start.elapsed();
        assert_eq!(index.len(), N + 100 + 1);
        let start = Instant::now();
        for i in (0..N).step_by(7) {
            let path = format!("d{}/f{i}", i % 100);
            assert_eq!(
                index.lookup(path.as_bytes()).unwrap().data_offset(),
                (i as u64 + 1) * 512
            );
        }
        let lookup = start.elapsed() / (N / 7) as u32;
        assert_eq!(index.children(b"d42").count(), N / 100);
        eprintln!(
            "100k entries: parse {parsed:?}, build {built:?}, open {opened:?}, lookup {lookup:?}"
        );
    }

    #[test]
    fn gnu_tar_ustar_splits_long_names_into_the_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("tree");
        let dir = tree.join("p".repeat(80)).join("q".repeat(60));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("file"), "prefixed").unwrap();
        let out = tmp.path().join("ustar.tar");
        gnu_tar(&tree, &out, &["--format=ustar"]);
        let tar = std::fs::read(&out).unwrap();
        let index = index_of(&tar);
        agrees_with_the_tar_crate(&tar, &index);
        let path = format!("{}/{}/file", "p".repeat(80), "q".repeat(60));
        let e = index.lookup(path.as_bytes()).unwrap();
        assert_eq!(
            &tar[e.data_offset() as usize..][..e.size() as usize],
            b"prefixed"
        );
    }

    #[test]
    fn random_archives_from_the_tar_crate_in_random_chunks() {
        // A small deterministic generator: the same archives every run.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for round in 0..20 {
            let mut builder = tar::Builder::new(Vec::new());
            for i in 0..next(30) + 1 {
                let depth = next(4);
                let mut path: String = (0..depth).map(|d| format!("d{}/", next(3) + d)).collect();
                path.push_str(&"f".repeat(next(150) as usize + 1));
                path.push_str(&i.to_string());
                let data = vec![b'a' + (i % 26) as u8; next(2000) as usize];
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o600 + next(0o100) as u32);
                header.set_mtime(next(1 << 33));
                header.set_uid(next(70000));
                header.set_gid(next(70000));
                header.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut header, &path, &data[..]).unwrap();
            }
            let tar = builder.into_inner().unwrap();
            let diff_id = Digest::sha256_of(&tar);
            let whole = build_from_tar(&tar[..], &diff_id, "random").unwrap();
            let mut parser = Parser::new();
            let mut rest = &tar[..];
            while !rest.is_empty() {
                let n = (next(1500) as usize + 1).min(rest.len());
                parser.feed(&rest[..n]).unwrap();
                rest = &rest[n..];
            }
            let size = parser.position();
            assert_eq!(
                build(parser.finish().unwrap(), &diff_id, size).unwrap(),
                whole,
                "round {round}"
            );
            agrees_with_the_tar_crate(&tar, &TarIndex::from_bytes(whole, &diff_id).unwrap());
        }
    }
}
