//! Registry credentials, found the way docker and podman find them: the
//! caller's explicit per-host credentials first, then docker/podman auth files
//! (`auths`, `credHelpers`, `credsStore`), running `docker-credential-*`
//! helpers where a file names one. Secrets never reach an error message,
//! `Display` or `Debug`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Docker Hub's key in auth files, and the server URL its helpers store it under.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// What every spelling of Docker Hub normalizes to.
const DOCKER_HUB: &str = "docker.io";

/// How long a credential helper may run: one waiting for a keychain prompt
/// that nobody will answer must not hang the pull.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Auth files are a few KiB; the cap keeps a misdirected path (a device,
/// a huge log) from being read into memory.
const MAX_AUTH_FILE_BYTES: u64 = 4 << 20;

/// The most of a helper's stdout or stderr kept; the rest is read and dropped.
const MAX_HELPER_OUTPUT: u64 = 1 << 20;

/// How much of a failing helper's stderr an error message quotes.
const MAX_STDERR_CHARS: usize = 200;

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

/// One lookup: the host in both its given and normalized forms, and how to
/// reach the environment and helpers.
struct Search<'a> {
    /// As given: it is the server URL helpers get for registries other than Docker Hub.
    host: &'a str,
    /// What auth-file keys are compared with, after [`normalize`].
    registry: String,
    env: &'a dyn Environment,
    helper_timeout: Duration,
}

impl<'a> Search<'a> {
    fn new(host: &'a str, env: &'a dyn Environment, helper_timeout: Duration) -> Search<'a> {
        Search {
            host,
            registry: normalize(host),
            env,
            helper_timeout,
        }
    }

    fn run(&self, sources: &CredentialSources) -> Result<Credential> {
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
                .ok_or_else(|| Error::NotFound(format!("auth file {}", path.display())))?;
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

    /// Asks `docker-credential-<name>`, named in the auth file at `path`.
    fn ask_helper(&self, name: &str, path: &Path) -> Result<Option<Credential>> {
        // A slash would let the name reach outside the PATH directories.
        if name.contains('/') {
            return Err(Error::InvalidContent(format!(
                "auth file {}: credential helper name {name:?} is not a plain name",
                path.display()
            )));
        }
        let program = format!("docker-credential-{name}");
        let what = format!("credential helper {program} for {}", self.host);
        let executable = self.find_on_path(&program).ok_or_else(|| {
            Error::Unauthorized(format!(
                "{what} (named in {}) is not on PATH",
                path.display()
            ))
        })?;
        let server_url = if self.registry == DOCKER_HUB {
            DOCKER_HUB_SERVER
        } else {
            self.host
        };
        let output = self.run_helper(&what, &executable, server_url)?;
        if !output.status.success() {
            // The docker-credential-helpers programs print this on stdout.
            let not_found = [&output.stdout, &output.stderr].iter().any(|text| {
                String::from_utf8_lossy(text)
                    .to_ascii_lowercase()
                    .contains("credentials not found")
            });
            if not_found {
                return Ok(None);
            }
            // Stdout is left out: it is where a helper writes the secret.
            return Err(Error::Unauthorized(format!(
                "{what} failed ({}){}",
                output.status,
                stderr_excerpt(&output.stderr)
            )));
        }
        // serde_json's message could quote the secret, so it is not kept.
        let reply: HelperReply = serde_json::from_slice(&output.stdout).map_err(|_| {
            Error::Unauthorized(format!(
                "{what} printed something other than credentials JSON"
            ))
        })?;
        Ok(reply.credential())
    }

    /// The first absolute PATH directory holding an executable `program`.
    fn find_on_path(&self, program: &str) -> Option<PathBuf> {
        let path = self.env.var("PATH")?;
        std::env::split_paths(&path)
            // Relative entries (the empty one means ".") would run whatever
            // the current directory holds; Go's exec.LookPath, which docker
            // uses, refuses them too.
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(program))
            .find(|candidate| {
                std::fs::metadata(candidate)
                    .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            })
    }

    /// Runs `executable get` with `server_url` on stdin, killing it at the
    /// deadline.
    fn run_helper(&self, what: &str, executable: &Path, server_url: &str) -> Result<HelperOutput> {
        // Stdin is a socket filled before the helper starts, not a pipe
        // written afterwards: writing to the pipe of a helper that already
        // exited raises SIGPIPE, which kills a C host that does not ignore it.
        let stdin_error = |e: io::Error| Error::Io(format!("{what}: preparing its stdin: {e}"));
        let (mut input, helper_stdin) = UnixStream::pair().map_err(stdin_error)?;
        input
            .write_all(server_url.as_bytes())
            .map_err(stdin_error)?;
        drop(input);
        let mut child = Command::new(executable)
            .arg("get")
            .stdin(Stdio::from(OwnedFd::from(helper_stdin)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::Unauthorized(format!("{what}: running {}: {e}", executable.display()))
            })?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());

        let deadline = Instant::now() + self.helper_timeout;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                outcome => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(match outcome {
                        Err(e) => Error::Unauthorized(format!("{what}: waiting for it: {e}")),
                        Ok(_) => Error::Timeout(format!(
                            "{what} ran longer than {:?} and was killed",
                            self.helper_timeout
                        )),
                    });
                }
            }
        };
        // A process the helper left behind may hold its output open; the
        // deadline bounds that wait too.
        let collect = |output: mpsc::Receiver<Vec<u8>>| match output
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(bytes) => Ok(bytes),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(Vec::new()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Timeout(format!(
                "{what} exited ({status}) but something it started kept its output open"
            ))),
        };
        Ok(HelperOutput {
            status,
            stdout: collect(stdout)?,
            stderr: collect(stderr)?,
        })
    }
}

/// The registry an auth-file key, host or explicit host names, so that the
/// spellings docker and podman have written over the years compare equal.
fn normalize(key: &str) -> String {
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

/// The parts of a docker `config.json` or podman `auth.json` that say where
/// credentials are; every other field is ignored. Fields are `Option` so an
/// explicit `null` reads as absent, as it does for docker.
#[derive(Deserialize)]
pub(crate) struct AuthFile {
    #[serde(default)]
    auths: Option<BTreeMap<String, AuthEntry>>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

/// The auth file at `path`, or None when there is no file there.
fn read_auth_file(path: &Path) -> Result<Option<AuthFile>> {
    let unreadable = |e: io::Error| {
        Error::InvalidContent(format!("auth file {} cannot be read: {e}", path.display()))
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
        return Err(Error::InvalidContent(format!(
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
        Error::InvalidContent(format!(
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
struct AuthEntry {
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
    fn credential(&self, path: &Path, key: &str) -> Result<Option<Credential>> {
        let present = |field: &Option<String>| field.clone().filter(|v| !v.is_empty());
        if let Some(token) = present(&self.identitytoken) {
            return Ok(Some(Credential::IdentityToken(token)));
        }
        if let Some(auth) = present(&self.auth) {
            let invalid = || {
                Error::InvalidContent(format!(
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
/// some tools do; anything else malformed gives None.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let unpadded = text
        .strip_suffix("==")
        .or_else(|| text.strip_suffix('='))
        .unwrap_or(text);
    if (unpadded.len() != text.len() && text.len() % 4 != 0) || unpadded.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(unpadded.len() / 4 * 3 + 2);
    let (mut bits, mut count) = (0u32, 0u32);
    for c in unpadded.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

/// What a credential helper's `get` prints on success.
#[derive(Deserialize)]
struct HelperReply {
    #[serde(default, rename = "Username")]
    username: String,
    #[serde(default, rename = "Secret")]
    secret: String,
}

impl HelperReply {
    fn credential(self) -> Option<Credential> {
        match (self.username.as_str(), self.secret.is_empty()) {
            ("" | "<token>", true) => None,
            ("<token>", false) => Some(Credential::IdentityToken(self.secret)),
            _ => Some(Credential::Basic {
                username: self.username,
                password: self.secret,
            }),
        }
    }
}

/// How a credential helper ended and what it printed.
struct HelperOutput {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Reads `stream` to its end on a thread of its own, so a helper never
/// blocks on a full pipe; the bytes (up to the cap) arrive on the receiver.
fn drain(stream: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    if let Some(mut stream) = stream {
        thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = (&mut stream).take(MAX_HELPER_OUTPUT).read_to_end(&mut kept);
            let _ = io::copy(&mut stream, &mut io::sink());
            let _ = sender.send(kept);
        });
    }
    receiver
}

/// `": <stderr>"` on one line and cut to [`MAX_STDERR_CHARS`], or nothing if
/// the helper printed nothing there.
fn stderr_excerpt(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let words: Vec<&str> = text.split_whitespace().collect();
    let line = words.join(" ");
    match line.char_indices().nth(MAX_STDERR_CHARS) {
        _ if line.is_empty() => String::new(),
        Some((cut, _)) => format!(": {}...", &line[..cut]),
        None => format!(": {line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Serializes writing helper scripts and running them: a child forked
    /// while another test still has its script open for writing inherits
    /// that descriptor, and executing the script then fails with ETXTBSY.
    static HELPERS: Mutex<()> = Mutex::new(());

    fn helpers_lock() -> std::sync::MutexGuard<'static, ()> {
        HELPERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[derive(Default)]
    struct FakeEnv(HashMap<String, String>);

    impl FakeEnv {
        fn with(mut self, name: &str, value: impl AsRef<Path>) -> FakeEnv {
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

    fn write(path: &Path, content: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn basic(username: &str, password: &str) -> Credential {
        Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }

    /// An auth file holding `user:password` for `key` as a base64 `auth`.
    fn auths(key: &str, user: &str, password: &str) -> String {
        format!(
            r#"{{"auths": {{"{key}": {{"auth": "{}"}}}}}}"#,
            encode_base64(format!("{user}:{password}").as_bytes())
        )
    }

    fn encode_base64(data: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// A helper script `docker-credential-<name>` in `dir`.
    fn helper(dir: &Path, name: &str, body: &str) {
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn only_file(path: &Path) -> CredentialSources {
        CredentialSources {
            auth_file: Some(path.to_owned()),
            ..CredentialSources::default()
        }
    }

    #[test]
    fn nothing_anywhere_is_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let env = FakeEnv::default().with("HOME", dir.path());
        let none = CredentialSources::default();
        assert_eq!(lookup("ghcr.io", &none, &env), Ok(Credential::Anonymous));
        let bare = FakeEnv::default();
        assert_eq!(lookup("ghcr.io", &none, &bare), Ok(Credential::Anonymous));
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
            assert_eq!(lookup("ghcr.io", &none, &env), Ok(basic(files[i].1, "pw")));
            write(path, &auths("quay.io", "other", "pw"));
            let next = files
                .get(i + 1)
                .map_or(Credential::Anonymous, |f| basic(f.1, "pw"));
            assert_eq!(lookup("ghcr.io", &none, &env), Ok(next.clone()));
            std::fs::remove_file(path).unwrap();
            assert_eq!(lookup("ghcr.io", &none, &env), Ok(next));
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
        assert_eq!(lookup("ghcr.io", &none, &env), Ok(basic("home", "pw")));
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
        assert_eq!(lookup("ghcr.io", &sources, &env), Ok(basic("late", "c")));
        assert_eq!(
            lookup("index.docker.io", &sources, &env),
            Ok(basic("hub", "d"))
        );
        sources.auth_file = None;
        assert_eq!(lookup("ghcr.io", &sources, &env), Ok(basic("late", "c")));
        assert_eq!(
            lookup("127.0.0.1:5000", &sources, &env),
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
        assert_eq!(lookup("quay.io", &sources, &env), Ok(basic("named", "pw")));
        assert_eq!(lookup("ghcr.io", &sources, &env), Ok(Credential::Anonymous));
    }

    #[test]
    fn missing_named_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.json");
        let err = lookup("ghcr.io", &only_file(&path), &FakeEnv::default()).unwrap_err();
        assert_eq!(
            err,
            Error::NotFound(format!("auth file {}", path.display()))
        );
    }

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
                assert!(matches!(err, Error::InvalidContent(_)), "{message}");
                assert!(message.contains(&path.display().to_string()), "{message}");
                assert!(!message.contains("hunter2"), "{message}");
            }
        }
        // A directory where the file should be cannot be read.
        let err = lookup("ghcr.io", &only_file(dir.path()), &FakeEnv::default()).unwrap_err();
        assert!(matches!(err, Error::InvalidContent(_)), "{err}");
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
            assert!(matches!(err, Error::InvalidContent(_)), "{message}");
            assert!(message.contains("\"ghcr.io\""), "{message}");
            assert!(
                !message.contains("hunter2") && !message.contains(auth),
                "{message}"
            );
        }
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
                assert_eq!(found, Ok(basic("hub", "pw")), "key {key}, host {host}");
            }
            let other = lookup("ghcr.io", &only_file(&path), &FakeEnv::default());
            assert_eq!(other, Ok(Credential::Anonymous), "key {key}");
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
            assert_eq!(found, Ok(basic("u", "pw")), "key {key}");
        }
        // Other ports, and podman's per-namespace keys, are other credentials.
        for (key, host) in [
            ("127.0.0.1:5001", "127.0.0.1:5000"),
            ("127.0.0.1", "127.0.0.1:5000"),
            ("ghcr.io/someorg", "ghcr.io"),
        ] {
            write(&path, &auths(key, "u", "pw"));
            let found = lookup(host, &only_file(&path), &FakeEnv::default());
            assert_eq!(found, Ok(Credential::Anonymous), "key {key}");
        }
        // The exact spelling wins over another that normalizes the same.
        write(
            &path,
            r#"{"auths": {"https://ghcr.io": {"username": "url", "password": "a"},
                "ghcr.io": {"username": "exact", "password": "b"}}}"#,
        );
        let found = lookup("ghcr.io", &only_file(&path), &FakeEnv::default());
        assert_eq!(found, Ok(basic("exact", "b")));
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
            assert_eq!(found, Ok(expected), "{content}");
        }
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
        assert_eq!(lookup("ghcr.io", &none, &env), Ok(basic("home", "pw")));
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

    /// A temp dir with `bin` (the fake PATH) and `auth.json`.
    struct HelperSetup {
        dir: tempfile::TempDir,
    }

    impl HelperSetup {
        fn new() -> HelperSetup {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("bin")).unwrap();
            HelperSetup { dir }
        }
        fn bin(&self) -> PathBuf {
            self.dir.path().join("bin")
        }
        fn auth_file(&self, content: &str) -> CredentialSources {
            let path = self.dir.path().join("auth.json");
            write(&path, content);
            only_file(&path)
        }
        fn env(&self) -> FakeEnv {
            FakeEnv::default().with("PATH", format!("relative:{}", self.bin().display()))
        }
    }

    /// Answers with the server URL it was given as the user name, after
    /// checking it was asked to `get`.
    const ECHO_HELPER: &str = r#"[ "$1" = get ] || exit 9
read -r url
printf '{"ServerURL":"%s","Username":"%s","Secret":"s3cret"}' "$url" "$url""#;

    #[test]
    fn helper_gets_the_server_url() {
        let _lock = helpers_lock();
        let setup = HelperSetup::new();
        helper(&setup.bin(), "echo", ECHO_HELPER);
        let sources = setup.auth_file(r#"{"credsStore": "echo"}"#);
        for (host, url) in [
            ("ghcr.io", "ghcr.io"),
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("index.docker.io", "https://index.docker.io/v1/"),
            ("docker.io", "https://index.docker.io/v1/"),
        ] {
            let found = lookup(host, &sources, &setup.env());
            assert_eq!(found, Ok(basic(url, "s3cret")), "{host}");
        }
    }

    #[test]
    fn cred_helpers_beat_store_and_auths() {
        let _lock = helpers_lock();
        let setup = HelperSetup::new();
        helper(
            &setup.bin(),
            "per-host",
            r#"echo '{"Username":"per-host","Secret":"a"}'"#,
        );
        helper(
            &setup.bin(),
            "store",
            r#"echo '{"Username":"store","Secret":"b"}'"#,
        );
        let sources = setup.auth_file(&format!(
            r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}, "quay.io": {{"auth": "{0}"}}}},
                "credHelpers": {{"https://ghcr.io/v1/": "per-host", "docker.io": "per-host"}},
                "credsStore": "store"}}"#,
            encode_base64(b"file:c")
        ));
        let env = setup.env();
        assert_eq!(
            lookup("ghcr.io", &sources, &env),
            Ok(basic("per-host", "a"))
        );
        assert_eq!(
            lookup("index.docker.io", &sources, &env),
            Ok(basic("per-host", "a"))
        );
        // Docker's choice: the store over the file's own entry.
        assert_eq!(lookup("quay.io", &sources, &env), Ok(basic("store", "b")));
        assert_eq!(
            lookup("example.com", &sources, &env),
            Ok(basic("store", "b"))
        );

        let sources = setup.auth_file(&format!(
            r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}, "credHelpers": {{"quay.io": "per-host"}}}}"#,
            encode_base64(b"file:c")
        ));
        assert_eq!(lookup("ghcr.io", &sources, &env), Ok(basic("file", "c")));
        assert_eq!(
            lookup("quay.io", &sources, &env),
            Ok(basic("per-host", "a"))
        );
    }

    #[test]
    fn helper_identity_token_and_empty_reply() {
        let _lock = helpers_lock();
        let setup = HelperSetup::new();
        helper(
            &setup.bin(),
            "token",
            r#"echo '{"ServerURL":"ghcr.io","Username":"<token>","Secret":"refresh"}'"#,
        );
        helper(
            &setup.bin(),
            "empty",
            r#"echo '{"Username":"","Secret":""}'"#,
        );
        let sources =
            setup.auth_file(r#"{"credHelpers": {"ghcr.io": "token", "quay.io": "empty"}}"#);
        let env = setup.env();
        assert_eq!(
            lookup("ghcr.io", &sources, &env),
            Ok(Credential::IdentityToken("refresh".into()))
        );
        assert_eq!(lookup("quay.io", &sources, &env), Ok(Credential::Anonymous));
    }

    #[test]
    fn helper_not_found_is_no_credentials() {
        let _lock = helpers_lock();
        let setup = HelperSetup::new();
        helper(
            &setup.bin(),
            "none",
            "echo 'credentials not found in native keychain'\nexit 1",
        );
        let sources = setup.auth_file(r#"{"credsStore": "none"}"#);
        assert_eq!(
            lookup("ghcr.io", &sources, &setup.env()),
            Ok(Credential::Anonymous)
        );
        // Among the default files, the search goes on to the next one.
        let home = setup.dir.path().join("home");
        write(
            &home.join(".docker/config.json"),
            &auths("ghcr.io", "home", "pw"),
        );
        let env = setup
            .env()
            .with("REGISTRY_AUTH_FILE", sources.auth_file.as_ref().unwrap())
            .with("HOME", &home);
        let none = CredentialSources::default();
        assert_eq!(lookup("ghcr.io", &none, &env), Ok(basic("home", "pw")));
    }

    #[test]
    fn helper_failure_names_helper_and_status_but_not_secret() {
        let _lock = helpers_lock();
        let setup = HelperSetup::new();
        helper(
            &setup.bin(),
            "broken",
            "echo '{\"Username\":\"u\",\"Secret\":\"hunter2\"}'\necho 'keychain is locked' >&2\nexit 3",
        );
        let sources = setup.auth_file(r#"{"credHelpers": {"ghcr.io": "broken"}}"#);
        let err = lookup("ghcr.io", &sources, &setup.env()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::Unauthorized(_)), "{message}");
        for part in [
            "docker-credential-broken",
            "ghcr.io",
            "exit status: 3",
            "keychain is locked",
        ] {
            assert!(message.contains(part), "{part} not in {message}");
        }
        assert!(!message.contains("hunter2"), "{message}");

        // Success with a secret but not JSON: nothing of the output is shown.
        helper(&setup.bin(), "garbled", "echo 'Secret: hunter2'");
        let sources = setup.auth_file(r#"{"credsStore": "garbled"}"#);
        let err = lookup("ghcr.io", &sources, &setup.env()).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::Unauthorized(_)), "{message}");
        assert!(message.contains("docker-credential-garbled"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn helper_stderr_is_cut_short() {
        let _lock = helpers_lock();
        let setup = HelperSetup::new();
        helper(
            &setup.bin(),
            "chatty",
            "i=0; while [ $i -lt 5000 ]; do echo \"line $i\" >&2; i=$((i+1)); done\nexit 2",
        );
        let sources = setup.auth_file(r#"{"credsStore": "chatty"}"#);
        let message = lookup("ghcr.io", &sources, &setup.env())
            .unwrap_err()
            .to_string();
        assert!(message.contains(": line 0 line 1 line 2"), "{message}");
        assert!(message.ends_with("..."), "{message}");
        assert!(message.len() < 400, "{message}");
    }

    #[test]
    fn missing_or_odd_helpers_are_errors() {
        let _lock = helpers_lock();
        let setup = HelperSetup::new();
        let sources = setup.auth_file(r#"{"credsStore": "desktop"}"#);
        let err = lookup("ghcr.io", &sources, &setup.env()).unwrap_err();
        assert!(matches!(err, Error::Unauthorized(_)), "{err}");
        assert!(
            err.to_string().contains("docker-credential-desktop"),
            "{err}"
        );
        assert!(err.to_string().contains("not on PATH"), "{err}");

        // Not executable, or found only through a relative PATH entry.
        helper(&setup.bin(), "plain", "echo '{}'");
        let plain = setup.bin().join("docker-credential-plain");
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let sources = setup.auth_file(r#"{"credsStore": "plain"}"#);
        let err = lookup("ghcr.io", &sources, &setup.env()).unwrap_err();
        assert!(err.to_string().contains("not on PATH"), "{err}");
        helper(&setup.bin(), "echo", ECHO_HELPER);
        let sources = setup.auth_file(r#"{"credsStore": "echo"}"#);
        let cwd = std::env::current_dir().unwrap();
        let up = "../".repeat(cwd.components().count() - 1);
        let bin = setup.bin();
        let relative = format!("{up}{}", bin.strip_prefix("/").unwrap().display());
        assert!(Path::new(&relative)
            .join("docker-credential-echo")
            .is_file());
        let env = FakeEnv::default().with("PATH", format!(":{relative}"));
        let err = lookup("ghcr.io", &sources, &env).unwrap_err();
        assert!(err.to_string().contains("not on PATH"), "{err}");

        let sources = setup.auth_file(r#"{"credsStore": "../../bin/sh"}"#);
        let err = lookup("ghcr.io", &sources, &setup.env()).unwrap_err();
        assert!(matches!(err, Error::InvalidContent(_)), "{err}");
    }

    #[test]
    fn slow_helper_is_killed() {
        let _lock = helpers_lock();
        let setup = HelperSetup::new();
        // Not exec'd, so the sleep outlives the killed shell and keeps the
        // pipes open: the lookup must not wait for it.
        helper(&setup.bin(), "slow", "sleep 5\necho '{}'");
        let sources = setup.auth_file(r#"{"credsStore": "slow"}"#);
        let env = setup.env();
        let started = Instant::now();
        let err = Search::new("ghcr.io", &env, Duration::from_millis(300))
            .run(&sources)
            .unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
        assert!(err.to_string().contains("docker-credential-slow"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

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
