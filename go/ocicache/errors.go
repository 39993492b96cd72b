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
	"syscall"
)

// Error is a failure reported by the library (or caught by this package
// before calling it): one of the library's OCI_E_* codes and a message that
// names the reference, digest, path or URL involved, with the OS error and
// HTTP status behind it when there are some.
//
// Match kinds of failure with errors.Is and the sentinels below, which
// compare by Code: errors.Is(err, ocicache.ErrNotFound). Match the OS error
// the same way: errors.Is(err, syscall.ENOSPC), errors.Is(err,
// fs.ErrPermission).
type Error struct {
	// Code is the library's status code, a negative OCI_E_* value.
	Code int
	// Message is the library's description of the failure.
	Message string
	// Errno is the OS error that caused the failure (ENOSPC, EROFS,
	// ECONNREFUSED...; ENOSPC too for a write refused by the free-space
	// reserve), from oci_error_os_errno; 0 when there is none.
	Errno syscall.Errno
	// HTTPStatus is the status of the registry's answer that made the
	// failure (401, 404, 503...), from oci_error_http_status; 0 when there
	// is none.
	HTTPStatus int

	// cause is what made this package report the error, when there is more
	// than the code to match: context.Canceled or deadlineExceeded for a
	// call its context ended, ErrClosed, or the io/fs error of a View's
	// failure (fs.ErrNotExist, fs.ErrInvalid, fs.ErrClosed).
	cause error
}

// Error implements error.
func (e *Error) Error() string {
	return "oci-cache: " + e.Message
}

// Is reports whether target is an *Error with the same Code, which makes
// the sentinels match any error of their kind, or whether the OS error
// behind e matches target (syscall.ENOSPC, fs.ErrPermission...).
func (e *Error) Is(target error) bool {
	if t, ok := target.(*Error); ok {
		return t.Code == e.Code
	}
	return e.Errno != 0 && errors.Is(e.Errno, target)
}

// Unwrap gives the context error of a call its context ended, or
// ErrClosed, so that errors.Is(err, context.Canceled) works too.
func (e *Error) Unwrap() error {
	return e.cause
}

// One sentinel per library status code, for errors.Is. Their messages are
// only the name of the kind. What each code means is documented once, at
// its OCI_E_* constant in oci_cache.h; the comments here add only what is
// particular to Go.
var (
	// ErrInvalidArgument: OCI_E_INVALID_ARGUMENT; from Go also a handle
	// already closed (which matches ErrClosed too).
	ErrInvalidArgument = sentinel(C.OCI_E_INVALID_ARGUMENT, "invalid argument")
	// ErrNotFound: OCI_E_NOT_FOUND.
	ErrNotFound = sentinel(C.OCI_E_NOT_FOUND, "not found")
	// ErrUnauthorized: OCI_E_UNAUTHORIZED.
	ErrUnauthorized = sentinel(C.OCI_E_UNAUTHORIZED, "unauthorized")
	// ErrUnsupported: OCI_E_UNSUPPORTED.
	ErrUnsupported = sentinel(C.OCI_E_UNSUPPORTED, "unsupported")
	// ErrDigestMismatch: OCI_E_DIGEST_MISMATCH.
	ErrDigestMismatch = sentinel(C.OCI_E_DIGEST_MISMATCH, "digest mismatch")
	// ErrInvalidContent: OCI_E_INVALID_CONTENT.
	ErrInvalidContent = sentinel(C.OCI_E_INVALID_CONTENT, "invalid content")
	// ErrNetwork: OCI_E_NETWORK.
	ErrNetwork = sentinel(C.OCI_E_NETWORK, "network")
	// ErrIO: OCI_E_IO; Error.Errno says which OS error.
	ErrIO = sentinel(C.OCI_E_IO, "io")
	// ErrCanceled: OCI_E_CANCELED; from Go, the call's context was
	// canceled or reached its deadline, or its progress function returned
	// false. Errors of a context also match ctx.Err().
	ErrCanceled = sentinel(C.OCI_E_CANCELED, "canceled")
	// ErrTimeout: OCI_E_TIMEOUT; from Go also the call's context reaching
	// its deadline (such errors also match context.DeadlineExceeded and
	// ErrCanceled).
	ErrTimeout = sentinel(C.OCI_E_TIMEOUT, "timeout")
	// ErrBufferTooSmall: OCI_E_BUFFER_TOO_SMALL; this package sizes its
	// buffers, so seeing it means a bug.
	ErrBufferTooSmall = sentinel(C.OCI_E_BUFFER_TOO_SMALL, "buffer too small")
	// ErrForked: OCI_E_FORKED.
	ErrForked = sentinel(C.OCI_E_FORKED, "forked")
	// ErrInternal: OCI_E_INTERNAL.
	ErrInternal = sentinel(C.OCI_E_INTERNAL, "internal error")
)

// ErrClosed is matched (besides ErrInvalidArgument) by the error of a call
// made on a Cache, Image, layer reader or View after its Close.
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
		e.Errno = syscall.Errno(C.oci_error_os_errno(cerr))
		e.HTTPStatus = int(C.oci_error_http_status(cerr))
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
