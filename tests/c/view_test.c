/*
 * view_test.c: the image view through the C API (issue 13). tests/c_api.rs
 * pushes c/view:v1 (harness view_layers() plus a layer with a symlink loop)
 * and runs this with OCI_TEST_REF (its reference) and OCI_TEST_TMP (a fresh
 * directory). It checks stat, readdir, readlink, resolve and open_file
 * against the layers' known content, every error code with outputs left
 * untouched, the buffer rule, NULL arguments, the view outliving its image
 * and cache, and the fds it hands out (O_RDONLY, FD_CLOEXEC, offset 0 and
 * their own). Prints the
 * plan and tally of checks.h; the driver wants every check run and passed.
 */
#include "oci_cache.h"

#include "checks.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Failed runs of checks; checks.h tallies the rest. */
static int failed;

#define CHECK(cond, ...)                                           \
    do {                                                           \
        CHECK_SITE(#cond, CHECK_PLANNED(cond));                    \
        if (!check_run(&check_site_, (cond) != 0)) {               \
            failed++;                                              \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            printf(__VA_ARGS__);                                   \
            printf("\n");                                          \
        }                                                          \
    } while (0)

static const char *env(const char *name) {
    const char *value = getenv(name);
    if (value == NULL || *value == '\0') {
        printf("missing environment variable %s\n", name);
        exit(2);
    }
    return value;
}

static const char *message(const oci_error *err) {
    const char *text = oci_error_message(err);
    return text ? text : "(no error)";
}

/* A fresh directory under OCI_TEST_TMP. */
static char *make_dir(const char *tmp, const char *name) {
    size_t n = strlen(tmp) + strlen(name) + 2;
    char *path = malloc(n);
    if (path == NULL) {
        exit(3);
    }
    snprintf(path, n, "%s/%s", tmp, name);
    if (mkdir(path, 0755) != 0) {
        printf("mkdir %s failed\n", path);
        exit(2);
    }
    return path;
}

/* Whether a call failed with `code` and an error whose message names `what`. */
static int failed_with(oci_status status, oci_error *err, oci_status code, const char *what) {
    int ok = status == code && err != NULL && oci_error_code(err) == code &&
             strstr(message(err), what) != NULL;
    if (!ok) {
        printf("  got status %d: %s (wanted %d naming %s)\n", status, message(err), code, what);
    }
    oci_error_free(err);
    return ok;
}

/* The status of stat(path), its error freed. */
static oci_status stat_status(const oci_view *view, const char *path, oci_status code) {
    oci_stat st;
    memset(&st, 0x5a, sizeof st);
    oci_error *err = NULL;
    oci_status status = oci_view_stat(view, path, &st, &err);
    int untouched = 1;
    for (size_t i = 0; i < sizeof st; i++) {
        untouched &= ((unsigned char *)&st)[i] == 0x5a;
    }
    if (!failed_with(status, err, code, path[0] ? path : "NULL") || !untouched) {
        return status == OCI_OK ? -100 : status - 100;
    }
    return status;
}

/* The bytes of regular file `path`, read with pread from the fd the view
 * hands out, NUL-terminated; NULL on failure. Checks the fd's flags. */
static char *content(const oci_view *view, const char *path, uint64_t *size_out) {
    int fd = -1;
    uint64_t offset = 0, size = 0;
    oci_error *err = NULL;
    oci_status status = oci_view_open_file(view, path, &fd, &offset, &size, &err);
    CHECK(status == OCI_OK, "open_file %s: %d %s", path, status, message(err));
    if (status != OCI_OK) {
        oci_error_free(err);
        return NULL;
    }
    CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0, "the fd of %s lacks FD_CLOEXEC", path);
    CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY, "the fd of %s is not O_RDONLY", path);
    /* A fresh open: its offset is 0 and its own, so moving it (as below,
     * for every file read) moves no other fd of the same layer tar. */
    CHECK(lseek(fd, 0, SEEK_CUR) == 0, "the fd of %s is not at offset 0", path);
    CHECK(lseek(fd, (off_t)(offset + size), SEEK_SET) == (off_t)(offset + size),
          "seeking the fd of %s", path);
    char *data = calloc(1, size + 1);
    if (data == NULL) {
        exit(3);
    }
    ssize_t n = pread(fd, data, size, (off_t)offset);
    CHECK(n == (ssize_t)size, "pread %s: %zd of %llu bytes", path, n, (unsigned long long)size);
    close(fd);
    *size_out = size;
    return data;
}

static void check_stat(const oci_view *view) {
    struct {
        const char *path;
        int32_t type;
        uint32_t mode, uid, gid, major, minor, layer;
        uint64_t size;
    } cases[] = {
        {"/etc/os-release", OCI_FILE_REGULAR, 0644, 0, 0, 0, 0, 1, 7},
        {"etc/os-release", OCI_FILE_REGULAR, 0644, 0, 0, 0, 0, 1, 7},
        {"/lib/../etc/os-release", OCI_FILE_REGULAR, 0644, 0, 0, 0, 0, 1, 7},
        {"/etc/os-release-link", OCI_FILE_REGULAR, 0644, 0, 0, 0, 0, 1, 7},
        {"/lib", OCI_FILE_SYMLINK, 0777, 0, 0, 0, 0, 0, 7},
        {"/lib/libc.so", OCI_FILE_REGULAR, 0755, 0, 0, 0, 0, 0, 5000},
        {"/usr/lib", OCI_FILE_DIRECTORY, 0755, 0, 0, 0, 0, 0, 0},
        {"/dev/null", OCI_FILE_CHAR_DEVICE, 0644, 0, 0, 1, 3, 0, 0},
        {"/dev/sda", OCI_FILE_BLOCK_DEVICE, 0644, 0, 0, 8, 0, 0, 0},
        {"/dev/fifo", OCI_FILE_FIFO, 0644, 0, 0, 0, 0, 0, 0},
        {"/owned", OCI_FILE_REGULAR, 04755, 1000, 100, 0, 0, 1, 6},
        {"/was-dir", OCI_FILE_REGULAR, 0644, 0, 0, 0, 0, 1, 10},
        {"/was-file", OCI_FILE_DIRECTORY, 0700, 0, 0, 0, 0, 1, 0},
        {"/loop-a", OCI_FILE_SYMLINK, 0777, 0, 0, 0, 0, 2, 6},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        oci_stat st;
        oci_error *err = NULL;
        oci_status status = oci_view_stat(view, cases[i].path, &st, &err);
        CHECK(status == OCI_OK, "stat %s: %d %s", cases[i].path, status, message(err));
        oci_error_free(err);
        if (status != OCI_OK) {
            continue;
        }
        CHECK(st.type == cases[i].type && st.mode == cases[i].mode && st.uid == cases[i].uid &&
                  st.gid == cases[i].gid && st.dev_major == cases[i].major &&
                  st.dev_minor == cases[i].minor && st.layer == cases[i].layer &&
                  st.size == cases[i].size && st.mtime_sec == 1700000000 && st.mtime_nsec == 0,
              "stat %s: type %d mode %o uid %u gid %u dev %u:%u layer %u size %llu mtime %lld.%u",
              cases[i].path, st.type, st.mode, st.uid, st.gid, st.dev_major, st.dev_minor,
              st.layer, (unsigned long long)st.size, (long long)st.mtime_sec, st.mtime_nsec);
    }
    /* The root: "" and "/" alike, a directory. */
    const char *roots[] = {"", "/"};
    for (size_t i = 0; i < 2; i++) {
        oci_stat st;
        oci_status status = oci_view_stat(view, roots[i], &st, NULL);
        CHECK(status == OCI_OK && st.type == OCI_FILE_DIRECTORY, "stat \"%s\": %d type %d",
              roots[i], status, st.type);
    }
}

/* The names of directory `path`, joined by ',', into `out`. */
static oci_status list(const oci_view *view, const char *path, char *out, size_t cap) {
    oci_dir_list *names = NULL;
    oci_error *err = NULL;
    oci_status status = oci_view_readdir(view, path, &names, &err);
    out[0] = '\0';
    if (status != OCI_OK) {
        snprintf(out, cap, "%s", message(err));
        oci_error_free(err);
        return status;
    }
    size_t count = oci_dir_list_count(names);
    for (size_t i = 0; i < count; i++) {
        const char *name = oci_dir_list_name(names, i);
        size_t used = strlen(out);
        snprintf(out + used, cap - used, "%s%s", i ? "," : "", name ? name : "(NULL)");
    }
    CHECK(oci_dir_list_name(names, count) == NULL, "a name past the end of %s is not NULL", path);
    oci_dir_list_free(names);
    return status;
}

static void check_readdir(const oci_view *view) {
    char names[1024];
    oci_status status = list(view, "/", names, sizeof names);
    CHECK(status == OCI_OK && strcmp(names, "deep,dev,etc,lib,loop-a,loop-b,opaque,owned,pax,usr,"
                                             "was-dir,was-file") == 0,
          "readdir /: %d %s", status, names);
    status = list(view, "/etc", names, sizeof names);
    CHECK(status == OCI_OK && strcmp(names, "abs,os-release,os-release-link,passwd,rel") == 0,
          "readdir /etc: %d %s", status, names);
    /* Opaque: the lower layer's entries are hidden. */
    status = list(view, "/opaque", names, sizeof names);
    CHECK(status == OCI_OK && strcmp(names, "mid") == 0, "readdir /opaque: %d %s", status, names);
    /* Through the /lib symlink. */
    status = list(view, "/lib", names, sizeof names);
    CHECK(status == OCI_OK && strcmp(names, "libc.so") == 0, "readdir /lib: %d %s", status, names);
    CHECK(oci_dir_list_count(NULL) == 0, "count of NULL");
    CHECK(oci_dir_list_name(NULL, 0) == NULL, "name of NULL");
    oci_dir_list_free(NULL);
}

static void check_xattrs(const oci_view *view) {
    const char *pax = "/pax/\xc3\xa9t\xc3\xa9-with-a-name-that-pax-carries";
    oci_xattr_list *xattrs = NULL;
    oci_error *err = NULL;
    oci_status status = oci_view_xattrs(view, pax, &xattrs, &err);
    CHECK(status == OCI_OK && oci_xattr_list_count(xattrs) == 1, "xattrs of the PAX file: %d %s",
          status, message(err));
    size_t len = 99;
    const uint8_t *value = oci_xattr_list_value(xattrs, 0, &len);
    const char *name = oci_xattr_list_name(xattrs, 0);
    CHECK(name && strcmp(name, "user.origin") == 0 && value && len == 3 &&
              memcmp(value, "pax", 3) == 0,
          "the PAX file's xattr: %s", name ? name : "(NULL)");
    len = 99;
    CHECK(oci_xattr_list_name(xattrs, 1) == NULL && oci_xattr_list_value(xattrs, 1, &len) == NULL &&
              len == 99,
          "an xattr past the end is NULL, its length untouched");
    oci_xattr_list_free(xattrs);
    xattrs = NULL;
    status = oci_view_xattrs(view, "/etc/passwd", &xattrs, &err);
    CHECK(status == OCI_OK && oci_xattr_list_count(xattrs) == 0, "no xattrs on /etc/passwd: %d",
          status);
    oci_xattr_list_free(xattrs);
    oci_xattr_list *untouched = (oci_xattr_list *)&status;
    xattrs = untouched;
    err = NULL;
    status = oci_view_xattrs(view, "/removed", &xattrs, &err);
    CHECK(failed_with(status, err, OCI_E_NOT_FOUND, "/removed") && xattrs == untouched,
          "xattrs of a whited-out path: %d", status);
    err = NULL;
    CHECK((status = oci_view_xattrs(NULL, "/", &xattrs, &err),
           failed_with(status, err, OCI_E_INVALID_ARGUMENT, "view")),
          "xattrs of a NULL view");
    err = NULL;
    CHECK((status = oci_view_xattrs(view, NULL, &xattrs, &err),
           failed_with(status, err, OCI_E_INVALID_ARGUMENT, "path")),
          "xattrs of a NULL path");
    err = NULL;
    CHECK((status = oci_view_xattrs(view, "/", NULL, &err),
           failed_with(status, err, OCI_E_INVALID_ARGUMENT, "list_out")),
          "xattrs into a NULL list_out");
    CHECK(xattrs == untouched, "outputs untouched on failure");
    CHECK(oci_xattr_list_count(NULL) == 0 && oci_xattr_list_name(NULL, 0) == NULL &&
              oci_xattr_list_value(NULL, 0, NULL) == NULL,
          "getters of a NULL list");
    oci_xattr_list_free(NULL);
}

/* readlink or resolve of `path` into a buffer of `cap` bytes. */
typedef oci_status (*text_call)(const oci_view *, const char *, char *, size_t, size_t *,
                                oci_error **);

static void check_text(const oci_view *view, text_call call, const char *name, const char *path,
                       const char *expected) {
    size_t want = strlen(expected);
    char buf[256];
    size_t len = 12345;
    oci_error *err = NULL;
    oci_status status = call(view, path, buf, sizeof buf, &len, &err);
    CHECK(status == OCI_OK && len == want && strcmp(buf, expected) == 0, "%s %s: %d %s (%zu)",
          name, path, status, status == OCI_OK ? buf : message(err), len);
    oci_error_free(err);
    /* Exactly enough room, with the NUL. */
    memset(buf, 'Z', sizeof buf);
    status = call(view, path, buf, want + 1, &len, NULL);
    CHECK(status == OCI_OK && len == want && memcmp(buf, expected, want + 1) == 0 &&
              buf[want + 1] == 'Z',
          "%s %s with cap %zu: %d", name, path, want + 1, status);
    /* One byte short (no room for the NUL), and none at all: the length, buf untouched. */
    size_t caps[] = {want, 0};
    for (size_t i = 0; i < 2; i++) {
        memset(buf, 'Z', sizeof buf);
        len = 12345;
        err = NULL;
        status = call(view, path, buf, caps[i], &len, &err);
        int untouched = 1;
        for (size_t j = 0; j < sizeof buf; j++) {
            untouched &= buf[j] == 'Z';
        }
        CHECK(failed_with(status, err, OCI_E_BUFFER_TOO_SMALL, path) && len == want && untouched,
              "%s %s with cap %zu: len %zu, buf %s", name, path, caps[i], len,
              untouched ? "untouched" : "written");
    }
}

static void check_links(const oci_view *view) {
    check_text(view, oci_view_readlink, "readlink", "/lib", "usr/lib");
    check_text(view, oci_view_readlink, "readlink", "/etc/rel", "../usr/lib/libc.so");
    check_text(view, oci_view_readlink, "readlink", "/etc/abs", "/etc/passwd");
    check_text(view, oci_view_resolve, "resolve", "/lib", "/usr/lib");
    check_text(view, oci_view_resolve, "resolve", "/etc/rel", "/usr/lib/libc.so");
    check_text(view, oci_view_resolve, "resolve", "lib/../etc/abs", "/etc/passwd");
    check_text(view, oci_view_resolve, "resolve", "/lib/libc.so", "/usr/lib/libc.so");
}

static void check_content(const oci_view *view) {
    uint64_t size = 0;
    char *data = content(view, "/etc/os-release", &size);
    CHECK(data && size == 7 && strcmp(data, "ID=top\n") == 0, "/etc/os-release: %s",
          data ? data : "(none)");
    free(data);
    /* A hardlink gives its target's data. */
    data = content(view, "/etc/os-release-link", &size);
    CHECK(data && size == 7 && strcmp(data, "ID=top\n") == 0, "/etc/os-release-link: %s",
          data ? data : "(none)");
    free(data);
    /* A symlink in the last component is followed, and an absolute one
     * starts again at the image's root. */
    data = content(view, "/etc/abs", &size);
    CHECK(data && strcmp(data, "root:x:0:0::/root:/bin/sh\n") == 0, "/etc/abs: %s",
          data ? data : "(none)");
    free(data);
    data = content(view, "/etc/rel", &size);
    int sevens = data && size == 5000;
    for (uint64_t i = 0; sevens && i < size; i++) {
        sevens = data[i] == 7;
    }
    CHECK(sevens, "/etc/rel (libc.so): %llu bytes", (unsigned long long)size);
    free(data);
    data = content(view, "/was-file/inside", &size);
    CHECK(data && strcmp(data, "inside") == 0, "/was-file/inside: %s", data ? data : "(none)");
    free(data);
}

static void check_errors(const oci_view *view) {
    /* Missing, whited out, or through a non-directory: not found. */
    const char *missing[] = {"/nope", "/removed", "/removed-dir/x", "/was-dir/child",
                             "/opaque/low", "/etc/passwd/x"};
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        oci_status status = stat_status(view, missing[i], OCI_E_NOT_FOUND);
        CHECK(status == OCI_E_NOT_FOUND, "stat %s: %d", missing[i], status);
    }
    char buf[64];
    size_t len = 777;
    oci_error *err = NULL;
    oci_status status = oci_view_resolve(view, "/nope", buf, sizeof buf, &len, &err);
    CHECK(failed_with(status, err, OCI_E_NOT_FOUND, "/nope") && len == 777, "resolve /nope");

    /* A symlink loop: invalid content, for every call that follows it. */
    status = stat_status(view, "/loop-a/x", OCI_E_INVALID_CONTENT);
    CHECK(status == OCI_E_INVALID_CONTENT, "stat /loop-a/x: %d", status);
    err = NULL;
    status = oci_view_resolve(view, "/loop-a", buf, sizeof buf, &len, &err);
    CHECK(failed_with(status, err, OCI_E_INVALID_CONTENT, "/loop-a") && len == 777,
          "resolve /loop-a");
    int fd = -7;
    uint64_t offset = 9, size = 9;
    err = NULL;
    status = oci_view_open_file(view, "/loop-b", &fd, &offset, &size, &err);
    CHECK(failed_with(status, err, OCI_E_INVALID_CONTENT, "/loop-b") && fd == -7 && offset == 9 &&
              size == 9,
          "open_file /loop-b");

    /* The wrong kind of file: invalid argument, naming the path. */
    const char *not_regular[] = {"/dev", "/dev/fifo", "/dev/null", "/"};
    for (size_t i = 0; i < sizeof not_regular / sizeof not_regular[0]; i++) {
        err = NULL;
        status = oci_view_open_file(view, not_regular[i], &fd, &offset, &size, &err);
        CHECK(failed_with(status, err, OCI_E_INVALID_ARGUMENT, "not a regular file") && fd == -7,
              "open_file %s", not_regular[i]);
    }
    err = NULL;
    status = oci_view_readlink(view, "/etc/passwd", buf, sizeof buf, &len, &err);
    CHECK(failed_with(status, err, OCI_E_INVALID_ARGUMENT, "/etc/passwd") && len == 777,
          "readlink of a regular file");
    oci_dir_list *names = (oci_dir_list *)&len;
    err = NULL;
    status = oci_view_readdir(view, "/etc/passwd", &names, &err);
    CHECK(failed_with(status, err, OCI_E_INVALID_ARGUMENT, "/etc/passwd") &&
              names == (oci_dir_list *)&len,
          "readdir of a regular file");

    /* NULL arguments: invalid argument naming the argument, outputs untouched. */
    oci_stat st;
    err = NULL;
    CHECK((status = oci_view_stat(NULL, "/", &st, &err), failed_with(status, err, OCI_E_INVALID_ARGUMENT, "view")),
          "stat with a NULL view");
    err = NULL;
    CHECK((status = oci_view_stat(view, NULL, &st, &err), failed_with(status, err, OCI_E_INVALID_ARGUMENT, "path")),
          "stat with a NULL path");
    err = NULL;
    CHECK((status = oci_view_stat(view, "/", NULL, &err), failed_with(status, err, OCI_E_INVALID_ARGUMENT,
                      "stat_out")),
          "stat with a NULL stat_out");
    err = NULL;
    CHECK((status = oci_view_readlink(view, "/lib", NULL, 8, &len, &err), failed_with(status, err,
                      OCI_E_INVALID_ARGUMENT, "buf")) &&
              len == 777,
          "readlink with a NULL buf");
    err = NULL;
    CHECK((status = oci_view_resolve(view, "/lib", buf, sizeof buf, NULL, &err), failed_with(status, err,
                      OCI_E_INVALID_ARGUMENT, "len_out")),
          "resolve with a NULL len_out");
    err = NULL;
    CHECK((status = oci_view_readdir(view, "/", NULL, &err), failed_with(status, err, OCI_E_INVALID_ARGUMENT,
                      "list_out")),
          "readdir with a NULL list_out");
    const char *outs[] = {"fd_out", "offset_out", "size_out"};
    for (int i = 0; i < 3; i++) {
        err = NULL;
        status = oci_view_open_file(view, "/etc/passwd", i == 0 ? NULL : &fd,
                                    i == 1 ? NULL : &offset, i == 2 ? NULL : &size, &err);
        CHECK(failed_with(status, err, OCI_E_INVALID_ARGUMENT, outs[i]) && fd == -7 &&
                  offset == 9 && size == 9,
              "open_file with a NULL %s", outs[i]);
    }
    /* err_out may be NULL. */
    CHECK(oci_view_stat(view, "/nope", &st, NULL) == OCI_E_NOT_FOUND, "stat without err_out");
    oci_view_free(NULL);
}

int main(void) {
    const char *reference = env("OCI_TEST_REF");
    const char *tmp = env("OCI_TEST_TMP");
    char *store = make_dir(tmp, "store");
    char *dst = make_dir(tmp, "dst");

    oci_cache_options *options = NULL;
    oci_cache *cache = NULL;
    oci_image *image = NULL;
    oci_error *err = NULL;
    if (oci_cache_options_new(&options) != OCI_OK ||
        oci_cache_options_set_store(options, store) != OCI_OK ||
        oci_cache_new(options, &cache, &err) != OCI_OK) {
        printf("making the cache: %s\n", message(err));
        return 2;
    }
    oci_cache_options_free(options);
    oci_status status = oci_fetch_image(cache, reference, NULL, NULL, &image, &err);
    if (status != OCI_OK) {
        printf("oci_fetch_image %s: %d %s\n", reference, status, message(err));
        return 2;
    }

    /* Opening: NULL arguments first, the output untouched. */
    oci_view *view = (oci_view *)&status;
    err = NULL;
    CHECK((status = oci_view_open(NULL, image, dst, NULL, &view, &err), failed_with(status, err,
                      OCI_E_INVALID_ARGUMENT, "cache")) &&
              view == (oci_view *)&status,
          "open with a NULL cache");
    err = NULL;
    CHECK((status = oci_view_open(cache, NULL, dst, NULL, &view, &err), failed_with(status, err,
                      OCI_E_INVALID_ARGUMENT, "image")),
          "open with a NULL image");
    err = NULL;
    CHECK((status = oci_view_open(cache, image, NULL, NULL, &view, &err), failed_with(status, err,
                      OCI_E_INVALID_ARGUMENT, "dst")),
          "open with a NULL dst");
    err = NULL;
    CHECK((status = oci_view_open(cache, image, dst, NULL, NULL, &err), failed_with(status, err,
                      OCI_E_INVALID_ARGUMENT, "view_out")),
          "open with a NULL view_out");
    err = NULL;
    status = oci_view_open(cache, image, dst, NULL, &view, &err);
    CHECK(status == OCI_OK, "oci_view_open: %d %s", status, message(err));
    if (status != OCI_OK) {
        oci_error_free(err);
        checks_report(failed, 1);
        return 1;
    }
    /* A second view of the same dst reuses the layers and their indexes. */
    oci_view *again = NULL;
    status = oci_view_open(cache, image, dst, NULL, &again, NULL);
    CHECK(status == OCI_OK && again != NULL, "a second oci_view_open: %d", status);
    oci_view_free(again);

    /* The view outlives its image and its cache. */
    oci_image_free(image);
    oci_cache_free(cache);

    check_stat(view);
    check_readdir(view);
    check_xattrs(view);
    check_links(view);
    check_content(view);
    check_errors(view);
    oci_view_free(view);

    free(store);
    free(dst);
    return checks_report(failed, 1) == 0 ? 0 : 1;
}
