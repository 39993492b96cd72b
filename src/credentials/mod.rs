//! Registry credentials, found the way docker and podman find them: the
//! caller's explicit per-host credentials first, then docker/podman auth files
//! (`auths`, `credHelpers`, `credsStore`), running `docker-credential-*`
//! helpers where a file names one. Secrets never reach an error message,
//! `Display` or `Debug`.
//!
//! This file holds the types and [`lookup`]; `search` walks the sources in
//! order, `auth_file` parses auth files and `helper` runs credential helpers.

use std::fmt;
use std::path::PathBuf;

use crate::error::Result;

mod auth_file;
mod helper;
mod search;
#[cfg(test)]
mod testing;

#[cfg(feature = "fuzzing")]
pub(crate) use auth_file::parse_auth_file;
use helper::HELPER_TIMEOUT;
use search::Search;

/// Docker Hub's key in auth files, and the server URL its helpers store it under.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// What every spelling of Docker Hub normalizes to.
const DOCKER_HUB: &str = "docker.io";

/// Credentials for one registry. Debug never shows secrets.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken` in auth files, or a helper's
    /// `<token>` user), to be exchanged for a registry token.
    IdentityToken(String),
}

/// Stands in for a secret in Debug output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &Redacted)
                .finish(),
            Credential::IdentityToken(_) => {
                f.debug_tuple("IdentityToken").field(&Redacted).finish()
            }
        }
    }
}

/// Where credentials may come from, besides the environment.
#[derive(Clone, Default)]
pub(crate) struct CredentialSources {
    /// `(host[:port], username, password)` set by the caller. They override
    /// every file; for a host named twice the later entry wins. Docker Hub's
    /// spellings (`docker.io`, `index.docker.io`, ...) are one host.
    pub explicit: Vec<(String, String, String)>,
    /// An auth file the caller named: when set, it is the only file read.
    pub auth_file: Option<PathBuf>,
}

impl fmt::Debug for CredentialSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let explicit: Vec<_> = self
            .explicit
            .iter()
            .map(|(host, username, _)| (host, username, Redacted))
            .collect();
        f.debug_struct("CredentialSources")
            .field("explicit", &explicit)
            .field("auth_file", &self.auth_file)
            .finish()
    }
}

/// The process environment, injectable so tests need not mutate the real one.
pub(crate) trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real environment of this process.
pub(crate) struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Credentials for `host`, a registry as oci-client's
/// `Reference::resolve_registry()` gives it ("index.docker.io", "ghcr.io",
/// "127.0.0.1:5000").
///
/// Explicit credentials for the host win. Otherwise, when the caller named an
/// auth file, only that file is read (it must exist). Otherwise the first of
/// `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `$DOCKER_CONFIG/config.json` and `$HOME/.docker/config.json` that exists
/// and yields credentials for the host is used, and with none the result is
/// [`Credential::Anonymous`]. A file yields nothing for the host when it has
/// no entry for it, an empty entry, or a helper that reports "credentials not
/// found"; the search then goes on to the next file, as podman's does.
///
/// Within a file docker's precedence holds: `credHelpers[host]`, else
/// `credsStore`, else `auths[host]`. With both a store and an `auths` entry
/// docker asks the store (podman would read the entry): `docker login` with a
/// store leaves empty placeholder entries in `auths`.
///
/// May run a credential helper, which blocks for up to 30 seconds.
pub(crate) fn lookup(
    host: &str,
    sources: &CredentialSources,
    env: &dyn Environment,
) -> Result<Credential> {
    Search::new(host, env, HELPER_TIMEOUT).run(sources)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::testing::*;

    #[test]
    fn debug_redacts_secrets() {
        let credential = basic("alice", "hunter2");
        assert_eq!(
            format!("{credential:?}"),
            r#"Basic { username: "alice", password: <redacted> }"#
        );
        let token = Credential::IdentityToken("hunter2".into());
        assert_eq!(format!("{token:?}"), "IdentityToken(<redacted>)");
        assert_eq!(format!("{:?}", Credential::Anonymous), "Anonymous");
        let sources = CredentialSources {
            explicit: vec![("ghcr.io".into(), "alice".into(), "hunter2".into())],
            auth_file: Some("/etc/auth.json".into()),
        };
        let shown = format!("{sources:?}");
        assert_eq!(
            shown,
            r#"CredentialSources { explicit: [("ghcr.io", "alice", <redacted>)], auth_file: Some("/etc/auth.json") }"#
        );
        assert!(!format!("{sources:#?}").contains("hunter2"));
    }
}
