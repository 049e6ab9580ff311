/*
 * jwt.h - JSON Web Token verification for the upgrade request (RFC 7519,
 * RFC 7515 compact JWS). Pure given the keys and the time: no sockets; the
 * verifier is built once per configuration snapshot (keys loaded then),
 * read-only after, safe to use from every worker thread.
 *
 * Algorithms: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384/512
 * (JOSE raw r||s signatures, converted to DER for OpenSSL), EdDSA
 * (Ed25519). "none" is always refused. Only algorithms in the configured
 * allowlist ([jwt] algorithms) are accepted, and every key is bound to
 * the algorithms its type can verify (an HMAC secret only HS*, an RSA key
 * only RS and PS, an EC key only the ES of its curve, an Ed25519 key only
 * EdDSA): a token whose alg does not fit the key is refused, so the
 * public RSA key can never be used as an HMAC secret. HMAC comparison is
 * constant-time (CRYPTO_memcmp). JSON with jansson, crypto with OpenSSL 3
 * EVP only.
 */
#ifndef WSGUARD_JWT_H
#define WSGUARD_JWT_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "http.h"

struct jwt_verifier;

/* Build from a policy's [jwt] keys: secret or secret_file (HS*),
 * public_key_file (PEM: RSA, EC P-256/384/521, Ed25519), jwks_file (JSON
 * Web Key Set: kty RSA, EC, OKP/Ed25519, oct; several keys; chosen by the
 * token's kid, or tried in order when the token has no kid). Returns NULL
 * with a message in err when a key cannot be loaded, an algorithm name is
 * unknown, "none" is listed, or no key fits any allowed algorithm; *key
 * (when key is not NULL) then names the [jwt] key at fault, so the caller
 * can say where it was set. */
struct jwt_verifier *jwt_verifier_new(const struct policy *p,
                                      const char **key, char *err,
                                      size_t cap);
void jwt_verifier_free(struct jwt_verifier *v);

/* Where a token was found, and what must be cut from the request so that
 * it never reaches the backend. */
enum jwt_source {
    JWT_SRC_NONE = 0,
    JWT_SRC_QUERY,              /* ?name=TOKEN */
    JWT_SRC_HEADER,             /* Authorization: Bearer TOKEN (or the
                                   named header's whole value) */
    JWT_SRC_COOKIE,             /* Cookie: name=TOKEN */
    JWT_SRC_PROTOCOL            /* Sec-WebSocket-Protocol: PREFIXTOKEN */
};

struct jwt_token {
    enum jwt_source source;
    const char *name;           /* the source's configured name or prefix
                                   (owned by the verifier) */
    const char *tok;            /* points into the request buffer */
    size_t len;
    const struct http_header *header;   /* header it came from, or NULL */
    size_t hidx;                /* its index in the request's headers */
    const char *entry;          /* the whole list entry / cookie pair /
                                   query parameter that carries it */
    size_t entry_len;
};

#define JWT_FOUND 1
#define JWT_NO_TOKEN 0
#define JWT_TOO_LARGE (-1)
#define JWT_TWO_TOKENS (-2)

/*
 * Look for the token in every configured [jwt] source: "query:NAME"
 * (parameter names compared as backends decode them: field.h),
 * "header:NAME" (for "authorization" the value must be "Bearer TOKEN",
 * case-insensitive scheme; '_' in a client's header name counts as '-'),
 * "cookie:NAME" (names and values trimmed as cookie parsers do, one pair
 * of DQUOTEs removed), "protocol:PREFIX" (an entry of
 * Sec-WebSocket-Protocol that starts with PREFIX; the token is the rest).
 * Every source is examined, whatever the order. Returns JWT_FOUND with
 * *t filled; JWT_NO_TOKEN; JWT_TWO_TOKENS when more than one place holds
 * a candidate (in one source or across sources: the backend must never
 * receive a second, unverified token beside the verified one);
 * JWT_TOO_LARGE when the token is longer than max_token_bytes (refuse
 * without parsing it).
 */
int jwt_extract(const struct jwt_verifier *v, const struct http_request *req,
                struct jwt_token *t);

/* A verified token's claims. */
struct jwt_result {
    char *sub;                  /* owned (take it and set NULL to keep
                                   it); NULL when absent or not a string */
    char *jti;                  /* the same for jti */
    int64_t exp;                /* seconds since the epoch; 0 = none */
    void *claims;               /* json_t * of the payload (owned) */
};

/*
 * Verify t at time now (seconds since the epoch): three base64url
 * segments with no padding, header and payload JSON objects (a header
 * with duplicate keys is refused: jansson's JSON_REJECT_DUPLICATES),
 * typ if present "JWT", alg allowed and fitting the key, signature valid,
 * exp (required unless require_exp = no) > now - leeway, nbf <= now +
 * leeway, iat <= now + leeway, iss equal when configured, aud (string or
 * array) sharing one value with the configured audience list when
 * configured. Returns 0 and fills *r (free with jwt_result_free), or -1
 * with *reason a short static text ("expired", "bad signature",
 * "alg not allowed", "unknown kid", "malformed", ...) for the log.
 */
int jwt_verify(const struct jwt_verifier *v, const char *tok, size_t len,
               int64_t now, struct jwt_result *r, const char **reason);
void jwt_result_free(struct jwt_result *r);

/* The configured leeway in seconds (for close_on_expiry). */
int64_t jwt_leeway(const struct jwt_verifier *v);

/*
 * Write "Header: value\r\n" lines for [jwt] forward_claims ("claim:Header"
 * pairs) into out (cap bytes): string claims as they are, numbers and
 * booleans as JSON text, other types skipped; values containing CR, LF
 * or other control characters are skipped. Returns the length or -1 if
 * it does not fit.
 */
int jwt_claim_headers(const struct jwt_verifier *v, const struct jwt_result *r,
                      char *out, size_t cap);

/* Every configured claim header name (*n of them, any number): the
 * caller removes client-sent headers with those names, so the backend
 * reads only wsguard's (no identity spoofing). Owned by the verifier. */
const char *const *jwt_claim_header_names(const struct jwt_verifier *v,
                                          size_t *n);

/*
 * Remove the token (found by jwt_extract with v) from what reaches the
 * backend:
 * - JWT_SRC_QUERY: write the request target without that parameter (and
 *   without a dangling '?'; the rest of the query byte for byte,
 *   field_query_without) into out; returns its length.
 * - JWT_SRC_PROTOCOL: write the Sec-WebSocket-Protocol value without the
 *   token entry into out; returns its length (0 = the header is to be
 *   dropped entirely).
 * - JWT_SRC_COOKIE: write the Cookie value without the token pair;
 *   returns its length (0 = drop the header).
 * Returns -1 if it does not fit in cap.
 */
int jwt_strip(const struct jwt_verifier *v, const struct jwt_token *t,
              const struct http_request *req, char *out, size_t cap);

#endif
