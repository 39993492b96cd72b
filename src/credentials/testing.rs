//! Test fixtures shared by the credential tests: a fake environment and
//! auth files written on the fly.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;

use super::{Credential, CredentialSources, Environment};

#[derive(Default)]
pub(super) struct FakeEnv(pub(super) HashMap<String, String>);

impl FakeEnv {
    pub(super) fn with(mut self, name: &str, value: impl AsRef<Path>) -> FakeEnv {
        let value = value.as_ref().to_str().unwrap().to_owned();
        self.0.insert(name.to_owned(), value);
        self
    }
}

impl Environment for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

pub(super) fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

pub(super) fn basic(username: &str, password: &str) -> Credential {
    Credential::Basic {
        username: username.to_owned(),
        password: password.to_owned(),
    }
}

/// An auth file holding `user:password` for `key` as a base64 `auth`.
pub(super) fn auths(key: &str, user: &str, password: &str) -> String {
    format!(
        r#"{{"auths": {{"{key}": {{"auth": "{}"}}}}}}"#,
        encode_base64(format!("{user}:{password}").as_bytes())
    )
}

pub(super) fn only_file(path: &Path) -> CredentialSources {
    CredentialSources {
        auth_file: Some(path.to_owned()),
        ..CredentialSources::default()
    }
}

/// Standard, padded base64 of `data`, as `docker login` writes `auth`.
pub(super) fn encode_base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}
