//! containerd-style registry host configuration: a directory holding
//! `<registry>/hosts.toml` files (`certs.d` layout) that list, per registry,
//! the hosts to pull from in order (mirrors first, the `server` last) with
//! their capabilities, API paths, CAs and TLS verification.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// One host to reach a registry through, from a `hosts.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostEntry {
    /// `host[:port]`.
    pub host: String,
    /// Where the registry API lives on the host: `/v2`, or the URL's own
    /// path (`override_path`), or the URL's path with `/v2` appended.
    pub api_root: String,
    /// Reached over plain HTTP (`http://` in the file).
    pub plain_http: bool,
    /// PEM files of CAs trusted for this host.
    pub ca: Vec<PathBuf>,
    /// Certificates are not verified at all (`skip_verify = true`).
    pub skip_verify: bool,
    /// May resolve tags (capability `resolve`); every entry may pull.
    pub resolve: bool,
}

/// What a `hosts.toml` says about one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RegistryHosts {
    /// Hosts tried before the registry itself, in file order.
    pub mirrors: Vec<HostEntry>,
    /// How the registry itself is reached, when the file says (`server`,
    /// or top-level `ca` / `skip_verify`).
    pub server: Option<HostEntry>,
}

#[derive(Deserialize)]
struct File {
    server: Option<String>,
    ca: Option<Paths>,
    skip_verify: Option<bool>,
    #[serde(default)]
    host: HashMap<String, Host>,
}

#[derive(Deserialize)]
struct Host {
    capabilities: Option<Vec<String>>,
    ca: Option<Paths>,
    skip_verify: Option<bool>,
    override_path: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Paths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl Paths {
    fn into_vec(self) -> Vec<PathBuf> {
        match self {
            Paths::One(path) => vec![path],
            Paths::Many(paths) => paths,
        }
    }
}

/// Reads `dir/<registry>/hosts.toml` (or `dir/_default/hosts.toml`), if
/// either exists. `registry` is `host[:port]` as references name it
/// (`docker.io` for Docker Hub).
pub(crate) fn load(dir: &Path, registry: &str) -> Result<Option<RegistryHosts>> {
    for name in [registry, "_default"] {
        let path = dir.join(name).join("hosts.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io_at("reading", &path, e)),
        };
        return parse(&text, &path).map(Some);
    }
    Ok(None)
}

pub(crate) fn parse(text: &str, path: &Path) -> Result<RegistryHosts> {
    let invalid = |why: String| Error::invalid_content(format!("{}: {why}", path.display()));
    let file: File = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
    // containerd keeps the file's order of [host."…"] tables; TOML tables
    // have none once parsed, so take it from where each key first appears.
    let mut hosts: Vec<(usize, String, Host)> = file
        .host
        .into_iter()
        .map(|(url, host)| (text.find(&url).unwrap_or(usize::MAX), url, host))
        .collect();
    hosts.sort_by_key(|(at, url, _)| (*at, url.clone()));

    let mut mirrors = Vec::new();
    for (_, url, host) in hosts {
        let capabilities = host
            .capabilities
            .unwrap_or_else(|| vec!["pull".into(), "resolve".into()]);
        if !capabilities.iter().any(|c| c == "pull") {
            continue;
        }
        let (host_port, plain_http, api_root) =
            split_url(&url, host.override_path.unwrap_or(false)).map_err(invalid)?;
        mirrors.push(HostEntry {
            host: host_port,
            api_root,
            plain_http,
            ca: host.ca.map(Paths::into_vec).unwrap_or_default(),
            skip_verify: host.skip_verify.unwrap_or(false),
            resolve: capabilities.iter().any(|c| c == "resolve"),
        });
    }
    let server = match (&file.server, &file.ca, file.skip_verify) {
        (None, None, None) => None,
        _ => {
            let (host, plain_http, api_root) = match &file.server {
                Some(url) => split_url(url, false).map_err(invalid)?,
                None => (String::new(), false, "/v2".to_owned()),
            };
            Some(HostEntry {
                host,
                api_root,
                plain_http,
                ca: file.ca.map(Paths::into_vec).unwrap_or_default(),
                skip_verify: file.skip_verify.unwrap_or(false),
                resolve: true,
            })
        }
    };
    Ok(RegistryHosts { mirrors, server })
}

/// `scheme://host[:port][/path]` → (`host[:port]`, plain HTTP?, API root).
/// As containerd has it, the API root is `/v2` under the URL's path unless
/// the path already ends in `/v2`, or `override_path` says the path is the
/// API root itself.
fn split_url(
    url: &str,
    override_path: bool,
) -> std::result::Result<(String, bool, String), String> {
    let (plain_http, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (false, rest)
    } else {
        (false, url)
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || path.contains(['?', '#']) {
        return Err(format!("{url:?} is not scheme://host[:port][/path]"));
    }
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    let api_root = if override_path || path.ends_with("/v2") {
        path
    } else {
        format!("{path}/v2")
    };
    Ok((host.to_owned(), plain_http, api_root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn reads_hosts_in_file_order_with_their_settings() {
        let text = r#"
server = "https://registry-1.docker.io"

[host."https://zeta.mirror:5000"]
  capabilities = ["pull", "resolve"]
  ca = "/etc/certs/zeta.pem"

[host."http://alpha.mirror"]
  capabilities = ["pull"]
  skip_verify = true

[host."https://push.only"]
  capabilities = ["push"]
"#;
        let hosts = parse(text, Path::new("hosts.toml")).unwrap();
        let names: Vec<&str> = hosts.mirrors.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(
            names,
            ["zeta.mirror:5000", "alpha.mirror"],
            "file order, pull hosts only"
        );
        assert_eq!(hosts.mirrors[0].ca, [PathBuf::from("/etc/certs/zeta.pem")]);
        assert!(hosts.mirrors[0].resolve && !hosts.mirrors[0].plain_http);
        assert!(
            !hosts.mirrors[1].resolve
                && hosts.mirrors[1].plain_http
                && hosts.mirrors[1].skip_verify
        );
        assert_eq!(hosts.server.unwrap().host, "registry-1.docker.io");
    }

    #[test]
    fn api_roots_follow_containerd() {
        let text = r#"
[host."https://a"]
[host."https://b/v2/"]
[host."https://c/mirror"]
[host."https://d/v1/api"]
  override_path = true
"#;
        let hosts = parse(text, Path::new("hosts.toml")).unwrap();
        let roots: Vec<&str> = hosts.mirrors.iter().map(|h| h.api_root.as_str()).collect();
        assert_eq!(roots, ["/v2", "/v2", "/mirror/v2", "/v1/api"]);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(matches!(
            parse("[host.\"https://m/?x=1\"]\n", Path::new("h")),
            Err(ref e) if e.kind() == ErrorKind::InvalidContent
        ));
        assert!(matches!(
            parse("server = [", Path::new("h")),
            Err(ref e) if e.kind() == ErrorKind::InvalidContent
        ));
    }

    #[test]
    fn looks_for_the_registry_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "r:5000").unwrap(), None);
        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "[host.\"http://d\"]\n",
        )
        .unwrap();
        assert_eq!(
            load(dir.path(), "r:5000").unwrap().unwrap().mirrors[0].host,
            "d"
        );
        std::fs::create_dir_all(dir.path().join("r:5000")).unwrap();
        std::fs::write(
            dir.path().join("r:5000/hosts.toml"),
            "[host.\"http://m\"]\n",
        )
        .unwrap();
        assert_eq!(
            load(dir.path(), "r:5000").unwrap().unwrap().mirrors[0].host,
            "m"
        );
    }
}
