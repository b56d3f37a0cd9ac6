/*
 * tls-pingpong: the TLS 1.3 over kernel TCP baseline for bench/compare's request/response tests.
 *
 *   tls-pingpong server --port P --cert F --key F [--host 127.0.0.1]
 *   tls-pingpong client --host 127.0.0.1 --port P --ca F --servername localhost
 *                       --connections N --seconds S [--warmup-seconds 1]
 *
 * Both sides are ONE thread with epoll and non-blocking OpenSSL (like toudtls's event loop), TCP_NODELAY,
 * TLS 1.3 only, OpenSSL's default suites. The client prints one JSON line:
 *   {"test":"rr","connections":N,"transactions":T,"transactions_per_s":X,"p50_us":..,"p90_us":..,"p95_us":..,"p99_us":..}
 * Build: gcc -O2 -o tls-pingpong tls_pingpong.c $(pkg-config --cflags --libs openssl)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define BUF_SIZE 16384

static volatile sig_atomic_t stop_requested = 0;
static void on_signal(int sig) { (void)sig; stop_requested = 1; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "tls-pingpong: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

/* Many connections need many descriptors; ask for the hard limit. */
static void raise_fd_limit(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int set_nonblocking_nodelay(int fd) {
    int flags = fcntl(fd, F_GETFL, 0);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return -1;
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static SSL_CTX *make_ctx(int server) {
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!ctx) die("SSL_CTX_new failed");
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) || !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION))
        die("cannot restrict to TLS 1.3");
    /* A retried SSL_write may come from a different buffer address (the pending copy). */
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return ctx;
}

static const char *ssl_error_text(SSL *ssl, int ret, int err) {
    static char text[512];
    unsigned long e = ERR_peek_last_error();
    if (e) {
        ERR_error_string_n(e, text, sizeof text);
        ERR_clear_error();
        return text;
    }
    if (err == SSL_ERROR_SYSCALL) {
        if (ret == 0 || errno == 0) return "unexpected EOF";
        return strerror(errno);
    }
    (void)ssl;
    snprintf(text, sizeof text, "SSL error %d", err);
    return text;
}

static void print_cipher(const char *side, SSL *ssl) {
    fprintf(stderr, "tls-pingpong %s: %s with %s\n", side, SSL_get_version(ssl), SSL_get_cipher_name(ssl));
}

typedef struct {
    int fd;
    SSL *ssl;
    int handshaken;
    uint32_t interest;
    int pending_len;
    unsigned char pending[BUF_SIZE];
} server_conn;

static void set_interest(int ep, int fd, uint32_t *current, uint32_t wanted, void *ptr) {
    if (*current == wanted) return;
    struct epoll_event ev = { .events = wanted, .data.ptr = ptr };
    if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) < 0) die("epoll_ctl MOD failed");
    *current = wanted;
}

static uint32_t interest_for(int err) { return err == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN; }

static void server_close(int ep, server_conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    SSL_free(c->ssl);
    close(c->fd);
    free(c);
}

/* Returns 0 while the connection lives, 1 when it ended cleanly, -1 on error (already reported). */
static int server_drive(int ep, server_conn *c, int *cipher_printed) {
    if (!c->handshaken) {
        int r = SSL_accept(c->ssl);
        if (r != 1) {
            int err = SSL_get_error(c->ssl, r);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                set_interest(ep, c->fd, &c->interest, interest_for(err), c);
                return 0;
            }
            fprintf(stderr, "tls-pingpong server: handshake failed: %s\n", ssl_error_text(c->ssl, r, err));
            return -1;
        }
        c->handshaken = 1;
        if (!*cipher_printed) { print_cipher("server", c->ssl); *cipher_printed = 1; }
    }
    if (c->pending_len > 0) {
        int w = SSL_write(c->ssl, c->pending, c->pending_len);
        if (w <= 0) {
            int err = SSL_get_error(c->ssl, w);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                set_interest(ep, c->fd, &c->interest, interest_for(err), c);
                return 0;
            }
            fprintf(stderr, "tls-pingpong server: write failed: %s\n", ssl_error_text(c->ssl, w, err));
            return -1;
        }
        c->pending_len = 0;
    }
    unsigned char buf[BUF_SIZE];
    for (;;) {
        int r = SSL_read(c->ssl, buf, sizeof buf);
        if (r > 0) {
            int w = SSL_write(c->ssl, buf, r);
            if (w > 0) continue;
            int err = SSL_get_error(c->ssl, w);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                /* Without partial writes the retry must repeat the same bytes: keep them. */
                memcpy(c->pending, buf, (size_t)r);
                c->pending_len = r;
                set_interest(ep, c->fd, &c->interest, interest_for(err), c);
                return 0;
            }
            fprintf(stderr, "tls-pingpong server: write failed: %s\n", ssl_error_text(c->ssl, w, err));
            return -1;
        }
        int err = SSL_get_error(c->ssl, r);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            set_interest(ep, c->fd, &c->interest, interest_for(err), c);
            return 0;
        }
        if (err == SSL_ERROR_ZERO_RETURN) {
            SSL_shutdown(c->ssl); /* best effort: the peer may already be gone */
            ERR_clear_error();
            return 1;
        }
        fprintf(stderr, "tls-pingpong server: read failed: %s\n", ssl_error_text(c->ssl, r, err));
        return -1;
    }
}

static int listen_on(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket failed");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) die("--host must be an IPv4 address");
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("bind"); exit(1); }
    if (listen(fd, 4096) < 0) { perror("listen"); exit(1); }
    int flags = fcntl(fd, F_GETFL, 0);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    return fd;
}

static int run_server(const char *host, int port, const char *cert, const char *key) {
    SSL_CTX *ctx = make_ctx(1);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) die("cannot load --cert");
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) die("cannot load --key");
    if (SSL_CTX_check_private_key(ctx) != 1) die("--cert and --key do not match");

    int lfd = listen_on(host, port);
    struct sockaddr_in bound;
    socklen_t blen = sizeof bound;
    getsockname(lfd, (struct sockaddr *)&bound, &blen);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1 failed");
    struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0) die("epoll_ctl ADD failed");
    fprintf(stderr, "tls-pingpong server: listening on %s:%d\n", host, ntohs(bound.sin_port));
    printf("{\"listening\":%d,\"pid\":%d}\n", ntohs(bound.sin_port), (int)getpid());
    fflush(stdout);

    long accepted = 0, clean = 0, failed = 0;
    int cipher_printed = 0;
    struct epoll_event events[MAX_EVENTS];
    while (!stop_requested) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait failed");
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) {
                        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                            perror("tls-pingpong server: accept");
                        break;
                    }
                    if (set_nonblocking_nodelay(fd) < 0) { close(fd); continue; }
                    server_conn *c = calloc(1, sizeof *c);
                    if (!c) die("out of memory");
                    c->fd = fd;
                    c->ssl = SSL_new(ctx);
                    if (!c->ssl) die("SSL_new failed");
                    SSL_set_fd(c->ssl, fd);
                    c->interest = EPOLLIN;
                    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl ADD failed");
                    accepted++;
                    int r = server_drive(ep, c, &cipher_printed);
                    if (r != 0) { if (r > 0) clean++; else failed++; server_close(ep, c); }
                }
                continue;
            }
            server_conn *c = events[i].data.ptr;
            int r = server_drive(ep, c, &cipher_printed);
            if (r != 0) { if (r > 0) clean++; else failed++; server_close(ep, c); }
        }
    }
    fprintf(stderr, "tls-pingpong server: %ld connections, %ld closed cleanly, %ld failed\n", accepted, clean, failed);
    return failed ? 1 : 0;
}

enum { C_CONNECTING, C_HANDSHAKE, C_SEND, C_WAIT, C_IDLE };

typedef struct {
    int fd;
    SSL *ssl;
    int state;
    uint32_t interest;
    double sent_at;
} client_conn;

typedef struct {
    double *values;
    size_t count, capacity;
} samples;

static void samples_add(samples *s, double v) {
    if (s->count == s->capacity) {
        s->capacity = s->capacity ? s->capacity * 2 : 65536;
        s->values = realloc(s->values, s->capacity * sizeof *s->values);
        if (!s->values) die("out of memory");
    }
    s->values[s->count++] = v;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted values. */
static double percentile(const samples *s, double p) {
    if (s->count == 0) return 0;
    size_t rank = (size_t)ceil(p / 100.0 * (double)s->count);
    if (rank < 1) rank = 1;
    return s->values[rank - 1];
}

typedef enum { P_HANDSHAKE, P_WARMUP, P_MEASURE, P_DRAIN } phase_t;

typedef struct {
    int ep;
    phase_t phase;
    double measure_start, measure_end;
    long established, waiting;
    int cipher_printed;
    samples latencies;
} client_run;

/* Returns 0 to continue, -1 on error (already reported). */
static int client_drive(client_run *run, client_conn *c, uint32_t events) {
    if (c->state == C_CONNECTING) {
        int soerr = 0;
        socklen_t len = sizeof soerr;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0 || soerr != 0) {
            fprintf(stderr, "tls-pingpong client: connect failed: %s\n", strerror(soerr ? soerr : errno));
            return -1;
        }
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return 0;
        c->state = C_HANDSHAKE;
    }
    if (c->state == C_HANDSHAKE) {
        int r = SSL_connect(c->ssl);
        if (r != 1) {
            int err = SSL_get_error(c->ssl, r);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                set_interest(run->ep, c->fd, &c->interest, interest_for(err), c);
                return 0;
            }
            fprintf(stderr, "tls-pingpong client: handshake failed: %s\n", ssl_error_text(c->ssl, r, err));
            return -1;
        }
        if (!run->cipher_printed) { print_cipher("client", c->ssl); run->cipher_printed = 1; }
        run->established++;
        c->state = C_SEND;
        set_interest(run->ep, c->fd, &c->interest, EPOLLIN, c);
        /* Ping-pong starts for everyone at once, when the last handshake is done. */
        if (run->phase == P_HANDSHAKE) return 0;
    }
    for (;;) {
        if (c->state == C_SEND) {
            if (run->phase == P_HANDSHAKE || run->phase == P_DRAIN) {
                c->state = C_IDLE;
                return 0;
            }
            unsigned char ping = 'p';
            double t = now_s();
            int w = SSL_write(c->ssl, &ping, 1);
            if (w <= 0) {
                int err = SSL_get_error(c->ssl, w);
                if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                    set_interest(run->ep, c->fd, &c->interest, interest_for(err), c);
                    return 0;
                }
                fprintf(stderr, "tls-pingpong client: write failed: %s\n", ssl_error_text(c->ssl, w, err));
                return -1;
            }
            c->sent_at = t;
            c->state = C_WAIT;
            run->waiting++;
        }
        if (c->state == C_WAIT) {
            unsigned char buf[64];
            int r = SSL_read(c->ssl, buf, sizeof buf);
            if (r <= 0) {
                int err = SSL_get_error(c->ssl, r);
                if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
                    set_interest(run->ep, c->fd, &c->interest, interest_for(err), c);
                    return 0;
                }
                fprintf(stderr, "tls-pingpong client: read failed: %s\n",
                        err == SSL_ERROR_ZERO_RETURN ? "server closed the connection" : ssl_error_text(c->ssl, r, err));
                return -1;
            }
            if (r != 1) {
                fprintf(stderr, "tls-pingpong client: expected a 1-byte echo, got %d bytes\n", r);
                return -1;
            }
            double t = now_s();
            run->waiting--;
            if (run->phase == P_MEASURE && c->sent_at >= run->measure_start && t <= run->measure_end)
                samples_add(&run->latencies, (t - c->sent_at) * 1e6);
            c->state = C_SEND;
            continue;
        }
        return 0;
    }
}

static int run_client(const char *host, int port, const char *ca, const char *servername, long connections,
                      double seconds, double warmup) {
    SSL_CTX *ctx = make_ctx(0);
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) die("cannot load --ca");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);

    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) die("--host must be an IPv4 address");

    client_run run = { .phase = P_HANDSHAKE };
    run.ep = epoll_create1(0);
    if (run.ep < 0) die("epoll_create1 failed");
    client_conn *conns = calloc((size_t)connections, sizeof *conns);
    if (!conns) die("out of memory");
    for (long i = 0; i < connections; i++) {
        client_conn *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (c->fd < 0) { perror("tls-pingpong client: socket"); return 1; }
        if (set_nonblocking_nodelay(c->fd) < 0) die("cannot set O_NONBLOCK/TCP_NODELAY");
        c->ssl = SSL_new(ctx);
        if (!c->ssl) die("SSL_new failed");
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_tlsext_host_name(c->ssl, servername);
        if (SSL_set1_host(c->ssl, servername) != 1) die("SSL_set1_host failed");
        c->state = C_CONNECTING;
        c->interest = EPOLLOUT;
        struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = c };
        if (epoll_ctl(run.ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl ADD failed");
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
            perror("tls-pingpong client: connect");
            return 1;
        }
    }

    const double handshake_timeout = 60, drain_timeout = 5;
    double phase_deadline = now_s() + handshake_timeout;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        double now = now_s();
        if (now >= phase_deadline) {
            if (run.phase == P_HANDSHAKE) {
                fprintf(stderr, "tls-pingpong client: only %ld of %ld connections established after %.0f s\n",
                        run.established, connections, handshake_timeout);
                return 1;
            } else if (run.phase == P_WARMUP) {
                run.phase = P_MEASURE;
                run.measure_start = now;
                run.measure_end = now + seconds;
                phase_deadline = run.measure_end;
            } else if (run.phase == P_MEASURE) {
                run.phase = P_DRAIN;
                phase_deadline = now + drain_timeout;
            } else {
                fprintf(stderr, "tls-pingpong client: %ld echoes still missing %.0f s after the end\n", run.waiting,
                        drain_timeout);
                return 1;
            }
        }
        if (run.phase == P_HANDSHAKE && run.established == connections) {
            run.phase = P_WARMUP;
            phase_deadline = now_s() + warmup;
            for (long i = 0; i < connections; i++)
                if (client_drive(&run, &conns[i], 0) < 0) return 1;
            continue;
        }
        if (run.phase == P_DRAIN && run.waiting == 0) break;
        if (stop_requested) { fprintf(stderr, "tls-pingpong client: interrupted\n"); return 1; }
        int timeout_ms = (int)ceil((phase_deadline - now_s()) * 1000);
        if (timeout_ms < 0) timeout_ms = 0;
        int n = epoll_wait(run.ep, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait failed");
        }
        for (int i = 0; i < n; i++)
            if (client_drive(&run, events[i].data.ptr, events[i].events) < 0) return 1;
    }

    /* Close politely so the server counts a clean end, not a reset. */
    for (long i = 0; i < connections; i++) {
        SSL_shutdown(conns[i].ssl);
        SSL_free(conns[i].ssl);
        close(conns[i].fd);
    }
    qsort(run.latencies.values, run.latencies.count, sizeof(double), compare_double);
    size_t t = run.latencies.count;
    printf("{\"test\":\"rr\",\"connections\":%ld,\"transactions\":%zu,\"transactions_per_s\":%.1f,"
           "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p95_us\":%.1f,\"p99_us\":%.1f}\n",
           connections, t, (double)t / seconds, percentile(&run.latencies, 50), percentile(&run.latencies, 90),
           percentile(&run.latencies, 95), percentile(&run.latencies, 99));
    fflush(stdout);
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: tls-pingpong server --port P --cert F --key F [--host 127.0.0.1]\n"
            "       tls-pingpong client --host H --port P --ca F --servername NAME --connections N --seconds S "
            "[--warmup-seconds 1]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1];
    const char *host = "127.0.0.1", *cert = NULL, *key = NULL, *ca = NULL, *servername = "localhost";
    int port = -1;
    long connections = 1;
    double seconds = 5, warmup = 1;
    for (int i = 2; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc) usage();
        const char *val = argv[++i];
        char *end = NULL;
        if (!strcmp(opt, "--host")) host = val;
        else if (!strcmp(opt, "--cert")) cert = val;
        else if (!strcmp(opt, "--key")) key = val;
        else if (!strcmp(opt, "--ca")) ca = val;
        else if (!strcmp(opt, "--servername")) servername = val;
        else if (!strcmp(opt, "--port")) { port = (int)strtol(val, &end, 10); if (*end || port < 0 || port > 65535) usage(); }
        else if (!strcmp(opt, "--connections")) { connections = strtol(val, &end, 10); if (*end || connections < 1) usage(); }
        else if (!strcmp(opt, "--seconds")) { seconds = strtod(val, &end); if (*end || seconds <= 0) usage(); }
        else if (!strcmp(opt, "--warmup-seconds")) { warmup = strtod(val, &end); if (*end || warmup < 0) usage(); }
        else usage();
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    raise_fd_limit();
    if (!strcmp(mode, "server")) {
        if (port < 0 || !cert || !key) usage();
        return run_server(host, port, cert, key);
    }
    if (!strcmp(mode, "client")) {
        if (port <= 0 || !ca) usage();
        return run_client(host, port, ca, servername, connections, seconds, warmup);
    }
    usage();
    return 2;
}
