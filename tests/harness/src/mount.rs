//! Mounted file systems for one test: [`Tmpfs`] mounts a tmpfs (small, to
//! fill it; `ro`, to refuse writes) and unmounts it when dropped, so nothing
//! stays mounted behind a test. Needs root (CAP_SYS_ADMIN), as the suite has.
//!
//! ```no_run
//! use harness::Tmpfs;
//! let full = Tmpfs::mount("size=64k");
//! let read_only = Tmpfs::mount("ro,size=1m");
//! assert!(std::fs::write(read_only.path().join("x"), b"x").is_err());
//! # drop(full);
//! ```

use std::path::Path;

/// A tmpfs mounted with `options` for one test, unmounted when dropped
/// (and its mount point removed): nothing is left mounted behind a test.
pub struct Tmpfs(Option<tempfile::TempDir>);

impl Tmpfs {
    pub fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs ({options})");
        Tmpfs(Some(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let dir = self.0.take().unwrap();
        let unmounted = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        // Removing the mount point while still mounted would empty the tmpfs
        // only: keep it (and say so) rather than hide a leak.
        if unmounted.is_ok_and(|s| s.success()) {
            drop(dir);
        } else {
            eprintln!("could not unmount {}", dir.keep().display());
        }
    }
}
