//! `oci_view`: an image's files read through its layer tars' indexes
//! (`crate::view::View`), with `oci_stat`, `oci_file_type` and the
//! `oci_dir_list` and `oci_xattr_list` that `oci_view_readdir` and
//! `oci_view_xattrs` return.

use std::ffi::{c_char, c_int, CString};
use std::os::fd::IntoRawFd;
use std::path::Path;

use super::cache::oci_cache;
use super::image::oci_image;
use super::options::oci_call_options;
use super::{
    arg, arg_arc, boundary, c_string, free_box, getter, oci_error, oci_status, out, str_arg,
    to_boxed_mut_ptr, Castable, Failure, Outcome, OwnershipBox, OCI_E_BUFFER_TOO_SMALL,
};
use crate::view::{FileKind, Stat, View};

/// An image's files, its layers merged as the OCI image spec says (upper
/// layers win, whiteouts and opaque directories apply). Immutable and
/// thread-safe: every call on it may run from any thread at once. It holds
/// its own fds of the layer tars, so it stays valid after its image and
/// cache are freed; it does no network I/O and is not affected by fork.
///
/// Paths are absolute inside the image (`"/etc/os-release"`); a relative
/// path is taken from `"/"`, and `""` and `"/"` name the root. `.` and `..`
/// are resolved lexically, never above `"/"`. Symlinks in intermediate
/// components are followed inside the image root (an absolute target starts
/// again at the image's `"/"`, never the host's); more than 40 links in one
/// lookup, or a loop, is `OCI_E_INVALID_CONTENT`. A missing or whited-out
/// path, or one that runs through a non-directory, is `OCI_E_NOT_FOUND`.
/// Entries whose tar name is not valid UTF-8 cannot be named. Error
/// messages name the path asked for.
pub struct oci_view {
    view: View,
}

impl Castable for oci_view {
    type Ownership = OwnershipBox;
}

/// What a path of a view is (`oci_stat.type`). A hardlink is reported as
/// what it links to.
#[repr(C)]
pub enum oci_file_type {
    OCI_FILE_REGULAR = 1,
    OCI_FILE_DIRECTORY = 2,
    OCI_FILE_SYMLINK = 3,
    OCI_FILE_CHAR_DEVICE = 4,
    OCI_FILE_BLOCK_DEVICE = 5,
    OCI_FILE_FIFO = 6,
}

impl From<FileKind> for oci_file_type {
    fn from(kind: FileKind) -> oci_file_type {
        match kind {
            FileKind::Regular => oci_file_type::OCI_FILE_REGULAR,
            FileKind::Directory => oci_file_type::OCI_FILE_DIRECTORY,
            FileKind::Symlink => oci_file_type::OCI_FILE_SYMLINK,
            FileKind::CharDevice => oci_file_type::OCI_FILE_CHAR_DEVICE,
            FileKind::BlockDevice => oci_file_type::OCI_FILE_BLOCK_DEVICE,
            FileKind::Fifo => oci_file_type::OCI_FILE_FIFO,
        }
    }
}

/// A path's metadata, as its tar entry stores it (`oci_view_stat`).
#[repr(C)]
pub struct oci_stat {
    /// An `oci_file_type`.
    pub r#type: i32,
    /// Permission bits with setuid, setgid and sticky (`mode & 07777`); a
    /// symlink's is what its tar entry stores.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Devices only, else 0.
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Regular files: bytes; symlinks: the length of the target; else 0.
    pub size: u64,
    /// The topmost layer (bottom is 0) with an entry of its own for the
    /// path (a whiteout or a child's entry alone does not count); a
    /// hardlink's is its own entry's layer. The root with no entry in any
    /// layer is a directory 0755 owned by 0:0 from layer 0.
    pub layer: u32,
}

impl From<Stat> for oci_stat {
    fn from(stat: Stat) -> oci_stat {
        oci_stat {
            r#type: oci_file_type::from(stat.kind) as i32,
            mode: stat.mode,
            uid: stat.uid,
            gid: stat.gid,
            mtime_sec: stat.mtime_sec,
            mtime_nsec: stat.mtime_nsec,
            dev_major: stat.dev_major,
            dev_minor: stat.dev_minor,
            size: stat.size,
            // Layer counts are far below u32::MAX (a manifest is bounded).
            layer: u32::try_from(stat.layer).unwrap_or(u32::MAX),
        }
    }
}

/// The merged entries of one directory, sorted by name (bytewise), without
/// `.` and `..`. Immutable and thread-safe; names live as long as the list.
pub struct oci_dir_list {
    names: Vec<CString>,
}

impl Castable for oci_dir_list {
    type Ownership = OwnershipBox;
}

/// The extended attributes of one path of a view (`oci_view_xattrs`):
/// immutable, thread-safe, independent of the view.
pub struct oci_xattr_list {
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Castable for oci_xattr_list {
    type Ownership = OwnershipBox;
}

/// Opens the view of `image`'s files: runs `oci_rootfs` first (layers
/// already in `dst` are reused, missing ones fetched; `dst` must exist),
/// then opens every layer tar's index beside it in `dst`, building and
/// writing any that is missing or bad. `options` (NULL for none) applies as
/// in `oci_rootfs`. Free the view with `oci_view_free`.
#[no_mangle]
pub extern "C" fn oci_view_open(
    cache: *const oci_cache,
    image: *const oci_image,
    dst: *const c_char,
    options: *const oci_call_options,
    view_out: *mut *mut oci_view,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache = arg_arc(cache, "cache")?;
        let image = arg(image, "image")?;
        let dst = Path::new(str_arg(dst, "dst")?);
        let view_out = out(view_out, "view_out")?;
        let view = cache.run(options, |cache| async move {
            cache.view(&image.image, dst).await
        })?;
        *view_out = to_boxed_mut_ptr(oci_view { view });
        Ok(())
    })
}

/// Frees `view` and closes its fds of the layer tars (fds handed out by
/// `oci_view_open_file` stay open). NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_view_free(view: *mut oci_view) {
    free_box(view)
}

/// Stores the metadata of `path` in `*stat_out`, not following a symlink
/// in the last component (`lstat`). `stat("/")` reports the topmost
/// layer's entry for the root directory.
#[no_mangle]
pub extern "C" fn oci_view_stat(
    view: *const oci_view,
    path: *const c_char,
    stat_out: *mut oci_stat,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let view = arg(view, "view")?;
        let path = str_arg(path, "path")?;
        let stat_out = out(stat_out, "stat_out")?;
        *stat_out = view.view.stat(path)?.into();
        Ok(())
    })
}

/// Copies the target of symlink `path`, as stored, into `buf`,
/// NUL-terminated, and its length without the NUL into `*len_out`. When
/// `cap` cannot hold it and its NUL: `OCI_E_BUFFER_TOO_SMALL` with
/// `*len_out` set and `buf` untouched. `path` not a symlink is
/// `OCI_E_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn oci_view_readlink(
    view: *const oci_view,
    path: *const c_char,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let view = arg(view, "view")?;
        let path = str_arg(path, "path")?;
        let target = view.view.read_link(path)?;
        copy_out(&target, buf, cap, len_out, || {
            format!("the target of {path}")
        })
    })
}

/// Copies `path` with every symlink followed inside the image root, as an
/// absolute path, into `buf` by `oci_view_readlink`'s rule. A missing path
/// or a dangling link is `OCI_E_NOT_FOUND`.
#[no_mangle]
pub extern "C" fn oci_view_resolve(
    view: *const oci_view,
    path: *const c_char,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let view = arg(view, "view")?;
        let path = str_arg(path, "path")?;
        let resolved = view.view.resolve(path)?;
        copy_out(&resolved, buf, cap, len_out, || {
            format!("the resolved path of {path}")
        })
    })
}

/// The buffer rule of `readlink` and `resolve`: `*len_out` is written even
/// when `buf` is too small, so the caller learns the size needed.
fn copy_out(
    text: &str,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
    what: impl FnOnce() -> String,
) -> Outcome {
    let len_out = out(len_out, "len_out")?;
    out(buf, "buf")?;
    let what = what();
    let text = c_string(text.as_bytes(), &what)?;
    let bytes = text.as_bytes_with_nul();
    if bytes.len() > cap {
        *len_out = bytes.len() - 1;
        return Err(Failure::new(
            OCI_E_BUFFER_TOO_SMALL,
            format!(
                "buf holds {cap} bytes; {what} needs {} with its NUL",
                bytes.len()
            ),
        ));
    }
    // SAFETY: the caller gives `cap` writable bytes at `buf`, and
    // `bytes.len() <= cap`; `text` is a separate allocation.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().cast(), buf, bytes.len()) };
    *len_out = bytes.len() - 1;
    Ok(())
}

/// Lists the merged entries of directory `path` (followed like
/// `oci_view_open_file`), sorted by name (bytewise), without `.` and `..`;
/// names that are not valid UTF-8 are left out. `path` not a directory is
/// `OCI_E_INVALID_ARGUMENT`. Free the list with `oci_dir_list_free`.
#[no_mangle]
pub extern "C" fn oci_view_readdir(
    view: *const oci_view,
    path: *const c_char,
    list_out: *mut *mut oci_dir_list,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let view = arg(view, "view")?;
        let path = str_arg(path, "path")?;
        let list_out = out(list_out, "list_out")?;
        let names = view
            .view
            .read_dir(path)?
            .into_iter()
            .map(|name| c_string(name.as_bytes(), &format!("a name in {path}")))
            .collect::<Outcome<Vec<_>>>()?;
        *list_out = to_boxed_mut_ptr(oci_dir_list { names });
        Ok(())
    })
}

/// The number of names in `list`; 0 if `list` is NULL.
#[no_mangle]
pub extern "C" fn oci_dir_list_count(list: *const oci_dir_list) -> usize {
    getter(list, 0, |l| Some(l.names.len()))
}

/// Name `index` of `list` (a name, not a path); NULL if out of range or
/// `list` is NULL.
#[no_mangle]
pub extern "C" fn oci_dir_list_name(list: *const oci_dir_list, index: usize) -> *const c_char {
    getter(list, std::ptr::null(), |l| {
        Some(l.names.get(index)?.as_ptr())
    })
}

/// Frees `list` and its names. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_dir_list_free(list: *mut oci_dir_list) {
    free_box(list)
}

/// The extended attributes of `path` (`lgetxattr` semantics: a symlink in
/// the last component is not followed; a hardlink has its target's), as
/// its tar entry's PAX `SCHILY.xattr.*` records give them, sorted by name;
/// the root with no entry in any layer has none. Free the list with
/// `oci_xattr_list_free`.
#[no_mangle]
pub extern "C" fn oci_view_xattrs(
    view: *const oci_view,
    path: *const c_char,
    list_out: *mut *mut oci_xattr_list,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let view = arg(view, "view")?;
        let path = str_arg(path, "path")?;
        let list_out = out(list_out, "list_out")?;
        let xattrs = view
            .view
            .xattrs(path)?
            .into_iter()
            .map(|(name, value)| {
                Ok((
                    c_string(name.as_bytes(), &format!("an xattr name of {path}"))?,
                    value,
                ))
            })
            .collect::<Outcome<Vec<_>>>()?;
        *list_out = to_boxed_mut_ptr(oci_xattr_list { xattrs });
        Ok(())
    })
}

/// The number of extended attributes in `list`; 0 if `list` is NULL.
#[no_mangle]
pub extern "C" fn oci_xattr_list_count(list: *const oci_xattr_list) -> usize {
    getter(list, 0, |l| Some(l.xattrs.len()))
}

/// The name of extended attribute `index` of `list` (`"security.capability"`);
/// NULL if out of range or `list` is NULL.
#[no_mangle]
pub extern "C" fn oci_xattr_list_name(list: *const oci_xattr_list, index: usize) -> *const c_char {
    getter(list, std::ptr::null(), |l| {
        Some(l.xattrs.get(index)?.0.as_ptr())
    })
}

/// The value of extended attribute `index` of `list`: raw bytes, not
/// NUL-terminated, their count in `*len_out` (when `len_out` is not NULL).
/// NULL (and `*len_out` untouched) if out of range or `list` is NULL; an
/// empty value is a non-NULL pointer with a length of 0.
#[no_mangle]
pub extern "C" fn oci_xattr_list_value(
    list: *const oci_xattr_list,
    index: usize,
    len_out: *mut usize,
) -> *const u8 {
    getter(list, std::ptr::null(), |l| {
        let value = &l.xattrs.get(index)?.1;
        if !len_out.is_null() {
            // SAFETY: the caller gives a writable `size_t` at a non-NULL
            // `len_out`.
            unsafe { *len_out = value.len() };
        }
        // A Vec's pointer is dangling but non-NULL when empty.
        Some(value.as_ptr())
    })
}

/// Frees `list` and its names and values. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_xattr_list_free(list: *mut oci_xattr_list) {
    free_box(list)
}

/// A regular file's bytes, zero-copy: stores in `*fd_out` a fresh fd of
/// the layer tar that holds them (`O_RDONLY | O_CLOEXEC`, a new open file
/// description at offset 0, the caller's to close; read it with `pread`,
/// `sendfile` or `copy_file_range`, or `lseek` then `read`), and in `*offset_out` and
/// `*size_out` where the bytes are in it. The last component is followed
/// (inside the root); a hardlink gives its target's data; anything but a
/// regular file is `OCI_E_INVALID_ARGUMENT` naming its type, and a GNU
/// sparse file `OCI_E_UNSUPPORTED`.
#[no_mangle]
pub extern "C" fn oci_view_open_file(
    view: *const oci_view,
    path: *const c_char,
    fd_out: *mut c_int,
    offset_out: *mut u64,
    size_out: *mut u64,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let view = arg(view, "view")?;
        let path = str_arg(path, "path")?;
        let fd_out = out(fd_out, "fd_out")?;
        let offset_out = out(offset_out, "offset_out")?;
        let size_out = out(size_out, "size_out")?;
        let (file, offset, size) = view.view.open_file(path)?;
        *fd_out = file.into_raw_fd();
        *offset_out = offset;
        *size_out = size;
        Ok(())
    })
}
