//! Mirrors against real registries: a pull-through cache (distribution in
//! proxy mode) in front of a real upstream, a dead first mirror, a mirror
//! that lacks the image, and the pull-through cache serving on its own once
//! the upstream is gone; and the same through containerd-style hosts.toml
//! files, with capabilities, a CA, skip_verify and override_path. Content
//! from mirrors is verified like any other.

use std::io::Read;
use std::time::Duration;

use harness::*;
use oci_cache::{CacheOptions, ErrorKind, ImageCache};

fn layers(seed: &str) -> Vec<FixtureLayer> {
    let body = format!("mirrored {seed}\n").repeat(4000);
    vec![
        FixtureLayer::gzip(tar_layer(&[("a.txt", body.as_bytes())])),
        FixtureLayer::zstd(tar_layer(&[("b.txt", seed.as_bytes())])),
    ]
}

/// Pulls `reference` into a fresh directory and returns the tars' bytes.
async fn pull(cache: &ImageCache, reference: &str) -> Vec<Vec<u8>> {
    let dst = tempfile::tempdir().unwrap();
    let work = async {
        let image = cache.fetch_image(reference, None).await?;
        cache.rootfs(&image, dst.path()).await
    };
    let files = tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("pull hung")
        .unwrap_or_else(|e| panic!("pulling {reference}: {e}"));
    files
        .into_iter()
        .map(|mut file| {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).unwrap();
            bytes
        })
        .collect()
}

/// GETs of `digest` a registry saw, whatever their query (mirrors get `?ns=`).
fn gets(registry: &Registry, digest: &str) -> usize {
    registry
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains(digest))
        .count()
}

fn tars(pushed: &PushedImage) -> Vec<Vec<u8>> {
    pushed.layers.iter().map(|l| l.tar.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_cache_serves_with_ns_and_keeps_serving_without_upstream() {
    let mut upstream = Registry::start();
    let pushed = push_image(
        &upstream.host(),
        "team/app",
        Some("v1"),
        layers("ns"),
        false,
        ("linux", "amd64", None),
    );
    let mirror = Registry::start_with(RegistrySetup::new().proxy_of(&upstream.host()));
    let reference = format!("{}/team/app:v1", upstream.host());
    let (upstream_host, mirror_host) = (upstream.host(), mirror.host());
    let options = || CacheOptions::new().mirror(upstream_host.clone(), mirror_host.clone());

    let cache = ImageCache::new(options()).unwrap();
    assert_eq!(pull(&cache, &reference).await, tars(&pushed));
    // Everything went through the mirror, which was told the upstream.
    let ns = format!("ns={}", upstream.host());
    let through_mirror = mirror.requests();
    for digest in &pushed.layer_digests {
        assert!(
            through_mirror
                .iter()
                .any(|r| r.contains(digest.as_str()) && r.contains(&ns)),
            "{digest} was not fetched from the mirror with {ns}: {through_mirror:?}"
        );
    }

    // The upstream saw only the mirror, never this library (which the
    // access log knows by its user agent).
    assert!(mirror
        .log()
        .contains(concat!("oci-cache/", env!("CARGO_PKG_VERSION"))));
    let direct: Vec<String> = upstream
        .settled_log()
        .lines()
        .filter(|l| l.contains("oci-cache/"))
        .map(str::to_owned)
        .collect();
    assert!(
        direct.is_empty(),
        "requests straight to the upstream: {direct:?}"
    );

    upstream.stop();
    let fresh = ImageCache::new(options()).unwrap();
    assert_eq!(
        pull(&fresh, &reference).await,
        tars(&pushed),
        "the mirror serves what it cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_empty_mirrors_hand_over_to_the_next() {
    let upstream = Registry::start();
    let pushed = push_image(
        &upstream.host(),
        "app",
        Some("v1"),
        layers("fallback"),
        false,
        ("linux", "amd64", None),
    );
    let dead = dead_host();
    let empty = Registry::start();
    let live = Registry::start_with(RegistrySetup::new().proxy_of(&upstream.host()));
    let reference = format!("{}/app:v1", upstream.host());

    // Dead, then live: the live mirror serves.
    let cache = ImageCache::new(
        CacheOptions::new()
            .mirror(upstream.host(), dead.clone())
            .mirror(upstream.host(), live.host())
            .attempts(1),
    )
    .unwrap();
    assert_eq!(pull(&cache, &reference).await, tars(&pushed));
    for digest in &pushed.layer_digests {
        assert_eq!(gets(&live, digest), 1, "{digest} came from the live mirror");
    }

    // A mirror without the image (404) hands over to the upstream itself.
    let before: Vec<usize> = pushed
        .layer_digests
        .iter()
        .map(|d| upstream.blob_gets(d))
        .collect();
    let cache = ImageCache::new(CacheOptions::new().mirror(upstream.host(), empty.host())).unwrap();
    assert_eq!(pull(&cache, &reference).await, tars(&pushed));
    for (digest, before) in pushed.layer_digests.iter().zip(before) {
        assert_eq!(
            upstream.blob_gets(digest),
            before + 1,
            "{digest} came from the upstream"
        );
        assert_eq!(
            empty.blob_gets(digest),
            0,
            "the empty mirror had no {digest}"
        );
    }
    assert!(
        empty
            .requests()
            .iter()
            .any(|r| r.contains("/v2/app/manifests/v1")),
        "the empty mirror was asked first"
    );
}

/// Writes `dir/<registry>/hosts.toml`.
fn hosts_toml(dir: &std::path::Path, registry: &str, text: &str) {
    std::fs::create_dir_all(dir.join(registry)).unwrap();
    std::fs::write(dir.join(registry).join("hosts.toml"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_toml_lists_mirrors_in_order_with_their_capabilities() {
    let upstream = Registry::start();
    let pushed = push_image(
        &upstream.host(),
        "app",
        Some("v1"),
        layers("hosts"),
        false,
        ("linux", "amd64", None),
    );
    let dead = dead_host();
    let pull_only = Registry::start_with(RegistrySetup::new().proxy_of(&upstream.host()));
    let certs_d = tempfile::tempdir().unwrap();
    hosts_toml(
        certs_d.path(),
        &upstream.host(),
        &format!(
            "server = \"http://{up}\"\n\n\
             [host.\"http://{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n\
             [host.\"http://{mirror}\"]\n  capabilities = [\"pull\"]\n",
            up = upstream.host(),
            mirror = pull_only.host()
        ),
    );
    let cache = ImageCache::new(CacheOptions::new().hosts_dir(certs_d.path()).attempts(1)).unwrap();
    let reference = format!("{}/app:v1", upstream.host());
    assert_eq!(pull(&cache, &reference).await, tars(&pushed));

    // The tag was resolved by the upstream (the pull-only mirror may not),
    // the blobs came from the mirror once the dead host had failed.
    let ours = |registry: &Registry| -> Vec<String> {
        let agent = concat!("oci-cache/", env!("CARGO_PKG_VERSION"));
        registry
            .settled_log()
            .lines()
            .filter(|l| l.contains(agent))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        ours(&upstream)
            .iter()
            .any(|l| l.contains("/v2/app/manifests/v1")),
        "{:?}",
        ours(&upstream)
    );
    assert!(
        !ours(&pull_only).iter().any(|l| l.contains("/manifests/v1")),
        "{:?}",
        ours(&pull_only)
    );
    for digest in &pushed.layer_digests {
        assert_eq!(
            gets(&pull_only, digest),
            1,
            "{digest} came from the pull-only mirror"
        );
        assert!(
            !ours(&upstream).iter().any(|l| l.contains(digest.as_str())),
            "{digest} skipped the upstream"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_toml_gives_a_tls_registry_its_ca_or_skips_verification() {
    let registry = Registry::start_with(RegistrySetup::new().tls());
    let pushed = push_image_to(
        &registry.endpoint(),
        "secure",
        Some("v1"),
        layers("tls"),
        false,
        ("linux", "amd64", None),
    );
    let name = registry.tls_host();
    let reference = format!("{name}/secure:v1");

    let without = ImageCache::new(CacheOptions::new().attempts(1)).unwrap();
    let refused = without.fetch_image(&reference, None).await;
    assert!(
        matches!(refused, Err(ref e) if e.kind() == ErrorKind::Network),
        "{refused:?}"
    );

    let with_ca = tempfile::tempdir().unwrap();
    let ca = registry.ca_pem();
    hosts_toml(
        with_ca.path(),
        &name,
        &format!("server = \"https://{name}\"\nca = \"{}\"\n", ca.display()),
    );
    let cache = ImageCache::new(CacheOptions::new().hosts_dir(with_ca.path())).unwrap();
    assert_eq!(pull(&cache, &reference).await, tars(&pushed));

    let skipping = tempfile::tempdir().unwrap();
    hosts_toml(
        skipping.path(),
        &name,
        &format!("server = \"https://{name}\"\nskip_verify = true\n"),
    );
    let cache = ImageCache::new(CacheOptions::new().hosts_dir(skipping.path())).unwrap();
    assert_eq!(pull(&cache, &reference).await, tars(&pushed));
}

/// A mirror whose registry API lives at `prefix` instead of `/v2`: it
/// serves each connection one request, rewriting `prefix` to `/v2` before
/// passing it to `upstream`, and answers 404 to any other path. Returns
/// its `host:port` and the paths it was asked for.
fn api_under_prefix(
    upstream: String,
    prefix: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            log.lock().unwrap().push(path.clone());
            let Some(rest) = path.strip_prefix(prefix) else {
                let _ = client.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let mut lines: Vec<String> = head
                .trim_end()
                .split("\r\n")
                .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                .map(str::to_owned)
                .collect();
            lines[0] = lines[0].replacen(&path, &format!("/v2{rest}"), 1);
            lines.push("Connection: close".into());
            let mut server = std::net::TcpStream::connect(&upstream).unwrap();
            server
                .write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes())
                .unwrap();
            let _ = std::io::copy(&mut server, &mut client);
        }
    });
    (host, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_toml_override_path_reaches_an_api_elsewhere_than_v2() {
    let upstream = Registry::start();
    let pushed = push_image(
        &upstream.host(),
        "app",
        Some("v1"),
        layers("override"),
        false,
        ("linux", "amd64", None),
    );
    let (mirror, asked) = api_under_prefix(upstream.host(), "/registry/api");
    let certs_d = tempfile::tempdir().unwrap();
    hosts_toml(
        certs_d.path(),
        "mirrored.example",
        &format!("[host.\"http://{mirror}/registry/api\"]\n  override_path = true\n"),
    );
    let cache = ImageCache::new(CacheOptions::new().hosts_dir(certs_d.path()).attempts(1)).unwrap();
    // The reference names a registry that does not exist: only the mirror
    // can have served it.
    assert_eq!(pull(&cache, "mirrored.example/app:v1").await, tars(&pushed));
    let asked = asked.lock().unwrap().clone();
    let mut expected = vec![format!(
        "/registry/api/app/manifests/v1?ns=mirrored.example"
    )];
    expected.push(format!(
        "/registry/api/app/blobs/{}?ns=mirrored.example",
        pushed.config_digest
    ));
    for digest in &pushed.layer_digests {
        expected.push(format!(
            "/registry/api/app/blobs/{digest}?ns=mirrored.example"
        ));
    }
    let mut sorted = asked.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "paths asked of the mirror: {asked:?}");
}
