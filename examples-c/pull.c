/*
 * pull: the smallest useful oci-cache program, for runtime authors to copy.
 *
 *   pull REFERENCE DST [STORE]
 *
 * Fetches REFERENCE for this host's platform, makes sure every layer is in
 * DST/sha256/<diff_id> as an uncompressed tar, and prints one line per
 * layer, bottom first: its diff_id and the size of its tar. With STORE, the
 * image is also kept in (and resolved from) the OCI image layout there.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "oci_cache.h"

/* Prints a failed call's error and frees it. */
static int fail(const char *what, oci_status status, oci_error *err) {
    fprintf(stderr, "pull: %s failed (%d): %s\n", what, (int)status,
            err ? oci_error_message(err) : "(no detail)");
    oci_error_free(err);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s REFERENCE DST [STORE]\n", argv[0]);
        return 2;
    }
    const char *reference = argv[1], *dst = argv[2], *store = argc > 3 ? argv[3] : NULL;

    oci_cache_options *options = NULL;
    oci_cache *cache = NULL;
    oci_image *image = NULL;
    oci_error *err = NULL;
    oci_status status;

    if ((status = oci_cache_options_new(&options)) != OCI_OK)
        return fail("oci_cache_options_new", status, NULL);
    if (store && (status = oci_cache_options_set_store(options, store)) != OCI_OK)
        return fail("oci_cache_options_set_store", status, NULL);
    status = oci_cache_new(options, &cache, &err);
    oci_cache_options_free(options);
    if (status != OCI_OK)
        return fail("oci_cache_new", status, err);

    status = oci_fetch_image(cache, reference, NULL, NULL, &image, &err);
    if (status != OCI_OK) {
        oci_cache_free(cache);
        return fail("oci_fetch_image", status, err);
    }

    size_t count = oci_image_layer_count(image);
    int *fds = calloc(count ? count : 1, sizeof *fds);
    if (!fds) {
        perror("pull: calloc");
        return 1;
    }
    status = oci_rootfs(cache, image, dst, NULL, fds, count, &err);
    if (status != OCI_OK) {
        free(fds);
        oci_image_free(image);
        oci_cache_free(cache);
        return fail("oci_rootfs", status, err);
    }

    /* The fds are ours: read-only, close-on-exec, valid after the frees. */
    for (size_t i = 0; i < count; i++) {
        struct stat st;
        if (fstat(fds[i], &st) != 0) {
            perror("pull: fstat");
            return 1;
        }
        printf("%s %lld\n", oci_image_layer_diff_id(image, i), (long long)st.st_size);
        close(fds[i]);
    }
    free(fds);
    oci_image_free(image);
    oci_cache_free(cache);
    return 0;
}
