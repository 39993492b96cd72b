//! The options builder of an [`ImageCache`](super::ImageCache): every
//! setting, its default, and the registry configuration it feeds.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fs::Reserve;
use crate::platform::Platform;
use crate::registry::RegistryConfig;
// Named by doc links only.
#[cfg(doc)]
use {super::ImageCache, crate::call::CallOptions};

/// How an [`ImageCache`] is set up. Every setting has a default.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    pub(super) store: Option<PathBuf>,
    pub(super) platform: Option<Platform>,
    pub(super) registry: RegistryConfig,
    pub(super) max_concurrent_layers: usize,
    pub(super) keep_layer_blobs: bool,
    pub(super) max_layer_size: Option<u64>,
    pub(super) free_space_reserve: Reserve,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            store: None,
            platform: None,
            registry: RegistryConfig::default(),
            max_concurrent_layers: 3,
            keep_layer_blobs: true,
            max_layer_size: None,
            free_space_reserve: Reserve::default(),
        }
    }
}

impl CacheOptions {
    /// Checks the rules a setting has beyond its type: at least one layer
    /// at a time, at least one attempt, at least one range connection. The one place they live:
    /// [`ImageCache::new`] checks the whole, and each C setter checks the
    /// options it leaves, so C hears of a bad value from the setter itself.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_concurrent_layers == 0 {
            return Err(Error::invalid_argument(
                "max_concurrent_layers must be at least 1",
            ));
        }
        if self.registry.attempts == 0 {
            return Err(Error::invalid_argument("attempts must be at least 1"));
        }
        if self.registry.ranges.connections == 0 {
            return Err(Error::invalid_argument(
                "range_connections must be at least 1",
            ));
        }
        Ok(())
    }

    /// Defaults: no store, the host's platform, three layers at a time, and
    /// a time limit on every network step (see
    /// [`connect_timeout`](Self::connect_timeout) and the setters after it).
    pub fn new() -> CacheOptions {
        CacheOptions::default()
    }

    /// Keeps images in the OCI image layout at `dir` (created if missing),
    /// and resolves references there before asking a registry. Without a
    /// store, references are still resolved and layers still extracted.
    pub fn store(mut self, dir: impl Into<PathBuf>) -> CacheOptions {
        self.store = Some(dir.into());
        self
    }

    /// The platform picked from multi-platform images unless a call names
    /// another. Default: [`Platform::host`].
    pub fn platform(mut self, platform: Platform) -> CacheOptions {
        self.platform = Some(platform);
        self
    }

    /// Reaches `host` (`host[:port]`) over plain HTTP. Loopback registries
    /// are reached so too, unless a host CA certificate is set for them;
    /// every other host needs HTTPS unless listed here.
    pub fn insecure_registry(mut self, host: impl Into<String>) -> CacheOptions {
        self.registry.insecure_hosts.push(host.into());
        self
    }

    /// Presents `username` and `password` to `host` (`host[:port]`, as in
    /// references; Docker Hub is `index.docker.io`). Overrides auth files.
    pub fn credentials(
        mut self,
        host: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> CacheOptions {
        self.registry
            .credentials
            .explicit
            .push((host.into(), username.into(), password.into()));
        self
    }

    /// Reads credentials from this docker/podman auth file only, instead of
    /// looking in `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
    /// `$DOCKER_CONFIG/config.json` and `~/.docker/config.json`.
    pub fn auth_file(mut self, path: impl Into<PathBuf>) -> CacheOptions {
        self.registry.credentials.auth_file = Some(path.into());
        self
    }

    /// Tries `mirror` (`host[:port]`, e.g. a pull-through cache) before
    /// `registry` (`host[:port]` as references resolve it; Docker Hub is
    /// `index.docker.io`). Mirrors are tried in the order added; one that is
    /// unreachable, answers 5xx or lacks the content hands over to the next,
    /// and the registry comes last. The mirror is told the original registry
    /// with `?ns=`. What a mirror serves is verified like anything else.
    pub fn mirror(
        mut self,
        registry: impl Into<String>,
        mirror: impl Into<String>,
    ) -> CacheOptions {
        self.registry.mirrors.push((registry.into(), mirror.into()));
        self
    }

    /// Reads containerd-style host configuration from `dir` (a `certs.d`
    /// layout): `dir/<registry>/hosts.toml`, else `dir/_default/hosts.toml`.
    /// Its `[host."…"]` entries with the `pull` capability are mirrors tried
    /// in file order after those given with [`mirror`](Self::mirror) (only
    /// those with `resolve` for tags), with their `ca` and `skip_verify`;
    /// `server`'s scheme, `ca` and `skip_verify` apply to the registry itself.
    /// `override_path` is refused as unsupported.
    pub fn hosts_dir(mut self, dir: impl Into<PathBuf>) -> CacheOptions {
        self.registry.hosts_dir = Some(dir.into());
        self
    }

    /// How many times a request is tried when it fails on connection
    /// trouble, 5xx or 429 (default 4, at least 1), with exponential backoff
    /// and jitter between tries; also how many times an interrupted blob
    /// download is resumed.
    pub fn attempts(mut self, attempts: u32) -> CacheOptions {
        self.registry.attempts = attempts;
        self
    }

    /// Trusts the CA certificates in the PEM file at `path` for every registry.
    pub fn ca_certificate(mut self, path: impl Into<PathBuf>) -> CacheOptions {
        self.registry.ca_certificates.push(path.into());
        self
    }

    /// Trusts the CA certificates in the PEM file at `path` for `host`
    /// (`host[:port]`) only.
    pub fn host_ca_certificate(
        mut self,
        host: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> CacheOptions {
        self.registry
            .host_ca_certificates
            .push((host.into(), path.into()));
        self
    }

    /// How many layers [`ImageCache::extract_layers`] and
    /// [`ImageCache::rootfs`] fetch at once (default 3, at least 1).
    pub fn max_concurrent_layers(mut self, n: usize) -> CacheOptions {
        self.max_concurrent_layers = n;
        self
    }

    /// Whether the store keeps the compressed layer blobs it downloads
    /// (default true: a complete OCI layout). Without them it holds only
    /// manifests and configs, for users who need just the layer tars; a
    /// layer missing from `dst` is then downloaded again.
    pub fn keep_layer_blobs(mut self, keep: bool) -> CacheOptions {
        self.keep_layer_blobs = keep;
        self
    }

    /// The most bytes a layer may uncompress to (default: no limit). A
    /// layer that goes past it fails with [`ErrorKind::InvalidContent`](crate::ErrorKind::InvalidContent) and
    /// leaves nothing behind: a guard against decompression bombs.
    pub fn max_layer_size(mut self, bytes: u64) -> CacheOptions {
        self.max_layer_size = Some(bytes);
        self
    }

    /// The free space every layer tar and store blob write leaves on its
    /// file system, in bytes; 0 turns the reserve off. Default: 5% of the
    /// file system or 1 GiB, whichever is smaller. A write that would eat
    /// into it fails with [`ErrorKind::Io`](crate::ErrorKind::Io) naming the reserve and leaves
    /// nothing behind, instead of filling the disk. Free space is looked at
    /// before a file is created and every few MiB while it is written.
    pub fn free_space_reserve(mut self, bytes: u64) -> CacheOptions {
        self.free_space_reserve = Reserve(Some(bytes));
        self
    }

    /// The size from which a layer blob is downloaded as parallel ranges
    /// (default 4 MiB; 0 turns ranged download off): bounded ranges
    /// (`Range: bytes=a-b`, up to 32 MiB each) over
    /// [`range_connections`](Self::range_connections) connections at once,
    /// written at their offsets into the store's temp blob file, which the
    /// single pass (blob hash, decompression, diff_id hash, write) reads
    /// as its contiguous prefix grows. A range starts at most two ranges
    /// per connection ahead of what the pass has read, so a pass slower
    /// than the network paces the download. The blob comes from the host that
    /// answered its first range; a connection cut inside a range is
    /// resumed for that range only (within [`attempts`](Self::attempts)).
    /// A host that ignores `Range` or answers another range gets the blob
    /// asked as one stream, and so does a cache without a store (the temp
    /// file is needed; without [`keep_layer_blobs`](Self::keep_layer_blobs)
    /// it is removed at the end). Progress counts the contiguous bytes.
    pub fn range_threshold(mut self, bytes: u64) -> CacheOptions {
        self.registry.ranges.threshold = bytes;
        self
    }

    /// How many connections one ranged blob download uses at once (default
    /// 8, at least 1; 1 turns ranged download off). Over every blob, no
    /// host gets more than 8 range requests at once. See
    /// [`range_threshold`](Self::range_threshold).
    pub fn range_connections(mut self, connections: usize) -> CacheOptions {
        self.registry.ranges.connections = connections;
        self
    }

    /// How long setting up a TCP connection to a registry, mirror, token
    /// realm or descriptor URL may take (default 30 s, as containerd's
    /// dialer). A connection not set up in time fails the try with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) naming the host, and is tried once more (within
    /// [`attempts`](Self::attempts)). The TCP connect and
    /// the TLS handshake are one step in the HTTP client, so an HTTPS
    /// connection gets `connect_timeout + tls_handshake_timeout` for both.
    /// `None` turns the limit off (and with it that of HTTPS connections).
    pub fn connect_timeout(mut self, limit: impl Into<Option<Duration>>) -> CacheOptions {
        self.registry.timeouts.connect = limit.into();
        self
    }

    /// How long a TLS handshake may take (default 10 s), on top of the
    /// connect timeout (see [`connect_timeout`](Self::connect_timeout)).
    /// `None` turns the limit of HTTPS connection setup off.
    pub fn tls_handshake_timeout(mut self, limit: impl Into<Option<Duration>>) -> CacheOptions {
        self.registry.timeouts.tls_handshake = limit.into();
        self
    }

    /// How long a request waits for the response headers once connected
    /// (default 30 s), token requests included; the stall timeout, when
    /// shorter, bounds this wait too. Not retried: a server that does not
    /// answer fails the call with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) naming the host.
    /// `None` turns the limit off.
    pub fn response_timeout(mut self, limit: impl Into<Option<Duration>>) -> CacheOptions {
        self.registry.timeouts.response = limit.into();
        self
    }

    /// How long a response may go without a byte (default 60 s): the wait
    /// for headers and for each next part of a body, token answers
    /// included. [`CallOptions::stall_timeout`] overrides it per call.
    /// `None` turns the limit off.
    pub fn stall_timeout(mut self, limit: impl Into<Option<Duration>>) -> CacheOptions {
        self.registry.timeouts.stall = limit.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ImageCache;
    use crate::error::ErrorKind;

    #[test]
    fn zero_layers_at_a_time_attempts_or_range_connections_are_refused() {
        for (what, options) in [
            (
                "max_concurrent_layers",
                CacheOptions::new().max_concurrent_layers(0),
            ),
            ("attempts", CacheOptions::new().attempts(0)),
            (
                "range_connections",
                CacheOptions::new().range_connections(0),
            ),
        ] {
            let expected = format!("{what} must be at least 1");
            match options.validate() {
                Err(e) if e.kind() == ErrorKind::InvalidArgument => {
                    assert_eq!(e.message(), expected)
                }
                other => panic!("{what} 0: {other:?}"),
            }
            match ImageCache::new(options) {
                Err(e) if e.kind() == ErrorKind::InvalidArgument => {
                    assert_eq!(e.message(), expected)
                }
                Err(other) => panic!("ImageCache::new with {what} 0: {other:?}"),
                Ok(_) => panic!("ImageCache::new with {what} 0 succeeded"),
            }
        }
        assert!(CacheOptions::new()
            .max_concurrent_layers(1)
            .attempts(1)
            .validate()
            .is_ok());
    }
}
