/*
 * options_test.c: shows from C that the cache options no other C test
 * exercises act, each beside the case without it: oci_cache_options_add_mirror,
 * _set_hosts_dir, _set_attempts, _set_max_layer_size, _set_range_threshold
 * and _set_range_connections, _set_platform (a
 * non-host platform of a multi-platform index) and _add_insecure_registry
 * (plain HTTP to a registry reached by a name that is not loopback), and
 * oci_cache_disk_usage_report with its accessors.
 *
 * tests/c_api.rs builds it and runs it in a private mount namespace whose
 * /etc/hosts maps OCI_TEST_INSECURE_NAME to 127.0.0.1, passing hosts and
 * expected values in OCI_TEST_* variables. It ends with "plan: N checks"
 * and "P passed, F failed" (tests/c/checks.h): the driver wants P == N.
 */
#include "oci_cache.h"
#include "checks.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define PATH_CAP 4096
#define LAYERS 3

/* Failed runs of checks; checks.h tallies the rest. */
static int failed;

static void check_at(struct check_site *site, int ok, oci_error **errp) {
    if (!check_run(site, ok)) {
        failed++;
        fprintf(stderr, "options_test.c:%d: FAILED: %s\n", site->line, site->what);
        if (errp && *errp)
            fprintf(stderr, "    oci_error %d: %s\n", (int)oci_error_code(*errp),
                    oci_error_message(*errp));
    }
    if (errp) {
        oci_error_free(*errp);
        *errp = NULL;
    }
}

/* A check; frees *errp (if errp is not NULL) either way. */
#define CHECK_E(cond, errp)                                                                      \
    do {                                                                                         \
        CHECK_SITE(#cond, CHECK_PLANNED(cond));                                                  \
        check_at(&check_site_, (cond) != 0, (errp));                                             \
    } while (0)
#define CHECK(cond) CHECK_E(cond, NULL)

static const char *env(const char *name) {
    const char *value = getenv(name);
    if (!value || !value[0]) {
        fprintf(stderr, "options_test: %s is not set\n", name);
        exit(2);
    }
    return value;
}

static void require(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "options_test: set-up failed: %s\n", what);
        exit(2);
    }
}

static oci_cache_options *new_options(void) {
    oci_cache_options *options = NULL;
    require(oci_cache_options_new(&options) == OCI_OK, "oci_cache_options_new");
    return options;
}

/* Makes a cache of options and frees them. */
static oci_cache *new_cache(oci_cache_options *options) {
    oci_cache *cache = NULL;
    oci_error *err = NULL;
    oci_status status = oci_cache_new(options, &cache, &err);
    if (status != OCI_OK)
        fprintf(stderr, "oci_cache_new: %s\n", err ? oci_error_message(err) : "?");
    require(status == OCI_OK, "oci_cache_new");
    oci_cache_options_free(options);
    return cache;
}

/* out = a/b, which must fit in PATH_CAP. */
static void join(char *out, const char *a, const char *b) {
    int n = snprintf(out, PATH_CAP, "%s/%s", a, b);
    require(n > 0 && n < PATH_CAP, "a path too long");
}

/* A fresh directory under OCI_TEST_TMP. */
static void make_dir(char *path, const char *name) {
    join(path, env("OCI_TEST_TMP"), name);
    require(mkdir(path, 0755) == 0, path);
}

/* Fetches reference with cache; on success stores the image in *image_out
 * (NULL allowed: the image is freed). */
static oci_status fetch(oci_cache *cache, const char *reference, oci_image **image_out,
                        oci_error **err) {
    oci_image *image = NULL;
    oci_status status = oci_fetch_image(cache, reference, NULL, NULL, &image, err);
    if (image_out)
        *image_out = image;
    else
        oci_image_free(image);
    return status;
}

/* Whether dst/sha256/<hex of diff_id> exists. */
static int layer_exists(const char *dst, const char *diff_id) {
    char path[PATH_CAP];
    struct stat st;
    char tars[PATH_CAP];
    join(tars, dst, "sha256");
    join(path, tars, diff_id + strlen("sha256:"));
    return stat(path, &st) == 0;
}

/* Pulls reference's layers into a fresh dst and checks each one's size;
 * returns whether all of it worked (one check). */
static int pull_checked(oci_cache *cache, const char *reference, const char *dst_name) {
    char dst[PATH_CAP];
    make_dir(dst, dst_name);
    oci_image *image = NULL;
    oci_error *err = NULL;
    int ok = fetch(cache, reference, &image, &err) == OCI_OK &&
             strcmp(oci_image_digest(image), env("OCI_TEST_APP_DIGEST")) == 0 &&
             oci_image_layer_count(image) == LAYERS;
    int fds[LAYERS] = {-1, -1, -1};
    ok = ok && oci_rootfs(cache, image, dst, NULL, fds, LAYERS, &err) == OCI_OK;
    for (int i = 0; i < LAYERS; i++) {
        char name[64];
        snprintf(name, sizeof name, "OCI_TEST_LAYER%d_TAR_SIZE", i);
        struct stat st;
        ok = ok && fds[i] >= 0 && fstat(fds[i], &st) == 0 &&
             st.st_size == strtoll(env(name), NULL, 10);
        if (fds[i] >= 0)
            close(fds[i]);
    }
    if (err)
        fprintf(stderr, "pull of %s: %s\n", reference, oci_error_message(err));
    oci_error_free(err);
    oci_image_free(image);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* A server answering every request with 503, counting them. */

struct counting_server {
    int fd;
    int port;
    int requests;
    int stop;
    pthread_mutex_t mutex;
    pthread_t thread;
};

static void *serve_503(void *arg) {
    struct counting_server *server = arg;
    for (;;) {
        pthread_mutex_lock(&server->mutex);
        int stop = server->stop;
        pthread_mutex_unlock(&server->mutex);
        if (stop)
            return NULL;
        struct pollfd pfd = {server->fd, POLLIN, 0};
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        int conn = accept(server->fd, NULL, NULL);
        if (conn < 0)
            continue;
        /* Read the request head, then answer and close. */
        char buf[4096];
        size_t have = 0;
        while (have < sizeof buf - 1) {
            ssize_t n = read(conn, buf + have, sizeof buf - 1 - have);
            if (n <= 0)
                break;
            have += (size_t)n;
            buf[have] = 0;
            if (strstr(buf, "\r\n\r\n"))
                break;
        }
        if (have > 0) {
            pthread_mutex_lock(&server->mutex);
            server->requests++;
            pthread_mutex_unlock(&server->mutex);
            static const char answer[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                         "Content-Length: 0\r\nConnection: close\r\n\r\n";
            ssize_t written = write(conn, answer, sizeof answer - 1);
            (void)written;
        }
        close(conn);
    }
}

static void start_server(struct counting_server *server) {
    memset(server, 0, sizeof *server);
    pthread_mutex_init(&server->mutex, NULL);
    server->fd = socket(AF_INET, SOCK_STREAM, 0);
    require(server->fd >= 0, "socket");
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    require(bind(server->fd, (struct sockaddr *)&addr, sizeof addr) == 0, "bind");
    require(listen(server->fd, 16) == 0, "listen");
    socklen_t len = sizeof addr;
    require(getsockname(server->fd, (struct sockaddr *)&addr, &len) == 0, "getsockname");
    server->port = ntohs(addr.sin_port);
    require(pthread_create(&server->thread, NULL, serve_503, server) == 0, "pthread_create");
}

static int requests_seen(struct counting_server *server) {
    pthread_mutex_lock(&server->mutex);
    int n = server->requests;
    server->requests = 0;
    pthread_mutex_unlock(&server->mutex);
    return n;
}

static void stop_server(struct counting_server *server) {
    pthread_mutex_lock(&server->mutex);
    server->stop = 1;
    pthread_mutex_unlock(&server->mutex);
    pthread_join(server->thread, NULL);
    close(server->fd);
    pthread_mutex_destroy(&server->mutex);
}

/* ------------------------------------------------------------------------ */
/* The tests */

/* A mirror serves the whole pull while the registry it stands for is down. */
static void test_mirror(void) {
    const char *dead = env("OCI_TEST_DEAD"), *host = env("OCI_TEST_HOST");
    char reference[512];
    snprintf(reference, sizeof reference, "%s/c/app:v1", dead);
    oci_error *err = NULL;

    oci_cache *plain = new_cache(new_options());
    CHECK_E(fetch(plain, reference, NULL, &err) == OCI_E_NETWORK, &err);
    oci_cache_free(plain);

    oci_cache_options *options = new_options();
    CHECK(oci_cache_options_add_mirror(options, dead, host) == OCI_OK);
    CHECK(oci_cache_options_add_mirror(options, NULL, host) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_add_mirror(options, dead, NULL) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_add_mirror(NULL, dead, host) == OCI_E_INVALID_ARGUMENT);
    oci_cache *cache = new_cache(options);
    CHECK(pull_checked(cache, reference, "mirror-dst"));
    oci_cache_free(cache);
}

/* A hosts.toml sends the dead registry's pulls to the real one. */
static void test_hosts_dir(void) {
    const char *dead = env("OCI_TEST_DEAD"), *host = env("OCI_TEST_HOST");
    char dir[PATH_CAP], registry_dir[PATH_CAP], file[PATH_CAP], reference[512];
    make_dir(dir, "hosts.d");
    join(registry_dir, dir, dead);
    require(mkdir(registry_dir, 0755) == 0, registry_dir);
    join(file, registry_dir, "hosts.toml");
    FILE *toml = fopen(file, "w");
    require(toml != NULL, file);
    fprintf(toml, "server = \"http://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            dead, host);
    require(fclose(toml) == 0, file);
    snprintf(reference, sizeof reference, "%s/c/app:v1", dead);

    oci_cache_options *options = new_options();
    CHECK(oci_cache_options_set_hosts_dir(options, dir) == OCI_OK);
    CHECK(oci_cache_options_set_hosts_dir(options, NULL) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_set_hosts_dir(NULL, dir) == OCI_E_INVALID_ARGUMENT);
    oci_cache *cache = new_cache(options);
    CHECK(pull_checked(cache, reference, "hosts-dir-dst"));
    oci_cache_free(cache);
}

/* Attempts is how many times a request that gets 503 is tried, as counted
 * by the server; 0 is refused by the setter. */
static void test_attempts(void) {
    struct counting_server server;
    start_server(&server);
    char reference[128];
    snprintf(reference, sizeof reference, "127.0.0.1:%d/c/app:v1", server.port);
    oci_error *err = NULL;

    oci_cache_options *options = new_options();
    CHECK(oci_cache_options_set_attempts(options, 0) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_set_attempts(NULL, 1) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_set_attempts(options, 1) == OCI_OK);
    oci_cache *once = new_cache(options);
    CHECK_E(fetch(once, reference, NULL, &err) == OCI_E_NETWORK, &err);
    /* The call returned: every request it made was answered and counted. */
    CHECK(requests_seen(&server) == 1);
    oci_cache_free(once);

    options = new_options();
    CHECK(oci_cache_options_set_attempts(options, 3) == OCI_OK);
    oci_cache *thrice = new_cache(options);
    CHECK_E(fetch(thrice, reference, NULL, &err) == OCI_E_NETWORK, &err);
    CHECK(requests_seen(&server) == 3);
    oci_cache_free(thrice);
    stop_server(&server);
}

/* A layer one byte past the limit fails the call and is not left in dst;
 * at the exact size of the biggest layer the pull passes. */
static void test_max_layer_size(void) {
    char reference[512], dst[PATH_CAP];
    snprintf(reference, sizeof reference, "%s/c/app:v1", env("OCI_TEST_HOST"));
    long long biggest = 0;
    int biggest_layer = 0;
    for (int i = 0; i < LAYERS; i++) {
        char name[64];
        snprintf(name, sizeof name, "OCI_TEST_LAYER%d_TAR_SIZE", i);
        long long size = strtoll(env(name), NULL, 10);
        if (size > biggest) {
            biggest = size;
            biggest_layer = i;
        }
    }
    char diff_id_name[64];
    snprintf(diff_id_name, sizeof diff_id_name, "OCI_TEST_LAYER%d_DIFF_ID", biggest_layer);
    oci_error *err = NULL;

    oci_cache_options *options = new_options();
    CHECK(oci_cache_options_set_max_layer_size(NULL, 1) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_set_max_layer_size(options, (uint64_t)biggest - 1) == OCI_OK);
    oci_cache *small = new_cache(options);
    oci_image *image = NULL;
    CHECK_E(fetch(small, reference, &image, &err) == OCI_OK, &err);
    make_dir(dst, "max-layer-size-dst");
    int fds[LAYERS] = {-7, -7, -7};
    CHECK_E(image && oci_extract_layers(small, image, dst, NULL, fds, LAYERS, &err) ==
                         OCI_E_INVALID_CONTENT,
            &err);
    CHECK(fds[0] == -7 && fds[1] == -7 && fds[2] == -7);
    CHECK(!layer_exists(dst, env(diff_id_name)));
    oci_image_free(image);
    oci_cache_free(small);

    options = new_options();
    CHECK(oci_cache_options_set_max_layer_size(options, (uint64_t)biggest) == OCI_OK);
    oci_cache *exact = new_cache(options);
    CHECK(pull_checked(exact, reference, "max-layer-size-exact-dst"));
    oci_cache_free(exact);
}

/* The range setters refuse a missing builder and 0 connections; with a
 * store, a threshold of one byte and 4 connections, the pull verifies. */
static void test_range_download(void) {
    char reference[512], store[PATH_CAP];
    snprintf(reference, sizeof reference, "%s/c/app:v1", env("OCI_TEST_HOST"));
    oci_cache_options *options = new_options();
    CHECK(oci_cache_options_set_range_threshold(NULL, 1) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_set_range_connections(NULL, 4) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_set_range_connections(options, 0) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_set_range_connections(options, 4) == OCI_OK);
    CHECK(oci_cache_options_set_range_threshold(options, 1) == OCI_OK);
    make_dir(store, "range-store");
    CHECK(oci_cache_options_set_store(options, store) == OCI_OK);
    oci_cache *ranged = new_cache(options);
    CHECK(pull_checked(ranged, reference, "range-dst"));
    oci_cache_free(ranged);
}

/* The cache's platform picks the non-host manifest of c/multi:v1: its
 * digest, and its config byte for byte; the host's is picked without it. */
static void test_platform(void) {
    char reference[512];
    snprintf(reference, sizeof reference, "%s/c/multi:v1", env("OCI_TEST_HOST"));
    oci_error *err = NULL;
    oci_image *image = NULL;

    oci_cache *host = new_cache(new_options());
    CHECK_E(fetch(host, reference, &image, &err) == OCI_OK, &err);
    CHECK(image && strcmp(oci_image_digest(image), env("OCI_TEST_APP_DIGEST")) == 0);
    oci_image_free(image);
    oci_cache_free(host);

    oci_cache_options *options = new_options();
    CHECK(oci_cache_options_set_platform(options, "linux") == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_set_platform(NULL, env("OCI_TEST_OTHER_PLATFORM")) ==
          OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_set_platform(options, env("OCI_TEST_OTHER_PLATFORM")) == OCI_OK);
    oci_cache *other = new_cache(options);
    image = NULL;
    CHECK_E(fetch(other, reference, &image, &err) == OCI_OK, &err);
    CHECK(image && strcmp(oci_image_digest(image), env("OCI_TEST_OTHER_DIGEST")) == 0);
    CHECK(image && strcmp(oci_image_config(image), env("OCI_TEST_OTHER_CONFIG")) == 0);
    CHECK(image && oci_image_layer_count(image) == 1);
    oci_image_free(image);
    oci_cache_free(other);
}

/* Plain HTTP to a registry named by a non-loopback name (127.0.0.1 in this
 * namespace's /etc/hosts) only when it is marked insecure: otherwise the
 * library speaks HTTPS to it and fails. */
static void test_insecure_registry(void) {
    const char *name = env("OCI_TEST_INSECURE_HOST");
    char reference[512], https[512];
    snprintf(reference, sizeof reference, "%s/c/app:v1", name);
    snprintf(https, sizeof https, "https://%s/", name);
    oci_error *err = NULL;

    oci_cache *strict = new_cache(new_options());
    oci_status status = fetch(strict, reference, NULL, &err);
    CHECK_E(status == OCI_E_NETWORK && err && strstr(oci_error_message(err), https), &err);
    oci_cache_free(strict);

    oci_cache_options *options = new_options();
    CHECK(oci_cache_options_add_insecure_registry(NULL, name) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_add_insecure_registry(options, NULL) == OCI_E_INVALID_ARGUMENT);
    CHECK(oci_cache_options_add_insecure_registry(options, name) == OCI_OK);
    oci_cache *insecure = new_cache(options);
    CHECK(pull_checked(insecure, reference, "insecure-dst"));
    oci_cache_free(insecure);
}

/* Adds the number and bytes of the regular files in dir (one level). */
static void count_files(const char *dir, uint64_t *files, uint64_t *bytes) {
    DIR *d = opendir(dir);
    require(d != NULL, dir);
    struct dirent *entry;
    while ((entry = readdir(d))) {
        char path[PATH_CAP];
        struct stat st;
        join(path, dir, entry->d_name);
        if (lstat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            (*files)++;
            *bytes += (uint64_t)st.st_size;
        }
    }
    closedir(d);
}

/* The disk usage report matches a walk of the store and of dst. */
static void test_disk_usage_report(void) {
    char store[PATH_CAP], dst[PATH_CAP], reference[512];
    join(store, env("OCI_TEST_TMP"), "usage-store");
    snprintf(reference, sizeof reference, "%s/c/app:v1", env("OCI_TEST_HOST"));
    oci_cache_options *options = new_options();
    require(oci_cache_options_set_store(options, store) == OCI_OK, "set_store");
    oci_cache *cache = new_cache(options);
    CHECK(pull_checked(cache, reference, "usage-dst"));
    join(dst, env("OCI_TEST_TMP"), "usage-dst");

    uint64_t store_files = 0, store_bytes = 0, dst_files = 0, dst_bytes = 0;
    char blobs[PATH_CAP], tars[PATH_CAP];
    join(blobs, store, "blobs/sha256");
    join(tars, dst, "sha256");
    count_files(blobs, &store_files, &store_bytes);
    count_files(tars, &dst_files, &dst_bytes);
    /* Manifest, config and three layer blobs; three layer tars. */
    CHECK(store_files == 2 + LAYERS && dst_files == LAYERS);

    oci_error *err = NULL;
    oci_disk_usage *usage = NULL;
    CHECK_E(oci_cache_disk_usage_report(cache, dst, NULL, &usage, &err) == OCI_OK, &err);
    CHECK(oci_disk_usage_store_files(usage) == store_files);
    CHECK(oci_disk_usage_store_bytes(usage) == store_bytes);
    CHECK(oci_disk_usage_dst_files(usage) == dst_files);
    CHECK(oci_disk_usage_dst_bytes(usage) == dst_bytes);
    oci_disk_usage_free(usage);

    usage = NULL;
    CHECK_E(oci_cache_disk_usage_report(cache, NULL, NULL, &usage, &err) == OCI_OK, &err);
    CHECK(oci_disk_usage_store_files(usage) == store_files &&
          oci_disk_usage_store_bytes(usage) == store_bytes);
    CHECK(oci_disk_usage_dst_files(usage) == 0 && oci_disk_usage_dst_bytes(usage) == 0);
    oci_disk_usage_free(usage);

    /* Outputs only on success; NULLs refused; NULL getters give 0. */
    usage = (oci_disk_usage *)&store;
    CHECK_E(oci_cache_disk_usage_report(NULL, dst, NULL, &usage, &err) == OCI_E_INVALID_ARGUMENT &&
                usage == (oci_disk_usage *)&store,
            &err);
    CHECK_E(oci_cache_disk_usage_report(cache, dst, NULL, NULL, &err) == OCI_E_INVALID_ARGUMENT,
            &err);
    CHECK(oci_disk_usage_store_files(NULL) == 0 && oci_disk_usage_store_bytes(NULL) == 0 &&
          oci_disk_usage_dst_files(NULL) == 0 && oci_disk_usage_dst_bytes(NULL) == 0);
    oci_disk_usage_free(NULL);
    oci_cache_free(cache);

    /* A cache without a store has no usage to report. */
    oci_cache *bare = new_cache(new_options());
    usage = NULL;
    CHECK_E(oci_cache_disk_usage_report(bare, NULL, NULL, &usage, &err) ==
                    OCI_E_INVALID_ARGUMENT &&
                usage == NULL,
            &err);
    oci_cache_free(bare);
}

int main(void) {
    test_mirror();
    test_hosts_dir();
    test_attempts();
    test_max_layer_size();
    test_range_download();
    test_platform();
    test_insecure_registry();
    test_disk_usage_report();
    return checks_report(failed, 1) ? 1 : 0;
}
