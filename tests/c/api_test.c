/*
 * api_test.c: the C-level tests of liboci_cache's ABI, as a C caller sees
 * it through include/oci_cache.h. It owns the checks on status codes, error
 * objects (with the errno and HTTP status behind them), output and fd
 * contracts, free order, fork and threads.
 *
 * tests/c_api.rs builds and runs it (also under valgrind): that driver
 * starts the registries, pushes the fixtures, and passes every host,
 * reference and expected value in OCI_TEST_* environment variables. It
 * ends with "plan: N checks" and "P passed, F failed" (tests/c/checks.h):
 * the driver wants P == N, so a check that silently stops running is a
 * failure too. By hand, with those
 * variables set: OCI_TEST_VERBOSE=1 prints every expected error message,
 * OCI_TEST_TIMINGS=1 the time each test took.
 */
#include "oci_cache.h" /* first, so the header is seen to stand on its own */

#include "checks.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* unshare(2), declared here: the file builds as strict C11 with POSIX only,
 * where <sched.h> hides it (it is Linux's, in glibc). */
int unshare(int flags);
#define NEW_PID_NAMESPACE 0x20000000 /* CLONE_NEWPID */

#define PATH_CAP 4096
#define LAYERS 3

/* ------------------------------------------------------------------------ */
/* Checks */

/* Failed runs of checks (and of REQUIREs); checks.h tallies the rest. */
static int failed;
/* What the checks are about, printed with a failure: a line number alone is
 * ambiguous in helpers called for several layers or calls. */
static char context[256];

static void set_context(const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(context, sizeof context, format, args);
    va_end(args);
}

static const char *status_name(oci_status status) {
    switch (status) {
    case OCI_OK: return "OCI_OK";
    case OCI_E_INVALID_ARGUMENT: return "OCI_E_INVALID_ARGUMENT";
    case OCI_E_NOT_FOUND: return "OCI_E_NOT_FOUND";
    case OCI_E_UNAUTHORIZED: return "OCI_E_UNAUTHORIZED";
    case OCI_E_UNSUPPORTED: return "OCI_E_UNSUPPORTED";
    case OCI_E_DIGEST_MISMATCH: return "OCI_E_DIGEST_MISMATCH";
    case OCI_E_INVALID_CONTENT: return "OCI_E_INVALID_CONTENT";
    case OCI_E_NETWORK: return "OCI_E_NETWORK";
    case OCI_E_IO: return "OCI_E_IO";
    case OCI_E_CANCELED: return "OCI_E_CANCELED";
    case OCI_E_TIMEOUT: return "OCI_E_TIMEOUT";
    case OCI_E_BUFFER_TOO_SMALL: return "OCI_E_BUFFER_TOO_SMALL";
    case OCI_E_FORKED: return "OCI_E_FORKED";
    case OCI_E_INTERNAL: return "OCI_E_INTERNAL";
    default: return "(unknown status)";
    }
}

static void report_failure(const char *file, int line, const char *what) {
    failed++;
    fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what);
    if (context[0])
        fprintf(stderr, "    while: %s\n", context);
}

static void check_at(struct check_site *site, int ok, const oci_error *err) {
    if (check_run(site, ok))
        return;
    report_failure(site->file, site->line, site->what);
    if (err)
        fprintf(stderr, "    oci_error %s: %s\n", status_name(oci_error_code(err)),
                oci_error_message(err));
}

#define CHECK(cond) CHECK_E(cond, NULL)
#define CHECK_E(cond, err)                                                                       \
    do {                                                                                         \
        CHECK_SITE(#cond, CHECK_PLANNED(cond));                                                  \
        check_at(&check_site_, (cond) != 0, (err));                                              \
    } while (0)

/* One check: the call returned `want`, and (when err_out was given) left an
 * error with the same code whose message is non-empty and contains
 * `needle1` and `needle2` (either may be NULL). Frees the error. */
static void expect_error_at(struct check_site *site, oci_status status, oci_status want,
                            oci_error **errp, const char *needle1, const char *needle2) {
    oci_error *err = errp ? *errp : NULL;
    const char *message = err ? oci_error_message(err) : NULL;
    char what[1024];
    const char *problem = NULL;
    if (status != want)
        problem = "wrong status";
    else if (errp && !err)
        problem = "no oci_error written";
    else if (err && oci_error_code(err) != want)
        problem = "oci_error_code differs from the status";
    else if (err && (!message || !message[0]))
        problem = "empty message";
    else if (err && needle1 && !strstr(message, needle1))
        problem = "message lacks the first expected text";
    else if (err && needle2 && !strstr(message, needle2))
        problem = "message lacks the second expected text";
    if (check_run(site, !problem)) {
        /* To read what callers will see, e.g. when judging a message. */
        if (getenv("OCI_TEST_VERBOSE"))
            fprintf(stderr, "%s:%d: %s: %s\n", site->file, site->line, status_name(status),
                    message ? message : "(no oci_error asked for)");
    } else {
        snprintf(what, sizeof what, "%s: %s (got %s, want %s)", site->what, problem,
                 status_name(status), status_name(want));
        report_failure(site->file, site->line, what);
        if (needle1)
            fprintf(stderr, "    message should contain: \"%s\"\n", needle1);
        if (needle2)
            fprintf(stderr, "    message should contain: \"%s\"\n", needle2);
        if (message)
            fprintf(stderr, "    message: %s\n", message);
    }
    if (errp) {
        oci_error_free(*errp);
        *errp = NULL;
    }
}

#define EXPECT_ERROR(call, want, errp, needle1, needle2)                                         \
    do {                                                                                         \
        CHECK_SITE(#call, 1);                                                                    \
        expect_error_at(&check_site_, (call), (want), (errp), (needle1), (needle2));             \
    } while (0)

/* One check: the call succeeded and left *errp alone. */
static void expect_ok_at(struct check_site *site, oci_status status, oci_error **errp) {
    char what[1024];
    if (check_run(site, status == OCI_OK && (!errp || !*errp)))
        return;
    snprintf(what, sizeof what, "%s: got %s, want OCI_OK", site->what, status_name(status));
    report_failure(site->file, site->line, what);
    if (errp && *errp) {
        fprintf(stderr, "    message: %s\n", oci_error_message(*errp));
        oci_error_free(*errp);
        *errp = NULL;
    }
}

#define EXPECT_OK(call, errp)                                                                    \
    do {                                                                                         \
        CHECK_SITE(#call, 1);                                                                    \
        expect_ok_at(&check_site_, (call), (errp));                                              \
    } while (0)

/* The plan and the tally; with `stopping` (a REQUIRE failed), without the
 * list of every check the stop kept from running. */
static void finish(int stopping) {
    failed = checks_report(failed, !stopping);
}

/* For set-up the rest depends on: stop at once, visibly. */
static void require_at(const char *file, int line, int ok, const char *what, oci_error *err) {
    if (ok)
        return;
    report_failure(file, line, what);
    if (err)
        fprintf(stderr, "    oci_error %s: %s\n", status_name(oci_error_code(err)),
                oci_error_message(err));
    fprintf(stderr, "stopping: later checks depend on this\n");
    finish(1);
    exit(1);
}

#define REQUIRE(cond) require_at(__FILE__, __LINE__, (cond) != 0, #cond, NULL)
#define REQUIRE_OK(call, err)                                                                    \
    do {                                                                                         \
        oci_status require_status_ = (call);                                                     \
        require_at(__FILE__, __LINE__, require_status_ == OCI_OK, #call, (err));                 \
    } while (0)

/* Output pointers are pre-filled with this to show they were left alone. */
static char sentinel_object;
#define SENTINEL ((void *)&sentinel_object)
#define SENTINEL_FD (-2)

/* ------------------------------------------------------------------------ */
/* What the driver passes in */

struct layer_expect {
    const char *digest, *diff_id, *media_type;
    long long size, tar_size;
};

static struct {
    const char *host, *fake, *dead, *tmp;
    const char *app_digest, *multi_digest, *other_digest;
    const char *host_platform, *other_platform;
    const char *odd_media_type, *corrupt_digest;
    const char *read_only_dir, *full_dir;
    struct layer_expect layers[LAYERS];
    char app_ref[256], multi_ref[256], odd_ref[256], missing_tag_ref[256], missing_repo_ref[256];
    char corrupt_ref[256], garbled_ref[256], secret_ref[256], dead_ref[256];
} cfg;

static const char *env(const char *name) {
    const char *value = getenv(name);
    if (!value || !value[0]) {
        fprintf(stderr, "%s is not set: run this through tests/c_api.rs (cargo test --test c_api)\n",
                name);
        exit(2);
    }
    return value;
}

static long long env_number(const char *name) {
    const char *text = env(name);
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno || *end) {
        fprintf(stderr, "%s=%s is not a number\n", name, text);
        exit(2);
    }
    return value;
}

static void load_config(void) {
    cfg.host = env("OCI_TEST_HOST");
    cfg.fake = env("OCI_TEST_FAKE");
    cfg.dead = env("OCI_TEST_DEAD");
    cfg.tmp = env("OCI_TEST_TMP");
    cfg.app_digest = env("OCI_TEST_APP_DIGEST");
    cfg.multi_digest = env("OCI_TEST_MULTI_DIGEST");
    cfg.other_digest = env("OCI_TEST_OTHER_DIGEST");
    cfg.host_platform = env("OCI_TEST_HOST_PLATFORM");
    cfg.other_platform = env("OCI_TEST_OTHER_PLATFORM");
    cfg.odd_media_type = env("OCI_TEST_ODD_MEDIA_TYPE");
    cfg.corrupt_digest = env("OCI_TEST_CORRUPT_DIGEST");
    cfg.read_only_dir = env("OCI_TEST_READ_ONLY_DIR");
    cfg.full_dir = env("OCI_TEST_FULL_DIR");
    for (int i = 0; i < LAYERS; i++) {
        char name[64];
        struct layer_expect *layer = &cfg.layers[i];
        snprintf(name, sizeof name, "OCI_TEST_LAYER%d_DIGEST", i);
        layer->digest = env(name);
        snprintf(name, sizeof name, "OCI_TEST_LAYER%d_DIFF_ID", i);
        layer->diff_id = env(name);
        snprintf(name, sizeof name, "OCI_TEST_LAYER%d_MEDIA_TYPE", i);
        layer->media_type = env(name);
        snprintf(name, sizeof name, "OCI_TEST_LAYER%d_SIZE", i);
        layer->size = env_number(name);
        snprintf(name, sizeof name, "OCI_TEST_LAYER%d_TAR_SIZE", i);
        layer->tar_size = env_number(name);
    }
    snprintf(cfg.app_ref, sizeof cfg.app_ref, "%s/c/app:v1", cfg.host);
    snprintf(cfg.multi_ref, sizeof cfg.multi_ref, "%s/c/multi:v1", cfg.host);
    snprintf(cfg.odd_ref, sizeof cfg.odd_ref, "%s/c/odd:v1", cfg.host);
    snprintf(cfg.missing_tag_ref, sizeof cfg.missing_tag_ref, "%s/c/app:no-such-tag", cfg.host);
    snprintf(cfg.missing_repo_ref, sizeof cfg.missing_repo_ref, "%s/c/no-such-repo:v1", cfg.host);
    snprintf(cfg.corrupt_ref, sizeof cfg.corrupt_ref, "%s/c/corrupt:v1", cfg.fake);
    snprintf(cfg.garbled_ref, sizeof cfg.garbled_ref, "%s/c/garbled:v1", cfg.fake);
    snprintf(cfg.secret_ref, sizeof cfg.secret_ref, "%s/c/secret:v1", cfg.fake);
    snprintf(cfg.dead_ref, sizeof cfg.dead_ref, "%s/c/app:v1", cfg.dead);
}

/* ------------------------------------------------------------------------ */
/* Helpers */

/* A new empty directory TMP/name, written to `path`. */
static void make_dir(char *path, const char *name) {
    snprintf(path, PATH_CAP, "%s/%s", cfg.tmp, name);
    if (mkdir(path, 0700) != 0) {
        fprintf(stderr, "mkdir %s: %s\n", path, strerror(errno));
        REQUIRE(!"making a test directory");
    }
}

/* Where layer i's tar lives under dst: dst/sha256/<hex>. */
static void layer_path(char *path, const char *dst, size_t i) {
    const char *diff_id = cfg.layers[i].diff_id;
    const char *colon = strchr(diff_id, ':');
    snprintf(path, PATH_CAP, "%s/sha256/%s", dst, colon ? colon + 1 : diff_id);
}

/* Open fds of this process, sockets aside: the runtime opens and closes
 * pooled registry connections on its own schedule, while a leaked layer
 * file, pipe or eventfd stays. */
static int count_open_fds(void) {
    DIR *dir = opendir("/proc/self/fd");
    REQUIRE(dir != NULL);
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] == '.')
            continue;
        char target[PATH_CAP];
        ssize_t len = readlinkat(dirfd(dir), entry->d_name, target, sizeof target - 1);
        target[len > 0 ? len : 0] = '\0';
        if (strncmp(target, "socket:", 7) != 0)
            count++;
    }
    closedir(dir);
    return count;
}

/* Entries directly in `path` ("." and ".." aside). */
static int count_entries(const char *path) {
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL)
        if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0)
            count++;
    closedir(dir);
    return count;
}

/* Regular files anywhere under `path`, temporary ones included. */
static int count_regular_files(const char *path) {
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        struct stat st;
        if (fstatat(dirfd(dir), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (S_ISREG(st.st_mode)) {
            count++;
        } else if (S_ISDIR(st.st_mode)) {
            char child[PATH_CAP];
            snprintf(child, sizeof child, "%s/%s", path, entry->d_name);
            int below = count_regular_files(child);
            count += below > 0 ? below : 0;
        }
    }
    closedir(dir);
    return count;
}

/* Bytes of the regular files anywhere under `path`; their number goes to
 * *files. A missing directory holds nothing. */
static long long sum_file_sizes(const char *path, int *files) {
    DIR *dir = opendir(path);
    if (!dir)
        return 0;
    long long bytes = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        struct stat st;
        if (fstatat(dirfd(dir), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (S_ISREG(st.st_mode)) {
            bytes += st.st_size;
            (*files)++;
        } else if (S_ISDIR(st.st_mode)) {
            char child[PATH_CAP];
            snprintf(child, sizeof child, "%s/%s", path, entry->d_name);
            bytes += sum_file_sizes(child, files);
        }
    }
    closedir(dir);
    return bytes;
}

/* The absolute path `path` resolves to (symlinks followed), as the kernel
 * names an open fd of it: realpath() without _XOPEN_SOURCE. */
static void resolved_path(char *resolved, const char *path) {
    char link[64];
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, resolved, PATH_CAP - 1);
    close(fd);
    REQUIRE(len > 0);
    resolved[len] = '\0';
}

/* The size of the file at `path`, -1 if there is none. */
static long long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* Where a store keeps blob `digest`: store/blobs/<algorithm>/<hex>. */
static void blob_path(char *path, const char *store, const char *digest) {
    const char *colon = strchr(digest, ':');
    if (colon)
        snprintf(path, PATH_CAP, "%s/blobs/%.*s/%s", store, (int)(colon - digest), digest,
                 colon + 1);
    else
        snprintf(path, PATH_CAP, "%s/blobs/%s", store, digest);
}

/* Where a diff_id's tar lives under dst: dst/<algorithm>/<hex>. */
static void tar_path(char *path, const char *dst, const char *diff_id) {
    const char *colon = strchr(diff_id, ':');
    if (colon)
        snprintf(path, PATH_CAP, "%s/%.*s/%s", dst, (int)(colon - diff_id), diff_id, colon + 1);
    else
        snprintf(path, PATH_CAP, "%s/%s", dst, diff_id);
}

/* Everything `fd` yields from where it stands; NULL on a read error. */
static unsigned char *read_all(int fd, size_t *len_out) {
    size_t cap = 1 << 16, len = 0;
    unsigned char *buf = malloc(cap);
    REQUIRE(buf != NULL);
    for (;;) {
        if (len == cap) {
            unsigned char *bigger = realloc(buf, cap *= 2);
            REQUIRE(bigger != NULL);
            buf = bigger;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            free(buf);
            return NULL;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    *len_out = len;
    return buf;
}

/* The fd reads to exactly the bytes of the file at `path`. */
static int same_content(int fd, const char *path) {
    size_t fd_len = 0, file_len = 0;
    unsigned char *from_fd = read_all(fd, &fd_len);
    int file = open(path, O_RDONLY | O_CLOEXEC);
    unsigned char *from_file = file >= 0 ? read_all(file, &file_len) : NULL;
    if (file >= 0)
        close(file);
    int same = from_fd && from_file && fd_len == file_len && memcmp(from_fd, from_file, fd_len) == 0;
    free(from_fd);
    free(from_file);
    return same;
}

static void close_fds(int *fds, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

static int all_fds_are(const int *fds, size_t n, int value) {
    for (size_t i = 0; i < n; i++)
        if (fds[i] != value)
            return 0;
    return 1;
}

static double seconds_since(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

/* Six checks: the fd contract of the header, for layer i under dst. */
static void check_layer_fd(int fd, const char *dst, size_t i) {
    char path[PATH_CAP];
    struct stat st, at_path;
    int flags = fcntl(fd, F_GETFL);
    CHECK(flags != -1 && (flags & O_ACCMODE) == O_RDONLY);
    int fd_flags = fcntl(fd, F_GETFD);
    CHECK(fd_flags != -1 && (fd_flags & FD_CLOEXEC));
    CHECK(lseek(fd, 0, SEEK_CUR) == 0);
    CHECK(write(fd, "x", 1) == -1);
    CHECK(fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == cfg.layers[i].tar_size);
    layer_path(path, dst, i);
    /* The fd is the file at its documented path, not some other copy. */
    CHECK(stat(path, &at_path) == 0 && at_path.st_dev == st.st_dev && at_path.st_ino == st.st_ino);
}

static oci_cache *open_cache(const char *store) {
    oci_cache_options *options = NULL;
    oci_cache *cache = NULL;
    oci_error *err = NULL;
    REQUIRE_OK(oci_cache_options_new(&options), NULL);
    if (store)
        REQUIRE_OK(oci_cache_options_set_store(options, store), NULL);
    REQUIRE_OK(oci_cache_new(options, &cache, &err), err);
    oci_cache_options_free(options);
    return cache;
}

static oci_image *fetch(oci_cache *cache, const char *reference) {
    oci_image *image = NULL;
    oci_error *err = NULL;
    REQUIRE_OK(oci_fetch_image(cache, reference, NULL, NULL, &image, &err), err);
    return image;
}

/* ------------------------------------------------------------------------ */
/* Tests */

static void test_version(void) {
    char expected[64];
    set_context("oci_version");
    snprintf(expected, sizeof expected, "%d.%d.%d", OCI_CACHE_VERSION_MAJOR,
             OCI_CACHE_VERSION_MINOR, OCI_CACHE_VERSION_PATCH);
    CHECK(oci_version() != NULL && strcmp(oci_version(), expected) == 0);
}

static void test_free_null(void) {
    set_context("free functions given NULL");
    oci_cache_options_free(NULL);
    oci_cache_free(NULL);
    oci_image_free(NULL);
    oci_layer_reader_free(NULL);
    oci_error_free(NULL);
    oci_cancel_free(NULL);
    oci_call_options_free(NULL);
    oci_image_list_free(NULL);
    oci_verify_report_free(NULL);
    CHECK(oci_error_code(NULL) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_error_message(NULL) == NULL);
}

static void test_null_arguments(oci_cache *cache, const oci_image *app) {
    oci_error *err = NULL;
    oci_image *image = SENTINEL;
    oci_layer_reader *reader = SENTINEL;
    char dst[PATH_CAP];
    int fds[LAYERS] = {SENTINEL_FD, SENTINEL_FD, SENTINEL_FD};
    int fd = SENTINEL_FD;
    char digest[128] = "untouched";
    make_dir(dst, "null-args");

    set_context("NULL arguments of oci_cache_new");
    EXPECT_ERROR(oci_cache_new(NULL, NULL, &err), OCI_E_INVALID_ARGUMENT, &err, "cache_out", NULL);
    /* err_out is optional: the status alone still says what happened. */
    CHECK(oci_cache_new(NULL, NULL, NULL) == OCI_E_INVALID_ARGUMENT);

    set_context("NULL arguments of oci_fetch_image");
    EXPECT_ERROR(oci_fetch_image(NULL, cfg.app_ref, NULL, NULL, &image, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "cache", NULL);
    EXPECT_ERROR(oci_fetch_image(cache, NULL, NULL, NULL, &image, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "reference", NULL);
    EXPECT_ERROR(oci_fetch_image(cache, cfg.app_ref, NULL, NULL, NULL, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "image_out", NULL);
    CHECK(oci_fetch_image(cache, NULL, NULL, NULL, &image, NULL) == OCI_E_INVALID_ARGUMENT);
    CHECK(image == SENTINEL);

    set_context("NULL arguments of oci_cache_resolve");
    EXPECT_ERROR(oci_cache_resolve(NULL, cfg.app_ref, NULL, digest, sizeof digest, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "cache", NULL);
    EXPECT_ERROR(oci_cache_resolve(cache, NULL, NULL, digest, sizeof digest, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "reference", NULL);
    EXPECT_ERROR(oci_cache_resolve(cache, cfg.app_ref, NULL, NULL, 72, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "digest_out", NULL);
    CHECK(strcmp(digest, "untouched") == 0);

    set_context("NULL arguments of oci_rootfs");
    EXPECT_ERROR(oci_rootfs(NULL, app, dst, NULL, fds, LAYERS, &err), OCI_E_INVALID_ARGUMENT, &err,
                 "cache", NULL);
    EXPECT_ERROR(oci_rootfs(cache, NULL, dst, NULL, fds, LAYERS, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "image", NULL);
    EXPECT_ERROR(oci_rootfs(cache, app, NULL, NULL, fds, LAYERS, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "dst", NULL);
    EXPECT_ERROR(oci_rootfs(cache, app, dst, NULL, NULL, LAYERS, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "fds_out", NULL);
    CHECK(all_fds_are(fds, LAYERS, SENTINEL_FD));

    set_context("NULL arguments of oci_extract_layers and oci_extract_layer");
    EXPECT_ERROR(oci_extract_layers(cache, app, dst, NULL, NULL, LAYERS, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "fds_out", NULL);
    EXPECT_ERROR(oci_extract_layers(cache, NULL, dst, NULL, fds, LAYERS, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "image", NULL);
    EXPECT_ERROR(oci_extract_layer(NULL, app, 0, dst, NULL, &fd, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "cache", NULL);
    EXPECT_ERROR(oci_extract_layer(cache, NULL, 0, dst, NULL, &fd, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "image", NULL);
    EXPECT_ERROR(oci_extract_layer(cache, app, 0, NULL, NULL, &fd, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "dst", NULL);
    EXPECT_ERROR(oci_extract_layer(cache, app, 0, dst, NULL, NULL, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "fd_out", NULL);
    CHECK(fd == SENTINEL_FD && all_fds_are(fds, LAYERS, SENTINEL_FD));
    /* None of these may have written anything. */
    CHECK(count_entries(dst) == 0);

    set_context("NULL arguments of oci_fetch_layer and oci_layer_reader_read");
    EXPECT_ERROR(oci_fetch_layer(NULL, app, 0, NULL, &reader, &err), OCI_E_INVALID_ARGUMENT, &err,
                 "cache", NULL);
    EXPECT_ERROR(oci_fetch_layer(cache, NULL, 0, NULL, &reader, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "image", NULL);
    EXPECT_ERROR(oci_fetch_layer(cache, app, 0, NULL, NULL, &err), OCI_E_INVALID_ARGUMENT, &err,
                 "reader_out", NULL);
    CHECK(reader == SENTINEL);
    {
        uint8_t buf[16];
        size_t n = 12345;
        oci_layer_reader *live = NULL;
        EXPECT_ERROR(oci_layer_reader_read(NULL, buf, sizeof buf, &n, &err),
                     OCI_E_INVALID_ARGUMENT, &err, "reader", NULL);
        /* A reader freed unread: its download stops; valgrind sees the rest. */
        EXPECT_OK(oci_fetch_layer(cache, app, 2, NULL, &live, &err), &err);
        EXPECT_ERROR(oci_layer_reader_read(live, NULL, sizeof buf, &n, &err),
                     OCI_E_INVALID_ARGUMENT, &err, "buf", NULL);
        EXPECT_ERROR(oci_layer_reader_read(live, buf, sizeof buf, NULL, &err),
                     OCI_E_INVALID_ARGUMENT, &err, "n_out", NULL);
        CHECK(n == 12345);
        oci_layer_reader_free(live);
    }

    set_context("NULL arguments of the option builders");
    {
        oci_cache_options *options = NULL;
        oci_call_options *call = NULL;
        oci_cancel *cancel = NULL;
        CHECK(oci_cache_options_new(NULL) == OCI_E_INVALID_ARGUMENT);
        REQUIRE_OK(oci_cache_options_new(&options), NULL);
        CHECK(oci_cache_options_set_store(NULL, cfg.tmp) == OCI_E_INVALID_ARGUMENT);
        CHECK(oci_cache_options_set_store(options, NULL) == OCI_E_INVALID_ARGUMENT);
        CHECK(oci_cache_options_set_platform(NULL, "linux/amd64") == OCI_E_INVALID_ARGUMENT);
        CHECK(oci_cache_options_set_platform(options, NULL) == OCI_E_INVALID_ARGUMENT);
        CHECK(oci_cache_options_add_insecure_registry(NULL, "example.com") ==
              OCI_E_INVALID_ARGUMENT);
        CHECK(oci_cache_options_add_insecure_registry(options, NULL) == OCI_E_INVALID_ARGUMENT);
        CHECK(oci_cache_options_set_worker_threads(NULL, 1) == OCI_E_INVALID_ARGUMENT);
        CHECK(oci_cache_options_set_max_concurrent_layers(NULL, 1) == OCI_E_INVALID_ARGUMENT);
        CHECK(oci_cache_options_set_keep_layer_blobs(NULL, false) == OCI_E_INVALID_ARGUMENT);
        oci_cache_options_free(options);

        CHECK(oci_cancel_new(NULL) == OCI_E_INVALID_ARGUMENT);
        CHECK(oci_cancel_trigger(NULL) == OCI_E_INVALID_ARGUMENT);
        CHECK(oci_call_options_new(NULL) == OCI_E_INVALID_ARGUMENT);
        REQUIRE_OK(oci_cancel_new(&cancel), NULL);
        CHECK(oci_call_options_set_cancel(NULL, cancel) == OCI_E_INVALID_ARGUMENT);
        REQUIRE_OK(oci_call_options_new(&call), NULL);
        /* NULL is allowed here: it removes the token. */
        CHECK(oci_call_options_set_cancel(call, NULL) == OCI_OK);
        oci_call_options_free(call);
        oci_cancel_free(cancel);
    }
}

static void test_getters(const oci_image *app) {
    set_context("getters given a NULL image");
    CHECK(oci_image_reference(NULL) == NULL);
    CHECK(oci_image_digest(NULL) == NULL);
    CHECK(oci_image_config(NULL) == NULL);
    CHECK(oci_image_layer_count(NULL) == 0);
    CHECK(oci_image_layer_digest(NULL, 0) == NULL);
    CHECK(oci_image_layer_diff_id(NULL, 0) == NULL);
    CHECK(oci_image_layer_media_type(NULL, 0) == NULL);
    CHECK(oci_image_layer_size(NULL, 0) == -1);

    set_context("layer getters given an index out of range");
    CHECK(oci_image_layer_digest(app, LAYERS) == NULL);
    CHECK(oci_image_layer_diff_id(app, LAYERS) == NULL);
    CHECK(oci_image_layer_media_type(app, LAYERS) == NULL);
    CHECK(oci_image_layer_size(app, LAYERS) == -1);
    CHECK(oci_image_layer_digest(app, SIZE_MAX) == NULL);
    CHECK(oci_image_layer_size(app, SIZE_MAX) == -1);
}

static void test_bad_strings(oci_cache *cache, const oci_image *app) {
    oci_error *err = NULL;
    oci_image *image = SENTINEL;
    int fds[LAYERS] = {SENTINEL_FD, SENTINEL_FD, SENTINEL_FD};
    char digest[128] = "untouched";
    oci_cache_options *options = NULL;
    const char *not_utf8 = "\xff\xfe";

    set_context("strings that are not UTF-8");
    EXPECT_ERROR(oci_fetch_image(cache, not_utf8, NULL, NULL, &image, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "UTF-8", "reference");
    EXPECT_ERROR(oci_fetch_image(cache, cfg.app_ref, not_utf8, NULL, &image, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "UTF-8", "platform");
    EXPECT_ERROR(oci_cache_resolve(cache, not_utf8, NULL, digest, sizeof digest, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "UTF-8", NULL);
    EXPECT_ERROR(oci_rootfs(cache, app, not_utf8, NULL, fds, LAYERS, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "UTF-8", "dst");
    REQUIRE_OK(oci_cache_options_new(&options), NULL);
    CHECK(oci_cache_options_set_store(options, not_utf8) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_add_insecure_registry(options, not_utf8) == OCI_E_INVALID_ARGUMENT);

    set_context("malformed reference, platform and options");
    EXPECT_ERROR(oci_fetch_image(cache, "Not A Reference!", NULL, NULL, &image, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "Not A Reference!", NULL);
    EXPECT_ERROR(oci_cache_resolve(cache, "Not A Reference!", NULL, digest, sizeof digest, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "Not A Reference!", NULL);
    EXPECT_ERROR(oci_fetch_image(cache, cfg.app_ref, "linux", NULL, &image, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "linux", NULL);
    CHECK(oci_cache_options_set_platform(options, "linux") == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_set_worker_threads(options, 0) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_set_max_concurrent_layers(options, 0) == OCI_E_INVALID_ARGUMENT);
    /* The failed setters left the options usable. */
    CHECK(oci_cache_options_set_platform(options, "linux/arm64/v8") == OCI_OK);
    oci_cache_options_free(options);

    CHECK(image == SENTINEL && strcmp(digest, "untouched") == 0 &&
          all_fds_are(fds, LAYERS, SENTINEL_FD));
}

static void test_not_found(oci_cache *cache) {
    oci_error *err = NULL;
    oci_image *image = SENTINEL;

    set_context("a missing tag, repository and platform");
    EXPECT_ERROR(oci_fetch_image(cache, cfg.missing_tag_ref, NULL, NULL, &image, &err),
                 OCI_E_NOT_FOUND, &err, "c/app:no-such-tag", NULL);
    EXPECT_ERROR(oci_fetch_image(cache, cfg.missing_repo_ref, NULL, NULL, &image, &err),
                 OCI_E_NOT_FOUND, &err, "c/no-such-repo", NULL);
    /* The message lists what is there, so a caller can tell the user. */
    EXPECT_ERROR(oci_fetch_image(cache, cfg.multi_ref, "windows/amd64", NULL, &image, &err),
                 OCI_E_NOT_FOUND, &err, "linux/amd64", "linux/arm64");
    CHECK(image == SENTINEL);
}

static void test_resolve(oci_cache *cache) {
    oci_error *err = SENTINEL;
    char digest[128];
    size_t len = strlen(cfg.app_digest);

    set_context("oci_cache_resolve");
    EXPECT_OK(oci_cache_resolve(cache, cfg.app_ref, NULL, digest, sizeof digest, &err), NULL);
    /* err_out is written only on failure. */
    CHECK(err == SENTINEL);
    CHECK(strcmp(digest, cfg.app_digest) == 0);
    err = NULL;
    EXPECT_OK(oci_cache_resolve(cache, cfg.multi_ref, NULL, digest, sizeof digest, &err), &err);
    CHECK(strcmp(digest, cfg.multi_digest) == 0);

    /* Exactly enough room: the digest and its NUL. */
    memset(digest, 'Z', sizeof digest);
    EXPECT_OK(oci_cache_resolve(cache, cfg.app_ref, NULL, digest, len + 1, &err), &err);
    CHECK(strcmp(digest, cfg.app_digest) == 0);

    set_context("oci_cache_resolve into a buffer one byte short");
    memset(digest, 'Z', sizeof digest);
    {
        char needed[32];
        snprintf(needed, sizeof needed, "%zu", len + 1);
        EXPECT_ERROR(oci_cache_resolve(cache, cfg.app_ref, NULL, digest, len, &err),
                     OCI_E_BUFFER_TOO_SMALL, &err, needed, NULL);
    }
    {
        int untouched = 1;
        for (size_t i = 0; i < sizeof digest; i++)
            untouched &= digest[i] == 'Z';
        CHECK(untouched);
    }
}

static void test_fds_too_small(oci_cache *cache, const oci_image *app) {
    oci_error *err = NULL;
    int fds[LAYERS] = {SENTINEL_FD, SENTINEL_FD, SENTINEL_FD};
    char dst[PATH_CAP];
    make_dir(dst, "too-small");

    set_context("fds_cap below the layer count");
    int before = count_open_fds();
    EXPECT_ERROR(oci_rootfs(cache, app, dst, NULL, fds, LAYERS - 1, &err), OCI_E_BUFFER_TOO_SMALL,
                 &err, " 3 ", NULL);
    EXPECT_ERROR(oci_extract_layers(cache, app, dst, NULL, fds, 0, &err), OCI_E_BUFFER_TOO_SMALL,
                 &err, " 3 ", NULL);
    CHECK(count_open_fds() == before);
    CHECK(all_fds_are(fds, LAYERS, SENTINEL_FD));
    /* "before any work": nothing fetched, nothing written. */
    CHECK(count_entries(dst) == 0);
}

static void test_network(oci_cache *cache) {
    oci_error *err = NULL;
    oci_image *image = SENTINEL;
    char digest[128] = "untouched";

    set_context("a registry nobody listens on (%s)", cfg.dead);
    EXPECT_ERROR(oci_fetch_image(cache, cfg.dead_ref, NULL, NULL, &image, &err), OCI_E_NETWORK,
                 &err, cfg.dead, NULL);
    EXPECT_ERROR(oci_cache_resolve(cache, cfg.dead_ref, NULL, digest, sizeof digest, &err),
                 OCI_E_NETWORK, &err, cfg.dead, NULL);
    CHECK(image == SENTINEL && strcmp(digest, "untouched") == 0);
}

static void test_unsupported(oci_cache *cache) {
    oci_error *err = NULL;
    oci_layer_reader *reader = SENTINEL;
    int fds[1] = {SENTINEL_FD};
    char dst[PATH_CAP];
    make_dir(dst, "unsupported");

    set_context("a layer of unsupported media type (%s)", cfg.odd_ref);
    oci_image *odd = fetch(cache, cfg.odd_ref);
    CHECK(oci_image_layer_count(odd) == 1);
    EXPECT_ERROR(oci_rootfs(cache, odd, dst, NULL, fds, 1, &err), OCI_E_UNSUPPORTED, &err,
                 cfg.odd_media_type, NULL);
    EXPECT_ERROR(oci_fetch_layer(cache, odd, 0, NULL, &reader, &err), OCI_E_UNSUPPORTED, &err,
                 cfg.odd_media_type, NULL);
    CHECK(fds[0] == SENTINEL_FD && reader == SENTINEL);
    CHECK(count_entries(dst) == 0);
    oci_image_free(odd);
}

static void test_corrupt(oci_cache *cache) {
    oci_error *err = NULL;
    int fds[1] = {SENTINEL_FD};
    char dst[PATH_CAP];
    make_dir(dst, "corrupt");

    set_context("a blob whose bytes do not match its digest (%s)", cfg.corrupt_ref);
    oci_image *image = fetch(cache, cfg.corrupt_ref);
    int before = count_open_fds();
    EXPECT_ERROR(oci_rootfs(cache, image, dst, NULL, fds, 1, &err), OCI_E_DIGEST_MISMATCH, &err,
                 cfg.corrupt_digest, NULL);
    CHECK(fds[0] == SENTINEL_FD);
    /* Atomic creation: no tar, and no temporary file left behind either. */
    CHECK(count_regular_files(dst) == 0);
    CHECK(count_open_fds() == before);

    set_context("streaming a corrupt blob with oci_layer_reader_read");
    oci_layer_reader *reader = NULL;
    EXPECT_OK(oci_fetch_layer(cache, image, 0, NULL, &reader, &err), &err);
    if (reader) {
        uint8_t buf[4096];
        size_t n = 0, total = 0;
        int saw_end = 0, reads = 0;
        oci_status status;
        /* The bound only keeps a broken reader from spinning forever. */
        while ((status = oci_layer_reader_read(reader, buf, sizeof buf, &n, &err)) == OCI_OK &&
               reads++ < 100000) {
            if (n == 0) {
                saw_end = 1;
                break;
            }
            total += n;
        }
        /* A mismatch must never look like the end of the layer. */
        CHECK(!saw_end);
        EXPECT_ERROR(status, OCI_E_DIGEST_MISMATCH, &err, NULL, NULL);
        n = 777;
        EXPECT_ERROR(oci_layer_reader_read(reader, buf, sizeof buf, &n, &err),
                     OCI_E_DIGEST_MISMATCH, &err, NULL, NULL);
        CHECK(n == 777);
        oci_layer_reader_free(reader);
    } else {
        CHECK(!"no reader to stream the corrupt layer with");
        CHECK(0);
        CHECK(0);
        CHECK(0);
    }
    oci_image_free(image);
}

static void test_bad_registry_answers(oci_cache *cache) {
    oci_error *err = NULL;
    oci_image *image = SENTINEL;
    char digest[128] = "untouched";

    set_context("a manifest that is not JSON (%s)", cfg.garbled_ref);
    EXPECT_ERROR(oci_fetch_image(cache, cfg.garbled_ref, NULL, NULL, &image, &err),
                 OCI_E_INVALID_CONTENT, &err, "c/garbled", NULL);
    set_context("a registry answering 401 (%s)", cfg.secret_ref);
    EXPECT_ERROR(oci_fetch_image(cache, cfg.secret_ref, NULL, NULL, &image, &err),
                 OCI_E_UNAUTHORIZED, &err, "c/secret", NULL);
    EXPECT_ERROR(oci_cache_resolve(cache, cfg.secret_ref, NULL, digest, sizeof digest, &err),
                 OCI_E_UNAUTHORIZED, &err, "c/secret", NULL);
    CHECK(image == SENTINEL && strcmp(digest, "untouched") == 0);
}

/* One check: `call` failed with `want`, and its error carries the OS error
   number and HTTP status expected (0 for none). Frees the error. */
static void expect_cause_at(struct check_site *site, oci_status status, oci_status want,
                            oci_error **errp, int want_errno, int want_http) {
    oci_error *err = *errp;
    char what[1024];
    int got_errno = oci_error_os_errno(err), got_http = oci_error_http_status(err);
    if (!check_run(site, status == want && err && oci_error_code(err) == want &&
                             got_errno == want_errno && got_http == want_http)) {
        snprintf(what, sizeof what, "%s: got %s, errno %d, HTTP %d; want %s, errno %d, HTTP %d",
                 site->what, status_name(status), got_errno, got_http, status_name(want),
                 want_errno, want_http);
        report_failure(site->file, site->line, what);
        if (err)
            fprintf(stderr, "    message: %s\n", oci_error_message(err));
    }
    oci_error_free(err);
    *errp = NULL;
}

#define EXPECT_CAUSE(call, want, errp, want_errno, want_http)                                    \
    do {                                                                                         \
        CHECK_SITE(#call, 1);                                                                    \
        expect_cause_at(&check_site_, (call), (want), (errp), (want_errno), (want_http));        \
    } while (0)

static void test_error_causes(oci_cache *cache, const oci_image *app) {
    oci_error *err = NULL;
    oci_image *image = SENTINEL;
    char digest[128] = "untouched";
    int fds[LAYERS] = {SENTINEL_FD, SENTINEL_FD, SENTINEL_FD};

    set_context("the OS error and HTTP status behind an error");
    CHECK(oci_error_os_errno(NULL) == 0);
    CHECK(oci_error_http_status(NULL) == 0);
    EXPECT_CAUSE(oci_fetch_image(cache, cfg.missing_tag_ref, NULL, NULL, &image, &err),
                 OCI_E_NOT_FOUND, &err, 0, 404);
    EXPECT_CAUSE(oci_fetch_image(cache, cfg.secret_ref, NULL, NULL, &image, &err),
                 OCI_E_UNAUTHORIZED, &err, 0, 401);
    EXPECT_CAUSE(oci_cache_resolve(cache, cfg.dead_ref, NULL, digest, sizeof digest, &err),
                 OCI_E_NETWORK, &err, ECONNREFUSED, 0);
    /* A read-only file system: EROFS (root ignores file modes, not that). */
    EXPECT_CAUSE(oci_rootfs(cache, app, cfg.read_only_dir, NULL, fds, LAYERS, &err), OCI_E_IO,
                 &err, EROFS, 0);
    /* A full one: refused by the default free-space reserve... */
    EXPECT_CAUSE(oci_rootfs(cache, app, cfg.full_dir, NULL, fds, LAYERS, &err), OCI_E_IO, &err,
                 ENOSPC, 0);
    /* ...and, with no reserve, by the file system itself. */
    oci_cache_options *options = NULL;
    oci_cache *unreserved = NULL;
    CHECK(oci_cache_options_new(&options) == OCI_OK);
    CHECK(oci_cache_options_set_free_space_reserve(options, 0) == OCI_OK);
    EXPECT_OK(oci_cache_new(options, &unreserved, &err), &err);
    oci_cache_options_free(options);
    oci_image *fetched = fetch(unreserved, cfg.app_ref);
    EXPECT_CAUSE(oci_rootfs(unreserved, fetched, cfg.full_dir, NULL, fds, LAYERS, &err), OCI_E_IO,
                 &err, ENOSPC, 0);
    oci_image_free(fetched);
    oci_cache_free(unreserved);
    CHECK(image == SENTINEL && strcmp(digest, "untouched") == 0 &&
          all_fds_are(fds, LAYERS, SENTINEL_FD));
}

static void test_missing_dst(oci_cache *cache, const oci_image *app) {
    oci_error *err = NULL;
    int fds[LAYERS] = {SENTINEL_FD, SENTINEL_FD, SENTINEL_FD};
    int fd = SENTINEL_FD;
    char dst[PATH_CAP];
    snprintf(dst, sizeof dst, "%s/no-such-dir", cfg.tmp);

    set_context("a dst that does not exist (%s)", dst);
    EXPECT_ERROR(oci_rootfs(cache, app, dst, NULL, fds, LAYERS, &err), OCI_E_IO, &err, dst, NULL);
    EXPECT_ERROR(oci_extract_layers(cache, app, dst, NULL, fds, LAYERS, &err), OCI_E_IO, &err, dst,
                 NULL);
    EXPECT_ERROR(oci_extract_layer(cache, app, 0, dst, NULL, &fd, &err), OCI_E_IO, &err, dst, NULL);
    CHECK(fd == SENTINEL_FD && all_fds_are(fds, LAYERS, SENTINEL_FD));
    /* Not created behind the caller's back either. */
    CHECK(access(dst, F_OK) != 0);
}

static void test_cancel(oci_cache *cache, const oci_image *app) {
    oci_error *err = NULL;
    oci_image *image = SENTINEL;
    oci_cancel *cancel = NULL;
    oci_call_options *options = NULL;
    int fds[LAYERS] = {SENTINEL_FD, SENTINEL_FD, SENTINEL_FD};
    char dst[PATH_CAP];
    make_dir(dst, "cancel");

    set_context("a triggered cancel token");
    REQUIRE_OK(oci_cancel_new(&cancel), NULL);
    REQUIRE_OK(oci_call_options_new(&options), NULL);
    CHECK(oci_call_options_set_cancel(options, cancel) == OCI_OK);
    CHECK(oci_cancel_trigger(cancel) == OCI_OK);
    /* A triggered token stays triggered; triggering again is harmless. */
    CHECK(oci_cancel_trigger(cancel) == OCI_OK);
    /* The options hold their own reference: the token outlives this free. */
    oci_cancel_free(cancel);
    EXPECT_ERROR(oci_fetch_image(cache, cfg.app_ref, NULL, options, &image, &err), OCI_E_CANCELED,
                 &err, NULL, NULL);
    EXPECT_ERROR(oci_rootfs(cache, app, dst, options, fds, LAYERS, &err), OCI_E_CANCELED, &err,
                 NULL, NULL);
    CHECK(image == SENTINEL && all_fds_are(fds, LAYERS, SENTINEL_FD));
    CHECK(count_entries(dst) == 0);
    /* Removing the token makes the same options plain again. */
    CHECK(oci_call_options_set_cancel(options, NULL) == OCI_OK);
    image = NULL;
    EXPECT_OK(oci_fetch_image(cache, cfg.app_ref, NULL, options, &image, &err), &err);
    CHECK(image != NULL && image != SENTINEL);
    oci_image_free(image);
    oci_call_options_free(options);
}

static void test_happy_path(oci_cache *cache, const oci_image *app) {
    oci_error *err = NULL;
    char expected_ref[300], dst[PATH_CAP], path[PATH_CAP];
    int fds[LAYERS] = {-1, -1, -1}, more[LAYERS] = {-1, -1, -1};
    int one = -1;
    make_dir(dst, "happy");

    set_context("the getters of %s", cfg.app_ref);
    snprintf(expected_ref, sizeof expected_ref, "%s/c/app:v1", cfg.host);
    CHECK(oci_image_reference(app) && strcmp(oci_image_reference(app), expected_ref) == 0);
    CHECK(oci_image_digest(app) && strcmp(oci_image_digest(app), cfg.app_digest) == 0);
    CHECK(oci_image_config(app) && strstr(oci_image_config(app), "\"diff_ids\""));
    REQUIRE(oci_image_layer_count(app) == LAYERS);
    for (size_t i = 0; i < LAYERS; i++) {
        const struct layer_expect *want = &cfg.layers[i];
        const char *digest = oci_image_layer_digest(app, i);
        const char *diff_id = oci_image_layer_diff_id(app, i);
        const char *media_type = oci_image_layer_media_type(app, i);
        set_context("the getters of layer %zu of %s", i, cfg.app_ref);
        CHECK(digest && strcmp(digest, want->digest) == 0);
        CHECK(diff_id && strcmp(diff_id, want->diff_id) == 0);
        CHECK(media_type && strcmp(media_type, want->media_type) == 0);
        CHECK(oci_image_layer_size(app, i) == want->size);
    }

    set_context("oci_rootfs of %s, cold", cfg.app_ref);
    EXPECT_OK(oci_rootfs(cache, app, dst, NULL, fds, LAYERS, &err), &err);
    for (size_t i = 0; i < LAYERS; i++) {
        set_context("oci_rootfs fd of layer %zu", i);
        check_layer_fd(fds[i], dst, i);
    }
    CHECK(fds[0] != fds[1] && fds[1] != fds[2] && fds[0] != fds[2]);

    set_context("oci_extract_layer 1 of %s", cfg.app_ref);
    EXPECT_OK(oci_extract_layer(cache, app, 1, dst, NULL, &one, &err), &err);
    check_layer_fd(one, dst, 1);
    CHECK(one >= 0 && one != fds[0] && one != fds[1] && one != fds[2]);

    set_context("oci_extract_layers of %s", cfg.app_ref);
    EXPECT_OK(oci_extract_layers(cache, app, dst, NULL, more, LAYERS, &err), &err);
    for (size_t i = 0; i < LAYERS; i++) {
        set_context("oci_extract_layers fd of layer %zu", i);
        check_layer_fd(more[i], dst, i);
    }
    /* Replacing the files did not disturb what the earlier fds read. */
    set_context("the first oci_rootfs fds after the files were replaced");
    for (size_t i = 0; i < LAYERS; i++) {
        struct stat st;
        CHECK(fstat(fds[i], &st) == 0 && st.st_size == cfg.layers[i].tar_size);
    }
    close_fds(fds, LAYERS);
    close_fds(more, LAYERS);
    if (one >= 0)
        close(one);

    set_context("what is under dst after all that");
    /* Each layer tar and its index (dst/tar-index). */
    CHECK(count_regular_files(dst) == 2 * LAYERS);
    for (size_t i = 0; i < LAYERS; i++) {
        layer_path(path, dst, i);
        CHECK(access(path, R_OK) == 0);
    }

    set_context("%s for the host's platform and for %s", cfg.multi_ref, cfg.other_platform);
    {
        oci_image *multi = fetch(cache, cfg.multi_ref);
        oci_image *named = NULL, *other = NULL;
        /* The host's entry is app's manifest: the image digest is that, not the index's. */
        CHECK(strcmp(oci_image_digest(multi), cfg.app_digest) == 0);
        EXPECT_OK(oci_fetch_image(cache, cfg.multi_ref, cfg.host_platform, NULL, &named, &err),
                  &err);
        CHECK(named && strcmp(oci_image_digest(named), cfg.app_digest) == 0);
        oci_image_free(named);
        EXPECT_OK(oci_fetch_image(cache, cfg.multi_ref, cfg.other_platform, NULL, &other, &err),
                  &err);
        CHECK(other && strcmp(oci_image_digest(other), cfg.other_digest) == 0);
        oci_image_free(other);
        oci_image_free(multi);
    }
}

/* Nothing planted in dst is trusted: a FIFO where a layer tar belongs does
 * not hang oci_rootfs (the fast path opens it without blocking and skips
 * it), a symlink to a file outside dst is replaced rather than followed,
 * and both come back as the real layers. Then the free-space reserve
 * setter: a reserve no disk can keep refuses the write with OCI_E_IO
 * naming it and leaves nothing; 0 turns it off. 16 checks. */
static void test_hostile_dst(oci_cache *cache, const oci_image *app) {
    oci_error *err = NULL;
    oci_cache_options *options = NULL;
    oci_cache *strict = NULL, *unlimited = NULL;
    char dst[PATH_CAP], path[PATH_CAP], outside[PATH_CAP], bare[PATH_CAP];
    int fds[LAYERS] = {-1, -1, -1};
    static const char secret[] = "root:$6$secret:19000::::::\n";
    make_dir(dst, "hostile");
    snprintf(outside, sizeof outside, "%s/hostile-shadow", cfg.tmp);
    FILE *f = fopen(outside, "w");
    REQUIRE(f != NULL && fputs(secret, f) >= 0 && fclose(f) == 0);

    set_context("oci_rootfs with a FIFO and a symlink planted in dst");
    EXPECT_OK(oci_rootfs(cache, app, dst, NULL, fds, LAYERS, &err), &err);
    close_fds(fds, LAYERS);
    layer_path(path, dst, 0);
    REQUIRE(unlink(path) == 0 && mkfifo(path, 0666) == 0);
    layer_path(path, dst, 1);
    REQUIRE(unlink(path) == 0 && symlink(outside, path) == 0);
    EXPECT_OK(oci_rootfs(cache, app, dst, NULL, fds, LAYERS, &err), &err);
    for (size_t i = 0; i < LAYERS; i++) {
        struct stat st;
        set_context("layer %zu after the FIFO and the symlink", i);
        layer_path(path, dst, i);
        CHECK(lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0444);
        CHECK(same_content(fds[i], path) &&
              fstat(fds[i], &st) == 0 && st.st_size == cfg.layers[i].tar_size);
    }
    close_fds(fds, LAYERS);
    {
        set_context("the file the symlink pointed at");
        char got[sizeof secret + 16] = {0};
        int fd = open(outside, O_RDONLY);
        CHECK(fd >= 0 && read(fd, got, sizeof got) == (ssize_t)strlen(secret) &&
              strcmp(got, secret) == 0);
        if (fd >= 0)
            close(fd);
    }

    set_context("oci_cache_options_set_free_space_reserve");
    CHECK(oci_cache_options_set_free_space_reserve(NULL, 0) == OCI_E_INVALID_ARGUMENT);
    make_dir(bare, "reserve-dst");
    REQUIRE_OK(oci_cache_options_new(&options), NULL);
    CHECK(oci_cache_options_set_free_space_reserve(options, UINT64_MAX) == OCI_OK);
    REQUIRE_OK(oci_cache_new(options, &strict, &err), err);
    CHECK(oci_cache_options_set_free_space_reserve(options, 0) == OCI_OK);
    REQUIRE_OK(oci_cache_new(options, &unlimited, &err), err);
    oci_cache_options_free(options);
    EXPECT_ERROR(oci_rootfs(strict, app, bare, NULL, fds, LAYERS, &err), OCI_E_IO, &err,
                 "free-space reserve", "(free_space_reserve)");
    CHECK(count_regular_files(bare) == 0);
    EXPECT_OK(oci_rootfs(unlimited, app, bare, NULL, fds, LAYERS, &err), &err);
    close_fds(fds, LAYERS);
    CHECK(count_regular_files(bare) == 2 * LAYERS);
    oci_cache_free(strict);
    oci_cache_free(unlimited);
}

/* A store told not to keep layer blobs holds the manifest and config only. */
static void test_lean_store(void) {
    oci_error *err = NULL;
    oci_cache_options *options = NULL;
    oci_cache *cache = NULL;
    oci_image *app = NULL;
    char store[PATH_CAP], blobs[PATH_CAP + 16], dst[PATH_CAP];
    int fds[LAYERS] = {-1, -1, -1};
    make_dir(store, "lean-store");
    make_dir(dst, "lean-dst");

    set_context("a store without layer blobs, pulling %s", cfg.app_ref);
    REQUIRE_OK(oci_cache_options_new(&options), NULL);
    REQUIRE_OK(oci_cache_options_set_store(options, store), NULL);
    REQUIRE_OK(oci_cache_options_set_keep_layer_blobs(options, false), NULL);
    REQUIRE_OK(oci_cache_new(options, &cache, &err), err);
    oci_cache_options_free(options);
    app = fetch(cache, cfg.app_ref);
    EXPECT_OK(oci_rootfs(cache, app, dst, NULL, fds, LAYERS, &err), &err);
    for (size_t i = 0; i < LAYERS; i++)
        check_layer_fd(fds[i], dst, i);
    close_fds(fds, LAYERS);
    snprintf(blobs, sizeof blobs, "%s/blobs/sha256", store);
    CHECK(count_regular_files(blobs) == 2);
    oci_image_free(app);
    oci_cache_free(cache);
}

#define OCI_MANIFEST_TYPE "application/vnd.oci.image.manifest.v1+json"
#define OCI_INDEX_TYPE "application/vnd.oci.image.index.v1+json"

/* The index of `reference` in `list`, SIZE_MAX if it is not there (which
 * the getters answer with NULL / -1, so checks on it fail visibly). */
static size_t list_find(const oci_image_list *list, const char *reference) {
    for (size_t i = 0; i < oci_image_list_count(list); i++) {
        const char *at = oci_image_list_reference(list, i);
        if (at && reference && strcmp(at, reference) == 0)
            return i;
    }
    return SIZE_MAX;
}

static int same_string(const char *got, const char *want) {
    return got && want && strcmp(got, want) == 0;
}

/* Where a view keeps the index of layer `i`'s tar: dst/tar-index/<alg>/<hex>. */
static void index_path(char *path, const char *dst, size_t i) {
    const char *diff_id = cfg.layers[i].diff_id;
    const char *colon = strchr(diff_id, ':');
    snprintf(path, PATH_CAP, "%s/tar-index/sha256/%s", dst, colon ? colon + 1 : diff_id);
}

/* Three checks: a verify of store and dst re-hashed `checked` files and
 * found `corrupt` of them corrupt, and re-checked `indexes` tar indexes and
 * found `bad_indexes` of them corrupt. Returns the report, or NULL. */
static oci_verify_report *verify(oci_cache *cache, const char *dst, bool remove_corrupt,
                                 uint64_t checked, size_t corrupt, uint64_t indexes,
                                 size_t bad_indexes) {
    oci_error *err = NULL;
    oci_verify_report *report = NULL;
    oci_status status = oci_cache_verify(cache, dst, remove_corrupt, NULL, &report, &err);
    CHECK_E(status == OCI_OK && report != NULL, err);
    oci_error_free(err);
    CHECK(oci_verify_report_checked(report) == checked &&
          oci_verify_report_corrupt_count(report) == corrupt);
    CHECK(oci_verify_report_indexes_checked(report) == indexes &&
          oci_verify_report_corrupt_index_count(report) == bad_indexes);
    return report;
}

/* List, disk usage, remove, prune and verify on a fresh store holding app
 * and both platforms of multi (whose host entry is app's manifest), every
 * expected number worked out from the files themselves. */
static void test_cache_management(void) {
    oci_error *err = NULL;
    oci_cache *cache = NULL, *bare = NULL;
    oci_cache_options *options = NULL;
    oci_image *app = NULL, *multi = NULL, *other = NULL;
    oci_image_list *list = SENTINEL;
    oci_verify_report *report = SENTINEL;
    uint64_t files = 777, bytes = 777, store_bytes = 777, dst_bytes = 777;
    char store[PATH_CAP], blobs[PATH_CAP + 16], dst[PATH_CAP], path[PATH_CAP];
    char real_dst[PATH_CAP], missing[PATH_CAP + 16];
    int fds[LAYERS] = {-1, -1, -1}, other_fd[1] = {-1};
    make_dir(store, "manage-store");
    make_dir(dst, "manage-dst");
    snprintf(blobs, sizeof blobs, "%s/blobs", store);
    snprintf(missing, sizeof missing, "%s/no-such-dir", cfg.tmp);
    cache = open_cache(store);

    set_context("NULL arguments of the cache management calls");
    EXPECT_ERROR(oci_cache_list(NULL, NULL, &list, &err), OCI_E_INVALID_ARGUMENT, &err, "cache",
                 NULL);
    EXPECT_ERROR(oci_cache_list(cache, NULL, NULL, &err), OCI_E_INVALID_ARGUMENT, &err,
                 "list_out", NULL);
    CHECK(oci_cache_list(NULL, NULL, &list, NULL) == OCI_E_INVALID_ARGUMENT);
    EXPECT_ERROR(oci_cache_remove(NULL, cfg.app_ref, NULL, &err), OCI_E_INVALID_ARGUMENT, &err,
                 "cache", NULL);
    EXPECT_ERROR(oci_cache_remove(cache, NULL, NULL, &err), OCI_E_INVALID_ARGUMENT, &err,
                 "reference", NULL);
    EXPECT_ERROR(oci_cache_prune(NULL, dst, NULL, &files, &bytes, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "cache", NULL);
    EXPECT_ERROR(oci_cache_prune(cache, dst, NULL, NULL, &bytes, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "files_out", NULL);
    EXPECT_ERROR(oci_cache_prune(cache, dst, NULL, &files, NULL, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "bytes_out", NULL);
    EXPECT_ERROR(oci_cache_disk_usage(NULL, dst, NULL, &store_bytes, &dst_bytes, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "cache", NULL);
    EXPECT_ERROR(oci_cache_disk_usage(cache, dst, NULL, NULL, &dst_bytes, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "store_bytes_out", NULL);
    EXPECT_ERROR(oci_cache_disk_usage(cache, dst, NULL, &store_bytes, NULL, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "dst_bytes_out", NULL);
    EXPECT_ERROR(oci_cache_verify(NULL, dst, false, NULL, &report, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "cache", NULL);
    EXPECT_ERROR(oci_cache_verify(cache, dst, false, NULL, NULL, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "report_out", NULL);

    set_context("getters of a NULL image list and verify report");
    CHECK(oci_image_list_count(NULL) == 0);
    CHECK(oci_image_list_reference(NULL, 0) == NULL && oci_image_list_digest(NULL, 0) == NULL &&
          oci_image_list_media_type(NULL, 0) == NULL);
    CHECK(oci_image_list_size(NULL, 0) == -1);
    CHECK(oci_verify_report_checked(NULL) == 0 && oci_verify_report_corrupt_count(NULL) == 0 &&
          oci_verify_report_corrupt_path(NULL, 0) == NULL);
    CHECK(oci_verify_report_indexes_checked(NULL) == 0 &&
          oci_verify_report_corrupt_index_count(NULL) == 0 &&
          oci_verify_report_corrupt_index_path(NULL, 0) == NULL);
    CHECK(oci_disk_usage_index_bytes(NULL) == 0 && oci_disk_usage_index_files(NULL) == 0);

    set_context("bad strings and a missing dst for the cache management calls");
    EXPECT_ERROR(oci_cache_remove(cache, "\xff\xfe", NULL, &err), OCI_E_INVALID_ARGUMENT, &err,
                 "UTF-8", "reference");
    EXPECT_ERROR(oci_cache_remove(cache, "Not A Reference!", NULL, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "Not A Reference!", NULL);
    EXPECT_ERROR(oci_cache_verify(cache, "\xff\xfe", false, NULL, &report, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "UTF-8", "dst");
    EXPECT_ERROR(oci_cache_prune(cache, missing, NULL, &files, &bytes, &err), OCI_E_IO, &err,
                 missing, NULL);
    EXPECT_ERROR(oci_cache_disk_usage(cache, missing, NULL, &store_bytes, &dst_bytes, &err),
                 OCI_E_IO, &err, missing, NULL);

    set_context("the cache management calls on a cache without a store");
    REQUIRE_OK(oci_cache_options_new(&options), NULL);
    REQUIRE_OK(oci_cache_options_set_worker_threads(options, 1), NULL);
    REQUIRE_OK(oci_cache_new(options, &bare, &err), err);
    oci_cache_options_free(options);
    EXPECT_ERROR(oci_cache_list(bare, NULL, &list, &err), OCI_E_INVALID_ARGUMENT, &err, "store",
                 NULL);
    EXPECT_ERROR(oci_cache_remove(bare, cfg.app_ref, NULL, &err), OCI_E_INVALID_ARGUMENT, &err,
                 "store", NULL);
    EXPECT_ERROR(oci_cache_prune(bare, dst, NULL, &files, &bytes, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "store", NULL);
    EXPECT_ERROR(oci_cache_disk_usage(bare, NULL, NULL, &store_bytes, &dst_bytes, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "store", NULL);
    EXPECT_ERROR(oci_cache_verify(bare, NULL, false, NULL, &report, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "store", NULL);
    oci_cache_free(bare);
    /* Outputs are written only on success. */
    CHECK(list == SENTINEL && report == SENTINEL);
    CHECK(files == 777 && bytes == 777 && store_bytes == 777 && dst_bytes == 777);

    set_context("pulling %s and both platforms of %s into a fresh store", cfg.app_ref,
                cfg.multi_ref);
    app = fetch(cache, cfg.app_ref);
    multi = fetch(cache, cfg.multi_ref);
    REQUIRE_OK(oci_fetch_image(cache, cfg.multi_ref, cfg.other_platform, NULL, &other, &err), err);
    REQUIRE_OK(oci_rootfs(cache, app, dst, NULL, fds, LAYERS, &err), err);
    close_fds(fds, LAYERS);
    REQUIRE_OK(oci_rootfs(cache, other, dst, NULL, other_fd, 1, &err), err);
    close_fds(other_fd, 1);
    REQUIRE(oci_image_layer_count(other) == 1);

    /* What each image reaches, from the files: app's manifest, config and
     * layer blobs; multi's index plus app's and the other platform's. */
    long long app_size = (long long)strlen(oci_image_config(app));
    blob_path(path, store, cfg.app_digest);
    app_size += file_size(path);
    for (size_t i = 0; i < LAYERS; i++)
        app_size += cfg.layers[i].size;
    long long other_only = (long long)strlen(oci_image_config(other)) +
                           oci_image_layer_size(other, 0);
    blob_path(path, store, cfg.multi_digest);
    other_only += file_size(path);
    blob_path(path, store, cfg.other_digest);
    other_only += file_size(path);
    tar_path(path, dst, oci_image_layer_diff_id(other, 0));
    long long other_tar = file_size(path);
    /* The tars alone: their indexes (dst/tar-index) are counted apart. */
    char tars[PATH_CAP + 128];
    snprintf(tars, sizeof tars, "%s/sha256", dst);
    char indexes[PATH_CAP + 128];
    snprintf(indexes, sizeof indexes, "%s/tar-index/sha256/%s", dst,
             oci_image_layer_diff_id(other, 0) + strlen("sha256:"));
    long long other_index = file_size(indexes);
    snprintf(indexes, sizeof indexes, "%s/tar-index", dst);
    int store_files = 0, dst_files = 0, index_files = 0;
    long long store_total = sum_file_sizes(blobs, &store_files);
    long long dst_total = sum_file_sizes(tars, &dst_files);
    long long index_total = sum_file_sizes(indexes, &index_files);
    CHECK(index_files == LAYERS + 1 && other_index > 0);
    CHECK(store_files == 9 && store_total == app_size + other_only);
    CHECK(dst_files == LAYERS + 1 && other_tar > 0);

    set_context("oci_cache_list with %s and %s recorded", cfg.app_ref, cfg.multi_ref);
    list = NULL;
    EXPECT_OK(oci_cache_list(cache, NULL, &list, &err), &err);
    CHECK(oci_image_list_count(list) == 2);
    {
        size_t a = list_find(list, oci_image_reference(app));
        size_t m = list_find(list, oci_image_reference(multi));
        CHECK(same_string(oci_image_reference(multi), cfg.multi_ref));
        CHECK(same_string(oci_image_list_digest(list, a), cfg.app_digest));
        CHECK(same_string(oci_image_list_media_type(list, a), OCI_MANIFEST_TYPE));
        CHECK(oci_image_list_size(list, a) > 0 && oci_image_list_size(list, a) == app_size);
        CHECK(same_string(oci_image_list_digest(list, m), cfg.multi_digest));
        CHECK(same_string(oci_image_list_media_type(list, m), OCI_INDEX_TYPE));
        /* The index reaches every blob of the store. */
        CHECK(oci_image_list_size(list, m) == store_total);
    }
    set_context("image list getters given an index out of range");
    CHECK(oci_image_list_reference(list, 2) == NULL && oci_image_list_digest(list, 2) == NULL &&
          oci_image_list_media_type(list, 2) == NULL && oci_image_list_size(list, 2) == -1);
    CHECK(oci_image_list_reference(list, SIZE_MAX) == NULL &&
          oci_image_list_size(list, SIZE_MAX) == -1);
    oci_image_list_free(list);
    list = NULL;

    set_context("oci_cache_disk_usage");
    EXPECT_OK(oci_cache_disk_usage(cache, dst, NULL, &store_bytes, &dst_bytes, &err), &err);
    CHECK(store_bytes == (uint64_t)store_total && dst_bytes == (uint64_t)dst_total);
    store_bytes = dst_bytes = 777;
    EXPECT_OK(oci_cache_disk_usage(cache, NULL, NULL, &store_bytes, &dst_bytes, &err), &err);
    CHECK(store_bytes == (uint64_t)store_total && dst_bytes == 0);

    set_context("oci_cache_disk_usage_report with the tar indexes");
    {
        oci_disk_usage *usage = NULL;
        EXPECT_OK(oci_cache_disk_usage_report(cache, dst, NULL, &usage, &err), &err);
        CHECK(oci_disk_usage_store_bytes(usage) == (uint64_t)store_total &&
              oci_disk_usage_store_files(usage) == (uint64_t)store_files);
        CHECK(oci_disk_usage_dst_bytes(usage) == (uint64_t)dst_total &&
              oci_disk_usage_dst_files(usage) == (uint64_t)dst_files);
        CHECK(oci_disk_usage_index_bytes(usage) == (uint64_t)index_total &&
              oci_disk_usage_index_files(usage) == (uint64_t)index_files);
        oci_disk_usage_free(usage);
        usage = NULL;
        EXPECT_OK(oci_cache_disk_usage_report(cache, NULL, NULL, &usage, &err), &err);
        CHECK(oci_disk_usage_dst_files(usage) == 0 && oci_disk_usage_index_bytes(usage) == 0 &&
              oci_disk_usage_index_files(usage) == 0);
        oci_disk_usage_free(usage);
    }

    set_context("oci_cache_remove of %s", cfg.multi_ref);
    EXPECT_OK(oci_cache_remove(cache, cfg.multi_ref, NULL, &err), &err);
    EXPECT_ERROR(oci_cache_remove(cache, cfg.multi_ref, NULL, &err), OCI_E_NOT_FOUND, &err,
                 "c/multi:v1", NULL);
    EXPECT_OK(oci_cache_list(cache, NULL, &list, &err), &err);
    CHECK(oci_image_list_count(list) == 1 &&
          same_string(oci_image_list_reference(list, 0), oci_image_reference(app)) &&
          oci_image_list_size(list, 0) == app_size);
    oci_image_list_free(list);
    list = NULL;
    {
        /* Its blobs stay until a prune. */
        int now_files = 0;
        CHECK(sum_file_sizes(blobs, &now_files) == store_total && now_files == 9);
    }

    set_context("oci_cache_prune after removing %s", cfg.multi_ref);
    files = bytes = 777;
    EXPECT_OK(oci_cache_prune(cache, dst, NULL, &files, &bytes, &err), &err);
    {
        int store_after = 0, dst_after = 0, index_after = 0;
        long long bytes_after = sum_file_sizes(blobs, &store_after);
        bytes_after += sum_file_sizes(tars, &dst_after);
        bytes_after += sum_file_sizes(indexes, &index_after);
        /* The index, the other platform's manifest, config and layer blob,
         * and its layer tar and tar index: what multi alone reached. */
        CHECK(files == 6 && bytes == (uint64_t)(other_only + other_tar + other_index));
        CHECK(files == (uint64_t)(store_files + dst_files + index_files - store_after -
                                  dst_after - index_after) &&
              bytes == (uint64_t)(store_total + dst_total + index_total - bytes_after));
        CHECK(store_after == 5 && dst_after == LAYERS && index_after == LAYERS);
    }
    blob_path(path, store, cfg.multi_digest);
    CHECK(file_size(path) == -1);
    blob_path(path, store, cfg.other_digest);
    CHECK(file_size(path) == -1);
    blob_path(path, store, oci_image_layer_digest(other, 0));
    CHECK(file_size(path) == -1);
    tar_path(path, dst, oci_image_layer_diff_id(other, 0));
    CHECK(file_size(path) == -1);
    blob_path(path, store, cfg.app_digest);
    CHECK(file_size(path) > 0);
    for (size_t i = 0; i < LAYERS; i++) {
        set_context("app's layer %zu after the prune", i);
        blob_path(path, store, cfg.layers[i].digest);
        CHECK(file_size(path) == cfg.layers[i].size);
        layer_path(path, dst, i);
        CHECK(file_size(path) == cfg.layers[i].tar_size);
    }
    set_context("a second oci_cache_prune");
    files = bytes = 777;
    EXPECT_OK(oci_cache_prune(cache, dst, NULL, &files, &bytes, &err), &err);
    CHECK(files == 0 && bytes == 0);

    set_context("oci_cache_verify of an intact store and dst");
    report = verify(cache, dst, false, 5 + LAYERS, 0, LAYERS, 0);
    CHECK(oci_verify_report_corrupt_path(report, 0) == NULL &&
          oci_verify_report_corrupt_index_path(report, 0) == NULL);
    oci_verify_report_free(report);
    report = verify(cache, NULL, false, 5, 0, 0, 0);
    oci_verify_report_free(report);

    set_context("oci_cache_verify of a dst whose layer 0 tar was overwritten");
    layer_path(path, dst, 0);
    CHECK(chmod(path, 0600) == 0);
    {
        FILE *file = fopen(path, "w");
        REQUIRE(file != NULL);
        fputs("not the layer you are looking for\n", file);
        fclose(file);
    }
    resolved_path(real_dst, dst);
    char expected[PATH_CAP];
    layer_path(expected, real_dst, 0);
    /* Found, and left alone when not asked to remove it. */
    report = verify(cache, dst, false, 5 + LAYERS, 1, LAYERS, 0);
    CHECK(same_string(oci_verify_report_corrupt_path(report, 0), expected));
    CHECK(oci_verify_report_corrupt_path(report, 1) == NULL);
    oci_verify_report_free(report);
    CHECK(access(path, F_OK) == 0);
    report = verify(cache, dst, true, 5 + LAYERS, 1, LAYERS, 0);
    CHECK(same_string(oci_verify_report_corrupt_path(report, 0), expected));
    oci_verify_report_free(report);
    CHECK(access(path, F_OK) != 0);

    set_context("oci_rootfs after verify removed a corrupt layer tar");
    EXPECT_OK(oci_rootfs(cache, app, dst, NULL, fds, LAYERS, &err), &err);
    for (size_t i = 0; i < LAYERS; i++)
        check_layer_fd(fds[i], dst, i);
    close_fds(fds, LAYERS);
    /* Restored with the right content: it hashes to its name again. */
    report = verify(cache, dst, false, 5 + LAYERS, 0, LAYERS, 0);
    oci_verify_report_free(report);

    set_context("oci_cache_verify of a dst whose layer 1 tar index was overwritten");
    index_path(path, dst, 1);
    long long index_size = file_size(path);
    CHECK(index_size > 0 && chmod(path, 0600) == 0);
    {
        FILE *file = fopen(path, "w");
        REQUIRE(file != NULL);
        fputs("not an index\n", file);
        fclose(file);
    }
    index_path(expected, real_dst, 1);
    /* Listed apart from the blobs and tars, and kept when not asked to remove it. */
    report = verify(cache, dst, false, 5 + LAYERS, 0, LAYERS, 1);
    CHECK(same_string(oci_verify_report_corrupt_index_path(report, 0), expected));
    CHECK(oci_verify_report_corrupt_index_path(report, 1) == NULL &&
          oci_verify_report_corrupt_path(report, 0) == NULL);
    oci_verify_report_free(report);
    CHECK(file_size(path) == (long long)strlen("not an index\n"));
    report = verify(cache, dst, true, 5 + LAYERS, 0, LAYERS, 1);
    CHECK(same_string(oci_verify_report_corrupt_index_path(report, 0), expected));
    oci_verify_report_free(report);
    CHECK(access(path, F_OK) != 0);
    report = verify(cache, dst, false, 5 + LAYERS, 0, LAYERS - 1, 0);
    oci_verify_report_free(report);

    set_context("oci_view_open after verify removed a corrupt tar index");
    {
        oci_view *view = NULL;
        EXPECT_OK(oci_view_open(cache, app, dst, NULL, &view, &err), &err);
        oci_view_free(view);
    }
    /* Written again from its tar, the same size as before. */
    CHECK(file_size(path) == index_size);
    report = verify(cache, dst, false, 5 + LAYERS, 0, LAYERS, 0);
    oci_verify_report_free(report);

    oci_image_free(other);
    oci_image_free(multi);
    oci_image_free(app);
    oci_cache_free(cache);
}

/* Triggers `cancel` after `ms` milliseconds, from its own thread. */
struct later_trigger {
    oci_cancel *cancel;
    long ms;
};

static void *trigger_later(void *arg) {
    const struct later_trigger *later = arg;
    struct timespec pause = {later->ms / 1000, (later->ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
    oci_cancel_trigger(later->cancel);
    return NULL;
}

/* 24 checks: while another process holds the store's lock, each call that
 * needs it (prune, remove, a fetch to record) ends with OCI_E_TIMEOUT on a
 * 300 ms deadline, and with OCI_E_CANCELED when its token is triggered
 * 200 ms in, within a second either way and changing nothing; once the
 * lock is free, the same calls succeed. */
static void test_store_lock_wait(void) {
    oci_error *err = NULL;
    oci_image *image = SENTINEL;
    oci_image_list *list = NULL;
    oci_call_options *deadline = NULL, *cancelable = NULL;
    uint64_t files = 777, bytes = 777;
    char store[PATH_CAP], lock_path[PATH_CAP + 32];
    struct timespec start;
    make_dir(store, "lock-store");
    oci_cache *cache = open_cache(store);
    /* app recorded; multi recorded then removed, so a prune has work. */
    oci_image_free(fetch(cache, cfg.app_ref));
    oci_image_free(fetch(cache, cfg.multi_ref));
    REQUIRE_OK(oci_cache_remove(cache, cfg.multi_ref, NULL, &err), err);
    REQUIRE_OK(oci_call_options_new(&deadline), NULL);
    REQUIRE_OK(oci_call_options_set_deadline_ms(deadline, 300), NULL);

    snprintf(lock_path, sizeof lock_path, "%s/.oci-cache.lock", store);
    int lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    REQUIRE(lock_fd >= 0 && flock(lock_fd, LOCK_EX | LOCK_NB) == 0);

    set_context("a 300 ms deadline while another process holds the store's lock");
    clock_gettime(CLOCK_MONOTONIC, &start);
    EXPECT_ERROR(oci_cache_prune(cache, NULL, deadline, &files, &bytes, &err), OCI_E_TIMEOUT, &err,
                 "prune", NULL);
    CHECK(seconds_since(&start) >= 0.3 && seconds_since(&start) < 1.0);
    clock_gettime(CLOCK_MONOTONIC, &start);
    EXPECT_ERROR(oci_cache_remove(cache, cfg.app_ref, deadline, &err), OCI_E_TIMEOUT, &err,
                 "remove", NULL);
    CHECK(seconds_since(&start) >= 0.3 && seconds_since(&start) < 1.0);
    clock_gettime(CLOCK_MONOTONIC, &start);
    EXPECT_ERROR(oci_fetch_image(cache, cfg.multi_ref, NULL, deadline, &image, &err),
                 OCI_E_TIMEOUT, &err, "c/multi:v1", NULL);
    CHECK(seconds_since(&start) >= 0.3 && seconds_since(&start) < 1.0);
    CHECK(image == SENTINEL && files == 777 && bytes == 777);

    set_context("a cancel token triggered while another process holds the store's lock");
    for (int call = 0; call < 3; call++) {
        oci_cancel *cancel = NULL;
        pthread_t thread;
        REQUIRE_OK(oci_cancel_new(&cancel), NULL);
        REQUIRE_OK(oci_call_options_new(&cancelable), NULL);
        REQUIRE_OK(oci_call_options_set_cancel(cancelable, cancel), NULL);
        struct later_trigger later = {cancel, 200};
        clock_gettime(CLOCK_MONOTONIC, &start);
        REQUIRE(pthread_create(&thread, NULL, trigger_later, &later) == 0);
        oci_status status;
        if (call == 0)
            status = oci_cache_prune(cache, NULL, cancelable, &files, &bytes, &err);
        else if (call == 1)
            status = oci_cache_remove(cache, cfg.app_ref, cancelable, &err);
        else
            status = oci_fetch_image(cache, cfg.multi_ref, NULL, cancelable, &image, &err);
        EXPECT_ERROR(status, OCI_E_CANCELED, &err, NULL, NULL);
        CHECK(seconds_since(&start) >= 0.2 && seconds_since(&start) < 1.0);
        REQUIRE(pthread_join(thread, NULL) == 0);
        oci_call_options_free(cancelable);
        oci_cancel_free(cancel);
    }
    CHECK(image == SENTINEL && files == 777 && bytes == 777);

    set_context("listing, which needs no lock, while another process holds it");
    EXPECT_OK(oci_cache_list(cache, deadline, &list, &err), &err);
    CHECK(oci_image_list_count(list) == 1 &&
          same_string(oci_image_list_reference(list, 0), cfg.app_ref));
    oci_image_list_free(list);
    list = NULL;

    set_context("the same calls once the store's lock is free");
    close(lock_fd);
    image = NULL;
    EXPECT_OK(oci_fetch_image(cache, cfg.multi_ref, NULL, deadline, &image, &err), &err);
    CHECK(image != NULL && image != SENTINEL);
    oci_image_free(image);
    EXPECT_OK(oci_cache_remove(cache, cfg.app_ref, deadline, &err), &err);
    EXPECT_OK(oci_cache_remove(cache, cfg.multi_ref, deadline, &err), &err);
    /* Both images' blobs: app's manifest and config, and multi's index;
     * fetching stores no layer blob. */
    EXPECT_OK(oci_cache_prune(cache, NULL, deadline, &files, &bytes, &err), &err);
    CHECK(files == 3);
    EXPECT_OK(oci_cache_list(cache, NULL, &list, &err), &err);
    CHECK(oci_image_list_count(list) == 0);
    oci_image_list_free(list);
    oci_call_options_free(deadline);
    oci_cache_free(cache);
}

static void test_fetch_layer_range(oci_cache *cache, const oci_image *app) {
    oci_error *err = NULL;
    oci_layer_reader *reader = SENTINEL;
    int fd = SENTINEL_FD;
    char dst[PATH_CAP];
    make_dir(dst, "range");

    set_context("a layer index out of range");
    EXPECT_ERROR(oci_fetch_layer(cache, app, LAYERS, NULL, &reader, &err), OCI_E_INVALID_ARGUMENT,
                 &err, "3", NULL);
    EXPECT_ERROR(oci_extract_layer(cache, app, LAYERS, dst, NULL, &fd, &err),
                 OCI_E_INVALID_ARGUMENT, &err, "3", NULL);
    CHECK(reader == SENTINEL && fd == SENTINEL_FD);
}

/* Runs in the forked child: 0 when every handle refused work and the fd
 * still read, else the number of problems (printed). */
static int forked_child(oci_cache *cache, oci_image *app, const char *dst, int fd) {
    int problems = 0;
    oci_error *err = NULL;
    oci_image *image = SENTINEL;
    int fds[LAYERS] = {SENTINEL_FD, SENTINEL_FD, SENTINEL_FD};
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);

    oci_status status = oci_fetch_image(cache, cfg.app_ref, NULL, NULL, &image, &err);
    if (status != OCI_E_FORKED || image != SENTINEL || oci_error_code(err) != OCI_E_FORKED) {
        fprintf(stderr, "child: oci_fetch_image gave %s: %s\n", status_name(status),
                err ? oci_error_message(err) : "(no error)");
        problems++;
    }
    oci_error_free(err);
    err = NULL;
    status = oci_rootfs(cache, app, dst, NULL, fds, LAYERS, &err);
    if (status != OCI_E_FORKED || !all_fds_are(fds, LAYERS, SENTINEL_FD)) {
        fprintf(stderr, "child: oci_rootfs gave %s: %s\n", status_name(status),
                err ? oci_error_message(err) : "(no error)");
        problems++;
    }
    oci_error_free(err);
    /* "At once": no waiting on a runtime whose threads did not survive. */
    if (seconds_since(&start) > 5.0) {
        fprintf(stderr, "child: the refused calls took %.1f s\n", seconds_since(&start));
        problems++;
    }

    size_t len = 0;
    unsigned char *content = read_all(fd, &len);
    if (!content || (long long)len != cfg.layers[0].tar_size) {
        fprintf(stderr, "child: the pre-fork fd read %zu bytes, want %lld\n", len,
                cfg.layers[0].tar_size);
        problems++;
    }
    free(content);
    close(fd);

    /* Must return, not wait for threads that exist only in the parent. */
    oci_image_free(app);
    oci_cache_free(cache);
    return problems;
}

static void test_fork(oci_cache *cache, oci_image *app) {
    oci_error *err = NULL;
    char dst[PATH_CAP];
    int fds[LAYERS] = {-1, -1, -1};
    int verdict_pipe[2];
    make_dir(dst, "fork");

    set_context("handles used in a forked child");
    EXPECT_OK(oci_rootfs(cache, app, dst, NULL, fds, LAYERS, &err), &err);
    REQUIRE(pipe(verdict_pipe) == 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        /* A hang becomes a failure (SIGALRM) instead of a stuck test. */
        alarm(20);
        close(verdict_pipe[0]);
        int ok = forked_child(cache, app, dst, fds[0]) == 0;
        /* The verdict goes through a pipe as well as the exit code: under
         * valgrind the exit code is valgrind's (see below). */
        ssize_t written = write(verdict_pipe[1], ok ? "y" : "n", 1);
        _exit(ok && written == 1 ? 0 : 1);
    }
    close(verdict_pipe[1]);
    char verdict = 0;
    ssize_t got;
    while ((got = read(verdict_pipe[0], &verdict, 1)) < 0 && errno == EINTR)
        ;
    close(verdict_pipe[0]);
    int status = 0;
    pid_t waited;
    while ((waited = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
        ;
    /* The child frees a cache whose runtime threads did not survive the
     * fork, and the library leaks that runtime on purpose (shutting it down
     * would wait forever). Under valgrind or LeakSanitizer those leaks make
     * the child exit with the checker's error code; OCI_TEST_LEAK_EXIT
     * names it. The child's own checks still count, through the verdict. */
    const char *leak_exit = getenv("OCI_TEST_LEAK_EXIT");
    int exit_ok = waited == pid && WIFEXITED(status) &&
                  (WEXITSTATUS(status) == 0 ||
                   (leak_exit && WEXITSTATUS(status) == atoi(leak_exit)));
    if (waited == pid && WIFSIGNALED(status))
        fprintf(stderr, "fork child died of signal %d\n", WTERMSIG(status));
    else if (!exit_ok)
        fprintf(stderr, "fork child exited with %d\n", WEXITSTATUS(status));
    CHECK(got == 1 && verdict == 'y' && exit_ok);

    /* The parent's handles were untouched by the child's frees. */
    {
        int again[LAYERS] = {-1, -1, -1};
        EXPECT_OK(oci_rootfs(cache, app, dst, NULL, again, LAYERS, &err), &err);
        close_fds(again, LAYERS);
    }
    close_fds(fds, LAYERS);
}

static void test_fd_growth(oci_cache *cache, const oci_image *app) {
    oci_error *err = NULL;
    char dst[PATH_CAP];
    int fds[LAYERS] = {-1, -1, -1};
    int failures = 0;
    make_dir(dst, "fd-growth");

    set_context("200 warm oci_rootfs calls");
    EXPECT_OK(oci_rootfs(cache, app, dst, NULL, fds, LAYERS, &err), &err);
    close_fds(fds, LAYERS);
    int before = count_open_fds();
    for (int round = 0; round < 200; round++) {
        if (oci_rootfs(cache, app, dst, NULL, fds, LAYERS, &err) != OCI_OK) {
            if (!failures++)
                fprintf(stderr, "warm oci_rootfs: %s\n", oci_error_message(err));
            oci_error_free(err);
            err = NULL;
            continue;
        }
        close_fds(fds, LAYERS);
    }
    CHECK(failures == 0);
    CHECK(count_open_fds() == before);
}

struct worker {
    pthread_t thread;
    oci_cache *cache;
    const oci_image *image;
    const char *dst;
    int failures;
    char first_failure[512];
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    for (int round = 0; round < 20; round++) {
        int fds[LAYERS] = {-1, -1, -1};
        oci_error *err = NULL;
        oci_status status = oci_rootfs(w->cache, w->image, w->dst, NULL, fds, LAYERS, &err);
        if (status != OCI_OK) {
            if (!w->failures++)
                snprintf(w->first_failure, sizeof w->first_failure, "%s: %s", status_name(status),
                         err ? oci_error_message(err) : "(no error)");
            oci_error_free(err);
            continue;
        }
        close_fds(fds, LAYERS);
    }
    return NULL;
}

static void test_threads(oci_cache *cache, const oci_image *app) {
    char dst[PATH_CAP];
    struct worker workers[4];
    make_dir(dst, "threads");

    set_context("4 threads sharing a cache and an image, 20 oci_rootfs each into one dst");
    for (int i = 0; i < 4; i++) {
        workers[i] = (struct worker){.cache = cache, .image = app, .dst = dst};
        REQUIRE(pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        REQUIRE(pthread_join(workers[i].thread, NULL) == 0);
        if (workers[i].failures)
            fprintf(stderr, "thread %d: %d failures, first: %s\n", i, workers[i].failures,
                    workers[i].first_failure);
        CHECK(workers[i].failures == 0);
    }
    CHECK(count_regular_files(dst) == 2 * LAYERS);
}

/* A socket on 127.0.0.1 that listens and never accepts: connections
 * complete in the kernel and no byte ever comes back. Its host:port goes
 * to `host`; close the fd when done. */
static int silent_listener(char *host, size_t cap) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    REQUIRE(bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0);
    REQUIRE(listen(fd, 16) == 0);
    REQUIRE(getsockname(fd, (struct sockaddr *)&addr, &len) == 0);
    snprintf(host, cap, "127.0.0.1:%u", (unsigned)ntohs(addr.sin_port));
    return fd;
}

/* The caches a progress callback frees at its first report. */
struct freeing_progress {
    oci_cache *cache; /* the cache of the call reporting */
    oci_cache *other; /* a cache whose last reference this is */
    int reports;
};

static int32_t free_at_first_report(void *user_data, size_t layer, const char *digest,
                                    uint64_t downloaded, int64_t download_total, uint64_t written,
                                    int64_t written_total) {
    struct freeing_progress *p = user_data;
    (void)layer, (void)digest, (void)downloaded, (void)download_total, (void)written,
        (void)written_total;
    if (p->reports++ == 0) {
        oci_cache_free(p->cache);
        oci_cache_free(p->other);
    }
    return 0;
}

struct delayed_free {
    pthread_t thread;
    oci_cache *cache;
};

static void *free_after_200_ms(void *arg) {
    struct delayed_free *d = arg;
    struct timespec pause = {0, 200 * 1000 * 1000};
    nanosleep(&pause, NULL);
    oci_cache_free(d->cache);
    return NULL;
}

/* oci_cache_free while a call on the cache runs: from its own progress
 * callback, and from another thread. The call holds its own reference, so
 * it completes as if nothing happened. */
static void test_free_during_calls(void) {
    oci_error *err = NULL;
    char dst[PATH_CAP];
    int fds[LAYERS] = {-1, -1, -1};
    make_dir(dst, "free-in-callback");

    set_context("oci_cache_free from a progress callback during a cold oci_rootfs");
    oci_cache *cache = open_cache(NULL);
    oci_image *image = fetch(cache, cfg.app_ref);
    /* `other` has a running runtime and no image: its last reference goes
     * in the callback, inside the call's runtime, where a runtime must be
     * shut down in the background. */
    oci_cache *other = open_cache(NULL);
    char digest[80];
    EXPECT_OK(oci_cache_resolve(other, cfg.app_ref, NULL, digest, sizeof digest, &err), &err);
    struct freeing_progress freeing = {.cache = cache, .other = other};
    oci_call_options *options = NULL;
    REQUIRE_OK(oci_call_options_new(&options), NULL);
    REQUIRE_OK(oci_call_options_set_progress(options, free_at_first_report, &freeing), NULL);
    EXPECT_OK(oci_rootfs(cache, image, dst, options, fds, LAYERS, &err), &err);
    CHECK(freeing.reports > 1);
    for (size_t i = 0; i < LAYERS; i++) {
        set_context("oci_rootfs fd of layer %zu, the cache freed during the call", i);
        check_layer_fd(fds[i], dst, i);
    }
    close_fds(fds, LAYERS);
    oci_call_options_free(options);
    /* The image held the last reference to the cache. */
    oci_image_free(image);

    set_context("oci_cache_free from another thread during a call on a silent registry");
    char silent[64], reference[128];
    int listener = silent_listener(silent, sizeof silent);
    snprintf(reference, sizeof reference, "%s/c/app:v1", silent);
    struct delayed_free freer = {.cache = open_cache(NULL)};
    REQUIRE_OK(oci_call_options_new(&options), NULL);
    REQUIRE_OK(oci_call_options_set_deadline_ms(options, 1000), NULL);
    REQUIRE(pthread_create(&freer.thread, NULL, free_after_200_ms, &freer) == 0);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    /* No image keeps this cache alive: only the call's own reference. */
    EXPECT_ERROR(oci_cache_resolve(freer.cache, reference, options, digest, sizeof digest, &err),
                 OCI_E_TIMEOUT, &err, "deadline", NULL);
    double took = seconds_since(&start);
    CHECK(took > 0.9 && took < 20.0);
    REQUIRE(pthread_join(freer.thread, NULL) == 0);
    oci_call_options_free(options);
    close(listener);
}

/* A zero-byte read is refused, so that n_out == 0 means only the end. */
static void test_read_cap_zero(oci_cache *cache, const oci_image *app) {
    oci_error *err = NULL;
    oci_layer_reader *reader = NULL;
    uint8_t buf[64];
    size_t n = 777;

    set_context("oci_layer_reader_read with cap 0");
    REQUIRE_OK(oci_fetch_layer(cache, app, 0, NULL, &reader, &err), err);
    EXPECT_ERROR(oci_layer_reader_read(reader, buf, 0, &n, &err), OCI_E_INVALID_ARGUMENT, &err,
                 "cap", NULL);
    CHECK(n == 777);
    /* It changed nothing: the layer still reads from its start. */
    EXPECT_OK(oci_layer_reader_read(reader, buf, sizeof buf, &n, &err), &err);
    CHECK(n > 0 && n <= sizeof buf);
    oci_layer_reader_free(reader);
}

/* Runs in pid 1 of a new pid namespace: makes a cache and starts its
 * runtime, then forks into another new pid namespace, whose first process
 * has pid 1 too. 0 when the grandchild was refused with OCI_E_FORKED and
 * its free returned; else the number of problems (printed). */
static int pid_namespace_parent(int verdict_fd) {
    if (getpid() != 1) {
        fprintf(stderr, "pidns: the first child has pid %d, want 1\n", (int)getpid());
        return 1;
    }
    oci_cache *cache = open_cache(NULL);
    oci_error *err = NULL;
    char digest[80];
    /* A pinned digest resolves without the network, on the runtime. */
    char pinned[300];
    snprintf(pinned, sizeof pinned, "%s/c/app@%s", cfg.host, cfg.app_digest);
    oci_status status = oci_cache_resolve(cache, pinned, NULL, digest, sizeof digest, &err);
    if (status != OCI_OK) {
        fprintf(stderr, "pidns: resolve before the fork gave %s\n", status_name(status));
        oci_error_free(err);
        return 1;
    }
    if (unshare(NEW_PID_NAMESPACE) != 0) {
        fprintf(stderr, "pidns: unshare(CLONE_NEWPID): %s\n", strerror(errno));
        return 1;
    }
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        int problems = 0;
        if (getpid() != 1) {
            fprintf(stderr, "pidns: the grandchild has pid %d, want 1\n", (int)getpid());
            problems++;
        }
        err = NULL;
        status = oci_cache_resolve(cache, pinned, NULL, digest, sizeof digest, &err);
        if (status != OCI_E_FORKED || oci_error_code(err) != OCI_E_FORKED ||
            !strstr(oci_error_message(err), "pid namespace")) {
            fprintf(stderr, "pidns: the grandchild's resolve gave %s: %s\n", status_name(status),
                    err ? oci_error_message(err) : "(no error)");
            problems++;
        }
        oci_error_free(err);
        /* Must return: the runtime's threads are in the parent only. */
        oci_cache_free(cache);
        ssize_t written = write(verdict_fd, problems ? "n" : "y", 1);
        _exit(problems == 0 && written == 1 ? 0 : 1);
    }
    int wstatus = 0;
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR)
        ;
    oci_cache_free(cache);
    return 0;
}

/* Fork detection where the pid cannot tell: pid 1 forking pid 1. */
static void test_fork_same_pid(void) {
    int verdict_pipe[2];
    set_context("a handle used in a forked child with the same pid, in a new pid namespace");
    REQUIRE(pipe(verdict_pipe) == 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(verdict_pipe[0]);
        if (unshare(NEW_PID_NAMESPACE) != 0) {
            fprintf(stderr, "pidns: unshare(CLONE_NEWPID): %s\n", strerror(errno));
            _exit(1);
        }
        pid_t init = fork();
        if (init == 0)
            _exit(pid_namespace_parent(verdict_pipe[1]) == 0 ? 0 : 1);
        if (init < 0)
            _exit(1);
        /* A pid 1 ignores its own alarm: a hang there is ended from here,
         * and SIGKILL to a namespace's init ends every process in it. */
        int wstatus = 0;
        struct timespec start, pause = {0, 20 * 1000 * 1000};
        clock_gettime(CLOCK_MONOTONIC, &start);
        while (waitpid(init, &wstatus, WNOHANG) == 0) {
            if (seconds_since(&start) > 30.0) {
                fprintf(stderr, "pidns: the namespace's processes hung; killing them\n");
                kill(init, SIGKILL);
                waitpid(init, &wstatus, 0);
                _exit(1);
            }
            nanosleep(&pause, NULL);
        }
        _exit(WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 1);
    }
    close(verdict_pipe[1]);
    char verdict = 0;
    ssize_t got;
    while ((got = read(verdict_pipe[0], &verdict, 1)) < 0 && errno == EINTR)
        ;
    close(verdict_pipe[0]);
    int status = 0;
    pid_t waited;
    while ((waited = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
        ;
    /* As in test_fork: a checker's leak exit code is fine, the verdict counts. */
    const char *leak_exit = getenv("OCI_TEST_LEAK_EXIT");
    int exit_ok = waited == pid && WIFEXITED(status) &&
                  (WEXITSTATUS(status) == 0 ||
                   (leak_exit && WEXITSTATUS(status) == atoi(leak_exit)));
    if (waited == pid && WIFSIGNALED(status))
        fprintf(stderr, "pidns child died of signal %d\n", WTERMSIG(status));
    else if (!exit_ok)
        fprintf(stderr, "pidns child exited with %d\n", WEXITSTATUS(status));
    CHECK(got == 1 && verdict == 'y');
    CHECK(exit_ok);
}

/* Last: takes over the shared cache and image and frees them, the cache
 * first (under valgrind a cache costs seconds, so the test makes just one). */
static void test_free_order(oci_cache *cache, oci_image *app) {
    oci_error *err = NULL;
    char dst[PATH_CAP], path[PATH_CAP];
    int fds[LAYERS] = {-1, -1, -1};
    oci_layer_reader *reader = NULL;
    make_dir(dst, "free-order");

    set_context("freeing the cache before its image, fds and reader");
    oci_image *image = app;
    oci_image *multi = fetch(cache, cfg.multi_ref);
    EXPECT_OK(oci_rootfs(cache, image, dst, NULL, fds, LAYERS, &err), &err);
    EXPECT_OK(oci_fetch_layer(cache, image, 1, NULL, &reader, &err), &err);

    /* The usual order for one image, the other order for the rest. */
    oci_image_free(multi);
    oci_cache_free(cache);
    CHECK(oci_image_reference(image) && strstr(oci_image_reference(image), "/c/app:v1"));
    CHECK(oci_image_layer_count(image) == LAYERS);
    CHECK(oci_image_layer_diff_id(image, 2) &&
          strcmp(oci_image_layer_diff_id(image, 2), cfg.layers[2].diff_id) == 0);
    oci_image_free(image);

    for (size_t i = 0; i < LAYERS; i++) {
        set_context("reading the fd of layer %zu after both frees", i);
        layer_path(path, dst, i);
        CHECK(fds[i] >= 0 && same_content(fds[i], path));
    }
    close_fds(fds, LAYERS);

    set_context("reading a layer reader to its end after the cache and image were freed");
    if (reader) {
        uint8_t buf[8192];
        size_t n = 0, total = 0;
        oci_status status;
        int reads = 0;
        while ((status = oci_layer_reader_read(reader, buf, sizeof buf, &n, &err)) == OCI_OK &&
               n > 0 && reads++ < 100000)
            total += n;
        EXPECT_OK(status, &err);
        CHECK((long long)total == cfg.layers[1].tar_size);
        /* The end stays the end. */
        n = 777;
        EXPECT_OK(oci_layer_reader_read(reader, buf, sizeof buf, &n, &err), &err);
        CHECK(n == 0);
        oci_layer_reader_free(reader);
    } else {
        CHECK(!"no reader");
        CHECK(0);
        CHECK(0);
        CHECK(0);
    }
}

/* With OCI_TEST_TIMINGS set, each test's wall time goes to stderr: valgrind
 * makes some of them slow, and the driver has a time budget. */
#define TIMED(call)                                                                              \
    do {                                                                                         \
        struct timespec timed_start_;                                                            \
        clock_gettime(CLOCK_MONOTONIC, &timed_start_);                                           \
        call;                                                                                    \
        if (getenv("OCI_TEST_TIMINGS"))                                                          \
            fprintf(stderr, "%-50s %6.2f s\n", #call, seconds_since(&timed_start_));             \
    } while (0)

int main(void) {
    /* A dead peer must fail a call, not kill the test. */
    signal(SIGPIPE, SIG_IGN);
    load_config();

    TIMED(test_version());
    TIMED(test_free_null());

    /* With a store, as a runtime would run it: tags resolve locally once fetched. */
    char store[PATH_CAP];
    snprintf(store, sizeof store, "%s/store", cfg.tmp);
    oci_cache *cache = open_cache(store);
    oci_image *app = fetch(cache, cfg.app_ref);

    TIMED(test_null_arguments(cache, app));
    TIMED(test_getters(app));
    TIMED(test_bad_strings(cache, app));
    TIMED(test_not_found(cache));
    TIMED(test_resolve(cache));
    TIMED(test_fds_too_small(cache, app));
    TIMED(test_network(cache));
    TIMED(test_unsupported(cache));
    TIMED(test_corrupt(cache));
    TIMED(test_bad_registry_answers(cache));
    TIMED(test_error_causes(cache, app));
    TIMED(test_missing_dst(cache, app));
    TIMED(test_cancel(cache, app));
    TIMED(test_happy_path(cache, app));
    TIMED(test_hostile_dst(cache, app));
    TIMED(test_fetch_layer_range(cache, app));
    TIMED(test_lean_store());
    TIMED(test_cache_management());
    TIMED(test_store_lock_wait());
    TIMED(test_fork(cache, app));
    TIMED(test_fork_same_pid());
    TIMED(test_free_during_calls());
    TIMED(test_read_cap_zero(cache, app));
    TIMED(test_fd_growth(cache, app));
    TIMED(test_threads(cache, app));
    TIMED(test_free_order(cache, app));
    finish(0);
    return failed ? 1 : 0;
}
