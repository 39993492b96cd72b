//! Builders: `oci_cache_options` for a cache, `oci_call_options` for one
//! call, and the `oci_cancel` token a call can be canceled with.

use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;
use std::time::Duration;

use super::{
    arg, arg_mut, boundary, clone_arc, free_arc, free_box, oci_status, out, str_arg,
    to_arc_const_ptr, to_boxed_mut_ptr, try_ref, Castable, Failure, Outcome, OwnershipArc,
    OwnershipBox,
};
use crate::cache::CacheOptions;
use crate::call::{CallOptions, CancelToken};
use crate::platform::Platform;
use crate::work::Progress;

/// Settings for `oci_cache_new`. A builder: every setting has a default and
/// a setter, so new settings never change the ABI. Use from one thread at a
/// time; the cache copies what it needs, so the options may be freed once
/// the cache exists.
pub struct oci_cache_options {
    pub(crate) options: CacheOptions,
    pub(crate) worker_threads: usize,
}

impl Castable for oci_cache_options {
    type Ownership = OwnershipBox;
}

impl oci_cache_options {
    /// Applies `change` if the options it leaves are valid
    /// (`CacheOptions::validate`, the one place the rules live); otherwise
    /// the options stay as they were and the setter fails.
    fn update(&mut self, change: impl FnOnce(CacheOptions) -> CacheOptions) -> Outcome<()> {
        let changed = change(self.options.clone());
        changed.validate()?;
        self.options = changed;
        Ok(())
    }
}

impl Default for oci_cache_options {
    fn default() -> Self {
        oci_cache_options {
            options: CacheOptions::default(),
            worker_threads: 2,
        }
    }
}

/// Makes options with every default: no store, the host's platform, 2
/// runtime worker threads, 3 layers fetched at once, and a time limit on
/// every network step (connect 30 s, TLS handshake 10 s, response headers
/// 30 s, stall 60 s: see `oci_cache_options_set_connect_timeout_ms` and
/// the setters after it).
#[no_mangle]
pub extern "C" fn oci_cache_options_new(options_out: *mut *mut oci_cache_options) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let slot = out(options_out, "options_out")?;
        *slot = to_boxed_mut_ptr(Default::default());
        Ok(())
    })
}

/// Keeps images in the OCI image layout at `dir`, created if missing, and
/// resolves references there before asking a registry. Unset: no local
/// store; references are still resolved and layers still extracted.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_store(
    options: *mut oci_cache_options,
    dir: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let dir = str_arg(dir, "dir")?.to_owned();
        arg_mut(options, "options")?.update(|o| o.store(dir))
    })
}

/// The platform picked from multi-platform images, `"os/arch[/variant]"`,
/// e.g. `"linux/arm64/v8"`. Default: the host's. A malformed platform gives
/// `OCI_E_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_platform(
    options: *mut oci_cache_options,
    platform: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let platform: Platform = str_arg(platform, "platform")?.parse()?;
        arg_mut(options, "options")?.update(|o| o.platform(platform))
    })
}

/// Reaches `host` (`"host[:port]"`) over plain HTTP. Loopback registries
/// are reached so too, unless a host CA certificate is set for them; other
/// hosts need HTTPS unless added here.
#[no_mangle]
pub extern "C" fn oci_cache_options_add_insecure_registry(
    options: *mut oci_cache_options,
    host: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let host = str_arg(host, "host")?.to_owned();
        arg_mut(options, "options")?.update(|o| o.insecure_registry(host))
    })
}

/// Presents `username` and `password` to `host` (`"host[:port]"` as in
/// references; Docker Hub is `"index.docker.io"`), overriding auth files.
#[no_mangle]
pub extern "C" fn oci_cache_options_add_credentials(
    options: *mut oci_cache_options,
    host: *const c_char,
    username: *const c_char,
    password: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let host = str_arg(host, "host")?.to_owned();
        let username = str_arg(username, "username")?.to_owned();
        let password = str_arg(password, "password")?.to_owned();
        arg_mut(options, "options")?.update(|o| o.credentials(host, username, password))
    })
}

/// Reads credentials from the docker/podman auth file at `path` only,
/// instead of looking in `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`, `$DOCKER_CONFIG/config.json`
/// and `~/.docker/config.json`.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_auth_file(
    options: *mut oci_cache_options,
    path: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let path = str_arg(path, "path")?.to_owned();
        arg_mut(options, "options")?.update(|o| o.auth_file(path))
    })
}

/// Trusts the CA certificates in the PEM file at `pem_path` for every registry.
#[no_mangle]
pub extern "C" fn oci_cache_options_add_ca_certificate(
    options: *mut oci_cache_options,
    pem_path: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let path = str_arg(pem_path, "pem_path")?.to_owned();
        arg_mut(options, "options")?.update(|o| o.ca_certificate(path))
    })
}

/// Trusts the CA certificates in the PEM file at `pem_path` for `host`
/// (`"host[:port]"`) only.
#[no_mangle]
pub extern "C" fn oci_cache_options_add_host_ca_certificate(
    options: *mut oci_cache_options,
    host: *const c_char,
    pem_path: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let host = str_arg(host, "host")?.to_owned();
        let path = str_arg(pem_path, "pem_path")?.to_owned();
        arg_mut(options, "options")?.update(|o| o.host_ca_certificate(host, path))
    })
}

/// Tries `mirror` (`"host[:port]"`, e.g. a pull-through cache) before
/// `registry` (Docker Hub is `"index.docker.io"`). Mirrors are tried in the
/// order added; one that is unreachable, answers 5xx or lacks the content
/// hands over to the next, and the registry itself comes last.
#[no_mangle]
pub extern "C" fn oci_cache_options_add_mirror(
    options: *mut oci_cache_options,
    registry: *const c_char,
    mirror: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let registry = str_arg(registry, "registry")?.to_owned();
        let mirror = str_arg(mirror, "mirror")?.to_owned();
        arg_mut(options, "options")?.update(|o| o.mirror(registry, mirror))
    })
}

/// Reads containerd-style host configuration (`dir/<registry>/hosts.toml`,
/// else `dir/_default/hosts.toml`): mirrors in file order with their
/// capabilities, `ca` and `skip_verify`, and the `server`'s scheme and TLS
/// settings. `override_path` is refused (`OCI_E_UNSUPPORTED` at first use).
#[no_mangle]
pub extern "C" fn oci_cache_options_set_hosts_dir(
    options: *mut oci_cache_options,
    dir: *const c_char,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let dir = str_arg(dir, "dir")?.to_owned();
        arg_mut(options, "options")?.update(|o| o.hosts_dir(dir))
    })
}

/// How many times a request is tried on connection trouble, 5xx or 429
/// (default 4, at least 1); also how many times an interrupted blob
/// download is resumed.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_attempts(
    options: *mut oci_cache_options,
    attempts: u32,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        arg_mut(options, "options")?.update(|o| o.attempts(attempts))
    })
}

/// Threads of the cache's internal runtime (default 2, at least 1). Blocking
/// work (decompression, hashing, disk writes) runs on separate threads.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_worker_threads(
    options: *mut oci_cache_options,
    threads: usize,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        if threads == 0 {
            return Err(Failure::invalid("worker threads must be at least 1"));
        }
        arg_mut(options, "options")?.worker_threads = threads;
        Ok(())
    })
}

/// Whether the store keeps the compressed layer blobs it downloads
/// (default true, a complete OCI layout). With false it keeps only
/// manifests and configs: less disk for users who need only the layer tars.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_keep_layer_blobs(
    options: *mut oci_cache_options,
    keep: bool,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        arg_mut(options, "options")?.update(|o| o.keep_layer_blobs(keep))
    })
}

/// The most bytes a layer may uncompress to (default: no limit); a layer
/// past it fails with `OCI_E_INVALID_CONTENT`. A guard against
/// decompression bombs.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_max_layer_size(
    options: *mut oci_cache_options,
    bytes: u64,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        arg_mut(options, "options")?.update(|o| o.max_layer_size(bytes))
    })
}

/// The free space, in bytes, that every layer tar and store blob write
/// leaves on its file system. Default (without this call): 5% of the file
/// system or 1 GiB, whichever is smaller; 0 turns the reserve off. A write
/// that would eat into it fails with `OCI_E_IO` naming the reserve and
/// leaves nothing behind, instead of filling the disk.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_free_space_reserve(
    options: *mut oci_cache_options,
    bytes: u64,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        arg_mut(options, "options")?.update(|o| o.free_space_reserve(bytes))
    })
}

/// How many layers `oci_extract_layers` and `oci_rootfs` fetch at once
/// (default 3, at least 1).
#[no_mangle]
pub extern "C" fn oci_cache_options_set_max_concurrent_layers(
    options: *mut oci_cache_options,
    layers: usize,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        arg_mut(options, "options")?.update(|o| o.max_concurrent_layers(layers))
    })
}

/// The size, in bytes, from which a layer blob is downloaded as parallel
/// ranges. Default: 4194304 (4 MiB); 0 turns ranged download off. The
/// blob comes as bounded ranges (`Range: bytes=a-b`, up to 32 MiB each)
/// over the range connections at once, from the host that answered the
/// first range, written at their offsets into the store's temp blob file,
/// which the single pass (blob hash, decompression, diff_id hash, write)
/// reads as its contiguous prefix grows; both digests cover every byte. A
/// range starts at most two ranges per connection ahead of what the pass
/// has read, so a pass slower than the network paces the download. A connection
/// cut inside a range is resumed for that range only (within the attempts).
/// A host that ignores `Range` or answers another range gets the blob asked
/// as one stream, and so does a cache without a store (without
/// `keep_layer_blobs` the temp file is removed at the end). Progress counts
/// the contiguous bytes.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_range_threshold(
    options: *mut oci_cache_options,
    bytes: u64,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        arg_mut(options, "options")?.update(|o| o.range_threshold(bytes))
    })
}

/// How many connections one ranged blob download uses at once (default 8,
/// at least 1; 1 turns ranged download off). Over every blob, no host gets
/// more than 8 range requests at once. See
/// `oci_cache_options_set_range_threshold`.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_range_connections(
    options: *mut oci_cache_options,
    connections: usize,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        arg_mut(options, "options")?.update(|o| o.range_connections(connections))
    })
}

/// How long setting up a TCP connection to a registry, mirror, token realm
/// or descriptor URL may take, in milliseconds. Default: 30000 (30 s, as
/// containerd's dialer); 0 turns the limit off. A connection not set up in
/// time fails that try with `OCI_E_TIMEOUT` naming the host, and is tried
/// once more (within the attempts). The TCP connect and the TLS
/// handshake are one step in the HTTP client: an HTTPS connection gets
/// connect + TLS handshake timeouts for both, and turning either off
/// leaves it unbounded.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_connect_timeout_ms(
    options: *mut oci_cache_options,
    ms: u64,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let options = arg_mut(options, "options")?;
        options.update(|o| o.connect_timeout(limit_ms(ms)))
    })
}

/// How long a TLS handshake may take, in milliseconds, on top of the
/// connect timeout (see `oci_cache_options_set_connect_timeout_ms`).
/// Default: 10000 (10 s); 0 turns the limit of HTTPS connection setup off.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_tls_handshake_timeout_ms(
    options: *mut oci_cache_options,
    ms: u64,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let options = arg_mut(options, "options")?;
        options.update(|o| o.tls_handshake_timeout(limit_ms(ms)))
    })
}

/// How long a request waits for the response headers once connected, in
/// milliseconds, token requests included. Default: 30000 (30 s); 0 turns
/// the limit off. The stall timeout, when shorter, bounds this wait too. A
/// server that does not answer in time fails the call with `OCI_E_TIMEOUT`
/// naming the host (not retried).
#[no_mangle]
pub extern "C" fn oci_cache_options_set_response_timeout_ms(
    options: *mut oci_cache_options,
    ms: u64,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let options = arg_mut(options, "options")?;
        options.update(|o| o.response_timeout(limit_ms(ms)))
    })
}

/// How long a response may go without a byte, in milliseconds: the wait
/// for headers and for each next part of a body, token answers included.
/// Default: 60000 (60 s); 0 turns the limit off. A call's own
/// `oci_call_options_set_stall_timeout_ms` overrides it for that call.
#[no_mangle]
pub extern "C" fn oci_cache_options_set_stall_timeout_ms(
    options: *mut oci_cache_options,
    ms: u64,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let options = arg_mut(options, "options")?;
        options.update(|o| o.stall_timeout(limit_ms(ms)))
    })
}

/// A time limit given in milliseconds, 0 meaning none.
fn limit_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Frees `options`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_cache_options_free(options: *mut oci_cache_options) {
    free_box(options)
}

/// A cancel token. Trigger it from any thread to make every call using it
/// return `OCI_E_CANCELED`; a triggered token stays triggered. Shareable
/// between threads and calls.
pub struct oci_cancel {
    pub(crate) token: CancelToken,
}

impl Castable for oci_cancel {
    type Ownership = OwnershipArc;
}

/// Makes an untriggered cancel token.
#[no_mangle]
pub extern "C" fn oci_cancel_new(cancel_out: *mut *mut oci_cancel) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let slot = out(cancel_out, "cancel_out")?;
        let cancel = oci_cancel {
            token: CancelToken::new(),
        };
        *slot = to_arc_const_ptr(cancel).cast_mut();
        Ok(())
    })
}

/// Triggers `cancel`. Safe from any thread, including while calls using it run.
#[no_mangle]
pub extern "C" fn oci_cancel_trigger(cancel: *mut oci_cancel) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        arg(cancel.cast_const(), "cancel")?.token.cancel();
        Ok(())
    })
}

/// Releases the caller's reference to `cancel`; call options holding it keep
/// it alive. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_cancel_free(cancel: *mut oci_cancel) {
    free_arc(cancel.cast_const())
}

/// Per-call settings, passed as `const oci_call_options *` to every long
/// call (NULL = none). A builder; use from one thread at a time while
/// building, then share read-only between calls.
#[derive(Default)]
pub struct oci_call_options {
    pub(crate) cancel: Option<Arc<oci_cancel>>,
    pub(crate) call: CallOptions,
    pub(crate) progress: Option<ProgressCallback>,
}

impl Castable for oci_call_options {
    type Ownership = OwnershipBox;
}

impl oci_call_options {
    /// The cancel token of the options behind `ptr`, if any (NULL = none).
    pub(crate) fn cancel_of(ptr: *const oci_call_options) -> Option<CancelToken> {
        Some(try_ref(ptr)?.cancel.as_ref()?.token.clone())
    }

    /// The Rust call options these stand for, cancel token included.
    pub(crate) fn call_options(&self) -> CallOptions {
        match &self.cancel {
            Some(cancel) => self.call.clone().cancel(cancel.token.clone()),
            None => self.call.clone(),
        }
    }

    fn update(&mut self, change: impl FnOnce(CallOptions) -> CallOptions) {
        self.call = change(std::mem::take(&mut self.call));
    }
}

/// A progress callback: called with `user_data`, the layer's index (bottom
/// first), its blob digest, the compressed bytes received so far (for a
/// blob downloaded in ranges, the contiguous bytes from its start) and the
/// blob's size, and the uncompressed bytes written so far and their total
/// (-1 while unknown: the total is given with a layer's last report). It
/// runs on the thread that made the call, never concurrently with itself;
/// returning non-zero cancels the call (`OCI_E_CANCELED`). It must not make
/// blocking oci_* calls: they fail with `OCI_E_INVALID_ARGUMENT`.
pub type oci_progress_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        layer: usize,
        digest: *const c_char,
        downloaded: u64,
        download_total: i64,
        written: u64,
        written_total: i64,
    ) -> i32,
>;

/// A C progress callback and its argument.
#[derive(Clone, Copy)]
pub(crate) struct ProgressCallback {
    function: unsafe extern "C" fn(*mut c_void, usize, *const c_char, u64, i64, u64, i64) -> i32,
    user_data: *mut c_void,
}

impl ProgressCallback {
    /// Calls the callback with `report`; false when it asks to stop.
    pub(crate) fn deliver(&self, report: &Progress) -> bool {
        let digest = CString::new(report.digest.as_str()).expect("digests have no NUL");
        let total = |n: Option<u64>| n.and_then(|n| i64::try_from(n).ok()).unwrap_or(-1);
        // SAFETY: the caller registered a function of this signature and
        // vouches for `user_data`; the digest string outlives the call.
        let verdict = unsafe {
            (self.function)(
                self.user_data,
                report.layer,
                digest.as_ptr(),
                report.downloaded,
                total(report.download_total),
                report.written,
                total(report.written_total),
            )
        };
        verdict == 0
    }
}

/// Makes call options with nothing set.
#[no_mangle]
pub extern "C" fn oci_call_options_new(options_out: *mut *mut oci_call_options) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let slot = out(options_out, "options_out")?;
        *slot = to_boxed_mut_ptr(Default::default());
        Ok(())
    })
}

/// Makes calls using `options` cancelable with `cancel` (NULL removes it).
/// The options hold their own reference to the token.
#[no_mangle]
pub extern "C" fn oci_call_options_set_cancel(
    options: *mut oci_call_options,
    cancel: *mut oci_cancel,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let options = arg_mut(options, "options")?;
        options.cancel = clone_arc(cancel.cast_const());
        Ok(())
    })
}

/// Fails calls using `options` with `OCI_E_TIMEOUT` once they have run for
/// `ms` milliseconds (0 removes the deadline).
#[no_mangle]
pub extern "C" fn oci_call_options_set_deadline_ms(
    options: *mut oci_call_options,
    ms: u64,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let options = arg_mut(options, "options")?;
        options.update(|call| call.deadline((ms > 0).then(|| Duration::from_millis(ms))));
        Ok(())
    })
}

/// Fails calls using `options` with `OCI_E_TIMEOUT` when a registry sends
/// nothing (no response, or no next bytes of one) for `ms` milliseconds,
/// instead of the cache's stall timeout (default 60 s, see
/// `oci_cache_options_set_stall_timeout_ms`); 0 turns the stall timeout off
/// for these calls. Unset: the cache's.
#[no_mangle]
pub extern "C" fn oci_call_options_set_stall_timeout_ms(
    options: *mut oci_call_options,
    ms: u64,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let options = arg_mut(options, "options")?;
        options.update(|call| call.stall_timeout(limit_ms(ms)));
        Ok(())
    })
}

/// Reports progress of calls using `options` to `callback` with
/// `user_data` (see `oci_progress_fn`); a NULL callback removes it.
#[no_mangle]
pub extern "C" fn oci_call_options_set_progress(
    options: *mut oci_call_options,
    callback: oci_progress_fn,
    user_data: *mut c_void,
) -> oci_status {
    boundary(std::ptr::null_mut(), || {
        let options = arg_mut(options, "options")?;
        options.progress = callback.map(|function| ProgressCallback {
            function,
            user_data,
        });
        Ok(())
    })
}

/// Frees `options`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn oci_call_options_free(options: *mut oci_call_options) {
    free_box(options)
}
