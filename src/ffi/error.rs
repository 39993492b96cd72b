//! Status codes, the `oci_error` object, and the library version.

use std::ffi::{c_char, c_int, CString};

use super::{
    boundary_or, free_box, getter, to_boxed_mut_ptr, try_ref, Castable, Failure, OwnershipBox,
};

/// The result of every fallible call: `OCI_OK` (0) or a negative `OCI_E_*`
/// code. Fixed width, so it never depends on the size of a C enum. The
/// values are stable across releases. The comments on the `OCI_E_*` codes
/// below are the one description of each kind of failure: Rust's
/// `ErrorKind`, Go's sentinels and the README point here (a test keeps
/// `ErrorKind`'s docs the same as these).
pub type oci_status = i32;

/// Success.
pub const OCI_OK: oci_status = 0;
/// A malformed reference, platform, digest or option, or an out-of-range
/// index.
///
/// From C also: a NULL pointer, a string that is not UTF-8, or a blocking
/// call made from inside the library's runtime or a callback.
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
/// A panic caught inside the library (a bug, or a Rust progress callback
/// that panicked), reported as an error rather than taken as the end of
/// the work.
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
/// causes; a write refused by the free-space reserve gives `ENOSPC`, as a
/// full disk would. 0 when there is none (the failure did not come from
/// the OS) or `err` is NULL.
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
    use crate::ffi::{boundary, status_of};
    use crate::{Error, ErrorKind};

    /// The first paragraph of each doc comment that comes right before a
    /// line for which `name` gives a name, in `text` where comments start
    /// with `marker`.
    fn first_paragraphs(
        text: &str,
        marker: &str,
        name: impl Fn(&str) -> Option<String>,
    ) -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut doc: Vec<&str> = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(comment) = line.strip_prefix(marker) {
                doc.push(comment.trim());
                continue;
            }
            if let Some(name) = name(line) {
                let paragraph = doc.split(|l| l.is_empty()).next().unwrap_or(&[]);
                found.push((name, paragraph.join(" ")));
            }
            doc.clear();
        }
        found
    }

    /// `InvalidArgument` as C spells it: `INVALID_ARGUMENT`.
    fn screaming(camel: &str) -> String {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }

    #[test]
    fn error_kind_docs_are_the_header_docs() {
        let rust = include_str!("../error.rs");
        let enum_body = rust
            .split("pub enum ErrorKind {")
            .nth(1)
            .and_then(|rest| rest.split("\n}").next())
            .expect("ErrorKind in src/error.rs");
        let kinds = first_paragraphs(enum_body, "///", |line| {
            let name = line.strip_suffix(',')?;
            name.chars()
                .all(|c| c.is_ascii_alphanumeric())
                .then(|| screaming(name))
        });
        let header = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("include/oci_cache.h"),
        )
        .expect("reading include/oci_cache.h");
        let codes = first_paragraphs(&header, "//", |line| {
            let rest = line.strip_prefix("#define OCI_E_")?;
            Some(rest.split_whitespace().next()?.to_owned())
        });
        assert_eq!(kinds.len(), 11, "{kinds:?}");
        for (kind, doc) in &kinds {
            let code = codes.iter().find(|(name, _)| name == kind);
            let Some((_, code_doc)) = code else {
                panic!("no OCI_E_{kind} in include/oci_cache.h");
            };
            assert!(!doc.is_empty(), "ErrorKind for OCI_E_{kind} has no doc");
            assert_eq!(
                doc, code_doc,
                "ErrorKind's doc for OCI_E_{kind} differs from the header's (run make header?)"
            );
        }
    }

    #[test]
    fn every_kind_has_its_own_code() {
        let kinds = [
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::Unauthorized,
            ErrorKind::Unsupported,
            ErrorKind::DigestMismatch,
            ErrorKind::InvalidContent,
            ErrorKind::Network,
            ErrorKind::Io,
            ErrorKind::Canceled,
            ErrorKind::Timeout,
            ErrorKind::Internal,
        ];
        let mut codes: Vec<oci_status> = kinds.iter().map(|&k| status_of(k)).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
    }

    #[test]
    fn a_panic_at_the_boundary_is_internal_with_its_message() {
        let mut err: *mut oci_error = std::ptr::null_mut();
        let status = boundary(&mut err, || panic!("a bug on purpose"));
        assert_eq!(status, OCI_E_INTERNAL);
        assert_eq!(oci_error_code(err), OCI_E_INTERNAL);
        // SAFETY: the message of a live error, read before it is freed.
        let message = unsafe { std::ffi::CStr::from_ptr(oci_error_message(err)) };
        assert_eq!(message.to_str().unwrap(), "internal: a bug on purpose");
        assert_eq!(oci_error_os_errno(err), 0);
        assert_eq!(oci_error_http_status(err), 0);
        oci_error_free(err);
        // A getter has no error to give: its fallback.
        assert_eq!(boundary_or(-1, || -> i32 { panic!("again") }), -1);
    }

    #[test]
    fn an_error_keeps_its_errno_and_status_through_c() {
        let mut err: *mut oci_error = std::ptr::null_mut();
        let status = boundary(&mut err, || {
            Err(Error::io("full")
                .with_source(std::io::Error::from_raw_os_error(libc::ENOSPC))
                .with_http_status(507)
                .into())
        });
        assert_eq!(status, OCI_E_IO);
        assert_eq!(oci_error_os_errno(err), libc::ENOSPC);
        assert_eq!(oci_error_http_status(err), 507);
        oci_error_free(err);
        assert_eq!(oci_error_os_errno(std::ptr::null()), 0);
        assert_eq!(oci_error_http_status(std::ptr::null()), 0);
    }

    #[test]
    fn version_macros_agree_with_the_crate_version() {
        let macros = format!(
            "{OCI_CACHE_VERSION_MAJOR}.{OCI_CACHE_VERSION_MINOR}.{OCI_CACHE_VERSION_PATCH}"
        );
        assert_eq!(macros, env!("CARGO_PKG_VERSION"));
    }
}
