/*
 * origin.c - the Origin allowlist: exact origins in a sorted array
 * (bsearch) and PCRE2 patterns compiled once at load. See origin.h for
 * the contracts.
 *
 * Everything in a struct origin_set is written by origin_set_new() and
 * only read afterwards: the compiled patterns and the match context are
 * shared by every worker thread (PCRE2 documents both as safe to share
 * while unmodified); the only per-match state, the match data, is made
 * per call. The JIT needs a stack per thread; without a JIT stack in the
 * match context PCRE2 uses 32 KiB of the calling thread's own stack.
 *
 * Patterns see the normalised origin, which is all lower case (scheme,
 * host, IPv6 hex digits). They are compiled caseless too, because scheme
 * and host compare case-insensitively: "^https://App\.example\.com$"
 * matches "https://app.example.com" as a user would expect.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "origin.h"

#include <arpa/inet.h>
#include <pcre2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Bounds on one pattern match. A normalised origin is at most ORIGIN_MAX
 * bytes, so a sane pattern needs far fewer steps than this; a pattern
 * with nested repeats such as "(a+)+$" would otherwise backtrack
 * exponentially and stall a worker. Reaching a limit refuses the origin.
 */
#define ORIGIN_MATCH_LIMIT 10000
#define ORIGIN_DEPTH_LIMIT 10000

/* Longest bracketed IPv6 literal inet_pton can accept, with its NUL:
 * "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255". */
#define ORIGIN_IP6_MAX 46

struct origin_pattern {
    char *src;                  /* owned; as written, for messages */
    pcre2_code *code;           /* owned; shared read-only by workers */
};

struct origin_set {
    char **exact;               /* owned, normalised, sorted by strcmp */
    size_t n_exact;
    struct origin_pattern *pat; /* owned */
    size_t n_pat;
    pcre2_match_context *mctx;  /* owned; limits; NULL when n_pat == 0 */
};

static int
is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static char
to_lower(unsigned char c)
{
    return (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
}

/*
 * Append n bytes to out (cap bytes, *o used), lower-casing them. Returns
 * -1 when they do not fit with room left for the NUL.
 */
static int
put_lower(char *out, size_t cap, size_t *o, const char *p, size_t n)
{
    if (n >= cap - *o)
        return -1;
    for (size_t i = 0; i < n; i++)
        out[*o + i] = to_lower((unsigned char)p[i]);
    *o += n;
    return 0;
}

/*
 * A DNS name: dot-separated labels of letters, digits and '-', each 1-63
 * bytes (RFC 1035). No empty label, so no leading, trailing or doubled
 * dot: "example.com." names the same host as "example.com", and
 * accepting both would let one origin have two spellings.
 */
static int
valid_reg_name(const char *h, size_t n)
{
    size_t label = 0;

    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];

        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
        } else if (is_alpha(c) || is_digit(c) || c == '-') {
            if (++label > 63)
                return 0;
        } else {
            return 0;
        }
    }
    return label != 0;
}

/*
 * A host whose last label is all digits is an IPv4 address or nothing:
 * the WHATWG URL parser treats it as one, so a browser never sends
 * "example.123", and "127.1" or "0x7f.0.0.1" would be other spellings
 * of 127.0.0.1. Only the dotted quad inet_pton accepts (no leading
 * zeros in glibc) passes.
 */
static int
last_label_numeric(const char *h, size_t n)
{
    size_t i = n;

    while (i > 0 && h[i - 1] != '.')
        i--;
    if (i == n)
        return 0;
    for (size_t j = i; j < n; j++)
        if (!is_digit((unsigned char)h[j]))
            return 0;
    return 1;
}

static int
valid_ipv4(const char *h, size_t n)
{
    char buf[INET_ADDRSTRLEN];
    struct in_addr a;

    if (n >= sizeof buf)
        return 0;
    memcpy(buf, h, n);
    buf[n] = '\0';
    return inet_pton(AF_INET, buf, &a) == 1;
}

/*
 * Port: 1-65535 in decimal without a leading zero, so each port has one
 * spelling (":0443" is not ":443"). Returns the value or -1.
 */
static long
parse_port(const char *p, size_t n)
{
    long v = 0;

    if (n == 0 || n > 5 || p[0] == '0')
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit((unsigned char)p[i]))
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v >= 1 && v <= 65535 ? v : -1;
}

static long
default_port(const char *scheme, size_t n)
{
    if ((n == 5 && memcmp(scheme, "https", 5) == 0)
        || (n == 3 && memcmp(scheme, "wss", 3) == 0))
        return 443;
    if ((n == 4 && memcmp(scheme, "http", 4) == 0)
        || (n == 2 && memcmp(scheme, "ws", 2) == 0))
        return 80;
    return -1;
}

int
origin_normalize(const char *in, size_t len, char *out, size_t cap)
{
    size_t i = 0, o = 0, slen, hstart, hlen;

    if (in == NULL || out == NULL || cap == 0 || len > ORIGIN_MAX)
        return -1;
    /* RFC 6454 §7.3: an opaque origin serialises as "null"; it names no
     * site, so it can never be on an allowlist. */
    if (len == 4 && to_lower((unsigned char)in[0]) == 'n'
        && to_lower((unsigned char)in[1]) == 'u'
        && to_lower((unsigned char)in[2]) == 'l'
        && to_lower((unsigned char)in[3]) == 'l')
        return -1;

    /* scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) (RFC 3986) */
    if (len == 0 || !is_alpha((unsigned char)in[0]))
        return -1;
    while (i < len && (is_alpha((unsigned char)in[i])
                       || is_digit((unsigned char)in[i])
                       || in[i] == '+' || in[i] == '-' || in[i] == '.'))
        i++;
    slen = i;
    if (len - i < 3 || memcmp(in + i, "://", 3) != 0)
        return -1;
    if (put_lower(out, cap, &o, in, slen + 3) == -1)
        return -1;
    i += 3;

    /* host: everything up to an optional ":port". Any other byte
     * (userinfo '@', path '/', '?', '#', '%', spaces, controls, NUL)
     * makes the value malformed, never silently cut off. */
    hstart = i;
    if (i < len && in[i] == '[') {
        char ip6[ORIGIN_IP6_MAX];
        char canon[INET6_ADDRSTRLEN];
        struct in6_addr a6;
        const char *close = memchr(in + i, ']', len - i);

        if (close == NULL)
            return -1;
        hlen = (size_t)(close - (in + i)) - 1;
        if (hlen == 0 || hlen >= sizeof ip6)
            return -1;
        memcpy(ip6, in + i + 1, hlen);
        ip6[hlen] = '\0';
        /* inet_pton stops at nothing but its own grammar, and a NUL
         * inside would end the string early: refuse it first. */
        if (memchr(ip6, '\0', hlen) != NULL
            || inet_pton(AF_INET6, ip6, &a6) != 1
            || inet_ntop(AF_INET6, &a6, canon, sizeof canon) == NULL)
            return -1;
        /* One spelling per address, as a browser serialises it, so
         * "[0:0::1]" in the configuration equals "[::1]" on the wire. */
        if (put_lower(out, cap, &o, "[", 1) == -1
            || put_lower(out, cap, &o, canon, strlen(canon)) == -1
            || put_lower(out, cap, &o, "]", 1) == -1)
            return -1;
        i = (size_t)(close - in) + 1;
    } else {
        while (i < len && in[i] != ':')
            i++;
        hlen = i - hstart;
        if (!valid_reg_name(in + hstart, hlen))
            return -1;
        if (last_label_numeric(in + hstart, hlen)
            && !valid_ipv4(in + hstart, hlen))
            return -1;
        if (put_lower(out, cap, &o, in + hstart, hlen) == -1)
            return -1;
    }

    if (i < len) {
        long port;

        if (in[i] != ':')
            return -1;
        port = parse_port(in + i + 1, len - i - 1);
        if (port == -1)
            return -1;
        if (port != default_port(out, slen)
            && put_lower(out, cap, &o, in + i, len - i) == -1)
            return -1;
    }
    /* IPv6 canonical form can be a byte longer than what was written;
     * the result must itself be a valid input, so that normalising is
     * idempotent. */
    if (o > ORIGIN_MAX)
        return -1;
    out[o] = '\0';
    return (int)o;
}

/*
 * Compile one pattern the only way wsguard ever uses it: anchored at
 * both ends, so it must match the whole normalised origin. Returns NULL
 * with "pattern 'X': <PCRE2 message> at offset N" in err.
 */
static pcre2_code *
compile_pattern(const char *pattern, char *err, size_t cap)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re;

    re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                       PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_CASELESS,
                       &code, &off,
                       NULL);
    if (re == NULL && err != NULL && cap > 0) {
        PCRE2_UCHAR msg[256];

        if (pcre2_get_error_message(code, msg, sizeof msg) < 0)
            snprintf((char *)msg, sizeof msg, "error %d", code);
        snprintf(err, cap, "pattern '%s': %s at offset %zu", pattern,
                 (char *)msg, (size_t)off);
    }
    return re;
}

int
origin_pattern_check(const char *pattern, char *err, size_t cap)
{
    pcre2_code *re = compile_pattern(pattern, err, cap);

    if (re == NULL)
        return -1;
    pcre2_code_free(re);
    return 0;
}

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void
origin_set_free(struct origin_set *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n_exact; i++)
        free(s->exact[i]);
    free(s->exact);
    for (size_t i = 0; i < s->n_pat; i++) {
        pcre2_code_free(s->pat[i].code);
        free(s->pat[i].src);
    }
    free(s->pat);
    pcre2_match_context_free(s->mctx);
    free(s);
}

static int
add_exact(struct origin_set *s, const char *item, char *err, size_t cap)
{
    char norm[ORIGIN_MAX + 1];
    int n = origin_normalize(item, strlen(item), norm, sizeof norm);

    if (n == -1) {
        snprintf(err, cap, "allow '%s': not an origin "
                 "(scheme://host[:port], no path; \"null\" is never "
                 "allowed)", item);
        return -1;
    }
    s->exact[s->n_exact] = strdup(norm);
    if (s->exact[s->n_exact] == NULL) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    s->n_exact++;
    return 0;
}

static int
add_pattern(struct origin_set *s, const char *src, char *err, size_t cap)
{
    struct origin_pattern *p = &s->pat[s->n_pat];

    p->code = compile_pattern(src, err, cap);
    if (p->code == NULL)
        return -1;
    p->src = strdup(src);
    if (p->src == NULL) {
        pcre2_code_free(p->code);
        p->code = NULL;
        snprintf(err, cap, "out of memory");
        return -1;
    }
    /* The JIT is an optimisation only: a build or platform without it
     * (or with W^X memory rules) still matches through the
     * interpreter with the same limits. */
    (void)pcre2_jit_compile(p->code, PCRE2_JIT_COMPLETE);
    s->n_pat++;
    return 0;
}

struct origin_set *
origin_set_new(const struct strlist *allow, const struct strlist *patterns,
               char *err, size_t cap)
{
    char scratch[1];
    size_t na = allow != NULL ? allow->n : 0;
    size_t np = patterns != NULL ? patterns->n : 0;
    struct origin_set *s;

    /* Callers always pass err; tolerate NULL so no branch writes
     * through it. */
    if (err == NULL || cap == 0) {
        err = scratch;
        cap = sizeof scratch;
    }
    s = calloc(1, sizeof *s);
    if (s == NULL
        || (na > 0 && (s->exact = calloc(na, sizeof *s->exact)) == NULL)
        || (np > 0 && (s->pat = calloc(np, sizeof *s->pat)) == NULL))
        goto oom;
    for (size_t i = 0; i < na; i++)
        if (add_exact(s, allow->v[i], err, cap) == -1)
            goto fail;
    for (size_t i = 0; i < np; i++)
        if (add_pattern(s, patterns->v[i], err, cap) == -1)
            goto fail;
    if (s->n_exact > 1)
        qsort(s->exact, s->n_exact, sizeof *s->exact, cmp_str);
    if (np > 0) {
        s->mctx = pcre2_match_context_create(NULL);
        if (s->mctx == NULL)
            goto oom;
        pcre2_set_match_limit(s->mctx, ORIGIN_MATCH_LIMIT);
        pcre2_set_depth_limit(s->mctx, ORIGIN_DEPTH_LIMIT);
    }
    return s;

oom:
    snprintf(err, cap, "out of memory");
fail:
    origin_set_free(s);
    return NULL;
}

int
origin_active(const struct origin_set *s)
{
    return s != NULL && (s->n_exact > 0 || s->n_pat > 0);
}

int
origin_allowed(const struct origin_set *s, const char *in, size_t len)
{
    char norm[ORIGIN_MAX + 1];
    const char *key = norm;
    pcre2_match_data *md;
    int n, ok = 0;

    if (!origin_active(s))
        return 0;
    n = origin_normalize(in, len, norm, sizeof norm);
    if (n == -1)
        return 0;
    if (s->n_exact > 0
        && bsearch(&key, s->exact, s->n_exact, sizeof *s->exact, cmp_str)
           != NULL)
        return 1;
    if (s->n_pat == 0)
        return 0;
    /* One ovector pair is enough: only match or no match matters (a
     * too-small ovector still reports a match, as 0). Made per call so
     * that workers share nothing mutable; failing to allocate refuses. */
    md = pcre2_match_data_create(1, NULL);
    if (md == NULL)
        return 0;
    for (size_t i = 0; i < s->n_pat && !ok; i++) {
        int rc = pcre2_match(s->pat[i].code, (PCRE2_SPTR)norm, (size_t)n,
                             0, 0, md, s->mctx);

        /* Negative covers no match and every error, including
         * PCRE2_ERROR_MATCHLIMIT and _DEPTHLIMIT: fail closed. */
        ok = rc >= 0;
    }
    pcre2_match_data_free(md);
    return ok;
}
