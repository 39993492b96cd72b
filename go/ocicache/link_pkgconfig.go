// This file owns the other way the library is found, chosen with
// `-tags ocicache_pkgconfig`: an installed copy described by oci-cache.pc,
// for programs built outside this source tree.

//go:build ocicache_pkgconfig

package ocicache

/*
#cgo pkg-config: oci-cache
*/
import "C"
