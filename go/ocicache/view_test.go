// This file owns the tests of the image view (Cache.View and *View): two
// images pushed to the real registry, built here with archive/tar after
// the Rust harness's view layers (every kind of entry, whiteouts, opaque
// directories, hardlinks, symlinks, GNU long and PAX names), held to a
// table of what each name must be, written out by hand from the layers.

package ocicache_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"oci-cache/go/ocicache"
)

// The mtime of every tar entry but the PAX file's.
const viewMtime = 1_700_000_000

// A name longer than ustar's 100 bytes, written with a GNU long-name
// header, in directories no tar has an entry for.
const viewLongName = "deep/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb/file"

// A name with non-ASCII bytes and an xattr, written with a PAX header.
const viewPaxName = "pax/\u00e9t\u00e9-with-a-name-that-pax-carries"

// A path, and a symlink target, longer than the first buffer View gives
// the library for one (256 bytes): in go/view:links.
var (
	viewFarPath     = "far/" + strings.Repeat("c", 200) + "/" + strings.Repeat("d", 100) + "/file"
	viewClimbTarget = strings.Repeat("usr/../", 40) + "etc/passwd"
)

// The PAX file's mtime, with nanoseconds only a PAX header holds.
var viewPaxMtime = time.Unix(viewMtime, 250_000_000)

// libcContent is the 5000 bytes of usr/lib/libc.so: no two neighbouring
// bytes alike, so an offset off by one shows.
func libcContent() []byte {
	b := make([]byte, 5000)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// tarEntry is one entry of a test layer; names as the tar writes them.
type tarEntry struct {
	hdr  tar.Header
	data []byte
}

func dirEntry(name string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}}
}

func fileEntry(name string, mode int64, data string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, data: []byte(data)}
}

func symlinkEntry(name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

// whiteoutEntry hides name of the layers below: dir/.wh.base.
func whiteoutEntry(name string) tarEntry {
	dir, base := filepath.Split(name)
	return fileEntry(dir+".wh."+base, 0o644, "")
}

// layerTar writes entries in order, owned by 0:0 at viewMtime unless an
// entry says otherwise.
func layerTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := e.hdr
		hdr.Size = int64(len(e.data))
		if hdr.ModTime.IsZero() {
			hdr.ModTime = time.Unix(viewMtime, 0)
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			t.Fatalf("tar header %s: %v", hdr.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// viewLayers are the layers of the view images, bottom first: the two of
// go/view:v1, and the one go/view:links adds, whose symlinks to
// directories, loop and dangling link keep it from fstest.TestFS (see
// TestViewSymlinks).
func viewLayers(t *testing.T) [3][]byte {
	low := layerTar(t, []tarEntry{
		dirEntry("etc", 0o755),
		fileEntry("etc/os-release", 0o644, "ID=base\n"),
		fileEntry("etc/passwd", 0o644, "root:x:0:0::/root:/bin/sh\n"),
		dirEntry("usr", 0o755),
		dirEntry("usr/lib", 0o755),
		fileEntry("usr/lib/libc.so", 0o755, string(libcContent())),
		dirEntry("opaque", 0o755),
		fileEntry("opaque/low", 0o644, "low"),
		dirEntry("was-dir", 0o755),
		fileEntry("was-dir/child", 0o644, "child"),
		fileEntry("was-file", 0o600, "a file"),
		fileEntry("removed", 0o644, "removed"),
		dirEntry("removed-dir", 0o755),
		fileEntry("removed-dir/x", 0o644, "x"),
		dirEntry("dev", 0o755),
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/sda", Mode: 0o660, Devmajor: 8, Devminor: 0}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "dev/fifo", Mode: 0o644}},
		dirEntry("tmp", 0o1777),
	})
	top := layerTar(t, []tarEntry{
		fileEntry("etc/os-release", 0o644, "ID=top\n"),
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "etc/os-release-link", Linkname: "etc/os-release", Mode: 0o644}},
		fileEntry("opaque/.wh..wh..opq", 0o644, ""),
		fileEntry("opaque/mid", 0o640, "mid"),
		fileEntry("was-dir", 0o644, "now a file"),
		dirEntry("was-file", 0o700),
		fileEntry("was-file/inside", 0o644, "inside"),
		whiteoutEntry("removed"),
		whiteoutEntry("removed-dir"),
		symlinkEntry("etc/abs", "/etc/passwd"),
		symlinkEntry("etc/rel", "../usr/lib/libc.so"),
		// Above the root as written: inside the image, /etc/passwd.
		symlinkEntry("escape", "../../../../etc/passwd"),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: viewLongName, Mode: 0o644, Format: tar.FormatGNU}, data: []byte("long name")},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: viewPaxName, Mode: 0o644, Format: tar.FormatPAX,
			ModTime: viewPaxMtime, PAXRecords: map[string]string{"SCHILY.xattr.user.origin": "pax"}}, data: []byte("pax content")},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "owned", Mode: 0o4755, Uid: 1000, Gid: 100}, data: []byte("setuid")},
		fileEntry("sgid", 0o2755, "setgid"),
	})
	links := layerTar(t, []tarEntry{
		symlinkEntry("lib", "usr/lib"),
		symlinkEntry("abs-usr", "/usr"),
		symlinkEntry("escape-dir", "../../.."),
		symlinkEntry("loop-a", "loop-b"),
		symlinkEntry("loop-b", "loop-a"),
		symlinkEntry("dangling", "no-such-file"),
		fileEntry(viewFarPath, 0o644, "far"),
		symlinkEntry("to-far", viewFarPath),
		symlinkEntry("climb", viewClimbTarget),
	})
	return [3][]byte{low, top, links}
}

// viewNode is what a name of go/view:v1 must be.
type viewNode struct {
	mode    fs.FileMode
	size    int64
	mtime   time.Time
	entry   ocicache.ViewEntry
	content string // regular files
	target  string // symlinks
}

// viewTree is every name of go/view:v1 with what it must be, worked out
// from the layers by the image spec's rules.
func viewTree() map[string]viewNode {
	at := time.Unix(viewMtime, 0)
	dir := func(mode fs.FileMode, layer int) viewNode {
		return viewNode{mode: fs.ModeDir | mode, mtime: at, entry: ocicache.ViewEntry{Layer: layer}}
	}
	file := func(mode fs.FileMode, layer int, content string) viewNode {
		return viewNode{mode: mode, size: int64(len(content)), mtime: at, entry: ocicache.ViewEntry{Layer: layer}, content: content}
	}
	link := func(target string) viewNode {
		return viewNode{mode: fs.ModeSymlink | 0o777, size: int64(len(target)), mtime: at, entry: ocicache.ViewEntry{Layer: 1}, target: target}
	}
	// A directory no layer has an entry for: 0755, 0:0, mtime 0, from
	// the layer whose deeper entries imply it.
	implied := func(layer int) viewNode {
		return viewNode{mode: fs.ModeDir | 0o755, mtime: time.Unix(0, 0), entry: ocicache.ViewEntry{Layer: layer}}
	}
	long := strings.Split(viewLongName, "/")
	pax := file(0o644, 1, "pax content")
	pax.mtime = viewPaxMtime
	owned := file(fs.ModeSetuid|0o755, 1, "setuid")
	owned.entry.Uid, owned.entry.Gid = 1000, 100
	tree := map[string]viewNode{
		// The root: no layer has an entry for it.
		".":                   implied(0),
		"etc":                 dir(0o755, 0),
		"etc/passwd":          file(0o644, 0, "root:x:0:0::/root:/bin/sh\n"),
		"etc/os-release":      file(0o644, 1, "ID=top\n"),
		"etc/os-release-link": file(0o644, 1, "ID=top\n"),
		"etc/abs":             link("/etc/passwd"),
		"etc/rel":             link("../usr/lib/libc.so"),
		"escape":              link("../../../../etc/passwd"),
		"usr":                 dir(0o755, 0),
		"usr/lib":             dir(0o755, 0),
		"usr/lib/libc.so":     file(0o755, 0, string(libcContent())),
		// Opaque in layer 1, which has no entry of its own for it.
		"opaque":          dir(0o755, 0),
		"opaque/mid":      file(0o640, 1, "mid"),
		"was-dir":         file(0o644, 1, "now a file"),
		"was-file":        dir(0o700, 1),
		"was-file/inside": file(0o644, 1, "inside"),
		"dev":             dir(0o755, 0),
		"dev/null": {mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, mtime: at,
			entry: ocicache.ViewEntry{DevMajor: 1, DevMinor: 3}},
		"dev/sda":                   {mode: fs.ModeDevice | 0o660, mtime: at, entry: ocicache.ViewEntry{DevMajor: 8}},
		"dev/fifo":                  {mode: fs.ModeNamedPipe | 0o644, mtime: at},
		"tmp":                       dir(fs.ModeSticky|0o777, 0),
		long[0]:                     implied(1),
		strings.Join(long[:2], "/"): implied(1),
		strings.Join(long[:3], "/"): implied(1),
		viewLongName:                file(0o644, 1, "long name"),
		"pax":                       implied(1),
		viewPaxName:                 pax,
		"owned":                     owned,
		"sgid":                      file(fs.ModeSetgid|0o755, 1, "setgid"),
	}
	return tree
}

// Names of go/view:v1's layers that the upper layer hides.
var viewHidden = []string{"removed", "removed-dir", "removed-dir/x", "opaque/low", "was-dir/child"}

var viewImages struct {
	once         sync.Once
	plain, links string // references
}

// pushViewImages pushes go/view:v1 (two gzip layers) and go/view:links
// (those and a plain one) to the test registry, once per test binary.
func pushViewImages(t *testing.T) (plain, links string) {
	t.Helper()
	viewImages.once.Do(func() {
		const repo = "go/view"
		layers := viewLayers(t)
		var descriptors []map[string]any
		var diffIDs []string
		for i, tarBytes := range layers {
			blob, mediaType := tarBytes, "application/vnd.oci.image.layer.v1.tar"
			if i < 2 {
				var gz bytes.Buffer
				zw := gzip.NewWriter(&gz)
				if _, err := zw.Write(tarBytes); err != nil {
					t.Fatal(err)
				}
				if err := zw.Close(); err != nil {
					t.Fatal(err)
				}
				blob, mediaType = gz.Bytes(), "application/vnd.oci.image.layer.v1.tar+gzip"
			}
			descriptors = append(descriptors, map[string]any{"mediaType": mediaType, "digest": pushBlob(t, repo, blob), "size": len(blob)})
			diffIDs = append(diffIDs, digestOf(tarBytes))
		}
		push := func(tag string, n int) string {
			config, err := json.Marshal(map[string]any{
				"architecture": runtimeArch(),
				"os":           "linux",
				"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs[:n]},
			})
			if err != nil {
				t.Fatal(err)
			}
			manifest, err := json.Marshal(map[string]any{
				"schemaVersion": 2,
				"mediaType":     ociManifestType,
				"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": pushBlob(t, repo, config), "size": len(config)},
				"layers":        descriptors[:n],
			})
			if err != nil {
				t.Fatal(err)
			}
			pushManifest(t, repo, tag, ociManifestType, manifest)
			return registryHost + "/" + repo + ":" + tag
		}
		viewImages.plain, viewImages.links = push("v1", 2), push("links", 3)
	})
	if viewImages.plain == "" {
		t.Fatal("pushing the view images failed in an earlier test")
	}
	return viewImages.plain, viewImages.links
}

// openView opens the view of ref in a fresh dst, closed at the test's end.
func openView(t *testing.T, c *ocicache.Cache, ref string) *ocicache.View {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	view, err := c.View(ctx, fetch(t, c, ref), t.TempDir())
	if err != nil {
		t.Fatalf("View(%s): %v", ref, err)
	}
	t.Cleanup(func() { view.Close() })
	return view
}

// checkInfo compares info with want, name by name.
func checkInfo(t *testing.T, what string, info fs.FileInfo, name string, want viewNode) {
	t.Helper()
	entry, ok := info.Sys().(*ocicache.ViewEntry)
	if !ok {
		t.Errorf("%s: Sys() is %T, want *ocicache.ViewEntry", what, info.Sys())
		return
	}
	if info.Name() != name || info.Mode() != want.mode || info.Size() != want.size ||
		!info.ModTime().Equal(want.mtime) || *entry != want.entry || info.IsDir() != want.mode.IsDir() {
		t.Errorf("%s: %q %v size %d mtime %v %+v; want %q %v size %d mtime %v %+v", what,
			info.Name(), info.Mode(), info.Size(), info.ModTime(), *entry,
			name, want.mode, want.size, want.mtime, want.entry)
	}
}

// The view of go/view:v1 passes fstest.TestFS, holds exactly the names of
// the table, and each is what the table says: Lstat, Stat (following
// symlinks), ReadFile and ReadLink, exactly.
func TestViewFS(t *testing.T) {
	plain, _ := pushViewImages(t)
	c := openCache(t, ocicache.Options{})
	view := openView(t, c, plain)
	tree := viewTree()

	var names []string
	for name := range tree {
		if name != "." {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if err := fstest.TestFS(view, names...); err != nil {
		t.Fatal(err)
	}

	var walked []string
	err := fs.WalkDir(view, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if want, ok := tree[name]; !ok || d.Type() != want.mode.Type() {
			t.Errorf("WalkDir found %s of type %v, want %v (in the table: %v)", name, d.Type(), want.mode.Type(), ok)
		}
		walked = append(walked, name)
		return nil
	})
	if err != nil {
		t.Fatalf("WalkDir: %v", err)
	}
	sort.Strings(walked)
	if want := append([]string{"."}, names...); !reflect.DeepEqual(walked, want) {
		t.Errorf("WalkDir found %q\nwant %q", walked, want)
	}

	for name, want := range tree {
		base := filepath.Base(name)
		info, err := view.Lstat(name)
		if err != nil {
			t.Errorf("Lstat(%s): %v", name, err)
			continue
		}
		checkInfo(t, "Lstat("+name+")", info, base, want)
		switch {
		case want.mode.Type() == fs.ModeSymlink:
			target, err := view.ReadLink(name)
			if err != nil || target != want.target {
				t.Errorf("ReadLink(%s) = %q, %v; want %q", name, target, err, want.target)
			}
			// Stat and ReadFile follow it, inside the image.
			target = want.target
			if !path.IsAbs(target) {
				target = path.Join("/", path.Dir(name), target)
			}
			followed := tree[strings.TrimPrefix(path.Clean(target), "/")]
			info, err := view.Stat(name)
			if err != nil {
				t.Errorf("Stat(%s): %v", name, err)
			} else {
				checkInfo(t, "Stat("+name+")", info, base, followed)
			}
			data, err := view.ReadFile(name)
			if err != nil || string(data) != followed.content {
				t.Errorf("ReadFile(%s) = %q, %v; want %q", name, data, err, followed.content)
			}
		case want.mode.IsRegular():
			data, err := view.ReadFile(name)
			if err != nil || string(data) != want.content {
				t.Errorf("ReadFile(%s) = %d bytes, %v; want %q", name, len(data), err, want.content)
			}
		case !want.mode.IsDir():
			// Devices and FIFOs: the image stores no data for them.
			data, err := view.ReadFile(name)
			if err != nil || len(data) != 0 {
				t.Errorf("ReadFile(%s) = %q, %v; want nothing", name, data, err)
			}
		}
		if want.mode.Type() != fs.ModeSymlink {
			info, err := view.Stat(name)
			if err != nil {
				t.Errorf("Stat(%s): %v", name, err)
			} else {
				checkInfo(t, "Stat("+name+")", info, base, want)
			}
		}
	}

	// Directories list exactly their merged entries, sorted.
	wantDirs := map[string][]string{
		".":        {"deep", "dev", "escape", "etc", "opaque", "owned", "pax", "sgid", "tmp", "usr", "was-dir", "was-file"},
		"etc":      {"abs", "os-release", "os-release-link", "passwd", "rel"},
		"opaque":   {"mid"},
		"was-file": {"inside"},
		"dev":      {"fifo", "null", "sda"},
	}
	for dir, want := range wantDirs {
		entries, err := view.ReadDir(dir)
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ReadDir(%s) = %q, %v; want %q", dir, got, err, want)
		}
	}
}

// A regular file opened from a view is an io.ReaderAt and an io.Seeker
// over its bytes in the layer tar, through a descriptor of its own; a
// directory is an fs.ReadDirFile that cannot be read as bytes.
func TestViewFiles(t *testing.T) {
	plain, _ := pushViewImages(t)
	c := openCache(t, ocicache.Options{})
	view := openView(t, c, plain)
	want := libcContent()

	// Extended attributes from the PAX header; none elsewhere.
	if x, err := view.Xattrs(viewPaxName); err != nil || len(x) != 1 || string(x["user.origin"]) != "pax" {
		t.Errorf("Xattrs of the PAX file = %q, %v; want user.origin=pax", x, err)
	}
	if x, err := view.Xattrs("etc/passwd"); err != nil || x == nil || len(x) != 0 {
		t.Errorf("Xattrs of etc/passwd = %#v, %v; want an empty map", x, err)
	}
	if _, err := view.Xattrs("/etc/passwd"); !errors.Is(err, fs.ErrInvalid) {
		t.Errorf("Xattrs of a name with a leading slash: %v; want fs.ErrInvalid", err)
	}

	// Through etc/rel, a relative symlink: Open follows it.
	f, err := view.Open("etc/rel")
	if err != nil {
		t.Fatal(err)
	}
	info, err := f.Stat()
	if err != nil || info.Name() != "rel" || info.Size() != int64(len(want)) || info.Mode() != 0o755 {
		t.Errorf("Stat of the opened etc/rel = %v, %v; want rel, %d bytes, 0755", info, err, len(want))
	}
	ra, ok := f.(io.ReaderAt)
	seeker, ok2 := f.(io.Seeker)
	if !ok || !ok2 {
		t.Fatalf("an opened file is a %T: io.ReaderAt %v, io.Seeker %v", f, ok, ok2)
	}
	buf := make([]byte, 100)
	if n, err := ra.ReadAt(buf, 1234); n != 100 || err != nil || !bytes.Equal(buf, want[1234:1334]) {
		t.Errorf("ReadAt(100 bytes at 1234) = %d, %v, right bytes %v", n, err, bytes.Equal(buf[:n], want[1234:1234+n]))
	}
	if n, err := ra.ReadAt(buf, 4950); n != 50 || err != io.EOF || !bytes.Equal(buf[:n], want[4950:]) {
		t.Errorf("ReadAt(100 bytes at 4950) = %d, %v; want the last 50 bytes and io.EOF", n, err)
	}
	if n, err := ra.ReadAt(buf, 5000); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at the end = %d, %v; want 0, io.EOF", n, err)
	}
	if pos, err := seeker.Seek(-10, io.SeekEnd); pos != 4990 || err != nil {
		t.Errorf("Seek(-10, io.SeekEnd) = %d, %v; want 4990", pos, err)
	}
	if rest, err := io.ReadAll(f); err != nil || !bytes.Equal(rest, want[4990:]) {
		t.Errorf("reading after Seek(-10, io.SeekEnd) = %d bytes, %v; want the last 10", len(rest), err)
	}
	if pos, err := seeker.Seek(7, io.SeekStart); pos != 7 || err != nil {
		t.Errorf("Seek(7, io.SeekStart) = %d, %v", pos, err)
	}
	if pos, err := seeker.Seek(3, io.SeekCurrent); pos != 10 || err != nil {
		t.Errorf("Seek(3, io.SeekCurrent) = %d, %v; want 10", pos, err)
	}
	if n, err := io.ReadFull(f, buf[:5]); n != 5 || err != nil || !bytes.Equal(buf[:5], want[10:15]) {
		t.Errorf("Read after seeking to 10 = %d, %v", n, err)
	}
	if _, err := seeker.Seek(-1, io.SeekStart); err == nil {
		t.Error("Seek(-1, io.SeekStart) succeeded")
	}
	if err := f.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := f.Read(buf); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("Read after Close: %v, want fs.ErrClosed", err)
	}
	if _, err := ra.ReadAt(buf, 0); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("ReadAt after Close: %v, want fs.ErrClosed", err)
	}
	if err := f.Close(); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("second Close: %v, want fs.ErrClosed as *os.File says", err)
	}

	// A hardlink reads its target's bytes.
	if data, err := fs.ReadFile(view, "etc/os-release-link"); err != nil || string(data) != "ID=top\n" {
		t.Errorf("ReadFile(etc/os-release-link) = %q, %v", data, err)
	}

	d, err := view.Open("etc")
	if err != nil {
		t.Fatal(err)
	}
	dir, ok := d.(fs.ReadDirFile)
	if !ok {
		t.Fatalf("an opened directory is a %T, not an fs.ReadDirFile", d)
	}
	if _, err := dir.Read(buf); !errors.Is(err, syscall.EISDIR) {
		t.Errorf("Read of a directory: %v, want EISDIR", err)
	}
	var names []string
	for {
		entries, err := dir.ReadDir(2)
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if err == io.EOF {
			break
		}
		if err != nil || len(entries) == 0 {
			t.Fatalf("ReadDir(2) = %d entries, %v", len(entries), err)
		}
	}
	if want := []string{"abs", "os-release", "os-release-link", "passwd", "rel"}; !reflect.DeepEqual(names, want) {
		t.Errorf("ReadDir(2) in turns gave %q, want %q", names, want)
	}
	if entries, err := dir.ReadDir(-1); len(entries) != 0 || err != nil {
		t.Errorf("ReadDir(-1) at the end = %d entries, %v; want 0, nil", len(entries), err)
	}
	if err := dir.Close(); err != nil {
		t.Errorf("Close of a directory: %v", err)
	}
	if _, err := dir.ReadDir(-1); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("ReadDir after Close: %v, want fs.ErrClosed", err)
	}
	if _, err := view.ReadFile("etc"); !errors.Is(err, syscall.EISDIR) {
		t.Errorf("ReadFile of a directory: %v, want EISDIR", err)
	}
}

// Failures are *fs.PathError naming the call and the name, around an
// *ocicache.Error that matches the io/fs error of its kind.
func TestViewErrors(t *testing.T) {
	plain, links := pushViewImages(t)
	c := openCache(t, ocicache.Options{})
	view := openView(t, c, plain)
	linked := openView(t, c, links)

	check := func(err error, op, name string, targets ...error) {
		t.Helper()
		var pe *fs.PathError
		if !errors.As(err, &pe) || pe.Op != op || pe.Path != name {
			t.Errorf("%s %s: %v, want an *fs.PathError of %s %q", op, name, err, op, name)
			return
		}
		var oe *ocicache.Error
		if !errors.As(err, &oe) {
			t.Errorf("%s %s: %v is not an *ocicache.Error inside", op, name, err)
		}
		for _, target := range targets {
			if !errors.Is(err, target) {
				t.Errorf("%s %s: %v does not match %v", op, name, err, target)
			}
		}
	}
	notFound := []error{fs.ErrNotExist, ocicache.ErrNotFound}
	for _, name := range append([]string{"no-such-file", "etc/no-such-file", "etc/passwd/below-a-file"}, viewHidden...) {
		_, err := view.Open(name)
		check(err, "open", name, notFound...)
		_, err = view.Stat(name)
		check(err, "stat", name, notFound...)
		_, err = view.Lstat(name)
		check(err, "lstat", name, notFound...)
		_, err = view.ReadFile(name)
		check(err, "read", name, notFound...)
		_, err = view.ReadLink(name)
		check(err, "readlink", name, notFound...)
		_, err = view.ReadDir(name)
		check(err, "readdir", name, notFound...)
		if !strings.Contains(err.Error(), "/"+name) {
			t.Errorf("%v does not name /%s", err, name)
		}
	}

	invalid := []error{fs.ErrInvalid, ocicache.ErrInvalidArgument}
	for _, name := range []string{"/etc/passwd", "etc/", "etc//passwd", "etc/./passwd", "etc/../etc/passwd", "..", "", "etc/pa\x00sswd"} {
		_, err := view.Open(name)
		check(err, "open", name, invalid...)
		_, err = view.Stat(name)
		check(err, "stat", name, invalid...)
		_, err = view.ReadLink(name)
		check(err, "readlink", name, invalid...)
	}
	// A call that does not apply to the file.
	_, err := view.ReadLink("etc/passwd")
	check(err, "readlink", "etc/passwd", invalid...)
	_, err = view.ReadDir("etc/passwd")
	check(err, "readdir", "etc/passwd", invalid...)

	// A symlink loop; a dangling link is there, but leads nowhere.
	for _, name := range []string{"loop-a", "loop-b"} {
		_, err := linked.Open(name)
		check(err, "open", name, ocicache.ErrInvalidContent)
		if _, err := linked.Lstat(name); err != nil {
			t.Errorf("Lstat(%s): %v", name, err)
		}
	}
	_, err = linked.Stat("dangling")
	check(err, "stat", "dangling", notFound...)
	if target, err := linked.ReadLink("dangling"); target != "no-such-file" || err != nil {
		t.Errorf("ReadLink(dangling) = %q, %v", target, err)
	}
}

// Symlinks are followed inside the image root only, in every component:
// relative ones, absolute ones (from the image's root), and ones that
// climb above the root. go/view:links has symlinks to directories, which
// fstest.TestFS of Go before 1.25 reads as files (golang/go#50401, which
// os.DirFS fails the same way), so it is checked here instead.
func TestViewSymlinks(t *testing.T) {
	_, links := pushViewImages(t)
	c := openCache(t, ocicache.Options{})
	view := openView(t, c, links)
	libc := string(libcContent())
	hostPasswd, _ := os.ReadFile("/etc/passwd")

	for name, want := range map[string]string{
		"lib/libc.so":                libc,
		"abs-usr/lib/libc.so":        libc,
		"escape-dir/etc/os-release":  "ID=top\n",
		"escape-dir/usr/lib/libc.so": libc,
		"escape":                     "root:x:0:0::/root:/bin/sh\n",
		"escape-dir/escape":          "root:x:0:0::/root:/bin/sh\n",
		"to-far":                     "far",
		"climb":                      "root:x:0:0::/root:/bin/sh\n",
	} {
		data, err := view.ReadFile(name)
		if err != nil || string(data) != want {
			t.Errorf("ReadFile(%s) = %d bytes, %v; want %d", name, len(data), err, len(want))
		}
		if bytes.Equal(data, hostPasswd) {
			t.Errorf("ReadFile(%s) read the host's /etc/passwd", name)
		}
	}
	for name, want := range map[string][]string{
		"lib":            {"libc.so"},
		"abs-usr":        {"lib"},
		"escape-dir/usr": {"lib"},
	} {
		entries, err := view.ReadDir(name)
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ReadDir(%s) = %q, %v; want %q", name, got, err, want)
		}
	}
	for name, want := range map[string]string{"to-far": viewFarPath, "climb": viewClimbTarget} {
		if target, err := view.ReadLink(name); err != nil || target != want {
			t.Errorf("ReadLink(%s) = %d bytes, %v; want the %d of %q", name, len(target), err, len(want), want)
		}
	}
	// The root through a link that climbs above it.
	root, err := view.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	viaLink, err := view.ReadDir("escape-dir")
	if err != nil || len(viaLink) != len(root) {
		t.Fatalf("ReadDir(escape-dir) = %d entries, %v; want the root's %d", len(viaLink), err, len(root))
	}
	for i := range root {
		if root[i].Name() != viaLink[i].Name() || root[i].Type() != viaLink[i].Type() {
			t.Errorf("ReadDir(escape-dir)[%d] = %s %v, the root's is %s %v", i, viaLink[i].Name(), viaLink[i].Type(), root[i].Name(), root[i].Type())
		}
	}
	// Stat follows, Lstat does not; both are named as asked.
	if info, err := view.Stat("lib"); err != nil || !info.IsDir() || info.Name() != "lib" {
		t.Errorf("Stat(lib) = %v, %v; want the directory usr/lib, named lib", info, err)
	}
	if info, err := view.Lstat("lib"); err != nil || info.Mode() != fs.ModeSymlink|0o777 || info.Size() != int64(len("usr/lib")) {
		t.Errorf("Lstat(lib) = %v, %v; want a symlink of 7 bytes", info, err)
	}
	d, err := view.Open("lib")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, ok := d.(fs.ReadDirFile); !ok {
		t.Errorf("Open(lib) gave a %T, not the directory it links to", d)
	}
}

// A view holds its own descriptors of the layer tars: it outlives its
// image and cache, Close releases them (twice is a no-op), calls after
// Close fail cleanly, and files opened before stay readable.
func TestViewLifetime(t *testing.T) {
	plain, _ := pushViewImages(t)
	ctx := context.Background()
	dst, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	before := openFiles(t)

	c, err := ocicache.Open(ocicache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	img, err := c.FetchImage(ctx, plain, "")
	if err != nil {
		t.Fatal(err)
	}
	view, err := c.View(ctx, img, dst)
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	c.Close()
	if data, err := view.ReadFile("etc/os-release"); err != nil || string(data) != "ID=top\n" {
		t.Errorf("ReadFile after the image and cache closed = %q, %v", data, err)
	}
	f, err := view.Open("usr/lib/libc.so")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// Concurrent calls, and a Close among them: each call either ran or
	// failed as closed.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				data, err := view.ReadFile("etc/passwd")
				if err != nil && !errors.Is(err, fs.ErrClosed) {
					t.Errorf("ReadFile racing Close: %v", err)
					return
				}
				if err == nil && string(data) != "root:x:0:0::/root:/bin/sh\n" {
					t.Errorf("ReadFile racing Close = %q", data)
					return
				}
			}
		}()
	}
	time.Sleep(time.Millisecond)
	if err := view.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	wg.Wait()
	if err := view.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	_, err = view.Open("etc/passwd")
	for _, target := range []error{fs.ErrClosed, ocicache.ErrClosed, ocicache.ErrInvalidArgument} {
		if !errors.Is(err, target) {
			t.Errorf("Open after Close: %v, want it to match %v", err, target)
		}
	}
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Op != "open" || pe.Path != "etc/passwd" {
		t.Errorf("Open after Close: %v, want an *fs.PathError of open etc/passwd", err)
	}
	if _, err := view.ReadDir("."); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("ReadDir after Close: %v", err)
	}
	if _, err := view.ReadLink("etc/abs"); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("ReadLink after Close: %v", err)
	}
	// The file opened before has its own descriptor.
	data, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(data, libcContent()) {
		t.Errorf("reading a file opened before Close = %d bytes, %v", len(data), err)
	}
	f.Close()
	// Nothing of the view is left open.
	after := openFiles(t)
	for fd, target := range after {
		if _, ok := before[fd]; !ok && strings.HasPrefix(target, dst) {
			t.Errorf("fd %s on %s is still open", fd, target)
		}
	}
}

// View's own failures: a closed or nil image, a closed cache, a missing
// dst, a context already done.
func TestViewOpenErrors(t *testing.T) {
	plain, _ := pushViewImages(t)
	ctx := context.Background()
	c := openCache(t, ocicache.Options{})
	img := fetch(t, c, plain)

	if _, err := c.View(ctx, nil, t.TempDir()); !errors.Is(err, ocicache.ErrInvalidArgument) {
		t.Errorf("View of a nil image: %v", err)
	}
	missing := filepath.Join(t.TempDir(), "missing")
	if _, err := c.View(ctx, img, missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("View into a missing dst: %v, want ENOENT naming it", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("View made the missing dst (%v)", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.View(done, img, t.TempDir()); !errors.Is(err, ocicache.ErrCanceled) || !errors.Is(err, context.Canceled) {
		t.Errorf("View with a canceled context: %v", err)
	}
	other := fetch(t, c, plain)
	other.Close()
	if _, err := c.View(ctx, other, t.TempDir()); !errors.Is(err, ocicache.ErrClosed) {
		t.Errorf("View of a closed image: %v", err)
	}
	closed, err := ocicache.Open(ocicache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	if _, err := closed.View(ctx, img, t.TempDir()); !errors.Is(err, ocicache.ErrClosed) {
		t.Errorf("View of a closed cache: %v", err)
	}
}

// A view writes an index beside each layer tar that lacks one; DiskUsage
// counts the indexes and Verify re-checks them, reporting a corrupt one
// apart from the blobs and tars, and the next View writes it again.
func TestViewIndexesInDiskUsageAndVerify(t *testing.T) {
	plain, _ := pushViewImages(t)
	ctx := context.Background()
	store, dst := t.TempDir(), t.TempDir()
	c := openCache(t, ocicache.Options{Store: store})
	img := fetch(t, c, plain)
	view, err := c.View(ctx, img, dst)
	if err != nil {
		t.Fatalf("View: %v", err)
	}
	view.Close()

	storeFiles, storeBytes := dirUsage(t, filepath.Join(store, "blobs"))
	tarFiles, tarBytes := dirUsage(t, filepath.Join(dst, "sha256"))
	indexFiles, indexBytes := dirUsage(t, filepath.Join(dst, "tar-index"))
	// Both layers' tars, and an index of each.
	if tarFiles != 2 || indexFiles != 2 || indexBytes == 0 {
		t.Fatalf("dst holds %d tars and %d indexes (%d bytes), want 2 and 2", tarFiles, indexFiles, indexBytes)
	}
	want := ocicache.DiskUsage{
		StoreBytes: storeBytes, StoreFiles: uint64(storeFiles),
		DstBytes: tarBytes, DstFiles: uint64(tarFiles),
		IndexBytes: indexBytes, IndexFiles: uint64(indexFiles),
	}
	if du, err := c.DiskUsage(ctx, dst); err != nil || du != want {
		t.Errorf("DiskUsage = %+v, %v; want %+v", du, err, want)
	}

	checkVerify := func(what string, removeCorrupt bool, want ocicache.Verified) {
		t.Helper()
		if v, err := c.Verify(ctx, dst, removeCorrupt); err != nil || !reflect.DeepEqual(v, want) {
			t.Errorf("%s: Verify = %+v, %v; want %+v", what, v, err, want)
		}
	}
	intact := ocicache.Verified{Checked: uint64(storeFiles + tarFiles), IndexesChecked: 2}
	checkVerify("intact", false, intact)

	diffID := strings.TrimPrefix(img.Layers[1].DiffID, "sha256:")
	index := filepath.Join(dst, "tar-index", "sha256", diffID)
	before, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(index, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(index, []byte("not an index\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	realDst, err := filepath.EvalSymlinks(dst)
	if err != nil {
		t.Fatal(err)
	}
	bad := intact
	bad.CorruptIndexes = []string{filepath.Join(realDst, "tar-index", "sha256", diffID)}
	checkVerify("a corrupt index", false, bad)
	if data, err := os.ReadFile(index); err != nil || string(data) != "not an index\n" {
		t.Errorf("Verify without removeCorrupt changed the index: %q, %v", data, err)
	}
	checkVerify("a corrupt index, removeCorrupt", true, bad)
	if _, err := os.Stat(index); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Verify(removeCorrupt) left %s (%v)", index, err)
	}
	gone := intact
	gone.IndexesChecked = 1
	checkVerify("an index removed", false, gone)

	// The next view writes it again, the same bytes, from its tar.
	view, err = c.View(ctx, img, dst)
	if err != nil {
		t.Fatalf("View after the index was removed: %v", err)
	}
	defer view.Close()
	if data, err := os.ReadFile(index); err != nil || !bytes.Equal(data, before) {
		t.Errorf("the index View wrote again: %d bytes, %v; want the %d bytes it had", len(data), err, len(before))
	}
	checkVerify("after View", false, intact)
	if data, err := view.ReadFile("opaque/mid"); err != nil || string(data) != "mid" {
		t.Errorf("ReadFile(opaque/mid) through the rebuilt index = %q, %v", data, err)
	}
}
