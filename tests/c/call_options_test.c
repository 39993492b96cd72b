/*
 * Call options (deadline, stall timeout, progress callback) and registry
 * options (credentials, auth file, CA certificates) through the C API.
 * Driven by tests/registry_access.rs, which starts the registries and sets:
 *   OCI_TEST_HOST        plain registry with c/app:v1 (two gzip layers)
 *   OCI_TEST_AUTH_HOST   htpasswd registry with the same c/app:v1
 *   OCI_TEST_TLS_HOST    HTTPS registry (by name) with the same c/app:v1
 *   OCI_TEST_CA          its certificate (PEM)
 *   OCI_TEST_STALL_HOST  fake registry: c/stall:v1, whose blob stalls
 *   OCI_TEST_SILENT_HOST a listener that never answers
 *   OCI_TEST_USER, OCI_TEST_PASSWORD, OCI_TEST_AUTH_FILE (for AUTH_HOST)
 *   OCI_TEST_LAYER{0,1}_{DIGEST,SIZE,TAR_SIZE}, OCI_TEST_TMP
 * Every check runs whatever the earlier ones gave. It ends with
 * "plan: N checks" and "P passed, F failed" (tests/c/checks.h): the driver
 * wants P == N, so a check that silently stops running is a failure too.
 */
#include "oci_cache.h"

#include "checks.h"

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Failed runs of checks; checks.h tallies the rest. */
static int failed;

#define CHECK(cond, ...)                                         \
    do {                                                         \
        CHECK_SITE(#cond, CHECK_PLANNED(cond));                  \
        if (!check_run(&check_site_, (cond) != 0)) {             \
            failed++;                                            \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            printf(__VA_ARGS__);                                 \
            printf("\n");                                        \
        }                                                        \
    } while (0)

#define LAYERS 2

static const char *layer_digest[LAYERS];
static int64_t layer_size[LAYERS];
static int64_t tar_size[LAYERS];
static const char *tmp_dir;

static const char *env(const char *name) {
    const char *value = getenv(name);
    if (value == NULL || *value == '\0') {
        printf("missing environment variable %s\n", name);
        exit(2);
    }
    return value;
}

static char *format(const char *fmt, const char *a, const char *b) {
    size_t n = strlen(fmt) + strlen(a) + (b ? strlen(b) : 0) + 1;
    char *out = malloc(n);
    if (out == NULL) {
        exit(3);
    }
    snprintf(out, n, fmt, a, b ? b : "");
    return out;
}

/* How many times slower than a plain run this one may be: the driver sets
 * OCI_TEST_SLOWDOWN under valgrind. It scales the upper bounds of timing
 * checks, never the lower ones. */
static double slowdown(void) {
    const char *value = getenv("OCI_TEST_SLOWDOWN");
    double factor = value ? atof(value) : 1.0;
    return factor > 1.0 ? factor : 1.0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *message(const oci_error *err) {
    const char *text = oci_error_message(err);
    return text ? text : "(no error)";
}

/* A fresh directory under OCI_TEST_TMP. */
static char *make_dir(const char *name) {
    char *path = format("%s/%s", tmp_dir, name);
    if (mkdir(path, 0755) != 0) {
        printf("mkdir %s failed\n", path);
        exit(2);
    }
    return path;
}

/* Non-directory entries under dir, recursively (hidden ones included);
 * with temp_only, only the library's temp files (".tmp-*"). */
static int count_entries(const char *dir, int temp_only) {
    DIR *d = opendir(dir);
    if (d == NULL) {
        return 0;
    }
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) {
            continue;
        }
        char *path = format("%s/%s", dir, entry->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            count += count_entries(path, temp_only);
        } else if (!temp_only || strncmp(entry->d_name, ".tmp-", 5) == 0) {
            count++;
        }
        free(path);
    }
    closedir(d);
    return count;
}

static int count_files(const char *dir) { return count_entries(dir, 0); }

/* Appends the paths of non-directory entries under dir to out (cap bytes). */
static void list_files(const char *dir, char *out, size_t cap) {
    DIR *d = opendir(dir);
    if (d == NULL) {
        return;
    }
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) {
            continue;
        }
        char *path = format("%s/%s", dir, entry->d_name);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            list_files(path, out, cap);
        } else {
            size_t used = strlen(out);
            snprintf(out + used, cap - used, " %s (%lld bytes)", path, (long long)st.st_size);
        }
        free(path);
    }
    closedir(d);
}

static const char *describe_files(const char *dir) {
    static char text[4096];
    text[0] = '\0';
    list_files(dir, text, sizeof text);
    return text;
}

static void close_fds(int *fds, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
        fds[i] = -1;
    }
}

/* ------------------------------------------------------------------------ */
/* Progress recording */

typedef struct {
    pthread_t caller;
    int calls;
    int off_thread;
    atomic_int inside;
    int overlapping;
    int bad_layer;
    int bad_digest;
    int bad_download_total;
    int bad_written_total;
    int went_back;
    int seen[LAYERS];
    int mid_transfer[LAYERS];
    uint64_t downloaded[LAYERS];
    uint64_t written[LAYERS];
    int64_t written_total[LAYERS];
    /* Return 1 from this call on (0: never). */
    int cancel_at;
    /* Calls oci_fetch_image(reenter, reenter_ref) from the first report. */
    oci_cache *reenter;
    const char *reenter_ref;
    int reentered;
    oci_status reenter_status;
    oci_status reenter_code;
    int reenter_image_written;
} recorder;

static void recorder_init(recorder *r) {
    memset(r, 0, sizeof *r);
    atomic_init(&r->inside, 0);
    r->caller = pthread_self();
    for (int i = 0; i < LAYERS; i++) {
        r->written_total[i] = -2;
    }
}

static int32_t on_progress(void *user_data, size_t layer, const char *digest,
                           uint64_t downloaded, int64_t download_total, uint64_t written,
                           int64_t written_total) {
    recorder *r = user_data;
    if (atomic_fetch_add(&r->inside, 1) != 0) {
        r->overlapping++;
    }
    r->calls++;
    if (!pthread_equal(pthread_self(), r->caller)) {
        r->off_thread++;
    }
    if (layer >= LAYERS) {
        r->bad_layer++;
    } else {
        if (digest == NULL || strcmp(digest, layer_digest[layer]) != 0) {
            r->bad_digest++;
        }
        if (download_total != layer_size[layer]) {
            r->bad_download_total++;
        }
        if (written_total != -1 && written_total != tar_size[layer]) {
            r->bad_written_total++;
        }
        if (downloaded < r->downloaded[layer] || written < r->written[layer]) {
            r->went_back++;
        }
        if (downloaded > 0 && downloaded < (uint64_t)layer_size[layer]) {
            r->mid_transfer[layer]++;
        }
        r->seen[layer]++;
        r->downloaded[layer] = downloaded;
        r->written[layer] = written;
        r->written_total[layer] = written_total;
    }
    if (r->reenter != NULL && !r->reentered) {
        r->reentered = 1;
        oci_image *image = NULL;
        oci_error *err = NULL;
        r->reenter_status = oci_fetch_image(r->reenter, r->reenter_ref, NULL, NULL, &image, &err);
        r->reenter_code = oci_error_code(err);
        r->reenter_image_written = image != NULL;
        oci_image_free(image);
        oci_error_free(err);
    }
    int32_t result = (r->cancel_at > 0 && r->calls >= r->cancel_at) ? 1 : 0;
    atomic_fetch_sub(&r->inside, 1);
    return result;
}

/* ------------------------------------------------------------------------ */

static oci_cache *open_cache(oci_cache_options *options) {
    oci_cache *cache = NULL;
    oci_error *err = NULL;
    oci_status status = oci_cache_new(options, &cache, &err);
    if (status != OCI_OK) {
        printf("oci_cache_new: %d %s\n", status, message(err));
        exit(2);
    }
    oci_cache_options_free(options);
    return cache;
}

static oci_cache_options *new_options(void) {
    oci_cache_options *options = NULL;
    if (oci_cache_options_new(&options) != OCI_OK) {
        exit(2);
    }
    return options;
}

static oci_call_options *new_call_options(void) {
    oci_call_options *options = NULL;
    if (oci_call_options_new(&options) != OCI_OK) {
        exit(2);
    }
    return options;
}

/* oci_fetch_image then oci_rootfs into dst (when not NULL); 3 checks. */
static void pull_ok(const char *what, oci_cache *cache, const char *ref, const char *dst) {
    oci_image *image = NULL;
    oci_error *err = NULL;
    oci_status status = oci_fetch_image(cache, ref, NULL, NULL, &image, &err);
    CHECK(status == OCI_OK, "%s: oci_fetch_image %s: %d %s", what, ref, status, message(err));
    oci_error_free(err);
    err = NULL;
    int fds[4] = {-1, -1, -1, -1};
    status = dst ? oci_rootfs(cache, image, dst, NULL, fds, 4, &err) : OCI_OK;
    CHECK(status == OCI_OK, "%s: oci_rootfs: %d %s", what, status, message(err));
    CHECK(dst == NULL || (fds[0] >= 0 && fds[1] >= 0 && fds[2] == -1),
          "%s: fds %d %d %d", what, fds[0], fds[1], fds[2]);
    close_fds(fds, 4);
    oci_error_free(err);
    oci_image_free(image);
}

/* oci_fetch_image must fail with `expected`, naming `host` and not giving
   away `secret` (may be NULL); 3 checks. */
static void fetch_fails(const char *what, oci_cache *cache, const char *ref, oci_status expected,
                        const char *host, const char *secret) {
    oci_image *image = NULL;
    oci_error *err = NULL;
    oci_status status = oci_fetch_image(cache, ref, NULL, NULL, &image, &err);
    CHECK(status == expected && oci_error_code(err) == expected && image == NULL,
          "%s: expected %d, got %d: %s", what, expected, status, message(err));
    CHECK(err != NULL && strstr(message(err), host) != NULL, "%s: message does not name %s: %s",
          what, host, message(err));
    CHECK(secret == NULL || strstr(message(err), secret) == NULL,
          "%s: message gives away the password: %s", what, message(err));
    oci_image_free(image);
    oci_error_free(err);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    const char *host = env("OCI_TEST_HOST");
    const char *auth_host = env("OCI_TEST_AUTH_HOST");
    const char *tls_host = env("OCI_TEST_TLS_HOST");
    const char *ca = env("OCI_TEST_CA");
    const char *stall_host = env("OCI_TEST_STALL_HOST");
    const char *silent_host = env("OCI_TEST_SILENT_HOST");
    const char *user = env("OCI_TEST_USER");
    const char *password = env("OCI_TEST_PASSWORD");
    const char *auth_file = env("OCI_TEST_AUTH_FILE");
    tmp_dir = env("OCI_TEST_TMP");
    for (int i = 0; i < LAYERS; i++) {
        char name[64];
        snprintf(name, sizeof name, "OCI_TEST_LAYER%d_DIGEST", i);
        layer_digest[i] = env(name);
        snprintf(name, sizeof name, "OCI_TEST_LAYER%d_SIZE", i);
        layer_size[i] = atoll(env(name));
        snprintf(name, sizeof name, "OCI_TEST_LAYER%d_TAR_SIZE", i);
        tar_size[i] = atoll(env(name));
    }
    char *ref = format("%s/c/app:v1", host, NULL);
    char *auth_ref = format("%s/c/app:v1", auth_host, NULL);
    char *tls_ref = format("%s/c/app:v1", tls_host, NULL);
    char *stall_ref = format("%s/c/stall:v1", stall_host, NULL);
    char *silent_ref = format("%s/c/hangs:v1", silent_host, NULL);

    /* NULL arguments of the new setters: 12 checks. */
    {
        oci_cache_options *options = new_options();
        oci_call_options *call = new_call_options();
        CHECK(oci_call_options_set_deadline_ms(NULL, 5) == OCI_E_INVALID_ARGUMENT, "deadline NULL");
        CHECK(oci_call_options_set_stall_timeout_ms(NULL, 5) == OCI_E_INVALID_ARGUMENT, "stall NULL");
        CHECK(oci_call_options_set_progress(NULL, on_progress, NULL) == OCI_E_INVALID_ARGUMENT,
              "progress NULL options");
        CHECK(oci_call_options_set_progress(call, NULL, NULL) == OCI_OK, "removing progress");
        CHECK(oci_cache_options_set_auth_file(NULL, auth_file) == OCI_E_INVALID_ARGUMENT, "auth file");
        CHECK(oci_cache_options_set_auth_file(options, NULL) == OCI_E_INVALID_ARGUMENT, "auth file");
        CHECK(oci_cache_options_add_credentials(options, NULL, user, password) ==
                  OCI_E_INVALID_ARGUMENT, "credentials host");
        CHECK(oci_cache_options_add_credentials(options, auth_host, NULL, password) ==
                  OCI_E_INVALID_ARGUMENT, "credentials user");
        CHECK(oci_cache_options_add_credentials(options, auth_host, user, NULL) ==
                  OCI_E_INVALID_ARGUMENT, "credentials password");
        CHECK(oci_cache_options_add_ca_certificate(options, NULL) == OCI_E_INVALID_ARGUMENT, "ca");
        CHECK(oci_cache_options_add_host_ca_certificate(options, NULL, ca) == OCI_E_INVALID_ARGUMENT,
              "host ca host");
        CHECK(oci_cache_options_add_host_ca_certificate(options, tls_host, NULL) ==
                  OCI_E_INVALID_ARGUMENT, "host ca path");
        oci_call_options_free(call);
        oci_cache_options_free(options);
    }

    /* The time limits of every network step: NULL options, then values
     * and 0 (off) accepted: 8 checks. */
    {
        oci_cache_options *options = new_options();
        CHECK(oci_cache_options_set_connect_timeout_ms(NULL, 5) == OCI_E_INVALID_ARGUMENT,
              "connect timeout NULL");
        CHECK(oci_cache_options_set_tls_handshake_timeout_ms(NULL, 5) == OCI_E_INVALID_ARGUMENT,
              "TLS handshake timeout NULL");
        CHECK(oci_cache_options_set_response_timeout_ms(NULL, 5) == OCI_E_INVALID_ARGUMENT,
              "response timeout NULL");
        CHECK(oci_cache_options_set_stall_timeout_ms(NULL, 5) == OCI_E_INVALID_ARGUMENT,
              "cache stall timeout NULL");
        CHECK(oci_cache_options_set_connect_timeout_ms(options, 0) == OCI_OK, "connect off");
        CHECK(oci_cache_options_set_tls_handshake_timeout_ms(options, 2000) == OCI_OK, "TLS 2 s");
        CHECK(oci_cache_options_set_response_timeout_ms(options, UINT64_MAX) == OCI_OK,
              "response timeout UINT64_MAX");
        CHECK(oci_cache_options_set_stall_timeout_ms(options, 0) == OCI_OK, "stall off");
        oci_cache_options_free(options);
    }

    /* A server that accepts and never answers, with DEFAULT options:
     * OCI_E_TIMEOUT within 90 s, naming the host and the step: 4 checks. */
    {
        oci_cache *defaults = open_cache(NULL);
        oci_image *image = NULL;
        oci_error *err = NULL;
        double started = now();
        oci_status status = oci_fetch_image(defaults, silent_ref, NULL, NULL, &image, &err);
        double took = now() - started;
        CHECK(status == OCI_E_TIMEOUT && oci_error_code(err) == OCI_E_TIMEOUT,
              "default limits: %d %s", status, message(err));
        CHECK(image == NULL, "default limits: image written on failure");
        CHECK(took >= 29.0 && took <= 90.0, "default limits ended the call after %.3f s", took);
        CHECK(err != NULL && strstr(message(err), silent_host) != NULL &&
                  strstr(message(err), "waiting for response headers") != NULL &&
                  strstr(message(err), "(response_timeout)") != NULL,
              "default limits: the message names neither host nor step: %s", message(err));
        oci_error_free(err);
        oci_cache_free(defaults);
    }

    /* A cache's response timeout, and a call's stall timeout 0 (off for
     * the call) leaving the cache's limits alone: 3 checks. */
    {
        oci_cache_options *options = new_options();
        oci_cache_options_set_response_timeout_ms(options, 300);
        oci_cache *quick = open_cache(options);
        oci_call_options *call = new_call_options();
        CHECK(oci_call_options_set_stall_timeout_ms(call, 0) == OCI_OK, "call stall off");
        oci_image *image = NULL;
        oci_error *err = NULL;
        double started = now();
        oci_status status = oci_fetch_image(quick, silent_ref, NULL, call, &image, &err);
        double took = now() - started;
        CHECK(status == OCI_E_TIMEOUT && err != NULL &&
                  strstr(message(err), "nothing within 300ms (response_timeout)") != NULL,
              "response timeout: %d %s", status, message(err));
        CHECK(took >= 0.29 && took <= 2.0 * slowdown(),
              "a 300 ms response timeout ended the call after %.3f s", took);
        oci_error_free(err);
        oci_call_options_free(call);
        oci_cache_free(quick);
    }

    oci_cache *cache = open_cache(NULL);

    /* Deadline against a server that never answers: 5 checks. */
    {
        oci_call_options *call = new_call_options();
        CHECK(oci_call_options_set_deadline_ms(call, 300) == OCI_OK, "set deadline");
        oci_image *image = NULL;
        oci_error *err = NULL;
        double started = now();
        oci_status status = oci_fetch_image(cache, silent_ref, NULL, call, &image, &err);
        double took = now() - started;
        CHECK(status == OCI_E_TIMEOUT && oci_error_code(err) == OCI_E_TIMEOUT,
              "deadline: %d %s", status, message(err));
        CHECK(image == NULL, "deadline: image written on failure");
        CHECK(took >= 0.29 && took <= 1.5 * slowdown(),
              "a 300 ms deadline ended the call after %.3f s", took);
        oci_error_free(err);
        err = NULL;
        /* 0 removes the deadline: 1 ms then 0 leaves none. */
        oci_call_options_set_deadline_ms(call, 1);
        oci_call_options_set_deadline_ms(call, 0);
        status = oci_fetch_image(cache, ref, NULL, call, &image, &err);
        CHECK(status == OCI_OK, "deadline set to 0: %d %s", status, message(err));
        oci_image_free(image);
        oci_error_free(err);
        oci_call_options_free(call);
    }

    /* Stall timeout mid-blob: 5 checks. */
    {
        char *dst = make_dir("stalled");
        oci_call_options *call = new_call_options();
        CHECK(oci_call_options_set_stall_timeout_ms(call, 300) == OCI_OK, "set stall timeout");
        oci_image *image = NULL;
        oci_error *err = NULL;
        oci_status status = oci_fetch_image(cache, stall_ref, NULL, call, &image, &err);
        CHECK(status == OCI_OK, "stall: oci_fetch_image: %d %s", status, message(err));
        oci_error_free(err);
        err = NULL;
        int fds[2] = {-1, -1};
        double started = now();
        status = oci_rootfs(cache, image, dst, call, fds, 2, &err);
        double took = now() - started;
        CHECK(status == OCI_E_TIMEOUT && oci_error_code(err) == OCI_E_TIMEOUT,
              "stall: oci_rootfs: %d %s", status, message(err));
        CHECK(took >= 0.29 && took <= 10.0 * slowdown(),
              "a 300 ms stall timeout ended oci_rootfs after %.3f s", took);
        CHECK(count_files(dst) == 0 && fds[0] == -1, "stall: files left:%s; fd %d",
              describe_files(dst), fds[0]);
        close_fds(fds, 2);
        oci_error_free(err);
        oci_image_free(image);
        oci_call_options_free(call);
        free(dst);
    }

    oci_image *image = NULL;
    {
        oci_error *err = NULL;
        oci_status status = oci_fetch_image(cache, ref, NULL, NULL, &image, &err);
        if (status != OCI_OK) {
            printf("oci_fetch_image %s: %d %s\n", ref, status, message(err));
            return 2;
        }
    }

    /* Progress, cold then warm: 22 checks. */
    {
        char *dst = make_dir("progress");
        recorder r;
        recorder_init(&r);
        oci_call_options *call = new_call_options();
        CHECK(oci_call_options_set_progress(call, on_progress, &r) == OCI_OK, "set progress");
        oci_image *again = NULL;
        oci_error *err = NULL;
        oci_status status = oci_fetch_image(cache, ref, NULL, call, &again, &err);
        CHECK(status == OCI_OK && r.calls == 0, "fetch_image reported %d times (status %d %s)",
              r.calls, status, message(err));
        oci_image_free(again);
        oci_error_free(err);
        err = NULL;
        int fds[LAYERS] = {-1, -1};
        status = oci_rootfs(cache, image, dst, call, fds, LAYERS, &err);
        CHECK(status == OCI_OK, "progress: oci_rootfs: %d %s", status, message(err));
        oci_error_free(err);
        err = NULL;
        CHECK(r.calls > 0, "no progress reported");
        CHECK(r.off_thread == 0, "%d of %d reports came on another thread", r.off_thread, r.calls);
        CHECK(r.overlapping == 0, "%d reports overlapped another", r.overlapping);
        CHECK(r.bad_layer == 0 && r.bad_digest == 0, "bad layer index %d times, bad digest %d times",
              r.bad_layer, r.bad_digest);
        CHECK(r.bad_download_total == 0, "%d reports had a wrong download_total",
              r.bad_download_total);
        CHECK(r.bad_written_total == 0, "%d reports had a written_total neither -1 nor the tar size",
              r.bad_written_total);
        CHECK(r.went_back == 0, "%d reports went back", r.went_back);
        for (int i = 0; i < LAYERS; i++) {
            CHECK(r.seen[i] > 0, "layer %d never reported", i);
            CHECK(r.downloaded[i] == (uint64_t)layer_size[i],
                  "layer %d: last downloaded %llu, blob size %lld", i,
                  (unsigned long long)r.downloaded[i], (long long)layer_size[i]);
            CHECK(r.written[i] == (uint64_t)tar_size[i], "layer %d: last written %llu, tar size %lld",
                  i, (unsigned long long)r.written[i], (long long)tar_size[i]);
            CHECK(r.written_total[i] == -1 || r.written_total[i] == tar_size[i],
                  "layer %d: last written_total %lld", i, (long long)r.written_total[i]);
            struct stat st;
            CHECK(fds[i] >= 0 && fstat(fds[i], &st) == 0 && st.st_size == tar_size[i],
                  "layer %d: fd %d is not the tar", i, fds[i]);
        }
        CHECK(r.mid_transfer[1] > 0, "no report while the big layer was under way (%d reports)",
              r.seen[1]);
        close_fds(fds, LAYERS);
        recorder_init(&r);
        status = oci_rootfs(cache, image, dst, call, fds, LAYERS, &err);
        CHECK(status == OCI_OK && r.calls == 0, "warm oci_rootfs: %d %s, %d reports", status,
              message(err), r.calls);
        close_fds(fds, LAYERS);
        oci_error_free(err);
        oci_call_options_free(call);
        free(dst);
    }

    /* A callback returning 1 cancels: 4 checks. */
    {
        char *dst = make_dir("canceled");
        recorder r;
        recorder_init(&r);
        r.cancel_at = 1;
        oci_call_options *call = new_call_options();
        CHECK(oci_call_options_set_progress(call, on_progress, &r) == OCI_OK, "set progress");
        int fds[LAYERS] = {-1, -1};
        oci_error *err = NULL;
        oci_status status = oci_rootfs(cache, image, dst, call, fds, LAYERS, &err);
        CHECK(status == OCI_E_CANCELED && oci_error_code(err) == OCI_E_CANCELED,
              "canceling callback: %d %s", status, message(err));
        CHECK(r.calls == 1, "the callback was called %d times, though it canceled the first time",
              r.calls);
        /* Reports trail the work: a layer finished before the callback's
         * answer arrived stays, whole and verified; nothing is half-written. */
        CHECK(count_entries(dst, 1) == 0 && fds[0] == -1 && fds[1] == -1,
              "canceled: temp files left:%s; fds %d %d", describe_files(dst), fds[0], fds[1]);
        close_fds(fds, LAYERS);
        oci_error_free(err);
        oci_call_options_free(call);
        free(dst);
    }

    /* A blocking call from inside the callback: 5 checks. */
    {
        char *dst = make_dir("reentrant");
        recorder r;
        recorder_init(&r);
        r.reenter = cache;
        r.reenter_ref = ref;
        oci_call_options *call = new_call_options();
        CHECK(oci_call_options_set_progress(call, on_progress, &r) == OCI_OK, "set progress");
        int fds[LAYERS] = {-1, -1};
        oci_error *err = NULL;
        oci_status status = oci_rootfs(cache, image, dst, call, fds, LAYERS, &err);
        CHECK(status == OCI_OK, "oci_rootfs around the reentrant callback: %d %s", status,
              message(err));
        CHECK(r.reentered, "the callback never ran");
        CHECK(r.reenter_status == OCI_E_INVALID_ARGUMENT && r.reenter_code == OCI_E_INVALID_ARGUMENT,
              "oci_fetch_image from the callback: status %d, error code %d", r.reenter_status,
              r.reenter_code);
        CHECK(!r.reenter_image_written, "oci_fetch_image from the callback wrote an image");
        close_fds(fds, LAYERS);
        oci_error_free(err);
        oci_call_options_free(call);
        free(dst);
    }

    /* htpasswd: none, right and wrong credentials, auth file: 3+3+3+3 checks. */
    {
        char *dst = make_dir("auth");
        oci_cache *anonymous = open_cache(NULL);
        fetch_fails("no credentials", anonymous, auth_ref, OCI_E_UNAUTHORIZED, auth_host, password);
        oci_cache_free(anonymous);

        oci_cache_options *options = new_options();
        oci_cache_options_add_credentials(options, auth_host, user, password);
        oci_cache *with = open_cache(options);
        pull_ok("credentials", with, auth_ref, dst);
        oci_cache_free(with);

        const char *wrong = "c-Wr0ng-pass-5k";
        options = new_options();
        oci_cache_options_add_credentials(options, auth_host, user, wrong);
        oci_cache *bad = open_cache(options);
        fetch_fails("wrong password", bad, auth_ref, OCI_E_UNAUTHORIZED, auth_host, wrong);
        oci_cache_free(bad);

        char *file_dst = make_dir("authfile");
        options = new_options();
        oci_cache_options_set_auth_file(options, auth_file);
        oci_cache *from_file = open_cache(options);
        pull_ok("auth file", from_file, auth_ref, file_dst);
        oci_cache_free(from_file);
        free(dst);
        free(file_dst);
    }

    /* TLS: no CA, CA, host CA, CA for another host: 3+3+3+3 checks. */
    {
        char *dst = make_dir("tls");
        oci_cache *plain = open_cache(NULL);
        fetch_fails("no CA", plain, tls_ref, OCI_E_NETWORK, tls_host, NULL);
        oci_cache_free(plain);

        oci_cache_options *options = new_options();
        oci_cache_options_add_ca_certificate(options, ca);
        oci_cache *trusting = open_cache(options);
        pull_ok("CA", trusting, tls_ref, dst);
        oci_cache_free(trusting);

        options = new_options();
        oci_cache_options_add_host_ca_certificate(options, tls_host, ca);
        oci_cache *host_trusting = open_cache(options);
        pull_ok("host CA", host_trusting, tls_ref, NULL);
        oci_cache_free(host_trusting);

        options = new_options();
        oci_cache_options_add_host_ca_certificate(options, "127.0.0.1:1", ca);
        oci_cache *elsewhere = open_cache(options);
        fetch_fails("CA for another host", elsewhere, tls_ref, OCI_E_NETWORK, tls_host, NULL);
        oci_cache_free(elsewhere);
        free(dst);
    }

    oci_image_free(image);
    oci_cache_free(cache);
    free(ref);
    free(auth_ref);
    free(tls_ref);
    free(stall_ref);
    free(silent_ref);
    return checks_report(failed, 1) == 0 ? 0 : 1;
}
