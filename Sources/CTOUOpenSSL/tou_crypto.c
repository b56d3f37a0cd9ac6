#include "tou_shim.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <stdlib.h>

int tou_hmac_sha256(const uint8_t *key, size_t key_len,
                    const uint8_t *data, size_t data_len,
                    uint8_t out[32]) {
    unsigned int out_len = 0;
    if (HMAC(EVP_sha256(), key, (int)key_len, data, data_len, out, &out_len) == NULL) {
        return 0;
    }
    return out_len == 32;
}

struct tou_hmac_key {
    EVP_MAC_CTX *keyed; /* initialized with the key and SHA-256; copied for each use */
};

tou_hmac_key *tou_hmac_key_new(const uint8_t *key, size_t key_len) {
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac); /* the context holds its own reference */
    tou_hmac_key *k = ctx != NULL ? calloc(1, sizeof *k) : NULL;
    OSSL_PARAM params[2];
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    if (k == NULL || EVP_MAC_init(ctx, key, key_len, params) != 1) {
        EVP_MAC_CTX_free(ctx);
        free(k);
        ERR_clear_error();
        return NULL;
    }
    k->keyed = ctx;
    return k;
}

void tou_hmac_key_free(tou_hmac_key *key) {
    if (key == NULL) return;
    EVP_MAC_CTX_free(key->keyed);
    free(key);
}

int tou_hmac_key_sha256(const tou_hmac_key *key, const uint8_t *data, size_t data_len, uint8_t out[32]) {
    if (key == NULL) return 0;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_dup(key->keyed);
    size_t out_len = 0;
    int ok = ctx != NULL && EVP_MAC_update(ctx, data, data_len) == 1
             && EVP_MAC_final(ctx, out, &out_len, 32) == 1 && out_len == 32;
    EVP_MAC_CTX_free(ctx);
    if (!ok) ERR_clear_error();
    return ok;
}

int tou_random_bytes(uint8_t *out, size_t len) {
    if (len > 0x7fffffff) {
        return 0;
    }
    return RAND_bytes(out, (int)len) == 1;
}
