//! Image references (`[registry/]repository[:tag][@digest]`) parsed by hand.
//! oci-spec's parser compiles a regex on first use whose Unicode `\w{0,127}`
//! makes it cost tens of milliseconds, more than a whole store-hit call:
//! ASCII references are checked here against the same grammar, anything
//! else (non-ASCII, or invalid, for oci-spec's error) goes to oci-spec.

use oci_client::Reference;

/// `reference` parsed, or oci-spec's error for it.
pub(crate) fn parse(reference: &str) -> Result<Reference, oci_client::ParseError> {
    match quick(reference) {
        Some(parsed) => Ok(parsed),
        None => reference.parse(),
    }
}

/// The reference if it is ASCII and valid in oci-spec's grammar; `None`
/// leaves the answer to oci-spec.
fn quick(s: &str) -> Option<Reference> {
    if !s.is_ascii() {
        return None;
    }
    // '@' occurs nowhere but before the digest; ':' after the last '/' can
    // only start the tag, since a name holds ':' only before a port and
    // the port is followed by '/'.
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (s, None),
    };
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if !rest[colon..].contains('/') => (&rest[..colon], Some(&rest[colon + 1..])),
        _ => (rest, None),
    };
    let tag_ok = tag.is_none_or(|tag| {
        let mut bytes = tag.bytes();
        tag.len() <= 128
            && bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    });
    if !tag_ok || !valid_name(name) || !digest.is_none_or(valid_digest) {
        return None;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > 255 {
        return None;
    }
    let (registry, repository) = (registry.to_owned(), repository);
    Some(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest").into()),
    })
}

/// `[domain/]component(/component)*`, the domain `label(.label)*[:port]`.
fn valid_name(name: &str) -> bool {
    let mut segments = name.split('/');
    let first = segments.next().unwrap_or_default();
    let rest_ok = segments.clone().all(valid_component);
    rest_ok && (valid_component(first) || (segments.next().is_some() && valid_domain(first)))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return false;
    }
    bytes
        .split(alnum)
        .all(|run| matches!(run, b"" | b"." | b"_" | b"__") || run.iter().all(|&b| b == b'-'))
}

/// `label(.label)*[:port]`, a label alphanumeric with inner `-`.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// `algorithm:hex`, as oci-spec takes it: sha256, sha384 or sha512 with
/// their lengths of lowercase or uppercase hex.
fn valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == length && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The registry and repository of a valid name, Docker Hub's defaults
/// applied as distribution's `splitDomain` (and oci-spec) do.
fn split_domain(name: &str) -> (&str, String) {
    let (domain, remainder) = match name.split_once('/') {
        Some((left, right)) if left.contains(['.', ':']) || left == "localhost" => (left, right),
        _ => ("docker.io", name),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io"
    } else {
        domain
    };
    match domain == "docker.io" && !remainder.contains('/') {
        true => (domain, format!("library/{remainder}")),
        false => (domain, remainder.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever `quick` answers, oci-spec answers the same.
    fn agrees(s: &str) {
        let full: Result<Reference, _> = s.parse();
        match quick(s) {
            Some(quick) => {
                let full = full.unwrap_or_else(|e| panic!("{s:?}: quick accepted, oci-spec: {e}"));
                assert_eq!(
                    (
                        quick.registry(),
                        quick.repository(),
                        quick.tag(),
                        quick.digest()
                    ),
                    (
                        full.registry(),
                        full.repository(),
                        full.tag(),
                        full.digest()
                    ),
                    "{s:?}"
                );
                assert_eq!(quick.whole(), full.whole(), "{s:?}");
            }
            None => assert!(!s.is_ascii() || full.is_err(), "{s:?}: valid, refused"),
        }
    }

    #[test]
    fn agrees_with_oci_spec() {
        let hex = "0123456789abcdef".repeat(4);
        let cases = [
            "busybox".to_owned(),
            "busybox:latest".into(),
            "library/busybox".into(),
            "docker.io/busybox".into(),
            "index.docker.io/busybox:1".into(),
            "index.docker.io/a/b".into(),
            "localhost/a".into(),
            "localhost:5000/a/b:t".into(),
            "localhost:5000".into(),
            "test.com:tag".into(),
            "test.com:5000".into(),
            "127.0.0.1:5917/t:1".into(),
            "[::1]:5000/a".into(),
            "foo/bar".into(),
            "foo_bar.com:8080".into(),
            "lowercase:Uppercase".into(),
            "Uppercase:tag".into(),
            "a/B".into(),
            "my-registry.example.com:443/team/app-x_y__z.w---q:v1.2-rc_3".into(),
            "a--b/c".into(),
            "a___b".into(),
            "a..b".into(),
            "a.-b".into(),
            "-a".into(),
            "a-".into(),
            "a/".into(),
            "/a".into(),
            "a//b".into(),
            "ex-.com/a".into(),
            "-ex.com/a".into(),
            "ex..com/a".into(),
            "ex.com:/a".into(),
            "ex.com:5x/a".into(),
            "ex.com:5000:1/a".into(),
            "a:".into(),
            "a:.t".into(),
            "a:-t".into(),
            "a:_t".into(),
            format!("a:{}", "t".repeat(128)),
            format!("a:{}", "t".repeat(129)),
            format!("a@sha256:{hex}"),
            format!("a:t@sha256:{hex}"),
            format!("ex.com:5/a/b:t@sha256:{}", hex.to_uppercase()),
            format!("a@sha256:{}", &hex[1..]),
            format!("a@sha512:{hex}{hex}"),
            format!("a@sha384:{hex}"),
            format!("a@md5:{hex}"),
            format!("a@sha256:{}g", &hex[1..]),
            format!("a@sha256:{hex}@x"),
            "a@".into(),
            "@sha256:x".into(),
            String::new(),
            format!("{}/a", "b".repeat(300)),
            format!("ex.com/{}", "b".repeat(255)),
            format!("ex.com/{}", "b".repeat(256)),
            "a:tä".into(),
            "ä".into(),
            "a b".into(),
            "a:t/b".into(),
        ];
        for case in &cases {
            agrees(case);
        }
    }

    /// Random strings over the grammar's characters, including every
    /// separator where it does and does not belong.
    #[test]
    fn agrees_with_oci_spec_on_random_strings() {
        let pieces = [
            "a",
            "z",
            "0",
            "9",
            "B",
            ".",
            "_",
            "__",
            "-",
            "--",
            ":",
            "/",
            "@",
            "5000",
            "ex.com",
            "localhost",
            "sha256:",
            "sha512:",
            "0123456789abcdef",
            "docker.io",
            "index.docker.io",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let length = next() % 12;
            let s: String = (0..length)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            agrees(&s);
        }
    }
}
