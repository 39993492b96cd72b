// This file owns the image view: Cache.View and the View it returns, an
// io/fs file system of an image's files read in place from its layer tars,
// with the files it opens, their FileInfo and ViewEntry, and how the
// view's errors become *fs.PathError.

package ocicache

/*
#include <stdlib.h>
#include "oci_cache.h"
*/
import "C"

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// View is an image's files, its layers merged as the OCI image spec says
// (upper layers win, whiteouts and opaque directories apply), read in place
// from the verified layer tars through the index written beside each. It
// implements fs.FS, fs.StatFS, fs.ReadDirFS and fs.ReadFileFS, and has
// ReadLink and Lstat (the methods of Go 1.25's fs.ReadLinkFS) and Xattrs.
//
// Names are io/fs names: slash-separated, without a leading slash, "."
// for the root; anything fs.ValidPath rejects fails with an error matching
// fs.ErrInvalid. Symlinks are followed inside the image root only: an
// absolute target starts again at the image's root, ".." never rises above
// it, and a loop (or more than 40 links in one lookup) fails with an error
// matching ErrInvalidContent. Open, Stat, ReadDir and ReadFile follow a
// symlink in the last component; Lstat and ReadLink do not. A missing or
// whited-out name fails with an error matching fs.ErrNotExist. Errors are
// *fs.PathError around an *Error. Entries whose tar name is not valid UTF-8
// cannot be named and are left out of listings.
//
// A View is safe for concurrent use. It holds its own descriptors of the
// layer tars, so it stays valid after the Image and the Cache it came from
// are closed; Close releases them. Files already opened stay readable after
// Close.
type View struct {
	// mu is held for reading by every call that uses ptr, and for writing
	// by Close, so the handle is never freed under a running call.
	mu  sync.RWMutex
	ptr *C.oci_view
}

var (
	_ fs.StatFS     = (*View)(nil)
	_ fs.ReadDirFS  = (*View)(nil)
	_ fs.ReadFileFS = (*View)(nil)
)

// ViewEntry is what FileInfo.Sys returns for a file of a View: the parts of
// its tar entry that fs.FileInfo has no place for.
type ViewEntry struct {
	// Uid and Gid are the owner the tar entry records.
	Uid, Gid uint32
	// DevMajor and DevMinor are a device's numbers; 0 for other files.
	DevMajor, DevMinor uint32
	// Layer is the index in Image.Layers (bottom is 0) of the topmost
	// layer with an entry of its own for the name (a whiteout or a child's
	// entry alone does not count); a hardlink's is its own entry's layer.
	Layer int
}

// View opens the view of img's files: it runs RootFS first (layers already
// in dst are reused, missing ones fetched; dst must exist), then opens
// every layer tar's index in dst, building and writing any that is missing
// or bad. ctx bounds this opening only; the View's calls read local files.
func (c *Cache) View(ctx context.Context, img *Image, dst string) (*View, error) {
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
	var cview *C.oci_view
	err = c.withCall(ctx, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return C.oci_view_open(cp, ip, cdst, opts, &cview, errOut)
	})
	if err != nil {
		return nil, err
	}
	v := &View{ptr: cview}
	// Only a safety net for a forgotten Close: the handle holds one
	// descriptor per layer, which the garbage collector cannot see.
	runtime.SetFinalizer(v, (*View).Close)
	return v, nil
}

// Close releases the view's descriptors of the layer tars, after waiting
// for the calls in flight on it. Files it opened stay readable. Later
// calls fail with an error matching ErrClosed, fs.ErrClosed and
// ErrInvalidArgument. Closing twice is a no-op.
func (v *View) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ptr != nil {
		C.oci_view_free(v.ptr)
		v.ptr = nil
		runtime.SetFinalizer(v, nil)
	}
	return nil
}

// Open opens name, following symlinks inside the image root. A regular
// file is an fs.File that is also an io.ReaderAt and an io.Seeker, reading
// the layer tar through a descriptor of its own (close it); a directory is
// an fs.ReadDirFile; a device or FIFO opens as an empty file, since an
// image stores no data for one.
func (v *View) Open(name string) (fs.File, error) {
	var file fs.File
	err := v.do("open", name, func(l lookup) error {
		p, st, err := l.follow()
		if err != nil {
			return err
		}
		info := newFileInfo(path.Base(name), &st)
		switch st._type {
		case C.OCI_FILE_REGULAR:
			f, off, size, err := l.openFile(p)
			if err != nil {
				return err
			}
			file = &viewFile{info: info, f: f, r: io.NewSectionReader(f, off, size)}
		case C.OCI_FILE_DIRECTORY:
			entries, err := l.readDir(p)
			if err != nil {
				return err
			}
			file = &viewDir{info: info, entries: entries}
		default:
			file = &viewFile{info: info, r: io.NewSectionReader(strings.NewReader(""), 0, 0)}
		}
		return nil
	})
	return file, err
}

// Stat describes name, following symlinks inside the image root like
// os.Stat; its Name is the base of name, and its Sys a *ViewEntry.
func (v *View) Stat(name string) (fs.FileInfo, error) {
	var info fs.FileInfo
	err := v.do("stat", name, func(l lookup) error {
		_, st, err := l.follow()
		if err == nil {
			info = newFileInfo(path.Base(name), &st)
		}
		return err
	})
	return info, err
}

// Lstat describes name like Stat, but a symlink in the last component is
// described itself (fs.ModeSymlink, the length of its target as Size).
func (v *View) Lstat(name string) (fs.FileInfo, error) {
	var info fs.FileInfo
	err := v.do("lstat", name, func(l lookup) error {
		st, err := l.stat(imagePath(name))
		if err == nil {
			info = newFileInfo(path.Base(name), &st)
		}
		return err
	})
	return info, err
}

// ReadDir lists directory name (symlinks followed), sorted by name; each
// entry describes itself without following a symlink.
func (v *View) ReadDir(name string) ([]fs.DirEntry, error) {
	var entries []fs.DirEntry
	err := v.do("readdir", name, func(l lookup) error {
		p, _, err := l.follow()
		if err != nil {
			return err
		}
		entries, err = l.readDir(p)
		return err
	})
	return entries, err
}

// ReadFile returns the content of name (symlinks followed). A directory
// fails like os.ReadFile's (EISDIR); a device or FIFO is empty.
func (v *View) ReadFile(name string) ([]byte, error) {
	var data []byte
	err := v.do("read", name, func(l lookup) error {
		p, st, err := l.follow()
		if err != nil {
			return err
		}
		switch st._type {
		case C.OCI_FILE_REGULAR:
			f, off, size, err := l.openFile(p)
			if err != nil {
				return err
			}
			defer f.Close()
			data = make([]byte, size)
			if _, err := f.ReadAt(data, off); err != nil {
				return err
			}
		case C.OCI_FILE_DIRECTORY:
			return syscall.EISDIR
		default:
			data = []byte{}
		}
		return nil
	})
	return data, err
}

// ReadLink returns the target of symlink name, as stored. name not being
// a symlink fails with an error matching fs.ErrInvalid.
func (v *View) ReadLink(name string) (string, error) {
	var target string
	err := v.do("readlink", name, func(l lookup) error {
		var err error
		target, err = l.text(imagePath(name), func(p, buf *C.char, capacity C.size_t, n *C.size_t, errOut **C.oci_error) C.oci_status {
			return C.oci_view_readlink(l.ptr, p, buf, capacity, n, errOut)
		})
		return err
	})
	return target, err
}

// Xattrs returns the extended attributes of name (a symlink in the last
// component is not followed; a hardlink has its target's), as its tar
// entry's PAX SCHILY.xattr.* records give them: name to raw value, empty
// when it has none.
func (v *View) Xattrs(name string) (map[string][]byte, error) {
	xattrs := map[string][]byte{}
	err := v.do("xattrs", name, func(l lookup) error {
		return withPath(imagePath(name), func(cp *C.char, errOut **C.oci_error) C.oci_status {
			var list *C.oci_xattr_list
			st := C.oci_view_xattrs(l.ptr, cp, &list, errOut)
			if st != C.OCI_OK {
				return st
			}
			defer C.oci_xattr_list_free(list)
			for i := C.size_t(0); i < C.oci_xattr_list_count(list); i++ {
				var n C.size_t
				value := C.oci_xattr_list_value(list, i, &n)
				xattrs[C.GoString(C.oci_xattr_list_name(list, i))] = C.GoBytes(unsafe.Pointer(value), C.int(n))
			}
			return st
		})
	})
	if err != nil {
		return nil, err
	}
	return xattrs, nil
}

// do runs one call of the view on io/fs name: checks name, holds the view
// for the call and wraps a failure in an *fs.PathError naming op and name.
func (v *View) do(op, name string, call func(lookup) error) error {
	if err := v.run(name, call); err != nil {
		return &fs.PathError{Op: op, Path: name, Err: err}
	}
	return nil
}

// run is do without the wrapping.
func (v *View) run(name string, call func(lookup) error) error {
	if !fs.ValidPath(name) {
		return invalidName("not a valid io/fs name (see fs.ValidPath)")
	}
	if strings.IndexByte(name, 0) >= 0 {
		return invalidName("name contains a NUL byte")
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if v.ptr == nil {
		return &Error{Code: C.OCI_E_INVALID_ARGUMENT, Message: "invalid argument: use of a closed View", cause: viewClosed{}}
	}
	return call(lookup{ptr: v.ptr, name: name})
}

// imagePath is io/fs name as the library names it: absolute in the image.
func imagePath(name string) string {
	if name == "." {
		return "/"
	}
	return "/" + name
}

// lookup makes the library's calls for one call of a View, which holds
// the view for it. Paths are the library's: absolute in the image, and
// without a NUL byte (checked with the name they come from).
type lookup struct {
	ptr  *C.oci_view
	name string
}

// follow is name with a symlink in its last component followed (the
// library follows the others): the path it resolves to, and its metadata.
func (l lookup) follow() (string, C.oci_stat, error) {
	p := imagePath(l.name)
	st, err := l.stat(p)
	if err != nil || st._type != C.OCI_FILE_SYMLINK {
		return p, st, err
	}
	p, err = l.text(p, func(p, buf *C.char, capacity C.size_t, n *C.size_t, errOut **C.oci_error) C.oci_status {
		return C.oci_view_resolve(l.ptr, p, buf, capacity, n, errOut)
	})
	if err != nil {
		return "", st, err
	}
	st, err = l.stat(p)
	return p, st, err
}

// stat is the metadata of p, a symlink in its last component not followed.
func (l lookup) stat(p string) (C.oci_stat, error) {
	var st C.oci_stat
	err := withPath(p, func(cp *C.char, errOut **C.oci_error) C.oci_status {
		return C.oci_view_stat(l.ptr, cp, &st, errOut)
	})
	return st, err
}

// textCall is the signature oci_view_readlink and oci_view_resolve share
// once given the view.
type textCall func(p, buf *C.char, capacity C.size_t, n *C.size_t, errOut **C.oci_error) C.oci_status

// text runs call for p with a buffer large enough for its answer: a first
// one that fits most paths, else one of the length the library reported.
func (l lookup) text(p string, call textCall) (string, error) {
	var out string
	err := withPath(p, func(cp *C.char, errOut **C.oci_error) C.oci_status {
		// Go memory holding no Go pointers, written only during the call:
		// fine by cgo's pointer rules.
		buf := make([]C.char, 256)
		var n C.size_t
		st := call(cp, &buf[0], C.size_t(len(buf)), &n, errOut)
		if st == C.OCI_E_BUFFER_TOO_SMALL {
			C.oci_error_free(*errOut)
			*errOut = nil
			// The view is immutable: the same call needs no more than n.
			buf = make([]C.char, int(n)+1)
			st = call(cp, &buf[0], C.size_t(len(buf)), &n, errOut)
		}
		if st == C.OCI_OK {
			out = C.GoStringN(&buf[0], C.int(n))
		}
		return st
	})
	return out, err
}

// openFile opens regular file p: a descriptor of the layer tar holding it
// (its own, named after the io/fs name) and where its bytes are in it.
func (l lookup) openFile(p string) (*os.File, int64, int64, error) {
	var fd C.int
	var off, size C.uint64_t
	err := withPath(p, func(cp *C.char, errOut **C.oci_error) C.oci_status {
		return C.oci_view_open_file(l.ptr, cp, &fd, &off, &size, errOut)
	})
	if err != nil {
		return nil, 0, 0, err
	}
	// Offsets and sizes of a tar on disk fit an int64.
	return os.NewFile(uintptr(fd), l.name), int64(off), int64(size), nil
}

// readDir lists directory p, each entry described without following it.
func (l lookup) readDir(p string) ([]fs.DirEntry, error) {
	var names []string
	err := withPath(p, func(cp *C.char, errOut **C.oci_error) C.oci_status {
		var list *C.oci_dir_list
		st := C.oci_view_readdir(l.ptr, cp, &list, errOut)
		if st != C.OCI_OK {
			return st
		}
		defer C.oci_dir_list_free(list)
		names = make([]string, int(C.oci_dir_list_count(list)))
		for i := range names {
			names[i] = C.GoString(C.oci_dir_list_name(list, C.size_t(i)))
		}
		return st
	})
	if err != nil {
		return nil, err
	}
	prefix := p + "/"
	if p == "/" {
		prefix = p
	}
	entries := make([]fs.DirEntry, len(names))
	for i, name := range names {
		st, err := l.stat(prefix + name)
		if err != nil {
			return nil, err
		}
		entries[i] = fs.FileInfoToDirEntry(newFileInfo(name, &st))
	}
	return entries, nil
}

// withPath runs call with p as a C string and turns its status into the
// view's error.
func withPath(p string, call func(cp *C.char, errOut **C.oci_error) C.oci_status) error {
	cp := C.CString(p)
	defer C.free(unsafe.Pointer(cp))
	var cerr *C.oci_error
	if st := call(cp, &cerr); st != C.OCI_OK {
		return viewError(st, cerr)
	}
	return nil
}

// viewError is a failure of the view as an *Error that also matches the
// io/fs error of its kind: fs.ErrNotExist for a missing or whited-out
// name, fs.ErrInvalid for a call that does not apply to the file (readlink
// of a non-symlink, readdir of a non-directory).
func viewError(st C.oci_status, cerr *C.oci_error) *Error {
	e := takeError(st, cerr)
	switch st {
	case C.OCI_E_NOT_FOUND:
		e.cause = fs.ErrNotExist
	case C.OCI_E_INVALID_ARGUMENT:
		e.cause = fs.ErrInvalid
	}
	return e
}

// invalidName is the error of a name the view cannot take.
func invalidName(message string) *Error {
	e := invalidArgument(message)
	e.cause = fs.ErrInvalid
	return e
}

// viewClosed is the cause of a call on a closed View: it matches ErrClosed,
// as the error of every closed handle does, and fs.ErrClosed, which io/fs
// callers look for.
type viewClosed struct{}

func (viewClosed) Error() string { return "use of a closed View" }

func (viewClosed) Is(target error) bool { return target == ErrClosed || target == fs.ErrClosed }

// fileInfo is the fs.FileInfo of a name of a View.
type fileInfo struct {
	name  string
	size  int64
	mode  fs.FileMode
	mtime time.Time
	entry ViewEntry
}

func newFileInfo(name string, st *C.oci_stat) *fileInfo {
	return &fileInfo{
		name:  name,
		size:  int64(st.size),
		mode:  fileMode(st),
		mtime: time.Unix(int64(st.mtime_sec), int64(st.mtime_nsec)),
		entry: ViewEntry{
			Uid:      uint32(st.uid),
			Gid:      uint32(st.gid),
			DevMajor: uint32(st.dev_major),
			DevMinor: uint32(st.dev_minor),
			Layer:    int(st.layer),
		},
	}
}

// fileMode is the Go mode of a tar entry: its permission bits, setuid,
// setgid and sticky as Go's own bits, and its type.
func fileMode(st *C.oci_stat) fs.FileMode {
	mode := fs.FileMode(st.mode & 0o777)
	if st.mode&0o4000 != 0 {
		mode |= fs.ModeSetuid
	}
	if st.mode&0o2000 != 0 {
		mode |= fs.ModeSetgid
	}
	if st.mode&0o1000 != 0 {
		mode |= fs.ModeSticky
	}
	switch st._type {
	case C.OCI_FILE_DIRECTORY:
		mode |= fs.ModeDir
	case C.OCI_FILE_SYMLINK:
		mode |= fs.ModeSymlink
	case C.OCI_FILE_CHAR_DEVICE:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case C.OCI_FILE_BLOCK_DEVICE:
		mode |= fs.ModeDevice
	case C.OCI_FILE_FIFO:
		mode |= fs.ModeNamedPipe
	}
	return mode
}

func (fi *fileInfo) Name() string       { return fi.name }
func (fi *fileInfo) Size() int64        { return fi.size }
func (fi *fileInfo) Mode() fs.FileMode  { return fi.mode }
func (fi *fileInfo) ModTime() time.Time { return fi.mtime }
func (fi *fileInfo) IsDir() bool        { return fi.mode.IsDir() }

// Sys returns a *ViewEntry.
func (fi *fileInfo) Sys() any {
	entry := fi.entry
	return &entry
}

// viewFile is an opened file that is not a directory: a regular file's
// bytes in its layer tar, or nothing for a device or FIFO. Like an
// *os.File, ReadAt may be called concurrently, Read and Seek may not.
type viewFile struct {
	info   *fileInfo
	f      *os.File // nil for a device or FIFO
	r      *io.SectionReader
	closed atomic.Bool
}

func (f *viewFile) Stat() (fs.FileInfo, error) {
	if f.closed.Load() {
		return nil, f.closedError("stat")
	}
	return f.info, nil
}

func (f *viewFile) Read(p []byte) (int, error) {
	if f.closed.Load() {
		return 0, f.closedError("read")
	}
	return f.r.Read(p)
}

func (f *viewFile) ReadAt(p []byte, off int64) (int, error) {
	if f.closed.Load() {
		return 0, f.closedError("read")
	}
	return f.r.ReadAt(p, off)
}

func (f *viewFile) Seek(offset int64, whence int) (int64, error) {
	if f.closed.Load() {
		return 0, f.closedError("seek")
	}
	return f.r.Seek(offset, whence)
}

// Close closes the file's descriptor of its layer tar. Closing twice
// fails with an error matching fs.ErrClosed, as for an *os.File.
func (f *viewFile) Close() error {
	if f.closed.Swap(true) {
		return f.closedError("close")
	}
	if f.f != nil {
		return f.f.Close()
	}
	return nil
}

func (f *viewFile) closedError(op string) error {
	return &fs.PathError{Op: op, Path: f.info.name, Err: fs.ErrClosed}
}

// viewDir is an opened directory: its entries, listed when it was opened.
type viewDir struct {
	info    *fileInfo
	mu      sync.Mutex
	entries []fs.DirEntry // those ReadDir has not returned yet
	closed  bool
}

func (d *viewDir) Stat() (fs.FileInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, d.closedError("stat")
	}
	return d.info, nil
}

// Read fails: a directory has no bytes to read (EISDIR, as os says).
func (d *viewDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.info.name, Err: syscall.EISDIR}
}

// ReadDir implements fs.ReadDirFile: with n > 0 at most n entries, and
// io.EOF once none are left; with n <= 0 all that are left.
func (d *viewDir) ReadDir(n int) ([]fs.DirEntry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, d.closedError("readdir")
	}
	if n > 0 && len(d.entries) == 0 {
		return nil, io.EOF
	}
	if n <= 0 || n > len(d.entries) {
		n = len(d.entries)
	}
	list := d.entries[:n:n]
	d.entries = d.entries[n:]
	return list, nil
}

func (d *viewDir) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return d.closedError("close")
	}
	d.closed = true
	d.entries = nil
	return nil
}

func (d *viewDir) closedError(op string) error {
	return &fs.PathError{Op: op, Path: d.info.name, Err: fs.ErrClosed}
}
