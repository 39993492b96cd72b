// This file owns the per-call plumbing: turning one call's context (its
// cancellation, its deadline) and its progress function (WithProgress)
// into the library's oci_call_options, and the call's status into
// an error that says which of them ended it.

package ocicache

/*
#include <stdint.h>
#include "oci_cache.h"

// The exported Go callback of progress.go. Declared here, not taken from
// _cgo_export.h: a file with //export may only declare in its preamble, so
// the helper below that casts it must live in another file. Its Go
// signature gives `char *` where oci_progress_fn has `const char *`, the
// same in the ABI; hence the cast.
extern int32_t ocicacheProgress(void *, size_t, char *, uint64_t, int64_t, uint64_t, int64_t);

// The handle is a cgo.Handle, an integer: turning it into the void *
// user_data here keeps Go from converting an integer to unsafe.Pointer.
static oci_status ocicache_set_progress(oci_call_options *options, uintptr_t handle) {
	return oci_call_options_set_progress(options, (oci_progress_fn)ocicacheProgress, (void *)handle);
}
*/
import "C"

import (
	"context"
	"runtime/cgo"
	"time"
)

// withCall runs one blocking library call with call options made from ctx
// and turns its outcome into an error:
//   - ctx.Done() triggers a cancel token (any call, any time);
//   - ctx's deadline becomes the library's deadline for the call, so a
//     call ends on time even where cancellation is not watched.
//
// Without either the library gets NULL options, as before they existed.
func (c *Cache) withCall(ctx context.Context, call func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status) error {
	return c.withCallExtras(ctx, callExtras{}, call)
}

// callExtras is what some calls add to withCall's plumbing.
type callExtras struct {
	// progress, if not nil, gets the call's progress reports (WithProgress).
	progress func(Progress) bool
	// discard releases what a successful call handed out (fds, a handle)
	// when the progress function panicked: the panic goes on to the
	// caller, who never sees those results, so they must not leak.
	discard func()
	// cancel, if not nil, is the cancel token the call gets instead of one
	// made for it: one that outlives the call (a layer reader's, which the
	// library keeps). ctx still triggers it while the call runs.
	cancel *C.oci_cancel
}

// withCallExtras is withCall with extras.
func (c *Cache) withCallExtras(ctx context.Context, extras callExtras, call func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status) error {
	if err := ctx.Err(); err != nil {
		return contextError(err)
	}
	deadline, hasDeadline := ctx.Deadline()
	var progress *progressCall
	if extras.progress != nil {
		progress = &progressCall{fn: extras.progress}
	}
	done := ctx.Done()

	var opts *C.oci_call_options
	if done != nil || hasDeadline || progress != nil || extras.cancel != nil {
		if st := C.oci_call_options_new(&opts); st != C.OCI_OK {
			return statusError(st, "oci_call_options_new")
		}
		defer C.oci_call_options_free(opts)
	}
	if progress != nil {
		// The library keeps user_data and calls back with it, so it must be
		// an integer, not a Go pointer; the handle maps it back. Deleted
		// after the call (deferred after the options' free, so it runs
		// before it): the library calls back only during the call.
		h := cgo.NewHandle(progress)
		defer h.Delete()
		if st := C.ocicache_set_progress(opts, C.uintptr_t(h)); st != C.OCI_OK {
			return statusError(st, "oci_call_options_set_progress")
		}
	}
	cancel := extras.cancel
	if cancel == nil && done != nil {
		if st := C.oci_cancel_new(&cancel); st != C.OCI_OK {
			return statusError(st, "oci_cancel_new")
		}
		defer C.oci_cancel_free(cancel)
	}
	if cancel != nil {
		if st := C.oci_call_options_set_cancel(opts, cancel); st != C.OCI_OK {
			return statusError(st, "oci_call_options_set_cancel")
		}
	}
	if done != nil {
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
	// Last, so the time spent setting up is not counted twice.
	if hasDeadline {
		ms := ceilMillis(time.Until(deadline))
		if ms == 0 {
			// Already past (ctx's timer has not fired yet): 0 would
			// mean no deadline at all.
			ms = 1
		}
		if st := C.oci_call_options_set_deadline_ms(opts, C.uint64_t(ms)); st != C.OCI_OK {
			return statusError(st, "oci_call_options_set_deadline_ms")
		}
	}

	var cerr *C.oci_error
	st := call(opts, &cerr)
	if progress != nil && progress.panicked {
		// The progress function panicked; it was stopped at the C boundary
		// (a panic must not unwind through the library's frames) and the
		// call canceled. Resume it here, in the caller's goroutine. A call
		// can still have succeeded (the panic came from a report delivered
		// as it finished): what it handed out is released first.
		if cerr != nil {
			C.oci_error_free(cerr)
		}
		if st == C.OCI_OK && extras.discard != nil {
			extras.discard()
		}
		panic(progress.panicValue)
	}
	if st == C.OCI_OK {
		return nil
	}
	err := takeError(st, cerr)
	switch st {
	case C.OCI_E_CANCELED:
		// The token was triggered by ctx, or the progress function said stop.
		if ctxErr := ctx.Err(); ctxErr != nil {
			err.cause = contextCause(ctxErr)
		}
	case C.OCI_E_TIMEOUT:
		// The deadline was rounded up to whole milliseconds and started
		// after ctx's, so a timeout of the library's deadline comes at or
		// after ctx's deadline: that is how it is told from a stall
		// timeout. (A stall timeout that fires once the deadline passed is
		// counted as the deadline's too; either way time was up.)
		if hasDeadline && !time.Now().Before(deadline) {
			err.cause = deadlineExceeded{}
		}
	}
	return err
}

// ceilMillis rounds d up to whole milliseconds (0 for d <= 0), because the
// library's limits are in milliseconds and rounding down could make a
// limit fire early, or vanish (0 means none).
func ceilMillis(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Millisecond - 1) / time.Millisecond)
}
