/*
 * jwk.h - verification keys for jwt.c (private to the JWT module): the
 * JWS algorithm table (RFC 7518 §3.1) and key sets loaded from an HMAC
 * secret, a PEM public key or certificate, or a JSON Web Key Set
 * (RFC 7517). Every key is bound at load to the algorithms its type can
 * verify (and to its JWK "alg" only, when it has one), so that the
 * verifier never has to decide at request time what a key may be used for.
 * Loaded on the main thread; read-only afterwards.
 */
#ifndef WSGUARD_JWK_H
#define WSGUARD_JWK_H

#include <stddef.h>

#include <openssl/evp.h>

enum jwa {
    JWA_HS256 = 0,
    JWA_HS384,
    JWA_HS512,
    JWA_RS256,
    JWA_RS384,
    JWA_RS512,
    JWA_PS256,
    JWA_PS384,
    JWA_PS512,
    JWA_ES256,
    JWA_ES384,
    JWA_ES512,
    JWA_EDDSA,
    JWA_COUNT
};

#define JWA_BIT(a) (1u << (a))
#define JWA_HS_ALL (JWA_BIT(JWA_HS256) | JWA_BIT(JWA_HS384) | \
                    JWA_BIT(JWA_HS512))
#define JWA_RS_ALL (JWA_BIT(JWA_RS256) | JWA_BIT(JWA_RS384) | \
                    JWA_BIT(JWA_RS512))
#define JWA_PS_ALL (JWA_BIT(JWA_PS256) | JWA_BIT(JWA_PS384) | \
                    JWA_BIT(JWA_PS512))

/* The algorithm named exactly (case-sensitive, RFC 7515 §4.1.1) by
 * s[0..len), or -1. */
int jwa_from_name(const char *s, size_t len);
const char *jwa_name(int a);

struct jwk {
    char *kid;                  /* owned; NULL when the key has none */
    unsigned algs;              /* JWA_BIT mask this key may verify */
    EVP_PKEY *pkey;             /* owned; RSA, EC or Ed25519; NULL for
                                   an HMAC secret */
    unsigned char *secret;      /* owned HMAC key (secret or kty oct) */
    size_t secret_len;
};

struct jwk_set {
    struct jwk *k;              /* owned array */
    size_t n;
};

/*
 * Each adder appends keys to s and returns 0, or returns -1 with a
 * message in err (s keeps the keys added before). An HMAC secret is
 * bound only to the HS algorithms whose digest is no longer than the
 * secret (RFC 7518 §3.2: the key must be at least as long as the hash
 * output); a secret shorter than 32 bytes is refused. RSA keys under
 * 2048 bits are refused, EC keys must be on P-256, P-384 or P-521.
 */
int jwk_add_secret(struct jwk_set *s, const unsigned char *sec, size_t len,
                   char *err, size_t cap);
/* The file's bytes are the secret, less one final "\n" or "\r\n". */
int jwk_load_secret_file(struct jwk_set *s, const char *path, char *err,
                         size_t cap);
/* A PEM "PUBLIC KEY" (SubjectPublicKeyInfo) or a PEM certificate. */
int jwk_load_pem(struct jwk_set *s, const char *path, char *err, size_t cap);
/*
 * A JWK Set {"keys": [...]}: kty RSA (n, e), EC (crv, x, y), OKP (crv
 * Ed25519, x), oct (k). Keys with "use" other than "sig", "key_ops"
 * without "verify", an "alg" that is not a JWS algorithm we know, or a
 * kty/crv we do not support are skipped (a set published for other uses
 * still loads); a supported key with a malformed member (missing, wrong
 * type, bad base64url, wrong length, point not on the curve, an "alg"
 * its type cannot verify, "alg": "none") makes the whole set fail.
 */
int jwk_parse_jwks(struct jwk_set *s, const char *json, size_t len,
                   char *err, size_t cap);
int jwk_load_jwks(struct jwk_set *s, const char *path, char *err,
                  size_t cap);
void jwk_set_free(struct jwk_set *s);

#endif
