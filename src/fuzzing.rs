//! Entry points for the cargo-fuzz targets in fuzz/, not a stable API.
//! Each function feeds one of the crate's parsers untrusted input the way
//! the cache would, and returns the parser's error for input it refuses. A
//! panic, in them or in what they call, is a bug the fuzzers report.

use std::io::{Seek, Write};
use std::path::Path;

use crate::codec::{Codec, CODECS};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::{self, LayerCheck};
use crate::manifest::{self, Document};
use crate::platform::Platform;

/// The most uncompressed bytes [`layer`] accepts, so no input can exhaust memory.
const MAX_LAYER_OUTPUT: u64 = 64 << 20;
/// The bits of [`layer`]'s selector byte that pick the codec.
const SELECTOR_CODEC: u8 = 0b11;
// Every codec must be reachable: a fifth needs a wider selector (and the
// other fields of the selector byte moved).
const _: () = assert!(CODECS.len() <= SELECTOR_CODEC as usize + 1);

/// An image reference, as every cache call parses it, and the parts the
/// cache then reads: the normalized name, the registry, a pinned digest.
pub fn reference(text: &str) -> Result<()> {
    let reference = crate::cache::parse_reference(text)?;
    let _ = (reference.whole(), reference.resolve_registry());
    match reference.digest() {
        Some(pinned) => Digest::parse(pinned).map(drop),
        None => Ok(()),
    }
}

/// A platform string. One that parses displays as a string that parses
/// back to the same platform.
pub fn platform(text: &str) -> Result<()> {
    let platform: Platform = text.parse()?;
    let shown = platform.to_string();
    let again: Platform = shown
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} displays as {shown:?}, which does not parse: {e}"));
    assert_eq!(again, platform, "{text:?} displays as {shown:?}");
    let _ = platform.compatible();
    Ok(())
}

/// A manifest or index, and the digests (and for an index the platforms,
/// for a manifest the layer compressions) of its descriptors. Returns the
/// first error after reading every descriptor.
pub fn manifest(bytes: &[u8]) -> Result<()> {
    let (document, _media_type) = manifest::parse(bytes, "fuzzed manifest")?;
    let mut first_error = None;
    let mut note = |outcome: Result<()>| {
        if let Err(err) = outcome {
            first_error.get_or_insert(err);
        }
    };
    match document {
        Document::Index { manifests } => {
            for entry in &manifests {
                note(entry.digest().map(drop));
                if let Some(platform) = entry.platform() {
                    let _ = platform.to_string();
                }
            }
        }
        Document::Manifest { config, layers } => {
            note(config.digest().map(drop));
            for layer in &layers {
                note(layer.digest().map(drop));
                note(Codec::of(&layer.media_type).map(drop));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// An image config's diff_ids and platform.
pub fn config(bytes: &[u8]) -> Result<()> {
    let summary = manifest::config_summary(bytes, "fuzzed config")?;
    if let Some(platform) = summary.platform {
        let _ = platform.to_string();
    }
    Ok(())
}

/// A docker `config.json` or podman `auth.json`, and the credentials of its
/// `auths` entries. Credential helpers are never run.
pub fn auth_file(bytes: &[u8]) -> Result<()> {
    let path = Path::new("fuzzed-auth.json");
    crate::credentials::parse_auth_file(bytes, path)?.read_entries(path)
}

/// A containerd `hosts.toml`.
pub fn hosts_toml(text: &str) -> Result<()> {
    crate::hosts::parse(text, Path::new("fuzzed/hosts.toml")).map(drop)
}

/// A layer blob through the real decompress-and-verify path, from a temp
/// file. The first byte chooses how: bits 0-1 the codec, an index into the
/// codec table taken modulo its length (today 0 or 3 tar, 1 gzip, 2 zstd:
/// a new codec gets its own value with no change here); bit 7 set, a limit on the uncompressed size of
/// `(bits 2-6) * 4 KiB`, else 64 MiB. The rest is the blob.
/// Its digest and size are the blob's own, and its diff_id is that of empty
/// content, so any layer that uncompresses to something ends in a
/// `DigestMismatch`, after the decoder has read all of it.
pub fn layer(data: &[u8]) -> Result<()> {
    let Some((&selector, blob)) = data.split_first() else {
        return Ok(());
    };
    let codec = &CODECS[usize::from(selector & SELECTOR_CODEC) % CODECS.len()];
    let max_size = if selector & 0x80 != 0 {
        u64::from((selector >> 2) & 0x1f) * 4096
    } else {
        MAX_LAYER_OUTPUT
    };
    let check = LayerCheck {
        what: "fuzzed layer".into(),
        index: 0,
        digest: Digest::sha256_of(blob),
        size: blob.len() as u64,
        diff_id: Digest::sha256_of(b""),
        codec,
        max_size: Some(max_size),
        progress: None,
    };
    let io = |e: std::io::Error| Error::io(format!("fuzzed layer temp file: {e}")).with_source(e);
    let mut file = tempfile::tempfile().map_err(io)?;
    file.write_all(blob).map_err(io)?;
    file.rewind().map_err(io)?;
    layer::unpack_local(&check, file).map(drop)
}

/// A layer tar through the tar index: the first byte picks the chunk size
/// the parser is fed (1 to 256 bytes, as the pass feeds it whatever its
/// writer wrote), the rest is the tar. A tar the parser accepts must give an
/// index that opens, in which every record is found by lookup and listed by
/// its parent. The input is also opened as an index, which must fail
/// cleanly.
pub fn tar_index(data: &[u8]) -> Result<()> {
    use crate::tar_index::format::{build, TarIndex};
    use crate::tar_index::parse::Parser;

    let Some((&selector, tar)) = data.split_first() else {
        return Ok(());
    };
    let diff_id = Digest::sha256_of(b"");
    let _ = TarIndex::from_bytes(data.to_vec(), &diff_id);
    let mut parser = Parser::new();
    for chunk in tar.chunks(usize::from(selector) + 1) {
        parser.feed(chunk)?;
    }
    let size = parser.position();
    let bytes = build(parser.finish()?, &diff_id, size)?;
    let index = TarIndex::from_bytes(bytes, &diff_id)
        .unwrap_or_else(|e| panic!("a built index does not open: {e}"));
    for at in 0..index.len() {
        let entry = index.entry(at);
        let path = entry.path();
        let found = index.lookup(&path).map(|e| e.path());
        assert_eq!(found.as_deref(), Some(&path[..]), "lookup of record {at}");
        if !path.is_empty() {
            let listed = index
                .children(entry.parent())
                .any(|c| c.name() == entry.name());
            assert!(listed, "record {at} is not listed by its parent");
        }
    }
    Ok(())
}
