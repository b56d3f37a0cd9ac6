#ifndef TOU_SHIM_H
#define TOU_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* HMAC-SHA-256 of data under key; writes 32 bytes to out. Returns 1 on success, 0 on failure. */
int tou_hmac_sha256(const uint8_t *key, size_t key_len,
                    const uint8_t *data, size_t data_len,
                    uint8_t out[32]);

/* An HMAC-SHA-256 key set up once: OpenSSL 3's one-shot HMAC looks the MAC and the digest up
 * by name on every call, which costs more than the hashing itself. Immutable after creation, so
 * several threads may use one. NULL on failure. */
typedef struct tou_hmac_key tou_hmac_key;
tou_hmac_key *tou_hmac_key_new(const uint8_t *key, size_t key_len);
void tou_hmac_key_free(tou_hmac_key *key);
/* HMAC-SHA-256 of data under key; writes 32 bytes to out. Returns 1 on success, 0 on failure. */
int tou_hmac_key_sha256(const tou_hmac_key *key, const uint8_t *data, size_t data_len, uint8_t out[32]);

/* SHA-256 of the DER SubjectPublicKeyInfo of the first certificate in pem (the value a
 * public-key pin holds). Returns 1 on success, 0 with a message in err. */
int tou_public_key_sha256(const uint8_t *pem, size_t pem_len, uint8_t out[32], char *err, size_t err_cap);

/* Whether client contexts may run in the lean library context (tou_libctx.c) when the process's
 * OpenSSL has the providers `names` (count of them) loaded: only when those are OpenSSL's default
 * (and base) provider, so that a configuration that loads FIPS or any other provider is obeyed. */
int tou_lean_libctx_allowed(const char *const *names, size_t count);

/* Cryptographically secure random bytes. Returns 1 on success, 0 on failure. */
int tou_random_bytes(uint8_t *out, size_t len);

/* ---------------------------------------------------------------------------------------------
 * DTLS 1.2 over a datagram-preserving in-memory BIO. Opaque handles, no OpenSSL types.
 * A context is immutable after creation and may be shared across threads; a connection is
 * confined to one thread at a time. Nothing here aborts on peer input.
 * ------------------------------------------------------------------------------------------- */

typedef struct tou_dtls_ctx tou_dtls_ctx;
typedef struct tou_dtls_conn tou_dtls_conn;

/* Error kinds (match DTLSError cases). */
enum {
    TOU_DTLS_E_NONE = 0,
    TOU_DTLS_E_CONFIG = 1,
    TOU_DTLS_E_UNTRUSTED = 2,
    TOU_DTLS_E_NAME = 3,
    TOU_DTLS_E_NO_PEER_CERT = 4,
    TOU_DTLS_E_HANDSHAKE = 5,
    TOU_DTLS_E_ALERT = 6,
    TOU_DTLS_E_PROTOCOL = 7,
    TOU_DTLS_E_PIN = 8,               /* the chain verified, but the leaf's key is not pinned */
};

/* Results of tou_dtls_conn_step. */
enum {
    TOU_DTLS_STEP_FATAL = -1,          /* see tou_dtls_conn_error_kind / _message */
    TOU_DTLS_STEP_WANT = 0,            /* nothing more to do until more input or a timeout */
    TOU_DTLS_STEP_DATA = 1,            /* one record's plaintext was written to out */
    TOU_DTLS_STEP_HANDSHAKE_DONE = 2,
    TOU_DTLS_STEP_CLOSE_NOTIFY = 3,
};

/* Results of tou_dtls_listen. */
enum {
    TOU_DTLS_LISTEN_DROPPED = 0,
    TOU_DTLS_LISTEN_HVR = 1,
    TOU_DTLS_LISTEN_ACCEPTED = 2,
};

/* Contexts. PEM inputs are read from memory. On failure NULL is returned and err holds a
 * NUL-terminated message. A client with pin_count > 0 pins (32 bytes each, concatenated) also
 * requires the SHA-256 of the server leaf's DER SubjectPublicKeyInfo to be one of them. A client
 * with trust_pem NULL verifies against the system trust store (OpenSSL's default paths, which
 * SSL_CERT_FILE and SSL_CERT_DIR override), loaded once for the context. */
tou_dtls_ctx *tou_dtls_ctx_new_client(const uint8_t *trust_pem, size_t trust_len,
                                      const uint8_t *chain_pem, size_t chain_len,
                                      const uint8_t *key_pem, size_t key_len,
                                      const uint8_t *pins, size_t pin_count,
                                      char *err, size_t err_cap);
tou_dtls_ctx *tou_dtls_ctx_new_server(const uint8_t *chain_pem, size_t chain_len,
                                      const uint8_t *key_pem, size_t key_len,
                                      const uint8_t *client_trust_pem, size_t client_trust_len,
                                      int require_client_cert,
                                      char *err, size_t err_cap);
void tou_dtls_ctx_free(tou_dtls_ctx *ctx);
/* Server: issue DTLS 1.2 session tickets (RFC 5077) under keys that rotate every lifetime (the
 * previous key still opens tickets for one more lifetime; such tickets are renewed). Returns 1,
 * or 0 with a message in err. */
int tou_dtls_ctx_enable_tickets(tou_dtls_ctx *ctx, long lifetime_seconds, char *err, size_t err_cap);
/* Server: start a new ticket key now (the current one becomes the previous one). */
void tou_dtls_ctx_rotate_ticket_keys(tou_dtls_ctx *ctx);

/* Restricts a context to an OpenSSL cipher list (a subset of the AEAD suites, in order of
 * preference), before any connection is made from it. Returns 1, or 0 with a message in err. */
int tou_dtls_ctx_set_ciphers(tou_dtls_ctx *ctx, const char *list, char *err, size_t err_cap);

/* A client connection. server_name is a DNS name (verified and sent as SNI) or an IP literal
 * (verified against IP SANs, no SNI). */
tou_dtls_conn *tou_dtls_conn_new_client(tou_dtls_ctx *ctx, const char *server_name, int mtu,
                                        char *err, size_t err_cap);
void tou_dtls_conn_free(tou_dtls_conn *conn);

/* Stateless cookie exchange on a server context. acceptable cookies are concatenated in
 * `acc` with their lengths in `acc_lens`. HVR: the HelloVerifyRequest is copied to hvr_out.
 * ACCEPTED: *out_conn is a new server connection that has processed the ClientHello; its
 * first flight is in its output queue. DROPPED: msg says why. With require_cookie 0 the
 * ClientHello is taken without a cookie exchange (the caller has judged that it may be). */
int tou_dtls_listen(tou_dtls_ctx *ctx, const uint8_t *dgram, size_t dgram_len,
                    const uint8_t *cookie, size_t cookie_len,
                    const uint8_t *acc, const size_t *acc_lens, size_t acc_count,
                    int require_cookie, int mtu,
                    uint8_t *hvr_out, size_t hvr_cap, size_t *hvr_len,
                    tou_dtls_conn **out_conn, char *msg, size_t msg_cap);

/* Client, after the handshake: the session in a form tou_dtls_conn_offer_session takes back
 * (OpenSSL's DER in an envelope naming the server and the trust it was verified under), if the
 * server issued a ticket other than the one offered. Returns the length written, 0 when there is
 * nothing new to resume with, or minus the length needed if cap is smaller (out may then be NULL);
 * *expires_unix is when the ticket's lifetime ends. */
long tou_dtls_conn_export_session(const tou_dtls_conn *conn, uint8_t *out, size_t cap, int64_t *expires_unix);
/* Client, before tou_dtls_conn_start: offer a saved session for an abbreviated handshake.
 * Returns 1, or 0 with the reason in err (not ours, another server name or trust, expired,
 * undecodable); the handshake then is a full one. */
int tou_dtls_conn_offer_session(tou_dtls_conn *conn, const uint8_t *saved, size_t len, int64_t now_unix,
                                char *err, size_t err_cap);
/* A saved session decoded once, shared by every connection that offers it (from any thread: no
 * SSL ever holds it, each offer hands the SSL a copy). */
typedef struct tou_saved_session tou_saved_session;
/* Decodes tou_dtls_conn_export_session output; NULL with the reason in err. */
tou_saved_session *tou_saved_session_decode(const uint8_t *saved, size_t len, char *err, size_t err_cap);
/* Client, after the handshake: the connection's own session, for the next offer without a decode. */
tou_saved_session *tou_dtls_conn_live_session(const tou_dtls_conn *conn);
void tou_saved_session_free(tou_saved_session *session);
/* tou_dtls_conn_offer_session for a decoded session: the same checks, no DER decode. */
int tou_dtls_conn_offer_decoded_session(tou_dtls_conn *conn, const tou_saved_session *saved, int64_t now_unix,
                                        char *err, size_t err_cap);
/* 1 if the completed handshake resumed a session (the server sent no certificate). */
int tou_dtls_conn_session_reused(const tou_dtls_conn *conn);

/* Client: start the handshake (queues the ClientHello). Returns a STEP result. */
int tou_dtls_conn_start(tou_dtls_conn *conn);

/* Input: present one received DTLS record (or datagram) to the BIO; it stays readable until
 * OpenSSL consumes it or tou_dtls_conn_clear_input is called. The memory must stay valid until
 * then. */
void tou_dtls_conn_set_input(tou_dtls_conn *conn, const uint8_t *data, size_t len);
void tou_dtls_conn_clear_input(tou_dtls_conn *conn);

/* Advance the handshake or read one record. Call until it returns WANT or FATAL. */
int tou_dtls_conn_step(tou_dtls_conn *conn, uint8_t *out, size_t out_cap, size_t *out_len);
/* Queue a close_notify alert. Returns 1 on success, -1 on error. */
int tou_dtls_conn_shutdown(tou_dtls_conn *conn);

/* Retransmission timer: 1 and the remaining microseconds if running, else 0. */
int tou_dtls_conn_get_timeout(tou_dtls_conn *conn, int64_t *remaining_us);
/* Lets OpenSSL retransmit if its own timer has expired. Returns a STEP result (WANT or FATAL). */
int tou_dtls_conn_handle_timeout(tou_dtls_conn *conn);

/* Outgoing datagrams produced by the last calls (handshake flights, alerts). */
size_t tou_dtls_conn_out_count(const tou_dtls_conn *conn);
const uint8_t *tou_dtls_conn_out_get(const tou_dtls_conn *conn, size_t index, size_t *len);
void tou_dtls_conn_out_reset(tou_dtls_conn *conn);

int tou_dtls_conn_set_mtu(tou_dtls_conn *conn, int mtu);
int tou_dtls_conn_is_established(const tou_dtls_conn *conn);
const char *tou_dtls_conn_cipher(const tou_dtls_conn *conn);          /* NULL before handshake */
/* Smallest valid protected record body for the (pending or current) suite: nonce + tag. */
int tou_dtls_conn_aead_expansion(const tou_dtls_conn *conn);
size_t tou_dtls_conn_data_mtu(const tou_dtls_conn *conn);             /* plaintext room at handshake MTU */
int tou_dtls_conn_peer_subject(const tou_dtls_conn *conn, char *buf, size_t cap); /* 1 if present */
/* Once both sides are known to have finished the handshake: frees the SSL object (its handshake
 * buffers, state and certificates, most of an idle connection's memory). The record layer's keys
 * stay; the suite and whether it resumed stay answerable; everything else that needs the SSL
 * (timers, flights, alerts through OpenSSL, sessions, the peer's subject) is gone. Returns 1 if
 * released (or already), 0 if the connection is not established with its own record layer. */
int tou_dtls_conn_release_handshake(tou_dtls_conn *conn);
/* OpenSSL's long name of an alert description, e.g. "handshake failure". */
const char *tou_alert_description(int description);
int tou_dtls_conn_error_kind(const tou_dtls_conn *conn);
const char *tou_dtls_conn_error_message(const tou_dtls_conn *conn);

/* ---------------------------------------------------------------------------------------------
 * Application-data records without SSL_write/SSL_read: the negotiated AEAD applied directly.
 * A tou_aead is confined to one thread at a time.
 * ------------------------------------------------------------------------------------------- */

typedef struct tou_aead tou_aead;

enum {
    TOU_AEAD_AES_128_GCM = 0,
    TOU_AEAD_AES_256_GCM = 1,
    TOU_AEAD_CHACHA20_POLY1305 = 2,
};

/* key and iv (AES-GCM: 4-byte salt; ChaCha20-Poly1305: 12 bytes) as in the TLS 1.2 key block. */
tou_aead *tou_aead_new(int suite, const uint8_t *key, size_t key_len, const uint8_t *iv, size_t iv_len,
                       int encrypt);
void tou_aead_free(tou_aead *aead);
/* Bytes a record adds to its plaintext: header, explicit nonce (AES-GCM), tag. */
size_t tou_aead_overhead(const tou_aead *aead);

/* Why tou_aead_seal wrote nothing. */
enum {
    TOU_SEAL_E_CRYPTO = -1,             /* the cipher itself failed */
    TOU_SEAL_E_TOO_LONG = -2,           /* more than 16,384 bytes of plaintext */
    TOU_SEAL_E_NO_ROOM = -3,            /* out is too small for the record */
    TOU_SEAL_E_SEQUENCE_EXHAUSTED = -4, /* the epoch's 48-bit sequence space is used up */
    TOU_SEAL_E_USAGE_LIMIT = -5,        /* the key reached its confidentiality limit */
};

/* A sealer owns the one sequence counter of its epoch and direction: every record it writes
 * takes the next number, whoever asked (our data records, or OpenSSL's records re-sealed). */
void tou_aead_start_sequence(tou_aead *aead, uint16_t epoch, uint64_t next_sequence);
uint64_t tou_aead_next_sequence(const tou_aead *aead);
/* Writes one whole record (header included) protecting p1 followed by p2 under the next
 * sequence number. Returns its length, or a TOU_SEAL_E_* code (nothing written, no number used). */
long tou_aead_seal(tou_aead *aead, uint8_t type, const uint8_t *p1, size_t n1, const uint8_t *p2, size_t n2,
                   uint8_t *out, size_t out_cap);
/* Authenticates and decrypts one whole record into out, the plaintext starting at
 * out + *plaintext_at (AES-GCM with room for the whole body decrypts it in place there, after its
 * 8 nonce bytes; otherwise 0). Returns the plaintext length, or -1 if it is malformed or does not
 * authenticate (out then holds nothing of it; counted). */
long tou_aead_open(tou_aead *aead, const uint8_t *record, size_t record_len, uint8_t *out, size_t out_cap,
                   size_t *plaintext_at);
uint64_t tou_aead_failed_opens(const tou_aead *aead);
/* 1 once so many records failed authentication that the key must not be used any more. */
int tou_aead_integrity_limit_reached(const tou_aead *aead);
/* Tests only: lower the limits to reach them without sealing 250 GB. */
void tou_aead_set_limits(tou_aead *aead, uint64_t usage_limit, uint64_t failed_open_limit);

/* After the handshake (a client: from its Finished on): a sealer and an opener for the epoch's
 * keys, owned by the connection (freed with it). From then on every record the connection sends
 * in that epoch, OpenSSL's included, takes its sequence number from the sealer. Returns 1, or 0 (nothing
 * allocated) if the suite is not one of the three AEADs. */
int tou_dtls_conn_record_layer(tou_dtls_conn *conn, tou_aead **sealer, tou_aead **opener, uint16_t *epoch);
/* Client: 1 once its Finished is written, before the server's Finished has arrived: from then
 * on the record layer may protect data (DTLS False Start, RFC 7918). */
int tou_dtls_conn_can_false_start(const tou_dtls_conn *conn);

#ifdef __cplusplus
}
#endif

#endif
