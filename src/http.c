/*
 * http.c - strict, incremental HTTP/1.1 message-head parser.
 *
 * Why hand-written: every byte here comes from an unauthenticated peer
 * before any check has run, so the parser must be bounded (every loop is
 * limited by len), incremental (a head that trickles in costs O(n) in
 * total, see the last_len contract in http.h), strict (what a backend
 * might read differently from us is refused, not repaired: request
 * smuggling lives in those differences) and allocation-free (results point
 * into the caller's buffer). picohttpparser has exactly that contract but
 * is not a Debian package and is more lenient than we want (it accepts
 * bare LF and whitespace before the colon), so this is a small, strict
 * re-implementation of its interface.
 *
 * Struct contract beyond http.h: on any return other than > 0 the caller's
 * struct is left as it was (in particular nheaders still holds the
 * capacity), so the same struct can be passed again when more bytes have
 * arrived. The header array may have been written to.
 */
#include "http.h"

#include <limits.h>
#include <string.h>

/* RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" /
 * "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static int
is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9'))
        return 1;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'':
    case '*': case '+': case '-': case '.': case '^': case '_':
    case '`': case '|': case '~':
        return 1;
    default:
        return 0;
    }
}

/* CTL per RFC 5234: %x00-1F / %x7F. */
static int
is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* RFC 9110 §5.5 field-value octets: VCHAR / obs-text / SP / HTAB. The
 * reason phrase of a status line allows the same set (RFC 9112 §4). */
static int
is_value_char(unsigned char c)
{
    return c == '\t' || !is_ctl(c);
}

static int
is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static unsigned char
lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

/*
 * The length of the head (up to and including the first CRLFCRLF), or 0
 * when it is not complete yet. Only the bytes that arrived since last_len
 * (plus the 3 before them, which may start the terminator) are searched.
 */
static size_t
find_head_end(const char *buf, size_t len, size_t last_len)
{
    size_t i = (last_len > 3 && last_len <= len) ? last_len - 3 : 0;

    while (i + 4 <= len) {
        const char *cr = memchr(buf + i, '\r', len - 3 - i);
        if (cr == NULL)
            return 0;
        i = (size_t)(cr - buf);
        if (buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n')
            return i + 4;
        i++;
    }
    return 0;
}

/*
 * Early rejection of an incomplete head, so a peer cannot keep a
 * connection in the handshake by trickling bytes that can never form a
 * valid head. Only defects the full parse would also reject are reported
 * (so a split feed and a whole feed agree), and only the new bytes are
 * looked at (so the total cost stays O(n)). Every byte of an incomplete
 * head is a head byte, so these rules hold at any position:
 *   - no CTL other than HTAB, CR and LF anywhere;
 *   - every LF preceded by CR, every CR followed by LF (no bare CR/LF);
 *   - no line starts with SP or HTAB (obs-fold, or whitespace between the
 *     start line and the first header);
 *   - the start line begins like one (a method tchar, or "HTTP/1.").
 */
static int
early_error(const char *buf, size_t len, size_t last_len, int response)
{
    static const char proto[] = "HTTP/1.";
    size_t i = (last_len > 3 && last_len <= len) ? last_len - 3 : 0;

    if (len > 0 && !response && !is_tchar((unsigned char)buf[0]))
        return 1;
    if (response) {
        size_t n = len < sizeof proto - 1 ? len : sizeof proto - 1;
        if (memcmp(buf, proto, n) != 0)
            return 1;
    }
    for (; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\n') {
            if (i == 0 || buf[i - 1] != '\r')
                return 1;
        } else if (c == '\r') {
            if (i + 1 < len && buf[i + 1] != '\n')
                return 1;
        } else if (c == ' ' || c == '\t') {
            if (i > 0 && buf[i - 1] == '\n')
                return 1;
        } else if (is_ctl(c)) {
            return 1;
        }
    }
    return 0;
}

/*
 * The line starting at *pos inside the complete head [0, head_len): sets
 * *end to the offset of its CR and advances *pos past the CRLF. A CR not
 * followed by LF is an error (-1). A bare LF needs no check here: no line
 * rule accepts an LF byte, so it fails whichever rule reads it.
 */
static int
next_line(const char *buf, size_t head_len, size_t *pos, size_t *end)
{
    const char *cr = memchr(buf + *pos, '\r', head_len - *pos);

    /* head_len ends with CRLFCRLF, so a CR is always found and always
     * has a byte after it; the checks keep that true by construction. */
    if (cr == NULL)
        return -1;
    *end = (size_t)(cr - buf);
    if (*end + 1 >= head_len || buf[*end + 1] != '\n')
        return -1;
    *pos = *end + 2;
    return 0;
}

/* "HTTP/1.0" or "HTTP/1.1" at p (8 bytes available): minor or -1. */
static int
parse_version(const char *p)
{
    if (memcmp(p, "HTTP/1.", 7) != 0)
        return -1;
    if (p[7] == '0')
        return 0;
    if (p[7] == '1')
        return 1;
    return -1;
}

/*
 * Header lines from *pos up to and including the empty line that ends the
 * head. Headers beyond cap are validated but not stored, so a malformed
 * head is HTTP_ERROR whatever its size (an early error on a partial head
 * must agree with the verdict on the whole head). Returns the count
 * (which may exceed cap) or -1.
 */
static long
parse_headers(const char *buf, size_t head_len, size_t pos,
              struct http_header *h, size_t cap)
{
    size_t count = 0;

    for (;;) {
        size_t s = pos, e, i, v, ve;

        if (next_line(buf, head_len, &pos, &e) == -1)
            return -1;
        if (e == s)
            break;                      /* the empty line: end of head */
        /* RFC 9112 §5.1: no whitespace between name and colon; a proxy
         * that tolerated it would disagree with its backend on names. */
        for (i = s; i < e && is_tchar((unsigned char)buf[i]); i++)
            ;
        if (i == s || i == e || buf[i] != ':')
            return -1;
        v = i + 1;
        while (v < e && is_ows((unsigned char)buf[v]))
            v++;
        for (ve = v; ve < e; ve++)
            if (!is_value_char((unsigned char)buf[ve]))
                return -1;
        while (ve > v && is_ows((unsigned char)buf[ve - 1]))
            ve--;
        if (count < cap && h != NULL) {
            h[count].name = buf + s;
            h[count].name_len = i - s;
            h[count].value = buf + v;
            h[count].value_len = ve - v;
        }
        count++;
    }
    /* The empty line found is the one at head_len - 2 by construction
     * (the first CRLFCRLF); anything else would be a logic error. */
    if (pos != head_len)
        return -1;
    return (long)count;
}

int
http_parse_request(const char *buf, size_t len, size_t last_len,
                   struct http_request *req)
{
    size_t head_len, pos = 0, e, i, t;
    long n;
    int minor;

    if (buf == NULL || req == NULL)
        return HTTP_ERROR;
    head_len = find_head_end(buf, len, last_len);
    if (head_len == 0)
        return early_error(buf, len, last_len, 0) ? HTTP_ERROR
                                                  : HTTP_INCOMPLETE;
    if (head_len > INT_MAX)
        return HTTP_ERROR;

    if (next_line(buf, head_len, &pos, &e) == -1)
        return HTTP_ERROR;
    /* method SP request-target SP HTTP-version, single spaces only. */
    for (i = 0; i < e && is_tchar((unsigned char)buf[i]); i++)
        ;
    if (i == 0 || i == e || buf[i] != ' ')
        return HTTP_ERROR;
    for (t = i + 1; t < e && buf[t] != ' ' && !is_ctl((unsigned char)buf[t]);
         t++)
        ;
    if (t == i + 1 || t == e || buf[t] != ' ')
        return HTTP_ERROR;
    if (e - (t + 1) != 8 || (minor = parse_version(buf + t + 1)) < 0)
        return HTTP_ERROR;

    n = parse_headers(buf, head_len, pos, req->headers, req->nheaders);
    if (n < 0)
        return HTTP_ERROR;
    if ((size_t)n > req->nheaders)
        return HTTP_TOO_MANY;

    req->method = buf;
    req->method_len = i;
    req->target = buf + i + 1;
    req->target_len = t - (i + 1);
    req->minor_version = minor;
    req->nheaders = (size_t)n;
    return (int)head_len;
}

int
http_parse_response(const char *buf, size_t len, size_t last_len,
                    struct http_response *resp)
{
    size_t head_len, pos = 0, e, r;
    long n;
    int minor, status;

    if (buf == NULL || resp == NULL)
        return HTTP_ERROR;
    head_len = find_head_end(buf, len, last_len);
    if (head_len == 0)
        return early_error(buf, len, last_len, 1) ? HTTP_ERROR
                                                  : HTTP_INCOMPLETE;
    if (head_len > INT_MAX)
        return HTTP_ERROR;

    if (next_line(buf, head_len, &pos, &e) == -1)
        return HTTP_ERROR;
    /* HTTP-version SP 3DIGIT [SP reason-phrase]: the reason may be empty
     * and some servers omit the space before it too ("HTTP/1.1 101"). */
    if (e < 12 || (minor = parse_version(buf)) < 0 || buf[8] != ' ')
        return HTTP_ERROR;
    if (buf[9] < '1' || buf[9] > '9' || buf[10] < '0' || buf[10] > '9' ||
        buf[11] < '0' || buf[11] > '9')
        return HTTP_ERROR;
    status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    r = 12;
    if (e > 12) {
        if (buf[12] != ' ')
            return HTTP_ERROR;
        r = 13;
        for (size_t k = r; k < e; k++)
            if (!is_value_char((unsigned char)buf[k]))
                return HTTP_ERROR;
    }

    n = parse_headers(buf, head_len, pos, resp->headers, resp->nheaders);
    if (n < 0)
        return HTTP_ERROR;
    if ((size_t)n > resp->nheaders)
        return HTTP_TOO_MANY;

    resp->minor_version = minor;
    resp->status = status;
    resp->reason = buf + r;
    resp->reason_len = e - r;
    resp->nheaders = (size_t)n;
    return (int)head_len;
}

/* '_' and '-' compare equal: CGI, WSGI, Rack and several Go and Node
 * frameworks map both to the same variable. */
static unsigned char
name_fold(unsigned char c)
{
    return c == '_' ? '-' : lower(c);
}

/* Counted s against C string lit, byte by byte through fold. */
static int
eq_folded(const char *s, size_t len, const char *lit,
          unsigned char (*fold)(unsigned char))
{
    size_t i;

    if (s == NULL || lit == NULL)
        return 0;
    for (i = 0; i < len; i++) {
        if (lit[i] == '\0' ||
            fold((unsigned char)s[i]) != fold((unsigned char)lit[i]))
            return 0;
    }
    return lit[len] == '\0';
}

int
http_eq(const char *s, size_t len, const char *lit)
{
    return eq_folded(s, len, lit, lower);
}

int
http_name_eq(const char *s, size_t len, const char *lit)
{
    return eq_folded(s, len, lit, name_fold);
}

const struct http_header *
http_find(const struct http_header *h, size_t n, const char *name,
          size_t *count)
{
    const struct http_header *first = NULL;
    size_t c = 0;

    for (size_t i = 0; h != NULL && i < n; i++) {
        if (http_eq(h[i].name, h[i].name_len, name)) {
            if (first == NULL)
                first = &h[i];
            c++;
        }
    }
    if (count != NULL)
        *count = c;
    return first;
}

int
http_list_has_n(const char *value, size_t len, const char *token,
                size_t token_len)
{
    size_t i = 0;

    if (value == NULL || token == NULL)
        return 0;
    /* RFC 9110 §5.6.1: #element, elements separated by "," with optional
     * whitespace; empty elements are allowed and ignored. */
    while (i < len) {
        size_t s, e;

        while (i < len && is_ows((unsigned char)value[i]))
            i++;
        s = i;
        while (i < len && value[i] != ',')
            i++;
        e = i;
        while (e > s && is_ows((unsigned char)value[e - 1]))
            e--;
        if (e > s && e - s == token_len) {
            size_t k = 0;
            while (k < token_len && lower((unsigned char)value[s + k]) ==
                                        lower((unsigned char)token[k]))
                k++;
            if (k == token_len)
                return 1;
        }
        i++;                            /* skip the comma */
    }
    return 0;
}

int
http_list_has(const char *value, size_t len, const char *token)
{
    return token != NULL && http_list_has_n(value, len, token, strlen(token));
}
