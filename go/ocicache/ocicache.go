// This file owns the package documentation, the Cache handle and its
// options, and the per-call plumbing that turns a context.Context into the
// library's cancel token. How the library is linked is in link_*.go.

// Package ocicache is the Go binding of oci-cache, a library that turns an
// OCI image reference into verified, uncompressed layer tar files and hands
// them out as open, read-only files.
//
// A Cache resolves references against an optional local OCI image layout
// (Options.Store) first and the registry second. FetchImage gets an image's
// manifest and config; RootFS, ExtractLayers and ExtractLayer put its layers
// at DST/sha256/<hex of diff_id> and return them as *os.File; FetchLayer
// streams one layer.
//
//	cache, err := ocicache.Open(ocicache.Options{Store: "/var/lib/images"})
//	if err != nil { ... }
//	defer cache.Close()
//	img, err := cache.FetchImage(ctx, "registry.example/app:1.4", "")
//	if err != nil { ... }
//	defer img.Close()
//	files, err := cache.RootFS(ctx, "/var/lib/layers", img)
//	// files[i] is img.Layers[i]; the caller closes them.
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
// # Cancellation
//
// Every blocking call takes a context. Canceling it (or reaching its
// deadline) makes the call return promptly with an error matching
// ErrCanceled and ctx.Err() (context.Canceled or context.DeadlineExceeded).
// A context already done makes the call fail the same way without calling
// the library. FetchLayer's reader checks its context between reads only
// (see FetchLayer).
package ocicache

/*
#include <stdlib.h>
#include "oci_cache.h"
*/
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// Version reports the version of the linked library, "MAJOR.MINOR.PATCH".
func Version() string {
	return C.GoString(C.oci_version())
}

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
	// HTTP. Loopback registries always are.
	InsecureRegistries []string
	// WorkerThreads is the number of threads of the cache's internal
	// runtime. Zero: 2.
	WorkerThreads int
	// MaxConcurrentLayers bounds how many layers RootFS and ExtractLayers
	// fetch at once. Zero: 3.
	MaxConcurrentLayers int
}

// Cache is an open image cache. Its methods are safe for concurrent use.
type Cache struct {
	// mu is held for reading by every call that uses ptr, and for writing
	// by Close, so the handle is never freed under a running call.
	mu  sync.RWMutex
	ptr *C.oci_cache
}

// Open makes a Cache with opts. It does no I/O beyond creating the store
// directory; the library's runtime starts on the first call that needs it.
func Open(opts Options) (*Cache, error) {
	var copts *C.oci_cache_options
	if st := C.oci_cache_options_new(&copts); st != C.OCI_OK {
		return nil, statusError(st, "oci_cache_options_new")
	}
	defer C.oci_cache_options_free(copts)

	if opts.Store != "" {
		if err := setString(copts, opts.Store, "store", func(o *C.oci_cache_options, s *C.char) C.oci_status {
			return C.oci_cache_options_set_store(o, s)
		}); err != nil {
			return nil, err
		}
	}
	if opts.Platform != "" {
		if err := setString(copts, opts.Platform, "platform", func(o *C.oci_cache_options, s *C.char) C.oci_status {
			return C.oci_cache_options_set_platform(o, s)
		}); err != nil {
			return nil, err
		}
	}
	for _, host := range opts.InsecureRegistries {
		if err := setString(copts, host, "insecure registry", func(o *C.oci_cache_options, s *C.char) C.oci_status {
			return C.oci_cache_options_add_insecure_registry(o, s)
		}); err != nil {
			return nil, err
		}
	}
	if opts.WorkerThreads < 0 || opts.MaxConcurrentLayers < 0 {
		return nil, invalidArgument("WorkerThreads and MaxConcurrentLayers must not be negative")
	}
	if opts.WorkerThreads > 0 {
		if st := C.oci_cache_options_set_worker_threads(copts, C.size_t(opts.WorkerThreads)); st != C.OCI_OK {
			return nil, statusError(st, "setting worker threads")
		}
	}
	if opts.MaxConcurrentLayers > 0 {
		if st := C.oci_cache_options_set_max_concurrent_layers(copts, C.size_t(opts.MaxConcurrentLayers)); st != C.OCI_OK {
			return nil, statusError(st, "setting max concurrent layers")
		}
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

// setString passes a Go string to an options setter, which copies it, so
// the C copy is freed right after.
func setString(o *C.oci_cache_options, value, what string, set func(*C.oci_cache_options, *C.char) C.oci_status) error {
	s := C.CString(value)
	defer C.free(unsafe.Pointer(s))
	if st := set(o, s); st != C.OCI_OK {
		return statusError(st, fmt.Sprintf("%s %q", what, value))
	}
	return nil
}

// Close releases the cache, after waiting for the calls in flight on it.
// Images and readers made from it stay usable. Closing twice is a no-op.
func (c *Cache) Close() error {
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

	cref := C.CString(ref)
	defer C.free(unsafe.Pointer(cref))
	// 136 bytes hold a sha512 digest and its NUL, the longest the library
	// produces; the spare room is for algorithms it may add.
	var buf [256]C.char
	err = withCall(ctx, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return C.oci_cache_resolve(ptr, cref, opts, &buf[0], C.size_t(len(buf)), errOut)
	})
	if err != nil {
		return "", err
	}
	return C.GoString(&buf[0]), nil
}

// withCall runs one blocking library call with call options whose cancel
// token is triggered when ctx is done, and turns its outcome into an error.
func withCall(ctx context.Context, call func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status) error {
	if err := ctx.Err(); err != nil {
		return contextError(err)
	}
	var opts *C.oci_call_options
	if done := ctx.Done(); done != nil {
		var cancel *C.oci_cancel
		if st := C.oci_cancel_new(&cancel); st != C.OCI_OK {
			return statusError(st, "oci_cancel_new")
		}
		defer C.oci_cancel_free(cancel)
		if st := C.oci_call_options_new(&opts); st != C.OCI_OK {
			return statusError(st, "oci_call_options_new")
		}
		defer C.oci_call_options_free(opts)
		if st := C.oci_call_options_set_cancel(opts, cancel); st != C.OCI_OK {
			return statusError(st, "oci_call_options_set_cancel")
		}
		stop := make(chan struct{})
		exited := make(chan struct{})
		go func() {
			defer close(exited)
			select {
			case <-done:
				C.oci_cancel_trigger(cancel)
			case <-stop:
			}
		}()
		// Runs before the frees above: the watcher must be gone before
		// the token it may trigger is released.
		defer func() {
			close(stop)
			<-exited
		}()
	}

	var cerr *C.oci_error
	st := call(opts, &cerr)
	if st == C.OCI_OK {
		return nil
	}
	err := takeError(st, cerr)
	if st == C.OCI_E_CANCELED {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err.cause = ctxErr
		}
	}
	return err
}
