// This file owns the Go example, the counterpart of examples-c/pull.c: the
// smallest useful program for runtime authors to copy.
//
//	go run ./example [-progress] REFERENCE DST [STORE]
//
// It fetches REFERENCE for this host's platform, makes sure every layer is
// in DST/sha256/<diff_id> as an uncompressed tar, and prints one line per
// layer, bottom first: its diff_id and the size of its tar. With STORE, the
// image is also kept in (and resolved from) the OCI image layout there.
// With -progress, each layer fetched reports on stderr as it completes.
// Ctrl-C cancels the pull.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"oci-cache/go/ocicache"
)

func main() {
	progress := flag.Bool("progress", false, "report each layer fetched on stderr")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [-progress] REFERENCE DST [STORE]\n", os.Args[0])
	}
	flag.Parse()
	if flag.NArg() < 2 || flag.NArg() > 3 {
		flag.Usage()
		os.Exit(2)
	}
	if err := pull(*progress, flag.Arg(0), flag.Arg(1), flag.Args()[2:]...); err != nil {
		fmt.Fprintln(os.Stderr, "pull:", err)
		os.Exit(1)
	}
}

func pull(progress bool, ref, dst string, store ...string) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var callOpts []ocicache.CallOption
	if progress {
		// Runs on this goroutine during RootFS; it must not call the cache.
		callOpts = append(callOpts, ocicache.WithProgress(func(p ocicache.Progress) bool {
			if p.WrittenTotal >= 0 { // a layer's last report
				fmt.Fprintf(os.Stderr, "layer %d: %d bytes downloaded, %d written\n", p.Layer, p.Downloaded, p.Written)
			}
			return true
		}))
	}

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

	files, err := cache.RootFS(ctx, img, dst, callOpts...)
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
