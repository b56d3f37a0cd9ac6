#include "tou_shim.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* DTLS 1.2 application-data records protected here instead of through SSL_write/SSL_read: the
 * same AEAD, keys and record format (RFC 6347 4.1, RFC 5288, RFC 7905), without OpenSSL's
 * per-record state machine, BIO round trip and plaintext copies. */

struct tou_aead {
    EVP_CIPHER_CTX *ctx;
    uint8_t iv[12];          /* AES-GCM: 4-byte salt, the rest per record; ChaCha20: whole IV */
    int explicit_nonce;      /* AES-GCM carries 8 nonce bytes in the record, ChaCha20 none */
};

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
    memcpy(a->iv, iv, iv_len);
    if (a->ctx == NULL || EVP_CipherInit_ex2(a->ctx, cipher, key, NULL, encrypt ? 1 : 0, NULL) != 1) {
        tou_aead_free(a);
        return NULL;
    }
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

long tou_aead_seal(tou_aead *a, uint8_t type, uint16_t epoch, uint64_t sequence,
                   const uint8_t *p1, size_t n1, const uint8_t *p2, size_t n2,
                   uint8_t *out, size_t out_cap) {
    size_t plain = n1 + n2;
    size_t expl = a->explicit_nonce ? 8 : 0;
    size_t body = expl + plain + 16;
    if (plain > 16384 || sequence >= ((uint64_t)1 << 48) || out_cap < 13 + body) return -1;
    out[0] = type;
    out[1] = 0xFE;
    out[2] = 0xFD;
    put_u64(out + 3, ((uint64_t)epoch << 48) | sequence);
    out[11] = (uint8_t)(body >> 8);
    out[12] = (uint8_t)body;
    /* The explicit nonce is the record's own epoch + sequence: unique per key (RFC 9325 7.2.1). */
    if (expl) memcpy(out + 13, out + 3, 8);
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
        return -1;
    }
    return (long)(13 + body);
}

long tou_aead_open(tou_aead *a, const uint8_t *record, size_t record_len, uint8_t *out, size_t out_cap) {
    size_t expl = a->explicit_nonce ? 8 : 0;
    if (record_len < 13 + expl + 16) return -1;
    size_t body = (size_t)record[11] << 8 | record[12];
    if (body != record_len - 13) return -1;
    size_t plain = body - expl - 16;
    if (plain > 16384 || out_cap < plain) return -1;
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
        return -1;
    }
    return (long)plain;
}
