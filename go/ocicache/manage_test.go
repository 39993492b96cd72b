// This file owns the tests of cache management (List, Remove, Prune,
// DiskUsage, Verify) on a store holding the gzip and zstd images, whose
// layer tars are the same: every expected number is worked out from the
// files on disk.

package ocicache_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"oci-cache/go/ocicache"
)

const ociManifestType = "application/vnd.oci.image.manifest.v1+json"

// dirUsage is the number and bytes of the regular files under dir.
func dirUsage(t *testing.T, dir string) (files int, bytes uint64) {
	t.Helper()
	for _, path := range regularFiles(t, dir) {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		files++
		bytes += uint64(info.Size())
	}
	return files, bytes
}

// storeBlob is where store keeps blob digest.
func storeBlob(store, digest string) string {
	alg, hex, _ := strings.Cut(digest, ":")
	return filepath.Join(store, "blobs", alg, hex)
}

// reachedBlobs is the digests of the blobs img's manifest reaches.
func reachedBlobs(img *ocicache.Image) []string {
	config := sha256.Sum256(img.Config)
	blobs := []string{img.Digest, "sha256:" + hex.EncodeToString(config[:])}
	for _, l := range img.Layers {
		blobs = append(blobs, l.Digest)
	}
	return blobs
}

// blobBytes is the size of the store's files of digests, each counted once.
func blobBytes(t *testing.T, store string, digests []string) uint64 {
	t.Helper()
	seen := map[string]bool{}
	var total uint64
	for _, d := range digests {
		if seen[d] {
			continue
		}
		seen[d] = true
		info, err := os.Stat(storeBlob(store, d))
		if err != nil {
			t.Fatalf("blob %s of the store: %v", d, err)
		}
		total += uint64(info.Size())
	}
	return total
}

func rootFS(t *testing.T, c *ocicache.Cache, dst string, img *ocicache.Image) {
	t.Helper()
	files, err := c.RootFS(context.Background(), img, dst)
	if err != nil {
		t.Fatalf("RootFS(%s): %v", img.Reference, err)
	}
	checkLayerFiles(t, dst, files)
}

func TestCacheManagement(t *testing.T) {
	ctx := context.Background()
	store, dst := t.TempDir(), t.TempDir()
	c := openCache(t, ocicache.Options{Store: store})
	gz, zs := fetch(t, c, gzipRef), fetch(t, c, zstdRef)
	rootFS(t, c, dst, gz)
	// Not RootFS: it would find zstd's tars (gzip's) in dst and fetch
	// nothing, leaving zstd's layer blobs out of the store.
	files, err := c.ExtractLayers(ctx, zs, dst)
	if err != nil {
		t.Fatalf("ExtractLayers(%s): %v", zstdRef, err)
	}
	checkLayerFiles(t, dst, files)

	gzBlobs, zsBlobs := reachedBlobs(gz), reachedBlobs(zs)
	storeFiles, storeBytes := dirUsage(t, filepath.Join(store, "blobs"))
	// The layer tars alone: their indexes (dst/tar-index) are counted apart.
	dstFiles, dstBytes := dirUsage(t, filepath.Join(dst, "sha256"))
	// umoci's tars end inside their last entry (no padding, no end
	// blocks), which the index parser refuses as truncated: only the tars
	// that parse get an index as they are written. The counts are checked
	// against the files; view_test.go checks them on tars that all parse.
	indexFiles, indexBytes := dirUsage(t, filepath.Join(dst, "tar-index"))
	if indexFiles == 0 || indexBytes == 0 {
		t.Fatalf("dst/tar-index holds %d files of %d bytes, want an index of a layer tar at least", indexFiles, indexBytes)
	}
	all := append(append([]string{}, gzBlobs...), zsBlobs...)
	if want := blobBytes(t, store, all); storeBytes != want {
		t.Fatalf("store blobs take %d bytes, want the %d the two images reach", storeBytes, want)
	}
	distinct := map[string]bool{}
	for _, d := range all {
		distinct[d] = true
	}
	if storeFiles != len(distinct) {
		t.Fatalf("store holds %d blobs, want the %d distinct ones the two images reach", storeFiles, len(distinct))
	}
	var tarBytes uint64
	for _, n := range wantTarSizes {
		tarBytes += uint64(n)
	}
	if dstFiles != len(wantDiffIDs) || dstBytes != tarBytes {
		t.Fatalf("dst holds %d files of %d bytes, want the %d layer tars of %d bytes", dstFiles, dstBytes, len(wantDiffIDs), tarBytes)
	}

	// List: both images, each with the bytes of the blobs it reaches.
	images, err := c.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	sort.Slice(images, func(i, j int) bool { return images[i].Reference < images[j].Reference })
	want := []ocicache.StoredImage{
		{Reference: gzipRef, Digest: gzipDigest, MediaType: ociManifestType, Size: int64(blobBytes(t, store, gzBlobs))},
		{Reference: zstdRef, Digest: zstdDigest, MediaType: ociManifestType, Size: int64(blobBytes(t, store, zsBlobs))},
	}
	sort.Slice(want, func(i, j int) bool { return want[i].Reference < want[j].Reference })
	if !reflect.DeepEqual(images, want) {
		t.Errorf("List = %+v\nwant %+v", images, want)
	}
	for _, img := range images {
		if img.Size <= 0 {
			t.Errorf("List: %s has size %d", img.Reference, img.Size)
		}
	}

	// DiskUsage, with and without dst.
	// The counts are those of the walk above, pinned to the blobs the
	// images reach and the known tars.
	wantDU := ocicache.DiskUsage{
		StoreBytes: storeBytes, StoreFiles: uint64(storeFiles),
		DstBytes: dstBytes, DstFiles: uint64(dstFiles),
		IndexBytes: indexBytes, IndexFiles: uint64(indexFiles),
	}
	if du, err := c.DiskUsage(ctx, dst); err != nil || du != wantDU {
		t.Errorf("DiskUsage(dst) = %+v, %v; want %+v", du, err, wantDU)
	}
	wantDU.DstBytes, wantDU.DstFiles, wantDU.IndexBytes, wantDU.IndexFiles = 0, 0, 0, 0
	if du, err := c.DiskUsage(ctx, ""); err != nil || du != wantDU {
		t.Errorf(`DiskUsage("") = %+v, %v; want %+v`, du, err, wantDU)
	}

	// Remove: once, then ErrNotFound; the blobs stay until a prune.
	if err := c.Remove(ctx, zstdRef); err != nil {
		t.Fatalf("Remove(%s): %v", zstdRef, err)
	}
	if err := c.Remove(ctx, zstdRef); !errors.Is(err, ocicache.ErrNotFound) || !strings.Contains(err.Error(), "go/app:zstd") {
		t.Errorf("Remove(%s) again: %v, want ErrNotFound naming it", zstdRef, err)
	}
	if images, err := c.List(ctx); err != nil || len(images) != 1 || images[0].Reference != gzipRef {
		t.Errorf("List after Remove = %+v, %v; want only %s", images, err, gzipRef)
	}
	if files, bytes := dirUsage(t, filepath.Join(store, "blobs")); files != storeFiles || bytes != storeBytes {
		t.Errorf("Remove changed the store's blobs: %d files of %d bytes, was %d of %d", files, bytes, storeFiles, storeBytes)
	}

	// Prune: exactly the blobs only zstd reached; the tars are gzip's too.
	inGzip := map[string]bool{}
	for _, d := range gzBlobs {
		inGzip[d] = true
	}
	var zstdOnly []string
	for _, d := range zsBlobs {
		if !inGzip[d] {
			zstdOnly = append(zstdOnly, d)
		}
	}
	wantPruned := ocicache.Pruned{Files: uint64(len(zstdOnly)), Bytes: blobBytes(t, store, zstdOnly)}
	pruned, err := c.Prune(ctx, dst)
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	if pruned != wantPruned || pruned.Files < 4 {
		t.Errorf("Prune = %+v, want %+v (zstd's manifest and layer blobs at least)", pruned, wantPruned)
	}
	for _, d := range zstdOnly {
		if _, err := os.Stat(storeBlob(store, d)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("blob %s only zstd reached is still there (%v)", d, err)
		}
	}
	for _, d := range gzBlobs {
		if _, err := os.Stat(storeBlob(store, d)); err != nil {
			t.Errorf("blob %s of gzip: %v", d, err)
		}
	}
	afterFiles, afterBytes := dirUsage(t, filepath.Join(store, "blobs"))
	if uint64(storeFiles-afterFiles) != pruned.Files || storeBytes-afterBytes != pruned.Bytes {
		t.Errorf("the store lost %d files of %d bytes, Prune says %+v", storeFiles-afterFiles, storeBytes-afterBytes, pruned)
	}
	if files, bytes := dirUsage(t, filepath.Join(dst, "sha256")); files != dstFiles || bytes != dstBytes {
		t.Errorf("Prune changed dst: %d files of %d bytes, was %d of %d", files, bytes, dstFiles, dstBytes)
	}
	if pruned, err := c.Prune(ctx, dst); err != nil || pruned != (ocicache.Pruned{}) {
		t.Errorf("second Prune = %+v, %v; want nothing removed", pruned, err)
	}

	// Verify: everything intact, then a layer tar overwritten.
	checkVerify := func(what, dst string, removeCorrupt bool, want ocicache.Verified) {
		t.Helper()
		if v, err := c.Verify(ctx, dst, removeCorrupt); err != nil || !reflect.DeepEqual(v, want) {
			t.Errorf("%s: Verify = %+v, %v; want %+v", what, v, err, want)
		}
	}
	intact := ocicache.Verified{Checked: uint64(afterFiles + dstFiles), IndexesChecked: uint64(indexFiles)}
	checkVerify("intact", dst, false, intact)
	tar := filepath.Join(dst, "sha256", strings.TrimPrefix(wantDiffIDs[0], "sha256:"))
	if err := os.Chmod(tar, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tar, []byte("not the layer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	realDst, err := filepath.EvalSymlinks(dst)
	if err != nil {
		t.Fatal(err)
	}
	badTar := intact
	badTar.Corrupt = []string{filepath.Join(realDst, "sha256", strings.TrimPrefix(wantDiffIDs[0], "sha256:"))}
	checkVerify("a corrupt tar", dst, false, badTar)
	if _, err := os.Stat(tar); err != nil {
		t.Errorf("Verify without removeCorrupt removed %s: %v", tar, err)
	}
	checkVerify("a corrupt tar, removeCorrupt", dst, true, badTar)
	if _, err := os.Stat(tar); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Verify(removeCorrupt) left %s (%v)", tar, err)
	}
	// RootFS restores it, byte for byte.
	rootFS(t, c, dst, gz)
	checkVerify("after RootFS", dst, false, intact)
	checkVerify(`dst ""`, "", false, ocicache.Verified{Checked: uint64(afterFiles)})
}

func TestCacheManagementErrors(t *testing.T) {
	ctx := context.Background()
	dst := t.TempDir()
	missing := filepath.Join(dst, "no-such-dir")

	bare := openCache(t, ocicache.Options{WorkerThreads: 1})
	for name, err := range map[string]error{
		"List":      second(bare.List(ctx)),
		"Remove":    bare.Remove(ctx, gzipRef),
		"Prune":     second(bare.Prune(ctx, dst)),
		"DiskUsage": second(bare.DiskUsage(ctx, "")),
		"Verify":    second(bare.Verify(ctx, "", false)),
	} {
		if !errors.Is(err, ocicache.ErrInvalidArgument) || !strings.Contains(err.Error(), "store") {
			t.Errorf("%s without a store: %v, want ErrInvalidArgument naming the store", name, err)
		}
	}

	c := openCache(t, ocicache.Options{Store: t.TempDir()})
	if images, err := c.List(ctx); err != nil || len(images) != 0 {
		t.Errorf("List of an empty store = %+v, %v; want none", images, err)
	}
	if err := c.Remove(ctx, gzipRef); !errors.Is(err, ocicache.ErrNotFound) {
		t.Errorf("Remove of an unrecorded reference: %v, want ErrNotFound", err)
	}
	if err := c.Remove(ctx, "Not A Reference!"); !errors.Is(err, ocicache.ErrInvalidArgument) {
		t.Errorf("Remove of a malformed reference: %v, want ErrInvalidArgument", err)
	}
	if err := c.Remove(ctx, "a\x00b"); !errors.Is(err, ocicache.ErrInvalidArgument) {
		t.Errorf("Remove of a reference with a NUL: %v, want ErrInvalidArgument", err)
	}
	if _, err := c.Prune(ctx, missing); !errors.Is(err, ocicache.ErrIO) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Prune of a missing dst: %v, want ErrIO naming it", err)
	}
	if _, err := c.DiskUsage(ctx, missing); !errors.Is(err, ocicache.ErrIO) {
		t.Errorf("DiskUsage of a missing dst: %v, want ErrIO", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Verify(canceled, dst, false); err != nil {
		assertCanceled(t, err, context.Canceled)
	} else {
		t.Errorf("Verify with a canceled context succeeded")
	}

	c.Close()
	if _, err := c.List(ctx); !errors.Is(err, ocicache.ErrClosed) {
		t.Errorf("List after Close: %v, want ErrClosed", err)
	}
}

// TestStoreLockWait holds the store's lock as another process would: Prune,
// Remove and a FetchImage that must record the image end when their
// context's deadline passes or it is canceled, within a second and changing
// nothing; List, which needs no lock, goes on; once the lock is free, the
// same calls succeed.
func TestStoreLockWait(t *testing.T) {
	store := t.TempDir()
	c := openCache(t, ocicache.Options{Store: store})
	fetch(t, c, gzipRef)
	fetch(t, c, zstdRef)
	// Something to prune: a prune with nothing to delete needs no lock.
	if err := c.Remove(context.Background(), zstdRef); err != nil {
		t.Fatalf("Remove(%s): %v", zstdRef, err)
	}
	lock, err := os.OpenFile(filepath.Join(store, ".oci-cache.lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("taking the store's lock: %v", err)
	}

	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Prune", func(ctx context.Context) error { _, err := c.Prune(ctx, ""); return err }},
		{"Remove", func(ctx context.Context) error { return c.Remove(ctx, gzipRef) }},
		{"FetchImage", func(ctx context.Context) error { _, err := c.FetchImage(ctx, zstdRef, ""); return err }},
	}
	for _, tc := range calls {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		err := tc.call(ctx)
		elapsed := time.Since(start)
		cancel()
		if elapsed < 300*time.Millisecond || elapsed > time.Second {
			t.Errorf("%s with a 300ms deadline took %v", tc.name, elapsed)
		}
		assertCanceled(t, err, context.DeadlineExceeded)
		if !errors.Is(err, ocicache.ErrTimeout) {
			t.Errorf("%s with a 300ms deadline: %v, want ErrTimeout", tc.name, err)
		}

		ctx, cancel = context.WithCancel(context.Background())
		timer := time.AfterFunc(200*time.Millisecond, cancel)
		start = time.Now()
		err = tc.call(ctx)
		elapsed = time.Since(start)
		timer.Stop()
		cancel()
		if elapsed < 200*time.Millisecond || elapsed > time.Second {
			t.Errorf("%s canceled after 200ms took %v", tc.name, elapsed)
		}
		assertCanceled(t, err, context.Canceled)
	}
	if images, err := c.List(context.Background()); err != nil || len(images) != 1 || images[0].Reference != gzipRef {
		t.Errorf("List with the lock held = %+v, %v; want only %s", images, err, gzipRef)
	}

	lock.Close()
	ctx := context.Background()
	if _, err := c.FetchImage(ctx, zstdRef, ""); err != nil {
		t.Errorf("FetchImage(%s) once the lock is free: %v", zstdRef, err)
	}
	if err := c.Remove(ctx, gzipRef); err != nil {
		t.Errorf("Remove(%s) once the lock is free: %v", gzipRef, err)
	}
	// gzip's manifest alone: its config is zstd's too (same tars), and
	// fetching stores no layer blob.
	info, err := os.Stat(storeBlob(store, gzipDigest))
	if err != nil {
		t.Fatal(err)
	}
	want := ocicache.Pruned{Files: 1, Bytes: uint64(info.Size())}
	if pruned, err := c.Prune(ctx, ""); err != nil || pruned != want {
		t.Errorf("Prune once the lock is free = %+v, %v; want %+v", pruned, err, want)
	}
}
