//! Content digests: parsing and validating `algorithm:hex` strings before they
//! are trusted anywhere (notably before they become part of a path), and
//! hashing content to check it against one.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

use crate::error::{Error, ErrorKind, Result};

/// The hex length of an algorithm's digests, for the algorithms handled.
pub(crate) fn hex_length(algorithm: &str) -> Option<usize> {
    match algorithm {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    }
}

/// A validated content digest: `sha256:` followed by 64 lowercase hex digits,
/// or `sha512:` followed by 128. Anything else is refused, so the algorithm
/// and hex parts are always safe to use as path components.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    text: String,
    split: usize,
}

impl Digest {
    /// Parses and validates a digest string.
    pub fn parse(text: &str) -> Result<Digest> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(Error::invalid_argument(format!(
                "digest {text:?} has no algorithm prefix"
            )));
        };
        let Some(hex_len) = hex_length(algorithm) else {
            return Err(Error::unsupported(format!(
                "digest algorithm {algorithm:?} in {text:?} (sha256 and sha512 are supported)"
            )));
        };
        let lower_hex = hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex.len() != hex_len || !lower_hex {
            return Err(Error::invalid_argument(format!(
                "digest {text:?} is not {algorithm}: followed by {hex_len} lowercase hex digits"
            )));
        }
        Ok(Digest {
            text: text.to_owned(),
            split: algorithm.len(),
        })
    }

    /// Parses a digest that came with content (a manifest, a config, a
    /// registry's header): a malformed one is the content's fault, so
    /// `InvalidContent`; an unknown algorithm stays `Unsupported`.
    pub(crate) fn parse_received(text: &str) -> Result<Digest> {
        Digest::parse(text).map_err(|e| match e.kind() {
            ErrorKind::InvalidArgument => e.with_kind(ErrorKind::InvalidContent),
            _ => e,
        })
    }

    /// The sha256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Digest {
        let mut hasher = Hasher::Sha256(Sha256::new());
        hasher.update(data);
        hasher.finish()
    }

    /// `"sha256"` or `"sha512"`.
    pub fn algorithm(&self) -> &str {
        &self.text[..self.split]
    }

    /// The hex part, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.text[self.split + 1..]
    }

    /// The whole digest, `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Checks that `data` hashes to this digest.
    pub fn verify(&self, data: &[u8], what: &str) -> Result<()> {
        let mut hasher = self.hasher();
        hasher.update(data);
        hasher.finish().check_matches(self, what)
    }

    /// A hasher of this digest's algorithm.
    pub(crate) fn hasher(&self) -> Hasher {
        match self.algorithm() {
            "sha512" => Hasher::Sha512(Sha512::new()),
            _ => Hasher::Sha256(Sha256::new()),
        }
    }

    /// Checks that `self`, a computed digest, equals `expected`; a mismatch is
    /// [`ErrorKind::DigestMismatch`] naming `what`.
    pub(crate) fn check_matches(&self, expected: &Digest, what: &str) -> Result<()> {
        if self == expected {
            Ok(())
        } else {
            Err(Error::digest_mismatch(format!(
                "{what}: expected {expected}, got {self}"
            )))
        }
    }
}

/// Fails unless `received`, the byte count of a whole blob, is `expected`.
pub(crate) fn check_size(received: u64, expected: u64, what: &str) -> Result<()> {
    if received == expected {
        Ok(())
    } else {
        Err(Error::digest_mismatch(format!(
            "{what}: got {received} bytes, the descriptor says {expected}"
        )))
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(text: &str) -> Result<Digest> {
        Digest::parse(text)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An incremental hash producing a [`Digest`].
pub(crate) enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => ("sha256", hex(&h.finalize())),
            Hasher::Sha512(h) => ("sha512", hex(&h.finalize())),
        };
        Digest {
            text: format!("{algorithm}:{hex}"),
            split: algorithm.len(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn accepts_well_formed_digests() {
        let d = Digest::parse(EMPTY_SHA256).unwrap();
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(Digest::sha256_of(b""), d);
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(Digest::parse(&sha512).unwrap().algorithm(), "sha512");
    }

    #[test]
    fn refuses_anything_that_could_escape_a_path() {
        for bad in [
            "sha256:../../etc/passwd",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/",
            "sha256",
            "",
            "sha512:abcd",
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(ref e) if e.kind() == ErrorKind::InvalidArgument),
                "{bad:?} was accepted"
            );
        }
        assert!(matches!(
            Digest::parse("md5:abc"),
            Err(ref e) if e.kind() == ErrorKind::Unsupported
        ));
    }

    #[test]
    fn verify_reports_both_digests() {
        let d = Digest::parse(EMPTY_SHA256).unwrap();
        assert!(d.verify(b"", "blob").is_ok());
        let Err(err) = d.verify(b"x", "blob") else {
            panic!()
        };
        assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
        let msg = err.message();
        assert!(msg.contains(EMPTY_SHA256), "{msg}");
        assert!(msg.contains(&Digest::sha256_of(b"x").to_string()), "{msg}");
    }
}
