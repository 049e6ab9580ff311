/*
 * jwt.c - JWT verification, token extraction and stripping (see jwt.h).
 *
 * Order of checks in jwt_verify, chosen so that nothing an attacker wrote
 * is interpreted before it has to be: size, shape (three strict base64url
 * segments), header JSON (alg, crit, typ, kid), key selection bound to the
 * alg, signature; only a payload whose signature verified is parsed as
 * JSON and its claims checked.
 *
 * The verifier copies every policy value it uses, so it does not depend
 * on the lifetime of the struct policy it was built from (in the server
 * both live in one runtime snapshot anyway).
 *
 * OpenSSL keeps a per-thread error queue that SSL_get_error() consults;
 * a failed verification leaves entries there, and a worker thread would
 * then misread its next TLS result. Every path that calls into OpenSSL
 * therefore ends with ERR_clear_error().
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "b64url.h"
#include "field.h"
#include "jwk.h"
#include "jwt.h"

enum jwa_family { FAM_HS = 0, FAM_RS, FAM_PS, FAM_ES, FAM_ED };

struct jwa_info {
    enum jwa_family family;
    int md;                     /* index into jwt_verifier.md, -1 none */
    size_t ec_size;             /* ES: bytes of r and of s (RFC 7518
                                   §3.4), else 0 */
};

static const struct jwa_info jwa_info[JWA_COUNT] = {
    [JWA_HS256] = { FAM_HS, 0, 0 },
    [JWA_HS384] = { FAM_HS, 1, 0 },
    [JWA_HS512] = { FAM_HS, 2, 0 },
    [JWA_RS256] = { FAM_RS, 0, 0 },
    [JWA_RS384] = { FAM_RS, 1, 0 },
    [JWA_RS512] = { FAM_RS, 2, 0 },
    [JWA_PS256] = { FAM_PS, 0, 0 },
    [JWA_PS384] = { FAM_PS, 1, 0 },
    [JWA_PS512] = { FAM_PS, 2, 0 },
    [JWA_ES256] = { FAM_ES, 0, 32 },
    [JWA_ES384] = { FAM_ES, 1, 48 },
    [JWA_ES512] = { FAM_ES, 2, 66 },
    [JWA_EDDSA] = { FAM_ED, -1, 0 },
};

static const char *const md_names[3] = { "SHA256", "SHA384", "SHA512" };

struct jwt_src_cfg {
    enum jwt_source kind;
    char *name;                 /* owned: parameter, header, cookie name
                                   or protocol prefix */
    size_t len;
    bool bearer;                /* header:authorization */
};

struct jwt_claim_map {
    char *claim;                /* owned */
    char *header;               /* owned */
};

struct jwt_verifier {
    struct jwk_set keys;
    unsigned allowed;           /* JWA_BIT mask of [jwt] algorithms */
    EVP_MAC *hmac;              /* fetched once: fetching per request
                                   takes a global lock */
    EVP_MD *md[3];              /* SHA-256, SHA-384, SHA-512 */
    char *issuer;               /* owned; NULL = not checked */
    char **audience;            /* owned; naudience == 0 = not checked */
    size_t naudience;
    int64_t leeway;             /* seconds */
    bool require_exp;
    size_t max_token;           /* bytes; 0 = no limit */
    struct jwt_src_cfg *sources;
    size_t nsources;
    struct jwt_claim_map *claims;
    const char **claim_headers; /* claims[i].header, for the caller */
    size_t nclaims;
};

/* ---- building */

static bool
is_tchar(unsigned char c)
{
    /* RFC 9110 §5.6.2 token characters. */
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || (c != '\0'
           && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool
set(const char *s)
{
    return s != NULL && s[0] != '\0';
}

static int
parse_sources(struct jwt_verifier *v, const struct strlist *l, char *err,
              size_t cap)
{
    static const struct {
        const char *prefix;
        enum jwt_source kind;
    } kinds[] = {
        { "query:", JWT_SRC_QUERY },
        { "header:", JWT_SRC_HEADER },
        { "cookie:", JWT_SRC_COOKIE },
        { "protocol:", JWT_SRC_PROTOCOL },
    };

    if (l->n == 0) {
        snprintf(err, cap, "[jwt] sources is empty");
        return -1;
    }
    v->sources = calloc(l->n, sizeof *v->sources);
    if (v->sources == NULL) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < l->n; i++) {
        const char *s = l->v[i];
        size_t k;

        for (k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
            size_t pl = strlen(kinds[k].prefix);
            if (strncmp(s, kinds[k].prefix, pl) == 0 && s[pl] != '\0')
                break;
        }
        if (k == sizeof kinds / sizeof kinds[0]) {
            snprintf(err, cap, "[jwt] sources: invalid \"%s\"", s);
            return -1;
        }
        s += strlen(kinds[k].prefix);
        v->sources[i].kind = kinds[k].kind;
        v->sources[i].name = strdup(s);
        if (v->sources[i].name == NULL) {
            snprintf(err, cap, "out of memory");
            return -1;
        }
        v->sources[i].len = strlen(s);
        v->sources[i].bearer = kinds[k].kind == JWT_SRC_HEADER
                               && strcasecmp(s, "authorization") == 0;
        v->nsources = i + 1;
    }
    return 0;
}

static int
parse_claims(struct jwt_verifier *v, const struct strlist *l, char *err,
             size_t cap)
{
    if (l->n == 0)
        return 0;
    v->claims = calloc(l->n, sizeof *v->claims);
    v->claim_headers = calloc(l->n, sizeof *v->claim_headers);
    if (v->claims == NULL || v->claim_headers == NULL) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < l->n; i++) {
        const char *s = l->v[i];
        const char *colon = strchr(s, ':');

        if (colon == NULL || colon == s || colon[1] == '\0') {
            snprintf(err, cap, "[jwt] forward_claims: invalid \"%s\" "
                     "(expected claim:Header-Name)", s);
            return -1;
        }
        for (const char *h = colon + 1; *h != '\0'; h++) {
            if (!is_tchar((unsigned char)*h)) {
                snprintf(err, cap, "[jwt] forward_claims: invalid header "
                         "name in \"%s\"", s);
                return -1;
            }
        }
        v->claims[i].claim = strndup(s, (size_t)(colon - s));
        v->claims[i].header = strdup(colon + 1);
        v->claim_headers[i] = v->claims[i].header;
        v->nclaims = i + 1;
        if (v->claims[i].claim == NULL || v->claims[i].header == NULL) {
            snprintf(err, cap, "out of memory");
            return -1;
        }
    }
    return 0;
}

static int
load_keys(struct jwt_verifier *v, const struct policy *p, const char **key,
          char *err, size_t cap)
{
    char why[256];

    if (set(p->jwt_secret)
        && jwk_add_secret(&v->keys, (const unsigned char *)p->jwt_secret,
                          strlen(p->jwt_secret), why, sizeof why) == -1) {
        *key = "secret";
        snprintf(err, cap, "[jwt] secret: %s", why);
        return -1;
    }
    if (set(p->jwt_secret_file)
        && jwk_load_secret_file(&v->keys, p->jwt_secret_file, why,
                                sizeof why) == -1) {
        *key = "secret_file";
        snprintf(err, cap, "[jwt] secret_file: %s", why);
        return -1;
    }
    if (set(p->jwt_public_key_file)
        && jwk_load_pem(&v->keys, p->jwt_public_key_file, why,
                        sizeof why) == -1) {
        *key = "public_key_file";
        snprintf(err, cap, "[jwt] public_key_file: %s", why);
        return -1;
    }
    if (set(p->jwt_jwks_file)
        && jwk_load_jwks(&v->keys, p->jwt_jwks_file, why, sizeof why)
        == -1) {
        *key = "jwks_file";
        snprintf(err, cap, "[jwt] jwks_file: %s", why);
        return -1;
    }
    if (v->keys.n == 0) {
        *key = "enabled";
        snprintf(err, cap, "[jwt] enabled = yes but no key: set secret, "
                 "secret_file, public_key_file or jwks_file");
        return -1;
    }
    return 0;
}

struct jwt_verifier *
jwt_verifier_new(const struct policy *p, const char **key, char *err,
                 size_t cap)
{
    struct jwt_verifier *v = calloc(1, sizeof *v);
    unsigned usable = 0;
    const char *k_dummy;

    if (key == NULL)
        key = &k_dummy;
    *key = "enabled";

    if (v == NULL) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < p->jwt_algorithms.n; i++) {
        const char *a = p->jwt_algorithms.v[i];
        int id = jwa_from_name(a, strlen(a));

        *key = "algorithms";
        if (strcasecmp(a, "none") == 0) {
            snprintf(err, cap, "[jwt] algorithms: \"none\" is never "
                     "allowed");
            goto fail;
        }
        if (id < 0) {
            snprintf(err, cap, "[jwt] algorithms: unknown \"%s\"", a);
            goto fail;
        }
        v->allowed |= JWA_BIT(id);
    }
    if (v->allowed == 0) {
        *key = "algorithms";
        snprintf(err, cap, "[jwt] algorithms is empty");
        goto fail;
    }
    if (load_keys(v, p, key, err, cap) == -1)
        goto fail;
    for (size_t i = 0; i < v->keys.n; i++)
        usable |= v->keys.k[i].algs & v->allowed;
    if (usable == 0) {
        char list[200] = "";
        for (size_t i = 0; i < p->jwt_algorithms.n; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list),
                     "%s%s", i ? " " : "", p->jwt_algorithms.v[i]);
        *key = "algorithms";
        snprintf(err, cap, "[jwt] algorithms = %s: no configured key fits "
                 "any of them (an HMAC secret verifies HS*, an RSA key "
                 "RS*/PS*, an EC key the ES* of its curve, an Ed25519 key "
                 "EdDSA)", list);
        goto fail;
    }
    v->hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    for (int i = 0; i < 3; i++)
        v->md[i] = EVP_MD_fetch(NULL, md_names[i], NULL);
    if (v->hmac == NULL || v->md[0] == NULL || v->md[1] == NULL
        || v->md[2] == NULL) {
        snprintf(err, cap, "OpenSSL lacks HMAC or SHA-2");
        goto fail;
    }
    if (set(p->jwt_issuer)) {
        v->issuer = strdup(p->jwt_issuer);
        if (v->issuer == NULL)
            goto oom;
    }
    if (p->jwt_audience.n > 0) {
        v->audience = calloc(p->jwt_audience.n, sizeof *v->audience);
        if (v->audience == NULL)
            goto oom;
        for (size_t i = 0; i < p->jwt_audience.n; i++) {
            v->audience[i] = strdup(p->jwt_audience.v[i]);
            if (v->audience[i] == NULL)
                goto oom;
            v->naudience = i + 1;
        }
    }
    v->leeway = (int64_t)(p->jwt_leeway_ms / 1000);
    v->require_exp = p->jwt_require_exp;
    v->max_token = (size_t)p->jwt_max_token_bytes;
    *key = "sources";
    if (parse_sources(v, &p->jwt_sources, err, cap) == -1)
        goto fail;
    *key = "forward_claims";
    if (parse_claims(v, &p->jwt_forward_claims, err, cap) == -1)
        goto fail;
    ERR_clear_error();
    return v;
oom:
    snprintf(err, cap, "out of memory");
fail:
    jwt_verifier_free(v);
    ERR_clear_error();
    return NULL;
}

void
jwt_verifier_free(struct jwt_verifier *v)
{
    if (v == NULL)
        return;
    jwk_set_free(&v->keys);
    EVP_MAC_free(v->hmac);
    for (int i = 0; i < 3; i++)
        EVP_MD_free(v->md[i]);
    free(v->issuer);
    for (size_t i = 0; i < v->naudience; i++)
        free(v->audience[i]);
    free(v->audience);
    for (size_t i = 0; i < v->nsources; i++)
        free(v->sources[i].name);
    free(v->sources);
    for (size_t i = 0; i < v->nclaims; i++) {
        free(v->claims[i].claim);
        free(v->claims[i].header);
    }
    free(v->claims);
    free(v->claim_headers);
    free(v);
}

int64_t
jwt_leeway(const struct jwt_verifier *v)
{
    return v->leeway;
}

/* ---- extraction */

static bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/*
 * Iterate over the elements of a sep-separated list in [*pos, len):
 * returns 1 with the trimmed element in [*s, *e) (possibly empty), or 0
 * at the end.
 */
static int
list_next(const char *v, size_t len, char sep, size_t *pos, size_t *s,
          size_t *e)
{
    size_t i = *pos;

    if (i > len)
        return 0;
    while (i < len && is_ows(v[i]))
        i++;
    *s = i;
    while (i < len && v[i] != sep)
        i++;
    *e = i;
    while (*e > *s && is_ows(v[*e - 1]))
        (*e)--;
    *pos = i + 1;
    return 1;
}

/*
 * Every place a configured source names is a candidate: every query
 * parameter and cookie whose name a backend could read as the configured
 * one (field.h), every header of the configured name (Authorization of
 * any scheme), every protocol entry with the prefix. One candidate is
 * the token; a second, in the same source or in any other, is refused:
 * whichever one wsguard verified, the backend could read the other and
 * trust it. A candidate that cannot be a token (Authorization: Basic)
 * still occupies its source.
 */
struct cands {
    struct jwt_token *t;
    int n;                      /* candidates seen */
};

static int
found(struct cands *c, const struct jwt_src_cfg *s, const char *tok,
      size_t len, const struct http_request *req,
      const struct http_header *h, const char *entry, size_t entry_len)
{
    if (++c->n > 1)
        return -1;
    c->t->source = s->kind;
    c->t->name = s->name;
    c->t->tok = tok;
    c->t->len = len;
    c->t->header = h;
    c->t->hidx = h != NULL ? (size_t)(h - req->headers) : 0;
    c->t->entry = entry;
    c->t->entry_len = entry_len;
    return 0;
}

static int
from_query(const struct jwt_src_cfg *s, const struct http_request *req,
           struct cands *c)
{
    const char *q = memchr(req->target, '?', req->target_len);
    size_t pos = 0;
    struct field f;

    if (q == NULL)
        return 0;
    q++;
    while (field_query_next(q, req->target_len - (size_t)(q - req->target),
                            &pos, &f)) {
        if (field_name_is(f.name, f.name_len, s->name)
            && found(c, s, f.value, f.value_len, req, NULL,
                     f.raw, f.raw_len) == -1)
            return -1;
    }
    return 0;
}

static int
from_header(const struct jwt_src_cfg *s, const struct http_request *req,
            struct cands *c)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        const char *tok = h->value;
        size_t len = h->value_len;

        /* X_Token is X-Token to CGI-style frameworks. */
        if (!http_name_eq(h->name, h->name_len, s->name))
            continue;
        if (s->bearer) {
            /* RFC 6750 §2.1: "Bearer" 1*SP b64token; the scheme is
             * case-insensitive (RFC 9110 §11.1). Another scheme (Basic)
             * is not ours: not a token, but it occupies the source. */
            if (len < 7 || !http_eq(tok, 6, "bearer") || tok[6] != ' ') {
                if (++c->n > 1)
                    return -1;
                continue;
            }
            tok += 7;
            len -= 7;
            while (len > 0 && *tok == ' ') {
                tok++;
                len--;
            }
        }
        if (found(c, s, tok, len, req, h, h->value,
                  h->value_len) == -1)
            return -1;
    }
    return 0;
}

static int
from_cookie(const struct jwt_src_cfg *s, const struct http_request *req,
            struct cands *c)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        size_t pos = 0;
        struct field f;

        if (!http_eq(h->name, h->name_len, "cookie"))
            continue;
        while (field_cookie_next(h->value, h->value_len, &pos, &f)) {
            if (field_name_is(f.name, f.name_len, s->name)
                && found(c, s, f.value, f.value_len, req, h,
                         f.raw, f.raw_len) == -1)
                return -1;
        }
    }
    return 0;
}

static int
from_protocol(const struct jwt_src_cfg *s, const struct http_request *req,
              struct cands *c)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        size_t pos = 0, b, e;

        if (!http_eq(h->name, h->name_len, "sec-websocket-protocol"))
            continue;
        /* A protocol entry is PREFIX immediately followed by the token;
         * subprotocol names compare exactly (RFC 6455 §4.1). */
        while (list_next(h->value, h->value_len, ',', &pos, &b, &e)) {
            const char *el = h->value + b;
            size_t len = e - b;

            if (len < s->len || memcmp(el, s->name, s->len) != 0)
                continue;
            if (found(c, s, el + s->len, len - s->len, req,
                      h, el, len) == -1)
                return -1;
        }
    }
    return 0;
}

int
jwt_extract(const struct jwt_verifier *v, const struct http_request *req,
            struct jwt_token *t)
{
    struct cands c = { t, 0 };

    memset(t, 0, sizeof *t);
    for (size_t i = 0; i < v->nsources; i++) {
        const struct jwt_src_cfg *s = &v->sources[i];
        int rc;

        switch (s->kind) {
        case JWT_SRC_QUERY:
            rc = from_query(s, req, &c);
            break;
        case JWT_SRC_HEADER:
            rc = from_header(s, req, &c);
            break;
        case JWT_SRC_COOKIE:
            rc = from_cookie(s, req, &c);
            break;
        default:
            rc = from_protocol(s, req, &c);
            break;
        }
        if (rc == -1) {
            memset(t, 0, sizeof *t);
            return JWT_TWO_TOKENS;
        }
    }
    if (t->source == JWT_SRC_NONE)
        return JWT_NO_TOKEN;
    if (v->max_token != 0 && t->len > v->max_token)
        return JWT_TOO_LARGE;
    return JWT_FOUND;
}

/* ---- stripping */

/* Does [p, p+len) lie inside [base, base+blen)? Compared as integers:
 * the pointers may come from a caller that got them wrong. */
static bool
inside(const char *p, size_t len, const char *base, size_t blen)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)base;

    return p != NULL && base != NULL && a >= b && a - b <= blen
           && len <= blen - (a - b);
}

/* Rebuild a list without the element starting at skip and without empty
 * elements, joined by joiner, after lead (already in out[0..*o)). */
static int
rebuild(const char *v, size_t len, char sep, const char *skip,
        const char *first, const char *joiner, char *out, size_t cap,
        size_t *o)
{
    size_t pos = 0, b, e;
    bool any = false;

    while (list_next(v, len, sep, &pos, &b, &e)) {
        const char *j = any ? joiner : first;
        size_t jl = strlen(j);

        if (e == b || v + b == skip)
            continue;
        if (*o + jl + (e - b) >= cap)
            return -1;
        /* out is a counted buffer (*o), not a C string. */
        memcpy(out + *o, j, jl);    /* NOLINT(bugprone-not-null-terminated-result) */
        memcpy(out + *o + jl, v + b, e - b);
        *o += jl + (e - b);
        any = true;
    }
    return 0;
}

int
jwt_strip(const struct jwt_verifier *v, const struct jwt_token *t,
          const struct http_request *req, char *out, size_t cap)
{
    size_t o = 0;

    if (cap == 0)
        return -1;
    switch (t->source) {
    case JWT_SRC_QUERY: {
        const char *q = memchr(req->target, '?', req->target_len);
        size_t plen, qlen;
        int n;

        if (q == NULL
            || !inside(t->entry, t->entry_len, q + 1,
                       req->target_len - (size_t)(q + 1 - req->target)))
            return -1;
        plen = (size_t)(q - req->target);
        qlen = req->target_len - plen - 1;
        if (plen + 1 >= cap)
            return -1;
        memcpy(out, req->target, plen);
        /* Every parameter a backend could read under the token's name
         * goes: there is exactly one, the token (jwt_extract refused a
         * second). */
        if (t->name == NULL)
            return -1;
        n = field_query_without(q + 1, qlen,
                                &t->name, 1,
                                out + plen + 1, cap - plen - 1);
        if (n < 0)
            return -1;
        o = plen;
        if (n > 0) {
            out[plen] = '?';
            o += 1 + (size_t)n;
        }
        break;
    }
    case JWT_SRC_PROTOCOL:
    case JWT_SRC_COOKIE: {
        const struct http_header *h = t->header;
        bool cookie = t->source == JWT_SRC_COOKIE;

        if (h == NULL || !inside(t->entry, t->entry_len, h->value,
                                 h->value_len))
            return -1;
        if (rebuild(h->value, h->value_len, cookie ? ';' : ',', t->entry,
                    "", cookie ? "; " : ", ", out, cap, &o) == -1)
            return -1;
        break;
    }
    case JWT_SRC_HEADER:
        /* The whole header carries the token: the caller drops it. */
        break;
    default:
        return -1;
    }
    out[o] = '\0';
    return (int)o;
}

/* ---- verification */

static int
verify_hmac(const struct jwt_verifier *v, const struct jwk *k, int alg,
            const char *in, size_t inlen, const unsigned char *sig,
            size_t siglen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t maclen = 0;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(v->hmac);
    OSSL_PARAM params[2];
    int ok = 0;

    params[0] = OSSL_PARAM_construct_utf8_string(
        OSSL_MAC_PARAM_DIGEST, (char *)md_names[jwa_info[alg].md], 0);
    params[1] = OSSL_PARAM_construct_end();
    if (ctx != NULL
        && EVP_MAC_init(ctx, k->secret, k->secret_len, params) == 1
        && EVP_MAC_update(ctx, (const unsigned char *)in, inlen) == 1
        && EVP_MAC_final(ctx, mac, &maclen, sizeof mac) == 1
        && maclen == siglen
        && CRYPTO_memcmp(mac, sig, siglen) == 0)
        ok = 1;
    EVP_MAC_CTX_free(ctx);
    OPENSSL_cleanse(mac, sizeof mac);
    return ok;
}

/* RFC 7518 §3.4: the JWS signature is R || S, each exactly n bytes;
 * OpenSSL wants an ASN.1 DER ECDSA-Sig-Value. A DER signature given as
 * the JOSE one has a different length and is refused here. */
static unsigned char *
ecdsa_der(const unsigned char *sig, size_t siglen, size_t n, size_t *derlen)
{
    ECDSA_SIG *es;
    BIGNUM *r, *s;
    unsigned char *der = NULL;
    int len;

    if (siglen != 2 * n)
        return NULL;
    es = ECDSA_SIG_new();
    r = BN_bin2bn(sig, (int)n, NULL);
    s = BN_bin2bn(sig + n, (int)n, NULL);
    if (es == NULL || r == NULL || s == NULL) {
        ECDSA_SIG_free(es);
        BN_free(r);
        BN_free(s);
        return NULL;
    }
    ECDSA_SIG_set0(es, r, s);
    len = i2d_ECDSA_SIG(es, &der);
    ECDSA_SIG_free(es);
    if (len <= 0)
        return NULL;
    *derlen = (size_t)len;
    return der;
}

static int
verify_pkey(const struct jwt_verifier *v, const struct jwk *k, int alg,
            const char *in, size_t inlen, const unsigned char *sig,
            size_t siglen)
{
    const struct jwa_info *ai = &jwa_info[alg];
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    const EVP_MD *md = ai->md >= 0 ? v->md[ai->md] : NULL;
    unsigned char *der = NULL;
    size_t derlen = 0;
    int ok = 0;

    if (mctx == NULL)
        return 0;
    if (ai->family == FAM_ES) {
        der = ecdsa_der(sig, siglen, ai->ec_size, &derlen);
        if (der == NULL)
            goto out;
        sig = der;
        siglen = derlen;
    } else if (ai->family == FAM_RS || ai->family == FAM_PS) {
        /* RFC 8017 §8.2.2: the signature is exactly k bytes; OpenSSL
         * would accept a shorter PSS one (leading zeros dropped). */
        if (siglen != (size_t)EVP_PKEY_get_size(k->pkey))
            goto out;
    } else if (siglen != 64) {
        goto out;               /* Ed25519, RFC 8032 §5.1.6 */
    }
    /* Ed25519 is a one-shot scheme: no digest (NULL md). */
    if (EVP_DigestVerifyInit(mctx, &pctx, md, NULL, k->pkey) != 1)
        goto out;
    if (ai->family == FAM_PS) {
        /* RFC 7518 §3.5: MGF1 with the same hash, salt = hash length. */
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1
            || EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx,
                                                RSA_PSS_SALTLEN_DIGEST) != 1
            || EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md) != 1)
            goto out;
    } else if (ai->family == FAM_RS) {
        if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1)
            goto out;
    }
    ok = EVP_DigestVerify(mctx, sig, siglen, (const unsigned char *)in,
                          inlen) == 1;
out:
    EVP_MD_CTX_free(mctx);
    OPENSSL_free(der);
    return ok;
}

/* Decode one base64url segment into a new buffer (NUL-terminated). */
static unsigned char *
segment(const char *s, size_t len, size_t *out_len)
{
    unsigned char *buf = malloc(B64URL_DECODED_MAX(len) + 1);
    long n;

    if (buf == NULL)
        return NULL;
    n = b64url_decode(s, len, buf, B64URL_DECODED_MAX(len));
    if (n < 0) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *out_len = (size_t)n;
    return buf;
}

static json_t *
json_segment(const char *s, size_t len)
{
    size_t n;
    unsigned char *buf = segment(s, len, &n);
    json_t *j;

    if (buf == NULL || n == 0) {
        free(buf);
        return NULL;
    }
    /* RFC 7515 §5.2 step 4 / RFC 7519 §7.2 step 4: duplicate member
     * names are refused (a parser that keeps the first and one that keeps
     * the last would disagree on alg). jansson also refuses invalid
     * UTF-8, \u0000 and trailing data. */
    j = json_loadb((const char *)buf, n, JSON_REJECT_DUPLICATES, NULL);
    free(buf);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/*
 * A NumericDate claim (RFC 7519 §2): absent (0), present (1, *c filled),
 * or malformed (-1). Only dates from 1970 to the end of year 9999 are
 * accepted, so that adding the leeway (at most a day) or comparing with
 * the clock can never overflow, and a float such as 1e300 is not
 * silently clamped into something that looks valid.
 */
#define NUMERIC_DATE_MAX INT64_C(253402300799)  /* 9999-12-31T23:59:59Z */

struct num {
    bool real;
    json_int_t i;
    double d;
};

static int
num_claim(json_t *o, const char *name, struct num *c)
{
    json_t *m = json_object_get(o, name);

    if (m == NULL)
        return 0;
    if (json_is_integer(m)) {
        c->real = false;
        c->i = json_integer_value(m);
        return c->i >= 0 && c->i <= NUMERIC_DATE_MAX ? 1 : -1;
    }
    if (json_is_real(m)) {
        c->real = true;
        c->d = json_real_value(m);
        /* NaN fails both comparisons. */
        return c->d >= 0.0 && c->d <= (double)NUMERIC_DATE_MAX ? 1 : -1;
    }
    return -1;
}

/* Sign of c - t, for t within the range of num_claim. */
static int
num_cmp(const struct num *c, int64_t t)
{
    if (c->real)
        return c->d < (double)t ? -1 : c->d > (double)t ? 1 : 0;
    return c->i < t ? -1 : c->i > t ? 1 : 0;
}

/* Whole seconds (a fractional exp is rounded down: it has passed once
 * its second has begun). */
static int64_t
num_seconds(const struct num *c)
{
    return c->real ? (int64_t)c->d : (int64_t)c->i;
}

static bool
aud_match(const struct jwt_verifier *v, const char *s, size_t len)
{
    for (size_t i = 0; i < v->naudience; i++) {
        if (strlen(v->audience[i]) == len
            && memcmp(v->audience[i], s, len) == 0)
            return true;
    }
    return false;
}

static int
check_claims(const struct jwt_verifier *v, json_t *pl, int64_t now,
             struct jwt_result *r, const char **reason)
{
    struct num exp = { false, 0, 0.0 }, nbf = exp, iat = exp;
    int has_exp = num_claim(pl, "exp", &exp);
    int has_nbf = num_claim(pl, "nbf", &nbf);
    int has_iat = num_claim(pl, "iat", &iat);
    json_t *sub = json_object_get(pl, "sub");
    json_t *jti = json_object_get(pl, "jti");

    if (has_exp < 0 || has_nbf < 0 || has_iat < 0) {
        *reason = "malformed time claim";
        return -1;
    }
    if (has_exp == 0 && v->require_exp) {
        *reason = "missing exp";
        return -1;
    }
    /* RFC 7519 §4.1.4: not accepted on or after exp; leeway for skew. */
    if (has_exp && num_cmp(&exp, now - v->leeway) <= 0) {
        *reason = "expired";
        return -1;
    }
    if (has_nbf && num_cmp(&nbf, now + v->leeway) > 0) {
        *reason = "not yet valid";
        return -1;
    }
    if (has_iat && num_cmp(&iat, now + v->leeway) > 0) {
        *reason = "issued in the future";
        return -1;
    }
    if (v->issuer != NULL) {
        json_t *iss = json_object_get(pl, "iss");

        if (!json_is_string(iss)
            || json_string_length(iss) != strlen(v->issuer)
            || memcmp(json_string_value(iss), v->issuer,
                      strlen(v->issuer)) != 0) {
            *reason = "bad issuer";
            return -1;
        }
    }
    if (v->naudience > 0) {
        json_t *aud = json_object_get(pl, "aud"), *el;
        bool ok = false;
        size_t i;

        if (json_is_string(aud)) {
            ok = aud_match(v, json_string_value(aud),
                           json_string_length(aud));
        } else if (json_is_array(aud)) {
            json_array_foreach(aud, i, el) {
                if (!json_is_string(el)) {
                    *reason = "malformed";
                    return -1;
                }
                if (aud_match(v, json_string_value(el),
                              json_string_length(el)))
                    ok = true;
            }
        }
        if (!ok) {
            *reason = "bad audience";
            return -1;
        }
    }
    /* Any length: a sub cut short (or dropped) would later fail to match
     * a revocation naming it. A sub with a NUL inside is kept to its
     * first NUL for the log. */
    if (json_is_string(sub)) {
        r->sub = strdup(json_string_value(sub));
        if (r->sub == NULL) {
            *reason = "out of memory";
            return -1;
        }
    }
    if (json_is_string(jti)) {
        r->jti = strdup(json_string_value(jti));
        if (r->jti == NULL) {
            *reason = "out of memory";
            return -1;
        }
    }
    if (has_exp) {
        r->exp = num_seconds(&exp);
        if (r->exp == 0)
            r->exp = -1;        /* 0 means "none"; 1970 is long past */
    }
    return 0;
}

static bool
typ_ok(json_t *typ)
{
    const char *s;

    if (typ == NULL)
        return true;
    if (!json_is_string(typ))
        return false;
    s = json_string_value(typ);
    /* RFC 7515 §4.1.9: "application/" may be omitted; media types are
     * case-insensitive. at+jwt is RFC 9068's access token type. */
    if (strncasecmp(s, "application/", 12) == 0)
        s += 12;
    return strcasecmp(s, "JWT") == 0 || strcasecmp(s, "at+jwt") == 0;
}

/* Choose keys and check the signature. */
static int
verify_signature(const struct jwt_verifier *v, int alg, const char *kid,
                 const char *in, size_t inlen, const unsigned char *sig,
                 size_t siglen, const char **reason)
{
    size_t kid_matches = 0, candidates = 0, fits = 0;

    if (kid != NULL) {
        for (size_t i = 0; i < v->keys.n; i++) {
            if (v->keys.k[i].kid != NULL
                && strcmp(v->keys.k[i].kid, kid) == 0)
                kid_matches++;
        }
    }
    for (size_t i = 0; i < v->keys.n; i++) {
        const struct jwk *k = &v->keys.k[i];
        int ok;

        /* A kid selects the keys that carry it; when none does, only
         * keys without a kid (secret, PEM) remain candidates. */
        if (kid != NULL) {
            if (kid_matches > 0
                ? k->kid == NULL || strcmp(k->kid, kid) != 0
                : k->kid != NULL)
                continue;
        }
        candidates++;
        if ((k->algs & JWA_BIT(alg)) == 0)
            continue;
        fits++;
        if (jwa_info[alg].family == FAM_HS)
            ok = k->secret != NULL
                 && verify_hmac(v, k, alg, in, inlen, sig, siglen);
        else
            ok = k->pkey != NULL
                 && verify_pkey(v, k, alg, in, inlen, sig, siglen);
        if (ok)
            return 0;
    }
    if (candidates == 0)
        *reason = "unknown kid";
    else if (fits == 0)
        *reason = "alg does not fit key";
    else
        *reason = "bad signature";
    return -1;
}

int
jwt_verify(const struct jwt_verifier *v, const char *tok, size_t len,
           int64_t now, struct jwt_result *r, const char **reason)
{
    const char *d1, *d2;
    json_t *hdr = NULL, *pl = NULL, *j;
    unsigned char *sig = NULL;
    size_t siglen = 0;
    const char *kid = NULL, *algname;
    int alg, rc = -1;

    memset(r, 0, sizeof *r);
    *reason = "malformed";
    if (tok == NULL)
        return -1;
    if (v->max_token != 0 && len > v->max_token) {
        *reason = "too large";
        return -1;
    }
    d1 = memchr(tok, '.', len);
    if (d1 == NULL)
        return -1;
    d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok));
    /* Exactly three segments (RFC 7515 §7.1); a JWE has five. */
    if (d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - tok)))
        return -1;
    hdr = json_segment(tok, (size_t)(d1 - tok));
    if (hdr == NULL)
        goto out;
    j = json_object_get(hdr, "alg");
    if (!json_is_string(j))
        goto out;
    algname = json_string_value(j);
    if (strcasecmp(algname, "none") == 0) {
        *reason = "alg none";
        goto out;
    }
    alg = jwa_from_name(algname, json_string_length(j));
    if (alg < 0 || (v->allowed & JWA_BIT(alg)) == 0) {
        *reason = "alg not allowed";
        goto out;
    }
    /* RFC 7515 §4.1.11: extensions we do not understand must fail; we
     * understand none. */
    if (json_object_get(hdr, "crit") != NULL) {
        *reason = "crit not supported";
        goto out;
    }
    if (!typ_ok(json_object_get(hdr, "typ"))) {
        *reason = "bad typ";
        goto out;
    }
    j = json_object_get(hdr, "kid");
    if (j != NULL) {
        if (!json_is_string(j))
            goto out;
        kid = json_string_value(j);
    }
    /* jku, x5u, jwk and x5c are ignored: keys come only from the
     * configuration, never from the token. */
    sig = segment(d2 + 1, len - (size_t)(d2 + 1 - tok), &siglen);
    if (sig == NULL || siglen == 0)
        goto out;
    if (verify_signature(v, alg, kid, tok, (size_t)(d2 - tok), sig, siglen,
                         reason) == -1)
        goto out;
    *reason = "malformed";
    pl = json_segment(d1 + 1, (size_t)(d2 - d1 - 1));
    if (pl == NULL)
        goto out;
    if (check_claims(v, pl, now, r, reason) == -1)
        goto out;
    r->claims = pl;
    pl = NULL;
    *reason = NULL;
    rc = 0;
out:
    if (rc == -1) {
        free(r->sub);
        free(r->jti);
        memset(r, 0, sizeof *r);
    }
    json_decref(hdr);
    json_decref(pl);
    free(sig);
    ERR_clear_error();
    return rc;
}

void
jwt_result_free(struct jwt_result *r)
{
    if (r == NULL)
        return;
    json_decref((json_t *)r->claims);
    r->claims = NULL;
    free(r->sub);
    free(r->jti);
    r->sub = r->jti = NULL;
}

/* ---- claims to headers */

int
jwt_claim_headers(const struct jwt_verifier *v, const struct jwt_result *r,
                  char *out, size_t cap)
{
    size_t o = 0;

    if (cap > 0)
        out[0] = '\0';
    if (r == NULL || r->claims == NULL)
        return 0;
    for (size_t i = 0; i < v->nclaims; i++) {
        json_t *c = json_object_get((json_t *)r->claims, v->claims[i].claim);
        char num[64];
        char *dumped = NULL;
        const char *val = NULL;
        size_t vlen = 0, hlen = strlen(v->claims[i].header);
        bool bad = false;

        if (json_is_string(c)) {
            val = json_string_value(c);
            vlen = json_string_length(c);
        } else if (json_is_integer(c)) {
            snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT,
                     json_integer_value(c));
            val = num;
            vlen = strlen(num);
        } else if (json_is_real(c)) {
            dumped = json_dumps(c, JSON_ENCODE_ANY);
            val = dumped;
            vlen = dumped != NULL ? strlen(dumped) : 0;
        } else if (json_is_boolean(c)) {
            val = json_is_true(c) ? "true" : "false";
            vlen = strlen(val);
        }
        if (val == NULL) {
            free(dumped);
            continue;
        }
        /* A CR or LF would let a token's issuer (or whoever got one
         * signed) inject headers into the backend request. */
        for (size_t k = 0; k < vlen; k++) {
            unsigned char ch = (unsigned char)val[k];
            if (ch < 0x20 || ch == 0x7f)
                bad = true;
        }
        if (!bad) {
            if (o + hlen + 2 + vlen + 2 >= cap) {
                free(dumped);
                if (cap > 0)
                    out[0] = '\0';
                return -1;
            }
            memcpy(out + o, v->claims[i].header, hlen);
            o += hlen;
            memcpy(out + o, ": ", 2);
            o += 2;
            memcpy(out + o, val, vlen);
            o += vlen;
            memcpy(out + o, "\r\n", 2);
            o += 2;
            out[o] = '\0';
        }
        free(dumped);
    }
    return (int)o;
}

const char *const *
jwt_claim_header_names(const struct jwt_verifier *v, size_t *n)
{
    *n = v->nclaims;
    return v->claim_headers;
}
