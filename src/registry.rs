//! Remote access: manifests and blobs from registries through oci-client.
//! This layer turns oci-client's errors into ours and bounds every read by
//! the size the caller expects; it does not decide what to trust, the caller
//! verifies digests (and manifests are checked here against the pinned
//! digest and `Docker-Content-Digest`).

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use oci_client::client::{ClientConfig, ClientProtocol, LayerDescriptor};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use once_cell::sync::OnceCell;

use crate::digest::{check_size, Digest};
use crate::error::{Error, Result};

/// The most bytes a manifest or config may have; larger ones are refused so
/// a hostile registry cannot make us hold arbitrary amounts in memory.
pub(crate) const MAX_METADATA_BYTES: u64 = 4 << 20;

const USER_AGENT: &str = concat!("oci-cache/", env!("CARGO_PKG_VERSION"));

/// Chunks of a blob as they arrive from the network.
pub(crate) type BlobStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Clients for every registry this cache talks to.
pub(crate) struct Registry {
    https: OnceCell<Client>,
    plain_http: OnceCell<Client>,
    insecure_hosts: Vec<String>,
}

impl Registry {
    /// `insecure_hosts` (`host[:port]`) are reached over plain HTTP, as are
    /// loopback hosts; everything else needs HTTPS.
    pub(crate) fn new(insecure_hosts: Vec<String>) -> Registry {
        Registry {
            https: OnceCell::new(),
            plain_http: OnceCell::new(),
            insecure_hosts,
        }
    }

    /// The client for `reference`'s registry, built on first use: building
    /// one loads the system's CA certificates, which a warm cache never needs.
    async fn client(&self, reference: &Reference) -> Result<&Client> {
        let host = reference.resolve_registry();
        let (cell, protocol) = if is_loopback(host) || self.insecure_hosts.iter().any(|h| h == host)
        {
            (&self.plain_http, ClientProtocol::Http)
        } else {
            (&self.https, ClientProtocol::Https)
        };
        let client = cell.get_or_try_init(|| {
            Client::try_from(ClientConfig {
                protocol,
                user_agent: USER_AGENT,
                ..ClientConfig::default()
            })
            .map_err(|e| Error::InvalidArgument(format!("registry client configuration: {e}")))
        })?;
        // Blob pulls take no credentials argument: register them for the host first.
        client
            .store_auth_if_needed(host, &RegistryAuth::Anonymous)
            .await;
        Ok(client)
    }

    /// The digest the registry has for `reference` (a HEAD request when it can).
    pub(crate) async fn resolve(&self, reference: &Reference) -> Result<Digest> {
        let client = self.client(reference).await?;
        let digest = client
            .fetch_manifest_digest(reference, &RegistryAuth::Anonymous)
            .await
            .map_err(|e| map_error(e, &format!("manifest {reference}")))?;
        Digest::parse(&digest)
    }

    /// The exact bytes of the manifest or index `reference` names, and their
    /// digest, verified against the reference's pinned digest and the
    /// registry's `Docker-Content-Digest`.
    pub(crate) async fn manifest(&self, reference: &Reference) -> Result<(Vec<u8>, Digest)> {
        let what = format!("manifest {reference}");
        let accepted = [
            OCI_IMAGE_MEDIA_TYPE,
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ];
        let client = self.client(reference).await?;
        let (body, digest) = client
            .pull_manifest_raw(reference, &RegistryAuth::Anonymous, &accepted)
            .await
            .map_err(|e| map_error(e, &what))?;
        if body.len() as u64 > MAX_METADATA_BYTES {
            return Err(Error::InvalidContent(format!(
                "{what} is {} bytes, over the {MAX_METADATA_BYTES}-byte limit",
                body.len()
            )));
        }
        let digest = Digest::parse(&digest)?;
        digest.verify(&body, &what)?;
        if let Some(pinned) = reference.digest() {
            Digest::parse(pinned)?.verify(&body, &what)?;
        }
        Ok((body.to_vec(), digest))
    }

    /// A stream of the blob `digest` from `reference`'s repository (or the
    /// descriptor's `urls`), which fails instead of yielding more than `size`
    /// bytes. The caller hashes what it reads.
    pub(crate) async fn blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        urls: &Option<Vec<String>>,
    ) -> Result<BlobStream> {
        let what = format!("blob {digest} of {}", reference.repository());
        let descriptor = LayerDescriptor {
            digest: digest.as_str(),
            urls,
        };
        let client = self.client(reference).await?;
        let stream = client
            .pull_blob_stream(reference, &descriptor)
            .await
            .map_err(|e| map_error(e, &what))?;
        let mut received = 0u64;
        let bounded = stream.scan(false, move |failed, chunk| {
            if *failed {
                return std::future::ready(None);
            }
            let chunk = chunk.and_then(|bytes| {
                received += bytes.len() as u64;
                if received > size {
                    return Err(Error::DigestMismatch(format!(
                        "{what}: registry sent more than the descriptor's {size} bytes"
                    ))
                    .into_io());
                }
                Ok(bytes)
            });
            *failed = chunk.is_err();
            std::future::ready(Some(chunk))
        });
        Ok(Box::pin(bounded))
    }

    /// The whole of a small blob (a config), verified and at most
    /// [`MAX_METADATA_BYTES`].
    pub(crate) async fn small_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>> {
        let what = format!("blob {digest} of {}", reference.repository());
        if size > MAX_METADATA_BYTES {
            return Err(Error::InvalidContent(format!(
                "{what} is {size} bytes, over the {MAX_METADATA_BYTES}-byte limit"
            )));
        }
        let mut stream = self.blob(reference, digest, size, &None).await?;
        let mut content = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            content.extend_from_slice(&chunk.map_err(|e| map_stream_error(e, &what))?);
        }
        check_size(content.len() as u64, size, &what)?;
        digest.verify(&content, &what)?;
        Ok(content)
    }
}

/// Classifies an error that came out of a blob stream.
pub(crate) fn map_stream_error(err: io::Error, what: &str) -> Error {
    Error::from_io(err, |err| {
        let digest_error = err
            .get_ref()
            .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>());
        if digest_error {
            Error::DigestMismatch(format!("{what}: {err}"))
        } else {
            Error::Network(format!("{what}: reading from the registry: {err}"))
        }
    })
}

fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn map_error(err: OciDistributionError, what: &str) -> Error {
    use OciDistributionError as E;
    match err {
        E::UnauthorizedError { url } => Error::Unauthorized(format!("{what}: {url} answered 401")),
        E::AuthenticationFailure(msg) => Error::Unauthorized(format!("{what}: {msg}")),
        E::RegistryError { envelope, url } => {
            let not_found = envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            });
            let denied = envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Denied | OciErrorCode::Unauthorized));
            let messages: Vec<&str> = envelope.errors.iter().map(|e| e.message.as_str()).collect();
            let msg = format!("{what}: {url}: {}", messages.join("; "));
            if not_found {
                Error::NotFound(msg)
            } else if denied {
                Error::Unauthorized(msg)
            } else {
                Error::Network(msg)
            }
        }
        E::ServerError { code, url, message } => {
            let msg = format!("{what}: {url} answered {code}: {}", message.trim());
            match code {
                404 => Error::NotFound(msg),
                401 | 403 => Error::Unauthorized(msg),
                _ => Error::Network(msg),
            }
        }
        E::DigestError(e) => Error::DigestMismatch(format!("{what}: {e}")),
        E::UnsupportedMediaTypeError(t) => Error::Unsupported(format!("{what}: media type {t}")),
        E::UnsupportedSchemaVersionError(v) => {
            Error::Unsupported(format!("{what}: schema version {v}"))
        }
        E::ManifestParsingError(msg) | E::VersionedParsingError(msg) => {
            Error::InvalidContent(format!("{what}: {msg}"))
        }
        E::JsonError(e) => Error::InvalidContent(format!("{what}: {e}")),
        E::RequestError(e) => Error::Network(format!("{what}: {}", error_chain(&e))),
        other => Error::Network(format!("{what}: {other}")),
    }
}

/// An error and its causes on one line: reqwest's own message alone hides
/// whether the connection was refused, reset or failed TLS.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn loopback_hosts_use_plain_http() {
        for host in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:80",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["registry.example:5000", "10.0.0.1:5000", "index.docker.io"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
