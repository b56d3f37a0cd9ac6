#include "tou_shim.h"
#include "tou_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

/* Resumption with DTLS 1.2 session tickets (RFC 5077). The server keeps no per-session state:
 * a ticket is the session sealed under a ticket key (AES-256-CBC + HMAC-SHA-256, the RFC's
 * recommended construction) that rotates every lifetime; the previous key still opens tickets
 * for one more lifetime, and such a ticket is renewed. The client keeps its session as DER. */

typedef struct {
    uint8_t name[16];
    uint8_t aes[32];
    uint8_t hmac[32];
    time_t created;
} ticket_key;

struct tou_ticket_keys {
    pthread_mutex_t lock;
    ticket_key current;
    ticket_key previous;
    int have_previous;
    long lifetime;
};

static int fresh_key(ticket_key *key) {
    if (RAND_bytes(key->name, sizeof key->name) != 1 || RAND_bytes(key->aes, sizeof key->aes) != 1 ||
        RAND_bytes(key->hmac, sizeof key->hmac) != 1) {
        return 0;
    }
    key->created = time(NULL);
    return 1;
}

/* Under the lock. A failed draw keeps the old key rather than none. */
static void rotate(tou_ticket_keys *keys) {
    ticket_key next;
    if (!fresh_key(&next)) return;
    OPENSSL_cleanse(&keys->previous, sizeof keys->previous);
    keys->previous = keys->current;
    keys->have_previous = 1;
    keys->current = next;
    OPENSSL_cleanse(&next, sizeof next);
}

static int set_mac_key(EVP_MAC_CTX *hctx, uint8_t key[32]) {
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key, 32);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(hctx, params) == 1;
}

/* OpenSSL's ticket callback: 1 = use (encrypting, or a current key), 2 = use and renew (the
 * previous key), 0 = unknown key (full handshake), -1 = error. */
static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int encrypt) {
    tou_dtls_ctx *ctx = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    tou_ticket_keys *keys = ctx != NULL ? ctx->tickets : NULL;
    if (keys == NULL) return encrypt ? -1 : 0;
    int result = -1;
    pthread_mutex_lock(&keys->lock);
    if (time(NULL) - keys->current.created >= keys->lifetime) rotate(keys);
    if (encrypt) {
        ticket_key *key = &keys->current;
        if (RAND_bytes(iv, 16) == 1 &&
            EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key->aes, iv) == 1 && set_mac_key(hctx, key->hmac)) {
            memcpy(key_name, key->name, 16);
            result = 1;
        }
    } else {
        ticket_key *key = NULL;
        if (CRYPTO_memcmp(key_name, keys->current.name, 16) == 0) {
            key = &keys->current;
            result = 1;
        } else if (keys->have_previous && CRYPTO_memcmp(key_name, keys->previous.name, 16) == 0 &&
                   time(NULL) - keys->previous.created < 2 * keys->lifetime) {
            key = &keys->previous;
            result = 2;
        } else {
            result = 0;
        }
        if (key != NULL && (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key->aes, iv) != 1 ||
                            !set_mac_key(hctx, key->hmac))) {
            result = -1;
        }
    }
    pthread_mutex_unlock(&keys->lock);
    return result;
}

int tou_dtls_ctx_enable_tickets(tou_dtls_ctx *ctx, long lifetime_seconds, char *err, size_t err_cap) {
    if (ctx == NULL || !ctx->is_server || ctx->tickets != NULL || lifetime_seconds <= 0) {
        tou_set_msg(err, err_cap, "tickets need a server context and a positive lifetime");
        return 0;
    }
    tou_ticket_keys *keys = calloc(1, sizeof *keys);
    if (keys == NULL || !fresh_key(&keys->current)) {
        free(keys);
        tou_set_msg(err, err_cap, "cannot create session ticket keys");
        return 0;
    }
    pthread_mutex_init(&keys->lock, NULL);
    keys->lifetime = lifetime_seconds;
    ctx->tickets = keys;
    SSL_CTX_set_app_data(ctx->ssl_ctx, ctx);
    SSL_CTX_clear_options(ctx->ssl_ctx, SSL_OP_NO_TICKET);
    /* The session's timeout is the ticket's lifetime hint, and OpenSSL refuses an older one. */
    SSL_CTX_set_timeout(ctx->ssl_ctx, lifetime_seconds);
    /* Needed to resume sessions made with a verified client certificate. */
    static const unsigned char sid_ctx[] = "toudtls";
    if (SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx->ssl_ctx, ticket_cb) != 1 ||
        SSL_CTX_set_session_id_context(ctx->ssl_ctx, sid_ctx, sizeof sid_ctx - 1) != 1) {
        tou_drain_errors(err, err_cap, "cannot enable session tickets");
        return 0;
    }
    return 1;
}

void tou_tickets_free(tou_ticket_keys *keys) {
    if (keys == NULL) return;
    pthread_mutex_destroy(&keys->lock);
    OPENSSL_cleanse(keys, sizeof *keys);
    free(keys);
}

void tou_dtls_ctx_rotate_ticket_keys(tou_dtls_ctx *ctx) {
    if (ctx == NULL || ctx->tickets == NULL) return;
    pthread_mutex_lock(&ctx->tickets->lock);
    rotate(ctx->tickets);
    pthread_mutex_unlock(&ctx->tickets->lock);
}

/* ---------------------------------------------------------------- client sessions */

/* A saved session is our own envelope around OpenSSL's DER, so that it can be checked before
 * OpenSSL sees it: "TOUS", version 1, the trust digest of the context that verified the server,
 * the server name it was made for, then the DER. */
#define ENVELOPE_MAGIC "TOUS"
#define ENVELOPE_VERSION 1

static int64_t session_expiry(const SSL_SESSION *session) {
    unsigned long hint = SSL_SESSION_get_ticket_lifetime_hint(session);
    long lifetime = hint > 0 ? (long)hint : SSL_SESSION_get_timeout(session);
    return (int64_t)SSL_SESSION_get_time(session) + lifetime;
}

long tou_dtls_conn_export_session(const tou_dtls_conn *c, uint8_t *out, size_t cap, int64_t *expires_unix) {
    *expires_unix = 0;
    if (c->is_server || !c->established || c->ssl == NULL || c->server_name[0] == '\0') return 0;
    SSL_SESSION *session = SSL_get1_session(c->ssl);
    if (session == NULL) return 0;
    long result = 0;
    /* A resumption under the offered ticket, not renewed: the caller holds that session already. */
    const unsigned char *ticket = NULL;
    size_t ticket_len = 0;
    SSL_SESSION_get0_ticket(session, &ticket, &ticket_len);
    int unchanged = c->offered_ticket != NULL && ticket_len == c->offered_ticket_len &&
                    memcmp(ticket, c->offered_ticket, ticket_len) == 0;
    if (!unchanged && SSL_SESSION_is_resumable(session) && SSL_SESSION_has_ticket(session)) {
        int der_len = i2d_SSL_SESSION(session, NULL);
        size_t name_len = strlen(c->server_name);
        size_t need = 4 + 1 + 32 + 1 + name_len + (size_t)(der_len > 0 ? der_len : 0);
        if (der_len <= 0) {
            result = 0;
        } else if (need > cap) {
            result = -(long)need;
        } else {
            uint8_t *p = out;
            memcpy(p, ENVELOPE_MAGIC, 4); p += 4;
            *p++ = ENVELOPE_VERSION;
            memcpy(p, c->ctx->trust_digest, 32); p += 32;
            *p++ = (uint8_t)name_len;
            memcpy(p, c->server_name, name_len); p += name_len;
            unsigned char *der = p;
            i2d_SSL_SESSION(session, &der);
            *expires_unix = session_expiry(session);
            result = (long)need;
        }
    }
    SSL_SESSION_free(session);
    ERR_clear_error();
    return result;
}

struct tou_saved_session {
    uint8_t trust_digest[32];
    char server_name[256];
    SSL_SESSION *session;
};

tou_saved_session *tou_saved_session_decode(const uint8_t *saved, size_t len, char *err, size_t err_cap) {
    ERR_clear_error();
    if (len < 4 + 1 + 32 + 1 || memcmp(saved, ENVELOPE_MAGIC, 4) != 0 || saved[4] != ENVELOPE_VERSION) {
        tou_set_msg(err, err_cap, "not a saved toudtls session");
        return NULL;
    }
    size_t name_len = saved[37];
    if (len < 38 + name_len) { tou_set_msg(err, err_cap, "truncated saved session"); return NULL; }
    const unsigned char *der = saved + 38 + name_len;
    long der_len = (long)(len - 38 - name_len);
    SSL_SESSION *session = d2i_SSL_SESSION(NULL, &der, der_len);
    if (session == NULL || der != saved + len) {
        SSL_SESSION_free(session);
        ERR_clear_error();
        tou_set_msg(err, err_cap, "the saved session does not decode");
        return NULL;
    }
    tou_saved_session *s = calloc(1, sizeof *s);
    if (s == NULL) { SSL_SESSION_free(session); tou_set_msg(err, err_cap, "out of memory"); return NULL; }
    memcpy(s->trust_digest, saved + 5, 32);
    memcpy(s->server_name, saved + 38, name_len);
    s->server_name[name_len] = '\0';
    s->session = session;
    return s;
}

tou_saved_session *tou_dtls_conn_live_session(const tou_dtls_conn *c) {
    if (c->is_server || !c->established || c->ssl == NULL || c->server_name[0] == '\0') return NULL;
    SSL_SESSION *live = SSL_get1_session(c->ssl);
    if (live == NULL) return NULL;
    /* A copy: OpenSSL may still mark the connection's own session (not resumable when it ends
     * without a close_notify sent). Copying shares the parsed certificates, so it costs no parse. */
    SSL_SESSION *session = SSL_SESSION_dup(live);
    SSL_SESSION_free(live);
    if (session == NULL) { ERR_clear_error(); return NULL; }
    tou_saved_session *s = calloc(1, sizeof *s);
    if (s == NULL) { SSL_SESSION_free(session); return NULL; }
    memcpy(s->trust_digest, c->ctx->trust_digest, 32);
    snprintf(s->server_name, sizeof s->server_name, "%s", c->server_name);
    s->session = session;
    return s;
}

void tou_saved_session_free(tou_saved_session *s) {
    if (s == NULL) return;
    SSL_SESSION_free(s->session);
    free(s);
}

int tou_dtls_conn_offer_decoded_session(tou_dtls_conn *c, const tou_saved_session *saved, int64_t now_unix,
                                        char *err, size_t err_cap) {
    ERR_clear_error();
    if (c->is_server) { tou_set_msg(err, err_cap, "only a client offers a saved session"); return 0; }
    if (CRYPTO_memcmp(saved->trust_digest, c->ctx->trust_digest, 32) != 0) {
        tou_set_msg(err, err_cap, "the session was made under other trust roots or pins");
        return 0;
    }
    if (strcmp(saved->server_name, c->server_name) != 0) {
        char m[TOU_ERR_CAP];
        snprintf(m, sizeof m, "the session is for \"%s\", not \"%s\"", saved->server_name, c->server_name);
        tou_set_msg(err, err_cap, m);
        return 0;
    }
    SSL_SESSION *session = saved->session;
    /* OpenSSL does not tie a TLS 1.2 session to its server name; the envelope does, and so does
     * the SNI recorded in the session itself. */
    const char *host = SSL_SESSION_get0_hostname(session);
    if (host != NULL && strcmp(host, c->server_name) != 0) {
        tou_set_msg(err, err_cap, "the saved session names another server");
        return 0;
    }
    if (session_expiry(session) <= now_unix) {
        tou_set_msg(err, err_cap, "the saved session has expired");
        return 0;
    }
    if (!SSL_SESSION_is_resumable(session) || !SSL_SESSION_has_ticket(session)) {
        tou_set_msg(err, err_cap, "the saved session holds no ticket");
        return 0;
    }
    /* Each connection offers its own copy: OpenSSL changes the session it resumes in place (a
     * renewed ticket, not resumable after an unclean end). The copy shares the parsed
     * certificates, so it costs a few allocations, not the certificate parse a decode repeats. */
    SSL_SESSION *copy = SSL_SESSION_dup(session);
    if (copy == NULL || SSL_set_session(c->ssl, copy) != 1) {
        SSL_SESSION_free(copy);
        tou_drain_errors(err, err_cap, "cannot offer the saved session");
        return 0;
    }
    SSL_SESSION_free(copy);
    const unsigned char *ticket = NULL;
    size_t ticket_len = 0;
    SSL_SESSION_get0_ticket(session, &ticket, &ticket_len);
    free(c->offered_ticket);
    c->offered_ticket = ticket_len > 0 ? malloc(ticket_len) : NULL;
    c->offered_ticket_len = c->offered_ticket != NULL ? ticket_len : 0;
    if (c->offered_ticket != NULL) memcpy(c->offered_ticket, ticket, ticket_len);
    return 1;
}

int tou_dtls_conn_offer_session(tou_dtls_conn *c, const uint8_t *saved, size_t len, int64_t now_unix,
                                char *err, size_t err_cap) {
    if (c->is_server) { tou_set_msg(err, err_cap, "only a client offers a saved session"); return 0; }
    tou_saved_session *decoded = tou_saved_session_decode(saved, len, err, err_cap);
    if (decoded == NULL) return 0;
    int ok = tou_dtls_conn_offer_decoded_session(c, decoded, now_unix, err, err_cap);
    tou_saved_session_free(decoded);
    return ok;
}

int tou_dtls_conn_session_reused(const tou_dtls_conn *c) {
    if (c->ssl == NULL) return c->established && c->released_reused;
    return c->established && SSL_session_reused(c->ssl) == 1;
}
