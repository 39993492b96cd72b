//! Proxies that record what passes: an HTTP CONNECT proxy for HTTPS,
//! recording every tunnel's target, for tests that check `HTTPS_PROXY` and
//! `NO_PROXY`; and a reverse proxy in front of a registry, recording every
//! request's `Range` and able to cut or corrupt one answer, for tests of
//! ranged downloads.
//!
//! ```no_run
//! use harness::{ConnectProxy, Fault, RecordingProxy};
//! let proxy = ConnectProxy::start();
//! // HTTPS_PROXY=proxy.url() in a child process, then:
//! assert!(proxy.targets().is_empty());
//!
//! let registry = harness::Registry::start();
//! let front = RecordingProxy::start(&registry.host());
//! front.fault_once("bytes=0-99", Fault::CutAfter(10));
//! // pull from front.host(), then:
//! let ranges: Vec<_> = front.requests().into_iter().filter_map(|r| r.range).collect();
//! ```

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::http::find;

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
    let Some((raw, head_end)) = read_head(&mut client) else {
        return;
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

/// A reverse proxy on a loopback port in front of the plain-HTTP registry
/// at `upstream`: each connection carries one request, forwarded with
/// `Connection: close`, whose answer goes back as it came (and the
/// connection then closes), unless a [`Fault`] was set for its `Range`.
/// Every request is recorded. Stops when dropped.
pub struct RecordingProxy {
    host: String,
    requests: Arc<Mutex<Vec<ProxiedRequest>>>,
    faults: Arc<Mutex<HashMap<String, Fault>>>,
    ranges: Arc<InFlight>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Requests with a `Range` being answered, and the most at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
}

/// One request a [`RecordingProxy`] forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedRequest {
    pub method: String,
    /// The request target, query included.
    pub target: String,
    /// The `Range` header's value, if any.
    pub range: Option<String>,
}

/// What a [`RecordingProxy`] does to the body of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Sends the head and this many body bytes, then closes the connection.
    CutAfter(usize),
    /// Inverts the body byte at this index.
    FlipByte(usize),
    /// Sends the head and this many body bytes, then nothing more until
    /// the proxy is dropped.
    StallAfter(usize),
    /// Forwards the request without its `Range`, so that the whole blob
    /// comes back, as from a server that ignores ranges.
    IgnoreRange,
}

impl RecordingProxy {
    pub fn start(upstream: &str) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let host = listener.local_addr().unwrap().to_string();
        let requests: Arc<Mutex<Vec<ProxiedRequest>>> = Arc::default();
        let faults: Arc<Mutex<HashMap<String, Fault>>> = Arc::default();
        let ranges: Arc<InFlight> = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, faults, stopping) = (requests.clone(), faults.clone(), stopping.clone());
            let ranges = ranges.clone();
            let upstream = upstream.to_owned();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (requests, faults) = (requests.clone(), faults.clone());
                    let (upstream, stopping) = (upstream.clone(), stopping.clone());
                    let ranges = ranges.clone();
                    std::thread::spawn(move || {
                        forward(stream, &upstream, (&requests, &faults, &ranges), &stopping)
                    });
                }
            })
        };
        RecordingProxy {
            host,
            requests,
            faults,
            ranges,
            stopping,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`, a loopback registry host for references.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// Applies `fault` to the answer of the first request whose `Range`
    /// is exactly `range` (e.g. `bytes=0-99`); later ones pass unharmed.
    pub fn fault_once(&self, range: &str, fault: Fault) {
        self.faults.lock().unwrap().insert(range.to_owned(), fault);
    }

    /// Every request so far, in the order received.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The most requests with a `Range` that were being answered at once
    /// (a stalled answer counts until the proxy is dropped).
    pub fn most_ranges_in_flight(&self) -> usize {
        self.ranges.most.load(Ordering::SeqCst)
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.host);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where [`forward`] records requests, finds faults and counts ranges.
type Recorders<'a> = (
    &'a Mutex<Vec<ProxiedRequest>>,
    &'a Mutex<HashMap<String, Fault>>,
    &'a InFlight,
);

/// One request from `client`, forwarded to `upstream`, and its answer back.
fn forward(
    mut client: TcpStream,
    upstream: &str,
    (requests, faults, ranges): Recorders<'_>,
    stopping: &AtomicBool,
) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((raw, head_end)) = read_head(&mut client) else {
        return;
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
    };
    let mut parts = request_line.split(' ');
    let recorded = ProxiedRequest {
        method: parts.next().unwrap_or_default().to_owned(),
        target: parts.next().unwrap_or_default().to_owned(),
        range: header("range"),
    };
    requests.lock().unwrap().push(recorded.clone());
    let _counted = recorded.range.is_some().then(|| Counted::new(ranges));
    let fault = recorded
        .range
        .as_ref()
        .and_then(|range| faults.lock().unwrap().remove(range));
    // Pulls send no bodies: the head is the whole request.
    let mut forwarded = format!("{request_line}\r\n");
    let ignored =
        |name: &str| name.eq_ignore_ascii_case("range") && fault == Some(Fault::IgnoreRange);
    for (name, value) in &headers {
        if !name.eq_ignore_ascii_case("connection") && !ignored(name) {
            forwarded.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    let Ok(mut server) = TcpStream::connect(upstream) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let _ = server.set_read_timeout(Some(Duration::from_secs(30)));
    let mut answer = Vec::new();
    if server.write_all(forwarded.as_bytes()).is_err() || server.read_to_end(&mut answer).is_err() {
        return;
    }
    let body_start = find(&answer, b"\r\n\r\n").map_or(answer.len(), |end| end + 4);
    let sent = match fault {
        None | Some(Fault::IgnoreRange) => client.write_all(&answer),
        Some(Fault::FlipByte(at)) => {
            if let Some(byte) = answer.get_mut(body_start + at) {
                *byte = !*byte;
            }
            client.write_all(&answer)
        }
        Some(Fault::CutAfter(n)) => client.write_all(&answer[..(body_start + n).min(answer.len())]),
        Some(Fault::StallAfter(n)) => {
            let sent = client.write_all(&answer[..(body_start + n).min(answer.len())]);
            while !stopping.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            sent
        }
    };
    if sent.is_ok() {
        let _ = client.flush();
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// Counts one request in an [`InFlight`] while it lives.
struct Counted<'a>(&'a InFlight);

impl<'a> Counted<'a> {
    fn new(in_flight: &'a InFlight) -> Counted<'a> {
        let now = in_flight.now.fetch_add(1, Ordering::SeqCst) + 1;
        in_flight.most.fetch_max(now, Ordering::SeqCst);
        Counted(in_flight)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads from `client` until the end of an HTTP head: the bytes read so far
/// (the head and whatever followed it) and where the head ends; `None` when
/// the client closed or failed first.
fn read_head(client: &mut TcpStream) -> Option<(Vec<u8>, usize)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        if let Some(end) = find(&raw, b"\r\n\r\n") {
            return Some((raw, end + 4));
        }
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}
