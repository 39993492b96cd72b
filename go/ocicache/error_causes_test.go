// Tests that each library error reaches Go with its kind and its cause:
// the OS error (errors.Is(err, syscall.ENOSPC)) and the registry's HTTP
// status, and that the sentinels no other test meets (ErrUnauthorized,
// ErrUnsupported, ErrDigestMismatch, ErrInvalidContent) come from the
// situations they name, served by a small fake registry.

package ocicache_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"

	"oci-cache/go/ocicache"
)

// mountTmpfs mounts a tmpfs with options on a fresh directory, unmounted
// when the test ends.
func mountTmpfs(t *testing.T, options string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, options); err != nil {
		t.Fatalf("mounting a tmpfs (%s) on %s: %v", options, dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// asError is err as the package's *Error, or a test failure.
func asError(t *testing.T, what string, err error) *ocicache.Error {
	t.Helper()
	var e *ocicache.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: %#v is not an *ocicache.Error", what, err)
	}
	return e
}

// emptyDir fails the test if dir holds anything.
func emptyDir(t *testing.T, what, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		// An empty sha256/ directory may stay: only files count.
		if e.IsDir() {
			sub, _ := os.ReadDir(dir + "/" + e.Name())
			if len(sub) == 0 {
				continue
			}
		}
		t.Errorf("%s: %s left in %s", what, e.Name(), dir)
	}
}

func TestErrorCarriesHTTPStatusAndErrno(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	ctx := context.Background()

	_, err := c.FetchImage(ctx, registryHost+"/go/app:nope", "")
	e := asError(t, "missing tag", err)
	if !errors.Is(err, ocicache.ErrNotFound) || e.HTTPStatus != 404 || e.Errno != 0 {
		t.Errorf("missing tag: %v (HTTP %d, errno %d), want ErrNotFound, HTTP 404, no errno", err, e.HTTPStatus, e.Errno)
	}

	closed, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.FetchImage(ctx, closed+"/go/app:v1", "")
	e = asError(t, "refused connection", err)
	if !errors.Is(err, ocicache.ErrNetwork) || !errors.Is(err, syscall.ECONNREFUSED) || e.HTTPStatus != 0 {
		t.Errorf("refused connection: %v (HTTP %d, errno %d), want ErrNetwork and ECONNREFUSED", err, e.HTTPStatus, e.Errno)
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, ocicache.ErrIO) {
		t.Errorf("refused connection: %v matches the wrong causes", err)
	}
}

func TestReadOnlyAndFullDst(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	ctx := context.Background()
	img := fetch(t, c, gzipRef)

	readOnly := mountTmpfs(t, "ro,size=64k")
	_, err := c.RootFS(ctx, img, readOnly)
	e := asError(t, "read-only dst", err)
	if !errors.Is(err, ocicache.ErrIO) || !errors.Is(err, syscall.EROFS) || e.Errno != syscall.EROFS || e.HTTPStatus != 0 {
		t.Errorf("read-only dst: %v (errno %d), want ErrIO and EROFS", err, e.Errno)
	}
	emptyDir(t, "read-only dst", readOnly)

	// The layers do not fit in 64 KiB: the default free-space reserve
	// refuses them, as good as a full disk.
	full := mountTmpfs(t, "size=64k")
	_, err = c.RootFS(ctx, img, full)
	e = asError(t, "full dst", err)
	if !errors.Is(err, ocicache.ErrIO) || !errors.Is(err, syscall.ENOSPC) || e.Errno != syscall.ENOSPC {
		t.Errorf("full dst: %v (errno %d), want ErrIO and ENOSPC", err, e.Errno)
	}
	if errors.Is(err, syscall.EROFS) || errors.Is(err, fs.ErrPermission) || errors.Is(err, ocicache.ErrNetwork) {
		t.Errorf("full dst: %v matches the wrong causes", err)
	}
}

// fakeRegistry serves fixed answers by path; anything else is a 404.
type fakeRegistry struct {
	host    string
	answers map[string]fakeAnswer
}

type fakeAnswer struct {
	status      int
	contentType string
	body        []byte
	headers     map[string]string
}

func startFakeRegistry(t *testing.T, answers map[string]fakeAnswer) *fakeRegistry {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeRegistry{host: listener.Addr().String(), answers: answers}
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answer, ok := f.answers[r.URL.Path]
		if !ok {
			answer = fakeAnswer{status: 404, contentType: "application/json", body: []byte(`{"errors":[{"code":"NOT_FOUND"}]}`)}
		}
		for k, v := range answer.headers {
			w.Header().Set(k, v)
		}
		w.Header().Set("Content-Type", answer.contentType)
		w.WriteHeader(answer.status)
		if r.Method != http.MethodHead {
			w.Write(answer.body)
		}
	})}
	go server.Serve(listener)
	t.Cleanup(func() { server.Close() })
	return f
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// serveImage adds repo:v1 with one layer of mediaType whose blob is served
// as served (which may differ from blob, the content its digest names).
func serveImage(t *testing.T, answers map[string]fakeAnswer, repo, mediaType string, blob, served []byte) {
	t.Helper()
	config, err := json.Marshal(map[string]any{
		"architecture": runtimeArch(),
		"os":           "linux",
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{digestOf(blob)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digestOf(config), "size": len(config)},
		"layers":        []any{map[string]any{"mediaType": mediaType, "digest": digestOf(blob), "size": len(blob)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	base := "/v2/" + repo
	answers[base+"/manifests/v1"] = fakeAnswer{status: 200, contentType: "application/vnd.oci.image.manifest.v1+json", body: manifest,
		headers: map[string]string{"Docker-Content-Digest": digestOf(manifest)}}
	answers[base+"/blobs/"+digestOf(config)] = fakeAnswer{status: 200, contentType: "application/octet-stream", body: config}
	answers[base+"/blobs/"+digestOf(blob)] = fakeAnswer{status: 200, contentType: "application/octet-stream", body: served}
}

// runtimeArch is the host's architecture as OCI names it (the image must
// match the cache's default platform).
func runtimeArch() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "amd64"
	}
	var b []byte
	for _, c := range u.Machine {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	switch string(b) {
	case "aarch64":
		return "arm64"
	case "x86_64":
		return "amd64"
	}
	return string(b)
}

// tinyTar is a tar holding one small file.
func tinyTar(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	content := []byte("hello\n")
	if err := tw.WriteHeader(&tar.Header{Name: "a", Mode: 0o644, Size: int64(len(content))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestSentinelsFromRealSituations(t *testing.T) {
	answers := map[string]fakeAnswer{
		// A registry that wants credentials nobody gave.
		"/v2/go/locked/manifests/v1": {status: 401, contentType: "application/json",
			body:    []byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`),
			headers: map[string]string{"WWW-Authenticate": `Basic realm="go-test"`}},
		// A manifest that is not JSON.
		"/v2/go/garbled/manifests/v1": {status: 200, contentType: "application/vnd.oci.image.manifest.v1+json",
			body: []byte("this is not JSON")},
	}
	layer := tinyTar(t)
	serveImage(t, answers, "go/odd", "application/vnd.example.layer.v1.tar+lz4", layer, layer)
	tampered := append([]byte(nil), layer...)
	tampered[0] = 'b'
	serveImage(t, answers, "go/tampered", "application/vnd.oci.image.layer.v1.tar", layer, tampered)
	fake := startFakeRegistry(t, answers)

	c := openCache(t, ocicache.Options{})
	ctx := context.Background()

	_, err := c.FetchImage(ctx, fake.host+"/go/locked:v1", "")
	e := asError(t, "401", err)
	if !errors.Is(err, ocicache.ErrUnauthorized) || e.HTTPStatus != 401 {
		t.Errorf("a registry answering 401: %v (HTTP %d), want ErrUnauthorized and 401", err, e.HTTPStatus)
	}

	_, err = c.FetchImage(ctx, fake.host+"/go/garbled:v1", "")
	if !errors.Is(err, ocicache.ErrInvalidContent) {
		t.Errorf("a manifest that is not JSON: %v, want ErrInvalidContent", err)
	}

	dst := t.TempDir()
	odd := fetch(t, c, fake.host+"/go/odd:v1")
	if _, err := c.RootFS(ctx, odd, dst); !errors.Is(err, ocicache.ErrUnsupported) {
		t.Errorf("a layer of unknown media type: %v, want ErrUnsupported", err)
	}
	bad := fetch(t, c, fake.host+"/go/tampered:v1")
	if _, err := c.RootFS(ctx, bad, dst); !errors.Is(err, ocicache.ErrDigestMismatch) {
		t.Errorf("a layer that does not match its digest: %v, want ErrDigestMismatch", err)
	}
	emptyDir(t, "refused layers", dst)
}
