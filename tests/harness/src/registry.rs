//! A real CNCF distribution registry (`docker-registry`) per test, on a
//! loopback port with its own storage, stopped on drop: plain, htpasswd
//! basic auth ([`TEST_USER`]/[`TEST_PASSWORD`]), TLS with a private CA,
//! token auth (see [`crate::token`]) or a pull-through cache of another. Its
//! access log says which requests reached it ([`Registry::requests`],
//! [`Registry::blob_gets`]); an assertion that something is absent reads
//! [`Registry::settled_log`], which waits for the log to catch up.
//!
//! ```no_run
//! use harness::{push_image, FixtureLayer, Registry, RegistrySetup, tar_layer};
//! let registry = Registry::start();
//! let layer = FixtureLayer::gzip(tar_layer(&[("hello.txt", b"hi\n")]));
//! let image = push_image(&registry.host(), "demo", Some("v1"), vec![layer], false, ("linux", "amd64", None));
//! let reference = format!("{}/demo:v1", registry.host());
//! let private = Registry::start_with(RegistrySetup::new().htpasswd().tls());
//! # let _ = (image, reference, private);
//! ```

use std::fs::File;
use std::net::{IpAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::{
    http::{request, Endpoint},
    tls::TlsCert,
    token::{TokenPolicy, TokenServer, TOKEN_ISSUER, TOKEN_SERVICE},
};

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

    /// [`Registry::log`] once every request answered so far is in it: what
    /// an assertion that something is absent from the log must read.
    pub fn settled_log(&self) -> String {
        self.settle_log();
        self.log()
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
/// must be a loopback address (Debian's /etc/hosts maps the name to
/// 127.0.1.1): tests never listen on the machine's other addresses. A name,
/// unlike `127.0.0.1` or `localhost`, is not taken for a loopback registry,
/// which clients reach over plain HTTP.
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
    assert!(
        ip.is_loopback(),
        "TLS registries are reached by this machine's host name, but {name:?} resolves to {ip}, \
         which is not a loopback address (map it to 127.0.1.1 in /etc/hosts)"
    );
    if let Err(e) = TcpListener::bind((ip, 0)) {
        panic!("this machine's host name {name:?} resolves to {ip}, which cannot be bound: {e}");
    }
    (name, ip)
}
