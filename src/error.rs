//! The one error type of the library. Each variant is one kind of failure and
//! maps to exactly one C status code, so callers can branch on the variant and
//! show the message, which names the reference, digest, path or URL involved.

/// What went wrong, with a message that names the thing involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A malformed reference, platform, digest or option.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A manifest, blob, tag, repository or platform that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The registry refused the credentials or asked for some.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A media type, schema version or digest algorithm this library does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Content that does not hash to its digest or diff_id, or whose size differs.
    #[error("digest mismatch: {0}")]
    DigestMismatch(String),
    /// Malformed JSON, an oversized manifest or config, or a corrupt compressed stream.
    #[error("invalid content: {0}")]
    InvalidContent(String),
    /// Connection, TLS or HTTP failure talking to a registry.
    #[error("network: {0}")]
    Network(String),
    /// A local file system error; the message carries the path and the OS error.
    #[error("io: {0}")]
    Io(String),
    /// The caller canceled the operation.
    #[error("canceled: {0}")]
    Canceled(String),
    /// A deadline or stall timeout expired.
    #[error("timeout: {0}")]
    Timeout(String),
    /// A panic caught inside the library, e.g. in a progress callback or a
    /// worker thread: reported as an error rather than taken as the end of
    /// the work.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Shorthand for results of this library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`, keeping the OS error text (and so the errno name).
    pub(crate) fn io(what: &str, path: &std::path::Path, err: std::io::Error) -> Error {
        Error::Io(format!("{what} {}: {err}", path.display()))
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
        Error::Internal(format!("{what} panicked: {}", panic_message(panic)))
    }

    /// Wraps this error so it can travel through `io::Read` and come back out intact.
    pub(crate) fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
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
