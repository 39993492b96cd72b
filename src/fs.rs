//! Durable, atomic file creation: content goes to a temp file in the
//! destination's directory, is fsynced, renamed over the final name, and the
//! directory is fsynced. A file therefore exists under its final name whole,
//! or not at all; a temp file left by a failure is removed when dropped.

use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Mode of content-addressed files, which never change once written.
pub(crate) const CONTENT_MODE: u32 = 0o444;
/// Mode of files that are rewritten in place, such as `index.json`.
pub(crate) const MUTABLE_MODE: u32 = 0o644;

/// A file being written that takes its final name only on [`commit`](Self::commit).
pub(crate) struct PendingFile {
    temp: NamedTempFile,
    dest: PathBuf,
}

impl PendingFile {
    /// Starts a file that will become `dest` with permission bits `mode`.
    pub(crate) fn create(dest: PathBuf, mode: u32) -> Result<PendingFile> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        let temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(Permissions::from_mode(mode))
            .tempfile_in(dir)
            .map_err(|e| Error::io("creating a temp file in", dir, e))?;
        Ok(PendingFile { temp, dest })
    }

    /// Makes the content durable and gives it its final name.
    pub(crate) fn commit(self) -> Result<()> {
        let PendingFile { temp, dest } = self;
        temp.as_file()
            .sync_all()
            .map_err(|e| Error::io("syncing", temp.path(), e))?;
        temp.persist(&dest)
            .map_err(|e| Error::io("renaming a temp file to", &dest, e.error))?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("syncing directory", dir, e))
    }
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp
            .write(buf)
            .map_err(|e| Error::io("writing", &self.dest, e).into_io())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

/// Writes `content` to `dest` atomically.
pub(crate) fn write_atomic(dest: &Path, content: &[u8], mode: u32) -> Result<()> {
    let mut file = PendingFile::create(dest.to_owned(), mode)?;
    file.write_all(content)
        .map_err(|e| Error::from_io(e, |e| Error::io("writing", dest, e)))?;
    file.commit()
}

/// Opens `path` read-only, close-on-exec, at offset 0: a fresh open, so it
/// shares no offset or flags with any other descriptor.
pub(crate) fn open_read_only(path: &Path) -> Result<File> {
    // std opens every file with O_CLOEXEC.
    File::open(path).map_err(|e| Error::io("opening", path, e))
}

/// Like [`open_read_only`], but `None` when `path` does not exist.
pub(crate) fn open_if_exists(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("opening", path, e)),
    }
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))
}
