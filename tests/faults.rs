//! Pulls through a fault-injecting proxy in front of a real registry: it
//! answers 503 to the first manifest request and cuts blob downloads
//! mid-body, and can hide Range headers from the registry. Pulls must
//! succeed by retrying and resuming, and stay byte-exact.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use harness::*;
use oci_cache::{CacheOptions, Error, ErrorKind, ImageCache};

/// What the proxy does to the requests it forwards.
#[derive(Default)]
struct Faults {
    /// 503s still to send for manifest requests.
    manifest_503s: AtomicUsize,
    /// Blob responses still to cut, and after how many body bytes.
    blob_cuts: AtomicUsize,
    cut_after: usize,
    /// Whether to drop Range headers, so the registry answers 200.
    hide_range: AtomicBool,
    /// Request lines seen, in order, marked ` +range` when they asked for a range.
    seen: Mutex<Vec<String>>,
}

/// One connection per request: the proxy reads a request head, applies the
/// faults, forwards it to `upstream` and relays the answer with
/// `Connection: close`, so every request is its own TCP connection.
struct FaultProxy {
    host: String,
    faults: Arc<Faults>,
    stopping: Arc<AtomicBool>,
}

impl FaultProxy {
    fn start(upstream: String, faults: Faults) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let faults = Arc::new(faults);
        let stopping = Arc::new(AtomicBool::new(false));
        let (shared, stop) = (faults.clone(), stopping.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (faults, upstream) = (shared.clone(), upstream.clone());
                thread::spawn(move || relay(client, &upstream, &faults));
            }
        });
        FaultProxy {
            host,
            faults,
            stopping,
        }
    }

    fn requests(&self, needle: &str) -> usize {
        self.faults
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.host);
    }
}

fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn relay(mut client: TcpStream, upstream: &str, faults: &Faults) {
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    let ranged = head.to_ascii_lowercase().contains("\r\nrange:");
    let marker = if ranged { " +range" } else { "" };
    faults
        .seen
        .lock()
        .unwrap()
        .push(format!("{request_line}{marker}"));
    let is_manifest = request_line.contains("/manifests/");
    let is_blob = request_line.starts_with("GET ") && request_line.contains("/blobs/sha256:");

    if is_manifest && take(&faults.manifest_503s) {
        let _ = client.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    // Small blobs (the config) end before the cut point and are not cut.
    let cut = is_blob && !ranged && faults.blob_cuts.load(Ordering::SeqCst) > 0;
    let forwarded: String = head
        .split("\r\n")
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            let hidden = faults.hide_range.load(Ordering::SeqCst) && lower.starts_with("range:");
            !(lower.starts_with("connection:") || hidden)
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        .replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
    let Ok(mut server) = TcpStream::connect(upstream) else {
        return;
    };
    if server.write_all(forwarded.as_bytes()).is_err() {
        return;
    }
    // Relay the answer, adding `Connection: close` after the status line
    // and, for a cut, stopping `cut_after` bytes into the body.
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let mut head_done = false;
    let mut body_sent = 0usize;
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !head_done {
            answer.extend_from_slice(&buf[..n]);
            let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            head_done = true;
            let text = String::from_utf8_lossy(&answer[..end]).replacen(
                "\r\n",
                "\r\nConnection: close\r\n",
                1,
            );
            let body = answer[end + 4..].to_vec();
            if client
                .write_all(format!("{text}\r\n\r\n").as_bytes())
                .is_err()
            {
                return;
            }
            if !send_body(&mut client, &body, cut, faults, &mut body_sent) {
                return;
            }
        } else if !send_body(&mut client, &buf[..n], cut, faults, &mut body_sent) {
            return;
        }
    }
}

/// Sends body bytes; a response that may be cut is cut when it reaches the
/// cut point and a cut is still owed.
fn send_body(
    client: &mut TcpStream,
    data: &[u8],
    cut: bool,
    faults: &Faults,
    sent: &mut usize,
) -> bool {
    let limit = faults.cut_after;
    if cut && *sent + data.len() >= limit && take(&faults.blob_cuts) {
        let _ = client.write_all(&data[..limit - *sent]);
        let _ = client.shutdown(Shutdown::Both);
        return false;
    }
    *sent += data.len();
    client.write_all(data).is_ok()
}

/// A layer of ~1.2 MB that does not compress away, so cuts land mid-body.
fn big_tar(seed: u64) -> Vec<u8> {
    tar_layer(&[("noise.bin", &noise(seed, 1_200_000))])
}

async fn pull_through(
    proxy: &FaultProxy,
    tag: &str,
    attempts: u32,
) -> (Result<Vec<Vec<u8>>, Error>, tempfile::TempDir) {
    let dst = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(CacheOptions::new().attempts(attempts)).unwrap();
    let reference = format!("{}/faulty:{tag}", proxy.host);
    let files = async {
        let image = cache.fetch_image(&reference, None).await?;
        let files = cache.rootfs(&image, dst.path()).await?;
        Ok(files
            .into_iter()
            .map(|mut f| {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).unwrap();
                bytes
            })
            .collect())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(60), files)
        .await
        .expect("pull hung");
    (outcome, dst)
}

fn push_faulty(registry: &Registry, tag: &str) -> PushedImage {
    push_image(
        &registry.host(),
        "faulty",
        Some(tag),
        vec![
            FixtureLayer::gzip(big_tar(1)),
            FixtureLayer::zstd(big_tar(2)),
        ],
        false,
        ("linux", "amd64", None),
    )
}

fn assert_exact(files: &[Vec<u8>], pushed: &PushedImage, dst: &Path) {
    assert_eq!(files.len(), pushed.layers.len());
    for (i, bytes) in files.iter().enumerate() {
        assert!(
            bytes == &pushed.layers[i].tar,
            "layer {i} differs from what was pushed"
        );
        assert_eq!(sha256(bytes), pushed.diff_ids[i]);
    }
    let leftovers: Vec<_> = files_under(dst)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_downloads_resume_with_range_and_503s_are_retried() {
    let registry = Registry::start();
    let pushed = push_faulty(&registry, "v1");
    let proxy = FaultProxy::start(
        registry.host(),
        Faults {
            manifest_503s: AtomicUsize::new(2),
            blob_cuts: AtomicUsize::new(2),
            cut_after: 300_000,
            ..Faults::default()
        },
    );
    let (files, dst) = pull_through(&proxy, "v1", 4).await;
    assert_exact(&files.unwrap(), &pushed, dst.path());
    // Both cut layers came back through a Range request for the rest.
    assert_eq!(
        proxy.requests("/manifests/"),
        3,
        "two 503s, then the manifest"
    );
    for digest in &pushed.layer_digests {
        assert_eq!(
            proxy.requests(digest),
            2,
            "one cut GET and one resumed GET of {digest}"
        );
        let ranged = format!("{digest} HTTP/1.1 +range");
        assert_eq!(proxy.requests(&ranged), 1, "{digest} resumed with a Range");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_ignoring_range_gets_the_whole_blob_again() {
    let registry = Registry::start();
    let pushed = push_faulty(&registry, "v1");
    let faults = Faults {
        blob_cuts: AtomicUsize::new(2),
        cut_after: 400_000,
        ..Faults::default()
    };
    faults.hide_range.store(true, Ordering::SeqCst);
    let proxy = FaultProxy::start(registry.host(), faults);
    let (files, dst) = pull_through(&proxy, "v1", 4).await;
    assert_exact(&files.unwrap(), &pushed, dst.path());
    for digest in &pushed.layer_digests {
        assert_eq!(
            proxy.requests(digest),
            2,
            "{digest}: a cut GET, then a full one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_beyond_the_attempts_fail_cleanly() {
    let registry = Registry::start();
    push_faulty(&registry, "v1");
    let proxy = FaultProxy::start(
        registry.host(),
        Faults {
            manifest_503s: AtomicUsize::new(5),
            ..Faults::default()
        },
    );
    let (outcome, dst) = pull_through(&proxy, "v1", 2).await;
    match outcome {
        Err(e) if e.kind() == ErrorKind::Network => {
            let msg = e.message().to_owned();
            assert!(msg.contains("503"), "{msg}")
        }
        other => panic!("expected Network, got {:?}", other.map(|f| f.len())),
    }
    assert_eq!(
        proxy.requests("/manifests/"),
        2,
        "exactly the configured attempts"
    );
    assert!(files_under(dst.path()).is_empty());
}
