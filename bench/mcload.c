/*
 * mcload: a small closed-loop load generator for the memcached text
 * protocol, independent of the project's own `client bench` (issue 17 asks
 * for figures from a second generator). Each connection keeps `depth`
 * requests in flight (pipelined) and sends the next one as each reply
 * completes. Two threads, each with its own epoll and half the
 * connections. Prints one JSON line.
 *
 *   cc -O2 -pthread -o mcload bench/mcload.c
 *   mcload --server 127.0.0.1:11211 --workload get --connections 50 \
 *          --depth 16 --seconds 8 --warmup 1 --keys 100000 \
 *          --key-size 32 --value-size 100
 *
 * --workload set|get; --preload sets every key once (depth 16) and exits.
 * --protocol text|meta|binary: get/set, mg <key> v / ms <key> <len>, or
 * the binary protocol's Get/Set packets (issue 16's figures); a get's miss
 * counts as answered in each.
 * Keys are drawn uniformly from --keys: "k" and the number zero-padded to
 * --key-size, as `client bench` makes them.
 * --tls (built with -DMCLOAD_TLS -lssl -lcrypto): each connection speaks
 * TLS (OpenSSL; the server's certificate is not checked: this measures
 * the server's cost, not the client's trust).
 * --server takes a comma-separated list: connection i goes to server
 * i mod n, so each takes 1/n of the load, as with a client that hashes its
 * keys over the servers (which server holds a key makes no difference to
 * a store where every server answers for every key).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef MCLOAD_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#define THREADS 2
#define SERVERS_MAX 8
#define CONNECTIONS_MAX 4096
#define DEPTH_MAX 256
#define KEY_BYTES_MAX 250
#define VALUE_BYTES_MAX (64 * 1024)
/* Enough for a full window of the largest replies. */
#define IN_BYTES (DEPTH_MAX * (VALUE_BYTES_MAX + 512))

enum { PROTOCOL_TEXT, PROTOCOL_META, PROTOCOL_BINARY };
#define BINARY_HEADER_BYTES 24

struct opts {
    char host[SERVERS_MAX][64];
    int port[SERVERS_MAX];
    int servers;
    int get; /* 1: get, 0: set */
    int protocol; /* PROTOCOL_* */
    int connections;
    int depth;
    double seconds;
    double warmup;
    long keys;
    int key_size;
    int value_size;
    int preload;
    int tls;
};

struct conn {
    int fd;
#ifdef MCLOAD_TLS
    SSL *ssl;
#endif
    uint64_t rng;
    int in_flight;
    char *in;
    size_t in_len;
    char *out;
    size_t out_len, out_sent, out_cap;
    long preload_next, preload_end;
};

static struct opts o;
static char *value_block; /* value_size bytes of data, then "\r\n" */
static atomic_int measuring;
static atomic_int stopping;
static atomic_long ops_measured, errors_measured, errors_total;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "mcload: %s: %s\n", what, strerror(errno));
    exit(2);
}

static uint64_t next_rng(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void out_reserve(struct conn *c, size_t more) {
    if (c->out_len + more <= c->out_cap) return;
    if (c->out_sent > 0) {
        memmove(c->out, c->out + c->out_sent, c->out_len - c->out_sent);
        c->out_len -= c->out_sent;
        c->out_sent = 0;
    }
    while (c->out_len + more > c->out_cap) c->out_cap *= 2;
    c->out = realloc(c->out, c->out_cap);
    if (!c->out) die("realloc");
}

static void queue_request(struct conn *c, long key) {
    char k[KEY_BYTES_MAX + 1];
    /* `client bench`'s keys ("k" and zero-padded digits), so that a get
       finds what either generator's preload set. */
    int n = snprintf(k, sizeof k, "k%0*ld", o.key_size - 1, key);
    out_reserve(c, n + o.value_size + 64);
    char *p = c->out + c->out_len;
    int get = o.get && !o.preload;
    if (o.protocol == PROTOCOL_BINARY) {
        /* Header: magic, opcode, key length, extras length, data type,
         * vbucket, body length, opaque, cas; then extras, key, value. */
        int extras = get ? 0 : 8;
        int value = get ? 0 : o.value_size;
        uint32_t body = htonl(extras + n + value);
        uint16_t key_len = htons(n);
        memset(p, 0, BINARY_HEADER_BYTES + extras);
        p[0] = (char)0x80;
        p[1] = get ? 0x00 : 0x01;
        memcpy(p + 2, &key_len, 2);
        p[4] = (char)extras;
        memcpy(p + 8, &body, 4);
        p += BINARY_HEADER_BYTES + extras; /* flags and exptime 0 */
        memcpy(p, k, n);
        p += n;
        memcpy(p, value_block, value);
        p += value;
    } else if (get) {
        p += sprintf(p, o.protocol == PROTOCOL_META ? "mg %s v\r\n" : "get %s\r\n", k);
    } else {
        if (o.protocol == PROTOCOL_META)
            p += sprintf(p, "ms %s %d\r\n", k, o.value_size);
        else
            p += sprintf(p, "set %s 0 0 %d\r\n", k, o.value_size);
        memcpy(p, value_block, o.value_size + 2);
        p += o.value_size + 2;
    }
    c->out_len = p - c->out;
    c->in_flight++;
}

static int fill(struct conn *c) {
    /* Returns 1 when a preload connection has nothing more to send. */
    while (c->in_flight < o.depth) {
        if (o.preload) {
            if (c->preload_next >= c->preload_end) return c->in_flight == 0;
            queue_request(c, c->preload_next++);
        } else {
            queue_request(c, (long)(next_rng(&c->rng) % (uint64_t)o.keys));
        }
    }
    return 0;
}

/* Like send/recv on the connection, TLS or not: bytes moved, or -1 with
 * errno EAGAIN when the socket is not ready, or 0 / -1 otherwise. */
static ssize_t conn_send(struct conn *c, const char *buf, size_t len) {
#ifdef MCLOAD_TLS
    if (c->ssl) {
        int n = SSL_write(c->ssl, buf, (int)len);
        if (n > 0) return n;
        int e = SSL_get_error(c->ssl, n);
        errno = e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? EAGAIN : EIO;
        return -1;
    }
#endif
    return send(c->fd, buf, len, MSG_NOSIGNAL);
}

static ssize_t conn_recv(struct conn *c, char *buf, size_t len) {
#ifdef MCLOAD_TLS
    if (c->ssl) {
        int n = SSL_read(c->ssl, buf, (int)len);
        if (n > 0) return n;
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            errno = EAGAIN;
            return -1;
        }
        return 0;
    }
#endif
    return recv(c->fd, buf, len, 0);
}

static void flush(struct conn *c) {
    while (c->out_sent < c->out_len) {
        ssize_t n = conn_send(c, c->out + c->out_sent, c->out_len - c->out_sent);
        if (n < 0) {
            if (errno == EAGAIN) return;
            die("send");
        }
        c->out_sent += n;
    }
    c->out_sent = c->out_len = 0;
}

static void completed(int error) {
    if (error) atomic_fetch_add(&errors_total, 1);
    if (atomic_load(&measuring)) {
        atomic_fetch_add(&ops_measured, 1);
        if (error) atomic_fetch_add(&errors_measured, 1);
    }
}

/* Takes every complete binary response from the input buffer: a get's
 * hit or miss (status 0 or 1), a set's success. */
static size_t parse_binary(struct conn *c) {
    size_t pos = 0;
    int get = o.get && !o.preload;
    while (c->in_len - pos >= BINARY_HEADER_BYTES) {
        unsigned char *h = (unsigned char *)c->in + pos;
        uint32_t body;
        memcpy(&body, h + 8, 4);
        size_t need = BINARY_HEADER_BYTES + ntohl(body);
        if (c->in_len - pos < need) break;
        int status = h[6] << 8 | h[7];
        pos += need;
        c->in_flight--;
        completed(!(h[0] == 0x81 && (status == 0 || (get && status == 1))));
    }
    return pos;
}

/* Takes every complete reply from the input buffer. */
static void parse(struct conn *c) {
    size_t pos = 0;
    int meta = o.protocol == PROTOCOL_META;
    if (o.protocol == PROTOCOL_BINARY) pos = parse_binary(c);
    else for (;;) {
        char *start = c->in + pos;
        char *eol = memmem(start, c->in_len - pos, "\r\n", 2);
        if (!eol) break;
        size_t line = eol - start;
        if (meta && o.get && !o.preload && line > 3 && memcmp(start, "VA ", 3) == 0) {
            /* VA <bytes>: the reply is the line and its data block. */
            long bytes = strtol(start + 3, NULL, 10);
            size_t need = line + 2 + bytes + 2;
            if (c->in_len - pos < need) break;
            pos += need;
            c->in_flight--;
            completed(0);
            continue;
        }
        if (!meta && o.get && !o.preload && line > 6 && memcmp(start, "VALUE ", 6) == 0) {
            /* VALUE <key> <flags> <bytes>: skip the data block; the reply
             * ends at END. */
            char *last = memrchr(start, ' ', line);
            long bytes = strtol(last + 1, NULL, 10);
            size_t need = line + 2 + bytes + 2;
            if (c->in_len - pos < need) break;
            pos += need;
            continue;
        }
        pos += line + 2;
        int ok;
        if (meta)
            ok = line == 2 && memcmp(start, o.get && !o.preload ? "EN" : "HD", 2) == 0;
        else if (o.get && !o.preload)
            ok = line == 3 && memcmp(start, "END", 3) == 0;
        else
            ok = line == 6 && memcmp(start, "STORED", 6) == 0;
        c->in_flight--;
        completed(!ok);
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
}

struct worker {
    struct conn *conns;
    int count;
};

static void *run(void *arg) {
    struct worker *w = arg;
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    for (int i = 0; i < w->count; i++) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = &w->conns[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, w->conns[i].fd, &ev) < 0) die("epoll_ctl");
        fill(&w->conns[i]);
        flush(&w->conns[i]);
    }
    int done = 0;
    struct epoll_event events[256];
    while (!atomic_load(&stopping) && done < w->count) {
        int n = epoll_wait(ep, events, 256, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            for (;;) {
                ssize_t r = conn_recv(c, c->in + c->in_len, IN_BYTES - c->in_len);
                if (r < 0 && errno == EAGAIN) break;
                if (r <= 0) {
                    fprintf(stderr, "mcload: connection closed by the server\n");
                    exit(3);
                }
                c->in_len += r;
                parse(c);
            }
            if (fill(c)) {
                close(c->fd);
                c->fd = -1;
                done++;
                continue;
            }
            flush(c);
        }
    }
    return NULL;
}

#ifdef MCLOAD_TLS
static SSL_CTX *tls_ctx;

/* The handshake, on the still blocking socket. */
static SSL *tls_connect(int fd) {
    if (!tls_ctx) {
        tls_ctx = SSL_CTX_new(TLS_client_method());
        if (!tls_ctx) die("SSL_CTX_new");
        /* The output buffer grows between retries of a write. */
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                      SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    SSL *ssl = SSL_new(tls_ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1 || SSL_connect(ssl) != 1) {
        ERR_print_errors_fp(stderr);
        fprintf(stderr, "mcload: TLS handshake failed\n");
        exit(3);
    }
    return ssl;
}
#endif

static int connect_to(int server) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(o.port[server])};
    if (inet_pton(AF_INET, o.host[server], &a.sin_addr) != 1) {
        fprintf(stderr, "mcload: bad address %s\n", o.host[server]);
        exit(2);
    }
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void usage(void) {
    fprintf(stderr,
            "usage: mcload --server HOST:PORT[,HOST:PORT...] [--workload get|set] "
            "[--protocol text|meta|binary] [--connections N] "
            "[--depth N] [--seconds S] [--warmup S] [--keys N] [--key-size N] "
            "[--value-size N] [--preload] [--tls]\n");
    exit(2);
}

int main(int argc, char **argv) {
    o = (struct opts){.servers = 0, .get = 1, .connections = 50, .depth = 1, .seconds = 8,
                      .warmup = 1, .keys = 100000, .key_size = 32, .value_size = 100};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--preload")) { o.preload = 1; continue; }
        if (!strcmp(a, "--tls")) {
#ifndef MCLOAD_TLS
            fprintf(stderr, "mcload: built without TLS (cc -DMCLOAD_TLS ... -lssl -lcrypto)\n");
            exit(2);
#endif
            o.tls = 1;
            continue;
        }
        if (!v) usage();
        i++;
        if (!strcmp(a, "--server")) {
            for (const char *p = v; *p;) {
                const char *end = strchr(p, ',');
                size_t len = end ? (size_t)(end - p) : strlen(p);
                const char *colon = memrchr(p, ':', len);
                if (o.servers == SERVERS_MAX || !colon || colon - p >= 64) usage();
                memcpy(o.host[o.servers], p, colon - p);
                o.port[o.servers] = atoi(colon + 1);
                if (!o.port[o.servers++]) usage();
                p += len + (end != NULL);
            }
        } else if (!strcmp(a, "--workload")) {
            if (strcmp(v, "get") && strcmp(v, "set")) usage();
            o.get = !strcmp(v, "get");
        } else if (!strcmp(a, "--protocol")) {
            if (!strcmp(v, "text")) o.protocol = PROTOCOL_TEXT;
            else if (!strcmp(v, "meta")) o.protocol = PROTOCOL_META;
            else if (!strcmp(v, "binary")) o.protocol = PROTOCOL_BINARY;
            else usage();
        } else if (!strcmp(a, "--connections")) o.connections = atoi(v);
        else if (!strcmp(a, "--depth")) o.depth = atoi(v);
        else if (!strcmp(a, "--seconds")) o.seconds = atof(v);
        else if (!strcmp(a, "--warmup")) o.warmup = atof(v);
        else if (!strcmp(a, "--keys")) o.keys = atol(v);
        else if (!strcmp(a, "--key-size")) o.key_size = atoi(v);
        else if (!strcmp(a, "--value-size")) o.value_size = atoi(v);
        else usage();
    }
    if (!o.servers || o.connections < 1 || o.connections > CONNECTIONS_MAX || o.depth < 1 ||
        o.depth > DEPTH_MAX || o.keys < 1 || o.key_size < 2 || o.key_size > KEY_BYTES_MAX ||
        o.value_size < 0 || o.value_size > VALUE_BYTES_MAX)
        usage();
    if (o.preload && o.depth < 16) o.depth = 16;
    value_block = malloc(o.value_size + 2);
    memset(value_block, 'v', o.value_size);
    memcpy(value_block + o.value_size, "\r\n", 2);

    struct conn *conns = calloc(o.connections, sizeof *conns);
    long per = (o.keys + o.connections - 1) / o.connections;
    for (int i = 0; i < o.connections; i++) {
        conns[i].fd = connect_to(i % o.servers);
#ifdef MCLOAD_TLS
        if (o.tls) conns[i].ssl = tls_connect(conns[i].fd);
#endif
        fcntl(conns[i].fd, F_SETFL, fcntl(conns[i].fd, F_GETFL) | O_NONBLOCK);
        conns[i].rng = 0x5EED0000ULL + i;
        conns[i].in = malloc(IN_BYTES);
        conns[i].out_cap = 64 * 1024;
        conns[i].out = malloc(conns[i].out_cap);
        conns[i].preload_next = i * per;
        conns[i].preload_end = (i + 1) * per < o.keys ? (i + 1) * per : o.keys;
    }
    struct worker workers[THREADS];
    pthread_t threads[THREADS];
    int start = 0;
    for (int t = 0; t < THREADS; t++) {
        int count = o.connections / THREADS + (t < o.connections % THREADS);
        workers[t] = (struct worker){.conns = conns + start, .count = count};
        start += count;
    }
    double t0 = now_s();
    for (int t = 0; t < THREADS; t++)
        if (workers[t].count) pthread_create(&threads[t], NULL, run, &workers[t]);
    if (o.preload) {
        for (int t = 0; t < THREADS; t++)
            if (workers[t].count) pthread_join(threads[t], NULL);
        printf("{\"preloaded\": %ld, \"errors\": %ld, \"seconds\": %.3f}\n", o.keys,
               atomic_load(&errors_total), now_s() - t0);
        return atomic_load(&errors_total) ? 1 : 0;
    }
    struct timespec warm = {(time_t)o.warmup, (long)((o.warmup - (time_t)o.warmup) * 1e9)};
    nanosleep(&warm, NULL);
    atomic_store(&measuring, 1);
    double m0 = now_s();
    struct timespec run_for = {(time_t)o.seconds, (long)((o.seconds - (time_t)o.seconds) * 1e9)};
    nanosleep(&run_for, NULL);
    atomic_store(&measuring, 0);
    double m1 = now_s();
    atomic_store(&stopping, 1);
    for (int t = 0; t < THREADS; t++)
        if (workers[t].count) pthread_join(threads[t], NULL);
    long ops = atomic_load(&ops_measured);
    printf("{\"ops_per_s\": %.1f, \"ops\": %ld, \"errors\": %ld, \"seconds\": %.3f}\n",
           ops / (m1 - m0), ops, atomic_load(&errors_measured), m1 - m0);
    return 0;
}
