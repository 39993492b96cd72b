//! The image value types a fetch returns: an [`Image`] (manifest, config,
//! layers for one platform) and its [`Layer`]s.

use oci_client::Reference;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// An image's manifest and config for one platform, and its layers. Layer
/// blobs are not downloaded until a layer is asked for.
#[derive(Debug, Clone)]
pub struct Image {
    pub(super) reference: String,
    pub(super) repository: Reference,
    pub(super) digest: Digest,
    pub(super) manifest: Vec<u8>,
    pub(super) config: Vec<u8>,
    pub(super) layers: Vec<Layer>,
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

    pub(super) fn layer(&self, index: usize) -> Result<&Layer> {
        self.layers.get(index).ok_or_else(|| {
            Error::invalid_argument(format!(
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
    pub(super) media_type: String,
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) diff_id: Digest,
    pub(super) urls: Option<Vec<String>>,
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
