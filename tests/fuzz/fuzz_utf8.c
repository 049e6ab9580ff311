/*
 * fuzz_utf8.c - differential fuzz target for utf8_validate().
 *
 * Input: byte 0 seeds the chunk sizes, the rest is the text. The DFA is fed
 * the text whole, in fuzzer-chosen chunks and byte by byte, every piece in
 * its own exact-size heap copy (so ASan sees any read past a chunk), and
 * must agree at every step with a naive decoder written here from RFC 3629
 * arithmetic: REJECT exactly from the first byte no continuation could
 * make valid (fail fast), ACCEPT exactly at code point boundaries.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                        \
    do {                                                                 \
        fprintf(stderr, "fuzz_utf8: " __VA_ARGS__);                      \
        fputc('\n', stderr);                                             \
        abort();                                                         \
    } while (0)

/* Can the code point interval [lo, hi] still be encoded in len bytes? */
static int
ref_viable(int len, uint32_t lo, uint32_t hi)
{
    if (len == 2)
        return hi >= 0x80 && lo <= 0x7FF;
    if (len == 3)
        return (hi >= 0x800 && lo <= 0xD7FF) ||
               (hi >= 0xE000 && lo <= 0xFFFF);
    return hi >= 0x10000 && lo <= 0x10FFFF;
}

/* Returns the index of the first invalid byte (n if none) and marks in
 * boundary[k] (k = 0..n) whether p[0..k) ends between code points. */
static size_t
ref_scan(const uint8_t *p, size_t n, uint8_t *boundary)
{
    size_t i = 0;

    memset(boundary, 0, n + 1);
    boundary[0] = 1;
    while (i < n) {
        uint8_t b = p[i];
        int len;
        uint32_t v;

        if (b < 0x80) {
            boundary[++i] = 1;
            continue;
        }
        if (b >= 0xC0 && b <= 0xDF) {
            len = 2;
            v = b & 0x1Fu;
        } else if (b >= 0xE0 && b <= 0xEF) {
            len = 3;
            v = b & 0x0Fu;
        } else if (b >= 0xF0 && b <= 0xF7) {
            len = 4;
            v = b & 0x07u;
        } else {
            return i;
        }
        for (int k = 1;; k++) {
            int r = len - k;
            uint32_t lo = v << (6 * r);
            uint32_t hi = lo | ((1u << (6 * r)) - 1);
            if (!ref_viable(len, lo, hi))
                return i + (size_t)k - 1;
            if (r == 0)
                break;
            if (i + (size_t)k == n)
                return n;
            if ((p[i + k] & 0xC0) != 0x80)
                return i + (size_t)k;
            v = v << 6 | (p[i + k] & 0x3Fu);
        }
        i += (size_t)len;
        boundary[i] = 1;
    }
    return n;
}

/* What the DFA state must be after k bytes. */
static void
expect_state(uint32_t s, size_t k, size_t bad, const uint8_t *boundary,
             const char *how)
{
    if (k > bad) {
        if (s != UTF8_REJECT)
            FAIL("%s: state %u after %zu bytes, bad byte at %zu", how, s, k,
                 bad);
        return;
    }
    if (s == UTF8_REJECT)
        FAIL("%s: REJECT after %zu bytes, first bad byte at %zu", how, k,
             bad);
    if ((s == UTF8_ACCEPT) != (boundary[k] != 0))
        FAIL("%s: state %u after %zu bytes, boundary %d", how, s, k,
             boundary[k]);
}

static uint32_t
feed_copy(uint32_t s, const uint8_t *p, size_t n)
{
    uint8_t *c = calloc(n ? n : 1, 1);
    if (c == NULL)
        abort();
    memcpy(c, p, n);
    s = utf8_validate(s, c, n);
    free(c);
    return s;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint32_t seed = data[0] * 2654435761u + 1;
    const uint8_t *p = data + 1;

    /* utf8_is_ascii against a byte loop. */
    {
        int ascii = 1;
        for (size_t i = 0; i + 1 < size; i++)
            ascii &= p[i] < 0x80;
        if (utf8_is_ascii(p, size - 1) != ascii)
            FAIL("utf8_is_ascii says %d for %zu bytes", !ascii, size - 1);
    }
    size_t n = size - 1;
    uint8_t *boundary = malloc(n + 1);
    if (boundary == NULL)
        abort();
    size_t bad = ref_scan(p, n, boundary);
    uint32_t s;

    /* whole */
    s = feed_copy(UTF8_ACCEPT, p, n);
    expect_state(s, n, bad, boundary, "whole");

    /* fuzzer-chosen chunks, some of them empty */
    s = UTF8_ACCEPT;
    for (size_t off = 0; off < n;) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        size_t c = seed % ((data[0] & 0x3F) + 2);
        if (c > n - off)
            c = n - off;
        s = feed_copy(s, p + off, c);
        off += c;
        expect_state(s, off, bad, boundary, "chunked");
    }

    /* byte by byte: the exact byte where the DFA gives up */
    s = UTF8_ACCEPT;
    for (size_t k = 0; k < n; k++) {
        s = feed_copy(s, p + k, 1);
        expect_state(s, k + 1, bad, boundary, "bytewise");
    }

    /* REJECT is sticky whatever follows */
    if (s == UTF8_REJECT && feed_copy(s, (const uint8_t *)"ok", 2)
        != UTF8_REJECT)
        FAIL("REJECT not sticky");

    free(boundary);
    return 0;
}
