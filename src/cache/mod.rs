//! The image cache, the library's public Rust API: it resolves references
//! against the local store first and the registry second, fetches an image's
//! manifest and config for a platform, and turns its layers into verified,
//! uncompressed tar files. The C API is a thin skin over this module. Its
//! options builder lives in `options`, the values it returns in `image`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use futures_util::{StreamExt, TryStreamExt};
use oci_client::Reference;

use crate::call::CallOptions;
use crate::codec::Codec;
use crate::digest::{check_size, Digest};
use crate::error::{Error, ErrorKind, Result};
use crate::fs::{Dir, PendingFile, Reserve};
use crate::layer::{self, Blob, LayerCheck, LayerReader, Target};
use crate::maintenance::{self, DiskUsage, Pruned, StoredImage, Verified};
use crate::manifest::{self, Descriptor, Document};
use crate::platform::Platform;
use crate::registry::{Download, Limits, Registry};
use crate::store::{Staged, Store};
use crate::view::View;
use crate::work;

mod image;
mod options;

pub use image::{Image, Layer};
pub use options::CacheOptions;

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
/// written back when it is. Those the store lacked may be `staged`
/// (written and fsynced, not yet named) while the rest downloads.
#[derive(Default)]
struct Fetched {
    documents: Vec<(Digest, Vec<u8>)>,
    from_registry: bool,
    staged: Vec<Staged>,
}

impl Fetched {
    fn note(&mut self, digest: &Digest, content: &[u8], from_registry: bool) {
        self.documents.push((digest.clone(), content.to_vec()));
        self.from_registry |= from_registry;
    }
}

/// The image manifest chosen for a platform: the top manifest itself, or
/// the index entry for the platform.
struct Chosen {
    manifest: Vec<u8>,
    digest: Digest,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

impl ImageCache {
    /// Opens the store (if any). Registry clients are made on first use.
    pub fn new(options: CacheOptions) -> Result<ImageCache> {
        options.validate()?;
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
    /// [`ErrorKind::DigestMismatch`] naming it. Recording waits for the store's
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
        let chosen = match document {
            Document::Manifest { config, layers } => Chosen {
                manifest: top.clone(),
                digest: top_digest.clone(),
                config,
                layers,
            },
            Document::Index { manifests } => {
                let entry = select_platform(&manifests, platform, &name)?;
                self.platform_manifest(&reference, entry, &mut fetched)
                    .await?
            }
        };

        let config_digest = chosen.config.digest()?;
        // The manifests staged while the config downloads: their fsyncs
        // leave the first call's critical path.
        let staging = self.stage(&fetched);
        let config = self.load(
            &config_digest,
            &mut fetched,
            self.inner.registry.small_blob(
                &reference,
                &config_digest,
                chosen.config.size,
                self.limits(),
            ),
        );
        let (config_bytes, staged) = tokio::join!(config, staging);
        let config_bytes = config_bytes?;
        fetched.staged = staged?;
        let summary =
            manifest::config_summary(&config_bytes, &format!("config {config_digest} of {name}"))?;
        if !from_index {
            check_built_for(explicit_platform, summary.platform.as_ref(), &name)?;
        }
        let layers = layer_list(chosen.layers, summary.diff_ids, &name)?;

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
            digest: chosen.digest,
            manifest: chosen.manifest,
            config: config_bytes,
            layers,
        })
    }

    /// The image manifest an index's `entry` points to, checked against the
    /// entry's digest and size; an index inside an index is unsupported.
    async fn platform_manifest(
        &self,
        reference: &Reference,
        entry: &Descriptor,
        fetched: &mut Fetched,
    ) -> Result<Chosen> {
        let name = reference.whole();
        let digest = entry.digest()?;
        let what = format!("manifest {digest} of {name}");
        let by_digest = reference.clone_with_digest(digest.to_string());
        let registry = &self.inner.registry;
        let limits = self.limits();
        let bytes = self
            .load(&digest, fetched, async {
                Ok(registry.manifest(&by_digest, limits).await?.0)
            })
            .await?;
        check_size(bytes.len() as u64, entry.size, &what)?;
        match manifest::parse(&bytes, &what)?.0 {
            Document::Manifest { config, layers } => Ok(Chosen {
                manifest: bytes,
                digest,
                config,
                layers,
            }),
            Document::Index { .. } => Err(Error::unsupported(format!(
                "{what} is an index inside an index"
            ))),
        }
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
        self.call
            .bounded(
                || format!("extract_layer {index} of {}", image.reference),
                async { self.extract(image, index, &existing_dir(dst)?, false).await },
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
    /// directory, which fails with [`ErrorKind::Io`] naming it, as does a
    /// symlink in place of `dst/sha256`. A store layer blob found corrupt
    /// while extracting is removed and fetched again (once).
    pub async fn rootfs(&self, image: &Image, dst: &Path) -> Result<Vec<File>> {
        self.extract_all(image, dst, true).await
    }

    /// The [`View`] of `image`'s files: runs [`rootfs`](Self::rootfs)
    /// first (missing layers are fetched), then loads each layer tar's
    /// index. The view keeps its own fds of the tars and outlives this
    /// cache and `image`.
    pub async fn view(&self, image: &Image, dst: impl AsRef<Path>) -> Result<View> {
        let files = self.rootfs(image, dst.as_ref()).await?;
        let layers: Vec<(File, Digest)> = files
            .into_iter()
            .zip(&image.layers)
            .map(|(file, layer)| (file, layer.diff_id.clone()))
            .collect();
        let (dst, reserve) = (dst.as_ref().to_owned(), self.inner.free_space_reserve);
        // Each tar's index is opened, or built and written if missing or
        // bad; the work stops between layers once the call is dropped.
        let load = move |stop: &work::Stop| {
            let indexed = layers
                .into_iter()
                .map(|(tar, diff_id)| {
                    stop.check("loading the view's indexes")?;
                    let index = layer::ensure_index(&dst, &diff_id, &tar, reserve)?;
                    Ok((tar, index))
                })
                .collect::<Result<_>>()?;
            Ok(View::new(indexed))
        };
        self.call
            .bounded(
                || format!("view of {}", image.reference),
                work::blocking(load),
            )
            .await
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
            Err(failure) if local && failure.kind() == ErrorKind::DigestMismatch => failure,
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
            return Err(failure);
        }
        let refetch = async {
            let (blob, copy) = self.open_blob(image, layer).await?;
            layer::extract(self.layer_check(image, index)?, blob, copy, target()).await
        };
        refetched(Some(failure.message().to_owned()), refetch.await)
    }

    /// The layer's blob from the store if it has it, else from the registry
    /// with a pending store copy when the store keeps layer blobs. A blob
    /// fetched in ranges lands in a store temp file even when the store
    /// keeps no copy: the file puts the ranges in order, and is removed at
    /// the end.
    async fn open_blob(&self, image: &Image, layer: &Layer) -> Result<(Blob, Option<PendingFile>)> {
        let store = self.inner.store.as_ref();
        if let Some(file) = store
            .map(|s| s.open_blob(&layer.digest))
            .transpose()?
            .flatten()
        {
            return Ok((Blob::Local(file), None));
        }
        let keep = self.inner.keep_layer_blobs;
        let ranged = self.inner.registry.ranged(layer.size);
        let mut pending = store
            .filter(|_| keep || ranged)
            .map(|s| s.ingest(&layer.digest))
            .transpose()?;
        // One handle for the ranges' writes, one for the pass's reads.
        let (reorder, reader) = match pending.as_mut().filter(|_| ranged) {
            Some(file) => (
                Some(file.positional(layer.size)?),
                Some(file.positional(0)?),
            ),
            None => (None, None),
        };
        let download = self
            .inner
            .registry
            .blob(
                &image.repository,
                &layer.digest,
                layer.size,
                (&layer.media_type, &layer.urls),
                self.limits(),
                reorder,
            )
            .await?;
        let (copy, buffer) = if keep {
            (pending, None)
        } else {
            (None, pending)
        };
        Ok(match download {
            Download::Stream(stream) => (Blob::Remote(stream), copy),
            Download::Ranged(download) => {
                let file = reader.ok_or_else(|| {
                    Error::internal("a ranged download without a file to read from")
                })?;
                let blob = Blob::Ranged {
                    file,
                    download,
                    buffer,
                };
                (blob, copy)
            }
        })
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
        let fetched_again = self.inner.registry.manifest(reference, self.limits()).await;
        let (content, digest) = refetched(corrupt, fetched_again)?;
        fetched.note(&digest, &content, true);
        Ok((content, digest))
    }

    /// Writes and fsyncs, unnamed, the documents of `fetched` the store
    /// lacks, if some came from a registry (see [`Store::stage_blob`]): what
    /// `record` names later. Dropped, they go.
    fn stage(&self, fetched: &Fetched) -> impl Future<Output = Result<Vec<Staged>>> + 'static {
        let store = self.inner.store.clone().filter(|_| fetched.from_registry);
        let documents = fetched.documents.clone();
        async move {
            let Some(store) = store else {
                return Ok(Vec::new());
            };
            work::blocking(move |_| {
                let mut staged = Vec::new();
                for (digest, content) in &documents {
                    staged.extend(store.stage_blob(digest, content)?);
                }
                Ok(staged)
            })
            .await
        }
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
        let content = refetched(corrupt, remote.await)?;
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
            work::blocking(move |_| store.remove(&lock, &name)).await
        })
        .await
    }

    /// Removes the store's blobs, and the layer tars under `dst` with their
    /// indexes, that no entry of `index.json` reaches, indexes whose tar is
    /// gone, and temp files left by killed writers. Every entry is a root, named or not (as other tools such as
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

    /// Bytes and files of the store's blobs, and of the layer tars and
    /// (apart) their indexes under `dst`.
    pub async fn disk_usage(&self, dst: Option<&Path>) -> Result<DiskUsage> {
        let dst = dst.map(existing_dir).transpose()?;
        self.maintain("disk_usage", |store| maintenance::disk_usage(store, dst))
            .await
    }

    /// Re-hashes every store blob and every layer tar under `dst` and
    /// reports those that do not match their digest, and re-checks every
    /// tar index (reported apart); with `remove_corrupt` it deletes them,
    /// so the next [`rootfs`](Self::rootfs) fetches them again (an index is
    /// rebuilt when a view needs it). Takes no lock; a deadline or dropping the call ends it
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
        let store = self.inner.store.clone();
        self.call
            .bounded(|| what.to_owned(), async {
                let Some(store) = store else {
                    return Err(Error::invalid_argument(format!(
                        "{what} needs a store (CacheOptions::store)"
                    )));
                };
                work(store).await
            })
            .await
    }
}

impl ImageCache {
    /// What layer `index` of `image` must match, and where its progress goes.
    fn layer_check(&self, image: &Image, index: usize) -> Result<LayerCheck> {
        let layer = image.layer(index)?;
        let what = format!("layer {index} ({}) of {}", layer.digest, image.reference);
        let codec = Codec::of(&layer.media_type).map_err(|e| match e.kind() {
            ErrorKind::Unsupported => e.context(&what),
            _ => e,
        })?;
        Ok(LayerCheck {
            what,
            index,
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: layer.diff_id.clone(),
            codec,
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
    work::blocking(move |_| store.record(&lock, &name, &fetched.documents, fetched.staged, &top))
        .await
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
        Err(failure) if failure.kind() == ErrorKind::DigestMismatch => {
            store.remove_blob(digest)?;
            Ok(Local::Removed(failure.message().to_owned()))
        }
        Err(e) => Err(e),
    }
}

/// The outcome of fetching a blob from the registry, where `corrupt` says
/// how its store copy failed to verify (and was removed), if it did: a
/// failure to fetch it again is still a digest mismatch naming the blob,
/// unless the call was canceled or timed out meanwhile.
fn refetched<T>(corrupt: Option<String>, outcome: Result<T>) -> Result<T> {
    match (outcome, corrupt) {
        (Err(error), Some(failure))
            if !matches!(error.kind(), ErrorKind::Canceled | ErrorKind::Timeout) =>
        {
            Err(Error::digest_mismatch(format!(
                "{failure} (the corrupt store copy was removed; fetching it again failed: {error})"
            )))
        }
        (outcome, _) => outcome,
    }
}

pub(crate) fn parse_reference(reference: &str) -> Result<Reference> {
    crate::reference::parse(reference)
        .map_err(|e| Error::invalid_argument(format!("reference {reference:?}: {e}")))
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
    Err(Error::not_found(format!(
        "{name} has no manifest for platform {platform}; available: {}",
        available.join(", ")
    )))
}

/// Fails unless a single-platform image, whose config says it was
/// `built_for` a platform, suits the platform the caller chose (if any).
fn check_built_for(
    wanted: Option<&Platform>,
    built_for: Option<&Platform>,
    name: &str,
) -> Result<()> {
    if let (Some(wanted), Some(built_for)) = (wanted, built_for) {
        if !wanted.compatible().contains(built_for) {
            return Err(Error::not_found(format!(
                "{name} is a single-platform image for {built_for}, not {wanted}"
            )));
        }
    }
    Ok(())
}

/// An image's layers, bottom first: the manifest's descriptors paired with
/// the config's diff_ids, which must be as many.
fn layer_list(
    descriptors: Vec<Descriptor>,
    diff_ids: Vec<Digest>,
    name: &str,
) -> Result<Vec<Layer>> {
    if diff_ids.len() != descriptors.len() {
        return Err(Error::invalid_content(format!(
            "{name}: the manifest lists {} layers but the config {} diff_ids",
            descriptors.len(),
            diff_ids.len()
        )));
    }
    descriptors
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
        .collect()
}

/// `dst`, made absolute, so that one layer tar has one lock whatever
/// spelling of the directory callers use.
fn existing_dir(dst: &Path) -> Result<PathBuf> {
    let absolute = dst
        .canonicalize()
        .map_err(|e| Error::io_at("destination directory", dst, e))?;
    if !absolute.is_dir() {
        return Err(Error::invalid_argument(format!(
            "destination {} is not a directory",
            dst.display()
        )));
    }
    Ok(absolute)
}
