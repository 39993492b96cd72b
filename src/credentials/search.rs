//! The search order for one host's credentials: explicit credentials, the
//! auth file the caller named, else `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json`
//! and `~/.docker/config.json`; within a file, docker's precedence.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::auth_file::{read_auth_file, AuthFile};
use super::{Credential, CredentialSources, Environment, DOCKER_HUB};
use crate::error::{Error, Result};

/// One lookup: the host in both its given and normalized forms, and how to
/// reach the environment and helpers.
pub(super) struct Search<'a> {
    /// As given: it is the server URL helpers get for registries other than Docker Hub.
    pub(super) host: &'a str,
    /// What auth-file keys are compared with, after [`normalize`].
    pub(super) registry: String,
    pub(super) env: &'a dyn Environment,
    pub(super) helper_timeout: Duration,
}

impl<'a> Search<'a> {
    pub(super) fn new(
        host: &'a str,
        env: &'a dyn Environment,
        helper_timeout: Duration,
    ) -> Search<'a> {
        Search {
            host,
            registry: normalize(host),
            env,
            helper_timeout,
        }
    }

    pub(super) fn run(&self, sources: &CredentialSources) -> Result<Credential> {
        if let Some((_, username, password)) = sources
            .explicit
            .iter()
            .rev()
            .find(|(host, _, _)| normalize(host) == self.registry)
        {
            return Ok(Credential::Basic {
                username: username.clone(),
                password: password.clone(),
            });
        }
        if let Some(path) = &sources.auth_file {
            let file = read_auth_file(path)?
                .ok_or_else(|| Error::not_found(format!("auth file {}", path.display())))?;
            return Ok(self.in_file(path, &file)?.unwrap_or(Credential::Anonymous));
        }
        for path in default_auth_files(self.env) {
            if let Some(file) = read_auth_file(&path)? {
                if let Some(credential) = self.in_file(&path, &file)? {
                    return Ok(credential);
                }
            }
        }
        Ok(Credential::Anonymous)
    }

    /// The credentials `file` (read from `path`) holds for the host, if any.
    fn in_file(&self, path: &Path, file: &AuthFile) -> Result<Option<Credential>> {
        let helper = file
            .cred_helpers
            .as_ref()
            .and_then(|helpers| self.entry(helpers))
            .map(|(_, helper)| helper.as_str())
            .filter(|helper| !helper.is_empty());
        let store = file
            .creds_store
            .as_deref()
            .filter(|store| !store.is_empty());
        if let Some(helper) = helper.or(store) {
            return self.ask_helper(helper, path);
        }
        match file.auths.as_ref().and_then(|auths| self.entry(auths)) {
            Some((key, entry)) => entry.credential(path, key),
            None => Ok(None),
        }
    }

    /// The entry of `map` for the host: the key spelled exactly as the host
    /// if there is one, else the first key, in sorted order so the choice
    /// does not vary between runs, that normalizes to the same registry.
    fn entry<'m, V>(&self, map: &'m BTreeMap<String, V>) -> Option<(&'m str, &'m V)> {
        map.get_key_value(self.host)
            .or_else(|| map.iter().find(|(key, _)| normalize(key) == self.registry))
            .map(|(key, value)| (key.as_str(), value))
    }
}

/// The registry an auth-file key, host or explicit host names, so that the
/// spellings docker and podman have written over the years compare equal.
pub(super) fn normalize(key: &str) -> String {
    let registry = match key.split_once("://") {
        // A URL ("https://host/v1/", from old docker logins) names a
        // registry by its host alone...
        Some((_, rest)) => rest.split_once('/').map_or(rest, |(host, _)| host),
        // ...but "host/namespace" is podman's key for credentials that hold
        // for part of a registry only: kept whole, it never equals a host,
        // since a lookup knows only the host (podman does the same).
        None => key,
    };
    let registry = registry.to_ascii_lowercase();
    match registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        _ => registry,
    }
}

/// The auth files looked at when the caller named none, in order.
fn default_auth_files(env: &dyn Environment) -> impl Iterator<Item = PathBuf> {
    // An empty variable counts as unset, as in docker and podman.
    let dir = |name: &str| env.var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    [
        dir("REGISTRY_AUTH_FILE"),
        dir("XDG_RUNTIME_DIR").map(|d| d.join("containers").join("auth.json")),
        dir("DOCKER_CONFIG").map(|d| d.join("config.json")),
        dir("HOME").map(|d| d.join(".docker").join("config.json")),
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::testing::*;
    use crate::credentials::{lookup, CredentialSources};
    use crate::ErrorKind;

    #[test]
    fn nothing_anywhere_is_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let env = FakeEnv::default().with("HOME", dir.path());
        let none = CredentialSources::default();
        assert_eq!(
            lookup("ghcr.io", &none, &env).map_err(|e| e.to_string()),
            Ok(Credential::Anonymous)
        );
        let bare = FakeEnv::default();
        assert_eq!(
            lookup("ghcr.io", &none, &bare).map_err(|e| e.to_string()),
            Ok(Credential::Anonymous)
        );
    }

    #[test]
    fn default_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let env = FakeEnv::default()
            .with("REGISTRY_AUTH_FILE", d.join("registry-auth.json"))
            .with("XDG_RUNTIME_DIR", d.join("run"))
            .with("DOCKER_CONFIG", d.join("docker-config"))
            .with("HOME", d.join("home"));
        let none = CredentialSources::default();
        let files = [
            (d.join("registry-auth.json"), "first"),
            (d.join("run/containers/auth.json"), "second"),
            (d.join("docker-config/config.json"), "third"),
            (d.join("home/.docker/config.json"), "fourth"),
        ];
        for (path, user) in &files {
            write(path, &auths("ghcr.io", user, "pw"));
        }
        // Each file in turn loses its entry (but stays), then disappears.
        for (i, (path, _)) in files.iter().enumerate() {
            assert_eq!(
                lookup("ghcr.io", &none, &env).map_err(|e| e.to_string()),
                Ok(basic(files[i].1, "pw"))
            );
            write(path, &auths("quay.io", "other", "pw"));
            let next = files
                .get(i + 1)
                .map_or(Credential::Anonymous, |f| basic(f.1, "pw"));
            assert_eq!(
                lookup("ghcr.io", &none, &env).map_err(|e| e.to_string()),
                Ok(next.clone())
            );
            std::fs::remove_file(path).unwrap();
            assert_eq!(
                lookup("ghcr.io", &none, &env).map_err(|e| e.to_string()),
                Ok(next)
            );
        }
    }

    #[test]
    fn empty_variables_are_unset() {
        let dir = tempfile::tempdir().unwrap();
        let env = FakeEnv::default()
            .with("REGISTRY_AUTH_FILE", "")
            .with("DOCKER_CONFIG", "")
            .with("HOME", dir.path());
        write(
            &dir.path().join(".docker/config.json"),
            &auths("ghcr.io", "home", "pw"),
        );
        let none = CredentialSources::default();
        assert_eq!(
            lookup("ghcr.io", &none, &env).map_err(|e| e.to_string()),
            Ok(basic("home", "pw"))
        );
    }

    #[test]
    fn explicit_overrides_files_and_last_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        write(&path, &auths("ghcr.io", "file", "pw"));
        let env = FakeEnv::default().with("REGISTRY_AUTH_FILE", &path);
        let mut sources = only_file(&path);
        sources.explicit = vec![
            ("ghcr.io".into(), "early".into(), "a".into()),
            ("quay.io".into(), "quay".into(), "b".into()),
            ("ghcr.io".into(), "late".into(), "c".into()),
            ("docker.io".into(), "hub".into(), "d".into()),
        ];
        assert_eq!(
            lookup("ghcr.io", &sources, &env).map_err(|e| e.to_string()),
            Ok(basic("late", "c"))
        );
        assert_eq!(
            lookup("index.docker.io", &sources, &env).map_err(|e| e.to_string()),
            Ok(basic("hub", "d"))
        );
        sources.auth_file = None;
        assert_eq!(
            lookup("ghcr.io", &sources, &env).map_err(|e| e.to_string()),
            Ok(basic("late", "c"))
        );
        assert_eq!(
            lookup("127.0.0.1:5000", &sources, &env).map_err(|e| e.to_string()),
            Ok(Credential::Anonymous)
        );
    }

    #[test]
    fn named_auth_file_is_the_only_file_read() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("named.json");
        let other = dir.path().join("other.json");
        write(&named, &auths("quay.io", "named", "pw"));
        write(&other, &auths("ghcr.io", "other", "pw"));
        write(
            &dir.path().join(".docker/config.json"),
            &auths("ghcr.io", "home", "pw"),
        );
        let env = FakeEnv::default()
            .with("REGISTRY_AUTH_FILE", &other)
            .with("HOME", dir.path());
        let sources = only_file(&named);
        assert_eq!(
            lookup("quay.io", &sources, &env).map_err(|e| e.to_string()),
            Ok(basic("named", "pw"))
        );
        assert_eq!(
            lookup("ghcr.io", &sources, &env).map_err(|e| e.to_string()),
            Ok(Credential::Anonymous)
        );
    }

    #[test]
    fn missing_named_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.json");
        let err = lookup("ghcr.io", &only_file(&path), &FakeEnv::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert_eq!(err.message(), format!("auth file {}", path.display()));
    }

    #[test]
    fn docker_hub_spellings_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let keys = [
            "https://index.docker.io/v1/",
            "http://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
            "https://registry-1.docker.io/v2/",
        ];
        for key in keys {
            write(&path, &auths(key, "hub", "pw"));
            for host in ["index.docker.io", "docker.io", "registry-1.docker.io"] {
                let found = lookup(host, &only_file(&path), &FakeEnv::default());
                assert_eq!(
                    found.map_err(|e| e.to_string()),
                    Ok(basic("hub", "pw")),
                    "key {key}, host {host}"
                );
            }
            let other = lookup("ghcr.io", &only_file(&path), &FakeEnv::default());
            assert_eq!(
                other.map_err(|e| e.to_string()),
                Ok(Credential::Anonymous),
                "key {key}"
            );
        }
    }

    #[test]
    fn key_spellings_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        for (key, host) in [
            ("ghcr.io", "ghcr.io"),
            ("https://ghcr.io", "ghcr.io"),
            ("http://ghcr.io/", "ghcr.io"),
            ("https://GHCR.io/v2/token", "ghcr.io"),
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"),
        ] {
            write(&path, &auths(key, "u", "pw"));
            let found = lookup(host, &only_file(&path), &FakeEnv::default());
            assert_eq!(
                found.map_err(|e| e.to_string()),
                Ok(basic("u", "pw")),
                "key {key}"
            );
        }
        // Other ports, and podman's per-namespace keys, are other credentials.
        for (key, host) in [
            ("127.0.0.1:5001", "127.0.0.1:5000"),
            ("127.0.0.1", "127.0.0.1:5000"),
            ("ghcr.io/someorg", "ghcr.io"),
        ] {
            write(&path, &auths(key, "u", "pw"));
            let found = lookup(host, &only_file(&path), &FakeEnv::default());
            assert_eq!(
                found.map_err(|e| e.to_string()),
                Ok(Credential::Anonymous),
                "key {key}"
            );
        }
        // The exact spelling wins over another that normalizes the same.
        write(
            &path,
            r#"{"auths": {"https://ghcr.io": {"username": "url", "password": "a"},
                "ghcr.io": {"username": "exact", "password": "b"}}}"#,
        );
        let found = lookup("ghcr.io", &only_file(&path), &FakeEnv::default());
        assert_eq!(found.map_err(|e| e.to_string()), Ok(basic("exact", "b")));
    }

    #[test]
    fn empty_entry_lets_later_files_answer() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.json");
        write(&first, r#"{"auths": {"ghcr.io": {}}}"#);
        write(
            &dir.path().join(".docker/config.json"),
            &auths("ghcr.io", "home", "pw"),
        );
        let env = FakeEnv::default()
            .with("REGISTRY_AUTH_FILE", &first)
            .with("HOME", dir.path());
        let none = CredentialSources::default();
        assert_eq!(
            lookup("ghcr.io", &none, &env).map_err(|e| e.to_string()),
            Ok(basic("home", "pw"))
        );
    }
}
