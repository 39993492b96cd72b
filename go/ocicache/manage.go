// This file owns cache management: List and Remove over the images a
// store records, and Prune, DiskUsage and Verify over the store and a
// directory of layer tars with their indexes. Each needs a Cache opened
// with Options.Store.

package ocicache

/*
#include <stdlib.h>
#include "oci_cache.h"
*/
import "C"

import (
	"context"
	"unsafe"
)

// StoredImage is one image a store records in its index.json.
type StoredImage struct {
	// Reference is the normalized reference it is recorded under, e.g.
	// "docker.io/library/alpine:3.20".
	Reference string
	// Digest is the digest of its manifest, or of its index for a
	// multi-platform image.
	Digest string
	// MediaType is the media type of that manifest or index.
	MediaType string
	// Size is the bytes of the store's blobs it reaches: manifests,
	// configs and the layer blobs the store holds. A blob shared by images
	// counts for each.
	Size int64
}

// Pruned is what Prune removed.
type Pruned struct {
	// Files and Bytes count the files removed and their sizes.
	Files, Bytes uint64
}

// DiskUsage is the space the store and a directory of layer tars take,
// and how many files hold it.
type DiskUsage struct {
	// StoreBytes and StoreFiles are the size and number of the store's
	// blobs.
	StoreBytes, StoreFiles uint64
	// DstBytes and DstFiles are the size and number of the layer tars
	// under dst; 0 without one.
	DstBytes, DstFiles uint64
	// IndexBytes and IndexFiles are the size and number of the layer tars'
	// indexes under dst/tar-index, which views read (see View); 0 without
	// a dst.
	IndexBytes, IndexFiles uint64
}

// Verified is what Verify found.
type Verified struct {
	// Checked is the number of files re-hashed: store blobs and layer tars.
	Checked uint64
	// Corrupt are the paths of the files whose content does not hash to
	// their name: under the store's blobs, or under dst with its symlinks
	// resolved.
	Corrupt []string
	// IndexesChecked is the number of layer tar indexes under
	// dst/tar-index re-checked: their checksum, format and diff_id.
	IndexesChecked uint64
	// CorruptIndexes are the paths of the indexes that failed that check,
	// under dst with its symlinks resolved. They are apart from Corrupt as
	// they lose no content: the next View of their layer writes them again
	// from the tar.
	CorruptIndexes []string
}

// List returns the images the store records under a name, in the order of
// its index.json; entries without one (other tools') are skipped. A cache
// without a store fails with ErrInvalidArgument.
func (c *Cache) List(ctx context.Context) ([]StoredImage, error) {
	ptr, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer c.mu.RUnlock()

	var list *C.oci_image_list
	err = c.withCall(ctx, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return C.oci_cache_list(ptr, opts, &list, errOut)
	})
	if err != nil {
		return nil, err
	}
	defer C.oci_image_list_free(list)
	images := make([]StoredImage, int(C.oci_image_list_count(list)))
	for i := range images {
		ci := C.size_t(i)
		images[i] = StoredImage{
			Reference: C.GoString(C.oci_image_list_reference(list, ci)),
			Digest:    C.GoString(C.oci_image_list_digest(list, ci)),
			MediaType: C.GoString(C.oci_image_list_media_type(list, ci)),
			Size:      int64(C.oci_image_list_size(list, ci)),
		}
	}
	return images, nil
}

// Remove drops ref from the store's index.json. Its blobs, and its layer
// tars in any dst, stay until Prune. A reference the store does not record
// fails with ErrNotFound. While another process holds the store's lock it
// waits until ctx is done.
func (c *Cache) Remove(ctx context.Context, ref string) error {
	ptr, err := c.acquire()
	if err != nil {
		return err
	}
	defer c.mu.RUnlock()

	cref, err := cString("reference", ref)
	if err != nil {
		return err
	}
	defer C.free(unsafe.Pointer(cref))
	return c.withCall(ctx, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return C.oci_cache_remove(ptr, cref, opts, errOut)
	})
}

// Prune removes the store's blobs, and the layer tars under dst ("" = the
// store only), that no entry of the store's index.json reaches, and
// temporary files left by writers that died. Every entry is a root, named
// or not (as skopeo writes them), whatever its media type. It is safe while
// other goroutines and processes pull into the same store and dst: what
// they are writing or have just recorded is never removed. It holds the
// store's lock only to delete, and ends between files once ctx is done.
func (c *Cache) Prune(ctx context.Context, dst string) (Pruned, error) {
	ptr, err := c.acquire()
	if err != nil {
		return Pruned{}, err
	}
	defer c.mu.RUnlock()

	cdst, err := optionalDst(dst)
	if err != nil {
		return Pruned{}, err
	}
	defer C.free(unsafe.Pointer(cdst))
	var files, bytes C.uint64_t
	err = c.withCall(ctx, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return C.oci_cache_prune(ptr, cdst, opts, &files, &bytes, errOut)
	})
	if err != nil {
		return Pruned{}, err
	}
	return Pruned{Files: uint64(files), Bytes: uint64(bytes)}, nil
}

// DiskUsage returns the bytes and the number of the store's blobs, of the
// layer tars under dst ("" = none) and of their indexes, counted in one
// walk.
func (c *Cache) DiskUsage(ctx context.Context, dst string) (DiskUsage, error) {
	ptr, err := c.acquire()
	if err != nil {
		return DiskUsage{}, err
	}
	defer c.mu.RUnlock()

	cdst, err := optionalDst(dst)
	if err != nil {
		return DiskUsage{}, err
	}
	defer C.free(unsafe.Pointer(cdst))
	var usage *C.oci_disk_usage
	err = c.withCall(ctx, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return C.oci_cache_disk_usage_report(ptr, cdst, opts, &usage, errOut)
	})
	if err != nil {
		return DiskUsage{}, err
	}
	defer C.oci_disk_usage_free(usage)
	return DiskUsage{
		StoreBytes: uint64(C.oci_disk_usage_store_bytes(usage)),
		StoreFiles: uint64(C.oci_disk_usage_store_files(usage)),
		DstBytes:   uint64(C.oci_disk_usage_dst_bytes(usage)),
		DstFiles:   uint64(C.oci_disk_usage_dst_files(usage)),
		IndexBytes: uint64(C.oci_disk_usage_index_bytes(usage)),
		IndexFiles: uint64(C.oci_disk_usage_index_files(usage)),
	}, nil
}

// Verify re-hashes every store blob, and every layer tar under dst ("" =
// the store only), against its name and reports those that do not match;
// it re-checks the tars' indexes too, reported apart. With removeCorrupt
// it deletes the bad ones, so that the next RootFS fetches them again (and
// the next View rebuilds an index). It ends between chunks of a file once
// ctx is done.
func (c *Cache) Verify(ctx context.Context, dst string, removeCorrupt bool) (Verified, error) {
	ptr, err := c.acquire()
	if err != nil {
		return Verified{}, err
	}
	defer c.mu.RUnlock()

	cdst, err := optionalDst(dst)
	if err != nil {
		return Verified{}, err
	}
	defer C.free(unsafe.Pointer(cdst))
	var report *C.oci_verify_report
	err = c.withCall(ctx, func(opts *C.oci_call_options, errOut **C.oci_error) C.oci_status {
		return C.oci_cache_verify(ptr, cdst, C.bool(removeCorrupt), opts, &report, errOut)
	})
	if err != nil {
		return Verified{}, err
	}
	defer C.oci_verify_report_free(report)
	v := Verified{
		Checked:        uint64(C.oci_verify_report_checked(report)),
		IndexesChecked: uint64(C.oci_verify_report_indexes_checked(report)),
	}
	for i := 0; i < int(C.oci_verify_report_corrupt_count(report)); i++ {
		v.Corrupt = append(v.Corrupt, C.GoString(C.oci_verify_report_corrupt_path(report, C.size_t(i))))
	}
	for i := 0; i < int(C.oci_verify_report_corrupt_index_count(report)); i++ {
		v.CorruptIndexes = append(v.CorruptIndexes, C.GoString(C.oci_verify_report_corrupt_index_path(report, C.size_t(i))))
	}
	return v, nil
}

// optionalDst copies dst to C, "" as NULL (no dst). The caller frees the
// copy; C.free(NULL) does nothing.
func optionalDst(dst string) (*C.char, error) {
	if dst == "" {
		return nil, nil
	}
	return cString("dst", dst)
}
