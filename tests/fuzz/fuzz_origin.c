/*
 * fuzz_origin.c - libFuzzer target for origin.c.
 *
 * The input is one Origin header value (any bytes, NUL included), copied
 * into an exact-size allocation so ASan sees any read past len.
 * Properties checked (abort on violation):
 *   - origin_normalize returns -1 or the length of a NUL-terminated
 *     output of at most ORIGIN_MAX bytes, lower case, with "://";
 *   - it is idempotent: the output normalises to itself;
 *   - it honours cap: cap n+1 gives the same output, cap n gives -1;
 *   - it is case-insensitive: the upper-cased input gives the same answer;
 *   - origin_allowed over a fixed set (exact entries and two patterns, one
 *     of them catastrophic) agrees with a reference decision written here
 *     by hand over the normalised value, and refuses every malformed one.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "origin.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const exact[] = {
    "https://app.example.com", "HTTP://LocalHost:8080", "https://[::1]:8443",
    "wss://10.0.0.1:443",
};
static const char *const exact_norm[] = {
    "https://app.example.com", "http://localhost:8080", "https://[::1]:8443",
    "wss://10.0.0.1",
};
static const char *const patterns[] = {
    "^https://[a-z0-9-]+\\.example\\.com$",
    "https://(a+)+$",       /* catastrophic on a near miss: match limit */
};

static struct origin_set *
fixed_set(void)
{
    static struct origin_set *s;
    struct strlist a, p;
    char err[256];

    if (s != NULL)
        return s;
    a.v = (char **)(uintptr_t)exact;
    a.n = sizeof exact / sizeof exact[0];
    p.v = (char **)(uintptr_t)patterns;
    p.n = sizeof patterns / sizeof patterns[0];
    s = origin_set_new(&a, &p, err, sizeof err);
    CHECK(s != NULL);
    return s;
}

static int
all_of(const char *p, size_t n, const char *set)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\0' || strchr(set, p[i]) == NULL)
            return 0;
    return 1;
}

static int
has_suffix(const char *s, size_t n, const char *suf)
{
    size_t k = strlen(suf);

    return n >= k && memcmp(s + n - k, suf, k) == 0;
}

/* The decision the fixed set must reach for a normalised origin. */
static int
reference(const char *o, size_t n)
{
    static const char label[] = "abcdefghijklmnopqrstuvwxyz0123456789-";
    size_t pre = strlen("https://"), suf = strlen(".example.com");

    for (size_t i = 0; i < sizeof exact_norm / sizeof exact_norm[0]; i++)
        if (strcmp(o, exact_norm[i]) == 0)
            return 1;
    if (n > pre + suf && memcmp(o, "https://", pre) == 0
        && has_suffix(o, n, ".example.com")
        && all_of(o + pre, n - pre - suf, label))
        return 1;
    if (n > pre && memcmp(o, "https://", pre) == 0
        && all_of(o + pre, n - pre, "a"))
        return 1;
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char out[ORIGIN_MAX + 1], again[ORIGIN_MAX + 1], up_out[ORIGIN_MAX + 1];
    char *in = malloc(size + 1);
    char *up = malloc(size + 1);
    struct origin_set *s = fixed_set();
    int n, m, ok;

    if (in == NULL || up == NULL) {
        free(in);
        free(up);
        return 0;
    }
    /* Exact-size view for the functions under test; the spare byte is
     * never part of len. */
    memcpy(in, data, size);
    for (size_t i = 0; i < size; i++)
        up[i] = (char)(in[i] >= 'a' && in[i] <= 'z' ? in[i] - 32 : in[i]);

    n = origin_normalize(in, size, out, sizeof out);
    m = origin_normalize(up, size, up_out, sizeof up_out);
    CHECK(n == m);
    ok = origin_allowed(s, in, size);
    CHECK(origin_allowed(s, up, size) == ok);

    if (n == -1) {
        CHECK(ok == 0);
    } else {
        CHECK(n >= 0 && n <= ORIGIN_MAX);
        CHECK(strlen(out) == (size_t)n);
        CHECK(strcmp(out, up_out) == 0);
        CHECK(strstr(out, "://") != NULL);
        for (int i = 0; i < n; i++)
            CHECK(!(out[i] >= 'A' && out[i] <= 'Z'));

        m = origin_normalize(out, (size_t)n, again, sizeof again);
        CHECK(m == n && strcmp(out, again) == 0);

        m = origin_normalize(in, size, again, (size_t)n + 1);
        CHECK(m == n && strcmp(out, again) == 0);
        CHECK(origin_normalize(in, size, again, (size_t)n) == -1);

        CHECK(ok == reference(out, (size_t)n));
        CHECK(origin_allowed(s, out, (size_t)n) == ok);
    }
    free(in);
    free(up);
    return 0;
}
