//! The codec table: every layer media type the library handles, the name
//! of its codec, and the decoder that turns such a blob into a tar. The
//! pipeline (`layer`), the fuzz selector (`fuzzing`) and the docs
//! ([`layer_media_types`]) all read this one table, so adding a codec is
//! one entry in the `codecs!` invocation below.

use std::fmt;
use std::io::{self, Read};

use crate::error::{Error, Result};

/// A decoder: wraps a blob's compressed bytes in a reader of its tar.
type Decoder = fn(&mut dyn Read) -> io::Result<Box<dyn Read + '_>>;

/// How one kind of layer blob is decoded.
pub(crate) struct Codec {
    /// Names the codec in errors (`corrupt gzip stream`) and in the docs.
    pub name: &'static str,
    /// The layer media types whose blobs this codec decodes.
    pub media_types: &'static [&'static str],
    decoder: Decoder,
}

impl Codec {
    /// The codec of a layer media type, or an unsupported error naming it.
    pub(crate) fn of(media_type: &str) -> Result<&'static Codec> {
        CODECS
            .iter()
            .find(|codec| codec.media_types.contains(&media_type))
            .ok_or_else(|| Error::unsupported(format!("layer media type {media_type:?}")))
    }

    /// Decodes `blob`: hands `out` the decoder, a reader of the tar, to
    /// read to its end into buffers of its own (no copy through an
    /// intermediate one), then reads whatever the decoder left of `blob`.
    /// That is the rule every codec keeps: a decoder that stops early (at
    /// the end of its stream, with bytes after it) still leaves the blob
    /// read whole, so its size and digest checks cover every byte.
    pub(crate) fn decode(
        &self,
        blob: &mut dyn Read,
        out: impl FnOnce(&mut dyn Read) -> io::Result<()>,
    ) -> io::Result<()> {
        out(&mut *(self.decoder)(&mut *blob)?)?;
        io::copy(blob, &mut io::sink())?;
        Ok(())
    }
}

impl PartialEq for Codec {
    fn eq(&self, other: &Codec) -> bool {
        self.name == other.name
    }
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Codec({})", self.name)
    }
}

fn tar(blob: &mut dyn Read) -> io::Result<Box<dyn Read + '_>> {
    Ok(Box::new(blob))
}

/// ISA-L's igzip where the `isal` feature (on by default) builds it: it
/// inflates 1.4-1.5x as fast as zlib-ng on real layers.
#[cfg(feature = "isal")]
fn gzip(blob: &mut dyn Read) -> io::Result<Box<dyn Read + '_>> {
    Ok(Box::new(crate::inflate::GzipDecoder::new(blob)))
}

/// zlib-ng through flate2, the fallback without the `isal` feature.
#[cfg(not(feature = "isal"))]
fn gzip(blob: &mut dyn Read) -> io::Result<Box<dyn Read + '_>> {
    // Multi-member: pigz and parallel compressors write several members.
    Ok(Box::new(flate2::read::MultiGzDecoder::new(blob)))
}

fn zstd(blob: &mut dyn Read) -> io::Result<Box<dyn Read + '_>> {
    Ok(Box::new(zstd::Decoder::new(blob)?))
}

/// Builds [`CODECS`] and the docs of [`layer_media_types`] from one list.
macro_rules! codecs {
    ($($name:literal => $decoder:ident [$($media_type:literal),+ $(,)?])+) => {
        /// Every codec. The fuzz selector picks by index: keep the order.
        pub(crate) static CODECS: &[Codec] = &[$(Codec {
            name: $name,
            media_types: &[$($media_type),+],
            decoder: $decoder,
        }),+];

        /// The layer media types the library handles, each with the name
        /// of the codec that decodes it; any other layer media type fails
        /// with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported). Read from
        /// the one table the pipeline uses:
        ///
        $(#[doc = concat!("- ", $name, ":", $(" `", $media_type, "`"),+)])+
        ///
        /// Every decoder leaves the blob read whole: bytes after the end of
        /// a compressed stream are read too, and the blob's size and digest
        /// are checked over all of them.
        pub fn layer_media_types() -> impl Iterator<Item = (&'static str, &'static str)> {
            CODECS.iter().flat_map(|codec| {
                codec.media_types.iter().map(move |media_type| (*media_type, codec.name))
            })
        }
    };
}

codecs! {
    "tar" => tar [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar",
    ]
    "gzip" => gzip [
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ]
    "zstd" => zstd [
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Write;

    use super::*;
    use crate::error::ErrorKind;
    use crate::manifest;

    /// The layer media types of the OCI image spec and Docker's image
    /// manifest v2 schema 2, with the codec each needs.
    const KNOWN: [(&str, &str); 9] = [
        ("application/vnd.oci.image.layer.v1.tar", "tar"),
        ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip"),
        ("application/vnd.oci.image.layer.v1.tar+zstd", "zstd"),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            "tar",
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "gzip",
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            "zstd",
        ),
        ("application/vnd.docker.image.rootfs.diff.tar", "tar"),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", "gzip"),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "gzip",
        ),
    ];

    #[test]
    fn every_layer_media_type_maps_to_one_table_entry_and_back() {
        for (media_type, name) in KNOWN {
            let holders: Vec<_> = CODECS
                .iter()
                .filter(|c| c.media_types.contains(&media_type))
                .map(|c| c.name)
                .collect();
            assert_eq!(holders, [name], "{media_type}");
            assert_eq!(Codec::of(media_type).unwrap().name, name, "{media_type}");
        }
        let listed: Vec<_> = layer_media_types().collect();
        assert_eq!(listed.len(), KNOWN.len(), "{listed:?}");
        assert_eq!(
            listed.iter().copied().collect::<HashSet<_>>(),
            KNOWN.into_iter().collect::<HashSet<_>>()
        );
        let names: HashSet<_> = CODECS.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), CODECS.len(), "codec names are unique");
        // The fuzz selector's order: 0 tar, 1 gzip, 2 zstd.
        let order: Vec<_> = CODECS.iter().map(|c| c.name).collect();
        assert_eq!(order, ["tar", "gzip", "zstd"]);
    }

    #[test]
    fn documents_and_unknown_types_are_not_layers() {
        for media_type in [
            manifest::OCI_MANIFEST,
            manifest::OCI_INDEX,
            manifest::DOCKER_MANIFEST,
            manifest::DOCKER_MANIFEST_LIST,
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+lz4",
            "",
        ] {
            let Err(err) = Codec::of(media_type) else {
                panic!("{media_type:?} is taken for a layer")
            };
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
            assert_eq!(err.message(), format!("layer media type {media_type:?}"));
        }
    }

    /// A reader that counts what was read through it.
    struct Counted<'a>(&'a [u8], usize);

    impl Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn each_decoder_decodes_its_codec_and_reads_the_blob_whole() {
        let tar: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let encoded = [
            ("tar", tar.clone()),
            ("gzip", gz.finish().unwrap()),
            ("zstd", zstd::encode_all(&tar[..], 1).unwrap()),
        ];
        assert_eq!(encoded.len(), CODECS.len(), "a codec without a case here");
        for (name, blob) in encoded {
            let codec = CODECS.iter().find(|c| c.name == name).unwrap();
            let mut out = Vec::new();
            let mut read = Counted(&blob, 0);
            codec
                .decode(&mut read, |tar| tar.read_to_end(&mut out).map(drop))
                .unwrap();
            assert!(out == tar, "{name}: {} bytes decoded", out.len());
            assert_eq!(read.1, blob.len(), "{name}");
        }
    }

    /// A reader that hands out at most 7 bytes a read, so gzip headers,
    /// blocks and trailers straddle the decoder's reads.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7);
            self.0.read(&mut buf[..n])
        }
    }

    fn gzip_member(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    /// Runs for whichever gzip decoder the build has (ISA-L by default,
    /// zlib-ng with `--no-default-features`), so both keep one behaviour.
    #[test]
    fn gzip_decodes_every_member_and_checks_each_trailer() {
        let gzip = Codec::of("application/vnd.oci.image.layer.v1.tar+gzip").unwrap();
        let decode = |blob: &[u8]| {
            let (mut out, mut read) = (Vec::new(), Counted(blob, 0));
            gzip.decode(&mut read, |tar| tar.read_to_end(&mut out).map(drop))?;
            Ok::<_, io::Error>((out, read.1))
        };
        let one: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let two = b"the second member".repeat(1000);
        // Concatenated members, as `cat a.gz b.gz` and parallel compressors
        // write them, with an empty member between.
        let members = [gzip_member(&one), gzip_member(b""), gzip_member(&two)];
        let blob = members.concat();
        let whole = [one.as_slice(), &two].concat();
        let (out, read) = decode(&blob).unwrap();
        assert!(out == whole, "{} bytes decoded", out.len());
        assert_eq!(read, blob.len());
        let mut out = Vec::new();
        gzip.decode(&mut Trickle(&blob), |tar| {
            tar.read_to_end(&mut out).map(drop)
        })
        .unwrap();
        assert!(out == whole, "trickled: {} bytes decoded", out.len());

        // Damage the trailer of the first member (CRC32, then ISIZE) and of
        // the last one; cut the blob short; add bytes that are not a member.
        let first_end = members[0].len();
        for (case, at) in [
            ("first CRC32", first_end - 8),
            ("first ISIZE", first_end - 4),
            ("last CRC32", blob.len() - 8),
            ("last ISIZE", blob.len() - 1),
        ] {
            let mut bad = blob.clone();
            bad[at] ^= 0x01;
            assert!(decode(&bad).is_err(), "{case}");
        }
        for cut in [1, 8, blob.len() / 2, blob.len() - 1] {
            assert!(decode(&blob[..cut]).is_err(), "cut to {cut} bytes");
        }
        for tail in [&b"\0"[..], b"\x1f", b"\x1f\x8b", b"not a gzip member"] {
            let bad = [blob.as_slice(), tail].concat();
            assert!(decode(&bad).is_err(), "trailing {tail:?}");
        }
        assert!(decode(b"").is_err(), "an empty blob is not a gzip stream");
        // A member whose deflate data runs into its trailer (found by the
        // fuzz target): an error, never a panic or a read outside the input.
        let runs_on = [
            &b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x24\x02\x03\x03"[..],
            &[0; 14],
        ]
        .concat();
        assert!(decode(&runs_on).is_err());
    }

    #[test]
    fn a_decoder_that_stops_early_still_leaves_the_blob_read_whole() {
        fn first_five(blob: &mut dyn Read) -> io::Result<Box<dyn Read + '_>> {
            Ok(Box::new(blob.take(5)))
        }
        let short = Codec {
            name: "first five bytes",
            media_types: &[],
            decoder: first_five,
        };
        let blob = [b"layer".as_slice(), &[0; 4096]].concat();
        let (mut out, mut read) = (Vec::new(), Counted(&blob, 0));
        short
            .decode(&mut read, |tar| tar.read_to_end(&mut out).map(drop))
            .unwrap();
        assert_eq!(out, b"layer");
        assert_eq!(read.1, blob.len());
    }
}
