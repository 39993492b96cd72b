//! The one error type of the library: a kind (one C status code each), a
//! message naming the reference, digest, path or host involved, and the
//! cause it came from (the OS error, the HTTP client's error, the HTTP status).

use std::fmt;
use std::sync::Arc;

/// What kind of failure an [`Error`] is. Each kind maps to exactly one C
/// status code; the first paragraph of each kind's doc is the first
/// paragraph of that code's doc in `include/oci_cache.h` (a test keeps them
/// one text).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A malformed reference, platform, digest or option, or an out-of-range
    /// index.
    InvalidArgument,
    /// A manifest, blob, tag, repository or platform that does not exist,
    /// locally or in the registry.
    NotFound,
    /// The registry answered 401 or 403, a token exchange failed, or
    /// credentials are missing.
    Unauthorized,
    /// A media type, schema version or digest algorithm the library does not handle.
    Unsupported,
    /// Content that does not hash to its descriptor's digest or its diff_id,
    /// or whose size differs from the descriptor's.
    DigestMismatch,
    /// Malformed JSON, an oversized manifest or config, or a corrupt gzip/zstd stream.
    InvalidContent,
    /// A connection, TLS or HTTP failure talking to a registry.
    Network,
    /// A local file system error; the message names the path and the OS error.
    Io,
    /// The call's cancel token was triggered.
    Canceled,
    /// A deadline or stall timeout expired.
    Timeout,
    /// A panic caught inside the library (a bug, or a Rust progress callback
    /// that panicked), reported as an error rather than taken as the end of
    /// the work.
    Internal,
}

impl ErrorKind {
    /// The words an error's text starts with, e.g. `"not found"`.
    fn prefix(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::NotFound => "not found",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::DigestMismatch => "digest mismatch",
            ErrorKind::InvalidContent => "invalid content",
            ErrorKind::Network => "network",
            ErrorKind::Io => "io",
            ErrorKind::Canceled => "canceled",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal error",
        }
    }
}

/// The cause an error keeps: shared, so errors stay cheap to clone (one
/// failure is reported to every caller waiting on the same work).
type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong: a [`kind`](Error::kind) to branch on, a
/// [`message`](Error::message) that names the thing involved (never a
/// secret), and, where there is one, the cause: the OS error
/// ([`os_errno`](Error::os_errno)), the HTTP client's error (through
/// [`source`](std::error::Error::source)), the registry's HTTP status
/// ([`http_status`](Error::http_status)). Shown as `"<kind>: <message>"`,
/// e.g. `"not found: …"`.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Source>,
    http_status: Option<u16>,
}

/// Shorthand for results of this library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with `message`, and no cause.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            source: None,
            http_status: None,
        }
    }

    /// An [`ErrorKind::InvalidArgument`] error.
    pub fn invalid_argument(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// An [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }

    /// An [`ErrorKind::Unauthorized`] error.
    pub fn unauthorized(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unauthorized, message)
    }

    /// An [`ErrorKind::Unsupported`] error.
    pub fn unsupported(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// An [`ErrorKind::DigestMismatch`] error.
    pub fn digest_mismatch(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::DigestMismatch, message)
    }

    /// An [`ErrorKind::InvalidContent`] error.
    pub fn invalid_content(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidContent, message)
    }

    /// An [`ErrorKind::Network`] error.
    pub fn network(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Network, message)
    }

    /// An [`ErrorKind::Io`] error.
    pub fn io(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Io, message)
    }

    /// An [`ErrorKind::Canceled`] error.
    pub fn canceled(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Canceled, message)
    }

    /// An [`ErrorKind::Timeout`] error.
    pub fn timeout(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Timeout, message)
    }

    /// An [`ErrorKind::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }

    /// This error, caused by `source` (an `io::Error`, the HTTP client's
    /// error…), which [`std::error::Error::source`] then gives.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// This error, made by a registry's answer with HTTP status `status`.
    pub fn with_http_status(mut self, status: u16) -> Error {
        self.http_status = Some(status);
        self
    }

    /// This error as another kind, keeping its message and cause.
    pub(crate) fn with_kind(mut self, kind: ErrorKind) -> Error {
        self.kind = kind;
        self
    }

    /// This error with its message prefixed by `context`, keeping its cause.
    pub(crate) fn context(mut self, context: &str) -> Error {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind's words that [`Display`](fmt::Display) puts first.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The OS error number behind this error (`ENOSPC`, `EROFS`,
    /// `ECONNREFUSED`…), found anywhere along its chain of causes; a write
    /// refused by the free-space reserve gives `ENOSPC`, as a full disk would.
    pub fn os_errno(&self) -> Option<i32> {
        let mut next = std::error::Error::source(self);
        while let Some(err) = next {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                if let Some(errno) = io.raw_os_error() {
                    return Some(errno);
                }
                // An io::Error's source() skips the error it wraps.
                if let Some(inner) = io.get_ref() {
                    next = Some(inner);
                    continue;
                }
            }
            next = err.source();
        }
        None
    }

    /// The HTTP status of the registry's answer that made this error
    /// (401, 404, 503…); `None` for an error that had no such answer.
    pub fn http_status(&self) -> Option<u16> {
        self.http_status
    }

    /// An I/O error on `path`, keeping the OS error (so its errno) as the
    /// source and its text in the message.
    pub(crate) fn io_at(what: &str, path: &std::path::Path, err: std::io::Error) -> Error {
        Error::new(ErrorKind::Io, format!("{what} {}: {err}", path.display())).with_source(err)
    }

    /// An I/O error with nothing more to name than the error itself.
    pub(crate) fn io_bare(err: std::io::Error) -> Error {
        Error::new(ErrorKind::Io, err.to_string()).with_source(err)
    }

    /// Recovers an `Error` that crossed an `io::Read`/`AsyncRead` boundary
    /// wrapped in an `io::Error`; any other I/O error becomes `fallback`.
    pub(crate) fn from_io(
        err: std::io::Error,
        fallback: impl FnOnce(std::io::Error) -> Error,
    ) -> Error {
        match err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
        {
            Some(inner) => inner.clone(),
            None => fallback(err),
        }
    }

    /// The error for a panic caught while doing `what`, with its message.
    pub(crate) fn panicked(what: &str, panic: &(dyn std::any::Any + Send)) -> Error {
        Error::internal(format!("{what} panicked: {}", panic_message(panic)))
    }

    /// Wraps this error so it can travel through `io::Read` and come back out intact.
    pub(crate) fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.prefix(), self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as _)
    }
}

/// The text a panic was raised with, when it has one.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_kind_then_the_message() {
        let err = Error::not_found("docker.io/library/x:1");
        assert_eq!(err.to_string(), "not found: docker.io/library/x:1");
        assert_eq!(err.message(), "docker.io/library/x:1");
        assert_eq!(Error::internal("boom").to_string(), "internal error: boom");
    }

    #[test]
    fn os_errno_is_found_along_the_chain() {
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let err = Error::io_at("writing", std::path::Path::new("/x"), enospc);
        assert_eq!(err.kind(), ErrorKind::Io);
        assert_eq!(err.os_errno(), Some(libc::ENOSPC));
        assert!(std::error::Error::source(&err).is_some());
        // Through an io::Error that wraps another error, and through an Error
        // that is itself the source of another.
        let wrapped = Error::network("x").with_source(err.clone().into_io());
        assert_eq!(wrapped.os_errno(), Some(libc::ENOSPC));
        assert_eq!(Error::network("x").os_errno(), None);
    }

    #[test]
    fn an_error_survives_a_trip_through_io() {
        let err =
            Error::io_bare(std::io::Error::from_raw_os_error(libc::EROFS)).with_http_status(404);
        let back = Error::from_io(err.clone().into_io(), |_| unreachable!());
        assert_eq!(back.to_string(), err.to_string());
        assert_eq!(back.kind(), ErrorKind::Io);
        assert_eq!(back.os_errno(), Some(libc::EROFS));
        assert_eq!(back.http_status(), Some(404));
    }
}
