//! TLS for registry clients (rustls with ring): a configuration per host
//! whose certificate check uses the system's CA roots, read once per
//! process when an https host's client is made (or, for a plain-HTTP host
//! redirected to https, at that handshake). Building a configuration reads
//! no root, so a plain-HTTP registry or a store hit never loads one.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::{Error, Result};

/// The rustls configuration for one host's client: the system's roots plus
/// `ca_files`, or no certificate check at all when `skip_verify`. A client
/// for a plain-HTTP host gets one too, for redirects to an https location.
pub(crate) fn client_config(ca_files: &[PathBuf], skip_verify: bool) -> Result<ClientConfig> {
    let mut extra = Vec::new();
    for path in ca_files {
        let pem =
            std::fs::read(path).map_err(|e| Error::io_at("reading CA certificate", path, e))?;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate = certificate.map_err(|e| {
                Error::invalid_argument(format!("CA certificate {}: {e}", path.display()))
            })?;
            // Parsed now, so that a file that is no certificate is refused
            // when the client is made, not at its first handshake.
            webpki::anchor_from_trusted_cert(&certificate).map_err(|e| {
                Error::invalid_argument(format!("CA certificate {}: {e}", path.display()))
            })?;
            extra.push(certificate);
        }
    }
    let verifier = Verifier {
        provider: provider(),
        extra,
        skip_verify,
        webpki: OnceLock::new(),
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid_argument(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // The clients speak HTTP/1.1 only (reqwest is built without http2).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// ring: no cmake and no system library to link (aws-lc-rs needs both).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads the system's roots now unless read already: an https host's
/// client calls this off the runtime's threads, so that its first
/// handshake does not wait on the files there.
pub(crate) fn read_system_roots() {
    system_roots();
}

/// The system's CA certificates (`SSL_CERT_FILE`, `SSL_CERT_DIR`, else the
/// distribution's bundle), read on first use and kept for the process. A
/// file that cannot be read or parsed is skipped, as OpenSSL does: hosts
/// then need a CA of their own.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// Checks a server's certificate against the system's roots and the host's
/// own CAs, both read (and parsed into a trust store) only on the first
/// handshake; the handshake's signatures need no roots.
#[derive(Debug)]
struct Verifier {
    provider: Arc<CryptoProvider>,
    extra: Vec<CertificateDer<'static>>,
    skip_verify: bool,
    webpki: OnceLock<std::result::Result<Arc<WebPkiServerVerifier>, rustls::Error>>,
}

impl Verifier {
    fn webpki(&self) -> std::result::Result<&Arc<WebPkiServerVerifier>, rustls::Error> {
        self.webpki
            .get_or_init(|| {
                let mut roots = RootCertStore::empty();
                roots.add_parsable_certificates(system_roots().iter().cloned());
                roots.add_parsable_certificates(self.extra.iter().cloned());
                if roots.is_empty() {
                    return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                        rustls::OtherError(Arc::new(NoRoots)),
                    )));
                }
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(format!("certificate verifier: {e}")))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Whether `end_entity` is itself one of the trusted certificates, as a
    /// self-signed registry certificate given as its own CA is. webpki
    /// refuses such a certificate when it is marked as a CA (`openssl req
    /// -x509` marks it so), which OpenSSL and Go accept: trust it when it
    /// is byte for byte a trusted one and names `server_name`.
    fn pinned(&self, end_entity: &CertificateDer<'_>, server_name: &ServerName<'_>) -> bool {
        let trusted = self.extra.iter().chain(system_roots());
        trusted
            .into_iter()
            .any(|c| c.as_ref() == end_entity.as_ref())
            && webpki::EndEntityCert::try_from(end_entity)
                .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(server_name).is_ok())
    }
}

/// No system roots and no CA of the host's own: nothing can be trusted.
#[derive(Debug)]
struct NoRoots;

impl std::fmt::Display for NoRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "no CA certificates: none found on the system (SSL_CERT_FILE, SSL_CERT_DIR) \
             and none given for this host",
        )
    }
}

impl std::error::Error for NoRoots {}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if self.skip_verify {
            return Ok(ServerCertVerified::assertion());
        }
        let verified = self.webpki()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verified {
            // webpki checks the validity period before the CA flag, so a
            // certificate refused for its flag is within its dates.
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(ref other)))
                if other
                    .0
                    .downcast_ref::<webpki::Error>()
                    .is_some_and(|e| *e == webpki::Error::CaUsedAsEndEntity)
                    && self.pinned(end_entity, server_name) =>
            {
                Ok(ServerCertVerified::assertion())
            }
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
