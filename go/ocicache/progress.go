// This file owns per-call options (CallOption) and progress reports: the
// Progress type, WithProgress, and the exported Go function the library calls back with each report. (The C
// side that registers it is in call.go: a file with //export may have only
// declarations in its preamble.)

package ocicache

/*
#include <stddef.h>
#include <stdint.h>
*/
import "C"

import (
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Progress is one report of how far a layer has got.
type Progress struct {
	// Layer is the layer's index in Image.Layers, bottom first.
	Layer int
	// Digest is the digest of the layer's blob, Image.Layers[Layer].Digest.
	Digest string
	// Downloaded is how many bytes of the (compressed) blob were received
	// so far, from the registry or the store; for a blob downloaded in
	// ranges (see Options.RangeThreshold), the contiguous bytes from its
	// start.
	Downloaded int64
	// DownloadTotal is the blob's size, or -1 if unknown.
	DownloadTotal int64
	// Written is how many bytes of the uncompressed tar were written so far.
	Written int64
	// WrittenTotal is the tar's size, known only when the layer is done:
	// -1 in every report but the layer's last, which has Written ==
	// WrittenTotal and comes after the layer was verified.
	WrittenTotal int64
}

// CallOption sets something for one call of RootFS, ExtractLayers or
// ExtractLayer, such as WithProgress.
type CallOption func(*callConfig)

// callConfig is what a call's CallOptions set.
type callConfig struct {
	progress func(Progress) bool
}

// callConfigOf applies opts in order: a later option overrides an earlier.
func callConfigOf(opts []CallOption) callConfig {
	var cfg callConfig
	for _, opt := range opts {
		opt(&cfg)
	}
	return cfg
}

// WithProgress makes a call of RootFS, ExtractLayers or ExtractLayer
// report to fn as it downloads and writes each layer:
//
//	files, err := cache.RootFS(ctx, img, dst, ocicache.WithProgress(fn))
//
// Reports of one layer come in order, and Downloaded and Written never
// decrease; reports of layers fetched at once interleave. Layers that need
// no work (RootFS's layers already in dst) are not reported. Returning
// false stops the call, which then fails with an error matching
// ErrCanceled. Reports trail the work, so the stop comes late for a layer
// whose blob was already read: the library still completes that one into
// dst, just after the call returned; it removes the partial ones then too,
// as for any failed call.
//
// fn runs on the goroutine that made the call, while the call runs, one
// report at a time, so it needs no locking of its own against the call; it
// must return quickly, since the call waits for it. fn must not call
// methods of this package that block (Resolve, FetchImage, RootFS,
// ExtractLayers, ExtractLayer, FetchLayer, a layer reader's Read) or Close
// a Cache or Image: they fail with an error matching ErrInvalidArgument,
// which the library demands (a blocking call from inside its callback
// would deadlock). Nor may fn call runtime.Goexit (t.Fatal in a test). A
// panic in fn cancels the call and is raised again, in the same
// goroutine, once the library returned; the call returns nothing then, and
// what it had made is released first (the files of a RootFS that finished
// anyway are closed, never leaked).
//
// A nil fn removes a function given by an earlier option.
func WithProgress(fn func(Progress) bool) CallOption {
	return func(cfg *callConfig) { cfg.progress = fn }
}

// progressCall is what one call's user_data stands for (via a cgo.Handle).
// Only the calling goroutine touches it: the library calls back on the
// calling thread while the call runs, never concurrently.
type progressCall struct {
	fn         func(Progress) bool
	panicked   bool
	panicValue any
}

// ocicacheProgress is the oci_progress_fn of every call with a progress
// function; userData is the cgo.Handle of its progressCall.
//
//export ocicacheProgress
func ocicacheProgress(userData unsafe.Pointer, layer C.size_t, digest *C.char, downloaded C.uint64_t, downloadTotal C.int64_t, written C.uint64_t, writtenTotal C.int64_t) (stop C.int32_t) {
	call := cgo.Handle(uintptr(userData)).Value().(*progressCall)
	if call.panicked {
		return 1
	}
	// A panic must not unwind through the library's frames (it would skip
	// its clean-up and leave its locks held): keep it for withCall, which
	// raises it again once the library returned, and stop the call.
	// (returned, not recover() != nil, so that panic(nil) counts too.)
	returned := false
	defer func() {
		if !returned {
			call.panicked, call.panicValue = true, recover()
			stop = 1
		}
	}()
	leave := enterCallback()
	defer leave()
	p := Progress{
		Layer:         int(layer),
		Digest:        C.GoString(digest),
		Downloaded:    int64(downloaded),
		DownloadTotal: int64(downloadTotal),
		Written:       int64(written),
		WrittenTotal:  int64(writtenTotal),
	}
	goOn := call.fn(p)
	returned = true
	if goOn {
		return 0
	}
	return 1
}

// The threads running a progress function right now, so that calls made
// from one fail at once. The library would refuse them too, but only after
// this package took the Cache's (or Image's) read lock a second time in
// the same goroutine, which deadlocks when a Close is waiting in between;
// a Close from there would wait for its own call forever. A thread
// identifies the goroutine: during a cgo callback the goroutine is locked
// to the thread that called C, and no other goroutine runs there.
var callbacks struct {
	// running counts the callbacks in progress, so the common case (none)
	// costs a load instead of a lock and a system call.
	running atomic.Int32
	mu      sync.Mutex
	threads map[int]int // thread id → callbacks nested on it
}

func enterCallback() (leave func()) {
	tid := syscall.Gettid()
	callbacks.mu.Lock()
	if callbacks.threads == nil {
		callbacks.threads = make(map[int]int)
	}
	callbacks.threads[tid]++
	callbacks.running.Add(1)
	callbacks.mu.Unlock()
	return func() {
		callbacks.mu.Lock()
		if callbacks.threads[tid]--; callbacks.threads[tid] == 0 {
			delete(callbacks.threads, tid)
		}
		callbacks.running.Add(-1)
		callbacks.mu.Unlock()
	}
}

// inProgressCallback reports whether the calling goroutine is inside a
// progress function.
func inProgressCallback() bool {
	if callbacks.running.Load() == 0 {
		return false
	}
	// The thread id is read under the lock: were this goroutine moved to
	// another thread meanwhile, the one it left could not be registered
	// by another goroutine's callback before the lookup.
	callbacks.mu.Lock()
	defer callbacks.mu.Unlock()
	return callbacks.threads[syscall.Gettid()] > 0
}
