/*
 * test_jwt.c - JWT verification, JWK loading, extraction and stripping.
 *
 * Keys are generated at test time with EVP (RSA 2048, EC P-256/384/521,
 * Ed25519) and tokens are signed here by a small independent signer, so
 * the fixtures cannot drift from the code and no private key is ever
 * committed. Public keys are written to a private temporary directory as
 * PEM and JWKS files, which is what the verifier loads in production.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "b64url.h"
#include "jwk.h"
#include "jwt.h"

#define NOW 1700000000LL

static char tmpdir[64];
static EVP_PKEY *rsa, *ec256, *ec384, *ec521, *ed, *rsa1024;
static char rsa_pem[128], ec256_pem[128], ec384_pem[128], ec521_pem[128];
static char ed_pem[128], rsa1024_pem[128], jwks_path[128];
static const char secret64[] =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/* ---- helpers: policy */

static struct strlist
list(const char *s)
{
    struct strlist l = { NULL, 0 };
    char *copy = strdup(s), *save = NULL;

    for (char *w = strtok_r(copy, " ", &save); w != NULL;
         w = strtok_r(NULL, " ", &save)) {
        l.v = realloc(l.v, (l.n + 1) * sizeof *l.v);
        l.v[l.n++] = strdup(w);
    }
    free(copy);
    return l;
}

static void
list_free(struct strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void
policy_init(struct policy *p, const char *algs)
{
    memset(p, 0, sizeof *p);
    p->jwt_enabled = true;
    p->jwt_algorithms = list(algs);
    p->jwt_leeway_ms = 30000;
    p->jwt_require_exp = true;
    p->jwt_max_token_bytes = 8192;
    p->jwt_sources = list("query:access_token header:authorization "
                          "cookie:access_token");
    p->jwt_forward_claims = list("sub:X-User-Id");
}

static void
policy_free(struct policy *p)
{
    list_free(&p->jwt_algorithms);
    list_free(&p->jwt_sources);
    list_free(&p->jwt_forward_claims);
    list_free(&p->jwt_audience);
}

/* A verifier for algs with the given key settings (NULL = unset). */
static struct jwt_verifier *
verifier(const char *algs, const char *secret, const char *pem,
         const char *jwks)
{
    struct policy p;
    char err[256] = "";
    struct jwt_verifier *v;

    policy_init(&p, algs);
    p.jwt_secret = (char *)secret;
    p.jwt_public_key_file = (char *)pem;
    p.jwt_jwks_file = (char *)jwks;
    v = jwt_verifier_new(&p, NULL, err, sizeof err);
    if (v == NULL)
        print_error("verifier: %s\n", err);
    policy_free(&p);
    return v;
}

/* ---- helpers: a small independent signer */

static char *
b64(const void *in, size_t len)
{
    char *out = malloc(len * 2 + 4);
    assert_true(b64url_encode(in, len, out, len * 2 + 4) >= 0);
    return out;
}

static const char *
md_of(int alg)
{
    static const char *const m[] = { "SHA256", "SHA384", "SHA512" };
    return alg == JWA_EDDSA ? NULL : m[alg % 3];
}

/* Sign header.payload with alg; der = keep ECDSA signatures in DER. */
static char *
sign_raw(const char *hdr, const char *pl, int alg, EVP_PKEY *k,
         const void *secret, size_t slen, int der)
{
    char *h = b64(hdr, strlen(hdr)), *p = b64(pl, strlen(pl));
    size_t inlen = strlen(h) + 1 + strlen(p);
    char *in = malloc(inlen + 1), *s, *out;
    unsigned char sig[1024];
    size_t siglen = sizeof sig;

    snprintf(in, inlen + 1, "%s.%s", h, p);
    if (alg <= JWA_HS512) {
        assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, md_of(alg), NULL,
                                  secret, slen, (unsigned char *)in, inlen,
                                  sig, sizeof sig, &siglen));
    } else {
        EVP_MD_CTX *m = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pc = NULL;
        const EVP_MD *md = NULL;

        if (md_of(alg) != NULL)
            md = EVP_get_digestbyname(md_of(alg));
        assert_int_equal(EVP_DigestSignInit(m, &pc, md, NULL, k), 1);
        if (alg >= JWA_PS256 && alg <= JWA_PS512) {
            EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING);
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST);
            EVP_PKEY_CTX_set_rsa_mgf1_md(pc, md);
        }
        assert_int_equal(EVP_DigestSign(m, sig, &siglen,
                                        (unsigned char *)in, inlen), 1);
        EVP_MD_CTX_free(m);
        if (alg >= JWA_ES256 && alg <= JWA_ES512 && !der) {
            const unsigned char *q = sig;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)siglen);
            int n = (EVP_PKEY_get_bits(k) + 7) / 8;
            assert_non_null(es);
            BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, n);
            BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + n, n);
            siglen = (size_t)(2 * n);
            ECDSA_SIG_free(es);
        }
    }
    s = b64(sig, siglen);
    out = malloc(inlen + 2 + strlen(s));
    sprintf(out, "%s.%s", in, s);
    free(h);
    free(p);
    free(in);
    free(s);
    return out;
}

static char *
sign(const char *hdr, const char *pl, int alg, EVP_PKEY *k)
{
    return sign_raw(hdr, pl, alg, k, secret64, strlen(secret64), 0);
}

static const char *
hdr_for(int alg)
{
    static char buf[64];
    snprintf(buf, sizeof buf, "{\"alg\":\"%s\",\"typ\":\"JWT\"}",
             jwa_name(alg));
    return buf;
}

#define PL_OK "{\"sub\":\"alice\",\"exp\":1700000600}"

static int
check(const struct jwt_verifier *v, const char *tok, const char **reason)
{
    struct jwt_result r;
    const char *why = NULL;
    int rc = jwt_verify(v, tok, strlen(tok), NOW, &r, &why);

    if (reason != NULL)
        *reason = why;
    if (rc == 0) {
        assert_null(why);
        jwt_result_free(&r);
    } else {
        assert_non_null(why);
        assert_null(r.claims);
    }
    return rc;
}

static void
expect_fail(const struct jwt_verifier *v, const char *tok, const char *why)
{
    const char *reason;

    assert_int_equal(check(v, tok, &reason), -1);
    if (why != NULL)
        assert_string_equal(reason, why);
}

/* ---- key fixtures */

static void
write_pem(EVP_PKEY *k, char *path, size_t cap, const char *name)
{
    FILE *f;

    snprintf(path, cap, "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PUBKEY(f, k), 1);
    fclose(f);
}

static void
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *
b64_bn(EVP_PKEY *k, const char *param)
{
    BIGNUM *bn = NULL;
    unsigned char buf[1024];
    int n;

    assert_int_equal(EVP_PKEY_get_bn_param(k, param, &bn), 1);
    n = BN_bn2bin(bn, buf);
    BN_free(bn);
    return b64(buf, (size_t)n);
}

/* The public JWK members of k, without braces. */
static char *
jwk_members(EVP_PKEY *k)
{
    char *out = malloc(2048);

    if (EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA) {
        char *n = b64_bn(k, OSSL_PKEY_PARAM_RSA_N);
        char *e = b64_bn(k, OSSL_PKEY_PARAM_RSA_E);
        snprintf(out, 2048, "\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"%s\"", n,
                 e);
        free(n);
        free(e);
    } else if (EVP_PKEY_get_base_id(k) == EVP_PKEY_EC) {
        unsigned char pub[200];
        size_t len = 0, c;
        const char *crv;
        char *x, *y;

        assert_int_equal(EVP_PKEY_get_octet_string_param(
            k, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub, &len), 1);
        c = (len - 1) / 2;
        crv = c == 32 ? "P-256" : c == 48 ? "P-384" : "P-521";
        x = b64(pub + 1, c);
        y = b64(pub + 1 + c, c);
        snprintf(out, 2048, "\"kty\":\"EC\",\"crv\":\"%s\",\"x\":\"%s\","
                 "\"y\":\"%s\"", crv, x, y);
        free(x);
        free(y);
    } else {
        unsigned char raw[32];
        size_t len = sizeof raw;
        char *x;

        assert_int_equal(EVP_PKEY_get_raw_public_key(k, raw, &len), 1);
        x = b64(raw, len);
        snprintf(out, 2048, "\"kty\":\"OKP\",\"crv\":\"Ed25519\","
                 "\"x\":\"%s\"", x);
        free(x);
    }
    return out;
}

static int
setup(void **state)
{
    char *r, *e, *o, *k, jwks[8192];
    FILE *f;

    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_jwt.XXXXXX");
    if (mkdtemp(tmpdir) == NULL)
        return -1;
    rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    rsa1024 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    ec256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ec384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    ec521 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
    ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!rsa || !rsa1024 || !ec256 || !ec384 || !ec521 || !ed)
        return -1;
    write_pem(rsa, rsa_pem, sizeof rsa_pem, "rsa.pem");
    write_pem(rsa1024, rsa1024_pem, sizeof rsa1024_pem, "rsa1024.pem");
    write_pem(ec256, ec256_pem, sizeof ec256_pem, "ec256.pem");
    write_pem(ec384, ec384_pem, sizeof ec384_pem, "ec384.pem");
    write_pem(ec521, ec521_pem, sizeof ec521_pem, "ec521.pem");
    write_pem(ed, ed_pem, sizeof ed_pem, "ed.pem");

    r = jwk_members(rsa);
    e = jwk_members(ec256);
    o = jwk_members(ed);
    k = b64(secret64, 32);
    snprintf(jwks, sizeof jwks, "{\"keys\":["
             "{\"kid\":\"enc1\",\"use\":\"enc\",%s},"
             "{\"kid\":\"r1\",\"use\":\"sig\",\"alg\":\"RS256\",%s},"
             "{\"kid\":\"e1\",%s},"
             "{\"kid\":\"o1\",%s},"
             "{\"kid\":\"k1\",\"kty\":\"oct\",\"k\":\"%s\"}]}",
             r, r, e, o, k);
    free(r);
    free(e);
    free(o);
    free(k);
    snprintf(jwks_path, sizeof jwks_path, "%s/keys.jwks", tmpdir);
    f = fopen(jwks_path, "w");
    if (f == NULL)
        return -1;
    fputs(jwks, f);
    fclose(f);
    return 0;
}

static int
teardown(void **state)
{
    char cmd[128];

    (void)state;
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(rsa1024);
    EVP_PKEY_free(ec256);
    EVP_PKEY_free(ec384);
    EVP_PKEY_free(ec521);
    EVP_PKEY_free(ed);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- base64url */

static void
test_b64url(void **state)
{
    unsigned char out[16];
    char enc[32];

    (void)state;
    assert_int_equal(b64url_decode("", 0, out, sizeof out), 0);
    assert_int_equal(b64url_decode("Zm9v", 4, out, sizeof out), 3);
    assert_memory_equal(out, "foo", 3);
    assert_int_equal(b64url_decode("Zm8", 3, out, sizeof out), 2);
    assert_int_equal(b64url_decode("Zg", 2, out, sizeof out), 1);
    assert_int_equal(b64url_decode("-_8", 3, out, sizeof out), 2);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(out[1], 0xff);
    /* padding, standard alphabet, whitespace, impossible length */
    assert_int_equal(b64url_decode("Zg==", 4, out, sizeof out), -1);
    assert_int_equal(b64url_decode("+/8", 3, out, sizeof out), -1);
    assert_int_equal(b64url_decode("Zm 9", 4, out, sizeof out), -1);
    assert_int_equal(b64url_decode("Zm9vZ", 5, out, sizeof out), -1);
    assert_int_equal(b64url_decode("Zm\0v", 4, out, sizeof out), -1);
    /* non-zero unused bits: "Zh" would also mean "f" to a lax decoder */
    assert_int_equal(b64url_decode("Zh", 2, out, sizeof out), -1);
    assert_int_equal(b64url_decode("Zm9", 3, out, sizeof out), -1);
    /* output capacity */
    assert_int_equal(b64url_decode("Zm9v", 4, out, 2), -1);
    assert_int_equal(b64url_encode((const unsigned char *)"foob", 4, enc,
                                   sizeof enc), 6);
    assert_string_equal(enc, "Zm9vYg");
    assert_int_equal(b64url_encode((const unsigned char *)"foob", 4, enc,
                                   6), -1);
}

/* ---- every algorithm */

static void
test_all_algorithms(void **state)
{
    (void)state;
    for (int a = 0; a < JWA_COUNT; a++) {
        EVP_PKEY *k = NULL;
        const char *pem = NULL, *secret = NULL;
        struct jwt_verifier *v;
        struct jwt_result r;
        const char *why;
        char *tok;

        if (a <= JWA_HS512)
            secret = secret64;
        else if (a <= JWA_PS512) {
            k = rsa;
            pem = rsa_pem;
        } else if (a == JWA_ES256) {
            k = ec256;
            pem = ec256_pem;
        } else if (a == JWA_ES384) {
            k = ec384;
            pem = ec384_pem;
        } else if (a == JWA_ES512) {
            k = ec521;
            pem = ec521_pem;
        } else {
            k = ed;
            pem = ed_pem;
        }
        v = verifier(jwa_name(a), secret, pem, NULL);
        assert_non_null(v);
        tok = sign(hdr_for(a), PL_OK, a, k);
        assert_int_equal(jwt_verify(v, tok, strlen(tok), NOW, &r, &why), 0);
        assert_non_null(r.sub);
        assert_string_equal(r.sub, "alice");
        assert_int_equal(r.exp, 1700000600);
        assert_non_null(r.claims);
        jwt_result_free(&r);
        /* one flipped bit of the signature */
        {
            char *c = &tok[strlen(tok) - 5];
            *c = *c == 'A' ? 'B' : 'A';
        }
        expect_fail(v, tok, "bad signature");
        free(tok);
        jwt_verifier_free(v);
    }
}

/* ---- algorithm policy */

static void
test_alg_none(void **state)
{
    static const char *const hdrs[] = {
        "{\"alg\":\"none\"}", "{\"alg\":\"None\"}", "{\"alg\":\"NONE\"}",
        "{\"alg\":\"nOnE\",\"typ\":\"JWT\"}",
    };
    struct jwt_verifier *v = verifier("HS256", secret64, NULL, NULL);
    char *p = b64(PL_OK, strlen(PL_OK));

    (void)state;
    for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
        char *h = b64(hdrs[i], strlen(hdrs[i])), tok[512];
        char *signed_tok;

        snprintf(tok, sizeof tok, "%s.%s.", h, p);
        expect_fail(v, tok, NULL);
        snprintf(tok, sizeof tok, "%s.%s.AAAA", h, p);
        expect_fail(v, tok, "alg none");
        /* even with a valid HMAC over it */
        signed_tok = sign(hdrs[i], PL_OK, JWA_HS256, NULL);
        expect_fail(v, signed_tok, "alg none");
        free(signed_tok);
        free(h);
    }
    free(p);
    jwt_verifier_free(v);
}

static void
test_alg_not_allowed(void **state)
{
    struct jwt_verifier *v = verifier("HS256", secret64, NULL, NULL);
    char *tok = sign(hdr_for(JWA_HS384), PL_OK, JWA_HS384, NULL);

    (void)state;
    expect_fail(v, tok, "alg not allowed");
    free(tok);
    tok = sign("{\"alg\":\"hs256\"}", PL_OK, JWA_HS256, NULL);
    expect_fail(v, tok, "alg not allowed");
    free(tok);
    tok = sign("{\"alg\":\"XS256\"}", PL_OK, JWA_HS256, NULL);
    expect_fail(v, tok, "alg not allowed");
    free(tok);
    jwt_verifier_free(v);
}

/* The classic confusion: HS256 keyed with the RSA public key's PEM. */
static void
test_alg_confusion_hs_rsa(void **state)
{
    struct jwt_verifier *v = verifier("RS256 HS256", NULL, rsa_pem, NULL);
    FILE *f = fopen(rsa_pem, "rb");
    char pem[4096];
    size_t n;
    char *tok;

    (void)state;
    assert_non_null(v);
    assert_non_null(f);
    n = fread(pem, 1, sizeof pem, f);
    fclose(f);
    tok = sign_raw(hdr_for(JWA_HS256), PL_OK, JWA_HS256, NULL, pem, n, 0);
    expect_fail(v, tok, "alg does not fit key");
    free(tok);
    jwt_verifier_free(v);
}

static void
test_rs_ps_confusion(void **state)
{
    struct jwt_verifier *v = verifier("RS256 PS256", NULL, rsa_pem, NULL);
    char *tok;

    (void)state;
    tok = sign(hdr_for(JWA_PS256), PL_OK, JWA_RS256, rsa);
    expect_fail(v, tok, "bad signature");
    free(tok);
    tok = sign(hdr_for(JWA_RS256), PL_OK, JWA_PS256, rsa);
    expect_fail(v, tok, "bad signature");
    free(tok);
    tok = sign(hdr_for(JWA_RS256), PL_OK, JWA_RS384, rsa);
    expect_fail(v, tok, "bad signature");
    free(tok);
    jwt_verifier_free(v);
}

static void
test_es_der_and_curve(void **state)
{
    struct jwt_verifier *v = verifier("ES256 ES384", NULL, ec256_pem, NULL);
    struct jwt_verifier *v384 = verifier("ES256 ES384", NULL, ec384_pem,
                                         NULL);
    char *tok;

    (void)state;
    tok = sign_raw(hdr_for(JWA_ES256), PL_OK, JWA_ES256, ec256, NULL, 0, 1);
    expect_fail(v, tok, "bad signature");
    free(tok);
    /* ES256 header, P-384 key: the key verifies ES384 only */
    tok = sign(hdr_for(JWA_ES256), PL_OK, JWA_ES256, ec384);
    expect_fail(v384, tok, "alg does not fit key");
    free(tok);
    /* ES384 header against the P-256 key */
    tok = sign(hdr_for(JWA_ES384), PL_OK, JWA_ES384, ec256);
    expect_fail(v, tok, "alg does not fit key");
    free(tok);
    /* r||s of the right curve but wrong length (one byte short) */
    tok = sign(hdr_for(JWA_ES256), PL_OK, JWA_ES256, ec256);
    tok[strlen(tok) - 3] = '\0';
    expect_fail(v, tok, NULL);
    free(tok);
    jwt_verifier_free(v);
    jwt_verifier_free(v384);
}

/* ---- claims */

static void
claim_case(const struct jwt_verifier *v, const char *pl, const char *why)
{
    char *tok = sign(hdr_for(JWA_HS256), pl, JWA_HS256, NULL);

    if (why == NULL)
        assert_int_equal(check(v, tok, NULL), 0);
    else
        expect_fail(v, tok, why);
    free(tok);
}

static void
test_time_claims(void **state)
{
    struct jwt_verifier *v = verifier("HS256", secret64, NULL, NULL);
    struct policy p;
    char err[256];
    struct jwt_verifier *noexp;

    (void)state;
    assert_int_equal(jwt_leeway(v), 30);
    /* exp > now - leeway */
    claim_case(v, "{\"exp\":1699999970}", "expired");
    claim_case(v, "{\"exp\":1699999971}", NULL);
    claim_case(v, "{\"exp\":1699999970.5}", NULL);
    claim_case(v, "{\"exp\":1699999969.9}", "expired");
    claim_case(v, "{\"exp\":0}", "expired");
    claim_case(v, "{\"exp\":\"1800000000\"}", "malformed time claim");
    claim_case(v, "{\"exp\":null}", "malformed time claim");
    claim_case(v, "{\"exp\":true}", "malformed time claim");
    /* NumericDates outside 1970..9999 are malformed, never clamped or
     * overflowed into something valid (exp + leeway near 2^63) */
    claim_case(v, "{\"exp\":-5}", "malformed time claim");
    claim_case(v, "{\"exp\":253402300799}", NULL);
    claim_case(v, "{\"exp\":253402300800}", "malformed time claim");
    claim_case(v, "{\"exp\":9223372036854775807}", "malformed time claim");
    claim_case(v, "{\"exp\":9223372036854775790}", "malformed time claim");
    claim_case(v, "{\"exp\":1e300}", "malformed time claim");
    claim_case(v, "{\"exp\":-1e300}", "malformed time claim");
    claim_case(v, "{\"exp\":1800000000,\"nbf\":-1}", "malformed time claim");
    claim_case(v, "{\"exp\":1800000000,\"nbf\":1e300}",
               "malformed time claim");
    claim_case(v, "{\"exp\":1800000000,\"iat\":-1e300}",
               "malformed time claim");
    claim_case(v, "{\"exp\":1800000000,\"iat\":9223372036854775807}",
               "malformed time claim");
    claim_case(v, "{\"sub\":\"x\"}", "missing exp");
    /* nbf and iat <= now + leeway */
    claim_case(v, "{\"exp\":1800000000,\"nbf\":1700000030}", NULL);
    claim_case(v, "{\"exp\":1800000000,\"nbf\":1700000031}",
               "not yet valid");
    claim_case(v, "{\"exp\":1800000000,\"nbf\":\"0\"}",
               "malformed time claim");
    claim_case(v, "{\"exp\":1800000000,\"iat\":1700000030}", NULL);
    claim_case(v, "{\"exp\":1800000000,\"iat\":1700000031}",
               "issued in the future");
    claim_case(v, "{\"exp\":1800000000,\"iat\":[]}", "malformed time claim");
    claim_case(v, "{\"exp\":99999999999999999999999}", "malformed");
    jwt_verifier_free(v);

    policy_init(&p, "HS256");
    p.jwt_secret = (char *)secret64;
    p.jwt_require_exp = false;
    p.jwt_leeway_ms = 0;
    noexp = jwt_verifier_new(&p, NULL, err, sizeof err);
    assert_non_null(noexp);
    claim_case(noexp, "{\"sub\":\"x\"}", NULL);
    claim_case(noexp, "{\"exp\":1700000000}", "expired");
    claim_case(noexp, "{\"exp\":1700000001}", NULL);
    claim_case(noexp, "{\"nbf\":1700000001}", "not yet valid");
    claim_case(noexp, "{\"nbf\":1700000000}", NULL);
    policy_free(&p);
    jwt_verifier_free(noexp);
}

static void
test_iss_aud(void **state)
{
    struct policy p;
    char err[256];
    struct jwt_verifier *v;

    (void)state;
    policy_init(&p, "HS256");
    p.jwt_secret = (char *)secret64;
    p.jwt_issuer = (char *)"https://idp.example";
    p.jwt_audience = list("api chat");
    v = jwt_verifier_new(&p, NULL, err, sizeof err);
    assert_non_null(v);
#define E "\"exp\":1800000000,"
#define I "\"iss\":\"https://idp.example\","
    claim_case(v, "{" E I "\"aud\":\"chat\"}", NULL);
    claim_case(v, "{" E I "\"aud\":[\"x\",\"api\"]}", NULL);
    claim_case(v, "{" E I "\"aud\":[\"x\",\"y\"]}", "bad audience");
    claim_case(v, "{" E I "\"aud\":\"Chat\"}", "bad audience");
    claim_case(v, "{" E I "\"aud\":[]}", "bad audience");
    claim_case(v, "{" E I "\"aud\":[\"api\",1]}", "malformed");
    claim_case(v, "{" E I "\"aud\":{\"a\":\"api\"}}", "bad audience");
    claim_case(v, "{" E I "\"x\":1}", "bad audience");
    claim_case(v, "{" E "\"iss\":\"https://idp.example/\",\"aud\":\"api\"}",
               "bad issuer");
    claim_case(v, "{" E "\"aud\":\"api\"}", "bad issuer");
    claim_case(v, "{" E "\"iss\":[\"https://idp.example\"],\"aud\":\"api\"}",
               "bad issuer");
    /* exact comparison: no prefix, suffix, case or NUL tricks */
    claim_case(v, "{" E I "\"aud\":\"cha\"}", "bad audience");
    claim_case(v, "{" E I "\"aud\":\"chat-admin\"}", "bad audience");
    claim_case(v, "{" E I "\"aud\":\"xchat\"}", "bad audience");
    claim_case(v, "{" E I "\"aud\":\"CHAT\"}", "bad audience");
    /* jansson refuses \u0000 in strings: the payload is malformed */
    claim_case(v, "{" E I "\"aud\":\"chat\\u0000x\"}", "malformed");
    claim_case(v, "{" E I "\"aud\":\"chat \"}", "bad audience");
    claim_case(v, "{" E I "\"aud\":\"\"}", "bad audience");
    claim_case(v, "{" E I "\"aud\":[\"api2\",\"ap\",\"Api\"]}",
               "bad audience");
    claim_case(v, "{" E "\"iss\":\"https://idp.exampl\",\"aud\":\"api\"}",
               "bad issuer");
    claim_case(v, "{" E "\"iss\":\"https://idp.example.evil\",\"aud\":\"api\"}",
               "bad issuer");
    claim_case(v, "{" E "\"iss\":\"xhttps://idp.example\",\"aud\":\"api\"}",
               "bad issuer");
    claim_case(v, "{" E "\"iss\":\"HTTPS://IDP.EXAMPLE\",\"aud\":\"api\"}",
               "bad issuer");
    claim_case(v, "{" E "\"iss\":\"https://idp.example\\u0000\","
               "\"aud\":\"api\"}", "malformed");
    claim_case(v, "{" E "\"iss\":\"\",\"aud\":\"api\"}", "bad issuer");
#undef E
#undef I
    policy_free(&p);
    jwt_verifier_free(v);
}

/* ---- shape */

static void
test_malformed(void **state)
{
    struct jwt_verifier *v = verifier("HS256", secret64, NULL, NULL);
    char *good = sign(hdr_for(JWA_HS256), PL_OK, JWA_HS256, NULL);
    size_t len = strlen(good);
    char buf[1024];
    char *tok;
    const char *why;
    struct jwt_result r;

    (void)state;
    assert_int_equal(check(v, good, NULL), 0);
    /* every truncation fails, without reading past len */
    for (size_t n = 0; n < len; n++) {
        char *cut = malloc(n + 1);
        memcpy(cut, good, n);
        assert_int_equal(jwt_verify(v, cut, n, NOW, &r, &why), -1);
        free(cut);
    }
    /* 2 and 4 segments */
    snprintf(buf, sizeof buf, "%.*s", (int)(strrchr(good, '.') - good),
             good);
    expect_fail(v, buf, "malformed");
    snprintf(buf, sizeof buf, "%s.AAAA", good);
    expect_fail(v, buf, "malformed");
    snprintf(buf, sizeof buf, "%s.", good);
    expect_fail(v, buf, "malformed");
    expect_fail(v, "..", "malformed");
    expect_fail(v, "", "malformed");
    /* padding, bad characters */
    snprintf(buf, sizeof buf, "%s=", good);
    expect_fail(v, buf, "malformed");
    for (const char *c = "+/= %\t*"; *c; c++) {
        snprintf(buf, sizeof buf, "%s", good);
        buf[3] = *c;
        expect_fail(v, buf, "malformed");
        snprintf(buf, sizeof buf, "%s", good);
        buf[len - 2] = *c;
        expect_fail(v, buf, "malformed");
    }
    /* header JSON problems: non-JSON, not an object, duplicate alg */
    static const struct {
        const char *hdr, *why;
    } hv[] = {
        { "not json", "malformed" },
        { "[\"HS256\"]", "malformed" },
        { "\"HS256\"", "malformed" },
        { "{\"alg\":\"HS256\",\"alg\":\"HS256\"}", "malformed" },
        { "{\"alg\":\"none\",\"alg\":\"HS256\"}", "malformed" },
        { "{\"alg\":\"HS256\",\"al\\u0067\":\"none\"}", "malformed" },
        { "{\"alg\":\"HS256\"} ", NULL },
        { "{\"alg\":\"HS256\"}x", "malformed" },
        { "{\"alg\":\"HS256\",\"crit\":[\"exp\"],\"exp\":1}",
          "crit not supported" },
        { "{\"alg\":\"HS256\",\"typ\":\"JOSE\"}", "bad typ" },
        { "{\"alg\":\"HS256\",\"typ\":7}", "bad typ" },
        { "{\"alg\":\"HS256\",\"typ\":\"jwt\"}", NULL },
        { "{\"alg\":\"HS256\",\"typ\":\"at+jwt\"}", NULL },
        { "{\"alg\":\"HS256\",\"typ\":\"application/jwt\"}", NULL },
        { "{\"alg\":\"HS256\",\"kid\":5}", "malformed" },
        { "{\"alg\":256}", "malformed" },
        { "{}", "malformed" },
        { "{\"alg\":\"HS256\\u0000\"}", "malformed" },
        { "{\"alg\":\"HS256\",\"x\":\"\xff\"}", "malformed" },
    };
    for (size_t i = 0; i < sizeof hv / sizeof hv[0]; i++) {
        tok = sign(hv[i].hdr, PL_OK, JWA_HS256, NULL);
        if (hv[i].why == NULL)
            assert_int_equal(check(v, tok, NULL), 0);
        else
            expect_fail(v, tok, hv[i].why);
        free(tok);
    }
    /* payload must be a JSON object too (checked after the signature) */
    tok = sign(hdr_for(JWA_HS256), "[1]", JWA_HS256, NULL);
    expect_fail(v, tok, "malformed");
    free(tok);
    tok = sign(hdr_for(JWA_HS256), "{\"exp\":1800000000,\"exp\":1}",
               JWA_HS256, NULL);
    expect_fail(v, tok, "malformed");
    free(tok);
    free(good);
    jwt_verifier_free(v);
}

static void
test_size_limit(void **state)
{
    struct jwt_verifier *v = verifier("HS256", secret64, NULL, NULL);
    size_t big = 16384;
    char *tok = malloc(big + 1), *target = malloc(big + 64);
    struct http_header hh[1];
    struct http_request req;
    struct jwt_token t;

    (void)state;
    memset(tok, 'A', big);
    tok[big] = '\0';
    expect_fail(v, tok, "too large");
    snprintf(target, big + 64, "/ws?access_token=%s", tok);
    memset(&req, 0, sizeof req);
    req.target = target;
    req.target_len = strlen(target);
    req.headers = hh;
    req.nheaders = 0;
    assert_int_equal(jwt_extract(v, &req, &t), JWT_TOO_LARGE);
    /* exactly max_token_bytes is fine for extraction */
    snprintf(target, big + 64, "/ws?access_token=%.*s", 8192, tok);
    req.target_len = strlen(target);
    assert_int_equal(jwt_extract(v, &req, &t), 1);
    assert_int_equal(t.len, 8192);
    free(tok);
    free(target);
    jwt_verifier_free(v);
}

/* ---- JWKS */

static void
test_jwks_kid(void **state)
{
    struct jwt_verifier *v = verifier("RS256 PS256 ES256 EdDSA HS256", NULL,
                                      NULL, jwks_path);
    char *tok;

    (void)state;
    assert_non_null(v);
    tok = sign("{\"alg\":\"RS256\",\"kid\":\"r1\"}", PL_OK, JWA_RS256, rsa);
    assert_int_equal(check(v, tok, NULL), 0);
    free(tok);
    tok = sign("{\"alg\":\"ES256\",\"kid\":\"e1\"}", PL_OK, JWA_ES256, ec256);
    assert_int_equal(check(v, tok, NULL), 0);
    free(tok);
    tok = sign("{\"alg\":\"EdDSA\",\"kid\":\"o1\"}", PL_OK, JWA_EDDSA, ed);
    assert_int_equal(check(v, tok, NULL), 0);
    free(tok);
    tok = sign_raw("{\"alg\":\"HS256\",\"kid\":\"k1\"}", PL_OK, JWA_HS256,
                   NULL, secret64, 32, 0);
    assert_int_equal(check(v, tok, NULL), 0);
    free(tok);
    /* no kid: keys tried in order */
    tok = sign("{\"alg\":\"ES256\"}", PL_OK, JWA_ES256, ec256);
    assert_int_equal(check(v, tok, NULL), 0);
    free(tok);
    /* the wrong kid for a valid signature */
    tok = sign("{\"alg\":\"ES256\",\"kid\":\"r1\"}", PL_OK, JWA_ES256, ec256);
    expect_fail(v, tok, "alg does not fit key");
    free(tok);
    tok = sign("{\"alg\":\"ES256\",\"kid\":\"zz\"}", PL_OK, JWA_ES256, ec256);
    expect_fail(v, tok, "unknown kid");
    free(tok);
    /* the "enc" key was skipped */
    tok = sign("{\"alg\":\"RS256\",\"kid\":\"enc1\"}", PL_OK, JWA_RS256,
               rsa);
    expect_fail(v, tok, "unknown kid");
    free(tok);
    /* r1 is bound to RS256 by its "alg": PS256 with it is refused */
    tok = sign("{\"alg\":\"PS256\",\"kid\":\"r1\"}", PL_OK, JWA_PS256, rsa);
    expect_fail(v, tok, "alg does not fit key");
    free(tok);
    /* the oct key is 32 bytes: HS256 only */
    jwt_verifier_free(v);
    v = verifier("HS512 ES256", NULL, NULL, jwks_path);
    tok = sign_raw("{\"alg\":\"HS512\",\"kid\":\"k1\"}", PL_OK, JWA_HS512,
                   NULL, secret64, 32, 0);
    expect_fail(v, tok, "alg does not fit key");
    free(tok);
    jwt_verifier_free(v);
}

static int
parse(const char *json, size_t *n, char *err, size_t cap)
{
    struct jwk_set s = { NULL, 0 };
    int rc = jwk_parse_jwks(&s, json, strlen(json), err, cap);

    *n = s.n;
    jwk_set_free(&s);
    return rc;
}

static void
test_jwks_parse(void **state)
{
    char *r = jwk_members(rsa), *e = jwk_members(ec384);
    char *e521 = jwk_members(ec521), *o = jwk_members(ed);
    char *weak = jwk_members(rsa1024);
    char json[8192], err[256];
    size_t n;
    struct jwk_set s = { NULL, 0 };

    (void)state;
    snprintf(json, sizeof json, "{\"keys\":[{%s},{%s},{%s},{%s},"
             "{\"kty\":\"oct\",\"k\":\"%s\",\"alg\":\"HS384\"}]}",
             r, e, e521, o,
             "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJj"
             "ZGVm");
    assert_int_equal(jwk_parse_jwks(&s, json, strlen(json), err,
                                     sizeof err), 0);
    assert_int_equal(s.n, 5);
    assert_int_equal(s.k[0].algs, JWA_RS_ALL | JWA_PS_ALL);
    assert_int_equal(s.k[1].algs, JWA_BIT(JWA_ES384));
    assert_int_equal(s.k[2].algs, JWA_BIT(JWA_ES512));
    assert_int_equal(s.k[3].algs, JWA_BIT(JWA_EDDSA));
    assert_int_equal(s.k[4].algs, JWA_BIT(JWA_HS384));
    assert_int_equal(s.k[4].secret_len, 48);
    jwk_set_free(&s);

    static const char *const bad[] = {
        "", "[]", "{}", "{\"keys\":{}}", "{\"keys\":[1]}",
        "{\"keys\":[{}]}", "{\"keys\":[{\"kty\":7}]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"e\":\"AQAB\"}]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}",
        "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\","
        "\"y\":\"AA\"}]}",
        "{\"keys\":[{\"kty\":\"EC\",\"x\":\"AA\",\"y\":\"AA\"}]}",
        "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\","
        "\"x\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE\","
        "\"y\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE\"}]}",
        "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA=\"}]}",
        "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AAAA\"}]}",
        "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2hvcnQ\"}]}",
        "{\"keys\":[{\"kty\":\"oct\"}]}",
        "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2hvcnQ\",\"alg\":\"none\"}]}",
        "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2hvcnQ\",\"kid\":1}]}",
        "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2hvcnQ\",\"use\":1}]}",
        "{\"keys\":[],\"keys\":[]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        if (parse(bad[i], &n, err, sizeof err) != -1)
            fail_msg("accepted: %s", bad[i]);
        assert_true(err[0] != '\0');
    }
    /* alg that the kty cannot verify */
    snprintf(json, sizeof json, "{\"keys\":[{%s,\"alg\":\"ES256\"}]}", r);
    assert_int_equal(parse(json, &n, err, sizeof err), -1);
    snprintf(json, sizeof json, "{\"keys\":[{%s,\"alg\":\"ES256\"}]}", e);
    assert_int_equal(parse(json, &n, err, sizeof err), -1);
    /* an RSA key under 2048 bits */
    snprintf(json, sizeof json, "{\"keys\":[{%s}]}", weak);
    assert_int_equal(parse(json, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "2048"));
    /* skipped, not refused: other uses, algorithms and curves */
    static const char *const skip[] = {
        "{\"keys\":[{\"kty\":\"RSA\",\"use\":\"enc\"}]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"alg\":\"RSA-OAEP\"}]}",
        "{\"keys\":[{\"kty\":\"RSA\",\"key_ops\":[\"encrypt\"]}]}",
        "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"secp256k1\"}]}",
        "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"X25519\"}]}",
        "{\"keys\":[{\"kty\":\"XYZ\"}]}",
    };
    for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++) {
        if (parse(skip[i], &n, err, sizeof err) != 0)
            fail_msg("refused %s: %s", skip[i], err);
        assert_int_equal(n, 0);
    }
    free(r);
    free(e);
    free(e521);
    free(o);
    free(weak);
}

static void
test_verifier_errors(void **state)
{
    struct policy p;
    char err[256], path[160];
    struct jwt_verifier *v;

    (void)state;
    /* the message, and the key it blames (for "FILE:LINE" or the
     * environment variable in front of it) */
    const char *key;
#define REFUSE(setup_stmt, needle, keyname) do {                        \
        policy_init(&p, "HS256 RS256");                                 \
        p.jwt_secret = (char *)secret64;                                \
        setup_stmt;                                                     \
        err[0] = '\0';                                                  \
        key = NULL;                                                     \
        v = jwt_verifier_new(&p, &key, err, sizeof err);                \
        if (v != NULL)                                                  \
            fail_msg("accepted: %s", #setup_stmt);                      \
        if (strstr(err, needle) == NULL)                                \
            fail_msg("%s: error \"%s\" lacks \"%s\"", #setup_stmt, err, \
                     needle);                                           \
        if (key == NULL || strcmp(key, keyname) != 0)                   \
            fail_msg("%s: blames %s, not %s", #setup_stmt,              \
                     key ? key : "nothing", keyname);                   \
        policy_free(&p);                                                \
    } while (0)

    REFUSE(list_free(&p.jwt_algorithms); p.jwt_algorithms = list("none"),
           "none", "algorithms");
    REFUSE(list_free(&p.jwt_algorithms);
           p.jwt_algorithms = list("HS256 NONE"), "none", "algorithms");
    REFUSE(list_free(&p.jwt_algorithms); p.jwt_algorithms = list("HS257"),
           "unknown", "algorithms");
    REFUSE(list_free(&p.jwt_algorithms), "empty", "algorithms");
    REFUSE(p.jwt_secret = NULL, "no key", "enabled");
    REFUSE(p.jwt_secret = (char *)"short", "32", "secret");
    REFUSE(p.jwt_secret = NULL; p.jwt_public_key_file = (char *)ed_pem,
           "algorithms = HS256 RS256: no configured key fits", "algorithms");
    REFUSE(p.jwt_public_key_file = (char *)rsa1024_pem, "2048",
           "public_key_file");
    REFUSE(p.jwt_public_key_file = (char *)"/nonexistent/k.pem",
           "public_key_file", "public_key_file");
    REFUSE(p.jwt_jwks_file = (char *)"/nonexistent/k.jwks", "jwks_file",
           "jwks_file");
    REFUSE(p.jwt_secret_file = (char *)"/nonexistent/s", "secret_file",
           "secret_file");
    REFUSE(p.jwt_public_key_file = (char *)jwks_path, "PUBLIC KEY",
           "public_key_file");
    REFUSE(p.jwt_jwks_file = (char *)rsa_pem, "JSON", "jwks_file");
    REFUSE(list_free(&p.jwt_sources); p.jwt_sources = list("body:x"),
           "sources", "sources");
    REFUSE(list_free(&p.jwt_forward_claims);
           p.jwt_forward_claims = list("sub"), "forward_claims",
           "forward_claims");
    REFUSE(list_free(&p.jwt_forward_claims);
           p.jwt_forward_claims = list("sub:X\rY"), "forward_claims",
           "forward_claims");
#undef REFUSE

    /* secret_file: one trailing newline is not part of the secret */
    snprintf(path, sizeof path, "%s/secret", tmpdir);
    {
        char text[128];
        snprintf(text, sizeof text, "%s\n", secret64);
        write_file(path, text);
    }
    policy_init(&p, "HS512");
    p.jwt_secret_file = path;
    v = jwt_verifier_new(&p, NULL, err, sizeof err);
    assert_non_null(v);
    {
        char *tok = sign(hdr_for(JWA_HS512), PL_OK, JWA_HS512, NULL);
        assert_int_equal(check(v, tok, NULL), 0);
        free(tok);
    }
    jwt_verifier_free(v);
    policy_free(&p);
}

/* ---- extraction and stripping */

#define H(n, val) { n, sizeof(n) - 1, val, sizeof(val) - 1 }

static struct jwt_verifier *
src_verifier(const char *sources)
{
    struct policy p;
    char err[256];
    struct jwt_verifier *v;

    policy_init(&p, "HS256");
    p.jwt_secret = (char *)secret64;
    list_free(&p.jwt_sources);
    p.jwt_sources = list(sources);
    v = jwt_verifier_new(&p, NULL, err, sizeof err);
    assert_non_null(v);
    policy_free(&p);
    return v;
}

static void
req_init(struct http_request *req, const char *target,
         struct http_header *h, size_t n)
{
    memset(req, 0, sizeof *req);
    req->method = "GET";
    req->method_len = 3;
    req->target = target;
    req->target_len = strlen(target);
    req->headers = h;
    req->nheaders = n;
}

static void
expect_tok(const struct jwt_verifier *v, const struct http_request *req,
           enum jwt_source src, const char *tok)
{
    struct jwt_token t;

    assert_int_equal(jwt_extract(v, req, &t), 1);
    assert_int_equal(t.source, src);
    assert_int_equal(t.len, strlen(tok));
    assert_memory_equal(t.tok, tok, t.len);
}

static void
test_extract(void **state)
{
    struct jwt_verifier *v = src_verifier("query:access_token "
                                          "header:authorization "
                                          "cookie:access_token "
                                          "protocol:bearer.");
    struct jwt_verifier *rev = src_verifier("protocol:bearer. "
                                            "cookie:access_token "
                                            "header:Authorization "
                                            "query:access_token");
    struct jwt_verifier *xh = src_verifier("header:X-Token");
    struct http_header all[] = {
        H("Host", "x"),
        H("Authorization", "Bearer HDR"),
        H("Cookie", "a=1; access_token=COOK; b=2"),
        H("Sec-WebSocket-Protocol", "chat, bearer.PROTO"),
    };
    struct http_request req;
    struct jwt_token t;

    (void)state;
    /* each source alone, whatever the order of the sources */
    req_init(&req, "/ws?x=1&access_token=QRY&y=2", all, 1);
    expect_tok(v, &req, JWT_SRC_QUERY, "QRY");
    expect_tok(rev, &req, JWT_SRC_QUERY, "QRY");
    req_init(&req, "/ws?x=1", all, 2);
    expect_tok(v, &req, JWT_SRC_HEADER, "HDR");
    expect_tok(rev, &req, JWT_SRC_HEADER, "HDR");
    req_init(&req, "/ws", all + 2, 1);
    expect_tok(v, &req, JWT_SRC_COOKIE, "COOK");
    expect_tok(rev, &req, JWT_SRC_COOKIE, "COOK");
    assert_int_equal(jwt_extract(v, &req, &t), 1);
    assert_int_equal(t.entry_len, strlen("access_token=COOK"));
    assert_ptr_equal(t.header, &all[2]);
    assert_int_equal(t.hidx, 0);
    req_init(&req, "/ws", all + 3, 1);
    expect_tok(v, &req, JWT_SRC_PROTOCOL, "PROTO");
    assert_int_equal(jwt_extract(v, &req, &t), 1);
    assert_memory_equal(t.entry, "bearer.PROTO", t.entry_len);
    /* a token in one source and anything in another: refused, in either
     * order of the sources (the backend would read the unverified one) */
    for (size_t i = 1; i < 4; i++) {
        struct http_header two[] = { all[0], all[i] };
        req_init(&req, "/ws?access_token=QRY", two, 2);
        assert_int_equal(jwt_extract(v, &req, &t), JWT_TWO_TOKENS);
        assert_int_equal(jwt_extract(rev, &req, &t), JWT_TWO_TOKENS);
        assert_int_equal(t.source, JWT_SRC_NONE);
    }
    req_init(&req, "/ws", all, 4);
    assert_int_equal(jwt_extract(v, &req, &t), JWT_TWO_TOKENS);
    assert_int_equal(jwt_extract(rev, &req, &t), JWT_TWO_TOKENS);
    /* exact names: near misses are not the parameter or cookie */
    req_init(&req, "/ws?access_tokenx=1&xaccess_token=2&access_toke=3"
             "&access_token_=4&access-token=5", all, 1);
    assert_int_equal(jwt_extract(v, &req, &t), 0);
    assert_int_equal(t.source, JWT_SRC_NONE);
    {
        struct http_header near[] = {
            H("Cookie", "access_tokenx=1; xaccess_token=2; access_toke=3"),
            H("Cookie", "access-token=4; a=access_token"),
            H("Sec-WebSocket-Protocol", "chat, bearer, xbearer.P, Bearer.Q"),
            H("X-Authorization", "Bearer Z"),
            H("Authorizationx", "Bearer Z"),
        };
        req_init(&req, "/ws", near, 5);
        assert_int_equal(jwt_extract(v, &req, &t), 0);
    }
    /* a bare parameter or cookie name occupies its source */
    req_init(&req, "/ws?access_token", all, 1);
    expect_tok(v, &req, JWT_SRC_QUERY, "");
    req_init(&req, "/ws?access_token&access_token=QRY", all, 1);
    assert_int_equal(jwt_extract(v, &req, &t), JWT_TWO_TOKENS);

    /* Bearer scheme: case-insensitive, other schemes are not tokens */
    {
        struct http_header h1[] = { H("authorization", "bEaReR   abc") };
        struct http_header h2[] = { H("Authorization", "Basic abc") };
        struct http_header h3[] = { H("Authorization", "Bearerabc") };
        struct http_header h4[] = { H("X-Token", "raw.tok.en") };
        req_init(&req, "/", h1, 1);
        expect_tok(v, &req, JWT_SRC_HEADER, "abc");
        req_init(&req, "/", h2, 1);
        assert_int_equal(jwt_extract(v, &req, &t), 0);
        req_init(&req, "/", h3, 1);
        assert_int_equal(jwt_extract(v, &req, &t), 0);
        req_init(&req, "/", h4, 1);
        expect_tok(xh, &req, JWT_SRC_HEADER, "raw.tok.en");
    }
    /* two tokens in one source: ambiguous, refused */
    {
        struct http_header two_auth[] = {
            H("Authorization", "Bearer a"), H("Authorization", "Bearer b"),
        };
        struct http_header two_cookie[] = {
            H("Cookie", "access_token=a"), H("Cookie", "access_token=b"),
        };
        struct http_header two_proto[] = {
            H("Sec-WebSocket-Protocol", "bearer.a, chat, bearer.b"),
        };
        req_init(&req, "/?access_token=a&access_token=b", all, 0);
        assert_int_equal(jwt_extract(v, &req, &t), JWT_TWO_TOKENS);
        req_init(&req, "/", two_auth, 2);
        assert_int_equal(jwt_extract(v, &req, &t), JWT_TWO_TOKENS);
        req_init(&req, "/", two_cookie, 2);
        assert_int_equal(jwt_extract(v, &req, &t), JWT_TWO_TOKENS);
        req_init(&req, "/", two_proto, 1);
        assert_int_equal(jwt_extract(v, &req, &t), JWT_TWO_TOKENS);
    }
    jwt_verifier_free(v);
    jwt_verifier_free(rev);
    jwt_verifier_free(xh);
}

/* Names spelled the way some backend framework reads as the configured
 * one are the same parameter, cookie or header (field.h). */
static void
test_extract_spellings(void **state)
{
    struct jwt_verifier *v = src_verifier("query:access_token "
                                          "header:X-Token "
                                          "cookie:access_token");
    static const char *const queries[] = {
        "/?access%5Ftoken=T", "/?access%5ftoken=T", "/?ACCESS_TOKEN=T",
        "/?Access_Token=T", "/?access.token=T", "/?access+token=T",
        "/?access%20token=T", "/?access[token=T", "/?%20access_token=T",
        "/?+access_token=T", "/?%61ccess_token=T", "/?x=1;access_token=T",
    };
    static const char *const cookies[] = {
        "access_token =T", " access_token = T ", "access_token=\"T\"",
        "access_token=T ;", "a=1;access_token=T", "a=1 ;  access_token=T",
        "ACCESS_TOKEN=T", "access%5Ftoken=T", "access.token=T",
    };
    struct http_request req;
    struct jwt_token t;

    (void)state;
    for (size_t i = 0; i < sizeof queries / sizeof queries[0]; i++) {
        req_init(&req, queries[i], NULL, 0);
        expect_tok(v, &req, JWT_SRC_QUERY, "T");
    }
    for (size_t i = 0; i < sizeof cookies / sizeof cookies[0]; i++) {
        struct http_header h[] = {
            { "Cookie", 6, cookies[i], strlen(cookies[i]) },
        };
        req_init(&req, "/", h, 1);
        expect_tok(v, &req, JWT_SRC_COOKIE, "T");
        /* beside a query token, every spelling is a second token */
        req_init(&req, "/?access_token=Q", h, 1);
        assert_int_equal(jwt_extract(v, &req, &t), JWT_TWO_TOKENS);
    }
    {
        struct http_header h[] = { H("X_Token", "T") };
        struct http_header h2[] = { H("x_tOKEN", "T") };
        req_init(&req, "/", h, 1);
        expect_tok(v, &req, JWT_SRC_HEADER, "T");
        req_init(&req, "/", h2, 1);
        expect_tok(v, &req, JWT_SRC_HEADER, "T");
        req_init(&req, "/?access%5Ftoken=Q", h, 1);
        assert_int_equal(jwt_extract(v, &req, &t), JWT_TWO_TOKENS);
    }
    /* the second spelling beside the first is a duplicate */
    req_init(&req, "/?access_token=A&access%5Ftoken=B", NULL, 0);
    assert_int_equal(jwt_extract(v, &req, &t), JWT_TWO_TOKENS);
    jwt_verifier_free(v);
}

static void
strip_case(const struct jwt_verifier *v, const char *target,
           struct http_header *h, size_t n, const char *want)
{
    struct http_request req;
    struct jwt_token t;
    char out[256];
    int len;

    req_init(&req, target, h, n);
    assert_int_equal(jwt_extract(v, &req, &t), 1);
    len = jwt_strip(v, &t, &req, out, sizeof out);
    assert_int_equal(len, (int)strlen(want));
    assert_string_equal(out, want);
    /* too small: refused, never truncated */
    assert_int_equal(jwt_strip(v, &t, &req, out, strlen(want)), -1);
}

static void
test_strip(void **state)
{
    struct jwt_verifier *v = src_verifier("query:access_token "
                                          "cookie:access_token "
                                          "protocol:bearer. "
                                          "header:authorization");
    struct http_header cookie1[] = { H("Cookie", "access_token=T") };
    struct http_header cookie3[] = {
        H("Cookie", "a=1; access_token=T;b=2"),
    };
    struct http_header proto1[] = { H("Sec-WebSocket-Protocol", "bearer.T") };
    struct http_header proto3[] = {
        H("Sec-WebSocket-Protocol", "chat,bearer.T ,  v2.chat"),
    };
    struct http_header auth[] = { H("Authorization", "Bearer T") };
    struct http_request req;
    struct jwt_token t;
    char out[64];

    (void)state;
    strip_case(v, "/ws?access_token=T", NULL, 0, "/ws");
    strip_case(v, "/ws?a=1&access_token=T", NULL, 0, "/ws?a=1");
    strip_case(v, "/ws?access_token=T&a=1", NULL, 0, "/ws?a=1");
    strip_case(v, "/ws?a=1&access_token=T&b=%20&c", NULL, 0,
               "/ws?a=1&b=%20&c");
    strip_case(v, "/ws?&access_token=T&", NULL, 0, "/ws");
    strip_case(v, "/?access_token=", NULL, 0, "/");
    strip_case(v, "/ws", cookie1, 1, "");
    strip_case(v, "/ws", cookie3, 1, "a=1; b=2");
    strip_case(v, "/ws", proto1, 1, "");
    strip_case(v, "/ws", proto3, 1, "chat, v2.chat");
    req_init(&req, "/ws", auth, 1);
    assert_int_equal(jwt_extract(v, &req, &t), 1);
    assert_int_equal(jwt_strip(v, &t, &req, out, sizeof out), 0);
    /* a token that does not belong to this request */
    t.source = JWT_SRC_QUERY;
    t.entry = "access_token=T";
    t.entry_len = 14;
    assert_int_equal(jwt_strip(v, &t, &req, out, sizeof out), -1);
    t.source = JWT_SRC_NONE;
    assert_int_equal(jwt_strip(v, &t, &req, out, sizeof out), -1);
    jwt_verifier_free(v);
}

/* ---- claims to headers */

static void
test_claim_headers(void **state)
{
    struct policy p;
    char err[256], out[512];
    struct jwt_verifier *v;
    struct jwt_result r;
    const char *why;
    const char *const *names;
    size_t nnames;
    char *tok;

    (void)state;
    policy_init(&p, "HS256");
    p.jwt_secret = (char *)secret64;
    list_free(&p.jwt_forward_claims);
    p.jwt_forward_claims = list("sub:X-User-Id n:X-N b:X-B o:X-O "
                                "crlf:X-Evil tab:X-Tab r:X-R f:X-F "
                                "missing:X-M nul:X-Null");
    v = jwt_verifier_new(&p, NULL, err, sizeof err);
    assert_non_null(v);
    policy_free(&p);

    /* every name, however many (no fixed-size table to outgrow) */
    names = jwt_claim_header_names(v, &nnames);
    assert_int_equal(nnames, 10);
    assert_string_equal(names[0], "X-User-Id");
    assert_string_equal(names[2], "X-B");
    assert_string_equal(names[7], "X-F");
    assert_string_equal(names[9], "X-Null");

    tok = sign(hdr_for(JWA_HS256),
               "{\"exp\":1800000000,\"sub\":\"u-1\",\"n\":42,\"b\":true,"
               "\"o\":{\"a\":1},\"crlf\":\"x\\r\\nX-Admin: 1\","
               "\"tab\":\"a\\tb\",\"r\":1.5,\"f\":false,\"nul\":null}",
               JWA_HS256, NULL);
    assert_int_equal(jwt_verify(v, tok, strlen(tok), NOW, &r, &why), 0);
    assert_non_null(r.sub);
    assert_string_equal(r.sub, "u-1");
    {
        int len = jwt_claim_headers(v, &r, out, sizeof out);
        assert_int_equal(len, (int)strlen(out));
    }
    assert_string_equal(out, "X-User-Id: u-1\r\nX-N: 42\r\nX-B: true\r\n"
                        "X-R: 1.5\r\nX-F: false\r\n");
    assert_int_equal(jwt_claim_headers(v, &r, out, 20), -1);
    jwt_result_free(&r);
    free(tok);

    /* sub that is not a string */
    tok = sign(hdr_for(JWA_HS256), "{\"exp\":1800000000,\"sub\":7}",
               JWA_HS256, NULL);
    assert_int_equal(jwt_verify(v, tok, strlen(tok), NOW, &r, &why), 0);
    assert_null(r.sub);
    assert_int_equal(jwt_claim_headers(v, &r, out, sizeof out),
                     (int)strlen("X-User-Id: 7\r\n"));
    jwt_result_free(&r);
    free(tok);
    jwt_verifier_free(v);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url),
        cmocka_unit_test(test_all_algorithms),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_alg_not_allowed),
        cmocka_unit_test(test_alg_confusion_hs_rsa),
        cmocka_unit_test(test_rs_ps_confusion),
        cmocka_unit_test(test_es_der_and_curve),
        cmocka_unit_test(test_time_claims),
        cmocka_unit_test(test_iss_aud),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_jwks_kid),
        cmocka_unit_test(test_jwks_parse),
        cmocka_unit_test(test_verifier_errors),
        cmocka_unit_test(test_extract),
        cmocka_unit_test(test_extract_spellings),
        cmocka_unit_test(test_strip),
        cmocka_unit_test(test_claim_headers),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
