//! A fake registry for what a real one refuses to serve or does not do:
//! canned [`Route`]s per path, hostile bytes, stalls and trickles
//! ([`Pace`]), failures before success, redirects, basic auth; it records
//! every request ([`FakeRegistry::recorded_requests`]).
//!
//! ```no_run
//! use harness::{build_image, distinct_tar, FakeRegistry, FixtureLayer};
//! let image = build_image("unused", "repo", vec![FixtureLayer::gzip(distinct_tar("a"))], false, ("linux", "amd64", None));
//! let blobs = image.layer_digests.iter().cloned().zip(image.layers.iter().map(|l| l.blob.clone())).collect();
//! let fake = FakeRegistry::with_image("repo", "v1", &image.manifest, &image.config, blobs);
//! fake.fail_first("/v2/repo/manifests/v1", 1, 503, &[("Retry-After", "1")]);
//! let reference = format!("{}/repo:v1", fake.host());
//! # let _ = reference;
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{
    fixtures::sha256,
    http::{base64, find},
    media::OCI_MANIFEST,
};

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
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Keeps the calling connection thread (and so its open stream) alive until
/// the server stops or [`STALL_LIMIT`] passes.
fn hold_open(stopping: &AtomicBool) {
    let until = Instant::now() + STALL_LIMIT;
    while !stopping.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
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
