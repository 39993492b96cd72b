/*
 * oci-cat: prints one file of an image, read through the image view
 * without unpacking the image.
 *
 *   oci-cat REFERENCE PATH [DST]
 *
 * Fetches REFERENCE for this host's platform and writes the bytes of PATH
 * ("/etc/os-release"; symlinks are followed inside the image) to stdout.
 * The layer tars and their indexes go to DST, which must exist and is
 * reused by later runs; without DST they go to a temporary directory (in
 * $TMPDIR, else /tmp) that is deleted as soon as the view is open, since the view reads through
 * fds of its own.
 */
#define _XOPEN_SOURCE 700

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Deletes the temporary DST and everything in it, never following links. */
static void remove_tree(const char *dir) {
    if (nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "oci-cat: could not delete %s\n", dir);
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: %s REFERENCE PATH [DST]\n", argv[0]);
        return 2;
    }
    const char *reference = argv[1], *path = argv[2];
    char temporary[4096];
    const char *tmpdir = getenv("TMPDIR");
    snprintf(temporary, sizeof temporary, "%s/oci-cat-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    const char *dst = argc == 4 ? argv[3] : mkdtemp(temporary);
    if (dst == NULL) {
        perror("oci-cat: mkdtemp");
        return 1;
    }

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
    /* The view holds its own fds of the layer tars: it needs neither, nor
     * the files under a temporary DST. */
    oci_image_free(image);
    oci_cache_free(cache);
    if (dst == temporary)
        remove_tree(temporary);
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
