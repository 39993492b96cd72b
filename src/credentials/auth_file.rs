//! Auth-file parsing: the parts of a docker `config.json` or podman
//! `auth.json` that say where credentials are, read with a size cap, and the
//! credentials of one `auths` entry.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::Deserialize;

#[cfg(feature = "fuzzing")]
use super::search::normalize;
use super::Credential;
use crate::error::{Error, Result};

/// Auth files are a few KiB; the cap keeps a misdirected path (a device,
/// a huge log) from being read into memory.
const MAX_AUTH_FILE_BYTES: u64 = 4 << 20;
/// The parts of a docker `config.json` or podman `auth.json` that say where
/// credentials are; every other field is ignored. Fields are `Option` so an
/// explicit `null` reads as absent, as it does for docker.
#[derive(Deserialize)]
pub(crate) struct AuthFile {
    #[serde(default)]
    pub(super) auths: Option<BTreeMap<String, AuthEntry>>,
    #[serde(default, rename = "credHelpers")]
    pub(super) cred_helpers: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "credsStore")]
    pub(super) creds_store: Option<String>,
}

/// The auth file at `path`, or None when there is no file there.
pub(super) fn read_auth_file(path: &Path) -> Result<Option<AuthFile>> {
    let unreadable = |e: io::Error| {
        Error::invalid_content(format!("auth file {} cannot be read: {e}", path.display()))
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    let mut data = Vec::new();
    file.take(MAX_AUTH_FILE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(unreadable)?;
    if data.len() as u64 > MAX_AUTH_FILE_BYTES {
        return Err(Error::invalid_content(format!(
            "auth file {} is larger than {} MiB",
            path.display(),
            MAX_AUTH_FILE_BYTES >> 20
        )));
    }
    parse_auth_file(&data, path).map(Some)
}

/// Parses the bytes of the auth file at `path` (named in errors).
pub(crate) fn parse_auth_file(data: &[u8], path: &Path) -> Result<AuthFile> {
    // serde_json's own message can quote a value (a password, say), so only
    // its category and position are kept.
    serde_json::from_slice(data).map_err(|e| {
        let problem = match e.classify() {
            serde_json::error::Category::Data => "a field of the wrong type",
            serde_json::error::Category::Eof => "truncated JSON",
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                "malformed JSON"
            }
        };
        Error::invalid_content(format!(
            "auth file {}: {problem} at line {}, column {}",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

#[cfg(feature = "fuzzing")]
impl AuthFile {
    /// What lookups read of the file without running a helper: every key
    /// normalized, and the credentials of every `auths` entry. Returns the
    /// first entry's error, after reading them all.
    pub(crate) fn read_entries(&self, path: &Path) -> Result<()> {
        let helpers = self.cred_helpers.iter().flat_map(|h| h.keys());
        let auths = self.auths.iter().flat_map(|a| a.keys());
        for key in helpers.chain(auths) {
            let _ = normalize(key);
        }
        let mut first_error = None;
        for (key, entry) in self.auths.iter().flatten() {
            if let Err(err) = entry.credential(path, key) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// One entry of `auths`.
#[derive(Deserialize)]
pub(super) struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl AuthEntry {
    /// The entry's credentials, or None for an empty entry. An identity token
    /// wins over a user and password, as in docker and podman, and `auth`
    /// over the separate fields, as in docker.
    pub(super) fn credential(&self, path: &Path, key: &str) -> Result<Option<Credential>> {
        let present = |field: &Option<String>| field.clone().filter(|v| !v.is_empty());
        if let Some(token) = present(&self.identitytoken) {
            return Ok(Some(Credential::IdentityToken(token)));
        }
        if let Some(auth) = present(&self.auth) {
            let invalid = || {
                Error::invalid_content(format!(
                    "auth file {}: the \"auth\" of {key:?} is not base64 of user:password",
                    path.display()
                ))
            };
            let decoded = decode_base64(auth.trim()).ok_or_else(invalid)?;
            let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
            // The user name cannot hold ':', the password can.
            return match decoded.split_once(':') {
                Some((username, password)) if !username.is_empty() => Ok(Some(Credential::Basic {
                    username: username.to_owned(),
                    password: password.to_owned(),
                })),
                _ => Err(invalid()),
            };
        }
        Ok(present(&self.username).map(|username| Credential::Basic {
            username,
            password: self.password.clone().unwrap_or_default(),
        }))
    }
}
/// Decodes standard base64 (RFC 4648 section 4). Padding may be left out, as
/// some tools do, but when present it must be complete; like docker's
/// decoder, nonzero bits after the last byte are ignored. Anything else
/// malformed gives None.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let engine = |padding| {
        GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(padding),
        )
    };
    let padding = if text.ends_with('=') {
        DecodePaddingMode::RequireCanonical
    } else {
        DecodePaddingMode::RequireNone
    };
    engine(padding).decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::testing::*;
    use crate::credentials::{lookup, CredentialSources};
    use crate::ErrorKind;

    #[test]
    fn malformed_file_is_invalid_content_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let cases = [
            r#"{"auths": "hunter2"}"#,
            r#"{"auths": {"ghcr.io": {"auth": hunter2}}}"#,
            r#"{"auths": {"ghcr.io": {"password": "hunter2"#,
            r#"{"credsStore": ["hunter2"]}"#,
        ];
        for content in cases {
            write(&path, content);
            for sources in [only_file(&path), CredentialSources::default()] {
                let env = FakeEnv::default().with("REGISTRY_AUTH_FILE", &path);
                let err = lookup("ghcr.io", &sources, &env).unwrap_err();
                let message = err.to_string();
                assert!(matches!(err.kind(), ErrorKind::InvalidContent), "{message}");
                assert!(message.contains(&path.display().to_string()), "{message}");
                assert!(!message.contains("hunter2"), "{message}");
            }
        }
        // A directory where the file should be cannot be read.
        let err = lookup("ghcr.io", &only_file(dir.path()), &FakeEnv::default()).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::InvalidContent), "{err}");
    }

    #[test]
    fn bad_base64_auth_is_invalid_content_without_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let not_user_password = encode_base64(b"hunter2");
        for auth in ["hunter2!", &not_user_password, &encode_base64(b":hunter2")] {
            write(
                &path,
                &format!(r#"{{"auths": {{"ghcr.io": {{"auth": "{auth}"}}}}}}"#),
            );
            let err = lookup("ghcr.io", &only_file(&path), &FakeEnv::default()).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err.kind(), ErrorKind::InvalidContent), "{message}");
            assert!(message.contains("\"ghcr.io\""), "{message}");
            assert!(
                !message.contains("hunter2") && !message.contains(auth),
                "{message}"
            );
        }
    }

    #[test]
    fn auth_entry_forms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let cases = [
            (auths("ghcr.io", "user", "pa:ss:word"), basic("user", "pa:ss:word")),
            (
                r#"{"auths": {"ghcr.io": {"username": "user", "password": "pw"}}}"#.into(),
                basic("user", "pw"),
            ),
            (
                r#"{"auths": {"ghcr.io": {"identitytoken": "tok"}}}"#.into(),
                Credential::IdentityToken("tok".into()),
            ),
            (
                format!(
                    r#"{{"auths": {{"ghcr.io": {{"auth": "{}", "identitytoken": "tok"}}}}}}"#,
                    encode_base64(b"user:pw")
                ),
                Credential::IdentityToken("tok".into()),
            ),
            (
                format!(
                    r#"{{"auths": {{"ghcr.io": {{"auth": "{}", "username": "x", "password": "y"}}}}}}"#,
                    encode_base64(b"user:pw")
                ),
                basic("user", "pw"),
            ),
            (
                r#"{"auths": {"ghcr.io": {"auth": "", "email": "a@b"}}, "HttpHeaders": {"X": "y"}}"#
                    .into(),
                Credential::Anonymous,
            ),
            (r#"{"auths": null, "credsStore": null}"#.into(), Credential::Anonymous),
            ("{}".into(), Credential::Anonymous),
        ];
        for (content, expected) in cases {
            write(&path, &content);
            let found = lookup("ghcr.io", &only_file(&path), &FakeEnv::default());
            assert_eq!(found.map_err(|e| e.to_string()), Ok(expected), "{content}");
        }
    }

    #[test]
    fn base64_decoding() {
        for (encoded, decoded) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
            ("Zg", "f"),
            ("Zm8", "fo"),
            ("dTpwYTpzcw==", "u:pa:ss"),
        ] {
            assert_eq!(
                decode_base64(encoded).as_deref(),
                Some(decoded.as_bytes()),
                "{encoded}"
            );
        }
        assert_eq!(decode_base64("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        for bad in ["Z", "Zm9vY", "Zg=", "Zm9v====", "Zm 9v", "Zm9v-_", "=Zm9"] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
        for data in [&b"\x00\xff\xfe"[..], b"user:p@ss:w0rd!", b"ab"] {
            assert_eq!(decode_base64(&encode_base64(data)).unwrap(), data);
        }
    }
}
