/*
 * throttle: bench/run's WAN, a TCP proxy on 127.0.0.1 in front of the
 * local registry that makes it behave like a remote one: every connection
 * is capped at RATE bytes per second in each direction (cloud registries
 * serve blobs from object storage at a limited rate per connection), and
 * every request and every new connection waits LATENCY_MS first (a round
 * trip: the TCP handshake, or a request's way there and its answer's way
 * back).
 *
 *   throttle UPSTREAM_PORT RATE LATENCY_MS
 *
 * Listens on an ephemeral port of 127.0.0.1, prints it on stdout, then
 * serves until killed; upstream is 127.0.0.1:UPSTREAM_PORT. A "request" is
 * whatever the client sends after a pause: each read from the client is
 * held LATENCY_MS before it is forwarded, which is one delay per HTTP
 * request (requests are small). Two threads per connection, one per
 * direction; each paces its own writes, so connections do not share a cap.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536

static int upstream_port;
static double rate;   /* bytes per second, per connection and direction */
static long latency_ns;

struct pipe_end {
    int from, to;
    int delay; /* hold each read LATENCY_MS: the client's side */
};

struct conn {
    int client, upstream;
};

static void add_ns(struct timespec *t, long ns) {
    t->tv_nsec += ns % 1000000000L;
    t->tv_sec += ns / 1000000000L + t->tv_nsec / 1000000000L;
    t->tv_nsec %= 1000000000L;
}

static int before(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static void sleep_until(const struct timespec *t) {
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL) == EINTR) {
    }
}

static void sleep_ns(long ns) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    add_ns(&t, ns);
    sleep_until(&t);
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Copies one direction until EOF or an error, then half-closes the other side. */
static void *pump(void *arg) {
    struct pipe_end *end = arg;
    char buf[CHUNK];
    /* The time the next byte may leave: a token bucket with no credit kept
     * across idle time, so a connection never bursts above the rate. */
    struct timespec next = {0, 0};
    for (;;) {
        ssize_t n = recv(end->from, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        if (end->delay)
            sleep_ns(latency_ns);
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (before(&next, &now))
            next = now;
        else
            sleep_until(&next);
        if (write_all(end->to, buf, (size_t)n) != 0)
            break;
        add_ns(&next, (long)((double)n / rate * 1e9));
    }
    shutdown(end->to, SHUT_WR);
    shutdown(end->from, SHUT_RD);
    return NULL;
}

static void *serve(void *arg) {
    struct conn *c = arg;
    sleep_ns(latency_ns); /* the handshake's round trip */
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(upstream_port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->upstream = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->upstream >= 0 && connect(c->upstream, (struct sockaddr *)&addr, sizeof addr) == 0) {
        int one = 1;
        setsockopt(c->upstream, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(c->client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct pipe_end up = {c->client, c->upstream, 1}, down = {c->upstream, c->client, 0};
        pthread_t t;
        if (pthread_create(&t, NULL, pump, &down) == 0) {
            pump(&up);
            pthread_join(t, NULL);
        }
    }
    if (c->upstream >= 0)
        close(c->upstream);
    close(c->client);
    free(c);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s UPSTREAM_PORT RATE LATENCY_MS\n", argv[0]);
        return 2;
    }
    upstream_port = atoi(argv[1]);
    rate = strtod(argv[2], NULL);
    latency_ns = (long)(strtod(argv[3], NULL) * 1e6);
    if (upstream_port <= 0 || upstream_port > 65535 || rate <= 0 || latency_ns < 0) {
        fprintf(stderr, "throttle: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(listener, 128) != 0 || getsockname(listener, (struct sockaddr *)&addr, &len) != 0) {
        perror("throttle: listening on 127.0.0.1");
        return 1;
    }
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    pthread_attr_t detached;
    pthread_attr_init(&detached);
    pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
    for (;;) {
        int client = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (client < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE)
                continue;
            perror("throttle: accept");
            return 1;
        }
        struct conn *c = malloc(sizeof *c);
        pthread_t t;
        if (!c) {
            close(client);
            continue;
        }
        c->client = client;
        c->upstream = -1;
        if (pthread_create(&t, &detached, serve, c) != 0) {
            close(client);
            free(c);
        }
    }
}
