//! Servers that never answer: a [`SilentServer`] accepts connections and
//! never sends a byte (a hung registry), [`dead_host`] is an address where
//! nothing listens (a refused connection).
//!
//! ```no_run
//! use harness::{dead_host, SilentServer};
//! let silent = SilentServer::start();
//! let hung = format!("{}/repo:v1", silent.host());
//! let refused = format!("{}/repo:v1", dead_host());
//! # let _ = (hung, refused);
//! ```

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fake::STALL_LIMIT;

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
