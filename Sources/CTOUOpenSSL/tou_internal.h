#ifndef TOU_INTERNAL_H
#define TOU_INTERNAL_H

/* Shared by the shim's C files only: the handles' insides and a few helpers. */

#include "tou_shim.h"

#include <pthread.h>
#include <time.h>

#include <openssl/ssl.h>

/* The library context the shim's SSL_CTXs use (tou_libctx.c); NULL means OpenSSL's default. */
OSSL_LIB_CTX *tou_lean_libctx(void);

/* Session-ticket keys of a server context (tou_tickets.c). */
typedef struct tou_ticket_keys tou_ticket_keys;

#define TOU_CIPHERS "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
                    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" \
                    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
#define TOU_ERR_CAP 512
/* Bounds on the outgoing queue: a flight is a handful of datagrams and the Swift side drains
 * the queue after every call, so hitting these means something is wrong; excess is dropped
 * the way a full socket buffer would drop it. */
#define TOU_OUT_MAX_DATAGRAMS 64
#define TOU_OUT_MAX_BYTES (256 * 1024)
#define TOU_MAX_COOKIE 255
/* Room to open any record of the epoch in: the largest body (nonce, plaintext, tag). */
#define TOU_RESEAL_SCRATCH (SSL3_RT_MAX_PLAIN_LENGTH + 8 + 16)

struct tou_dtls_ctx {
    SSL_CTX *ssl_ctx;
    int is_server;
    /* Server: ticket keys, NULL when tickets are off. Client: SHA-256 over what decides whom it
     * trusts (trust roots, pins), which a saved session must have been made under. */
    tou_ticket_keys *tickets;
    uint8_t trust_digest[32];
    /* SHA-256 pins of the server's leaf SubjectPublicKeyInfo (client only); none = no pinning. */
    uint8_t (*pins)[32];
    size_t pin_count;
};

struct tou_dtls_conn {
    SSL *ssl;
    tou_dtls_ctx *ctx;
    int is_server;
    int established;
    int close_seen;
    int failed;
    int mtu;

    /* Input: at most one datagram/record, borrowed from the caller for the current call. */
    const uint8_t *in_ptr;
    size_t in_len;
    int peek;

    /* Output queue: datagrams packed in one arena, reset when drained. */
    uint8_t *out_buf;
    size_t out_used, out_cap;
    size_t out_off[TOU_OUT_MAX_DATAGRAMS];
    size_t out_len[TOU_OUT_MAX_DATAGRAMS];
    size_t out_count;

    /* Cookies supplied by the current listen call, and the one accepted (for re-verification
     * when the state machine processes the ClientHello again). */
    const uint8_t *issue_ptr;
    size_t issue_len;
    const uint8_t *acc_ptr;
    const size_t *acc_lens;
    size_t acc_count;
    uint8_t accepted_cookie[TOU_MAX_COOKIE];
    size_t accepted_cookie_len;

    /* The newest epoch OpenSSL has written records in, and the sequence number after its last one
     * there: where our own record layer takes over (tou_dtls_conn_record_layer). */
    uint16_t write_epoch;
    uint64_t next_write_seq;

    /* After the takeover: our record layer's keys (owned here), and an opener with our own write
     * key, which lets OpenSSL's later records in the epoch be re-sealed under the sealer's counter. */
    tou_aead *sealer;
    tou_aead *opener;
    tou_aead *own_opener;
    uint8_t *reseal_scratch;

    /* Client: the name it verifies and sends as SNI (or the IP literal), which a saved session
     * must have been made for. */
    char server_name[256];
    /* Client: the ticket of the session it offered, so an unchanged one is not exported again. */
    uint8_t *offered_ticket;
    size_t offered_ticket_len;

    int alert_read;          /* last alert received: (level << 8) | description, or -1 */
    /* After tou_dtls_conn_release_handshake: ssl is NULL, and these answer for it. */
    const char *released_cipher; /* OpenSSL's static name of the suite */
    int released_reused;
    /* Filled by the certificate verify callback: why the peer's chain was refused, in words,
     * and whether it was the pin check (the chain itself verified). */
    char verify_detail[TOU_ERR_CAP];
    int pin_failed;
    int error_kind;
    char error_msg[TOU_ERR_CAP];
};

/* Copies msg into buf (NUL-terminated, truncated to cap). */
void tou_set_msg(char *buf, size_t cap, const char *msg);
/* Drains the thread's OpenSSL error queue into "prefix: reason (data); reason ..." so one
 * failure never leaks into the next call. Returns the first error's reason code. */
int tou_drain_errors(char *buf, size_t cap, const char *prefix);

void tou_tickets_free(tou_ticket_keys *keys);

#endif
