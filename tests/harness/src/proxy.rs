//! An HTTP CONNECT proxy for HTTPS, recording every tunnel's target, for
//! tests that check `HTTPS_PROXY` and `NO_PROXY`.
//!
//! ```no_run
//! use harness::ConnectProxy;
//! let proxy = ConnectProxy::start();
//! // HTTPS_PROXY=proxy.url() in a child process, then:
//! assert!(proxy.targets().is_empty());
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
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
