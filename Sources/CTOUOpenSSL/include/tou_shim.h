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

/* Cryptographically secure random bytes. Returns 1 on success, 0 on failure. */
int tou_random_bytes(uint8_t *out, size_t len);

#ifdef __cplusplus
}
#endif

#endif
