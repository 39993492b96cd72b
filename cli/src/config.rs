//! The settings a command runs with: flags and environment (already merged
//! by clap) over the config file over the defaults, checked before any
//! library call so that bad input is a usage error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_cache::{CacheOptions, CallOptions, Platform};

use crate::args::Global;
use crate::output::Failure;

/// Everything a command needs besides its own arguments.
pub struct Settings {
    pub dst: PathBuf,
    pub cache: CacheOptions,
    pub platform: Option<Platform>,
    pub deadline: Option<Duration>,
    pub json: bool,
}

/// The config file's keys: the long flags that take a value.
const STRING_KEYS: &[&str] = &[
    "store",
    "dst",
    "auth-file",
    "hosts-dir",
    "ca",
    "platform",
    "deadline",
    "stall-timeout",
];
const LIST_KEYS: &[&str] = &["insecure-registry", "mirror"];

impl Settings {
    pub fn resolve(mut global: Global) -> Result<Settings, Failure> {
        let file = config_file(&global)?;
        let path = |flag: &mut Option<PathBuf>, key: &str| {
            flag.take().or_else(|| file.string(key).map(PathBuf::from))
        };
        let store = path(&mut global.store, "store");
        let dst = path(&mut global.dst, "dst");
        let auth_file = path(&mut global.auth_file, "auth-file");
        let hosts_dir = path(&mut global.hosts_dir, "hosts-dir");
        let ca = path(&mut global.ca, "ca");
        let text = |flag: Option<String>, key: &str| flag.or_else(|| file.string(key));
        let platform = text(global.platform, "platform")
            .map(|p| p.parse::<Platform>().map_err(Failure::usage_of))
            .transpose()?;
        let deadline = text(global.deadline, "deadline")
            .map(|d| duration("--deadline", &d))
            .transpose()?;
        let stall = text(global.stall_timeout, "stall-timeout")
            .map(|d| duration("--stall-timeout", &d))
            .transpose()?;
        let list = |flag: Vec<String>, key: &str| {
            if flag.is_empty() {
                file.list(key)
            } else {
                flag
            }
        };
        let insecure = list(global.insecure_registry, "insecure-registry");
        let mirrors = list(global.mirror, "mirror");

        let cache_dir = default_cache_dir()?;
        let store = if global.no_store {
            None
        } else {
            Some(store.unwrap_or_else(|| cache_dir.join("store")))
        };
        let dst = dst.unwrap_or_else(|| cache_dir.join("layers"));

        let mut cache = CacheOptions::new();
        if let Some(store) = &store {
            cache = cache.store(store);
        }
        if let Some(platform) = &platform {
            cache = cache.platform(platform.clone());
        }
        if let Some(file) = auth_file {
            readable("auth file", &file)?;
            cache = cache.auth_file(file);
        }
        if let Some(dir) = hosts_dir {
            cache = cache.hosts_dir(dir);
        }
        if let Some(file) = ca {
            readable("CA file", &file)?;
            cache = cache.ca_certificate(file);
        }
        for host in insecure {
            cache = cache.insecure_registry(host);
        }
        for mirror in mirrors {
            let Some((registry, host)) = mirror.split_once('=') else {
                return Err(Failure::usage(format!(
                    "--mirror {mirror:?} is not REGISTRY=MIRROR"
                )));
            };
            cache = cache.mirror(registry, host);
        }
        if let Some(stall) = stall {
            cache = cache.stall_timeout((!stall.is_zero()).then_some(stall));
        }
        Ok(Settings {
            dst,
            cache,
            platform,
            deadline,
            json: global.json,
        })
    }

    /// The call options of one command: its deadline, and a cancel token.
    pub fn call_options(&self, cancel: oci_cache::CancelToken) -> CallOptions {
        CallOptions::new().deadline(self.deadline).cancel(cancel)
    }

    /// dst, created if missing.
    pub fn dst(&self) -> Result<&Path, Failure> {
        std::fs::create_dir_all(&self.dst).map_err(|e| {
            Failure::from(oci_cache::Error::io(format!(
                "creating {}: {e}",
                self.dst.display()
            )))
        })?;
        Ok(&self.dst)
    }
}

/// `$XDG_CACHE_HOME/oci-cache`, else `$HOME/.cache/oci-cache`: one rule for
/// every user, root included, so a root shell sees what root's runtime
/// configured only through flags, environment or config, never by surprise.
fn default_cache_dir() -> Result<PathBuf, Failure> {
    base_dir("XDG_CACHE_HOME", ".cache").map(|dir| dir.join("oci-cache"))
}

fn base_dir(xdg: &str, under_home: &str) -> Result<PathBuf, Failure> {
    let set = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = set(xdg).filter(|d| d.is_absolute()) {
        return Ok(dir);
    }
    set("HOME")
        .map(|home| home.join(under_home))
        .ok_or_else(|| {
            Failure::usage(format!(
                "neither ${xdg} nor $HOME is set: name the directories with flags"
            ))
        })
}

fn duration(flag: &str, text: &str) -> Result<Duration, Failure> {
    humantime::parse_duration(text).map_err(|e| {
        Failure::usage(format!(
            "{flag} {text:?} is not a duration such as 30s: {e}"
        ))
    })
}

fn readable(what: &str, path: &Path) -> Result<(), Failure> {
    std::fs::File::open(path)
        .and_then(|f| f.metadata())
        .and_then(|m| {
            if m.is_dir() {
                Err(std::io::Error::other("is a directory"))
            } else {
                Ok(())
            }
        })
        .map_err(|e| Failure::usage(format!("{what} {}: {e}", path.display())))
}

/// The config file's values, checked key by key.
#[derive(Default)]
struct ConfigFile {
    table: toml::Table,
}

fn config_file(global: &Global) -> Result<ConfigFile, Failure> {
    // Named by flag or $OCI_CACHE_CONFIG (clap merged them): must exist.
    let (path, required) = match &global.config {
        Some(path) => (path.clone(), true),
        None => match base_dir("XDG_CONFIG_HOME", ".config") {
            Ok(dir) => (dir.join("oci-cache/config.toml"), false),
            Err(_) => return Ok(ConfigFile::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConfigFile::default())
        }
        Err(e) => {
            return Err(Failure::usage(format!(
                "config file {}: {e}",
                path.display()
            )))
        }
    };
    let bad = |what: String| Failure::usage(format!("config file {}: {what}", path.display()));
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.message().trim().replace('\n', " ")))?;
    for (key, value) in &table {
        let fits = if STRING_KEYS.contains(&key.as_str()) {
            value.is_str()
        } else if LIST_KEYS.contains(&key.as_str()) {
            value
                .as_array()
                .is_some_and(|items| items.iter().all(toml::Value::is_str))
        } else {
            return Err(bad(format!("unknown key {key:?}")));
        };
        if !fits {
            let wanted = if STRING_KEYS.contains(&key.as_str()) {
                "a string"
            } else {
                "an array of strings"
            };
            return Err(bad(format!("{key} must be {wanted}")));
        }
    }
    Ok(ConfigFile { table })
}

impl ConfigFile {
    fn string(&self, key: &str) -> Option<String> {
        self.table.get(key)?.as_str().map(str::to_owned)
    }

    fn list(&self, key: &str) -> Vec<String> {
        let items = self.table.get(key).and_then(toml::Value::as_array);
        items
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}
