//! The `oci-cache` binary against a real registry on 127.0.0.1 (and the
//! fake one for what a real registry will not serve): outputs, JSON shapes,
//! exit codes, configuration precedence and progress display. Every child
//! runs with HOME, XDG_* and OCI_CACHE_* inside a temp dir, under a timeout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_oci-cache");

/// A home for the children: nothing of the machine's is read or written.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("a temp dir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where the defaults put the store and the layer tars.
    fn store(&self) -> PathBuf {
        self.path().join("cache/oci-cache/store")
    }

    fn dst(&self) -> PathBuf {
        self.path().join("cache/oci-cache/layers")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args);
        self.environment(&mut command);
        command
    }

    /// Only this home's variables, and PATH.
    fn environment<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("XDG_CACHE_HOME", self.path().join("cache"))
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
    }

    fn run(&self, args: &[&str]) -> Run {
        run(
            &format!("oci-cache {}", args.join(" ")),
            &mut self.command(args),
            LIMIT,
        )
    }

    /// Runs a command that must succeed with nothing on stderr.
    fn ok(&self, args: &[&str]) -> String {
        let ran = self.run(args);
        assert!(
            ran.status.success() && ran.stderr.is_empty(),
            "oci-cache {args:?}: {}",
            ran.describe()
        );
        ran.stdout
    }
}

/// Asserts exit `code` and exactly one `oci-cache: ` line on stderr
/// starting with `start`, nothing on stdout.
fn assert_fails(ran: &Run, code: i32, start: &str) {
    let what = ran.describe();
    assert_eq!(ran.status.code(), Some(code), "{what}");
    assert_eq!(ran.stderr.lines().count(), 1, "{what}");
    assert!(ran.stderr.ends_with('\n'), "{what}");
    assert!(
        ran.stderr.starts_with(&format!("oci-cache: {start}")),
        "{what}"
    );
    assert!(!ran.stderr.contains("panicked"), "{what}");
    assert_eq!(ran.stdout, "", "{what}");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

/// Bytes and count of the regular files under `dir` (none if missing).
fn usage(dir: &Path) -> (u64, u64) {
    if !dir.exists() {
        return (0, 0);
    }
    let files = files_under(dir);
    (files.iter().map(|f| file_len(f)).sum(), files.len() as u64)
}

/// Two gzip layers of small files.
fn push_app(host: &str, repo: &str) -> PushedImage {
    push_image(
        host,
        repo,
        Some("v1"),
        vec![
            FixtureLayer::gzip(tar_layer(&[("etc/os", b"cli test\n")])),
            FixtureLayer::gzip(tar_layer(&[("app/run", b"#!/bin/sh\necho hi\n")])),
        ],
        false,
        ("linux", host_arch(), None),
    )
}

fn paths_text(dst: &Path, image: &PushedImage) -> String {
    image
        .diff_ids
        .iter()
        .map(|d| format!("{}\n", tar_path(dst, d).display()))
        .collect()
}

/// What `ls` gives as an image's size: the store blobs it reaches.
fn stored_size(image: &PushedImage) -> u64 {
    (image.manifest.len()
        + image.config.len()
        + image.layers.iter().map(|l| l.blob.len()).sum::<usize>()) as u64
}

#[test]
fn pull_then_maintain_the_store_with_exact_outputs() {
    let registry = Registry::start();
    let host = registry.host();
    let image = push_app(&host, "cli/app");
    let reference = format!("{host}/cli/app:v1");
    let home = Home::new();
    let (store, dst) = (home.store(), home.dst());

    // The defaults: store and dst under $XDG_CACHE_HOME, created.
    assert_eq!(home.ok(&["pull", &reference]), paths_text(&dst, &image));
    for (diff_id, layer) in image.diff_ids.iter().zip(&image.layers) {
        assert_bytes(
            &std::fs::read(tar_path(&dst, diff_id)).unwrap(),
            &layer.tar,
            "a layer tar",
        );
    }
    assert_eq!(
        home.ok(&["resolve", &reference]),
        format!("{}\n", image.manifest_digest)
    );
    assert_eq!(
        home.ok(&["ls"]),
        format!(
            "{reference}\t{}\t{}\n",
            image.manifest_digest,
            stored_size(&image)
        )
    );

    let (store_bytes, store_files) = usage(&store.join("blobs"));
    let tars: Vec<PathBuf> = image.diff_ids.iter().map(|d| tar_path(&dst, d)).collect();
    let tar_bytes: u64 = tars.iter().map(|t| file_len(t)).sum();
    let (index_bytes, index_files) = usage(&dst.join("tar-index"));
    assert_eq!((store_bytes, store_files), (stored_size(&image), 4));
    assert_eq!(index_files, 2);
    assert_eq!(
        home.ok(&["du"]),
        format!("store\t{store_bytes}\t4\ndst\t{tar_bytes}\t2\nindex\t{index_bytes}\t2\n")
    );
    assert_eq!(
        home.ok(&["verify"]),
        "checked 6 files and 2 indexes: 0 corrupt\n"
    );

    // A corrupt tar: verify says so and exits 1; --repair removes it.
    let bad = &tars[1];
    let mut perms = std::fs::metadata(bad).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(bad, perms).unwrap();
    std::fs::write(bad, b"not the layer").unwrap();
    let ran = home.run(&["verify"]);
    assert_eq!(ran.status.code(), Some(1), "{}", ran.describe());
    assert_eq!(
        ran.stdout,
        format!(
            "corrupt\t{}\nchecked 6 files and 2 indexes: 1 corrupt\n",
            bad.display()
        )
    );
    assert_eq!(
        home.ok(&["verify", "--repair"]),
        format!(
            "removed\t{}\nchecked 6 files and 2 indexes: 1 corrupt\n",
            bad.display()
        )
    );
    assert!(!bad.exists());
    assert_eq!(
        home.ok(&["verify"]),
        "checked 5 files and 2 indexes: 0 corrupt\n"
    );
    // The next pull puts it back.
    assert_eq!(home.ok(&["pull", &reference]), paths_text(&dst, &image));
    assert_bytes(
        &std::fs::read(bad).unwrap(),
        &image.layers[1].tar,
        "the re-pulled tar",
    );

    // rm drops the name; prune frees everything it reached.
    assert_eq!(home.ok(&["rm", &reference]), "");
    assert_eq!(home.ok(&["ls"]), "");
    let (index_bytes, _) = usage(&dst.join("tar-index"));
    let freed = store_bytes + tar_bytes + index_bytes;
    assert_eq!(
        home.ok(&["prune"]),
        format!("removed 8 files, {freed} bytes\n")
    );
    assert_eq!(home.ok(&["du"]), "store\t0\t0\ndst\t0\t0\nindex\t0\t0\n");
    assert_eq!(home.ok(&["prune"]), "removed 0 files, 0 bytes\n");
    let ran = home.run(&["rm", &reference]);
    assert_fails(&ran, 3, "not found: ");
}

#[test]
fn pull_without_a_store_and_offline_from_the_store() {
    let mut registry = Registry::start();
    let host = registry.host();
    let image = push_app(&host, "cli/offline");
    let reference = format!("{host}/cli/offline:v1");
    let home = Home::new();

    let bare = home.path().join("bare");
    let bare_text = bare.to_str().unwrap();
    assert_eq!(
        home.ok(&["--no-store", "--dst", bare_text, "pull", &reference]),
        paths_text(&bare, &image)
    );
    assert!(!home.store().exists(), "--no-store made a store");
    assert_fails(
        &home.run(&["--no-store", "ls"]),
        2,
        "invalid argument: list needs a store",
    );

    assert_eq!(
        home.ok(&["pull", &reference]),
        paths_text(&home.dst(), &image)
    );
    registry.stop();
    // From the store alone: the same dst, and a fresh one.
    assert_eq!(
        home.ok(&["pull", &reference]),
        paths_text(&home.dst(), &image)
    );
    let fresh = home.path().join("fresh");
    let fresh_text = fresh.to_str().unwrap();
    assert_eq!(
        home.ok(&["--dst", fresh_text, "pull", &reference]),
        paths_text(&fresh, &image)
    );
    for (diff_id, layer) in image.diff_ids.iter().zip(&image.layers) {
        assert_bytes(
            &std::fs::read(tar_path(&fresh, diff_id)).unwrap(),
            &layer.tar,
            "offline tar",
        );
    }
    // Without the store, nothing answers.
    let ran = home.run(&["--no-store", "--dst", fresh_text, "pull", &reference]);
    assert_fails(&ran, 8, "network: ");
}

#[test]
fn json_outputs_parse_field_by_field() {
    let registry = Registry::start();
    let host = registry.host();
    let image = push_app(&host, "cli/json");
    let reference = format!("{host}/cli/json:v1");
    let home = Home::new();
    let dst = home.dst();

    let out = home.ok(&["--json", "pull", &reference]);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let (done, progress) = events.split_last().expect("events");
    assert!(!progress.is_empty(), "no progress events: {out}");
    for event in progress {
        assert_eq!(event["event"], "progress");
        let layer = event["layer"].as_u64().unwrap() as usize;
        assert_eq!(event["digest"], image.layer_digests[layer]);
        assert_eq!(event["download_total"], image.layers[layer].blob.len());
        assert!(event["downloaded"].as_u64().unwrap() <= image.layers[layer].blob.len() as u64);
        assert!(event["written"].as_u64().unwrap() <= image.layers[layer].tar.len() as u64);
    }
    // Each layer's last report is the whole layer.
    for (index, layer) in image.layers.iter().enumerate() {
        let last = progress
            .iter()
            .rev()
            .find(|e| e["layer"] == index)
            .unwrap_or_else(|| panic!("no progress for layer {index}"));
        assert_eq!(last["downloaded"], layer.blob.len());
        assert_eq!(last["written"], layer.tar.len());
        assert_eq!(last["written_total"], layer.tar.len());
    }
    assert_eq!(done["event"], "done");
    assert_eq!(done["reference"], reference);
    assert_eq!(done["digest"], image.manifest_digest);
    let total: usize = image.layers.iter().map(|l| l.tar.len()).sum();
    assert_eq!(done["bytes"], total);
    assert!(done["seconds"].as_f64().unwrap() >= 0.0);
    let expected: Vec<Value> = image
        .diff_ids
        .iter()
        .zip(&image.layers)
        .map(|(d, l)| json!({"diff_id": d, "path": tar_path(&dst, d), "size": l.tar.len()}))
        .collect();
    assert_eq!(done["layers"], Value::Array(expected));

    let one = |args: &[&str]| -> Value {
        let out = home.ok(args);
        assert_eq!(out.lines().count(), 1, "{args:?}: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {out}: {e}"))
    };
    assert_eq!(
        one(&["--json", "resolve", &reference]),
        json!({"reference": reference, "digest": image.manifest_digest})
    );
    let manifest: Value = serde_json::from_slice(&image.manifest).unwrap();
    let config: Value = serde_json::from_slice(&image.config).unwrap();
    assert_eq!(
        one(&["inspect", &reference]),
        json!({"reference": reference, "digest": image.manifest_digest,
               "media_type": image.manifest_media_type, "manifest": manifest, "config": config})
    );
    assert_eq!(
        one(&["--json", "ls"]),
        json!([{"reference": reference, "digest": image.manifest_digest,
                "media_type": image.manifest_media_type, "size": stored_size(&image)}])
    );
    let (index_bytes, _) = usage(&dst.join("tar-index"));
    assert_eq!(
        one(&["--json", "du"]),
        json!({"store_bytes": stored_size(&image), "store_files": 4,
               "dst_bytes": total, "dst_files": 2,
               "index_bytes": index_bytes, "index_files": 2})
    );
    assert_eq!(
        one(&["--json", "verify"]),
        json!({"checked": 6, "corrupt": [], "indexes_checked": 2, "corrupt_indexes": [],
               "repaired": false})
    );
    assert_eq!(
        one(&["--json", "rm", &reference]),
        json!({"removed": reference})
    );
    let freed = stored_size(&image) + total as u64 + index_bytes;
    assert_eq!(
        one(&["--json", "prune"]),
        json!({"files": 8, "bytes": freed})
    );
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let home = Home::new();
    let auth = home.path().join("no-such-auth.json");
    let config = home.path().join("bad.toml");
    std::fs::write(&config, "store = \"/x\"\ncolour = \"red\"\n").unwrap();
    let mistyped = home.path().join("mistyped.toml");
    std::fs::write(&mistyped, "insecure-registry = \"one\"\n").unwrap();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--frobnicate".into(), "ls".into()],
            "unexpected argument '--frobnicate'".into(),
        ),
        (
            vec!["pull".into()],
            "the following required arguments".into(),
        ),
        (
            vec!["pull".into(), "Not A Reference!".into()],
            "invalid argument: reference".into(),
        ),
        (
            vec![
                "--platform".into(),
                "linux".into(),
                "pull".into(),
                "x/y:1".into(),
            ],
            "invalid argument: platform \"linux\"".into(),
        ),
        (
            vec![
                "--auth-file".into(),
                auth.display().to_string(),
                "pull".into(),
                "x/y:1".into(),
            ],
            "auth file ".into(),
        ),
        (
            vec!["--config".into(), config.display().to_string(), "ls".into()],
            format!("config file {}: unknown key \"colour\"", config.display()),
        ),
        (
            vec![
                "--config".into(),
                mistyped.display().to_string(),
                "ls".into(),
            ],
            "config file ".into(),
        ),
        (
            vec![
                "--config".into(),
                home.path().join("none.toml").display().to_string(),
                "ls".into(),
            ],
            "config file ".into(),
        ),
        (
            vec!["--deadline".into(), "soon".into(), "ls".into()],
            "--deadline \"soon\"".into(),
        ),
        (
            vec!["--mirror".into(), "nomirror".into(), "ls".into()],
            "--mirror \"nomirror\"".into(),
        ),
    ];
    for (args, start) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_fails(&home.run(&args), 2, &start);
    }
    // The config file named by the environment is read like --config's.
    let mut command = home.command(&["ls"]);
    command.env("OCI_CACHE_CONFIG", &config);
    let ran = run("oci-cache ls with OCI_CACHE_CONFIG", &mut command, LIMIT);
    assert_fails(
        &ran,
        2,
        &format!("config file {}: unknown key", config.display()),
    );
    // Help is complete and exits 0.
    let help = home.ok(&["--help"]);
    for text in [
        "Exit codes:",
        "OCI_CACHE_STORE",
        "config.toml",
        "11  timeout",
        "--insecure-registry",
    ] {
        assert!(help.contains(text), "--help lacks {text:?}: {help}");
    }
    let help = home.ok(&["pull", "--help"]);
    assert!(
        help.contains("Exit codes:") && help.contains("progress bar"),
        "{help}"
    );
}

#[test]
fn library_errors_exit_with_their_codes() {
    let registry = Registry::start();
    let host = registry.host();
    let home = Home::new();

    // Not found: 3.
    let ran = home.run(&["pull", &format!("{host}/cli/missing:v1")]);
    assert_fails(&ran, 3, "not found: ");

    // Digest mismatch: 6, a layer blob that is not what its digest says.
    let built = build_image(
        "unused",
        "cli/liar",
        vec![FixtureLayer::gzip(tar_layer(&[("a", b"a\n")]))],
        false,
        ("linux", host_arch(), None),
    );
    let fake = FakeRegistry::start();
    let wrong = gzip(&tar_layer(&[("a", b"b\n")]));
    fake.add_image(
        "cli/liar",
        "v1",
        &built.manifest,
        &built.config,
        vec![(built.layer_digests[0].clone(), wrong)],
    );
    let liar = format!("{}/cli/liar:v1", fake.host());
    assert_fails(
        &home.run(&["--no-store", "pull", &liar]),
        6,
        "digest mismatch: ",
    );

    // Unsupported: 5, a layer media type the library does not handle.
    let odd = build_image(
        "unused",
        "cli/odd",
        vec![FixtureLayer::with_type(
            "application/vnd.example.layer.v1.tar+lz4",
            tar_layer(&[("a", b"a\n")]),
            b"lz4 bytes".to_vec(),
        )],
        false,
        ("linux", host_arch(), None),
    );
    fake.add_image(
        "cli/odd",
        "v1",
        &odd.manifest,
        &odd.config,
        vec![(odd.layer_digests[0].clone(), b"lz4 bytes".to_vec())],
    );
    let ran = home.run(&["--no-store", "pull", &format!("{}/cli/odd:v1", fake.host())]);
    assert_fails(&ran, 5, "unsupported: ");

    // Invalid content: 7, a manifest that is not JSON.
    fake.add_image("cli/garbled", "v1", b"{not json", &built.config, vec![]);
    let ran = home.run(&[
        "--no-store",
        "pull",
        &format!("{}/cli/garbled:v1", fake.host()),
    ]);
    assert_fails(&ran, 7, "invalid content: ");

    // Io: 9, a dst that is a regular file.
    let file = home.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let ran = home.run(&["--dst", file.to_str().unwrap(), "du"]);
    assert_fails(&ran, 9, "io: ");

    // Unauthorized: 4.
    let locked = FakeRegistry::start();
    locked.add_image("cli/locked", "v1", &built.manifest, &built.config, vec![]);
    locked.require_basic_auth("user", "secret");
    let ran = home.run(&["pull", &format!("{}/cli/locked:v1", locked.host())]);
    assert_fails(&ran, 4, "unauthorized: ");

    // Timeout: 11, a deadline of 1ms against a manifest that never comes.
    let stalled = FakeRegistry::start();
    stalled.raw_then_stall("/v2/cli/slow/manifests/v1", b"HTTP/1.1 200 OK\r\n".to_vec());
    let slow = format!("{}/cli/slow:v1", stalled.host());
    let ran = home.run(&["--deadline", "1ms", "pull", &slow]);
    assert_fails(&ran, 11, "timeout: ");
    assert!(ran.stderr.contains("1ms deadline"), "{}", ran.describe());
    // The stall timeout is honoured too.
    let ran = home.run(&["--stall-timeout", "300ms", "pull", &slow]);
    assert_fails(&ran, 11, "timeout: ");

    // Canceled: 10, Ctrl-C (SIGINT) while the manifest stalls.
    let mut child = home
        .command(&["pull", &slow])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting oci-cache");
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id().to_string();
    let killed = run(
        "kill -INT",
        Command::new("kill").args(["-INT", &pid]),
        LIMIT,
    );
    assert!(killed.status.success(), "{}", killed.describe());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("oci-cache did not end on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(10), "{stderr}");
    assert!(
        stderr.starts_with("oci-cache: canceled: ") && stderr.lines().count() == 1,
        "{stderr}"
    );
}

#[test]
fn settings_come_from_flags_then_environment_then_the_config_file() {
    let registry = Registry::start();
    let host = registry.host();
    let image = push_app(&host, "cli/config");
    let reference = format!("{host}/cli/config:v1");
    let home = Home::new();
    let dir = |name: &str| home.path().join(name);
    std::fs::create_dir_all(dir("config/oci-cache")).unwrap();
    std::fs::write(
        dir("config/oci-cache/config.toml"),
        format!(
            "store = \"{}\"\ndst = \"{}\"\ninsecure-registry = [\"{host}\"]\nstall-timeout = \"30s\"\n",
            dir("file-store").display(),
            dir("file-dst").display()
        ),
    )
    .unwrap();
    assert_eq!(
        home.ok(&["pull", &reference]),
        paths_text(&dir("file-dst"), &image)
    );
    assert!(dir("file-store/index.json").exists());

    let mut command = home.command(&["pull", &reference]);
    command.env("OCI_CACHE_DST", dir("env-dst"));
    let ran = run("pull with OCI_CACHE_DST", &mut command, LIMIT);
    assert_eq!(
        ran.stdout,
        paths_text(&dir("env-dst"), &image),
        "{}",
        ran.describe()
    );

    let flag = dir("flag-dst");
    let mut command = home.command(&["--dst", flag.to_str().unwrap(), "pull", &reference]);
    command.env("OCI_CACHE_DST", dir("env-dst"));
    let ran = run("pull with --dst", &mut command, LIMIT);
    assert_eq!(ran.stdout, paths_text(&flag, &image), "{}", ran.describe());
    assert!(!home.store().exists(), "the default store was used");
}

#[test]
fn cat_and_ls_files_read_through_the_view() {
    let registry = Registry::start();
    let host = registry.host();
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str,
                   kind: tar::EntryType,
                   mode: u32,
                   ids: (u64, u64),
                   data: &[u8],
                   link: Option<&str>| {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(ids.0);
        header.set_gid(ids.1);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        builder.append_data(&mut header, path, data).unwrap();
    };
    add("etc/", tar::EntryType::Directory, 0o755, (0, 0), b"", None);
    add(
        "etc/motd",
        tar::EntryType::Regular,
        0o644,
        (0, 0),
        b"hello from the view\n",
        None,
    );
    add(
        "etc/greeting",
        tar::EntryType::Symlink,
        0o777,
        (0, 0),
        b"",
        Some("motd"),
    );
    add("bin/", tar::EntryType::Directory, 0o755, (0, 0), b"", None);
    add(
        "bin/tool",
        tar::EntryType::Regular,
        0o4755,
        (1000, 50),
        b"#!/bin/sh\n",
        None,
    );
    let lower = builder.into_inner().unwrap();
    let upper = tar_layer(&[("etc/motd", b"overridden\n")]);
    push_image(
        &host,
        "cli/view",
        Some("v1"),
        vec![FixtureLayer::gzip(lower), FixtureLayer::gzip(upper)],
        false,
        ("linux", host_arch(), None),
    );
    let reference = format!("{host}/cli/view:v1");
    let home = Home::new();

    assert_eq!(
        home.ok(&["cat", &reference, "/etc/greeting"]),
        "overridden\n"
    );
    // motd from the upper layer (tar_layer's 0644 regular files), over the lower's.
    assert_eq!(
        home.ok(&["ls-files", &reference, "/etc"]),
        "lrwxrwxrwx 0:0 4 greeting -> motd\n-rw-r--r-- 0:0 11 motd\n"
    );
    assert_eq!(
        home.ok(&["ls-files", &reference]),
        "drwxr-xr-x 0:0 0 bin\ndrwxr-xr-x 0:0 0 etc\n"
    );
    assert_eq!(
        home.ok(&["ls-files", "-R", &reference, "/bin"]),
        "-rwsr-xr-x 1000:50 10 /bin/tool\n"
    );
    assert_fails(
        &home.run(&["cat", &reference, "/etc/none"]),
        3,
        "not found: ",
    );
}

/// `script` gives the child a pseudo-terminal: bars and a summary there,
/// none without one.
#[test]
fn pull_shows_bars_on_a_terminal_only() {
    let script = require_tool("script", "apt-get install bsdutils");
    let registry = Registry::start();
    let host = registry.host();
    let image = push_noise_image(&host, "cli/bars", &[(1, 3 << 20), (2, 2 << 20)]);
    let reference = format!("{host}/cli/bars:v1");
    let home = Home::new();

    let quiet = home.path().join("quiet");
    let ran = home.run(&["--dst", quiet.to_str().unwrap(), "pull", &reference]);
    assert!(ran.status.success(), "{}", ran.describe());
    assert_eq!(ran.stderr, "");
    assert_eq!(ran.stdout, paths_text(&quiet, &image));

    let shown = home.path().join("shown");
    let line = format!("{BIN} --dst {} pull {reference}", shown.display());
    let mut command = Command::new(script);
    command.args(["-qec", &line, "/dev/null"]);
    let ran = run(
        "oci-cache pull on a pty",
        home.environment(&mut command),
        LIMIT,
    );
    assert!(ran.status.success(), "{}", ran.describe());
    // script merges the child's stdout and stderr into its own stdout.
    let text = ran.stdout.replace('\r', "\n");
    for diff_id in &image.diff_ids {
        let path = tar_path(&shown, diff_id).display().to_string();
        assert!(text.contains(&path), "no {path} in {text:?}");
    }
    assert!(text.contains("/s"), "no rate in {text:?}");
    assert!(
        text.contains("3.00 MiB/3.00 MiB"),
        "no byte counts in {text:?}"
    );
    let total: usize = image.layers.iter().map(|l| l.tar.len()).sum();
    let summary = format!("{reference}: 2 layers, {total} bytes in ");
    assert!(text.contains(&summary), "no {summary:?} in {text:?}");
}
