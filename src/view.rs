//! The image view: an image's files read straight from its verified layer
//! tars, through each tar's index, with the layers merged by `lookup`'s
//! rules. It owns the fds of the tars and their indexes, nothing else, so it
//! outlives the cache and the image it came from.

use std::collections::HashSet;
use std::fs::File;

use crate::error::{Error, Result};
use crate::fs;
use crate::lookup::{self, Merged, Missed, Walks};
use crate::tar_index::format::{Entry, TarIndex};
use crate::tar_index::parse::{Kind as TarKind, Whiteout};

/// An image's files, its layers merged (upper layers win, whiteouts and
/// opaque directories apply). Immutable; safe to share between threads.
/// Paths are absolute inside the image (`/etc/os-release`; a relative one is
/// taken from `/`); symlinks are followed inside the image root, never the
/// host's. Names that are not UTF-8 cannot be named and are left out of
/// listings.
pub struct View {
    /// Bottom layer first.
    layers: Vec<ViewLayer>,
    /// The directories lookups walked to, for later lookups under them.
    walks: Walks,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let diff_ids: Vec<_> = self.layers.iter().map(|l| l.index.diff_id()).collect();
        f.debug_struct("View").field("layers", &diff_ids).finish()
    }
}

struct ViewLayer {
    /// The layer tar, `O_RDONLY | O_CLOEXEC`, read only with positional
    /// reads; the fds handed out are opened afresh from it.
    tar: File,
    index: TarIndex,
    /// The directories holding a whiteout or opaque marker: most layers
    /// have few or none, so most lookups need not search for them.
    marked_dirs: HashSet<Vec<u8>>,
}

/// What a path of the view is. A hardlink is reported as what it links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
}

impl FileKind {
    fn name(self) -> &'static str {
        match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::Symlink => "a symbolic link",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Fifo => "a FIFO",
        }
    }
}

/// A path's metadata, as its tar entry stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: FileKind,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Devices only, else 0.
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Regular files: bytes; symlinks: the target's length; else 0.
    pub size: u64,
    /// The topmost layer (bottom is 0) with an entry of its own for the
    /// path; a hardlink's is its own entry's layer.
    pub layer: usize,
}

/// One layer's index as `lookup` sees it.
struct Indexed<'a>(&'a ViewLayer);

impl<'a> lookup::Layer for Indexed<'a> {
    type Entry = Entry<'a>;

    fn get(&self, path: &str) -> Option<Entry<'a>> {
        self.0.index.lookup(path.as_bytes())
    }

    fn names(&self, dir: &str) -> Vec<String> {
        self.0
            .index
            .children(dir.as_bytes())
            .filter(|e| !e.is_not_utf8())
            .filter_map(|e| String::from_utf8(e.name().to_vec()).ok())
            .collect()
    }

    fn may_hide_in(&self, dir: &str) -> bool {
        self.0.marked_dirs.contains(dir.as_bytes())
    }

    fn kind(&self, entry: &Entry<'a>) -> lookup::Kind {
        match entry.kind() {
            TarKind::Dir => lookup::Kind::Directory,
            // A target that is not UTF-8 runs through a name this view
            // cannot name (such names are left out), so it names nothing:
            // followed as an empty target, never as its lossy text, which
            // could name another entry.
            TarKind::Symlink => {
                lookup::Kind::Symlink(String::from_utf8(entry.link().to_vec()).unwrap_or_default())
            }
            _ => lookup::Kind::Other,
        }
    }

    fn is_implicit(&self, entry: &Entry<'a>) -> bool {
        entry.is_implicit()
    }
}

/// A symlink's target as text; bytes that are not UTF-8 are replaced, as
/// a target cannot be named through this API otherwise.
fn link_text(entry: &Entry<'_>) -> String {
    String::from_utf8_lossy(entry.link()).into_owned()
}

/// What a found entry is once a hardlink is followed to what it links to.
struct Node<'a> {
    /// The layer of the entry found for the path (a hardlink's own).
    layer: usize,
    /// The entry whose metadata shows: the path's own, or a hardlink's
    /// target.
    meta: Entry<'a>,
    kind: FileKind,
    /// A regular file's data: the layer whose tar holds it, where and how
    /// much, and whether it is stored sparse (unreadable).
    data: Option<Data>,
}

#[derive(Clone, Copy)]
struct Data {
    layer: usize,
    offset: u64,
    size: u64,
    sparse: bool,
}

impl View {
    /// The view of layer tars `layers`, bottom first, each with its index as
    /// `layer::ensure_index` opens it for that tar: its records lie inside
    /// its tar size, which is the tar's length, so every range it gives is
    /// in the tar.
    pub(crate) fn new(layers: Vec<(File, TarIndex)>) -> View {
        let layers = layers
            .into_iter()
            .map(|(tar, index)| {
                let marked_dirs = (0..index.len())
                    .map(|at| index.entry(at))
                    .filter(|e| e.whiteout() != Whiteout::None)
                    .map(|e| e.parent().to_vec())
                    .collect();
                ViewLayer {
                    tar,
                    index,
                    marked_dirs,
                }
            })
            .collect();
        View {
            layers,
            walks: Walks::default(),
        }
    }

    /// The number of layers.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// The metadata of `path`, not following a symlink in its last
    /// component (`lstat`). The root with no entry in any layer is a
    /// directory 0755 owned by 0:0 from layer 0.
    pub fn stat(&self, path: &str) -> Result<Stat> {
        let Some(node) = self.find(path, false)? else {
            return Ok(Stat {
                kind: FileKind::Directory,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime_sec: 0,
                mtime_nsec: 0,
                dev_major: 0,
                dev_minor: 0,
                size: 0,
                layer: 0,
            });
        };
        let meta = node.meta;
        let size = match node.kind {
            FileKind::Regular => node.data.map_or(0, |d| d.size),
            FileKind::Symlink => meta.link().len() as u64,
            _ => 0,
        };
        let device = matches!(node.kind, FileKind::CharDevice | FileKind::BlockDevice);
        Ok(Stat {
            kind: node.kind,
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_sec: meta.mtime_sec(),
            mtime_nsec: meta.mtime_nsec(),
            dev_major: if device { meta.dev_major() } else { 0 },
            dev_minor: if device { meta.dev_minor() } else { 0 },
            size,
            layer: node.layer,
        })
    }

    /// The extended attributes of `path` (`lgetxattr` semantics: a symlink
    /// in the last component is not followed; a hardlink has its target's),
    /// as its tar entry's PAX `SCHILY.xattr.*` records give them, sorted by
    /// name. Names are UTF-8, as PAX keys are; values are raw bytes.
    pub fn xattrs(&self, path: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let Some(node) = self.find(path, false)? else {
            return Ok(Vec::new());
        };
        Ok(node
            .meta
            .xattrs()
            .into_iter()
            .map(|(name, value)| (String::from_utf8_lossy(name).into_owned(), value.to_vec()))
            .collect())
    }

    /// The merged names in directory `path` (followed like
    /// [`open_file`](Self::open_file)), sorted bytewise, without `.` and
    /// `..`.
    pub fn read_dir(&self, path: &str) -> Result<Vec<String>> {
        let indexed = self.indexed();
        let names = Merged::with_walks(&indexed, &self.walks)
            .names(path)
            .map_err(|missed| missed_error(path, missed))?;
        // Not a directory: found again to say what it is (a hardlink as
        // its target, or not found if that is gone).
        names.ok_or_else(|| {
            let kind = match self.find(path, true) {
                Ok(node) => node.map_or(FileKind::Directory, |n| n.kind),
                Err(e) => return e,
            };
            Error::invalid_argument(format!("{path} is {}, not a directory", kind.name()))
        })
    }

    /// The target of symlink `path`, as stored.
    pub fn read_link(&self, path: &str) -> Result<String> {
        match self.find(path, false)? {
            Some(node) if node.kind == FileKind::Symlink => Ok(link_text(&node.meta)),
            node => Err(Error::invalid_argument(format!(
                "{path} is {}, not a symbolic link",
                node.map_or(FileKind::Directory, |n| n.kind).name()
            ))),
        }
    }

    /// `path` with every symlink followed inside the image root, as an
    /// absolute path; a missing path or a dangling link is not found.
    pub fn resolve(&self, path: &str) -> Result<String> {
        let indexed = self.indexed();
        let found = Merged::with_walks(&indexed, &self.walks)
            .lookup(path, true)
            .map_err(|missed| missed_error(path, missed))?;
        Ok(format!("/{}", found.path))
    }

    /// Regular file `path`'s bytes, zero-copy: a fresh fd of the layer tar
    /// holding them (`O_RDONLY | O_CLOEXEC`, a file offset of its own at 0)
    /// and their offset and size in it.
    /// A symlink in the last component is followed; a hardlink gives its
    /// target's data.
    pub fn open_file(&self, path: &str) -> Result<(File, u64, u64)> {
        let node = self.find(path, true)?;
        let kind = node.as_ref().map_or(FileKind::Directory, |n| n.kind);
        let data = match node.and_then(|n| n.data) {
            Some(data) if kind == FileKind::Regular => data,
            _ => {
                return Err(Error::invalid_argument(format!(
                    "{path} is {}, not a regular file",
                    kind.name()
                )))
            }
        };
        if data.sparse {
            return Err(Error::unsupported(format!(
                "{path} is a GNU sparse file, whose data cannot be read from its layer tar"
            )));
        }
        // The range lies inside the tar: the index's records were checked
        // against its tar size, and that size against this tar (see `new`).
        let file = fs::reopen_read_only(&self.layers[data.layer].tar)
            .map_err(|e| Error::io(format!("opening {path}: {e}")).with_source(e))?;
        Ok((file, data.offset, data.size))
    }

    fn indexed(&self) -> Vec<Indexed<'_>> {
        self.layers.iter().map(Indexed).collect()
    }

    /// What `path` names, a hardlink followed to its target; `None` for a
    /// root no layer has an entry for.
    fn find(&self, path: &str, follow_last: bool) -> Result<Option<Node<'_>>> {
        let indexed = self.indexed();
        let found = Merged::with_walks(&indexed, &self.walks)
            .lookup(path, follow_last)
            .map_err(|missed| missed_error(path, missed))?;
        let Some((layer, entry)) = found.entry else {
            return Ok(None);
        };
        self.node(path, layer, entry).map(Some)
    }

    /// The node of `entry`, found for `path` in `layer`.
    fn node<'a>(&'a self, path: &str, layer: usize, entry: Entry<'a>) -> Result<Node<'a>> {
        let (mut meta_layer, mut meta) = (layer, entry);
        let mut data = None;
        let mut links = 0;
        while meta.kind() == TarKind::Hardlink {
            // Every hop goes to an earlier entry or a lower layer, so this
            // ends anyway; the bound keeps a stat cheap. Writers link every
            // name to the first one, so real chains are one hop.
            links += 1;
            if links > lookup::MAX_LINKS {
                return Err(Error::invalid_content(format!(
                    "{path}: too many levels of hardlinks (more than {}), \
                     each naming the one before",
                    lookup::MAX_LINKS
                )));
            }
            if !meta.is_link_resolved() {
                (meta_layer, meta) = self.hardlink_target(path, meta_layer, meta)?;
                continue;
            }
            // The data as the link was written: its target's at the time.
            data = data.or(Some(Data {
                layer: meta_layer,
                offset: meta.data_offset(),
                size: meta.size(),
                sparse: meta.is_sparse(),
            }));
            // That target is an earlier entry of the same tar, unless one
            // replaced it since: then the link's own entry is all there is.
            let earlier = self.layers[meta_layer]
                .index
                .lookup(meta.link())
                .filter(|t| t.header_offset() < meta.header_offset())
                .filter(|t| matches!(t.kind(), TarKind::File | TarKind::Hardlink));
            match earlier {
                Some(target) => meta = target,
                None => {
                    return Ok(Node {
                        layer,
                        meta,
                        kind: FileKind::Regular,
                        data,
                    })
                }
            }
        }
        let kind = match meta.kind() {
            TarKind::File => FileKind::Regular,
            TarKind::Dir => FileKind::Directory,
            TarKind::Symlink => FileKind::Symlink,
            TarKind::Char => FileKind::CharDevice,
            TarKind::Block => FileKind::BlockDevice,
            TarKind::Fifo => FileKind::Fifo,
            TarKind::Hardlink => unreachable!("followed above"),
        };
        if kind == FileKind::Regular && data.is_none() {
            data = Some(Data {
                layer: meta_layer,
                offset: meta.data_offset(),
                size: meta.size(),
                sparse: meta.is_sparse(),
            });
        }
        Ok(Node {
            layer,
            meta,
            kind,
            data,
        })
    }

    /// What hardlink `link` in `layer`, which the index did not resolve to
    /// a regular file, links to, as extracting the layers in order would
    /// have made it: an earlier entry of its own tar (a device, a FIFO, a
    /// symlink), else the path in the layers below. A directory, a later
    /// entry or nothing there is not found (extraction would have failed).
    fn hardlink_target<'a>(
        &'a self,
        path: &str,
        layer: usize,
        link: Entry<'a>,
    ) -> Result<(usize, Entry<'a>)> {
        let dangling = || {
            Error::not_found(format!(
                "{path}: the hardlink's target {} is not in the image",
                String::from_utf8_lossy(link.link())
            ))
        };
        if let Some(target) = self.layers[layer].index.lookup(link.link()) {
            let earlier = target.header_offset() < link.header_offset();
            if earlier && target.kind() != TarKind::Dir && !target.is_implicit() {
                return Ok((layer, target));
            }
        }
        let target = std::str::from_utf8(link.link()).map_err(|_| dangling())?;
        let indexed = self.indexed();
        let found = Merged::new(&indexed[..layer])
            .lookup(target, false)
            .map_err(|_| dangling())?;
        match found.entry {
            Some((below, entry)) if entry.kind() != TarKind::Dir => Ok((below, entry)),
            _ => Err(dangling()),
        }
    }
}

/// The error for a lookup of `path` that missed.
fn missed_error(path: &str, missed: Missed) -> Error {
    match missed {
        Missed::NotFound => {
            Error::not_found(format!("{path}: no such file or directory in the image"))
        }
        Missed::TooManyLinks => Error::invalid_content(format!(
            "{path}: too many levels of symbolic links (more than {})",
            lookup::MAX_LINKS
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::digest::Digest;
    use crate::tar_index::build_from_tar;
    use crate::tar_index::parse::testing::{end, entry, file};
    use crate::ErrorKind;

    /// A view of `tars`, bottom first, each in a temp file with its index.
    fn view_of(tars: &[Vec<u8>]) -> View {
        let layers = tars
            .iter()
            .map(|tar| {
                let mut file = tempfile::tempfile().unwrap();
                file.write_all(tar).unwrap();
                let diff_id = Digest::sha256_of(tar);
                let index = build_from_tar(tar.as_slice(), &diff_id, "a test layer").unwrap();
                (file, TarIndex::from_bytes(index, &diff_id).unwrap())
            })
            .collect();
        View::new(layers)
    }

    fn content(view: &View, path: &str) -> Vec<u8> {
        let (file, offset, size) = view.open_file(path).unwrap();
        let mut data = vec![0; size as usize];
        file.read_exact_at(&mut data, offset).unwrap();
        data
    }

    #[test]
    fn hardlinks_get_what_extracting_the_layers_in_order_would_link() {
        let low = [
            file(b"late", b"lower late"),
            entry(b"dev", b'3', b"", b""),
            entry(b"d/", b'5', b"", b""),
            entry(b"u", b'6', b"", b""),
            end(),
        ]
        .concat();
        let high = [
            file(b"t", b"first t"),
            entry(b"h", b'1', b"", b"t"),
            // Replacing the target later leaves the link's data alone.
            file(b"t", b"second t"),
            // Even by something else, whatever the layers below hold there.
            file(b"u", b"first u"),
            entry(b"hu", b'1', b"", b"u"),
            entry(b"u", b'3', b"", b""),
            entry(b"hdev", b'1', b"", b"dev"),
            // A target later in the tar is not there yet: the lower one is.
            entry(b"hlate", b'1', b"", b"late"),
            file(b"late", b"upper late"),
            entry(b"hdir", b'1', b"", b"d"),
            end(),
        ]
        .concat();
        let view = view_of(&[low, high]);
        let h = view.stat("/h").unwrap();
        assert_eq!((h.kind, h.size, h.layer), (FileKind::Regular, 7, 1));
        assert_eq!(content(&view, "/h"), b"first t");
        assert_eq!(content(&view, "/t"), b"second t");
        assert_eq!(view.stat("/hu").unwrap().kind, FileKind::Regular);
        assert_eq!(content(&view, "/hu"), b"first u");
        assert_eq!(view.stat("/u").unwrap().kind, FileKind::CharDevice);
        let dev = view.stat("/hdev").unwrap();
        assert_eq!((dev.kind, dev.layer), (FileKind::CharDevice, 1));
        assert_eq!(content(&view, "/hlate"), b"lower late");
        assert_eq!(content(&view, "/late"), b"upper late");
        let e = view.open_file("/hdir").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            e.message(),
            "/hdir: the hardlink's target d is not in the image"
        );
    }

    #[test]
    fn a_target_that_is_not_utf8_names_nothing() {
        let tar = [
            file("\u{fffd}".as_bytes(), b"not the target"),
            entry(b"bad", b'2', b"", b"\xff"),
            entry(b"bad-dir", b'2', b"", b"x/\xff/.."),
            end(),
        ]
        .concat();
        let view = view_of(&[tar]);
        for path in ["/bad", "/bad-dir"] {
            let err = view.resolve(path).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NotFound, "{path}: {err}");
        }
        assert_eq!(view.read_link("/bad").unwrap(), "\u{fffd}");
        assert_eq!(content(&view, "/\u{fffd}"), b"not the target");
    }

    #[test]
    fn a_chain_of_hardlinks_is_followed_up_to_forty() {
        let mut tar = file(b"h0", b"data").to_vec();
        for i in 1..=41 {
            let (name, target) = (format!("h{i}"), format!("h{}", i - 1));
            tar.extend(entry(name.as_bytes(), b'1', b"", target.as_bytes()));
        }
        tar.extend(end());
        let view = view_of(&[tar]);
        assert_eq!(content(&view, "/h40"), b"data");
        let err = view.stat("/h41").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidContent);
        assert_eq!(
            err.message(),
            "/h41: too many levels of hardlinks (more than 40), each naming the one before"
        );
    }

    #[test]
    fn the_view_is_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<View>();
    }
}
