// This file shows that the Options whose setters no other test exercises
// act: Mirrors, HostsDir, Attempts, MaxLayerSize, RangeThreshold with
// RangeConnections, Platform on a multi-platform index with a non-host
// platform, and InsecureRegistries on
// a plain-HTTP registry reached by a name that is not loopback (in a
// private mount namespace whose /etc/hosts maps it to 127.0.0.1).

package ocicache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"oci-cache/go/ocicache"
)

// deadHost is a loopback host:port nobody listens on.
func deadHost(t *testing.T) string {
	t.Helper()
	host, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return host
}

// pullInto fetches ref and its layers into a fresh dst, checking the
// layers against the expected diff_ids; it returns the image's digest.
func pullInto(t *testing.T, c *ocicache.Cache, ref string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	img, err := c.FetchImage(ctx, ref, "")
	if err != nil {
		t.Fatalf("FetchImage(%s): %v", ref, err)
	}
	defer img.Close()
	dst := t.TempDir()
	files, err := c.RootFS(ctx, img, dst)
	if err != nil {
		t.Fatalf("RootFS(%s): %v", ref, err)
	}
	checkLayerFiles(t, dst, files)
	return img.Digest
}

// fetchErr is FetchImage's error for ref, bounded in time.
func fetchErr(t *testing.T, c *ocicache.Cache, ref string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	img, err := c.FetchImage(ctx, ref, "")
	if err == nil {
		img.Close()
	}
	return err
}

// A mirror serves the whole pull while the registry it stands for is down.
func TestMirrorServesWhileUpstreamIsDown(t *testing.T) {
	dead := deadHost(t)
	ref := dead + "/go/app:v1"
	if err := fetchErr(t, openCache(t, ocicache.Options{}), ref); !errors.Is(err, ocicache.ErrNetwork) {
		t.Fatalf("FetchImage(%s) without a mirror: %v, want ErrNetwork", ref, err)
	}
	c := openCache(t, ocicache.Options{Mirrors: []ocicache.Mirror{{Registry: dead, Host: registryHost}}})
	if got := pullInto(t, c, ref); got != gzipDigest {
		t.Errorf("through the mirror: digest %s, want %s", got, gzipDigest)
	}
}

// A hosts.toml in HostsDir sends a registry's pulls to another host.
func TestHostsDirRedirects(t *testing.T) {
	dead := deadHost(t)
	ref := dead + "/go/app:v1"
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, dead), 0o755); err != nil {
		t.Fatal(err)
	}
	toml := fmt.Sprintf("server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", dead, registryHost)
	if err := os.WriteFile(filepath.Join(dir, dead, "hosts.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := fetchErr(t, openCache(t, ocicache.Options{}), ref); !errors.Is(err, ocicache.ErrNetwork) {
		t.Fatalf("FetchImage(%s) without HostsDir: %v, want ErrNetwork", ref, err)
	}
	c := openCache(t, ocicache.Options{HostsDir: dir})
	if got := pullInto(t, c, ref); got != gzipDigest {
		t.Errorf("through hosts.toml: digest %s, want %s", got, gzipDigest)
	}
}

// Attempts is how many times a request that gets 503 is tried: counted by
// the server.
func TestAttemptsCountedByTheServer(t *testing.T) {
	var requests atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	ref := l.Addr().String() + "/go/app:v1"
	for _, attempts := range []int{1, 3} {
		requests.Store(0)
		c := openCache(t, ocicache.Options{Attempts: attempts})
		if err := fetchErr(t, c, ref); !errors.Is(err, ocicache.ErrNetwork) || !strings.Contains(err.Error(), "503") {
			t.Errorf("Attempts %d: %v, want ErrNetwork naming the 503", attempts, err)
		}
		// The call has returned: every request it made was answered.
		if got := requests.Load(); got != int32(attempts) {
			t.Errorf("Attempts %d: the server saw %d requests", attempts, got)
		}
	}
}

// A layer that uncompresses past MaxLayerSize fails the call with
// ErrInvalidContent and leaves nothing in dst; at its exact size it passes.
func TestMaxLayerSize(t *testing.T) {
	biggest := int64(0)
	for _, n := range wantTarSizes {
		if n > biggest {
			biggest = n
		}
	}
	ctx := context.Background()
	small := openCache(t, ocicache.Options{MaxLayerSize: biggest - 1})
	img := fetch(t, small, gzipRef)
	dst := t.TempDir()
	files, err := small.ExtractLayers(ctx, img, dst)
	if !errors.Is(err, ocicache.ErrInvalidContent) || files != nil {
		t.Errorf("ExtractLayers with MaxLayerSize %d: %v, %d files; want ErrInvalidContent", biggest-1, err, len(files))
	}
	checkCleanedUp(t, "ExtractLayers past MaxLayerSize", dst)
	// Whole layers that were within the limit may stay; the big one may not.
	for _, path := range regularFiles(t, dst) {
		for i, n := range wantTarSizes {
			if n == biggest && path == tarPath(dst, wantDiffIDs[i]) {
				t.Errorf("the layer past the limit is in dst: %s", path)
			}
		}
	}
	exact := openCache(t, ocicache.Options{MaxLayerSize: biggest})
	if got := pullInto(t, exact, gzipRef); got != gzipDigest {
		t.Errorf("MaxLayerSize %d: digest %s, want %s", biggest, got, gzipDigest)
	}
}

// With a store, RangeThreshold 1 and RangeConnections 4, the big layer
// (200 KiB) comes as bounded ranges, seen by a proxy in front of the
// registry, that cover it exactly once; the pull verifies.
func TestRangeDownload(t *testing.T) {
	big := gzipLayers[1]
	var mu sync.Mutex
	var ranges []string
	upstream, err := url.Parse("http://" + registryHost)
	if err != nil {
		t.Fatal(err)
	}
	forward := httputil.NewSingleHostReverseProxy(upstream)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+big.Digest) {
			mu.Lock()
			ranges = append(ranges, r.Header.Get("Range"))
			mu.Unlock()
		}
		forward.ServeHTTP(w, r)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()

	c := openCache(t, ocicache.Options{Store: t.TempDir(), RangeThreshold: 1, RangeConnections: 4})
	ref := l.Addr().String() + strings.TrimPrefix(gzipRef, registryHost)
	if got := pullInto(t, c, ref); got != gzipDigest {
		t.Errorf("digest %s, want %s", got, gzipDigest)
	}
	mu.Lock()
	defer mu.Unlock()
	type span struct{ first, last int64 }
	var spans []span
	for _, r := range ranges {
		first, last, ok := strings.Cut(strings.TrimPrefix(r, "bytes="), "-")
		a, errA := strconv.ParseInt(first, 10, 64)
		b, errB := strconv.ParseInt(last, 10, 64)
		if !strings.HasPrefix(r, "bytes=") || !ok || errA != nil || errB != nil {
			t.Fatalf("request with Range %q: want bytes=A-B (bounded); all: %q", r, ranges)
		}
		spans = append(spans, span{a, b})
	}
	if len(spans) < 2 {
		t.Fatalf("ranges %q: want several", ranges)
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].first < spans[j].first })
	next := int64(0)
	for _, s := range spans {
		if s.first != next || s.last < s.first {
			t.Fatalf("ranges %q do not cover the blob exactly once", ranges)
		}
		next = s.last + 1
	}
	if next != big.Size {
		t.Errorf("ranges %q end at %d, want the blob's %d bytes", ranges, next, big.Size)
	}
}

// pushBlob uploads data to repo in the test registry; returns its digest.
func pushBlob(t *testing.T, repo string, data []byte) string {
	t.Helper()
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	resp, err := http.Post("http://"+registryHost+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	location := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || location == "" {
		t.Fatalf("starting an upload to %s: %s", repo, resp.Status)
	}
	if !strings.HasPrefix(location, "http") {
		location = "http://" + registryHost + location
	}
	sep := "?"
	if strings.Contains(location, "?") {
		sep = "&"
	}
	put(t, location+sep+"digest="+digest, "application/octet-stream", data)
	return digest
}

// put PUTs body to url and wants 201 Created.
func put(t *testing.T, url, contentType string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT %s: %s %s", url, resp.Status, msg)
	}
}

// pushManifest puts a manifest or index under ref (a tag or digest).
func pushManifest(t *testing.T, repo, ref, mediaType string, body []byte) string {
	t.Helper()
	put(t, "http://"+registryHost+"/v2/"+repo+"/manifests/"+ref, mediaType, body)
	sum := sha256.Sum256(body)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// The platform option, and FetchImage's platform argument, pick the
// non-host manifest of a multi-platform index: its digest and its config,
// byte for byte the blob pushed for it.
func TestPlatformPicksANonHostManifest(t *testing.T) {
	other := "arm64"
	if runtime.GOARCH == "arm64" {
		other = "amd64"
	}
	const repo = "go/app"
	hostConfig, err := os.ReadFile(gzipConfigBlob)
	if err != nil {
		t.Fatal(err)
	}
	var config map[string]any
	if err := json.Unmarshal(hostConfig, &config); err != nil {
		t.Fatal(err)
	}
	config["architecture"] = other
	otherConfig, err := json.Marshal(config)
	if err != nil {
		t.Fatal(err)
	}
	configDigest := pushBlob(t, repo, otherConfig)
	// The same layers (already in repo), under the other config.
	layers := make([]map[string]any, len(gzipLayers))
	for i, l := range gzipLayers {
		layers[i] = map[string]any{"mediaType": l.MediaType, "digest": l.Digest, "size": l.Size}
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     ociManifestType,
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": len(otherConfig)},
		"layers":        layers,
	})
	if err != nil {
		t.Fatal(err)
	}
	otherDigest := pushManifest(t, repo, "sha256:"+fmt.Sprintf("%x", sha256.Sum256(manifest)), ociManifestType, manifest)
	// The host manifest's size, from its bytes (checked against its digest).
	req, err := http.NewRequest(http.MethodGet, "http://"+registryHost+"/v2/"+repo+"/manifests/"+gzipDigest, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", ociManifestType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	hostManifest, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if sum := sha256.Sum256(hostManifest); err != nil || "sha256:"+hex.EncodeToString(sum[:]) != gzipDigest {
		t.Fatalf("the registry's copy of %s: %d bytes, %v", gzipDigest, len(hostManifest), err)
	}
	hostManifestSize := len(hostManifest)
	const indexType = "application/vnd.oci.image.index.v1+json"
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     indexType,
		"manifests": []map[string]any{
			{"mediaType": ociManifestType, "digest": gzipDigest, "size": hostManifestSize, "platform": map[string]string{"os": "linux", "architecture": runtime.GOARCH}},
			{"mediaType": ociManifestType, "digest": otherDigest, "size": len(manifest), "platform": map[string]string{"os": "linux", "architecture": other}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	pushManifest(t, repo, "multi", indexType, index)
	ref := registryHost + "/" + repo + ":multi"

	check := func(what string, img *ocicache.Image, err error, digest string, config []byte) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer img.Close()
		if img.Digest != digest || !bytes.Equal(img.Config, config) {
			t.Errorf("%s: digest %s and a %d-byte config, want %s and the %d bytes pushed", what, img.Digest, len(img.Config), digest, len(config))
		}
	}
	ctx := context.Background()
	host := openCache(t, ocicache.Options{})
	img, err := host.FetchImage(ctx, ref, "")
	check("no platform set", img, err, gzipDigest, hostConfig)
	img, err = host.FetchImage(ctx, ref, "linux/"+other)
	check("FetchImage's platform linux/"+other, img, err, otherDigest, otherConfig)
	c := openCache(t, ocicache.Options{Platform: "linux/" + other})
	img, err = c.FetchImage(ctx, ref, "")
	check("Options.Platform linux/"+other, img, err, otherDigest, otherConfig)
	// Its layers are the host image's: the pull completes as usual.
	img, err = c.FetchImage(ctx, ref, "")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	dst := t.TempDir()
	files, err := c.RootFS(ctx, img, dst)
	if err != nil {
		t.Fatal(err)
	}
	checkLayerFiles(t, dst, files)
}

// The name, not loopback, that the insecure-registry test reaches the
// registry by; its child process sees it in /etc/hosts as 127.0.0.1.
const insecureName = "oci-insecure.test"

// insecureChildEnv carries the registry's port to the child; set, TestMain
// runs insecureChild instead of the tests.
const insecureChildEnv = "OCICACHE_TEST_INSECURE_PORT"

// InsecureRegistries lets the library speak plain HTTP to a registry whose
// name is not loopback; without it the library insists on HTTPS. Run in a
// child process with a private mount namespace (unshare -m) in which
// /etc/hosts is bind-mounted over by one mapping the name to 127.0.0.1:
// the machine's own file is never touched.
func TestInsecureRegistryByName(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatalf("unshare (util-linux) is needed: %v", err)
	}
	hosts := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n127.0.0.1 "+insecureName+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(registryHost)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "-m", "--", "sh", "-c",
		`mount --bind "$0" /etc/hosts && exec "$@"`, hosts, os.Args[0])
	cmd.Env = append(os.Environ(), insecureChildEnv+"="+port, "OCICACHE_TEST_WANT_DIGEST="+gzipDigest)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "insecure child: ok\n") {
		t.Fatalf("the child in its own mount namespace: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// insecureChild is TestInsecureRegistryByName's other half; it returns the
// process's exit code.
func insecureChild(port string) int {
	fail := func(format string, args ...any) int {
		fmt.Printf("insecure child: "+format+"\n", args...)
		return 1
	}
	if addrs, err := net.LookupHost(insecureName); err != nil || len(addrs) != 1 || addrs[0] != "127.0.0.1" {
		return fail("%s resolves to %v (%v), want 127.0.0.1 only", insecureName, addrs, err)
	}
	host := net.JoinHostPort(insecureName, port)
	ref := host + "/go/app:v1"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, insecure := range []bool{false, true} {
		opts := ocicache.Options{}
		if insecure {
			opts.InsecureRegistries = []string{host}
		}
		c, err := ocicache.Open(opts)
		if err != nil {
			return fail("Open: %v", err)
		}
		img, err := c.FetchImage(ctx, ref, "")
		switch {
		case !insecure && (!errors.Is(err, ocicache.ErrNetwork) || !strings.Contains(err.Error(), "https://"+host+"/")):
			c.Close()
			return fail("without InsecureRegistries: %v, want ErrNetwork (HTTPS to a plain-HTTP registry)", err)
		case insecure && err != nil:
			c.Close()
			return fail("with InsecureRegistries: %v", err)
		case insecure && img.Digest != os.Getenv("OCICACHE_TEST_WANT_DIGEST"):
			c.Close()
			return fail("with InsecureRegistries: digest %s, want %s", img.Digest, os.Getenv("OCICACHE_TEST_WANT_DIGEST"))
		}
		if !insecure {
			fmt.Printf("insecure child: without InsecureRegistries: %v\n", err)
		}
		if img != nil {
			img.Close()
		}
		c.Close()
	}
	fmt.Println("insecure child: ok")
	return 0
}
