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
 *   pull_bench index REFERENCE STORE DST REPS
 *       What the tar index costs, on a pulled image (the pull is not
 *       timed; its tars stay in the page cache). REPS pairs, which of the
 *       two goes first alternating, each with no index files on disk:
 *       oci_view_open rebuilding the indexes (per layer, one read of the
 *       tar that hashes and parses it, then the index built and written
 *       with fsync), and oci_cache_verify re-hashing the tars alone (the
 *       store keeps no layer blobs, so the tars are all it hashes). The
 *       difference is what the index adds to a layer in a pull: the parse
 *       (on the layer's writer thread there), the build, the write.
 *       Prints the medians of the rebuild and of the hashing, then of
 *       their paired differences in wall time and in CPU time (user +
 *       system, every thread), all in milliseconds.
 *   pull_bench view REFERENCE STORE DST CALLS DEEP_PATH
 *       The view of a pulled image (the pull is not timed). VIEW_OPENS
 *       times, in turn: oci_view_open (its oci_rootfs included) +
 *       oci_view_stat of DEEP_PATH (the oci_view_free after it is not
 *       timed), and a full header scan of
 *       every layer tar, the floor of what reading the tars without an
 *       index costs (open each, pread each header, follow PAX and GNU
 *       long-name headers, skip the data, count the entries). Then CALLS
 *       oci_view_stat calls, each timed alone, over every path of the
 *       image (found by walking one view with oci_view_readdir), in walk
 *       order, round and round. Prints in microseconds the median and p99
 *       of open + stat, of the scan, and of one stat, then the number of
 *       paths.
 *
 * BENCH_LAYERS, if set, is the cache's max_concurrent_layers (else the
 * library's default), for measuring that default.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "oci_cache.h"

/* How many times `view` opens a view and scans the tars. */
#define VIEW_OPENS 100

static double clock_seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now(void) { return clock_seconds(CLOCK_MONOTONIC); }

static void *allocate(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        perror("pull_bench: calloc");
        exit(1);
    }
    return p;
}

/* A count given on the command line, which must be positive. */
static size_t positive(const char *arg, const char *what) {
    size_t n = strtoul(arg, NULL, 10);
    if (!n) {
        fprintf(stderr, "pull_bench: %s must be a positive number\n", what);
        exit(2);
    }
    return n;
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

/* Sorts `v` and stores its median and p99 (nearest rank: the
 * ceil(0.99 * n)-th smallest value). */
static void summarize(double *v, size_t n, double *median, double *p99) {
    qsort(v, n, sizeof *v, by_value);
    *median = v[n / 2];
    *p99 = v[(99 * n + 99) / 100 - 1];
}

/* Opens a cache on `store` with the defaults (and BENCH_LAYERS); without
 * `keep_blobs`, its store keeps no layer blobs. */
static oci_cache *open_cache(const char *store, int keep_blobs) {
    oci_cache_options *options = NULL;
    oci_cache *cache = NULL;
    oci_error *err = NULL;
    check("oci_cache_options_new", oci_cache_options_new(&options), NULL);
    check("oci_cache_options_set_store", oci_cache_options_set_store(options, store), NULL);
    if (!keep_blobs)
        check("oci_cache_options_set_keep_layer_blobs", oci_cache_options_set_keep_layer_blobs(options, 0), NULL);
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
    oci_cache *cache = open_cache(store, 1);
    if (resolve)
        check("oci_cache_resolve", oci_cache_resolve(cache, reference, NULL, digest, sizeof digest, &err), &err);
    else
        check("oci_fetch_image", oci_fetch_image(cache, reference, NULL, NULL, &image, &err), &err);
    printf("%.2f\n", (now() - start) * 1e3);
    oci_image_free(image);
    oci_cache_free(cache);
    return 0;
}

/* Built with -DPULL_BENCH_NO_VIEW, for a library from before the view
 * (bench/run's BENCH_BASELINE may be one), the index and view modes are
 * left out. */
#ifdef PULL_BENCH_NO_VIEW
#define VIEW_MODES 0
#else
#define VIEW_MODES 1

/* The CPU time of the whole process, every thread: the library's work
 * runs on threads of its own. */
static double cpu_now(void) { return clock_seconds(CLOCK_PROCESS_CPUTIME_ID); }

/* Exits with errno's message. */
static void fail(const char *what, const char *path) {
    fprintf(stderr, "pull_bench: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

/* DST/DIR/<alg>/<hex> for layer `index` of `image` (DIR "" for the tar,
 * "tar-index/" for its index). */
static char *layer_path(const char *dst, const char *dir, const oci_image *image, size_t index) {
    const char *diff_id = oci_image_layer_diff_id(image, index);
    const char *colon = strchr(diff_id, ':');
    size_t n = strlen(dst) + strlen(dir) + strlen(diff_id) + 3;
    char *path = allocate(n, 1);
    snprintf(path, n, "%s/%s%.*s/%s", dst, dir, (int)(colon - diff_id), diff_id, colon + 1);
    return path;
}

/* Deletes the image's index files; returns how many there were. */
static size_t remove_indexes(const oci_image *image, const char *dst) {
    size_t removed = 0;
    for (size_t i = 0; i < oci_image_layer_count(image); i++) {
        char *path = layer_path(dst, "tar-index/", image, i);
        if (unlink(path) == 0)
            removed++;
        else if (errno != ENOENT)
            fail("unlink", path);
        free(path);
    }
    return removed;
}

/* `index`: the indexes rebuilt against the tars re-hashed, in turn. */
static void index_bench(oci_cache *cache, const oci_image *image, const char *dst, size_t reps) {
    size_t layers = oci_image_layer_count(image);
    double *rebuild = allocate(reps, sizeof *rebuild), *hash = allocate(reps, sizeof *hash);
    double *cost = allocate(reps, sizeof *cost), *cost_cpu = allocate(reps, sizeof *cost_cpu);
    if (remove_indexes(image, dst) != layers) {
        fprintf(stderr, "pull_bench: the pull did not write every layer's index\n");
        exit(1);
    }
    for (size_t r = 0; r < reps; r++) {
        double wall[2] = {0, 0}, cpu[2] = {0, 0};
        /* Which goes first alternates, so neither always runs on what the
         * other left behind. */
        for (int k = 0; k < 2; k++) {
            int verify = (k + r) % 2;
            oci_verify_report *report = NULL;
            oci_view *view = NULL;
            oci_error *err = NULL;
            double t = now(), c = cpu_now();
            if (verify)
                check("oci_cache_verify", oci_cache_verify(cache, dst, 0, NULL, &report, &err), &err);
            else
                check("oci_view_open", oci_view_open(cache, image, dst, NULL, &view, &err), &err);
            wall[verify] = now() - t, cpu[verify] = cpu_now() - c;
            if (verify && (oci_verify_report_checked(report) < layers || oci_verify_report_corrupt_count(report))) {
                fprintf(stderr, "pull_bench: oci_cache_verify checked %llu files, %zu corrupt\n",
                        (unsigned long long)oci_verify_report_checked(report),
                        oci_verify_report_corrupt_count(report));
                exit(1);
            }
            oci_verify_report_free(report);
            oci_view_free(view);
            if (!verify && remove_indexes(image, dst) != layers) {
                fprintf(stderr, "pull_bench: oci_view_open did not write every layer's index\n");
                exit(1);
            }
        }
        rebuild[r] = wall[0] * 1e3, hash[r] = wall[1] * 1e3;
        cost[r] = (wall[0] - wall[1]) * 1e3, cost_cpu[r] = (cpu[0] - cpu[1]) * 1e3;
    }
    double median[4], p99;
    double *all[4] = {rebuild, hash, cost, cost_cpu};
    for (int k = 0; k < 4; k++) {
        summarize(all[k], reps, &median[k], &p99);
        free(all[k]);
    }
    printf("%.1f %.1f %.1f %.1f\n", median[0], median[1], median[2], median[3]);
}

/* A tar header's numeric field: octal, or base-256 when its first byte
 * has the high bit set (GNU, for values octal cannot hold). */
static uint64_t tar_number(const unsigned char *field, size_t len) {
    uint64_t n = 0;
    if (field[0] & 0x80) {
        n = field[0] & 0x7f;
        for (size_t i = 1; i < len; i++)
            n = n << 8 | field[i];
        return n;
    }
    for (size_t i = 0; i < len && field[i] != 0; i++)
        if (field[i] >= '0' && field[i] <= '7')
            n = n * 8 + (field[i] - '0');
    return n;
}

static void read_at(int fd, void *buf, size_t len, uint64_t off, const char *path) {
    ssize_t n = pread(fd, buf, len, (off_t)off);
    if (n < 0)
        fail("pread", path);
    if ((size_t)n != len) {
        fprintf(stderr, "pull_bench: %s: truncated tar\n", path);
        exit(1);
    }
}

/* The size a PAX extended header gives the next entry, or `fallback`. */
static uint64_t pax_size(const char *records, size_t len, uint64_t fallback) {
    size_t at = 0;
    while (at < len) {
        char *end;
        unsigned long n = strtoul(records + at, &end, 10);
        if (n == 0 || n > len - at)
            break;
        const char *key = end + 1;
        if ((size_t)(records + at + n - key) > 5 && memcmp(key, "size=", 5) == 0)
            fallback = strtoull(key + 5, NULL, 10);
        at += n;
    }
    return fallback;
}

/* Reads every header of the tar at `path` the way a tarfs must to learn
 * where each file is, and builds nothing: each 512-byte header is read
 * with pread at the offset the previous one's size gives; PAX extended
 * headers and GNU long names and links are read whole (a PAX size
 * overrides the next entry's); data is skipped, as are header-only
 * types' sizes. Returns the number of entries (extended headers and
 * long names not counted). */
static size_t scan_tar(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail("open", path);
    unsigned char header[512];
    uint64_t off = 0, next_size = UINT64_MAX;
    size_t entries = 0;
    for (;;) {
        read_at(fd, header, sizeof header, off, path);
        int zero = 1;
        for (size_t i = 0; i < sizeof header && zero; i++)
            zero = header[i] == 0;
        if (zero)
            break;
        uint64_t size = tar_number(header + 124, 12);
        char type = header[156];
        off += sizeof header;
        if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
            char *ext = allocate(size + 1, 1);
            read_at(fd, ext, size, off, path);
            if (type == 'x')
                next_size = pax_size(ext, size, next_size);
            free(ext);
        } else {
            if (next_size != UINT64_MAX)
                size = next_size;
            next_size = UINT64_MAX;
            if (type != 0 && strchr("123456", type))
                size = 0;
            entries++;
        }
        off += (size + 511) / 512 * 512;
    }
    close(fd);
    return entries;
}

struct paths {
    char **path;
    size_t count, cap;
};

/* Appends every path under directory `dir` of `view` to `out`, walk order. */
static void walk(const oci_view *view, const char *dir, struct paths *out) {
    oci_dir_list *list = NULL;
    oci_error *err = NULL;
    check("oci_view_readdir", oci_view_readdir(view, dir, &list, &err), &err);
    for (size_t i = 0; i < oci_dir_list_count(list); i++) {
        const char *name = oci_dir_list_name(list, i);
        size_t n = strlen(dir) + strlen(name) + 2;
        char *path = allocate(n, 1);
        snprintf(path, n, "%s%s%s", dir, strcmp(dir, "/") == 0 ? "" : "/", name);
        if (out->count == out->cap) {
            out->cap = out->cap ? 2 * out->cap : 1024;
            out->path = realloc(out->path, out->cap * sizeof *out->path);
            if (!out->path) {
                perror("pull_bench: realloc");
                exit(1);
            }
        }
        out->path[out->count++] = path;
        oci_stat st;
        check("oci_view_stat", oci_view_stat(view, path, &st, &err), &err);
        if (st.type == OCI_FILE_DIRECTORY)
            walk(view, path, out);
    }
    oci_dir_list_free(list);
}

/* `view`: open + one deep stat against a header scan, then stat alone. */
static void view_bench(oci_cache *cache, const oci_image *image, const char *dst, size_t calls, const char *deep) {
    size_t layers = oci_image_layer_count(image);
    char **tars = allocate(layers, sizeof *tars);
    for (size_t i = 0; i < layers; i++)
        tars[i] = layer_path(dst, "", image, i);
    double *open_us = allocate(VIEW_OPENS, sizeof *open_us), *scan_us = allocate(VIEW_OPENS, sizeof *scan_us);
    oci_error *err = NULL;
    oci_stat st;
    size_t scanned = 0;
    for (size_t r = 0; r < VIEW_OPENS; r++) {
        for (int k = 0; k < 2; k++) {
            double t = now();
            if ((k + r) % 2 == 0) {
                oci_view *view = NULL;
                check("oci_view_open", oci_view_open(cache, image, dst, NULL, &view, &err), &err);
                check("oci_view_stat", oci_view_stat(view, deep, &st, &err), &err);
                open_us[r] = (now() - t) * 1e6;
                oci_view_free(view);
            } else {
                size_t entries = 0;
                for (size_t i = 0; i < layers; i++)
                    entries += scan_tar(tars[i]);
                scan_us[r] = (now() - t) * 1e6;
                if (scanned && entries != scanned) {
                    fprintf(stderr, "pull_bench: the scans counted %zu and %zu entries\n", scanned, entries);
                    exit(1);
                }
                scanned = entries;
            }
        }
    }

    oci_view *view = NULL;
    check("oci_view_open", oci_view_open(cache, image, dst, NULL, &view, &err), &err);
    struct paths paths = {0};
    walk(view, "/", &paths);
    double *stat_us = allocate(calls, sizeof *stat_us);
    for (size_t i = 0; i < calls; i++) {
        const char *path = paths.path[i % paths.count];
        double t = now();
        oci_status status = oci_view_stat(view, path, &st, &err);
        stat_us[i] = (now() - t) * 1e6;
        check("oci_view_stat", status, &err);
    }
    oci_view_free(view);

    double open_median, open_p99, scan_median, scan_p99, stat_median, stat_p99;
    summarize(open_us, VIEW_OPENS, &open_median, &open_p99);
    summarize(scan_us, VIEW_OPENS, &scan_median, &scan_p99);
    summarize(stat_us, calls, &stat_median, &stat_p99);
    printf("%.1f %.1f %.1f %.1f %.2f %.2f %zu\n", open_median, open_p99, scan_median, scan_p99, stat_median,
           stat_p99, paths.count);
    for (size_t i = 0; i < paths.count; i++)
        free(paths.path[i]);
    free(paths.path);
    for (size_t i = 0; i < layers; i++)
        free(tars[i]);
    free(tars);
    free(open_us);
    free(scan_us);
    free(stat_us);
}
#endif

int main(int argc, char **argv) {
    if (argc == 4 && (strcmp(argv[1], "first") == 0 || strcmp(argv[1], "resolve") == 0))
        return first_call(strcmp(argv[1], "resolve") == 0, argv[2], argv[3]);
    int warm = argc == 6 && strcmp(argv[1], "warm") == 0;
    int layer = argc == 6 && strcmp(argv[1], "layer") == 0;
    int index = VIEW_MODES && argc == 6 && strcmp(argv[1], "index") == 0;
    int view = VIEW_MODES && argc == 7 && strcmp(argv[1], "view") == 0;
    if (!warm && !layer && !index && !view && !(argc == 5 && strcmp(argv[1], "cold") == 0)) {
        fprintf(stderr,
                "usage: %s cold REFERENCE STORE DST\n       %s warm REFERENCE STORE DST CALLS\n"
                "       %s layer REFERENCE STORE DST INDEX\n       %s first REFERENCE STORE\n"
                "       %s resolve REFERENCE STORE\n       %s index REFERENCE STORE DST REPS\n"
                "       %s view REFERENCE STORE DST CALLS DEEP_PATH\n",
                argv[0], argv[0], argv[0], argv[0], argv[0], argv[0], argv[0]);
        return 2;
    }
    const char *reference = argv[2], *store = argv[3], *dst = argv[4];
    size_t calls = warm || index || view ? positive(argv[5], index ? "REPS" : "CALLS") : 0;

    oci_image *image = NULL;
    oci_error *err = NULL;

    double start = now();
    oci_cache *cache = open_cache(store, !index);
    check("oci_fetch_image", oci_fetch_image(cache, reference, NULL, NULL, &image, &err), &err);
    if (layer) {
        size_t layer_index = strtoul(argv[5], NULL, 10);
        int fd = -1;
        double t = now();
        check("oci_extract_layer", oci_extract_layer(cache, image, layer_index, dst, NULL, &fd, &err), &err);
        printf("%.3f\n", now() - t);
        close(fd);
        oci_image_free(image);
        oci_cache_free(cache);
        return 0;
    }
    size_t count = oci_image_layer_count(image);
    int *fds = allocate(count, sizeof *fds);
    rootfs(cache, image, dst, fds, count);
    close_all(fds, count);
    double cold = now() - start;

#if VIEW_MODES
    if (index) {
        index_bench(cache, image, dst, calls);
    } else if (view) {
        view_bench(cache, image, dst, calls, argv[6]);
    } else
#endif
    if (warm) {
        double *us = allocate(calls, sizeof *us);
        for (size_t i = 0; i < calls; i++) {
            double t = now();
            rootfs(cache, image, dst, fds, count);
            us[i] = (now() - t) * 1e6;
            close_all(fds, count);
        }
        double median, p99;
        summarize(us, calls, &median, &p99);
        printf("%.1f %.1f\n", median, p99);
        free(us);
    } else {
        printf("%.3f\n", cold);
    }
    free(fds);
    oci_image_free(image);
    oci_cache_free(cache);
    return 0;
}
