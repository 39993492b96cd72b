//! Reaching registries that ask for something: htpasswd basic auth (explicit
//! credentials, an auth file, a credential helper), HTTPS with a private CA,
//! and registries that hang (deadlines and stall timeouts); plus progress
//! reports, and the same through the C API (`tests/c/call_options_test.c`).
//!
//! Credential lookups that read the process environment (`PATH` for
//! helpers, the default auth file locations) run in a child process of this
//! test binary with its own environment: changing the environment of a
//! multi-threaded test process is not safe.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::*;
use oci_cache::{
    CacheOptions, CallOptions, CancelToken, Error, ErrorKind, Image, ImageCache, Progress,
};

const PLATFORM: PlatformSpec<'static> = ("linux", "amd64", None);

/// The layers of [`push_small_image`]: gzip, then plain tar.
fn small_layers(repo: &str) -> Vec<FixtureLayer> {
    vec![
        FixtureLayer::gzip(distinct_tar(&format!("{repo}-a"))),
        FixtureLayer::plain(distinct_tar(&format!("{repo}-b"))),
    ]
}

/// A two-layer image (gzip, then plain tar) pushed to `endpoint` as `repo:v1`.
fn push_small_image(endpoint: &Endpoint, repo: &str) -> PushedImage {
    push_image_to(
        endpoint,
        repo,
        Some("v1"),
        small_layers(repo),
        false,
        PLATFORM,
    )
}

/// `dst` holds exactly `pushed`'s layer tars, byte for byte.
#[track_caller]
fn assert_layer_tars(dst: &Path, pushed: &PushedImage) {
    let expected = layer_files(dst, pushed.diff_ids.iter().map(String::as_str));
    assert_eq!(files_under(dst), expected, "files under {}", dst.display());
    for (diff_id, layer) in pushed.diff_ids.iter().zip(&pushed.layers) {
        let path = tar_path(dst, diff_id);
        let content =
            std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert_bytes(&content, &layer.tar, &path.display().to_string());
    }
}

/// Fetches `reference` and its rootfs into a fresh directory, and checks
/// both against `pushed`.
async fn assert_pulls(cache: &ImageCache, reference: &str, pushed: &PushedImage) -> Image {
    let image = within("fetch_image", cache.fetch_image(reference, None))
        .await
        .unwrap_or_else(|e| panic!("fetch_image {reference}: {e}"));
    assert_eq!(image.digest().to_string(), pushed.manifest_digest);
    assert_bytes(image.config(), &pushed.config, "config");
    let dst = tempfile::tempdir().unwrap();
    let files = within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .unwrap_or_else(|e| panic!("rootfs of {reference}: {e}"));
    assert_eq!(files.len(), pushed.layers.len());
    assert_layer_tars(dst.path(), pushed);
    image
}

/// Checks that `dst` holds no file at all right after a failed call; when
/// it does, says whether they go away later (cleanup after the call
/// returned) or stay.
#[track_caller]
fn assert_nothing_left(dst: &Path, what: &str) {
    let left = files_under(dst);
    if left.is_empty() {
        return;
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) && !files_under(dst).is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let later = files_under(dst);
    let fate = if later.is_empty() {
        format!("they were gone {:?} later", started.elapsed())
    } else {
        format!("3 s later still {later:?}")
    };
    panic!(
        "{what}: files left in {} when the call returned: {left:?}; {fate}",
        dst.display()
    );
}

/// Checks that an error's text (Display and Debug) gives away none of `secrets`,
/// in clear or in the base64 an `Authorization: Basic` header would carry.
#[track_caller]
fn assert_no_secret(err: &Error, secrets: &[&str]) {
    let texts = [err.to_string(), format!("{err:?}")];
    for secret in secrets {
        let encoded = [
            base64(format!("{TEST_USER}:{secret}").as_bytes()),
            base64(secret.as_bytes()),
        ];
        for text in &texts {
            assert!(
                !text.contains(secret),
                "the error gives away the password {secret:?}: {text}"
            );
            for code in &encoded {
                assert!(
                    !text.contains(code.as_str()),
                    "the error gives away base64 {code:?} of the password {secret:?}: {text}"
                );
            }
        }
    }
}

/// The message of an `Error::Unauthorized`, which must name `host`; panics
/// on success or any other error.
#[track_caller]
fn unauthorized<T>(result: Result<T, Error>, host: &str, what: &str) -> Error {
    match result {
        Err(err) if err.kind() == ErrorKind::Unauthorized => {
            assert!(
                err.to_string().contains(host),
                "{what}: the Unauthorized message does not name {host}: {err}"
            );
            err
        }
        Err(other) => panic!("{what}: expected Error::Unauthorized, got {other:?}"),
        Ok(_) => panic!("{what}: expected Error::Unauthorized, got success"),
    }
}

/// An auth file (`auth.json`) giving `user:password` for `host`.
fn write_auth_file(dir: &Path, name: &str, host: &str, user: &str, password: &str) -> PathBuf {
    let auth = base64(format!("{user}:{password}").as_bytes());
    write_auth_entry(dir, name, host, serde_json::json!({ "auth": auth }))
}

/// An auth file giving `host` an identity token, as `docker login` writes
/// it for a registry that hands out refresh tokens.
fn write_identity_token_file(dir: &Path, name: &str, host: &str, token: &str) -> PathBuf {
    let auth = base64(b"<token>:");
    let entry = serde_json::json!({ "auth": auth, "identitytoken": token });
    write_auth_entry(dir, name, host, entry)
}

/// An auth file `dir/name` whose only entry is `entry`, for `host`.
fn write_auth_entry(dir: &Path, name: &str, host: &str, entry: serde_json::Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&serde_json::json!({ "auths": { host: entry } })).unwrap(),
    )
    .unwrap();
    path
}

/// Checks that the store at `store` holds nothing but its empty layout
/// (after a failed call that had nothing to keep).
#[track_caller]
fn assert_store_empty(store: &Path, what: &str) {
    assert_eq!(
        files_under(store),
        [
            store.join(".oci-cache.lock"),
            store.join("index.json"),
            store.join("oci-layout"),
        ],
        "{what}: files in the store {}",
        store.display()
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"],
        serde_json::json!([]),
        "{what}: index.json records {index}"
    );
}

// ---------------------------------------------------------------------------
// Child processes with their own environment

/// Set in a child process of this binary: which test body to run.
const CHILD_MARKER: &str = "OCI_CACHE_TEST_CHILD";

/// What a child pull should end in.
const EXPECT_OK: &str = "ok";
const EXPECT_UNAUTHORIZED: &str = "unauthorized";
const EXPECT_NETWORK: &str = "network";

/// The proxy settings a child must not inherit from the parent.
const PROXY_VARIABLES: [&str; 8] = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
];

/// Runs test `name` of this binary alone in a child process whose
/// environment has none of the credential locations and proxy settings of
/// the parent (HOME is an empty directory) plus `env`; the child sees
/// [`CHILD_MARKER`] and so runs [`child_pull`]. Panics unless that test ran
/// and passed.
fn run_child(name: &str, env: &[(&str, String)]) -> String {
    let home = tempfile::Builder::new()
        .prefix("oci-cache-child-home-")
        .tempdir()
        .unwrap();
    let mut command = Command::new(std::env::current_exe().expect("current_exe"));
    command
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_MARKER, name)
        .env("HOME", home.path())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("OCI_TEST_AUTH_FILE")
        .env_remove("OCI_TEST_CA")
        .stdin(Stdio::null());
    for key in PROXY_VARIABLES {
        command.env_remove(key);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("running a child test process");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let described = format!(
        "child {name} with {env:?}: {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        output.status
    );
    assert!(
        output.status.success()
            && stdout.contains(&format!("test {name} ... ok"))
            && stdout.contains("test result: ok. 1 passed"),
        "{described}"
    );
    described
}

/// The child's side: pulls `OCI_TEST_REFERENCE` with a cache (and a fresh
/// store) that reads `OCI_TEST_AUTH_FILE` if set (else the default
/// locations) and trusts the CA `OCI_TEST_CA` if set, and checks the
/// outcome against `OCI_TEST_EXPECT` and the image's layer tar digests in
/// `OCI_TEST_DIFF_IDS` (comma-separated). A failed pull must leave the
/// store empty.
async fn child_pull() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("child needs {name}"));
    let reference = var("OCI_TEST_REFERENCE");
    let host = reference.split('/').next().unwrap().to_owned();
    let store = tempfile::tempdir().unwrap();
    let mut options = CacheOptions::new().store(store.path());
    if let Ok(path) = std::env::var("OCI_TEST_AUTH_FILE") {
        options = options.auth_file(path);
    }
    if let Ok(path) = std::env::var("OCI_TEST_CA") {
        options = options.ca_certificate(path);
    }
    let cache = new_cache(options);
    let fetched = within("fetch_image", cache.fetch_image(&reference, None)).await;
    match var("OCI_TEST_EXPECT").as_str() {
        EXPECT_OK => {
            let image = fetched.unwrap_or_else(|e| panic!("fetch_image {reference}: {e}"));
            let dst = tempfile::tempdir().unwrap();
            within("rootfs", cache.rootfs(&image, dst.path()))
                .await
                .unwrap_or_else(|e| panic!("rootfs of {reference}: {e}"));
            let diff_ids = var("OCI_TEST_DIFF_IDS");
            let expected = layer_files(dst.path(), diff_ids.split(','));
            assert_eq!(files_under(dst.path()), expected);
            let tars = expected
                .iter()
                .filter(|p| !p.starts_with(dst.path().join("tar-index")));
            for path in tars {
                let name = path.file_name().unwrap().to_string_lossy();
                assert_eq!(
                    sha256(&std::fs::read(path).unwrap()),
                    format!("sha256:{name}")
                );
            }
        }
        EXPECT_UNAUTHORIZED => {
            let err = unauthorized(fetched, &host, "child fetch_image");
            assert_no_secret(&err, &[TEST_PASSWORD]);
            assert_store_empty(store.path(), "child fetch_image");
        }
        EXPECT_NETWORK => {
            match fetched {
                Err(e) if e.kind() == ErrorKind::Network => {
                    let msg = e.message().to_owned();
                    assert!(!msg.trim().is_empty(), "an empty Network error")
                }
                Err(other) => panic!("expected Error::Network, got {other:?}"),
                Ok(_) => panic!("expected Error::Network, got success"),
            }
            assert_store_empty(store.path(), "child fetch_image");
        }
        other => panic!("unknown OCI_TEST_EXPECT {other:?}"),
    }
}

fn in_child(name: &str) -> bool {
    std::env::var(CHILD_MARKER).is_ok_and(|marker| marker == name)
}

fn child_env(
    reference: &str,
    pushed: &PushedImage,
    expect: &str,
    auth_file: Option<&Path>,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("OCI_TEST_REFERENCE", reference.to_owned()),
        ("OCI_TEST_EXPECT", expect.to_owned()),
        ("OCI_TEST_DIFF_IDS", pushed.diff_ids.join(",")),
    ];
    if let Some(path) = auth_file {
        env.push(("OCI_TEST_AUTH_FILE", path.display().to_string()));
    }
    env
}

// ---------------------------------------------------------------------------
// htpasswd basic auth

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_refuses_anonymous_pulls() {
    let registry = Registry::start_with(RegistrySetup::new().htpasswd());
    let host = registry.host();
    push_small_image(&registry.endpoint(), "locked");
    // The harness really needs the credentials: without them, 401.
    let anonymous = http(&host, "GET", "/v2/locked/manifests/v1", &[], &[]).unwrap();
    assert_eq!(anonymous.status, 401);

    let cache = new_cache(CacheOptions::new());
    let reference = format!("{host}/locked:v1");
    let err = unauthorized(
        within("fetch_image", cache.fetch_image(&reference, None)).await,
        &host,
        "fetch_image without credentials",
    );
    assert_no_secret(&err, &[TEST_PASSWORD]);
    let err = unauthorized(
        within("resolve", cache.resolve(&reference)).await,
        &host,
        "resolve without credentials",
    );
    assert_no_secret(&err, &[TEST_PASSWORD]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_credentials_open_an_htpasswd_registry() {
    let registry = Registry::start_with(RegistrySetup::new().htpasswd());
    let host = registry.host();
    let pushed = push_small_image(&registry.endpoint(), "locked");
    let cache = new_cache(CacheOptions::new().credentials(host.clone(), TEST_USER, TEST_PASSWORD));
    let reference = format!("{host}/locked:v1");
    let image = assert_pulls(&cache, &reference, &pushed).await;
    let resolved = within("resolve", cache.resolve(&reference)).await.unwrap();
    assert_eq!(resolved.to_string(), pushed.manifest_digest);
    // Streaming a layer goes through the same credentials.
    let mut reader = within("fetch_layer", cache.fetch_layer(&image, 1))
        .await
        .unwrap_or_else(|e| panic!("fetch_layer: {e}"));
    let mut streamed = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut streamed)
        .await
        .unwrap();
    assert_bytes(&streamed, &pushed.layers[1].tar, "streamed layer 1");
    for digest in &pushed.layer_digests {
        assert!(
            registry.blob_gets(digest) >= 1,
            "blob {digest} never fetched"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_unauthorized_and_not_echoed() {
    let registry = Registry::start_with(RegistrySetup::new().htpasswd());
    let host = registry.host();
    push_small_image(&registry.endpoint(), "locked");
    let wrong = "Wr0ng-pass-7q2x";
    let cache = new_cache(CacheOptions::new().credentials(host.clone(), TEST_USER, wrong));
    let reference = format!("{host}/locked:v1");
    let err = unauthorized(
        within("fetch_image", cache.fetch_image(&reference, None)).await,
        &host,
        "fetch_image with a wrong password",
    );
    assert_no_secret(&err, &[wrong, TEST_PASSWORD]);
    // The registry did see (and refuse) the credentials.
    assert!(
        registry
            .log()
            .contains("error authenticating user \\\"tester\\\""),
        "the registry never saw the wrong credentials; log:\n{}",
        registry.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_for_another_host_are_not_sent() {
    // Both registries know tester's password; the cache was given it for
    // `first` only, so `second` must get nothing.
    let first = Registry::start_with(RegistrySetup::new().htpasswd());
    let second = Registry::start_with(RegistrySetup::new().htpasswd());
    let first_pushed = push_small_image(&first.endpoint(), "locked");
    push_small_image(&second.endpoint(), "locked");
    let cache = new_cache(CacheOptions::new().credentials(first.host(), TEST_USER, TEST_PASSWORD));
    assert_pulls(
        &cache,
        &format!("{}/locked:v1", first.host()),
        &first_pushed,
    )
    .await;
    let host = second.host();
    let err = unauthorized(
        within(
            "fetch_image",
            cache.fetch_image(&format!("{host}/locked:v1"), None),
        )
        .await,
        &host,
        "fetch_image from the host without credentials",
    );
    assert_no_secret(&err, &[TEST_PASSWORD]);
    assert!(
        !second.settled_log().contains("error authenticating user"),
        "credentials were presented to {host}; log:\n{}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_file_supplies_credentials() {
    let registry = Registry::start_with(RegistrySetup::new().htpasswd());
    let host = registry.host();
    let pushed = push_small_image(&registry.endpoint(), "locked");
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{host}/locked:v1");

    let good = write_auth_file(dir.path(), "good.json", &host, TEST_USER, TEST_PASSWORD);
    let cache = new_cache(CacheOptions::new().auth_file(&good));
    assert_pulls(&cache, &reference, &pushed).await;

    // The same file with the wrong password, and one for another host only.
    let wrong = "file-Wr0ng-9z";
    let bad = write_auth_file(dir.path(), "bad.json", &host, TEST_USER, wrong);
    let cache = new_cache(CacheOptions::new().auth_file(&bad));
    let err = unauthorized(
        within("fetch_image", cache.fetch_image(&reference, None)).await,
        &host,
        "fetch_image with a wrong password in the auth file",
    );
    assert_no_secret(&err, &[wrong, TEST_PASSWORD]);
    let elsewhere = write_auth_file(
        dir.path(),
        "elsewhere.json",
        "127.0.0.1:1",
        TEST_USER,
        TEST_PASSWORD,
    );
    let cache = new_cache(CacheOptions::new().auth_file(&elsewhere));
    unauthorized(
        within("fetch_image", cache.fetch_image(&reference, None)).await,
        &host,
        "fetch_image with an auth file for another host",
    );

    // Explicit credentials override the auth file.
    let cache = new_cache(CacheOptions::new().auth_file(&bad).credentials(
        host.clone(),
        TEST_USER,
        TEST_PASSWORD,
    ));
    assert_pulls(&cache, &reference, &pushed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_file_locations_from_the_environment() {
    if in_child("auth_file_locations_from_the_environment") {
        return child_pull().await;
    }
    let name = "auth_file_locations_from_the_environment";
    let registry = Registry::start_with(RegistrySetup::new().htpasswd());
    let host = registry.host();
    let pushed = push_small_image(&registry.endpoint(), "locked");
    let reference = format!("{host}/locked:v1");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = |file: &str| write_auth_file(d, file, &host, TEST_USER, TEST_PASSWORD);
    let env_with = |key: &'static str, value: &Path, expect: &str| {
        let mut env = child_env(&reference, &pushed, expect, None);
        env.push((key, value.display().to_string()));
        env
    };

    // Nothing anywhere: anonymous, refused.
    run_child(
        name,
        &child_env(&reference, &pushed, EXPECT_UNAUTHORIZED, None),
    );
    // Each default location on its own.
    let registry_auth_file = good("registry-auth-file.json");
    run_child(
        name,
        &env_with("REGISTRY_AUTH_FILE", &registry_auth_file, EXPECT_OK),
    );
    good("xdg/containers/auth.json");
    run_child(
        name,
        &env_with("XDG_RUNTIME_DIR", &d.join("xdg"), EXPECT_OK),
    );
    good("docker-config/config.json");
    run_child(
        name,
        &env_with("DOCKER_CONFIG", &d.join("docker-config"), EXPECT_OK),
    );
    good("home/.docker/config.json");
    run_child(name, &env_with("HOME", &d.join("home"), EXPECT_OK));

    // With an auth file set, it is the only file read.
    let empty = d.join("empty.json");
    std::fs::write(&empty, br#"{"auths": {}}"#).unwrap();
    let mut env = child_env(&reference, &pushed, EXPECT_UNAUTHORIZED, Some(&empty));
    env.extend([
        (
            "REGISTRY_AUTH_FILE",
            registry_auth_file.display().to_string(),
        ),
        ("XDG_RUNTIME_DIR", d.join("xdg").display().to_string()),
        (
            "DOCKER_CONFIG",
            d.join("docker-config").display().to_string(),
        ),
        ("HOME", d.join("home").display().to_string()),
    ]);
    run_child(name, &env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_helper_supplies_credentials() {
    let name = "credential_helper_supplies_credentials";
    if in_child(name) {
        return child_pull().await;
    }
    let registry = Registry::start_with(RegistrySetup::new().htpasswd());
    let host = registry.host();
    let pushed = push_small_image(&registry.endpoint(), "locked");
    let reference = format!("{host}/locked:v1");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = dir.path().join("helper-calls.log");
    // A docker credential helper: `get` reads the server from stdin and
    // prints its credentials; every call is logged as `ARGS|STDIN`.
    let helper = |name: &str, secret: &str| {
        let path = bin.join(format!("docker-credential-{name}"));
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n\
                 server=$(cat)\n\
                 echo \"$*|$server\" >> '{calls}'\n\
                 [ \"$1\" = get ] || exit 1\n\
                 if [ '{secret}' = none ]; then echo 'credentials not found in native keychain'; exit 1; fi\n\
                 printf '{{\"ServerURL\":\"%s\",\"Username\":\"{TEST_USER}\",\"Secret\":\"{secret}\"}}\\n' \"$server\"\n",
                calls = calls.display()
            ),
        )
        .unwrap();
        let mut permissions = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
        std::fs::set_permissions(&path, permissions).unwrap();
    };
    helper("octest", TEST_PASSWORD);
    helper("ocnone", "none");
    let helper_file = |file: &str, helper: &str| {
        let path = dir.path().join(file);
        std::fs::write(
            &path,
            serde_json::to_vec(&serde_json::json!({"credHelpers": {&host: helper}})).unwrap(),
        )
        .unwrap();
        path
    };
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );

    let mut env = child_env(
        &reference,
        &pushed,
        EXPECT_OK,
        Some(&helper_file("octest.json", "octest")),
    );
    env.push(("PATH", path.clone()));
    run_child(name, &env);
    let log = std::fs::read_to_string(&calls).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| *l == format!("get|{host}")),
        "the helper should be called as `get` with {host} on stdin; calls:\n{log}"
    );

    // A helper that has nothing for the host: anonymous, so 401.
    std::fs::remove_file(&calls).unwrap();
    let mut env = child_env(
        &reference,
        &pushed,
        EXPECT_UNAUTHORIZED,
        Some(&helper_file("ocnone.json", "ocnone")),
    );
    env.push(("PATH", path));
    run_child(name, &env);
    let log = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        log.lines().any(|l| l == format!("get|{host}")),
        "the helper that has nothing was never asked; calls:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// HTTPS with a private CA

/// Whether `err` is the `Error::Network` of a refused certificate for `host`.
#[track_caller]
fn assert_certificate_refused<T>(result: Result<T, Error>, host: &str, what: &str) {
    match result {
        Err(e) if e.kind() == ErrorKind::Network => {
            let msg = e.message().to_owned();
            let lower = msg.to_lowercase();
            assert!(
                lower.contains("certificate") || lower.contains("tls") || lower.contains("ssl"),
                "{what}: the Network error does not mention the certificate or TLS: {msg}"
            );
            assert!(
                msg.contains(host),
                "{what}: the error does not name {host}: {msg}"
            );
        }
        Err(other) => panic!("{what}: expected Error::Network about TLS, got {other:?}"),
        Ok(_) => panic!("{what}: expected Error::Network about TLS, got success"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_needs_its_ca() {
    let registry = Registry::start_with(RegistrySetup::new().tls());
    let pushed = push_small_image(&registry.endpoint(), "secure");
    let host = registry.tls_host();
    let reference = format!("{host}/secure:v1");
    let requests_after_push: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| !r.contains("log-sentinel"))
        .collect();

    let cache = new_cache(CacheOptions::new());
    assert_certificate_refused(
        within("fetch_image", cache.fetch_image(&reference, None)).await,
        &host,
        "no CA",
    );
    // A CA, but not the one that signed the registry's certificate.
    let other = tempfile::tempdir().unwrap();
    let stranger = TlsCert::generate(other.path(), &[format!("DNS:{}", host_name(&host))]);
    let cache = new_cache(CacheOptions::new().ca_certificate(&stranger.cert));
    assert_certificate_refused(
        within("fetch_image", cache.fetch_image(&reference, None)).await,
        &host,
        "another CA",
    );
    // The right CA, but for other names of the same server.
    let cache = new_cache(
        CacheOptions::new()
            .host_ca_certificate(registry.host(), registry.ca_pem())
            .host_ca_certificate(host_name(&host), registry.ca_pem())
            .host_ca_certificate(format!("localhost:{}", port(&host)), registry.ca_pem()),
    );
    assert_certificate_refused(
        within("fetch_image", cache.fetch_image(&reference, None)).await,
        &host,
        "the CA given for other hosts",
    );
    let requests: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| !r.contains("log-sentinel"))
        .collect();
    assert_eq!(
        requests, requests_after_push,
        "clients that refused the certificate still made requests"
    );

    let cache = new_cache(CacheOptions::new().ca_certificate(registry.ca_pem()));
    assert_pulls(&cache, &reference, &pushed).await;
    let cache = new_cache(CacheOptions::new().host_ca_certificate(host.clone(), registry.ca_pem()));
    assert_pulls(&cache, &reference, &pushed).await;
    // Both kinds together, and a CA for another host beside the right one.
    let cache = new_cache(
        CacheOptions::new()
            .ca_certificate(&stranger.cert)
            .host_ca_certificate("127.0.0.1:1", &stranger.cert)
            .host_ca_certificate(host.clone(), registry.ca_pem()),
    );
    assert_pulls(&cache, &reference, &pushed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_htpasswd() {
    let registry = Registry::start_with(RegistrySetup::new().tls().htpasswd());
    let pushed = push_small_image(&registry.endpoint(), "both");
    let host = registry.tls_host();
    let reference = format!("{host}/both:v1");
    let cache = new_cache(CacheOptions::new().ca_certificate(registry.ca_pem()));
    let err = unauthorized(
        within("fetch_image", cache.fetch_image(&reference, None)).await,
        &host,
        "TLS registry without credentials",
    );
    assert_no_secret(&err, &[TEST_PASSWORD]);
    let cache = new_cache(
        CacheOptions::new()
            .ca_certificate(registry.ca_pem())
            .credentials(host.clone(), TEST_USER, TEST_PASSWORD),
    );
    assert_pulls(&cache, &reference, &pushed).await;
}

/// The system's CA roots are read when the first https host is contacted,
/// once per process: never for a plain-HTTP pull or a store hit. Observed
/// through `SSL_CERT_FILE` naming a FIFO in a child process: reading it
/// blocks until a writer opens it, and a non-blocking open for writing
/// succeeds only while someone has it open for reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_roots_are_read_for_the_first_https_host_only() {
    let name = "system_roots_are_read_for_the_first_https_host_only";
    if in_child(name) {
        return child_reads_roots_once().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("roots.pem");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("running mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    run_child(name, &[("SSL_CERT_FILE", fifo.display().to_string())]);
    assert_eq!(files_under(dir.path()), [fifo], "files beside the FIFO");
}

/// The child's side of [`system_roots_are_read_for_the_first_https_host_only`].
async fn child_reads_roots_once() {
    let fifo = PathBuf::from(std::env::var("SSL_CERT_FILE").unwrap());
    let _unblock = Unblock(fifo.clone());
    let plain = Registry::start();
    let plain_pushed = push_small_image(&plain.endpoint(), "plain");
    let plain_reference = format!("{}/plain:v1", plain.host());
    let secure = Registry::start_with(RegistrySetup::new().tls());
    let secure_pushed = push_small_image(&secure.endpoint(), "secure");
    let secure_reference = format!("{}/secure:v1", secure.tls_host());

    // A pull from a plain-HTTP registry, then a resolve the store answers
    // from a new cache: had either read the roots, it would hang on the
    // FIFO (within() bounds it) or be blocked on it now.
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(CacheOptions::new().store(store.path()));
    assert_pulls(&cache, &plain_reference, &plain_pushed).await;
    assert_no_reader(&fifo, "after a plain-HTTP pull");
    let cache = new_cache(CacheOptions::new().store(store.path()));
    let digest = within("resolve", cache.resolve(&plain_reference))
        .await
        .unwrap_or_else(|e| panic!("resolve {plain_reference}: {e}"));
    assert_eq!(digest.to_string(), plain_pushed.manifest_digest);
    assert_no_reader(&fifo, "after a resolve from the store");

    // The first https host reads them: the pull waits for a writer, which
    // then gives it no root at all, so the host's own CA is what verifies.
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            let started = Instant::now();
            loop {
                match open_for_writing(&fifo) {
                    Ok(file) => return drop(file),
                    Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
                    Err(e) => panic!("opening {} for writing: {e}", fifo.display()),
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "nobody read the roots within 30 s of the first https pull"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let ca = (secure.tls_host(), secure.ca_pem());
    let cache = new_cache(CacheOptions::new().host_ca_certificate(ca.0.clone(), &ca.1));
    assert_pulls(&cache, &secure_reference, &secure_pushed).await;
    writer.join().expect("the FIFO's writer");

    // Read once per process: another cache's https host does not open the
    // FIFO again (it would wait for a writer that never comes).
    let cache = new_cache(CacheOptions::new().host_ca_certificate(ca.0, &ca.1));
    assert_pulls(&cache, &secure_reference, &secure_pushed).await;
    assert_no_reader(&fifo, "after a second https pull");
}

/// Ends, when dropped (a failed assertion included), any wait of a reader
/// of the FIFO, which would otherwise keep the child from exiting.
struct Unblock(PathBuf);

impl Drop for Unblock {
    fn drop(&mut self) {
        let _ = open_for_writing(&self.0);
    }
}

/// `fifo` opened for writing without waiting for a reader (ENXIO if none).
fn open_for_writing(fifo: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
}

#[track_caller]
fn assert_no_reader(fifo: &Path, when: &str) {
    match open_for_writing(fifo) {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
        other => panic!("{when}: someone reads the system roots: {other:?}"),
    }
}

fn host_name(host: &str) -> String {
    host.rsplit_once(':').unwrap().0.to_owned()
}

fn port(host: &str) -> String {
    host.rsplit_once(':').unwrap().1.to_owned()
}

// ---------------------------------------------------------------------------
// Deadlines and stall timeouts

/// A single-layer image of about 1 MiB, served by a fake registry whose
/// layer blob stalls after its first 64 KiB.
fn stalling_image(repo: &str) -> (FakeRegistry, PushedImage) {
    let built = build_image(
        "unused.invalid",
        repo,
        vec![FixtureLayer::plain(tar_layer(&[(
            "big.bin",
            noise(7, 1 << 20).as_slice(),
        )]))],
        false,
        PLATFORM,
    );
    let fake = FakeRegistry::with_image(repo, "v1", &built.manifest, &built.config, vec![]);
    fake.stalling_blob(
        repo,
        &built.layer_digests[0],
        built.layers[0].blob.clone(),
        64 << 10,
    );
    (fake, built)
}

#[track_caller]
fn assert_timeout<T>(result: Result<T, Error>, what: &str) -> String {
    match result {
        Err(e) if e.kind() == ErrorKind::Timeout => e.message().to_owned(),
        Err(other) => panic!("{what}: expected Error::Timeout, got {other:?}"),
        Ok(_) => panic!("{what}: expected Error::Timeout, got success"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_ends_a_call_to_a_silent_server() {
    let silent = SilentServer::start();
    let cache = new_cache(CacheOptions::new());
    let scoped = cache.with_call_options(CallOptions::new().deadline(Duration::from_millis(300)));
    let reference = format!("{}/hangs:v1", silent.host());
    let mut messages = Vec::new();
    for call in ["fetch_image", "resolve"] {
        let started = Instant::now();
        let result = match call {
            "fetch_image" => within(call, scoped.fetch_image(&reference, None))
                .await
                .map(|_| ()),
            _ => within(call, scoped.resolve(&reference)).await.map(|_| ()),
        };
        let took = started.elapsed();
        messages.push((call, assert_timeout(result, call)));
        assert!(
            took >= Duration::from_millis(290) && took <= Duration::from_secs(5),
            "{call}: a 300 ms deadline ended the call after {took:?}"
        );
    }
    assert!(silent.connections() >= 1, "the library never connected");
    // Like every error, it names what it was about.
    for (call, msg) in messages {
        assert!(
            msg.contains(&silent.host()),
            "{call}: the Timeout message does not name the registry {}: {msg}",
            silent.host()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_timeout_ends_a_call_to_a_silent_server() {
    let silent = SilentServer::start();
    let cache = new_cache(CacheOptions::new().attempts(1));
    let scoped =
        cache.with_call_options(CallOptions::new().stall_timeout(Duration::from_millis(300)));
    let started = Instant::now();
    let result = within(
        "fetch_image",
        scoped.fetch_image(&format!("{}/hangs:v1", silent.host()), None),
    )
    .await;
    let took = started.elapsed();
    assert_timeout(result, "fetch_image");
    assert!(
        took >= Duration::from_millis(290) && took <= Duration::from_secs(5),
        "a 300 ms stall timeout (one attempt) ended the call after {took:?}"
    );
    assert!(silent.connections() >= 1, "the library never connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_timeout_mid_blob_leaves_nothing() {
    let (fake, built) = stalling_image("stalls");
    let blob_path = format!("/v2/stalls/blobs/{}", built.layer_digests[0]);
    let cache = new_cache(CacheOptions::new());
    let scoped =
        cache.with_call_options(CallOptions::new().stall_timeout(Duration::from_millis(300)));
    // Reading the manifest and config is not slowed down.
    let image = within(
        "fetch_image",
        scoped.fetch_image(&format!("{}/stalls:v1", fake.host()), None),
    )
    .await
    .unwrap_or_else(|e| panic!("fetch_image: {e}"));
    let dst = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = within("rootfs", scoped.rootfs(&image, dst.path())).await;
    let took = started.elapsed();
    let msg = assert_timeout(result, "rootfs");
    assert!(
        took >= Duration::from_millis(290) && took <= Duration::from_secs(10),
        "rootfs with a 300 ms stall timeout ended after {took:?}: {msg}"
    );
    assert!(
        fake.requests(&blob_path) >= 1,
        "the blob was never asked for"
    );
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());

    let started = Instant::now();
    let result = within("extract_layer", scoped.extract_layer(&image, 0, dst.path())).await;
    assert_timeout(result, "extract_layer");
    assert!(started.elapsed() <= Duration::from_secs(10));
    assert_nothing_left(dst.path(), "extract_layer after a stall timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_mid_blob_leaves_nothing() {
    let (fake, _built) = stalling_image("stalls");
    let cache = new_cache(CacheOptions::new());
    let image = within(
        "fetch_image",
        cache.fetch_image(&format!("{}/stalls:v1", fake.host()), None),
    )
    .await
    .unwrap_or_else(|e| panic!("fetch_image: {e}"));
    let scoped = cache.with_call_options(CallOptions::new().deadline(Duration::from_millis(500)));
    let dst = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let result = within("rootfs", scoped.rootfs(&image, dst.path())).await;
    let took = started.elapsed();
    assert_timeout(result, "rootfs");
    assert!(
        took >= Duration::from_millis(490) && took <= Duration::from_secs(5),
        "a 500 ms deadline ended rootfs after {took:?}"
    );
    assert_nothing_left(dst.path(), "rootfs after its deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_token_mid_blob_leaves_nothing_in_dst_or_the_store() {
    let (fake, built) = stalling_image("stalls");
    let blob_path = format!("/v2/stalls/blobs/{}", built.layer_digests[0]);
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(CacheOptions::new().store(store.path()));
    let reference = format!("{}/stalls:v1", fake.host());
    let image = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .unwrap_or_else(|e| panic!("fetch_image: {e}"));
    let stored = files_under(store.path());
    let token = CancelToken::new();
    let scoped = cache.with_call_options(CallOptions::new().cancel(token.clone()));
    let dst = tempfile::tempdir().unwrap();

    // Canceled on an event, not after a guessed time: once the layer's
    // temp file exists, the pull is mid-blob (the blob stalls after 64 KiB).
    let watched = dst.path().to_owned();
    let trigger = token.clone();
    let canceler = tokio::spawn(async move {
        while files_under(&watched).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        trigger.cancel();
    });
    let result = within("rootfs", scoped.rootfs(&image, dst.path())).await;
    within("the canceler", canceler).await.unwrap();

    let msg = match result {
        Err(e) if e.kind() == ErrorKind::Canceled => e.message().to_owned(),
        other => panic!("rootfs canceled mid-blob: {other:?}, want Error::Canceled"),
    };
    assert_eq!(
        msg,
        format!("layers of {reference}: its cancel token was triggered")
    );
    assert!(token.is_canceled());
    assert_eq!(fake.requests(&blob_path), 1, "the blob was asked for once");
    // Nothing is left the moment the call returns: no temp file, no tar.
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
    // The store holds what fetch_image recorded and nothing more: no temp
    // file and no copy of the blob.
    assert_eq!(files_under(store.path()), stored);

    // The token stays canceled: the next call ends before it starts, and
    // without the token the same cache pulls the image.
    let again = within("extract_layer", scoped.extract_layer(&image, 0, dst.path())).await;
    assert!(
        matches!(&again, Err(e) if e.kind() == ErrorKind::Canceled && e.message().contains("extract_layer 0 of")),
        "{again:?}"
    );
    assert_eq!(
        fake.requests(&blob_path),
        1,
        "a canceled call fetched again"
    );
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_token_triggered_before_the_call_ends_it_at_once() {
    let silent = SilentServer::start();
    let registry = Registry::start();
    let pushed = push_small_image(&registry.endpoint(), "early");
    let reference = format!("{}/early:v1", registry.host());
    let cache = new_cache(CacheOptions::new());
    let image = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .unwrap_or_else(|e| panic!("fetch_image: {e}"));

    let token = CancelToken::new();
    // Clones share the token: canceling one cancels what the other was given to.
    token.clone().cancel();
    assert!(token.is_canceled());
    let scoped = cache.with_call_options(CallOptions::new().cancel(token));
    let hung = format!("{}/hangs:v1", silent.host());
    let dst = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let results = [
        (
            format!("fetch_image {hung}"),
            within("fetch_image", scoped.fetch_image(&hung, None))
                .await
                .map(drop),
        ),
        (
            format!("resolve {hung}"),
            within("resolve", scoped.resolve(&hung)).await.map(drop),
        ),
        (
            format!("layers of {reference}"),
            within("rootfs", scoped.rootfs(&image, dst.path()))
                .await
                .map(drop),
        ),
        (
            format!("fetch_layer 1 of {reference}"),
            within("fetch_layer", scoped.fetch_layer(&image, 1))
                .await
                .map(drop),
        ),
    ];
    let took = started.elapsed();
    for (what, result) in results {
        match result {
            Err(e) if e.kind() == ErrorKind::Canceled => assert_eq!(
                e.message(),
                format!("{what}: its cancel token was triggered")
            ),
            other => panic!("{what}: {other:?}, want Error::Canceled"),
        }
    }
    assert!(
        took <= Duration::from_secs(5),
        "four pre-canceled calls took {took:?}"
    );
    assert_eq!(
        silent.connections(),
        0,
        "a canceled call reached the network"
    );
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
    // The same view without the token still works.
    assert_pulls(&cache, &reference, &pushed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_but_steady_download_is_not_a_stall() {
    // 24 KiB at 2 KiB per 100 ms: about 1.3 s in all, well over the 500 ms
    // stall timeout, yet never 500 ms without a byte.
    let built = build_image(
        "unused.invalid",
        "slow",
        vec![FixtureLayer::plain(tar_layer(&[(
            "slow.bin",
            noise(11, 23 << 10).as_slice(),
        )]))],
        false,
        PLATFORM,
    );
    let fake = FakeRegistry::with_image(
        "slow",
        "v1",
        &built.manifest,
        &built.config,
        vec![(built.layer_digests[0].clone(), built.layers[0].blob.clone())],
    );
    fake.pace(
        &format!("/v2/slow/blobs/{}", built.layer_digests[0]),
        Pace::Trickle {
            chunk: 2 << 10,
            interval: Duration::from_millis(100),
        },
    );
    let cache = new_cache(CacheOptions::new());
    let scoped = cache.with_call_options(
        CallOptions::new()
            .stall_timeout(Duration::from_millis(500))
            .deadline(Duration::from_secs(20)),
    );
    let reference = format!("{}/slow:v1", fake.host());
    let started = Instant::now();
    assert_pulls(&scoped, &reference, &built).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "the trickled blob arrived too fast ({took:?}) to show anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generous_limits_do_not_disturb_a_pull() {
    let registry = Registry::start();
    let pushed = push_small_image(&registry.endpoint(), "plain");
    let reference = format!("{}/plain:v1", registry.host());
    let cache = new_cache(CacheOptions::new());
    let scoped = cache.with_call_options(
        CallOptions::new()
            .deadline(Duration::from_secs(30))
            .stall_timeout(Duration::from_secs(10)),
    );
    assert_pulls(&scoped, &reference, &pushed).await;
    // The deadline runs from each call, not from when the options were made.
    let short = cache.with_call_options(CallOptions::new().deadline(Duration::from_millis(1000)));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_pulls(&short, &reference, &pushed).await;
}

// ---------------------------------------------------------------------------
// Progress

type Events = Arc<Mutex<Vec<Progress>>>;

fn recording() -> (Events, CallOptions) {
    let events: Events = Arc::default();
    let sink = events.clone();
    let options =
        CallOptions::new().progress(move |p: &Progress| sink.lock().unwrap().push(p.clone()));
    (events, options)
}

fn take(events: &Events) -> Vec<Progress> {
    std::mem::take(&mut *events.lock().unwrap())
}

/// Checks the reports of a pull of `layers` of `pushed`, returning how many
/// reports each layer got. Per layer, in the order reported: the digest and
/// download total are the descriptor's, both counts never go back nor past
/// their totals, and the last report has the whole blob downloaded and the
/// whole tar written.
#[track_caller]
fn check_progress(events: &[Progress], pushed: &PushedImage, layers: &[usize]) -> Vec<usize> {
    let mut seen: Vec<usize> = events.iter().map(|p| p.layer).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, layers, "layers reported: {events:#?}");
    let mut counts = vec![0; pushed.layers.len()];
    for &index in layers {
        let blob = pushed.layers[index].blob.len() as u64;
        let tar = pushed.layers[index].tar.len() as u64;
        let mine: Vec<&Progress> = events.iter().filter(|p| p.layer == index).collect();
        counts[index] = mine.len();
        let (mut downloaded, mut written) = (0, 0);
        for p in &mine {
            assert_eq!(p.digest.to_string(), pushed.layer_digests[index], "{p:?}");
            assert_eq!(p.download_total, Some(blob), "download_total: {p:?}");
            assert!(
                p.written_total.is_none() || p.written_total == Some(tar),
                "written_total of layer {index} (tar of {tar} bytes): {p:?}"
            );
            assert!(
                p.downloaded >= downloaded && p.written >= written,
                "layer {index} went back: {p:?} after downloaded {downloaded}, written {written}"
            );
            assert!(
                p.downloaded <= blob && p.written <= tar,
                "past the totals (blob {blob}, tar {tar}): {p:?}"
            );
            (downloaded, written) = (p.downloaded, p.written);
        }
        let last = mine.last().unwrap();
        assert!(
            last.downloaded == blob && last.written == tar,
            "the last report of layer {index} (blob {blob}, tar {tar} bytes) is {last:?}"
        );
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reports_every_layer_to_the_end() {
    let registry = Registry::start();
    let big_tar = tar_layer(&[("big.bin", noise(3, 1 << 20).as_slice())]);
    let pushed = push_image_to(
        &registry.endpoint(),
        "progress",
        Some("v1"),
        vec![
            FixtureLayer::gzip(distinct_tar("small")),
            FixtureLayer::gzip(big_tar),
        ],
        false,
        PLATFORM,
    );
    // Blob and tar sizes differ for both layers, so mixing them up shows.
    for layer in &pushed.layers {
        assert_ne!(layer.blob.len(), layer.tar.len());
    }
    let reference = format!("{}/progress:v1", registry.host());
    let cache = new_cache(CacheOptions::new());
    let (events, options) = recording();
    let scoped = cache.with_call_options(options);
    let image = within("fetch_image", scoped.fetch_image(&reference, None))
        .await
        .unwrap();
    let fetch_events = take(&events);
    assert!(
        fetch_events.is_empty(),
        "fetch_image downloads no layer but reported {fetch_events:?}"
    );

    let dst = tempfile::tempdir().unwrap();
    within("rootfs", scoped.rootfs(&image, dst.path()))
        .await
        .unwrap();
    assert_layer_tars(dst.path(), &pushed);
    let cold = take(&events);
    let counts = check_progress(&cold, &pushed, &[0, 1]);
    assert!(
        cold.iter()
            .any(|p| p.layer == 1 && p.downloaded > 0 && p.downloaded < p.download_total.unwrap()),
        "no report came while the 1 MiB layer was under way ({} reports for it)",
        counts[1]
    );

    // Warm: nothing downloaded, nothing reported.
    within("rootfs", scoped.rootfs(&image, dst.path()))
        .await
        .unwrap();
    let warm = take(&events);
    assert!(warm.is_empty(), "a warm rootfs reported {warm:?}");

    // One layer, with its own index.
    let single = tempfile::tempdir().unwrap();
    within(
        "extract_layer",
        scoped.extract_layer(&image, 1, single.path()),
    )
    .await
    .unwrap();
    check_progress(&take(&events), &pushed, &[1]);

    // The unscoped cache reports nothing to anyone.
    let plain = tempfile::tempdir().unwrap();
    within("rootfs", cache.rootfs(&image, plain.path()))
        .await
        .unwrap();
    assert!(
        take(&events).is_empty(),
        "the cache without options reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_counts_layers_read_from_the_store() {
    let mut registry = Registry::start();
    let pushed = push_small_image(&registry.endpoint(), "stored");
    let reference = format!("{}/stored:v1", registry.host());
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(CacheOptions::new().store(store.path()));
    let image = assert_pulls(&cache, &reference, &pushed).await;
    registry.stop();
    let (events, options) = recording();
    let dst = tempfile::tempdir().unwrap();
    within(
        "rootfs from the store",
        cache.with_call_options(options).rootfs(&image, dst.path()),
    )
    .await
    .unwrap_or_else(|e| panic!("rootfs from the store: {e}"));
    assert_layer_tars(dst.path(), &pushed);
    check_progress(&take(&events), &pushed, &[0, 1]);
}

/// A progress callback that panics fails the call with `Error::Internal`
/// naming the panic, from every layer call: never a panic in the caller,
/// never a clean end of a streamed layer, and nothing left in `dst`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_progress_callback_is_an_internal_error() {
    let registry = Registry::start();
    let big_tar = tar_layer(&[("big.bin", noise(5, 1 << 20).as_slice())]);
    push_image_to(
        &registry.endpoint(),
        "panics",
        Some("v1"),
        vec![FixtureLayer::gzip(big_tar)],
        false,
        PLATFORM,
    );
    let reference = format!("{}/panics:v1", registry.host());
    let cache = new_cache(CacheOptions::new());
    let image = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .unwrap();
    // Half way through the layer, so that bytes were already streamed.
    let scoped = cache.with_call_options(CallOptions::new().progress(|p: &Progress| {
        if p.written > 0 && p.written_total.is_none() {
            panic!("the progress callback gave up");
        }
    }));
    let internal = |what: &str, err: Error| match err.kind() {
        ErrorKind::Internal => assert!(
            err.message().contains("panicked")
                && err.message().contains("the progress callback gave up"),
            "{what}: {err}"
        ),
        _ => panic!("{what}: {err:?}, want Error::Internal"),
    };
    let dst = tempfile::tempdir().unwrap();
    let err = within("rootfs", scoped.rootfs(&image, dst.path())).await;
    internal("rootfs", err.unwrap_err());
    let err = within("extract_layers", scoped.extract_layers(&image, dst.path())).await;
    internal("extract_layers", err.unwrap_err());
    let err = within("extract_layer", scoped.extract_layer(&image, 0, dst.path())).await;
    internal("extract_layer", err.unwrap_err());
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());

    let mut reader = within("fetch_layer", scoped.fetch_layer(&image, 0))
        .await
        .unwrap();
    let mut read = Vec::new();
    let err = within(
        "reading",
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut read),
    )
    .await
    .expect_err("a stream whose worker panicked must not end cleanly");
    let err = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .cloned()
        .unwrap_or_else(|| panic!("not a library error: {err:?}"));
    internal("fetch_layer", err);
    assert!(read.len() < (1 << 20), "{} bytes streamed", read.len());

    // The cache is fine afterwards.
    within("rootfs", cache.rootfs(&image, dst.path()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_callback_stops_its_call_by_canceling_a_token() {
    let registry = Registry::start();
    let big_tar = tar_layer(&[("big.bin", noise(6, 1 << 20).as_slice())]);
    push_image_to(
        &registry.endpoint(),
        "stops",
        Some("v1"),
        vec![FixtureLayer::gzip(big_tar)],
        false,
        PLATFORM,
    );
    let reference = format!("{}/stops:v1", registry.host());
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(CacheOptions::new().store(store.path()));
    let image = within("fetch_image", cache.fetch_image(&reference, None))
        .await
        .unwrap();
    let stored = files_under(store.path());
    // Stops half way through the layer, once bytes were written, then holds
    // the worker a moment so the call ends before the layer could: a layer
    // that was complete would stay (as earlier layers do).
    let token = CancelToken::new();
    let stop = token.clone();
    let scoped = cache.with_call_options(CallOptions::new().cancel(token).progress(
        move |p: &Progress| {
            if p.written > 0 && p.written_total.is_none() && !stop.is_canceled() {
                stop.cancel();
                std::thread::sleep(Duration::from_millis(200));
            }
        },
    ));
    let dst = tempfile::tempdir().unwrap();
    match within("rootfs", scoped.rootfs(&image, dst.path())).await {
        Err(e) if e.kind() == ErrorKind::Canceled => assert_eq!(
            e.message(),
            format!("layers of {reference}: its cancel token was triggered")
        ),
        other => panic!("rootfs stopped by its progress callback: {other:?}"),
    }
    assert_eq!(files_under(dst.path()), Vec::<PathBuf>::new());
    assert_eq!(files_under(store.path()), stored);
}

// ---------------------------------------------------------------------------
// The C API: tests/c/call_options_test.c

/// Generous bounds for call_options_test: 40 s for the checks, plus up to
/// 90 s for the silent server with default limits (30 s expected); under
/// valgrind the checks run many times slower.
const C_RUN_LIMIT: Duration = Duration::from_secs(130);
const C_VALGRIND_LIMIT: Duration = Duration::from_secs(240);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Judges one call_options_test run whose OCI_TEST_TMP was `tmp`.
fn assert_call_options_test(ran: &Run, tmp: &Path, app: &PushedImage, what: &str) {
    if let Err(problem) = c_plan_met(ran) {
        panic!(
            "{what}: {problem}: {}\n\
             files in canceled/ now: {:?}\nfiles in stalled/ now: {:?}\n\
             layer diff_ids: {:?}, tar sizes {:?}",
            ran.describe(),
            files_under(&tmp.join("canceled")),
            files_under(&tmp.join("stalled")),
            app.diff_ids,
            app.layers.iter().map(|l| l.tar.len()).collect::<Vec<_>>(),
        );
    }
    // What the C side pulled is the image, byte for byte; what timed out
    // left nothing, and what was canceled left nothing half-written (a
    // layer done before the callback's answer arrived may stay, verified).
    for dir in ["progress", "reentrant", "auth", "authfile", "tls"] {
        assert_layer_tars(&tmp.join(dir), app);
    }
    assert_eq!(
        files_under(&tmp.join("stalled")),
        Vec::<PathBuf>::new(),
        "{what}: files left in stalled"
    );
    let canceled = tmp.join("canceled");
    for file in files_under(&canceled.join("sha256")) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let content = std::fs::read(&file).unwrap();
        assert_eq!(
            sha256(&content),
            format!("sha256:{name}"),
            "{what}: {} is not a whole layer",
            file.display()
        );
    }
    // An index is there only with its (whole) tar, and nothing else is.
    for file in files_under(&canceled) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let diff_id = format!("sha256:{name}");
        let tar = tar_path(&canceled, &diff_id);
        assert!(
            file == tar || (file == index_path(&canceled, &diff_id) && tar.is_file()),
            "{what}: {} left in canceled",
            file.display()
        );
    }
}

/// call_options_test.c plainly, built with AddressSanitizer and UBSan (leaks
/// included), and under valgrind: the three at once, each in its own
/// directory, since each spends most of its time waiting on timeouts.
#[test]
fn c_call_options_and_registry_options() {
    let root = manifest_dir();
    let lib = root.join("target/release");
    assert!(
        lib.join("liboci_cache.so").is_file(),
        "{} is missing: run `make lib` first (make test does)",
        lib.join("liboci_cache.so").display()
    );
    let work = tempfile::Builder::new()
        .prefix("oci-cache-c-call-")
        .tempdir()
        .unwrap();
    let program = work.path().join("call_options_test");
    let sanitized = work.path().join("call_options_test_sanitized");
    for (output, flags) in [(&program, &[][..]), (&sanitized, &C_SANITIZER_FLAGS[..])] {
        let compiled = run(
            "cc call_options_test.c",
            Command::new("cc")
                .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
                .args(["-D_POSIX_C_SOURCE=200809L", "-g"])
                .args(flags)
                .arg("-I")
                .arg(root.join("include"))
                .arg(root.join("tests/c/call_options_test.c"))
                .arg("-o")
                .arg(output)
                .arg("-L")
                .arg(&lib)
                .arg("-loci_cache")
                .arg(format!("-Wl,-rpath,{}", lib.display()))
                .arg("-lpthread"),
            Duration::from_secs(60),
        );
        assert!(
            compiled.status.success(),
            "{flags:?}: {}",
            compiled.describe()
        );
    }

    let plain = Registry::start();
    let locked = Registry::start_with(RegistrySetup::new().htpasswd());
    let secure = Registry::start_with(RegistrySetup::new().tls());
    let big_tar = tar_layer(&[("big.bin", noise(5, 600 << 10).as_slice())]);
    let layers = vec![
        FixtureLayer::gzip(distinct_tar("c-small")),
        FixtureLayer::gzip(big_tar),
    ];
    let app = push_image_to(
        &plain.endpoint(),
        "c/app",
        Some("v1"),
        layers.clone(),
        false,
        PLATFORM,
    );
    push_image_to(
        &locked.endpoint(),
        "c/app",
        Some("v1"),
        layers.clone(),
        false,
        PLATFORM,
    );
    push_image_to(
        &secure.endpoint(),
        "c/app",
        Some("v1"),
        layers,
        false,
        PLATFORM,
    );
    let (stall, stalled) = stalling_image("c/stall");
    let silent = SilentServer::start();
    let auth_file = write_auth_file(
        work.path(),
        "auth.json",
        &locked.host(),
        TEST_USER,
        TEST_PASSWORD,
    );

    let env = |command: &mut Command, tmp: &Path| {
        command
            .env("OCI_TEST_HOST", plain.host())
            .env("OCI_TEST_AUTH_HOST", locked.host())
            .env("OCI_TEST_TLS_HOST", secure.tls_host())
            .env("OCI_TEST_CA", secure.ca_pem())
            .env("OCI_TEST_STALL_HOST", stall.host())
            .env("OCI_TEST_SILENT_HOST", silent.host())
            .env("OCI_TEST_USER", TEST_USER)
            .env("OCI_TEST_PASSWORD", TEST_PASSWORD)
            .env("OCI_TEST_AUTH_FILE", &auth_file)
            .env("OCI_TEST_TMP", tmp)
            .env("OCI_TEST_STALL_DIGEST", &stalled.layer_digests[0]);
        for (i, layer) in app.layers.iter().enumerate() {
            command
                .env(format!("OCI_TEST_LAYER{i}_DIGEST"), &app.layer_digests[i])
                .env(
                    format!("OCI_TEST_LAYER{i}_SIZE"),
                    layer.blob.len().to_string(),
                )
                .env(
                    format!("OCI_TEST_LAYER{i}_TAR_SIZE"),
                    layer.tar.len().to_string(),
                );
        }
    };
    let tmp = |name: &str| {
        let dir = work.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        dir
    };
    let (plain_tmp, sanitized_tmp, valgrind_tmp) =
        (tmp("plain"), tmp("sanitized"), tmp("valgrind"));
    let valgrind_log = work.path().join("valgrind.log");

    let mut plain_run = Command::new(&program);
    env(&mut plain_run, &plain_tmp);
    let mut sanitized_run = Command::new(&sanitized);
    env(sanitizer_env(&mut sanitized_run), &sanitized_tmp);
    let mut valgrind_run = valgrind_command(&program, &valgrind_log);
    env(&mut valgrind_run, &valgrind_tmp);
    // A 300 ms timeout has ended calls after 3.3 s under valgrind on a
    // loaded 2-core machine.
    valgrind_run.env("OCI_TEST_SLOWDOWN", "10");
    let (ran_plain, ran_sanitized, ran_valgrind) = std::thread::scope(|scope| {
        let sanitized = scope.spawn(|| {
            run(
                "call_options_test under ASan and UBSan",
                &mut sanitized_run,
                C_RUN_LIMIT,
            )
        });
        let valgrind = scope.spawn(|| {
            run(
                "call_options_test under valgrind",
                &mut valgrind_run,
                C_VALGRIND_LIMIT,
            )
        });
        let plain = run("call_options_test", &mut plain_run, C_RUN_LIMIT);
        (plain, sanitized.join().unwrap(), valgrind.join().unwrap())
    });
    assert_call_options_test(&ran_plain, &plain_tmp, &app, "call_options_test");
    assert_call_options_test(
        &ran_sanitized,
        &sanitized_tmp,
        &app,
        "call_options_test under ASan and UBSan",
    );
    assert_valgrind_clean(&valgrind_log, &ran_valgrind);
    assert_call_options_test(
        &ran_valgrind,
        &valgrind_tmp,
        &app,
        "call_options_test under valgrind",
    );
}

// ---------------------------------------------------------------------------
// Token auth: the registry sends clients to a token server (the harness's
// `TokenServer`, in this process) and accepts only the JWTs it signs.

/// The library's token requests after the first `from` of them.
fn token_requests_since(registry: &Registry, from: usize) -> Vec<TokenRequest> {
    registry
        .token_server()
        .requests()
        .into_iter()
        .skip(from)
        .collect()
}

/// Checks that every one of `requests` asked for pull access to `repo` of
/// the registry's service, and got a token that grants exactly that.
#[track_caller]
fn assert_pull_token_requests(requests: &[TokenRequest], repo: &str) {
    let scope = format!("repository:{repo}:pull");
    for request in requests {
        assert_eq!(request.scopes, [scope.as_str()], "scope of {request:?}");
        assert_eq!(
            request.service.as_deref(),
            Some(TOKEN_SERVICE),
            "service of {request:?}"
        );
        assert_eq!(request.status, 200, "{request:?}");
        assert_eq!(request.granted, [scope.as_str()], "granted by {request:?}");
    }
}

/// Unix time now, in seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_anonymous_and_with_credentials() {
    let registry =
        Registry::start_with(RegistrySetup::new().token_auth(TokenPolicy::new().anonymous_pull()));
    let host = registry.host();
    let pushed = push_small_image(&registry.endpoint(), "open");
    // The harness pushed with a push token, as tester.
    let harness = registry.token_server().all_requests();
    assert!(
        harness.iter().any(|r| r.harness
            && r.user.as_deref() == Some(TEST_USER)
            && r.scopes == ["repository:open:pull,push"]
            && r.granted == ["repository:open:pull,push"]),
        "the harness never got a push token: {harness:#?}"
    );
    // Without a token the registry answers 401, sending clients to the realm.
    let bare = http(&host, "GET", "/v2/open/manifests/v1", &[], &[]).unwrap();
    assert_eq!(bare.status, 401);
    let challenge = bare.header("WWW-Authenticate").unwrap_or_default();
    let realm = registry.token_server().realm();
    assert!(
        challenge.starts_with("Bearer ")
            && challenge.contains(&format!("realm=\"{realm}\""))
            && challenge.contains("scope=\"repository:open:pull\""),
        "challenge: {challenge}"
    );

    let reference = format!("{host}/open:v1");
    let anonymous = new_cache(CacheOptions::new());
    assert_pulls(&anonymous, &reference, &pushed).await;
    let requests = token_requests_since(&registry, 0);
    assert!(!requests.is_empty(), "an anonymous pull asked for no token");
    assert_pull_token_requests(&requests, "open");
    for request in &requests {
        assert!(
            !request.basic_auth && request.user.is_none(),
            "an anonymous pull sent credentials to the realm: {request:?}"
        );
    }

    let seen = requests.len();
    let cache = new_cache(CacheOptions::new().credentials(host.clone(), TEST_USER, TEST_PASSWORD));
    assert_pulls(&cache, &reference, &pushed).await;
    let requests = token_requests_since(&registry, seen);
    assert!(
        !requests.is_empty(),
        "a pull with credentials asked for no token"
    );
    assert_pull_token_requests(&requests, "open");
    for request in &requests {
        assert!(
            request.basic_auth && request.user.as_deref() == Some(TEST_USER),
            "the token request did not carry tester's Basic credentials: {request:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_server_refusal_is_unauthorized_with_its_reason() {
    let registry = Registry::start_with(RegistrySetup::new().token_auth(TokenPolicy::new()));
    let host = registry.host();
    let realm = registry.token_server().realm();
    push_small_image(&registry.endpoint(), "locked");
    let reference = format!("{host}/locked:v1");

    let wrong = "t0ken-Wr0ng-4k8v";
    let cache = new_cache(CacheOptions::new().credentials(host.clone(), TEST_USER, wrong));
    for call in ["fetch_image", "resolve"] {
        let result = match call {
            "fetch_image" => within(call, cache.fetch_image(&reference, None))
                .await
                .map(|_| ()),
            _ => within(call, cache.resolve(&reference)).await.map(|_| ()),
        };
        let err = unauthorized(result, &host, &format!("{call} with a wrong password"));
        let msg = err.to_string();
        // The realm's own answer, from the token request, not a later 401
        // of the registry to a request that went without a token.
        assert!(
            msg.contains("bad password"),
            "{call}: the error does not pass on the realm's answer: {msg}"
        );
        assert!(
            msg.contains("token request") || msg.contains(&realm),
            "{call}: the error does not say that the token request ({realm}) failed: {msg}"
        );
        assert!(
            !msg.contains("answered 401"),
            "{call}: the error is the registry's 401, not the realm's: {msg}"
        );
        assert_no_secret(&err, &[wrong, TEST_PASSWORD]);
    }
    let requests = token_requests_since(&registry, 0);
    assert!(!requests.is_empty(), "the realm was never asked");
    for request in &requests {
        assert!(
            request.user.as_deref() == Some(TEST_USER) && request.status == 401,
            "{request:?}"
        );
    }

    // No credentials at all, and no anonymous access: the realm says so.
    let anonymous = new_cache(CacheOptions::new());
    let err = unauthorized(
        within("fetch_image", anonymous.fetch_image(&reference, None)).await,
        &host,
        "fetch_image without credentials",
    );
    assert!(
        err.to_string().contains("anonymous access refused"),
        "the error does not pass on the realm's answer: {err}"
    );
}

/// A three-layer image (gzip, plain, zstd) pushed to `endpoint` as `repo:tag`.
fn push_three_layer_image(endpoint: &Endpoint, repo: &str, tag: &str) -> PushedImage {
    push_image_to(
        endpoint,
        repo,
        Some(tag),
        vec![
            FixtureLayer::gzip(distinct_tar(&format!("{repo}-{tag}-a"))),
            FixtureLayer::plain(distinct_tar(&format!("{repo}-{tag}-b"))),
            FixtureLayer::zstd(distinct_tar(&format!("{repo}-{tag}-c"))),
        ],
        false,
        PLATFORM,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_reused_for_manifest_config_and_layers() {
    let registry = Registry::start_with(RegistrySetup::new().token_auth(TokenPolicy::new()));
    let host = registry.host();
    let endpoint = registry.endpoint();
    let first = push_three_layer_image(&endpoint, "layers", "v1");
    let second = push_three_layer_image(&endpoint, "layers", "v2");
    let other = push_three_layer_image(&endpoint, "other", "v1");
    let cache = new_cache(CacheOptions::new().credentials(host.clone(), TEST_USER, TEST_PASSWORD));

    // One token for the repository, fetched for the manifest, then sent
    // with the config and all three blobs: not one per request.
    assert_pulls(&cache, &format!("{host}/layers:v1"), &first).await;
    for digest in &first.layer_digests {
        assert_eq!(registry.blob_gets(digest), 1, "GETs of blob {digest}");
    }
    let requests = token_requests_since(&registry, 0);
    assert_eq!(
        requests.len(),
        1,
        "token requests for a pull of 3 layers: {requests:#?}"
    );
    assert_pull_token_requests(&requests, "layers");
    // Another tag of the same repository: the token is still good.
    assert_pulls(&cache, &format!("{host}/layers:v2"), &second).await;
    let requests = token_requests_since(&registry, 1);
    assert!(
        requests.is_empty(),
        "another tag of the same repository asked for a new token: {requests:#?}"
    );
    // Another repository needs a token of its own, once.
    assert_pulls(&cache, &format!("{host}/other:v1"), &other).await;
    let requests = token_requests_since(&registry, 1);
    assert_eq!(
        requests.len(),
        1,
        "token requests for another repository: {requests:#?}"
    );
    assert_pull_token_requests(&requests, "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_replaced_once() {
    // Tokens good for ten minutes, which no pull on any machine outlives:
    // that a valid token is reused is then checked always, not only when
    // the machine is fast enough.
    let long = 600;
    let lifetime = 2;
    let registry =
        Registry::start_with(RegistrySetup::new().token_auth(TokenPolicy::new().lifetime(long)));
    let host = registry.host();
    let endpoint = registry.endpoint();
    let push = |repo: &str, tag: &str| {
        push_image_to(
            &endpoint,
            repo,
            Some(tag),
            vec![FixtureLayer::gzip(distinct_tar(&format!("{repo}-{tag}")))],
            false,
            PLATFORM,
        )
    };
    let images: Vec<PushedImage> = ["v1", "v2"].iter().map(|tag| push("short", tag)).collect();
    let expiring: Vec<PushedImage> = ["v1", "v2"].iter().map(|tag| push("brief", tag)).collect();
    let cache = new_cache(CacheOptions::new().credentials(host.clone(), TEST_USER, TEST_PASSWORD));

    assert_pulls(&cache, &format!("{host}/short:v1"), &images[0]).await;
    let requests = token_requests_since(&registry, 0);
    assert_eq!(requests.len(), 1, "token requests: {requests:#?}");
    let expires_at = requests[0].expires_at.expect("a token was issued");
    assert_eq!(Some(expires_at), requests[0].issued_at.map(|t| t + long));
    // While it is good, the token serves the next pull too.
    assert_pulls(&cache, &format!("{host}/short:v2"), &images[1]).await;
    let requests = token_requests_since(&registry, 1);
    assert!(
        requests.is_empty(),
        "a token still valid was not reused: {requests:#?}"
    );

    // Another repository, whose token lives `lifetime` seconds.
    registry
        .token_server()
        .set_policy(TokenPolicy::new().lifetime(lifetime));
    assert_pulls(&cache, &format!("{host}/brief:v1"), &expiring[0]).await;
    let requests = token_requests_since(&registry, 1);
    assert_eq!(requests.len(), 1, "token requests: {requests:#?}");
    let expires_at = requests[0].expires_at.expect("a token was issued");
    assert_eq!(
        Some(expires_at),
        requests[0].issued_at.map(|t| t + lifetime)
    );
    let seen = registry.token_server().requests().len();

    // Past `exp` (which is in whole seconds) by a margin.
    let expired = std::time::UNIX_EPOCH + Duration::from_millis((expires_at + 1) * 1000 + 100);
    if let Ok(wait) = expired.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    assert_pulls(&cache, &format!("{host}/brief:v2"), &expiring[1]).await;
    let requests = token_requests_since(&registry, seen);
    assert_eq!(
        requests.len(),
        1,
        "after the token expired, one fresh token should be fetched: {requests:#?}"
    );
    assert_pull_token_requests(&requests, "brief");
    assert!(
        requests[0].issued_at.unwrap() > expires_at,
        "the fresh token was issued before the old one expired: {requests:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_the_registry_refuses_is_replaced() {
    let registry = Registry::start_with(RegistrySetup::new().token_auth(TokenPolicy::new()));
    let host = registry.host();
    let pushed = push_small_image(&registry.endpoint(), "revoked");
    let reference = format!("{host}/revoked:v1");
    let cache = new_cache(CacheOptions::new().credentials(host.clone(), TEST_USER, TEST_PASSWORD));

    // The realm hands out tokens that grant nothing: the registry refuses
    // them, and so the pull fails.
    registry
        .token_server()
        .set_policy(TokenPolicy::new().no_access());
    let err = unauthorized(
        within("fetch_image", cache.fetch_image(&reference, None)).await,
        &host,
        "fetch_image with a token that grants nothing",
    );
    assert_no_secret(&err, &[TEST_PASSWORD]);
    let seen = registry.token_server().requests().len();
    assert!(seen >= 1, "no token was asked for");

    // Rights restored: the cache still holds the useless token, which has
    // not expired; the registry's 401 must make it fetch a new one.
    registry.token_server().set_policy(TokenPolicy::new());
    assert_pulls(&cache, &reference, &pushed).await;
    let requests = token_requests_since(&registry, seen);
    assert_eq!(
        requests.len(),
        1,
        "replacing a refused token should take one token request: {requests:#?}"
    );
    assert_pull_token_requests(&requests, "revoked");
}

// ---------------------------------------------------------------------------
// Retry-After, proxies from the environment, identity tokens, and refused
// logins asked once.

/// The image of [`push_small_image`], served by a fake registry as `repo:v1`.
fn fake_small_image(repo: &str) -> (FakeRegistry, PushedImage) {
    let built = build_image("unused.invalid", repo, small_layers(repo), false, PLATFORM);
    let blobs = built
        .layer_digests
        .iter()
        .cloned()
        .zip(built.layers.iter().map(|l| l.blob.clone()))
        .collect();
    let fake = FakeRegistry::with_image(repo, "v1", &built.manifest, &built.config, blobs);
    (fake, built)
}

/// The wait between the two requests for `path`, which must have been
/// asked for exactly twice.
#[track_caller]
fn retry_gap(fake: &FakeRegistry, path: &str) -> Duration {
    let times = fake.request_times(path);
    assert_eq!(times.len(), 2, "requests for {path}");
    times[1] - times[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_seconds_is_honoured() {
    let (fake, built) = fake_small_image("busy");
    let blob = format!("/v2/busy/blobs/{}", built.layer_digests[0]);
    fake.fail_first(&blob, 1, 429, &[("Retry-After", "2")]);
    let cache = new_cache(CacheOptions::new());
    assert_pulls(&cache, &format!("{}/busy:v1", fake.host()), &built).await;
    // Without the header the first retry comes after 100-300 ms.
    let gap = retry_gap(&fake, &blob);
    assert!(
        gap >= Duration::from_millis(1800) && gap <= Duration::from_secs(6),
        "429 with Retry-After: 2, retried after {gap:?}"
    );
    let other = format!("/v2/busy/blobs/{}", built.layer_digests[1]);
    let config = format!("/v2/busy/blobs/{}", built.config_digest);
    assert_eq!(fake.requests(&other), 1, "requests for {other}");
    assert_eq!(fake.requests(&config), 1, "requests for {config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_http_date_is_honoured() {
    let (fake, built) = fake_small_image("down");
    let config = format!("/v2/down/blobs/{}", built.config_digest);
    // Whole seconds: 2 to 3 s from now.
    let at = std::time::UNIX_EPOCH + Duration::from_secs(unix_now() + 3);
    fake.fail_first(&config, 1, 503, &[("Retry-After", &http_date(at))]);
    let cache = new_cache(CacheOptions::new());
    assert_pulls(&cache, &format!("{}/down:v1", fake.host()), &built).await;
    let gap = retry_gap(&fake, &config);
    assert!(
        gap >= Duration::from_millis(1000) && gap <= Duration::from_secs(6),
        "503 with Retry-After: {}, retried after {gap:?}",
        http_date(at)
    );
    for digest in &built.layer_digests {
        let path = format!("/v2/down/blobs/{digest}");
        assert_eq!(fake.requests(&path), 1, "requests for {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_and_no_proxy_from_the_environment() {
    let name = "https_proxy_and_no_proxy_from_the_environment";
    if in_child(name) {
        return child_pull().await;
    }
    let registry = Registry::start_with(RegistrySetup::new().tls());
    let pushed = push_small_image(&registry.endpoint(), "proxied");
    let host = registry.tls_host();
    let reference = format!("{host}/proxied:v1");
    let env = |expect: &str, proxy: String, no_proxy: Option<String>| {
        let mut env = child_env(&reference, &pushed, expect, None);
        env.push(("OCI_TEST_CA", registry.ca_pem().display().to_string()));
        env.push(("HTTPS_PROXY", proxy));
        env.extend(no_proxy.map(|hosts| ("NO_PROXY", hosts)));
        env
    };

    // Every connection goes through the proxy, to the registry.
    let proxy = ConnectProxy::start();
    run_child(name, &env(EXPECT_OK, proxy.url(), None));
    let targets = proxy.targets();
    assert!(
        !targets.is_empty() && targets.iter().all(|target| *target == host),
        "CONNECT targets {targets:?}, expected only {host}"
    );

    // NO_PROXY names the registry (without its port): straight there.
    let bypassed = ConnectProxy::start();
    run_child(
        name,
        &env(EXPECT_OK, bypassed.url(), Some(host_name(&host))),
    );
    assert_eq!(bypassed.targets(), Vec::<String>::new(), "CONNECT targets");

    // A proxy that is not there: the pull fails rather than go around it.
    let before: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| !r.contains("log-sentinel"))
        .collect();
    run_child(
        name,
        &env(EXPECT_NETWORK, format!("http://{}", dead_host()), None),
    );
    let after: Vec<String> = registry
        .requests()
        .into_iter()
        .filter(|r| !r.contains("log-sentinel"))
        .collect();
    assert_eq!(after, before, "requests that went around the dead proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_registries_never_use_an_environment_proxy() {
    let name = "loopback_registries_never_use_an_environment_proxy";
    if in_child(name) {
        return child_pull().await;
    }
    // As Go's ProxyFromEnvironment: loopback literals and localhost go
    // straight there, whatever HTTP_PROXY, HTTPS_PROXY and ALL_PROXY say
    // (here a proxy that is not there, and one that records its targets).
    let registry = Registry::start();
    let pushed = push_small_image(&registry.endpoint(), "direct");
    let port = registry.host().rsplit_once(':').unwrap().1.to_owned();
    let dead = format!("http://{}", dead_host());
    let recording = ConnectProxy::start();
    for host in [registry.host(), format!("localhost:{port}")] {
        let mut env = child_env(&format!("{host}/direct:v1"), &pushed, EXPECT_OK, None);
        env.push(("HTTP_PROXY", dead.clone()));
        env.push(("http_proxy", dead.clone()));
        env.push(("HTTPS_PROXY", recording.url()));
        env.push(("ALL_PROXY", dead.clone()));
        run_child(name, &env);
    }
    assert_eq!(recording.targets(), Vec::<String>::new(), "CONNECT targets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_token_from_auth_file_is_exchanged_at_the_realm() {
    let registry = Registry::start_with(RegistrySetup::new().token_auth(TokenPolicy::new()));
    let host = registry.host();
    let pushed = push_small_image(&registry.endpoint(), "oauth");
    let dir = tempfile::tempdir().unwrap();
    let file = write_identity_token_file(dir.path(), "auth.json", &host, TEST_IDENTITY_TOKEN);
    let cache = new_cache(CacheOptions::new().auth_file(&file));
    assert_pulls(&cache, &format!("{host}/oauth:v1"), &pushed).await;
    let requests = token_requests_since(&registry, 0);
    assert_eq!(requests.len(), 1, "token requests: {requests:#?}");
    assert_pull_token_requests(&requests, "oauth");
    for request in &requests {
        assert!(
            request.method == "POST"
                && request.refresh_token
                && !request.basic_auth
                && request.client_id.as_deref() == Some("oci-cache"),
            "not a refresh-token POST by client oci-cache without Basic auth: {request:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_identity_token_is_unauthorized_and_asked_once() {
    let registry = Registry::start_with(RegistrySetup::new().token_auth(TokenPolicy::new()));
    let host = registry.host();
    push_small_image(&registry.endpoint(), "oauth");
    let dir = tempfile::tempdir().unwrap();
    let wrong = "idt-Wr0ng-3f8jQ2";
    let file = write_identity_token_file(dir.path(), "auth.json", &host, wrong);
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(CacheOptions::new().store(store.path()).auth_file(&file));
    let err = unauthorized(
        within(
            "fetch_image",
            cache.fetch_image(&format!("{host}/oauth:v1"), None),
        )
        .await,
        &host,
        "fetch_image with a wrong identity token",
    );
    assert!(
        err.to_string().contains("invalid refresh token"),
        "the error does not pass on the realm's answer: {err}"
    );
    assert_no_secret(&err, &[wrong, TEST_IDENTITY_TOKEN]);
    let requests = token_requests_since(&registry, 0);
    assert_eq!(requests.len(), 1, "token requests: {requests:#?}");
    assert!(
        requests[0].method == "POST" && requests[0].refresh_token && requests[0].status == 401,
        "{:?}",
        requests[0]
    );
    assert_store_empty(store.path(), "fetch_image with a wrong identity token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_token_for_a_basic_auth_registry_is_unauthorized() {
    let registry = Registry::start_with(RegistrySetup::new().htpasswd());
    let host = registry.host();
    push_small_image(&registry.endpoint(), "locked");
    let dir = tempfile::tempdir().unwrap();
    let file = write_identity_token_file(dir.path(), "auth.json", &host, TEST_IDENTITY_TOKEN);
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(CacheOptions::new().store(store.path()).auth_file(&file));
    let err = unauthorized(
        within(
            "fetch_image",
            cache.fetch_image(&format!("{host}/locked:v1"), None),
        )
        .await,
        &host,
        "fetch_image with an identity token for a Basic realm",
    );
    assert!(
        err.to_string().to_lowercase().contains("identity token"),
        "the error does not say that an identity token needs a token realm: {err}"
    );
    assert_no_secret(&err, &[TEST_IDENTITY_TOKEN, TEST_PASSWORD]);
    assert!(
        !registry.settled_log().contains("error authenticating user"),
        "the identity token was presented to the registry as credentials; log:\n{}",
        registry.log()
    );
    assert_store_empty(store.path(), "fetch_image with an identity token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_login_asks_the_realm_once() {
    let registry = Registry::start_with(RegistrySetup::new().token_auth(TokenPolicy::new()));
    let host = registry.host();
    push_small_image(&registry.endpoint(), "locked");
    let wrong = "t0ken-Wr0ng-once-5r";
    let store = tempfile::tempdir().unwrap();
    let cache = new_cache(CacheOptions::new().store(store.path()).credentials(
        host.clone(),
        TEST_USER,
        wrong,
    ));
    let err = unauthorized(
        within(
            "fetch_image",
            cache.fetch_image(&format!("{host}/locked:v1"), None),
        )
        .await,
        &host,
        "fetch_image with a wrong password",
    );
    assert!(err.to_string().contains("bad password"), "{err}");
    assert_no_secret(&err, &[wrong, TEST_PASSWORD]);
    let requests = token_requests_since(&registry, 0);
    assert_eq!(requests.len(), 1, "token requests: {requests:#?}");
    assert!(
        requests[0].user.as_deref() == Some(TEST_USER) && requests[0].status == 401,
        "{:?}",
        requests[0]
    );
    assert_store_empty(store.path(), "fetch_image with a wrong password");
}
