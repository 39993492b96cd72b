// This file owns the tests of WithProgress: the reports of a cold RootFS
// checked against sizes computed from the blobs, none for a warm one,
// stopping a call from the progress function, a panic in it, and calls
// made from it.

package ocicache_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"oci-cache/go/ocicache"
)

// regularFiles lists the regular files under dir: what a failed call left.
func regularFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// partialFiles lists the regular files under dst that are not a whole,
// verified layer under its own name, or the index of one (written after its
// tar): a failed call may keep layers it finished, but no partial or
// temporary file.
func partialFiles(t *testing.T, dst string) []string {
	t.Helper()
	var partial []string
	indexes := filepath.Join(dst, "tar-index", "sha256")
	for _, path := range regularFiles(t, dst) {
		if filepath.Dir(path) == indexes && !strings.HasPrefix(filepath.Base(path), ".") {
			if _, err := os.Lstat(filepath.Join(dst, "sha256", filepath.Base(path))); err == nil {
				continue // checked as a tar below
			}
		}
		f, err := os.Open(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed since it was listed
		}
		if err != nil {
			t.Fatal(err)
		}
		got, err := sha256Of(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(dst, "sha256", strings.TrimPrefix(got, "sha256:")); path != want {
			partial = append(partial, path)
		}
	}
	return partial
}

// checkCleanedUp fails unless the partial files a failed call made in dst
// are gone within a few seconds. Not at once: the library returns as soon
// as a call is stopped, and its worker threads remove their temp files
// when they next read input, a moment later (src/layer.rs, Abandon); a
// worker that had read all its input finishes its layer instead.
func checkCleanedUp(t *testing.T, what, dst string) {
	t.Helper()
	start := time.Now()
	atReturn := partialFiles(t, dst)
	left := atReturn
	for len(left) > 0 && time.Since(start) < 5*time.Second {
		time.Sleep(10 * time.Millisecond)
		left = partialFiles(t, dst)
	}
	if len(left) > 0 {
		t.Errorf("%s: partial files still there after %v: %v", what, time.Since(start).Round(time.Millisecond), left)
	} else if len(atReturn) > 0 {
		t.Logf("%s: %d partial files at return, gone (removed, or completed into a whole layer) within %v", what, len(atReturn), time.Since(start).Round(time.Millisecond))
	}
}

func TestProgressRootFS(t *testing.T) {
	for _, tc := range []struct {
		ref    string
		layers []descriptor
	}{
		{gzipRef, gzipLayers},
		{zstdRef, zstdLayers},
	} {
		t.Run(tc.ref[strings.LastIndex(tc.ref, ":")+1:], func(t *testing.T) {
			c := openCache(t, ocicache.Options{})
			img := fetch(t, c, tc.ref)
			dst := t.TempDir()

			// Locked, so the thread the call starts on is the one it runs
			// on, and the reports can be checked to come on it too.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			caller := syscall.Gettid()
			var reports []ocicache.Progress
			otherThread := 0
			// No locking: the reports come on this goroutine, which the
			// race detector would dispute otherwise.
			progress := ocicache.WithProgress(func(p ocicache.Progress) bool {
				if syscall.Gettid() != caller {
					otherThread++
				}
				reports = append(reports, p)
				return true
			})
			files, err := c.RootFS(context.Background(), img, dst, progress)
			if err != nil {
				t.Fatal(err)
			}
			checkLayerFiles(t, dst, files)
			if otherThread > 0 {
				t.Errorf("%d of %d reports came on another thread than the caller's", otherThread, len(reports))
			}

			byLayer := make([][]ocicache.Progress, len(tc.layers))
			for _, p := range reports {
				if p.Layer < 0 || p.Layer >= len(byLayer) {
					t.Fatalf("report for layer %d of %d: %+v", p.Layer, len(byLayer), p)
				}
				byLayer[p.Layer] = append(byLayer[p.Layer], p)
			}
			for i, ps := range byLayer {
				size, tarSize := tc.layers[i].Size, wantTarSizes[i]
				if len(ps) == 0 {
					t.Errorf("layer %d: no reports", i)
					continue
				}
				var prev ocicache.Progress
				for j, p := range ps {
					last := j == len(ps)-1
					if p.Digest != tc.layers[i].Digest || p.DownloadTotal != size {
						t.Errorf("layer %d report %d: %+v, want digest %s and DownloadTotal %d", i, j, p, tc.layers[i].Digest, size)
					}
					if p.Downloaded < prev.Downloaded || p.Written < prev.Written {
						t.Errorf("layer %d report %d went back: %+v after %+v", i, j, p, prev)
					}
					if p.Downloaded > size || p.Written > tarSize {
						t.Errorf("layer %d report %d: %+v, beyond blob size %d or tar size %d", i, j, p, size, tarSize)
					}
					if !last && p.WrittenTotal != -1 {
						t.Errorf("layer %d report %d of %d: WrittenTotal %d before the last report, want -1", i, j, len(ps), p.WrittenTotal)
					}
					prev = p
				}
				final := ps[len(ps)-1]
				if final.Downloaded != size || final.Written != tarSize || final.WrittenTotal != tarSize {
					t.Errorf("layer %d last report %+v, want Downloaded == DownloadTotal == %d, Written == WrittenTotal == %d", i, final, size, tarSize)
				}
			}

			// The warm path does no work, so it reports nothing.
			reports = nil
			files, err = c.RootFS(context.Background(), img, dst, progress)
			if err != nil {
				t.Fatal(err)
			}
			checkLayerFiles(t, dst, files)
			if len(reports) != 0 {
				t.Errorf("warm RootFS reported %d times: %+v", len(reports), reports)
			}
		})
	}
}

// ExtractLayer reports its one layer; FetchLayer, FetchImage and Resolve
// take no CallOption, and a progress function given to another call hears
// nothing of them.
func TestProgressOtherCalls(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	layers := map[int]int{}
	progress := ocicache.WithProgress(func(p ocicache.Progress) bool {
		layers[p.Layer]++
		return true
	})
	img, err := c.FetchImage(context.Background(), gzipRef, "")
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if _, err := c.Resolve(context.Background(), gzipRef); err != nil {
		t.Fatal(err)
	}
	r, err := c.FetchLayer(context.Background(), img, 1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := sha256Of(r)
	r.Close()
	if err != nil || got != wantDiffIDs[1] {
		t.Fatalf("FetchLayer(1) hashes to %s (%v), want %s", got, err, wantDiffIDs[1])
	}
	if len(layers) != 0 {
		t.Errorf("FetchImage, Resolve and FetchLayer reported: %v", layers)
	}
	f, err := c.ExtractLayer(context.Background(), img, t.TempDir(), 2, progress)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if len(layers) != 1 || layers[2] == 0 {
		t.Errorf("ExtractLayer(2) reported for layers %v, want only 2", layers)
	}
}

func TestProgressStop(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	img := fetch(t, c, gzipRef)

	// Stopped at the first report. Reports reach the function a moment
	// after the work they describe, so a small layer may be done by then:
	// the library keeps such a layer (whole and verified, as always) and
	// removes the partial ones.
	dst := t.TempDir()
	calls := 0
	progress := ocicache.WithProgress(func(ocicache.Progress) bool {
		calls++
		return false
	})
	_, err := c.RootFS(context.Background(), img, dst, progress)
	if !errors.Is(err, ocicache.ErrCanceled) {
		t.Fatalf("RootFS stopped by its progress function: %v, want ErrCanceled", err)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, ocicache.ErrTimeout) {
		t.Errorf("RootFS stopped by its progress function: %v also matches a context error or ErrTimeout", err)
	}
	if calls != 1 {
		t.Errorf("progress function called %d times after returning false, want once", calls)
	}
	checkCleanedUp(t, "RootFS stopped at once", dst)
	if left := regularFiles(t, dst); len(left) != 0 {
		t.Logf("whole layers kept by a RootFS stopped at its first report: %v", left)
	}

	// Stopped half way through the big middle layer, one layer at a time:
	// the bottom layer stays (it is whole), the middle one may, as above.
	seq := openCache(t, ocicache.Options{MaxConcurrentLayers: 1})
	dst = t.TempDir()
	progress = ocicache.WithProgress(func(p ocicache.Progress) bool {
		return !(p.Layer == 1 && p.Written > 0 && p.WrittenTotal < 0)
	})
	if _, err := seq.ExtractLayers(context.Background(), img, dst, progress); !errors.Is(err, ocicache.ErrCanceled) {
		t.Fatalf("ExtractLayers stopped half way: %v, want ErrCanceled", err)
	}
	checkCleanedUp(t, "ExtractLayers stopped half way", dst)
	t.Logf("left after stopping half way through layer 1: %v (diff_ids %v)", regularFiles(t, dst), wantDiffIDs)

	// The cache is fine afterwards, and the stopped layers are redone.
	files, err := c.RootFS(context.Background(), img, dst)
	if err != nil {
		t.Fatal(err)
	}
	checkLayerFiles(t, dst, files)
}

// A panic in the progress function stops the call and comes out of the
// call in the caller's goroutine, without unwinding through the library.
func TestProgressPanic(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	img := fetch(t, c, gzipRef)
	dst := t.TempDir()
	type boom struct{ n int }
	progress := ocicache.WithProgress(func(ocicache.Progress) bool {
		panic(boom{42})
	})
	func() {
		defer func() {
			if v := recover(); v != (boom{42}) {
				t.Errorf("recovered %v, want the progress function's panic", v)
			}
		}()
		c.RootFS(context.Background(), img, dst, progress)
		t.Error("RootFS returned instead of panicking")
	}()
	checkCleanedUp(t, "RootFS stopped by a panic", dst)
	files, err := c.RootFS(context.Background(), img, dst)
	if err != nil {
		t.Fatalf("RootFS after a panic: %v", err)
	}
	checkLayerFiles(t, dst, files)
}

// Blocking calls and Closes made from a progress function fail at once.
func TestProgressReentry(t *testing.T) {
	c := openCache(t, ocicache.Options{})
	img := fetch(t, c, gzipRef)
	other := fetch(t, c, gzipRef)
	var errs []error
	progress := ocicache.WithProgress(func(ocicache.Progress) bool {
		if errs != nil {
			return true
		}
		r, err := c.FetchLayer(context.Background(), other, 0)
		if err == nil {
			r.Close()
		}
		errs = []error{
			second(c.Resolve(context.Background(), gzipRef)),
			second(c.FetchImage(context.Background(), gzipRef, "")),
			second(c.ExtractLayer(context.Background(), other, t.TempDir(), 0)),
			err,
			c.Close(),
			img.Close(),
			other.Close(),
		}
		return true
	})
	files, err := c.RootFS(context.Background(), img, t.TempDir(), progress)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	if len(errs) == 0 {
		t.Fatal("no progress reports")
	}
	for i, err := range errs {
		if !errors.Is(err, ocicache.ErrInvalidArgument) || !strings.Contains(err.Error(), "progress function") {
			t.Errorf("call %d from a progress function: %v, want ErrInvalidArgument", i, err)
		}
	}
	// Nothing was closed: both handles still work.
	if _, err := c.ExtractLayer(context.Background(), other, t.TempDir(), 0); err != nil {
		t.Errorf("after the refused calls: %v", err)
	}
}
