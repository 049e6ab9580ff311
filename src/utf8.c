/*
 * utf8.c - incremental UTF-8 validator.
 *
 * A table-driven DFA in the manner of Bjoern Hoehrmann's decoder, but with
 * its own byte classes and states so that the state numbers match utf8.h
 * (UTF8_ACCEPT 0, UTF8_REJECT 1) and every state is a "what may come next"
 * promise. The two tables are small (256 + 9 * 12 bytes) and stay in L1.
 *
 * RFC 3629 §4 syntax, which is what the tables encode:
 *   UTF8-2 = %xC2-DF UTF8-tail
 *   UTF8-3 = %xE0 %xA0-BF UTF8-tail / %xE1-EC 2( UTF8-tail ) /
 *            %xED %x80-9F UTF8-tail / %xEE-EF 2( UTF8-tail )
 *   UTF8-4 = %xF0 %x90-BF 2( UTF8-tail ) / %xF1-F3 3( UTF8-tail ) /
 *            %xF4 %x80-8F 2( UTF8-tail )
 * The restricted second bytes after E0/ED/F0/F4 are what rule out
 * overlong forms, surrogates (U+D800..DFFF) and code points > U+10FFFF,
 * and checking them on the second byte is what makes the validator fail
 * at the first byte that no continuation could make valid (RFC 6455 §8.1
 * "fail fast").
 */
#if defined(__SSE2__)
#include <emmintrin.h>              /* baseline on x86-64 */
#endif
#include "utf8.h"

#include <string.h>

/* Byte classes: which bytes behave the same in every state. */
enum utf8_class {
    C_ASCII = 0,                /* 00..7F */
    C_TAIL_LO = 1,              /* 80..8F */
    C_TAIL_MID = 2,             /* 90..9F */
    C_TAIL_HI = 3,              /* A0..BF */
    C_LEAD2 = 4,                /* C2..DF */
    C_E0 = 5,                   /* E0: next must be A0..BF (no overlong) */
    C_LEAD3 = 6,                /* E1..EC, EE..EF */
    C_ED = 7,                   /* ED: next must be 80..9F (no surrogate) */
    C_F0 = 8,                   /* F0: next must be 90..BF (no overlong) */
    C_LEAD4 = 9,                /* F1..F3 */
    C_F4 = 10,                  /* F4: next must be 80..8F (<= U+10FFFF) */
    C_BAD = 11,                 /* C0, C1 (always overlong), F5..FF */
    C_COUNT = 12
};

/* States besides UTF8_ACCEPT and UTF8_REJECT: the number of tail bytes
 * still needed, and for the second byte after E0/ED/F0/F4 its range. */
enum utf8_state {
    S_ACCEPT = 0,
    S_REJECT = 1,
    S_TAIL1 = 2,                /* one tail byte to go */
    S_TAIL2 = 3,                /* two tail bytes to go */
    S_E0 = 4,                   /* A0..BF, then one tail */
    S_ED = 5,                   /* 80..9F, then one tail */
    S_TAIL3 = 6,                /* three tail bytes to go */
    S_F0 = 7,                   /* 90..BF, then two tails */
    S_F4 = 8,                   /* 80..8F, then two tails */
    S_COUNT = 9
};

#define R16(c) c, c, c, c, c, c, c, c, c, c, c, c, c, c, c, c

static const uint8_t utf8_class[256] = {
    /* 00..7F */
    R16(C_ASCII), R16(C_ASCII), R16(C_ASCII), R16(C_ASCII),
    R16(C_ASCII), R16(C_ASCII), R16(C_ASCII), R16(C_ASCII),
    /* 80..BF */
    R16(C_TAIL_LO), R16(C_TAIL_MID), R16(C_TAIL_HI), R16(C_TAIL_HI),
    /* C0..DF */
    C_BAD, C_BAD, C_LEAD2, C_LEAD2, C_LEAD2, C_LEAD2, C_LEAD2, C_LEAD2,
    C_LEAD2, C_LEAD2, C_LEAD2, C_LEAD2, C_LEAD2, C_LEAD2, C_LEAD2, C_LEAD2,
    R16(C_LEAD2),
    /* E0..EF */
    C_E0, C_LEAD3, C_LEAD3, C_LEAD3, C_LEAD3, C_LEAD3, C_LEAD3, C_LEAD3,
    C_LEAD3, C_LEAD3, C_LEAD3, C_LEAD3, C_LEAD3, C_ED, C_LEAD3, C_LEAD3,
    /* F0..FF */
    C_F0, C_LEAD4, C_LEAD4, C_LEAD4, C_F4, C_BAD, C_BAD, C_BAD,
    C_BAD, C_BAD, C_BAD, C_BAD, C_BAD, C_BAD, C_BAD, C_BAD
};

#define X S_REJECT

/* utf8_trans[state][class] -> next state. */
static const uint8_t utf8_trans[S_COUNT][C_COUNT] = {
    /*          ASCII     80-8F    90-9F    A0-BF    C2-DF    E0    E1-EF
     *          ED    F0    F1-F3    F4    bad */
    [S_ACCEPT] = { S_ACCEPT, X, X, X, S_TAIL1, S_E0, S_TAIL2,
                   S_ED, S_F0, S_TAIL3, S_F4, X },
    [S_REJECT] = { X, X, X, X, X, X, X, X, X, X, X, X },
    [S_TAIL1] = { X, S_ACCEPT, S_ACCEPT, S_ACCEPT, X, X, X, X, X, X, X, X },
    [S_TAIL2] = { X, S_TAIL1, S_TAIL1, S_TAIL1, X, X, X, X, X, X, X, X },
    [S_E0] = { X, X, X, S_TAIL1, X, X, X, X, X, X, X, X },
    [S_ED] = { X, S_TAIL1, S_TAIL1, X, X, X, X, X, X, X, X, X },
    [S_TAIL3] = { X, S_TAIL2, S_TAIL2, S_TAIL2, X, X, X, X, X, X, X, X },
    [S_F0] = { X, X, S_TAIL2, S_TAIL2, X, X, X, X, X, X, X, X },
    [S_F4] = { X, S_TAIL2, X, X, X, X, X, X, X, X, X, X },
};

#undef X
#undef R16

#define HIGH_BITS UINT64_C(0x8080808080808080)

uint32_t
utf8_validate(uint32_t state, const uint8_t *p, size_t n)
{
    size_t i = 0;

    /* A state we never hand out (a caller's corrupted struct) must not
     * index past the table; treat it as already rejected. */
    if (state >= S_COUNT)
        return UTF8_REJECT;

    while (i < n) {
        if (state == UTF8_ACCEPT && p[i] < 0x80) {
            /* Text is mostly ASCII: between code points, skip 16 and then
             * 8 bytes a time while none has its top bit set. memcpy keeps
             * the loads legal at any alignment; compilers turn each into
             * one mov. Only tried when the next byte is ASCII, so dense
             * non-ASCII text does not pay for it on every code point. */
            i++;
#if defined(__SSE2__)
            /* 32 bytes per test while the text stays ASCII. */
            while (n - i >= 32) {
                __m128i a = _mm_loadu_si128((const __m128i *)(const void *)
                                            (p + i));
                __m128i b = _mm_loadu_si128((const __m128i *)(const void *)
                                            (p + i + 16));
                if (_mm_movemask_epi8(_mm_or_si128(a, b)))
                    break;
                i += 32;
            }
#endif
            while (n - i >= 16) {
                uint64_t a, b;
                memcpy(&a, p + i, 8);
                memcpy(&b, p + i + 8, 8);
                if ((a | b) & HIGH_BITS)
                    break;
                i += 16;
            }
            if (n - i >= 8) {
                uint64_t a;
                memcpy(&a, p + i, 8);
                if ((a & HIGH_BITS) == 0)
                    i += 8;
            }
            if (i < n && n >= 8 && n - i < 8) {
                /* The last few bytes: one overlapping word instead of a
                 * byte loop (the bytes before i are ASCII already). */
                uint64_t a;
                memcpy(&a, p + n - 8, 8);
                if ((a & HIGH_BITS) == 0)
                    i = n;
            }
            while (i < n && p[i] < 0x80)
                i++;
            continue;
        }
        state = utf8_trans[state][utf8_class[p[i]]];
        i++;
        /* Fail fast: stop at the byte that made the text invalid. */
        if (state == UTF8_REJECT)
            return UTF8_REJECT;
    }
    return state;
}

int
utf8_is_ascii(const uint8_t *p, size_t n)
{
    uint64_t acc = 0, a, b;
    size_t i;

    if (n < 8) {
        for (i = 0; i < n; i++)
            acc |= p[i];
        return (acc & 0x80) == 0;
    }
    if (n < 16) {
        /* Two words that may overlap cover 8 to 16 bytes. */
        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
        return ((a | b) & HIGH_BITS) == 0;
    }
#if defined(__SSE2__)
#define LOAD16(q) _mm_loadu_si128((const __m128i *)(const void *)(q))
#define OR(a, b) _mm_or_si128(a, b)
    /* Up to 64 bytes without a loop (16 to 64 bytes: two or four loads,
     * the last ones overlapping what was seen, harmless for OR); longer
     * input 64 bytes per step, then its last 64 bytes. */
    __m128i v;
    if (n <= 32) {
        v = OR(LOAD16(p), LOAD16(p + n - 16));
    } else if (n <= 64) {
        v = OR(OR(LOAD16(p), LOAD16(p + 16)),
               OR(LOAD16(p + n - 32), LOAD16(p + n - 16)));
    } else {
        v = OR(OR(LOAD16(p + n - 64), LOAD16(p + n - 48)),
               OR(LOAD16(p + n - 32), LOAD16(p + n - 16)));
        for (i = 0; i + 64 <= n; i += 64)
            v = OR(v, OR(OR(LOAD16(p + i), LOAD16(p + i + 16)),
                         OR(LOAD16(p + i + 32), LOAD16(p + i + 48))));
    }
#undef OR
#undef LOAD16
    return _mm_movemask_epi8(v) == 0;
#else
    for (i = 0; i + 8 <= n; i += 8) {
        memcpy(&a, p + i, 8);
        acc |= a;
    }
    memcpy(&a, p + n - 8, 8);
    return ((acc | a) & HIGH_BITS) == 0;
#endif
}
