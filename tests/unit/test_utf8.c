/*
 * test_utf8.c - utf8_validate() against Autobahn 6.x style vectors and an
 * independent reference decoder, whole, split at every offset and byte by
 * byte (fail fast), with every input placed against a PROT_NONE page so an
 * over-read of the 8-byte fast path faults.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "utf8.h"

#include "guard.h"

/* ---- reference decoder
 *
 * Written from RFC 3629 arithmetic, not from the DFA: after k bytes of an
 * L-byte sequence the code point lies in [v << 6r, (v << 6r) | 2^6r - 1]
 * (r tail bytes to go, any tail reachable), so the prefix is still valid
 * exactly when that interval meets the code points L bytes may encode.
 * Returns the index of the first byte that makes p invalid, or n; sets
 * *complete to whether p ends between code points. */

static int
ref_viable(int len, uint32_t lo, uint32_t hi)
{
    switch (len) {
    case 2:
        return hi >= 0x80 && lo <= 0x7FF;
    case 3:
        return (hi >= 0x800 && lo <= 0xD7FF) ||
               (hi >= 0xE000 && lo <= 0xFFFF);
    default:
        return hi >= 0x10000 && lo <= 0x10FFFF;
    }
}

static size_t
ref_check(const uint8_t *p, size_t n, int *complete)
{
    size_t i = 0;

    *complete = 1;
    while (i < n) {
        uint8_t b = p[i];
        int len;
        uint32_t v;

        if (b < 0x80) {
            i++;
            continue;
        }
        if (b >= 0xC0 && b <= 0xDF) {
            len = 2;
            v = b & 0x1F;
        } else if (b >= 0xE0 && b <= 0xEF) {
            len = 3;
            v = b & 0x0F;
        } else if (b >= 0xF0 && b <= 0xF7) {
            len = 4;
            v = b & 0x07;
        } else {
            return i;           /* lone tail byte, F8..FF */
        }
        for (int k = 1;; k++) {
            int r = len - k;
            uint32_t lo = v << (6 * r);
            uint32_t hi = lo | ((1u << (6 * r)) - 1);
            if (!ref_viable(len, lo, hi))
                return i + (size_t)k - 1;
            if (r == 0)
                break;
            if (i + (size_t)k == n) {
                *complete = 0;
                return n;
            }
            if ((p[i + k] & 0xC0) != 0x80)
                return i + (size_t)k;
            v = v << 6 | (p[i + k] & 0x3F);
        }
        i += (size_t)len;
    }
    return n;
}

/* The verdict the DFA must reach on p[0..n). */
static uint32_t
ref_state_class(const uint8_t *p, size_t n)
{
    int complete;
    if (ref_check(p, n, &complete) < n)
        return UTF8_REJECT;
    return complete ? UTF8_ACCEPT : 2;  /* 2: "inside a code point" */
}

static uint32_t
state_class(uint32_t s)
{
    return s == UTF8_ACCEPT || s == UTF8_REJECT ? s : 2;
}

/* Checks p[0..n) whole, in two pieces at every split, and byte by byte:
 * the verdict never depends on the split, and the DFA rejects exactly at
 * the reference's first bad byte. */
static void
check_all_ways(const uint8_t *p0, size_t n, uint32_t expect)
{
    const uint8_t *p = guarded(p0, n);
    int complete;
    size_t bad = ref_check(p, n, &complete);
    uint32_t s;

    assert_int_equal(ref_state_class(p, n), expect);
    assert_int_equal(state_class(utf8_validate(UTF8_ACCEPT, p, n)), expect);

    for (size_t cut = 0; cut <= n; cut++) {
        s = utf8_validate(UTF8_ACCEPT, p, cut);
        s = utf8_validate(s, p + cut, n - cut);
        assert_int_equal(state_class(s), expect);
    }

    s = UTF8_ACCEPT;
    for (size_t i = 0; i < n; i++) {
        s = utf8_validate(s, p + i, 1);
        if (i >= bad)
            assert_int_equal(s, UTF8_REJECT);
        else
            assert_int_equal(state_class(s), ref_state_class(p, i + 1));
    }
    /* Zero bytes change nothing; REJECT is sticky. */
    assert_int_equal(utf8_validate(s, p, 0), s);
    if (s == UTF8_REJECT)
        assert_int_equal(utf8_validate(s, (const uint8_t *)"abc", 3),
                         UTF8_REJECT);
}

#define V(s) (const uint8_t *)(s), sizeof(s) - 1

struct vec {
    const char *name;
    const uint8_t *p;
    size_t n;
    uint32_t expect;            /* ACCEPT, REJECT or 2 (incomplete) */
};

static const struct vec vectors[] = {
    /* Autobahn 6.1-6.2: empty and "κόσμε" */
    { "empty", V(""), UTF8_ACCEPT },
    { "kosme", V("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"),
      UTF8_ACCEPT },
    { "hello-kosme", V("Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc"
                       "\xc3\xa0\xc3\xa1-UTF-8!!"), UTF8_ACCEPT },
    /* 6.6: "κόσμε" cut short or with garbage appended */
    { "kosme-trunc", V("\xce\xba\xe1\xbd"), 2 },
    { "kosme-bad", V("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
                     "\xed\xa0\x80" "edited"), UTF8_REJECT },
    /* 6.7-6.9: first code point of each length */
    { "U+0000", (const uint8_t *)"\x00", 1, UTF8_ACCEPT },
    { "U+0080", V("\xc2\x80"), UTF8_ACCEPT },
    { "U+0800", V("\xe0\xa0\x80"), UTF8_ACCEPT },
    { "U+10000", V("\xf0\x90\x80\x80"), UTF8_ACCEPT },
    /* last code point of each length */
    { "U+007F", V("\x7f"), UTF8_ACCEPT },
    { "U+07FF", V("\xdf\xbf"), UTF8_ACCEPT },
    { "U+FFFF", V("\xef\xbf\xbf"), UTF8_ACCEPT },
    { "U+10FFFF", V("\xf4\x8f\xbf\xbf"), UTF8_ACCEPT },
    /* 6.10-6.11: around the surrogates and other boundaries */
    { "U+D7FF", V("\xed\x9f\xbf"), UTF8_ACCEPT },
    { "U+E000", V("\xee\x80\x80"), UTF8_ACCEPT },
    { "U+FFFD", V("\xef\xbf\xbd"), UTF8_ACCEPT },
    { "U+FFFE", V("\xef\xbf\xbe"), UTF8_ACCEPT },    /* noncharacter: ok */
    /* beyond U+10FFFF and 5/6-byte forms */
    { "U+110000", V("\xf4\x90\x80\x80"), UTF8_REJECT },
    { "U+1FFFFF", V("\xf7\xbf\xbf\xbf"), UTF8_REJECT },
    { "5-byte", V("\xf8\x88\x80\x80\x80"), UTF8_REJECT },
    { "6-byte", V("\xfc\x84\x80\x80\x80\x80"), UTF8_REJECT },
    /* 6.12: lone continuation bytes */
    { "lone-80", V("\x80"), UTF8_REJECT },
    { "lone-bf", V("\xbf"), UTF8_REJECT },
    { "ascii-lone-80", V("abc\x80"), UTF8_REJECT },
    { "tails", V("\x80\xbf\x80\xbf"), UTF8_REJECT },
    /* 6.13: lead bytes followed by space */
    { "c2-space", V("\xc2 "), UTF8_REJECT },
    { "e1-space", V("\xe1 "), UTF8_REJECT },
    { "f1-space", V("\xf1 "), UTF8_REJECT },
    /* 6.14-6.15: sequences cut short at the end (not an error yet, but
     * not ACCEPT either) */
    { "trunc-c2", V("\xc2"), 2 },
    { "trunc-e0", V("\xe0"), 2 },
    { "trunc-e0a0", V("\xe0\xa0"), 2 },
    { "trunc-f0", V("\xf0"), 2 },
    { "trunc-f090", V("\xf0\x90"), 2 },
    { "trunc-f09080", V("\xf0\x90\x80"), 2 },
    { "trunc-f48f", V("\xf4\x8f\xbf"), 2 },
    { "trunc-then-ascii", V("\xe1\x80" "a"), UTF8_REJECT },
    /* 6.16: impossible bytes */
    { "fe", V("\xfe"), UTF8_REJECT },
    { "ff", V("\xff"), UTF8_REJECT },
    { "fefeffff", V("\xfe\xfe\xff\xff"), UTF8_REJECT },
    /* 6.17-6.18: overlong forms */
    { "overlong-/-2", V("\xc0\xaf"), UTF8_REJECT },
    { "overlong-/-3", V("\xe0\x80\xaf"), UTF8_REJECT },
    { "overlong-/-4", V("\xf0\x80\x80\xaf"), UTF8_REJECT },
    { "overlong-nul-2", V("\xc0\x80"), UTF8_REJECT },
    { "overlong-nul-3", V("\xe0\x80\x80"), UTF8_REJECT },
    { "overlong-nul-4", V("\xf0\x80\x80\x80"), UTF8_REJECT },
    { "overlong-max-2", V("\xc1\xbf"), UTF8_REJECT },
    { "overlong-max-3", V("\xe0\x9f\xbf"), UTF8_REJECT },
    { "overlong-max-4", V("\xf0\x8f\xbf\xbf"), UTF8_REJECT },
    /* 6.19-6.21: surrogates, single and paired */
    { "U+D800", V("\xed\xa0\x80"), UTF8_REJECT },
    { "U+DB7F", V("\xed\xad\xbf"), UTF8_REJECT },
    { "U+DC00", V("\xed\xb0\x80"), UTF8_REJECT },
    { "U+DFFF", V("\xed\xbf\xbf"), UTF8_REJECT },
    { "pair", V("\xed\xa0\x80\xed\xb0\x80"), UTF8_REJECT },
    /* long ASCII around non-ASCII: exercises the 8/16-byte fast path */
    { "ascii-40", V("0123456789012345678901234567890123456789"),
      UTF8_ACCEPT },
    { "ascii-mid-2byte", V("0123456789abcdef\xc3\xa9" "0123456789abcdef"),
      UTF8_ACCEPT },
    { "ascii-mid-bad", V("0123456789abcdef\xc3" "0123456789abcdef"),
      UTF8_REJECT },
    { "ascii-end-trunc", V("0123456789abcdef01234567\xf0\x9f\x98"), 2 },
};

static void
test_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        /* name is for whoever reads a failure in a debugger */
        check_all_ways(vectors[i].p, vectors[i].n, vectors[i].expect);
    }
}

/* Encode cp in the shortest (or a forced longer) form. */
static size_t
encode(uint32_t cp, int len, uint8_t *out)
{
    if (len == 1) {
        out[0] = (uint8_t)cp;
    } else if (len == 2) {
        out[0] = (uint8_t)(0xC0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
    } else if (len == 3) {
        out[0] = (uint8_t)(0xE0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
    } else {
        out[0] = (uint8_t)(0xF0 | cp >> 18);
        out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    }
    return (size_t)len;
}

/* Every code point, in its own form and every overlong form. */
static void
test_every_code_point(void **state)
{
    uint8_t b[4];
    (void)state;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        int own = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        int surrogate = cp >= 0xD800 && cp <= 0xDFFF;
        size_t n = encode(cp, own, b);
        uint32_t s = utf8_validate(UTF8_ACCEPT, b, n);
        assert_int_equal(s, surrogate ? UTF8_REJECT : UTF8_ACCEPT);
        for (int len = own + 1; len <= 4; len++) {
            n = encode(cp, len, b);
            assert_int_equal(utf8_validate(UTF8_ACCEPT, b, n), UTF8_REJECT);
        }
    }
}

/* Every 1-, 2- and 3-byte string against the reference. */
static void
test_exhaustive_short(void **state)
{
    uint8_t b[3];
    (void)state;
    for (uint32_t x = 0; x < (1u << 24); x++) {
        size_t n = 3;
        b[0] = (uint8_t)(x >> 16);
        b[1] = (uint8_t)(x >> 8);
        b[2] = (uint8_t)x;
        if (b[0] < 0x80 && b[1] < 0x80)
            continue;           /* ASCII prefixes add nothing */
        uint32_t s = utf8_validate(UTF8_ACCEPT, b, n);
        if (state_class(s) != ref_state_class(b, n))
            fail_msg("%02x %02x %02x: dfa %u ref %u", b[0], b[1], b[2],
                     s, ref_state_class(b, n));
        if ((x & 0xFFFF) == 0) {
            assert_int_equal(state_class(utf8_validate(UTF8_ACCEPT, b, 1)),
                             ref_state_class(b, 1));
            assert_int_equal(state_class(utf8_validate(UTF8_ACCEPT, b, 2)),
                             ref_state_class(b, 2));
        }
    }
}

/* The fast path at every alignment and length: one non-ASCII byte (valid
 * or not) at every position of an ASCII run. */
static void
test_fast_path_positions(void **state)
{
    uint8_t buf[80];
    (void)state;
    for (size_t len = 1; len <= 70; len++) {
        for (size_t pos = 0; pos + 1 < len; pos++) {
            memset(buf, 'a', len);
            buf[pos] = 0xC3;
            buf[pos + 1] = 0xA9;
            check_all_ways(buf, len, UTF8_ACCEPT);
            buf[pos + 1] = 'a';
            check_all_ways(buf, len, UTF8_REJECT);
        }
        memset(buf, 'a', len);
        buf[len - 1] = 0xE2;
        check_all_ways(buf, len, 2);
        buf[len - 1] = 0xFF;
        check_all_ways(buf, len, UTF8_REJECT);
    }
}

/* Random mostly-UTF-8 strings, whole and in random chunks. */
static void
test_random_differential(void **state)
{
    uint8_t buf[64];
    uint64_t x = 0x9E3779B97F4A7C15u;
    (void)state;
    for (int iter = 0; iter < 200000; iter++) {
        size_t n = 0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t want = x % sizeof buf;
        while (n < want) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if ((x & 7) == 0 || want - n < 4) {
                buf[n++] = (uint8_t)(x >> 8);       /* any byte */
            } else {
                uint32_t cp = (uint32_t)(x >> 11) % 0x110000;
                int len = cp < 0x80 ? 1 : cp < 0x800 ? 2 :
                          cp < 0x10000 ? 3 : 4;
                n += encode(cp, len, buf + n);
            }
        }
        uint32_t want_class = ref_state_class(buf, n);
        const uint8_t *p = guarded(buf, n);
        assert_int_equal(state_class(utf8_validate(UTF8_ACCEPT, p, n)),
                         want_class);
        uint32_t s = UTF8_ACCEPT;
        size_t off = 0;
        while (off < n) {
            size_t c = 1 + (size_t)((x >> (off % 32)) % 9);
            if (c > n - off)
                c = n - off;
            s = utf8_validate(s, p + off, c);
            off += c;
        }
        assert_int_equal(state_class(s), want_class);
    }
}

static void
test_bogus_state(void **state)
{
    (void)state;
    /* A state utf8_validate never returns is treated as rejected. */
    assert_int_equal(utf8_validate(1000, (const uint8_t *)"a", 1),
                     UTF8_REJECT);
    assert_int_equal(utf8_validate(UTF8_REJECT, NULL, 0), UTF8_REJECT);
    assert_int_equal(utf8_validate(UTF8_ACCEPT, NULL, 0), UTF8_ACCEPT);
}

/* utf8_is_ascii: every length 0..200, every position of one high byte,
 * at every alignment of the buffer. */
static void
test_is_ascii(void **state)
{
    uint8_t buf[256 + 8];

    (void)state;
    for (size_t align = 0; align < 8; align++) {
        uint8_t *p = buf + align;
        for (size_t n = 0; n <= 200; n++) {
            memset(p, 'a', n);
            assert_true(utf8_is_ascii(p, n));
            for (size_t k = 0; k < n; k++) {
                p[k] = 0x80 | (uint8_t)k;
                assert_false(utf8_is_ascii(p, n));
                p[k] = 0x7f;
                assert_true(utf8_is_ascii(p, n));
                p[k] = 'a';
            }
        }
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_every_code_point),
        cmocka_unit_test(test_exhaustive_short),
        cmocka_unit_test(test_fast_path_positions),
        cmocka_unit_test(test_random_differential),
        cmocka_unit_test(test_bogus_state),
        cmocka_unit_test(test_is_ascii),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
