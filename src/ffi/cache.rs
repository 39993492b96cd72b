//! `oci_cache`: an `ImageCache` plus the tokio runtime its blocking C calls
//! wait on, and `oci_cache_resolve`.

use std::ffi::c_char;
use std::fs::File;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use once_cell::sync::OnceCell;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::options::{oci_cache_options, oci_call_options, oci_cancel, ProgressCallback};
use super::{
    arg_arc, boundary, free_arc, oci_error, oci_status, out, str_arg, to_arc_const_ptr, try_ref,
    Castable, Failure, Outcome, OwnershipArc, Process, OCI_E_BUFFER_TOO_SMALL, OCI_E_INTERNAL,
};
use crate::cache::{Image, ImageCache};
use crate::call::{Progress, Work};
use crate::error::Error;

/// An image cache: a local store, the registries behind it, and the runtime
/// its calls run on. Thread-safe: every call taking `const oci_cache *` may
/// run on it from many threads at once; only `oci_cache_free` takes
/// `oci_cache *`, releasing the caller's reference. Images
/// and readers made from it keep what they need alive, so it may be freed
/// before them; every call holds a reference to it while it runs, so it may
/// be freed from another thread or a progress callback during a call.
pub struct oci_cache {
    pub(crate) cache: ImageCache,
    runtime: OnceCell<Runtime>,
    worker_threads: usize,
    owner: Process,
}

impl Castable for oci_cache {
    type Ownership = OwnershipArc;
}

/// What the calling thread watches while a call runs: the call's cancel
/// token and its progress reports, which it hands to the C callback itself
/// so that the callback runs on the caller's thread, one report at a time.
pub(crate) struct Watch {
    cancel: Option<Arc<oci_cancel>>,
    progress: Option<(ProgressCallback, mpsc::UnboundedReceiver<Progress>)>,
}

impl Watch {
    /// Watches only `cancel` (a layer reader's token).
    pub(crate) fn cancel(cancel: Option<Arc<oci_cancel>>) -> Watch {
        Watch {
            cancel,
            progress: None,
        }
    }
}

async fn triggered(cancel: Option<&oci_cancel>) {
    match cancel {
        Some(cancel) => cancel.triggered().await,
        None => std::future::pending().await,
    }
}

async fn next_report(
    progress: &mut Option<(ProgressCallback, mpsc::UnboundedReceiver<Progress>)>,
) -> Option<(ProgressCallback, Progress)> {
    match progress {
        Some((callback, reports)) => Some((*callback, reports.recv().await?)),
        None => std::future::pending().await,
    }
}

impl oci_cache {
    /// Runs `work` on a view of the cache with `options`' deadline, stall
    /// timeout and progress reports, and waits for it on the calling thread
    /// (see [`wait`](Self::wait)).
    pub(crate) fn run<T, F, Fut>(&self, options: *const oci_call_options, work: F) -> Outcome<T>
    where
        F: FnOnce(ImageCache) -> Fut,
        Fut: Future<Output = crate::Result<T>>,
    {
        let options = try_ref(options);
        let mut call = options.map(|o| o.call.clone()).unwrap_or_default();
        let mut watch = Watch::cancel(options.and_then(|o| o.cancel.clone()));
        if let Some(callback) = options.and_then(|o| o.progress) {
            let (sender, reports) = mpsc::unbounded_channel();
            call = call.progress(move |report| {
                // The receiver is gone once the call returned: late reports are moot.
                let _ = sender.send(report.clone());
            });
            watch.progress = Some((callback, reports));
        }
        self.wait(watch, work(self.cache.with_call_options(call)))
    }

    /// Every layer tar of `image` in `dst`, opened on the calling thread
    /// without waking the runtime, if all are there and the call is not
    /// canceled already; None sends the call down the full path.
    pub(crate) fn rootfs_cached(
        &self,
        image: &Image,
        dst: &Path,
        options: *const oci_call_options,
    ) -> Outcome<Option<Vec<File>>> {
        self.owner.check()?;
        if try_ref(options)
            .and_then(|o| o.cancel.as_ref())
            .is_some_and(|c| c.is_triggered())
        {
            return Ok(None);
        }
        Ok(self.cache.rootfs_cached(image, dst))
    }

    /// Blocks the calling thread on `work`, run on the cache's runtime,
    /// returning early with `OCI_E_CANCELED` when the watched token is
    /// triggered or the progress callback asks to stop. Dropping `work` then
    /// stops its blocking parts, which remove what they had half-written.
    pub(crate) fn wait<T>(
        &self,
        watch: Watch,
        work: impl Future<Output = crate::Result<T>>,
    ) -> Outcome<T> {
        self.owner.check()?;
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Failure::invalid(
                "a blocking oci-cache call was made from inside an async runtime or a callback; it would deadlock",
            ));
        }
        let runtime = self.runtime.get_or_try_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.worker_threads)
                .thread_name("oci-cache")
                .enable_all()
                .build()
                .map_err(|e| {
                    Failure::new(
                        OCI_E_INTERNAL,
                        format!("internal: starting the runtime: {e}"),
                    )
                })
        })?;
        let Watch {
            cancel,
            mut progress,
        } = watch;
        let outcome = runtime.block_on(async move {
            if cancel.as_ref().is_some_and(|c| c.is_triggered()) {
                return Err(oci_cancel::canceled());
            }
            let (running, work) = Work::scope(work);
            let mut work = Box::pin(work);
            let stopped = loop {
                tokio::select! {
                    // Reports before the result, so a call's last reports are delivered.
                    biased;
                    () = triggered(cancel.as_deref()) => break Err(oci_cancel::canceled()),
                    Some((callback, report)) = next_report(&mut progress) => {
                        if !callback.deliver(&report) {
                            break Err(Error::canceled("the progress callback asked to stop"));
                        }
                    }
                    result = &mut work => {
                        // Reports queued as the work finished are still owed.
                        if let Some((callback, reports)) = &mut progress {
                            while let Ok(report) = reports.try_recv() {
                                callback.deliver(&report);
                            }
                        }
                        return result;
                    }
                }
            };
            // Stopped early: the work ends at its next step; wait until its
            // blocking parts have removed what they had half-written.
            drop(work);
            running.stopped().await;
            stopped
        });
        Ok(outcome?)
    }
}

impl Drop for oci_cache {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if !self.owner.is_current() {
            // A forked child has none of the runtime's threads: shutting it
            // down would wait for them forever. Leak it instead.
            std::mem::forget(runtime);
        } else if tokio::runtime::Handle::try_current().is_ok() {
            // The last reference went inside an async context (a runtime
            // thread, or a callback run inside a call), where tokio panics
            // on a runtime's blocking drop: stop it without waiting.
            runtime.shutdown_background();
        }
    }
}

/// Opens a cache with `options` (NULL = defaults). The runtime starts on the
/// first call that needs it.
#[no_mangle]
pub extern "C" fn oci_cache_new(
    options: *const oci_cache_options,
    cache_out: *mut *mut oci_cache,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache_out = out(cache_out, "cache_out")?;
        let defaults = oci_cache_options::default();
        let options = try_ref(options).unwrap_or(&defaults);
        let cache = oci_cache {
            cache: ImageCache::new(options.options.clone())?,
            runtime: OnceCell::new(),
            worker_threads: options.worker_threads,
            owner: Process::current(),
        };
        *cache_out = to_arc_const_ptr(cache).cast_mut();
        Ok(())
    })
}

/// Releases the caller's reference to `cache`. Images and readers made from
/// it stay usable; the runtime stops when the last of them is freed. Calls
/// running on `cache` in other threads, or the call whose progress callback
/// this is, hold their own reference: they complete normally. NULL is a
/// no-op.
#[no_mangle]
pub extern "C" fn oci_cache_free(cache: *mut oci_cache) {
    free_arc(cache.cast_const())
}

/// Writes the digest `reference` names (`"sha256:<hex>"`, NUL-terminated)
/// to `digest_out`: its pinned digest, else the store's record of it, else
/// the registry's. For a multi-platform image this is the index's digest.
/// `OCI_E_BUFFER_TOO_SMALL` if `digest_cap` bytes cannot hold it and its
/// NUL (72 bytes always suffice for sha256, 136 for sha512).
#[no_mangle]
pub extern "C" fn oci_cache_resolve(
    cache: *const oci_cache,
    reference: *const c_char,
    options: *const oci_call_options,
    digest_out: *mut c_char,
    digest_cap: usize,
    err_out: *mut *mut oci_error,
) -> oci_status {
    boundary(err_out, || {
        let cache = arg_arc(cache, "cache")?;
        let reference = str_arg(reference, "reference")?;
        out(digest_out, "digest_out")?;
        let digest = cache.run(
            options,
            |cache| async move { cache.resolve(reference).await },
        )?;
        let digest = digest.as_str().as_bytes();
        if digest.len() + 1 > digest_cap {
            return Err(Failure::new(
                OCI_E_BUFFER_TOO_SMALL,
                format!(
                    "buffer too small: digest_out holds {digest_cap} bytes; {} are needed",
                    digest.len() + 1
                ),
            ));
        }
        // SAFETY: `digest_out` has `digest_cap` writable bytes, checked above to be enough.
        unsafe {
            std::ptr::copy_nonoverlapping(digest.as_ptr(), digest_out.cast::<u8>(), digest.len());
            *digest_out.add(digest.len()) = 0;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;
    use std::ptr::{null, null_mut};

    use super::*;
    use crate::ffi::image::{oci_fetch_image, oci_image};
    use crate::ffi::options::{
        oci_call_options_free, oci_call_options_new, oci_call_options_set_cancel, oci_cancel_free,
        oci_cancel_new, oci_cancel_trigger,
    };
    use crate::ffi::{
        oci_error_code, oci_error_free, oci_error_message, OCI_E_CANCELED, OCI_E_INVALID_ARGUMENT,
        OCI_OK,
    };

    #[test]
    fn a_triggered_cancel_token_ends_a_hung_call_within_100_ms() {
        // A registry that accepts connections and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let reference =
            std::ffi::CString::new(format!("{}/hangs:v1", silent.local_addr().unwrap())).unwrap();
        let (mut cache, mut cancel, mut options) = (null_mut(), null_mut(), null_mut());
        assert_eq!(oci_cache_new(null(), &mut cache, null_mut()), OCI_OK);
        assert_eq!(oci_cancel_new(&mut cancel), OCI_OK);
        assert_eq!(oci_call_options_new(&mut options), OCI_OK);
        assert_eq!(oci_call_options_set_cancel(options, cancel), OCI_OK);

        let trigger = cancel as usize;
        let triggered_at = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let at = std::time::Instant::now();
            assert_eq!(oci_cancel_trigger(trigger as *mut oci_cancel), OCI_OK);
            at
        });
        let (mut image, mut err): (*mut oci_image, _) = (null_mut(), null_mut());
        let status = oci_fetch_image(
            cache,
            reference.as_ptr(),
            null(),
            options,
            &mut image,
            &mut err,
        );
        let returned_at = std::time::Instant::now();
        let latency = returned_at - triggered_at.join().unwrap();

        assert_eq!(status, OCI_E_CANCELED);
        assert_eq!(oci_error_code(err), OCI_E_CANCELED);
        assert!(image.is_null());
        assert!(
            latency < std::time::Duration::from_millis(100),
            "returned {latency:?} after the trigger"
        );
        oci_error_free(err);
        oci_call_options_free(options);
        oci_cancel_free(cancel);
        oci_cache_free(cache);
        drop(silent);
    }

    #[test]
    fn the_last_reference_dropped_inside_a_runtime_stops_it_without_panicking() {
        let mut cache = null_mut();
        assert_eq!(oci_cache_new(null(), &mut cache, null_mut()), OCI_OK);
        // A pinned digest resolves without the network, but on the runtime.
        let reference = c"registry.example/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let mut digest = [0 as c_char; 80];
        let status = oci_cache_resolve(
            cache,
            reference.as_ptr(),
            null(),
            digest.as_mut_ptr(),
            digest.len(),
            null_mut(),
        );
        assert_eq!(status, OCI_OK);
        assert!(cache_runtime_started(cache));
        // Dropped as a callback run inside a call would: in an async
        // context, where a blocking Runtime drop panics. Not through
        // oci_cache_free, whose boundary would hide the panic.
        let inside = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        inside.block_on(async move {
            // SAFETY: the reference oci_cache_new handed out, released once.
            drop(unsafe { Arc::from_raw(cache.cast_const()) });
        });
    }

    fn cache_runtime_started(cache: *const oci_cache) -> bool {
        // SAFETY: a live cache from oci_cache_new.
        unsafe { &*cache }.runtime.get().is_some()
    }

    #[test]
    fn blocking_calls_from_inside_a_runtime_fail_instead_of_deadlocking() {
        let mut cache = null_mut();
        assert_eq!(oci_cache_new(null(), &mut cache, null_mut()), OCI_OK);
        let inside = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let reference = c"registry.example/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let (status, message) = inside.block_on(async {
            let mut digest = [0 as c_char; 80];
            let mut err = null_mut();
            let status = oci_cache_resolve(
                cache,
                reference.as_ptr(),
                null(),
                digest.as_mut_ptr(),
                digest.len(),
                &mut err,
            );
            // SAFETY: the call failed, so `err` is a live error with a C string message.
            let message = unsafe { CStr::from_ptr(oci_error_message(err)) }
                .to_string_lossy()
                .into_owned();
            oci_error_free(err);
            (status, message)
        });
        assert_eq!(status, OCI_E_INVALID_ARGUMENT);
        assert!(message.contains("deadlock"), "{message}");
        oci_cache_free(cache);
    }
}
