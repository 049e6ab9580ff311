/*
 * test_pmd.c - permessage-deflate (pmd.c): negotiation vectors (browser
 * offers, several offers and header lines, quoted values, malformed and
 * unacceptable offers), the RFC 7692 §7.2.3 examples byte for byte,
 * deflate -> inflate round trips over many sizes, chunkings and window
 * sizes (every split point for small messages), context takeover on and
 * off, a compression bomb (stopped at max + 1 inflated bytes, with the
 * zlib state within its stated bound), a ratio bomb, invalid DEFLATE
 * data, and the memory each stream holds measured against
 * pmd_memory_bound(). Compressed inputs sit against a PROT_NONE page
 * (guard.h) where they are small enough.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#define ZLIB_CONST
#include <zlib.h>

#include "http.h"
#include "pmd.h"

#include "guard.h"

/* ---- helpers */

static struct pmd_params
params(uint8_t sbits, uint8_t cbits, int snct, int cnct)
{
    struct pmd_params p;

    memset(&p, 0, sizeof p);
    p.server_max_window_bits = sbits;
    p.client_max_window_bits = cbits;
    p.server_no_context_takeover = (uint8_t)snct;
    p.client_no_context_takeover = (uint8_t)cnct;
    return p;
}

/* The same parameters for both directions, for round trips through our
 * own deflater and inflater. */
static struct pmd_params
both(uint8_t bits, int nct)
{
    return params(bits, bits, nct, nct);
}

/* Deflate msg[0..len) as one message, fed in_chunk bytes at a time,
 * taking output out_cap bytes at a time; returns the payload length. */
static size_t
deflate_msg(struct pmd_deflater *d, const uint8_t *msg, size_t len,
            size_t in_chunk, size_t out_cap, uint8_t *out, size_t out_max)
{
    size_t off = 0, n = 0, used, got;
    int r;

    while (off < len) {
        size_t c = len - off < in_chunk ? len - off : in_chunk;
        size_t taken = 0;

        do {
            size_t room = out_max - n < out_cap ? out_max - n : out_cap;

            r = pmd_deflate(d, msg + off + taken, c - taken, &used, out + n,
                            room, &got);
            assert_true(r == PMD_OK || r == PMD_NEED_OUTPUT_SPACE);
            taken += used;
            n += got;
            assert_true(n <= out_max);
        } while (r == PMD_NEED_OUTPUT_SPACE);
        assert_int_equal(taken, c);
        off += c;
    }
    do {
        size_t room = out_max - n < out_cap ? out_max - n : out_cap;

        r = pmd_deflate_end(d, out + n, room, &got);
        assert_true(r == PMD_OK || r == PMD_NEED_OUTPUT_SPACE);
        n += got;
        assert_true(n <= out_max);
    } while (r == PMD_NEED_OUTPUT_SPACE);
    return n;
}

/* Inflate one message's payload p[0..len), in_chunk bytes a call, output
 * out_cap bytes a call, into out[0..out_max); *n receives the bytes
 * inflated. Returns the first result other than OK/NEED_OUTPUT_SPACE,
 * or PMD_OK when the message is complete. */
static int
inflate_msg(struct pmd_inflater *in, const uint8_t *p, size_t len,
            size_t in_chunk, size_t out_cap, uint8_t *out, size_t out_max,
            size_t *n)
{
    size_t off = 0, used, got;
    int r;

    *n = 0;
    while (off < len) {
        size_t c = len - off < in_chunk ? len - off : in_chunk;
        size_t taken = 0;

        do {
            size_t room = out_max - *n < out_cap ? out_max - *n : out_cap;

            r = pmd_inflate(in, p + off + taken, c - taken, &used,
                            out + *n, room, &got);
            assert_true(got <= room);
            taken += used;
            *n += got;
            if (r != PMD_OK && r != PMD_NEED_OUTPUT_SPACE)
                return r;
            assert_true(room > 0);
        } while (r == PMD_NEED_OUTPUT_SPACE);
        assert_int_equal(taken, c);
        off += c;
    }
    do {
        size_t room = out_max - *n < out_cap ? out_max - *n : out_cap;

        r = pmd_inflate_end(in, out + *n, room, &got);
        assert_true(got <= room);
        *n += got;
        if (r != PMD_OK && r != PMD_NEED_OUTPUT_SPACE)
            return r;
        assert_true(room > 0 || r == PMD_OK);
    } while (r == PMD_NEED_OUTPUT_SPACE);
    return PMD_OK;
}

/* Deterministic test data: text-like (JSON), random bytes, or zeros. */
static uint32_t rng_state = 12345;

static uint32_t
rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static void
fill(uint8_t *p, size_t n, int kind)
{
    static const char *words[] = {
        "{\"id\":", "\"name\":\"", "\"value\":", "\"items\":[", "true",
        "false", "null", "\"ts\":1700000000,", "},", "]", "\"x\"", ", ",
    };
    size_t i = 0;

    switch (kind) {
    case 0:
        while (i < n) {
            const char *w = words[rng() % (sizeof words / sizeof *words)];
            for (size_t k = 0; w[k] != '\0' && i < n; k++)
                p[i++] = (uint8_t)w[k];
            if (rng() % 4 == 0 && i < n)
                p[i++] = (uint8_t)('0' + rng() % 10);
        }
        break;
    case 1:
        for (; i < n; i++)
            p[i] = (uint8_t)rng();
        break;
    default:
        memset(p, 0, n);
        break;
    }
}

static struct http_header hdrs[8];

/* Headers for up to three Sec-WebSocket-Extensions values (NULL ends). */
static size_t
ext_headers(const char *a, const char *b, const char *c)
{
    const char *v[3] = {a, b, c};
    size_t n = 0;

    hdrs[n].name = "Host";
    hdrs[n].name_len = 4;
    hdrs[n].value = "example.com";
    hdrs[n].value_len = 11;
    n++;
    for (int i = 0; i < 3 && v[i] != NULL; i++) {
        hdrs[n].name = i == 1 ? "sec-websocket-extensions"
                              : "Sec-WebSocket-Extensions";
        hdrs[n].name_len = 24;
        hdrs[n].value = v[i];
        hdrs[n].value_len = strlen(v[i]);
        n++;
    }
    hdrs[n].name = "Sec-WebSocket-Protocol";
    hdrs[n].name_len = 22;
    hdrs[n].value = "permessage-deflate";   /* not an extension header */
    hdrs[n].value_len = 18;
    return n + 1;
}

/* ---- negotiation */

#define P_DEF {1, 0, 0, 15, 15}
#define P_SMALL {1, 0, 0, 12, 12}
#define P_NCT {1, 1, 1, 15, 15}
#define P_OFF {0, 0, 0, 15, 15}

struct neg_vec {
    const char *line[3];
    struct pmd_policy pol;
    int ret;                    /* 1 accepted, PMD_NEG_NONE, _MALFORMED */
    const char *resp;
    uint8_t snct, cnct, sbits, cbits;
};

static const struct neg_vec neg_vecs[] = {
    /* Chrome, Edge, Node's ws, Python's websockets */
    {{"permessage-deflate; client_max_window_bits"}, P_DEF, 1,
     "permessage-deflate", 0, 0, 15, 15},
    {{"permessage-deflate; client_max_window_bits"}, P_SMALL, 1,
     "permessage-deflate; server_max_window_bits=12; "
     "client_max_window_bits=12", 0, 0, 12, 12},
    /* Firefox, Safari: the client's window cannot be limited */
    {{"permessage-deflate"}, P_DEF, 1, "permessage-deflate", 0, 0, 15, 15},
    {{"permessage-deflate"}, P_SMALL, 1,
     "permessage-deflate; server_max_window_bits=12", 0, 0, 12, 15},
    {{"permessage-deflate"}, P_NCT, 1,
     "permessage-deflate; server_no_context_takeover; "
     "client_no_context_takeover", 1, 1, 15, 15},
    /* the offer bounds the server's window */
    {{"permessage-deflate; server_max_window_bits=10"}, P_SMALL, 1,
     "permessage-deflate; server_max_window_bits=10", 0, 0, 10, 15},
    {{"permessage-deflate; server_max_window_bits=14"}, P_SMALL, 1,
     "permessage-deflate; server_max_window_bits=12", 0, 0, 12, 15},
    {{"permessage-deflate; server_max_window_bits=8"}, P_DEF, 1,
     "permessage-deflate; server_max_window_bits=8", 0, 0, 8, 15},
    {{"permessage-deflate; server_max_window_bits=15"}, P_DEF, 1,
     "permessage-deflate; server_max_window_bits=15", 0, 0, 15, 15},
    /* the client's own bound, lowered further by the policy */
    {{"permessage-deflate; client_max_window_bits=10"}, P_SMALL, 1,
     "permessage-deflate; server_max_window_bits=12; "
     "client_max_window_bits=10", 0, 0, 12, 10},
    {{"permessage-deflate; client_max_window_bits=14"}, P_SMALL, 1,
     "permessage-deflate; server_max_window_bits=12; "
     "client_max_window_bits=12", 0, 0, 12, 12},
    {{"permessage-deflate; client_max_window_bits=14"}, P_DEF, 1,
     "permessage-deflate; client_max_window_bits=14", 0, 0, 15, 14},
    {{"permessage-deflate; client_max_window_bits=8"}, P_DEF, 1,
     "permessage-deflate; client_max_window_bits=8", 0, 0, 15, 8},
    /* context takeover */
    {{"permessage-deflate; server_no_context_takeover"}, P_DEF, 1,
     "permessage-deflate; server_no_context_takeover", 1, 0, 15, 15},
    {{"permessage-deflate; client_no_context_takeover"}, P_DEF, 1,
     "permessage-deflate; client_no_context_takeover", 0, 1, 15, 15},
    {{"permessage-deflate; client_no_context_takeover; "
      "server_no_context_takeover; client_max_window_bits; "
      "server_max_window_bits=9"}, P_DEF, 1,
     "permessage-deflate; server_no_context_takeover; "
     "client_no_context_takeover; server_max_window_bits=9", 1, 1, 9, 15},
    /* quoted values (RFC 6455 §9.1, RFC 7692 §7.1) */
    {{"permessage-deflate; server_max_window_bits=\"10\""}, P_DEF, 1,
     "permessage-deflate; server_max_window_bits=10", 0, 0, 10, 15},
    {{"permessage-deflate; client_max_window_bits=\"1\\1\""}, P_DEF, 1,
     "permessage-deflate; client_max_window_bits=11", 0, 0, 15, 11},
    {{"permessage-deflate; server_max_window_bits=\"\\1\\0\""}, P_DEF, 1,
     "permessage-deflate; server_max_window_bits=10", 0, 0, 10, 15},
    /* whitespace, empty elements, BWS around '=' */
    {{" ,, permessage-deflate ;\tclient_max_window_bits , ,"}, P_SMALL, 1,
     "permessage-deflate; server_max_window_bits=12; "
     "client_max_window_bits=12", 0, 0, 12, 12},
    {{"permessage-deflate; server_max_window_bits = 11"}, P_DEF, 1,
     "permessage-deflate; server_max_window_bits=11", 0, 0, 11, 15},
    /* several offers: the first acceptable one */
    {{"permessage-deflate; server_max_window_bits=7, "
      "permessage-deflate; client_max_window_bits"}, P_SMALL, 1,
     "permessage-deflate; server_max_window_bits=12; "
     "client_max_window_bits=12", 0, 0, 12, 12},
    {{"permessage-deflate; client_max_window_bits=10, permessage-deflate"},
     P_DEF, 1, "permessage-deflate; client_max_window_bits=10", 0, 0, 15,
     10},
    {{"x-webkit-deflate-frame; no_context_takeover, foo; bar=baz; q=\"v\","
      " permessage-deflate; server_no_context_takeover"}, P_DEF, 1,
     "permessage-deflate; server_no_context_takeover", 1, 0, 15, 15},
    /* several header lines */
    {{"x-webkit-deflate-frame", "permessage-deflate"}, P_DEF, 1,
     "permessage-deflate", 0, 0, 15, 15},
    {{"permessage-deflate; mux", "permessage-deflate; "
      "client_max_window_bits=9", "permessage-deflate"}, P_DEF, 1,
     "permessage-deflate; client_max_window_bits=9", 0, 0, 15, 9},
    /* duplicates and bad values: that offer is declined, the next tried */
    {{"permessage-deflate; server_max_window_bits=10; "
      "server_max_window_bits=10"}, P_DEF, PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate; client_max_window_bits; client_max_window_bits, "
      "permessage-deflate"}, P_DEF, 1, "permessage-deflate", 0, 0, 15, 15},
    {{"permessage-deflate; server_no_context_takeover; "
      "server_no_context_takeover"}, P_DEF, PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate; server_max_window_bits=16"}, P_DEF,
     PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate; server_max_window_bits=7"}, P_DEF, PMD_NEG_NONE,
     "", 0, 0, 0, 0},
    {{"permessage-deflate; server_max_window_bits=0"}, P_DEF, PMD_NEG_NONE,
     "", 0, 0, 0, 0},
    {{"permessage-deflate; server_max_window_bits=08"}, P_DEF,
     PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate; server_max_window_bits=010"}, P_DEF,
     PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate; server_max_window_bits=1000000000000000000009"},
     P_DEF, PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate; client_max_window_bits=abc"}, P_DEF,
     PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate; client_max_window_bits=+9"}, P_DEF,
     PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate; server_max_window_bits"}, P_DEF, PMD_NEG_NONE,
     "", 0, 0, 0, 0},
    {{"permessage-deflate; server_no_context_takeover=1"}, P_DEF,
     PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate; client_no_context_takeover=\"x\""}, P_DEF,
     PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate; foo"}, P_DEF, PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate; Server_Max_Window_Bits=10"}, P_DEF,
     PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"Permessage-Deflate"}, P_DEF, PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"x-webkit-deflate-frame"}, P_DEF, PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{""}, P_DEF, PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{NULL}, P_DEF, PMD_NEG_NONE, "", 0, 0, 0, 0},
    {{"permessage-deflate"}, P_OFF, PMD_NEG_NONE, "", 0, 0, 0, 0},
    /* syntax errors: no extension at all, whatever else was offered */
    {{"permessage-deflate;"}, P_DEF, PMD_NEG_MALFORMED, "", 0, 0, 0, 0},
    {{"permessage-deflate client_max_window_bits"}, P_DEF,
     PMD_NEG_MALFORMED, "", 0, 0, 0, 0},
    {{"permessage-deflate; server_max_window_bits=\"10"}, P_DEF,
     PMD_NEG_MALFORMED, "", 0, 0, 0, 0},
    {{"permessage-deflate; server_max_window_bits="}, P_DEF,
     PMD_NEG_MALFORMED, "", 0, 0, 0, 0},
    {{"permessage-deflate; server_max_window_bits=\"\""}, P_DEF,
     PMD_NEG_MALFORMED, "", 0, 0, 0, 0},
    {{"permessage-deflate; x=\"a b\""}, P_DEF, PMD_NEG_MALFORMED, "", 0, 0,
     0, 0},
    {{"permessage-deflate; x=\"a\\\""}, P_DEF, PMD_NEG_MALFORMED, "", 0, 0,
     0, 0},
    {{"permessage-deflate; =10"}, P_DEF, PMD_NEG_MALFORMED, "", 0, 0, 0, 0},
    {{"permessage-deflate, ;x"}, P_DEF, PMD_NEG_MALFORMED, "", 0, 0, 0, 0},
    {{"permessage-deflate; a=b=c"}, P_DEF, PMD_NEG_MALFORMED, "", 0, 0, 0,
     0},
    {{"perm\x01" "essage-deflate"}, P_DEF, PMD_NEG_MALFORMED, "", 0, 0, 0,
     0},
    {{"permessage-deflate", "foo bar"}, P_DEF, PMD_NEG_MALFORMED, "", 0, 0,
     0, 0},
    {{"permessage-deflate, \"quoted\""}, P_DEF, PMD_NEG_MALFORMED, "", 0, 0,
     0, 0},
};

static void
check_params(const struct pmd_params *p, uint8_t snct, uint8_t cnct,
             uint8_t sbits, uint8_t cbits)
{
    assert_int_equal(p->server_no_context_takeover, snct);
    assert_int_equal(p->client_no_context_takeover, cnct);
    assert_int_equal(p->server_max_window_bits, sbits);
    assert_int_equal(p->client_max_window_bits, cbits);
}

static void
test_negotiate_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof neg_vecs / sizeof *neg_vecs; i++) {
        const struct neg_vec *v = &neg_vecs[i];
        size_t n = ext_headers(v->line[0], v->line[0] ? v->line[1] : NULL,
                               v->line[0] && v->line[1] ? v->line[2] : NULL);
        struct pmd_params out;
        char resp[PMD_RESPONSE_MAX];
        int r;

        memset(resp, 'x', sizeof resp);
        r = pmd_negotiate(&v->pol, hdrs, n, &out, resp, sizeof resp);
        if (v->ret == 1) {
            if (r <= 0 || strcmp(resp, v->resp) != 0)
                fail_msg("vector %zu (%s): %d \"%s\", want \"%s\"", i,
                         v->line[0], r, r > 0 ? resp : "", v->resp);
            assert_int_equal((size_t)r, strlen(resp));
            check_params(&out, v->snct, v->cnct, v->sbits, v->cbits);
        } else {
            if (r != v->ret)
                fail_msg("vector %zu (%s): %d, want %d", i, v->line[0], r,
                         v->ret);
            assert_string_equal(resp, "");
            check_params(&out, 0, 0, 0, 0);
        }
    }
}

/* An answer, offered back with a policy that asks for nothing, is
 * accepted as it is: same parameters, same text. */
static void
test_negotiate_answer_parses_back(void **state)
{
    static const struct pmd_policy any = {1, 0, 0, 15, 15};

    (void)state;
    for (size_t i = 0; i < sizeof neg_vecs / sizeof *neg_vecs; i++) {
        const struct neg_vec *v = &neg_vecs[i];
        struct pmd_params back;
        char again[PMD_RESPONSE_MAX];
        size_t n;
        int r;

        if (v->ret != 1)
            continue;
        n = ext_headers(v->resp, NULL, NULL);
        r = pmd_negotiate(&any, hdrs, n, &back, again, sizeof again);
        assert_true(r > 0);
        assert_string_equal(again, v->resp);
        check_params(&back, v->snct, v->cnct, v->sbits, v->cbits);
    }
}

/* The longest answer, and a buffer one byte too short for it. */
static void
test_negotiate_longest(void **state)
{
    static const struct pmd_policy pol = {1, 1, 1, 10, 10};
    const char *want = "permessage-deflate; server_no_context_takeover; "
                       "client_no_context_takeover; "
                       "server_max_window_bits=10; "
                       "client_max_window_bits=10";
    struct pmd_params out;
    char resp[PMD_RESPONSE_MAX];
    size_t n = ext_headers("permessage-deflate; client_max_window_bits",
                           NULL, NULL);
    int r;

    (void)state;
    assert_true(strlen(want) + 1 <= PMD_RESPONSE_MAX);
    r = pmd_negotiate(&pol, hdrs, n, &out, resp, strlen(want) + 1);
    assert_int_equal(r, (int)strlen(want));
    assert_string_equal(resp, want);
    r = pmd_negotiate(&pol, hdrs, n, &out, resp, strlen(want));
    assert_int_equal(r, PMD_NEG_NONE);
    check_params(&out, 0, 0, 0, 0);

    /* out-of-range policy bits are clamped */
    {
        static const struct pmd_policy wild = {1, 0, 0, 3, 200};

        r = pmd_negotiate(&wild, hdrs, n, &out, resp, sizeof resp);
        assert_true(r > 0);
        assert_string_equal(resp, "permessage-deflate; "
                                  "server_max_window_bits=8");
        check_params(&out, 0, 0, 8, 15);
    }
}

/* Every prefix of valid offers must be handled without reading past it
 * (guard page), whatever the verdict. */
static void
test_negotiate_prefixes(void **state)
{
    static const char *lines[] = {
        "permessage-deflate; client_max_window_bits=\"1\\0\"; "
        "server_no_context_takeover, foo; a=\"b\\\"c\"",
        "x, permessage-deflate ; server_max_window_bits = 9 ,",
    };
    static const struct pmd_policy pol = P_SMALL;

    (void)state;
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++) {
        size_t len = strlen(lines[i]);

        for (size_t k = 0; k <= len; k++) {
            struct pmd_params out;
            char resp[PMD_RESPONSE_MAX];
            struct http_header h;

            h.name = "Sec-WebSocket-Extensions";
            h.name_len = 24;
            h.value = guarded(lines[i], k);
            h.value_len = k;
            (void)pmd_negotiate(&pol, &h, 1, &out, resp, sizeof resp);
        }
    }
}

/* ---- RFC 7692 §7.2.3 examples */

static const uint8_t hello_c[] = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
static const uint8_t hello2_c[] = {0xf2, 0x00, 0x11, 0x00, 0x00};

/* Inflate a payload given in pieces (lengths in parts, 0-terminated),
 * every piece against the guard page. */
static int
inflate_parts(struct pmd_inflater *in, const uint8_t *p, const size_t *parts,
              uint8_t *out, size_t cap, size_t *n)
{
    size_t used, got;
    int r;

    *n = 0;
    for (; *parts != 0; p += *parts, parts++) {
        const uint8_t *g = guarded(p, *parts);

        r = pmd_inflate(in, g, *parts, &used, out + *n, cap - *n, &got);
        *n += got;
        if (r != PMD_OK)
            return r;
        assert_int_equal(used, *parts);
    }
    r = pmd_inflate_end(in, out + *n, cap - *n, &got);
    *n += got;
    return r;
}

static void
expect_inflate(struct pmd_inflater *in, const uint8_t *p,
               const size_t *parts, const char *want)
{
    uint8_t out[64];
    size_t n;

    assert_int_equal(inflate_parts(in, p, parts, out, sizeof out, &n),
                     PMD_OK);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(out, want, n);
}

static void
test_rfc7692_examples(void **state)
{
    struct pmd_params take = both(15, 0), fresh = both(15, 1);
    struct pmd_inflater in;
    uint8_t out[64];
    size_t n;

    (void)state;
    /* §7.2.3.1: one compressed block, whole and as 3 + 4 */
    pmd_inflater_init(&in, &fresh, 0, 0);
    expect_inflate(&in, hello_c, (const size_t[]){7, 0}, "Hello");
    expect_inflate(&in, hello_c, (const size_t[]){3, 4, 0}, "Hello");
    assert_int_equal(pmd_inflater_memory(&in), 0);

    /* §7.2.3.2: sharing the window: the second "Hello" is a reference */
    pmd_inflater_init(&in, &take, 0, 0);
    expect_inflate(&in, hello_c, (const size_t[]){7, 0}, "Hello");
    expect_inflate(&in, hello2_c, (const size_t[]){5, 0}, "Hello");
    expect_inflate(&in, hello2_c, (const size_t[]){1, 1, 1, 1, 1, 0},
                   "Hello");
    pmd_inflater_free(&in);
    /* ... which without context takeover points before the window */
    pmd_inflater_init(&in, &fresh, 0, 0);
    expect_inflate(&in, hello_c, (const size_t[]){7, 0}, "Hello");
    assert_int_equal(inflate_parts(&in, hello2_c, (const size_t[]){5, 0},
                                   out, sizeof out, &n),
                     PMD_BAD_DATA);
    pmd_inflater_free(&in);

    /* §7.2.3.3: a block with no compression */
    pmd_inflater_init(&in, &fresh, 0, 0);
    expect_inflate(&in, (const uint8_t[]){0x00, 0x05, 0x00, 0xfa, 0xff,
                                          0x48, 0x65, 0x6c, 0x6c, 0x6f,
                                          0x00},
                   (const size_t[]){11, 0}, "Hello");

    /* §7.2.3.4: BFINAL set; the trailing 00 starts the next block */
    expect_inflate(&in, (const uint8_t[]){0xf3, 0x48, 0xcd, 0xc9, 0xc9,
                                          0x07, 0x00, 0x00},
                   (const size_t[]){8, 0}, "Hello");
    expect_inflate(&in, (const uint8_t[]){0xf3, 0x48, 0xcd, 0xc9, 0xc9,
                                          0x07, 0x00, 0x00},
                   (const size_t[]){7, 1, 0}, "Hello");
    /* a sender that stops after the final block needs no tail */
    expect_inflate(&in, (const uint8_t[]){0xf3, 0x48, 0xcd, 0xc9, 0xc9,
                                          0x07, 0x00},
                   (const size_t[]){7, 0}, "Hello");
    /* an empty final block (PHP's 03 00) */
    expect_inflate(&in, (const uint8_t[]){0x03, 0x00},
                   (const size_t[]){2, 0}, "");
    /* blocks after a final block belong to the message, and the window
     * carries over (context takeover) */
    pmd_inflater_init(&in, &take, 0, 0);
    expect_inflate(&in, (const uint8_t[]){0xf3, 0x48, 0xcd, 0xc9, 0xc9,
                                          0x07, 0x00, 0xf2, 0x00, 0x11,
                                          0x00, 0x00},
                   (const size_t[]){12, 0}, "HelloHello");
    expect_inflate(&in, (const uint8_t[]){0xf3, 0x48, 0xcd, 0xc9, 0xc9,
                                          0x07, 0x00},
                   (const size_t[]){7, 0}, "Hello");
    expect_inflate(&in, hello2_c, (const size_t[]){5, 0}, "Hello");
    pmd_inflater_free(&in);

    /* §7.2.3.5: two blocks in one message */
    pmd_inflater_init(&in, &fresh, 0, 0);
    expect_inflate(&in, (const uint8_t[]){0xf2, 0x48, 0x05, 0x00, 0x00,
                                          0x00, 0xff, 0xff, 0xca, 0xc9,
                                          0xc9, 0x07, 0x00},
                   (const size_t[]){13, 0}, "Hello");
    expect_inflate(&in, (const uint8_t[]){0xf2, 0x48, 0x05, 0x00, 0x00,
                                          0x00, 0xff, 0xff, 0xca, 0xc9,
                                          0xc9, 0x07, 0x00},
                   (const size_t[]){4, 4, 5, 0}, "Hello");

    /* §7.2.3.6: an empty fragment, and an empty payload */
    expect_inflate(&in, (const uint8_t[]){0x00}, (const size_t[]){1, 0},
                   "");
    expect_inflate(&in, (const uint8_t[]){0x00}, (const size_t[]){0}, "");
    assert_int_equal(pmd_inflater_memory(&in), 0);
}

/* Our deflater gives the RFC's bytes: "Hello" at every level but 0 (which
 * gives §7.2.3.3's stored block), the second one as a reference with
 * context takeover, the first form again without. */
static void
test_rfc7692_deflate(void **state)
{
    static const uint8_t stored[] = {0x00, 0x05, 0x00, 0xfa, 0xff, 0x48,
                                     0x65, 0x6c, 0x6c, 0x6f, 0x00};
    uint8_t out[64];
    struct pmd_deflater d;
    size_t n;

    (void)state;
    for (int level = -1; level <= 9; level++) {
        struct pmd_params take = both(15, 0), fresh = both(15, 1);

        pmd_deflater_init(&d, &take, level);
        n = deflate_msg(&d, (const uint8_t *)"Hello", 5, 5, 64, out, 64);
        if (level == 0) {
            assert_int_equal(n, sizeof stored);
            assert_memory_equal(out, stored, n);
            pmd_deflater_free(&d);
            continue;
        }
        assert_int_equal(n, sizeof hello_c);
        assert_memory_equal(out, hello_c, n);
        n = deflate_msg(&d, (const uint8_t *)"Hello", 5, 2, 16, out, 64);
        assert_int_equal(n, sizeof hello2_c);
        assert_memory_equal(out, hello2_c, n);
        assert_true(pmd_deflater_memory(&d) > 0);
        pmd_deflater_free(&d);
        assert_int_equal(pmd_deflater_memory(&d), 0);

        pmd_deflater_init(&d, &fresh, level);
        for (int i = 0; i < 3; i++) {
            n = deflate_msg(&d, (const uint8_t *)"Hello", 5, 1, 16, out,
                            64);
            assert_int_equal(n, sizeof hello_c);
            assert_memory_equal(out, hello_c, n);
            assert_int_equal(pmd_deflater_memory(&d), 0);
        }
    }

    /* an empty message is 00, with or without takeover, before or after
     * other messages, and allocates nothing by itself */
    for (int nct = 0; nct <= 1; nct++) {
        struct pmd_params p = both(12, nct);

        pmd_deflater_init(&d, &p, 6);
        n = deflate_msg(&d, NULL, 0, 1, 16, out, 64);
        assert_int_equal(n, 1);
        assert_int_equal(out[0], 0x00);
        assert_int_equal(pmd_deflater_memory(&d), 0);
        n = deflate_msg(&d, (const uint8_t *)"Hello", 5, 5, 64, out, 64);
        assert_memory_equal(out, hello_c, n);
        n = deflate_msg(&d, NULL, 0, 1, 16, out, 64);
        assert_int_equal(n, 1);
        assert_int_equal(out[0], 0x00);
        pmd_deflater_free(&d);
    }

    /* too little output space: nothing done */
    {
        struct pmd_params p = both(15, 0);
        size_t used;

        pmd_deflater_init(&d, &p, 6);
        assert_int_equal(pmd_deflate(&d, (const uint8_t *)"Hello", 5, &used,
                                     out, PMD_DEFLATE_MIN_OUT - 1, &n),
                         PMD_NEED_OUTPUT_SPACE);
        assert_int_equal(used, 0);
        assert_int_equal(n, 0);
        assert_int_equal(pmd_deflate_end(&d, out, PMD_DEFLATE_MIN_OUT - 1,
                                         &n),
                         PMD_NEED_OUTPUT_SPACE);
        assert_int_equal(n, 0);
        pmd_deflater_free(&d);
    }
}

/* ---- round trips */

/* One message through deflate and inflate with the given chunkings. */
static void
round_trip(struct pmd_deflater *d, struct pmd_inflater *in,
           const uint8_t *msg, size_t len, size_t d_in, size_t d_out,
           size_t i_in, size_t i_out, uint8_t *cbuf, size_t cmax,
           uint8_t *pbuf)
{
    size_t clen, plen;
    int r;

    clen = deflate_msg(d, msg, len, d_in, d_out, cbuf, cmax);
    r = inflate_msg(in, cbuf, clen, i_in, i_out, pbuf, len + 1, &plen);
    if (r != PMD_OK || plen != len || (len > 0 &&
                                        memcmp(pbuf, msg, len) != 0))
        fail_msg("round trip of %zu bytes (chunks %zu/%zu %zu/%zu): %s, "
                 "%zu bytes back", len, d_in, d_out, i_in, i_out,
                 pmd_result_name(r), plen);
}

static void
test_round_trip_sizes(void **state)
{
    static const size_t sizes[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 17,
                                   100, 255, 256, 257, 1000, 4095, 4096,
                                   16383, 16384, 16385, 65536, 100000,
                                   300000};
    static const size_t chunks[][4] = {
        {1 << 30, 1 << 20, 1 << 30, 1 << 20},
        {1, 16, 1, 1},
        {7, 17, 3, 5},
        {4096, 16384, 16384, 16384},
        {1000, 100, 13, 4096},
    };
    size_t maxlen = 300000;
    uint8_t *msg = malloc(maxlen), *pbuf = malloc(maxlen + 1);
    size_t cmax = maxlen + maxlen / 8 + 1024;
    uint8_t *cbuf = malloc(cmax);

    (void)state;
    assert_non_null(msg);
    assert_non_null(pbuf);
    assert_non_null(cbuf);
    for (int kind = 0; kind < 3; kind++) {
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
            for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
                uint8_t bits = (uint8_t)(8 + (s + c + (size_t)kind) % 8);
                int nct = (int)((s + c) % 2);
                struct pmd_params p = both(bits, nct);
                struct pmd_deflater d;
                struct pmd_inflater in;

                /* byte-at-a-time is slow: small messages only */
                if (chunks[c][2] < 16 && sizes[s] > 20000)
                    continue;
                fill(msg, sizes[s], kind);
                pmd_deflater_init(&d, &p, (int)(1 + (s + c) % 9));
                pmd_inflater_init(&in, &p, maxlen, 0);
                round_trip(&d, &in, msg, sizes[s], chunks[c][0],
                           chunks[c][1], chunks[c][2], chunks[c][3], cbuf,
                           cmax, pbuf);
                /* and a second message through the same objects */
                round_trip(&d, &in, msg, sizes[s], chunks[c][0],
                           chunks[c][1], chunks[c][2], chunks[c][3], cbuf,
                           cmax, pbuf);
                pmd_deflater_free(&d);
                pmd_inflater_free(&in);
            }
        }
    }
    free(msg);
    free(pbuf);
    free(cbuf);
}

/* Small messages: the compressed payload split at every offset (each
 * piece against the guard page), inflated with output space 1 and
 * plenty; the message split at every offset for the deflater. */
static void
test_round_trip_every_split(void **state)
{
    uint8_t msg[300], cbuf[600], pbuf[301];
    static const size_t lens[] = {1, 5, 40, 300};

    (void)state;
    for (int kind = 0; kind < 3; kind++) {
        for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
            size_t len = lens[li], clen;
            struct pmd_params p = both(15, 1);
            struct pmd_deflater d;
            struct pmd_inflater in;

            fill(msg, len, kind);
            pmd_deflater_init(&d, &p, 6);
            clen = deflate_msg(&d, msg, len, len, 1024, cbuf, sizeof cbuf);
            pmd_inflater_init(&in, &p, 0, 0);
            for (size_t k = 0; k <= clen; k++) {
                for (size_t cap = 1; cap <= 1024; cap += 1023) {
                    size_t n = 0, used, got;
                    size_t cut[2] = {k, clen - k};
                    int r = PMD_OK;

                    for (int part = 0; part < 2; part++) {
                        const uint8_t *g = guarded(cbuf + (part ? k : 0),
                                                   cut[part]);
                        size_t off = 0;

                        do {
                            r = pmd_inflate(&in, g + off, cut[part] - off,
                                            &used, pbuf + n, cap, &got);
                            off += used;
                            n += got;
                            assert_true(n <= len);
                        } while (r == PMD_NEED_OUTPUT_SPACE);
                        assert_int_equal(r, PMD_OK);
                        assert_int_equal(off, cut[part]);
                    }
                    do {
                        r = pmd_inflate_end(&in, pbuf + n, cap, &got);
                        n += got;
                        assert_true(n <= len);
                    } while (r == PMD_NEED_OUTPUT_SPACE);
                    assert_int_equal(r, PMD_OK);
                    assert_int_equal(n, len);
                    assert_memory_equal(pbuf, msg, len);
                }
            }
            /* the deflater, fed in two pieces at every offset */
            for (size_t k = 0; k <= len; k++) {
                size_t used, got, n = 0, c2;
                int r;

                r = pmd_deflate(&d, msg, k, &used, cbuf, sizeof cbuf, &got);
                assert_int_equal(r, PMD_OK);
                n += got;
                r = pmd_deflate(&d, msg + k, len - k, &used, cbuf + n,
                                sizeof cbuf - n, &got);
                assert_int_equal(r, PMD_OK);
                n += got;
                r = pmd_deflate_end(&d, cbuf + n, sizeof cbuf - n, &got);
                assert_int_equal(r, PMD_OK);
                c2 = n + got;
                assert_int_equal(inflate_msg(&in, cbuf, c2, c2, 1024, pbuf,
                                             sizeof pbuf, &n),
                                 PMD_OK);
                assert_int_equal(n, len);
                assert_memory_equal(pbuf, msg, len);
            }
            pmd_deflater_free(&d);
            pmd_inflater_free(&in);
        }
    }
}

/* The deflater's output space at every size from its minimum: the held
 * back tail may straddle any two calls. */
static void
test_deflate_output_sizes(void **state)
{
    uint8_t msg[3000], cbuf[4000], pbuf[3001], ref[4000];
    size_t rlen;

    (void)state;
    fill(msg, sizeof msg, 0);
    for (int nct = 0; nct <= 1; nct++) {
        struct pmd_params p = both(11, nct);
        struct pmd_deflater d;
        struct pmd_inflater in;

        pmd_deflater_init(&d, &p, 6);
        rlen = deflate_msg(&d, msg, sizeof msg, sizeof msg, sizeof ref, ref,
                           sizeof ref);
        pmd_deflater_free(&d);
        for (size_t cap = PMD_DEFLATE_MIN_OUT; cap <= rlen + 8; cap++) {
            size_t clen, n;

            pmd_deflater_init(&d, &p, 6);
            pmd_inflater_init(&in, &p, 0, 0);
            for (int m = 0; m < 3; m++) {
                clen = deflate_msg(&d, msg, sizeof msg, 1000, cap, cbuf,
                                   sizeof cbuf);
                /* the same bytes as in one go, except that a flush
                 * ending exactly at the end of the space may add one
                 * empty stored block (5 bytes) */
                if (m == 0 && clen != rlen) {
                    assert_int_equal(clen, rlen + 5);
                    assert_memory_equal(cbuf, ref, rlen - 1);
                } else if (m == 0) {
                    assert_memory_equal(cbuf, ref, rlen);
                }
                assert_int_equal(inflate_msg(&in, cbuf, clen, clen, 1 << 20,
                                             pbuf, sizeof pbuf, &n),
                                 PMD_OK);
                assert_int_equal(n, sizeof msg);
                assert_memory_equal(pbuf, msg, sizeof msg);
            }
            pmd_deflater_free(&d);
            pmd_inflater_free(&in);
        }
    }
}

/* ---- context takeover */

static void
test_context_takeover(void **state)
{
    uint8_t msg[2000], cbuf[4000], pbuf[2001];
    size_t first = 0, n;

    (void)state;
    fill(msg, sizeof msg, 0);
    for (int nct = 0; nct <= 1; nct++) {
        struct pmd_params p = both(15, nct);
        struct pmd_deflater d;
        struct pmd_inflater in;

        pmd_deflater_init(&d, &p, 6);
        pmd_inflater_init(&in, &p, 0, 0);
        for (int m = 0; m < 6; m++) {
            size_t clen = deflate_msg(&d, msg, sizeof msg, 512, 300, cbuf,
                                      sizeof cbuf);

            if (m == 0)
                first = clen;
            else if (nct)
                assert_int_equal(clen, first);  /* every message alike */
            else
                assert_true(clen < first / 10); /* a reference back */
            assert_int_equal(inflate_msg(&in, cbuf, clen, 100, 700, pbuf,
                                         sizeof pbuf, &n),
                             PMD_OK);
            assert_int_equal(n, sizeof msg);
            assert_memory_equal(pbuf, msg, sizeof msg);
            /* released between messages exactly when not kept */
            if (nct) {
                assert_int_equal(pmd_deflater_memory(&d), 0);
                assert_int_equal(pmd_inflater_memory(&in), 0);
            } else {
                assert_true(pmd_deflater_memory(&d) > 0);
                assert_true(pmd_inflater_memory(&in) > 0);
            }
            /* interleave empty messages: they change nothing */
            clen = deflate_msg(&d, msg, 0, 1, 16, cbuf, sizeof cbuf);
            assert_int_equal(inflate_msg(&in, cbuf, clen, 1, 1, pbuf,
                                         sizeof pbuf, &n),
                             PMD_OK);
            assert_int_equal(n, 0);
        }
        pmd_deflater_free(&d);
        pmd_inflater_free(&in);
    }

    /* The two directions independently: the client keeps its window, we
     * reset ours. */
    {
        struct pmd_params p = params(15, 15, 1, 0);
        struct pmd_deflater d;
        struct pmd_inflater in;

        pmd_deflater_init(&d, &p, 6);
        pmd_inflater_init(&in, &p, 0, 0);
        assert_int_equal(deflate_msg(&d, msg, 100, 100, 300, cbuf,
                                     sizeof cbuf),
                         deflate_msg(&d, msg, 100, 100, 300, cbuf,
                                     sizeof cbuf));
        expect_inflate(&in, hello_c, (const size_t[]){7, 0}, "Hello");
        expect_inflate(&in, hello2_c, (const size_t[]){5, 0}, "Hello");
        pmd_deflater_free(&d);
        pmd_inflater_free(&in);
    }
}

/* server_max_window_bits=8: zlib deflates with 9, whose distances stay
 * within 250 bytes, so plain zlib with a 256-byte window decodes it, and
 * so does our inflater at 8. */
static void
test_window_8(void **state)
{
    size_t len = 200000;
    uint8_t *msg = malloc(len), *cbuf = malloc(2 * len),
            *pbuf = malloc(len + 1);
    struct pmd_params p = both(8, 0);
    struct pmd_deflater d;
    struct pmd_inflater in;

    (void)state;
    assert_non_null(msg);
    assert_non_null(cbuf);
    assert_non_null(pbuf);
    /* text with repeats at every distance up to 400 bytes */
    fill(msg, len, 0);
    for (size_t i = 400; i < len; i += 37) {
        size_t dist = 1 + rng() % 400;

        for (size_t k = i; k < i + 20 && k < len; k++)
            msg[k] = msg[k - dist];     /* overlapping, as LZ77 copies */
    }
    for (int level = 1; level <= 9; level += 4) {
        z_stream zs;
        size_t clen, n;
        static const uint8_t tail[4] = {0, 0, 0xff, 0xff};

        pmd_deflater_init(&d, &p, level);
        pmd_inflater_init(&in, &p, 0, 0);
        for (int m = 0; m < 2; m++) {
            clen = deflate_msg(&d, msg, len, 4096, 16384, cbuf, 2 * len);
            assert_int_equal(inflate_msg(&in, cbuf, clen, 16384, 16384,
                                         pbuf, len + 1, &n),
                             PMD_OK);
            assert_int_equal(n, len);
            assert_memory_equal(pbuf, msg, len);
            if (m == 1)
                break;
            /* the first message alone, through plain zlib at -8 */
            memset(&zs, 0, sizeof zs);
            assert_int_equal(inflateInit2(&zs, -8), Z_OK);
            memcpy(cbuf + clen, tail, 4);
            zs.next_in = cbuf;
            zs.avail_in = (uInt)clen + 4;
            zs.next_out = pbuf;
            zs.avail_out = (uInt)len + 1;
            assert_int_equal(inflate(&zs, Z_SYNC_FLUSH), Z_OK);
            assert_int_equal(zs.total_out, len);
            assert_memory_equal(pbuf, msg, len);
            inflateEnd(&zs);
        }
        assert_true(pmd_deflater_memory(&d) <= 5952 + (8u << 9) + 200);
        pmd_deflater_free(&d);
        pmd_inflater_free(&in);
    }
    free(msg);
    free(cbuf);
    free(pbuf);
}

/* ---- the guard */

/* A few MB of zlib's best compression of zeros (about 1:1030): two
 * leading blocks, then the 1 MiB block that zlib repeats identically
 * once it is in its steady state. Returns the payload length. */
static size_t
make_bomb(uint8_t *out, size_t cap, size_t *inflated)
{
    static uint8_t zero[1 << 20];
    uint8_t block[2][4096];
    size_t blen[2] = {0, 0}, n = 0;
    z_stream zs;

    memset(&zs, 0, sizeof zs);
    assert_int_equal(deflateInit2(&zs, 9, Z_DEFLATED, -15, 8,
                                  Z_DEFAULT_STRATEGY), Z_OK);
    *inflated = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t *b = block[i % 2];

        zs.next_in = zero;
        zs.avail_in = sizeof zero;
        zs.next_out = b;
        zs.avail_out = sizeof block[0];
        assert_int_equal(deflate(&zs, Z_SYNC_FLUSH), Z_OK);
        blen[i % 2] = sizeof block[0] - zs.avail_out;
        if (i < 2) {
            memcpy(out + n, b, blen[i % 2]);
            n += blen[i % 2];
            *inflated += sizeof zero;
        }
    }
    deflateEnd(&zs);
    /* blocks 3 and 4 are alike: the steady state */
    assert_int_equal(blen[0], blen[1]);
    assert_memory_equal(block[0], block[1], blen[0]);
    while (n + blen[0] <= cap) {
        memcpy(out + n, block[0], blen[0]);
        n += blen[0];
        *inflated += sizeof zero;
    }
    return n;
}

static void
test_bomb(void **state)
{
    size_t cap = 4u << 20, blen, declared, n;
    uint8_t *bomb = malloc(cap), *out = malloc(1 << 16);
    static const uint64_t max = 1u << 20;
    static const size_t feeds[] = {1u << 30, 1000, 7};
    static const size_t outs[] = {16384, 1000};

    (void)state;
    assert_non_null(bomb);
    assert_non_null(out);
    blen = make_bomb(bomb, cap, &declared);
    assert_true(blen > 3u << 20);           /* "a few MB" */
    assert_true(declared > (uint64_t)3 << 30);  /* of some 4 GB */
    print_message("bomb: %zu bytes that inflate to %zu\n", blen, declared);

    for (size_t f = 0; f < sizeof feeds / sizeof *feeds; f++) {
        for (size_t o = 0; o < sizeof outs / sizeof *outs; o++) {
            for (int nct = 0; nct <= 1; nct++) {
                struct pmd_params p = both(15, nct);
                struct pmd_inflater in;
                size_t off = 0, used, got, total = 0, peak = 0;
                int r;

                pmd_inflater_init(&in, &p, max, 0);
                do {
                    size_t c = blen - off < feeds[f] ? blen - off : feeds[f];

                    r = pmd_inflate(&in, bomb + off, c, &used, out, outs[o],
                                    &got);
                    off += used;
                    total += got;
                    if (pmd_inflater_memory(&in) > peak)
                        peak = pmd_inflater_memory(&in);
                } while ((r == PMD_OK || r == PMD_NEED_OUTPUT_SPACE) &&
                         off < blen);
                /* stopped at the first byte over the limit, having read
                 * a sliver of the bomb */
                assert_int_equal(r, PMD_TOO_BIG);
                assert_int_equal(total, max + 1);
                assert_int_equal(in.msg_out, max + 1);
                assert_true(off < 4096);
                assert_true(peak <= pmd_memory_bound(&p) -
                                        (5952 + (8u << 15) + 5 * 16 + 120));
                /* sticky */
                assert_int_equal(pmd_inflate(&in, bomb, 1, &used, out, 1,
                                             &got),
                                 PMD_TOO_BIG);
                assert_int_equal(used + got, 0);
                assert_int_equal(pmd_inflate_end(&in, out, 1, &got),
                                 PMD_TOO_BIG);
                pmd_inflater_free(&in);
                assert_int_equal(pmd_inflater_memory(&in), 0);
            }
        }
    }

    /* The ratio alone (no size limit): stopped soon after 64 KiB. */
    {
        struct pmd_params p = both(15, 0);
        struct pmd_inflater in;
        size_t off = 0, used, got, total = 0;
        int r;

        pmd_inflater_init(&in, &p, 0, 100);
        do {
            r = pmd_inflate(&in, bomb + off, blen - off, &used, out, 16384,
                            &got);
            off += used;
            total += got;
        } while (r == PMD_NEED_OUTPUT_SPACE);
        assert_int_equal(r, PMD_RATIO);
        assert_true(total >= PMD_RATIO_MIN_BYTES);
        assert_true(total <= PMD_RATIO_MIN_BYTES + 16384);
        assert_true(in.msg_out > 100 * in.msg_in);
        pmd_inflater_free(&in);
    }

    /* A real message of exactly max bytes passes; one byte more does not;
     * a ratio under the limit passes. */
    {
        size_t len = 1u << 20, clen;
        uint8_t *msg = calloc(len + 1, 1), *c = malloc(len);
        uint8_t *back = malloc(len + 2);
        struct pmd_params p = both(15, 1);
        struct pmd_deflater d;
        struct pmd_inflater in;

        assert_non_null(msg);
        assert_non_null(c);
        assert_non_null(back);
        fill(msg, len + 1, 0);
        pmd_deflater_init(&d, &p, 6);
        clen = deflate_msg(&d, msg, len, len, len, c, len);
        pmd_inflater_init(&in, &p, len, 10);
        assert_int_equal(inflate_msg(&in, c, clen, 4096, 16384, back,
                                     len + 2, &n),
                         PMD_OK);
        assert_int_equal(n, len);
        pmd_inflater_free(&in);
        clen = deflate_msg(&d, msg, len + 1, len, len, c, len);
        pmd_inflater_init(&in, &p, len, 10);
        assert_int_equal(inflate_msg(&in, c, clen, 4096, 16384, back,
                                     len + 2, &n),
                         PMD_TOO_BIG);
        assert_int_equal(n, len + 1);
        pmd_inflater_free(&in);
        /* the text compresses about 1:5, more than 3 fails the ratio */
        pmd_inflater_init(&in, &p, 0, 3);
        assert_int_equal(inflate_msg(&in, c, clen, 4096, 16384, back,
                                     len + 2, &n),
                         PMD_RATIO);
        pmd_inflater_free(&in);
        pmd_deflater_free(&d);
        free(msg);
        free(c);
        free(back);
    }
    free(bomb);
    free(out);
}

/* ---- invalid data */

struct bad_vec {
    const char *what;
    size_t len;
    uint8_t p[16];
};

static const struct bad_vec bad_vecs[] = {
    {"reserved block type 11, final", 1, {0x07}},
    {"reserved block type 11", 1, {0x06}},
    {"stored block with bad NLEN", 5, {0x00, 0x05, 0x00, 0x00, 0x00}},
    {"distance before the window", 5, {0xf2, 0x00, 0x11, 0x00, 0x00}},
    {"truncated block (not on a boundary)", 3, {0xf2, 0x48, 0xcd}},
    {"truncated message", 6, {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07}},
    {"dynamic block with bad code lengths", 4, {0x04, 0xff, 0xff, 0xff}},
    {"junk", 8, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
    {"stored block cut short", 9, {0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65,
                                   0x6c, 0x6c}},
    {"final block, then a truncated one", 9, {0xf3, 0x48, 0xcd, 0xc9, 0xc9,
                                              0x07, 0x00, 0xf2, 0x48}},
};

static void
test_bad_data(void **state)
{
    uint8_t out[256];

    (void)state;
    for (size_t i = 0; i < sizeof bad_vecs / sizeof *bad_vecs; i++) {
        const struct bad_vec *v = &bad_vecs[i];

        for (int nct = 0; nct <= 1; nct++) {
            for (size_t chunk = 1; chunk <= v->len; chunk += v->len - 1) {
                struct pmd_params p = both(15, nct);
                struct pmd_inflater in;
                size_t n, used, got;
                int r;

                pmd_inflater_init(&in, &p, 0, 0);
                r = inflate_msg(&in, v->p, v->len, chunk, 7, out,
                                sizeof out, &n);
                if (r != PMD_BAD_DATA)
                    fail_msg("%s: %s", v->what, pmd_result_name(r));
                /* sticky: the session is failing */
                assert_int_equal(pmd_inflate(&in, hello_c, 7, &used, out,
                                             sizeof out, &got),
                                 PMD_BAD_DATA);
                assert_int_equal(pmd_inflate_end(&in, out, sizeof out, &got),
                                 PMD_BAD_DATA);
                pmd_inflater_free(&in);
                if (chunk == v->len)
                    break;
            }
        }
    }
    /* invalid data after valid messages under context takeover */
    {
        struct pmd_params p = both(15, 0);
        struct pmd_inflater in;
        size_t n;

        pmd_inflater_init(&in, &p, 0, 0);
        expect_inflate(&in, hello_c, (const size_t[]){7, 0}, "Hello");
        assert_int_equal(inflate_msg(&in, bad_vecs[0].p, 1, 1, 10, out,
                                     sizeof out, &n),
                         PMD_BAD_DATA);
        pmd_inflater_free(&in);
    }
    /* a client past its agreed window of 2^9 bytes: zlib notices when
     * the distance reaches before the output of the current call */
    {
        uint8_t msg[2000], c[3000];
        struct pmd_params big = both(15, 1), small = both(9, 1);
        struct pmd_deflater d;
        struct pmd_inflater in;
        size_t clen, n;

        fill(msg, 1000, 1);
        memcpy(msg + 1000, msg, 1000);          /* distance 1000 */
        pmd_deflater_init(&d, &big, 6);
        clen = deflate_msg(&d, msg, sizeof msg, 2000, 3000, c, sizeof c);
        pmd_inflater_init(&in, &small, 0, 0);
        assert_int_equal(inflate_msg(&in, c, clen, clen, 100, msg,
                                     sizeof msg, &n),
                         PMD_BAD_DATA);
        pmd_inflater_free(&in);
        pmd_deflater_free(&d);
    }
}

/* ---- memory */

/* What each stream holds once its window is in use, against
 * pmd_memory_bound(), for every window size. */
static void
test_memory_bound(void **state)
{
    size_t len = 1u << 17;
    uint8_t *msg = malloc(len), *c = malloc(len + len / 8 + 1024);
    uint8_t *back = malloc(len + 1);

    (void)state;
    assert_non_null(msg);
    assert_non_null(c);
    assert_non_null(back);
    fill(msg, len, 0);
    for (uint8_t sb = 8; sb <= 15; sb++) {
        for (uint8_t cb = 8; cb <= 15; cb++) {
            struct pmd_params p = params(sb, cb, 0, 0);
            struct pmd_params inv = params(cb, sb, 0, 0);   /* the client */
            struct pmd_deflater d, client;
            struct pmd_inflater in;
            size_t clen, n, dm, im;

            pmd_deflater_init(&d, &p, 6);
            pmd_deflater_init(&client, &inv, 6);
            pmd_inflater_init(&in, &p, 0, 0);
            (void)deflate_msg(&d, msg, len, 16384, 16384, c,
                              len + len / 8 + 1024);
            clen = deflate_msg(&client, msg, len, 16384, 16384, c,
                               len + len / 8 + 1024);
            assert_int_equal(inflate_msg(&in, c, clen, 16384, 16384, back,
                                         len + 1, &n),
                             PMD_OK);
            assert_int_equal(n, len);
            dm = pmd_deflater_memory(&d);
            im = pmd_inflater_memory(&in);
            assert_int_equal(dm + im, pmd_memory_bound(&p));
            if (cb == sb && (sb == 15 || sb == 12 || sb == 10))
                print_message("memory %u/%u: deflater %zu, inflater %zu, "
                              "session %zu\n", sb, cb, dm, im, dm + im);
            pmd_deflater_free(&d);
            pmd_deflater_free(&client);
            pmd_inflater_free(&in);
            assert_int_equal(pmd_deflater_memory(&d) +
                             pmd_inflater_memory(&in), 0);
        }
    }
    {
        struct pmd_params p = params(12, 15, 0, 0);

        assert_int_equal(pmd_memory_bound(&p), 79000);
        p = params(15, 15, 0, 0);
        assert_int_equal(pmd_memory_bound(&p), 308376);
        p = params(12, 12, 0, 0);
        assert_int_equal(pmd_memory_bound(&p), 50328);
        p = params(10, 10, 0, 0);
        assert_int_equal(pmd_memory_bound(&p), 22680);
    }
    free(msg);
    free(c);
    free(back);
}

static void
test_misc(void **state)
{
    struct pmd_params p = both(15, 0);
    struct pmd_inflater in;
    struct pmd_deflater d;
    uint8_t out[16];
    size_t used, got;

    (void)state;
    for (int r = PMD_OK; r <= PMD_ERROR; r++)
        assert_string_not_equal(pmd_result_name(r), "?");
    assert_string_equal(pmd_result_name(99), "?");

    /* nothing is allocated before a message's first byte */
    pmd_inflater_init(&in, &p, 0, 0);
    assert_int_equal(pmd_inflate(&in, NULL, 0, &used, out, 0, &got),
                     PMD_OK);
    assert_int_equal(pmd_inflater_memory(&in), 0);
    /* no output space, no work */
    assert_int_equal(pmd_inflate(&in, hello_c, 7, &used, out, 0, &got),
                     PMD_NEED_OUTPUT_SPACE);
    assert_int_equal(used + got, 0);
    pmd_inflater_free(&in);

    /* input after the end of a message has begun is a misuse: the
     * deflater fails, and stays failed */
    {
        uint8_t msg[3000];
        size_t off = 0;

        fill(msg, sizeof msg, 1);
        pmd_deflater_init(&d, &p, 1);
        while (off < sizeof msg) {
            int r = pmd_deflate(&d, msg + off, sizeof msg - off, &used, out,
                                sizeof out, &got);

            assert_true(r == PMD_OK || r == PMD_NEED_OUTPUT_SPACE);
            off += used;
        }
        assert_int_equal(pmd_deflate_end(&d, out, sizeof out, &got),
                         PMD_NEED_OUTPUT_SPACE);
        assert_int_equal(pmd_deflate(&d, msg, 1, &used, out, sizeof out,
                                     &got),
                         PMD_ERROR);
        assert_int_equal(pmd_deflate_end(&d, out, sizeof out, &got),
                         PMD_ERROR);
        pmd_deflater_free(&d);
        assert_int_equal(pmd_deflater_memory(&d), 0);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_negotiate_vectors),
        cmocka_unit_test(test_negotiate_answer_parses_back),
        cmocka_unit_test(test_negotiate_longest),
        cmocka_unit_test(test_negotiate_prefixes),
        cmocka_unit_test(test_rfc7692_examples),
        cmocka_unit_test(test_rfc7692_deflate),
        cmocka_unit_test(test_round_trip_sizes),
        cmocka_unit_test(test_round_trip_every_split),
        cmocka_unit_test(test_deflate_output_sizes),
        cmocka_unit_test(test_context_takeover),
        cmocka_unit_test(test_window_8),
        cmocka_unit_test(test_bomb),
        cmocka_unit_test(test_bad_data),
        cmocka_unit_test(test_memory_bound),
        cmocka_unit_test(test_misc),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
