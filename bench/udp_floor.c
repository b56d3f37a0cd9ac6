/* udp-floor: toudtls's datagram path alone, in C, as a reference row for bench/compare.
 *
 * Records are sealed and opened by the project's own record layer (Sources/CTOUOpenSSL/
 * tou_record.c: DTLS 1.2 AES-256-GCM records in OpenSSL's TLS record mode), behind a 4-byte header
 * standing for GUE, in UDP datagrams of at most 1,472 bytes, with the system calls toudtls makes
 * (epoll, recvmmsg and sendmmsg, UDP GSO and GRO). Left out is everything else a transport does:
 * no handshake (a fixed key), no TCP (no headers or timers; acknowledgements only to keep the
 * sender within the receiver's socket buffer; no retransmission, so a lost datagram is an error),
 * no language runtime. What it costs is what a userspace transport of this design pays on this
 * machine before any work of its own.
 *
 *   udp-floor rr-server [--host H] [--port P]           prints {"listening":PORT,"pid":PID}
 *   udp-floor rr-client --port P [--host H] [--seconds S] [--warmup-seconds W]
 *   udp-floor bulk-recv [--host H] [--port P]            plaintext to stdout, the port to stderr
 *   udp-floor bulk-send --port P [--host H]              stdin to the receiver
 */
#define _GNU_SOURCE
#include "tou_shim.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

enum {
    DATAGRAM_MAX = 1472,   /* IPv4 path MTU 1500 */
    HEADER = 4,            /* the stand-in for GUE */
    RECORD_OVERHEAD = 37,  /* DTLS header 13, explicit nonce 8, tag 16 */
    PAYLOAD = DATAGRAM_MAX - HEADER - RECORD_OVERHEAD,
    GSO_SEGMENTS = 44,     /* 44 x 1,472 bytes fits a 64 KiB UDP datagram */
    BATCH = 4,             /* GSO datagrams per sendmmsg on the bulk path */
    GRO_BUFFER = 65536,
    RECV_BATCH = 8,
    TYPE_DATA = 23,
    TYPE_END = 21,
};

static const uint8_t fixed_key[32] = "udp-floor: not a secret, a floor";
static const uint8_t fixed_salt[4] = {1, 2, 3, 4};
static volatile sig_atomic_t stop_requested;

static void on_signal(int sig) { (void)sig; stop_requested = 1; }

static void die(const char *what) {
    fprintf(stderr, "udp-floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static tou_aead *aead(int encrypt) {
    tou_aead *a = tou_aead_new(TOU_AEAD_AES_256_GCM, fixed_key, sizeof fixed_key, fixed_salt, sizeof fixed_salt,
                               encrypt);
    if (a == NULL) { fprintf(stderr, "udp-floor: no AES-256-GCM\n"); exit(1); }
    if (encrypt) tou_aead_start_sequence(a, 1, 0);
    return a;
}

static struct sockaddr_in address(const char *host, int port) {
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { fprintf(stderr, "udp-floor: bad host %s\n", host); exit(2); }
    return a;
}

/* announce: print the port as JSON on stdout (not where stdout carries data). */
static int bound_socket(const char *host, int port, int announce) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in a = address(host, port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    socklen_t len = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &len);
    if (announce) {
        printf("{\"listening\":%d,\"pid\":%d}\n", ntohs(a.sin_port), (int)getpid());
        fflush(stdout);
    } else {
        fprintf(stderr, "udp-floor: listening on %d\n", ntohs(a.sin_port));
    }
    return fd;
}

static int connected_socket(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in a = address(host, port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    return fd;
}

static int epoll_for(int fd) {
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll");
    return ep;
}

/* Blocks until the socket is readable: 0 if a signal came first (the caller checks for stop). */
static int wait_readable(int ep) {
    struct epoll_event ev;
    if (epoll_wait(ep, &ev, 1, -1) >= 0) return 1;
    if (errno != EINTR) die("epoll_wait");
    return 0;
}

/* The send buffer is full: waits up to 100 ms for room, then listens for input again. */
static void wait_writable(int fd, int ep) {
    struct epoll_event ev = { .events = EPOLLOUT, .data.fd = fd };
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    epoll_wait(ep, &ev, 1, 100);
    ev.events = EPOLLIN;
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

static void big_buffer(int fd, int option, int forced, int bytes) {
    if (setsockopt(fd, SOL_SOCKET, forced, &bytes, sizeof bytes) < 0)
        setsockopt(fd, SOL_SOCKET, option, &bytes, sizeof bytes);
}

/* One datagram: header, then the record sealing p (n bytes). Returns its length. */
static size_t seal_datagram(tou_aead *sealer, uint8_t type, const uint8_t *p, size_t n, uint8_t *out) {
    out[0] = 0; out[1] = 0; out[2] = 0; out[3] = 0;
    long len = tou_aead_seal(sealer, type, p, n, NULL, 0, out + HEADER, DATAGRAM_MAX - HEADER);
    if (len < 0) { fprintf(stderr, "udp-floor: seal failed (%ld)\n", len); exit(1); }
    return HEADER + (size_t)len;
}

/* Opens the record in one datagram into scratch; returns the plaintext's length (-1 if not
 * authentic) with *type and *plain set. */
static long open_datagram(tou_aead *opener, const uint8_t *d, size_t len, uint8_t *scratch, uint8_t *type,
                          const uint8_t **plain) {
    if (len < HEADER + RECORD_OVERHEAD) return -1;
    size_t at = 0;
    long n = tou_aead_open(opener, d + HEADER, len - HEADER, scratch, 2048, &at);
    if (n < 0) return -1;
    *type = d[HEADER];
    *plain = scratch + at;
    return n;
}

/* ---- request/response ------------------------------------------------------------------------- */

static int rr_server(const char *host, int port) {
    int fd = bound_socket(host, port, 1);
    int ep = epoll_for(fd);
    tou_aead *sealer = aead(1), *opener = aead(0);
    static uint8_t in[RECV_BATCH][2048], out[RECV_BATCH][DATAGRAM_MAX], scratch[2048];
    struct sockaddr_in peers[RECV_BATCH];
    struct iovec iov[RECV_BATCH], oiov[RECV_BATCH];
    struct mmsghdr msgs[RECV_BATCH], omsgs[RECV_BATCH];
    long answered = 0, dropped = 0;
    while (!stop_requested) {
        if (!wait_readable(ep)) continue;
        for (;;) {
            for (int i = 0; i < RECV_BATCH; i++) {
                iov[i] = (struct iovec){ in[i], sizeof in[i] };
                msgs[i].msg_hdr = (struct msghdr){ .msg_name = &peers[i], .msg_namelen = sizeof peers[i],
                                                   .msg_iov = &iov[i], .msg_iovlen = 1 };
            }
            int n = recvmmsg(fd, msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
            if (n <= 0) break;
            int replies = 0;
            for (int i = 0; i < n; i++) {
                uint8_t type;
                const uint8_t *plain;
                long len = open_datagram(opener, in[i], msgs[i].msg_len, scratch, &type, &plain);
                if (len < 0 || type != TYPE_DATA) { dropped++; continue; }
                oiov[replies] = (struct iovec){ out[replies], seal_datagram(sealer, TYPE_DATA, plain, (size_t)len,
                                                                            out[replies]) };
                omsgs[replies].msg_hdr = (struct msghdr){ .msg_name = &peers[i], .msg_namelen = sizeof peers[i],
                                                          .msg_iov = &oiov[replies], .msg_iovlen = 1 };
                replies++;
            }
            if (replies > 0 && sendmmsg(fd, omsgs, (unsigned)replies, 0) < 0 && errno != EAGAIN) die("sendmmsg");
            answered += replies;
            if (n < RECV_BATCH) break;
        }
    }
    fprintf(stderr, "udp-floor rr-server: %ld answered, %ld dropped\n", answered, dropped);
    return 0;
}

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double percentile(const double *v, size_t n, double p) {
    if (n == 0) return 0;
    size_t i = (size_t)ceil(p / 100 * (double)n);
    return v[i > 0 ? i - 1 : 0];
}

static int rr_client(const char *host, int port, double seconds, double warmup) {
    int fd = connected_socket(host, port);
    int ep = epoll_for(fd);
    tou_aead *sealer = aead(1), *opener = aead(0);
    uint8_t request[DATAGRAM_MAX], in[2048], scratch[2048], byte = 'x';
    size_t capacity = 1 << 20, count = 0;
    double *latencies = malloc(capacity * sizeof *latencies);
    double start = now_s(), measure_from = start + warmup, end = measure_from + seconds;
    for (;;) {
        double sent = now_s();
        if (sent >= end) break;
        if (stop_requested) { fprintf(stderr, "udp-floor rr-client: interrupted\n"); return 1; }
        struct iovec iov = { request, seal_datagram(sealer, TYPE_DATA, &byte, 1, request) };
        struct mmsghdr m = { .msg_hdr = { .msg_iov = &iov, .msg_iovlen = 1 } };
        if (sendmmsg(fd, &m, 1, 0) != 1) die("sendmmsg");
        for (;;) {
            struct epoll_event ev;
            int ready = epoll_wait(ep, &ev, 1, 2000);
            if (ready < 0 && errno == EINTR) continue;
            if (ready <= 0) { fprintf(stderr, "udp-floor rr-client: no echo within 2 s\n"); return 1; }
            struct iovec riov = { in, sizeof in };
            struct mmsghdr r = { .msg_hdr = { .msg_iov = &riov, .msg_iovlen = 1 } };
            if (recvmmsg(fd, &r, 1, MSG_DONTWAIT, NULL) != 1) continue;
            uint8_t type;
            const uint8_t *plain;
            if (open_datagram(opener, in, r.msg_len, scratch, &type, &plain) != 1 || *plain != byte) {
                fprintf(stderr, "udp-floor rr-client: a bad echo\n");
                return 1;
            }
            break;
        }
        double done = now_s();
        if (sent >= measure_from) {
            if (count == capacity) latencies = realloc(latencies, (capacity *= 2) * sizeof *latencies);
            latencies[count++] = (done - sent) * 1e6;
        }
    }
    qsort(latencies, count, sizeof *latencies, compare_double);
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    printf("{\"test\":\"rr\",\"connections\":1,\"transactions\":%zu,\"transactions_per_s\":%.1f,"
           "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p95_us\":%.1f,\"p99_us\":%.1f}\n",
           count, (double)count / seconds, percentile(latencies, count, 50), percentile(latencies, count, 90),
           percentile(latencies, count, 95), percentile(latencies, count, 99));
    fflush(stdout);
    return 0;
}

/* ---- bulk ------------------------------------------------------------------------------------- */

/* The receiver acknowledges after every batch it reads (a record carrying the bytes so far); the
 * sender keeps at most WINDOW bytes unacknowledged, well inside the receiver's socket buffer. */
#define WINDOW (2u << 20)

static void put64(uint8_t *p, uint64_t v) { for (int i = 7; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; } }
static uint64_t get64(const uint8_t *p) { uint64_t v = 0; for (int i = 0; i < 8; i++) v = v << 8 | p[i]; return v; }

static int bulk_recv(const char *host, int port) {
    int fd = bound_socket(host, port, 0);
    int one = 1;
    if (setsockopt(fd, IPPROTO_UDP, UDP_GRO, &one, sizeof one) < 0) die("UDP_GRO");
    big_buffer(fd, SO_RCVBUF, SO_RCVBUFFORCE, 16 << 20);
    int ep = epoll_for(fd);
    tou_aead *sealer = aead(1), *opener = aead(0);
    static uint8_t in[RECV_BATCH][GRO_BUFFER], control[RECV_BATCH][64], scratch[2048], out[256 << 10];
    struct sockaddr_in peer;
    struct iovec iov[RECV_BATCH];
    struct mmsghdr msgs[RECV_BATCH];
    size_t pending = 0;
    uint64_t received = 0, dropped = 0;
    int peer_known = 0, finished = 0;
    uint64_t announced = 0;
    while (!finished && !stop_requested) {
        if (!wait_readable(ep)) continue;
        for (;;) {
            for (int i = 0; i < RECV_BATCH; i++) {
                iov[i] = (struct iovec){ in[i], GRO_BUFFER };
                msgs[i].msg_hdr = (struct msghdr){ .msg_name = &peer, .msg_namelen = sizeof peer, .msg_iov = &iov[i],
                                                   .msg_iovlen = 1, .msg_control = control[i],
                                                   .msg_controllen = sizeof control[i] };
            }
            int n = recvmmsg(fd, msgs, RECV_BATCH, MSG_DONTWAIT, NULL);
            if (n <= 0) break;
            peer_known = 1;
            for (int i = 0; i < n; i++) {
                size_t len = msgs[i].msg_len, segment = len;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c))
                    if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO) segment = (size_t)*(int *)CMSG_DATA(c);
                if (segment == 0) segment = len;  /* never step by nothing */
                for (size_t at = 0; at < len; at += segment) {
                    size_t this = len - at < segment ? len - at : segment;
                    uint8_t type;
                    const uint8_t *plain;
                    long plen = open_datagram(opener, in[i] + at, this, scratch, &type, &plain);
                    if (plen < 0) { dropped++; continue; }
                    if (type == TYPE_END && plen == 8) { announced = get64(plain); finished = 1; continue; }
                    if (pending + (size_t)plen > sizeof out) {
                        if (write(1, out, pending) != (ssize_t)pending) die("write");
                        pending = 0;
                    }
                    memcpy(out + pending, plain, (size_t)plen);
                    pending += (size_t)plen;
                    received += (uint64_t)plen;
                }
            }
            if (n < RECV_BATCH) break;
        }
        if (peer_known) {
            uint8_t count[8], ack[DATAGRAM_MAX];
            put64(count, received);
            size_t alen = seal_datagram(sealer, TYPE_DATA, count, 8, ack);
            sendto(fd, ack, alen, 0, (struct sockaddr *)&peer, sizeof peer);
        }
    }
    if (pending > 0 && write(1, out, pending) != (ssize_t)pending) die("write");
    if (!finished) { fprintf(stderr, "udp-floor bulk-recv: interrupted\n"); return 1; }
    if (announced != received) {
        fprintf(stderr, "udp-floor bulk-recv: %llu of %llu bytes arrived (datagrams lost; no retransmission here)\n",
                (unsigned long long)received, (unsigned long long)announced);
        return 3;
    }
    fprintf(stderr, "udp-floor bulk-recv: %llu bytes, records in AES-256-GCM, %llu datagrams dropped\n",
            (unsigned long long)received,
            (unsigned long long)dropped);
    return 0;
}

/* Reads acknowledgements; blocks (up to timeout_ms) while the window is full or until `want`. */
static uint64_t read_acks(int fd, int ep, tou_aead *opener, uint64_t acked, uint64_t want, int timeout_ms) {
    uint8_t in[2048], scratch[2048];
    while (acked < want) {
        ssize_t n = recv(fd, in, sizeof in, MSG_DONTWAIT);
        if (n < 0) {
            if (errno != EAGAIN) die("recv");
            struct epoll_event ev;
            int ready = epoll_wait(ep, &ev, 1, timeout_ms);
            if (ready < 0 && errno == EINTR) continue;
            if (ready <= 0) return acked;
            continue;
        }
        uint8_t type;
        const uint8_t *plain;
        if (open_datagram(opener, in, (size_t)n, scratch, &type, &plain) == 8 && get64(plain) > acked)
            acked = get64(plain);
    }
    return acked;
}

static int bulk_send(const char *host, int port) {
    int fd = connected_socket(host, port);
    int ep = epoll_for(fd);
    big_buffer(fd, SO_SNDBUF, SO_SNDBUFFORCE, 4 << 20);
    tou_aead *sealer = aead(1), *opener = aead(0);
    static uint8_t data[BATCH * GSO_SEGMENTS * PAYLOAD], wire[BATCH][GSO_SEGMENTS * DATAGRAM_MAX];
    static uint8_t control[BATCH][CMSG_SPACE(sizeof(uint16_t))];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    uint64_t sent = 0, acked = 0;
    size_t have = 0;
    int eof = 0;
    while (!eof || have > 0) {
        while (!eof && have < sizeof data) {
            ssize_t n = read(0, data + have, sizeof data - have);
            if (n < 0) { if (errno == EINTR) continue; die("read"); }
            if (n == 0) eof = 1;
            have += (size_t)n;
        }
        if (sent - acked + have > WINDOW) acked = read_acks(fd, ep, opener, acked, sent + have - WINDOW, 5000);
        if (sent - acked + have > WINDOW) { fprintf(stderr, "udp-floor bulk-send: no acknowledgement in 5 s\n"); return 1; }
        /* GSO datagrams of equal segments; a short last record ends its datagram. */
        int count = 0;
        size_t at = 0;
        while (at < have && count < BATCH) {
            size_t used = 0, segments = 0, segment = 0;
            while (at < have && segments < GSO_SEGMENTS) {
                size_t n = have - at < PAYLOAD ? have - at : PAYLOAD;
                size_t len = seal_datagram(sealer, TYPE_DATA, data + at, n, wire[count] + used);
                if (segments == 0) segment = len;
                used += len;
                segments++;
                at += n;
                if (len < segment) break;
            }
            iov[count] = (struct iovec){ wire[count], used };
            msgs[count].msg_hdr = (struct msghdr){ .msg_iov = &iov[count], .msg_iovlen = 1 };
            if (segments > 1) {
                msgs[count].msg_hdr.msg_control = control[count];
                msgs[count].msg_hdr.msg_controllen = sizeof control[count];
                struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[count].msg_hdr);
                c->cmsg_level = IPPROTO_UDP;
                c->cmsg_type = UDP_SEGMENT;
                c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                *(uint16_t *)CMSG_DATA(c) = (uint16_t)segment;
            }
            count++;
        }
        for (int done = 0; done < count;) {
            int n = sendmmsg(fd, msgs + done, (unsigned)(count - done), 0);
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN) { wait_writable(fd, ep); continue; }
                die("sendmmsg");
            }
            done += n;
        }
        sent += at;
        memmove(data, data + at, have - at);
        have -= at;
        acked = read_acks(fd, ep, opener, acked, UINT64_MAX, 0);
    }
    /* The end: the total, repeated until everything is acknowledged. */
    for (int attempt = 0; attempt < 25 && acked < sent; attempt++) {
        uint8_t total[8], end[DATAGRAM_MAX];
        put64(total, sent);
        size_t len = seal_datagram(sealer, TYPE_END, total, 8, end);
        if (send(fd, end, len, 0) < 0) die("send");
        acked = read_acks(fd, ep, opener, acked, sent, 200);
    }
    if (acked < sent) { fprintf(stderr, "udp-floor bulk-send: %llu of %llu bytes acknowledged\n",
                                (unsigned long long)acked, (unsigned long long)sent); return 1; }
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: udp-floor rr-server|bulk-recv [--host H] [--port P]\n"
                    "       udp-floor rr-client --port P [--host H] [--seconds S] [--warmup-seconds W]\n"
                    "       udp-floor bulk-send --port P [--host H]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1], *host = "127.0.0.1";
    int port = 0;
    double seconds = 5, warmup = 1;
    for (int i = 2; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc) usage();
        const char *val = argv[++i];
        char *end = NULL;
        if (!strcmp(opt, "--host")) host = val;
        else if (!strcmp(opt, "--port")) { port = (int)strtol(val, &end, 10); if (*end || port < 0 || port > 65535) usage(); }
        else if (!strcmp(opt, "--seconds")) { seconds = strtod(val, &end); if (*end || seconds <= 0) usage(); }
        else if (!strcmp(opt, "--warmup-seconds")) { warmup = strtod(val, &end); if (*end || warmup < 0) usage(); }
        else usage();
    }
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (!strcmp(mode, "rr-server")) return rr_server(host, port);
    if (!strcmp(mode, "rr-client")) { if (port <= 0) usage(); return rr_client(host, port, seconds, warmup); }
    if (!strcmp(mode, "bulk-recv")) return bulk_recv(host, port);
    if (!strcmp(mode, "bulk-send")) { if (port <= 0) usage(); return bulk_send(host, port); }
    usage();
    return 2;
}
