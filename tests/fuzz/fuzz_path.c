/*
 * fuzz_path.c - libFuzzer target for path.c.
 *
 * The input is one request path (any bytes, NUL included), copied into
 * an exact-size allocation so ASan sees any read past len; the output
 * buffer is an exact-size allocation too (cap = len + 1). An input that
 * does not start with '/' is also tried with a '/' put in front.
 * Properties checked (abort on violation):
 *   - path_normalize accepts exactly when a second, deliberately
 *     different reference written here accepts, with the same output.
 *     The reference decodes the whole path into a string first, checks
 *     double encoding and dot segments with parameters on that string,
 *     merges slashes, then runs RFC 3986 §5.2.4 literally with an input
 *     buffer and an output buffer (a ".." that finds the output buffer
 *     empty is a climb above the root);
 *   - a refusal gives one of the documented reasons and writes nothing;
 *   - it is idempotent: the output normalises to itself;
 *   - the output is NUL-terminated, never longer than the input, starts
 *     with '/', has no "//", no "." or ".." segment, no segment starting
 *     with ".;", "..;", ".%3B" or "..%3B", only pchar and '/', escapes
 *     only of bytes that are not unreserved, with upper-case hex, never
 *     %2F, %5C or %00, and no "%25" followed by two hex digits (a
 *     double-encoded escape of anything);
 *   - it honours cap: cap n + 1 gives the same output, cap n gives -1.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "path.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const reasons[] = {
    "invalid character in path", "invalid percent escape",
    "encoded slash, backslash or NUL", "double-encoded path character",
    "path climbs above the root", "dot segment with parameters",
    "path does not start with '/'", "path longer than its buffer",
    "path too long",
};

/* Written differently from path.c on purpose: sets as strings. */
static const char unreserved[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
static const char others_ok[] = "!$&'()*+,;=:@/";
static const char hexdig[] = "0123456789abcdefABCDEF";

static int
in_set(const char *set, unsigned char c)
{
    return c != '\0' && strchr(set, c) != NULL;
}

static unsigned
hexv(unsigned char c)
{
    const char *p = strchr(hexdig, c);
    unsigned v = (unsigned)(p - hexdig);

    return v < 16 ? v : v - 6;          /* "ABCDEF" follow "abcdef" */
}

/*
 * The reference: 1 and the normalised path in ref (NUL-terminated), or 0
 * when refused. ref needs len + 1 bytes; scratch needs 2 * (len + 1).
 */
static int
reference(const char *in, size_t len, char *ref, char *scratch)
{
    char *d = scratch, *m = scratch + len + 1;
    size_t dn = 0, mn = 0, on = 0, i;
    const char *p;

    if (len == 0 || in[0] != '/')
        return 0;

    /* 1. Decode into d: unreserved escapes decoded, others upper-cased. */
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];

        if (c == '%') {
            unsigned v;

            if (i + 2 >= len || !in_set(hexdig, (unsigned char)in[i + 1])
                || !in_set(hexdig, (unsigned char)in[i + 2]))
                return 0;
            v = hexv((unsigned char)in[i + 1]) * 16
                + hexv((unsigned char)in[i + 2]);
            i += 2;
            if (v == '/' || v == '\\' || v == 0)
                return 0;
            if (in_set(unreserved, (unsigned char)v)) {
                d[dn++] = (char)v;
            } else {
                d[dn++] = '%';
                d[dn++] = "0123456789ABCDEF"[v >> 4];
                d[dn++] = "0123456789ABCDEF"[v & 15];
            }
        } else if (in_set(unreserved, c) || in_set(others_ok, c)) {
            d[dn++] = (char)c;
        } else {
            return 0;
        }
    }
    d[dn] = '\0';

    /* 2. Double encoding: every '%' left in d starts a kept escape, so
     * a "%25" then two hex digits in d is an escape encoded twice. */
    for (p = strchr(d, '%'); p != NULL; p = strchr(p + 1, '%'))
        if (strncmp(p, "%25", 3) == 0 && in_set(hexdig, (unsigned char)p[3])
            && in_set(hexdig, (unsigned char)p[4]))
            return 0;

    /* 3. Segments starting ".;", "..;", ".%3B" or "..%3B" (the escape is
     * upper-cased in d). */
    for (p = d; (p = strchr(p, '/')) != NULL; p++)
        if (strncmp(p, "/.;", 3) == 0 || strncmp(p, "/..;", 4) == 0
            || strncmp(p, "/.%3B", 5) == 0 || strncmp(p, "/..%3B", 6) == 0)
            return 0;

    /* 4. Merge runs of '/'. */
    for (i = 0; i < dn; i++)
        if (!(d[i] == '/' && mn > 0 && m[mn - 1] == '/'))
            m[mn++] = d[i];
    m[mn] = '\0';

    /* 5. RFC 3986 §5.2.4, input buffer p, output buffer ref[0..on). */
    p = m;
    while (*p != '\0') {
        if (strncmp(p, "../", 3) == 0) {                        /* A */
            p += 3;
        } else if (strncmp(p, "./", 2) == 0) {
            p += 2;
        } else if (strncmp(p, "/./", 3) == 0) {                 /* B */
            p += 2;
        } else if (strcmp(p, "/.") == 0) {
            p = "/";
        } else if (strncmp(p, "/../", 4) == 0 || strcmp(p, "/..") == 0) {
            p = p[3] == '\0' ? "/" : p + 3;                     /* C */
            if (on == 0)
                return 0;       /* nothing to remove: above the root */
            while (on > 0 && ref[on - 1] != '/')
                on--;
            if (on > 0)
                on--;
        } else if (strcmp(p, ".") == 0 || strcmp(p, "..") == 0) { /* D */
            p += strlen(p);
        } else {                                                /* E */
            size_t k = *p == '/' ? 1 : 0;

            while (p[k] != '\0' && p[k] != '/')
                k++;
            memcpy(ref + on, p, k);
            on += k;
            p += k;
        }
    }
    ref[on] = '\0';
    return 1;
}

/* The properties of an accepted output out[0..n). */
static void
check_output(const char *out, size_t n, size_t len)
{
    CHECK(n >= 1 && n <= len);
    CHECK(strlen(out) == n);
    CHECK(out[0] == '/');
    CHECK(strstr(out, "//") == NULL);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)out[i];

        if (c == '/') {
            const char *s = out + i + 1;

            CHECK(!(s[0] == '.' && (s[1] == '/' || s[1] == '\0')));
            CHECK(!(s[0] == '.' && s[1] == '.'
                    && (s[2] == '/' || s[2] == '\0')));
            CHECK(strncmp(s, ".;", 2) != 0 && strncmp(s, "..;", 3) != 0);
            CHECK(strncmp(s, ".%3B", 4) != 0
                  && strncmp(s, "..%3B", 5) != 0);
        } else if (c == '%') {
            unsigned v;

            CHECK(i + 2 < n);
            CHECK(in_set("0123456789ABCDEF", (unsigned char)out[i + 1]));
            CHECK(in_set("0123456789ABCDEF", (unsigned char)out[i + 2]));
            v = hexv((unsigned char)out[i + 1]) * 16
                + hexv((unsigned char)out[i + 2]);
            CHECK(v != '/' && v != '\\' && v != 0);
            CHECK(!in_set(unreserved, (unsigned char)v));
            if (v == '%' && i + 4 < n)
                CHECK(!(in_set(hexdig, (unsigned char)out[i + 3])
                        && in_set(hexdig, (unsigned char)out[i + 4])));
            i += 2;
        } else {
            CHECK(in_set(unreserved, c) || in_set(others_ok, c));
        }
    }
}

static void
one(const char *in, size_t len)
{
    char *out = malloc(len + 1), *again = malloc(len + 1);
    char *ref = malloc(len + 1), *scratch = malloc(2 * (len + 1));
    const char *why = NULL;
    int n, m, r;

    if (out == NULL || again == NULL || ref == NULL || scratch == NULL)
        goto done;
    memset(out, 0x5a, len + 1);
    n = path_normalize(in, len, out, len + 1, &why);
    r = reference(in, len, ref, scratch);
    if (n == -1) {
        int known = 0;

        for (size_t i = 0; i <= len; i++)       /* a refusal writes nothing */
            CHECK(out[i] == 0x5a);
        CHECK(r == 0);
        CHECK(why != NULL);
        for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
            known |= strcmp(why, reasons[i]) == 0;
        CHECK(known);
        goto done;
    }
    CHECK(r == 1);
    CHECK(strcmp(out, ref) == 0);
    check_output(out, (size_t)n, len);

    /* Idempotence, on an exact-size copy of the output. */
    memcpy(ref, out, (size_t)n);
    m = path_normalize(ref, (size_t)n, again, (size_t)n + 1, NULL);
    CHECK(m == n && memcmp(again, out, (size_t)n + 1) == 0);

    /* cap: exactly enough, then one byte short. */
    m = path_normalize(in, len, again, (size_t)n + 1, NULL);
    CHECK(m == n && memcmp(again, out, (size_t)n + 1) == 0);
    CHECK(path_normalize(in, len, again, (size_t)n, &why) == -1);
    CHECK(why != NULL);

done:
    free(out);
    free(again);
    free(ref);
    free(scratch);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size + 1);

    if (in == NULL)
        return 0;
    memcpy(in + 1, data, size);
    /* The exact-size view starts at in + 1; in[0] is only used for the
     * variant with a '/' put in front, which is one byte longer. */
    one(in + 1, size);
    if (size == 0 || data[0] != '/') {
        in[0] = '/';
        one(in, size + 1);
    }
    free(in);
    return 0;
}
