// This file owns the tests of what a Go caller's mistakes and stuck
// registries must not cost: no fd leaks when a progress function panics,
// and a layer reader's Close ending a Read stalled on the network. The
// stalled registry is stallingRegistry, a minimal registry of one image
// whose layer blob stops half way.

package ocicache_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"oci-cache/go/ocicache"
)

// openFiles counts this process's open fds that are not sockets: the
// library opens and closes pooled registry connections on its own
// schedule, while a leaked layer file stays.
func openFiles(t *testing.T) map[string]string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && !strings.HasPrefix(target, "socket:") {
			files[e.Name()] = target
		}
	}
	return files
}

// A progress function that panics, at its first report or at a layer's
// last one (which can come as the call succeeds), leaves no fd open: the
// panic reaches the caller, and any file the call made was closed.
func TestProgressPanicLeaksNoFds(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	img := fetch(t, c, gzipRef)
	// A call first, so that the library's own lasting fds (its runtime's)
	// exist before counting.
	files, err := c.ExtractLayers(context.Background(), img, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	type boom struct{ at string }
	panics := map[string]func(ocicache.Progress) bool{
		"first": func(ocicache.Progress) bool { panic(boom{"first"}) },
		"last": func(p ocicache.Progress) bool {
			if p.WrittenTotal >= 0 {
				panic(boom{"last"})
			}
			return true
		},
	}
	calls := map[string]func(dst string, progress ocicache.CallOption) error{
		"RootFS": func(dst string, progress ocicache.CallOption) error {
			_, err := c.RootFS(context.Background(), img, dst, progress)
			return err
		},
		"ExtractLayers": func(dst string, progress ocicache.CallOption) error {
			_, err := c.ExtractLayers(context.Background(), img, dst, progress)
			return err
		},
		"ExtractLayer": func(dst string, progress ocicache.CallOption) error {
			_, err := c.ExtractLayer(context.Background(), img, dst, 0, progress)
			return err
		},
	}
	before := openFiles(t)
	for round := 0; round < 3; round++ {
		for at, fn := range panics {
			for name, call := range calls {
				progress := ocicache.WithProgress(fn)
				func() {
					defer func() {
						if v := recover(); v != (boom{at}) {
							t.Errorf("%s, panic at the %s report: recovered %v", name, at, v)
						}
					}()
					err := call(t.TempDir(), progress)
					t.Errorf("%s, panic at the %s report: returned %v instead of panicking", name, at, err)
				}()
			}
		}
	}
	// Not at once: a call stopped by the panic returns while a layer it
	// had finished may still be closing its file on a library thread (see
	// checkCleanedUp); a leaked file stays open.
	after := openFiles(t)
	for start := time.Now(); len(after) != len(before) && time.Since(start) < 5*time.Second; {
		time.Sleep(10 * time.Millisecond)
		after = openFiles(t)
	}
	if len(after) != len(before) {
		t.Errorf("fds open before the panicking calls: %v; after: %v", before, after)
	}
}

// stallingRegistry serves one image, HOST/go/stall:v1, with one
// uncompressed layer whose blob stops after its first stallAfter bytes
// (headers said more) and stays open without sending anything else.
type stallingRegistry struct {
	l          net.Listener
	layer      []byte // the blob, a tar
	stallAfter int
	release    chan struct{} // closed at cleanup: stalled handlers return
}

func startStallingRegistry(t *testing.T) *stallingRegistry {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Random content, so that the tar is as big as the file in it.
	content := make([]byte, 2<<20)
	rand.New(rand.NewSource(7)).Read(content)
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	if err := tw.WriteHeader(&tar.Header{Name: "data", Mode: 0o644, Size: int64(len(content))}); err != nil {
		t.Fatal(err)
	}
	tw.Write(content)
	tw.Close()
	r := &stallingRegistry{l: l, layer: layer.Bytes(), stallAfter: 1 << 20, release: make(chan struct{})}

	digest := func(b []byte) string {
		sum := sha256.Sum256(b)
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	layerDigest := digest(r.layer)
	config, _ := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{
			"mediaType": "application/vnd.oci.image.config.v1+json",
			"digest":    digest(config), "size": len(config),
		},
		"layers": []map[string]any{{
			"mediaType": "application/vnd.oci.image.layer.v1.tar",
			"digest":    layerDigest, "size": len(r.layer),
		}},
	})
	mux := http.NewServeMux()
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/v2/":
			w.WriteHeader(http.StatusOK)
		case "/v2/go/stall/manifests/v1", "/v2/go/stall/manifests/" + digest(manifest):
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			w.Header().Set("Docker-Content-Digest", digest(manifest))
			w.Header().Set("Content-Length", fmt.Sprint(len(manifest)))
			if req.Method != http.MethodHead {
				w.Write(manifest)
			}
		case "/v2/go/stall/blobs/" + digest(config):
			w.Header().Set("Content-Length", fmt.Sprint(len(config)))
			w.Write(config)
		case "/v2/go/stall/blobs/" + layerDigest:
			w.Header().Set("Content-Length", fmt.Sprint(len(r.layer)))
			w.Write(r.layer[:r.stallAfter])
			w.(http.Flusher).Flush()
			select {
			case <-req.Context().Done():
			case <-r.release:
			}
		default:
			http.NotFound(w, req)
		}
	})
	server := &http.Server{Handler: mux}
	served := make(chan struct{})
	go func() {
		defer close(served)
		server.Serve(l)
	}()
	t.Cleanup(func() {
		close(r.release)
		server.Close()
		<-served
	})
	return r
}

func (r *stallingRegistry) ref() string { return r.l.Addr().String() + "/go/stall:v1" }

// Close from another goroutine ends a Read stalled on a registry that sent
// headers and part of the body: the Read fails with ErrClosed promptly,
// Close returns once it did, and the reader is closed for good.
func TestLayerReaderCloseStopsStalledRead(t *testing.T) {
	reg := startStallingRegistry(t)
	c := openCache(t, ocicache.Options{})
	img := fetch(t, c, reg.ref())
	r, err := c.FetchLayer(context.Background(), img, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	// Read what came, until a Read waits: the rest never comes.
	type result struct {
		n   int
		err error
	}
	results := make(chan result, 1)
	var got []byte
	buf := make([]byte, 64<<10)
	var stalled bool
	for !stalled {
		go func() {
			n, err := r.Read(buf)
			results <- result{n, err}
		}()
		select {
		case res := <-results:
			if res.err != nil {
				t.Fatalf("Read after %d bytes: %v, want data or a stall", len(got), res.err)
			}
			got = append(got, buf[:res.n]...)
		case <-time.After(500 * time.Millisecond):
			stalled = true
		}
	}
	if len(got) == 0 || len(got) > reg.stallAfter || !bytes.Equal(got, reg.layer[:len(got)]) {
		t.Errorf("read %d bytes before the stall, want a prefix of the %d sent", len(got), reg.stallAfter)
	}

	closed := make(chan error, 1)
	start := time.Now()
	go func() { closed <- r.Close() }()
	select {
	case res := <-results:
		if res.n != 0 || !errors.Is(res.err, ocicache.ErrClosed) {
			t.Errorf("the stalled Read returned %d, %v, want 0 and ErrClosed", res.n, res.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stalled Read did not return within 5s of Close")
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5s")
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("Close and the stalled Read took %v", elapsed)
	}
	if _, err := r.Read(buf); !errors.Is(err, ocicache.ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
