//! Time limits on every network step without any option set (connecting,
//! the TLS handshake, response headers, stalled bodies, token realms), how
//! each is changed or turned off, and the rest of the hostile-registry
//! audit: challenges learned through redirects, token lifetimes, descriptor
//! URLs and secrets in Debug output. The misbehaving servers these need
//! beyond the harness (a full accept queue, a scripted token realm) are
//! defined here.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harness::*;
use oci_cache::{CacheOptions, CallOptions, Error, ErrorKind};

const PLATFORM: PlatformSpec<'static> = ("linux", "amd64", None);

#[track_caller]
fn timeout_message<T>(result: Result<T, Error>, what: &str) -> String {
    match result {
        Err(e) if e.kind() == ErrorKind::Timeout => e.message().to_owned(),
        Err(other) => panic!("{what}: expected Error::Timeout, got {other:?}"),
        Ok(_) => panic!("{what}: expected Error::Timeout, got success"),
    }
}

#[track_caller]
fn assert_mentions(msg: &str, parts: &[&str]) {
    for part in parts {
        assert!(msg.contains(part), "{part:?} is missing from: {msg}");
    }
}

#[track_caller]
fn assert_took(took: Duration, from: Duration, to: Duration, what: &str) {
    assert!(
        took >= from && took <= to,
        "{what} took {took:?}, expected {from:?}..{to:?}"
    );
}

/// Waits up to 3 s for `dir` to be empty (blocking work may still be
/// removing its temp file as a call returns), then asserts it is.
#[track_caller]
fn assert_empty_dir(dir: &Path, what: &str) {
    let started = Instant::now();
    while !files_under(dir).is_empty() && started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(files_under(dir), Vec::<std::path::PathBuf>::new(), "{what}");
}

/// A one-layer image whose layer (about 256 KiB) `repo` serves from a fake
/// registry; the blob is added by the caller.
fn small_image(url_host: &str, repo: &str, layer: FixtureLayer) -> PushedImage {
    build_image(url_host, repo, vec![layer], false, PLATFORM)
}

fn noise_layer(seed: u64) -> FixtureLayer {
    FixtureLayer::plain(tar_layer(&[(
        "noise.bin",
        noise(seed, 256 << 10).as_slice(),
    )]))
}

/// A fake registry serving `built` complete as `repo:v1`.
fn serve(built: &PushedImage, repo: &str) -> FakeRegistry {
    let blobs = built
        .layer_digests
        .iter()
        .cloned()
        .zip(built.layers.iter().map(|l| l.blob.clone()))
        .collect();
    FakeRegistry::with_image(repo, "v1", &built.manifest, &built.config, blobs)
}

// ---------------------------------------------------------------------------
// Misbehaving servers

/// A listener whose accept queue is full and never drained: the kernel
/// drops further SYNs, so connecting to it never completes.
struct FullBacklog {
    host: String,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl FullBacklog {
    fn start() -> FullBacklog {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        // SAFETY: listen(2) on a socket this function owns.
        let listened = unsafe { libc::listen(listener.as_raw_fd(), 0) };
        assert_eq!(listened, 0, "listen(backlog 0)");
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        while let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            queued.push(stream);
            assert!(queued.len() < 64, "the accept queue of {addr} never filled");
        }
        FullBacklog {
            host: addr.to_string(),
            _listener: listener,
            _queued: queued,
        }
    }
}

/// A token realm over plain HTTP at `/token`: it answers every GET with
/// 200 and `body`, except those whose request target contains `hang`
/// (the scope of a repository named so), which it never answers.
struct Realm {
    host: String,
    requests: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Realm {
    fn start(body: &str) -> Realm {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let body = body.to_owned();
        let thread = {
            let (requests, stopping) = (requests.clone(), stopping.clone());
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while !stopping.load(Ordering::SeqCst) {
                    let Ok((mut stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let head = read_head(&mut stream);
                    requests.fetch_add(1, Ordering::SeqCst);
                    let target = head.lines().next().unwrap_or_default().to_owned();
                    if target.contains("hang") {
                        held.push(stream);
                        continue;
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes());
                }
            })
        };
        Realm {
            host,
            requests,
            stopping,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/token", self.host)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Makes `fake` answer the first request for `repo`'s `v1` manifest
    /// with 401 and a bearer challenge naming this realm.
    fn challenge_from(&self, fake: &FakeRegistry, repo: &str) {
        let challenge = format!(r#"Bearer realm="{}",service="fake""#, self.url());
        fake.fail_first(
            &format!("/v2/{repo}/manifests/v1"),
            1,
            401,
            &[("WWW-Authenticate", &challenge)],
        );
    }
}

impl Drop for Realm {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The request head, up to the empty line.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

// ---------------------------------------------------------------------------
// Time limits by default

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_registry_times_out_within_90_s_with_default_options() {
    let silent = SilentServer::start();
    let cache = new_cache(CacheOptions::new());
    let started = Instant::now();
    let result = within_for(
        Duration::from_secs(100),
        "fetch_image with default options",
        cache.fetch_image(&format!("{}/hangs:v1", silent.host()), None),
    )
    .await;
    let took = started.elapsed();
    let msg = timeout_message(result, "fetch_image");
    assert_mentions(
        &msg,
        &[
            &format!("waiting for response headers from {}", silent.host()),
            "nothing within 30s (response_timeout)",
        ],
    );
    assert_took(
        took,
        Duration::from_secs(30),
        Duration::from_secs(90),
        "a pull from a silent registry with default options",
    );
    // Not retried: each try would cost the whole response timeout again.
    assert_eq!(
        silent.connections(),
        1,
        "connections to the silent registry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_names_the_host_and_is_retried_once() {
    let backlog = FullBacklog::start();
    let cache = new_cache(
        CacheOptions::new()
            .connect_timeout(Duration::from_millis(500))
            .attempts(4),
    );
    let started = Instant::now();
    let result = within_for(
        Duration::from_secs(20),
        "fetch_image",
        cache.fetch_image(&format!("{}/full:v1", backlog.host), None),
    )
    .await;
    let took = started.elapsed();
    let msg = timeout_message(result, "fetch_image from a full accept queue");
    assert_mentions(
        &msg,
        &[
            &format!("connecting to {}", backlog.host),
            "not connected within 500ms (connect_timeout)",
        ],
    );
    // Retried, but only once whatever the attempts: two tries of 500 ms
    // and a backoff of 100..300 ms between (four tries would take 2.7 s
    // at least).
    assert_took(
        took,
        Duration::from_millis(1100),
        Duration::from_millis(2600),
        "two connect attempts of 500 ms",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_timeout_on_a_server_that_never_says_hello() {
    let silent = SilentServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cert = TlsCert::generate(dir.path(), &["IP:127.0.0.1".to_owned()]);
    // A CA of its own makes the loopback host an HTTPS one.
    let cache = new_cache(
        CacheOptions::new()
            .host_ca_certificate(silent.host(), &cert.cert)
            .connect_timeout(Duration::from_millis(200))
            .tls_handshake_timeout(Duration::from_millis(300))
            .attempts(1),
    );
    let started = Instant::now();
    let result = within_for(
        Duration::from_secs(20),
        "fetch_image",
        cache.fetch_image(&format!("{}/tls:v1", silent.host()), None),
    )
    .await;
    let took = started.elapsed();
    let msg = timeout_message(result, "fetch_image from a TLS server that never answers");
    assert_mentions(
        &msg,
        &[
            &format!("connecting to {}", silent.host()),
            "TLS handshake not done within 500ms",
            "tls_handshake_timeout 300ms",
        ],
    );
    assert_took(
        took,
        Duration::from_millis(490),
        Duration::from_secs(3),
        "a 200 ms + 300 ms connection setup",
    );
    // TCP got through: it was the handshake that hung.
    assert_eq!(silent.connections(), 1, "TCP connections accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeout_is_not_retried() {
    let silent = SilentServer::start();
    let cache = new_cache(CacheOptions::new().response_timeout(Duration::from_millis(300)));
    let started = Instant::now();
    let result = within_for(
        Duration::from_secs(20),
        "resolve",
        cache.resolve(&format!("{}/hangs:v1", silent.host())),
    )
    .await;
    let took = started.elapsed();
    let msg = timeout_message(result, "resolve on a silent registry");
    assert_mentions(
        &msg,
        &[
            &format!("waiting for response headers from {}", silent.host()),
            "nothing within 300ms (response_timeout)",
        ],
    );
    assert_took(
        took,
        Duration::from_millis(290),
        Duration::from_millis(2000),
        "a 300 ms response timeout",
    );
    assert_eq!(silent.connections(), 1, "connections (one try only)");
}

/// A fake registry serving `repo:v1`, whose layer blob stalls after 64 KiB.
fn stalling(repo: &str) -> (FakeRegistry, PushedImage) {
    let built = small_image("unused.invalid", repo, noise_layer(11));
    let fake = FakeRegistry::with_image(repo, "v1", &built.manifest, &built.config, vec![]);
    fake.stalling_blob(
        repo,
        &built.layer_digests[0],
        built.layers[0].blob.clone(),
        64 << 10,
    );
    (fake, built)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_stall_timeout_ends_a_stalled_body_and_leaves_nothing() {
    let (fake, _built) = stalling("stalls");
    let cache = new_cache(CacheOptions::new().stall_timeout(Duration::from_millis(300)));
    let image = within_for(
        Duration::from_secs(20),
        "fetch_image",
        cache.fetch_image(&format!("{}/stalls:v1", fake.host()), None),
    )
    .await
    .expect("fetch_image (manifest and config do not stall)");
    let dst = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = within_for(
        Duration::from_secs(20),
        "extract_layer",
        cache.extract_layer(&image, 0, dst.path()),
    )
    .await;
    let took = started.elapsed();
    let msg = timeout_message(result, "extract_layer of a stalled blob");
    assert_mentions(
        &msg,
        &[
            &format!("reading from {}", fake.host()),
            "nothing received for 300ms (stall_timeout)",
        ],
    );
    assert_took(
        took,
        Duration::from_millis(290),
        Duration::from_secs(3),
        "a 300 ms stall timeout",
    );
    assert_empty_dir(dst.path(), "dst after a stall timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_turned_off_leave_only_the_deadline() {
    // Response and stall timeouts off: nothing but the deadline ends the
    // wait for headers.
    let silent = SilentServer::start();
    let cache = new_cache(
        CacheOptions::new()
            .response_timeout(None)
            .stall_timeout(None),
    )
    .with_call_options(CallOptions::new().deadline(Duration::from_millis(600)));
    let started = Instant::now();
    let result = within_for(
        Duration::from_secs(20),
        "resolve",
        cache.resolve(&format!("{}/hangs:v1", silent.host())),
    )
    .await;
    let took = started.elapsed();
    let msg = timeout_message(result, "resolve without response and stall timeouts");
    assert_mentions(&msg, &["600ms deadline"]);
    assert!(
        !msg.contains("_timeout"),
        "a limit that is off fired: {msg}"
    );
    assert_took(
        took,
        Duration::from_millis(590),
        Duration::from_secs(3),
        "a 600 ms deadline",
    );

    // The cache's stall timeout, turned off for one call, does not fire.
    let (fake, _built) = stalling("off");
    let cache = new_cache(CacheOptions::new().stall_timeout(Duration::from_millis(200)));
    let image = within_for(
        Duration::from_secs(20),
        "fetch_image",
        cache.fetch_image(&format!("{}/off:v1", fake.host()), None),
    )
    .await
    .expect("fetch_image");
    let unstalled = cache.with_call_options(
        CallOptions::new()
            .stall_timeout(None)
            .deadline(Duration::from_millis(1000)),
    );
    let dst = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = within_for(
        Duration::from_secs(20),
        "extract_layer",
        unstalled.extract_layer(&image, 0, dst.path()),
    )
    .await;
    let took = started.elapsed();
    let msg = timeout_message(result, "extract_layer with the stall timeout off");
    assert_mentions(&msg, &["1s deadline"]);
    assert!(
        !msg.contains("stall_timeout"),
        "the stall timeout fired: {msg}"
    );
    assert_took(
        took,
        Duration::from_millis(990),
        Duration::from_secs(4),
        "a 1 s deadline",
    );
    assert_empty_dir(dst.path(), "dst after the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_token_realm_times_out_naming_the_realm() {
    let realm = Realm::start("{}");
    let built = small_image("unused.invalid", "hang/app", noise_layer(12));
    let fake = serve(&built, "hang/app");
    realm.challenge_from(&fake, "hang/app");
    let cache = new_cache(CacheOptions::new().response_timeout(Duration::from_millis(300)));
    let started = Instant::now();
    let result = within_for(
        Duration::from_secs(20),
        "fetch_image",
        cache.fetch_image(&format!("{}/hang/app:v1", fake.host()), None),
    )
    .await;
    let took = started.elapsed();
    let msg = timeout_message(result, "fetch_image with a silent token realm");
    assert_mentions(
        &msg,
        &[
            &format!("token request to {}", realm.url()),
            &format!("waiting for response headers from {}", realm.host),
            "nothing within 300ms (response_timeout)",
        ],
    );
    assert_took(
        took,
        Duration::from_millis(290),
        Duration::from_secs(3),
        "a 300 ms response timeout on the realm",
    );
    assert_eq!(realm.requests(), 1, "token requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_token_fetch_does_not_block_other_repositories() {
    let realm = Realm::start(r#"{"token":"granted","expires_in":300}"#);
    let hung = small_image("unused.invalid", "hang/app", noise_layer(13));
    let fine = small_image("unused.invalid", "fine/app", noise_layer(14));
    let fake = serve(&hung, "hang/app");
    let blobs = vec![(fine.layer_digests[0].clone(), fine.layers[0].blob.clone())];
    fake.add_image("fine/app", "v1", &fine.manifest, &fine.config, blobs);
    realm.challenge_from(&fake, "hang/app");
    realm.challenge_from(&fake, "fine/app");
    let cache = new_cache(CacheOptions::new().response_timeout(Duration::from_secs(3)));

    let hanging = {
        let cache = cache.clone();
        let reference = format!("{}/hang/app:v1", fake.host());
        tokio::spawn(async move {
            let started = Instant::now();
            (cache.fetch_image(&reference, None).await, started.elapsed())
        })
    };
    // Until the hung repository's token request is under way.
    let waited = Instant::now();
    while realm.requests() == 0 && waited.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(realm.requests(), 1, "the hung token request was never made");

    let started = Instant::now();
    let image = within_for(
        Duration::from_secs(20),
        "fetch_image of another repository",
        cache.fetch_image(&format!("{}/fine/app:v1", fake.host()), None),
    )
    .await
    .expect("fetch_image of another repository of the same host");
    assert_eq!(image.digest().as_str(), fine.manifest_digest);
    assert!(
        started.elapsed() < Duration::from_millis(2000) && !hanging.is_finished(),
        "the other repository waited {:?} for the hung token request",
        started.elapsed()
    );

    let (result, took) = within_for(Duration::from_secs(20), "the hung fetch", hanging)
        .await
        .unwrap();
    let msg = timeout_message(result, "fetch_image with a hung token request");
    assert_mentions(
        &msg,
        &["token request to", "nothing within 3s (response_timeout)"],
    );
    assert_took(
        took,
        Duration::from_millis(2990),
        Duration::from_secs(6),
        "the hung token request",
    );
}

// ---------------------------------------------------------------------------
// Hostile registries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_lifetimes_from_the_realm_never_panic() {
    for expires_in in ["18446744073709551615", "-5", r#""abc""#] {
        let realm = Realm::start(&format!(r#"{{"token":"t","expires_in":{expires_in}}}"#));
        let built = small_image("unused.invalid", "life/app", noise_layer(15));
        let fake = serve(&built, "life/app");
        realm.challenge_from(&fake, "life/app");
        let cache = new_cache(CacheOptions::new());
        let image = within_for(
            Duration::from_secs(20),
            "fetch_image",
            cache.fetch_image(&format!("{}/life/app:v1", fake.host()), None),
        )
        .await
        .unwrap_or_else(|e| panic!("expires_in {expires_in}: {e}"));
        let dst = tempfile::tempdir().unwrap();
        within_for(
            Duration::from_secs(20),
            "extract_layer",
            cache.extract_layer(&image, 0, dst.path()),
        )
        .await
        .unwrap_or_else(|e| panic!("expires_in {expires_in}: extract_layer: {e}"));
        let tar = std::fs::read(
            dst.path()
                .join("sha256")
                .join(built.diff_ids[0].strip_prefix("sha256:").unwrap()),
        )
        .unwrap();
        assert_bytes(&tar, &built.layers[0].tar, "the layer tar");
        // Clamped (or defaulted to 60 s), the token is still good for
        // the whole pull: asked for once.
        assert_eq!(
            realm.requests(),
            1,
            "token requests with expires_in {expires_in}"
        );
        let bearer = fake
            .recorded_requests(None)
            .iter()
            .filter(|r| r.header("Authorization") == Some("Bearer t"))
            .count();
        assert!(bearer >= 3, "requests carrying the token: {bearer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_from_a_redirect_target_is_not_learned() {
    let realm = Realm::start(r#"{"token":"stolen"}"#);
    let built = small_image("unused.invalid", "redir", noise_layer(16));
    let fake = FakeRegistry::with_image("redir", "v1", &built.manifest, &built.config, vec![]);
    // The blob redirects to another origin, which asks for a bearer token.
    let elsewhere = FakeRegistry::start_on("127.0.0.2".parse().unwrap());
    let challenge = format!(r#"Bearer realm="{}",service="elsewhere""#, realm.url());
    elsewhere.route(
        "/storage/blob",
        Route {
            status: 401,
            content_type: "application/json".into(),
            headers: vec![("WWW-Authenticate".into(), challenge)],
            body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"who are you"}]}"#.to_vec(),
        },
    );
    let blob_path = format!("/v2/redir/blobs/{}", built.layer_digests[0]);
    fake.redirect(
        &blob_path,
        307,
        &format!("http://{}/storage/blob", elsewhere.host()),
    );
    let cache = new_cache(CacheOptions::new());
    let image = within_for(
        Duration::from_secs(20),
        "fetch_image",
        cache.fetch_image(&format!("{}/redir:v1", fake.host()), None),
    )
    .await
    .expect("fetch_image");
    let dst = tempfile::tempdir().unwrap();
    let result = within_for(
        Duration::from_secs(20),
        "extract_layer",
        cache.extract_layer(&image, 0, dst.path()),
    )
    .await;
    match result {
        Err(e) if e.kind() == ErrorKind::Unauthorized => {
            let msg = e.message().to_owned();
            assert_mentions(&msg, &["who are you"])
        }
        other => panic!("expected Error::Unauthorized, got {other:?}"),
    }
    assert_eq!(
        realm.requests(),
        0,
        "token requests to the redirect's realm"
    );
    assert_eq!(
        elsewhere.requests("/storage/blob"),
        1,
        "requests to the target"
    );
    for request in fake.recorded_requests(None) {
        assert_eq!(request.header("Authorization"), None, "{request:?}");
    }
    assert_empty_dir(dst.path(), "dst after a refused blob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_urls_are_followed_only_for_foreign_layers_and_safe_targets() {
    let elsewhere = FakeRegistry::start_on("127.0.0.2".parse().unwrap());
    let dst = tempfile::tempdir().unwrap();

    // A foreign layer the registry does not hold, whose URL is on another
    // loopback host: allowed, since the registry is on loopback too.
    let foreign = FixtureLayer::of_type(
        OCI_NONDIST_GZIP,
        tar_layer(&[("f.txt", b"foreign".as_slice())]),
    );
    let built = small_image(&elsewhere.host(), "urls", foreign.clone());
    elsewhere.blob(
        "urls",
        &built.layer_digests[0],
        built.layers[0].blob.clone(),
    );
    let fake = FakeRegistry::with_image("urls", "v1", &built.manifest, &built.config, vec![]);
    let cache = new_cache(CacheOptions::new());
    let image = within_for(
        Duration::from_secs(20),
        "fetch_image",
        cache.fetch_image(&format!("{}/urls:v1", fake.host()), None),
    )
    .await
    .expect("fetch_image");
    within_for(
        Duration::from_secs(20),
        "extract_layer",
        cache.extract_layer(&image, 0, dst.path()),
    )
    .await
    .expect("a foreign layer from its descriptor URL");
    let blob_path = format!("/v2/urls/blobs/{}", built.layer_digests[0]);
    assert_eq!(elsewhere.requests(&blob_path), 1, "requests to the URL");

    // The same layer with a plain-HTTP URL to a host nobody marked
    // insecure: refused before any connection.
    let remote = small_image("registry.invalid", "remote", foreign);
    let fake = FakeRegistry::with_image("remote", "v1", &remote.manifest, &remote.config, vec![]);
    let image = within_for(
        Duration::from_secs(20),
        "fetch_image",
        cache.fetch_image(&format!("{}/remote:v1", fake.host()), None),
    )
    .await
    .expect("fetch_image");
    let empty = tempfile::tempdir().unwrap();
    match within_for(
        Duration::from_secs(20),
        "extract_layer",
        cache.extract_layer(&image, 0, empty.path()),
    )
    .await
    {
        Err(e) if e.kind() == ErrorKind::InvalidContent => {
            let msg = e.message().to_owned();
            assert_mentions(
                &msg,
                &[
                    "http://registry.invalid/v2/remote/blobs/",
                    "refused: plain HTTP to a host not marked insecure",
                ],
            )
        }
        other => panic!("expected Error::InvalidContent, got {other:?}"),
    }
    assert_empty_dir(empty.path(), "dst after a refused URL");

    // A distributable layer with `urls`: only the registry is asked.
    let plain = small_image("unused.invalid", "dist", noise_layer(17));
    let mut manifest: serde_json::Value = serde_json::from_slice(&plain.manifest).unwrap();
    let url = format!(
        "http://{}/v2/dist/blobs/{}",
        elsewhere.host(),
        plain.layer_digests[0]
    );
    manifest["layers"][0]["urls"] = serde_json::json!([url]);
    let manifest = serde_json::to_vec(&manifest).unwrap();
    elsewhere.blob(
        "dist",
        &plain.layer_digests[0],
        plain.layers[0].blob.clone(),
    );
    let fake = FakeRegistry::with_image("dist", "v1", &manifest, &plain.config, vec![]);
    let image = within_for(
        Duration::from_secs(20),
        "fetch_image",
        cache.fetch_image(&format!("{}/dist:v1", fake.host()), None),
    )
    .await
    .expect("fetch_image");
    match within_for(
        Duration::from_secs(20),
        "extract_layer",
        cache.extract_layer(&image, 0, empty.path()),
    )
    .await
    {
        Err(ref e) if e.kind() == ErrorKind::NotFound => {}
        other => panic!("expected Error::NotFound, got {other:?}"),
    }
    let dist_path = format!("/v2/dist/blobs/{}", plain.layer_digests[0]);
    assert_eq!(
        elsewhere.requests(&dist_path),
        0,
        "requests to a distributable layer's URL"
    );
    assert_empty_dir(empty.path(), "dst after a missing layer");
}

#[test]
fn debug_output_never_shows_secrets() {
    let options = CacheOptions::new()
        .credentials("registry.example", "alice", "pw-Xy7-secret")
        .credentials("other.example", "bob", "<token>-idt-secret");
    let shown = format!("{options:?}");
    assert!(!shown.contains("secret"), "{shown}");
    assert!(
        shown.contains("alice") && shown.contains("<redacted>"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_does_not_answer_in_time_hands_over_to_the_registry() {
    let silent = SilentServer::start();
    let built = small_image("unused.invalid", "mirrored", noise_layer(18));
    let fake = serve(&built, "mirrored");
    let cache = new_cache(
        CacheOptions::new()
            .mirror(fake.host(), silent.host())
            .response_timeout(Duration::from_millis(300)),
    );
    let started = Instant::now();
    let image = within_for(
        Duration::from_secs(20),
        "fetch_image",
        cache.fetch_image(&format!("{}/mirrored:v1", fake.host()), None),
    )
    .await
    .expect("fetch_image past a silent mirror");
    assert_eq!(image.digest().as_str(), built.manifest_digest);
    assert_took(
        started.elapsed(),
        Duration::from_millis(290),
        Duration::from_secs(5),
        "a pull past a silent mirror",
    );
    assert!(silent.connections() >= 1, "the mirror was never tried");
}
