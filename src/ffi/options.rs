//! Builders: `oci_cache_options` for a cache, `oci_call_options` for one
//! call, and the `oci_cancel` token a call can be canceled with.

use std::ffi::c_char;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use super::{arg, arg_mut, boundary, free_arc, free_box, oci_status, out, str_arg, Failure};
use crate::cache::CacheOptions;
use crate::error::Error;
use crate::platform::Platform;

/// Settings for `oci_cache_new`. A builder: every setting has a default and
/// a setter, so new settings never change the ABI. Use from one thread at a
/// time; the cache copies what it needs, so the options may be freed once
/// the cache exists.
pub struct oci_cache_options {
    pub(crate) options: CacheOptions,
    pub(crate) worker_threads: usize,
}

impl oci_cache_options {
    fn update(&mut self, change: impl FnOnce(CacheOptions) -> CacheOptions) {
        self.options = change(std::mem::take(&mut self.options));
    }
}

impl Default for oci_cache_options {
    fn default() -> Self {
        oci_cache_options {
            options: CacheOptions::default(),
            worker_threads: 2,
        }
    }
}

/// Makes options with every default: no store, the host's platform, 2
/// runtime worker threads, 3 layers fetched at once.
#[no_mangle]
pub extern "C" fn oci_cache_options_new(options_out: *mut *mut oci_cache_options) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let slot = out(options_out, "options_out")?;
        *slot = Box::into_raw(Box::default());
        Ok(())
    })
}

/// Keeps images in the OCI image layout at `dir`, created if missing, and
/// resolves references there before asking a registry. Unset: no local
/// store; references are still resolved and layers still extracted.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_store(
    options: *mut oci_cache_options,
    dir: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let dir = str_arg(dir, "dir")?.to_owned();
        arg_mut(options, "options")?.update(|o| o.store(dir));
        Ok(())
    })
}

/// The platform picked from multi-platform images, `"os/arch[/variant]"`,
/// e.g. `"linux/arm64/v8"`. Default: the host's. A malformed platform gives
/// `OCI_E_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_platform(
    options: *mut oci_cache_options,
    platform: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let platform: Platform = str_arg(platform, "platform")?.parse()?;
        arg_mut(options, "options")?.update(|o| o.platform(platform));
        Ok(())
    })
}

/// Reaches `host` (`"host[:port]"`) over plain HTTP. Loopback registries
/// always are; other hosts need HTTPS unless added here.
#[no_mangle]
pub extern "C" fn oci_cache_options_add_insecure_registry(
    options: *mut oci_cache_options,
    host: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let host = str_arg(host, "host")?.to_owned();
        arg_mut(options, "options")?.update(|o| o.insecure_registry(host));
        Ok(())
    })
}

/// Threads of the cache's internal runtime (default 2, at least 1). Blocking
/// work (decompression, hashing, disk writes) runs on separate threads.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_worker_threads(
    options: *mut oci_cache_options,
    threads: usize,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        if threads == 0 {
            return Err(Failure::invalid("worker threads must be at least 1"));
        }
        arg_mut(options, "options")?.worker_threads = threads;
        Ok(())
    })
}

/// How many layers `oci_extract_layers` and `oci_rootfs` fetch at once
/// (default 3, at least 1).
#[no_mangle]
pub extern "C" fn oci_cache_options_set_max_concurrent_layers(
    options: *mut oci_cache_options,
    layers: usize,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        if layers == 0 {
            return Err(Failure::invalid("max concurrent layers must be at least 1"));
        }
        arg_mut(options, "options")?.update(|o| o.max_concurrent_layers(layers));
        Ok(())
    })
}

/// Frees `options`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_cache_options_free(options: *mut oci_cache_options) {
    free_box(options)
}

/// A cancel token. Trigger it from any thread to make every call using it
/// return `OCI_E_CANCELED`; a triggered token stays triggered. Shareable
/// between threads and calls.
pub struct oci_cancel {
    triggered: AtomicBool,
    wake: Notify,
}

impl oci_cancel {
    pub(crate) fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::Acquire)
    }

    /// Completes once the token is triggered.
    pub(crate) async fn triggered(&self) {
        loop {
            // Registered before the check, so a trigger in between still wakes us.
            let woken = self.wake.notified();
            if self.is_triggered() {
                return;
            }
            woken.await;
        }
    }

    pub(crate) fn canceled() -> Error {
        Error::Canceled("the call's cancel token was triggered".into())
    }
}

/// Makes an untriggered cancel token.
#[no_mangle]
pub extern "C" fn oci_cancel_new(cancel_out: *mut *mut oci_cancel) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let slot = out(cancel_out, "cancel_out")?;
        let cancel = Arc::new(oci_cancel {
            triggered: AtomicBool::new(false),
            wake: Notify::new(),
        });
        *slot = Arc::into_raw(cancel).cast_mut();
        Ok(())
    })
}

/// Triggers `cancel`. Safe from any thread, including while calls using it run.
#[no_mangle]
pub extern "C" fn oci_cancel_trigger(cancel: *mut oci_cancel) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let cancel = arg(cancel.cast_const(), "cancel")?;
        cancel.triggered.store(true, Ordering::Release);
        cancel.wake.notify_waiters();
        Ok(())
    })
}

/// Releases the caller's reference to `cancel`; call options holding it keep
/// it alive. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_cancel_free(cancel: *mut oci_cancel) {
    free_arc(cancel.cast_const())
}

/// Per-call settings, passed as `const oci_call_options *` to every long
/// call (NULL = none). A builder; use from one thread at a time while
/// building, then share read-only between calls.
#[derive(Default)]
pub struct oci_call_options {
    pub(crate) cancel: Option<Arc<oci_cancel>>,
}

impl oci_call_options {
    /// The cancel token of the options behind `ptr`, if any (NULL = none).
    pub(crate) fn cancel_of(ptr: *const oci_call_options) -> Option<Arc<oci_cancel>> {
        // SAFETY: NULL or call options handed out by oci_call_options_new.
        unsafe { ptr.as_ref() }.and_then(|o| o.cancel.clone())
    }
}

/// Makes call options with nothing set.
#[no_mangle]
pub extern "C" fn oci_call_options_new(options_out: *mut *mut oci_call_options) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let slot = out(options_out, "options_out")?;
        *slot = Box::into_raw(Box::default());
        Ok(())
    })
}

/// Makes calls using `options` cancelable with `cancel` (NULL removes it).
/// The options hold their own reference to the token.
#[no_mangle]
pub extern "C" fn oci_call_options_set_cancel(
    options: *mut oci_call_options,
    cancel: *mut oci_cancel,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let options = arg_mut(options, "options")?;
        options.cancel = (!cancel.is_null()).then(|| {
            // SAFETY: a live token from oci_cancel_new; take a new reference.
            unsafe {
                Arc::increment_strong_count(cancel.cast_const());
                Arc::from_raw(cancel.cast_const())
            }
        });
        Ok(())
    })
}

/// Frees `options`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_call_options_free(options: *mut oci_call_options) {
    free_box(options)
}
