/*
 * pull_bench: the oci-cache side of bench/run, through the C API.
 *
 *   pull_bench cold REFERENCE STORE DST
 *       A cold pull: opens a cache on STORE (an empty directory's path),
 *       oci_fetch_image, oci_rootfs into DST (which must exist), closes the
 *       fds; prints the wall time of all that in seconds.
 *   pull_bench warm REFERENCE STORE DST CALLS
 *       The same pull, then CALLS oci_rootfs calls on the same image and
 *       DST, each timed alone (closing its fds is not timed); prints the
 *       median and p99 time per call in microseconds.
 *   pull_bench layer REFERENCE STORE DST INDEX
 *       Layer INDEX (from 0) alone: oci_fetch_image (not timed), then a
 *       cold oci_extract_layer of that layer into DST; prints its wall
 *       time in seconds. The critical path of a cold pull is its largest
 *       layer: this shows how fast the single-layer pipeline is.
 *   pull_bench first REFERENCE STORE
 *       The first call of a new cache: oci_cache_new on STORE (an empty
 *       directory's path), then oci_fetch_image; prints the wall time of
 *       both in milliseconds. Run it in a fresh process: what it measures
 *       is what the process has not set up yet (runtime, HTTP client,
 *       the store's layout).
 *   pull_bench resolve REFERENCE STORE
 *       In a fresh process, oci_cache_new on STORE, where REFERENCE is
 *       recorded (e.g. by `first`), then oci_cache_resolve, which the
 *       store answers without the network; prints the wall time of both
 *       in milliseconds.
 *
 * BENCH_LAYERS, if set, is the cache's max_concurrent_layers (else the
 * library's default), for measuring that default.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "oci_cache.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Exits with the error of a failed call. `err` is where the call stored
 * it, read only after the call: the order in which a function's arguments
 * are evaluated is unspecified. */
static void check(const char *what, oci_status status, oci_error *const *err) {
    if (status == OCI_OK)
        return;
    fprintf(stderr, "pull_bench: %s failed (%d): %s\n", what, (int)status,
            err && *err ? oci_error_message(*err) : "(no detail)");
    exit(1);
}

static void rootfs(oci_cache *cache, oci_image *image, const char *dst, int *fds, size_t count) {
    oci_error *err = NULL;
    check("oci_rootfs", oci_rootfs(cache, image, dst, NULL, fds, count, &err), &err);
}

static void close_all(const int *fds, size_t count) {
    for (size_t i = 0; i < count; i++)
        close(fds[i]);
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Opens a cache on `store` with the defaults (and BENCH_LAYERS). */
static oci_cache *open_cache(const char *store) {
    oci_cache_options *options = NULL;
    oci_cache *cache = NULL;
    oci_error *err = NULL;
    check("oci_cache_options_new", oci_cache_options_new(&options), NULL);
    check("oci_cache_options_set_store", oci_cache_options_set_store(options, store), NULL);
    if (getenv("BENCH_LAYERS"))
        check("oci_cache_options_set_max_concurrent_layers",
              oci_cache_options_set_max_concurrent_layers(options, strtoul(getenv("BENCH_LAYERS"), NULL, 10)),
              NULL);
    check("oci_cache_new", oci_cache_new(options, &cache, &err), &err);
    oci_cache_options_free(options);
    return cache;
}

/* `first` and `resolve`: the first call of a new cache, in milliseconds. */
static int first_call(int resolve, const char *reference, const char *store) {
    oci_image *image = NULL;
    oci_error *err = NULL;
    char digest[136];
    double start = now();
    oci_cache *cache = open_cache(store);
    if (resolve)
        check("oci_cache_resolve", oci_cache_resolve(cache, reference, NULL, digest, sizeof digest, &err), &err);
    else
        check("oci_fetch_image", oci_fetch_image(cache, reference, NULL, NULL, &image, &err), &err);
    printf("%.2f\n", (now() - start) * 1e3);
    oci_image_free(image);
    oci_cache_free(cache);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && (strcmp(argv[1], "first") == 0 || strcmp(argv[1], "resolve") == 0))
        return first_call(strcmp(argv[1], "resolve") == 0, argv[2], argv[3]);
    int warm = argc == 6 && strcmp(argv[1], "warm") == 0;
    int layer = argc == 6 && strcmp(argv[1], "layer") == 0;
    if (!warm && !layer && !(argc == 5 && strcmp(argv[1], "cold") == 0)) {
        fprintf(stderr,
                "usage: %s cold REFERENCE STORE DST\n       %s warm REFERENCE STORE DST CALLS\n"
                "       %s layer REFERENCE STORE DST INDEX\n       %s first REFERENCE STORE\n"
                "       %s resolve REFERENCE STORE\n",
                argv[0], argv[0], argv[0], argv[0], argv[0]);
        return 2;
    }
    const char *reference = argv[2], *store = argv[3], *dst = argv[4];

    oci_image *image = NULL;
    oci_error *err = NULL;

    double start = now();
    oci_cache *cache = open_cache(store);
    check("oci_fetch_image", oci_fetch_image(cache, reference, NULL, NULL, &image, &err), &err);
    if (layer) {
        size_t index = strtoul(argv[5], NULL, 10);
        int fd = -1;
        double t = now();
        check("oci_extract_layer", oci_extract_layer(cache, image, index, dst, NULL, &fd, &err), &err);
        printf("%.3f\n", now() - t);
        close(fd);
        oci_image_free(image);
        oci_cache_free(cache);
        return 0;
    }
    size_t count = oci_image_layer_count(image);
    int *fds = calloc(count, sizeof *fds);
    if (!fds) {
        perror("pull_bench: calloc");
        return 1;
    }
    rootfs(cache, image, dst, fds, count);
    close_all(fds, count);
    double cold = now() - start;

    if (!warm) {
        printf("%.3f\n", cold);
    } else {
        size_t calls = strtoul(argv[5], NULL, 10);
        double *us = calloc(calls ? calls : 1, sizeof *us);
        if (!calls || !us) {
            fprintf(stderr, "pull_bench: CALLS must be a positive number\n");
            return 2;
        }
        for (size_t i = 0; i < calls; i++) {
            double t = now();
            rootfs(cache, image, dst, fds, count);
            us[i] = (now() - t) * 1e6;
            close_all(fds, count);
        }
        qsort(us, calls, sizeof *us, by_value);
        /* Nearest rank: the p99 is the ceil(0.99 * calls)-th fastest call. */
        printf("%.1f %.1f\n", us[calls / 2], us[(99 * calls + 99) / 100 - 1]);
        free(us);
    }
    free(fds);
    oci_image_free(image);
    oci_cache_free(cache);
    return 0;
}
