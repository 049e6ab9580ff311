/*
 * path.c - request path normalisation (see path.h for the rules).
 *
 * Three passes over the input, none of them writing before the result is
 * known to fit:
 *   1. check, left to right: the raw characters, the escapes, double
 *      encoding and dot segments with parameters (rules 1, 2, 3, 6);
 *   2. measure, segment by segment from the last to the first: a ".."
 *      is a debt paid by the next ordinary segment to its left, so a
 *      segment survives when no debt is pending, and a debt left at the
 *      root is a climb above it (rule 5). Going right to left needs no
 *      stack of earlier segments, hence no memory beyond a counter;
 *   3. write, the same walk again, each surviving segment decoded into
 *      its final place, right to left.
 * Because pass 3 writes only what survives, the output needs exactly its
 * own length plus the NUL: "/a/b/../.." fits in 2 bytes, which a left to
 * right rewrite in place could not promise (it would write "/a/b" first).
 *
 * Within a segment the input is always read left to right; segments are
 * found going left by looking for the previous raw '/', which is safe
 * because an escape holds only hex digits and "%2F" is refused.
 */
#include "path.h"

#include <limits.h>

/* Token kinds, as read from the raw input by tok_next(). */
enum path_tok {
    PT_LIT = 0,         /* one byte: raw, or an escaped unreserved byte */
    PT_ESC,             /* an escape that stays encoded */
    PT_BAD_CHAR,        /* a raw byte outside pchar and '/' */
    PT_BAD_ESC,         /* '%' without two hex digits */
    PT_FORBIDDEN        /* %2F, %5C or %00 */
};

static int
is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9');
}

/* RFC 3986 §2.3: the characters whose escapes are decoded (§6.2.2.2). */
static int
is_unreserved(unsigned char c)
{
    return is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/* RFC 3986 §3.3: pchar (less '%', handled as an escape) plus '/'. */
static int
is_raw_ok(unsigned char c)
{
    if (is_unreserved(c))
        return 1;
    switch (c) {
    case '!': case '$': case '&': case '\'': case '(': case ')':
    case '*': case '+': case ',': case ';': case '=':       /* sub-delims */
    case ':': case '@': case '/':
        return 1;
    default:
        return 0;
    }
}

static int
hex_val(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static char
hex_upper(unsigned v)
{
    return "0123456789ABCDEF"[v & 15];
}

/*
 * Read the token at in[*i] (*i < len), advance *i past it and store its
 * byte (the decoded value for an escape) in *c. Never reads past len.
 */
static enum path_tok
tok_next(const char *in, size_t len, size_t *i, unsigned char *c)
{
    unsigned char b = (unsigned char)in[*i];
    int hi, lo;

    if (b != '%') {
        *c = b;
        (*i)++;
        return is_raw_ok(b) ? PT_LIT : PT_BAD_CHAR;
    }
    if (len - *i < 3)
        return PT_BAD_ESC;
    hi = hex_val((unsigned char)in[*i + 1]);
    lo = hex_val((unsigned char)in[*i + 2]);
    if (hi < 0 || lo < 0)
        return PT_BAD_ESC;
    *c = (unsigned char)(hi << 4 | lo);
    *i += 3;
    if (*c == '/' || *c == '\\' || *c == '\0')
        return PT_FORBIDDEN;
    return is_unreserved(*c) ? PT_LIT : PT_ESC;
}

/* The next token as a literal byte, or -1 (an escape, an error, the end).
 * For look-ahead only: errors are reported when the scan reaches them. */
static int
peek_lit(const char *in, size_t len, size_t *i)
{
    unsigned char c;

    if (*i >= len || tok_next(in, len, i, &c) != PT_LIT)
        return -1;
    return c;
}

/*
 * Rule 6: does the segment starting at in[i] begin with "." or ".."
 * (dots possibly escaped) followed by ';', raw or escaped ("%3B")? Tomcat
 * and other servlet containers cut ";params" from each segment before
 * resolving dot segments, and a backend that decodes first sees ';' in
 * "..%3B" too.
 */
static int
dot_with_params(const char *in, size_t len, size_t i)
{
    enum path_tok t = PT_BAD_ESC;
    unsigned char c = 0;
    int dots = 0;

    while (i < len) {
        t = tok_next(in, len, &i, &c);
        if (t != PT_LIT || c != '.' || dots == 2)
            break;
        dots++;
    }
    return dots > 0 && (t == PT_LIT || t == PT_ESC) && c == ';';
}

/*
 * Rule 3: after a kept "%25" ending just before in[i], are the next two
 * bytes (after decoding, so "%25%32e" counts) hex digits, i.e. does the
 * "%25" start a double-encoded escape of anything? Hex digits are
 * unreserved, so they are always literal tokens, raw or decoded; an
 * escape that stays encoded ("%25%25") is not a hex digit.
 */
static int
double_encoded(const char *in, size_t len, size_t i)
{
    int hi = peek_lit(in, len, &i), lo;

    if (hi < 0 || hex_val((unsigned char)hi) < 0)
        return 0;
    lo = peek_lit(in, len, &i);
    return lo >= 0 && hex_val((unsigned char)lo) >= 0;
}

/* Pass 1: NULL when in[0..len) breaks none of rules 1, 2, 3, 6, else the
 * reason for the first violation from the left. */
static const char *
check(const char *in, size_t len)
{
    size_t i = 0;
    unsigned char c;

    while (i < len) {
        switch (tok_next(in, len, &i, &c)) {
        case PT_LIT:
            /* A literal '/' is always a raw one ("%2F" is refused). */
            if (c == '/' && dot_with_params(in, len, i))
                return "dot segment with parameters";
            break;
        case PT_ESC:
            if (c == '%' && double_encoded(in, len, i))
                return "double-encoded path character";
            break;
        case PT_BAD_CHAR:
            return "invalid character in path";
        case PT_BAD_ESC:
            return "invalid percent escape";
        case PT_FORBIDDEN:
            return "encoded slash, backslash or NUL";
        }
    }
    return NULL;
}

/*
 * Decoded length of the checked segment in[s..e), and in *dots 1 or 2
 * when it is "." or ".." (escaped or not), else 0. With out != NULL,
 * also write its normalised bytes there.
 */
static size_t
seg_scan(const char *in, size_t s, size_t e, char *out, int *dots)
{
    size_t i = s, n = 0;
    int ndots = 0, only_dots = 1;

    while (i < e) {
        unsigned char c = (unsigned char)in[i];

        if (c == '%') {
            c = (unsigned char)(hex_val((unsigned char)in[i + 1]) << 4
                                | hex_val((unsigned char)in[i + 2]));
            i += 3;
            if (!is_unreserved(c)) {
                if (out != NULL) {
                    out[n] = '%';
                    out[n + 1] = hex_upper(c >> 4);
                    out[n + 2] = hex_upper(c);
                }
                n += 3;
                only_dots = 0;
                continue;
            }
        } else {
            i++;
        }
        if (out != NULL)
            out[n] = (char)c;
        n++;
        if (c == '.')
            ndots++;
        else
            only_dots = 0;
    }
    *dots = only_dots && ndots <= 2 ? ndots : 0;
    return n;
}

struct path_walk {
    size_t kept;        /* segments that survive */
    size_t bytes;       /* their normalised bytes, each with its '/' */
    int trail;          /* the path ends in "/", "/." or "/.." */
};

/*
 * Passes 2 and 3 over a checked path: walk the segments from the last
 * to the first, dropping empty ones (merged slashes), "." and every
 * segment a later ".." removes. Returns -1 when a ".." is left without a
 * segment to remove. With out != NULL, write each surviving segment with
 * its leading '/' so that the last one ends at out[end].
 */
static int
walk(const char *in, size_t len, char *out, size_t end, struct path_walk *pw)
{
    size_t e = len, debt = 0;
    int last = 1;

    pw->kept = 0;
    pw->bytes = 0;
    pw->trail = 0;
    for (;;) {
        size_t s = e, n = 0;
        int dots = 0;

        while (in[s - 1] != '/')        /* in[0] == '/' stops it */
            s--;
        if (s < e)
            n = seg_scan(in, s, e, NULL, &dots);
        if (last) {
            /* RFC 3986 §5.2.4: "/a/." and "/a/b/.." keep their slash. */
            pw->trail = s == e || dots != 0;
            last = 0;
        }
        if (s == e || dots == 1) {
            /* an empty segment (from "//" or a trailing '/') or "." */
        } else if (dots == 2) {
            debt++;
        } else if (debt > 0) {
            debt--;
        } else {
            if (out != NULL) {
                end -= n;
                seg_scan(in, s, e, out + end, &dots);
                out[--end] = '/';
            }
            pw->kept++;
            pw->bytes += n + 1;
        }
        if (s == 1)
            break;
        e = s - 1;
    }
    return debt > 0 ? -1 : 0;
}

int
path_normalize(const char *in, size_t len, char *out, size_t cap,
               const char **reason)
{
    const char *why;
    struct path_walk pw;
    size_t n;

    if (in == NULL || len == 0 || in[0] != '/') {
        why = "path does not start with '/'";
        goto refuse;
    }
    if (len >= INT_MAX) {
        why = "path too long";
        goto refuse;
    }
    why = check(in, len);
    if (why != NULL)
        goto refuse;
    if (walk(in, len, NULL, 0, &pw) == -1) {
        why = "path climbs above the root";
        goto refuse;
    }
    /* No surviving segment leaves the root alone: "/", "/a/..", "//". */
    n = pw.kept == 0 ? 1 : pw.bytes + (pw.trail ? 1 : 0);
    if (out == NULL || cap <= n) {
        why = "path longer than its buffer";
        goto refuse;
    }
    out[n] = '\0';
    if (pw.kept == 0) {
        out[0] = '/';
    } else {
        if (pw.trail)
            out[n - 1] = '/';
        walk(in, len, out, n - (pw.trail ? 1 : 0), &pw);
    }
    return (int)n;

refuse:
    if (reason != NULL)
        *reason = why;
    return -1;
}

size_t
path_route_key(const char *in, size_t len, char *out)
{
    size_t o = 0, i = 0;

    while (i < len) {
        if (in[i] == ';') {
            /* ";params" up to the end of the segment is not routed on */
            while (i < len && in[i] != '/')
                i++;
            continue;
        }
        out[o++] = in[i++];
    }
    return o;
}
