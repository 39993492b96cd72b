// This file owns the tests of time limits and of the registry Options:
// a context's deadline (the library's own deadline path, and together with
// cancellation), the default network time limits, Options.StallTimeout,
// ResponseTimeout and NoLimit, CA certificate files (read at first
// use, not by Open), credentials and auth file on a plain registry, and
// setter failures naming their field.

package ocicache_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"oci-cache/go/ocicache"
)

// deadlineOnly has a deadline but no Done channel, so this package cannot
// cancel on it: only the deadline handed to the library can end a call.
type deadlineOnly struct {
	context.Context
	deadline time.Time
}

func (c deadlineOnly) Deadline() (time.Time, bool) { return c.deadline, true }

// gate forwards connections to target until stall; from then on it drops
// them and accepts new ones without ever answering, so a test can fetch an
// image and then find the registry stuck when the layers are pulled.
type gate struct {
	l       net.Listener
	mu      sync.Mutex
	stalled bool
	conns   []net.Conn
	wg      sync.WaitGroup
}

func startGate(t *testing.T, target string) *gate {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{l: l}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			stalled := g.stalled
			g.conns = append(g.conns, in)
			g.mu.Unlock()
			if stalled {
				continue
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			g.mu.Lock()
			g.conns = append(g.conns, out)
			g.mu.Unlock()
			g.wg.Add(2)
			go func() { defer g.wg.Done(); io.Copy(out, in); out.Close() }()
			go func() { defer g.wg.Done(); io.Copy(in, out); in.Close() }()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		g.closeConns()
		g.wg.Wait()
	})
	return g
}

func (g *gate) ref() string { return g.l.Addr().String() + "/go/app:v1" }

// stall drops the connections made so far (the library's idle ones among
// them) and leaves new ones unanswered.
func (g *gate) stall() {
	g.mu.Lock()
	g.stalled = true
	g.mu.Unlock()
	g.closeConns()
}

func (g *gate) closeConns() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.conns {
		c.Close()
	}
	g.conns = nil
}

// checkDeadlineError checks err is what a call its context's deadline
// ended returns, however it ended, and that it came on time.
func checkDeadlineError(t *testing.T, what string, err error, elapsed time.Duration) {
	t.Helper()
	for _, target := range []error{context.DeadlineExceeded, ocicache.ErrTimeout, ocicache.ErrCanceled} {
		if !errors.Is(err, target) {
			t.Errorf("%s: %v does not match %v", what, err, target)
		}
	}
	if errors.Is(err, context.Canceled) {
		t.Errorf("%s: %v matches context.Canceled", what, err)
	}
	if elapsed < 250*time.Millisecond || elapsed > 1500*time.Millisecond {
		t.Errorf("%s returned after %v with a 300ms deadline", what, elapsed)
	}
}

func errorCode(err error) int {
	var e *ocicache.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// The deadline reaches the library: with no way for this package to cancel
// the call, it still ends on time, by the library's OCI_E_TIMEOUT.
func TestDeadlineLibrarySide(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	s := startSilentServer(t)
	ctx := deadlineOnly{context.Background(), time.Now().Add(300 * time.Millisecond)}
	start := time.Now()
	_, err := c.FetchImage(ctx, s.ref(), "")
	checkDeadlineError(t, "FetchImage", err, time.Since(start))
	if code := errorCode(err); code != ocicache.ErrTimeout.Code {
		t.Errorf("FetchImage: %v has code %d, want the library's timeout %d", err, code, ocicache.ErrTimeout.Code)
	}

	// The same for a layer download that gets stuck.
	g := startGate(t, registryHost)
	img := fetch(t, c, g.ref())
	g.stall()
	dst := t.TempDir()
	ctx = deadlineOnly{context.Background(), time.Now().Add(300 * time.Millisecond)}
	start = time.Now()
	_, err = c.RootFS(ctx, img, dst)
	checkDeadlineError(t, "RootFS", err, time.Since(start))
	checkCleanedUp(t, "RootFS that timed out", dst)
}

// An ordinary context's deadline ends a call through both the library's
// deadline and the cancel token; the error is the same whichever wins.
func TestDeadlineContext(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	s := startSilentServer(t)
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		_, err := c.FetchImage(ctx, s.ref(), "")
		elapsed := time.Since(start)
		cancel()
		checkDeadlineError(t, "FetchImage", err, elapsed)
		t.Logf("ended with code %d after %v: %v", errorCode(err), elapsed.Round(time.Millisecond), err)
	}
}

func TestStallTimeout(t *testing.T) {
	c := openCache(t, ocicache.Options{StallTimeout: 300 * time.Millisecond})
	s := startSilentServer(t)
	check := func(what string, err error, elapsed time.Duration) {
		t.Helper()
		if !errors.Is(err, ocicache.ErrTimeout) {
			t.Errorf("%s: %v, want ErrTimeout", what, err)
		}
		if errors.Is(err, ocicache.ErrCanceled) || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: the stall timeout %v matches ErrCanceled or DeadlineExceeded", what, err)
		}
		if elapsed < 250*time.Millisecond || elapsed > 1500*time.Millisecond {
			t.Errorf("%s returned after %v with a 300ms stall timeout", what, elapsed)
		}
	}
	start := time.Now()
	_, err := c.FetchImage(context.Background(), s.ref(), "")
	check("FetchImage", err, time.Since(start))

	// A context without a deadline but with cancellation changes nothing.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := startGate(t, registryHost)
	img := fetch(t, c, g.ref())
	g.stall()
	dst := t.TempDir()
	start = time.Now()
	_, err = c.RootFS(ctx, img, dst)
	check("RootFS", err, time.Since(start))
	checkCleanedUp(t, "RootFS that stalled", dst)

	// The limit is on silence, not on the call: a healthy pull is not cut.
	files, err := c.RootFS(context.Background(), fetch(t, c, gzipRef), dst)
	if err != nil {
		t.Fatal(err)
	}
	checkLayerFiles(t, dst, files)
}

// CA files are read when a registry is first contacted, not by Open.
func TestCACertificateFiles(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-ca.pem")
	for name, opts := range map[string]ocicache.Options{
		"CACertificates":     {CACertificates: []string{missing}},
		"HostCACertificates": {HostCACertificates: []ocicache.HostCACertificate{{Host: registryHost, Path: missing}}},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := ocicache.Open(opts)
			if err != nil {
				t.Fatalf("Open with a missing CA file: %v, want success (files are read at first use)", err)
			}
			defer c.Close()
			_, err = c.FetchImage(context.Background(), gzipRef, "")
			if !errors.Is(err, ocicache.ErrIO) || !strings.Contains(err.Error(), missing) {
				t.Errorf("FetchImage with a missing CA file: %v, want ErrIO naming %s", err, missing)
			}
		})
	}

	// Another host's CA file is never read.
	c := openCache(t, ocicache.Options{HostCACertificates: []ocicache.HostCACertificate{{Host: "registry.invalid:5000", Path: missing}}})
	fetch(t, c, gzipRef)

	// A warm cache needs no registry, so it never reads the file either.
	store := t.TempDir()
	warm := openCache(t, ocicache.Options{Store: store})
	files, err := warm.RootFS(context.Background(), fetch(t, warm, gzipRef), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	c = openCache(t, ocicache.Options{Store: store, CACertificates: []string{missing}})
	img := fetch(t, c, gzipRef)
	dst := t.TempDir()
	files, err = c.RootFS(context.Background(), img, dst)
	if err != nil {
		t.Fatalf("RootFS from the store with a missing CA file: %v", err)
	}
	checkLayerFiles(t, dst, files)
}

// Credentials and an auth file do not get in the way of a registry that
// asks for none. (Registries that do are tested from Rust.)
func TestCredentialsOnPlainRegistry(t *testing.T) {
	authFile := filepath.Join(t.TempDir(), "auth.json")
	if err := os.WriteFile(authFile, []byte(`{"auths": {}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	c := openCache(t, ocicache.Options{
		Credentials: []ocicache.Credential{
			{Host: registryHost, Username: "gopher", Password: "secret"},
			{Host: "index.docker.io", Username: "someone", Password: "else"},
		},
		AuthFile:     authFile,
		StallTimeout: 10 * time.Second,
	})
	img := fetch(t, c, gzipRef)
	dst := t.TempDir()
	files, err := c.RootFS(context.Background(), img, dst)
	if err != nil {
		t.Fatal(err)
	}
	checkLayerFiles(t, dst, files)
}

// With no option set, a registry that accepts connections and never
// answers fails a call with ErrTimeout alone, naming the host and the
// step, within 90 s (the 30 s response timeout). Parallel with
// TestNoLimitTurnsALimitOff, so the wait overlaps.
func TestDefaultLimitsEndACallToASilentRegistry(t *testing.T) {
	t.Parallel()
	c := openCache(t, ocicache.Options{})
	s := startSilentServer(t)
	// Only an outer bound: the library's own limits must end the call first.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.FetchImage(ctx, s.ref(), "")
	elapsed := time.Since(start)
	if !errors.Is(err, ocicache.ErrTimeout) || errors.Is(err, ocicache.ErrCanceled) ||
		errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("FetchImage from a silent registry: %v, want ErrTimeout only", err)
	}
	host := s.l.Addr().String()
	for _, part := range []string{"waiting for response headers from " + host, "nothing within 30s (response_timeout)"} {
		if !strings.Contains(err.Error(), part) {
			t.Errorf("%q is missing from %v", part, err)
		}
	}
	if elapsed < 29*time.Second || elapsed > 90*time.Second {
		t.Errorf("default limits ended the call after %v, want 30 s (at most 90 s)", elapsed)
	}
}

// ResponseTimeout bounds the wait for headers; NoLimit turns the response
// and stall timeouts off, leaving only the context's deadline.
func TestNoLimitTurnsALimitOff(t *testing.T) {
	t.Parallel()
	s := startSilentServer(t)
	quick := openCache(t, ocicache.Options{ResponseTimeout: 300 * time.Millisecond})
	start := time.Now()
	_, err := quick.FetchImage(context.Background(), s.ref(), "")
	elapsed := time.Since(start)
	if !errors.Is(err, ocicache.ErrTimeout) || !strings.Contains(err.Error(), "nothing within 300ms (response_timeout)") {
		t.Errorf("FetchImage with a 300ms ResponseTimeout: %v", err)
	}
	if elapsed < 250*time.Millisecond || elapsed > 2*time.Second {
		t.Errorf("a 300ms ResponseTimeout ended the call after %v", elapsed)
	}

	off := openCache(t, ocicache.Options{ResponseTimeout: ocicache.NoLimit, StallTimeout: -time.Second})
	ctx := deadlineOnly{context.Background(), time.Now().Add(800 * time.Millisecond)}
	start = time.Now()
	_, err = off.FetchImage(ctx, s.ref(), "")
	elapsed = time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "_timeout") {
		t.Errorf("FetchImage with the limits off: %v, want the deadline's error", err)
	}
	if elapsed < 750*time.Millisecond || elapsed > 3*time.Second {
		t.Errorf("an 800ms deadline ended the call after %v", elapsed)
	}
}

// A setter's failure names the Options field, and never a password.
func TestOptionsErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		opts  ocicache.Options
		field string
	}{
		{ocicache.Options{Platform: "not a platform"}, "Options.Platform"},
		{ocicache.Options{Store: "bad\xffutf8"}, "Options.Store"},
		{ocicache.Options{CACertificates: []string{"bad\xffutf8.pem"}}, "Options.CACertificates"},
		{ocicache.Options{CACertificates: []string{"nul\x00.pem"}}, "Options.CACertificates"},
		{ocicache.Options{HostCACertificates: []ocicache.HostCACertificate{{Host: "h\xff", Path: "ca.pem"}}}, "Options.HostCACertificates"},
		{ocicache.Options{AuthFile: "bad\xff.json"}, "Options.AuthFile"},
		{ocicache.Options{Credentials: []ocicache.Credential{{Host: "h", Username: "u", Password: "pass\xffword"}}}, "Options.Credentials"},
		{ocicache.Options{InsecureRegistries: []string{"h\x00"}}, "Options.InsecureRegistries"},
	} {
		c, err := ocicache.Open(tc.opts)
		if c != nil {
			c.Close()
		}
		if !errors.Is(err, ocicache.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("Open(%+v): %v, want ErrInvalidArgument naming %s", tc.opts, err, tc.field)
		}
		if err != nil && strings.Contains(err.Error(), "pass") {
			t.Errorf("Open(%+v): %q shows the password", tc.opts, err)
		}
	}
}
