// This file owns how the library's status codes and error objects become Go
// errors: the Error type, one sentinel per code, and the Go-side errors
// (closed handles, bad arguments caught before calling C, done contexts,
// deadlines, calls from progress functions).

package ocicache

/*
#include "oci_cache.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
)

// Error is a failure reported by the library (or caught by this package
// before calling it): one of the library's OCI_E_* codes and a message that
// names the reference, digest, path or URL involved.
//
// Match kinds of failure with errors.Is and the sentinels below, which
// compare by Code: errors.Is(err, ocicache.ErrNotFound).
type Error struct {
	// Code is the library's status code, a negative OCI_E_* value.
	Code int
	// Message is the library's description of the failure.
	Message string

	// cause is what made this package report the error, when there is more
	// than the code to match: context.Canceled or deadlineExceeded for a
	// call its context ended, ErrClosed.
	cause error
}

// Error implements error.
func (e *Error) Error() string {
	return "oci-cache: " + e.Message
}

// Is reports whether target is an *Error with the same Code, which makes
// the sentinels match any error of their kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Unwrap gives the context error of a call its context ended, or
// ErrClosed, so that errors.Is(err, context.Canceled) works too.
func (e *Error) Unwrap() error {
	return e.cause
}

// One sentinel per library status code, for errors.Is. Their messages are
// only the name of the kind.
var (
	// ErrInvalidArgument: a malformed reference, platform or option, an
	// index out of range, or a handle already closed.
	ErrInvalidArgument = sentinel(C.OCI_E_INVALID_ARGUMENT, "invalid argument")
	// ErrNotFound: a manifest, blob, tag, repository or platform that does
	// not exist, locally or in the registry.
	ErrNotFound = sentinel(C.OCI_E_NOT_FOUND, "not found")
	// ErrUnauthorized: the registry answered 401 or 403, a token exchange
	// failed, or credentials are missing.
	ErrUnauthorized = sentinel(C.OCI_E_UNAUTHORIZED, "unauthorized")
	// ErrUnsupported: a media type, schema version or digest algorithm the
	// library does not handle.
	ErrUnsupported = sentinel(C.OCI_E_UNSUPPORTED, "unsupported")
	// ErrDigestMismatch: content that does not hash to its digest or
	// diff_id, or whose size differs from its descriptor's.
	ErrDigestMismatch = sentinel(C.OCI_E_DIGEST_MISMATCH, "digest mismatch")
	// ErrInvalidContent: malformed JSON, an oversized manifest or config,
	// or a corrupt gzip/zstd stream.
	ErrInvalidContent = sentinel(C.OCI_E_INVALID_CONTENT, "invalid content")
	// ErrNetwork: a connection, TLS or HTTP failure talking to a registry.
	ErrNetwork = sentinel(C.OCI_E_NETWORK, "network")
	// ErrIO: a local file system error.
	ErrIO = sentinel(C.OCI_E_IO, "io")
	// ErrCanceled: the call's context was canceled or reached its
	// deadline, or its progress function returned false. Errors of a
	// context also match ctx.Err().
	ErrCanceled = sentinel(C.OCI_E_CANCELED, "canceled")
	// ErrTimeout: the call's context reached its deadline (such errors
	// also match context.DeadlineExceeded and ErrCanceled), or
	// Options.StallTimeout expired.
	ErrTimeout = sentinel(C.OCI_E_TIMEOUT, "timeout")
	// ErrBufferTooSmall: a buffer given to the library was too small; this
	// package sizes its buffers, so seeing it means a bug.
	ErrBufferTooSmall = sentinel(C.OCI_E_BUFFER_TOO_SMALL, "buffer too small")
	// ErrForked: a handle was used in a child process after fork().
	ErrForked = sentinel(C.OCI_E_FORKED, "forked")
	// ErrInternal: a bug in the library, caught at its boundary.
	ErrInternal = sentinel(C.OCI_E_INTERNAL, "internal error")
)

// ErrClosed is matched (besides ErrInvalidArgument) by the error of a call
// made on a Cache, Image or layer reader after its Close.
var ErrClosed = errors.New("use of a closed handle")

var sentinels = []*Error{
	ErrInvalidArgument, ErrNotFound, ErrUnauthorized, ErrUnsupported,
	ErrDigestMismatch, ErrInvalidContent, ErrNetwork, ErrIO, ErrCanceled,
	ErrTimeout, ErrBufferTooSmall, ErrForked, ErrInternal,
}

func sentinel(code C.oci_status, name string) *Error {
	return &Error{Code: int(code), Message: name}
}

// codeName names a status code, for errors that come without a message.
func codeName(code int) string {
	for _, s := range sentinels {
		if s.Code == code {
			return s.Message
		}
	}
	return fmt.Sprintf("status %d", code)
}

// takeError copies a C error into Go and frees it at once: the library
// hands each error to the caller, and it must not outlive this call.
func takeError(status C.oci_status, cerr *C.oci_error) *Error {
	e := &Error{Code: int(status)}
	if cerr != nil {
		e.Message = C.GoString(C.oci_error_message(cerr))
		C.oci_error_free(cerr)
	}
	if e.Message == "" {
		e.Message = codeName(e.Code)
	}
	return e
}

// statusError is for the calls that report only a status (option setters,
// constructors without err_out).
func statusError(status C.oci_status, what string) *Error {
	return &Error{Code: int(status), Message: fmt.Sprintf("%s: %s", codeName(int(status)), what)}
}

func invalidArgument(message string) *Error {
	return &Error{Code: C.OCI_E_INVALID_ARGUMENT, Message: "invalid argument: " + message}
}

func closedError(what string) *Error {
	return &Error{Code: C.OCI_E_INVALID_ARGUMENT, Message: "invalid argument: use of a closed " + what, cause: ErrClosed}
}

// callbackError is the error of a call made from a progress function.
func callbackError(what string) *Error {
	return invalidArgument(what + " made from a progress function (see WithProgress)")
}

// contextError is the error of a call whose context was done before the
// library was called (or, for a layer reader, between two reads).
func contextError(ctxErr error) *Error {
	return &Error{Code: C.OCI_E_CANCELED, Message: "canceled: " + ctxErr.Error(), cause: contextCause(ctxErr)}
}

// contextCause is the cause to give an error that ctx.Err() explains.
func contextCause(ctxErr error) error {
	if errors.Is(ctxErr, context.DeadlineExceeded) {
		return deadlineExceeded{}
	}
	return ctxErr
}

// deadlineExceeded is the cause of every error a context's deadline made.
// When the deadline passes, the library's own deadline (OCI_E_TIMEOUT) and
// the cancel token ctx.Done() triggers (OCI_E_CANCELED) race to end the
// call; this makes the error match the same things whichever won:
// context.DeadlineExceeded, ErrTimeout and ErrCanceled.
type deadlineExceeded struct{}

func (deadlineExceeded) Error() string { return context.DeadlineExceeded.Error() }

func (deadlineExceeded) Unwrap() error { return context.DeadlineExceeded }

func (deadlineExceeded) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && (t.Code == C.OCI_E_CANCELED || t.Code == C.OCI_E_TIMEOUT)
}
