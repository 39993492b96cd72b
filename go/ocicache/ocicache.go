// This file owns the package documentation and the Cache handle: its
// Options (and the one table that takes each field to its C setter), Open,
// Close and Resolve. How one call's context becomes the library's call
// options is in call.go, CallOption and progress reports in progress.go,
// and how the library is linked in link_*.go.

// Package ocicache is the Go binding of oci-cache, a library that turns an
// OCI image reference into verified, uncompressed layer tar files and hands
// them out as open, read-only files.
//
// A Cache resolves references against an optional local OCI image layout
// (Options.Store) first and the registry second. FetchImage gets an image's
// manifest and config; RootFS, ExtractLayers and ExtractLayer put its layers
// at DST/sha256/<hex of diff_id> and return them as *os.File; FetchLayer
// streams one layer. View reads an image's files without unpacking it: an
// io/fs file system over the layer tars, merged as the OCI image spec says.
//
//	cache, err := ocicache.Open(ocicache.Options{Store: "/var/lib/images"})
//	if err != nil { ... }
//	defer cache.Close()
//	img, err := cache.FetchImage(ctx, "registry.example/app:1.4", "")
//	if err != nil { ... }
//	defer img.Close()
//	files, err := cache.RootFS(ctx, img, "/var/lib/layers")
//	// files[i] is img.Layers[i]; the caller closes them.
//	view, err := cache.View(ctx, img, "/var/lib/layers")
//	if err != nil { ... }
//	defer view.Close()
//	osRelease, err := view.ReadFile("etc/os-release")
//
// # Linking
//
// By default the package links the static library of the source tree it
// lives in, target/release/liboci_cache.a (built by `make lib` at the
// repository root), with the header from include/: programs and tests need
// no LD_LIBRARY_PATH and no liboci_cache.so at run time. See link_static.go.
//
// To link an installed copy instead (`make install PREFIX=...`), build with
// the ocicache_pkgconfig tag, which replaces those flags by
// `#cgo pkg-config: oci-cache` (link_pkgconfig.go):
//
//	PKG_CONFIG_PATH=PREFIX/lib/pkgconfig go build -tags ocicache_pkgconfig ./...
//
// This links liboci_cache.so, which the dynamic loader must then find (a
// default library directory, or LD_LIBRARY_PATH). The tree's own
// target/release/oci-cache.pc, written by `make lib`, works the same way.
//
// # Concurrency
//
// A Cache and an Image may be used from any number of goroutines at once.
// Close waits for the calls in flight on the handle, then releases it; calls
// made after Close fail with an error matching both ErrClosed and
// ErrInvalidArgument. A reader from FetchLayer is for one goroutine at a
// time, like any io.Reader.
//
// # Cancellation, deadlines and timeouts
//
// Every blocking call takes a context. Canceling it makes the call return
// promptly with an error matching ErrCanceled and context.Canceled. A
// context already done makes the call fail the same way without calling
// the library.
//
// A context's deadline is also handed to the library as the call's own
// deadline (the time left, rounded up to a millisecond), which the library
// enforces itself. A call ended by its context's deadline returns an error
// matching context.DeadlineExceeded, ErrTimeout and ErrCanceled, whichever
// of the library's deadline and the cancellation came first.
//
// Every network step has a time limit by default (see Options.ConnectTimeout,
// TLSHandshakeTimeout, ResponseTimeout and StallTimeout): a registry that
// accepts connections and never answers fails a call with an error matching
// ErrTimeout only, naming the host and the step, within 30 s.
//
// FetchLayer's reader checks its context between reads only (see
// FetchLayer).
//
// # Progress
//
// RootFS, ExtractLayers and ExtractLayer take CallOptions after their
// arguments; WithProgress gives one a function that each layer's download
// and extraction is reported to, and which can stop the call. See
// WithProgress.
package ocicache

/*
#include <stdlib.h>
#include "oci_cache.h"
*/
import "C"

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// Version reports the version of the linked library, "MAJOR.MINOR.PATCH".
func Version() string {
	return C.GoString(C.oci_version())
}

// NoLimit, set in an Options field that documents it (a time limit or the
// free-space reserve), turns that limit off. It is an untyped constant, so
// it fits both time.Duration and byte-count fields.
const NoLimit = -1

// Options configures a Cache. The zero value of every field means the
// library's default.
type Options struct {
	// Store is the directory of the OCI image layout that keeps fetched
	// images and is searched before any registry. Created if missing.
	// Empty: no local store (layers are still extracted).
	Store string
	// Platform, "os/arch[/variant]" such as "linux/arm64/v8", picks the
	// manifest of multi-platform images. Empty: the host's.
	Platform string
	// InsecureRegistries lists "host[:port]" registries reached over plain
	// HTTP. Loopback registries are too, unless HostCACertificates has an
	// entry for them.
	InsecureRegistries []string
	// WorkerThreads is the number of threads of the cache's internal
	// runtime. Zero: 2.
	WorkerThreads int
	// MaxConcurrentLayers bounds how many layers RootFS and ExtractLayers
	// fetch at once. Zero: 3.
	MaxConcurrentLayers int
	// DropLayerBlobs keeps the store to manifests and configs: the
	// compressed layer blobs are not kept, for users who need only the
	// layer tars. False: the store is a complete OCI image layout.
	DropLayerBlobs bool
	// MaxLayerSize is the most bytes a layer may uncompress to; a layer
	// past it fails with ErrInvalidContent. Zero: no limit.
	MaxLayerSize int64

	// FreeSpaceReserve is the free space, in bytes, that every layer tar
	// and store blob write leaves on its file system; a write that would
	// eat into it fails with ErrIO naming the reserve, leaving nothing
	// behind. Zero: the default, 5% of the file system or 1 GiB, whichever
	// is smaller. NoLimit (or any negative value): no reserve.
	FreeSpaceReserve int64

	// Credentials are presented to their registries, overriding any auth
	// file. Empty: only auth files (see AuthFile).
	Credentials []Credential
	// AuthFile is the docker/podman auth file (auth.json, config.json) to
	// read credentials from, instead of looking in $REGISTRY_AUTH_FILE,
	// $XDG_RUNTIME_DIR/containers/auth.json, $DOCKER_CONFIG/config.json and
	// ~/.docker/config.json.
	AuthFile string
	// CACertificates are PEM files of CA certificates trusted for every
	// registry, besides the system's.
	CACertificates []string
	// HostCACertificates are PEM files of CA certificates trusted for one
	// registry each. A slice rather than a map: a host may need several
	// files, and a fixed order makes the first failure reported the same
	// on every run.
	HostCACertificates []HostCACertificate
	// ConnectTimeout bounds setting up a TCP connection to a registry,
	// mirror, token realm or descriptor URL; a connection not set up in
	// time fails that try with an error matching ErrTimeout, and is tried
	// once more (within Attempts). The TCP connect and the TLS handshake are one
	// step in the HTTP client: an HTTPS connection gets ConnectTimeout +
	// TLSHandshakeTimeout for both, and turning either off leaves it
	// unbounded. Zero: 30 s. NoLimit (any negative value): off. Every
	// timeout is rounded up to whole milliseconds.
	ConnectTimeout time.Duration
	// TLSHandshakeTimeout bounds a TLS handshake, on top of ConnectTimeout.
	// Zero: 10 s. NoLimit: off.
	TLSHandshakeTimeout time.Duration
	// ResponseTimeout bounds the wait for a response's headers once
	// connected, token requests included; a server that does not answer in
	// time fails the call with an error matching ErrTimeout (not retried).
	// StallTimeout, when shorter, bounds this wait too. Zero: 30 s.
	// NoLimit: off.
	ResponseTimeout time.Duration
	// StallTimeout fails a call with an error matching ErrTimeout when a
	// registry sends nothing (no response, or no next bytes of one) for
	// this long. Zero: 60 s. NoLimit: off; a call then waits for a body
	// as long as its context lets it.
	StallTimeout time.Duration
	// Mirrors are tried, in order, before the registry they stand for:
	// one that is unreachable, answers 5xx or lacks the content hands over
	// to the next, and the registry comes last.
	Mirrors []Mirror
	// HostsDir is a containerd-style certs.d directory of
	// <registry>/hosts.toml files: mirrors with their capabilities, ca and
	// skip_verify, and the server's scheme and TLS settings.
	HostsDir string
	// Attempts is how many times a request is tried on connection trouble,
	// 5xx or 429, and how many times an interrupted download is resumed.
	// Zero: 4.
	Attempts int
	// RangeThreshold is the size, in bytes, from which a layer blob is
	// downloaded as parallel bounded ranges (up to 32 MiB each) over
	// RangeConnections connections, from the host that answered the first
	// range, written at their offsets into the store's temp blob file that
	// the single pass reads as its contiguous prefix grows. A connection cut
	// inside a range is resumed for that range only; a host that ignores
	// Range, or a cache without a store, gets one stream. Progress counts
	// the contiguous bytes. Zero: 4 MiB. NoLimit (any negative value): off.
	RangeThreshold int64
	// RangeConnections is how many connections one ranged blob download
	// uses at once (1: ranged download off); no host gets more than 8
	// range requests at once. Zero: 8.
	RangeConnections int
}

// Mirror is a registry mirror, such as a pull-through cache.
type Mirror struct {
	// Registry is the registry mirrored, "host[:port]"; Docker Hub is
	// "index.docker.io".
	Registry string
	// Host is the mirror, "host[:port]".
	Host string
}

// Credential is a username and password for one registry.
type Credential struct {
	// Host is the registry as references name it, "host[:port]"; Docker
	// Hub is "index.docker.io".
	Host string
	// Username and Password are presented as HTTP basic auth, or exchanged
	// for a token when the registry asks for one.
	Username, Password string
}

// HostCACertificate trusts the CA certificates in one PEM file for one
// registry only.
type HostCACertificate struct {
	// Host is the registry, "host[:port]".
	Host string
	// Path is the PEM file.
	Path string
}

// Cache is an open image cache. Its methods are safe for concurrent use.
type Cache struct {
	// mu is held for reading by every call that uses ptr, and for writing
	// by Close, so the handle is never freed under a running call.
	mu  sync.RWMutex
	ptr *C.oci_cache
}

// Open makes a Cache with opts. It does no I/O beyond creating the store
// directory: CA certificates and auth files are read, and credential
// helpers run, when a call first talks to a registry, so a missing or bad
// file makes that call fail (ErrIO for a CA file), not Open.
//
// A setting the library rejects gives an error matching ErrInvalidArgument
// that names the Options field and the library's setter.
func Open(opts Options) (*Cache, error) {
	var copts *C.oci_cache_options
	if st := C.oci_cache_options_new(&copts); st != C.OCI_OK {
		return nil, statusError(st, "oci_cache_options_new")
	}
	defer C.oci_cache_options_free(copts)
	if err := applyOptions(copts, &opts); err != nil {
		return nil, err
	}

	var ptr *C.oci_cache
	var cerr *C.oci_error
	if st := C.oci_cache_new(copts, &ptr, &cerr); st != C.OCI_OK {
		return nil, takeError(st, cerr)
	}
	c := &Cache{ptr: ptr}
	// Only a safety net for a forgotten Close: the handle owns a thread
	// pool, which the garbage collector cannot see.
	runtime.SetFinalizer(c, (*Cache).Close)
	return c, nil
}

// applyOptions passes every set field of opts to its setter, in the order
// of optionSetters.
func applyOptions(copts *C.oci_cache_options, opts *Options) error {
	for _, o := range optionSetters {
		if err := o.apply(copts, opts, o.setter); err != nil {
			return err
		}
	}
	return nil
}

// optionSetter is the one path of an Options field to the library: the
// field, the C setter it reaches, and how a set value gets there. The
// library validates; Go only converts (a negative count cannot become an
// unsigned one).
type optionSetter struct {
	field  string // Options.<field>
	setter string // the oci_cache_options_* function
	// apply calls the setter for the field's value, once per element for
	// a list, and nothing when the field is zero (the library's default).
	apply func(copts *C.oci_cache_options, opts *Options, setter string) error
}

// optionSetters has exactly one entry per Options field (a test checks).
var optionSetters = []optionSetter{
	stringOption("Store", "oci_cache_options_set_store", func(o *Options) string { return o.Store },
		func(c *C.oci_cache_options, s *C.char) C.oci_status { return C.oci_cache_options_set_store(c, s) }),
	stringOption("Platform", "oci_cache_options_set_platform", func(o *Options) string { return o.Platform },
		func(c *C.oci_cache_options, s *C.char) C.oci_status { return C.oci_cache_options_set_platform(c, s) }),
	listOption("InsecureRegistries", "oci_cache_options_add_insecure_registry", func(o *Options) []string { return o.InsecureRegistries },
		func(c *C.oci_cache_options, s *C.char) C.oci_status {
			return C.oci_cache_options_add_insecure_registry(c, s)
		}),
	countOption("WorkerThreads", "oci_cache_options_set_worker_threads", func(o *Options) int64 { return int64(o.WorkerThreads) },
		func(c *C.oci_cache_options, n uint64) C.oci_status {
			return C.oci_cache_options_set_worker_threads(c, C.size_t(n))
		}),
	countOption("MaxConcurrentLayers", "oci_cache_options_set_max_concurrent_layers", func(o *Options) int64 { return int64(o.MaxConcurrentLayers) },
		func(c *C.oci_cache_options, n uint64) C.oci_status {
			return C.oci_cache_options_set_max_concurrent_layers(c, C.size_t(n))
		}),
	{"DropLayerBlobs", "oci_cache_options_set_keep_layer_blobs", func(c *C.oci_cache_options, o *Options, setter string) error {
		if !o.DropLayerBlobs {
			return nil
		}
		return setterStatus("DropLayerBlobs", setter, "true", C.oci_cache_options_set_keep_layer_blobs(c, false))
	}},
	countOption("MaxLayerSize", "oci_cache_options_set_max_layer_size", func(o *Options) int64 { return o.MaxLayerSize },
		func(c *C.oci_cache_options, n uint64) C.oci_status {
			return C.oci_cache_options_set_max_layer_size(c, C.uint64_t(n))
		}),
	byteSizeOption("FreeSpaceReserve", "oci_cache_options_set_free_space_reserve", func(o *Options) int64 { return o.FreeSpaceReserve },
		func(c *C.oci_cache_options, n uint64) C.oci_status {
			return C.oci_cache_options_set_free_space_reserve(c, C.uint64_t(n))
		}),
	{"Credentials", "oci_cache_options_add_credentials", func(c *C.oci_cache_options, o *Options, setter string) error {
		for _, cred := range o.Credentials {
			// The password stays out of the message: errors end up in logs.
			shown := fmt.Sprintf("for host %q, username %q", cred.Host, cred.Username)
			if err := setStrings("Credentials", setter, shown, func(a []*C.char) C.oci_status {
				return C.oci_cache_options_add_credentials(c, a[0], a[1], a[2])
			}, cred.Host, cred.Username, cred.Password); err != nil {
				return err
			}
		}
		return nil
	}},
	stringOption("AuthFile", "oci_cache_options_set_auth_file", func(o *Options) string { return o.AuthFile },
		func(c *C.oci_cache_options, s *C.char) C.oci_status { return C.oci_cache_options_set_auth_file(c, s) }),
	listOption("CACertificates", "oci_cache_options_add_ca_certificate", func(o *Options) []string { return o.CACertificates },
		func(c *C.oci_cache_options, s *C.char) C.oci_status {
			return C.oci_cache_options_add_ca_certificate(c, s)
		}),
	{"HostCACertificates", "oci_cache_options_add_host_ca_certificate", func(c *C.oci_cache_options, o *Options, setter string) error {
		for _, hc := range o.HostCACertificates {
			shown := fmt.Sprintf("for host %q: %q", hc.Host, hc.Path)
			if err := setStrings("HostCACertificates", setter, shown, func(a []*C.char) C.oci_status {
				return C.oci_cache_options_add_host_ca_certificate(c, a[0], a[1])
			}, hc.Host, hc.Path); err != nil {
				return err
			}
		}
		return nil
	}},
	timeoutOption("ConnectTimeout", "oci_cache_options_set_connect_timeout_ms", func(o *Options) time.Duration { return o.ConnectTimeout },
		func(c *C.oci_cache_options, ms C.uint64_t) C.oci_status {
			return C.oci_cache_options_set_connect_timeout_ms(c, ms)
		}),
	timeoutOption("TLSHandshakeTimeout", "oci_cache_options_set_tls_handshake_timeout_ms", func(o *Options) time.Duration { return o.TLSHandshakeTimeout },
		func(c *C.oci_cache_options, ms C.uint64_t) C.oci_status {
			return C.oci_cache_options_set_tls_handshake_timeout_ms(c, ms)
		}),
	timeoutOption("ResponseTimeout", "oci_cache_options_set_response_timeout_ms", func(o *Options) time.Duration { return o.ResponseTimeout },
		func(c *C.oci_cache_options, ms C.uint64_t) C.oci_status {
			return C.oci_cache_options_set_response_timeout_ms(c, ms)
		}),
	timeoutOption("StallTimeout", "oci_cache_options_set_stall_timeout_ms", func(o *Options) time.Duration { return o.StallTimeout },
		func(c *C.oci_cache_options, ms C.uint64_t) C.oci_status {
			return C.oci_cache_options_set_stall_timeout_ms(c, ms)
		}),
	{"Mirrors", "oci_cache_options_add_mirror", func(c *C.oci_cache_options, o *Options, setter string) error {
		for _, m := range o.Mirrors {
			shown := fmt.Sprintf("%q for registry %q", m.Host, m.Registry)
			if err := setStrings("Mirrors", setter, shown, func(a []*C.char) C.oci_status {
				return C.oci_cache_options_add_mirror(c, a[0], a[1])
			}, m.Registry, m.Host); err != nil {
				return err
			}
		}
		return nil
	}},
	stringOption("HostsDir", "oci_cache_options_set_hosts_dir", func(o *Options) string { return o.HostsDir },
		func(c *C.oci_cache_options, s *C.char) C.oci_status { return C.oci_cache_options_set_hosts_dir(c, s) }),
	countOption("Attempts", "oci_cache_options_set_attempts", func(o *Options) int64 { return int64(o.Attempts) },
		func(c *C.oci_cache_options, n uint64) C.oci_status {
			if n > math.MaxUint32 {
				n = math.MaxUint32 // as good as unbounded, and it fits
			}
			return C.oci_cache_options_set_attempts(c, C.uint32_t(n))
		}),
	byteSizeOption("RangeThreshold", "oci_cache_options_set_range_threshold", func(o *Options) int64 { return o.RangeThreshold },
		func(c *C.oci_cache_options, n uint64) C.oci_status {
			return C.oci_cache_options_set_range_threshold(c, C.uint64_t(n))
		}),
	countOption("RangeConnections", "oci_cache_options_set_range_connections", func(o *Options) int64 { return int64(o.RangeConnections) },
		func(c *C.oci_cache_options, n uint64) C.oci_status {
			return C.oci_cache_options_set_range_connections(c, C.size_t(n))
		}),
}

// stringOption is a string field; "" is the default.
func stringOption(field, setter string, get func(*Options) string, set func(*C.oci_cache_options, *C.char) C.oci_status) optionSetter {
	return optionSetter{field, setter, func(c *C.oci_cache_options, o *Options, setter string) error {
		v := get(o)
		if v == "" {
			return nil
		}
		return setStrings(field, setter, fmt.Sprintf("%q", v), func(a []*C.char) C.oci_status { return set(c, a[0]) }, v)
	}}
}

// listOption is a list of strings, each passed to an add_* setter.
func listOption(field, setter string, get func(*Options) []string, set func(*C.oci_cache_options, *C.char) C.oci_status) optionSetter {
	return optionSetter{field, setter, func(c *C.oci_cache_options, o *Options, setter string) error {
		for _, v := range get(o) {
			if err := setStrings(field, setter, fmt.Sprintf("%q", v), func(a []*C.char) C.oci_status { return set(c, a[0]) }, v); err != nil {
				return err
			}
		}
		return nil
	}}
}

// countOption is a count; 0 is the default, and a negative one cannot be
// passed to the library's unsigned parameter at all.
func countOption(field, setter string, get func(*Options) int64, set func(*C.oci_cache_options, uint64) C.oci_status) optionSetter {
	return optionSetter{field, setter, func(c *C.oci_cache_options, o *Options, setter string) error {
		v := get(o)
		switch {
		case v == 0:
			return nil
		case v < 0:
			return invalidArgument(fmt.Sprintf("Options.%s %d must not be negative (%s takes an unsigned count)", field, v, setter))
		}
		return setterStatus(field, setter, fmt.Sprint(v), set(c, uint64(v)))
	}}
}

// byteSizeOption is a size in bytes: 0 the default, NoLimit (any negative
// value) the library's "off", which is 0 bytes there.
func byteSizeOption(field, setter string, get func(*Options) int64, set func(*C.oci_cache_options, uint64) C.oci_status) optionSetter {
	return optionSetter{field, setter, func(c *C.oci_cache_options, o *Options, setter string) error {
		v := get(o)
		if v == 0 {
			return nil
		}
		n := uint64(0)
		if v > 0 {
			n = uint64(v)
		}
		return setterStatus(field, setter, fmt.Sprint(v), set(c, n))
	}}
}

// timeoutOption is a time limit: 0 the default, NoLimit (any negative
// value) the library's "off", 0 ms; others round up to whole ms.
func timeoutOption(field, setter string, get func(*Options) time.Duration, set func(*C.oci_cache_options, C.uint64_t) C.oci_status) optionSetter {
	return optionSetter{field, setter, func(c *C.oci_cache_options, o *Options, setter string) error {
		v := get(o)
		if v == 0 {
			return nil
		}
		ms := uint64(0)
		if v > 0 {
			ms = ceilMillis(v)
		}
		return setterStatus(field, setter, v.String(), set(c, C.uint64_t(ms)))
	}}
}

// setterStatus turns a setter's status into an error naming the field,
// the value as shown (never a password) and the setter.
func setterStatus(field, setter, shown string, st C.oci_status) error {
	if st == C.OCI_OK {
		return nil
	}
	return statusError(st, fmt.Sprintf("Options.%s %s (%s)", field, shown, setter))
}

// setStrings passes Go strings to a setter, which copies them, so the C
// copies are freed right after.
func setStrings(field, setter, shown string, set func([]*C.char) C.oci_status, values ...string) error {
	args := make([]*C.char, len(values))
	for i, v := range values {
		s, err := cString("Options."+field+" "+shown, v)
		if err != nil {
			return err
		}
		defer C.free(unsafe.Pointer(s))
		args[i] = s
	}
	return setterStatus(field, setter, shown, set(args))
}

// cString copies s to C, refusing a NUL inside it: C would see only the
// part before it, a different path or reference than the caller gave.
// The caller frees the copy.
func cString(what, s string) (*C.char, error) {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return nil, invalidArgument(what + " contains a NUL byte")
		}
	}
	return C.CString(s), nil
}

// Close releases the cache, after waiting for the calls in flight on it.
// Images, readers and views made from it stay usable. Closing twice is a
// no-op.
// Closing from a progress function fails instead of waiting forever for
// the call that runs it.
func (c *Cache) Close() error {
	if inProgressCallback() {
		return callbackError("Cache.Close")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr != nil {
		C.oci_cache_free(c.ptr)
		c.ptr = nil
		runtime.SetFinalizer(c, nil)
	}
	return nil
}

// acquire read-locks the cache for one call; the caller must call
// c.mu.RUnlock when the call is done.
func (c *Cache) acquire() (*C.oci_cache, error) {
	// Before the lock: a read lock taken again by the goroutine that holds
	// one deadlocks if a Close is waiting in between.
	if inProgressCallback() {
		return nil, callbackError("a blocking call")
	}
	c.mu.RLock()
	if c.ptr == nil {
		c.mu.RUnlock()
		return nil, closedError("Cache")
	}
	return c.ptr, nil
}

// Resolve returns the digest ("sha256:<hex>") that ref names: its pinned
// digest, else the store's record of it, else the registry's. For a
// multi-platform image it is the digest of the index.
func (c *Cache) Resolve(ctx context.Context, ref string) (string, error) {
	ptr, err := c.acquire()
	if err != nil {
		return "", err
	}
	defer c.mu.RUnlock()

	cref, err := cString("reference", ref)
	if err != nil {
		return "", err
	}
	defer C.free(unsafe.Pointer(cref))
	// 136 bytes hold a sha512 digest and its NUL, the longest the library
	// produces; the spare room is for algorithms it may add.
	var buf [256]C.char
	err = c.withCall(ctx, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return C.oci_cache_resolve(ptr, cref, opts, &buf[0], C.size_t(len(buf)), errOut)
	})
	if err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}
