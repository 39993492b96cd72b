//! The oracle the image view is held to (issue 13): the standard view image
//! (harness `view_layers`), pushed to a real registry and unpacked by umoci,
//! gives the tree the OCI layer rules say. The view's own tests compare
//! their walk of the merged layers with this tree.

use harness::*;

#[test]
fn umoci_applies_every_rule_of_the_standard_view_image() {
    let registry = Registry::start();
    let layers = view_layers()
        .iter()
        .map(|layer| FixtureLayer::gzip(layer_tar(layer)))
        .collect();
    let platform = ("linux", host_arch(), None);
    push_image(
        &registry.host(),
        "view",
        Some("v1"),
        layers,
        false,
        platform,
    );
    let tree = unpacked_tree(&registry.host(), "view:v1");
    let node = |path: &str| {
        tree.get(path)
            .unwrap_or_else(|| panic!("{path} in {:#?}", tree.keys()))
    };
    let file = |path: &str, content: &[u8]| {
        let found = node(path);
        assert_eq!(found.kind, NodeKind::File, "{path}");
        assert_eq!(
            found.digest.as_deref(),
            Some(sha256(content).as_str()),
            "{path}"
        );
    };
    // Upper layers win; a hardlink has its target's content.
    file("/etc/os-release", b"ID=top\n");
    file("/etc/os-release-link", b"ID=top\n");
    file("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    // Whiteouts remove a file and a whole directory; their markers are gone.
    for gone in [
        "/removed",
        "/removed-dir",
        "/removed-dir/x",
        "/.wh.removed",
        "/opaque/low",
    ] {
        assert!(!tree.contains_key(gone), "{gone} is still there");
    }
    assert!(
        !tree.keys().any(|p| p.contains(".wh.")),
        "{:#?}",
        tree.keys()
    );
    // An opaque directory keeps only its own layer's content.
    let opaque: Vec<&String> = tree.keys().filter(|p| p.starts_with("/opaque/")).collect();
    assert_eq!(opaque, ["/opaque/mid"]);
    assert_eq!(node("/opaque/mid").mode, 0o640);
    // A directory replaced by a file and the reverse.
    file("/was-dir", b"now a file");
    assert!(!tree.contains_key("/was-dir/child"));
    assert_eq!(node("/was-file").kind, NodeKind::Dir);
    assert_eq!(node("/was-file").mode, 0o700);
    file("/was-file/inside", b"inside");
    // Links, devices, a FIFO, long and PAX names, owners and setuid.
    assert_eq!(node("/lib").target.as_deref(), Some("usr/lib"));
    assert_eq!(node("/etc/abs").target.as_deref(), Some("/etc/passwd"));
    assert_eq!(
        node("/etc/rel").target.as_deref(),
        Some("../usr/lib/libc.so")
    );
    assert_eq!(node("/dev/null").device, Some((1, 3)));
    assert_eq!(node("/dev/null").kind, NodeKind::CharDevice);
    assert_eq!(node("/dev/sda").device, Some((8, 0)));
    assert_eq!(node("/dev/fifo").kind, NodeKind::Fifo);
    file(&format!("/{VIEW_LONG_NAME}"), b"long name");
    file(
        "/pax/\u{e9}t\u{e9}-with-a-name-that-pax-carries",
        b"pax content",
    );
    let owned = node("/owned");
    assert_eq!((owned.uid, owned.gid, owned.mode), (1000, 100, 0o4755));
    file("/usr/lib/libc.so", &[7; 5000]);
}
