//! Status codes, the `oci_error` object, and the library version.

use std::ffi::{c_char, c_int, CString};

use super::{
    boundary_or, free_box, getter, to_boxed_mut_ptr, try_ref, Castable, Failure, OwnershipBox,
};

/// The result of every fallible call: `OCI_OK` (0) or a negative `OCI_E_*`
/// code. Fixed width, so it never depends on the size of a C enum. The
/// values are stable across releases.
pub type oci_status = i32;

/// Success.
pub const OCI_OK: oci_status = 0;
/// A NULL pointer, a string that is not UTF-8, a malformed reference,
/// platform or option, an out-of-range index, or a blocking call made from
/// inside the library's runtime or a callback.
pub const OCI_E_INVALID_ARGUMENT: oci_status = -1;
/// A manifest, blob, tag, repository or platform that does not exist,
/// locally or in the registry.
pub const OCI_E_NOT_FOUND: oci_status = -2;
/// The registry answered 401 or 403, a token exchange failed, or
/// credentials are missing.
pub const OCI_E_UNAUTHORIZED: oci_status = -3;
/// A media type, schema version or digest algorithm the library does not handle.
pub const OCI_E_UNSUPPORTED: oci_status = -4;
/// Content that does not hash to its descriptor's digest or its diff_id,
/// or whose size differs from the descriptor's.
pub const OCI_E_DIGEST_MISMATCH: oci_status = -5;
/// Malformed JSON, an oversized manifest or config, or a corrupt gzip/zstd stream.
pub const OCI_E_INVALID_CONTENT: oci_status = -6;
/// A connection, TLS or HTTP failure talking to a registry.
pub const OCI_E_NETWORK: oci_status = -7;
/// A local file system error; the message names the path and the OS error.
pub const OCI_E_IO: oci_status = -8;
/// The call's cancel token was triggered.
pub const OCI_E_CANCELED: oci_status = -9;
/// A deadline or stall timeout expired.
pub const OCI_E_TIMEOUT: oci_status = -10;
/// The caller's array or buffer is too small; the message gives the size needed.
pub const OCI_E_BUFFER_TOO_SMALL: oci_status = -11;
/// A handle was used in a child process after `fork()`: told by the pid and
/// a count of forks, so also in a child that has its parent's pid (pid 1 of
/// a new pid namespace).
pub const OCI_E_FORKED: oci_status = -12;
/// A bug in the library (a Rust panic) caught at the boundary.
pub const OCI_E_INTERNAL: oci_status = -13;

/// Major version of the library this header belongs to.
pub const OCI_CACHE_VERSION_MAJOR: u32 = 0;
/// Minor version of the library this header belongs to.
pub const OCI_CACHE_VERSION_MINOR: u32 = 1;
/// Patch version of the library this header belongs to.
pub const OCI_CACHE_VERSION_PATCH: u32 = 0;

/// A detailed error: a status code and a message naming the reference,
/// digest, path or URL involved. Owned by the caller, who frees it with
/// `oci_error_free`. Immutable: may be read from any thread.
pub struct oci_error {
    code: oci_status,
    message: CString,
    os_errno: i32,
    http_status: i32,
}

impl Castable for oci_error {
    type Ownership = OwnershipBox;
}

impl oci_error {
    pub(crate) fn boxed(failure: Failure) -> *mut oci_error {
        // Interior NULs would cut the message short in C: show them instead.
        let message =
            CString::new(failure.message.replace('\0', "\\0")).expect("NULs were replaced");
        to_boxed_mut_ptr(oci_error {
            code: failure.code,
            message,
            os_errno: failure.os_errno,
            http_status: failure.http_status,
        })
    }
}

/// The status code of `err`; `OCI_E_INVALID_ARGUMENT` if `err` is NULL.
#[no_mangle]
pub extern "C" fn oci_error_code(err: *const oci_error) -> oci_status {
    boundary_or(OCI_E_INTERNAL, || {
        try_ref(err).map_or(OCI_E_INVALID_ARGUMENT, |e| e.code)
    })
}

/// The message of `err`, valid until `oci_error_free(err)`; NULL if `err` is NULL.
#[no_mangle]
pub extern "C" fn oci_error_message(err: *const oci_error) -> *const c_char {
    getter(err, std::ptr::null(), |e| Some(e.message.as_ptr()))
}

/// The OS error number (`errno`, e.g. `ENOSPC`, `EROFS`, `EACCES`,
/// `ECONNREFUSED`) that caused `err`, found anywhere along its chain of
/// causes; 0 when there is none (the failure did not come from the OS) or
/// `err` is NULL.
#[no_mangle]
pub extern "C" fn oci_error_os_errno(err: *const oci_error) -> c_int {
    getter(err, 0, |e| Some(e.os_errno))
}

/// The HTTP status (e.g. 401, 404, 503) of the registry's answer that made
/// `err`; 0 when the failure came from no such answer (a refused
/// connection, a local error…) or `err` is NULL.
#[no_mangle]
pub extern "C" fn oci_error_http_status(err: *const oci_error) -> c_int {
    getter(err, 0, |e| Some(e.http_status))
}

/// Frees `err`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_error_free(err: *mut oci_error) {
    free_box(err)
}

/// The library's version, `"MAJOR.MINOR.PATCH"`; a static string. It agrees
/// with the `OCI_CACHE_VERSION_*` macros of the header it was built with.
#[no_mangle]
pub extern "C" fn oci_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_macros_agree_with_the_crate_version() {
        let macros = format!(
            "{OCI_CACHE_VERSION_MAJOR}.{OCI_CACHE_VERSION_MINOR}.{OCI_CACHE_VERSION_PATCH}"
        );
        assert_eq!(macros, env!("CARGO_PKG_VERSION"));
    }
}
