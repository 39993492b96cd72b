// This file owns the default way the library is found: the header and the
// static library of the source tree this package lives in, so nothing has
// to be installed and test binaries need no LD_LIBRARY_PATH.

//go:build !ocicache_pkgconfig

package ocicache

// The libraries the static library needs besides itself are in
// link_static_libs.go, which `make lib` writes from what rustc reports
// (`--print native-static-libs`), as it writes oci-cache.pc's Libs.private.

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: ${SRCDIR}/../../target/release/liboci_cache.a
*/
import "C"
