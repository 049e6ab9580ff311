/*
 * b64url.c - strict base64url; see b64url.h for why it is hand-written.
 */
#include "b64url.h"

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* The value of c in the alphabet, or -1. A switch on ranges rather than a
 * table keeps it obviously correct for every byte value, signed or not. */
static int
b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

long
b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap)
{
    unsigned long acc = 0;
    int bits = 0;
    size_t n = 0;

    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (unsigned long)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= cap)
                return -1;
            out[n++] = (unsigned char)(acc >> bits);
            acc &= (1ul << bits) - 1;
        }
    }
    /* The 2 or 4 bits left over must be zero (RFC 4648 §3.5: canonical
     * encoding); otherwise several strings would decode to one value. */
    if (acc != 0)
        return -1;
    return (long)n;
}

long
b64url_encode(const unsigned char *in, size_t len, char *out, size_t cap)
{
    size_t need = (len * 4 + 2) / 3;
    size_t o = 0, i = 0;

    if (need + 1 > cap)
        return -1;
    for (; i + 3 <= len; i += 3) {
        unsigned long w = ((unsigned long)in[i] << 16)
                          | ((unsigned long)in[i + 1] << 8) | in[i + 2];
        out[o++] = b64url_alphabet[(w >> 18) & 63];
        out[o++] = b64url_alphabet[(w >> 12) & 63];
        out[o++] = b64url_alphabet[(w >> 6) & 63];
        out[o++] = b64url_alphabet[w & 63];
    }
    if (len - i == 1) {
        unsigned long w = (unsigned long)in[i] << 16;
        out[o++] = b64url_alphabet[(w >> 18) & 63];
        out[o++] = b64url_alphabet[(w >> 12) & 63];
    } else if (len - i == 2) {
        unsigned long w = ((unsigned long)in[i] << 16)
                          | ((unsigned long)in[i + 1] << 8);
        out[o++] = b64url_alphabet[(w >> 18) & 63];
        out[o++] = b64url_alphabet[(w >> 12) & 63];
        out[o++] = b64url_alphabet[(w >> 6) & 63];
    }
    out[o] = '\0';
    return (long)o;
}
