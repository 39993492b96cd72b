//! The credential-helper runner: `docker-credential-<name> get`, found on
//! PATH, fed the server URL on stdin, killed at a deadline, its output
//! capped and its reply turned into credentials without quoting secrets.

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

use super::search::Search;
use super::{Credential, DOCKER_HUB, DOCKER_HUB_SERVER};
use crate::error::{Error, Result};

/// How long a credential helper may run: one waiting for a keychain prompt
/// that nobody will answer must not hang the pull.
pub(super) const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of a helper's stdout or stderr kept; the rest is read and dropped.
const MAX_HELPER_OUTPUT: u64 = 1 << 20;

/// How much of a failing helper's stderr an error message quotes.
const MAX_STDERR_CHARS: usize = 200;

impl Search<'_> {
    /// Asks `docker-credential-<name>`, named in the auth file at `path`.
    pub(super) fn ask_helper(&self, name: &str, path: &Path) -> Result<Option<Credential>> {
        // A slash would let the name reach outside the PATH directories.
        if name.contains('/') {
            return Err(Error::invalid_content(format!(
                "auth file {}: credential helper name {name:?} is not a plain name",
                path.display()
            )));
        }
        let program = format!("docker-credential-{name}");
        let what = format!("credential helper {program} for {}", self.host);
        let executable = self.find_on_path(&program).ok_or_else(|| {
            Error::unauthorized(format!(
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
            return Err(Error::unauthorized(format!(
                "{what} failed ({}){}",
                output.status,
                stderr_excerpt(&output.stderr)
            )));
        }
        // serde_json's message could quote the secret, so it is not kept.
        let reply: HelperReply = serde_json::from_slice(&output.stdout).map_err(|_| {
            Error::unauthorized(format!(
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
        let stdin_error =
            |e: io::Error| Error::io(format!("{what}: preparing its stdin: {e}")).with_source(e);
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
                Error::unauthorized(format!("{what}: running {}: {e}", executable.display()))
                    .with_source(e)
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
                        Err(e) => Error::unauthorized(format!("{what}: waiting for it: {e}"))
                            .with_source(e),
                        Ok(_) => Error::timeout(format!(
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
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::timeout(format!(
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
    use crate::credentials::testing::*;
    use crate::credentials::{lookup, CredentialSources};
    use crate::ErrorKind;
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

    /// A helper script `docker-credential-<name>` in `dir`.
    fn helper(dir: &Path, name: &str, body: &str) {
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
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
            assert_eq!(
                found.map_err(|e| e.to_string()),
                Ok(basic(url, "s3cret")),
                "{host}"
            );
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
            lookup("ghcr.io", &sources, &env).map_err(|e| e.to_string()),
            Ok(basic("per-host", "a"))
        );
        assert_eq!(
            lookup("index.docker.io", &sources, &env).map_err(|e| e.to_string()),
            Ok(basic("per-host", "a"))
        );
        // Docker's choice: the store over the file's own entry.
        assert_eq!(
            lookup("quay.io", &sources, &env).map_err(|e| e.to_string()),
            Ok(basic("store", "b"))
        );
        assert_eq!(
            lookup("example.com", &sources, &env).map_err(|e| e.to_string()),
            Ok(basic("store", "b"))
        );

        let sources = setup.auth_file(&format!(
            r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}, "credHelpers": {{"quay.io": "per-host"}}}}"#,
            encode_base64(b"file:c")
        ));
        assert_eq!(
            lookup("ghcr.io", &sources, &env).map_err(|e| e.to_string()),
            Ok(basic("file", "c"))
        );
        assert_eq!(
            lookup("quay.io", &sources, &env).map_err(|e| e.to_string()),
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
            lookup("ghcr.io", &sources, &env).map_err(|e| e.to_string()),
            Ok(Credential::IdentityToken("refresh".into()))
        );
        assert_eq!(
            lookup("quay.io", &sources, &env).map_err(|e| e.to_string()),
            Ok(Credential::Anonymous)
        );
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
            lookup("ghcr.io", &sources, &setup.env()).map_err(|e| e.to_string()),
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
        assert_eq!(
            lookup("ghcr.io", &none, &env).map_err(|e| e.to_string()),
            Ok(basic("home", "pw"))
        );
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
        assert!(matches!(err.kind(), ErrorKind::Unauthorized), "{message}");
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
        assert!(matches!(err.kind(), ErrorKind::Unauthorized), "{message}");
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
        assert!(matches!(err.kind(), ErrorKind::Unauthorized), "{err}");
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
        assert!(matches!(err.kind(), ErrorKind::InvalidContent), "{err}");
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
        assert!(matches!(err.kind(), ErrorKind::Timeout), "{err}");
        assert!(err.to_string().contains("docker-credential-slow"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
