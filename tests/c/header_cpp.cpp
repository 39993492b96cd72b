// header_cpp.cpp: include/oci_cache.h as a C++ program sees it. Compiled
// with -fsyntax-only by tests/c_api.rs; it owns only these compile-time
// checks, nothing runs.
#include "oci_cache.h"

#include <cstdint>
#include <type_traits>

// The status is fixed width whatever the compiler does with enums.
static_assert(std::is_same<oci_status, std::int32_t>::value, "oci_status is int32_t");

// The codes are usable as constants (switch labels, templates) in C++ too.
static_assert(OCI_OK == 0, "OCI_OK");
static_assert(OCI_E_INVALID_ARGUMENT == -1 && OCI_E_INTERNAL == -13, "codes are stable");
static_assert(OCI_CACHE_VERSION_MAJOR >= 0 && OCI_CACHE_VERSION_MINOR >= 0 &&
                  OCI_CACHE_VERSION_PATCH >= 0,
              "version macros");

// The declarations have C linkage and the documented signatures.
static_assert(std::is_same<decltype(&oci_version), const char *(*)()>::value, "oci_version");
static_assert(std::is_same<decltype(&oci_rootfs),
                           oci_status (*)(const oci_cache *, const oci_image *, const char *,
                                          const oci_call_options *, int *, size_t,
                                          oci_error **)>::value,
              "oci_rootfs");

// Calls safe from many threads take `const oci_cache *`; a caller holding
// the `oci_cache *` that oci_cache_new gave still passes it unchanged.
oci_status rootfs_from_a_mutable_cache(oci_cache *cache, const oci_image *image, int *fds,
                                       size_t cap) {
    return oci_rootfs(cache, image, "/dst", NULL, fds, cap, NULL);
}

// Handles are opaque: a C++ caller can hold pointers and nothing more.
void uses_only_pointers(oci_cache *cache, oci_image *image, oci_error *err) {
    oci_image_free(image);
    oci_cache_free(cache);
    oci_error_free(err);
}
