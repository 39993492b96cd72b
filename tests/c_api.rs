//! The C ABI as a C program uses it: the header compiles as C11 and C++17,
//! `examples-c` builds against the shared and the static library and pulls
//! an image (cold, then warm with the registry gone), and
//! `tests/c/api_test.c` checks every status code, the error (with its errno
//! and HTTP status, from a read-only and a full tmpfs), output and fd
//! contracts, free order, fork and threads: plainly, built with
//! AddressSanitizer and UBSan (leaks included), and under valgrind;
//! `tests/c/options_test.c` shows the cache options act (plainly and under
//! the sanitizers); `tests/c/view_test.c` reads an image's files through
//! the view (plainly, with the sanitizers, and under valgrind). This file
//! only sets the stage (registries, fixtures, builds) and judges what the
//! programs report.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;

/// The name options_test.c reaches the registry by: not loopback, so only
/// `oci_cache_options_add_insecure_registry` allows plain HTTP to it.
const INSECURE_NAME: &str = "oci-insecure.test";

const ODD_MEDIA_TYPE: &str = "application/vnd.example.layer.v1.tar+lz4";

/// Generous bounds: a hang fails the test with the output so far.
const RUN_LIMIT: Duration = Duration::from_secs(60);
const VALGRIND_LIMIT: Duration = Duration::from_secs(120);

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/release`, holding the libraries `make lib` builds.
fn library_dir() -> PathBuf {
    let dir = manifest_dir().join("target").join("release");
    for name in ["liboci_cache.so", "liboci_cache.a"] {
        assert!(
            dir.join(name).is_file(),
            "{} is missing: run `make lib` first (make test does)",
            dir.join(name).display()
        );
    }
    warn_if_stale(&dir.join("liboci_cache.so"));
    dir
}

/// These tests run the C libraries, not the code cargo just compiled: say
/// so when the sources are newer, since the results may then mislead.
fn warn_if_stale(library: &Path) {
    let modified = |path: &Path| path.metadata().and_then(|m| m.modified()).ok();
    let Some(built) = modified(library) else {
        return;
    };
    let newest_source = files_under(&manifest_dir().join("src"))
        .into_iter()
        .chain([manifest_dir().join("Cargo.toml")])
        .filter_map(|path| Some((modified(&path)?, path)))
        .max_by_key(|(time, _)| *time);
    if let Some((time, path)) = newest_source {
        if time > built {
            eprintln!(
                "warning: {} is newer than {}: these tests use the library as built; \
                 run `make lib` to test the current sources",
                path.display(),
                library.display()
            );
        }
    }
}

/// The other architecture of `c/multi:v1`.
fn other_arch() -> &'static str {
    if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

struct Fixtures {
    app: PushedImage,
    other: PushedImage,
    index_digest: String,
    corrupt: PushedImage,
    /// A read-only `dst` (EROFS) and a 64 KiB one too small for app's layers (ENOSPC).
    read_only: Tmpfs,
    full: Tmpfs,
}

/// `c/app:v1` (gzip, zstd and plain tar layers), `c/multi:v1` (an index
/// whose host entry is app's manifest) and `c/odd:v1` (a layer type nobody
/// handles) in the real registry.
fn push_fixtures(host: &str) -> (PushedImage, PushedImage, String) {
    let host_platform = ("linux", host_arch(), None);
    let motd = "Welcome to the C API test image.\n".repeat(600);
    let config = format!(
        "{{\"listen\": \"0.0.0.0:8080\", \"note\": \"{}\"}}\n",
        "x".repeat(3000)
    );
    let app = push_image(
        host,
        "c/app",
        Some("v1"),
        vec![
            FixtureLayer::gzip(tar_layer(&[
                ("etc/motd", motd.as_bytes()),
                ("etc/hostname", b"c-api\n"),
            ])),
            FixtureLayer::zstd(tar_layer(&[(
                "usr/lib/libnoise.so",
                noise(0x0c1_cafe, 300_000).as_slice(),
            )])),
            FixtureLayer::plain(tar_layer(&[
                ("app/run.sh", b"#!/bin/sh\nexec /app/server\n"),
                ("app/config.json", config.as_bytes()),
            ])),
        ],
        false,
        host_platform,
    );
    let other = push_image(
        host,
        "c/multi",
        None,
        vec![FixtureLayer::gzip(tar_layer(&[(
            "arch.txt",
            other_arch().as_bytes(),
        )]))],
        false,
        ("linux", other_arch(), None),
    );
    // An index may only name manifests its own repository has.
    push_blob(host, "c/multi", &app.config);
    for layer in &app.layers {
        push_blob(host, "c/multi", &layer.blob);
    }
    push_manifest(
        host,
        "c/multi",
        &app.manifest_digest,
        &app.manifest_media_type,
        &app.manifest,
    );
    let (_, index_digest) = push_index(
        host,
        "c/multi",
        "v1",
        &[
            (&app, host_platform),
            (&other, ("linux", other_arch(), None)),
        ],
        false,
    );
    let odd_tar = tar_layer(&[("odd.txt", b"compressed with something else\n")]);
    push_image(
        host,
        "c/odd",
        Some("v1"),
        vec![FixtureLayer::with_type(
            ODD_MEDIA_TYPE,
            odd_tar,
            b"not lz4, not anything".to_vec(),
        )],
        false,
        host_platform,
    );
    (app, other, index_digest)
}

/// What a real registry refuses to serve: `c/corrupt:v1` (a layer blob
/// whose bytes do not match its digest, same size), `c/garbled:v1` (a
/// manifest that is not JSON) and `c/secret:v1` (401).
fn fake_fixtures(fake: &FakeRegistry) -> PushedImage {
    let tar = tar_layer(&[("data/values.txt", "1 2 3 4 5\n".repeat(2000).as_bytes())]);
    let corrupt = build_image(
        &fake.host(),
        "c/corrupt",
        vec![FixtureLayer::plain(tar.clone())],
        false,
        ("linux", host_arch(), None),
    );
    let mut flipped = tar;
    // Inside the file's content, past its 512-byte header: still a tar.
    flipped[1000] ^= 0xff;
    fake.add_image(
        "c/corrupt",
        "v1",
        &corrupt.manifest,
        &corrupt.config,
        vec![(corrupt.layer_digests[0].clone(), flipped)],
    );

    let garbled = b"this is not a manifest {".to_vec();
    fake.route(
        "/v2/c/garbled/manifests/v1",
        Route {
            status: 200,
            content_type: OCI_MANIFEST.into(),
            headers: vec![("Docker-Content-Digest".into(), sha256(&garbled))],
            body: garbled,
        },
    );
    fake.route(
        "/v2/c/secret/manifests/v1",
        Route {
            status: 401,
            content_type: "application/json; charset=utf-8".into(),
            headers: vec![("WWW-Authenticate".into(), "Basic realm=\"x\"".into())],
            body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#
                .to_vec(),
        },
    );
    corrupt
}

fn compile(what: &str, command: &mut Command) {
    let ran = run(what, command, RUN_LIMIT);
    assert!(
        ran.status.success(),
        "{what} failed: {}\ncommand: {command:?}",
        ran.describe()
    );
}

/// Checks `dst` holds exactly app's layer tars, byte for byte, and their
/// indexes.
fn assert_app_layers(dst: &Path, app: &PushedImage) {
    let expected = layer_files(dst, app.diff_ids.iter().map(String::as_str));
    assert_eq!(files_under(dst), expected, "files under {}", dst.display());
    for (diff_id, layer) in app.diff_ids.iter().zip(&app.layers) {
        let path = dst
            .join("sha256")
            .join(diff_id.strip_prefix("sha256:").unwrap());
        let content = std::fs::read(&path).unwrap();
        assert!(
            content == layer.tar,
            "{} has {} bytes ({}), expected the layer's {} bytes",
            path.display(),
            content.len(),
            sha256(&content),
            layer.tar.len()
        );
    }
}

/// What `pull` prints for app: `<diff_id> <tar size>` per layer, bottom first.
fn pull_output(app: &PushedImage) -> String {
    app.diff_ids
        .iter()
        .zip(&app.layers)
        .map(|(diff_id, layer)| format!("{diff_id} {}\n", layer.tar.len()))
        .collect()
}

fn pull(program: &Path, args: &[&Path]) -> Run {
    let name = program.file_name().unwrap().to_string_lossy().into_owned();
    run(&name, Command::new(program).args(args), RUN_LIMIT)
}

fn assert_pulled(ran: &Run, app: &PushedImage, what: &str) {
    assert!(ran.status.success(), "{what}: {}", ran.describe());
    assert_eq!(ran.stdout, pull_output(app), "{what}: {}", ran.describe());
}

/// Sets everything api_test.c reads.
fn api_test_env(command: &mut Command, fixtures: &Fixtures, hosts: (&str, &str, &str), tmp: &Path) {
    let (host, fake, dead) = hosts;
    let app = &fixtures.app;
    command
        .env("OCI_TEST_READ_ONLY_DIR", fixtures.read_only.path())
        .env("OCI_TEST_FULL_DIR", fixtures.full.path())
        .env("OCI_TEST_HOST", host)
        .env("OCI_TEST_FAKE", fake)
        .env("OCI_TEST_DEAD", dead)
        .env("OCI_TEST_TMP", tmp)
        .env("OCI_TEST_APP_DIGEST", &app.manifest_digest)
        .env("OCI_TEST_MULTI_DIGEST", &fixtures.index_digest)
        .env("OCI_TEST_OTHER_DIGEST", &fixtures.other.manifest_digest)
        .env("OCI_TEST_HOST_PLATFORM", format!("linux/{}", host_arch()))
        .env("OCI_TEST_OTHER_PLATFORM", format!("linux/{}", other_arch()))
        .env("OCI_TEST_ODD_MEDIA_TYPE", ODD_MEDIA_TYPE)
        .env(
            "OCI_TEST_CORRUPT_DIGEST",
            &fixtures.corrupt.layer_digests[0],
        );
    for (i, layer) in app.layers.iter().enumerate() {
        command
            .env(format!("OCI_TEST_LAYER{i}_DIGEST"), &app.layer_digests[i])
            .env(format!("OCI_TEST_LAYER{i}_DIFF_ID"), &app.diff_ids[i])
            .env(format!("OCI_TEST_LAYER{i}_MEDIA_TYPE"), &layer.media_type)
            .env(
                format!("OCI_TEST_LAYER{i}_SIZE"),
                layer.blob.len().to_string(),
            )
            .env(
                format!("OCI_TEST_LAYER{i}_TAR_SIZE"),
                layer.tar.len().to_string(),
            );
    }
}

/// A command running `program` in a private mount namespace whose
/// `/etc/hosts` is `hosts` (bind-mounted over it there): names resolve as
/// the test needs, and the machine's own file is never touched.
fn with_private_hosts(program: &Path, hosts: &Path) -> Command {
    require_tool(
        "unshare",
        "apt-get install -y --no-install-recommends util-linux",
    );
    let mut command = Command::new("unshare");
    command
        .args([
            "-m",
            "--",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/hosts && exec "$@""#,
        ])
        .arg(hosts)
        .arg(program);
    command
}

/// Runs options_test (built as `program`) with its own tmp dir and checks
/// it: exit 0, and every check it planned ran and passed.
fn run_options_test(
    program: &Path,
    fixtures: &Fixtures,
    hosts: (&str, &str, &str),
    tmp: &Path,
    what: &str,
) {
    let hosts_file = tmp.join("etc-hosts");
    std::fs::write(
        &hosts_file,
        format!("127.0.0.1 localhost\n127.0.0.1 {INSECURE_NAME}\n"),
    )
    .unwrap();
    let port = hosts.0.rsplit_once(':').expect("host:port").1;
    let mut command = with_private_hosts(program, &hosts_file);
    api_test_env(&mut command, fixtures, hosts, tmp);
    command
        .env("OCI_TEST_INSECURE_HOST", format!("{INSECURE_NAME}:{port}"))
        .env(
            "OCI_TEST_OTHER_CONFIG",
            String::from_utf8(fixtures.other.config.clone()).unwrap(),
        );
    sanitizer_env(&mut command);
    let ran = run(what, &mut command, RUN_LIMIT);
    if let Err(problem) = c_plan_met(&ran) {
        panic!("{what}: {problem}: {}", ran.describe());
    }
}

/// Checks an api_test run: exit 0, and every check it planned ran and passed.
fn assert_api_test(ran: &Run, tmp: &Path, host: &str, app: &PushedImage, what: &str) {
    if let Err(problem) = c_plan_met(ran) {
        panic!("{what}: {problem}: {}", ran.describe());
    }
    // The files the C side checked by fd are the layers, byte for byte.
    for dir in [
        "happy",
        "hostile",
        "reserve-dst",
        "free-order",
        "fork",
        "fd-growth",
        "threads",
        "free-in-callback",
    ] {
        assert_app_layers(&tmp.join(dir), app);
    }
    // Its cache kept a store, recording what it fetched by reference.
    let index = std::fs::read_to_string(tmp.join("store/index.json")).unwrap_or_default();
    let ref_name = format!("\"org.opencontainers.image.ref.name\":\"{host}/c/app:v1\"");
    assert!(
        index.replace(": ", ":").contains(&ref_name),
        "{what}: the store's index.json does not record {host}/c/app:v1: {index}"
    );
}

#[test]
fn c_programs_use_the_c_abi() {
    let started = Instant::now();
    let lib = library_dir();
    let root = manifest_dir();
    let include = root.join("include");
    let work = tempfile::Builder::new()
        .prefix("oci-cache-c-api-")
        .tempdir()
        .expect("creating a temp dir");
    let work = work.path();

    // Builds first: a program that does not compile needs no registry.
    // Each program is built plain and with AddressSanitizer and UBSan.
    let [api_test, api_test_sanitized, options_test, options_test_sanitized] = [
        ("api_test", &[][..]),
        ("api_test", &C_SANITIZER_FLAGS[..]),
        ("options_test", &[][..]),
        ("options_test", &C_SANITIZER_FLAGS[..]),
    ]
    .map(|(name, sanitizers)| {
        let program = work.join(match sanitizers.is_empty() {
            true => name.to_owned(),
            false => format!("{name}_sanitized"),
        });
        compile(
            &format!("cc {name}.c {}", sanitizers.join(" ")),
            Command::new("cc")
                .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
                .args(["-D_POSIX_C_SOURCE=200809L", "-g"])
                .args(sanitizers)
                .arg("-I")
                .arg(&include)
                .arg(root.join(format!("tests/c/{name}.c")))
                .arg("-o")
                .arg(&program)
                .arg("-L")
                .arg(&lib)
                .arg("-loci_cache")
                .arg(format!("-Wl,-rpath,{}", lib.display()))
                .arg("-lpthread"),
        );
        program
    });
    compile(
        "the header as C11",
        Command::new("cc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
            .args(["-fsyntax-only", "-x", "c"])
            .arg(include.join("oci_cache.h")),
    );
    compile(
        "the header as C++17",
        Command::new("g++")
            .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"])
            .args(["-fsyntax-only", "-I"])
            .arg(&include)
            .arg(root.join("tests/c/header_cpp.cpp")),
    );
    // -B: the Makefile does not know pull-static depends on liboci_cache.a.
    compile(
        "make -C examples-c",
        Command::new("make")
            .arg("-B")
            .arg("-C")
            .arg(root.join("examples-c"))
            .arg(format!("OCI_CACHE_LIB={}", lib.display()))
            .arg("CC=cc"),
    );
    let pull_shared = root.join("examples-c/pull-shared");
    let pull_static = root.join("examples-c/pull-static");

    let mut registry = Registry::start();
    let host = registry.host();
    let (app, other, index_digest) = push_fixtures(&host);
    let fake = FakeRegistry::start();
    let corrupt = fake_fixtures(&fake);
    let fixtures = Fixtures {
        app,
        other,
        index_digest,
        corrupt,
        read_only: Tmpfs::mount("ro,size=64k"),
        full: Tmpfs::mount("size=64k"),
    };
    let app = &fixtures.app;
    let dead = dead_host();
    eprintln!(
        "registries up, fixtures pushed at {:.1?}",
        started.elapsed()
    );

    // The example, cold: both link styles, with a store and without.
    let app_ref = PathBuf::from(format!("{host}/c/app:v1"));
    let dir = |name: &str| {
        let path = work.join(name);
        std::fs::create_dir(&path).unwrap();
        path
    };
    let (shared_dst, shared_store) = (dir("shared-dst"), work.join("shared-store"));
    let (static_dst, static_store) = (dir("static-dst"), work.join("static-store"));
    let bare_dst = dir("bare-dst");
    let ran = pull(&pull_shared, &[&app_ref, &shared_dst, &shared_store]);
    assert_pulled(&ran, app, "pull-shared, cold");
    assert_app_layers(&shared_dst, app);
    let ran = pull(&pull_static, &[&app_ref, &static_dst, &static_store]);
    assert_pulled(&ran, app, "pull-static, cold");
    assert_app_layers(&static_dst, app);
    let ran = pull(&pull_shared, &[&app_ref, &bare_dst]);
    assert_pulled(&ran, app, "pull-shared without a store");
    for program in [&pull_shared, &pull_static] {
        let ran = pull(program, &[Path::new("Not A Reference!"), &bare_dst]);
        assert!(
            ran.status.code() == Some(1)
                && ran.stdout.is_empty()
                && ran.stderr.contains("oci_fetch_image"),
            "{}: a bad reference should exit 1 naming oci_fetch_image: {}",
            program.display(),
            ran.describe()
        );
    }
    assert_app_layers(&bare_dst, app);

    // api_test.c, plainly, then under valgrind, each in its own directory.
    let fake_host = fake.host();
    let hosts = (host.as_str(), fake_host.as_str(), dead.as_str());
    let plain_tmp = dir("api-plain");
    let mut command = Command::new(&api_test);
    api_test_env(&mut command, &fixtures, hosts, &plain_tmp);
    let ran = run("api_test", &mut command, RUN_LIMIT);
    assert_api_test(&ran, &plain_tmp, &host, app, "api_test");

    // Under the sanitizers, which stop at the first error; leaks count too.
    let sanitized_tmp = dir("api-sanitized");
    let mut command = Command::new(&api_test_sanitized);
    api_test_env(&mut command, &fixtures, hosts, &sanitized_tmp);
    sanitizer_env(&mut command);
    let ran = run(
        "api_test under ASan and UBSan",
        &mut command,
        VALGRIND_LIMIT,
    );
    assert_api_test(
        &ran,
        &sanitized_tmp,
        &host,
        app,
        "api_test under ASan and UBSan",
    );

    let valgrind_tmp = dir("api-valgrind");
    let valgrind_log = work.join("valgrind.log");
    // The forked child leaks its cache's runtime on purpose (its threads did
    // not survive the fork), so valgrind, silent there, still makes the
    // child exit C_LEAK_EXIT: api_test.c accepts that code from the child
    // alone (OCI_TEST_LEAK_EXIT, which valgrind_command sets).
    let mut command = valgrind_command(&api_test, &valgrind_log);
    api_test_env(&mut command, &fixtures, hosts, &valgrind_tmp);
    let ran = run("api_test under valgrind", &mut command, VALGRIND_LIMIT);
    assert_valgrind_clean(&valgrind_log, &ran);
    assert_api_test(&ran, &valgrind_tmp, &host, app, "api_test under valgrind");

    // The options act: plainly, then under the sanitizers.
    run_options_test(
        &options_test,
        &fixtures,
        hosts,
        &dir("options-plain"),
        "options_test",
    );
    run_options_test(
        &options_test_sanitized,
        &fixtures,
        hosts,
        &dir("options-sanitized"),
        "options_test under ASan and UBSan",
    );

    // Last, the warm path with the registry gone: the store and dst suffice,
    // and the layer files are opened where they are, not written again.
    let inodes = |dst: &Path| -> Vec<u64> {
        files_under(dst)
            .iter()
            .map(|path| path.metadata().unwrap().ino())
            .collect()
    };
    let (shared_inodes, static_inodes) = (inodes(&shared_dst), inodes(&static_dst));
    registry.stop();
    let ran = pull(&pull_shared, &[&app_ref, &shared_dst, &shared_store]);
    assert_pulled(&ran, app, "pull-shared, warm, registry stopped");
    let ran = pull(&pull_static, &[&app_ref, &static_dst, &static_store]);
    assert_pulled(&ran, app, "pull-static, warm, registry stopped");
    assert_app_layers(&shared_dst, app);
    assert_app_layers(&static_dst, app);
    assert_eq!(
        inodes(&shared_dst),
        shared_inodes,
        "pull-shared rewrote layers"
    );
    assert_eq!(
        inodes(&static_dst),
        static_inodes,
        "pull-static rewrote layers"
    );
    eprintln!("c_api done in {:.1?}", started.elapsed());
}

/// Builds `tests/c/{name}.c` into `output` against the shared library, with
/// the extra compiler `flags` (the sanitizers, say).
fn build_c_test(name: &str, output: &Path, flags: &[&str]) {
    let root = manifest_dir();
    let lib = library_dir();
    compile(
        &format!("cc {name}.c {}", flags.join(" ")),
        Command::new("cc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
            .args(["-D_POSIX_C_SOURCE=200809L", "-g"])
            .args(flags)
            .arg("-I")
            .arg(root.join("include"))
            .arg(root.join(format!("tests/c/{name}.c")))
            .arg("-o")
            .arg(output)
            .arg("-L")
            .arg(&lib)
            .arg("-loci_cache")
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-lpthread"),
    );
}

/// view_test.c reads `c/view:v1` (the harness's view layers, gzip then
/// plain, and a layer with a symlink loop) through the C view: plainly,
/// with ASan and UBSan (leaks included), and under valgrind, each with its
/// own store and dst, and each must run and pass every check it planned.
#[test]
fn c_view_reads_an_image() {
    let work = tempfile::Builder::new()
        .prefix("oci-cache-c-view-")
        .tempdir()
        .expect("creating a temp dir");
    let work = work.path();
    let program = work.join("view_test");
    let sanitized = work.join("view_test_sanitized");
    build_c_test("view_test", &program, &[]);
    build_c_test("view_test", &sanitized, &C_SANITIZER_FLAGS);

    let registry = Registry::start();
    let mut layers = view_layers().into_iter();
    let (lower, upper) = (layers.next().unwrap(), layers.next().unwrap());
    let looped = vec![
        TarEntry::Symlink("loop-a", "loop-b"),
        TarEntry::Symlink("loop-b", "loop-a"),
    ];
    push_image(
        &registry.host(),
        "c/view",
        Some("v1"),
        vec![
            FixtureLayer::gzip(layer_tar(&lower)),
            FixtureLayer::plain(layer_tar(&upper)),
            FixtureLayer::gzip(layer_tar(&looped)),
        ],
        false,
        ("linux", host_arch(), None),
    );
    let reference = format!("{}/c/view:v1", registry.host());
    let tmp = |name: &str| {
        let dir = work.join(name);
        std::fs::create_dir(&dir).unwrap();
        dir
    };
    let judge = |ran: &Run, what: &str| {
        if let Err(problem) = c_plan_met(ran) {
            panic!("{what}: {problem}: {}", ran.describe());
        }
    };

    let mut command = Command::new(&program);
    command
        .env("OCI_TEST_REF", &reference)
        .env("OCI_TEST_TMP", tmp("plain"));
    judge(&run("view_test", &mut command, RUN_LIMIT), "view_test");

    let mut command = Command::new(&sanitized);
    command
        .env("OCI_TEST_REF", &reference)
        .env("OCI_TEST_TMP", tmp("sanitized"));
    sanitizer_env(&mut command);
    let what = "view_test under ASan and UBSan";
    judge(&run(what, &mut command, VALGRIND_LIMIT), what);

    let log = work.join("view-valgrind.log");
    let mut command = valgrind_command(&program, &log);
    command
        .env("OCI_TEST_REF", &reference)
        .env("OCI_TEST_TMP", tmp("valgrind"));
    let ran = run("view_test under valgrind", &mut command, VALGRIND_LIMIT);
    assert_valgrind_clean(&log, &ran);
    judge(&ran, "view_test under valgrind");

    // examples-c/cat.c (oci-cat) prints a file through a symlink, and
    // names the call that failed for what is not a regular file.
    let cat = work.join("oci-cat");
    let lib = library_dir();
    compile(
        "cc examples-c/cat.c",
        Command::new("cc")
            .args([
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-O2",
            ])
            .arg("-I")
            .arg(manifest_dir().join("include"))
            .arg(manifest_dir().join("examples-c/cat.c"))
            .arg("-o")
            .arg(&cat)
            .arg("-L")
            .arg(&lib)
            .arg("-loci_cache")
            .arg(format!("-Wl,-rpath,{}", lib.display())),
    );
    let dst = tmp("cat");
    let mut command = Command::new(&cat);
    command.arg(&reference).arg("/etc/rel").arg(&dst);
    let ran = run("oci-cat /etc/rel", &mut command, RUN_LIMIT);
    assert!(
        ran.status.success() && ran.stdout.as_bytes() == [7; 5000],
        "oci-cat /etc/rel should print libc.so's 5000 bytes of 7: {}",
        ran.describe()
    );
    // Without DST the layers go to a directory in $TMPDIR, deleted once the
    // view is open.
    let temp = tmp("cat-temp");
    let mut command = Command::new(&cat);
    command.arg(&reference).arg("/etc/rel").env("TMPDIR", &temp);
    let ran = run("oci-cat /etc/rel without DST", &mut command, RUN_LIMIT);
    assert!(
        ran.status.success() && ran.stdout.as_bytes() == [7; 5000],
        "oci-cat without DST should print the same bytes: {}",
        ran.describe()
    );
    let left: Vec<_> = std::fs::read_dir(&temp).unwrap().collect();
    assert!(left.is_empty(), "oci-cat left {left:?} in TMPDIR");
    let mut command = Command::new(&cat);
    command.arg(&reference).arg("/dev").arg(&dst);
    let ran = run("oci-cat /dev", &mut command, RUN_LIMIT);
    assert!(
        ran.status.code() == Some(1)
            && ran.stdout.is_empty()
            && ran.stderr.contains(
                "oci_view_open_file failed (-1): invalid argument: /dev is a directory, not a regular file"
            ),
        "oci-cat /dev should exit 1 naming oci_view_open_file: {}",
        ran.describe()
    );
}
