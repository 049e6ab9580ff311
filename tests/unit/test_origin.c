/*
 * test_origin.c - Origin normalisation and the allowlist, with an attack
 * corpus: suffix and prefix tricks, userinfo, paths, control bytes,
 * overlong values, and a catastrophic-backtracking pattern that must be
 * cut off by the match limit rather than stall the test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <pthread.h>

#include "origin.h"

#define N(a) (sizeof (a) / sizeof (a)[0])

/* Build a set from NULL-terminated lists; fails the test on error. */
static struct origin_set *
make_set(const char *const *allow, const char *const *pat)
{
    struct strlist a = { 0 }, p = { 0 };
    char err[256] = "";
    struct origin_set *s;

    while (allow != NULL && allow[a.n] != NULL)
        a.n++;
    while (pat != NULL && pat[p.n] != NULL)
        p.n++;
    a.v = (char **)(uintptr_t)allow;
    p.v = (char **)(uintptr_t)pat;
    s = origin_set_new(&a, &p, err, sizeof err);
    if (s == NULL)
        fail_msg("origin_set_new: %s", err);
    return s;
}

static int
allowed(const struct origin_set *s, const char *o)
{
    return origin_allowed(s, o, strlen(o));
}

static void
test_normalize_good(void **state)
{
    static const struct { const char *in, *out; } v[] = {
        { "https://app.example.com", "https://app.example.com" },
        { "HTTPS://APP.EXAMPLE.COM", "https://app.example.com" },
        { "HtTpS://App.Example.Com:443", "https://app.example.com" },
        { "https://app.example.com:8443", "https://app.example.com:8443" },
        { "http://app.example.com:80", "http://app.example.com" },
        { "http://app.example.com:443", "http://app.example.com:443" },
        { "https://app.example.com:80", "https://app.example.com:80" },
        { "wss://a.example.com:443", "wss://a.example.com" },
        { "ws://a.example.com:80", "ws://a.example.com" },
        { "https://127.0.0.1", "https://127.0.0.1" },
        { "http://10.0.0.1:8080", "http://10.0.0.1:8080" },
        { "https://[::1]:8443", "https://[::1]:8443" },
        { "https://[::1]:443", "https://[::1]" },
        { "https://[0:0:0:0:0:0:0:1]", "https://[::1]" },
        { "https://[2001:DB8::A]", "https://[2001:db8::a]" },
        { "https://[::ffff:1.2.3.4]", "https://[::ffff:1.2.3.4]" },
        { "chrome-extension://abcdef", "chrome-extension://abcdef" },
        { "a+b.c-d://h", "a+b.c-d://h" },
        { "https://localhost:65535", "https://localhost:65535" },
        { "https://x:1", "https://x:1" },
        { "https://xn--bcher-kva.example", "https://xn--bcher-kva.example" },
        { "https://a-.-b.example", "https://a-.-b.example" },
    };
    char out[ORIGIN_MAX + 1];

    (void)state;
    for (size_t i = 0; i < N(v); i++) {
        int n = origin_normalize(v[i].in, strlen(v[i].in), out, sizeof out);

        if (n < 0)
            fail_msg("rejected: %s", v[i].in);
        assert_string_equal(out, v[i].out);
        assert_int_equal(n, (int)strlen(v[i].out));
    }
}

static void
test_normalize_bad(void **state)
{
    static const char *const bad[] = {
        "", "null", "NULL", "Null", "https://", "https:/app.example.com",
        "https:app.example.com", "://app.example.com", "1https://a.com",
        "https ://a.com", "ht_tp://a.com",
        "https://user@app.example.com", "https://user:pw@app.example.com",
        "https://app.example.com/", "https://app.example.com/path",
        "https://app.example.com?", "https://app.example.com#x",
        "https://evil.com/https://app.example.com",
        " https://app.example.com", "https://app.example.com ",
        "https://app.example.com\r\n", "https://app.example.com\n",
        "https://app.example.com\r\nX-Evil: 1", "https://app .example.com",
        "https://app.example.com\t", "https://app%2eexample.com",
        "https://app.example.com.", "https://.app.example.com",
        "https://app..example.com", "https://app_x.example.com",
        "https://app.example.com:", "https://app.example.com:0",
        "https://app.example.com:0443", "https://app.example.com:65536",
        "https://app.example.com:99999", "https://app.example.com:123456",
        "https://app.example.com:-1", "https://app.example.com:+443",
        "https://app.example.com:443:443", "https://app.example.com:44a",
        "https://[::1", "https://::1", "https://[]", "https://[::1]]",
        "https://[::1]x", "https://[::1%eth0]", "https://[::1%25eth0]",
        "https://[fe80::1%25lo]:443", "https://[1.2.3.4]", "https://[g::1]",
        "https://:443", "https://1.2.3", "https://1.2.3.4.5",
        "https://256.1.1.1", "https://01.2.3.4", "https://127.1",
        "https://123", "https://example.123", "https://0x7f.0.0.1",
        "https://app.\xc3\xa9xample.com", "https://\x7f",
        "https://a\\b.com", "https://a.com\\", "https://a.com:443/",
        "https://" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        ".example.com",                 /* 64-byte label */
    };
    char out[ORIGIN_MAX + 1];

    (void)state;
    for (size_t i = 0; i < N(bad); i++) {
        memset(out, 'X', sizeof out);
        if (origin_normalize(bad[i], strlen(bad[i]), out, sizeof out) != -1)
            fail_msg("accepted: \"%s\" -> \"%s\"", bad[i], out);
    }
}

static void
test_normalize_nul_and_length(void **state)
{
    static const char nul[] = "https://app.example.com\0.evil.net";
    static const char nul_host[] = "https://app\0.example.com";
    static const char nul_ip6[] = "https://[::1\0]";
    char big[ORIGIN_MAX + 2];
    char out[ORIGIN_MAX + 1];
    size_t pre = strlen("https://");

    (void)state;
    assert_int_equal(origin_normalize(nul, sizeof nul - 1, out, sizeof out),
                     -1);
    assert_int_equal(origin_normalize(nul_host, sizeof nul_host - 1, out,
                                      sizeof out), -1);
    assert_int_equal(origin_normalize(nul_ip6, sizeof nul_ip6 - 1, out,
                                      sizeof out), -1);

    /* A host of 63-byte labels, exactly ORIGIN_MAX and then one more. */
    memcpy(big, "https://", pre);
    for (size_t i = pre; i < sizeof big; i++)
        big[i] = (i - pre) % 64 == 63 ? '.' : 'a';
    big[ORIGIN_MAX - 1] = 'a';
    big[ORIGIN_MAX] = 'a';
    assert_int_equal(origin_normalize(big, ORIGIN_MAX, out, sizeof out),
                     ORIGIN_MAX);
    assert_int_equal(origin_normalize(big, ORIGIN_MAX + 1, out, sizeof out),
                     -1);

    /* Output capacity is honoured: exactly enough, then one short. */
    assert_int_equal(origin_normalize("https://a.b:443", 15, out, 12), 11);
    assert_string_equal(out, "https://a.b");
    assert_int_equal(origin_normalize("https://a.b:443", 15, out, 11), -1);
    assert_int_equal(origin_normalize("https://a.b", 11, out, 0), -1);
    assert_int_equal(origin_normalize(NULL, 0, out, sizeof out), -1);
}

/* A long scheme plus an IPv6 literal whose canonical form is one byte
 * longer than written ("1::2:..." -> "1:0:2:..."): the result would
 * exceed ORIGIN_MAX, so it is refused instead of producing an output
 * that itself does not normalise. */
static void
test_normalize_idempotent_limit(void **state)
{
    const char *tail = "://[1::2:3:4:5:6:7]";
    char in[ORIGIN_MAX + 1], out[ORIGIN_MAX + 2], again[ORIGIN_MAX + 1];
    size_t tl = strlen(tail), sl = ORIGIN_MAX - tl;
    int n;

    (void)state;
    memset(in, 'a', sl);
    memcpy(in + sl, tail, tl);
    assert_int_equal(origin_normalize(in, ORIGIN_MAX, out, sizeof out), -1);
    /* One byte shorter fits, and normalising again changes nothing. */
    n = origin_normalize(in + 1, ORIGIN_MAX - 1, out, sizeof out);
    assert_int_equal(n, ORIGIN_MAX);
    assert_int_equal(origin_normalize(out, (size_t)n, again, sizeof again),
                     n);
    assert_string_equal(out, again);
}

static void
test_exact(void **state)
{
    static const char *const allow[] = {
        "https://app.example.com", "HTTP://Legacy.Example.com:80",
        "https://[::1]:8443", "https://192.0.2.7", "wss://z.example.com:443",
        NULL,
    };
    static const char *const yes[] = {
        "https://app.example.com", "HTTPS://APP.EXAMPLE.COM",
        "https://App.Example.Com:443", "http://legacy.example.com",
        "http://LEGACY.example.com:80", "https://[::1]:8443",
        "https://[0::1]:8443", "https://192.0.2.7:443", "wss://z.example.com",
    };
    static const char *const no[] = {
        "https://app.example.com.evil.net", "https://evilapp.example.com",
        "https://evil.com/https://app.example.com",
        "https://app.example.com.", "http://app.example.com",
        "https://app.example.com:8443", "https://app.example.com:80",
        "https://legacy.example.com", "https://user@app.example.com",
        "https://app.example.com/", "https://[::1]", "https://[::1]:443",
        "https://192.0.2.70", "null", "", "https://",
        "https://app.example.co", "ttps://app.example.com",
        "https://app.example.com\r\n", "wss://app.example.com",
    };
    struct origin_set *s = make_set(allow, NULL);

    (void)state;
    assert_int_equal(origin_active(s), 1);
    for (size_t i = 0; i < N(yes); i++)
        if (!allowed(s, yes[i]))
            fail_msg("refused: %s", yes[i]);
    for (size_t i = 0; i < N(no); i++)
        if (allowed(s, no[i]))
            fail_msg("allowed: %s", no[i]);
    /* NUL inside: the prefix is allowed, the whole value is not. */
    assert_int_equal(origin_allowed(s, "https://app.example.com\0x", 25), 0);
    assert_int_equal(origin_allowed(s, "https://app.example.com\0x", 23), 1);
    origin_set_free(s);
}

static void
test_patterns(void **state)
{
    static const char *const pat[] = {
        "^https://[a-z0-9-]+\\.example\\.com$",
        "https://app\\.example\\.org",      /* unanchored as written */
        "http://localhost:(3000|8080)",
        NULL,
    };
    static const char *const yes[] = {
        "https://a.example.com", "https://A.EXAMPLE.COM:443",
        "https://app-1.example.com", "https://app.example.org",
        "HTTPS://APP.EXAMPLE.ORG", "https://app.example.org:443",
        "http://localhost:3000", "http://localhost:8080",
    };
    static const char *const no[] = {
        "https://a.b.example.com", "https://example.com",
        "https://.example.com", "https://a.example.com.evil.net",
        "https://a.example.com:8443", "http://a.example.com",
        "https://evil.net/https://a.example.com",
        "https://a.example.com/", "https://x.https://a.example.com",
        "https://app.example.org.evil.net", "https://evilapp.example.org",
        "xhttps://app.example.org", "https://app.example.org:8443",
        "https://app.example.org/", "https://user@app.example.org",
        "http://localhost:30001", "http://localhost:3000.evil.net",
        "http://localhost", "null", "",
        "https://a.example.com\n", "https://a.example.com\r\n",
    };
    struct origin_set *s = make_set(NULL, pat);

    (void)state;
    assert_int_equal(origin_active(s), 1);
    for (size_t i = 0; i < N(yes); i++)
        if (!allowed(s, yes[i]))
            fail_msg("refused: %s", yes[i]);
    for (size_t i = 0; i < N(no); i++)
        if (allowed(s, no[i]))
            fail_msg("allowed: %s", no[i]);
    origin_set_free(s);
}

/* The match limit must not refuse a legitimate origin of the greatest
 * length against patterns with ordinary repeats and backtracking. */
static void
test_long_legit_origin(void **state)
{
    static const char *const pat[] = {
        "https://([a-z0-9-]+\\.)*example\\.com",
        "https://.*\\.example\\.com(:[0-9]+)?",
        "https://(?:[a-z]|[0-9]|-|\\.)+\\.example\\.com",
        NULL,
    };
    char in[ORIGIN_MAX + 1];
    size_t pre = strlen("https://"), suf = strlen(".example.com");

    (void)state;
    memcpy(in, "https://", pre);
    for (size_t i = pre; i < ORIGIN_MAX - suf; i++)
        in[i] = (i - pre) % 8 == 7 ? '.' : 'a';
    in[ORIGIN_MAX - suf - 1] = 'a';
    memcpy(in + ORIGIN_MAX - suf, ".example.com", suf + 1);
    assert_int_equal(strlen(in), ORIGIN_MAX);
    for (size_t i = 0; pat[i] != NULL; i++) {
        const char *one[] = { pat[i], NULL };
        struct origin_set *s = make_set(NULL, one);

        if (!allowed(s, in))
            fail_msg("refused by %s", pat[i]);
        origin_set_free(s);
    }
}

/* The issue's own example: an anchored and an unanchored spelling of the
 * same pattern, each alone, must both refuse the suffix trick. */
static void
test_suffix_trick(void **state)
{
    static const char *const anchored[] = {
        "^https://app\\.example\\.com$", NULL,
    };
    static const char *const bare[] = { "https://app\\.example\\.com", NULL };
    static const char *const exact[] = { "https://app.example.com", NULL };
    const char *const *sets[][2] = {
        { NULL, anchored }, { NULL, bare }, { exact, NULL },
    };

    (void)state;
    for (size_t i = 0; i < N(sets); i++) {
        struct origin_set *s = make_set(sets[i][0], sets[i][1]);

        assert_int_equal(allowed(s, "https://app.example.com"), 1);
        assert_int_equal(allowed(s, "HTTPS://APP.EXAMPLE.COM:443"), 1);
        assert_int_equal(allowed(s, "https://app.example.com.evil.net"), 0);
        assert_int_equal(allowed(s, "https://app.example.com:443.evil.net"),
                         0);
        assert_int_equal(allowed(s,
                         "https://evil.com/https://app.example.com"), 0);
        assert_int_equal(allowed(s, "https://evilapp.example.com"), 0);
        assert_int_equal(allowed(s, "https://app.example.com:8443"), 0);
        assert_int_equal(allowed(s, "http://app.example.com"), 0);
        origin_set_free(s);
    }
}

/* "(a+)+$" against "https://aaaa...!" backtracks exponentially without a
 * limit; with it the match gives up (refuses) quickly. */
static void
test_pathological_pattern(void **state)
{
    static const char *const pat[] = { "https://(a+)+$", NULL };
    static const char *const pat2[] = { "(.*a){20}", NULL };
    char in[ORIGIN_MAX + 1];
    struct origin_set *s = make_set(NULL, pat);
    struct origin_set *s2 = make_set(NULL, pat2);
    struct timespec t0, t1;
    size_t n = strlen("https://");
    double ms;

    (void)state;
    memcpy(in, "https://", n);
    memset(in + n, 'a', 60);
    memcpy(in + n + 60, ".b", 3);
    assert_int_equal(allowed(s, "https://aaaa"), 1);
    /* PCRE2's own default limit (10 million) also ends these, after
     * ~15 ms each; a hundred rounds tell our limit from that one. */
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(allowed(s, in), 0);
        assert_int_equal(allowed(s2, in), 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3
        + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    if (ms > 1000.0)
        fail_msg("200 pathological matches took %.0f ms", ms);
    origin_set_free(s);
    origin_set_free(s2);
}

static void
test_load_errors(void **state)
{
    static const char *const bad_allow[] = {
        "https://app.example.com/", "null", "app.example.com", "https://",
        "https://user@app.example.com", "*",
    };
    static const char *const good[] = { "https://ok.example.com", NULL };
    char err[256];

    (void)state;
    for (size_t i = 0; i < N(bad_allow); i++) {
        const char *v[] = { good[0], bad_allow[i] };
        struct strlist a = { (char **)(uintptr_t)v, 2 };

        err[0] = '\0';
        assert_null(origin_set_new(&a, NULL, err, sizeof err));
        assert_non_null(strstr(err, bad_allow[i]));
    }

    {
        const char *v[] = { "^https://ok\\.example\\.com$", "https://(a" };
        struct strlist p = { (char **)(uintptr_t)v, 2 };

        err[0] = '\0';
        assert_null(origin_set_new(NULL, &p, err, sizeof err));
        assert_non_null(strstr(err, "pattern 'https://(a': "));
        assert_non_null(strstr(err, " at offset 10"));
    }
    /* A tiny error buffer truncates, never overflows. */
    {
        const char *v[] = { "[z-a]" };
        struct strlist p = { (char **)(uintptr_t)v, 1 };
        char small[8];

        memset(small, 'X', sizeof small);
        assert_null(origin_set_new(NULL, &p, small, sizeof small));
        assert_int_equal(small[sizeof small - 1], '\0');
    }
}

static void
test_pattern_check(void **state)
{
    static const char *const good[] = {
        "^https://[a-z0-9-]+\\.example\\.com$", "https://app\\.example\\.com",
        "(a+)+$", ".*", "",
    };
    static const char *const bad[] = {
        "(", "[a-", "a{2,1}", "*", "(?<n", "\\", "(?P<x>a)(?P<x>b)",
    };
    char err[256];

    (void)state;
    for (size_t i = 0; i < N(good); i++) {
        err[0] = '\0';
        assert_int_equal(origin_pattern_check(good[i], err, sizeof err), 0);
        assert_string_equal(err, "");
    }
    for (size_t i = 0; i < N(bad); i++) {
        char want[64];

        err[0] = '\0';
        assert_int_equal(origin_pattern_check(bad[i], err, sizeof err), -1);
        snprintf(want, sizeof want, "pattern '%s': ", bad[i]);
        assert_non_null(strstr(err, want));
        assert_non_null(strstr(err, " at offset "));
    }
    assert_int_equal(origin_pattern_check("(", NULL, 0), -1);
}

static void
test_empty_set(void **state)
{
    struct strlist none = { NULL, 0 };
    char err[64];
    struct origin_set *s;

    (void)state;
    s = origin_set_new(&none, &none, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(origin_active(s), 0);
    assert_int_equal(allowed(s, "https://app.example.com"), 0);
    origin_set_free(s);

    s = origin_set_new(NULL, NULL, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(origin_active(s), 0);
    origin_set_free(s);

    assert_int_equal(origin_active(NULL), 0);
    assert_int_equal(allowed(NULL, "https://app.example.com"), 0);
    origin_set_free(NULL);
}

/* Many exact entries: the sorted lookup finds each one and nothing else. */
static void
test_many_exact(void **state)
{
    enum { COUNT = 200 };
    char *v[COUNT];
    char buf[64];
    struct strlist a = { v, COUNT };
    char err[128];
    struct origin_set *s;

    (void)state;
    for (int i = 0; i < COUNT; i++) {
        snprintf(buf, sizeof buf, "HTTPS://h%d.example.com:%d", (i * 7919)
                 % COUNT, i % 2 ? 443 : 8000 + i);
        v[i] = strdup(buf);
        assert_non_null(v[i]);
    }
    s = origin_set_new(&a, NULL, err, sizeof err);
    assert_non_null(s);
    for (int i = 0; i < COUNT; i++) {
        /* odd entries were written with the default port */
        if (i % 2)
            snprintf(buf, sizeof buf, "https://h%d.example.com",
                     (i * 7919) % COUNT);
        else
            snprintf(buf, sizeof buf, "https://h%d.example.com:%d",
                     (i * 7919) % COUNT, 8000 + i);
        assert_int_equal(allowed(s, buf), 1);
        snprintf(buf, sizeof buf, "https://h%d.example.com:1",
                 (i * 7919) % COUNT);
        assert_int_equal(allowed(s, buf), 0);
    }
    origin_set_free(s);
    for (int i = 0; i < COUNT; i++)
        free(v[i]);
}

/* Workers share one set: concurrent lookups (exact, JIT patterns and a
 * limit-hitting one) give the same answers as alone. Run under
 * -fsanitize=thread to check there is no shared mutable state. */
struct worker_arg {
    const struct origin_set *s;
    int bad;
};

static void *
worker_run(void *p)
{
    struct worker_arg *w = p;
    static const struct { const char *o; int ok; } v[] = {
        { "https://app.example.com", 1 }, { "https://b.example.com:443", 1 },
        { "https://b.c.example.com", 0 }, { "https://aaaa", 1 },
        { "https://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.b", 0 },
        { "null", 0 }, { "https://app.example.com.evil.net", 0 },
    };

    for (int i = 0; i < 2000; i++) {
        size_t k = (size_t)i % (sizeof v / sizeof v[0]);

        if (allowed(w->s, v[k].o) != v[k].ok)
            w->bad++;
    }
    return NULL;
}

static void
test_threads(void **state)
{
    static const char *const allow[] = { "https://app.example.com", NULL };
    static const char *const pat[] = {
        "https://[a-z0-9-]+\\.example\\.com", "https://(a+)+$", NULL,
    };
    struct origin_set *s = make_set(allow, pat);
    pthread_t t[4];
    struct worker_arg w[4];

    (void)state;
    for (int i = 0; i < 4; i++) {
        w[i].s = s;
        w[i].bad = 0;
        assert_int_equal(pthread_create(&t[i], NULL, worker_run, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(w[i].bad, 0);
    }
    origin_set_free(s);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normalize_good),
        cmocka_unit_test(test_normalize_bad),
        cmocka_unit_test(test_normalize_nul_and_length),
        cmocka_unit_test(test_normalize_idempotent_limit),
        cmocka_unit_test(test_exact),
        cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_long_legit_origin),
        cmocka_unit_test(test_suffix_trick),
        cmocka_unit_test(test_pathological_pattern),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_pattern_check),
        cmocka_unit_test(test_empty_set),
        cmocka_unit_test(test_many_exact),
        cmocka_unit_test(test_threads),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
