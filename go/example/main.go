// This file owns the Go example, the counterpart of examples-c/pull.c: the
// smallest useful program for runtime authors to copy.
//
//	go run ./example REFERENCE DST [STORE]
//
// It fetches REFERENCE for this host's platform, makes sure every layer is
// in DST/sha256/<diff_id> as an uncompressed tar, and prints one line per
// layer, bottom first: its diff_id and the size of its tar. With STORE, the
// image is also kept in (and resolved from) the OCI image layout there.
// Ctrl-C cancels the pull.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"oci-cache/go/ocicache"
)

func main() {
	if len(os.Args) < 3 || len(os.Args) > 4 {
		fmt.Fprintf(os.Stderr, "usage: %s REFERENCE DST [STORE]\n", os.Args[0])
		os.Exit(2)
	}
	if err := pull(os.Args[1], os.Args[2], os.Args[3:]...); err != nil {
		fmt.Fprintln(os.Stderr, "pull:", err)
		os.Exit(1)
	}
}

func pull(ref, dst string, store ...string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	var opts ocicache.Options
	if len(store) > 0 {
		opts.Store = store[0]
	}
	cache, err := ocicache.Open(opts)
	if err != nil {
		return err
	}
	defer cache.Close()

	img, err := cache.FetchImage(ctx, ref, "")
	if err != nil {
		return err
	}
	defer img.Close()

	files, err := cache.RootFS(ctx, dst, img)
	if err != nil {
		return err
	}
	// The files are ours: read-only, close-on-exec, valid after the Closes.
	for i, f := range files {
		info, err := f.Stat()
		f.Close()
		if err != nil {
			return err
		}
		fmt.Println(img.Layers[i].DiffID, info.Size())
	}
	return nil
}
