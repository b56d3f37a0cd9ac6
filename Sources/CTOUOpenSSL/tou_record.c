#include "tou_shim.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>

/* DTLS 1.2 application-data records protected here instead of through SSL_write/SSL_read: the
 * same AEAD, keys and record format (RFC 6347 4.1, RFC 5288, RFC 7905), without OpenSSL's
 * per-record state machine, BIO round trip and plaintext copies. */

struct tou_aead {
    EVP_CIPHER_CTX *ctx;
    uint8_t iv[12];          /* AES-GCM: 4-byte salt, the rest per record; ChaCha20: whole IV */
    int explicit_nonce;      /* AES-GCM carries 8 nonce bytes in the record, ChaCha20 none */
    int encrypt;
    /* Sealing: the one sequence counter of this epoch and direction, and the key's use so far
     * against its confidentiality limit (cipher blocks plus records, the unit of RFC 8446 5.5). */
    uint16_t epoch;
    uint64_t next_seq;
    uint64_t usage;
    uint64_t usage_limit;
    /* Opening: records that failed authentication, against the integrity limit. */
    uint64_t failed_opens;
    uint64_t failed_limit;
    int iv_ready;            /* AES-GCM sealer: the context's counter holds the next sequence */
};

/* DTLS 1.2 cannot rekey, so a key that reaches its limit ends the connection.
 * AES-GCM: RFC 8446 5.5 allows 2^24.5 full-size records, i.e. about 2^34.5 blocks plus records
 * (attacker advantage 2^-60); we stop at 2^34, about 250 GB of 1.4 KB records.
 * ChaCha20-Poly1305: no practical confidentiality limit before the 48-bit sequence space ends.
 * Integrity, both: 2^36 records that fail authentication (RFC 9147 4.5.3). */
#define TOU_AES_GCM_USAGE_LIMIT ((uint64_t)1 << 34)
#define TOU_FAILED_OPEN_LIMIT ((uint64_t)1 << 36)
#define TOU_SEQUENCE_LIMIT ((uint64_t)1 << 48)

/* Fetched once: an implicit fetch per init would look the cipher up by name every time. */
static EVP_CIPHER *tou_ciphers[3];
static pthread_once_t tou_ciphers_once = PTHREAD_ONCE_INIT;

static void tou_fetch_ciphers(void) {
    tou_ciphers[0] = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
    tou_ciphers[1] = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    tou_ciphers[2] = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
}

tou_aead *tou_aead_new(int suite, const uint8_t *key, size_t key_len, const uint8_t *iv, size_t iv_len,
                       int encrypt) {
    pthread_once(&tou_ciphers_once, tou_fetch_ciphers);
    size_t want_key, want_iv;
    switch (suite) {
    case TOU_AEAD_AES_128_GCM: want_key = 16; want_iv = 4; break;
    case TOU_AEAD_AES_256_GCM: want_key = 32; want_iv = 4; break;
    case TOU_AEAD_CHACHA20_POLY1305: want_key = 32; want_iv = 12; break;
    default: return NULL;
    }
    EVP_CIPHER *cipher = tou_ciphers[suite];
    if (cipher == NULL || key_len != want_key || iv_len != want_iv) return NULL;
    tou_aead *a = calloc(1, sizeof *a);
    if (a == NULL) return NULL;
    a->ctx = EVP_CIPHER_CTX_new();
    a->explicit_nonce = suite != TOU_AEAD_CHACHA20_POLY1305;
    a->encrypt = encrypt != 0;
    a->usage_limit = a->explicit_nonce ? TOU_AES_GCM_USAGE_LIMIT : UINT64_MAX;
    a->failed_limit = TOU_FAILED_OPEN_LIMIT;
    memcpy(a->iv, iv, iv_len);
    if (a->ctx == NULL || EVP_CipherInit_ex2(a->ctx, cipher, key, NULL, encrypt ? 1 : 0, NULL) != 1) {
        tou_aead_free(a);
        return NULL;
    }
    /* AES-GCM runs in OpenSSL's TLS record mode: one AAD control and one cipher call per record,
     * where the general calls cost five parameter lookups more than the cipher work on a
     * 1,400-byte record. A sealer's nonce then comes from the context's own counter, which
     * tou_aead_start_sequence sets to the record sequence. */
    if (a->explicit_nonce && !encrypt && EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_GCM_SET_IV_FIXED, 4, a->iv) != 1) {
        tou_aead_free(a);
        return NULL;
    }
    if (a->explicit_nonce && encrypt) tou_aead_start_sequence(a, 0, 0);
    return a;
}

void tou_aead_free(tou_aead *a) {
    if (a == NULL) return;
    EVP_CIPHER_CTX_free(a->ctx);
    OPENSSL_cleanse(a->iv, sizeof a->iv);
    free(a);
}

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
}

/* The per-record nonce: salt + explicit part (AES-GCM), or IV xor the padded sequence (ChaCha20). */
static void record_nonce(const tou_aead *a, const uint8_t explicit_or_seq[8], uint8_t nonce[12]) {
    memcpy(nonce, a->iv, 12);
    if (a->explicit_nonce) {
        memcpy(nonce + 4, explicit_or_seq, 8);
    } else {
        for (int i = 0; i < 8; i++) nonce[4 + i] ^= explicit_or_seq[i];
    }
}

/* additional_data = seq_num (epoch + sequence) + type + version + plaintext length. */
static void record_aad(const uint8_t header[13], size_t plaintext_len, uint8_t aad[13]) {
    memcpy(aad, header + 3, 8);
    memcpy(aad + 8, header, 3);
    aad[11] = (uint8_t)(plaintext_len >> 8);
    aad[12] = (uint8_t)plaintext_len;
}

size_t tou_aead_overhead(const tou_aead *a) {
    return 13 + (a->explicit_nonce ? 8 : 0) + 16;
}

void tou_aead_start_sequence(tou_aead *a, uint16_t epoch, uint64_t next_sequence) {
    a->epoch = epoch;
    a->next_seq = next_sequence;
    if (a->explicit_nonce && a->encrypt) {
        /* The whole IV: salt, then the next record's epoch and sequence, counted up per record. */
        uint8_t iv[12];
        memcpy(iv, a->iv, 4);
        put_u64(iv + 4, ((uint64_t)epoch << 48) | next_sequence);
        a->iv_ready = EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_GCM_SET_IV_FIXED, -1, iv) == 1;
    }
}

uint64_t tou_aead_next_sequence(const tou_aead *a) { return a->next_seq; }
uint64_t tou_aead_failed_opens(const tou_aead *a) { return a->failed_opens; }
int tou_aead_integrity_limit_reached(const tou_aead *a) { return a->failed_opens >= a->failed_limit; }

void tou_aead_set_limits(tou_aead *a, uint64_t usage_limit, uint64_t failed_open_limit) {
    a->usage_limit = usage_limit;
    a->failed_limit = failed_open_limit;
}

/* The record's AAD for OpenSSL's TLS record mode, set as a parameter: EVP_CIPHER_CTX_ctrl would
 * also read the tag length (16 for GCM) back through a second, costlier parameter lookup, on every
 * record. */
static int set_tls_aad(EVP_CIPHER_CTX *ctx, uint8_t aad[13]) {
    OSSL_PARAM params[2] = {
        OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_AAD, aad, 13),
        OSSL_PARAM_construct_end(),
    };
    return EVP_CIPHER_CTX_set_params(ctx, params) == 1;
}

long tou_aead_seal(tou_aead *a, uint8_t type, const uint8_t *p1, size_t n1, const uint8_t *p2, size_t n2,
                   uint8_t *out, size_t out_cap) {
    size_t plain = n1 + n2;
    size_t expl = a->explicit_nonce ? 8 : 0;
    size_t body = expl + plain + 16;
    if (plain > 16384) return TOU_SEAL_E_TOO_LONG;
    if (out_cap < 13 + body) return TOU_SEAL_E_NO_ROOM;
    /* The last number is never used, so "exhausted" stays reportable after the fact. */
    if (a->next_seq >= TOU_SEQUENCE_LIMIT - 1) return TOU_SEAL_E_SEQUENCE_EXHAUSTED;
    uint64_t units = (plain + 15) / 16 + 1;
    if (a->usage >= a->usage_limit || a->usage_limit - a->usage < units) return TOU_SEAL_E_USAGE_LIMIT;
    uint16_t epoch = a->epoch;
    uint64_t sequence = a->next_seq;
    out[0] = type;
    out[1] = 0xFE;
    out[2] = 0xFD;
    put_u64(out + 3, ((uint64_t)epoch << 48) | sequence);
    out[11] = (uint8_t)(body >> 8);
    out[12] = (uint8_t)body;
    /* The explicit nonce is the record's own epoch + sequence: unique per key (RFC 9325 7.2.1). */
    if (expl) memcpy(out + 13, out + 3, 8);
    if (expl) {
        /* TLS record mode works in place: the plaintext goes where the ciphertext will be. */
        uint8_t *payload = out + 13 + 8;
        if (n1 > 0) memmove(payload, p1, n1);
        if (n2 > 0) memmove(payload + n1, p2, n2);
        uint8_t aad[13];
        record_aad(out, 8 + plain, aad); /* OpenSSL takes the nonce's 8 bytes off the length */
        if (!a->iv_ready
            || !set_tls_aad(a->ctx, aad)
            || EVP_Cipher(a->ctx, out + 13, out + 13, (unsigned int)body) <= 0
            /* The nonce came from the context's counter: it must be this record's sequence. */
            || memcmp(out + 13, out + 3, 8) != 0) {
            a->iv_ready = 0; /* out of step: refuse until the sequence is set again */
            return TOU_SEAL_E_CRYPTO;
        }
        a->next_seq = sequence + 1;
        a->usage += units;
        return (long)(13 + body);
    }
    uint8_t nonce[12], aad[13];
    record_nonce(a, out + 3, nonce);
    record_aad(out, plain, aad);
    uint8_t *ct = out + 13 + expl;
    int len = 0;
    if (EVP_EncryptInit_ex(a->ctx, NULL, NULL, NULL, nonce) != 1
        || EVP_EncryptUpdate(a->ctx, NULL, &len, aad, sizeof aad) != 1
        || (n1 > 0 && EVP_EncryptUpdate(a->ctx, ct, &len, p1, (int)n1) != 1)
        || (n2 > 0 && EVP_EncryptUpdate(a->ctx, ct + n1, &len, p2, (int)n2) != 1)
        || EVP_EncryptFinal_ex(a->ctx, ct + plain, &len) != 1
        || EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_GET_TAG, 16, ct + plain) != 1) {
        return TOU_SEAL_E_CRYPTO;
    }
    a->next_seq = sequence + 1;
    a->usage += units;
    return (long)(13 + body);
}

long tou_aead_open(tou_aead *a, const uint8_t *record, size_t record_len, uint8_t *out, size_t out_cap,
                   size_t *plaintext_at) {
    *plaintext_at = 0;
    size_t expl = a->explicit_nonce ? 8 : 0;
    if (record_len < 13 + expl + 16) return -1;
    size_t body = (size_t)record[11] << 8 | record[12];
    if (body != record_len - 13) return -1;
    size_t plain = body - expl - 16;
    if (plain > 16384 || out_cap < plain) return -1;
    if (expl && out_cap >= body) {
        /* TLS record mode, in place in out: the plaintext comes out after the nonce's 8 bytes. */
        uint8_t aad[13];
        record_aad(record, body, aad); /* OpenSSL takes the nonce and tag off the length */
        memcpy(out, record + 13, body);
        if (!set_tls_aad(a->ctx, aad)
            || EVP_Cipher(a->ctx, out, out, (unsigned int)body) <= 0) { /* 0 or -1: not authentic */
            OPENSSL_cleanse(out, body);
            a->failed_opens++;
            return -1;
        }
        *plaintext_at = 8;
        return (long)plain;
    }
    uint8_t nonce[12], aad[13], tag[16];
    record_nonce(a, expl ? record + 13 : record + 3, nonce);
    record_aad(record, plain, aad);
    const uint8_t *ct = record + 13 + expl;
    memcpy(tag, ct + plain, 16);
    int len = 0;
    if (EVP_DecryptInit_ex(a->ctx, NULL, NULL, NULL, nonce) != 1
        || EVP_CIPHER_CTX_ctrl(a->ctx, EVP_CTRL_AEAD_SET_TAG, 16, tag) != 1
        || EVP_DecryptUpdate(a->ctx, NULL, &len, aad, sizeof aad) != 1
        || (plain > 0 && EVP_DecryptUpdate(a->ctx, out, &len, ct, (int)plain) != 1)
        || EVP_DecryptFinal_ex(a->ctx, out + plain, &len) != 1) {
        /* Nothing unauthenticated leaves: wipe what the failed decryption wrote. */
        if (plain > 0) OPENSSL_cleanse(out, plain);
        a->failed_opens++;
        return -1;
    }
    return (long)plain;
}
