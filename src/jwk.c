/*
 * jwk.c - JWS algorithm table and verification key loading (see jwk.h).
 * OpenSSL 3 only: keys are built with OSSL_PARAM_BLD + EVP_PKEY_fromdata,
 * never with the deprecated RSA_* / EC_KEY_* setters.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "b64url.h"
#include "jwk.h"

/* A secret file, a PEM file or a JWK Set larger than this is certainly a
 * wrong path (a log file, a binary): refuse rather than read it all. */
#define JWK_FILE_MAX ((size_t)1024 * 1024)
#define JWK_SECRET_MIN 32

static const char *const jwa_names[JWA_COUNT] = {
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
    "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
};

int
jwa_from_name(const char *s, size_t len)
{
    for (int a = 0; a < JWA_COUNT; a++) {
        if (strlen(jwa_names[a]) == len && memcmp(jwa_names[a], s, len) == 0)
            return a;
    }
    return -1;
}

const char *
jwa_name(int a)
{
    return a >= 0 && a < JWA_COUNT ? jwa_names[a] : "?";
}

static int
jwk_append(struct jwk_set *s, char *kid, unsigned algs, EVP_PKEY *pkey,
           unsigned char *secret, size_t secret_len, char *err, size_t cap)
{
    struct jwk *k = realloc(s->k, (s->n + 1) * sizeof *k);

    if (k == NULL) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    s->k = k;
    k[s->n].kid = kid;
    k[s->n].algs = algs;
    k[s->n].pkey = pkey;
    k[s->n].secret = secret;
    k[s->n].secret_len = secret_len;
    s->n++;
    return 0;
}

/* RFC 7518 §3.2: an HS key must be at least as long as the hash output,
 * so a 32-byte secret verifies HS256 only. */
static unsigned
secret_algs(size_t len)
{
    unsigned m = 0;

    if (len >= 32)
        m |= JWA_BIT(JWA_HS256);
    if (len >= 48)
        m |= JWA_BIT(JWA_HS384);
    if (len >= 64)
        m |= JWA_BIT(JWA_HS512);
    return m;
}

/* alg >= 0: the JWK's "alg", the only algorithm the key may verify. */
static int
add_secret_kid(struct jwk_set *s, const unsigned char *sec, size_t len,
               char *kid, int alg, char *err, size_t cap)
{
    unsigned algs = secret_algs(len);
    unsigned char *copy;

    if (len < JWK_SECRET_MIN) {
        snprintf(err, cap, "HMAC secret is %zu bytes; at least %d are "
                 "required (RFC 7518 §3.2)", len, JWK_SECRET_MIN);
        return -1;
    }
    if (alg >= 0) {
        if ((algs & JWA_BIT(alg)) == 0) {
            snprintf(err, cap, "HMAC key of %zu bytes is too short for %s "
                     "(RFC 7518 §3.2)", len, jwa_name(alg));
            return -1;
        }
        algs = JWA_BIT(alg);
    }
    copy = malloc(len);
    if (copy == NULL) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    memcpy(copy, sec, len);
    if (jwk_append(s, kid, algs, NULL, copy, len, err, cap) == -1) {
        OPENSSL_cleanse(copy, len);
        free(copy);
        return -1;
    }
    return 0;
}

int
jwk_add_secret(struct jwk_set *s, const unsigned char *sec, size_t len,
               char *err, size_t cap)
{
    return add_secret_kid(s, sec, len, NULL, -1, err, cap);
}

/* Read a whole (small) file; *len excludes the NUL added after it. */
static char *
read_small_file(const char *path, size_t *len, char *err, size_t cap)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;

    if (f == NULL) {
        snprintf(err, cap, "%s: %s", path, strerror(errno));
        return NULL;
    }
    buf = malloc(JWK_FILE_MAX + 1);
    if (buf == NULL) {
        (void)fclose(f);       /* read only: nothing to lose */
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    n = fread(buf, 1, JWK_FILE_MAX + 1, f);
    if (ferror(f)) {
        snprintf(err, cap, "%s: read error", path);
        (void)fclose(f);       /* read only: nothing to lose */
        free(buf);
        return NULL;
    }
    (void)fclose(f);       /* read only: nothing to lose */
    if (n > JWK_FILE_MAX) {
        snprintf(err, cap, "%s: larger than %zu bytes", path, JWK_FILE_MAX);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

int
jwk_load_secret_file(struct jwk_set *s, const char *path, char *err,
                     size_t cap)
{
    size_t len;
    char *buf = read_small_file(path, &len, err, cap);
    int rc;

    if (buf == NULL)
        return -1;
    /* Files written with echo or an editor end with a newline that is not
     * part of the secret. Only one is removed: anything else is data. */
    if (len > 0 && buf[len - 1] == '\n') {
        len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
    }
    rc = jwk_add_secret(s, (unsigned char *)buf, len, err, cap);
    if (rc == -1) {
        char inner[200];
        snprintf(inner, sizeof inner, "%s", err);
        snprintf(err, cap, "%s: %s", path, inner);
    }
    OPENSSL_cleanse(buf, len);
    free(buf);
    return rc;
}

/* The algorithms an asymmetric key's type can verify, or 0 with err set:
 * RSA -> RS* and PS*, RSA-PSS -> PS*, EC -> the ES of its curve,
 * Ed25519 -> EdDSA. */
static unsigned
pkey_algs(EVP_PKEY *pkey, char *err, size_t cap)
{
    int id = EVP_PKEY_get_base_id(pkey);

    if (id == EVP_PKEY_RSA || id == EVP_PKEY_RSA_PSS) {
        int bits = EVP_PKEY_get_bits(pkey);
        if (bits < 2048) {
            snprintf(err, cap, "RSA key is %d bits; at least 2048 are "
                     "required", bits);
            return 0;
        }
        return id == EVP_PKEY_RSA ? JWA_RS_ALL | JWA_PS_ALL : JWA_PS_ALL;
    }
    if (id == EVP_PKEY_EC) {
        char name[64];
        size_t nlen = 0;
        int nid;

        /* Explicit curve parameters have no group name: refused, since
         * only the named NIST curves of RFC 7518 §3.4 are defined. */
        if (EVP_PKEY_get_group_name(pkey, name, sizeof name, &nlen) != 1) {
            snprintf(err, cap, "EC key without a named curve");
            return 0;
        }
        nid = OBJ_sn2nid(name);
        if (nid == NID_undef)
            nid = EC_curve_nist2nid(name);
        if (nid == NID_X9_62_prime256v1)
            return JWA_BIT(JWA_ES256);
        if (nid == NID_secp384r1)
            return JWA_BIT(JWA_ES384);
        if (nid == NID_secp521r1)
            return JWA_BIT(JWA_ES512);
        snprintf(err, cap, "EC curve %s is not P-256, P-384 or P-521", name);
        return 0;
    }
    if (id == EVP_PKEY_ED25519)
        return JWA_BIT(JWA_EDDSA);
    snprintf(err, cap, "unsupported key type (RSA, EC P-256/384/521 or "
             "Ed25519 expected)");
    return 0;
}

int
jwk_load_pem(struct jwk_set *s, const char *path, char *err, size_t cap)
{
    BIO *bio = BIO_new_file(path, "r");
    EVP_PKEY *pkey;
    unsigned algs;
    char why[200];

    if (bio == NULL) {
        snprintf(err, cap, "%s: %s", path, strerror(errno));
        ERR_clear_error();
        return -1;
    }
    pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    if (pkey == NULL) {
        /* Also accept a certificate: its key is what verifies, and
         * issuers often publish a certificate rather than a bare key. */
        X509 *x;

        (void)BIO_reset(bio);
        x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (x != NULL) {
            pkey = X509_get_pubkey(x);
            X509_free(x);
        }
    }
    BIO_free(bio);
    ERR_clear_error();
    if (pkey == NULL) {
        snprintf(err, cap, "%s: no PEM PUBLIC KEY or CERTIFICATE", path);
        return -1;
    }
    algs = pkey_algs(pkey, why, sizeof why);
    if (algs == 0 || jwk_append(s, NULL, algs, pkey, NULL, 0, why,
                                sizeof why) == -1) {
        snprintf(err, cap, "%s: %s", path, why);
        EVP_PKEY_free(pkey);
        return -1;
    }
    return 0;
}

/* A required base64url string member, decoded into a new buffer. want is
 * the exact decoded length required, or 0 for any non-empty length. */
static unsigned char *
b64_member(json_t *o, const char *name, size_t want, size_t *out_len,
           char *err, size_t cap)
{
    json_t *m = json_object_get(o, name);
    const char *str;
    size_t len;
    unsigned char *buf;
    long n;

    if (!json_is_string(m)) {
        snprintf(err, cap, "\"%s\" missing or not a string", name);
        return NULL;
    }
    str = json_string_value(m);
    len = json_string_length(m);
    buf = malloc(B64URL_DECODED_MAX(len) + 1);
    if (buf == NULL) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    n = b64url_decode(str, len, buf, B64URL_DECODED_MAX(len) + 1);
    if (n <= 0 || (want != 0 && (size_t)n != want)) {
        if (n <= 0)
            snprintf(err, cap, "\"%s\" is not base64url", name);
        else
            snprintf(err, cap, "\"%s\" is %ld bytes, %zu expected", name,
                     n, want);
        free(buf);
        return NULL;
    }
    *out_len = (size_t)n;
    return buf;
}

static EVP_PKEY *
pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pkey = NULL;

    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1
        || EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *
jwk_rsa(json_t *o, char *err, size_t cap)
{
    unsigned char *nb = NULL, *eb = NULL;
    size_t nlen, elen;
    BIGNUM *n = NULL, *e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY *pkey = NULL;

    nb = b64_member(o, "n", 0, &nlen, err, cap);
    if (nb == NULL)
        goto out;
    eb = b64_member(o, "e", 0, &elen, err, cap);
    if (eb == NULL)
        goto out;
    /* OpenSSL's own limit on verification (OPENSSL_RSA_MAX_MODULUS_BITS)
     * and a sane public exponent; beyond these, OpenSSL fails anyway. */
    if (nlen > 2048 || elen > 8) {
        snprintf(err, cap, "RSA modulus or exponent too large");
        goto out;
    }
    n = BN_bin2bn(nb, (int)nlen, NULL);
    e = BN_bin2bn(eb, (int)elen, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (n == NULL || e == NULL || bld == NULL
        || OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) != 1
        || OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) != 1) {
        snprintf(err, cap, "out of memory");
        goto out;
    }
    pkey = pkey_fromdata("RSA", bld);
    if (pkey == NULL)
        snprintf(err, cap, "invalid RSA key");
out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    free(nb);
    free(eb);
    return pkey;
}

/* Coordinate size in bytes of a JOSE curve name (RFC 7518 §6.2.1.1), and
 * the OpenSSL group name; 0 for curves we do not support. */
static size_t
ec_curve(const char *crv, const char **group)
{
    if (strcmp(crv, "P-256") == 0) {
        *group = "prime256v1";
        return 32;
    }
    if (strcmp(crv, "P-384") == 0) {
        *group = "secp384r1";
        return 48;
    }
    if (strcmp(crv, "P-521") == 0) {
        *group = "secp521r1";
        return 66;
    }
    return 0;
}

static EVP_PKEY *
jwk_ec(json_t *o, size_t size, const char *group, char *err, size_t cap)
{
    unsigned char *x = NULL, *y = NULL, pub[1 + 2 * 66];
    size_t xl, yl;
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *chk = NULL;

    x = b64_member(o, "x", size, &xl, err, cap);
    if (x == NULL)
        goto out;
    y = b64_member(o, "y", size, &yl, err, cap);
    if (y == NULL)
        goto out;
    /* SEC 1 §2.3.3 uncompressed point: 0x04 || X || Y. */
    pub[0] = 0x04;
    memcpy(pub + 1, x, size);
    memcpy(pub + 1 + size, y, size);
    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL
        || OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME,
                                           group, 0) != 1
        || OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY,
                                            pub, 1 + 2 * size) != 1) {
        snprintf(err, cap, "out of memory");
        goto out;
    }
    pkey = pkey_fromdata("EC", bld);
    /* Decoding the point already checks it is on the curve; the explicit
     * check also refuses the point at infinity and wrong-order points. */
    if (pkey != NULL) {
        chk = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        if (chk == NULL || EVP_PKEY_public_check(chk) != 1) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
    }
    if (pkey == NULL)
        snprintf(err, cap, "invalid EC public key (not on the curve?)");
out:
    EVP_PKEY_CTX_free(chk);
    OSSL_PARAM_BLD_free(bld);
    free(x);
    free(y);
    return pkey;
}

static EVP_PKEY *
jwk_ed25519(json_t *o, char *err, size_t cap)
{
    size_t xl;
    unsigned char *x = b64_member(o, "x", 32, &xl, err, cap);
    EVP_PKEY *pkey;

    if (x == NULL)
        return NULL;
    pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, xl);
    free(x);
    if (pkey == NULL)
        snprintf(err, cap, "invalid Ed25519 key");
    return pkey;
}

/* Should this JWK be loaded at all? 1 = yes, 0 = skip (meant for another
 * use), -1 = malformed. *alg receives the JWK's alg, or -1. */
static int
jwk_wanted(json_t *o, int *alg, char *err, size_t cap)
{
    json_t *use = json_object_get(o, "use");
    json_t *ops = json_object_get(o, "key_ops");
    json_t *a = json_object_get(o, "alg");
    json_t *kid = json_object_get(o, "kid");

    *alg = -1;
    if (kid != NULL && !json_is_string(kid)) {
        snprintf(err, cap, "\"kid\" is not a string");
        return -1;
    }
    if (use != NULL) {
        if (!json_is_string(use)) {
            snprintf(err, cap, "\"use\" is not a string");
            return -1;
        }
        /* RFC 7517 §4.2: "enc" keys are for encryption, never for
         * verifying signatures. */
        if (strcmp(json_string_value(use), "sig") != 0)
            return 0;
    }
    if (ops != NULL) {
        size_t i;
        json_t *op;
        int verify = 0;

        if (!json_is_array(ops)) {
            snprintf(err, cap, "\"key_ops\" is not an array");
            return -1;
        }
        json_array_foreach(ops, i, op) {
            if (json_is_string(op)
                && strcmp(json_string_value(op), "verify") == 0)
                verify = 1;
        }
        if (!verify)
            return 0;
    }
    if (a != NULL) {
        if (!json_is_string(a)) {
            snprintf(err, cap, "\"alg\" is not a string");
            return -1;
        }
        if (strcasecmp(json_string_value(a), "none") == 0) {
            snprintf(err, cap, "\"alg\": \"none\" is never allowed");
            return -1;
        }
        *alg = jwa_from_name(json_string_value(a),
                             json_string_length(a));
        if (*alg < 0)
            return 0;           /* e.g. RSA-OAEP: not a JWS algorithm */
    }
    return 1;
}

/* Load one JWK: 0 loaded or skipped, -1 error (err set). */
static int
jwk_one(struct jwk_set *s, json_t *o, char *err, size_t cap)
{
    json_t *kty_j = json_object_get(o, "kty");
    const char *kty;
    EVP_PKEY *pkey = NULL;
    unsigned algs, only = 0;
    int alg, w;
    char *kid = NULL;

    if (!json_is_object(o)) {
        snprintf(err, cap, "not an object");
        return -1;
    }
    if (!json_is_string(kty_j)) {
        snprintf(err, cap, "\"kty\" missing or not a string");
        return -1;
    }
    w = jwk_wanted(o, &alg, err, cap);
    if (w <= 0)
        return w;
    if (alg >= 0)
        only = JWA_BIT(alg);
    if (json_is_string(json_object_get(o, "kid"))) {
        kid = strdup(json_string_value(json_object_get(o, "kid")));
        if (kid == NULL) {
            snprintf(err, cap, "out of memory");
            return -1;
        }
    }
    kty = json_string_value(kty_j);
    if (strcmp(kty, "oct") == 0) {
        size_t kl;
        unsigned char *k = b64_member(o, "k", 0, &kl, err, cap);
        int rc;

        if (k == NULL) {
            free(kid);
            return -1;
        }
        if (only != 0 && (only & JWA_HS_ALL) == 0) {
            snprintf(err, cap, "\"alg\": \"%s\" does not fit kty oct",
                     jwa_name(alg));
            rc = -1;
        } else {
            rc = add_secret_kid(s, k, kl, kid, alg, err, cap);
        }
        OPENSSL_cleanse(k, kl);
        free(k);
        if (rc == -1)
            free(kid);
        return rc;
    }
    if (strcmp(kty, "RSA") == 0) {
        pkey = jwk_rsa(o, err, cap);
    } else if (strcmp(kty, "EC") == 0) {
        json_t *crv = json_object_get(o, "crv");
        const char *group = NULL;
        size_t size;

        if (!json_is_string(crv)) {
            snprintf(err, cap, "\"crv\" missing or not a string");
            free(kid);
            return -1;
        }
        size = ec_curve(json_string_value(crv), &group);
        if (size == 0) {
            free(kid);
            return 0;           /* e.g. secp256k1: not ours to verify */
        }
        pkey = jwk_ec(o, size, group, err, cap);
    } else if (strcmp(kty, "OKP") == 0) {
        json_t *crv = json_object_get(o, "crv");

        if (!json_is_string(crv)) {
            snprintf(err, cap, "\"crv\" missing or not a string");
            free(kid);
            return -1;
        }
        /* X25519/X448 are key agreement keys; Ed448 is not supported. */
        if (strcmp(json_string_value(crv), "Ed25519") != 0) {
            free(kid);
            return 0;
        }
        pkey = jwk_ed25519(o, err, cap);
    } else {
        free(kid);
        return 0;
    }
    ERR_clear_error();
    if (pkey == NULL) {
        free(kid);
        return -1;
    }
    algs = pkey_algs(pkey, err, cap);
    if (algs != 0 && only != 0) {
        if ((algs & only) == 0) {
            snprintf(err, cap, "\"alg\": \"%s\" does not fit this %s key",
                     jwa_name(alg), kty);
            algs = 0;
        } else {
            algs = only;
        }
    }
    if (algs == 0 || jwk_append(s, kid, algs, pkey, NULL, 0, err, cap)
        == -1) {
        EVP_PKEY_free(pkey);
        free(kid);
        return -1;
    }
    return 0;
}

int
jwk_parse_jwks(struct jwk_set *s, const char *json, size_t len, char *err,
               size_t cap)
{
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    json_t *keys, *o;
    size_t i;
    int rc = 0;

    if (root == NULL) {
        snprintf(err, cap, "invalid JSON at line %d: %s", je.line, je.text);
        return -1;
    }
    keys = json_object_get(root, "keys");
    if (!json_is_object(root) || !json_is_array(keys)) {
        snprintf(err, cap, "not a JWK Set (no \"keys\" array)");
        json_decref(root);
        return -1;
    }
    json_array_foreach(keys, i, o) {
        char why[200];

        if (jwk_one(s, o, why, sizeof why) == -1) {
            json_t *kid = json_object_get(o, "kid");
            if (json_is_string(kid))
                snprintf(err, cap, "key %zu (kid \"%.40s\"): %s", i,
                         json_string_value(kid), why);
            else
                snprintf(err, cap, "key %zu: %s", i, why);
            rc = -1;
            break;
        }
    }
    json_decref(root);
    return rc;
}

int
jwk_load_jwks(struct jwk_set *s, const char *path, char *err, size_t cap)
{
    size_t len;
    char *buf = read_small_file(path, &len, err, cap);
    char why[256];
    int rc;

    if (buf == NULL)
        return -1;
    rc = jwk_parse_jwks(s, buf, len, why, sizeof why);
    if (rc == -1)
        snprintf(err, cap, "%s: %s", path, why);
    free(buf);
    return rc;
}

void
jwk_set_free(struct jwk_set *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->k[i].kid);
        EVP_PKEY_free(s->k[i].pkey);
        if (s->k[i].secret != NULL) {
            OPENSSL_cleanse(s->k[i].secret, s->k[i].secret_len);
            free(s->k[i].secret);
        }
    }
    free(s->k);
    s->k = NULL;
    s->n = 0;
}
