#include "tou_internal.h"

#include <string.h>

#include <openssl/core_dispatch.h>
#include <openssl/err.h>
#include <openssl/provider.h>

/*
 * The library context the shim's client SSL_CTXs run in: OpenSSL's default provider, seen
 * through a provider of ours that offers all of its algorithms except the decoders and key types
 * DTLS never needs here.
 *
 * Why: OpenSSL 3.0 decodes the public key of every certificate it parses (the server's, once per
 * full handshake) with OSSL_DECODER_CTX_new_for_pkey, which builds every key manager and pairs
 * every decoder of the context with every other, anew on each call (OpenSSL issues #17950,
 * #19119). With the default provider's 18 key managers and 40-odd decoders that was about a fifth
 * of a client's CPU per full handshake; with those kept here, parsing a certificate costs half as
 * much. The algorithms are the default provider's own implementations with its own provider
 * context, so nothing about the cryptography changes.
 */

static OSSL_PROVIDER *tou_default_provider;
static OSSL_LIB_CTX *tou_lean_ctx;
static pthread_once_t tou_lean_once = PTHREAD_ONCE_INIT;

/* What a client context decodes: certificates' SubjectPublicKeyInfo, from DER. Keys and trust
 * roots the shim reads from PEM are read in the default context. */
static OSSL_ALGORITHM tou_decoders[64];
/* Key types of the suites, groups and signature algorithms DTLS 1.2 offers here, and the MAC and
 * KDF key types libssl may ask for; no DH, DSA, SM2 or scrypt. */
static OSSL_ALGORITHM tou_keymgmts[64];
static const char *const tou_kept_key_types[] = {
    "EC", "X25519", "X448", "ED25519", "ED448", "RSA", "RSA-PSS", "HMAC", "TLS1-PRF", "HKDF",
};

static int first_name_is(const char *names, const char *name) {
    size_t n = strlen(name);
    return strncmp(names, name, n) == 0 && (names[n] == '\0' || names[n] == ':');
}

static int keep_keymgmt(const OSSL_ALGORITHM *a) {
    for (size_t i = 0; i < sizeof tou_kept_key_types / sizeof tou_kept_key_types[0]; i++) {
        if (first_name_is(a->algorithm_names, tou_kept_key_types[i])) return 1;
    }
    return 0;
}

static int keep_decoder(const OSSL_ALGORITHM *a) {
    const char *p = a->property_definition;
    return p != NULL && strstr(p, "input=der") != NULL && strstr(p, "structure=SubjectPublicKeyInfo") != NULL;
}

/* Copies the entries `keep` accepts, with the terminating empty entry; 0 if they do not fit. */
static int filter(const OSSL_ALGORITHM *all, OSSL_ALGORITHM *out, size_t cap, int (*keep)(const OSSL_ALGORITHM *)) {
    size_t n = 0;
    for (; all != NULL && all->algorithm_names != NULL; all++) {
        if (!keep(all)) continue;
        if (n + 1 >= cap) return 0;
        out[n++] = *all;
    }
    memset(&out[n], 0, sizeof out[n]);
    return n > 0;
}

static const OSSL_ALGORITHM *lean_query(void *provctx, int operation_id, int *no_cache) {
    (void)provctx;
    switch (operation_id) {
    case OSSL_OP_DECODER:
        *no_cache = 0;
        return tou_decoders;
    case OSSL_OP_KEYMGMT:
        *no_cache = 0;
        return tou_keymgmts;
    default:
        return OSSL_PROVIDER_query_operation(tou_default_provider, operation_id, no_cache);
    }
}

static const OSSL_PARAM *lean_gettable_params(void *provctx) {
    (void)provctx;
    return OSSL_PROVIDER_gettable_params(tou_default_provider);
}

static int lean_get_params(void *provctx, OSSL_PARAM params[]) {
    (void)provctx;
    return OSSL_PROVIDER_get_params(tou_default_provider, params);
}

/* The TLS-GROUP and TLS-SIGALG tables libssl builds its groups and signature algorithms from. */
static int lean_get_capabilities(void *provctx, const char *capability, OSSL_CALLBACK *cb, void *arg) {
    (void)provctx;
    return OSSL_PROVIDER_get_capabilities(tou_default_provider, capability, cb, arg);
}

static void lean_teardown(void *provctx) {
    (void)provctx;  /* the default provider's context is its own */
}

static const OSSL_DISPATCH lean_dispatch[] = {
    { OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))lean_teardown },
    { OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))lean_gettable_params },
    { OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))lean_get_params },
    { OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))lean_query },
    { OSSL_FUNC_PROVIDER_GET_CAPABILITIES, (void (*)(void))lean_get_capabilities },
    { 0, NULL }
};

static int lean_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                     const OSSL_DISPATCH **out, void **provctx) {
    (void)handle;
    (void)in;
    *out = lean_dispatch;
    /* The default provider's implementations run with its own context, as they always do. */
    *provctx = OSSL_PROVIDER_get0_provider_ctx(tou_default_provider);
    return *provctx != NULL;
}

int tou_lean_libctx_allowed(const char *const *names, size_t count) {
    int has_default = 0;
    for (size_t i = 0; i < count; i++) {
        if (strcmp(names[i], "default") == 0) {
            has_default = 1;
        } else if (strcmp(names[i], "base") != 0) {
            return 0;
        }
    }
    return has_default;
}

struct provider_names {
    const char *names[16];
    size_t count;
    int overflow;
};

static int collect_provider_name(OSSL_PROVIDER *provider, void *arg) {
    struct provider_names *seen = arg;
    if (seen->count == sizeof seen->names / sizeof seen->names[0]) {
        seen->overflow = 1;
        return 0;
    }
    seen->names[seen->count++] = OSSL_PROVIDER_get0_name(provider);
    return 1;
}

static void tou_lean_init_once(void) {
    /* The process's configuration (openssl.cnf) decides the providers: only a plain default
     * provider is seen through the lean context; FIPS, legacy or others keep OpenSSL's own. */
    struct provider_names loaded = { .count = 0, .overflow = 0 };
    OSSL_PROVIDER_do_all(NULL, collect_provider_name, &loaded);
    if (loaded.overflow || !tou_lean_libctx_allowed(loaded.names, loaded.count)) return;
    OSSL_PROVIDER *deflt = OSSL_PROVIDER_load(NULL, "default");
    if (deflt == NULL) return;
    int no_cache = 0;
    if (!filter(OSSL_PROVIDER_query_operation(deflt, OSSL_OP_DECODER, &no_cache), tou_decoders,
                sizeof tou_decoders / sizeof tou_decoders[0], keep_decoder) ||
        !filter(OSSL_PROVIDER_query_operation(deflt, OSSL_OP_KEYMGMT, &no_cache), tou_keymgmts,
                sizeof tou_keymgmts / sizeof tou_keymgmts[0], keep_keymgmt)) {
        OSSL_PROVIDER_unload(deflt);
        return;
    }
    tou_default_provider = deflt;
    OSSL_LIB_CTX *ctx = OSSL_LIB_CTX_new();
    if (ctx == NULL) return;
    if (!OSSL_PROVIDER_add_builtin(ctx, "toudtls-lean", lean_init) ||
        OSSL_PROVIDER_load(ctx, "toudtls-lean") == NULL) {
        OSSL_LIB_CTX_free(ctx);
        ERR_clear_error();
        return;
    }
    tou_lean_ctx = ctx;
}

OSSL_LIB_CTX *tou_lean_libctx(void) {
    if (pthread_once(&tou_lean_once, tou_lean_init_once) != 0) return NULL;
    return tou_lean_ctx;
}
