// This file owns the tests of what the binding does on a hostile or full
// disk: a FIFO and a symlink planted where layer tars belong are neither
// blocked on nor followed, and Options.FreeSpaceReserve refuses a write
// that would eat into it (ErrIO naming the reserve) or, with NoLimit, is off.

package ocicache_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"oci-cache/go/ocicache"
)

// rootFSWithin runs RootFS, failing the test if it does not return within
// a minute: a call blocked on a FIFO would ignore its context.
func rootFSWithin(t *testing.T, c *ocicache.Cache, dst string, img *ocicache.Image) ([]*os.File, error) {
	t.Helper()
	type result struct {
		files []*os.File
		err   error
	}
	done := make(chan result, 1)
	go func() {
		files, err := c.RootFS(context.Background(), img, dst)
		done <- result{files, err}
	}()
	select {
	case r := <-done:
		return r.files, r.err
	case <-time.After(time.Minute):
		t.Fatal("RootFS did not return within a minute")
		return nil, nil
	}
}

func tarPath(dst, diffID string) string {
	return filepath.Join(dst, "sha256", strings.TrimPrefix(diffID, "sha256:"))
}

func TestRootFSReplacesPlantedFIFOAndSymlink(t *testing.T) {
	c := openCache(t, ocicache.Options{Store: t.TempDir()})
	img := fetch(t, c, gzipRef)
	dst := t.TempDir()
	files, err := rootFSWithin(t, c, dst, img)
	if err != nil {
		t.Fatal(err)
	}
	checkLayerFiles(t, dst, files)

	secret := []byte("root:$6$secret:19000::::::\n")
	shadow := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(shadow, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	fifo, link := tarPath(dst, wantDiffIDs[0]), tarPath(dst, wantDiffIDs[1])
	for _, planted := range []string{fifo, link} {
		if err := os.Remove(planted); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(shadow, link); err != nil {
		t.Fatal(err)
	}

	files, err = rootFSWithin(t, c, dst, img)
	if err != nil {
		t.Fatal(err)
	}
	checkLayerFiles(t, dst, files)
	for _, planted := range []string{fifo, link} {
		if info, err := os.Lstat(planted); err != nil || !info.Mode().IsRegular() {
			t.Errorf("%s was not replaced by a regular file: %v, %v", planted, info, err)
		}
	}
	if got, err := os.ReadFile(shadow); err != nil || string(got) != string(secret) {
		t.Errorf("the symlink's target changed: %q, %v", got, err)
	}
}

func TestFreeSpaceReserve(t *testing.T) {
	// No store: the layer tar is the only write.
	strict := openCache(t, ocicache.Options{FreeSpaceReserve: 1 << 62})
	img := fetch(t, strict, gzipRef)
	dst := t.TempDir()
	_, err := rootFSWithin(t, strict, dst, img)
	if !errors.Is(err, ocicache.ErrIO) || !strings.Contains(err.Error(), "free-space reserve") ||
		!strings.Contains(err.Error(), "(free_space_reserve)") {
		t.Fatalf("RootFS with a 4 EiB reserve: %v, want ErrIO naming the reserve", err)
	}
	entries, _ := os.ReadDir(filepath.Join(dst, "sha256"))
	if len(entries) != 0 {
		t.Errorf("left behind in dst/sha256: %v", entries)
	}

	for _, reserve := range []int64{ocicache.NoLimit, 1} {
		c := openCache(t, ocicache.Options{FreeSpaceReserve: reserve})
		files, err := rootFSWithin(t, c, dst, fetch(t, c, gzipRef))
		if err != nil {
			t.Fatalf("RootFS with FreeSpaceReserve %d: %v", reserve, err)
		}
		checkLayerFiles(t, dst, files)
	}
}
