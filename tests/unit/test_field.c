/*
 * test_field.c - query parameters and cookies as backends read them:
 * name folding (every spelling some framework reads as the configured
 * name), the query and cookie iterators, and query rewriting that keeps
 * every other byte. Each vector is parsed against a PROT_NONE guard page,
 * whole and cut at every offset: a prefix yields exactly the elements of
 * the whole that end before the cut (the last one possibly shortened),
 * and never reads past its length.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "field.h"
#include "guard.h"

#define N(a) (sizeof (a) / sizeof (a)[0])

static void
test_name_is(void **state)
{
    static const char *const same[] = {
        "access_token", "ACCESS_TOKEN", "Access_Token", "access%5Ftoken",
        "access%5ftoken", "%61ccess_token", "access.token", "access token",
        "access+token", "access%20token", "access[token", "access%2Etoken",
        " access_token", "+access_token", "%20%20access_token",
        "%41CCESS%5FTOKEN",
    };
    static const char *const other[] = {
        "access_tokenx", "xaccess_token", "access_toke", "access-token",
        "access_token ", "access_token+", "access__token", "accesstoken",
        "access%5token", "access%5Gtoken", "access%token",
        "", "access", "token", "%00access_token", "access_t%00oken",
    };

    (void)state;
    for (size_t i = 0; i < N(same); i++) {
        const char *g = guarded(same[i], strlen(same[i]));
        assert_true(field_name_is(g, strlen(same[i]), "access_token"));
    }
    for (size_t i = 0; i < N(other); i++) {
        size_t n = strlen(other[i]);
        const char *g = guarded(other[i], n);
        if (field_name_is(g, n, "access_token"))
            fail_msg("\"%s\" read as access_token", other[i]);
    }
    /* an embedded NUL is a byte like any other */
    assert_false(field_name_is(guarded("access_token\0x", 14), 14,
                               "access_token"));
    /* the configured name is folded too */
    assert_true(field_name_is(guarded("access_token", 12), 12,
                              "Access.Token"));
    /* a cut escape is literal: "%5" is not "_" */
    assert_false(field_name_is(guarded("access%5", 8), 8, "access_"));
    assert_true(field_name_is(guarded("a%", 2), 2, "a%"));
}

struct el {
    const char *name, *value, *raw;
};

typedef int (*next_fn)(const char *, size_t, size_t *, struct field *);

static size_t
collect(next_fn next, const char *in, size_t len, struct field *out,
        size_t cap)
{
    size_t pos = 0, n = 0;
    struct field f;

    while (next(in, len, &pos, &f)) {
        assert_true(pos <= len);
        assert_true(f.raw >= in && f.raw + f.raw_len <= in + len);
        assert_true(f.name >= f.raw
                    && f.name + f.name_len <= f.raw + f.raw_len);
        assert_true(f.value >= f.raw
                    && f.value + f.value_len <= f.raw + f.raw_len);
        assert_true(n < cap);
        out[n++] = f;
    }
    assert_int_equal(pos, len);
    return n;
}

static void
check_elems(next_fn next, const char *in, const struct el *want,
            size_t nwant)
{
    size_t len = strlen(in);
    struct field got[32], whole[32];
    const char *g = guarded(in, len);
    size_t n = collect(next, g, len, got, N(got));

    assert_int_equal(n, nwant);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(got[i].name_len, strlen(want[i].name));
        assert_memory_equal(got[i].name, want[i].name, got[i].name_len);
        assert_int_equal(got[i].value_len, strlen(want[i].value));
        assert_memory_equal(got[i].value, want[i].value, got[i].value_len);
        assert_int_equal(got[i].raw_len, strlen(want[i].raw));
        assert_memory_equal(got[i].raw, want[i].raw, got[i].raw_len);
    }
    memcpy(whole, got, n * sizeof *got);
    /* every cut: the elements that end before it are the whole's */
    for (size_t cut = 0; cut <= len; cut++) {
        struct field part[32];
        const char *gp = guarded(in, cut);
        size_t m = collect(next, gp, cut, part, N(part));
        size_t full = 0;

        while (full < n && (size_t)(whole[full].raw - g)
                           + whole[full].raw_len < cut)
            full++;
        assert_true(m >= full && m <= full + 1);
        for (size_t i = 0; i < full; i++) {
            assert_int_equal(part[i].raw - gp, whole[i].raw - g);
            assert_int_equal(part[i].raw_len, whole[i].raw_len);
        }
    }
}

static void
test_query_next(void **state)
{
    static const struct el v1[] = {
        { "a", "1", "a=1" }, { "b", "", "b=" }, { "c", "", "c" },
        { "d", "x=y", "d=x=y" },
    };
    static const struct el v2[] = {
        { "x", "1", "x=1" }, { "access_token", "T", "access_token=T" },
    };
    static const struct el v3[] = {
        { " a ", " 1 ", " a = 1 " }, { "%5F", "%20", "%5F=%20" },
    };

    (void)state;
    check_elems(field_query_next, "a=1&b=&c&d=x=y", v1, N(v1));
    check_elems(field_query_next, "&&a=1&&b=&c&d=x=y&", v1, N(v1));
    check_elems(field_query_next, "x=1;access_token=T", v2, N(v2));
    check_elems(field_query_next, " a = 1 &%5F=%20", v3, N(v3));
    check_elems(field_query_next, "", NULL, 0);
    check_elems(field_query_next, "&;&", NULL, 0);
}

static void
test_cookie_next(void **state)
{
    static const struct el v1[] = {
        { "a", "1", "a=1" }, { "b", "2", "b=2" },
    };
    static const struct el v2[] = {
        { "access_token", "T", "access_token =T" },
        { "x", "y z", "x = y z" },
    };
    static const struct el v3[] = {
        { "q", "v", "q=\"v\"" }, { "e", "\"", "e=\"" },
        { "n", "", "n" }, { "m", "", "m=" }, { "d", "a=b", "d=a=b" },
    };
    static const struct el v4[] = {
        { "", "x", "=x" }, { "t", "", "t=\"\"" },
    };

    (void)state;
    check_elems(field_cookie_next, "a=1; b=2", v1, N(v1));
    check_elems(field_cookie_next, "a=1;b=2", v1, N(v1));
    check_elems(field_cookie_next, " ; a=1 ;\tb=2 ; ", v1, N(v1));
    check_elems(field_cookie_next, "access_token =T; x = y z", v2, N(v2));
    check_elems(field_cookie_next, "q=\"v\"; e=\"; n; m=; d=a=b", v3,
                N(v3));
    check_elems(field_cookie_next, "=x; t=\"\"", v4, N(v4));
    check_elems(field_cookie_next, "", NULL, 0);
    check_elems(field_cookie_next, " ;; \t; ", NULL, 0);
}

static void
without(const char *in, const char *const *names, size_t n, const char *want)
{
    size_t len = strlen(in);
    char out[256];
    const char *g = guarded(in, len);
    int r = field_query_without(g, len, names, n, out, sizeof out);

    assert_int_equal(r, (int)strlen(want));
    assert_string_equal(out, want);
    /* exactly enough room works; one byte less is refused */
    assert_int_equal(field_query_without(g, len, names, n, out,
                                         strlen(want) + 1), r);
    assert_int_equal(field_query_without(g, len, names, n, out,
                                         strlen(want)), -1);
}

static void
test_query_without(void **state)
{
    static const char *const tok[] = { "access_token" };
    static const char *const two[] = { "access_token", "t" };

    (void)state;
    without("access_token=T", tok, 1, "");
    without("a=1&access_token=T", tok, 1, "a=1");
    without("access_token=T&a=1", tok, 1, "a=1");
    without("a=1&access_token=T&b=%20&c", tok, 1, "a=1&b=%20&c");
    without("&access_token=T&", tok, 1, "");
    without("a=1;access_token=T;b=2", tok, 1, "a=1;b=2");
    without("a=1&&access_token=T&&b", tok, 1, "a=1&&&b");
    without("ACCESS%5FTOKEN=T&a", tok, 1, "a");
    without("a&access.token=T", tok, 1, "a");
    without("t=1&a=2&access_token=3&t", two, 2, "a=2");
    without("access_token", tok, 1, "");
    /* nothing to remove: byte for byte, odd separators and all */
    without("a=1&&b;c=%2F&", tok, 1, "a=1&&b;c=%2F&");
    without("access_tokenx=1&xaccess_token=2", tok, 1,
            "access_tokenx=1&xaccess_token=2");
    without("", tok, 1, "");
    without("a=1", NULL, 0, "a=1");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_name_is),
        cmocka_unit_test(test_query_next),
        cmocka_unit_test(test_cookie_next),
        cmocka_unit_test(test_query_without),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
