//! Remote access: manifests and blobs from registries through oci-client,
//! one client per host with that host's TLS roots and credentials. This
//! layer retries transient failures, tries mirrors (configured or from
//! hosts.toml) before the registry, resumes broken blob downloads, bounds
//! every read by the size the caller expects and every wait by the stall
//! timeout, and turns oci-client's errors into ours. Manifests are checked
//! here against the pinned digest and `Docker-Content-Digest`; blobs are
//! verified by the caller, which hashes what it reads.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol, LayerDescriptor,
    SizedStream,
};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use oci_client::{Client, Reference};

use crate::credentials::{self, Credential, CredentialSources};
use crate::digest::{check_size, Digest};
use crate::error::{Error, Result};
use crate::hosts::{self, HostEntry, RegistryHosts};

/// The most bytes a manifest or config may have; larger ones are refused so
/// a hostile registry cannot make us hold arbitrary amounts in memory.
pub(crate) const MAX_METADATA_BYTES: u64 = 4 << 20;

const USER_AGENT: &str = concat!("oci-cache/", env!("CARGO_PKG_VERSION"));

/// Chunks of a blob as they arrive from the network; errors in it wrap an [`Error`].
pub(crate) type BlobStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// How registries are reached: which hosts speak plain HTTP, which CAs are
/// trusted, and where credentials come from.
#[derive(Debug, Clone)]
pub(crate) struct RegistryConfig {
    /// `host[:port]`s reached over plain HTTP, besides loopback hosts.
    pub insecure_hosts: Vec<String>,
    /// PEM files of CAs trusted for every registry.
    pub ca_certificates: Vec<PathBuf>,
    /// PEM files of CAs trusted for one `host[:port]`.
    pub host_ca_certificates: Vec<(String, PathBuf)>,
    pub credentials: CredentialSources,
    /// Tries per request (and resumes per blob) on transient failures.
    pub attempts: u32,
    /// `(registry, mirror)` pairs, `host[:port]` each, tried in order
    /// before the registry.
    pub mirrors: Vec<(String, String)>,
    /// A containerd `certs.d`-style directory of `<registry>/hosts.toml`.
    pub hosts_dir: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure_hosts: Vec::new(),
            ca_certificates: Vec::new(),
            host_ca_certificates: Vec::new(),
            credentials: CredentialSources::default(),
            attempts: 4,
            mirrors: Vec::new(),
            hosts_dir: None,
        }
    }
}

/// Clients for every registry this cache talks to, one per host.
pub(crate) struct Registry {
    config: RegistryConfig,
    // One client per host: each has its own TLS roots and credentials, and
    // oci-client keeps the first credentials stored for a host.
    hosts: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Host>>>>,
    // hosts.toml files read so far, by registry, and the hosts they list.
    hosts_files: Mutex<HashMap<String, Option<RegistryHosts>>>,
    listed_hosts: Mutex<HashMap<String, HostEntry>>,
}

/// A host's client and the credentials it presents.
#[derive(Clone)]
struct Host {
    client: Client,
    auth: RegistryAuth,
}

impl Registry {
    pub(crate) fn new(config: RegistryConfig) -> Registry {
        Registry {
            config,
            hosts: Mutex::default(),
            hosts_files: Mutex::default(),
            listed_hosts: Mutex::default(),
        }
    }

    /// The client for `reference`'s registry, made on first use: making one
    /// loads CA certificates and may run a credential helper, which a warm
    /// cache never needs.
    async fn host(&self, reference: &Reference) -> Result<Host> {
        let name = reference.resolve_registry().to_owned();
        let cell = {
            let mut hosts = self
                .hosts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            hosts.entry(name.clone()).or_default().clone()
        };
        let host = cell.get_or_try_init(|| self.connect(name)).await?;
        Ok(host.clone())
    }

    async fn connect(&self, name: String) -> Result<Host> {
        let host_cas: Vec<&PathBuf> = self
            .config
            .host_ca_certificates
            .iter()
            .filter(|(h, _)| *h == name)
            .map(|(_, p)| p)
            .collect();
        let listed = self
            .listed_hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned();
        // A hosts.toml entry says its scheme; otherwise a loopback registry
        // speaks plain HTTP unless it was given a CA of its own.
        let plain_http = self.config.insecure_hosts.contains(&name)
            || match &listed {
                Some(entry) => entry.plain_http,
                None => is_loopback(&name) && host_cas.is_empty(),
            };
        let listed_cas = listed.iter().flat_map(|entry| &entry.ca);
        let extra_root_certificates = self
            .config
            .ca_certificates
            .iter()
            .chain(host_cas)
            .chain(listed_cas)
            .map(|path| {
                let data = std::fs::read(path)
                    .map_err(|e| Error::io("reading CA certificate", path, e))?;
                Ok(Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let config = ClientConfig {
            accept_invalid_certificates: listed.is_some_and(|entry| entry.skip_verify),
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            extra_root_certificates,
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        // Building a client parses the system's CA bundle (about 0.3 s):
        // off the runtime's threads, so that nothing else waits on it.
        let client = tokio::task::spawn_blocking(move || Client::try_from(config))
            .await
            .map_err(|e| Error::Network(format!("building the client for registry {name}: {e}")))?
            .map_err(|e| Error::InvalidArgument(format!("client for registry {name}: {e}")))?;

        let sources = self.config.credentials.clone();
        let lookup_name = name.clone();
        let credential = tokio::task::spawn_blocking(move || {
            credentials::lookup(&lookup_name, &sources, &credentials::ProcessEnvironment)
        })
        .await
        .map_err(|e| Error::Unauthorized(format!("looking up credentials for {name}: {e}")))??;
        let auth = match credential {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { username, password } => RegistryAuth::Basic(username, password),
            Credential::IdentityToken(_) => {
                return Err(Error::Unsupported(format!(
                    "the credentials for {name} are an identity token (OAuth2 refresh token), which is not supported yet; \
                     store a username and password instead"
                )))
            }
        };
        // Calls without a credentials argument (blob pulls) find them here.
        client.store_auth_if_needed(&name, &auth).await;
        Ok(Host { client, auth })
    }

    /// Runs `operation` against `reference`'s mirrors in order, then its
    /// registry: a mirror that cannot be reached, fails with 5xx after its
    /// retries, or lacks the content (404) hands over to the next. Returns
    /// the result with the endpoint (a reference to the mirror or the
    /// registry itself) and the host that served it.
    /// `resolving` says the request turns a tag into a manifest, which only
    /// hosts with the `resolve` capability may answer.
    async fn served<T, F, Fut>(
        &self,
        reference: &Reference,
        what: &str,
        limits: Limits,
        resolving: bool,
        operation: F,
    ) -> Result<(T, Reference, Host)>
    where
        F: Fn(Host, Reference) -> Fut,
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let configured = self
            .config
            .mirrors
            .iter()
            .filter(|(registry, _)| registry == reference.resolve_registry())
            .map(|(_, mirror)| mirror.clone());
        let listed = self
            .hosts_file(reference)?
            .map(|hosts| hosts.mirrors)
            .unwrap_or_default();
        let listed = listed
            .into_iter()
            .filter(|entry| entry.resolve || !resolving)
            .map(|entry| entry.host);
        for mirror in configured.chain(listed) {
            let mut endpoint = reference.clone();
            endpoint.set_mirror_registry(mirror);
            match self.authorized(endpoint, what, limits, &operation).await {
                Err(Error::Network(_) | Error::NotFound(_)) => continue,
                outcome => return outcome,
            }
        }
        self.authorized(reference.clone(), what, limits, &operation)
            .await
    }

    /// What `hosts.toml` says about `reference`'s registry, read once per
    /// registry; the TLS settings of the hosts it lists are kept for
    /// [`connect`](Self::connect).
    fn hosts_file(&self, reference: &Reference) -> Result<Option<RegistryHosts>> {
        let Some(dir) = &self.config.hosts_dir else {
            return Ok(None);
        };
        let registry = reference.registry();
        let mut files = self.hosts_files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hosts) = files.get(registry) {
            return Ok(hosts.clone());
        }
        let hosts = hosts::load(dir, registry)?;
        if let Some(hosts) = &hosts {
            let mut listed = self.listed_hosts.lock().unwrap_or_else(|p| p.into_inner());
            for entry in &hosts.mirrors {
                listed.insert(entry.host.clone(), entry.clone());
            }
            // `server` describes how to reach the registry itself.
            if let Some(server) = &hosts.server {
                listed.insert(reference.resolve_registry().to_owned(), server.clone());
            }
        }
        files.insert(registry.to_owned(), hosts.clone());
        Ok(hosts)
    }

    /// Runs `operation` with `endpoint`'s host, retrying transient failures.
    /// A 401 gets one more try after an explicit token request: that
    /// surfaces why a token exchange failed (oci-client's implicit one falls
    /// back to anonymous and hides it), and replaces a token that expired.
    async fn authorized<T, F, Fut>(
        &self,
        endpoint: Reference,
        what: &str,
        limits: Limits,
        operation: &F,
    ) -> Result<(T, Reference, Host)>
    where
        F: Fn(Host, Reference) -> Fut,
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let host = self.host(&endpoint).await?;
        let attempts = self.config.attempts.max(1);
        let attempt = |host: Host| {
            let endpoint = endpoint.clone();
            async move {
                for retry in 1.. {
                    let outcome = limits
                        .stalling(what, async {
                            Ok(operation(host.clone(), endpoint.clone()).await)
                        })
                        .await?;
                    match outcome {
                        Err(err) if retry < attempts && is_transient(&err) => {
                            tokio::time::sleep(backoff(retry)).await
                        }
                        outcome => return outcome.map_err(|e| map_error(e, what)),
                    }
                }
                unreachable!("the loop returns on its last attempt")
            }
        };
        let value = match attempt(host.clone()).await {
            Err(Error::Unauthorized(_)) => {
                let token = host
                    .client
                    .auth(&endpoint, &host.auth, RegistryOperation::Pull);
                limits
                    .stalling(what, async {
                        token
                            .await
                            .map_err(|e| map_error(e, &format!("{what}: token request")))
                    })
                    .await?;
                attempt(host.clone()).await?
            }
            other => other?,
        };
        Ok((value, endpoint, host))
    }

    /// The digest the registry has for `reference` (a HEAD request when it can).
    pub(crate) async fn resolve(&self, reference: &Reference, limits: Limits) -> Result<Digest> {
        let what = format!("manifest {reference}");
        let digest = self
            .served(
                reference,
                &what,
                limits,
                true,
                |host, endpoint| async move {
                    host.client
                        .fetch_manifest_digest(&endpoint, &host.auth)
                        .await
                },
            )
            .await?
            .0;
        Digest::parse(&digest)
    }

    /// The exact bytes of the manifest or index `reference` names, and their
    /// digest, verified against the reference's pinned digest and the
    /// registry's `Docker-Content-Digest`.
    pub(crate) async fn manifest(
        &self,
        reference: &Reference,
        limits: Limits,
    ) -> Result<(Vec<u8>, Digest)> {
        let what = format!("manifest {reference}");
        let accepted = [
            OCI_IMAGE_MEDIA_TYPE,
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
        ];
        let (body, digest) = self
            .served(
                reference,
                &what,
                limits,
                reference.digest().is_none(),
                |host, endpoint| async move {
                    host.client
                        .pull_manifest_raw(&endpoint, &host.auth, &accepted)
                        .await
                },
            )
            .await?
            .0;
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
    /// bytes or going quiet for longer than the stall timeout. The caller
    /// hashes what it reads.
    pub(crate) async fn blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        urls: &Option<Vec<String>>,
        limits: Limits,
    ) -> Result<BlobStream> {
        let what = format!("blob {digest} of {}", reference.repository());
        let descriptor = LayerDescriptor {
            digest: digest.as_str(),
            urls,
        };
        let (stream, endpoint, host) = self
            .served(reference, &what, limits, false, |host, endpoint| {
                let descriptor = &descriptor;
                async move { host.client.pull_blob_stream(&endpoint, descriptor).await }
            })
            .await?;
        // Resumes go to whichever endpoint served the blob.
        let download = BlobDownload {
            client: host.client,
            reference: endpoint,
            digest: digest.to_string(),
            urls: urls.clone(),
            size,
            what,
            limits,
            stream: Some(stream),
            received: 0,
            skip: 0,
            resumes_left: self.config.attempts.saturating_sub(1),
        };
        let chunks = futures_util::stream::unfold(download, |mut download| async move {
            let chunk = download.next_chunk().await?;
            Some((chunk.map_err(Error::into_io), download))
        });
        Ok(Box::pin(chunks))
    }

    /// The whole of a small blob (a config), verified and at most
    /// [`MAX_METADATA_BYTES`].
    pub(crate) async fn small_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        limits: Limits,
    ) -> Result<Vec<u8>> {
        let what = format!("blob {digest} of {}", reference.repository());
        if size > MAX_METADATA_BYTES {
            return Err(Error::InvalidContent(format!(
                "{what} is {size} bytes, over the {MAX_METADATA_BYTES}-byte limit"
            )));
        }
        let mut stream = self.blob(reference, digest, size, &None, limits).await?;
        let mut content = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            content.extend_from_slice(
                &chunk.map_err(|e| Error::from_io(e, |e| Error::Network(e.to_string())))?,
            );
        }
        check_size(content.len() as u64, size, &what)?;
        digest.verify(&content, &what)?;
        Ok(content)
    }
}

/// One blob download that picks up where a broken connection left it: a
/// Range request for the rest, or, when the server will not serve a range,
/// the whole blob again with the part already passed on skipped. The reader
/// hashes everything it gets, so the digest always covers the whole blob.
struct BlobDownload {
    client: Client,
    reference: Reference,
    digest: String,
    urls: Option<Vec<String>>,
    size: u64,
    what: String,
    limits: Limits,
    // None once the download has ended or failed.
    stream: Option<SizedStream>,
    received: u64,
    // Bytes at the start of a restarted response that were already passed on.
    skip: u64,
    resumes_left: u32,
}

impl BlobDownload {
    async fn next_chunk(&mut self) -> Option<Result<Bytes>> {
        loop {
            let stream = self.stream.as_mut()?;
            let next = self
                .limits
                .stalling(&self.what, async { Ok(stream.next().await) })
                .await;
            let interrupted = match next {
                Ok(Some(Ok(mut bytes))) => {
                    let skipped = self.skip.min(bytes.len() as u64);
                    self.skip -= skipped;
                    let _ = bytes.split_to(skipped as usize);
                    if bytes.is_empty() {
                        continue;
                    }
                    self.received += bytes.len() as u64;
                    if self.received > self.size {
                        self.stream = None;
                        return Some(Err(Error::DigestMismatch(format!(
                            "{}: registry sent more than the descriptor's {} bytes",
                            self.what, self.size
                        ))));
                    }
                    return Some(Ok(bytes));
                }
                Ok(None) if self.received + self.skip >= self.size => {
                    self.stream = None;
                    return None;
                }
                // The connection closed early: the rest is still owed.
                Ok(None) => Error::Network(format!(
                    "{}: the connection closed after {} of {} bytes",
                    self.what, self.received, self.size
                )),
                Ok(Some(Err(err))) => map_stream_error(err, &self.what),
                Err(err) => err,
            };
            if !matches!(interrupted, Error::Network(_)) || self.resumes_left == 0 {
                self.stream = None;
                return Some(Err(interrupted));
            }
            self.resumes_left -= 1;
            if let Err(err) = self.reconnect().await {
                self.stream = None;
                return Some(Err(err));
            }
        }
    }

    async fn reconnect(&mut self) -> Result<()> {
        tokio::time::sleep(backoff(self.resumes_left)).await;
        let descriptor = LayerDescriptor {
            digest: &self.digest,
            urls: &self.urls,
        };
        let (client, reference, offset) = (&self.client, &self.reference, self.received);
        let response = self
            .limits
            .stalling(&self.what, async {
                client
                    .pull_blob_stream_partial(reference, &descriptor, offset, None)
                    .await
                    .map_err(|e| map_error(e, &self.what))
            })
            .await?;
        let rest = self.size - self.received;
        (self.stream, self.skip) = match response {
            BlobResponse::Partial(stream) if stream.content_length == Some(rest) => {
                (Some(stream), 0)
            }
            // A range other than the one asked for: start over from byte 0.
            BlobResponse::Partial(_) => {
                let whole = client.pull_blob_stream(reference, &descriptor);
                let whole = self
                    .limits
                    .stalling(&self.what, async {
                        whole.await.map_err(|e| map_error(e, &self.what))
                    })
                    .await?;
                (Some(whole), self.received)
            }
            BlobResponse::Full(whole) => (Some(whole), self.received),
        };
        Ok(())
    }
}

/// How long to wait before retry number `attempt` (1-based, counted from
/// the first retry): exponential from 200 ms, capped at 10 s, with jitter
/// so that many clients do not retry in step.
fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let base = Duration::from_millis(200) * 2u32.saturating_pow(attempt.saturating_sub(1).min(6));
    let base = base.min(Duration::from_secs(10));
    // RandomState is seeded per instance: a cheap source of jitter.
    let noise = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    base.mul_f64(0.5 + (noise % 1000) as f64 / 1000.0)
}

/// Whether a failed request is worth repeating: connection trouble, 5xx
/// and 429. Everything else would fail the same way again.
fn is_transient(err: &OciDistributionError) -> bool {
    match err {
        OciDistributionError::RequestError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::Toomanyrequests),
        _ => false,
    }
}

/// Bounds on one call's network waits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    /// The longest wait for a response or for the next bytes of one.
    pub stall_timeout: Option<Duration>,
}

impl Limits {
    /// Runs `wait`, failing with a timeout if it takes longer than the stall timeout.
    async fn stalling<T>(&self, what: &str, wait: impl Future<Output = Result<T>>) -> Result<T> {
        let Some(limit) = self.stall_timeout else {
            return wait.await;
        };
        tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| {
            Err(Error::Timeout(format!(
                "{what}: nothing received for {limit:?} (stall timeout)"
            )))
        })
    }
}

/// Classifies an error that came out of oci-client's blob stream.
fn map_stream_error(err: io::Error, what: &str) -> Error {
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
