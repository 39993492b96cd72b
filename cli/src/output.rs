//! How a command ends: the exit code table (library errors by kind), the
//! one-line error on stderr, and writing results to stdout.

use std::io::Write;

use oci_cache::{Error, ErrorKind};

/// Exit code: verify found corrupt files it did not remove.
pub const EXIT_CORRUPT: u8 = 1;
/// Exit code: bad input, including the library's invalid-argument errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: a bug (OCI_E_INTERNAL, or a panic of the command line).
pub const EXIT_INTERNAL: u8 = 14;

/// Why a command failed: an exit code and one line for stderr.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    /// A usage error carrying a library error's text.
    pub fn usage_of(err: Error) -> Failure {
        Failure::usage(err.to_string())
    }

    /// Writes the error line; the caller exits with `code`.
    pub fn report(&self) {
        let line = self.message.replace('\n', " ");
        let _ = writeln!(std::io::stderr(), "oci-cache: {line}");
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Failure {
        Failure {
            code: exit_code(err.kind()),
            message: err.to_string(),
        }
    }
}

/// 1 minus the C status code of the kind (OCI_E_NOT_FOUND = -2 gives 3),
/// so the table follows include/oci_cache.h and stays stable.
pub fn exit_code(kind: ErrorKind) -> u8 {
    // Status codes run from -1 to -13: exit codes 2 to 14.
    u8::try_from(1 - oci_cache::ffi::status_of(kind)).unwrap_or(EXIT_INTERNAL)
}

/// Writes `text` to stdout; a closed pipe (`| head`) ends the output
/// quietly rather than failing the command.
pub fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::from(Error::io(format!("writing to stdout: {e}"))))
        }
        _ => Ok(()),
    }
}

/// Writes one JSON document and a newline.
pub fn print_json(value: &serde_json::Value) -> Result<(), Failure> {
    print(&format!("{value}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_error_codes_start_at_usage_and_end_at_internal() {
        assert_eq!(exit_code(ErrorKind::InvalidArgument), EXIT_USAGE);
        assert_eq!(exit_code(ErrorKind::NotFound), 3);
        assert_eq!(exit_code(ErrorKind::Internal), EXIT_INTERNAL);
    }
}
