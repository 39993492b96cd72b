/*
 * oci-cat: prints one file of an image, read through the image view
 * without unpacking the image.
 *
 *   oci-cat REFERENCE PATH DST
 *
 * Fetches REFERENCE for this host's platform, keeps its layer tars (and
 * their indexes) in DST, which must exist and is reused by later runs, and
 * writes the bytes of PATH ("/etc/os-release"; symlinks are followed inside
 * the image) to stdout.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "oci_cache.h"

/* Prints a failed call's error and frees it. */
static int fail(const char *what, oci_status status, oci_error *err) {
    fprintf(stderr, "oci-cat: %s failed (%d): %s\n", what, (int)status,
            err ? oci_error_message(err) : "(no detail)");
    oci_error_free(err);
    return 1;
}

/* Copies `size` bytes at `offset` of `fd` to stdout. The view's fds share
 * their file offset, so only positional reads are used. */
static int copy_out(int fd, uint64_t offset, uint64_t size) {
    char buf[1 << 16];
    while (size > 0) {
        size_t want = size < sizeof buf ? (size_t)size : sizeof buf;
        ssize_t n = pread(fd, buf, want, (off_t)offset);
        if (n <= 0) {
            perror("oci-cat: pread");
            return 1;
        }
        if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n) {
            perror("oci-cat: writing stdout");
            return 1;
        }
        offset += (uint64_t)n;
        size -= (uint64_t)n;
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s REFERENCE PATH DST\n", argv[0]);
        return 2;
    }
    const char *reference = argv[1], *path = argv[2], *dst = argv[3];

    oci_cache *cache = NULL;
    oci_image *image = NULL;
    oci_view *view = NULL;
    oci_error *err = NULL;
    oci_status status;

    if ((status = oci_cache_new(NULL, &cache, &err)) != OCI_OK)
        return fail("oci_cache_new", status, err);
    status = oci_fetch_image(cache, reference, NULL, NULL, &image, &err);
    if (status == OCI_OK)
        status = oci_view_open(cache, image, dst, NULL, &view, &err);
    /* The view holds its own fds of the layer tars: it needs neither. */
    oci_image_free(image);
    oci_cache_free(cache);
    if (status != OCI_OK)
        return fail(image ? "oci_view_open" : "oci_fetch_image", status, err);

    int fd = -1;
    uint64_t offset = 0, size = 0;
    status = oci_view_open_file(view, path, &fd, &offset, &size, &err);
    oci_view_free(view);
    if (status != OCI_OK)
        return fail("oci_view_open_file", status, err);
    int failed = copy_out(fd, offset, size);
    close(fd);
    return failed;
}
