// This file owns the default way the library is found: the header and the
// static library of the source tree this package lives in, so nothing has
// to be installed and test binaries need no LD_LIBRARY_PATH.

//go:build !ocicache_pkgconfig

package ocicache

// The extra libraries are what rustc reports for the staticlib
// (`--print native-static-libs`), as in the Makefile's STATIC_LIBS.

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: ${SRCDIR}/../../target/release/liboci_cache.a -lssl -lcrypto -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
*/
import "C"
