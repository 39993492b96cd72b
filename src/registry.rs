//! Remote access: manifests and blobs over the registry HTTP API, one
//! client per host with that host's TLS roots and credentials. This layer
//! authorizes requests (through [`auth`](crate::auth)), retries transient
//! failures as the server asks (`Retry-After`), tries mirrors (configured or
//! from hosts.toml) before the registry, resumes broken blob downloads,
//! bounds every read by the size the caller expects and every wait by its
//! time limit (connecting, response headers, stalls), and names what failed
//! in every error. Manifests are
//! checked here against the pinned digest and `Docker-Content-Digest`; blobs
//! are verified by the caller, which hashes what it reads.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use oci_client::Reference;
use reqwest::header::{
    HeaderMap, ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{RequestBuilder, Response, StatusCode};

use crate::auth::{Challenge, Tokens};
use crate::credentials::{self, Credential, CredentialSources};
use crate::digest::{check_size, Digest};
use crate::error::{Error, ErrorKind, Result};
use crate::hosts::{self, HostEntry, RegistryHosts};
use crate::http::{
    error_chain, host_of, read_limited, reason, BlobStream, ReadError, SendError, Timeouts,
};
use crate::tls;

pub(crate) use crate::http::Limits;

mod ranged;
pub(crate) use ranged::RangedBlob;

/// The most bytes a manifest or config may have; larger ones are refused so
/// a hostile registry cannot make us hold arbitrary amounts in memory.
pub(crate) const MAX_METADATA_BYTES: u64 = 4 << 20;

/// The most of an error answer's body read for its message.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// The longest wait a `Retry-After` header gets; a server asking for more
/// is waited on this long, and the call's deadline still applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How many times one request may fail to connect in time before it gives
/// up, whatever the attempts: a host that could not be reached twice in a
/// row is down, not flaky, and with the default 30 s connect timeout two
/// tries keep a black-holed registry under 90 s.
const MAX_CONNECT_TIMEOUTS: u32 = 2;

/// Where the registry API lives on a host unless hosts.toml says otherwise.
const STANDARD_API_ROOT: &str = "/v2";

const USER_AGENT: &str = concat!("oci-cache/", env!("CARGO_PKG_VERSION"));

/// The manifest media types asked for, in every `Accept`.
const MANIFEST_MEDIA_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

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
    /// The limit of each network step.
    pub timeouts: Timeouts,
    /// When and how a blob is fetched as parallel ranges.
    pub ranges: RangeConfig,
}

/// Ranged download of one blob: a blob of at least `threshold` bytes (0:
/// never) is fetched as bounded ranges over up to `connections` connections
/// at once, and never more than [`HOST_RANGE_CONNECTIONS`] per host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RangeConfig {
    pub threshold: u64,
    pub connections: usize,
}

impl Default for RangeConfig {
    fn default() -> Self {
        RangeConfig {
            threshold: 4 << 20,
            connections: 8,
        }
    }
}

/// Range requests in flight to one host, over every blob and call.
const HOST_RANGE_CONNECTIONS: usize = 8;

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
            timeouts: Timeouts::default(),
            ranges: RangeConfig::default(),
        }
    }
}

/// Clients for every registry this cache talks to, one per host.
pub(crate) struct Registry {
    config: RegistryConfig,
    hosts: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<Host>>>>>,
    // hosts.toml files read so far, by registry, and the hosts they list.
    hosts_files: Mutex<HashMap<String, Option<RegistryHosts>>>,
    listed_hosts: Mutex<HashMap<String, HostEntry>>,
}

/// One registry or mirror host: how to reach it, the credentials it gets,
/// and what it asked for to authorize requests.
struct Host {
    /// `http://host[:port]` or `https://host[:port]`.
    base: String,
    http: reqwest::Client,
    credential: Credential,
    // Learned from the host's first 401; until then requests go without
    // credentials, so a host that needs none never sees them.
    challenge: Mutex<Option<Challenge>>,
    tokens: Tokens,
    /// Range requests to this host in flight (see [`HOST_RANGE_CONNECTIONS`]).
    ranges: Arc<tokio::sync::Semaphore>,
}

/// Where a request for one repository goes: a mirror or the registry itself.
#[derive(Clone)]
struct Endpoint {
    host: Arc<Host>,
    /// The path of the registry API on the host, `/v2` unless hosts.toml
    /// says otherwise.
    api_root: String,
    repository: String,
    /// For a mirror, the registry whose content is asked for (`?ns=`).
    namespace: Option<String>,
}

/// A request that failed, and whether trying it again may help.
struct Failed {
    error: Error,
    transient: bool,
    /// How long the server asked us to wait (`Retry-After`).
    retry_after: Option<Duration>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed {
            transient: error.kind() == ErrorKind::Network,
            error,
            retry_after: None,
        }
    }
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

    /// The limits of one call: the stall timeout is the call's own when it
    /// sets one (`Some(None)`: off for that call), else the cache's.
    pub(crate) fn limits(&self, call_stall: Option<Option<Duration>>) -> Limits {
        Limits {
            response: self.config.timeouts.response,
            stall: call_stall.unwrap_or(self.config.timeouts.stall),
        }
    }

    /// The client for host `name`, made on first use: making one loads CA
    /// certificates and may run a credential helper, which a warm cache
    /// never needs.
    async fn host(&self, name: &str) -> Result<Arc<Host>> {
        let cell = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            hosts.entry(name.to_owned()).or_default().clone()
        };
        let host = cell
            .get_or_try_init(|| self.connect(name.to_owned()))
            .await?;
        Ok(host.clone())
    }

    async fn connect(&self, name: String) -> Result<Arc<Host>> {
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
        let ca_files: Vec<PathBuf> = self
            .config
            .ca_certificates
            .iter()
            .chain(host_cas)
            .chain(listed.iter().flat_map(|entry| &entry.ca))
            .cloned()
            .collect();
        let skip_verify = listed.is_some_and(|entry| entry.skip_verify);
        let sources = self.config.credentials.clone();
        // Building a client reads its CA files (and, for https, the system's
        // roots, once per process) and a credential helper is a process to
        // wait for: off the runtime's threads, so that nothing else waits
        // on them.
        let task_name = name.clone();
        let timeouts = self.config.timeouts;
        let (http, credential) = tokio::task::spawn_blocking(move || {
            if !plain_http && !skip_verify {
                tls::read_system_roots();
            }
            let http = http_client(&task_name, &ca_files, skip_verify, &timeouts)?;
            let credential =
                credentials::lookup(&task_name, &sources, &credentials::ProcessEnvironment)?;
            Ok::<_, Error>((http, credential))
        })
        .await
        .map_err(|e| Error::network(format!("setting up the client for registry {name}: {e}")))??;
        Ok(Arc::new(Host {
            base: format!("{}://{name}", if plain_http { "http" } else { "https" }),
            http,
            credential,
            challenge: Mutex::default(),
            tokens: Tokens::default(),
            ranges: Arc::new(tokio::sync::Semaphore::new(HOST_RANGE_CONNECTIONS)),
        }))
    }

    /// Runs `operation` against `reference`'s mirrors in order, then its
    /// registry: a mirror that cannot be reached (in time), does not answer
    /// in time, fails with 5xx after its retries, or lacks the content (404)
    /// hands over to the next. Returns
    /// the result with the endpoint that served it.
    /// `resolving` says the request turns a tag into a manifest, which only
    /// hosts with the `resolve` capability may answer.
    async fn served<T, F, Fut>(
        &self,
        reference: &Reference,
        resolving: bool,
        operation: F,
    ) -> Result<(T, Endpoint)>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failed>>,
    {
        let registry = reference.resolve_registry();
        let configured = self
            .config
            .mirrors
            .iter()
            .filter(|(upstream, _)| upstream == registry)
            .map(|(_, mirror)| (mirror.clone(), STANDARD_API_ROOT.to_owned()));
        let listed = self
            .hosts_file(reference)?
            .map(|hosts| hosts.mirrors)
            .unwrap_or_default();
        let listed = listed
            .into_iter()
            .filter(|entry| entry.resolve || !resolving)
            .map(|entry| (entry.host, entry.api_root));
        for (mirror, api_root) in configured.chain(listed) {
            let endpoint = Endpoint {
                host: self.host(&mirror).await?,
                api_root,
                repository: reference.repository().to_owned(),
                namespace: Some(reference.registry().to_owned()),
            };
            match self.attempted(&endpoint, &operation).await {
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Network | ErrorKind::NotFound | ErrorKind::Timeout
                    ) =>
                {
                    continue
                }
                outcome => return outcome.map(|value| (value, endpoint)),
            }
        }
        let endpoint = Endpoint {
            host: self.host(registry).await?,
            api_root: STANDARD_API_ROOT.to_owned(),
            repository: reference.repository().to_owned(),
            namespace: None,
        };
        let value = self.attempted(&endpoint, &operation).await?;
        Ok((value, endpoint))
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

    /// Runs `operation` on `endpoint` until it succeeds, fails for good, or
    /// has used the configured attempts; between tries it waits as long as
    /// the server asked, or backs off. Each step of each try is bounded by
    /// its own limit (see [`Limits`]).
    async fn attempted<T, F, Fut>(&self, endpoint: &Endpoint, operation: &F) -> Result<T>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failed>>,
    {
        let attempts = self.config.attempts.max(1);
        let mut connect_timeouts = 0;
        for attempt in 1.. {
            let outcome = operation(endpoint.clone()).await;
            if matches!(&outcome, Err(failed) if failed.error.kind() == ErrorKind::Timeout) {
                connect_timeouts += 1;
            }
            match outcome {
                Ok(value) => return Ok(value),
                Err(failed)
                    if failed.transient
                        && attempt < attempts
                        && connect_timeouts < MAX_CONNECT_TIMEOUTS =>
                {
                    let wait = match failed.retry_after {
                        Some(asked) => asked.min(MAX_RETRY_AFTER),
                        None => backoff(attempt),
                    };
                    tokio::time::sleep(wait).await
                }
                Err(failed) => return Err(failed.error),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// The digest the registry has for `reference`, from a HEAD request
    /// (or the manifest itself when the answer carries no digest).
    pub(crate) async fn resolve(&self, reference: &Reference, limits: Limits) -> Result<Digest> {
        let what = format!("manifest {reference}");
        let header = self
            .served(reference, true, |endpoint| {
                let what = &what;
                async move {
                    let url = endpoint.manifest_url(reference);
                    let response = endpoint
                        .send(what, limits, |http| {
                            http.head(&url).header(ACCEPT, MANIFEST_MEDIA_TYPES)
                        })
                        .await?;
                    Ok(content_digest(response.headers()))
                }
            })
            .await?
            .0;
        match header {
            Some(digest) => Digest::parse_received(&digest),
            None => Ok(self.manifest(reference, limits).await?.1),
        }
    }

    /// The exact bytes of the manifest or index `reference` names, and their
    /// digest, verified against the reference's pinned digest and the
    /// registry's `Docker-Content-Digest`. Bodies over
    /// [`MAX_METADATA_BYTES`] are refused before more is read.
    pub(crate) async fn manifest(
        &self,
        reference: &Reference,
        limits: Limits,
    ) -> Result<(Vec<u8>, Digest)> {
        let what = format!("manifest {reference}");
        let (body, header) = self
            .served(reference, reference.digest().is_none(), |endpoint| {
                let what = &what;
                async move {
                    let url = endpoint.manifest_url(reference);
                    let response = endpoint
                        .send(what, limits, |http| {
                            http.get(&url).header(ACCEPT, MANIFEST_MEDIA_TYPES)
                        })
                        .await?;
                    let header = content_digest(response.headers());
                    Ok((read_metadata(response, what, &limits).await?, header))
                }
            })
            .await?
            .0;
        let digest = match header {
            Some(header) => {
                let digest = Digest::parse_received(&header)?;
                digest.verify(&body, &what)?;
                digest
            }
            None => Digest::sha256_of(&body),
        };
        if let Some(pinned) = reference.digest() {
            Digest::parse(pinned)?.verify(&body, &what)?;
        }
        Ok((body, digest))
    }

    /// The blob `digest` from `reference`'s repository (or, when no host
    /// has it and `media_type` is a non-distributable layer's, the
    /// descriptor's `urls`): a stream which fails instead of yielding more
    /// than `size` bytes or going quiet for longer than the stall timeout,
    /// or, given a `reorder` file to write into and a blob of at least the
    /// range threshold that the host serves in ranges, a ranged download
    /// into that file (see [`ranged`]). The caller hashes what it reads.
    pub(crate) async fn blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        (media_type, urls): (&str, &Option<Vec<String>>),
        limits: Limits,
        reorder: Option<std::fs::File>,
    ) -> Result<Download> {
        let what = format!("blob {digest} of {}", reference.repository());
        let plan = reorder
            .as_ref()
            .and_then(|_| ranged::Plan::new(size, self.config.ranges));
        let first = plan.as_ref().map(ranged::Plan::first);
        let served = self
            .served(reference, false, |endpoint| {
                let source = BlobSource::Endpoint(endpoint);
                let what = &what;
                async move {
                    // A first range counts against the host's cap too.
                    let permit = match first {
                        Some(_) => source.range_permit().await,
                        None => None,
                    };
                    let response = source.get(digest, (0, first), what, limits).await?;
                    Ok(((response, permit), source))
                }
            })
            .await;
        let ((response, permit), source) = match served {
            Ok((served, _)) => served,
            Err(not_found)
                if not_found.kind() == ErrorKind::NotFound && is_non_distributable(media_type) =>
            {
                let (response, source) = self
                    .blob_from_urls(reference, digest, urls, &what, limits)
                    .await?
                    .ok_or(not_found)?;
                ((response, None), source)
            }
            Err(err) => return Err(err),
        };
        let (response, source) = match (plan, reorder, &source) {
            (Some(plan), Some(file), BlobSource::Endpoint(endpoint))
                if plan.serves_first(&response) =>
            {
                let permits = endpoint.host.ranges.clone();
                let fields = (source, digest.clone(), what, limits);
                let attempts = self.config.attempts;
                return Ok(Download::Ranged(ranged::start(
                    plan,
                    fields,
                    (response, permit),
                    file,
                    permits,
                    attempts,
                )));
            }
            // A server that ignores Range sent the whole blob: take it.
            (Some(_), ..) if response.status() != StatusCode::OK => {
                // A range other than the one asked for: ask for the whole.
                drop(response);
                let whole = source
                    .get(digest, (0, None), &what, limits)
                    .await
                    .map_err(|failed| failed.error)?;
                (whole, source)
            }
            _ => (response, source),
        };
        if let Some(announced) = content_length(response.headers()) {
            if announced > size {
                return Err(Error::digest_mismatch(format!(
                    "{what}: the registry announces {announced} bytes, more than the descriptor's {size} bytes"
                )));
            }
        }
        let download = BlobDownload {
            source,
            digest: digest.clone(),
            size,
            what,
            limits,
            from: host_of(response.url()),
            stream: Some(Box::pin(response.bytes_stream())),
            received: 0,
            skip: 0,
            resumes_left: self.config.attempts.saturating_sub(1),
        };
        let chunks = futures_util::stream::unfold(download, |mut download| async move {
            let chunk = download.next_chunk().await?;
            Some((chunk.map_err(Error::into_io), download))
        });
        Ok(Download::Stream(Box::pin(chunks)))
    }

    /// Whether a blob of `size` bytes would be fetched in ranges, given a
    /// file to write them into.
    pub(crate) fn ranged(&self, size: u64) -> bool {
        ranged::Plan::new(size, self.config.ranges).is_some()
    }

    /// The first of a descriptor's `urls` that may be followed (see
    /// [`check_url`](Self::check_url)) and serves the blob, asked without
    /// credentials: they belong to the registry only.
    async fn blob_from_urls(
        &self,
        reference: &Reference,
        digest: &Digest,
        urls: &Option<Vec<String>>,
        what: &str,
        limits: Limits,
    ) -> Result<Option<(Response, BlobSource)>> {
        let mut last_error = None;
        for url in urls.iter().flatten() {
            if let Err(refused) = self.check_url(reference, url, what).await {
                last_error = Some(refused);
                continue;
            }
            let endpoint = Endpoint {
                host: self.host(reference.resolve_registry()).await?,
                api_root: STANDARD_API_ROOT.to_owned(),
                repository: reference.repository().to_owned(),
                namespace: None,
            };
            let source = BlobSource::Url {
                http: endpoint.host.http.clone(),
                url: url.clone(),
            };
            let outcome = self
                .attempted(&endpoint, &|_| {
                    let source = &source;
                    async move { source.get(digest, (0, None), what, limits).await }
                })
                .await;
            match outcome {
                Ok(response) => return Ok(Some((response, source))),
                Err(err) => last_error = Some(err),
            }
        }
        last_error.map_or(Ok(None), Err)
    }

    /// Refuses a descriptor URL unless it is https (or http to a host the
    /// caller marked insecure, or a loopback one) and, unless the registry itself is on one,
    /// none of its addresses is loopback, link-local or unspecified: a
    /// manifest must not point the library at the machine's own services or
    /// a cloud metadata endpoint. (The name is resolved here and again when
    /// connecting; this is a guard against hostile manifests, not against
    /// hostile DNS.)
    async fn check_url(&self, reference: &Reference, url: &str, what: &str) -> Result<()> {
        let refused = |why: &str| {
            Error::invalid_content(format!("{what}: descriptor URL {url} refused: {why}"))
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| refused(&e.to_string()))?;
        let authority = host_of(&parsed);
        let insecure = self
            .config
            .insecure_hosts
            .iter()
            .any(|host| *host == authority || Some(host.as_str()) == parsed.host_str());
        match parsed.scheme() {
            "https" => {}
            // Loopback hosts speak plain HTTP, as registries do (see `connect`).
            "http" if insecure || is_loopback(&authority) => {}
            "http" => return Err(refused("plain HTTP to a host not marked insecure")),
            _ => return Err(refused("not an http(s) URL")),
        }
        let registry = reference.resolve_registry().to_owned();
        let (target, registry) = tokio::task::spawn_blocking(move || {
            (addresses(&authority, 443), addresses(&registry, 443))
        })
        .await
        .map_err(|e| Error::network(format!("{what}: resolving {url}: {e}")))?;
        if url_target_allowed(&target, &registry) {
            Ok(())
        } else {
            Err(refused(
                "it leads to a loopback, link-local or unspecified address, and the registry is not on one",
            ))
        }
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
            return Err(Error::invalid_content(format!(
                "{what} is {size} bytes, over the {MAX_METADATA_BYTES}-byte limit"
            )));
        }
        let Download::Stream(mut stream) = self
            .blob(reference, digest, size, ("", &None), limits, None)
            .await?
        else {
            unreachable!("without a file to write into, a blob is one stream")
        };
        let mut content = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            content.extend_from_slice(&chunk.map_err(|e| {
                Error::from_io(e, |e| Error::network(e.to_string()).with_source(e))
            })?);
        }
        check_size(content.len() as u64, size, &what)?;
        digest.verify(&content, &what)?;
        Ok(content)
    }
}

/// A client with the system's CAs plus `ca_files`, or one that accepts any
/// certificate when the host is configured to skip verification, whose
/// connections are set up within `timeouts`. Making one reads no system
/// root (see [`tls`]). A loopback registry is never
/// reached through a proxy from the environment (as Go's
/// `ProxyFromEnvironment` decides), whatever `NO_PROXY` says.
fn http_client(
    name: &str,
    ca_files: &[PathBuf],
    skip_verify: bool,
    timeouts: &Timeouts,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .tls_backend_preconfigured(tls::client_config(ca_files, skip_verify)?)
        .connector_layer(timeouts.connect_limit());
    if is_loopback(name) {
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| {
        Error::invalid_argument(format!("client for registry {name}: {}", error_chain(&e)))
    })
}

impl Endpoint {
    fn url(&self, kind: &str, name: &str) -> String {
        let ns = match &self.namespace {
            Some(registry) => format!("?ns={registry}"),
            None => String::new(),
        };
        let (base, root, repository) = (&self.host.base, &self.api_root, &self.repository);
        format!("{base}{root}/{repository}/{kind}/{name}{ns}")
    }

    fn manifest_url(&self, reference: &Reference) -> String {
        let name = reference.digest().or(reference.tag()).unwrap_or("latest");
        self.url("manifests", name)
    }

    /// Sends the request `build` makes, authorized for pulling from this
    /// repository, and returns the answer if it is a success. A 401 teaches
    /// the host's challenge and gets one more try with fresh authorization:
    /// the first contact, and a token the registry no longer takes.
    async fn send(
        &self,
        what: &str,
        limits: Limits,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> std::result::Result<Response, Failed> {
        let host = &self.host;
        let scope = format!("repository:{}:pull", self.repository);
        let mut presented_token = None;
        for last_try in [false, true] {
            let challenge = host
                .challenge
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let mut request = build(&host.http);
            match (&challenge, &host.credential) {
                (Some(Challenge::Bearer { realm, service }), credential) => {
                    let token = host
                        .tokens
                        .get(
                            &host.http,
                            (realm, service.as_deref()),
                            &scope,
                            credential,
                            presented_token.as_deref(),
                            what,
                            &limits,
                        )
                        .await?;
                    request = request.bearer_auth(&token.value);
                    presented_token = Some(token.value);
                }
                (Some(Challenge::Basic), Credential::Basic { username, password }) => {
                    request = request.basic_auth(username, Some(password));
                }
                (Some(Challenge::Basic), Credential::IdentityToken(_)) => {
                    return Err(Error::unauthorized(format!(
                        "{what}: {} asks for a username and password, but its credentials are \
                         an identity token, which only a token realm can take",
                        host.base
                    ))
                    .into())
                }
                _ => {}
            }
            let response = limits
                .send(request)
                .await
                .map_err(|e| send_failure(e, what))?;
            if response.status() != StatusCode::UNAUTHORIZED || last_try {
                return check_status(response, what, &limits).await;
            }
            // Only the host itself says how to authorize with it: a 401 from
            // wherever a redirect led (a storage backend, another origin)
            // must not send our credentials or tokens there.
            if !same_origin(response.url(), &host.base) {
                return check_status(response, what, &limits).await;
            }
            let learned = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|value| value.to_str().ok())
                .and_then(Challenge::parse);
            if let Some(Challenge::Bearer { realm, .. }) = &learned {
                check_realm(realm, &host.base, what)?;
            }
            let retry = match &learned {
                Some(Challenge::Bearer { .. }) => true,
                Some(Challenge::Basic) => {
                    challenge.is_none() && !matches!(host.credential, Credential::Anonymous)
                }
                None => false,
            };
            if !retry {
                return check_status(response, what, &limits).await;
            }
            *host.challenge.lock().unwrap_or_else(|p| p.into_inner()) = learned;
        }
        unreachable!("the loop returns on its last try")
    }
}

/// A blob's bytes as they come.
pub(crate) enum Download {
    /// One response, resumed after a cut.
    Stream(BlobStream),
    /// Ranges written into the caller's file.
    Ranged(ranged::RangedBlob),
}

/// Where a blob's bytes come from: the endpoint that served it, asked with
/// credentials, or a descriptor URL, asked without.
#[derive(Clone)]
enum BlobSource {
    Endpoint(Endpoint),
    Url { http: reqwest::Client, url: String },
}

impl BlobSource {
    /// A place among the range requests in flight to this source's host
    /// (see [`HOST_RANGE_CONNECTIONS`]); none for a descriptor URL.
    async fn range_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self {
            BlobSource::Endpoint(endpoint) => {
                endpoint.host.ranges.clone().acquire_owned().await.ok()
            }
            BlobSource::Url { .. } => None,
        }
    }

    /// A successful answer for `digest` from byte `first` on, to byte
    /// `last` if given (a Range request unless that is the whole blob).
    async fn get(
        &self,
        digest: &Digest,
        (first, last): (u64, Option<u64>),
        what: &str,
        limits: Limits,
    ) -> std::result::Result<Response, Failed> {
        let range = |request: RequestBuilder| match (first, last) {
            (0, None) => request,
            (_, None) => request.header(RANGE, format!("bytes={first}-")),
            (_, Some(last)) => request.header(RANGE, format!("bytes={first}-{last}")),
        };
        match self {
            BlobSource::Endpoint(endpoint) => {
                let url = endpoint.url("blobs", digest.as_str());
                endpoint
                    .send(what, limits, |http| range(http.get(&url)))
                    .await
            }
            BlobSource::Url { http, url } => {
                let response = limits
                    .send(range(http.get(url)))
                    .await
                    .map_err(|e| send_failure(e, what))?;
                check_status(response, what, &limits).await
            }
        }
    }
}

/// One blob download that picks up where a broken connection left it: a
/// Range request for the rest, or, when the server will not serve the range
/// asked for, the whole blob again with the part already passed on skipped.
/// The reader hashes everything it gets, so the digest always covers the
/// whole blob.
struct BlobDownload {
    source: BlobSource,
    digest: Digest,
    size: u64,
    what: String,
    limits: Limits,
    /// `host:port` the bytes come from, for the stall message.
    from: String,
    // None once the download has ended or failed.
    stream: Option<Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>>,
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
                .stalling(&self.from, stream.next())
                .await
                .map_err(|stalled| Error::timeout(format!("{}: {stalled}", self.what)));
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
                        return Some(Err(Error::digest_mismatch(format!(
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
                Ok(None) => Error::network(format!(
                    "{}: the connection closed after {} of {} bytes",
                    self.what, self.received, self.size
                )),
                Ok(Some(Err(err))) => Error::network(format!(
                    "{}: reading from the registry: {}",
                    self.what,
                    error_chain(&err)
                ))
                .with_source(err.without_url()),
                Err(err) => err,
            };
            if interrupted.kind() != ErrorKind::Network || self.resumes_left == 0 {
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
        let offset = self.received;
        let fields = (&self.source, &self.digest, self.what.as_str(), self.limits);
        let response = Self::request(fields, offset).await?;
        let rest_served = response.status() == StatusCode::PARTIAL_CONTENT
            && served_range(response.headers()) == Some((offset, self.size - 1));
        let response = if rest_served || response.status() == StatusCode::OK {
            response
        } else {
            // A range other than the one asked for: start over from byte 0.
            Self::request(fields, 0).await?
        };
        self.skip = if response.status() == StatusCode::PARTIAL_CONTENT {
            0
        } else {
            offset
        };
        self.from = host_of(response.url());
        self.stream = Some(Box::pin(response.bytes_stream()));
        Ok(())
    }

    /// The blob from byte `offset` on, within the time limits. (A
    /// function of fields, not of `self`: the stream in `self` is not `Sync`.)
    async fn request(
        (source, digest, what, limits): (&BlobSource, &Digest, &str, Limits),
        offset: u64,
    ) -> Result<Response> {
        source
            .get(digest, (offset, None), what, limits)
            .await
            .map_err(|failed| failed.error)
    }
}

/// A success passes; anything else becomes the error it stands for, with
/// the server's own reason: 404 is not found, 401 and 403 unauthorized, 429
/// and 5xx worth retrying (when the server asks, after `Retry-After`).
async fn check_status(
    response: Response,
    what: &str,
    limits: &Limits,
) -> std::result::Result<Response, Failed> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let url = response.url().clone();
    let retry_after = retry_after(response.headers());
    let body = read_limited(response, MAX_ERROR_BODY_BYTES, limits)
        .await
        .unwrap_or_default();
    let codes = error_codes(&body);
    let has = |wanted: &[&str]| codes.iter().any(|code| wanted.contains(&code.as_str()));
    let message = format!(
        "{what}: {url} answered {}: {}",
        status.as_u16(),
        reason(&body)
    );
    let transient = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || has(&["TOOMANYREQUESTS"]);
    let error = if status == StatusCode::NOT_FOUND
        || has(&[
            "MANIFEST_UNKNOWN",
            "BLOB_UNKNOWN",
            "NAME_UNKNOWN",
            "NOT_FOUND",
        ]) {
        Error::not_found(message)
    } else if status == StatusCode::UNAUTHORIZED
        || status == StatusCode::FORBIDDEN
        || has(&["DENIED", "UNAUTHORIZED"])
    {
        Error::unauthorized(message)
    } else {
        Error::network(message)
    };
    Err(Failed {
        error: error.with_http_status(status.as_u16()),
        transient,
        retry_after,
    })
}

/// A request that got no answer: the connection or TLS failed (worth
/// another try, like a connection not set up in time), or the answer's
/// headers did not come in time (not retried: a silent server stays silent,
/// and each try would cost the whole response timeout again).
fn send_failure(err: SendError, what: &str) -> Failed {
    match err {
        SendError::Transport(err) => transport_failure(err, what),
        SendError::TimedOut {
            message,
            connecting,
        } => Failed {
            error: Error::timeout(format!("{what}: {message}")),
            transient: connecting,
            retry_after: None,
        },
    }
}

/// A request that got no answer: the connection failed, or TLS did.
fn transport_failure(err: reqwest::Error, what: &str) -> Failed {
    // A redirect loop stays a loop however often it is followed.
    let transient = !err.is_redirect();
    Failed {
        error: Error::network(format!("{what}: {}", error_chain(&err)))
            // Without its URL, so that no query string can reach a log.
            .with_source(err.without_url()),
        transient,
        retry_after: None,
    }
}

/// Reads a manifest or config body, refusing one over [`MAX_METADATA_BYTES`].
async fn read_metadata(
    response: Response,
    what: &str,
    limits: &Limits,
) -> std::result::Result<Vec<u8>, Failed> {
    let too_big = |size: &str| -> Failed {
        Error::invalid_content(format!(
            "{what} is {size} bytes, over the {MAX_METADATA_BYTES}-byte limit"
        ))
        .into()
    };
    if let Some(announced) = content_length(response.headers()) {
        if announced > MAX_METADATA_BYTES {
            return Err(too_big(&announced.to_string()));
        }
    }
    read_limited(response, MAX_METADATA_BYTES as usize, limits)
        .await
        .map_err(|err| match err {
            ReadError::TooLong(_) => too_big("more than that many"),
            ReadError::Request(e) => transport_failure(e, what),
            ReadError::Stalled(stalled) => Error::timeout(format!("{what}: {stalled}")).into(),
        })
}

/// The error codes of a registry's error answer (`{"errors": [{"code"…}]}`).
fn error_codes(body: &[u8]) -> Vec<String> {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    json["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["code"].as_str())
        .map(str::to_owned)
        .collect()
}

fn content_digest(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("Docker-Content-Digest")?.to_str().ok()?;
    Some(value.trim().to_owned())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The first and last byte of a 206 answer's `Content-Range: bytes A-B/N`.
fn served_range(headers: &HeaderMap) -> Option<(u64, u64)> {
    let value = headers.get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?.split('/').next()?;
    let (first, last) = range.split_once('-')?;
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?))
}

/// The wait a `Retry-After` header asks for: seconds, or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
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

/// Layers whose descriptor `urls` may be followed: the non-distributable
/// ("foreign") ones, which registries may legitimately not hold.
fn is_non_distributable(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
}

/// The addresses `host[:port]` resolves to (none when it does not).
fn addresses(host: &str, default_port: u16) -> Vec<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse() {
        return vec![ip];
    }
    let with_port = match host.rsplit_once(':') {
        Some((_, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(']') => {
            host.to_owned()
        }
        _ => format!("{host}:{default_port}"),
    };
    with_port
        .to_socket_addrs()
        .map(|addrs| addrs.map(|addr| addr.ip()).collect())
        .unwrap_or_default()
}

/// Loopback, link-local and unspecified addresses: the machine itself and
/// its link (where cloud metadata services live).
fn is_internal(ip: &std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*ip, IpAddr::V4),
        IpAddr::V4(_) => *ip,
    };
    ip.is_loopback()
        || ip.is_unspecified()
        || match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        }
}

/// A descriptor URL's addresses may be reached unless one is internal and
/// the registry's are not.
fn url_target_allowed(target: &[std::net::IpAddr], registry: &[std::net::IpAddr]) -> bool {
    !target.iter().any(is_internal) || registry.iter().any(is_internal)
}

/// Whether `url` is on the origin `base` (`scheme://host[:port]`).
fn same_origin(url: &reqwest::Url, base: &str) -> bool {
    reqwest::Url::parse(base).is_ok_and(|base| base.origin() == url.origin())
}

/// Refuses a bearer realm that is not an http(s) URL, or that is plain
/// HTTP for a registry reached over HTTPS: the realm gets the credentials.
fn check_realm(realm: &str, base: &str, what: &str) -> std::result::Result<(), Failed> {
    let scheme = reqwest::Url::parse(realm).map(|url| url.scheme().to_owned());
    let refused = match scheme.as_deref() {
        Ok("https") => return Ok(()),
        Ok("http") if base.starts_with("http://") => return Ok(()),
        Ok("http") => {
            "is plain HTTP for a registry reached over HTTPS: credentials \
                       never travel in clear text"
        }
        _ => "is not an http(s) URL",
    };
    Err(Error::unauthorized(format!(
        "{what}: {base} names the token realm {realm:?}, which {refused}"
    ))
    .into())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn descriptor_urls_reach_internal_addresses_only_from_internal_registries() {
        let ips = |list: &[&str]| -> Vec<std::net::IpAddr> {
            list.iter().map(|ip| ip.parse().unwrap()).collect()
        };
        // Addresses are only classified here, never contacted; the public
        // ones are from the documentation ranges (RFC 5737).
        let public = ips(&["203.0.113.7"]);
        for internal in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let target = ips(&[internal]);
            assert!(!url_target_allowed(&target, &public), "{internal}");
            assert!(
                url_target_allowed(&target, &ips(&["127.0.0.1"])),
                "{internal}"
            );
        }
        assert!(!url_target_allowed(
            &ips(&["198.51.100.1", "127.0.0.1"]),
            &public
        ));
        assert!(url_target_allowed(&ips(&["198.51.100.1"]), &public));
        assert!(url_target_allowed(&[], &public));
        assert_eq!(addresses("127.0.0.1:5000", 443), ips(&["127.0.0.1"]));
        assert_eq!(addresses("[::1]:5000", 443), ips(&["::1"]));
        assert!(addresses("localhost", 443)
            .iter()
            .all(|ip| ip.is_loopback()));
    }

    #[test]
    fn only_foreign_layers_follow_urls() {
        for media_type in [
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        ] {
            assert!(is_non_distributable(media_type), "{media_type}");
        }
        for media_type in [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "",
        ] {
            assert!(!is_non_distributable(media_type), "{media_type}");
        }
    }

    #[test]
    fn realms_and_origins() {
        assert!(check_realm("https://auth.example/token", "https://r.example", "x").is_ok());
        assert!(check_realm("http://127.0.0.1:9/token", "http://127.0.0.1:5000", "x").is_ok());
        for (realm, base) in [
            ("http://auth.example/token", "https://r.example"),
            ("ftp://auth.example/token", "https://r.example"),
            ("/token", "http://127.0.0.1:5000"),
        ] {
            match check_realm(realm, base, "x") {
                Err(Failed {
                    error,
                    transient: false,
                    ..
                }) if error.kind() == ErrorKind::Unauthorized => {
                    let msg = error.message();
                    assert!(msg.contains(realm), "{msg}")
                }
                _ => panic!("{realm} for {base} was not refused"),
            }
        }
        let url = reqwest::Url::parse("https://r.example/v2/a/blobs/x").unwrap();
        assert!(same_origin(&url, "https://r.example"));
        assert!(same_origin(&url, "https://r.example:443"));
        assert!(!same_origin(&url, "http://r.example"));
        assert!(!same_origin(&url, "https://r.example:5000"));
    }

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
