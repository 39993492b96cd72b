//! The C ABI: opaque handles over the Rust API, status codes, error objects,
//! and the boundary every `extern "C"` function runs inside (null and UTF-8
//! checks, panic catching, fork detection). One file per C object, as in
//! `include/oci_cache.h`; each exported function is a thin skin over a
//! documented Rust function.

// C names, and `extern "C"` functions that take pointers: `unsafe fn` would
// mean nothing to a C caller; the header states each pointer's contract and
// every pointer is NULL-checked before use.
#![allow(non_camel_case_types, clippy::not_unsafe_ptr_arg_deref)]

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use crate::error::{panic_message, Error, ErrorKind};

pub mod cache;
pub mod error;
mod handle;
pub mod image;
pub mod layer;
pub mod manage;
pub mod options;
pub mod view;

pub use error::*;
pub(crate) use handle::*;

/// A failure on its way out to C: a status code, its message, and the OS
/// error number and HTTP status behind it (0 when there is none).
pub(crate) struct Failure {
    code: oci_status,
    message: String,
    os_errno: i32,
    http_status: i32,
}

impl Failure {
    pub(crate) fn new(code: oci_status, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            os_errno: 0,
            http_status: 0,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Error::invalid_argument(message.into()).into()
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        Failure {
            code: status_of(err.kind()),
            message: err.to_string(),
            os_errno: err.os_errno().unwrap_or(0),
            http_status: err.http_status().map_or(0, i32::from),
        }
    }
}

/// The C status code (`OCI_E_*`) of each kind of error; the command line's
/// exit codes are made from it too.
pub fn status_of(kind: ErrorKind) -> oci_status {
    match kind {
        ErrorKind::InvalidArgument => OCI_E_INVALID_ARGUMENT,
        ErrorKind::NotFound => OCI_E_NOT_FOUND,
        ErrorKind::Unauthorized => OCI_E_UNAUTHORIZED,
        ErrorKind::Unsupported => OCI_E_UNSUPPORTED,
        ErrorKind::DigestMismatch => OCI_E_DIGEST_MISMATCH,
        ErrorKind::InvalidContent => OCI_E_INVALID_CONTENT,
        ErrorKind::Network => OCI_E_NETWORK,
        ErrorKind::Io => OCI_E_IO,
        ErrorKind::Canceled => OCI_E_CANCELED,
        ErrorKind::Timeout => OCI_E_TIMEOUT,
        ErrorKind::Internal => OCI_E_INTERNAL,
    }
}

pub(crate) type Outcome<T = ()> = Result<T, Failure>;

/// Runs `body` as the whole of an `extern "C"` function that reports
/// failures through `err_out`: a panic becomes `OCI_E_INTERNAL` with its
/// message, and `*err_out` is written only on failure (when not NULL).
pub(crate) fn boundary(err_out: *mut *mut oci_error, body: impl FnOnce() -> Outcome) -> oci_status {
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return OCI_OK,
        Ok(Err(failure)) => failure,
        Err(panic) => Failure::new(
            OCI_E_INTERNAL,
            format!("internal: {}", panic_message(&*panic)),
        ),
    };
    let code = failure.code;
    if !err_out.is_null() {
        // SAFETY: the caller passes either NULL or a writable `oci_error *`.
        unsafe { *err_out = oci_error::boxed(failure) };
    }
    code
}

/// Runs the whole of a getter or destructor, which has no way to report
/// errors: a panic gives `fallback`. Status-returning calls use [`boundary`].
pub(crate) fn boundary_or<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The whole of a getter on a handle: reads from the object behind `ptr`
/// with `get`; NULL, a `None` from `get` (an index out of range) or a panic
/// gives `fallback`.
pub(crate) fn getter<H: Castable, T: Copy>(
    ptr: *const H,
    fallback: T,
    get: impl FnOnce(&H) -> Option<T>,
) -> T {
    boundary_or(fallback, || try_ref(ptr).and_then(get).unwrap_or(fallback))
}

/// Checks an output pointer, which is written only once the call succeeded.
pub(crate) fn out<'a, T>(ptr: *mut T, name: &str) -> Outcome<&'a mut T> {
    // SAFETY: the caller passes NULL or a pointer it lets this call write
    // through, as the header requires.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::invalid(format!("{name} is NULL")))
}

/// A string for C to read from a handle; content with a NUL byte (which C
/// would cut short) is `OCI_E_INVALID_CONTENT` naming `what`.
pub(crate) fn c_string(text: &[u8], what: &str) -> Outcome<CString> {
    CString::new(text)
        .map_err(|_| Failure::new(OCI_E_INVALID_CONTENT, format!("{what} contains a NUL byte")))
}

/// Borrows a NUL-terminated UTF-8 string argument for the length of the call.
pub(crate) fn str_arg<'a>(ptr: *const c_char, name: &str) -> Outcome<&'a str> {
    if ptr.is_null() {
        return Err(Failure::invalid(format!("{name} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives the call.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str()
        .map_err(|e| Failure::invalid(format!("{name} is not valid UTF-8: {e}")))
}

/// Like [`str_arg`], but NULL is `None`.
pub(crate) fn optional_str_arg<'a>(ptr: *const c_char, name: &str) -> Outcome<Option<&'a str>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        str_arg(ptr, name).map(Some)
    }
}

/// Forks made since the first handle, counted in each child by a
/// `pthread_atfork` handler: with the pid, it tells a forked child from its
/// parent even where both have the same pid (pid 1 of two pid namespaces).
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The process a handle was made in: its pid and how many forks led to it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Process {
    pid: u32,
    forks: u64,
}

impl Process {
    /// The calling process. The first call registers the fork counter, so
    /// every fork after a handle exists is seen.
    pub(crate) fn current() -> Process {
        static COUNTING: Once = Once::new();
        COUNTING.call_once(|| {
            // SAFETY: registers a handler that only bumps an atomic, which
            // is async-signal-safe as fork's child handler must be. It can
            // only fail for want of memory: the pid check then still works.
            unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
        });
        Process {
            pid: std::process::id(),
            forks: FORKS.load(Ordering::Relaxed),
        }
    }

    /// Whether this is the calling process (no fork since it was taken).
    pub(crate) fn is_current(self) -> bool {
        self == Process::current()
    }

    /// Fails with `OCI_E_FORKED` when a handle made in this process is used
    /// in another one: its runtime's threads did not survive `fork()`.
    pub(crate) fn check(self) -> Outcome {
        if self.is_current() {
            return Ok(());
        }
        let pid = std::process::id();
        let how = if pid == self.pid {
            " (the same pid, in another pid namespace)"
        } else {
            ""
        };
        Err(Failure::new(
            OCI_E_FORKED,
            format!(
                "forked: handle created in process {} used in child {pid}{how}",
                self.pid
            ),
        ))
    }
}
