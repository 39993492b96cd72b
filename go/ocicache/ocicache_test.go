// This file owns the tests of the Go binding, run against a real registry:
// TestMain starts docker-registry on a loopback port, builds an image
// offline with umoci, pushes it (gzip, and a zstd copy) with skopeo, and
// works out the expected diff_ids and tar sizes independently of the
// library. Progress reports, deadlines, timeouts and the newer Options
// are tested in progress_test.go and options_test.go.

package ocicache_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"oci-cache/go/ocicache"
)

const installHint = "apt-get install -y docker-registry umoci skopeo"

// What TestMain set up and knows, shared read-only by the tests.
var (
	registryHost string // 127.0.0.1:PORT of the real registry
	gzipRef      string // HOST/go/app:v1, umoci's gzip layers
	zstdRef      string // HOST/go/app:zstd, the same tars as zstd
	gzipDigest   string // manifest digests as skopeo pushed them
	zstdDigest   string
	wantDiffIDs  []string // sha256 of each layer tar, computed here
	wantTarSizes []int64  // size of each layer tar, computed here
	gzipLayers   []descriptor
	zstdLayers   []descriptor
	// The config blobs in the layouts skopeo pushed from, on disk: an
	// oracle for the config bytes the library returns.
	gzipConfigBlob string
	zstdConfigBlob string
)

func TestMain(m *testing.M) {
	if port := os.Getenv(insecureChildEnv); port != "" {
		os.Exit(insecureChild(port))
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	for _, tool := range []string{"docker-registry", "umoci", "skopeo"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "ocicache tests: %s is not installed; they need docker-registry, umoci and skopeo: %s\n", tool, installHint)
			return 1
		}
	}
	work, err := os.MkdirTemp("", "ocicache-go-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(work)

	reg, err := startRegistry(work)
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting docker-registry:", err)
		return 1
	}
	defer reg.stop()
	registryHost = reg.host

	if err := buildAndPush(work); err != nil {
		fmt.Fprintln(os.Stderr, "building the test image:", err)
		return 1
	}
	return m.Run()
}

// ---------------------------------------------------------------------------
// The registry and the image

type registry struct {
	host   string
	cmd    *exec.Cmd
	exited chan struct{}
}

func startRegistry(work string) (*registry, error) {
	var lastErr error
	// The port is free when picked but may be taken before the registry
	// binds it, so a registry that dies early is retried on another.
	for attempt := 0; attempt < 5; attempt++ {
		host, err := freeAddr()
		if err != nil {
			return nil, err
		}
		config := filepath.Join(work, "registry.yml")
		yml := fmt.Sprintf("version: 0.1\n"+
			"log: {level: warn, accesslog: {disabled: true}}\n"+
			"storage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\n"+
			"http: {addr: %s, secret: go-test-%d}\n", filepath.Join(work, "registry"), host, os.Getpid())
		if err := os.WriteFile(config, []byte(yml), 0o644); err != nil {
			return nil, err
		}
		logFile, err := os.Create(filepath.Join(work, "registry.log"))
		if err != nil {
			return nil, err
		}
		cmd := exec.Command("docker-registry", "serve", config)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "REGISTRY_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		// Dies with the test binary even if TestMain never gets to stop it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logFile.Close()
			return nil, err
		}
		logFile.Close()
		r := &registry{host: host, cmd: cmd, exited: make(chan struct{})}
		go func() { cmd.Wait(); close(r.exited) }()
		if err := r.waitReady(10 * time.Second); err != nil {
			r.stop()
			log, _ := os.ReadFile(filepath.Join(work, "registry.log"))
			lastErr = fmt.Errorf("%v\n%s", err, log)
			continue
		}
		return r, nil
	}
	return nil, lastErr
}

func (r *registry) waitReady(timeout time.Duration) error {
	client := http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-r.exited:
			return errors.New("docker-registry exited")
		default:
		}
		resp, err := client.Get("http://" + r.host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("GET http://%s/v2/ did not answer 200 within %v", r.host, timeout)
}

func (r *registry) stop() {
	r.cmd.Process.Kill()
	<-r.exited
}

// freeAddr picks a loopback address nobody listens on right now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// bigContent is the ~200 KB file of the middle layer: pseudo-random (so
// it is unlike the other layers and does not compress away) but the same
// on every run.
func bigContent() []byte {
	b := make([]byte, 200*1024)
	rand.New(rand.NewSource(20240601)).Read(b)
	return b
}

// buildAndPush makes a three-layer image with umoci, pushes it and a zstd
// copy, and fills in the expectations from the layouts themselves.
func buildAndPush(work string) error {
	layers := []map[string][]byte{
		{"etc/app/app.conf": []byte("listen = 8080\n"), "etc/app/motd": []byte("hello from the go tests\n")},
		{"data/blob.bin": bigContent()},
		{"bin/hello.sh": []byte("#!/bin/sh\necho hello\n")},
	}
	layout := filepath.Join(work, "layout")
	if err := run("umoci", "init", "--layout", layout); err != nil {
		return err
	}
	if err := run("umoci", "new", "--image", layout+":v1"); err != nil {
		return err
	}
	for i, files := range layers {
		src := filepath.Join(work, fmt.Sprintf("src%d", i))
		for name, data := range files {
			path := filepath.Join(src, name)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(path, data, 0o755); err != nil {
				return err
			}
		}
		// Each insert is one layer; inserting src at / keeps its paths.
		if err := run("umoci", "insert", "--image", layout+":v1", src, "/"); err != nil {
			return err
		}
	}
	zstdLayout := filepath.Join(work, "zstd")
	// skopeo 1.9 reuses already pushed gzip blobs when recompressing
	// straight to docker://, so convert into a layout first.
	if err := run("skopeo", "copy", "-q", "--dest-compress-format", "zstd", "oci:"+layout+":v1", "oci:"+zstdLayout+":v1"); err != nil {
		return err
	}

	gzipRef = registryHost + "/go/app:v1"
	zstdRef = registryHost + "/go/app:zstd"
	var err error
	if gzipDigest, err = push(work, layout, gzipRef); err != nil {
		return err
	}
	if zstdDigest, err = push(work, zstdLayout, zstdRef); err != nil {
		return err
	}

	var diffIDs []string
	if gzipLayers, gzipConfigBlob, diffIDs, err = readLayout(layout); err != nil {
		return err
	}
	if len(gzipLayers) != len(layers) {
		return fmt.Errorf("umoci made %d layers, want %d", len(gzipLayers), len(layers))
	}
	// The config's diff_ids are only umoci's claim: hash the tars too.
	for i, l := range gzipLayers {
		blob, err := os.Open(blobPath(layout, l.Digest))
		if err != nil {
			return err
		}
		zr, err := gzip.NewReader(blob)
		if err != nil {
			blob.Close()
			return err
		}
		h := sha256.New()
		n, err := io.Copy(h, zr)
		blob.Close()
		if err != nil {
			return err
		}
		wantDiffIDs = append(wantDiffIDs, "sha256:"+hex.EncodeToString(h.Sum(nil)))
		wantTarSizes = append(wantTarSizes, n)
		if wantDiffIDs[i] != diffIDs[i] {
			return fmt.Errorf("layer %d: umoci's config says diff_id %s, the tar hashes to %s", i, diffIDs[i], wantDiffIDs[i])
		}
	}
	var zstdDiffIDs []string
	if zstdLayers, zstdConfigBlob, zstdDiffIDs, err = readLayout(zstdLayout); err != nil {
		return err
	}
	if fmt.Sprint(zstdDiffIDs) != fmt.Sprint(wantDiffIDs) {
		return fmt.Errorf("zstd copy has diff_ids %v, want %v", zstdDiffIDs, wantDiffIDs)
	}
	return nil
}

// push copies layout:v1 to ref and returns the manifest digest skopeo pushed.
func push(work, layout, ref string) (string, error) {
	digestFile := filepath.Join(work, "digest")
	if err := run("skopeo", "copy", "-q", "--dest-tls-verify=false", "--digestfile", digestFile,
		"oci:"+layout+":v1", "docker://"+ref); err != nil {
		return "", err
	}
	d, err := os.ReadFile(digestFile)
	return strings.TrimSpace(string(d)), err
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

func blobPath(layout, digest string) string {
	alg, hex, _ := strings.Cut(digest, ":")
	return filepath.Join(layout, "blobs", alg, hex)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// readLayout returns the layers of the only image in an OCI layout, the
// path of its config blob and the diff_ids that config lists.
func readLayout(layout string) ([]descriptor, string, []string, error) {
	var index struct{ Manifests []descriptor }
	if err := readJSON(filepath.Join(layout, "index.json"), &index); err != nil {
		return nil, "", nil, err
	}
	if len(index.Manifests) != 1 {
		return nil, "", nil, fmt.Errorf("%s: %d manifests, want 1", layout, len(index.Manifests))
	}
	var manifest struct {
		Config descriptor
		Layers []descriptor
	}
	if err := readJSON(blobPath(layout, index.Manifests[0].Digest), &manifest); err != nil {
		return nil, "", nil, err
	}
	configBlob := blobPath(layout, manifest.Config.Digest)
	var config imageConfig
	if err := readJSON(configBlob, &config); err != nil {
		return nil, "", nil, err
	}
	return manifest.Layers, configBlob, config.RootFS.DiffIDs, nil
}

type imageConfig struct {
	RootFS struct {
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

// ---------------------------------------------------------------------------
// Helpers

func openCache(t *testing.T, opts ocicache.Options) *ocicache.Cache {
	t.Helper()
	c, err := ocicache.Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func fetch(t *testing.T, c *ocicache.Cache, ref string) *ocicache.Image {
	t.Helper()
	img, err := c.FetchImage(context.Background(), ref, "")
	if err != nil {
		t.Fatalf("FetchImage(%s): %v", ref, err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

func sha256Of(r io.Reader) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

func fcntl(t *testing.T, f *os.File, cmd int) int {
	t.Helper()
	v, _, errno := syscall.Syscall(syscall.SYS_FCNTL, f.Fd(), uintptr(cmd), 0)
	if errno != 0 {
		t.Fatalf("fcntl(%s, %d): %v", f.Name(), cmd, errno)
	}
	return int(v)
}

// checkLayerFiles checks the files a layer call returned, one per layer of
// wantDiffIDs, in dst, and closes them.
func checkLayerFiles(t *testing.T, dst string, files []*os.File) {
	t.Helper()
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if len(files) != len(wantDiffIDs) {
		t.Fatalf("got %d files, want %d", len(files), len(wantDiffIDs))
	}
	for i, f := range files {
		want := wantDiffIDs[i]
		if name := filepath.Join(dst, "sha256", strings.TrimPrefix(want, "sha256:")); f.Name() != name {
			t.Errorf("layer %d: file name %q, want %q", i, f.Name(), name)
		}
		if flags := fcntl(t, f, syscall.F_GETFD); flags&syscall.FD_CLOEXEC == 0 {
			t.Errorf("layer %d: fd is not close-on-exec (F_GETFD %#x)", i, flags)
		}
		if flags := fcntl(t, f, syscall.F_GETFL); flags&syscall.O_ACCMODE != syscall.O_RDONLY {
			t.Errorf("layer %d: fd is not read-only (F_GETFL %#x)", i, flags)
		}
		if off, err := f.Seek(0, io.SeekCurrent); err != nil || off != 0 {
			t.Errorf("layer %d: offset %d (%v), want 0", i, off, err)
		}
		if got, err := sha256Of(f); err != nil || got != want {
			t.Errorf("layer %d: content hashes to %s (%v), want %s", i, got, err, want)
		}
	}
}

// proxy forwards TCP connections to a target until closed, so a test can
// take "the registry" away without stopping the shared one.
type proxy struct {
	l     net.Listener
	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(out, in); out.Close() }()
			go func() { defer p.wg.Done(); io.Copy(in, out); in.Close() }()
		}
	}()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) host() string { return p.l.Addr().String() }

func (p *proxy) close() {
	p.l.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// silentServer accepts connections and never answers: without a timeout
// in the library, only cancellation ends a call against it.
type silentServer struct {
	l        net.Listener
	accepted chan struct{} // one value per accepted connection
}

func startSilentServer(t *testing.T) *silentServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &silentServer{l: l, accepted: make(chan struct{}, 100)}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			select {
			case s.accepted <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return s
}

func (s *silentServer) ref() string { return s.l.Addr().String() + "/go/app:v1" }

func assertCanceled(t *testing.T, err error, ctxErr error) {
	t.Helper()
	if !errors.Is(err, ctxErr) {
		t.Errorf("error %v does not match %v", err, ctxErr)
	}
	if !errors.Is(err, ocicache.ErrCanceled) {
		t.Errorf("error %v does not match ErrCanceled", err)
	}
}

// ---------------------------------------------------------------------------
// Tests

func TestVersion(t *testing.T) {
	if v := ocicache.Version(); !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(v) {
		t.Errorf("Version() = %q, want MAJOR.MINOR.PATCH", v)
	}
}

func TestFetchImage(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	for _, tc := range []struct {
		ref, digest, mediaType string
		layers                 []descriptor
		configBlob             string
	}{
		{gzipRef, gzipDigest, "application/vnd.oci.image.layer.v1.tar+gzip", gzipLayers, gzipConfigBlob},
		{zstdRef, zstdDigest, "application/vnd.oci.image.layer.v1.tar+zstd", zstdLayers, zstdConfigBlob},
	} {
		t.Run(tc.ref[strings.LastIndex(tc.ref, ":")+1:], func(t *testing.T) {
			img := fetch(t, c, tc.ref)
			if img.Reference != tc.ref {
				t.Errorf("Reference = %q, want %q", img.Reference, tc.ref)
			}
			if img.Digest != tc.digest {
				t.Errorf("Digest = %q, want %q", img.Digest, tc.digest)
			}
			if len(img.Layers) != len(wantDiffIDs) {
				t.Fatalf("%d layers, want %d", len(img.Layers), len(wantDiffIDs))
			}
			for i, l := range img.Layers {
				want := ocicache.Layer{Digest: tc.layers[i].Digest, DiffID: wantDiffIDs[i], MediaType: tc.mediaType, Size: tc.layers[i].Size}
				if l != want {
					t.Errorf("layer %d = %+v, want %+v", i, l, want)
				}
			}
			// Byte for byte the blob skopeo pushed, read from its layout.
			if want, err := os.ReadFile(tc.configBlob); err != nil || !bytes.Equal(img.Config, want) {
				t.Errorf("Config is %d bytes (sha256 %x), want the %d bytes of %s (%v)", len(img.Config), sha256.Sum256(img.Config), len(want), tc.configBlob, err)
			}
			var config imageConfig
			if err := json.Unmarshal(img.Config, &config); err != nil {
				t.Fatalf("Config is not JSON: %v\n%s", err, img.Config)
			}
			if fmt.Sprint(config.RootFS.DiffIDs) != fmt.Sprint(wantDiffIDs) {
				t.Errorf("Config diff_ids %v, want %v", config.RootFS.DiffIDs, wantDiffIDs)
			}
		})
	}
}

func TestFetchImageNormalizesAndTakesPlatform(t *testing.T) {
	c := openCache(t, ocicache.Options{Platform: "linux/" + runtime.GOARCH})
	// A reference without a tag means :latest.
	_, err := c.FetchImage(context.Background(), registryHost+"/go/app", "")
	if !errors.Is(err, ocicache.ErrNotFound) || !strings.Contains(err.Error(), registryHost+"/go/app:latest") {
		t.Errorf("FetchImage without tag: %v, want not found naming :latest", err)
	}
	img, err := c.FetchImage(context.Background(), gzipRef, "linux/"+runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Digest != gzipDigest {
		t.Errorf("Digest = %s, want %s", img.Digest, gzipDigest)
	}
}

func TestRootFS(t *testing.T) {
	for _, ref := range []string{gzipRef, zstdRef} {
		t.Run(ref[strings.LastIndex(ref, ":")+1:], func(t *testing.T) {
			c := openCache(t, ocicache.Options{})
			img := fetch(t, c, ref)
			dst := t.TempDir()
			files, err := c.RootFS(context.Background(), img, dst)
			if err != nil {
				t.Fatal(err)
			}
			checkLayerFiles(t, dst, files)

			// The warm path: the same files again.
			files, err = c.RootFS(context.Background(), img, dst)
			if err != nil {
				t.Fatal(err)
			}
			checkLayerFiles(t, dst, files)
		})
	}
}

// With the registry gone, a new cache finds the image in its store and
// RootFS opens the layers already in dst.
func TestRootFSOffline(t *testing.T) {
	p := startProxy(t, registryHost)
	ref := p.host() + "/go/app:v1"
	store, dst := t.TempDir(), t.TempDir()
	{
		c := openCache(t, ocicache.Options{Store: store})
		img := fetch(t, c, ref)
		files, err := c.RootFS(context.Background(), img, dst)
		if err != nil {
			t.Fatal(err)
		}
		checkLayerFiles(t, dst, files)
		c.Close()
		img.Close()
	}
	p.close()

	c := openCache(t, ocicache.Options{Store: store})
	img, err := c.FetchImage(context.Background(), ref, "")
	if err != nil {
		t.Fatalf("FetchImage from the store with the registry gone: %v", err)
	}
	defer img.Close()
	if img.Digest != gzipDigest {
		t.Errorf("Digest = %s, want %s", img.Digest, gzipDigest)
	}
	files, err := c.RootFS(context.Background(), img, dst)
	if err != nil {
		t.Fatalf("warm RootFS with the registry gone: %v", err)
	}
	checkLayerFiles(t, dst, files)
	// The store kept the blobs too, so even an empty dst needs no network.
	fresh := t.TempDir()
	files, err = c.RootFS(context.Background(), img, fresh)
	if err != nil {
		t.Fatalf("RootFS into an empty dst from the store with the registry gone: %v", err)
	}
	checkLayerFiles(t, fresh, files)

	// Without a store, nothing is there to fall back on.
	bare := openCache(t, ocicache.Options{})
	if _, err := bare.FetchImage(context.Background(), ref, ""); !errors.Is(err, ocicache.ErrNetwork) {
		t.Errorf("FetchImage from a closed port: %v, want ErrNetwork", err)
	}
}

// DropLayerBlobs keeps the store to the manifest and config.
func TestDropLayerBlobs(t *testing.T) {
	store, dst := t.TempDir(), t.TempDir()
	c := openCache(t, ocicache.Options{Store: store, DropLayerBlobs: true})
	img := fetch(t, c, gzipRef)
	files, err := c.RootFS(context.Background(), img, dst)
	if err != nil {
		t.Fatal(err)
	}
	checkLayerFiles(t, dst, files)
	blobs, err := os.ReadDir(filepath.Join(store, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, blob := range blobs {
		kept = append(kept, "sha256:"+blob.Name())
	}
	config := sha256.Sum256(img.Config)
	want := []string{gzipDigest, "sha256:" + hex.EncodeToString(config[:])}
	sort.Strings(kept)
	sort.Strings(want)
	if strings.Join(kept, " ") != strings.Join(want, " ") {
		t.Errorf("store blobs = %v, want the manifest and config %v", kept, want)
	}
}

func TestExtractLayers(t *testing.T) {
	c := openCache(t, ocicache.Options{MaxConcurrentLayers: 1, WorkerThreads: 1})
	img := fetch(t, c, gzipRef)
	dst := t.TempDir()
	// A wrong file under a layer's name is replaced, not trusted.
	stale := filepath.Join(dst, "sha256", strings.TrimPrefix(wantDiffIDs[0], "sha256:"))
	if err := os.MkdirAll(filepath.Dir(stale), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	files, err := c.ExtractLayers(context.Background(), img, dst)
	if err != nil {
		t.Fatal(err)
	}
	checkLayerFiles(t, dst, files)

	f, err := c.ExtractLayer(context.Background(), img, dst, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, err := sha256Of(f); err != nil || got != wantDiffIDs[1] {
		t.Errorf("ExtractLayer(1) hashes to %s (%v), want %s", got, err, wantDiffIDs[1])
	}
	if _, err := c.ExtractLayer(context.Background(), img, dst, len(img.Layers)); !errors.Is(err, ocicache.ErrInvalidArgument) {
		t.Errorf("ExtractLayer out of range: %v, want ErrInvalidArgument", err)
	}
	if _, err := c.ExtractLayer(context.Background(), img, dst, -1); !errors.Is(err, ocicache.ErrInvalidArgument) {
		t.Errorf("ExtractLayer(-1): %v, want ErrInvalidArgument", err)
	}
}

func TestFetchLayer(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	for _, ref := range []string{gzipRef, zstdRef} {
		img := fetch(t, c, ref)
		for i := range img.Layers {
			r, err := c.FetchLayer(context.Background(), img, i)
			if err != nil {
				t.Fatalf("%s layer %d: %v", ref, i, err)
			}
			data, err := io.ReadAll(r)
			if err != nil {
				t.Fatalf("%s layer %d: reading: %v", ref, i, err)
			}
			if got, _ := sha256Of(bytes.NewReader(data)); got != wantDiffIDs[i] {
				t.Errorf("%s layer %d hashes to %s, want %s", ref, i, got, wantDiffIDs[i])
			}
			if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
				t.Errorf("Read after EOF: %d, %v", n, err)
			}
			if err := r.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			if err := r.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if _, err := r.Read(make([]byte, 10)); !errors.Is(err, ocicache.ErrClosed) {
				t.Errorf("Read after Close: %v, want ErrClosed", err)
			}
		}
	}
	img := fetch(t, c, gzipRef)
	if _, err := c.FetchLayer(context.Background(), img, len(img.Layers)); !errors.Is(err, ocicache.ErrInvalidArgument) {
		t.Errorf("FetchLayer out of range: %v, want ErrInvalidArgument", err)
	}

	// Closing half way stops the download without trouble.
	r, err := c.FetchLayer(context.Background(), img, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	r.Close()
}

func TestFetchLayerCanceledBetweenReads(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	img := fetch(t, c, gzipRef)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := c.FetchLayer(ctx, img, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadFull(r, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	cancel()
	_, err = r.Read(make([]byte, 1024))
	assertCanceled(t, err, context.Canceled)
}

func TestResolve(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	ctx := context.Background()
	for ref, want := range map[string]string{
		gzipRef:                                gzipDigest,
		zstdRef:                                zstdDigest,
		registryHost + "/go/app@" + gzipDigest: gzipDigest,
		registryHost + "/go/app:v1@" + zstdDigest: zstdDigest,
	} {
		got, err := c.Resolve(ctx, ref)
		if err != nil || got != want {
			t.Errorf("Resolve(%s) = %q, %v; want %q", ref, got, err, want)
		}
	}
	if _, err := c.Resolve(ctx, registryHost+"/go/app:nope"); !errors.Is(err, ocicache.ErrNotFound) {
		t.Errorf("Resolve of a missing tag: %v, want ErrNotFound", err)
	}
}

func TestErrors(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	ctx := context.Background()

	missing := registryHost + "/go/app:nope"
	_, err := c.FetchImage(ctx, missing, "")
	if !errors.Is(err, ocicache.ErrNotFound) {
		t.Errorf("missing tag: %v, want ErrNotFound", err)
	}
	if err != nil && !strings.Contains(err.Error(), missing) {
		t.Errorf("missing tag: %q does not name %s", err, missing)
	}
	var e *ocicache.Error
	if !errors.As(err, &e) || e.Code != ocicache.ErrNotFound.Code || e.Message == "" {
		t.Errorf("missing tag: %#v is not a detailed *Error", err)
	}
	if errors.Is(err, ocicache.ErrNetwork) || errors.Is(err, context.Canceled) {
		t.Errorf("missing tag: %v matches the wrong kinds", err)
	}

	if _, err := c.FetchImage(ctx, registryHost+"/go/missing:v1", ""); !errors.Is(err, ocicache.ErrNotFound) {
		t.Errorf("missing repository: %v, want ErrNotFound", err)
	}
	for _, ref := range []string{"", "Not A Reference", "host:1/UPPER:tag", "a/b:c:d"} {
		if _, err := c.FetchImage(ctx, ref, ""); !errors.Is(err, ocicache.ErrInvalidArgument) {
			t.Errorf("FetchImage(%q): %v, want ErrInvalidArgument", ref, err)
		}
	}
	if _, err := c.FetchImage(ctx, gzipRef, "not/a/valid/platform/at/all"); !errors.Is(err, ocicache.ErrInvalidArgument) {
		t.Errorf("bad platform: %v, want ErrInvalidArgument", err)
	}

	closed, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.FetchImage(ctx, closed+"/go/app:v1", ""); !errors.Is(err, ocicache.ErrNetwork) {
		t.Errorf("unreachable registry: %v, want ErrNetwork", err)
	}

	img := fetch(t, c, gzipRef)
	if _, err := c.RootFS(ctx, img, filepath.Join(t.TempDir(), "missing")); !errors.Is(err, ocicache.ErrIO) {
		t.Errorf("RootFS into a missing dst: %v, want ErrIO", err)
	}
	if _, err := c.RootFS(ctx, nil, t.TempDir()); !errors.Is(err, ocicache.ErrInvalidArgument) {
		t.Errorf("RootFS of a nil image: %v, want ErrInvalidArgument", err)
	}
}

func TestOpenOptions(t *testing.T) {
	for _, opts := range []ocicache.Options{
		{Platform: "not a platform"},
		{WorkerThreads: -1},
		{MaxConcurrentLayers: -1},
	} {
		if c, err := ocicache.Open(opts); !errors.Is(err, ocicache.ErrInvalidArgument) {
			t.Errorf("Open(%+v): %v, want ErrInvalidArgument", opts, err)
			if c != nil {
				c.Close()
			}
		}
	}
	c := openCache(t, ocicache.Options{
		Store:               filepath.Join(t.TempDir(), "new", "store"),
		Platform:            "linux/" + runtime.GOARCH,
		InsecureRegistries:  []string{"registry.invalid:5000"},
		WorkerThreads:       3,
		MaxConcurrentLayers: 2,
	})
	if _, err := c.Resolve(context.Background(), gzipRef); err != nil {
		t.Errorf("Resolve with every option set: %v", err)
	}
}

func TestContextAlreadyDone(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	img := fetch(t, c, gzipRef)
	s := startSilentServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	_, err := c.FetchImage(ctx, s.ref(), "")
	assertCanceled(t, err, context.Canceled)
	_, err = c.Resolve(ctx, gzipRef)
	assertCanceled(t, err, context.Canceled)
	_, err = c.RootFS(ctx, img, t.TempDir())
	assertCanceled(t, err, context.Canceled)
	_, err = c.FetchLayer(ctx, img, 0)
	assertCanceled(t, err, context.Canceled)
	select {
	case <-s.accepted:
		t.Error("a call with a done context still reached the network")
	default:
	}

	ctx, cancel = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	_, err = c.ExtractLayers(ctx, img, t.TempDir())
	assertCanceled(t, err, context.DeadlineExceeded)
}

func TestContextCanceledDuringCall(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	s := startSilentServer(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-s.accepted // the call is waiting for an answer that never comes
		cancel()
	}()
	start := time.Now()
	_, err := c.FetchImage(ctx, s.ref(), "")
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("FetchImage took %v after being canceled", elapsed)
	}
	assertCanceled(t, err, context.Canceled)

	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = c.Resolve(ctx, s.ref())
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("Resolve took %v with a 300ms deadline", elapsed)
	}
	assertCanceled(t, err, context.DeadlineExceeded)
}

func TestConcurrentRootFS(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	img := fetch(t, c, gzipRef)
	dst := t.TempDir()
	const n = 8
	results := make([][]*os.File, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i], errs[i] = c.RootFS(context.Background(), img, dst)
		}(i)
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Errorf("goroutine %d: %v", i, errs[i])
			continue
		}
		checkLayerFiles(t, dst, results[i])
	}
}

func TestClose(t *testing.T) {
	c, err := ocicache.Open(ocicache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	img, err := c.FetchImage(context.Background(), gzipRef, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for name, err := range map[string]error{
		"Resolve":    second(c.Resolve(context.Background(), gzipRef)),
		"FetchImage": second(c.FetchImage(context.Background(), gzipRef, "")),
		"RootFS":     second(c.RootFS(context.Background(), img, t.TempDir())),
		"FetchLayer": second(c.FetchLayer(context.Background(), img, 0)),
	} {
		if !errors.Is(err, ocicache.ErrClosed) || !errors.Is(err, ocicache.ErrInvalidArgument) {
			t.Errorf("%s after Close: %v, want ErrClosed and ErrInvalidArgument", name, err)
		}
	}

	// The image outlives its cache, and its fields outlive it.
	c2 := openCache(t, ocicache.Options{})
	files, err := c2.RootFS(context.Background(), img, t.TempDir())
	if err != nil {
		t.Fatalf("RootFS of an image whose cache is closed: %v", err)
	}
	for _, f := range files {
		f.Close()
	}
	img.Close()
	img.Close()
	if _, err := c2.RootFS(context.Background(), img, t.TempDir()); !errors.Is(err, ocicache.ErrClosed) {
		t.Errorf("RootFS of a closed image: %v, want ErrClosed", err)
	}
	if len(img.Layers) != len(wantDiffIDs) || img.Digest != gzipDigest {
		t.Errorf("a closed image lost its fields: %+v", img)
	}
}

func second[T any](_ T, err error) error { return err }

// Close waits for the calls in flight instead of freeing the handle under
// them.
func TestCloseWaitsForCalls(t *testing.T) {
	c, err := ocicache.Open(ocicache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := startSilentServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	callErr := make(chan error, 1)
	go func() {
		_, err := c.FetchImage(ctx, s.ref(), "")
		callErr <- err
	}()
	<-s.accepted
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a call was in flight")
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not return after the call was canceled")
	}
	assertCanceled(t, <-callErr, context.Canceled)
}

// Calls racing a Close either work or fail with ErrClosed.
func TestCloseRacingCalls(t *testing.T) {
	c, err := ocicache.Open(ocicache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				if _, err := c.Resolve(context.Background(), gzipRef); err != nil {
					if !errors.Is(err, ocicache.ErrClosed) {
						t.Errorf("Resolve: %v", err)
					}
					return
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	c.Close()
	wg.Wait()
}
