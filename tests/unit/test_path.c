/*
 * test_path.c - request path normalisation against a table of vectors:
 * each rule of path.h, the route bypasses that motivated it (and the
 * double-encoded and "..%3B" ones found in review), mixed-case
 * escapes, trailing slashes and dots, NUL bytes, long inputs.
 *
 * Every call sees its input placed against a PROT_NONE page (guard.h),
 * so a read past len faults at once. Every vector is also cut at every
 * offset: a prefix must be refused or give an output that normalises to
 * itself. The output buffer is filled with a sentinel so that a write
 * past cap shows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "path.h"

#include "guard.h"

#define N(a) (sizeof (a) / sizeof (a)[0])

/* Longest input used here; guarded() takes up to three pages. */
#define LONG_MAX_IN 8192
#define SENTINEL 0x5a

static const char R_CHAR[] = "invalid character in path";
static const char R_ESC[] = "invalid percent escape";
static const char R_ENC[] = "encoded slash, backslash or NUL";
static const char R_DBL[] = "double-encoded path character";
static const char R_CLIMB[] = "path climbs above the root";
static const char R_PARAM[] = "dot segment with parameters";

struct vec {
    const char *in;
    size_t len;                 /* NUL bytes may be part of the input */
    const char *out;            /* NULL: refused */
    const char *reason;         /* with out == NULL, the reason expected */
};

#define OK(i, o) { i, sizeof (i) - 1, o, NULL }
#define NO(i, r) { i, sizeof (i) - 1, NULL, r }

static const struct vec vectors[] = {
    /* The bypasses of "[route /admin/]" that motivated the module. */
    OK("/x/../admin/", "/admin/"),
    OK("/%61dmin/", "/admin/"),
    OK("//admin/", "/admin/"),
    OK("/public/%2e%2e/admin/", "/admin/"),
    NO("/public/..;/admin/", R_PARAM),

    /* Rule 1: raw characters. */
    OK("/", "/"),
    OK("/AZaz09-._~", "/AZaz09-._~"),
    OK("/!$&'()*+,;=:@", "/!$&'()*+,;=:@"),
    OK("/a:b@c/d=e;f", "/a:b@c/d=e;f"),
    NO("/a b", R_CHAR),
    NO("/a\tb", R_CHAR),
    NO("/a\r\nX: 1", R_CHAR),
    NO("/a\x01", R_CHAR),
    NO("/a\x1f", R_CHAR),
    NO("/a\x7f", R_CHAR),
    NO("/\x80", R_CHAR),
    NO("/\xff", R_CHAR),
    NO("/caf\xc3\xa9", R_CHAR),
    NO("/a\\b", R_CHAR),
    NO("/a\\..\\admin", R_CHAR),
    NO("/\"", R_CHAR),
    NO("/<script>", R_CHAR),
    NO("/>", R_CHAR),
    NO("/^", R_CHAR),
    NO("/`", R_CHAR),
    NO("/{", R_CHAR),
    NO("/|", R_CHAR),
    NO("/}", R_CHAR),
    NO("/[", R_CHAR),
    NO("/]", R_CHAR),
    NO("/a#frag", R_CHAR),
    NO("/a?q=1", R_CHAR),
    NO("/admin\0/public", R_CHAR),
    NO("/\0", R_CHAR),

    /* Rule 2: escapes. */
    NO("/%", R_ESC),
    NO("/a%", R_ESC),
    NO("/%4", R_ESC),
    NO("/a%2", R_ESC),
    NO("/%4g", R_ESC),
    NO("/%g4", R_ESC),
    NO("/%%41", R_ESC),
    NO("/%%", R_ESC),
    NO("/%-1", R_ESC),
    NO("/% 1", R_ESC),
    NO("/%u002e", R_ESC),
    OK("/%61", "/a"),
    OK("/%41", "/A"),
    OK("/%7e", "/~"),
    OK("/%7E", "/~"),
    OK("/%7E%7e", "/~~"),
    OK("/%2d%5f%2E", "/-_."),
    OK("/%30%39", "/09"),
    OK("/a%2eb", "/a.b"),
    OK("/%5A%5a%7A%7a", "/ZZzz"),
    NO("/%2f", R_ENC),
    NO("/%2F", R_ENC),
    NO("/admin%2Fsecret", R_ENC),
    NO("/..%2f..%2fetc", R_ENC),
    NO("/%5c", R_ENC),
    NO("/%5C", R_ENC),
    NO("/%00", R_ENC),
    NO("/a%00.txt", R_ENC),
    OK("/%3a", "/%3A"),
    OK("/%3A", "/%3A"),
    OK("/%3a%3A", "/%3A%3A"),
    OK("/%20", "/%20"),
    OK("/%c3%a9", "/%C3%A9"),
    OK("/%C3%a9", "/%C3%A9"),
    OK("/%ff%Fe", "/%FF%FE"),
    OK("/%3b", "/%3B"),
    OK("/%3f", "/%3F"),
    OK("/%23", "/%23"),
    OK("/%25", "/%25"),
    OK("/%0a", "/%0A"),
    OK("/%7f", "/%7F"),
    OK("/%2b%2C", "/%2B%2C"),
    OK("/%40%3D", "/%40%3D"),

    /* Rule 3: double encoding of anything (after decoding: "%25%32e" is
     * "%252e"). */
    NO("/%252e", R_DBL),
    NO("/%252E", R_DBL),
    NO("/%252e%252e/admin", R_DBL),
    NO("/%252f", R_DBL),
    NO("/%252F", R_DBL),
    NO("/%255c", R_DBL),
    NO("/%255C", R_DBL),
    NO("/%2500", R_DBL),
    NO("/a%252Eb", R_DBL),
    NO("/%25%32%65", R_DBL),
    NO("/%25%32e", R_DBL),
    NO("/%252%45", R_DBL),
    NO("/%25%32%46", R_DBL),
    NO("/%25%35%43", R_DBL),
    NO("/%25%30%30", R_DBL),
    NO("/%2561dmin/", R_DBL),
    NO("/%2541dmin/", R_DBL),
    NO("/%25%36%31dmin/", R_DBL),
    NO("/public/%2561dmin/", R_DBL),
    NO("/%2541", R_DBL),
    NO("/%253a", R_DBL),
    NO("/%253A", R_DBL),
    NO("/%25%33%61", R_DBL),
    NO("/%25%61%62", R_DBL),
    NO("/%2520", R_DBL),
    NO("/%253b", R_DBL),
    NO("/..%253B/admin/", R_DBL),
    NO("/%25ff", R_DBL),
    NO("/%2525", R_DBL),
    NO("/%25252e", R_DBL),
    NO("/%25%2541", R_DBL),
    NO("/a/%25%25%2525", R_DBL),
    OK("/%25", "/%25"),
    OK("/%252", "/%252"),
    OK("/%25/2e", "/%25/2e"),
    OK("/%25/41", "/%25/41"),
    OK("/%252g", "/%252g"),
    OK("/%25g2", "/%25g2"),
    OK("/%25x", "/%25x"),
    OK("/%252%3A", "/%252%3A"),
    OK("/%25%25", "/%25%25"),
    OK("/%25%25%25", "/%25%25%25"),
    OK("/a%25b/c", "/a%25b/c"),

    /* Rule 4: repeated slashes, merged before dot segments. */
    OK("//", "/"),
    OK("///", "/"),
    OK("/a//b", "/a/b"),
    OK("///a///b//", "/a/b/"),
    OK("/a//../b", "/b"),
    NO("//..//a", R_CLIMB),

    /* Rule 5: dot segments. */
    OK("/.", "/"),
    OK("/./", "/"),
    OK("/a/.", "/a/"),
    OK("/a/..", "/"),
    OK("/a/../", "/"),
    OK("/a/b/..", "/a/"),
    OK("/a/./b", "/a/b"),
    OK("/a/b/../c", "/a/c"),
    OK("/a/b/c/./../../g", "/a/g"),
    OK("/mid/content=5/../6", "/mid/6"),
    OK("/a/./../b", "/b"),
    OK("/a/b/../../", "/"),
    OK("/./././a", "/a"),
    OK("/a/%2e", "/a/"),
    OK("/a/%2e%2e", "/"),
    OK("/a/.%2E", "/"),
    OK("/a/%2E./b", "/b"),
    OK("/a/.%2e/b", "/b"),
    OK("/.../", "/.../"),
    OK("/..a/", "/..a/"),
    OK("/a../", "/a../"),
    OK("/.a", "/.a"),
    OK("/a/.b/..c/c..", "/a/.b/..c/c.."),
    OK("/%2e%2e%2e", "/..."),
    NO("/..", R_CLIMB),
    NO("/../", R_CLIMB),
    NO("/../a", R_CLIMB),
    NO("/a/../..", R_CLIMB),
    NO("/a/b/../../..", R_CLIMB),
    NO("/a/../../b/c", R_CLIMB),
    NO("/%2e%2e", R_CLIMB),
    NO("/%2E%2E/admin/", R_CLIMB),
    NO("/.%2e/", R_CLIMB),
    NO("/a/./../../b", R_CLIMB),
    NO("//../a", R_CLIMB),

    /* Rule 6: dot segments with matrix parameters. */
    NO("/.;/admin", R_PARAM),
    NO("/..;", R_PARAM),
    NO("/a/.;", R_PARAM),
    NO("/a/..;x=1/b", R_PARAM),
    NO("/%2e;/x", R_PARAM),
    NO("/%2e%2e;jsessionid=1/admin/", R_PARAM),
    NO("/.%2E;/", R_PARAM),
    NO("//..;/admin", R_PARAM),
    OK("/...;/", "/...;/"),
    OK("/a;b/", "/a;b/"),
    OK("/;/", "/;/"),
    OK("/;../", "/;../"),
    OK("/a.;/", "/a.;/"),
    NO("/..%3b/admin/", R_PARAM),
    NO("/..%3B/", R_PARAM),
    NO("/public/..%3B/admin/", R_PARAM),
    NO("/.%3b", R_PARAM),
    NO("/.%3B/admin", R_PARAM),
    NO("/a/..%3bx=1/b", R_PARAM),
    NO("/%2e%2e%3b/admin/", R_PARAM),
    NO("/%2E%3B", R_PARAM),
    NO("/.%2e%3B/", R_PARAM),
    NO("//..%3B/admin", R_PARAM),
    NO("/a/b/..%3B", R_PARAM),
    OK("/...%3B/", "/...%3B/"),
    OK("/a.%3b/", "/a.%3B/"),
    OK("/%3b../", "/%3B../"),
    OK("/%3B/", "/%3B/"),
    OK("/a%3Bb/", "/a%3Bb/"),
    OK("/.a%3B/", "/.a%3B/"),
    OK("/..%3a/", "/..%3A/"),
    OK("/..%2c/", "/..%2C/"),
    OK("/admin;jsessionid=1/", "/admin;jsessionid=1/"),

    /* Rule 7: the rest kept byte for byte. */
    OK("/Admin/", "/Admin/"),
    OK("/ADMIN", "/ADMIN"),
    OK("/a/b/", "/a/b/"),
    OK("/a/b", "/a/b"),
    OK("/ws/chat", "/ws/chat"),
    OK("/x/../Admin/%3a/./", "/Admin/%3A/"),
};

/* Normalise in[0..len) from a guarded copy into a sentinel-filled buffer
 * of cap bytes (the caller's buffer has cap + 16), checking that nothing
 * past cap was written, and that a refusal gives a reason and writes
 * nothing at all. */
static int
run(const char *in, size_t len, char *out, size_t cap, const char **why)
{
    const char *g = guarded(in, len);
    const char *reason = NULL;
    int n;

    memset(out, SENTINEL, cap + 16);
    n = path_normalize(g, len, out, cap, &reason);
    for (size_t i = cap; i < cap + 16; i++)
        assert_int_equal((unsigned char)out[i], SENTINEL);
    if (n == -1) {
        assert_non_null(reason);
        assert_true(strlen(reason) > 0);
        for (size_t i = 0; i < cap; i++)     /* a refusal writes nothing */
            assert_int_equal((unsigned char)out[i], SENTINEL);
    } else {
        assert_true(n >= 1 && (size_t)n < cap);
        assert_int_equal(out[n], '\0');
        assert_int_equal(strlen(out), (size_t)n);
        assert_int_equal(out[0], '/');
        assert_true((size_t)n <= len);
    }
    if (why != NULL)
        *why = reason;
    return n;
}

/* A normalised output must be a fixed point; cap n + 1 is enough for it
 * and n is not. */
static void
check_fixed_point(const char *norm, size_t n, const char *in, size_t len)
{
    static char again[LONG_MAX_IN + 32];
    char copy[LONG_MAX_IN + 1];
    int m;

    assert_true(n <= LONG_MAX_IN);
    memcpy(copy, norm, n);
    m = run(copy, n, again, n + 1, NULL);
    if (m != (int)n || memcmp(again, copy, n) != 0)
        fail_msg("not idempotent: \"%.*s\" -> \"%.*s\"", (int)n, copy,
                 m < 0 ? 0 : m, again);
    /* The same input with exactly enough room, then one byte less. */
    m = run(in, len, again, n + 1, NULL);
    assert_int_equal(m, (int)n);
    assert_memory_equal(again, copy, n);
    assert_int_equal(run(in, len, again, n, NULL), -1);
}

static void
test_vectors(void **state)
{
    static char out[LONG_MAX_IN + 32];

    (void)state;
    for (size_t i = 0; i < N(vectors); i++) {
        const struct vec *v = &vectors[i];
        const char *why;
        int n;

        n = run(v->in, v->len, out, v->len + 1, &why);
        if (v->out == NULL) {
            if (n != -1)
                fail_msg("accepted: \"%.*s\" -> \"%s\"", (int)v->len, v->in,
                         out);
            if (strcmp(why, v->reason) != 0)
                fail_msg("\"%.*s\": reason \"%s\", expected \"%s\"",
                         (int)v->len, v->in, why, v->reason);
            continue;
        }
        if (n == -1)
            fail_msg("refused: \"%.*s\" (%s)", (int)v->len, v->in, why);
        if (strcmp(out, v->out) != 0)
            fail_msg("\"%.*s\" -> \"%s\", expected \"%s\"", (int)v->len,
                     v->in, out, v->out);
        check_fixed_point(out, (size_t)n, v->in, v->len);
    }
}

/* Rule 4 before rule 5: "//..//a" is "/../a" once merged. */
static void
test_merge_then_dots(void **state)
{
    char out[32];
    const char *why;

    (void)state;
    assert_int_equal(run("//..//a", 7, out, 8, &why), -1);
    assert_string_equal(why, R_CLIMB);
    assert_int_equal(run("/a//..//b", 9, out, 10, &why), 2);
    assert_string_equal(out, "/b");
}

/* Every truncation point of every vector: refused, or a fixed point. */
static void
test_prefixes(void **state)
{
    static char out[LONG_MAX_IN + 32];

    (void)state;
    for (size_t i = 0; i < N(vectors); i++) {
        const struct vec *v = &vectors[i];

        for (size_t k = 0; k <= v->len; k++) {
            int n = run(v->in, k, out, k + 1, NULL);

            if (k == 0 || v->in[0] != '/')
                assert_int_equal(n, -1);
            if (n >= 0)
                check_fixed_point(out, (size_t)n, v->in, k);
        }
    }
}

/* Every raw byte after '/', and every escape value in both cases. */
static void
test_every_byte(void **state)
{
    static const char allowed[] = "-._~!$&'()*+,;=:@/";
    char in[8], out[32], want[8];
    const char *why;

    (void)state;
    for (unsigned b = 0; b < 256; b++) {
        int ok = (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z')
                 || (b >= '0' && b <= '9')
                 || (b != 0 && strchr(allowed, (int)b) != NULL);

        in[0] = '/';
        in[1] = (char)b;
        if (!ok || b == '.' || b == '/') {
            int n = run(in, 2, out, 3, &why);

            if (!ok) {
                /* A lone '%' is an escape cut short, not a character. */
                assert_int_equal(n, -1);
                assert_string_equal(why, b == '%' ? R_ESC : R_CHAR);
            } else {
                assert_int_equal(n, 1);     /* "/." and "//" are "/" */
            }
        } else {
            assert_int_equal(run(in, 2, out, 3, NULL), 2);
            assert_memory_equal(out, in, 2);
        }
    }
    for (unsigned b = 0; b < 256; b++) {
        for (int lower = 0; lower < 2; lower++) {
            int unres = (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z')
                        || (b >= '0' && b <= '9') || b == '-' || b == '.'
                        || b == '_' || b == '~';
            int n;

            snprintf(in, sizeof in, lower ? "/a%%%02x" : "/a%%%02X", b);
            n = run(in, 5, out, 6, &why);
            if (b == '/' || b == '\\' || b == 0) {
                assert_int_equal(n, -1);
                assert_string_equal(why, R_ENC);
            } else if (unres) {
                assert_int_equal(n, 3);
                assert_int_equal((unsigned char)out[2], b);
            } else {
                snprintf(want, sizeof want, "/a%%%02X", b);
                assert_int_equal(n, 5);
                assert_string_equal(out, want);
            }
        }
    }
}

/* Every "%25XY" with hex X and Y in any case, raw or with X and Y
 * themselves escaped: refused, whatever XY spells. */
static void
test_double_encoding_all(void **state)
{
    static const char hex[] = "0123456789abcdefABCDEF";
    char in[16], out[32];
    const char *why;
    int refused = 0;

    (void)state;
    for (size_t x = 0; x < sizeof hex - 1; x++) {
        for (size_t y = 0; y < sizeof hex - 1; y++) {
            snprintf(in, sizeof in, "/%%25%c%c", hex[x], hex[y]);
            assert_int_equal(run(in, 6, out, 7, &why), -1);
            assert_string_equal(why, R_DBL);
            snprintf(in, sizeof in, "/a%%25%c%c/b", hex[x], hex[y]);
            assert_int_equal(run(in, 9, out, 10, &why), -1);
            assert_string_equal(why, R_DBL);
            snprintf(in, sizeof in, "/%%25%%%02X%%%02x", (unsigned)hex[x],
                     (unsigned)hex[y]);
            assert_int_equal(run(in, 10, out, 11, &why), -1);
            assert_string_equal(why, R_DBL);
            refused++;
        }
    }
    assert_int_equal(refused, 22 * 22);
    /* Only a hex digit counts: "%252" then any other pchar is kept. */
    for (unsigned b = 1; b < 256; b++) {
        int pchar = (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z')
                    || (b >= '0' && b <= '9')
                    || strchr("-._~!$&'()*+,;=:@", (int)b) != NULL;

        if (!pchar || strchr(hex, (int)b) != NULL)
            continue;
        snprintf(in, sizeof in, "/%%252%c", (char)b);
        assert_int_equal(run(in, 6, out, 7, NULL), 6);
        assert_string_equal(out, in);
    }
}

static void
test_cap_and_arguments(void **state)
{
    char out[32];
    const char *why = NULL;

    (void)state;
    /* The result may be far shorter than the input: cap 2 is enough. */
    assert_int_equal(run("/a/b/../..", 10, out, 2, NULL), 1);
    assert_string_equal(out, "/");
    assert_int_equal(run("/a/b/../..", 10, out, 1, NULL), -1);
    assert_int_equal(run("/a/b/../..", 10, out, 0, NULL), -1);
    assert_int_equal(run("/abc/../d/", 10, out, 4, NULL), 3);
    assert_string_equal(out, "/d/");
    assert_int_equal(run("/abc/../d/", 10, out, 3, NULL), -1);
    assert_int_equal(run("/%7e%7E", 7, out, 4, NULL), 3);
    assert_int_equal(run("/%7e%7E", 7, out, 3, NULL), -1);

    assert_int_equal(path_normalize("/a", 2, NULL, 10, &why), -1);
    assert_non_null(why);
    assert_int_equal(path_normalize("/a", 2, out, sizeof out, NULL), 2);
    assert_int_equal(path_normalize("/a/..", 5, out, sizeof out, NULL), 1);
    assert_int_equal(path_normalize("/..", 3, out, sizeof out, NULL), -1);

    /* Not starting with '/', empty, NULL: refused, and in[0] of an empty
     * input is never read (guarded() puts it on the PROT_NONE page). */
    assert_int_equal(run("", 0, out, 1, &why), -1);
    assert_int_equal(run("a/b", 3, out, 4, NULL), -1);
    assert_int_equal(run("%2F", 3, out, 4, NULL), -1);
    assert_int_equal(run("*", 1, out, 2, NULL), -1);
    assert_int_equal(run("http://h/a", 10, out, 11, NULL), -1);
    why = NULL;
    assert_int_equal(path_normalize(NULL, 0, out, sizeof out, &why), -1);
    assert_non_null(why);
    assert_int_equal(path_normalize(NULL, 5, out, sizeof out, &why), -1);
}

static void
test_long(void **state)
{
    static char in[LONG_MAX_IN], out[LONG_MAX_IN + 32], want[LONG_MAX_IN];
    const char *why;
    size_t k = 0, w = 0;
    int n;

    (void)state;
    /* 1500 segments, then 1500 ".." back to the root. */
    for (int i = 0; i < 1500; i++) {
        in[k++] = '/';
        in[k++] = 'a';
    }
    for (int i = 0; i < 1500; i++) {
        memcpy(in + k, "/..", 3);
        k += 3;
    }
    assert_int_equal(run(in, k, out, k + 1, NULL), 1);
    assert_string_equal(out, "/");
    assert_int_equal(run(in, k, out, 2, NULL), 1);
    /* One ".." more climbs above the root. */
    memcpy(in + k, "/..", 3);
    assert_int_equal(run(in, k + 3, out, k + 4, &why), -1);
    assert_string_equal(why, R_CLIMB);

    /* 2000 escaped letters in one segment decode to 2000 letters. */
    k = 0;
    in[k++] = '/';
    want[w++] = '/';
    for (int i = 0; i < 2000; i++) {
        memcpy(in + k, i % 2 ? "%61" : "%7E", 3);
        k += 3;
        want[w++] = i % 2 ? 'a' : '~';
    }
    n = run(in, k, out, k + 1, NULL);
    assert_int_equal(n, (int)w);
    assert_memory_equal(out, want, w);
    check_fixed_point(out, (size_t)n, in, k);

    /* 8 KiB of slashes is the root; of "./" too. */
    memset(in, '/', sizeof in);
    assert_int_equal(run(in, sizeof in, out, 2, NULL), 1);
    for (size_t i = 1; i + 1 < sizeof in; i += 2) {
        in[i] = '.';
        in[i + 1] = '/';
    }
    assert_int_equal(run(in, sizeof in, out, 2, NULL), 1);

    /* A long ordinary path is kept as it is; a bad byte at its very end
     * is still found. */
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = i % 16 == 0 ? '/' : (char)('a' + i % 16);
    n = run(in, sizeof in, out, sizeof in + 1, NULL);
    assert_int_equal(n, (int)sizeof in);
    assert_memory_equal(out, in, sizeof in);
    in[sizeof in - 1] = ' ';
    assert_int_equal(run(in, sizeof in, out, sizeof in + 1, &why), -1);
    assert_string_equal(why, R_CHAR);
    in[sizeof in - 1] = '%';
    assert_int_equal(run(in, sizeof in, out, sizeof in + 1, &why), -1);
    assert_string_equal(why, R_ESC);
}

/* The routing key: ";params" cut from every segment, nothing else. */
static void
test_route_key(void **state)
{
    static const struct { const char *in, *out; } v[] = {
        { "/admin;x/", "/admin/" },
        { "/admin;jsessionid=1/x;y", "/admin/x" },
        { "/a/b", "/a/b" },
        { "/;x", "/" },
        { "/a;b;c/d;", "/a/d" },
        { "/", "/" },
    };
    char out[64];

    (void)state;
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        size_t n = strlen(v[i].in);
        const char *g = guarded(v[i].in, n);
        size_t m = path_route_key(g, n, out);
        assert_int_equal(m, strlen(v[i].out));
        assert_memory_equal(out, v[i].out, m);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_merge_then_dots),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_every_byte),
        cmocka_unit_test(test_double_encoding_all),
        cmocka_unit_test(test_route_key),
        cmocka_unit_test(test_cap_and_arguments),
        cmocka_unit_test(test_long),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
