/*
 * fuzz_jwt.c - libFuzzer target for jwt.c, jwk.c and b64url.c.
 *
 * Each input is used three ways:
 *   - as a compact JWS, verified by a fixed HS256 verifier (secret) and a
 *     fixed ES256 verifier (JWKS with one P-256 key, kid "es1"), both with
 *     issuer and audience checks; a verified token's claims are turned
 *     into headers in a large and a small buffer (the small one must fail
 *     or give the same bytes);
 *   - as a JWK Set for jwk_parse_jwks;
 *   - as a request: the first line is the target, each further line the
 *     value of Authorization, Cookie, Sec-WebSocket-Protocol, X-Token in
 *     turn; jwt_extract then jwt_strip, whose output must be exactly its
 *     returned length and must fail (never truncate) one byte short; and
 *     the request with the token cut (the stripped target or header
 *     value in place, a header token's header left out) must hold no
 *     candidate at all: the backend never receives a token, verified or
 *     not, beside or instead of the one wsguard checked.
 * The corpus holds valid tokens for both verifiers (signed once with a
 * throwaway key that was not kept), so mutations reach the claims code.
 * Abort on any violated property.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "jwk.h"
#include "jwt.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)
#define NOW 1700000000LL
#define MAXH 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char fuzz_jwks[] =
    "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"es1\","
    "\"x\":\"IIRXpSMU7MTKFT4l2DONNfwS8zvOkaVyM8Nd1r6hs5Q\","
    "\"y\":\"bBD9BGIiAYYqYtlwfMt-HS7i5ry1cg4cdqlDDx2vDuE\"}]}";

static struct jwt_verifier *hs, *es;

static struct strlist
mklist(char **items, size_t n)
{
    struct strlist l = { items, n };
    return l;
}

static struct jwt_verifier *
build(const char *alg, const char *secret, const char *jwks)
{
    static char *aud[] = { "api", "chat" };
    static char *src[] = {
        "query:access_token", "header:authorization", "cookie:access_token",
        "protocol:bearer.", "header:x-token",
    };
    static char *claims[] = {
        "sub:X-User-Id", "n:X-N", "b:X-B", "r:X-R", "o:X-O",
    };
    char *algs[1];
    struct policy p;
    char err[256];
    struct jwt_verifier *v;

    algs[0] = (char *)alg;
    memset(&p, 0, sizeof p);
    p.jwt_enabled = true;
    p.jwt_algorithms = mklist(algs, 1);
    p.jwt_secret = (char *)secret;
    p.jwt_jwks_file = (char *)jwks;
    p.jwt_issuer = "https://idp";
    p.jwt_audience = mklist(aud, 2);
    p.jwt_leeway_ms = 30000;
    p.jwt_require_exp = true;
    p.jwt_max_token_bytes = 8192;
    p.jwt_sources = mklist(src, sizeof src / sizeof src[0]);
    p.jwt_forward_claims = mklist(claims, sizeof claims / sizeof claims[0]);
    v = jwt_verifier_new(&p, NULL, err, sizeof err);
    if (v == NULL) {
        fprintf(stderr, "fuzz_jwt: %s\n", err);
        abort();
    }
    return v;
}

static void
init(void)
{
    char path[] = "/tmp/fuzz_jwt.XXXXXX";
    int fd = mkstemp(path);

    CHECK(fd != -1);
    CHECK(write(fd, fuzz_jwks, sizeof fuzz_jwks - 1)
          == (ssize_t)(sizeof fuzz_jwks - 1));
    close(fd);
    hs = build("HS256", "wsguard-fuzz-secret-0123456789abcdef", NULL);
    es = build("ES256", NULL, path);
    unlink(path);
}

static void
verify(const struct jwt_verifier *v, const char *tok, size_t len)
{
    struct jwt_result r;
    const char *why = NULL;
    char big[4096], small[24];

    if (jwt_verify(v, tok, len, NOW, &r, &why) == 0) {
        int n = jwt_claim_headers(v, &r, big, sizeof big);
        int m = jwt_claim_headers(v, &r, small, sizeof small);

        CHECK(why == NULL && r.claims != NULL);
        CHECK(r.sub == NULL || json_is_string(json_object_get(
                                   (json_t *)r.claims, "sub")));
        CHECK(n >= 0 && big[n] == '\0');
        CHECK(m == -1 || (m == n && memcmp(small, big, (size_t)n) == 0));
        /* a header line never carries a bare CR or LF inside it */
        for (int i = 0; i < n; i++) {
            if (big[i] == '\r')
                CHECK(i + 1 < n && big[i + 1] == '\n');
        }
        jwt_result_free(&r);
    } else {
        CHECK(why != NULL && r.claims == NULL);
    }
}

/* The request as the backend gets it once t is cut (out: what jwt_strip
 * wrote) holds no candidate in any configured source. */
static void
cut_leaves_none(const struct http_request *req, const struct jwt_token *t,
                const char *out, size_t k)
{
    struct http_header hh[MAXH];
    struct http_request r2 = *req;
    struct jwt_token t2;
    size_t n = 0;

    for (size_t i = 0; i < req->nheaders; i++) {
        if (t->header != NULL && i == t->hidx) {
            if (t->source == JWT_SRC_HEADER || k == 0)
                continue;
            hh[n] = req->headers[i];
            hh[n].value = out;
            hh[n].value_len = k;
        } else {
            hh[n] = req->headers[i];
        }
        n++;
    }
    r2.headers = hh;
    r2.nheaders = n;
    if (t->source == JWT_SRC_QUERY) {
        r2.target = out;
        r2.target_len = k;
    }
    CHECK(jwt_extract(hs, &r2, &t2) == JWT_NO_TOKEN);
}

static void
request(const char *buf, size_t len)
{
    static const char *const names[] = {
        "Authorization", "Cookie", "Sec-WebSocket-Protocol", "X-Token",
    };
    struct http_header hh[MAXH];
    struct http_request req;
    struct jwt_token t;
    const char *p = buf, *end = buf + len;
    size_t n = 0;
    char out[512];

    memset(&req, 0, sizeof req);
    req.method = "GET";
    req.method_len = 3;
    req.target = p;
    while (p < end && *p != '\n')
        p++;
    req.target_len = (size_t)(p - buf);
    while (p < end && n < MAXH) {
        const char *s = ++p;
        while (p < end && *p != '\n')
            p++;
        hh[n].name = names[n % 4];
        hh[n].name_len = strlen(names[n % 4]);
        hh[n].value = s;
        hh[n].value_len = (size_t)(p - s);
        n++;
    }
    req.headers = hh;
    req.nheaders = n;

    switch (jwt_extract(hs, &req, &t)) {
    case JWT_FOUND: {
        int k = jwt_strip(hs, &t, &req, out, sizeof out);

        CHECK(t.source != JWT_SRC_NONE && t.len <= 8192);
        CHECK(t.tok >= buf && t.tok + t.len <= end);
        CHECK(t.entry >= buf && t.entry + t.entry_len <= end);
        CHECK(t.tok >= t.entry
              && t.tok + t.len <= t.entry + t.entry_len);
        if (k >= 0) {
            CHECK(out[k] == '\0');
            if (t.source == JWT_SRC_QUERY)
                CHECK((size_t)k < req.target_len);
            CHECK(jwt_strip(hs, &t, &req, out, (size_t)k) == -1);
            cut_leaves_none(&req, &t, out, (size_t)k);
        } else {
            /* only "does not fit" may fail */
            CHECK(t.source != JWT_SRC_HEADER);
        }
        verify(hs, t.tok, t.len);
        break;
    }
    case JWT_NO_TOKEN:
    case JWT_TWO_TOKENS:
        CHECK(t.source == JWT_SRC_NONE);
        break;
    default:
        CHECK(t.len > 8192);
        break;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct jwk_set s = { NULL, 0 };
    char err[256];

    if (hs == NULL)
        init();
    verify(hs, (const char *)data, size);
    verify(es, (const char *)data, size);
    (void)jwk_parse_jwks(&s, (const char *)data, size, err, sizeof err);
    jwk_set_free(&s);
    request((const char *)data, size);
    return 0;
}
