//! The image cache, the library's public Rust API: it resolves references
//! against the local store first and the registry second, fetches an image's
//! manifest and config for a platform, and turns its layers into verified,
//! uncompressed tar files. The C API is a thin skin over this module.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::Reference;

use crate::call::{self, CallOptions};
use crate::digest::{check_size, Digest};
use crate::error::{Error, Result};
use crate::fs::{Dir, PendingFile, Reserve};
use crate::layer::{self, Blob, Compression, LayerCheck, LayerReader, Target};
use crate::maintenance::{self, DiskUsage, Pruned, StoredImage, Verified};
use crate::manifest::{self, Descriptor, Document};
use crate::platform::Platform;
use crate::registry::{Limits, Registry, RegistryConfig};
use crate::store::Store;

/// How an [`ImageCache`] is set up. Every setting has a default.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    store: Option<PathBuf>,
    platform: Option<Platform>,
    registry: RegistryConfig,
    max_concurrent_layers: usize,
    keep_layer_blobs: bool,
    max_layer_size: Option<u64>,
    free_space_reserve: Reserve,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            store: None,
            platform: None,
            registry: RegistryConfig::default(),
            max_concurrent_layers: 3,
            keep_layer_blobs: true,
            max_layer_size: None,
            free_space_reserve: Reserve::default(),
        }
    }
}

impl CacheOptions {
    /// Defaults: no store, the host's platform, three layers at a time, and
    /// a time limit on every network step (see
    /// [`connect_timeout`](Self::connect_timeout) and the setters after it).
    pub fn new() -> CacheOptions {
        CacheOptions::default()
    }

    /// Keeps images in the OCI image layout at `dir` (created if missing),
    /// and resolves references there before asking a registry. Without a
    /// store, references are still resolved and layers still extracted.
    pub fn store(mut self, dir: impl Into<PathBuf>) -> CacheOptions {
        self.store = Some(dir.into());
        self
    }

    /// The platform picked from multi-platform images unless a call names
    /// another. Default: [`Platform::host`].
    pub fn platform(mut self, platform: Platform) -> CacheOptions {
        self.platform = Some(platform);
        self
    }

    /// Reaches `host` (`host[:port]`) over plain HTTP. Loopback registries
    /// are reached so too, unless a host CA certificate is set for them;
    /// every other host needs HTTPS unless listed here.
    pub fn insecure_registry(mut self, host: impl Into<String>) -> CacheOptions {
        self.registry.insecure_hosts.push(host.into());
        self
    }

    /// Presents `username` and `password` to `host` (`host[:port]`, as in
    /// references; Docker Hub is `index.docker.io`). Overrides auth files.
    pub fn credentials(
        mut self,
        host: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> CacheOptions {
        self.registry
            .credentials
            .explicit
            .push((host.into(), username.into(), password.into()));
        self
    }

    /// Reads credentials from this docker/podman auth file only, instead of
    /// looking in `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
    /// `$DOCKER_CONFIG/config.json` and `~/.docker/config.json`.
    pub fn auth_file(mut self, path: impl Into<PathBuf>) -> CacheOptions {
        self.registry.credentials.auth_file = Some(path.into());
        self
    }

    /// Tries `mirror` (`host[:port]`, e.g. a pull-through cache) before
    /// `registry` (`host[:port]` as references resolve it; Docker Hub is
    /// `index.docker.io`). Mirrors are tried in the order added; one that is
    /// unreachable, answers 5xx or lacks the content hands over to the next,
    /// and the registry comes last. The mirror is told the original registry
    /// with `?ns=`. What a mirror serves is verified like anything else.
    pub fn mirror(
        mut self,
        registry: impl Into<String>,
        mirror: impl Into<String>,
    ) -> CacheOptions {
        self.registry.mirrors.push((registry.into(), mirror.into()));
        self
    }

    /// Reads containerd-style host configuration from `dir` (a `certs.d`
    /// layout): `dir/<registry>/hosts.toml`, else `dir/_default/hosts.toml`.
    /// Its `[host."…"]` entries with the `pull` capability are mirrors tried
    /// in file order after those given with [`mirror`](Self::mirror) (only
    /// those with `resolve` for tags), with their `ca` and `skip_verify`;
    /// `server`'s scheme, `ca` and `skip_verify` apply to the registry itself.
    /// `override_path` is refused as unsupported.
    pub fn hosts_dir(mut self, dir: impl Into<PathBuf>) -> CacheOptions {
        self.registry.hosts_dir = Some(dir.into());
        self
    }

    /// How many times a request is tried when it fails on connection
    /// trouble, 5xx or 429 (default 4, at least 1), with exponential backoff
    /// and jitter between tries; also how many times an interrupted blob
    /// download is resumed.
    pub fn attempts(mut self, attempts: u32) -> CacheOptions {
        self.registry.attempts = attempts;
        self
    }

    /// Trusts the CA certificates in the PEM file at `path` for every registry.
    pub fn ca_certificate(mut self, path: impl Into<PathBuf>) -> CacheOptions {
        self.registry.ca_certificates.push(path.into());
        self
    }

    /// Trusts the CA certificates in the PEM file at `path` for `host`
    /// (`host[:port]`) only.
    pub fn host_ca_certificate(
        mut self,
        host: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> CacheOptions {
        self.registry
            .host_ca_certificates
            .push((host.into(), path.into()));
        self
    }

    /// How many layers [`ImageCache::extract_layers`] and
    /// [`ImageCache::rootfs`] fetch at once (default 3, at least 1).
    pub fn max_concurrent_layers(mut self, n: usize) -> CacheOptions {
        self.max_concurrent_layers = n;
        self
    }

    /// Whether the store keeps the compressed layer blobs it downloads
    /// (default true: a complete OCI layout). Without them it holds only
    /// manifests and configs, for users who need just the layer tars; a
    /// layer missing from `dst` is then downloaded again.
    pub fn keep_layer_blobs(mut self, keep: bool) -> CacheOptions {
        self.keep_layer_blobs = keep;
        self
    }

    /// The most bytes a layer may uncompress to (default: no limit). A
    /// layer that goes past it fails with [`Error::InvalidContent`] and
    /// leaves nothing behind: a guard against decompression bombs.
    pub fn max_layer_size(mut self, bytes: u64) -> CacheOptions {
        self.max_layer_size = Some(bytes);
        self
    }

    /// The free space every layer tar and store blob write leaves on its
    /// file system, in bytes; 0 turns the reserve off. Default: 5% of the
    /// file system or 1 GiB, whichever is smaller. A write that would eat
    /// into it fails with [`Error::Io`] naming the reserve and leaves
    /// nothing behind, instead of filling the disk. Free space is looked at
    /// before a file is created and every few MiB while it is written.
    pub fn free_space_reserve(mut self, bytes: u64) -> CacheOptions {
        self.free_space_reserve = Reserve(Some(bytes));
        self
    }

    /// How long setting up a TCP connection to a registry, mirror, token
    /// realm or descriptor URL may take (default 30 s, as containerd's
    /// dialer). A connection not set up in time fails the try with
    /// [`Error::Timeout`] naming the host, and is tried once more (within
    /// [`attempts`](Self::attempts)). The TCP connect and
    /// the TLS handshake are one step in the HTTP client, so an HTTPS
    /// connection gets `connect_timeout + tls_handshake_timeout` for both.
    /// `None` turns the limit off (and with it that of HTTPS connections).
    pub fn connect_timeout(mut self, limit: impl Into<Option<Duration>>) -> CacheOptions {
        self.registry.timeouts.connect = limit.into();
        self
    }

    /// How long a TLS handshake may take (default 10 s), on top of the
    /// connect timeout (see [`connect_timeout`](Self::connect_timeout)).
    /// `None` turns the limit of HTTPS connection setup off.
    pub fn tls_handshake_timeout(mut self, limit: impl Into<Option<Duration>>) -> CacheOptions {
        self.registry.timeouts.tls_handshake = limit.into();
        self
    }

    /// How long a request waits for the response headers once connected
    /// (default 30 s), token requests included; the stall timeout, when
    /// shorter, bounds this wait too. Not retried: a server that does not
    /// answer fails the call with [`Error::Timeout`] naming the host.
    /// `None` turns the limit off.
    pub fn response_timeout(mut self, limit: impl Into<Option<Duration>>) -> CacheOptions {
        self.registry.timeouts.response = limit.into();
        self
    }

    /// How long a response may go without a byte (default 60 s): the wait
    /// for headers and for each next part of a body, token answers
    /// included. [`CallOptions::stall_timeout`] overrides it per call.
    /// `None` turns the limit off.
    pub fn stall_timeout(mut self, limit: impl Into<Option<Duration>>) -> CacheOptions {
        self.registry.timeouts.stall = limit.into();
        self
    }
}

/// An image's manifest and config for one platform, and its layers. Layer
/// blobs are not downloaded until a layer is asked for.
#[derive(Debug, Clone)]
pub struct Image {
    reference: String,
    repository: Reference,
    digest: Digest,
    manifest: Vec<u8>,
    config: Vec<u8>,
    layers: Vec<Layer>,
}

impl Image {
    /// The normalized reference, e.g. `docker.io/library/alpine:3.20`.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The digest of the platform's image manifest (not of the index).
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The manifest's exact bytes.
    pub fn manifest(&self) -> &[u8] {
        &self.manifest
    }

    /// The config's exact bytes (JSON).
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    fn layer(&self, index: usize) -> Result<&Layer> {
        self.layers.get(index).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "layer index {index} is out of range: {} has {} layers",
                self.reference,
                self.layers.len()
            ))
        })
    }
}

/// One layer of an [`Image`]: its compressed blob and the diff_id of its
/// uncompressed tar.
#[derive(Debug, Clone)]
pub struct Layer {
    media_type: String,
    digest: Digest,
    size: u64,
    diff_id: Digest,
    urls: Option<Vec<String>>,
}

impl Layer {
    /// The blob's media type, e.g. `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// The digest of the compressed blob.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The size of the compressed blob in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of the uncompressed tar, from the image config.
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }
}

/// A local store plus the registries behind it. Cheap to clone; clones
/// share everything, and all methods may be called from many tasks at once.
#[derive(Clone)]
pub struct ImageCache {
    inner: Arc<Inner>,
    call: CallOptions,
}

struct Inner {
    registry: Registry,
    // Shared with the blocking work of maintenance and of recording images.
    store: Option<Arc<Store>>,
    // None: the host's, applied to indexes only.
    platform: Option<Platform>,
    max_concurrent_layers: usize,
    keep_layer_blobs: bool,
    max_layer_size: Option<u64>,
    free_space_reserve: Reserve,
    // The `dst/<alg>` directories whose dead writers' temp files were
    // removed: once each, on the first cold extract there.
    swept: Mutex<HashSet<PathBuf>>,
    // One lock per layer tar being written, so that concurrent callers asking
    // for the same layer download it once: the others wait and then find it.
    extracting: Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>,
}

/// The documents (manifests, config) one `fetch_image` used, to be stored
/// with the image: all of them, not only those a registry sent, so that
/// one a concurrent prune removed before the image was recorded is
/// written back when it is.
#[derive(Default)]
struct Fetched {
    documents: Vec<(Digest, Vec<u8>)>,
    from_registry: bool,
}

impl Fetched {
    fn note(&mut self, digest: &Digest, content: &[u8], from_registry: bool) {
        self.documents.push((digest.clone(), content.to_vec()));
        self.from_registry |= from_registry;
    }
}

impl ImageCache {
    /// Opens the store (if any). Registry clients are made on first use.
    pub fn new(options: CacheOptions) -> Result<ImageCache> {
        if options.max_concurrent_layers == 0 {
            return Err(Error::InvalidArgument(
                "max_concurrent_layers must be at least 1".into(),
            ));
        }
        if options.registry.attempts == 0 {
            return Err(Error::InvalidArgument("attempts must be at least 1".into()));
        }
        let store = options
            .store
            .as_deref()
            .map(|root| Store::open(root, options.free_space_reserve))
            .transpose()?
            .map(Arc::new);
        Ok(ImageCache {
            inner: Arc::new(Inner {
                registry: Registry::new(options.registry),
                store,
                platform: options.platform,
                max_concurrent_layers: options.max_concurrent_layers,
                keep_layer_blobs: options.keep_layer_blobs,
                max_layer_size: options.max_layer_size,
                free_space_reserve: options.free_space_reserve,
                swept: Mutex::new(HashSet::new()),
                extracting: Mutex::new(HashMap::new()),
            }),
            call: CallOptions::default(),
        })
    }

    /// This cache, with `options` applied to every call made through the
    /// returned clone (which shares everything else with `self`).
    pub fn with_call_options(&self, options: CallOptions) -> ImageCache {
        ImageCache {
            inner: self.inner.clone(),
            call: options,
        }
    }

    fn limits(&self) -> Limits {
        self.inner.registry.limits(self.call.stall_override())
    }

    /// The digest `reference` names: its pinned digest, else the one the
    /// store records for it, else the registry's. For a multi-platform image
    /// this is the index's digest.
    pub async fn resolve(&self, reference: &str) -> Result<Digest> {
        self.call
            .bounded(
                || format!("resolve {reference}"),
                self.resolve_now(reference),
            )
            .await
    }

    async fn resolve_now(&self, reference: &str) -> Result<Digest> {
        let reference = parse_reference(reference)?;
        if let Some(pinned) = reference.digest() {
            return Digest::parse(pinned);
        }
        if let Some(store) = &self.inner.store {
            if let Some(descriptor) = store.lookup(&reference.whole())? {
                return descriptor.digest();
            }
        }
        self.inner.registry.resolve(&reference, self.limits()).await
    }

    /// Reads the manifest and config of `reference` for `platform` (default:
    /// the cache's), following an index or manifest list to the platform's
    /// manifest. A platform set here or in [`CacheOptions::platform`] must
    /// also match a single-platform image's config; the host default only
    /// picks from indexes. Everything read is verified; with a store, what came from a
    /// registry is written to it and the image is recorded in `index.json`.
    ///
    /// A tag the store already records is served from the store without
    /// asking the registry, like the digest [`resolve`](Self::resolve) gives.
    /// A store manifest or config that fails to verify is removed and
    /// fetched again (once); if that fails too, the error is still
    /// [`Error::DigestMismatch`] naming it. Recording waits for the store's
    /// lock without holding a runtime thread; the deadline ends the wait.
    pub async fn fetch_image(&self, reference: &str, platform: Option<&Platform>) -> Result<Image> {
        self.call
            .bounded(
                || format!("fetch_image {reference}"),
                self.fetch_image_now(reference, platform),
            )
            .await
    }

    async fn fetch_image_now(&self, reference: &str, platform: Option<&Platform>) -> Result<Image> {
        let reference = parse_reference(reference)?;
        let name = reference.whole();
        // A platform the caller chose is enforced even on single-platform
        // images; the host default only picks from indexes, as docker does.
        let explicit_platform = platform.or(self.inner.platform.as_ref());
        let host = Platform::host();
        let platform = explicit_platform.unwrap_or(&host);
        let mut fetched = Fetched::default();

        let (top, top_digest) = self.top_manifest(&reference, &mut fetched).await?;
        let (document, top_media_type) = manifest::parse(&top, &format!("manifest {name}"))?;
        let from_index = matches!(document, Document::Index { .. });
        let (manifest, digest, config, layers) = match document {
            Document::Manifest { config, layers } => {
                (top.clone(), top_digest.clone(), config, layers)
            }
            Document::Index { manifests } => {
                let entry = select_platform(&manifests, platform, &name)?;
                let digest = entry.digest()?;
                let what = format!("manifest {digest} of {name}");
                let by_digest = reference.clone_with_digest(digest.to_string());
                let registry = &self.inner.registry;
                let limits = self.limits();
                let bytes = self
                    .load(&digest, &mut fetched, async {
                        Ok(registry.manifest(&by_digest, limits).await?.0)
                    })
                    .await?;
                check_size(bytes.len() as u64, entry.size, &what)?;
                match manifest::parse(&bytes, &what)?.0 {
                    Document::Manifest { config, layers } => (bytes, digest, config, layers),
                    Document::Index { .. } => {
                        return Err(Error::Unsupported(format!(
                            "{what} is an index inside an index"
                        )))
                    }
                }
            }
        };

        let config_digest = config.digest()?;
        let config_bytes = self
            .load(
                &config_digest,
                &mut fetched,
                self.inner.registry.small_blob(
                    &reference,
                    &config_digest,
                    config.size,
                    self.limits(),
                ),
            )
            .await?;
        let summary =
            manifest::config_summary(&config_bytes, &format!("config {config_digest} of {name}"))?;
        if let (Some(wanted), Some(built_for), false) =
            (explicit_platform, &summary.platform, from_index)
        {
            if !wanted.compatible().contains(built_for) {
                return Err(Error::NotFound(format!(
                    "{name} is a single-platform image for {built_for}, not {wanted}"
                )));
            }
        }
        let diff_ids = summary.diff_ids;
        if diff_ids.len() != layers.len() {
            return Err(Error::InvalidContent(format!(
                "{name}: the manifest lists {} layers but the config {} diff_ids",
                layers.len(),
                diff_ids.len()
            )));
        }
        let layers = layers
            .into_iter()
            .zip(diff_ids)
            .map(|(descriptor, diff_id)| {
                Ok(Layer {
                    digest: descriptor.digest()?,
                    media_type: descriptor.media_type,
                    size: descriptor.size,
                    diff_id,
                    urls: descriptor.urls,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        if let Some(store) = &self.inner.store {
            let top = Descriptor {
                media_type: top_media_type,
                digest: top_digest.to_string(),
                size: top.len() as u64,
                ..Descriptor::default()
            };
            record(store, &name, fetched, top).await?;
        }
        Ok(Image {
            reference: name,
            repository: reference,
            digest,
            manifest,
            config: config_bytes,
            layers,
        })
    }

    /// Streams layer `index` of `image`, uncompressed. The stream reaches its
    /// end only after the blob's digest and size and the tar's diff_id
    /// matched; a mismatch is a read error.
    pub async fn fetch_layer(&self, image: &Image, index: usize) -> Result<LayerReader> {
        self.call
            .bounded(
                || format!("fetch_layer {index} of {}", image.reference),
                async {
                    let check = self.layer_check(image, index)?;
                    let (blob, copy) = self.open_blob(image, image.layer(index)?).await?;
                    Ok(layer::stream(check, blob, copy))
                },
            )
            .await
    }

    /// Writes layer `index` of `image` to `dst/<alg>/<hex of diff_id>`
    /// (replacing any file there) and returns it opened read-only at offset
    /// 0. `dst` must exist. The file appears whole and verified, or not at all.
    pub async fn extract_layer(&self, image: &Image, index: usize, dst: &Path) -> Result<File> {
        let dst = existing_dir(dst)?;
        self.call
            .bounded(
                || format!("extract_layer {index} of {}", image.reference),
                self.extract(image, index, &dst, false),
            )
            .await
    }

    /// [`extract_layer`](Self::extract_layer) for every layer, bottom first,
    /// several at once (see [`CacheOptions::max_concurrent_layers`]).
    pub async fn extract_layers(&self, image: &Image, dst: &Path) -> Result<Vec<File>> {
        self.extract_all(image, dst, false).await
    }

    /// Files for every layer of `image`, bottom first: layers already in
    /// `dst` are opened without touching the network, missing ones are
    /// fetched and extracted. `dst` must exist. Only regular files are
    /// handed out (see [`rootfs_cached`](Self::rootfs_cached)): anything
    /// else at a layer's path is replaced by the fetched layer, except a
    /// directory, which fails with [`Error::Io`] naming it, as does a
    /// symlink in place of `dst/sha256`. A store layer blob found corrupt
    /// while extracting is removed and fetched again (once).
    pub async fn rootfs(&self, image: &Image, dst: &Path) -> Result<Vec<File>> {
        self.extract_all(image, dst, true).await
    }

    async fn extract_all(&self, image: &Image, dst: &Path, reuse: bool) -> Result<Vec<File>> {
        let all = async {
            if let Some(files) = reuse.then(|| self.rootfs_cached(image, dst)).flatten() {
                return Ok(files);
            }
            let dst = existing_dir(dst)?;
            // Largest first: the biggest layer bounds the pull, so it starts
            // at once and the small ones fill the other slots around it.
            let mut order: Vec<usize> = (0..image.layers.len()).collect();
            order.sort_by_key(|&index| std::cmp::Reverse(image.layers[index].size));
            let mut files: Vec<Option<File>> = image.layers.iter().map(|_| None).collect();
            let mut extracted =
                futures_util::stream::iter(order)
                    .map(|index| {
                        let dst = &dst;
                        async move {
                            Ok::<_, Error>((index, self.extract(image, index, dst, reuse).await?))
                        }
                    })
                    .buffer_unordered(self.inner.max_concurrent_layers);
            while let Some((index, file)) = extracted.try_next().await? {
                files[index] = Some(file);
            }
            Ok(files.into_iter().flatten().collect())
        };
        self.call
            .bounded(|| format!("layers of {}", image.reference), all)
            .await
    }

    /// Files for every layer of `image` if all are already in `dst`, opened
    /// on the calling thread with one `open` per layer (plus one for `dst`
    /// and one for `dst/sha256`) and nothing else; None if any cannot be
    /// opened (then [`rootfs`](Self::rootfs) finds out why). A layer tar
    /// only ever appears whole, by rename, so one that opens is complete.
    /// The warm path of a container start. Only regular files are handed
    /// out: each is opened without following a link or blocking on a FIFO,
    /// and anything else there counts as missing.
    pub fn rootfs_cached(&self, image: &Image, dst: &Path) -> Option<Vec<File>> {
        let root = Dir::open(dst).ok()?;
        let mut dirs: Vec<(&str, Dir)> = Vec::new();
        let mut files = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            let algorithm = layer.diff_id.algorithm();
            let dir = match dirs.iter().find(|(alg, _)| *alg == algorithm) {
                Some((_, dir)) => dir,
                None => {
                    dirs.push((algorithm, root.sub(algorithm).ok()??));
                    &dirs.last()?.1
                }
            };
            files.push(dir.open_regular(layer.diff_id.hex()).ok()??);
        }
        Some(files)
    }

    async fn extract(&self, image: &Image, index: usize, dst: &Path, reuse: bool) -> Result<File> {
        let layer = image.layer(index)?;
        let path = layer::tar_path(dst, &layer.diff_id);
        let lock = self.inner.extraction_lock(&path);
        let _writing = lock.lock().await;
        if reuse {
            let algorithm = layer.diff_id.algorithm();
            if let Some(dir) = Dir::open(dst)?.sub(algorithm)? {
                if let Some(file) = dir.open_regular(layer.diff_id.hex())? {
                    return Ok(file);
                }
            }
        }
        let check = self.layer_check(image, index)?;
        let (blob, copy) = self.open_blob(image, layer).await?;
        let target = || Target {
            dst: dst.to_owned(),
            reserve: self.inner.free_space_reserve,
            sweep: self.inner.first_extract_into(path.parent().unwrap_or(dst)),
        };
        let local = matches!(blob, Blob::Local(_));
        let failure = match layer::extract(check, blob, copy, target()).await {
            Err(Error::DigestMismatch(failure)) if local => failure,
            done => return done,
        };
        // The store's copy failed to verify: if it is corrupt (not the
        // image, whose diff_id may be wrong), it is removed and the layer
        // fetched again, once.
        let store = self
            .inner
            .store
            .clone()
            .expect("local blobs come from the store");
        if !maintenance::remove_if_corrupt(store, layer.digest.clone()).await? {
            return Err(Error::DigestMismatch(failure));
        }
        let refetched = async {
            let (blob, copy) = self.open_blob(image, layer).await?;
            layer::extract(self.layer_check(image, index)?, blob, copy, target()).await
        };
        refetched.await.map_err(|e| refetch_failed(failure, e))
    }

    /// The layer's blob from the store if it has it, else from the registry
    /// with a pending store copy when the store keeps layer blobs.
    async fn open_blob(&self, image: &Image, layer: &Layer) -> Result<(Blob, Option<PendingFile>)> {
        let store = self.inner.store.as_ref();
        if let Some(file) = store
            .map(|s| s.open_blob(&layer.digest))
            .transpose()?
            .flatten()
        {
            return Ok((Blob::Local(file), None));
        }
        let stream = self
            .inner
            .registry
            .blob(
                &image.repository,
                &layer.digest,
                layer.size,
                (&layer.media_type, &layer.urls),
                self.limits(),
            )
            .await?;
        let copy = store
            .filter(|_| self.inner.keep_layer_blobs)
            .map(|s| s.ingest(&layer.digest))
            .transpose()?;
        Ok((Blob::Remote(stream), copy))
    }

    /// The top-level manifest or index of `reference`: from the store when it
    /// has the pinned or recorded digest, else from the registry.
    async fn top_manifest(
        &self,
        reference: &Reference,
        fetched: &mut Fetched,
    ) -> Result<(Vec<u8>, Digest)> {
        let mut corrupt = None;
        if let Some(store) = &self.inner.store {
            let local = match reference.digest() {
                Some(pinned) => Some(Digest::parse(pinned)?),
                None => store
                    .lookup(&reference.whole())?
                    .map(|d| d.digest())
                    .transpose()?,
            };
            if let Some(digest) = local {
                match read_local(store, &digest)? {
                    Local::Intact(content) => {
                        fetched.note(&digest, &content, false);
                        return Ok((content, digest));
                    }
                    Local::Missing => {}
                    Local::Removed(failure) => corrupt = Some(failure),
                }
            }
        }
        let (content, digest) = match self.inner.registry.manifest(reference, self.limits()).await {
            Ok(found) => found,
            Err(e) => {
                return Err(match corrupt {
                    Some(failure) => refetch_failed(failure, e),
                    None => e,
                })
            }
        };
        fetched.note(&digest, &content, true);
        Ok((content, digest))
    }

    /// Blob `digest` from the store, else from `remote`; noted in `fetched`.
    /// A store copy that fails to verify is removed and fetched again.
    async fn load(
        &self,
        digest: &Digest,
        fetched: &mut Fetched,
        remote: impl Future<Output = Result<Vec<u8>>>,
    ) -> Result<Vec<u8>> {
        let mut corrupt = None;
        if let Some(store) = &self.inner.store {
            match read_local(store, digest)? {
                Local::Intact(content) => {
                    fetched.note(digest, &content, false);
                    return Ok(content);
                }
                Local::Missing => {}
                Local::Removed(failure) => corrupt = Some(failure),
            }
        }
        let content = match (remote.await, corrupt) {
            (Ok(content), _) => content,
            (Err(e), Some(failure)) => return Err(refetch_failed(failure, e)),
            (Err(e), None) => return Err(e),
        };
        fetched.note(digest, &content, true);
        Ok(content)
    }
}

/// Cache management: the images the store records, and its upkeep. Each
/// needs a store ([`CacheOptions::store`]); `dst` is a directory of layer
/// tars, as given to [`ImageCache::rootfs`].
impl ImageCache {
    /// The images the store records under a name (`index.json` entries
    /// with a `org.opencontainers.image.ref.name`): reference, digest, and
    /// the bytes of the store's blobs each reaches. Other entries, which
    /// other tools may write, are skipped. Takes no lock.
    pub async fn list(&self) -> Result<Vec<StoredImage>> {
        self.maintain("list", maintenance::list).await
    }

    /// Drops `reference` from the store's `index.json` (`NotFound` if it is
    /// not there). Its blobs stay until [`prune`](Self::prune). Waits for
    /// the store's lock without holding a runtime thread; the deadline, or
    /// dropping the call, ends the wait.
    pub async fn remove(&self, reference: &str) -> Result<()> {
        let name = parse_reference(reference)?.whole();
        self.maintain("remove", |store| async move {
            let lock = store.lock().await?;
            call::blocking(move |_| store.remove(&lock, &name)).await
        })
        .await
    }

    /// Removes the store's blobs, and the layer tars under `dst`, that no
    /// entry of `index.json` reaches, and temp files left by killed
    /// writers. Every entry is a root, named or not (as other tools such as
    /// skopeo write them), whatever its media type; everything it reaches
    /// through `manifests`, `config`, `layers`, `blobs` and `subject` stays,
    /// and so do the layer tars of every reached config's diff_ids. Safe
    /// while other threads and processes pull into the same store and
    /// `dst`: what they are writing or have just recorded is never removed.
    /// The store's lock is held only to delete, in short batches, and
    /// waited for without holding a runtime thread; a deadline or dropping
    /// the call ends the prune between files.
    pub async fn prune(&self, dst: Option<&Path>) -> Result<Pruned> {
        let dst = dst.map(existing_dir).transpose()?;
        self.maintain("prune", |store| maintenance::prune(store, dst))
            .await
    }

    /// Bytes and files of the store's blobs, and of the layer tars under `dst`.
    pub async fn disk_usage(&self, dst: Option<&Path>) -> Result<DiskUsage> {
        let dst = dst.map(existing_dir).transpose()?;
        self.maintain("disk_usage", |store| maintenance::disk_usage(store, dst))
            .await
    }

    /// Re-hashes every store blob and every layer tar under `dst` and
    /// reports those that do not match their digest; with `remove_corrupt`
    /// it deletes them, so the next [`rootfs`](Self::rootfs) fetches them
    /// again. Takes no lock; a deadline or dropping the call ends it
    /// between chunks of a file. Files that are not regular (symlinks,
    /// FIFOs) are skipped, never followed or waited on.
    pub async fn verify(&self, dst: Option<&Path>, remove_corrupt: bool) -> Result<Verified> {
        let dst = dst.map(existing_dir).transpose()?;
        self.maintain("verify", |store| {
            maintenance::verify(store, dst, remove_corrupt)
        })
        .await
    }

    /// Runs `work` on the store, bounded by the call options: a deadline
    /// or a drop ends it between files, and any wait for the store's lock.
    async fn maintain<T, Fut>(
        &self,
        what: &'static str,
        work: impl FnOnce(Arc<Store>) -> Fut,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let Some(store) = self.inner.store.clone() else {
            return Err(Error::InvalidArgument(format!(
                "{what} needs a store (CacheOptions::store)"
            )));
        };
        self.call.bounded(|| what.to_owned(), work(store)).await
    }
}

impl ImageCache {
    /// What layer `index` of `image` must match, and where its progress goes.
    fn layer_check(&self, image: &Image, index: usize) -> Result<LayerCheck> {
        let layer = image.layer(index)?;
        let what = format!("layer {index} ({}) of {}", layer.digest, image.reference);
        let compression = Compression::of(&layer.media_type).map_err(|e| match e {
            Error::Unsupported(msg) => Error::Unsupported(format!("{what}: {msg}")),
            other => other,
        })?;
        Ok(LayerCheck {
            what,
            index,
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: layer.diff_id.clone(),
            compression,
            max_size: self.inner.max_layer_size,
            progress: self.call.progress_fn(),
        })
    }
}

impl Inner {
    /// Whether this is the first cold extract into `dir` (a `dst/<alg>`),
    /// which then removes the temp files killed writers left there.
    fn first_extract_into(&self, dir: &Path) -> bool {
        let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
        swept.insert(dir.to_owned())
    }

    fn extraction_lock(&self, path: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .extracting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(lock) = locks.get(path).and_then(Weak::upgrade) {
            return lock;
        }
        locks.retain(|_, lock| lock.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(path.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

/// Records `top` under `name` in the store, with the documents `fetched`
/// (any missing is written). Needs the store's lock, waited for
/// asynchronously, unless the store had everything and records `top`
/// already (entries keep what they reach): a warm fetch takes no lock.
async fn record(store: &Arc<Store>, name: &str, fetched: Fetched, top: Descriptor) -> Result<()> {
    if !fetched.from_registry && store.lookup(name)?.is_some_and(|d| d.digest == top.digest) {
        return Ok(());
    }
    let lock = store.lock().await?;
    let (store, name) = (store.clone(), name.to_owned());
    call::blocking(move |_| store.record(&lock, &name, &fetched.documents, &top)).await
}

/// What the store holds for a blob.
enum Local {
    Intact(Vec<u8>),
    Missing,
    /// It failed to verify (the message says how) and was removed.
    Removed(String),
}

/// Blob `digest` from the store, verified; a corrupt copy is removed, so
/// that it is fetched again instead of failing every later call.
fn read_local(store: &Store, digest: &Digest) -> Result<Local> {
    match store.read_blob(digest) {
        Ok(Some(content)) => Ok(Local::Intact(content)),
        Ok(None) => Ok(Local::Missing),
        Err(Error::DigestMismatch(failure)) => {
            store.remove_blob(digest)?;
            Ok(Local::Removed(failure))
        }
        Err(e) => Err(e),
    }
}

/// The error when a corrupt store blob (`failure` says how), now removed,
/// could not be fetched again: still a digest mismatch naming the blob,
/// unless the call was canceled or timed out meanwhile.
fn refetch_failed(failure: String, error: Error) -> Error {
    match error {
        Error::Canceled(_) | Error::Timeout(_) => error,
        other => Error::DigestMismatch(format!(
            "{failure} (the corrupt store copy was removed; fetching it again failed: {other})"
        )),
    }
}

pub(crate) fn parse_reference(reference: &str) -> Result<Reference> {
    reference
        .parse()
        .map_err(|e| Error::InvalidArgument(format!("reference {reference:?}: {e}")))
}

/// The index entry for `platform`, or for the best compatible one.
fn select_platform<'a>(
    entries: &'a [Descriptor],
    platform: &Platform,
    name: &str,
) -> Result<&'a Descriptor> {
    for candidate in platform.compatible() {
        if let Some(entry) = entries
            .iter()
            .find(|e| e.platform().as_ref() == Some(&candidate))
        {
            return Ok(entry);
        }
    }
    let available: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform().map(|p| p.to_string()))
        .collect();
    Err(Error::NotFound(format!(
        "{name} has no manifest for platform {platform}; available: {}",
        available.join(", ")
    )))
}

/// `dst`, made absolute, so that one layer tar has one lock whatever
/// spelling of the directory callers use.
fn existing_dir(dst: &Path) -> Result<PathBuf> {
    let absolute = dst
        .canonicalize()
        .map_err(|e| Error::io("destination directory", dst, e))?;
    if !absolute.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "destination {} is not a directory",
            dst.display()
        )));
    }
    Ok(absolute)
}
