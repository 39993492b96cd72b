//! Deterministic image fixtures: tars with fixed metadata ([`tar_layer`],
//! [`distinct_tar`], [`noise`]), compressed in memory ([`gzip`], [`zstd()`])
//! or by third-party tools ([`pigz`], [`zstd_cli`]), built into a config and
//! manifest ([`build_image`]) and pushed to a registry ([`push_image`],
//! [`push_index`], their `_to` forms for an [`crate::Endpoint`]).
//!
//! ```no_run
//! use harness::{distinct_tar, push_image, FixtureLayer, Registry};
//! let registry = Registry::start();
//! let pushed = push_image(
//!     &registry.host(),
//!     "app",
//!     Some("v1"),
//!     vec![FixtureLayer::gzip(distinct_tar("a")), FixtureLayer::zstd(distinct_tar("b"))],
//!     false,
//!     ("linux", "amd64", None),
//! );
//! // pushed.diff_ids name the tars a pull must produce, in order.
//! # let _ = pushed;
//! ```

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::{
    http::{request, Endpoint},
    media::{
        needs_urls, DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX,
        OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST,
    },
    tools::require_tool,
};

/// A tar of regular files with fixed metadata, so equal input gives equal bytes.
pub fn tar_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        builder
            .append_data(&mut header, path, *content)
            .expect("appending to a tar in memory");
    }
    builder.into_inner().expect("finishing a tar in memory")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd in memory")
}

/// `sha256:<hex>`.
pub fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A layer: its media type, the tar it claims to be (whose digest becomes
/// the config's diff_id) and the blob pushed for it. Use `with_type` with a
/// `tar` the blob does not decompress to, for a wrong diff_id.
#[derive(Debug, Clone)]
pub struct FixtureLayer {
    pub media_type: String,
    pub tar: Vec<u8>,
    pub blob: Vec<u8>,
}

impl FixtureLayer {
    pub fn plain(tar: Vec<u8>) -> FixtureLayer {
        FixtureLayer::with_type(OCI_LAYER_TAR, tar.clone(), tar)
    }

    pub fn gzip(tar: Vec<u8>) -> FixtureLayer {
        let blob = gzip(&tar);
        FixtureLayer::with_type(OCI_LAYER_GZIP, tar, blob)
    }

    pub fn zstd(tar: Vec<u8>) -> FixtureLayer {
        let blob = zstd(&tar);
        FixtureLayer::with_type(OCI_LAYER_ZSTD, tar, blob)
    }

    pub fn with_type(media_type: &str, tar: Vec<u8>, blob: Vec<u8>) -> FixtureLayer {
        FixtureLayer {
            media_type: media_type.to_owned(),
            tar,
            blob,
        }
    }

    /// Compresses `tar` as `media_type` says (by its suffix).
    pub fn of_type(media_type: &str, tar: Vec<u8>) -> FixtureLayer {
        let blob = if media_type.ends_with("gzip") {
            gzip(&tar)
        } else if media_type.ends_with("zstd") {
            zstd(&tar)
        } else {
            tar.clone()
        };
        FixtureLayer::with_type(media_type, tar, blob)
    }
}

/// `(os, architecture, variant)`.
pub type PlatformSpec<'a> = (&'a str, &'a str, Option<&'a str>);

/// This machine's architecture as OCI names it: the platform a cache picks
/// by default.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An image as built (and usually pushed): exact bytes and digests.
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<FixtureLayer>,
    pub layer_digests: Vec<String>,
    pub diff_ids: Vec<String>,
}

/// Builds config and manifest bytes without pushing anything. Layers that
/// need `urls` point at `http://<url_host>/v2/<repo>/blobs/<digest>`.
pub fn build_image(
    url_host: &str,
    repo: &str,
    layers: Vec<FixtureLayer>,
    docker_types: bool,
    platform: PlatformSpec,
) -> PushedImage {
    let (os, architecture, variant) = platform;
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(&l.tar)).collect();
    let layer_digests: Vec<String> = layers.iter().map(|l| sha256(&l.blob)).collect();
    let mut config = json!({
        "architecture": architecture,
        "os": os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(variant) = variant {
        config["variant"] = json!(variant);
    }
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256(&config);
    let (manifest_type, config_type) = if docker_types {
        (DOCKER_MANIFEST, DOCKER_CONFIG)
    } else {
        (OCI_MANIFEST, OCI_CONFIG)
    };
    let layer_descriptors: Vec<Value> = layers
        .iter()
        .zip(&layer_digests)
        .map(|(layer, digest)| {
            let mut descriptor = json!({
                "mediaType": layer.media_type,
                "digest": digest,
                "size": layer.blob.len(),
            });
            if needs_urls(&layer.media_type) {
                descriptor["urls"] = json!([format!("http://{url_host}/v2/{repo}/blobs/{digest}")]);
            }
            descriptor
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": layer_descriptors,
    }))
    .unwrap();
    PushedImage {
        manifest_digest: sha256(&manifest),
        manifest,
        manifest_media_type: manifest_type.to_owned(),
        config,
        config_digest,
        layers,
        layer_digests,
        diff_ids,
    }
}

/// Uploads a blob with a POST then a monolithic PUT.
pub fn push_blob(host: &str, repo: &str, blob: &[u8]) -> String {
    push_blob_to(&Endpoint::plain(host), repo, blob)
}

/// [`push_blob`] to any registry (credentials, HTTPS).
pub fn push_blob_to(endpoint: &Endpoint, repo: &str, blob: &[u8]) -> String {
    let host = endpoint.host.as_str();
    let digest = sha256(blob);
    let started = request(
        endpoint,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        &[],
    )
    .unwrap_or_else(|e| panic!("POST upload to {host}: {e}"));
    assert_eq!(
        started.status,
        202,
        "starting a blob upload: {}",
        started.describe()
    );
    let location = started.header("Location").expect("upload Location header");
    let path = match location.find("://") {
        Some(scheme_end) => {
            let after = &location[scheme_end + 3..];
            &after[after.find('/').unwrap_or(after.len())..]
        }
        None => location,
    };
    let separator = if path.contains('?') { '&' } else { '?' };
    let put_path = format!("{path}{separator}digest={digest}");
    let done = request(
        endpoint,
        "PUT",
        &put_path,
        &[("Content-Type", "application/octet-stream")],
        blob,
    )
    .unwrap_or_else(|e| panic!("PUT blob to {host}: {e}"));
    assert_eq!(
        done.status,
        201,
        "finishing blob upload of {digest}: {}",
        done.describe()
    );
    digest
}

/// PUTs manifest bytes unchanged under `reference` (a tag or a digest).
pub fn push_manifest(host: &str, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    push_manifest_to(&Endpoint::plain(host), repo, reference, media_type, body)
}

/// [`push_manifest`] to any registry (credentials, HTTPS).
pub fn push_manifest_to(
    endpoint: &Endpoint,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) {
    let host = endpoint.host.as_str();
    let response = request(
        endpoint,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        body,
    )
    .unwrap_or_else(|e| panic!("PUT manifest to {host}: {e}"));
    assert_eq!(
        response.status,
        201,
        "pushing manifest {repo}:{reference}: {}",
        response.describe()
    );
    assert_eq!(
        response.header("Docker-Content-Digest"),
        Some(sha256(body).as_str()),
        "the registry must keep manifest bytes unchanged"
    );
}

/// Builds and pushes an image (config, every layer blob, then the manifest
/// under `tag`, or by digest when `tag` is `None`). Blocking.
pub fn push_image(
    host: &str,
    repo: &str,
    tag: Option<&str>,
    layers: Vec<FixtureLayer>,
    docker_types: bool,
    platform: PlatformSpec,
) -> PushedImage {
    push_image_to(
        &Endpoint::plain(host),
        repo,
        tag,
        layers,
        docker_types,
        platform,
    )
}

/// [`push_image`] to any registry (credentials, HTTPS).
pub fn push_image_to(
    endpoint: &Endpoint,
    repo: &str,
    tag: Option<&str>,
    layers: Vec<FixtureLayer>,
    docker_types: bool,
    platform: PlatformSpec,
) -> PushedImage {
    let image = build_image(&endpoint.host, repo, layers, docker_types, platform);
    push_blob_to(endpoint, repo, &image.config);
    for layer in &image.layers {
        push_blob_to(endpoint, repo, &layer.blob);
    }
    let reference = tag.unwrap_or(&image.manifest_digest);
    push_manifest_to(
        endpoint,
        repo,
        reference,
        &image.manifest_media_type,
        &image.manifest,
    );
    image
}

/// Pushes an OCI index (or Docker manifest list) of already pushed images,
/// each entry carrying its platform. Returns the index bytes and digest.
pub fn push_index(
    host: &str,
    repo: &str,
    tag: &str,
    entries: &[(&PushedImage, PlatformSpec)],
    docker_types: bool,
) -> (Vec<u8>, String) {
    push_index_to(&Endpoint::plain(host), repo, tag, entries, docker_types)
}

/// [`push_index`] to any registry (credentials, HTTPS).
pub fn push_index_to(
    endpoint: &Endpoint,
    repo: &str,
    tag: &str,
    entries: &[(&PushedImage, PlatformSpec)],
    docker_types: bool,
) -> (Vec<u8>, String) {
    let index_type = if docker_types {
        DOCKER_MANIFEST_LIST
    } else {
        OCI_INDEX
    };
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(image, (os, architecture, variant))| {
            let mut platform = json!({"architecture": architecture, "os": os});
            if let Some(variant) = variant {
                platform["variant"] = json!(variant);
            }
            json!({
                "mediaType": image.manifest_media_type,
                "digest": image.manifest_digest,
                "size": image.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": manifests,
    }))
    .unwrap();
    push_manifest_to(endpoint, repo, tag, index_type, &body);
    let digest = sha256(&body);
    (body, digest)
}

/// Bytes that do not compress (xorshift from a fixed seed), so a layer's
/// blob is about as large as its tar.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Pushes `repo:v1` (linux/amd64) with one gzip layer per `(seed, size)`:
/// a tar of one file of [`noise`], so every layer is distinct and does
/// not compress.
pub fn push_noise_image(host: &str, repo: &str, layers: &[(u64, usize)]) -> PushedImage {
    let layers = layers
        .iter()
        .map(|&(seed, size)| {
            FixtureLayer::gzip(tar_layer(&[(&format!("f{seed}"), &noise(seed, size))]))
        })
        .collect();
    push_image(
        host,
        repo,
        Some("v1"),
        layers,
        false,
        ("linux", "amd64", None),
    )
}

/// A small tar whose content names `name` (a directory holding a text file
/// and an empty file), so layers made from different names differ.
pub fn distinct_tar(name: &str) -> Vec<u8> {
    let body = format!("content of {name}\n").repeat(50);
    tar_layer(&[
        (&format!("{name}/file.txt"), body.as_bytes()),
        (&format!("{name}/empty"), b""),
    ])
}

/// `data` gzip-compressed by the `pigz` CLI: an encoder independent of the
/// flate2/zlib-ng the library decodes with.
pub fn pigz(data: &[u8]) -> Vec<u8> {
    compress_with("pigz", &["-c", "-6"], data)
}

/// `data` zstd-compressed by the `zstd` CLI: an encoder independent of the
/// zstd crate the library decodes with.
pub fn zstd_cli(data: &[u8]) -> Vec<u8> {
    compress_with("zstd", &["-c", "-q", "-3"], data)
}

/// `data` piped through `tool args...`, whose stdout is the result.
fn compress_with(tool: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
    let program = require_tool(tool, &format!("apt-get install -y {tool}"));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {tool}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = data.to_vec();
    // Written from another thread: a full stdout pipe would block the write.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("waiting for a compressor");
    writer
        .join()
        .expect("writing to a compressor")
        .unwrap_or_else(|e| panic!("writing to {tool}: {e}"));
    assert!(output.status.success(), "{tool} failed: {}", output.status);
    output.stdout
}
