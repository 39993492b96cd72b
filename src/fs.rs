//! Durable, atomic file creation: content goes to a temp file in the
//! destination's directory, is fsynced, renamed over the final name, and the
//! directory is fsynced. A file therefore exists under its final name whole,
//! or not at all; a temp file left by a failure is removed when dropped.
//! Its writer holds an exclusive `flock` on it, so a temp file nobody holds
//! belongs to a process that died and can be removed by anyone; advisory
//! locks also serialize updates of a file across processes.

use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Mode of content-addressed files, which never change once written.
pub(crate) const CONTENT_MODE: u32 = 0o444;
/// Mode of files that are rewritten in place, such as `index.json`.
pub(crate) const MUTABLE_MODE: u32 = 0o644;

/// How temp files' names start; nothing else in the store or `dst` does.
const TEMP_PREFIX: &str = ".tmp-";

/// How long an empty, unlocked temp file is left alone: its writer may
/// have created it and not yet taken the lock.
const TEMP_GRACE: Duration = Duration::from_secs(2);

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
            .prefix(TEMP_PREFIX)
            .permissions(Permissions::from_mode(mode))
            .tempfile_in(dir)
            .map_err(|e| Error::io("creating a temp file in", dir, e))?;
        if !try_lock(temp.as_file(), temp.path())? {
            return Err(Error::io(
                "locking a new temp file",
                temp.path(),
                io::Error::from(io::ErrorKind::WouldBlock),
            ));
        }
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

/// Takes an exclusive advisory lock on `file` if nobody holds one; the
/// lock lasts until the file is closed, or its process dies.
pub(crate) fn try_lock(file: &File, path: &Path) -> Result<bool> {
    // SAFETY: flock on a descriptor this File owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        e => Err(Error::io("locking", path, e)),
    }
}

/// An exclusive advisory lock on `path` (created if missing), held until
/// the returned file is dropped. Waits for other holders, in any process.
pub(crate) fn lock_file(path: &Path) -> Result<File> {
    let file = open_lock_file(path)?;
    // SAFETY: flock on a descriptor this File owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(Error::io("locking", path, io::Error::last_os_error()));
    }
    Ok(file)
}

/// Opens the lock file at `path` (created if missing), unlocked: for a
/// caller that polls [`try_lock`] instead of blocking in `flock`. A FIFO
/// planted there is refused, not waited on (`O_NONBLOCK`, which `flock`
/// and regular files ignore).
pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io("opening lock file", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("opening lock file", path, e))?;
    if !meta.is_file() {
        return Err(Error::Io(format!(
            "lock file {} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// Removes the temp files in `dir` that no live writer holds: those left by
/// a process that was killed. Returns how many files and bytes went.
pub(crate) fn remove_stale_temps(dir: &Path) -> Result<(u64, u64)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    let (mut files, mut bytes) = (0, 0);
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        // Gone already: its writer committed or dropped it meanwhile.
        let Ok(temp) = File::open(&path) else {
            continue;
        };
        let Ok(meta) = temp.metadata() else { continue };
        let young = meta
            .modified()
            .ok()
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .map_or(true, |age| age < TEMP_GRACE);
        if (meta.len() == 0 && young) || !try_lock(&temp, &path)? {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                files += 1;
                bytes += meta.len();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("removing stale temp file", &path, e)),
        }
    }
    Ok((files, bytes))
}

/// Whether `name` is a temp file's.
pub(crate) fn is_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating directory", dir, e))
}
