//! Self-signed certificates made by the `openssl` CLI, for HTTPS servers and
//! the CA a client must trust.
//!
//! ```no_run
//! use harness::TlsCert;
//! let dir = tempfile::tempdir().unwrap();
//! let cert = TlsCert::generate(dir.path(), &["IP:127.0.0.1".to_owned()]);
//! // cert.cert is the certificate (and CA) PEM, cert.key the key.
//! # let _ = cert;
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A self-signed certificate and its key, made by `openssl req -x509`.
#[derive(Debug, Clone)]
pub struct TlsCert {
    /// The certificate, PEM: also the CA to trust.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsCert {
    /// Writes `cert.pem` and `key.pem` into `dir` (created if missing), the
    /// certificate valid for one day for `subject_alt_names` such as
    /// `IP:127.0.0.1` or `DNS:localhost`.
    pub fn generate(dir: &Path, subject_alt_names: &[String]) -> TlsCert {
        std::fs::create_dir_all(dir).expect("creating a directory for a certificate");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let output = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-addext"])
            .arg(format!("subjectAltName={}", subject_alt_names.join(",")))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running openssl (apt-get install openssl): {e}"));
        assert!(
            output.status.success() && cert.is_file() && key.is_file(),
            "openssl req -x509 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        TlsCert { cert, key }
    }
}
