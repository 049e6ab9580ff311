/*
 * pmd.c - permessage-deflate (RFC 7692): negotiation, and zlib driven
 * over the caller's buffers in bounded steps.
 *
 * Decisions taken where RFC 7692 leaves a choice (pmd.h has the
 * contracts):
 * - A window of 8 bits. zlib's deflate cannot use a 256-byte window
 *   (deflateInit2 refuses -8 for raw deflate; zlib.h: "a windowBits value
 *   of 8 ... is not supported"), so the deflater runs with 9. That stays
 *   within an agreed server_max_window_bits=8: zlib never emits a
 *   distance above MAX_DIST = window - MIN_LOOKAHEAD = 512 - 262 = 250
 *   bytes, and a 256-byte window decodes that (tests/unit/test_pmd.c
 *   inflates such output with windowBits -8). The inflater uses exactly
 *   the agreed window: a client that goes further back breaks the
 *   agreement, and zlib reports it (PMD_BAD_DATA) when the distance
 *   reaches before the output of the current call; within that output
 *   it resolves the reference, which is harmless (the bytes are what
 *   the sender meant, and no more memory is used).
 * - A final block (BFINAL = 1). §7.2.1: it is padded to a byte boundary
 *   and "the next DEFLATE block follows the padded data if any"; zlib
 *   stops at a final block (Z_STREAM_END), so decoding restarts there
 *   with the window kept (inflateResetKeep()). A message that ends with
 *   its final block (no more payload) needs no tail.
 * - The end of a message. Payload + 00 00 ff ff must leave the decoder
 *   on a block boundary with no bits pending (what every conforming
 *   sender's sync flush gives); anything else is a truncated stream and
 *   PMD_BAD_DATA, since its leftover bits would otherwise be read as the
 *   start of the next message under context takeover.
 * - An empty payload is an empty message. It is not valid DEFLATE with
 *   the tail appended (00 00 ff ff is half a stored block), but zlib-based
 *   senders (Python's websockets, for one) send it for an empty message
 *   under context takeover, because a second Z_SYNC_FLUSH without input
 *   gives no output; leaving the stream untouched is both lenient and
 *   safe. Our own deflater sends 00 (§7.2.3.6), as Chrome does.
 * - The guard counts inflated bytes per message and checks the limits
 *   after every zlib call; zlib's output space is cut to what the size
 *   limit still allows plus one byte, so the byte that exceeds it is the
 *   last one inflated.
 */
#include "pmd.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZLIB_CONST                  /* next_in is const */
#include <zlib.h>

/* ---- the counting allocator */

/* Each block carries its size in front, so zfree can count it back. */
#define PMD_HDR ((size_t)16)

struct pmd_zs {
    z_stream zs;
    size_t mem;                 /* bytes allocated through the hooks,
                                   headers included */
};

static voidpf
pmd_zalloc(voidpf opaque, uInt items, uInt size)
{
    struct pmd_zs *z = opaque;
    unsigned char *p;
    size_t n;

    if (size != 0 && items > (SIZE_MAX - PMD_HDR) / size)
        return Z_NULL;
    n = (size_t)items * size + PMD_HDR;
    p = malloc(n);
    if (p == NULL)
        return Z_NULL;
    memcpy(p, &n, sizeof n);
    z->mem += n;
    return p + PMD_HDR;
}

static void
pmd_zfree(voidpf opaque, voidpf ptr)
{
    struct pmd_zs *z = opaque;
    unsigned char *p;
    size_t n;

    if (ptr == NULL)
        return;
    p = (unsigned char *)ptr - PMD_HDR;
    memcpy(&n, p, sizeof n);
    z->mem -= n;
    free(p);
}

static struct pmd_zs *
zs_new(void)
{
    struct pmd_zs *z = calloc(1, sizeof *z);

    if (z == NULL)
        return NULL;
    z->zs.zalloc = pmd_zalloc;
    z->zs.zfree = pmd_zfree;
    z->zs.opaque = z;
    return z;
}

static size_t
zs_memory(const struct pmd_zs *z)
{
    return z == NULL ? 0 : z->mem + sizeof *z;
}

/* zlib counts in uInt: feed and take at most this much per call. */
static uInt
clamp_uint(size_t n)
{
    return n > (size_t)(UINT_MAX / 2) ? (uInt)(UINT_MAX / 2) : (uInt)n;
}

static uint8_t
clamp_bits(uint8_t b)
{
    if (b < PMD_BITS_MIN)
        return PMD_BITS_MIN;
    if (b > PMD_BITS_MAX)
        return PMD_BITS_MAX;
    return b;
}

/* The deflater's window: see the top of the file. */
static int
deflate_bits(uint8_t bits)
{
    bits = clamp_bits(bits);
    return bits < 9 ? 9 : bits;
}

size_t
pmd_memory_bound(const struct pmd_params *p)
{
    size_t inf, def;
    int db = deflate_bits(p->server_max_window_bits);

    /* Measured with the counting allocator (zlib 1.2.13, x86-64):
     * inflate_state 7,160 bytes + the window, in 2 blocks; deflate_state
     * 5,952 + window 2w + prev 2w + head 2 * 2^(memLevel + 7) + pending
     * 4 * 2^(memLevel + 6) = 8w at memLevel = bits - 7, in 5 blocks;
     * each block with its PMD_HDR, each stream in a struct pmd_zs. */
    inf = 7160 + ((size_t)1 << clamp_bits(p->client_max_window_bits)) +
          2 * PMD_HDR + sizeof(struct pmd_zs);
    def = 5952 + ((size_t)8 << db) + 5 * PMD_HDR + sizeof(struct pmd_zs);
    return inf + def;
}

const char *
pmd_result_name(int r)
{
    switch (r) {
    case PMD_OK:
        return "ok";
    case PMD_NEED_OUTPUT_SPACE:
        return "need output space";
    case PMD_TOO_BIG:
        return "inflated message too big";
    case PMD_RATIO:
        return "inflate ratio too high";
    case PMD_BAD_DATA:
        return "invalid deflate data";
    case PMD_ERROR:
        return "out of memory";
    default:
        return "?";
    }
}

/* ---- negotiation */

/* RFC 7230 §3.2.6 tchar. */
static int
is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
        (c >= 'A' && c <= 'Z'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static const char *
skip_ows(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

static const char *
skip_token(const char *p, const char *end)
{
    while (p < end && is_tchar((unsigned char)*p))
        p++;
    return p;
}

/* Counted string equals a literal exactly. */
static int
eq(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

/* A parameter value as far as permessage-deflate needs it: its first
 * bytes after unescaping, and its full unescaped length. */
struct pvalue {
    char v[4];
    size_t len;
};

/*
 * quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE at *pp (which
 * is at the DQUOTE), whose content, unescaped, must be a token (RFC 6455
 * §9.1): so every character, escaped or not, must be a tchar, which
 * qdtext and quoted-pair both allow. Returns 0 and advances *pp past the
 * closing quote, or -1.
 */
static int
parse_quoted(const char **pp, const char *end, struct pvalue *val)
{
    const char *p = *pp + 1;

    val->len = 0;
    for (;;) {
        unsigned char c;

        if (p >= end)
            return -1;              /* unterminated */
        c = (unsigned char)*p++;
        if (c == '"')
            break;
        if (c == '\\') {            /* quoted-pair */
            if (p >= end)
                return -1;
            c = (unsigned char)*p++;
        }
        if (!is_tchar(c))
            return -1;
        if (val->len < sizeof val->v)
            val->v[val->len] = (char)c;
        val->len++;
    }
    if (val->len == 0)
        return -1;                  /* a token is 1*tchar */
    *pp = p;
    return 0;
}

/* What one permessage-deflate offer asks for. */
struct offer {
    uint8_t bad;                /* not acceptable */
    uint8_t seen;               /* parameters present, one bit each */
    uint8_t snct, cnct;         /* *_no_context_takeover */
    uint8_t smwb;               /* server_max_window_bits, 0 = absent */
    uint8_t cmwb_present;       /* client_max_window_bits present */
    uint8_t cmwb;               /* its value, 0 = none given */
};

/* 8..15 without leading zeros (RFC 7692 §7.1.2), or 0. */
static uint8_t
window_value(const struct pvalue *val)
{
    if (val->len == 1 && (val->v[0] == '8' || val->v[0] == '9'))
        return (uint8_t)(val->v[0] - '0');
    if (val->len == 2 && val->v[0] == '1' && val->v[1] >= '0' &&
        val->v[1] <= '5')
        return (uint8_t)(10 + val->v[1] - '0');
    return 0;
}

/* One parameter of a permessage-deflate offer (RFC 7692 §7.1). */
static void
offer_param(struct offer *o, const char *name, size_t name_len,
            const struct pvalue *val)
{
    unsigned bit;

    if (eq(name, name_len, "server_no_context_takeover"))
        bit = 1;
    else if (eq(name, name_len, "client_no_context_takeover"))
        bit = 2;
    else if (eq(name, name_len, "server_max_window_bits"))
        bit = 4;
    else if (eq(name, name_len, "client_max_window_bits"))
        bit = 8;
    else
        bit = 0;
    /* §7: decline an offer with an unknown parameter, a parameter twice
     * or an invalid value. */
    if (bit == 0 || (o->seen & bit)) {
        o->bad = 1;
        return;
    }
    o->seen |= (uint8_t)bit;
    switch (bit) {
    case 1:
    case 2:
        if (val != NULL)            /* "has no value" */
            o->bad = 1;
        else if (bit == 1)
            o->snct = 1;
        else
            o->cnct = 1;
        break;
    case 4:
        o->smwb = val != NULL ? window_value(val) : 0;
        if (o->smwb == 0)           /* a value is required */
            o->bad = 1;
        break;
    default:
        o->cmwb_present = 1;
        if (val != NULL) {
            o->cmwb = window_value(val);
            if (o->cmwb == 0)
                o->bad = 1;
        }
        break;
    }
}

/*
 * The next list element of one header value at *pp: returns 1 with
 * *is_pmd and (for permessage-deflate) *o filled, 0 at the end of the
 * value, -1 on a syntax error. Empty elements are skipped.
 */
static int
next_offer(const char **pp, const char *end, int *is_pmd, struct offer *o)
{
    const char *p = *pp, *name;

    for (;;) {
        p = skip_ows(p, end);
        if (p == end) {
            *pp = p;
            return 0;
        }
        if (*p != ',')
            break;
        p++;                        /* empty element */
    }
    name = p;
    p = skip_token(p, end);
    if (p == name)
        return -1;
    *is_pmd = eq(name, (size_t)(p - name), "permessage-deflate");
    memset(o, 0, sizeof *o);
    for (;;) {
        const char *pname;
        size_t pname_len;
        struct pvalue val;
        int has_val = 0;

        p = skip_ows(p, end);
        if (p == end || *p == ',') {
            *pp = p == end ? p : p + 1;
            return 1;
        }
        if (*p != ';')
            return -1;
        p = skip_ows(p + 1, end);
        pname = p;
        p = skip_token(p, end);
        if (p == pname)
            return -1;
        pname_len = (size_t)(p - pname);
        /* BWS around "=" (RFC 7230 §3.2.3): tolerated when parsing. */
        {
            const char *q = skip_ows(p, end);

            if (q < end && *q == '=') {
                p = skip_ows(q + 1, end);
                if (p < end && *p == '"') {
                    if (parse_quoted(&p, end, &val) == -1)
                        return -1;
                } else {
                    const char *v = p;

                    p = skip_token(p, end);
                    if (p == v)
                        return -1;
                    val.len = (size_t)(p - v);
                    memcpy(val.v, v, val.len < sizeof val.v ? val.len
                                                            : sizeof val.v);
                }
                has_val = 1;
            }
        }
        if (*is_pmd)
            offer_param(o, pname, pname_len, has_val ? &val : NULL);
    }
}

/* The answer to an acceptable offer: *out and the response value. */
static int
answer(const struct pmd_policy *pol, const struct offer *o,
       struct pmd_params *out, char *resp, size_t cap)
{
    uint8_t sbits = clamp_bits(pol->server_max_window_bits);
    uint8_t cbits = clamp_bits(pol->client_max_window_bits);
    int show_s, show_c = 0, n;
    char buf[PMD_RESPONSE_MAX], sval[32] = "", cval[32] = "";
    size_t len;

    memset(out, 0, sizeof *out);
    out->server_no_context_takeover =
        (uint8_t)(o->snct || pol->server_no_context_takeover);
    out->client_no_context_takeover =
        (uint8_t)(o->cnct || pol->client_no_context_takeover);

    /* §7.1.2.1: answer a bound with the same or a smaller value; without
     * one, the server may still announce its own smaller window. */
    if (o->smwb != 0 && o->smwb < sbits)
        sbits = o->smwb;
    show_s = o->smwb != 0 || sbits < PMD_BITS_MAX;
    out->server_max_window_bits = sbits;

    /* §7.1.2.2: only when offered; a value in the offer is the client's
     * own bound, which we may lower further. */
    if (o->cmwb_present) {
        if (o->cmwb != 0 && o->cmwb < cbits)
            cbits = o->cmwb;
        show_c = o->cmwb != 0 || cbits < PMD_BITS_MAX;
    } else {
        cbits = PMD_BITS_MAX;
    }
    out->client_max_window_bits = cbits;

    if (show_s)
        snprintf(sval, sizeof sval, "; server_max_window_bits=%u", sbits);
    if (show_c)
        snprintf(cval, sizeof cval, "; client_max_window_bits=%u", cbits);
    n = snprintf(buf, sizeof buf, "permessage-deflate%s%s%s%s",
                 out->server_no_context_takeover
                     ? "; server_no_context_takeover" : "",
                 out->client_no_context_takeover
                     ? "; client_no_context_takeover" : "",
                 sval, cval);
    len = n < 0 ? 0 : (size_t)n;
    if (len == 0 || len + 1 > cap || len + 1 > sizeof buf) {
        memset(out, 0, sizeof *out);
        return PMD_NEG_NONE;
    }
    memcpy(resp, buf, len + 1);
    return (int)len;
}

static int
is_ext_header(const struct http_header *h)
{
    return http_eq(h->name, h->name_len, "Sec-WebSocket-Extensions");
}

int
pmd_negotiate(const struct pmd_policy *pol, const struct http_header *h,
              size_t n, struct pmd_params *out, char *resp, size_t cap)
{
    struct offer o;
    int is_pmd;

    memset(out, 0, sizeof *out);
    if (cap > 0)
        resp[0] = '\0';
    if (!pol->enabled)
        return PMD_NEG_NONE;

    /* The whole list must parse before any offer of it is taken: an
     * offer followed by garbage is not what a conforming client sent. */
    for (size_t i = 0; i < n; i++) {
        const char *p, *end;
        int r;

        if (!is_ext_header(&h[i]))
            continue;
        p = h[i].value;
        end = p + h[i].value_len;
        while ((r = next_offer(&p, end, &is_pmd, &o)) == 1)
            ;
        if (r == -1)
            return PMD_NEG_MALFORMED;
    }

    for (size_t i = 0; i < n; i++) {
        const char *p, *end;

        if (!is_ext_header(&h[i]))
            continue;
        p = h[i].value;
        end = p + h[i].value_len;
        while (next_offer(&p, end, &is_pmd, &o) == 1) {
            if (is_pmd && !o.bad)
                return answer(pol, &o, out, resp, cap);
        }
    }
    return PMD_NEG_NONE;
}

/* ---- inflater */

static const uint8_t pmd_tail[4] = {0x00, 0x00, 0xff, 0xff};

void
pmd_inflater_init(struct pmd_inflater *in, const struct pmd_params *p,
                  uint64_t max_msg, uint32_t max_ratio)
{
    memset(in, 0, sizeof *in);
    in->bits = clamp_bits(p->client_max_window_bits);
    in->no_takeover = p->client_no_context_takeover;
    in->max_msg = max_msg;
    in->max_ratio = max_ratio;
}

void
pmd_inflater_free(struct pmd_inflater *in)
{
    if (in->z != NULL) {
        inflateEnd(&in->z->zs);
        free(in->z);
        in->z = NULL;
    }
    in->ended = 0;
}

size_t
pmd_inflater_memory(const struct pmd_inflater *in)
{
    return zs_memory(in->z);
}

static int
inflate_fail(struct pmd_inflater *in, int r)
{
    in->failed = (uint8_t)r;
    return r;
}

/* The stream, created at a message's first byte. */
static int
inflate_open(struct pmd_inflater *in)
{
    if (in->z != NULL)
        return 0;
    in->z = zs_new();
    if (in->z == NULL)
        return -1;
    if (inflateInit2(&in->z->zs, -(int)in->bits) != Z_OK) {
        free(in->z);
        in->z = NULL;
        return -1;
    }
    return 0;
}

/* The guard, after every zlib call. */
static int
inflate_guard(const struct pmd_inflater *in)
{
    uint64_t r = in->max_ratio;

    if (in->max_msg != 0 && in->msg_out > in->max_msg)
        return PMD_TOO_BIG;
    if (r != 0 && in->msg_out >= PMD_RATIO_MIN_BYTES &&
        in->msg_in <= UINT64_MAX / r && in->msg_out > r * in->msg_in)
        return PMD_RATIO;
    return PMD_OK;
}

/*
 * Run zlib over src[0..len) into dst[0..cap), cap > 0; payload: src is
 * the message's (not the tail), counted for the ratio. Returns PMD_OK
 * (all of src taken, zlib has nothing more to give for it),
 * PMD_NEED_OUTPUT_SPACE (dst full) or an error.
 */
static int
inflate_run(struct pmd_inflater *in, const uint8_t *src, size_t len,
            int payload, size_t *used, uint8_t *dst, size_t cap,
            size_t *produced)
{
    z_stream *zs = &in->z->zs;
    size_t in_done = 0, out_done = 0;
    int r = PMD_OK;

    for (;;) {
        uInt room, feed;
        uint64_t left;
        size_t took, got;
        int rc;

        if (in->ended) {
            if (in_done == len)
                break;
            /* §7.2.1: the next block follows the padded final block. */
            if (inflateResetKeep(zs) != Z_OK) {
                r = PMD_ERROR;
                break;
            }
            in->ended = 0;
        }
        if (out_done == cap) {
            r = PMD_NEED_OUTPUT_SPACE;
            break;
        }
        room = clamp_uint(cap - out_done);
        /* Never let zlib write past the first byte over the limit. */
        left = in->max_msg - in->msg_out;
        if (in->max_msg != 0 && left < (uint64_t)room - 1)
            room = (uInt)left + 1;
        feed = clamp_uint(len - in_done);
        zs->next_in = src + in_done;
        zs->avail_in = feed;
        zs->next_out = dst + out_done;
        zs->avail_out = room;
        rc = inflate(zs, Z_SYNC_FLUSH);
        took = feed - zs->avail_in;
        got = room - zs->avail_out;
        in_done += took;
        out_done += got;
        if (payload)
            in->msg_in += took;
        in->msg_out += got;
        if (rc == Z_DATA_ERROR || rc == Z_NEED_DICT) {
            r = PMD_BAD_DATA;
            break;
        }
        if (rc == Z_MEM_ERROR || rc == Z_STREAM_ERROR) {
            r = PMD_ERROR;
            break;
        }
        r = inflate_guard(in);
        if (r != PMD_OK)
            break;
        if (rc == Z_STREAM_END) {
            in->ended = 1;
            continue;
        }
        /* Z_OK or Z_BUF_ERROR. Output space left over: zlib has given
         * out all that the input taken yields. */
        if (zs->avail_out != 0) {
            if (in_done == len)
                break;
            if (took == 0 && got == 0) {
                r = PMD_ERROR;      /* no progress: cannot happen */
                break;
            }
        }
    }
    zs->next_in = Z_NULL;
    zs->next_out = Z_NULL;
    zs->avail_in = 0;
    zs->avail_out = 0;
    *used = in_done;
    *produced = out_done;
    if (r != PMD_OK && r != PMD_NEED_OUTPUT_SPACE)
        in->failed = (uint8_t)r;
    return r;
}

int
pmd_inflate(struct pmd_inflater *in, const uint8_t *src, size_t len,
            size_t *used, uint8_t *dst, size_t cap, size_t *produced)
{
    *used = 0;
    *produced = 0;
    if (in->failed)
        return in->failed;
    if (len == 0 && in->z == NULL)
        return PMD_OK;
    if (cap == 0)
        return PMD_NEED_OUTPUT_SPACE;
    if (inflate_open(in) == -1)
        return inflate_fail(in, PMD_ERROR);
    return inflate_run(in, src, len, 1, used, dst, cap, produced);
}

/* The message is over: its counters, and the stream unless it is kept
 * (under context takeover, ended stays: the next message restarts
 * decoding after the final block). */
static void
inflate_next_message(struct pmd_inflater *in)
{
    in->msg_in = 0;
    in->msg_out = 0;
    in->tail = 0;
    if (in->no_takeover)
        pmd_inflater_free(in);
}

int
pmd_inflate_end(struct pmd_inflater *in, uint8_t *dst, size_t cap,
                size_t *produced)
{
    size_t used;
    int r;

    *produced = 0;
    if (in->failed)
        return in->failed;
    if (in->msg_in == 0 && in->tail == 0) {
        /* An empty payload: an empty message (see the top of the file).
         * Nothing of this message is inside zlib. */
        inflate_next_message(in);
        return PMD_OK;
    }
    if (cap == 0)
        return PMD_NEED_OUTPUT_SPACE;
    if (in->ended && in->tail == 0) {
        /* The payload ended with its final block: nothing to append, and
         * zlib gave out everything when it reported the end. */
        inflate_next_message(in);
        return PMD_OK;
    }
    r = inflate_run(in, pmd_tail + in->tail, sizeof pmd_tail - in->tail, 0,
                    &used, dst, cap, produced);
    in->tail = (uint8_t)(in->tail + used);
    if (r != PMD_OK)
        return r;
    /* All of the tail is in and all of the output out. The data must stop
     * on a block boundary with no bits left over (data_type exactly 128:
     * zlib.h, inflate()), or at the end of a final block. */
    if (!in->ended && in->z->zs.data_type != 128)
        return inflate_fail(in, PMD_BAD_DATA);
    inflate_next_message(in);
    return PMD_OK;
}

/* ---- deflater */

void
pmd_deflater_init(struct pmd_deflater *d, const struct pmd_params *p,
                  int level)
{
    memset(d, 0, sizeof *d);
    d->bits = clamp_bits(p->server_max_window_bits);
    d->no_takeover = p->server_no_context_takeover;
    d->level = level < -1 || level > 9 ? Z_DEFAULT_COMPRESSION : level;
}

void
pmd_deflater_free(struct pmd_deflater *d)
{
    if (d->z != NULL) {
        deflateEnd(&d->z->zs);
        free(d->z);
        d->z = NULL;
    }
}

size_t
pmd_deflater_memory(const struct pmd_deflater *d)
{
    return zs_memory(d->z);
}

static int
deflate_fail(struct pmd_deflater *d, int r)
{
    d->failed = (uint8_t)r;
    return r;
}

/* The stream, created at a message's first byte: window and memLevel
 * from the agreed window (memLevel = bits - 7 keeps the hash table and
 * the pending buffer as large as the window, and is zlib's default pair
 * 15/8 at the top). */
static int
deflate_open(struct pmd_deflater *d)
{
    int bits = deflate_bits(d->bits);

    if (d->z != NULL)
        return 0;
    d->z = zs_new();
    if (d->z == NULL)
        return -1;
    if (deflateInit2(&d->z->zs, d->level, Z_DEFLATED, -bits, bits - 7,
                     Z_DEFAULT_STRATEGY) != Z_OK) {
        free(d->z);
        d->z = NULL;
        return -1;
    }
    return 0;
}

int
pmd_deflate(struct pmd_deflater *d, const uint8_t *src, size_t len,
            size_t *used, uint8_t *dst, size_t cap, size_t *produced)
{
    z_stream *zs;
    size_t in_done = 0, out_done = 0;
    int r = PMD_OK;

    *used = 0;
    *produced = 0;
    if (d->failed)
        return d->failed;
    if (d->flushing)
        return deflate_fail(d, PMD_ERROR);  /* input after the end */
    if (len == 0)
        return PMD_OK;
    if (cap < PMD_DEFLATE_MIN_OUT)
        return PMD_NEED_OUTPUT_SPACE;
    if (deflate_open(d) == -1)
        return deflate_fail(d, PMD_ERROR);
    d->fed = 1;
    zs = &d->z->zs;
    while (in_done < len) {
        uInt feed = clamp_uint(len - in_done);
        uInt room = clamp_uint(cap - out_done);
        size_t took, got;

        if (room == 0) {
            r = PMD_NEED_OUTPUT_SPACE;
            break;
        }
        zs->next_in = src + in_done;
        zs->avail_in = feed;
        zs->next_out = dst + out_done;
        zs->avail_out = room;
        if (deflate(zs, Z_NO_FLUSH) == Z_STREAM_ERROR) {
            r = deflate_fail(d, PMD_ERROR);
            break;
        }
        took = feed - zs->avail_in;
        got = room - zs->avail_out;
        in_done += took;
        out_done += got;
        if (took == 0 && got == 0) {
            r = deflate_fail(d, PMD_ERROR);     /* cannot happen */
            break;
        }
    }
    zs->next_in = Z_NULL;
    zs->next_out = Z_NULL;
    zs->avail_in = 0;
    zs->avail_out = 0;
    *used = in_done;
    *produced = out_done;
    return r;
}

/* The message is over: the stream too unless it is kept. */
static void
deflate_next_message(struct pmd_deflater *d)
{
    d->fed = 0;
    d->flushing = 0;
    d->nhold = 0;
    if (d->no_takeover)
        pmd_deflater_free(d);
}

int
pmd_deflate_end(struct pmd_deflater *d, uint8_t *dst, size_t cap,
                size_t *produced)
{
    z_stream *zs;
    size_t have, keep;
    uInt room;
    int done;

    *produced = 0;
    if (d->failed)
        return d->failed;
    if (cap < PMD_DEFLATE_MIN_OUT)
        return PMD_NEED_OUTPUT_SPACE;
    if (!d->fed) {
        /* §7.2.3.6: an empty stored block's header, without asking zlib
         * (a second sync flush without input gives nothing). */
        dst[0] = 0x00;
        *produced = 1;
        deflate_next_message(d);
        return PMD_OK;
    }
    d->flushing = 1;
    zs = &d->z->zs;

    /* The bytes held back by the previous call come first; zlib writes
     * after them; the last 4 of it all are held back again, since only
     * the end of the flush tells whether they are the tail. */
    memcpy(dst, d->hold, d->nhold);
    have = d->nhold;
    room = clamp_uint(cap - have);
    zs->next_in = Z_NULL;
    zs->avail_in = 0;
    zs->next_out = dst + have;
    zs->avail_out = room;
    if (deflate(zs, Z_SYNC_FLUSH) == Z_STREAM_ERROR) {
        zs->next_out = Z_NULL;
        return deflate_fail(d, PMD_ERROR);
    }
    /* Space left: the flush is complete. (When the output ends exactly at
     * the end of dst, the next call may add a second empty stored block:
     * still valid, 5 bytes longer.) */
    done = zs->avail_out != 0;
    have += room - zs->avail_out;
    zs->next_out = Z_NULL;
    zs->avail_out = 0;
    keep = have < sizeof d->hold ? have : sizeof d->hold;
    memcpy(d->hold, dst + have - keep, keep);
    d->nhold = (uint8_t)keep;
    *produced = have - keep;
    if (!done)
        return PMD_NEED_OUTPUT_SPACE;
    /* RFC 7692 §7.2.1: a sync flush ends with 00 00 ff ff; drop it. */
    if (d->nhold != sizeof pmd_tail ||
        memcmp(d->hold, pmd_tail, sizeof pmd_tail) != 0)
        return deflate_fail(d, PMD_ERROR);      /* cannot happen */
    deflate_next_message(d);
    return PMD_OK;
}
