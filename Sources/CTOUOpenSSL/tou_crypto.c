#include "tou_shim.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

int tou_hmac_sha256(const uint8_t *key, size_t key_len,
                    const uint8_t *data, size_t data_len,
                    uint8_t out[32]) {
    unsigned int out_len = 0;
    if (HMAC(EVP_sha256(), key, (int)key_len, data, data_len, out, &out_len) == NULL) {
        return 0;
    }
    return out_len == 32;
}

int tou_random_bytes(uint8_t *out, size_t len) {
    if (len > 0x7fffffff) {
        return 0;
    }
    return RAND_bytes(out, (int)len) == 1;
}
