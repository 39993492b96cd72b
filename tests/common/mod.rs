//! Integration-test harness (owned by the tests): a real CNCF distribution
//! registry per test, deterministic image fixtures pushed to it, a fake
//! registry for content a real one refuses to serve, and file-tree helpers.
//!
//! Everything here is synchronous and blocking. Calling it from a
//! `#[tokio::test(flavor = "multi_thread")]` body is fine as long as no
//! library future is in flight on the same task at that moment.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------------------
// Media types

pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_NONDIST_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_NONDIST_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_NONDIST_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Layer types a registry accepts in a manifest only with `urls`.
fn needs_urls(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_NONDIST_TAR | OCI_NONDIST_GZIP | OCI_NONDIST_ZSTD | DOCKER_FOREIGN_GZIP
    )
}

// ---------------------------------------------------------------------------
// Real registry

const REGISTRY_INSTALL: &str = "apt-get install -y --no-install-recommends docker-registry";

fn registry_binary() -> PathBuf {
    let usr_bin = PathBuf::from("/usr/bin/docker-registry");
    if usr_bin.is_file() {
        return usr_bin;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("docker-registry"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "docker-registry (CNCF distribution) is not installed; these tests need it: \
             {REGISTRY_INSTALL}"
        )
    })
}

/// A CNCF distribution registry on a loopback port, with its own storage,
/// stopped when dropped.
pub struct Registry {
    dir: tempfile::TempDir,
    host: String,
    child: Option<Child>,
    sentinels: AtomicUsize,
    /// How the harness itself reaches it (scheme, credentials, CA).
    endpoint: Endpoint,
    /// `NAME:PORT` for a TLS registry (see [`Registry::tls_host`]).
    tls_host: Option<String>,
    /// The realm of a token-auth registry (see [`RegistrySetup::token_auth`]).
    token_server: Option<TokenServer>,
}

/// The user of every registry started with [`RegistrySetup::htpasswd`].
pub const TEST_USER: &str = "tester";
/// The password of [`TEST_USER`].
pub const TEST_PASSWORD: &str = "s3cret-p4ss";
/// `htpasswd -Bbn tester s3cret-p4ss` (bcrypt, cost 5), kept as a fixture
/// so that apache2-utils is not needed. The registry accepts only bcrypt.
const TEST_HTPASSWD_LINE: &str =
    "tester:$2y$05$jD8MjtOXG31ZCABdRrO8LO46lFH.PSKXSus..aQt18G1sf.FuIxre";

/// What a [`Registry`] started with [`Registry::start_with`] requires:
/// nothing (like [`Registry::start`]), htpasswd basic auth or token auth,
/// TLS, or auth and TLS.
#[derive(Debug, Clone, Default)]
pub struct RegistrySetup {
    htpasswd: bool,
    tls: bool,
    proxy_of: Option<String>,
    token: Option<TokenPolicy>,
}

impl RegistrySetup {
    pub fn new() -> RegistrySetup {
        RegistrySetup::default()
    }

    /// Basic auth against an htpasswd file holding [`TEST_USER`] /
    /// [`TEST_PASSWORD`]: every request without them gets 401.
    pub fn htpasswd(mut self) -> RegistrySetup {
        self.htpasswd = true;
        self
    }

    /// HTTPS only, with a fresh self-signed certificate (see
    /// [`Registry::ca_pem`]) for `127.0.0.1`, `localhost` and this machine's
    /// host name, on which the registry listens (see [`Registry::tls_host`]).
    pub fn tls(mut self) -> RegistrySetup {
        self.tls = true;
        self
    }

    /// A pull-through cache of the registry at `upstream` (`host:port`,
    /// plain HTTP): it serves and keeps what it fetched, and refuses pushes.
    pub fn proxy_of(mut self, upstream: &str) -> RegistrySetup {
        self.proxy_of = Some(upstream.to_owned());
        self
    }

    /// Token auth (the Docker registry token flow): the registry answers
    /// 401 with a `Bearer realm=...,service=...,scope=...` challenge and
    /// accepts only JWTs signed by a [`TokenServer`] started with it (see
    /// [`Registry::token_server`]), which hands them out as `policy` says.
    /// The harness's own requests fetch their tokens there as
    /// [`TEST_USER`]. Not to be combined with [`RegistrySetup::htpasswd`].
    pub fn token_auth(mut self, policy: TokenPolicy) -> RegistrySetup {
        self.token = Some(policy);
        self
    }
}

impl Registry {
    /// Starts a registry and waits until `GET /v2/` answers 200.
    pub fn start() -> Registry {
        Registry::start_with(RegistrySetup::new())
    }

    /// Starts a registry as `setup` says and waits until `GET /v2/` (with
    /// credentials and over HTTPS as needed) answers 200.
    pub fn start_with(setup: RegistrySetup) -> Registry {
        let binary = registry_binary();
        let dir = tempfile::Builder::new()
            .prefix("oci-cache-registry-")
            .tempdir()
            .expect("creating the registry's temp dir");
        // A TLS registry listens where this machine's name points, so that
        // it can be reached by a name that is not a loopback literal.
        let (bind_ip, tls_name) = if setup.tls {
            let (name, ip) = machine_name();
            (ip, Some(name))
        } else {
            ("127.0.0.1".parse().unwrap(), None)
        };
        let mut auth_section = String::new();
        let mut basic_auth = None;
        if setup.htpasswd {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{TEST_HTPASSWD_LINE}\n")).expect("writing htpasswd");
            auth_section = format!(
                "auth:\n  htpasswd:\n    realm: oci-cache-test\n    path: {}\n",
                htpasswd.display()
            );
            basic_auth = Some((TEST_USER.to_owned(), TEST_PASSWORD.to_owned()));
        }
        let mut token_server = None;
        let mut token_realm = None;
        if let Some(policy) = &setup.token {
            assert!(
                !setup.htpasswd,
                "RegistrySetup: token_auth and htpasswd exclude each other"
            );
            let server = TokenServer::start(&dir.path().join("token-signer"), policy.clone());
            auth_section = format!(
                "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    \
                 issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                server.realm(),
                server.certificate().display()
            );
            basic_auth = Some((TEST_USER.to_owned(), TEST_PASSWORD.to_owned()));
            token_realm = Some(server.token_realm());
            token_server = Some(server);
        }
        let mut tls_section = String::new();
        let mut ca_pem = None;
        if let Some(name) = &tls_name {
            let cert = TlsCert::generate(
                &dir.path().join("tls"),
                &[
                    "IP:127.0.0.1".to_owned(),
                    "DNS:localhost".to_owned(),
                    format!("DNS:{name}"),
                    format!("IP:{bind_ip}"),
                ],
            );
            tls_section = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.cert.display(),
                cert.key.display()
            );
            ca_pem = Some(cert.cert);
        }
        let proxy_section = setup
            .proxy_of
            .as_ref()
            .map(|upstream| format!("proxy:\n  remoteurl: http://{upstream}\n"))
            .unwrap_or_default();
        let mut last_failure = String::new();
        // The port is free when picked but may be taken before the registry
        // binds it, so a start that dies early is retried on a new port.
        for _attempt in 0..5 {
            let port = free_port_on(bind_ip);
            let host = format!("{bind_ip}:{port}");
            let config = dir.path().join("config.yml");
            let storage = dir.path().join("storage");
            let secret = format!("test-secret-{port}-{}", std::process::id());
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: warn\n  accesslog:\n    disabled: false\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {host}\n  secret: {secret}\n{tls_section}\
                     validation:\n  manifests:\n    urls:\n      allow: ['^https?://']\n{auth_section}{proxy_section}",
                    storage.display()
                ),
            )
            .expect("writing registry config");
            let log_path = dir.path().join("registry.log");
            let log = File::options()
                .create(true)
                .append(true)
                .open(&log_path)
                .expect("opening registry log");
            let mut command = Command::new(&binary);
            command
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("cloning log handle"))
                .stderr(log);
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("REGISTRY_") {
                    command.env_remove(key);
                }
            }
            let endpoint = Endpoint {
                host: host.clone(),
                basic_auth: basic_auth.clone(),
                ca_pem: ca_pem.clone(),
                token_realm: token_realm.clone(),
            };
            let mut child = command
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
            match wait_ready(&mut child, &endpoint, &log_path, Duration::from_secs(10)) {
                Ok(()) => {
                    return Registry {
                        dir,
                        host,
                        child: Some(child),
                        sentinels: AtomicUsize::new(0),
                        endpoint,
                        tls_host: tls_name.as_ref().map(|name| format!("{name}:{port}")),
                        token_server,
                    }
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_failure = why;
                }
            }
        }
        panic!("docker-registry did not come up: {last_failure}");
    }

    /// How the harness reaches this registry: pass it to the `push_*_to`
    /// functions. Carries the credentials and CA the registry needs.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    /// For a TLS registry, `NAME:PORT` with NAME this machine's host name:
    /// its certificate covers it, it resolves to the address the registry
    /// listens on, and, not being a loopback literal or `localhost`, clients
    /// reach it over HTTPS. Panics for a registry without TLS.
    pub fn tls_host(&self) -> String {
        self.tls_host
            .clone()
            .expect("tls_host() of a registry started without RegistrySetup::tls")
    }

    /// The self-signed certificate (PEM) of a TLS registry, which is also
    /// the CA to trust. Panics for a registry without TLS.
    pub fn ca_pem(&self) -> PathBuf {
        self.endpoint
            .ca_pem
            .clone()
            .expect("ca_pem() of a registry started without RegistrySetup::tls")
    }

    /// The token server of a registry started with
    /// [`RegistrySetup::token_auth`]. Panics for any other registry.
    pub fn token_server(&self) -> &TokenServer {
        self.token_server
            .as_ref()
            .expect("token_server() of a registry started without RegistrySetup::token_auth")
    }

    /// `127.0.0.1:PORT` (for a TLS registry, `IP:PORT` with the address it
    /// listens on; see [`Registry::tls_host`]).
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// The registry's own storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The registry's stdout (access log) and stderr, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the registry and reaps it; later calls do nothing.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// How many `GET /v2/<repo>/blobs/<digest>` requests the registry has
    /// logged, whatever their status.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.settle_log();
        let suffix = format!("/blobs/{digest} HTTP/");
        self.log()
            .lines()
            .filter_map(access_log_request)
            .filter(|request| request.starts_with("GET /v2/") && request.contains(&suffix))
            .count()
    }

    /// All access-log request lines (`METHOD PATH PROTO`), for debugging.
    pub fn requests(&self) -> Vec<String> {
        self.settle_log();
        self.log()
            .lines()
            .filter_map(access_log_request)
            .map(str::to_owned)
            .collect()
    }

    /// The registry logs a request when its handler returns, which can be a
    /// moment after the client saw the last byte. A sentinel request that
    /// shows up in the log, followed by a log that stops growing, means
    /// every earlier request has been written out.
    fn settle_log(&self) {
        if self.child.is_none() {
            return;
        }
        let n = self.sentinels.fetch_add(1, Ordering::SeqCst);
        let sentinel = format!("/v2/?log-sentinel={n}");
        let _ = request(&self.endpoint, "GET", &sentinel, &[], &[]);
        let needle = format!("\"GET {sentinel} HTTP/");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut previous = None;
        loop {
            let log = self.log();
            let len = log.len();
            if log.contains(&needle) && previous == Some(len) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "registry access log never showed {needle} (is the access log enabled?); log:\n{log}"
                );
            }
            previous = Some(len);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_ready(
    child: &mut Child,
    endpoint: &Endpoint,
    log: &Path,
    timeout: Duration,
) -> Result<(), String> {
    let host = endpoint.host.as_str();
    let deadline = Instant::now() + timeout;
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "registry on {host} exited with {status} before answering; log:\n{}",
                log_text()
            ));
        }
        // Another process that got the same port could answer too: only a
        // request that shows up in this registry's own log proves it is ours.
        let probe = format!("/v2/?ready-probe={}", host.replace(':', "-"));
        if let Ok(response) = request(endpoint, "GET", &probe, &[], &[]) {
            let needle = format!("\"GET {probe} HTTP/");
            let seen_until = Instant::now() + Duration::from_secs(1);
            while response.status == 200 && Instant::now() < seen_until {
                if log_text().contains(&needle) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "registry on {host} did not answer GET /v2/ with 200 within {timeout:?}; log:\n{}",
                log_text()
            ));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The request part of an Apache combined log line:
/// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "agent"`.
fn access_log_request(line: &str) -> Option<&str> {
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find('"')?;
    Some(&rest[..end])
}

fn free_port_on(ip: IpAddr) -> u16 {
    let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("binding {ip}:0: {e}"));
    listener.local_addr().expect("local addr").port()
}

/// This machine's host name and the IPv4 address it resolves to, which
/// must be local (bindable). A name, unlike `127.0.0.1` or `localhost`, is
/// not taken for a loopback registry, which clients reach over plain HTTP.
fn machine_name() -> (String, IpAddr) {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("reading /proc/sys/kernel/hostname")
        .trim()
        .to_ascii_lowercase();
    let usable = !name.is_empty()
        && name != "localhost"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    assert!(
        usable,
        "TLS registries are reached by this machine's host name, but {name:?} cannot be used in a reference"
    );
    let ip = (name.as_str(), 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.find(|a| a.is_ipv4()))
        .map(|a| a.ip())
        .unwrap_or_else(|| {
            panic!("TLS registries are reached by this machine's host name, but {name:?} does not resolve to an IPv4 address (add it to /etc/hosts)")
        });
    if let Err(e) = TcpListener::bind((ip, 0)) {
        panic!("this machine's host name {name:?} resolves to {ip}, which cannot be bound: {e}");
    }
    (name, ip)
}

/// A self-signed certificate and its key, made by `openssl req -x509`.
#[derive(Debug, Clone)]
pub struct TlsCert {
    /// The certificate, PEM: also the CA to trust.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsCert {
    /// Writes `cert.pem` and `key.pem` into `dir` (created if missing), the
    /// certificate valid for one day for `subject_alt_names` such as
    /// `IP:127.0.0.1` or `DNS:localhost`.
    pub fn generate(dir: &Path, subject_alt_names: &[String]) -> TlsCert {
        std::fs::create_dir_all(dir).expect("creating a directory for a certificate");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let output = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=127.0.0.1", "-addext"])
            .arg(format!("subjectAltName={}", subject_alt_names.join(",")))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running openssl (apt-get install openssl): {e}"));
        assert!(
            output.status.success() && cert.is_file() && key.is_file(),
            "openssl req -x509 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        TlsCert { cert, key }
    }
}

// ---------------------------------------------------------------------------
// Token auth: a token server signing JWTs with the `openssl` CLI

/// The `service` of every token-auth registry (the tokens' `aud`).
pub const TOKEN_SERVICE: &str = "oci-cache-test";
/// The `issuer` every token-auth registry trusts (the tokens' `iss`).
pub const TOKEN_ISSUER: &str = "oci-cache-test-issuer";
/// The `client_id` the harness's own token requests carry, which tells
/// them apart from the library's (see [`TokenRequest::harness`]).
pub const HARNESS_CLIENT_ID: &str = "oci-cache-test-harness";

/// The identity token (OAuth2 refresh token) of [`TEST_USER`] that a
/// [`TokenServer`] accepts in `POST` requests with
/// `grant_type=refresh_token`.
pub const TEST_IDENTITY_TOKEN: &str = "idt-7Kq2xV9mWp4Rz8Ls";

/// How a [`TokenServer`] answers token requests:
/// - [`TEST_USER`] with [`TEST_PASSWORD`] gets every action asked for;
/// - [`TEST_USER`] with another password gets 401 `{"details":"bad password"}`,
///   any other user 401 `{"details":"unknown user NAME"}`;
/// - a request without credentials gets `pull` (of what it asked for) when
///   anonymous pulls are granted, else 401
///   `{"details":"anonymous access refused: log in"}`;
/// - a `POST` form with `grant_type=refresh_token` and `refresh_token`
///   [`TEST_IDENTITY_TOKEN`] gets what tester gets, answered as
///   `{"access_token": JWT, "expires_in": N}`; another refresh token gets
///   401 `{"details":"invalid refresh token"}`, another grant type or body 400.
///
/// Tokens last [`TokenPolicy::lifetime`] (default 300 s), both in their
/// `exp` claim and in the answer's `expires_in`. With
/// [`TokenPolicy::no_access`], they grant nothing at all.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    anonymous_pull: bool,
    lifetime_secs: u64,
    no_access: bool,
}

impl Default for TokenPolicy {
    fn default() -> TokenPolicy {
        TokenPolicy {
            anonymous_pull: false,
            lifetime_secs: 300,
            no_access: false,
        }
    }
}

impl TokenPolicy {
    /// Credentials required; tokens last 300 s.
    pub fn new() -> TokenPolicy {
        TokenPolicy::default()
    }

    /// Requests without credentials get pull access.
    pub fn anonymous_pull(mut self) -> TokenPolicy {
        self.anonymous_pull = true;
        self
    }

    /// Tokens expire `secs` seconds after they are issued (`exp` = `iat` +
    /// `secs`, `expires_in` = `secs`).
    pub fn lifetime(mut self, secs: u64) -> TokenPolicy {
        self.lifetime_secs = secs;
        self
    }

    /// Whoever asks gets a valid token (200) whose `access` grants no
    /// action, as when rights were revoked: the registry refuses it with
    /// 401. For harness pushes, switch to this policy after pushing
    /// (see [`TokenServer::set_policy`]).
    pub fn no_access(mut self) -> TokenPolicy {
        self.no_access = true;
        self
    }
}

/// Where the harness fetches its bearer tokens: the token server's
/// `host:port`, the realm's path and the registry's service.
#[derive(Debug, Clone)]
pub struct TokenRealm {
    pub host: String,
    pub path: String,
    pub service: String,
}

impl TokenRealm {
    /// `http://HOST/PATH`, as in the registry's challenge.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.host, self.path)
    }

    /// A token for `scope` (`repository:NAME:ACTIONS`; none for `/v2/`)
    /// asked for with `credentials` (Basic) if any, as the harness
    /// (`client_id` [`HARNESS_CLIENT_ID`]). An error if refused.
    pub fn fetch_token(
        &self,
        credentials: Option<&(String, String)>,
        scope: Option<&str>,
    ) -> std::io::Result<String> {
        let mut query = format!(
            "service={}&client_id={HARNESS_CLIENT_ID}",
            percent_encode(&self.service)
        );
        if let Some(scope) = scope {
            query.push_str(&format!("&scope={}", percent_encode(scope)));
        }
        let authorization = credentials.map(|(user, password)| {
            format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
        });
        let mut headers = Vec::new();
        if let Some(value) = &authorization {
            headers.push(("Authorization", value.as_str()));
        }
        let response = http(
            &self.host,
            "GET",
            &format!("{}?{query}", self.path),
            &headers,
            &[],
        )?;
        if response.status != 200 {
            return Err(std::io::Error::other(format!(
                "token request to {} for {scope:?}: {}",
                self.url(),
                response.describe()
            )));
        }
        serde_json::from_slice::<Value>(&response.body)
            .ok()
            .and_then(|v| v.get("token")?.as_str().map(str::to_owned))
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "token answer without a token: {}",
                    response.describe()
                ))
            })
    }
}

/// The scope a harness request needs: for `/v2/NAME/{blobs,manifests,tags}/...`,
/// `repository:NAME:pull` to read (GET, HEAD), `repository:NAME:delete` to
/// delete, else `repository:NAME:pull,push`; nothing for `/v2/` itself.
pub fn harness_scope(method: &str, path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap_or_default();
    let rest = path.strip_prefix("/v2/")?;
    let end = ["/blobs/", "/manifests/", "/tags/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker))
        .max()?;
    let name = &rest[..end];
    let actions = match method {
        "GET" | "HEAD" => "pull",
        "DELETE" => "delete",
        _ => "pull,push",
    };
    Some(format!("repository:{name}:{actions}"))
}

/// One request the token server answered, as it saw it. The parameters
/// come from the query of a `GET` and from the form body of a `POST`.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// Every `scope` parameter, decoded, in order.
    pub scopes: Vec<String>,
    /// The `service` parameter.
    pub service: Option<String>,
    /// The `client_id` parameter.
    pub client_id: Option<String>,
    /// Whether a `refresh_token` parameter was presented (an identity token).
    pub refresh_token: bool,
    /// The user of the `Authorization: Basic` header, if one was sent.
    pub user: Option<String>,
    /// Whether the request carried `Authorization: Basic`.
    pub basic_auth: bool,
    /// Whether it came from the harness (`client_id` [`HARNESS_CLIENT_ID`]).
    pub harness: bool,
    /// The `User-Agent` header.
    pub user_agent: Option<String>,
    /// The status answered: 200 with a token, or 401.
    pub status: u16,
    /// The token's `iat` and `exp` (Unix seconds) when one was issued.
    pub issued_at: Option<u64>,
    pub expires_at: Option<u64>,
    /// Every `access` entry granted, as `type:name:action,action`.
    pub granted: Vec<String>,
}

/// A token server (the realm of a token-auth registry) on a loopback port,
/// stopped when dropped. It signs RS256 JWTs with `openssl dgst -sha256
/// -sign` using a self-signed certificate (see [`TokenServer::certificate`],
/// the registry's `rootcertbundle`) carried in the header's `x5c`, and
/// answers `{"token": JWT, "expires_in": N}`. Every request is recorded.
pub struct TokenServer {
    host: String,
    signer: TlsCert,
    policy: Arc<Mutex<TokenPolicy>>,
    log: Arc<Mutex<Vec<TokenRequest>>>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the token server's connection threads share.
struct TokenIssuer {
    key: PathBuf,
    /// The signing certificate, base64 DER, for `x5c`.
    x5c: String,
    policy: Arc<Mutex<TokenPolicy>>,
    log: Arc<Mutex<Vec<TokenRequest>>>,
    issued: AtomicUsize,
}

impl TokenServer {
    /// Generates the signing key and certificate in `dir` and starts
    /// serving `GET /token` and `POST /token` on `127.0.0.1:PORT`.
    pub fn start(dir: &Path, policy: TokenPolicy) -> TokenServer {
        let signer = TlsCert::generate(dir, &["DNS:oci-cache-token-signer".to_owned()]);
        let pem = std::fs::read_to_string(&signer.cert).expect("reading the signing certificate");
        let x5c: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .map(str::trim)
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let host = listener.local_addr().unwrap().to_string();
        let policy = Arc::new(Mutex::new(policy));
        let log: Arc<Mutex<Vec<TokenRequest>>> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let issuer = Arc::new(TokenIssuer {
            key: signer.key.clone(),
            x5c,
            policy: policy.clone(),
            log: log.clone(),
            issued: AtomicUsize::new(0),
        });
        let thread = {
            let stopping = stopping.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let issuer = issuer.clone();
                    std::thread::spawn(move || serve_token(stream, &issuer));
                }
            })
        };
        TokenServer {
            host,
            signer,
            policy,
            log,
            stopping,
            thread: Some(thread),
        }
    }

    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// `http://127.0.0.1:PORT/token`, the registry's `realm`.
    pub fn realm(&self) -> String {
        self.token_realm().url()
    }

    /// How the harness reaches this server (see [`Endpoint::token_realm`]).
    pub fn token_realm(&self) -> TokenRealm {
        TokenRealm {
            host: self.host.clone(),
            path: "/token".to_owned(),
            service: TOKEN_SERVICE.to_owned(),
        }
    }

    /// The signing certificate (PEM), which the registry trusts.
    pub fn certificate(&self) -> PathBuf {
        self.signer.cert.clone()
    }

    /// Answers later requests as `policy` says.
    pub fn set_policy(&self, policy: TokenPolicy) {
        *self.policy.lock().unwrap() = policy;
    }

    /// The requests made by anyone but the harness (the library's), in
    /// the order answered.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.all_requests()
            .into_iter()
            .filter(|r| !r.harness)
            .collect()
    }

    /// Every request answered so far, the harness's own included.
    pub fn all_requests(&self) -> Vec<TokenRequest> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.host);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_token(mut stream: TcpStream, issuer: &TokenIssuer) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&raw, b"\r\n\r\n").is_none() {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let head_end = find(&raw, b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let header = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
    };
    let length: usize = header("Content-Length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
        .min(1 << 16);
    let mut body = raw[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    body.truncate(length);
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let form = header("Content-Type").is_some_and(|value| {
        value
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let params = if method == "POST" {
        parse_form(&String::from_utf8_lossy(&body))
    } else {
        parse_form(query)
    };
    let param = |name: &str| {
        params
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .collect::<Vec<_>>()
    };
    let authorization = header("Authorization");
    let basic = authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| base64_decode(encoded.trim()))
        .map(|decoded| String::from_utf8_lossy(&decoded).into_owned())
        .map(|text| match text.split_once(':') {
            Some((user, password)) => (user.to_owned(), password.to_owned()),
            None => (text, String::new()),
        });
    let refresh_token = param("refresh_token").into_iter().next();
    let mut record = TokenRequest {
        method: method.clone(),
        client_id: param("client_id").into_iter().next(),
        refresh_token: refresh_token.is_some(),
        scopes: param("scope")
            .iter()
            .flat_map(|s| s.split(' ').map(str::to_owned).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect(),
        service: param("service").into_iter().next(),
        user: basic.as_ref().map(|(user, _)| user.clone()),
        basic_auth: basic.is_some(),
        harness: param("client_id").iter().any(|c| c == HARNESS_CLIENT_ID),
        user_agent: header("User-Agent"),
        status: 401,
        issued_at: None,
        expires_at: None,
        granted: Vec::new(),
    };
    let policy = issuer.policy.lock().unwrap().clone();
    // The actions the requester may have, or the refusal (status, body).
    let refusal = |details: String| (401u16, json!({ "details": details }));
    let grant_type = param("grant_type").into_iter().next().unwrap_or_default();
    let allowed: Result<&[&str], (u16, Value)> =
        if !["GET", "POST"].contains(&method.as_str()) || path != "/token" {
            Err((404, json!({"details": format!("no {method} {path} here")})))
        } else if method == "POST" {
            match refresh_token.as_deref() {
                _ if !form => Err((400, json!({"details": "expected a form body"}))),
                _ if grant_type != "refresh_token" => Err((
                    400,
                    json!({ "details": format!("unsupported grant_type {grant_type:?}") }),
                )),
                Some(TEST_IDENTITY_TOKEN) => Ok(&["pull", "push", "delete", "*"]),
                _ => Err(refusal("invalid refresh token".to_owned())),
            }
        } else {
            match &basic {
                Some((user, password)) if user == TEST_USER && password == TEST_PASSWORD => {
                    Ok(&["pull", "push", "delete", "*"])
                }
                Some((user, _)) if user == TEST_USER => Err(refusal("bad password".to_owned())),
                Some((user, _)) => Err(refusal(format!("unknown user {user}"))),
                None if policy.anonymous_pull => Ok(&["pull"]),
                None => Err(refusal("anonymous access refused: log in".to_owned())),
            }
        };
    let allowed = match allowed {
        Ok(_) if policy.no_access => Ok(&[][..]),
        other => other,
    };
    let (status, body) = match allowed {
        Err((status, body)) => (status, body),
        Ok(allowed) => {
            let access: Vec<Value> = record
                .scopes
                .iter()
                .filter_map(|scope| {
                    // `type:name:actions`; a name may hold a `:` (a port).
                    let (kind, rest) = scope.split_once(':')?;
                    let (name, actions) = rest.rsplit_once(':')?;
                    let granted: Vec<&str> = actions
                        .split(',')
                        .filter(|action| allowed.contains(action))
                        .collect();
                    Some(json!({"type": kind, "name": name, "actions": granted}))
                })
                .collect();
            record.granted = access
                .iter()
                .map(|a| {
                    let actions: Vec<&str> = a["actions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(Value::as_str)
                        .collect();
                    format!(
                        "{}:{}:{}",
                        a["type"].as_str().unwrap(),
                        a["name"].as_str().unwrap(),
                        actions.join(",")
                    )
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock before 1970")
                .as_secs();
            let exp = now + policy.lifetime_secs;
            let n = issuer.issued.fetch_add(1, Ordering::SeqCst);
            let claims = json!({
                "iss": TOKEN_ISSUER,
                "sub": match &basic {
                    Some((user, _)) => user.as_str(),
                    None if record.refresh_token => TEST_USER,
                    None => "",
                },
                "aud": record.service.clone().unwrap_or_default(),
                "exp": exp,
                "nbf": now,
                "iat": now,
                "jti": format!("oci-cache-test-{}-{n}", std::process::id()),
                "access": access,
            });
            match sign_jwt(&issuer.key, &issuer.x5c, &claims) {
                Ok(token) => {
                    record.status = 200;
                    record.issued_at = Some(now);
                    record.expires_at = Some(exp);
                    let key = if method == "POST" {
                        "access_token"
                    } else {
                        "token"
                    };
                    (
                        200,
                        json!({ key: token, "expires_in": policy.lifetime_secs }),
                    )
                }
                Err(why) => (500, json!({ "details": why })),
            }
        }
    };
    record.status = status;
    issuer.log.lock().unwrap().push(record);
    let body = serde_json::to_vec(&body).unwrap();
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Internal Server Error",
        },
        body.len()
    );
    if status == 401 {
        response.push_str("WWW-Authenticate: Basic realm=\"oci-cache-test-token\"\r\n");
    }
    response.push_str("\r\n");
    let mut out = response.into_bytes();
    out.extend_from_slice(&body);
    let _ = stream.write_all(&out);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

/// `base64url(header).base64url(claims).base64url(signature)`, RS256 with
/// `key` (PEM) by `openssl dgst -sha256 -sign`; the header carries `x5c`.
fn sign_jwt(key: &Path, x5c: &str, claims: &Value) -> Result<String, String> {
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let input = format!(
        "{}.{}",
        base64url(&serde_json::to_vec(&header).unwrap()),
        base64url(&serde_json::to_vec(claims).unwrap())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running openssl (apt-get install openssl): {e}"))?;
    let mut stdin = child.stdin.take().expect("openssl stdin");
    stdin
        .write_all(input.as_bytes())
        .map_err(|e| format!("writing to openssl: {e}"))?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for openssl: {e}"))?;
    if !output.status.success() || output.stdout.is_empty() {
        return Err(format!(
            "openssl dgst -sign failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(format!("{input}.{}", base64url(&output.stdout)))
}

/// Base64url without padding, as in JWTs.
pub fn base64url(data: &[u8]) -> String {
    base64(data)
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect()
}

/// Decodes standard or url-safe base64, padded or not; `None` if malformed.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
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

/// Percent-encodes all but unreserved characters, for a query value.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The pairs of a query or `application/x-www-form-urlencoded` body, decoded.
fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

/// Decodes a query component: `%XX` and `+` for a space.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// A minimal blocking HTTP/1.1 client (Connection: close)

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn describe(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

/// One request to `host`; `path` may carry a query.
pub fn http(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

/// How the harness reaches a registry: its `host:port`, the basic
/// credentials to send (if any) and, for HTTPS, the CA (PEM) to trust. Plain
/// registries are spoken to by [`http`], HTTPS ones through `curl`.
/// With a `token_realm`, the basic credentials go to the token server
/// instead, and the registry gets the bearer token it hands out.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub basic_auth: Option<(String, String)>,
    pub ca_pem: Option<PathBuf>,
    pub token_realm: Option<TokenRealm>,
}

impl Endpoint {
    /// Plain HTTP, no credentials: what the `push_*` functions taking a
    /// bare host use.
    pub fn plain(host: &str) -> Endpoint {
        Endpoint {
            host: host.to_owned(),
            basic_auth: None,
            ca_pem: None,
            token_realm: None,
        }
    }
}

/// One request to `endpoint`, with its credentials, over HTTPS when it has
/// a CA; `path` may carry a query. For a token-auth registry, a fresh token
/// for what the request needs (see [`harness_scope`]) is fetched first.
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let authorization = match &endpoint.token_realm {
        Some(realm) => {
            let scope = harness_scope(method, path);
            let token = realm.fetch_token(endpoint.basic_auth.as_ref(), scope.as_deref())?;
            Some(format!("Bearer {token}"))
        }
        None => endpoint.basic_auth.as_ref().map(|(user, password)| {
            format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
        }),
    };
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(value) = &authorization {
        all.push(("Authorization", value));
    }
    match &endpoint.ca_pem {
        None => http(&endpoint.host, method, path, &all, body),
        Some(ca) => curl(&endpoint.host, ca, method, path, &all, body),
    }
}

/// One HTTPS request with `curl`, trusting only `ca`.
fn curl(
    host: &str,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let scratch = tempfile::Builder::new()
        .prefix("oci-cache-curl-")
        .tempdir()?;
    let (head_file, body_file, sent_file) = (
        scratch.path().join("head"),
        scratch.path().join("body"),
        scratch.path().join("sent"),
    );
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "30", "--http1.1"])
        .arg("--cacert")
        .arg(ca)
        .arg("--dump-header")
        .arg(&head_file)
        .arg("--output")
        .arg(&body_file)
        // No `Expect: 100-continue` round, whose interim head would come first.
        .args(["--header", "Expect:"]);
    if method == "HEAD" {
        command.arg("--head");
    } else {
        command.args(["--request", method]);
    }
    if method == "POST" || method == "PUT" || method == "PATCH" || !body.is_empty() {
        std::fs::write(&sent_file, body)?;
        command
            .arg("--data-binary")
            .arg(format!("@{}", sent_file.display()));
    }
    for (name, value) in headers {
        command.arg("--header").arg(format!("{name}: {value}"));
    }
    command.arg(format!("https://{host}{path}"));
    let output = command.stdin(Stdio::null()).output().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("running curl (apt-get install curl): {e}"),
        )
    })?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "curl {method} https://{host}{path}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let head = std::fs::read(&head_file)?;
    // The last head is the answer (an interim 1xx head may precede it).
    let text = String::from_utf8_lossy(&head).into_owned();
    let last = text
        .split("\r\n\r\n")
        .filter(|block| !block.trim().is_empty())
        .last()
        .unwrap_or_default()
        .to_owned();
    let mut raw = last.into_bytes();
    raw.extend_from_slice(b"\r\n\r\n");
    let mut response = parse_response(&raw, true)?;
    // curl has already undone any chunked encoding.
    response.body = std::fs::read(&body_file).unwrap_or_default();
    Ok(response)
}

/// Standard base64 with padding, as in `Authorization: Basic` and the
/// `auth` field of docker/podman auth files.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
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

fn parse_response(raw: &[u8], head: bool) -> std::io::Result<HttpResponse> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let split = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if head {
        body.clear();
    } else if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Fixtures

/// A tar of regular files with fixed metadata, so equal input gives equal bytes.
pub fn tar_layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        builder
            .append_data(&mut header, path, *content)
            .expect("appending to a tar in memory");
    }
    builder.into_inner().expect("finishing a tar in memory")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd in memory")
}

/// `sha256:<hex>`.
pub fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A layer: its media type, the tar it claims to be (whose digest becomes
/// the config's diff_id) and the blob pushed for it. Use `with_type` with a
/// `tar` the blob does not decompress to, for a wrong diff_id.
#[derive(Debug, Clone)]
pub struct FixtureLayer {
    pub media_type: String,
    pub tar: Vec<u8>,
    pub blob: Vec<u8>,
}

impl FixtureLayer {
    pub fn plain(tar: Vec<u8>) -> FixtureLayer {
        FixtureLayer::with_type(OCI_LAYER_TAR, tar.clone(), tar)
    }

    pub fn gzip(tar: Vec<u8>) -> FixtureLayer {
        let blob = gzip(&tar);
        FixtureLayer::with_type(OCI_LAYER_GZIP, tar, blob)
    }

    pub fn zstd(tar: Vec<u8>) -> FixtureLayer {
        let blob = zstd(&tar);
        FixtureLayer::with_type(OCI_LAYER_ZSTD, tar, blob)
    }

    pub fn with_type(media_type: &str, tar: Vec<u8>, blob: Vec<u8>) -> FixtureLayer {
        FixtureLayer {
            media_type: media_type.to_owned(),
            tar,
            blob,
        }
    }

    /// Compresses `tar` as `media_type` says (by its suffix).
    pub fn of_type(media_type: &str, tar: Vec<u8>) -> FixtureLayer {
        let blob = if media_type.ends_with("gzip") {
            gzip(&tar)
        } else if media_type.ends_with("zstd") {
            zstd(&tar)
        } else {
            tar.clone()
        };
        FixtureLayer::with_type(media_type, tar, blob)
    }
}

/// `(os, architecture, variant)`.
pub type PlatformSpec<'a> = (&'a str, &'a str, Option<&'a str>);

/// An image as built (and usually pushed): exact bytes and digests.
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub layers: Vec<FixtureLayer>,
    pub layer_digests: Vec<String>,
    pub diff_ids: Vec<String>,
}

/// Builds config and manifest bytes without pushing anything. Layers that
/// need `urls` point at `http://<url_host>/v2/<repo>/blobs/<digest>`.
pub fn build_image(
    url_host: &str,
    repo: &str,
    layers: Vec<FixtureLayer>,
    docker_types: bool,
    platform: PlatformSpec,
) -> PushedImage {
    let (os, architecture, variant) = platform;
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(&l.tar)).collect();
    let layer_digests: Vec<String> = layers.iter().map(|l| sha256(&l.blob)).collect();
    let mut config = json!({
        "architecture": architecture,
        "os": os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(variant) = variant {
        config["variant"] = json!(variant);
    }
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256(&config);
    let (manifest_type, config_type) = if docker_types {
        (DOCKER_MANIFEST, DOCKER_CONFIG)
    } else {
        (OCI_MANIFEST, OCI_CONFIG)
    };
    let layer_descriptors: Vec<Value> = layers
        .iter()
        .zip(&layer_digests)
        .map(|(layer, digest)| {
            let mut descriptor = json!({
                "mediaType": layer.media_type,
                "digest": digest,
                "size": layer.blob.len(),
            });
            if needs_urls(&layer.media_type) {
                descriptor["urls"] = json!([format!("http://{url_host}/v2/{repo}/blobs/{digest}")]);
            }
            descriptor
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": layer_descriptors,
    }))
    .unwrap();
    PushedImage {
        manifest_digest: sha256(&manifest),
        manifest,
        manifest_media_type: manifest_type.to_owned(),
        config,
        config_digest,
        layers,
        layer_digests,
        diff_ids,
    }
}

/// Uploads a blob with a POST then a monolithic PUT.
pub fn push_blob(host: &str, repo: &str, blob: &[u8]) -> String {
    push_blob_to(&Endpoint::plain(host), repo, blob)
}

/// [`push_blob`] to any registry (credentials, HTTPS).
pub fn push_blob_to(endpoint: &Endpoint, repo: &str, blob: &[u8]) -> String {
    let host = endpoint.host.as_str();
    let digest = sha256(blob);
    let started = request(
        endpoint,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        &[],
    )
    .unwrap_or_else(|e| panic!("POST upload to {host}: {e}"));
    assert_eq!(
        started.status,
        202,
        "starting a blob upload: {}",
        started.describe()
    );
    let location = started.header("Location").expect("upload Location header");
    let path = match location.find("://") {
        Some(scheme_end) => {
            let after = &location[scheme_end + 3..];
            &after[after.find('/').unwrap_or(after.len())..]
        }
        None => location,
    };
    let separator = if path.contains('?') { '&' } else { '?' };
    let put_path = format!("{path}{separator}digest={digest}");
    let done = request(
        endpoint,
        "PUT",
        &put_path,
        &[("Content-Type", "application/octet-stream")],
        blob,
    )
    .unwrap_or_else(|e| panic!("PUT blob to {host}: {e}"));
    assert_eq!(
        done.status,
        201,
        "finishing blob upload of {digest}: {}",
        done.describe()
    );
    digest
}

/// PUTs manifest bytes unchanged under `reference` (a tag or a digest).
pub fn push_manifest(host: &str, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    push_manifest_to(&Endpoint::plain(host), repo, reference, media_type, body)
}

/// [`push_manifest`] to any registry (credentials, HTTPS).
pub fn push_manifest_to(
    endpoint: &Endpoint,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) {
    let host = endpoint.host.as_str();
    let response = request(
        endpoint,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        body,
    )
    .unwrap_or_else(|e| panic!("PUT manifest to {host}: {e}"));
    assert_eq!(
        response.status,
        201,
        "pushing manifest {repo}:{reference}: {}",
        response.describe()
    );
    assert_eq!(
        response.header("Docker-Content-Digest"),
        Some(sha256(body).as_str()),
        "the registry must keep manifest bytes unchanged"
    );
}

/// Builds and pushes an image (config, every layer blob, then the manifest
/// under `tag`, or by digest when `tag` is `None`). Blocking.
pub fn push_image(
    host: &str,
    repo: &str,
    tag: Option<&str>,
    layers: Vec<FixtureLayer>,
    docker_types: bool,
    platform: PlatformSpec,
) -> PushedImage {
    push_image_to(
        &Endpoint::plain(host),
        repo,
        tag,
        layers,
        docker_types,
        platform,
    )
}

/// [`push_image`] to any registry (credentials, HTTPS).
pub fn push_image_to(
    endpoint: &Endpoint,
    repo: &str,
    tag: Option<&str>,
    layers: Vec<FixtureLayer>,
    docker_types: bool,
    platform: PlatformSpec,
) -> PushedImage {
    let image = build_image(&endpoint.host, repo, layers, docker_types, platform);
    push_blob_to(endpoint, repo, &image.config);
    for layer in &image.layers {
        push_blob_to(endpoint, repo, &layer.blob);
    }
    let reference = tag.unwrap_or(&image.manifest_digest);
    push_manifest_to(
        endpoint,
        repo,
        reference,
        &image.manifest_media_type,
        &image.manifest,
    );
    image
}

/// Pushes an OCI index (or Docker manifest list) of already pushed images,
/// each entry carrying its platform. Returns the index bytes and digest.
pub fn push_index(
    host: &str,
    repo: &str,
    tag: &str,
    entries: &[(&PushedImage, PlatformSpec)],
    docker_types: bool,
) -> (Vec<u8>, String) {
    push_index_to(&Endpoint::plain(host), repo, tag, entries, docker_types)
}

/// [`push_index`] to any registry (credentials, HTTPS).
pub fn push_index_to(
    endpoint: &Endpoint,
    repo: &str,
    tag: &str,
    entries: &[(&PushedImage, PlatformSpec)],
    docker_types: bool,
) -> (Vec<u8>, String) {
    let index_type = if docker_types {
        DOCKER_MANIFEST_LIST
    } else {
        OCI_INDEX
    };
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(image, (os, architecture, variant))| {
            let mut platform = json!({"architecture": architecture, "os": os});
            if let Some(variant) = variant {
                platform["variant"] = json!(variant);
            }
            json!({
                "mediaType": image.manifest_media_type,
                "digest": image.manifest_digest,
                "size": image.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    let body = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": manifests,
    }))
    .unwrap();
    push_manifest_to(endpoint, repo, tag, index_type, &body);
    let digest = sha256(&body);
    (body, digest)
}

// ---------------------------------------------------------------------------
// Fake registry

/// One canned response.
#[derive(Debug, Clone)]
pub struct Route {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A tiny HTTP/1.1 server serving a fixed route table, for content a real
/// registry would refuse to store (it verifies digests on upload).
pub struct FakeRegistry {
    host: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    /// When each request for a path (query excluded) arrived.
    seen: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
    paces: Arc<Mutex<HashMap<String, Pace>>>,
    /// Answers given instead of a path's route, and how many more times.
    fronts: Arc<Mutex<HashMap<String, (usize, Route)>>>,
    /// Raw answers, required credentials and recorded request heads.
    extras: Arc<FakeExtras>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeRegistry {
    /// Serves `GET /v2/` with 200 and nothing else until routes are added.
    pub fn start() -> FakeRegistry {
        FakeRegistry::start_on("127.0.0.1".parse().unwrap())
    }

    /// [`FakeRegistry::start`] on a port of `ip`, such as `127.0.0.2`
    /// (another loopback address, so another origin than `127.0.0.1`).
    pub fn start_on(ip: IpAddr) -> FakeRegistry {
        let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("binding {ip}:0: {e}"));
        let host = listener.local_addr().unwrap().to_string();
        let extras: Arc<FakeExtras> = Arc::default();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let seen: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
        let paces: Arc<Mutex<HashMap<String, Pace>>> = Arc::default();
        let fronts: Arc<Mutex<HashMap<String, (usize, Route)>>> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        routes.lock().unwrap().insert(
            "/v2/".into(),
            Route {
                status: 200,
                content_type: "application/json".into(),
                headers: vec![],
                body: b"{}".to_vec(),
            },
        );
        let thread = {
            let (routes, seen, paces, fronts, extras, stopping) = (
                routes.clone(),
                seen.clone(),
                paces.clone(),
                fronts.clone(),
                extras.clone(),
                stopping.clone(),
            );
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (routes, seen, paces, fronts, extras, stopping) = (
                        routes.clone(),
                        seen.clone(),
                        paces.clone(),
                        fronts.clone(),
                        extras.clone(),
                        stopping.clone(),
                    );
                    std::thread::spawn(move || {
                        serve_fake(stream, &routes, &seen, &paces, &fronts, &extras, &stopping)
                    });
                }
            })
        };
        FakeRegistry {
            host,
            routes,
            seen,
            paces,
            fronts,
            extras,
            stopping,
            thread: Some(thread),
        }
    }

    /// Serves an image: the manifest under `tag` and its digest (with its
    /// `mediaType` as Content-Type, default OCI), the config, and `blobs`
    /// exactly as given, whatever they hash to.
    pub fn with_image(
        repo: &str,
        tag: &str,
        manifest: &[u8],
        config: &[u8],
        blobs: Vec<(String, Vec<u8>)>,
    ) -> FakeRegistry {
        let fake = FakeRegistry::start();
        fake.add_image(repo, tag, manifest, config, blobs);
        fake
    }

    pub fn add_image(
        &self,
        repo: &str,
        tag: &str,
        manifest: &[u8],
        config: &[u8],
        blobs: Vec<(String, Vec<u8>)>,
    ) {
        let manifest_type = serde_json::from_slice::<Value>(manifest)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| OCI_MANIFEST.to_owned());
        let digest = sha256(manifest);
        let manifest_route = Route {
            status: 200,
            content_type: manifest_type,
            headers: vec![("Docker-Content-Digest".into(), digest.clone())],
            body: manifest.to_vec(),
        };
        self.route(
            &format!("/v2/{repo}/manifests/{tag}"),
            manifest_route.clone(),
        );
        self.route(&format!("/v2/{repo}/manifests/{digest}"), manifest_route);
        self.blob(repo, &sha256(config), config.to_vec());
        for (digest, bytes) in blobs {
            self.blob(repo, &digest, bytes);
        }
    }

    /// Serves `bytes` as blob `digest` of `repo`.
    pub fn blob(&self, repo: &str, digest: &str, bytes: Vec<u8>) {
        self.route(
            &format!("/v2/{repo}/blobs/{digest}"),
            Route {
                status: 200,
                content_type: "application/octet-stream".into(),
                headers: vec![("Docker-Content-Digest".into(), digest.to_owned())],
                body: bytes,
            },
        );
    }

    pub fn route(&self, path: &str, route: Route) {
        self.routes.lock().unwrap().insert(path.to_owned(), route);
    }

    /// Sends `path`'s response (any route, including a 404) at `pace`
    /// instead of all at once.
    pub fn pace(&self, path: &str, pace: Pace) {
        self.paces.lock().unwrap().insert(path.to_owned(), pace);
    }

    /// Serves `bytes` as blob `digest` of `repo`, but sends only the head
    /// and the first `after` bytes, then nothing more (see [`Pace::StallAfter`]).
    pub fn stalling_blob(&self, repo: &str, digest: &str, bytes: Vec<u8>, after: usize) {
        self.blob(repo, digest, bytes);
        self.pace(
            &format!("/v2/{repo}/blobs/{digest}"),
            Pace::StallAfter(after),
        );
    }

    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// Requests (any method) seen for `path`, query excluded.
    pub fn requests(&self, path: &str) -> usize {
        self.request_times(path).len()
    }

    /// When each request (any method) for `path` arrived, query excluded.
    pub fn request_times(&self, path: &str) -> Vec<Instant> {
        self.seen
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    /// Answers the next `times` requests for `path` (any method) with
    /// `status`, a registry error body and `headers` such as `Retry-After`,
    /// then serves `path` as before.
    pub fn fail_first(&self, path: &str, times: usize, status: u16, headers: &[(&str, &str)]) {
        let code = match status {
            429 => "TOOMANYREQUESTS",
            503 => "UNAVAILABLE",
            _ => "UNKNOWN",
        };
        let mut route = error_route(status, code, reason(status));
        route.headers = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        self.fronts
            .lock()
            .unwrap()
            .insert(path.to_owned(), (times, route));
    }
}

impl FakeRegistry {
    /// Answers every request for `path` (query excluded) with exactly
    /// `bytes`, status line and headers included, then closes the
    /// connection: for answers a route cannot give, such as a
    /// `Content-Length` that lies or none at all.
    pub fn raw(&self, path: &str, bytes: Vec<u8>) {
        self.extras.raw.lock().unwrap().insert(
            path.to_owned(),
            RawResponse {
                bytes,
                then_stall: false,
            },
        );
    }

    /// Like [`FakeRegistry::raw`], but keeps the connection open after
    /// `bytes` without sending anything more (until the fake is dropped).
    pub fn raw_then_stall(&self, path: &str, bytes: Vec<u8>) {
        self.extras.raw.lock().unwrap().insert(
            path.to_owned(),
            RawResponse {
                bytes,
                then_stall: true,
            },
        );
    }

    /// From now on, answers every request (any path) that does not carry
    /// `Authorization: Basic base64(user:password)` with 401 and
    /// `WWW-Authenticate: Basic realm="fake"`, like an htpasswd registry.
    pub fn require_basic_auth(&self, user: &str, password: &str) {
        let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
        *self.extras.basic_auth.lock().unwrap() = Some(expected);
    }

    /// Every request received for `path` (query excluded; `None`: any
    /// path), in the order received, with its headers.
    pub fn recorded_requests(&self, path: Option<&str>) -> Vec<RecordedRequest> {
        self.extras
            .heads
            .lock()
            .unwrap()
            .iter()
            .filter(|r| path.is_none() || path == Some(r.path.as_str()))
            .cloned()
            .collect()
    }

    /// Answers `path` with `status` (a 3xx) and `Location: location`.
    pub fn redirect(&self, path: &str, status: u16, location: &str) {
        self.route(
            path,
            Route {
                status,
                content_type: "text/plain".into(),
                headers: vec![("Location".into(), location.to_owned())],
                body: Vec::new(),
            },
        );
    }
}

/// One request a [`FakeRegistry`] received, as it saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target, query included.
    pub target: String,
    /// The target's path, query excluded.
    pub path: String,
    /// Every header, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    fn parse(head: &str, path: &str) -> RecordedRequest {
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let target = request_line.next().unwrap_or_default().to_owned();
        let headers = lines
            .take_while(|line| !line.is_empty())
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
            .collect();
        RecordedRequest {
            method,
            target,
            path: path.to_owned(),
            headers,
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// What a [`FakeRegistry`] does beyond its route table.
#[derive(Default)]
struct FakeExtras {
    /// Exact answers by path (see [`FakeRegistry::raw`]).
    raw: Mutex<HashMap<String, RawResponse>>,
    /// The `Authorization` value required of every request, if any.
    basic_auth: Mutex<Option<String>>,
    /// Every request head, in the order received.
    heads: Mutex<Vec<RecordedRequest>>,
}

#[derive(Debug, Clone)]
struct RawResponse {
    bytes: Vec<u8>,
    then_stall: bool,
}

impl FakeExtras {
    /// None when the request may proceed, else the 401 to answer it with.
    fn refusal(&self, authorization: Option<&str>) -> Option<Route> {
        let expected = self.basic_auth.lock().unwrap().clone()?;
        if authorization == Some(expected.as_str()) {
            return None;
        }
        let mut refusal = error_route(401, "UNAUTHORIZED", "authentication required");
        refusal.headers = vec![("WWW-Authenticate".into(), "Basic realm=\"fake\"".into())];
        Some(refusal)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.host);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_fake(
    mut stream: TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
    seen: &Mutex<HashMap<String, Vec<Instant>>>,
    paces: &Mutex<HashMap<String, Pace>>,
    fronts: &Mutex<HashMap<String, (usize, Route)>>,
    extras: &FakeExtras,
    stopping: &AtomicBool,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&raw, b"\r\n\r\n").is_none() {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_owned();
    seen.lock()
        .unwrap()
        .entry(path.clone())
        .or_default()
        .push(Instant::now());
    let recorded = RecordedRequest::parse(&head, &path);
    // The 401 of a fake that requires credentials comes before anything else.
    let refusal = extras.refusal(recorded.header("Authorization"));
    extras.heads.lock().unwrap().push(recorded);
    let raw = extras.raw.lock().unwrap().get(&path).cloned();
    if let (None, Some(raw)) = (&refusal, raw) {
        let _ = stream.write_all(&raw.bytes).and_then(|()| stream.flush());
        if raw.then_stall {
            hold_open(stopping);
        } else {
            let _ = stream.shutdown(Shutdown::Write);
        }
        return;
    }

    let front = match refusal {
        Some(refusal) => Some(refusal),
        None => match fronts.lock().unwrap().get_mut(&path) {
            Some((left, route)) if *left > 0 => {
                *left -= 1;
                Some(route.clone())
            }
            _ => None,
        },
    };
    let front_used = front.is_some();
    let route = front.or_else(|| routes.lock().unwrap().get(&path).cloned());
    let route = match route {
        Some(route) if front_used => route,
        Some(route) if method == "GET" || method == "HEAD" => route,
        Some(_) => error_route(405, "UNSUPPORTED", "method not allowed"),
        None if path.contains("/manifests/") => {
            error_route(404, "MANIFEST_UNKNOWN", "manifest unknown")
        }
        None if path.contains("/blobs/") => {
            error_route(404, "BLOB_UNKNOWN", "blob unknown to registry")
        }
        None => error_route(404, "NAME_UNKNOWN", "repository name not known to registry"),
    };
    let mut response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Docker-Distribution-Api-Version: registry/2.0\r\nConnection: close\r\n",
        route.status,
        reason(route.status),
        route.content_type,
        route.body.len()
    );
    for (name, value) in &route.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    let mut out = response.into_bytes();
    let head_len = out.len();
    if method != "HEAD" {
        out.extend_from_slice(&route.body);
    }
    let pace = paces.lock().unwrap().get(&path).copied();
    match pace {
        None => {
            let _ = stream.write_all(&out);
        }
        Some(Pace::NoResponse) => {
            hold_open(stopping);
            return;
        }
        Some(Pace::StallAfter(after)) => {
            let end = (head_len + after).min(out.len());
            if stream.write_all(&out[..end]).is_err() || stream.flush().is_err() {
                return;
            }
            hold_open(stopping);
            return;
        }
        Some(Pace::Trickle { chunk, interval }) => {
            if stream.write_all(&out[..head_len]).is_err() {
                return;
            }
            for piece in out[head_len..].chunks(chunk.max(1)) {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(interval);
                if stream.write_all(piece).is_err() || stream.flush().is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

/// How a [`FakeRegistry`] sends one path's responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Reads the request, then sends nothing and keeps the connection open.
    NoResponse,
    /// Sends the head (with the full Content-Length) and the first `n` body
    /// bytes, then nothing, keeping the connection open.
    StallAfter(usize),
    /// Sends the head at once, then `chunk` body bytes after each `interval`.
    Trickle { chunk: usize, interval: Duration },
}

/// The longest a stalled connection is held: the fake's drop ends it sooner.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Keeps the calling connection thread (and so its open stream) alive until
/// the server stops or [`STALL_LIMIT`] passes.
fn hold_open(stopping: &AtomicBool) {
    let until = Instant::now() + STALL_LIMIT;
    while !stopping.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// A listener that never answers

/// Accepts TCP connections and never sends a byte (nor closes them) until
/// dropped: the server side of a registry that hangs.
pub struct SilentServer {
    host: String,
    connections: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    pub fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let host = listener.local_addr().unwrap().to_string();
        listener
            .set_nonblocking(true)
            .expect("making a listener non-blocking");
        let connections = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (connections, stopping) = (connections.clone(), stopping.clone());
            std::thread::spawn(move || {
                let mut held = Vec::new();
                let until = Instant::now() + STALL_LIMIT;
                while !stopping.load(Ordering::SeqCst) && Instant::now() < until {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            held.push(stream);
                            connections.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                drop(held);
            })
        };
        SilentServer {
            host,
            connections,
            stopping,
            thread: Some(thread),
        }
    }

    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A loopback address where nothing listens (bound, then released).
pub fn dead_host() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().unwrap().to_string()
}

/// `time` as an HTTP-date (IMF-fixdate, RFC 9110), such as
/// `Fri, 27 Nov 2026 21:30:05 GMT`, in whole seconds.
pub fn http_date(time: std::time::SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a time after 1970")
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

// ---------------------------------------------------------------------------
// An HTTP CONNECT proxy

/// A forward proxy for HTTPS on a loopback port: it answers
/// `CONNECT host:port` by connecting there, answering 200 and relaying
/// bytes both ways until either side closes. Every CONNECT target is
/// recorded; connections are cut when it is dropped.
pub struct ConnectProxy {
    host: String,
    targets: Arc<Mutex<Vec<String>>>,
    /// Both ends of every tunnel, to cut them on drop.
    streams: Arc<Mutex<Vec<TcpStream>>>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ConnectProxy {
    pub fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let host = listener.local_addr().unwrap().to_string();
        let targets: Arc<Mutex<Vec<String>>> = Arc::default();
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (targets, streams, stopping) = (targets.clone(), streams.clone(), stopping.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (targets, streams) = (targets.clone(), streams.clone());
                    std::thread::spawn(move || tunnel(stream, &targets, &streams));
                }
            })
        };
        ConnectProxy {
            host,
            targets,
            streams,
            stopping,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host)
    }

    /// The `host:port` of every CONNECT so far, in the order received.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.host);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// One proxy connection: the CONNECT head, then a tunnel to its target.
fn tunnel(mut client: TcpStream, targets: &Mutex<Vec<String>>, streams: &Mutex<Vec<TcpStream>>) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            break end + 4;
        }
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (request_line.next(), request_line.next());
    let (Some("CONNECT"), Some(target)) = (method, target) else {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    targets.lock().unwrap().push(target.to_owned());
    let Ok(mut upstream) = TcpStream::connect(target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .and_then(|()| upstream.write_all(&raw[head_end..]))
        .is_err()
    {
        return;
    }
    let _ = client.set_read_timeout(None);
    let (Ok(client_copy), Ok(upstream_copy)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    streams.lock().unwrap().extend(
        [client.try_clone(), upstream.try_clone()]
            .into_iter()
            .flatten(),
    );
    let back = std::thread::spawn(move || relay(upstream_copy, client_copy));
    relay(client, upstream);
    let _ = back.join();
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s writing side.
fn relay(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn error_route(status: u16, code: &str, message: &str) -> Route {
    Route {
        status,
        content_type: "application/json; charset=utf-8".into(),
        headers: vec![],
        body: serde_json::to_vec(&json!({"errors": [{"code": code, "message": message}]})).unwrap(),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

// ---------------------------------------------------------------------------
// File trees

/// Every non-directory entry under `dir` (hidden ones included), sorted;
/// empty if `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("reading a directory entry");
            let file_type = entry.file_type().expect("file type");
            if file_type.is_dir() {
                pending.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// The required external tool at `name`, or a panic naming how to install it.
pub fn require_tool(name: &str, install: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| panic!("{name} is not installed; these tests need it: {install}"))
}

/// How a program run by [`run`] ended.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    /// Status, time and both outputs, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "{} after {:.1?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.took, self.stdout, self.stderr
        )
    }
}

/// Runs `command` to completion, killing it after `limit`.
pub fn run(what: &str, command: &mut Command, limit: Duration) -> Run {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            break (status, false);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break (child.wait().expect("reaping a killed child"), true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ran = Run {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        took: started.elapsed(),
    };
    assert!(
        !timed_out,
        "{what} did not finish within {limit:?}: {}",
        ran.describe()
    );
    eprintln!("{what}: {} in {:.1?}", ran.status, ran.took);
    ran
}

/// Bytes that do not compress (xorshift from a fixed seed), so a layer's
/// blob is about as large as its tar.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Byte equality that reports sizes and digests instead of dumping bytes.
#[track_caller]
pub fn assert_bytes(actual: &[u8], expected: &[u8], what: &str) {
    assert!(
        actual == expected,
        "{what}: got {} bytes ({}), expected {} bytes ({})",
        actual.len(),
        sha256(actual),
        expected.len(),
        sha256(expected)
    );
}

/// Pushes `repo:v1` (linux/amd64) with one gzip layer per `(seed, size)`:
/// a tar of one file of [`noise`], so every layer is distinct and does
/// not compress.
pub fn push_noise_image(host: &str, repo: &str, layers: &[(u64, usize)]) -> PushedImage {
    let layers = layers
        .iter()
        .map(|&(seed, size)| {
            FixtureLayer::gzip(tar_layer(&[(&format!("f{seed}"), &noise(seed, size))]))
        })
        .collect();
    push_image(
        host,
        repo,
        Some("v1"),
        layers,
        false,
        ("linux", "amd64", None),
    )
}

// ---------------------------------------------------------------------------
// Mounted file systems (a read-only or full `dst`)

/// A tmpfs mounted with `options` for one test, unmounted when dropped
/// (and its mount point removed): nothing is left mounted behind a test.
pub struct Tmpfs(Option<tempfile::TempDir>);

impl Tmpfs {
    pub fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs ({options})");
        Tmpfs(Some(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let dir = self.0.take().unwrap();
        let unmounted = std::process::Command::new("umount")
            .arg(dir.path())
            .status();
        // Removing the mount point while still mounted would empty the tmpfs
        // only: keep it (and say so) rather than hide a leak.
        if unmounted.is_ok_and(|s| s.success()) {
            drop(dir);
        } else {
            eprintln!("could not unmount {}", dir.keep().display());
        }
    }
}
