/*
 * b64url.h - strict base64url (RFC 4648 §5) as JWS compact serialisation
 * uses it (RFC 7515 §2): alphabet A-Z a-z 0-9 - _, no padding, no
 * whitespace. Hand-written because OpenSSL's EVP_DecodeBlock is standard
 * base64 (+ and /, '=' padding) and tolerates whitespace.
 */
#ifndef WSGUARD_B64URL_H
#define WSGUARD_B64URL_H

#include <stddef.h>

/* Bytes needed to decode len characters (an upper bound). */
#define B64URL_DECODED_MAX(len) ((len) / 4 * 3 + 2)

/*
 * Decode in[0..len) into out (cap bytes). Refuses (returns -1) any
 * character outside the alphabet (so '=', '+', '/', whitespace, '%'),
 * a length with len % 4 == 1 (no byte string encodes to it) and non-zero
 * unused trailing bits (so every byte string has exactly one accepted
 * encoding and a token cannot be altered without changing its bytes).
 * Returns the decoded length.
 */
long b64url_decode(const char *in, size_t len, unsigned char *out,
                   size_t cap);

/* Encode without padding; out needs (len * 4 + 2) / 3 + 1 bytes (NUL
 * terminated). Returns the encoded length, or -1 if cap is too small. */
long b64url_encode(const unsigned char *in, size_t len, char *out,
                   size_t cap);

#endif
