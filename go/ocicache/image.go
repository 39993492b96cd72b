// This file owns images and everything done with their layers: FetchImage
// and the Image it returns, the calls that hand out layer files (RootFS,
// ExtractLayers, ExtractLayer), and FetchLayer's streaming reader.

package ocicache

/*
#include <stdlib.h>
#include "oci_cache.h"
*/
import "C"

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Layer describes one layer of an Image.
type Layer struct {
	// Digest is the digest of the layer's (usually compressed) blob.
	Digest string
	// DiffID is the digest of the uncompressed tar; the layer's file is
	// DST/<algorithm>/<hex> of it.
	DiffID string
	// MediaType is the blob's media type, e.g.
	// "application/vnd.oci.image.layer.v1.tar+gzip".
	MediaType string
	// Size is the size of the blob in bytes.
	Size int64
}

// Image is an image's manifest and config for one platform. Its exported
// fields are plain Go copies, valid after Close. It also holds the
// library's image handle, which the layer calls need, so Close it when
// done. Safe for concurrent use.
type Image struct {
	// Reference is the normalized reference, e.g.
	// "docker.io/library/alpine:3.20".
	Reference string
	// Digest is the digest of the platform's image manifest.
	Digest string
	// Config is the image config JSON.
	Config []byte
	// Layers are the layers, bottom first.
	Layers []Layer

	mu  sync.RWMutex // as Cache.mu
	ptr *C.oci_image
}

// Close releases the library's image handle after waiting for the calls in
// flight that use it. The exported fields stay valid. Closing twice is a
// no-op. Closing from a progress function fails instead of waiting forever
// for the call that runs it.
func (img *Image) Close() error {
	if inProgressCallback() {
		return callbackError("Image.Close")
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	if img.ptr != nil {
		C.oci_image_free(img.ptr)
		img.ptr = nil
		runtime.SetFinalizer(img, nil)
	}
	return nil
}

// FetchImage fetches the manifest and config of ref for platform
// ("os/arch[/variant]"; "" = the cache's), following an index to the
// platform's manifest. Layer blobs are not downloaded.
func (c *Cache) FetchImage(ctx context.Context, ref, platform string) (*Image, error) {
	ptr, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer c.mu.RUnlock()

	cref, err := cString("reference", ref)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cref))
	var cplatform *C.char
	if platform != "" {
		if cplatform, err = cString("platform", platform); err != nil {
			return nil, err
		}
		defer C.free(unsafe.Pointer(cplatform))
	}
	var cimg *C.oci_image
	err = c.withCall(ctx, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return C.oci_fetch_image(ptr, cref, cplatform, opts, &cimg, errOut)
	})
	if err != nil {
		return nil, err
	}

	img := &Image{
		Reference: C.GoString(C.oci_image_reference(cimg)),
		Digest:    C.GoString(C.oci_image_digest(cimg)),
		Config:    []byte(C.GoString(C.oci_image_config(cimg))),
		Layers:    make([]Layer, int(C.oci_image_layer_count(cimg))),
		ptr:       cimg,
	}
	for i := range img.Layers {
		ci := C.size_t(i)
		img.Layers[i] = Layer{
			Digest:    C.GoString(C.oci_image_layer_digest(cimg, ci)),
			DiffID:    C.GoString(C.oci_image_layer_diff_id(cimg, ci)),
			MediaType: C.GoString(C.oci_image_layer_media_type(cimg, ci)),
			Size:      int64(C.oci_image_layer_size(cimg, ci)),
		}
	}
	runtime.SetFinalizer(img, (*Image).Close)
	return img, nil
}

// acquireBoth read-locks the cache, then the image, always in that order so
// that concurrent Closes of both cannot deadlock. release undoes it.
func (c *Cache) acquireBoth(img *Image) (*C.oci_cache, *C.oci_image, func(), error) {
	if img == nil {
		return nil, nil, nil, invalidArgument("image is nil")
	}
	cptr, err := c.acquire()
	if err != nil {
		return nil, nil, nil, err
	}
	img.mu.RLock()
	if img.ptr == nil {
		img.mu.RUnlock()
		c.mu.RUnlock()
		return nil, nil, nil, closedError("Image")
	}
	release := func() {
		img.mu.RUnlock()
		c.mu.RUnlock()
	}
	return cptr, img.ptr, release, nil
}

// RootFS makes sure every layer of img is in dst (which must exist) as
// dst/<algorithm>/<hex of diff_id> and returns one open file per layer,
// bottom first. Layers already there are opened without touching the
// network; only missing ones are fetched. The files are read-only,
// close-on-exec, at offset 0 and owned by the caller. opts may ask for
// progress reports (WithProgress).
func (c *Cache) RootFS(ctx context.Context, img *Image, dst string, opts ...CallOption) ([]*os.File, error) {
	return c.layerFiles(ctx, img, dst, callConfigOf(opts), func(cp *C.oci_cache, ip *C.oci_image, cdst *C.char, opts *C.oci_call_options, fds *C.int, n C.size_t, errOut **C.oci_error) C.oci_status {
		return C.oci_rootfs(cp, ip, cdst, opts, fds, n, errOut)
	})
}

// ExtractLayers is like RootFS, but fetches and extracts every layer
// (concurrently), replacing the files already in dst.
func (c *Cache) ExtractLayers(ctx context.Context, img *Image, dst string, opts ...CallOption) ([]*os.File, error) {
	return c.layerFiles(ctx, img, dst, callConfigOf(opts), func(cp *C.oci_cache, ip *C.oci_image, cdst *C.char, opts *C.oci_call_options, fds *C.int, n C.size_t, errOut **C.oci_error) C.oci_status {
		return C.oci_extract_layers(cp, ip, cdst, opts, fds, n, errOut)
	})
}

// ExtractLayer fetches and extracts layer index of img into dst, replacing
// any file there, and returns it opened as in RootFS. opts as RootFS's.
func (c *Cache) ExtractLayer(ctx context.Context, img *Image, dst string, index int, opts ...CallOption) (*os.File, error) {
	if index < 0 {
		return nil, invalidArgument("negative layer index")
	}
	cp, ip, release, err := c.acquireBoth(img)
	if err != nil {
		return nil, err
	}
	defer release()

	cdst, err := cString("dst", dst)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cdst))
	var fd C.int
	extras := callExtras{
		progress: callConfigOf(opts).progress,
		discard:  func() { syscall.Close(int(fd)) },
	}
	err = c.withCallExtras(ctx, extras, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return C.oci_extract_layer(cp, ip, C.size_t(index), cdst, opts, &fd, errOut)
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), layerPath(dst, img.Layers[index].DiffID)), nil
}

// layerFilesCall is the signature oci_rootfs and oci_extract_layers share,
// so one function does their locking, buffers and fd wrapping.
type layerFilesCall func(*C.oci_cache, *C.oci_image, *C.char, *C.oci_call_options, *C.int, C.size_t, **C.oci_error) C.oci_status

func (c *Cache) layerFiles(ctx context.Context, img *Image, dst string, cfg callConfig, call layerFilesCall) ([]*os.File, error) {
	cp, ip, release, err := c.acquireBoth(img)
	if err != nil {
		return nil, err
	}
	defer release()

	cdst, err := cString("dst", dst)
	if err != nil {
		return nil, err
	}
	defer C.free(unsafe.Pointer(cdst))
	n := len(img.Layers)
	// One spare slot so &fds[0] exists (the library rejects a NULL fds_out
	// even for an image without layers). Go memory holding no Go pointers,
	// written only during the call: fine by cgo's pointer rules.
	fds := make([]C.int, n+1)
	extras := callExtras{
		progress: cfg.progress,
		discard: func() {
			for _, fd := range fds[:n] {
				syscall.Close(int(fd))
			}
		},
	}
	err = c.withCallExtras(ctx, extras, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return call(cp, ip, cdst, opts, &fds[0], C.size_t(n), errOut)
	})
	if err != nil {
		return nil, err
	}
	files := make([]*os.File, n)
	for i, fd := range fds[:n] {
		files[i] = os.NewFile(uintptr(fd), layerPath(dst, img.Layers[i].DiffID))
	}
	return files, nil
}

// layerPath is where the library puts a layer: dst/<algorithm>/<hex>.
func layerPath(dst, diffID string) string {
	alg, hex, ok := strings.Cut(diffID, ":")
	if !ok {
		return filepath.Join(dst, diffID)
	}
	return filepath.Join(dst, alg, hex)
}

// FetchLayer starts streaming layer index of img, uncompressed. The reader
// reports io.EOF only after the blob's digest and size and the tar's
// diff_id were verified; a mismatch is an error matching ErrDigestMismatch.
// Close the reader to stop the download: Close from another goroutine also
// ends a Read waiting for the network, which then fails with an error
// matching ErrClosed.
//
// ctx bounds the start of the download and is checked before every Read:
// once it is done, Read fails with an error matching ErrCanceled and
// ctx.Err(). A Read already waiting for the network is not interrupted by
// ctx (this package stops watching ctx when FetchLayer returns), so a
// stalled registry holds it until data, an error or the end arrives, until
// Options.StallTimeout ends it, or until Close. ctx's deadline is the
// library's deadline for the start only. It reports no progress: reports
// would stop when the call returns, before the layer is read.
func (c *Cache) FetchLayer(ctx context.Context, img *Image, index int) (io.ReadCloser, error) {
	if index < 0 {
		return nil, invalidArgument("negative layer index")
	}
	cp, ip, release, err := c.acquireBoth(img)
	if err != nil {
		return nil, err
	}
	defer release()

	// The reader's own token, which the library keeps with the reader and
	// watches during every read: Close triggers it.
	var cancel *C.oci_cancel
	if st := C.oci_cancel_new(&cancel); st != C.OCI_OK {
		return nil, statusError(st, "oci_cancel_new")
	}
	var reader *C.oci_layer_reader
	err = c.withCallExtras(ctx, callExtras{cancel: cancel}, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return C.oci_fetch_layer(cp, ip, C.size_t(index), opts, &reader, errOut)
	})
	if err != nil {
		C.oci_cancel_free(cancel)
		return nil, err
	}
	r := &layerReader{ctx: ctx, ptr: reader, cancel: cancel}
	runtime.SetFinalizer(r, (*layerReader).Close)
	return r, nil
}

// layerReader is FetchLayer's io.ReadCloser. The C reader keeps what it
// needs of the cache and image alive, so it does not lock them.
type layerReader struct {
	ctx context.Context
	// mu serializes Read and the free in Close: the C reader is for one
	// thread at a time, and freeing it under a read would be a use after
	// free.
	mu  sync.Mutex
	ptr *C.oci_layer_reader
	eof bool

	// cancelMu guards cancel, the reader's token, which Close triggers
	// before it waits for mu, so that a Read stuck on the network returns.
	cancelMu sync.Mutex
	cancel   *C.oci_cancel
	// closing is set once Close began: a Read it stopped says ErrClosed.
	closing atomic.Bool
}

// readChunk bounds one C read, so a huge p cannot make a single
// uninterruptible call and ctx is looked at every so often.
const readChunk = 1 << 20

// Read implements io.Reader.
func (r *layerReader) Read(p []byte) (int, error) {
	if inProgressCallback() {
		return 0, callbackError("a layer reader's Read")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ptr == nil {
		return 0, closedError("layer reader")
	}
	if r.eof {
		return 0, io.EOF
	}
	if len(p) == 0 {
		// The library refuses a read of zero bytes (its zero count means
		// only the end), and io.Reader allows (0, nil).
		return 0, nil
	}
	if err := r.ctx.Err(); err != nil {
		return 0, contextError(err)
	}
	if len(p) > readChunk {
		p = p[:readChunk]
	}
	// p is Go memory without Go pointers, which the library only uses
	// during the call: allowed by cgo's pointer rules, and it saves a copy.
	var n C.size_t
	var cerr *C.oci_error
	st := C.oci_layer_reader_read(r.ptr, (*C.uint8_t)(unsafe.Pointer(&p[0])), C.size_t(len(p)), &n, &cerr)
	if st == C.OCI_E_CANCELED && r.closing.Load() {
		C.oci_error_free(cerr)
		return 0, closedError("layer reader")
	}
	if st != C.OCI_OK {
		return 0, takeError(st, cerr)
	}
	if n == 0 {
		r.eof = true
		return 0, io.EOF
	}
	return int(n), nil
}

// Close implements io.Closer: it frees the reader, stopping its download.
// A Read running in another goroutine is stopped first (it fails with an
// error matching ErrClosed); Close waits for it to return. Closing twice is
// a no-op.
func (r *layerReader) Close() error {
	r.cancelMu.Lock()
	if r.cancel != nil {
		r.closing.Store(true)
		C.oci_cancel_trigger(r.cancel)
	}
	r.cancelMu.Unlock()

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ptr != nil {
		C.oci_layer_reader_free(r.ptr)
		r.ptr = nil
		runtime.SetFinalizer(r, nil)
	}
	r.cancelMu.Lock()
	if r.cancel != nil {
		C.oci_cancel_free(r.cancel)
		r.cancel = nil
	}
	r.cancelMu.Unlock()
	return nil
}
