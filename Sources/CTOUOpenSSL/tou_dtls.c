#include "tou_shim.h"
#include "tou_internal.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* ---------------------------------------------------------------- errors */

void tou_set_msg(char *buf, size_t cap, const char *msg) {
    if (buf == NULL || cap == 0) return;
    snprintf(buf, cap, "%s", msg);
}

/* Drains the thread's OpenSSL error queue into "prefix: reason (data); reason ..." so one
 * failure never leaks into the next call. Returns the first error's reason code. */
int tou_drain_errors(char *buf, size_t cap, const char *prefix) {
    size_t used = 0;
    int first_reason = 0;
    if (buf != NULL && cap > 0) {
        buf[0] = '\0';
        if (prefix != NULL && prefix[0] != '\0') {
            int n = snprintf(buf, cap, "%s", prefix);
            used = n < 0 ? 0 : ((size_t)n >= cap ? cap - 1 : (size_t)n);
        }
    }
    const char *data = NULL;
    int flags = 0;
    unsigned long e;
    int count = 0;
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        if (count == 0) first_reason = ERR_GET_REASON(e);
        if (buf == NULL || cap == 0 || count >= 4) { count++; continue; }
        const char *reason = ERR_reason_error_string(e);
        char line[256];
        if (reason == NULL) {
            snprintf(line, sizeof line, "error %lu", e);
        } else if ((flags & ERR_TXT_STRING) && data != NULL && data[0] != '\0') {
            snprintf(line, sizeof line, "%s (%s)", reason, data);
        } else {
            snprintf(line, sizeof line, "%s", reason);
        }
        int n = snprintf(buf + used, cap - used, "%s%s", used > 0 ? (count == 0 ? ": " : "; ") : "", line);
        if (n > 0) used = (size_t)n >= cap - used ? cap - 1 : used + (size_t)n;
        count++;
    }
    return first_reason;
}

static void conn_fail(tou_dtls_conn *c, int kind, const char *msg) {
    c->failed = 1;
    c->error_kind = kind;
    tou_set_msg(c->error_msg, sizeof c->error_msg, msg);
}

/* Sorts a failed handshake or read into one error kind with a readable message. */
static void classify_failure(tou_dtls_conn *c, int during_handshake) {
    char errs[TOU_ERR_CAP];
    int reason = tou_drain_errors(errs, sizeof errs, NULL);
    char msg[TOU_ERR_CAP];
    long vr = SSL_get_verify_result(c->ssl);
    int have_alert = c->alert_read >= 0 && ((c->alert_read >> 8) & 0xff) == SSL3_AL_FATAL;

    if (c->pin_failed && vr == X509_V_ERR_APPLICATION_VERIFICATION) {
        conn_fail(c, TOU_DTLS_E_PIN, c->verify_detail);
    } else if (vr != X509_V_OK && (reason == SSL_R_CERTIFICATE_VERIFY_FAILED || !have_alert)) {
        if (c->verify_detail[0] != '\0') {
            snprintf(msg, sizeof msg, "%s", c->verify_detail);
        } else {
            snprintf(msg, sizeof msg, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
        }
        int name = vr == X509_V_ERR_HOSTNAME_MISMATCH || vr == X509_V_ERR_IP_ADDRESS_MISMATCH ||
                   vr == X509_V_ERR_EMAIL_MISMATCH;
        conn_fail(c, name ? TOU_DTLS_E_NAME : TOU_DTLS_E_UNTRUSTED, msg);
    } else if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
        conn_fail(c, TOU_DTLS_E_NO_PEER_CERT, "peer did not return a certificate");
    } else if (have_alert) {
        snprintf(msg, sizeof msg, "received fatal alert: %s", SSL_alert_desc_string_long(c->alert_read & 0xff));
        conn_fail(c, during_handshake ? TOU_DTLS_E_HANDSHAKE : TOU_DTLS_E_ALERT, msg);
    } else {
        snprintf(msg, sizeof msg, "%s", errs[0] != '\0' ? errs : "unknown DTLS failure");
        conn_fail(c, during_handshake ? TOU_DTLS_E_HANDSHAKE : TOU_DTLS_E_PROTOCOL, msg);
    }
}

/* ---------------------------------------------------------------- the datagram BIO */

static BIO_METHOD *tou_bio_method = NULL;
static pthread_once_t tou_bio_once = PTHREAD_ONCE_INIT;

static int out_push(tou_dtls_conn *c, const uint8_t *data, size_t len) {
    if (c->out_count >= TOU_OUT_MAX_DATAGRAMS || c->out_used + len > TOU_OUT_MAX_BYTES) {
        return 0; /* dropped, like a full socket buffer */
    }
    if (c->out_used + len > c->out_cap) {
        size_t cap = c->out_cap == 0 ? 4096 : c->out_cap;
        while (cap < c->out_used + len) cap *= 2;
        uint8_t *p = realloc(c->out_buf, cap);
        if (p == NULL) return 0;
        c->out_buf = p;
        c->out_cap = cap;
    }
    memcpy(c->out_buf + c->out_used, data, len);
    c->out_off[c->out_count] = c->out_used;
    c->out_len[c->out_count] = len;
    c->out_count++;
    c->out_used += len;
    return 1;
}

/* Notes the epoch and sequence number of every record OpenSSL writes. */
static void note_written_records(tou_dtls_conn *c, const uint8_t *data, size_t len) {
    size_t off = 0;
    while (len - off >= DTLS1_RT_HEADER_LENGTH) {
        const uint8_t *r = data + off;
        uint16_t epoch = (uint16_t)(r[3] << 8 | r[4]);
        uint64_t seq = 0;
        for (int i = 5; i < 11; i++) seq = seq << 8 | r[i];
        if (epoch > c->write_epoch || (epoch == c->write_epoch && seq + 1 > c->next_write_seq)) {
            c->write_epoch = epoch;
            c->next_write_seq = seq + 1;
        }
        off += DTLS1_RT_HEADER_LENGTH + ((size_t)r[11] << 8 | r[12]);
        if (off > len) break;
    }
}

/* After the takeover OpenSSL still writes a few records in the epoch (a resent Finished, a
 * no_renegotiation alert) under its own counter, which our data records have already used.
 * Each is opened with our write key and sealed again under the sealer's next number, so the
 * epoch has one sequence; one that cannot be re-sealed is not sent. Returns the new length. */
static size_t reseal_written_records(tou_dtls_conn *c, uint8_t *data, size_t len) {
    size_t in = 0, out = 0;
    while (len - in >= DTLS1_RT_HEADER_LENGTH) {
        uint8_t *r = data + in;
        size_t record_len = DTLS1_RT_HEADER_LENGTH + ((size_t)r[11] << 8 | r[12]);
        if (record_len > len - in) break;
        uint16_t record_epoch = (uint16_t)(r[3] << 8 | r[4]);
        if (record_epoch != c->write_epoch) {
            memmove(data + out, r, record_len);
            out += record_len;
        } else {
            if (c->reseal_scratch == NULL) c->reseal_scratch = malloc(TOU_RESEAL_SCRATCH);
            size_t at = 0;
            long plain = c->reseal_scratch == NULL ? -1
                : tou_aead_open(c->own_opener, r, record_len, c->reseal_scratch, TOU_RESEAL_SCRATCH, &at);
            /* Same suite, same overhead: the new record is exactly as long as the old one. */
            long sealed = plain < 0 ? -1
                : tou_aead_seal(c->sealer, r[0], c->reseal_scratch + at, (size_t)plain, NULL, 0, data + out, record_len);
            /* A record that cannot be sealed anew (the key is used up) is left out. */
            if (sealed == (long)record_len) out += record_len;
            if (plain > 0) OPENSSL_cleanse(c->reseal_scratch, at + (size_t)plain);
        }
        in += record_len;
    }
    return out;
}

/* Each write is one datagram: OpenSSL's handshake buffering BIO flushes one MTU-sized packet
 * per write, and alerts are one record per write. */
static int tou_bio_write(BIO *b, const char *data, int len) {
    tou_dtls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (c == NULL || len < 0) return -1;
    if (c->sealer == NULL) {
        note_written_records(c, (const uint8_t *)data, (size_t)len);
        (void)out_push(c, (const uint8_t *)data, (size_t)len);
        return len;
    }
    if (len == 0 || !out_push(c, (const uint8_t *)data, (size_t)len)) return len;
    size_t last = c->out_count - 1;
    size_t kept = reseal_written_records(c, c->out_buf + c->out_off[last], (size_t)len);
    c->out_len[last] = kept;
    c->out_used = c->out_off[last] + kept;
    if (kept == 0) c->out_count = last;
    return len;
}

/* Each read returns exactly one datagram (or nothing: retry). */
static int tou_bio_read(BIO *b, char *out, int len) {
    tou_dtls_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (c == NULL || out == NULL || len < 0) return -1;
    if (c->in_ptr == NULL) {
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = c->in_len < (size_t)len ? c->in_len : (size_t)len;
    memcpy(out, c->in_ptr, n);
    if (!c->peek) {
        c->in_ptr = NULL;
        c->in_len = 0;
    }
    return (int)n;
}

static long tou_bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    tou_dtls_conn *c = BIO_get_data(b);
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return (c != NULL && c->in_ptr != NULL) ? (long)c->in_len : 0;
    case BIO_CTRL_WPENDING:
        /* Queued datagrams are already "sent": reporting them would make OpenSSL think the
         * packet it is filling is fuller than it is. */
        return 0;
    case BIO_CTRL_DGRAM_QUERY_MTU:
    case BIO_CTRL_DGRAM_GET_FALLBACK_MTU:
        return c != NULL ? c->mtu : 0;
    case BIO_CTRL_DGRAM_SET_MTU:
        if (c != NULL && num > 0) c->mtu = (int)num;
        return num;
    case BIO_CTRL_DGRAM_GET_MTU_OVERHEAD:
        return 0;
    case BIO_CTRL_DGRAM_SET_PEEK_MODE:
        if (c != NULL) c->peek = num != 0;
        return 1;
    case BIO_CTRL_DGRAM_MTU_EXCEEDED:
        return 0;
    case BIO_CTRL_DGRAM_GET_PEER:
        /* The endpoint, not the BIO, knows addresses: say "unsupported" so OpenSSL clears it. */
        return 0;
    case BIO_CTRL_DGRAM_SET_PEER:
    case BIO_CTRL_DGRAM_SET_CONNECTED:
    case BIO_CTRL_DGRAM_SET_NEXT_TIMEOUT:
        return 1;
    case BIO_CTRL_PUSH:
    case BIO_CTRL_POP:
        return 0;
    default:
        return 0;
    }
}

static int tou_bio_create(BIO *b) {
    BIO_set_init(b, 1);
    BIO_set_data(b, NULL);
    return 1;
}

static int tou_bio_destroy(BIO *b) {
    if (b == NULL) return 0;
    BIO_set_data(b, NULL);
    return 1;
}

static void tou_bio_init_once(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tou datagram");
    if (m == NULL) return;
    if (!BIO_meth_set_write(m, tou_bio_write) || !BIO_meth_set_read(m, tou_bio_read) ||
        !BIO_meth_set_ctrl(m, tou_bio_ctrl) || !BIO_meth_set_create(m, tou_bio_create) ||
        !BIO_meth_set_destroy(m, tou_bio_destroy)) {
        BIO_meth_free(m);
        return;
    }
    tou_bio_method = m;
}

/* ---------------------------------------------------------------- callbacks */

static void info_cb(const SSL *ssl, int where, int ret) {
    if ((where & SSL_CB_ALERT) && (where & SSL_CB_READ)) {
        tou_dtls_conn *c = SSL_get_app_data(ssl);
        if (c != NULL) c->alert_read = ret & 0xffff;
    }
}

static int cookie_generate_cb(SSL *ssl, unsigned char *cookie, unsigned int *cookie_len) {
    tou_dtls_conn *c = SSL_get_app_data(ssl);
    if (c == NULL || c->issue_ptr == NULL || c->issue_len == 0 || c->issue_len > TOU_MAX_COOKIE) {
        return 0;
    }
    memcpy(cookie, c->issue_ptr, c->issue_len);
    *cookie_len = (unsigned int)c->issue_len;
    return 1;
}

static int cookie_verify_cb(SSL *ssl, const unsigned char *cookie, unsigned int cookie_len) {
    tou_dtls_conn *c = SSL_get_app_data(ssl);
    if (c == NULL || cookie == NULL || cookie_len == 0) return 0;
    if (c->acc_ptr != NULL && c->acc_lens != NULL) {
        size_t off = 0;
        for (size_t i = 0; i < c->acc_count; i++) {
            size_t l = c->acc_lens[i];
            if (l == cookie_len && CRYPTO_memcmp(c->acc_ptr + off, cookie, l) == 0) {
                memcpy(c->accepted_cookie, cookie, l);
                c->accepted_cookie_len = l;
                return 1;
            }
            off += l;
        }
        return 0;
    }
    return c->accepted_cookie_len == cookie_len && cookie_len > 0 &&
           CRYPTO_memcmp(c->accepted_cookie, cookie, cookie_len) == 0;
}

/* ---------------------------------------------------------------- PEM input */

/* OpenSSL's default would prompt on the terminal for a passphrase; we refuse encrypted keys
 * instead, and note that the key was encrypted so the message can say so. */
static int no_passphrase_cb(char *buf, int size, int rwflag, void *u) {
    (void)buf; (void)size; (void)rwflag;
    if (u != NULL) *(int *)u = 1;
    return 0;
}

/* After a failed PEM certificate read: the end of the input (returns 1, for index > 1), no
 * certificate at all, or a malformed one (message names which input and which certificate). */
static int pem_read_failure(char *err, size_t cap, const char *kind, const char *what, int index) {
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        if (index > 1) return 1;
        char m[200];
        snprintf(m, sizeof m, "no PEM %s (\"-----BEGIN CERTIFICATE-----\") found in the %s", kind, what);
        tou_set_msg(err, cap, m);
        return 0;
    }
    char prefix[160];
    snprintf(prefix, sizeof prefix, "malformed PEM %s #%d in the %s", kind, index, what);
    tou_drain_errors(err, cap, prefix);
    return 0;
}

static int contains(const uint8_t *data, size_t len, const char *needle) {
    size_t n = strlen(needle);
    if (n == 0 || len < n) return n == 0;
    for (size_t i = 0; i + n <= len; i++) {
        if (data[i] == (uint8_t)needle[0] && memcmp(data + i, needle, n) == 0) return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- certificate details */

/* RFC 2253 form of a name ("CN=localhost"), control and non-ASCII bytes escaped by OpenSSL. */
static void name_string(const X509_NAME *name, char *buf, size_t cap) {
    if (cap == 0) return;
    buf[0] = '\0';
    BIO *mem = name != NULL ? BIO_new(BIO_s_mem()) : NULL;
    if (mem == NULL) return;
    int n = 0;
    if (X509_NAME_print_ex(mem, name, 0, XN_FLAG_RFC2253) >= 0) {
        n = BIO_read(mem, buf, (int)(cap - 1 > INT32_MAX ? INT32_MAX : cap - 1));
    }
    BIO_free(mem);
    buf[n > 0 ? n : 0] = '\0';
    if (buf[0] == '\0') snprintf(buf, cap, "(empty subject)");
}

static void time_string(const ASN1_TIME *t, char *buf, size_t cap) {
    if (cap == 0) return;
    buf[0] = '\0';
    BIO *mem = t != NULL ? BIO_new(BIO_s_mem()) : NULL;
    if (mem == NULL) return;
    int n = 0;
    if (ASN1_TIME_print_ex(mem, t, ASN1_DTFLGS_ISO8601)) {
        n = BIO_read(mem, buf, (int)(cap - 1 > INT32_MAX ? INT32_MAX : cap - 1));
    }
    BIO_free(mem);
    buf[n > 0 ? n : 0] = '\0';
    if (buf[0] == '\0') snprintf(buf, cap, "(unreadable date)");
}

/* "DNS:localhost, IP:127.0.0.1" from the certificate's subjectAltName (peer data: only
 * printable ASCII is copied, lengths are bounded). */
static void san_string(X509 *cert, char *buf, size_t cap) {
    if (cap == 0) return;
    buf[0] = '\0';
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (names == NULL) {
        snprintf(buf, cap, "no subjectAltName");
        return;
    }
    size_t used = 0;
    for (int i = 0; i < sk_GENERAL_NAME_num(names) && used + 1 < cap; i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        char item[INET6_ADDRSTRLEN + 80];
        item[0] = '\0';
        if (gn->type == GEN_DNS) {
            const unsigned char *d = ASN1_STRING_get0_data(gn->d.dNSName);
            int len = ASN1_STRING_length(gn->d.dNSName);
            size_t k = 0;
            k += (size_t)snprintf(item, sizeof item, "DNS:");
            for (int j = 0; j < len && k + 1 < sizeof item; j++) {
                item[k++] = (d[j] >= 0x20 && d[j] < 0x7f) ? (char)d[j] : '?';
            }
            item[k] = '\0';
        } else if (gn->type == GEN_IPADD) {
            int len = ASN1_STRING_length(gn->d.iPAddress);
            const unsigned char *d = ASN1_STRING_get0_data(gn->d.iPAddress);
            char text[INET6_ADDRSTRLEN];
            if ((len == 4 && inet_ntop(AF_INET, d, text, sizeof text) != NULL) ||
                (len == 16 && inet_ntop(AF_INET6, d, text, sizeof text) != NULL)) {
                snprintf(item, sizeof item, "IP:%s", text);
            }
        }
        if (item[0] == '\0') continue;
        int n = snprintf(buf + used, cap - used, "%s%s", used > 0 ? ", " : "", item);
        if (n < 0) break;
        used = (size_t)n >= cap - used ? cap - 1 : used + (size_t)n;
    }
    GENERAL_NAMES_free(names);
    if (buf[0] == '\0') snprintf(buf, cap, "no DNS or IP subjectAltName");
}

/* Puts a failed chain verification into words: which certificate, and why (dates, names,
 * issuer), so users see what to fix rather than an OpenSSL code. */
static void describe_verify_error(tou_dtls_conn *c, X509_STORE_CTX *sctx) {
    int err = X509_STORE_CTX_get_error(sctx);
    int depth = X509_STORE_CTX_get_error_depth(sctx);
    X509 *cert = X509_STORE_CTX_get_current_cert(sctx);
    const char *reason = X509_verify_cert_error_string(err);
    const char *which = depth <= 0 ? "the peer's certificate" : "a CA certificate in the peer's chain";
    char subject[192], issuer[192], when[64], sans[256];
    subject[0] = issuer[0] = '\0';
    if (cert != NULL) {
        name_string(X509_get_subject_name(cert), subject, sizeof subject);
        name_string(X509_get_issuer_name(cert), issuer, sizeof issuer);
    }
    char *out = c->verify_detail;
    size_t cap = sizeof c->verify_detail;
    if (cert == NULL) {
        snprintf(out, cap, "%s", reason);
        return;
    }
    switch (err) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
        time_string(X509_get0_notAfter(cert), when, sizeof when);
        snprintf(out, cap, "certificate has expired: %s \"%s\" was valid until %s "
                 "(renew it, or check this machine's clock)", which, subject, when);
        break;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        time_string(X509_get0_notBefore(cert), when, sizeof when);
        snprintf(out, cap, "certificate is not yet valid: %s \"%s\" is valid only from %s "
                 "(check this machine's clock)", which, subject, when);
        break;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
    case X509_V_ERR_EMAIL_MISMATCH:
        san_string(cert, sans, sizeof sans);
        snprintf(out, cap, "%s: the certificate \"%s\" is for %s", reason, subject, sans);
        break;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_CERT_UNTRUSTED:
        snprintf(out, cap, "%s: %s \"%s\", issued by \"%s\", does not chain to any of the trust roots",
                 reason, which, subject, issuer);
        break;
    default:
        snprintf(out, cap, "%s: %s \"%s\", issued by \"%s\"", reason, which, subject, issuer);
        break;
    }
}

/* SHA-256 over the DER SubjectPublicKeyInfo, as in HPKP and curl's --pinnedpubkey. */
static int spki_sha256(X509 *x, uint8_t out[32]) {
    unsigned char *der = NULL;
    int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der);
    if (len <= 0 || der == NULL) return 0;
    unsigned int md_len = 0;
    int ok = EVP_Digest(der, (size_t)len, out, &md_len, EVP_sha256(), NULL) == 1 && md_len == 32;
    OPENSSL_free(der);
    return ok;
}

/* Runs the normal chain and name verification, records why it failed, and then (client with
 * pins) insists the leaf's public key is one of the pinned ones. */
static int cert_verify_cb(X509_STORE_CTX *sctx, void *arg) {
    const tou_dtls_ctx *tctx = arg;
    SSL *ssl = X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx());
    tou_dtls_conn *c = ssl != NULL ? SSL_get_app_data(ssl) : NULL;
    int ok = X509_verify_cert(sctx);
    if (ok <= 0) {
        if (c != NULL) describe_verify_error(c, sctx);
        return 0;
    }
    if (tctx == NULL || tctx->pin_count == 0) return 1;
    X509 *leaf = X509_STORE_CTX_get0_cert(sctx);
    uint8_t hash[32];
    if (leaf == NULL || !spki_sha256(leaf, hash)) {
        X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
        if (c != NULL) {
            c->pin_failed = 1;
            tou_set_msg(c->verify_detail, sizeof c->verify_detail, "cannot hash the server's public key");
        }
        return 0;
    }
    for (size_t i = 0; i < tctx->pin_count; i++) {
        if (CRYPTO_memcmp(tctx->pins[i], hash, 32) == 0) return 1;
    }
    X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
    if (c != NULL) {
        unsigned char b64[64];
        EVP_EncodeBlock(b64, hash, 32);
        char subject[192];
        name_string(X509_get_subject_name(leaf), subject, sizeof subject);
        c->pin_failed = 1;
        if (tctx->pin_count == 1) {
            snprintf(c->verify_detail, sizeof c->verify_detail,
                     "the server's public key (certificate \"%s\") is sha256:%s, not the pinned key",
                     subject, (const char *)b64);
        } else {
            snprintf(c->verify_detail, sizeof c->verify_detail,
                     "the server's public key (certificate \"%s\") is sha256:%s, none of the %zu pinned keys",
                     subject, (const char *)b64, tctx->pin_count);
        }
    }
    return 0;
}

int tou_public_key_sha256(const uint8_t *pem, size_t pem_len, uint8_t out[32], char *err, size_t err_cap) {
    ERR_clear_error();
    if (pem == NULL || pem_len == 0 || pem_len > INT32_MAX) {
        tou_set_msg(err, err_cap, "no PEM certificate given");
        return 0;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)pem_len);
    if (bio == NULL) { tou_set_msg(err, err_cap, "out of memory"); return 0; }
    X509 *x = PEM_read_bio_X509(bio, NULL, no_passphrase_cb, NULL);
    BIO_free(bio);
    if (x == NULL) {
        pem_read_failure(err, err_cap, "certificate", "given PEM", 1);
        return 0;
    }
    int ok = spki_sha256(x, out);
    X509_free(x);
    ERR_clear_error();
    if (!ok) tou_set_msg(err, err_cap, "cannot encode or hash the certificate's public key");
    return ok;
}

/* ---------------------------------------------------------------- contexts */

static int load_trust(SSL_CTX *ctx, const uint8_t *pem, size_t len, char *err, size_t cap, const char *what) {
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL) { tou_set_msg(err, cap, "out of memory"); return 0; }
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    int count = 0;
    for (;;) {
        X509 *x = PEM_read_bio_X509(bio, NULL, no_passphrase_cb, NULL);
        if (x == NULL) {
            int at_end = pem_read_failure(err, cap, "certificate", what, count + 1);
            BIO_free(bio);
            return at_end;
        }
        count++;
        if (!X509_STORE_add_cert(store, x)) {
            unsigned long e = ERR_peek_last_error();
            if (ERR_GET_REASON(e) != X509_R_CERT_ALREADY_IN_HASH_TABLE) {
                X509_free(x);
                BIO_free(bio);
                char p[160];
                snprintf(p, sizeof p, "cannot add certificate #%d of the %s", count, what);
                tou_drain_errors(err, cap, p);
                return 0;
            }
            ERR_clear_error();
        }
        X509_free(x);
    }
}

/* The system store, as curl and the openssl command use it: OpenSSL's default file and hashed
 * directory, which the SSL_CERT_FILE and SSL_CERT_DIR environment variables override. The file
 * is parsed here, once per context; the directory is searched per verification (by subject
 * hash) and what it finds stays cached in the context's store. */
static int load_system_trust(SSL_CTX *ctx, char *err, size_t cap) {
    if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        tou_drain_errors(err, cap, "cannot load the system trust store");
        return 0;
    }
    /* A missing default file or directory is not an error: verification then fails as untrusted. */
    ERR_clear_error();
    return 1;
}

/* What a saved session is bound to: the PEM roots, or for the system store the locations it was
 * read from (a session made under another SSL_CERT_FILE is not offered). */
static int digest_trust_source(EVP_MD_CTX *md, const uint8_t *pem, size_t len) {
    if (pem != NULL) return EVP_DigestUpdate(md, pem, len) == 1;
    const char *file = getenv(X509_get_default_cert_file_env());
    const char *dir = getenv(X509_get_default_cert_dir_env());
    if (file == NULL) file = X509_get_default_cert_file();
    if (dir == NULL) dir = X509_get_default_cert_dir();
    static const char tag[] = "system trust store";
    return EVP_DigestUpdate(md, tag, sizeof tag) == 1 &&
           EVP_DigestUpdate(md, file, strlen(file) + 1) == 1 &&
           EVP_DigestUpdate(md, dir, strlen(dir) + 1) == 1;
}

static int load_chain_and_key(SSL_CTX *ctx, const uint8_t *chain, size_t chain_len,
                              const uint8_t *key, size_t key_len, const char *chain_what,
                              const char *key_what, char *err, size_t cap) {
    BIO *bio = BIO_new_mem_buf(chain, (int)chain_len);
    if (bio == NULL) { tou_set_msg(err, cap, "out of memory"); return 0; }
    X509 *leaf = PEM_read_bio_X509_AUX(bio, NULL, no_passphrase_cb, NULL);
    if (leaf == NULL) {
        BIO_free(bio);
        pem_read_failure(err, cap, "certificate", chain_what, 1);
        return 0;
    }
    char leaf_subject[192];
    name_string(X509_get_subject_name(leaf), leaf_subject, sizeof leaf_subject);
    /* OpenSSL offers no EdDSA signature algorithm in DTLS 1.2: every handshake would end in
     * "no shared cipher". Say so now. */
    EVP_PKEY *leaf_key = X509_get0_pubkey(leaf);
    if (leaf_key != NULL && (EVP_PKEY_is_a(leaf_key, "ED25519") || EVP_PKEY_is_a(leaf_key, "ED448"))) {
        char m[TOU_ERR_CAP];
        snprintf(m, sizeof m, "the certificate \"%s\" (the first in the %s) has an %s key, which OpenSSL's "
                 "DTLS 1.2 cannot sign handshakes with; use an ECDSA (P-256, P-384) or RSA key",
                 leaf_subject, chain_what, EVP_PKEY_is_a(leaf_key, "ED25519") ? "Ed25519" : "Ed448");
        X509_free(leaf);
        BIO_free(bio);
        tou_set_msg(err, cap, m);
        return 0;
    }
    int ok = SSL_CTX_use_certificate(ctx, leaf);
    X509_free(leaf);
    if (!ok) {
        BIO_free(bio);
        char p[160];
        snprintf(p, sizeof p, "the first certificate of the %s was rejected", chain_what);
        tou_drain_errors(err, cap, p);
        return 0;
    }
    for (int index = 2;; index++) {
        X509 *x = PEM_read_bio_X509(bio, NULL, no_passphrase_cb, NULL);
        if (x == NULL) {
            int at_end = pem_read_failure(err, cap, "certificate", chain_what, index);
            if (!at_end) { BIO_free(bio); return 0; }
            break;
        }
        if (!SSL_CTX_add0_chain_cert(ctx, x)) {
            X509_free(x);
            BIO_free(bio);
            char p[160];
            snprintf(p, sizeof p, "certificate #%d of the %s was rejected", index, chain_what);
            tou_drain_errors(err, cap, p);
            return 0;
        }
    }
    BIO_free(bio);
    ERR_clear_error();

    bio = BIO_new_mem_buf(key, (int)key_len);
    if (bio == NULL) { tou_set_msg(err, cap, "out of memory"); return 0; }
    int encrypted = 0;
    EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase_cb, &encrypted);
    BIO_free(bio);
    if (pkey == NULL) {
        char m[TOU_ERR_CAP];
        if (encrypted) {
            ERR_clear_error();
            snprintf(m, sizeof m, "the %s is encrypted; passphrase-protected keys are not supported "
                     "(decrypt it with `openssl pkey -in KEY -out PLAIN.key`)", key_what);
            tou_set_msg(err, cap, m);
        } else if (!contains(key, key_len, "PRIVATE KEY-----")) {
            ERR_clear_error();
            snprintf(m, sizeof m, "the %s contains no PEM private key (\"-----BEGIN PRIVATE KEY-----\")", key_what);
            tou_set_msg(err, cap, m);
        } else {
            char p[160];
            snprintf(p, sizeof p, "the %s is not a readable PEM private key", key_what);
            tou_drain_errors(err, cap, p);
        }
        return 0;
    }
    ok = SSL_CTX_use_PrivateKey(ctx, pkey);
    EVP_PKEY_free(pkey);
    if (!ok) {
        unsigned long e = ERR_peek_last_error();
        int mismatch = ERR_GET_LIB(e) == ERR_LIB_X509 &&
                       (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH || ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH);
        if (!mismatch) {
            char p[160];
            snprintf(p, sizeof p, "the %s was rejected", key_what);
            tou_drain_errors(err, cap, p);
            return 0;
        }
    }
    /* A key of another type lands in its own slot without complaint; this catches it too. */
    if (!ok || !SSL_CTX_check_private_key(ctx)) {
        /* Mismatched values and mismatched key types both mean: not this certificate's key. */
        ERR_clear_error();
        char m[TOU_ERR_CAP];
        snprintf(m, sizeof m, "the %s does not match the certificate \"%s\" (the first in the %s): "
                 "they are not one key pair", key_what, leaf_subject, chain_what);
        tou_set_msg(err, cap, m);
        return 0;
    }
    return 1;
}

static SSL_CTX *new_base_ctx(int server, char *err, size_t cap) {
    if (pthread_once(&tou_bio_once, tou_bio_init_once) != 0 || tou_bio_method == NULL) {
        tou_set_msg(err, cap, "cannot create the datagram BIO method");
        return NULL;
    }
    /* A client parses the server's certificate on every full handshake: it does so in the lean
     * context (tou_libctx.c). A server parses one only with client certificates, and signs with
     * a key read in the default context, which costs it more in another context than it saves. */
    SSL_CTX *ctx = server ? SSL_CTX_new(DTLS_server_method())
                          : SSL_CTX_new_ex(tou_lean_libctx(), NULL, DTLS_client_method());
    if (ctx == NULL) {
        tou_drain_errors(err, cap, "cannot create SSL_CTX");
        return NULL;
    }
    if (!SSL_CTX_set_min_proto_version(ctx, DTLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, DTLS1_2_VERSION) ||
        !SSL_CTX_set_cipher_list(ctx, TOU_CIPHERS)) {
        tou_drain_errors(err, cap, "cannot configure DTLS 1.2 and the AEAD cipher list");
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_NO_QUERY_MTU |
                                 SSL_OP_NO_TICKET | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_info_callback(ctx, info_cb);
    return ctx;
}

tou_dtls_ctx *tou_dtls_ctx_new_client(const uint8_t *trust_pem, size_t trust_len,
                                      const uint8_t *chain_pem, size_t chain_len,
                                      const uint8_t *key_pem, size_t key_len,
                                      const uint8_t *pins, size_t pin_count,
                                      char *err, size_t err_cap) {
    ERR_clear_error();
    if (pin_count > 0 && (pins == NULL || pin_count > 1024)) {
        tou_set_msg(err, err_cap, "at most 1024 public-key pins");
        return NULL;
    }
    if ((trust_pem != NULL && trust_len == 0) || trust_len > INT32_MAX || chain_len > INT32_MAX || key_len > INT32_MAX) {
        tou_set_msg(err, err_cap, "trust roots are required");
        return NULL;
    }
    if ((chain_pem == NULL) != (key_pem == NULL)) {
        tou_set_msg(err, err_cap, "a client certificate chain needs its private key, and vice versa");
        return NULL;
    }
    SSL_CTX *ctx = new_base_ctx(0, err, err_cap);
    if (ctx == NULL) return NULL;
    if ((trust_pem != NULL ? !load_trust(ctx, trust_pem, trust_len, err, err_cap, "trust roots")
                           : !load_system_trust(ctx, err, err_cap)) ||
        (chain_pem != NULL && !load_chain_and_key(ctx, chain_pem, chain_len, key_pem, key_len,
                                                   "client certificate chain", "client private key", err, err_cap))) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    tou_dtls_ctx *c = calloc(1, sizeof *c);
    if (c == NULL || (pin_count > 0 && (c->pins = malloc(pin_count * 32)) == NULL)) {
        free(c);
        SSL_CTX_free(ctx);
        tou_set_msg(err, err_cap, "out of memory");
        return NULL;
    }
    if (pin_count > 0) memcpy(c->pins, pins, pin_count * 32);
    c->pin_count = pin_count;
    c->ssl_ctx = ctx;
    c->is_server = 0;
    /* Offer to take a ticket; a saved session is bound to this trust (roots and pins). */
    SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int digest_len = 0;
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
        !digest_trust_source(md, trust_pem, trust_len) ||
        (pin_count > 0 && EVP_DigestUpdate(md, pins, pin_count * 32) != 1) ||
        EVP_DigestFinal_ex(md, c->trust_digest, &digest_len) != 1) {
        EVP_MD_CTX_free(md);
        tou_dtls_ctx_free(c);
        tou_set_msg(err, err_cap, "cannot hash the trust roots");
        return NULL;
    }
    EVP_MD_CTX_free(md);
    SSL_CTX_set_cert_verify_callback(ctx, cert_verify_cb, c);
    return c;
}

tou_dtls_ctx *tou_dtls_ctx_new_server(const uint8_t *chain_pem, size_t chain_len,
                                      const uint8_t *key_pem, size_t key_len,
                                      const uint8_t *client_trust_pem, size_t client_trust_len,
                                      int require_client_cert,
                                      char *err, size_t err_cap) {
    ERR_clear_error();
    if (chain_pem == NULL || key_pem == NULL || chain_len > INT32_MAX || key_len > INT32_MAX ||
        client_trust_len > INT32_MAX) {
        tou_set_msg(err, err_cap, "a server needs a certificate chain and a private key");
        return NULL;
    }
    if (require_client_cert && client_trust_pem == NULL) {
        tou_set_msg(err, err_cap, "requiring client certificates needs client trust roots");
        return NULL;
    }
    SSL_CTX *ctx = new_base_ctx(1, err, err_cap);
    if (ctx == NULL) return NULL;
    if (!load_chain_and_key(ctx, chain_pem, chain_len, key_pem, key_len, "certificate chain", "private key",
                            err, err_cap) ||
        (client_trust_pem != NULL &&
         !load_trust(ctx, client_trust_pem, client_trust_len, err, err_cap, "client trust roots"))) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (client_trust_pem != NULL) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (require_client_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
    }
    SSL_CTX_set_cookie_generate_cb(ctx, cookie_generate_cb);
    SSL_CTX_set_cookie_verify_cb(ctx, cookie_verify_cb);
    tou_dtls_ctx *c = calloc(1, sizeof *c);
    if (c == NULL) { SSL_CTX_free(ctx); tou_set_msg(err, err_cap, "out of memory"); return NULL; }
    c->ssl_ctx = ctx;
    c->is_server = 1;
    SSL_CTX_set_cert_verify_callback(ctx, cert_verify_cb, c);
    return c;
}

int tou_dtls_ctx_set_ciphers(tou_dtls_ctx *ctx, const char *list, char *err, size_t err_cap) {
    ERR_clear_error();
    /* Only names from our own AEAD list: anything else could reach a suite the record layer lacks. */
    char copy[512];
    if (list == NULL || strlen(list) >= sizeof copy) { tou_set_msg(err, err_cap, "cipher list too long"); return 0; }
    snprintf(copy, sizeof copy, "%s", list);
    static const char supported[] = TOU_CIPHERS;
    for (char *save = NULL, *name = strtok_r(copy, ":", &save); name != NULL; name = strtok_r(NULL, ":", &save)) {
        const char *hit = strstr(supported, name);
        size_t n = strlen(name);
        if (hit == NULL || (hit[n] != ':' && hit[n] != '\0') || (hit != supported && hit[-1] != ':')) {
            char m[160];
            snprintf(m, sizeof m, "cipher suite %s is not one of the supported AEAD suites", name);
            tou_set_msg(err, err_cap, m);
            return 0;
        }
    }
    if (!SSL_CTX_set_cipher_list(ctx->ssl_ctx, list)) {
        tou_drain_errors(err, err_cap, "cannot set the cipher list");
        return 0;
    }
    return 1;
}

void tou_dtls_ctx_free(tou_dtls_ctx *ctx) {
    if (ctx == NULL) return;
    SSL_CTX_free(ctx->ssl_ctx);
    free(ctx->pins);
    tou_tickets_free(ctx->tickets);
    free(ctx);
}

/* ---------------------------------------------------------------- connections */

static tou_dtls_conn *conn_new(tou_dtls_ctx *ctx, int mtu, char *err, size_t cap) {
    tou_dtls_conn *c = calloc(1, sizeof *c);
    if (c == NULL) { tou_set_msg(err, cap, "out of memory"); return NULL; }
    c->alert_read = -1;
    c->ctx = ctx;
    c->is_server = ctx->is_server;
    c->mtu = mtu;
    c->ssl = SSL_new(ctx->ssl_ctx);
    BIO *bio = c->ssl != NULL ? BIO_new(tou_bio_method) : NULL;
    if (bio == NULL) {
        tou_drain_errors(err, cap, "cannot create a DTLS session");
        SSL_free(c->ssl);
        free(c);
        return NULL;
    }
    BIO_set_data(bio, c);
    SSL_set_bio(c->ssl, bio, bio);
    SSL_set_app_data(c->ssl, c);
    SSL_set_options(c->ssl, SSL_OP_NO_QUERY_MTU);
    if (!SSL_set_mtu(c->ssl, mtu)) {
        char m[96];
        snprintf(m, sizeof m, "MTU %d is too small for DTLS", mtu);
        ERR_clear_error();
        tou_set_msg(err, cap, m);
        tou_dtls_conn_free(c);
        return NULL;
    }
    return c;
}

tou_dtls_conn *tou_dtls_conn_new_client(tou_dtls_ctx *ctx, const char *server_name, int mtu,
                                        char *err, size_t err_cap) {
    ERR_clear_error();
    if (ctx == NULL || ctx->is_server) { tou_set_msg(err, err_cap, "not a client context"); return NULL; }
    if (server_name == NULL || server_name[0] == '\0') { tou_set_msg(err, err_cap, "empty server name"); return NULL; }
    if (strlen(server_name) > 253) { tou_set_msg(err, err_cap, "server name longer than 253 bytes"); return NULL; }
    tou_dtls_conn *c = conn_new(ctx, mtu, err, err_cap);
    if (c == NULL) return NULL;
    SSL_set_connect_state(c->ssl);
    snprintf(c->server_name, sizeof c->server_name, "%s", server_name);
    unsigned char addr[16];
    int is_ip = inet_pton(AF_INET, server_name, addr) == 1 || inet_pton(AF_INET6, server_name, addr) == 1;
    int ok;
    if (is_ip) {
        /* IP literals are checked against IP SANs and never sent as SNI (RFC 6066). */
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), server_name);
    } else {
        SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = SSL_set1_host(c->ssl, server_name) && SSL_set_tlsext_host_name(c->ssl, server_name);
    }
    if (!ok) {
        tou_drain_errors(err, err_cap, "invalid server name");
        tou_dtls_conn_free(c);
        return NULL;
    }
    return c;
}

void tou_dtls_conn_free(tou_dtls_conn *conn) {
    if (conn == NULL) return;
    SSL_free(conn->ssl); /* frees the BIO too */
    free(conn->out_buf);
    tou_aead_free(conn->sealer);
    tou_aead_free(conn->opener);
    tou_aead_free(conn->own_opener);
    free(conn->reseal_scratch);
    free(conn->offered_ticket);
    free(conn);
}

/* Without a cookie exchange: the state machine takes the ClientHello as it comes. Anything
 * that does not get as far as a server flight is dropped, so no connection is made from it. */
static int accept_without_cookie(tou_dtls_ctx *ctx, const uint8_t *dgram, size_t dgram_len, int mtu,
                                 tou_dtls_conn **out_conn, char *msg, size_t msg_cap) {
    tou_dtls_conn *c = conn_new(ctx, mtu, msg, msg_cap);
    if (c == NULL) return TOU_DTLS_LISTEN_DROPPED;
    SSL_set_accept_state(c->ssl);
    c->in_ptr = dgram;
    c->in_len = dgram_len;
    int hs = SSL_do_handshake(c->ssl);
    c->in_ptr = NULL;
    c->in_len = 0;
    int e = hs <= 0 ? SSL_get_error(c->ssl, hs) : SSL_ERROR_NONE;
    if ((e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) || c->out_count == 0) {
        tou_drain_errors(msg, msg_cap, "not a usable ClientHello");
        tou_dtls_conn_free(c);
        return TOU_DTLS_LISTEN_DROPPED;
    }
    ERR_clear_error();
    *out_conn = c;
    return TOU_DTLS_LISTEN_ACCEPTED;
}

int tou_dtls_listen(tou_dtls_ctx *ctx, const uint8_t *dgram, size_t dgram_len,
                    const uint8_t *cookie, size_t cookie_len,
                    const uint8_t *acc, const size_t *acc_lens, size_t acc_count,
                    int require_cookie, int mtu,
                    uint8_t *hvr_out, size_t hvr_cap, size_t *hvr_len,
                    tou_dtls_conn **out_conn, char *msg, size_t msg_cap) {
    ERR_clear_error();
    *out_conn = NULL;
    *hvr_len = 0;
    if (ctx == NULL || !ctx->is_server) { tou_set_msg(msg, msg_cap, "not a server context"); return TOU_DTLS_LISTEN_DROPPED; }
    if (cookie == NULL || cookie_len == 0 || cookie_len > TOU_MAX_COOKIE) {
        tou_set_msg(msg, msg_cap, "cookie to issue must be 1...255 bytes");
        return TOU_DTLS_LISTEN_DROPPED;
    }
    if (dgram == NULL || dgram_len == 0) { tou_set_msg(msg, msg_cap, "empty datagram"); return TOU_DTLS_LISTEN_DROPPED; }
    if (!require_cookie) return accept_without_cookie(ctx, dgram, dgram_len, mtu, out_conn, msg, msg_cap);
    tou_dtls_conn *c = conn_new(ctx, mtu, msg, msg_cap);
    if (c == NULL) return TOU_DTLS_LISTEN_DROPPED;
    SSL_set_accept_state(c->ssl);
    c->issue_ptr = cookie;
    c->issue_len = cookie_len;
    c->acc_ptr = acc;
    c->acc_lens = acc_lens;
    c->acc_count = acc != NULL ? acc_count : 0;
    c->in_ptr = dgram;
    c->in_len = dgram_len;

    BIO_ADDR *peer = BIO_ADDR_new();
    int r = peer != NULL ? DTLSv1_listen(c->ssl, peer) : -1;
    BIO_ADDR_free(peer);

    if (r <= 0) {
        int result = TOU_DTLS_LISTEN_DROPPED;
        if (c->out_count == 1 && c->out_len[0] <= hvr_cap) {
            memcpy(hvr_out, c->out_buf + c->out_off[0], c->out_len[0]);
            *hvr_len = c->out_len[0];
            result = TOU_DTLS_LISTEN_HVR;
            ERR_clear_error();
        } else {
            tou_drain_errors(msg, msg_cap, "not a usable ClientHello");
        }
        tou_dtls_conn_free(c);
        return result;
    }
    /* Cookie accepted: let the state machine process the ClientHello (still in the BIO) now,
     * while the caller's cookies are in reach, so the first flight is queued. */
    c->in_ptr = dgram;
    c->in_len = dgram_len;
    int hs = SSL_do_handshake(c->ssl);
    if (hs <= 0) {
        int e = SSL_get_error(c->ssl, hs);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) classify_failure(c, 1);
        else ERR_clear_error();
    } else {
        c->established = 1;
    }
    c->in_ptr = NULL;
    c->in_len = 0;
    c->issue_ptr = NULL;
    c->issue_len = 0;
    c->acc_ptr = NULL;
    c->acc_lens = NULL;
    c->acc_count = 0;
    *out_conn = c;
    return TOU_DTLS_LISTEN_ACCEPTED;
}

int tou_dtls_conn_start(tou_dtls_conn *c) {
    ERR_clear_error();
    if (c->failed) return TOU_DTLS_STEP_FATAL;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) { c->established = 1; return TOU_DTLS_STEP_HANDSHAKE_DONE; }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) { ERR_clear_error(); return TOU_DTLS_STEP_WANT; }
    classify_failure(c, 1);
    return TOU_DTLS_STEP_FATAL;
}

void tou_dtls_conn_set_input(tou_dtls_conn *c, const uint8_t *data, size_t len) {
    c->in_ptr = len > 0 ? data : NULL;
    c->in_len = len;
}

void tou_dtls_conn_clear_input(tou_dtls_conn *c) {
    c->in_ptr = NULL;
    c->in_len = 0;
}

/* The per-record calls clear the error queue only when something is in it: clearing walks every
 * slot of the queue, which costs more than a record's decryption on the data path. */
static void clear_stale_errors(void) {
    if (ERR_peek_error() != 0) ERR_clear_error();
}

/* After the handshake our record layer carries the data and OpenSSL writes only the odd alert or
 * resent Finished: its record buffers (about 17 KB each way) and our datagram queue would sit idle
 * in every connection. Both are allocated again when needed; OpenSSL refuses while it holds data. */
static void release_idle_buffers(tou_dtls_conn *c) {
    if (c->out_used == 0 && c->out_buf != NULL) {
        free(c->out_buf);
        c->out_buf = NULL;
        c->out_cap = 0;
    }
    if (c->ssl != NULL) SSL_free_buffers(c->ssl);
}

int tou_dtls_conn_release_handshake(tou_dtls_conn *c) {
    if (c->ssl == NULL) return 1;
    if (!c->established || c->failed || c->sealer == NULL) return 0;
    const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);
    c->released_cipher = ci != NULL ? SSL_CIPHER_get_name(ci) : NULL;
    c->released_reused = SSL_session_reused(c->ssl) == 1;
    SSL_free(c->ssl); /* frees the BIO too */
    c->ssl = NULL;
    /* Only OpenSSL's own later records needed re-sealing; it writes none now. */
    tou_aead_free(c->own_opener);
    c->own_opener = NULL;
    free(c->reseal_scratch);
    c->reseal_scratch = NULL;
    release_idle_buffers(c);
    ERR_clear_error();
    return 1;
}

const char *tou_alert_description(int description) {
    return SSL_alert_desc_string_long(description & 0xff);
}

int tou_dtls_conn_step(tou_dtls_conn *c, uint8_t *out, size_t out_cap, size_t *out_len) {
    *out_len = 0;
    if (c->failed) return TOU_DTLS_STEP_FATAL;
    if (c->ssl == NULL) return TOU_DTLS_STEP_WANT;
    clear_stale_errors();
    if (!c->established) {
        int r = SSL_do_handshake(c->ssl);
        if (r == 1) { c->established = 1; return TOU_DTLS_STEP_HANDSHAKE_DONE; }
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) { ERR_clear_error(); return TOU_DTLS_STEP_WANT; }
        classify_failure(c, 1);
        return TOU_DTLS_STEP_FATAL;
    }
    if (c->close_seen) {
        /* OpenSSL discards everything after the peer's close_notify; keep the BIO empty. */
        tou_dtls_conn_clear_input(c);
        return TOU_DTLS_STEP_WANT;
    }
    int cap = out_cap > INT32_MAX ? INT32_MAX : (int)out_cap;
    int r = SSL_read(c->ssl, out, cap);
    if (r > 0) { *out_len = (size_t)r; return TOU_DTLS_STEP_DATA; }
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        clear_stale_errors();
        release_idle_buffers(c);
        return TOU_DTLS_STEP_WANT;
    case SSL_ERROR_ZERO_RETURN:
        ERR_clear_error();
        c->close_seen = 1;
        return TOU_DTLS_STEP_CLOSE_NOTIFY;
    default:
        classify_failure(c, 0);
        return TOU_DTLS_STEP_FATAL;
    }
}

int tou_dtls_conn_shutdown(tou_dtls_conn *c) {
    if (c->ssl == NULL) return 1; /* the record layer writes close_notify itself */
    ERR_clear_error();
    int r = SSL_shutdown(c->ssl);
    if (r < 0) {
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) { ERR_clear_error(); return 1; }
        char m[TOU_ERR_CAP];
        tou_drain_errors(m, sizeof m, "close_notify failed");
        tou_set_msg(c->error_msg, sizeof c->error_msg, m);
        c->error_kind = TOU_DTLS_E_PROTOCOL;
        return -1;
    }
    return 1;
}

int tou_dtls_conn_get_timeout(tou_dtls_conn *c, int64_t *remaining_us) {
    struct timeval tv;
    if (c->ssl != NULL && DTLSv1_get_timeout(c->ssl, &tv) == 1) {
        *remaining_us = (int64_t)tv.tv_sec * 1000000 + (int64_t)tv.tv_usec;
        return 1;
    }
    *remaining_us = 0;
    return 0;
}

int tou_dtls_conn_handle_timeout(tou_dtls_conn *c) {
    ERR_clear_error();
    if (c->failed) return TOU_DTLS_STEP_FATAL;
    if (c->ssl == NULL) return TOU_DTLS_STEP_WANT;
    int r = DTLSv1_handle_timeout(c->ssl);
    if (r < 0) {
        classify_failure(c, !c->established);
        return TOU_DTLS_STEP_FATAL;
    }
    ERR_clear_error();
    return TOU_DTLS_STEP_WANT;
}

size_t tou_dtls_conn_out_count(const tou_dtls_conn *c) { return c->out_count; }

const uint8_t *tou_dtls_conn_out_get(const tou_dtls_conn *c, size_t i, size_t *len) {
    if (i >= c->out_count) { *len = 0; return NULL; }
    *len = c->out_len[i];
    return c->out_buf + c->out_off[i];
}

void tou_dtls_conn_out_reset(tou_dtls_conn *c) {
    c->out_count = 0;
    c->out_used = 0;
    if (c->established) release_idle_buffers(c);
}

int tou_dtls_conn_set_mtu(tou_dtls_conn *c, int mtu) {
    if (c->ssl == NULL || !SSL_set_mtu(c->ssl, mtu)) { ERR_clear_error(); return 0; }
    c->mtu = mtu;
    return 1;
}

int tou_dtls_conn_is_established(const tou_dtls_conn *c) { return c->established; }

const char *tou_dtls_conn_cipher(const tou_dtls_conn *c) {
    if (!c->established) return NULL;
    if (c->ssl == NULL) return c->released_cipher;
    const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);
    return ci != NULL ? SSL_CIPHER_get_name(ci) : NULL;
}

int tou_dtls_conn_aead_expansion(const tou_dtls_conn *c) {
    /* The suite being negotiated counts: a server knows it from its ServerHello on, while its
     * current cipher is still unset until the client's CCS. */
    if (c->ssl == NULL) return c->sealer != NULL ? (int)tou_aead_overhead(c->sealer) - 13 : 8 + 16;
    const SSL_CIPHER *ci = SSL_get_pending_cipher(c->ssl);
    if (ci == NULL) ci = SSL_get_current_cipher(c->ssl);
    /* No suite yet: no epoch-1 record can be genuine, so the stricter bound is safe. */
    if (ci == NULL) return 8 + 16;
    return SSL_CIPHER_get_cipher_nid(ci) == NID_chacha20_poly1305 ? 16 : 8 + 16;
}

int tou_dtls_conn_can_false_start(const tou_dtls_conn *c) {
    /* A client's only epoch-1 handshake record is its Finished: once written, its keys are final
     * and, with ECDHE and an AEAD, RFC 7918 lets it send data before the server's Finished. */
    return !c->is_server && !c->failed && c->write_epoch >= 1;
}


size_t tou_dtls_conn_data_mtu(const tou_dtls_conn *c) { return c->ssl != NULL ? DTLS_get_data_mtu(c->ssl) : 0; }

int tou_dtls_conn_peer_subject(const tou_dtls_conn *c, char *buf, size_t cap) {
    if (cap == 0) return 0;
    buf[0] = '\0';
    if (c->ssl == NULL) return 0;
    X509 *peer = SSL_get0_peer_certificate(c->ssl);
    if (peer == NULL) return 0;
    BIO *mem = BIO_new(BIO_s_mem());
    if (mem == NULL) return 0;
    int ok = X509_NAME_print_ex(mem, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253) >= 0;
    int n = ok ? BIO_read(mem, buf, (int)(cap - 1 > INT32_MAX ? INT32_MAX : cap - 1)) : 0;
    BIO_free(mem);
    buf[n > 0 ? n : 0] = '\0';
    ERR_clear_error();
    return n > 0;
}

int tou_dtls_conn_error_kind(const tou_dtls_conn *c) { return c->error_kind; }
const char *tou_dtls_conn_error_message(const tou_dtls_conn *c) { return c->error_msg; }

/* Fetched once: a fetch per handshake would look the KDF up by name every time. */
static EVP_KDF *tou_prf = NULL;
static pthread_once_t tou_prf_once = PTHREAD_ONCE_INIT;

static void tou_fetch_prf(void) {
    tou_prf = EVP_KDF_fetch(NULL, "TLS1-PRF", NULL);
}

/* TLS 1.2 key expansion (RFC 5246 6.3) from the session's master secret: the same keys OpenSSL
 * derived for the current epoch, so records we protect and records OpenSSL protects interoperate. */
int tou_dtls_conn_record_layer(tou_dtls_conn *c, tou_aead **sealer, tou_aead **opener, uint16_t *epoch) {
    *sealer = NULL;
    *opener = NULL;
    if (c->sealer != NULL) {
        *sealer = c->sealer;
        *opener = c->opener;
        *epoch = c->write_epoch;
        return 1;
    }
    if ((!c->established && !tou_dtls_conn_can_false_start(c)) || c->failed || c->write_epoch == 0
        || c->ssl == NULL) return 0;
    const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);
    if (ci == NULL) return 0;
    int suite;
    size_t key_len, iv_len;
    switch (SSL_CIPHER_get_cipher_nid(ci)) {
    case NID_aes_128_gcm: suite = TOU_AEAD_AES_128_GCM; key_len = 16; iv_len = 4; break;
    case NID_aes_256_gcm: suite = TOU_AEAD_AES_256_GCM; key_len = 32; iv_len = 4; break;
    case NID_chacha20_poly1305: suite = TOU_AEAD_CHACHA20_POLY1305; key_len = 32; iv_len = 12; break;
    default: return 0;
    }
    const EVP_MD *md = SSL_CIPHER_get_handshake_digest(ci);
    SSL_SESSION *session = SSL_get_session(c->ssl);
    if (md == NULL || session == NULL) return 0;

    uint8_t master[SSL_MAX_MASTER_KEY_LENGTH];
    size_t master_len = SSL_SESSION_get_master_key(session, master, sizeof master);
    uint8_t seed[13 + 2 * SSL3_RANDOM_SIZE];
    memcpy(seed, "key expansion", 13);
    if (master_len == 0
        || SSL_get_server_random(c->ssl, seed + 13, SSL3_RANDOM_SIZE) != SSL3_RANDOM_SIZE
        || SSL_get_client_random(c->ssl, seed + 13 + SSL3_RANDOM_SIZE, SSL3_RANDOM_SIZE) != SSL3_RANDOM_SIZE) {
        OPENSSL_cleanse(master, sizeof master);
        return 0;
    }
    /* client_write_key, server_write_key, client_write_IV, server_write_IV (no MAC keys: AEAD). */
    uint8_t block[2 * 32 + 2 * 12];
    size_t block_len = 2 * key_len + 2 * iv_len;
    int ok = 0;
    pthread_once(&tou_prf_once, tou_fetch_prf);
    EVP_KDF_CTX *kctx = tou_prf != NULL ? EVP_KDF_CTX_new(tou_prf) : NULL;
    if (kctx != NULL) {
        OSSL_PARAM params[4];
        params[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)EVP_MD_get0_name(md), 0);
        params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, master, master_len);
        params[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed, sizeof seed);
        params[3] = OSSL_PARAM_construct_end();
        ok = EVP_KDF_derive(kctx, block, block_len, params) == 1;
    }
    EVP_KDF_CTX_free(kctx);
    OPENSSL_cleanse(master, sizeof master);
    if (ok) {
        const uint8_t *client_key = block, *server_key = block + key_len;
        const uint8_t *client_iv = block + 2 * key_len, *server_iv = client_iv + iv_len;
        const uint8_t *write_key = c->is_server ? server_key : client_key;
        const uint8_t *write_iv = c->is_server ? server_iv : client_iv;
        c->sealer = tou_aead_new(suite, write_key, key_len, write_iv, iv_len, 1);
        c->own_opener = tou_aead_new(suite, write_key, key_len, write_iv, iv_len, 0);
        c->opener = tou_aead_new(suite, c->is_server ? client_key : server_key, key_len,
                                 c->is_server ? client_iv : server_iv, iv_len, 0);
        ok = c->sealer != NULL && c->opener != NULL && c->own_opener != NULL;
    }
    OPENSSL_cleanse(block, sizeof block);
    ERR_clear_error();
    if (!ok) {
        tou_aead_free(c->sealer);
        tou_aead_free(c->opener);
        tou_aead_free(c->own_opener);
        c->sealer = c->opener = c->own_opener = NULL;
        return 0;
    }
    /* Continues after OpenSSL's last record in the epoch (its Finished, or a resend of it). */
    tou_aead_start_sequence(c->sealer, c->write_epoch, c->next_write_seq);
    *sealer = c->sealer;
    *opener = c->opener;
    *epoch = c->write_epoch;
    return 1;
}
