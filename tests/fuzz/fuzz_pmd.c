/*
 * fuzz_pmd.c - libFuzzer target for pmd.c (permessage-deflate).
 *
 * Input: byte 0 picks the mode (byte 0 % 3), the next bytes configure it,
 * the rest is the data. Every piece handed to pmd.c is an exact-size heap
 * copy, and every output buffer an exact-size allocation, so ASan sees
 * any access past either.
 *
 * 0 inflate: arbitrary compressed payloads (1 to 4 messages, with or
 *   without context takeover, window 8..15, size and ratio limits) fed in
 *   fuzzer-chosen chunks with fuzzer-chosen output space, against zlib's
 *   one-shot inflate of payload + 00 00 ff ff (restarting after a final
 *   block, RFC 7692 §7.2.1). Properties:
 *   - never more than max_msg + 1 bytes inflated, and the zlib state
 *     within pmd_memory_bound();
 *   - what was inflated is a prefix of the reference output;
 *   - reference valid within the limit -> PMD_OK with exactly its bytes,
 *     unless PMD_RATIO (and then the ratio really was exceeded) or
 *     PMD_BAD_DATA for a distance past the agreed window (and then the
 *     reference run one output byte at a time, where zlib checks every
 *     distance against the window, fails too);
 *   - reference over the limit -> never PMD_OK, PMD_TOO_BIG at exactly
 *     max_msg + 1 bytes; reference invalid -> never PMD_OK;
 *   - results are sticky.
 * 1 round trip: arbitrary messages through pmd_deflate (level, window,
 *   context takeover, chunks, output space from the input) and back
 *   through pmd_inflate with the same parameters and small output space
 *   (so the inflater checks every distance against a window of 8 when
 *   the deflater ran zlib with 9): equal to the input, and zlib's own
 *   inflate of payload + tail gives it too.
 * 2 negotiation: Sec-WebSocket-Extensions lines under a fuzzer-chosen
 *   policy. An accepted answer is within the policy and, offered back
 *   with a policy that asks for nothing, is accepted as it is (same text,
 *   same parameters); a refusal leaves nothing behind; the same input
 *   gives the same answer twice.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZLIB_CONST
#include <zlib.h>

#include "http.h"
#include "pmd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                        \
    do {                                                                 \
        fprintf(stderr, "fuzz_pmd: " __VA_ARGS__);                       \
        fputc('\n', stderr);                                             \
        abort();                                                         \
    } while (0)
#define CHECK(x)                                                         \
    do {                                                                 \
        if (!(x))                                                        \
            FAIL("%s:%d: %s", __FILE__, __LINE__, #x);                   \
    } while (0)

#define MAX_MSGS 4

static const uint8_t tail4[4] = {0x00, 0x00, 0xff, 0xff};

static void *
xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (p == NULL)
        abort();
    return p;
}

static uint8_t *
copy(const uint8_t *p, size_t n)
{
    uint8_t *c = xmalloc(n);

    if (n > 0)
        memcpy(c, p, n);
    return c;
}

/* Chunk sizes from a seed: 1..span bytes, or everything. */
struct chunker {
    uint32_t s;
    uint32_t span;              /* 0 = no split */
};

static size_t
next_chunk(struct chunker *c, size_t left)
{
    size_t n;

    if (c->span == 0)
        return left;
    c->s ^= c->s << 13;
    c->s ^= c->s >> 17;
    c->s ^= c->s << 5;
    n = 1 + c->s % c->span;
    return n < left ? n : left;
}

/* ---- the reference: zlib one-shot */

enum ref_result { REF_OK, REF_BIG, REF_BAD };

/*
 * Decode message payload p[0..n) (+ tail) on zs, the RFC 7692 way:
 * empty payload = empty message; after a final block decoding goes on at
 * the next byte with the window kept; a payload ending with its final
 * block needs no tail; otherwise payload + tail must end on a block
 * boundary. Output into out[0..max + 1), step bytes of output space per
 * zlib call (1: every distance checked against the window). *ended
 * carries "at the end of a final block" across messages.
 */
static int
ref_message(z_stream *zs, const uint8_t *p, size_t n, uint8_t *out,
            size_t max, size_t step, int *ended, size_t *out_len)
{
    uint8_t *in = xmalloc(n + 4);
    size_t total = n + 4, done = 0, outn = 0;
    int r = REF_OK;

    *out_len = 0;
    if (n == 0) {
        free(in);
        return REF_OK;
    }
    memcpy(in, p, n);
    memcpy(in + n, tail4, 4);
    for (;;) {
        size_t room = max + 1 - outn;
        int rc;

        if (*ended) {
            if (done == total || done == n)
                break;          /* final block, then nothing: no tail */
            if (inflateResetKeep(zs) != Z_OK)
                abort();
            *ended = 0;
        }
        if (room == 0) {
            r = REF_BIG;
            break;
        }
        if (room > step)
            room = step;
        zs->next_in = in + done;
        zs->avail_in = (uInt)(total - done);
        zs->next_out = out + outn;
        zs->avail_out = (uInt)room;
        rc = inflate(zs, Z_SYNC_FLUSH);
        done = total - zs->avail_in;
        outn += room - zs->avail_out;
        if (rc == Z_STREAM_END) {
            *ended = 1;
            continue;
        }
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            r = REF_BAD;
            break;
        }
        if (zs->avail_out != 0) {
            if (done == total) {
                if (zs->data_type != 128)
                    r = REF_BAD;
                break;
            }
            r = REF_BAD;        /* no progress */
            break;
        }
    }
    if (r == REF_OK && outn > max)
        r = REF_BIG;
    *out_len = outn;
    free(in);
    return r;
}

struct inflate_cfg {
    uint8_t bits, nct;
    uint64_t max;
    uint32_t ratio;
};

/* The reference over messages 0..upto: results and outputs of the last
 * one. */
static int
ref_run(const struct inflate_cfg *cfg, const uint8_t *const *msg,
        const size_t *len, int upto, size_t step, uint8_t *out,
        size_t *out_len)
{
    z_stream zs;
    int ended = 0, r = REF_OK;

    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, -(int)cfg->bits) != Z_OK)
        abort();
    for (int m = 0; m <= upto; m++) {
        if (cfg->nct && m > 0) {
            inflateEnd(&zs);
            memset(&zs, 0, sizeof zs);
            if (inflateInit2(&zs, -(int)cfg->bits) != Z_OK)
                abort();
            ended = 0;
        }
        r = ref_message(&zs, msg[m], len[m], out, cfg->max, step, &ended,
                        out_len);
        if (r != REF_OK)
            break;
    }
    inflateEnd(&zs);
    return r;
}

/* ---- mode 0: inflate against the reference */

static const uint64_t max_table[] = {1, 100, 4096, 65536, 300000, 5};
static const uint32_t ratio_table[] = {0, 0, 2, 10, 100, 1000, 0, 3};

/* Feed one message; returns the result and the output in out (room for
 * max + 2 bytes; more than max + 1 fails the target). */
static int
stream_message(struct pmd_inflater *in, const uint8_t *p, size_t n,
               struct chunker *ch, size_t cap, uint8_t *out, size_t max,
               size_t *out_len)
{
    uint8_t *scratch = xmalloc(cap);
    size_t off = 0, outn = 0, used, got;
    int r = PMD_OK;

    while (off < n) {
        size_t c = next_chunk(ch, n - off), taken = 0;
        uint8_t *piece = copy(p + off, c);

        do {
            r = pmd_inflate(in, piece + taken, c - taken, &used, scratch,
                            cap, &got);
            CHECK(used <= c - taken && got <= cap);
            CHECK(outn + got <= max + 1);
            memcpy(out + outn, scratch, got);
            outn += got;
            taken += used;
        } while (r == PMD_NEED_OUTPUT_SPACE);
        free(piece);
        if (r != PMD_OK)
            goto done;
        CHECK(taken == c);
        off += c;
    }
    do {
        r = pmd_inflate_end(in, scratch, cap, &got);
        CHECK(got <= cap);
        CHECK(outn + got <= max + 1);
        memcpy(out + outn, scratch, got);
        outn += got;
    } while (r == PMD_NEED_OUTPUT_SPACE);
done:
    free(scratch);
    *out_len = outn;
    return r;
}

static void
fuzz_inflate(const uint8_t *d, size_t n)
{
    struct inflate_cfg cfg;
    struct pmd_params p;
    struct pmd_inflater in;
    struct chunker ch;
    const uint8_t *msg[MAX_MSGS];
    size_t len[MAX_MSGS], cap, bound;
    int nmsg;
    uint8_t *sout, *rout;

    if (n < 4)
        return;
    cfg.bits = (uint8_t)(8 + (d[0] & 7));
    cfg.nct = (d[0] >> 3) & 1;
    nmsg = 1 + ((d[0] >> 4) & 3);
    cfg.max = max_table[d[1] % 6];
    cfg.ratio = ratio_table[(d[1] >> 4) & 7];
    ch.s = d[2] * 2654435761u + 1;
    ch.span = (d[2] & 0x80) ? 0 : (d[2] & 0x3f) + 1u;
    cap = (d[3] & 0x80) ? 16384 : 1 + (d[3] & 0x3f);
    d += 4;
    n -= 4;
    for (int m = 0; m < nmsg; m++) {
        size_t a = n * (size_t)m / (size_t)nmsg;
        size_t b = n * (size_t)(m + 1) / (size_t)nmsg;

        msg[m] = d + a;
        len[m] = b - a;
    }

    memset(&p, 0, sizeof p);
    p.client_max_window_bits = cfg.bits;
    p.client_no_context_takeover = cfg.nct;
    p.server_max_window_bits = 15;
    bound = pmd_memory_bound(&p);
    pmd_inflater_init(&in, &p, cfg.max, cfg.ratio);
    sout = xmalloc(cfg.max + 2);
    rout = xmalloc(cfg.max + 2);
    for (int m = 0; m < nmsg; m++) {
        size_t sn, rn;
        int s = stream_message(&in, msg[m], len[m], &ch, cap, sout, cfg.max,
                               &sn);
        int r = ref_run(&cfg, msg, len, m, (size_t)-1, rout, &rn);

        CHECK(pmd_inflater_memory(&in) <= bound);
        CHECK(sn <= cfg.max + 1);
        /* the same bits decoded: a prefix of the reference */
        CHECK(sn <= rn);
        CHECK(sn == 0 || memcmp(sout, rout, sn) == 0);
        switch (s) {
        case PMD_OK:
            CHECK(r == REF_OK);
            CHECK(sn == rn);
            CHECK(cfg.ratio == 0 || sn < PMD_RATIO_MIN_BYTES ||
                  sn <= (uint64_t)cfg.ratio * len[m]);
            break;
        case PMD_TOO_BIG:
            CHECK(r != REF_OK);
            CHECK(sn == cfg.max + 1);
            break;
        case PMD_RATIO:
            CHECK(cfg.ratio != 0);
            CHECK(in.msg_out >= PMD_RATIO_MIN_BYTES);
            CHECK(in.msg_out > (uint64_t)cfg.ratio * in.msg_in);
            break;
        case PMD_BAD_DATA:
            if (r == REF_OK) {
                /* only a distance past the window, which zlib sees
                 * when it writes one byte a call */
                size_t strict_n;

                CHECK(ref_run(&cfg, msg, len, m, 1, rout, &strict_n) ==
                      REF_BAD);
            }
            break;
        default:
            FAIL("result %d (%s)", s, pmd_result_name(s));
        }
        if (s != PMD_OK) {
            size_t used, got;
            uint8_t b[8];

            CHECK(pmd_inflate(&in, tail4, 4, &used, b, sizeof b, &got) ==
                  s);
            CHECK(used == 0 && got == 0);
            CHECK(pmd_inflate_end(&in, b, sizeof b, &got) == s);
            break;
        }
        if (cfg.nct)
            CHECK(pmd_inflater_memory(&in) == 0);
    }
    pmd_inflater_free(&in);
    CHECK(pmd_inflater_memory(&in) == 0);
    free(sout);
    free(rout);
}

/* ---- mode 1: deflate -> inflate */

static size_t
deflate_message(struct pmd_deflater *df, const uint8_t *p, size_t n,
                struct chunker *ch, size_t cap, uint8_t *out, size_t max)
{
    uint8_t *scratch = xmalloc(cap);
    size_t off = 0, outn = 0, used, got;
    int r;

    while (off < n) {
        size_t c = next_chunk(ch, n - off), taken = 0;
        uint8_t *piece = copy(p + off, c);

        do {
            r = pmd_deflate(df, piece + taken, c - taken, &used, scratch,
                            cap, &got);
            CHECK(r == PMD_OK || r == PMD_NEED_OUTPUT_SPACE);
            CHECK(got <= cap && outn + got <= max);
            memcpy(out + outn, scratch, got);
            outn += got;
            taken += used;
        } while (r == PMD_NEED_OUTPUT_SPACE);
        free(piece);
        CHECK(taken == c);
        off += c;
    }
    do {
        r = pmd_deflate_end(df, scratch, cap, &got);
        CHECK(r == PMD_OK || r == PMD_NEED_OUTPUT_SPACE);
        CHECK(got <= cap && outn + got <= max);
        memcpy(out + outn, scratch, got);
        outn += got;
    } while (r == PMD_NEED_OUTPUT_SPACE);
    free(scratch);
    CHECK(outn > 0);
    return outn;
}

static void
fuzz_round_trip(const uint8_t *d, size_t n)
{
    struct pmd_params p;
    struct pmd_deflater df;
    struct pmd_inflater in;
    struct chunker dch, ich;
    size_t dcap, icap, bound, cmax;
    int nmsg, level;
    uint8_t *cbuf, *pbuf;
    z_stream zs;

    if (n < 4)
        return;
    memset(&p, 0, sizeof p);
    p.server_max_window_bits = (uint8_t)(8 + (d[0] & 7));
    p.client_max_window_bits = p.server_max_window_bits;
    p.server_no_context_takeover = (d[0] >> 3) & 1;
    p.client_no_context_takeover = p.server_no_context_takeover;
    nmsg = 1 + ((d[0] >> 4) & 3);
    level = (d[1] % 11) - 1;    /* -1..9 */
    dch.s = d[2] * 2654435761u + 7;
    dch.span = (d[2] & 0x80) ? 0 : (d[2] & 0x3f) + 1u;
    ich = dch;
    ich.s ^= 0x9e3779b9u;
    dcap = PMD_DEFLATE_MIN_OUT + (d[3] & 0x3f);
    icap = (d[3] & 0x80) ? 1 + (d[1] >> 4) : 16384;
    d += 4;
    n -= 4;

    bound = pmd_memory_bound(&p);
    pmd_deflater_init(&df, &p, level);
    pmd_inflater_init(&in, &p, n, 0);
    cmax = n + n / 2 + 64;
    cbuf = xmalloc(cmax);
    pbuf = xmalloc(n + 1);
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, -(int)p.client_max_window_bits) != Z_OK)
        abort();
    for (int m = 0; m < nmsg; m++) {
        size_t a = n * (size_t)m / (size_t)nmsg;
        size_t b = n * (size_t)(m + 1) / (size_t)nmsg;
        size_t clen, plen;
        uint8_t *zin;
        int ended = 0;

        clen = deflate_message(&df, d + a, b - a, &dch, dcap, cbuf, cmax);
        CHECK(pmd_deflater_memory(&df) + pmd_inflater_memory(&in) <= bound);
        if (p.server_no_context_takeover)
            CHECK(pmd_deflater_memory(&df) == 0);
        CHECK(stream_message(&in, cbuf, clen, &ich, icap, pbuf, n, &plen) ==
              PMD_OK);
        CHECK(plen == b - a);
        CHECK(plen == 0 || memcmp(pbuf, d + a, plen) == 0);

        /* zlib's own inflate agrees */
        if (p.server_no_context_takeover) {
            inflateEnd(&zs);
            memset(&zs, 0, sizeof zs);
            if (inflateInit2(&zs, -(int)p.client_max_window_bits) != Z_OK)
                abort();
        }
        zin = copy(cbuf, clen);
        CHECK(ref_message(&zs, zin, clen, pbuf, n, (size_t)-1, &ended,
                          &plen) == REF_OK);
        CHECK(!ended);
        CHECK(plen == b - a);
        CHECK(plen == 0 || memcmp(pbuf, d + a, plen) == 0);
        free(zin);
    }
    inflateEnd(&zs);
    pmd_deflater_free(&df);
    pmd_inflater_free(&in);
    free(cbuf);
    free(pbuf);
}

/* ---- mode 2: negotiation */

#define MAX_LINES 4

static void
fuzz_negotiate(const uint8_t *d, size_t n)
{
    static const char *names[] = {"Sec-WebSocket-Extensions",
                                  "sec-websocket-extensions",
                                  "SEC-WEBSOCKET-EXTENSIONS",
                                  "Sec-WebSocket-Protocol"};
    static const struct pmd_policy any = {1, 0, 0, 15, 15};
    struct pmd_policy pol;
    struct http_header h[MAX_LINES];
    char *vals[MAX_LINES];
    size_t nh = 0, off = 0;
    struct pmd_params out, out2, back;
    char resp[PMD_RESPONSE_MAX], resp2[PMD_RESPONSE_MAX];
    char back_resp[PMD_RESPONSE_MAX];
    int r, r2;

    if (n < 2)
        return;
    pol.enabled = (d[0] & 0x80) == 0 || (d[1] & 1);
    pol.server_no_context_takeover = d[0] & 1;
    pol.client_no_context_takeover = (d[0] >> 1) & 1;
    pol.server_max_window_bits = (uint8_t)(6 + (d[1] >> 1) % 11);  /* 6..16 */
    pol.client_max_window_bits = (uint8_t)(6 + (d[1] >> 5) * 2 % 11);
    d += 2;
    n -= 2;
    while (nh < MAX_LINES && off <= n) {
        const uint8_t *nl = memchr(d + off, '\n', n - off);
        size_t end = nl ? (size_t)(nl - d) : n;

        vals[nh] = (char *)copy(d + off, end - off);
        h[nh].name = names[nh % 4 == 3 && (d[0] & 0x40) ? 3 : nh % 3];
        h[nh].name_len = strlen(h[nh].name);
        h[nh].value = vals[nh];
        h[nh].value_len = end - off;
        nh++;
        off = end + 1;
    }

    r = pmd_negotiate(&pol, h, nh, &out, resp, sizeof resp);
    r2 = pmd_negotiate(&pol, h, nh, &out2, resp2, sizeof resp2);
    CHECK(r == r2 && memcmp(&out, &out2, sizeof out) == 0);
    if (r <= 0) {
        CHECK(r == PMD_NEG_NONE || r == PMD_NEG_MALFORMED);
        CHECK(resp[0] == '\0');
        CHECK(out.server_max_window_bits == 0 &&
              out.client_max_window_bits == 0 &&
              out.server_no_context_takeover == 0 &&
              out.client_no_context_takeover == 0);
        CHECK(pol.enabled || r == PMD_NEG_NONE);
    } else {
        uint8_t ps = pol.server_max_window_bits, pc =
            pol.client_max_window_bits;
        struct http_header bh;

        ps = ps < 8 ? 8 : ps > 15 ? 15 : ps;
        pc = pc < 8 ? 8 : pc > 15 ? 15 : pc;
        CHECK(pol.enabled);
        CHECK(strcmp(resp, resp2) == 0 && (size_t)r == strlen(resp));
        CHECK(strncmp(resp, "permessage-deflate", 18) == 0);
        CHECK(out.server_max_window_bits >= 8 &&
              out.server_max_window_bits <= ps);
        CHECK(out.client_max_window_bits >= 8 &&
              (out.client_max_window_bits <= pc ||
               out.client_max_window_bits == 15));
        CHECK(out.server_no_context_takeover >=
              pol.server_no_context_takeover);
        CHECK(out.client_no_context_takeover >=
              pol.client_no_context_takeover);
        CHECK(pmd_memory_bound(&out) <= 308376);

        /* the answer is itself an acceptable offer, taken as it is */
        bh.name = names[0];
        bh.name_len = strlen(names[0]);
        bh.value = (char *)copy((const uint8_t *)resp, (size_t)r);
        bh.value_len = (size_t)r;
        CHECK(pmd_negotiate(&any, &bh, 1, &back, back_resp,
                            sizeof back_resp) == r);
        CHECK(strcmp(back_resp, resp) == 0);
        CHECK(memcmp(&back, &out, sizeof out) == 0);
        free((void *)bh.value);
    }
    for (size_t i = 0; i < nh; i++)
        free(vals[i]);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 3) {
    case 0:
        fuzz_inflate(data + 1, size - 1);
        break;
    case 1:
        fuzz_round_trip(data + 1, size - 1);
        break;
    default:
        fuzz_negotiate(data + 1, size - 1);
        break;
    }
    return 0;
}
