/*
 * fuzz_field.c - libFuzzer target for field.c (query parameters and
 * cookies as backends read them).
 *
 * The input (any bytes, copied into an exact-size allocation so ASan sees
 * any read past its length) is used as a Cookie header value, as a query
 * string and as a parameter name. Properties checked (abort on
 * violation):
 *   - the cookie iterator agrees with a reference written here the
 *     simplest way (split at ';', trim SP/HTAB, split at the first '=',
 *     trim both, remove one pair of DQUOTEs from the value);
 *   - cookie round trip: the pairs written back as name="value"; and
 *     parsed again give the same names and values;
 *   - field_name_is agrees with a reference that decodes the whole name
 *     first and then folds it, on the input against fixed names and on
 *     every element name of the query;
 *   - field_query_without: the output's elements are exactly the input's
 *     elements that do not name a removed parameter, in order and byte
 *     for byte; no removed name is left; with nothing to remove the
 *     output is the input itself; it honours cap (out_len + 1 works,
 *     out_len fails).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "field.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)
#define MAXEL 256

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct pair {
    const char *n, *v;
    size_t nl, vl;
};

static bool
blank(char c)
{
    return c == ' ' || c == '\t';
}

static void
ref_trim(const char **p, size_t *l)
{
    while (*l && blank(**p)) {
        ++*p;
        --*l;
    }
    while (*l && blank((*p)[*l - 1]))
        --*l;
}

/* The reference cookie parser. Returns the number of pairs. */
static size_t
ref_cookies(const char *s, size_t len, struct pair *out)
{
    size_t n = 0, start = 0;

    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != ';')
            continue;
        const char *e = s + start;
        size_t el = i - start;
        start = i + 1;
        ref_trim(&e, &el);
        if (el == 0 || n == MAXEL)
            continue;
        size_t k = 0;
        while (k < el && e[k] != '=')
            k++;
        struct pair p = { e, e + k + (k < el), k, k < el ? el - k - 1 : 0 };
        ref_trim(&p.n, &p.nl);
        ref_trim(&p.v, &p.vl);
        if (p.vl >= 2 && p.v[0] == '"' && p.v[p.vl - 1] == '"') {
            p.v++;
            p.vl -= 2;
        }
        out[n++] = p;
    }
    return n;
}

static size_t
our_cookies(const char *s, size_t len, struct pair *out)
{
    size_t pos = 0, n = 0;
    struct field f;

    while (n < MAXEL && field_cookie_next(s, len, &pos, &f)) {
        struct pair p = { f.name, f.value, f.name_len, f.value_len };
        out[n++] = p;
    }
    return n;
}

static bool
same_pairs(const struct pair *a, const struct pair *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i].nl != b[i].nl || a[i].vl != b[i].vl
            || memcmp(a[i].n, b[i].n, a[i].nl) != 0
            || memcmp(a[i].v, b[i].v, a[i].vl) != 0)
            return false;
    return true;
}

static void
cookies(const char *s, size_t len)
{
    static struct pair ref[MAXEL], ours[MAXEL], again[MAXEL];
    size_t nr = ref_cookies(s, len, ref);
    size_t no = our_cookies(s, len, ours);

    if (nr == MAXEL || no == MAXEL)
        return;                 /* the reference stops counting there */
    CHECK(nr == no && same_pairs(ref, ours, no));

    /* round trip */
    size_t cap = 4 * len + 8, o = 0;
    char *buf = malloc(cap);
    CHECK(buf != NULL);
    for (size_t i = 0; i < no; i++) {
        CHECK(o + ours[i].nl + ours[i].vl + 5 <= cap);
        memcpy(buf + o, ours[i].n, ours[i].nl);
        o += ours[i].nl;
        buf[o++] = '=';
        buf[o++] = '"';
        memcpy(buf + o, ours[i].v, ours[i].vl);
        o += ours[i].vl;
        buf[o++] = '"';
        buf[o++] = ';';
    }
    size_t na = our_cookies(buf, o, again);
    CHECK(na == no && same_pairs(ours, again, no));
    free(buf);
}

static int
hexv(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Reference folding: decode everything, then drop leading blanks, map
 * ' ' '.' '[' to '_', lower-case. Returns the folded length in out. */
static size_t
ref_fold(const char *s, size_t len, char *out)
{
    size_t d = 0, o = 0, i = 0;
    char *dec = malloc(len + 1);

    CHECK(dec != NULL);
    while (i < len) {
        if (s[i] == '%' && len - i >= 3
            && hexv((unsigned char)s[i + 1]) >= 0
            && hexv((unsigned char)s[i + 2]) >= 0) {
            dec[d++] = (char)(hexv((unsigned char)s[i + 1]) * 16
                              + hexv((unsigned char)s[i + 2]));
            i += 3;
        } else {
            dec[d++] = s[i] == '+' ? ' ' : s[i];
            i++;
        }
    }
    i = 0;
    while (i < d && blank(dec[i]))
        i++;
    for (; i < d; i++) {
        char c = dec[i];
        if (c == ' ' || c == '.' || c == '[')
            c = '_';
        else if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        out[o++] = c;
    }
    free(dec);
    return o;
}

static bool
ref_name_is(const char *raw, size_t len, const char *name)
{
    char *a = malloc(len + 1), *b = malloc(strlen(name) + 1);
    size_t al, bl;
    bool r;

    CHECK(a != NULL && b != NULL);
    al = ref_fold(raw, len, a);
    bl = ref_fold(name, strlen(name), b);
    r = al == bl && memcmp(a, b, al) == 0;
    free(a);
    free(b);
    return r;
}

static const char *const names[] = {
    "access_token", "t", "Access.Token", "a%b", "",
};

static void
name_checks(const char *s, size_t len)
{
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
        CHECK(field_name_is(s, len, names[k]) == ref_name_is(s, len,
                                                             names[k]));
}

static bool
removed(const struct field *f, const char *const *rm, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (field_name_is(f->name, f->name_len, rm[k]))
            return true;
    return false;
}

static void
query(const char *s, size_t len)
{
    static const char *const rm[] = { "access_token", "t" };
    char *out = malloc(len + 1);
    size_t pos = 0, pos2 = 0;
    struct field f, g;
    int n;

    CHECK(out != NULL);
    n = field_query_without(s, len, rm, 2, out, len + 1);
    CHECK(n >= 0 && (size_t)n <= len && out[n] == '\0');
    CHECK(field_query_without(s, len, rm, 2, out, (size_t)n + 1) == n);
    if (n > 0) {
        char tmp[1];
        CHECK(field_query_without(s, len, rm, 2, tmp, 0) == -1);
    }
    /* the output's elements: the kept ones, in order, byte for byte */
    while (field_query_next(s, len, &pos, &f)) {
        name_checks(f.name, f.name_len);
        if (removed(&f, rm, 2))
            continue;
        CHECK(field_query_next(out, (size_t)n, &pos2, &g));
        CHECK(g.raw_len == f.raw_len
              && memcmp(g.raw, f.raw, f.raw_len) == 0);
    }
    CHECK(!field_query_next(out, (size_t)n, &pos2, &g));
    /* nothing removed: the input itself */
    CHECK(field_query_without(s, len, NULL, 0, out, len + 1) == (int)len);
    CHECK(memcmp(out, s, len) == 0);
    free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size ? size : 1);

    if (s == NULL)
        return 0;
    if (size)
        memcpy(s, data, size);
    cookies(s, size);
    query(s, size);
    name_checks(s, size);
    free(s);
    return 0;
}
