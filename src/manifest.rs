//! The JSON documents the cache reads: descriptors, image manifests and
//! indexes (OCI and Docker schema 2), and the part of an image config that
//! lists the layers' diff_ids. Parsing is lenient about fields it does not
//! need and strict about the ones it trusts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::platform::Platform;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// A content descriptor as it appears in manifests, indexes and `index.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformField>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The `platform` object of an index entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct PlatformField {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Descriptor {
    /// The descriptor's digest, validated.
    pub(crate) fn digest(&self) -> Result<Digest> {
        Digest::parse_received(&self.digest)
    }

    /// The normalized platform of an index entry, if it names one.
    pub(crate) fn platform(&self) -> Option<Platform> {
        let p = self.platform.as_ref()?;
        Some(Platform::new(&p.os, &p.architecture, p.variant.as_deref()))
    }
}

/// A parsed manifest or index.
pub(crate) enum Document {
    Index {
        manifests: Vec<Descriptor>,
    },
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
struct RawDocument {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

/// Parses a manifest or index and returns it with its media type. Documents
/// without a `mediaType` field (umoci writes such manifests) are recognized
/// by their shape and given the OCI type.
pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<(Document, String)> {
    let raw: RawDocument = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid_content(format!("{what} is not a valid manifest: {e}")))?;
    if raw.schema_version != Some(2) {
        return Err(Error::unsupported(format!(
            "{what} has schemaVersion {:?}; only schema 2 manifests are handled",
            raw.schema_version
        )));
    }
    let malformed = |missing: &str| Error::invalid_content(format!("{what} has no {missing}"));
    let is_index = match raw.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        Some(other) => {
            return Err(Error::unsupported(format!(
                "{what} has media type {other:?}"
            )))
        }
        None => raw.manifests.is_some(),
    };
    let media_type = raw
        .media_type
        .unwrap_or_else(|| if is_index { OCI_INDEX } else { OCI_MANIFEST }.to_owned());
    let document = if is_index {
        Document::Index {
            manifests: raw.manifests.ok_or_else(|| malformed("manifests"))?,
        }
    } else {
        Document::Manifest {
            config: raw.config.ok_or_else(|| malformed("config"))?,
            layers: raw.layers.ok_or_else(|| malformed("layers"))?,
        }
    };
    Ok((document, media_type))
}

/// What the cache needs from an image config.
pub(crate) struct ConfigSummary {
    /// The layers' diff_ids, bottom first, each validated.
    pub diff_ids: Vec<Digest>,
    /// The platform the image is built for, when the config says.
    pub platform: Option<Platform>,
}

/// Reads the diff_ids and platform of an image config.
pub(crate) fn config_summary(config: &[u8], what: &str) -> Result<ConfigSummary> {
    #[derive(Deserialize)]
    struct Config {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<String>,
    }
    let config: Config = serde_json::from_slice(config)
        .map_err(|e| Error::invalid_content(format!("{what} is not a valid image config: {e}")))?;
    let diff_ids = config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| Digest::parse_received(d))
        .collect::<Result<_>>()?;
    let platform = match (&config.os, &config.architecture) {
        (Some(os), Some(arch)) if !os.is_empty() && !arch.is_empty() => {
            Some(Platform::new(os, arch, config.variant.as_deref()))
        }
        _ => None,
    };
    Ok(ConfigSummary { diff_ids, platform })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn recognizes_manifests_without_media_type() {
        let umoci = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#;
        let (doc, media_type) = parse(umoci, "m").unwrap();
        assert!(matches!(doc, Document::Manifest { .. }));
        assert_eq!(media_type, OCI_MANIFEST);
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(parse(index, "i").unwrap().1, OCI_INDEX);
    }

    #[test]
    fn refuses_other_schemas_and_types() {
        let schema1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(matches!(parse(schema1, "m"), Err(ref e) if e.kind() == ErrorKind::Unsupported));
        let other = br#"{"schemaVersion":2,"mediaType":"application/x-thing"}"#;
        let Err(err) = parse(other, "m") else {
            panic!()
        };
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        let msg = err.message();
        assert!(msg.contains("application/x-thing"), "{msg}");
        assert!(matches!(parse(b"{", "m"), Err(ref e) if e.kind() == ErrorKind::InvalidContent));
        let no_layers = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"d","size":1}}"#;
        assert!(matches!(
            parse(no_layers, "m"),
            Err(ref e) if e.kind() == ErrorKind::InvalidContent
        ));
    }

    #[test]
    fn config_diff_ids_are_validated_and_platform_read() {
        let bad = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:../x"]}}"#;
        assert!(matches!(
            config_summary(bad, "c"),
            Err(ref e) if e.kind() == ErrorKind::InvalidContent
        ));
        assert!(matches!(
            config_summary(b"{}", "c"),
            Err(ref e) if e.kind() == ErrorKind::InvalidContent
        ));
        let arm = br#"{"os":"linux","architecture":"arm","variant":"v6","rootfs":{"diff_ids":[]}}"#;
        let summary = config_summary(arm, "c").unwrap();
        assert_eq!(summary.platform.unwrap().to_string(), "linux/arm/v6");
        let bare = br#"{"rootfs":{"diff_ids":[]}}"#;
        assert!(config_summary(bare, "c").unwrap().platform.is_none());
    }
}
