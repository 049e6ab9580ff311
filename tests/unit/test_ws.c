/*
 * test_ws.c - the RFC 6455 frame codec.
 *
 * Header vectors are parsed whole and as every truncated prefix
 * (picohttpparser "incomplete 1..n"), each input ending at a PROT_NONE
 * page so that any read past it faults.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "utf8.h"
#include "ws.h"

#include "guard.h"

/* ---- ws_parse_header */

struct hvec {
    const char *bytes;
    size_t n;
    int ret;                    /* hdr_len or WS_ERROR */
    uint8_t fin, rsv, opcode, masked;
    uint64_t len;
};

#define B(s) s, sizeof(s) - 1
#define KEY "\x11\x22\x33\x44"

static const struct hvec hvecs[] = {
    /* 7-bit lengths */
    { B("\x81\x00"), 2, 1, 0, 1, 0, 0 },
    { B("\x82\x01"), 2, 1, 0, 2, 0, 1 },
    { B("\x81\x7d"), 2, 1, 0, 1, 0, 125 },
    { B("\x01\x7d"), 2, 0, 0, 1, 0, 125 },
    { B("\x89\x00"), 2, 1, 0, 9, 0, 0 },
    /* 16-bit */
    { B("\x82\x7e\x00\x7e"), 4, 1, 0, 2, 0, 126 },
    { B("\x82\x7e\x01\x00"), 4, 1, 0, 2, 0, 256 },
    { B("\x82\x7e\xff\xff"), 4, 1, 0, 2, 0, 65535 },
    /* 64-bit */
    { B("\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"), 10, 1, 0, 2, 0, 65536 },
    { B("\x82\x7f\x00\x00\x00\x01\x00\x00\x00\x00"), 10, 1, 0, 2, 0,
      UINT64_C(1) << 32 },
    { B("\x82\x7f\x7f\xff\xff\xff\xff\xff\xff\xff"), 10, 1, 0, 2, 0,
      INT64_MAX },
    /* masked, key last */
    { B("\x81\x85" KEY), 6, 1, 0, 1, 1, 5 },
    { B("\x81\x80" KEY), 6, 1, 0, 1, 1, 0 },
    { B("\x82\xfe\x00\x7e" KEY), 8, 1, 0, 2, 1, 126 },
    { B("\x82\xfe\xff\xff" KEY), 8, 1, 0, 2, 1, 65535 },
    { B("\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00" KEY), 14, 1, 0, 2, 1,
      65536 },
    { B("\x82\xff\x7f\xff\xff\xff\xff\xff\xff\xff" KEY), 14, 1, 0, 2, 1,
      INT64_MAX },
    /* bits the parser reports and ws_check_header judges */
    { B("\xc1\x00"), 2, 1, 4, 1, 0, 0 },        /* RSV1 */
    { B("\xa1\x00"), 2, 1, 2, 1, 0, 0 },        /* RSV2 */
    { B("\x91\x00"), 2, 1, 1, 1, 0, 0 },        /* RSV3 */
    { B("\x7f\x00"), 2, 0, 7, 15, 0, 0 },
    { B("\x08\x7f\x7f\xff\xff\xff\xff\xff\xff\xff"), 10, 0, 0, 8, 0,
      INT64_MAX },
    /* RFC 6455 §5.2: most significant bit of a 64-bit length set */
    { B("\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x00"), WS_ERROR, 0, 0, 0, 0, 0 },
    { B("\x82\x7f\xff\xff\xff\xff\xff\xff\xff\xff"), WS_ERROR, 0, 0, 0, 0, 0 },
    { B("\x82\xff\x80\x00\x00\x00\x00\x01\x00\x00" KEY), WS_ERROR, 0, 0, 0, 0, 0 },
    /* RFC 6455 §5.2: non-minimal encodings */
    { B("\x82\x7e\x00\x00"), WS_ERROR, 0, 0, 0, 0, 0 },
    { B("\x82\x7e\x00\x7d"), WS_ERROR, 0, 0, 0, 0, 0 },
    { B("\x82\xfe\x00\x7d" KEY), WS_ERROR, 0, 0, 0, 0, 0 },
    { B("\x82\x7f\x00\x00\x00\x00\x00\x00\x00\x00"), WS_ERROR, 0, 0, 0, 0, 0 },
    { B("\x82\x7f\x00\x00\x00\x00\x00\x00\x00\x7d"), WS_ERROR, 0, 0, 0, 0, 0 },
    { B("\x82\x7f\x00\x00\x00\x00\x00\x00\x00\x7e"), WS_ERROR, 0, 0, 0, 0, 0 },
    { B("\x82\x7f\x00\x00\x00\x00\x00\x00\xff\xff"), WS_ERROR, 0, 0, 0, 0, 0 },
    { B("\x82\xff\x00\x00\x00\x00\x00\x00\xff\xff" KEY), WS_ERROR, 0, 0, 0, 0, 0 },
};

static void
test_parse_vectors(void **state)
{
    (void)state;
    for (size_t v = 0; v < sizeof hvecs / sizeof hvecs[0]; v++) {
        const struct hvec *t = &hvecs[v];
        const uint8_t *src = (const uint8_t *)t->bytes;
        struct ws_header h;
        uint8_t more[32];

        /* Every truncated prefix, error vectors included: nothing is
         * judged before the header is complete. */
        for (size_t k = 0; k < t->n; k++) {
            memset(&h, 0xA5, sizeof h);
            assert_int_equal(ws_parse_header(guarded(src, k), k, &h),
                             WS_INCOMPLETE);
        }

        memset(&h, 0xA5, sizeof h);
        int rc = ws_parse_header(guarded(src, t->n), t->n, &h);
        assert_int_equal(rc, t->ret);
        /* Payload bytes after the header change nothing. */
        memcpy(more, src, t->n);
        memset(more + t->n, 0xFF, sizeof more - t->n);
        struct ws_header h2;
        assert_int_equal(ws_parse_header(guarded(more, sizeof more),
                                         sizeof more, &h2), t->ret);
        if (t->ret == WS_ERROR)
            continue;
        assert_int_equal(h.hdr_len, t->n);
        assert_int_equal(h.fin, t->fin);
        assert_int_equal(h.rsv, t->rsv);
        assert_int_equal(h.opcode, t->opcode);
        assert_int_equal(h.masked, t->masked);
        assert_true(h.len == t->len);
        if (t->masked)
            assert_memory_equal(h.key, KEY, 4);
        else
            assert_memory_equal(h.key, "\0\0\0\0", 4);
        assert_memory_equal(&h, &h2, offsetof(struct ws_header, hdr_len));
    }
}

static const uint64_t boundary_lens[] = {
    0, 1, 124, 125, 126, 127, 255, 256, 65534, 65535, 65536, 65537,
    UINT64_C(0xFFFFFFFF), UINT64_C(0x100000000), INT64_MAX - 1, INT64_MAX
};

/* ws_write_header() and ws_parse_header() agree on every boundary, and
 * the written form is the minimal one. */
static void
test_write_parse_roundtrip(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof boundary_lens / sizeof boundary_lens[0];
         i++) {
        uint64_t len = boundary_lens[i];
        for (int masked = 0; masked <= 1; masked++) {
            for (int op = 0; op < 16; op++) {
                uint8_t out[WS_MAX_HEADER];
                struct ws_header h;
                const uint8_t *key = masked ? (const uint8_t *)KEY : NULL;
                size_t n = ws_write_header(out, op & 1, op, key, len);
                size_t want = (len < 126 ? 2 : len < 65536 ? 4 : 10) +
                              (masked ? 4 : 0);
                assert_int_equal(n, want);
                for (size_t k = 0; k < n; k++)
                    assert_int_equal(ws_parse_header(guarded(out, k), k, &h),
                                     WS_INCOMPLETE);
                assert_int_equal(ws_parse_header(guarded(out, n), n, &h),
                                 (int)n);
                assert_true(h.len == len);
                assert_int_equal(h.opcode, op);
                assert_int_equal(h.fin, op & 1);
                assert_int_equal(h.rsv, 0);
                assert_int_equal(h.masked, masked);
                if (masked)
                    assert_memory_equal(h.key, KEY, 4);
            }
        }
    }
}

static void
test_write_header_bytes(void **state)
{
    uint8_t out[WS_MAX_HEADER];
    (void)state;
    assert_int_equal(ws_write_header(out, 1, WS_OP_TEXT, NULL, 5), 2);
    assert_memory_equal(out, "\x81\x05", 2);
    assert_int_equal(ws_write_header(out, 0, WS_OP_BINARY, NULL, 126), 4);
    assert_memory_equal(out, "\x02\x7e\x00\x7e", 4);
    assert_int_equal(ws_write_header(out, 1, WS_OP_CONT,
                                     (const uint8_t *)KEY, 65536), 14);
    assert_memory_equal(out, "\x80\xff\x00\x00\x00\x00\x00\x01\x00\x00" KEY,
                        14);
    assert_int_equal(ws_write_header(out, 1, WS_OP_PING,
                                     (const uint8_t *)KEY, 0), 6);
    assert_memory_equal(out, "\x89\x80" KEY, 6);
}

/* ---- ws_check_header */

static struct ws_header
hdr(int fin, int rsv, int op, int masked, uint64_t len)
{
    struct ws_header h;
    memset(&h, 0, sizeof h);
    h.fin = (uint8_t)fin;
    h.rsv = (uint8_t)rsv;
    h.opcode = (uint8_t)op;
    h.masked = (uint8_t)masked;
    h.len = len;
    h.hdr_len = 2;
    return h;
}

/* Field by field: struct copies need not copy padding. */
static void
assert_msg_equal(const struct ws_msg *a, const struct ws_msg *b)
{
    assert_int_equal(a->in_msg, b->in_msg);
    assert_int_equal(a->opcode, b->opcode);
    assert_int_equal(a->utf8, b->utf8);
    assert_true(a->len == b->len);
}

static const struct ws_msg msg_zero;

/* Expect rc, and on failure that m was left as it was. */
static void
check_hdr(struct ws_msg *m, struct ws_header h, int masked, uint64_t max,
             int rc)
{
    struct ws_msg before = *m;
    assert_int_equal(ws_check_header(m, &h, masked, max), rc);
    if (rc != 0)
        assert_msg_equal(m, &before);
}

static void
test_check_rsv(void **state)
{
    struct ws_msg m = { 0 };
    (void)state;
    for (int rsv = 1; rsv < 8; rsv++) {
        check_hdr(&m, hdr(1, rsv, WS_OP_TEXT, 0, 0), 0, 0, 1002);
        check_hdr(&m, hdr(1, rsv, WS_OP_PING, 1, 0), 1, 0, 1002);
        /* RSV is judged before the size limit: 1002, not 1009. */
        check_hdr(&m, hdr(1, rsv, WS_OP_BINARY, 0, 1000), 0, 10, 1002);
    }
}

/* permessage-deflate agreed (rsv1_ok): RSV1 only on a data message's
 * first frame; the wire limit of a compressed message has its slack. */
static void
test_check_rsv1_deflate(void **state)
{
    struct ws_msg m = { .rsv1_ok = 1 };
    (void)state;
    check_hdr(&m, hdr(1, 4, WS_OP_PING, 1, 0), 1, 0, 1002);
    check_hdr(&m, hdr(1, 4, WS_OP_CLOSE, 1, 0), 1, 0, 1002);
    check_hdr(&m, hdr(1, 2, WS_OP_TEXT, 1, 0), 1, 0, 1002);
    check_hdr(&m, hdr(1, 6, WS_OP_TEXT, 1, 0), 1, 0, 1002);
    check_hdr(&m, hdr(0, 4, WS_OP_TEXT, 1, 10), 1, 0, 0);
    assert_int_equal(m.compressed, 1);
    assert_int_equal(m.in_msg, 1);
    check_hdr(&m, hdr(0, 4, WS_OP_CONT, 1, 10), 1, 0, 1002);
    check_hdr(&m, hdr(1, 0, WS_OP_CONT, 1, 10), 1, 0, 0);
    assert_int_equal(ws_msg_end(&m), 0);
    assert_int_equal(m.rsv1_ok, 1);             /* kept */
    assert_int_equal(m.compressed, 0);
    /* 1000 allowed: a compressed message may take 1000 + 1000/256 + 64 */
    check_hdr(&m, hdr(1, 4, WS_OP_BINARY, 1, 1067), 1, 1000, 0);
    (void)ws_msg_end(&m);
    check_hdr(&m, hdr(1, 4, WS_OP_BINARY, 1, 1068), 1, 1000, 1009);
    check_hdr(&m, hdr(1, 0, WS_OP_BINARY, 1, 1001), 1, 1000, 1009);
    /* without rsv1_ok nothing changes */
    m.rsv1_ok = 0;
    check_hdr(&m, hdr(1, 4, WS_OP_TEXT, 1, 0), 1, 0, 1002);
}

static void
test_check_opcodes(void **state)
{
    (void)state;
    for (int op = 0; op < 16; op++) {
        struct ws_msg m = { 0 };
        int known = op == 1 || op == 2 || op == 8 || op == 9 || op == 10;
        int want = known ? 0 : 1002;
        /* Reserved opcodes are refused even where a continuation would
         * be allowed, and before the size limit. */
        if (op == 0)
            continue;
        check_hdr(&m, hdr(1, 0, op, 1, 0), 1, 0, want);
        memset(&m, 0, sizeof m);
        if (!known)
            check_hdr(&m, hdr(1, 0, op, 1, 1000), 1, 10, 1002);
        struct ws_msg open = { 1, WS_OP_TEXT, UTF8_ACCEPT, 3, 0, 0 };
        if (!known)
            check_hdr(&open, hdr(1, 0, op, 1, 0), 1, 0, 1002);
    }
}

static void
test_check_mask_direction(void **state)
{
    struct ws_msg m = { 0 };
    (void)state;
    /* RFC 6455 §5.1: client frames masked, server frames not. */
    check_hdr(&m, hdr(1, 0, WS_OP_TEXT, 0, 1), 1, 0, 1002);
    check_hdr(&m, hdr(1, 0, WS_OP_TEXT, 1, 1), 0, 0, 1002);
    check_hdr(&m, hdr(1, 0, WS_OP_CLOSE, 0, 2), 1, 0, 1002);
    check_hdr(&m, hdr(1, 0, WS_OP_PONG, 1, 2), 0, 0, 1002);
    /* expect_masked is a boolean, not just 0/1 */
    check_hdr(&m, hdr(1, 0, WS_OP_PING, 1, 0), 7, 0, 0);
    /* the mask rule comes before the size limit */
    check_hdr(&m, hdr(1, 0, WS_OP_BINARY, 0, 100), 1, 10, 1002);
}

static void
test_check_control(void **state)
{
    struct ws_msg m = { 0 };
    (void)state;
    for (int op = WS_OP_CLOSE; op <= WS_OP_PONG; op++) {
        check_hdr(&m, hdr(1, 0, op, 0, 0), 0, 0, 0);
        check_hdr(&m, hdr(1, 0, op, 0, 125), 0, 0, 0);
        check_hdr(&m, hdr(1, 0, op, 0, 126), 0, 0, 1002);
        check_hdr(&m, hdr(1, 0, op, 0, 65536), 0, 0, 1002);
        check_hdr(&m, hdr(1, 0, op, 0, INT64_MAX), 0, 0, 1002);
        check_hdr(&m, hdr(0, 0, op, 0, 0), 0, 0, 1002);
        /* control frames are not data: the message limit ignores them */
        check_hdr(&m, hdr(1, 0, op, 0, 125), 0, 1, 0);
        assert_int_equal(m.in_msg, 0);
        assert_int_equal(m.len, 0);
    }
    /* Between fragments (RFC 6455 §5.4) and without touching m. */
    struct ws_msg open = { 1, WS_OP_TEXT, 42, 17, 0, 0 };
    struct ws_msg copy = open;
    check_hdr(&open, hdr(1, 0, WS_OP_PING, 0, 5), 0, 20, 0);
    check_hdr(&open, hdr(1, 0, WS_OP_CLOSE, 0, 2), 0, 20, 0);
    assert_msg_equal(&open, &copy);
}

static void
test_check_fragmentation(void **state)
{
    struct ws_msg m = { 0 };
    (void)state;

    /* continuation with nothing open */
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, 0), 0, 0, 1002);
    check_hdr(&m, hdr(1, 0, WS_OP_CONT, 0, 0), 0, 0, 1002);

    /* text(fin=0) ping cont(fin=0) pong cont(fin=1) */
    check_hdr(&m, hdr(0, 0, WS_OP_TEXT, 0, 3), 0, 0, 0);
    assert_int_equal(m.in_msg, 1);
    assert_int_equal(m.opcode, WS_OP_TEXT);
    assert_int_equal(m.len, 3);
    assert_int_equal(m.utf8, UTF8_ACCEPT);
    m.utf8 = utf8_validate(m.utf8, (const uint8_t *)"a\xce", 2);
    check_hdr(&m, hdr(1, 0, WS_OP_PING, 0, 0), 0, 0, 0);
    /* no new data message inside the open one */
    check_hdr(&m, hdr(1, 0, WS_OP_TEXT, 0, 1), 0, 0, 1002);
    check_hdr(&m, hdr(0, 0, WS_OP_BINARY, 0, 1), 0, 0, 1002);
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, 4), 0, 0, 0);
    assert_int_equal(m.in_msg, 1);
    assert_int_equal(m.len, 7);
    check_hdr(&m, hdr(1, 0, WS_OP_PONG, 0, 0), 0, 0, 0);
    check_hdr(&m, hdr(1, 0, WS_OP_CONT, 0, 0), 0, 0, 0);
    /* the final continuation closes the sequence at header time, but the
     * message state stays for the payload and ws_msg_end() */
    assert_int_equal(m.in_msg, 0);
    assert_int_equal(m.opcode, WS_OP_TEXT);
    assert_int_equal(m.len, 7);
    m.utf8 = utf8_validate(m.utf8, (const uint8_t *)"\xba", 1);
    assert_int_equal(ws_msg_end(&m), 0);
    assert_msg_equal(&m, &msg_zero);

    /* after the end, a continuation is again an error */
    check_hdr(&m, hdr(1, 0, WS_OP_CONT, 0, 0), 0, 0, 1002);

    /* binary(fin=0) cont(fin=1) */
    check_hdr(&m, hdr(0, 0, WS_OP_BINARY, 0, 10), 0, 0, 0);
    check_hdr(&m, hdr(1, 0, WS_OP_CONT, 0, 10), 0, 0, 0);
    assert_int_equal(m.opcode, WS_OP_BINARY);
    assert_int_equal(m.len, 20);
    m.utf8 = UTF8_REJECT;       /* binary payload is never UTF-8 checked */
    assert_int_equal(ws_msg_end(&m), 0);
}

static void
test_check_single_frame(void **state)
{
    struct ws_msg m = { 0 };
    (void)state;
    /* single-frame text: opcode set so the caller validates the payload */
    check_hdr(&m, hdr(1, 0, WS_OP_TEXT, 1, 5), 1, 0, 0);
    assert_int_equal(m.in_msg, 0);
    assert_int_equal(m.opcode, WS_OP_TEXT);
    assert_int_equal(m.len, 5);
    m.utf8 = utf8_validate(m.utf8, (const uint8_t *)"hell\xc3", 5);
    assert_int_equal(ws_msg_end(&m), 1007);
    assert_msg_equal(&m, &msg_zero);

    check_hdr(&m, hdr(1, 0, WS_OP_TEXT, 1, 0), 1, 0, 0);
    assert_int_equal(ws_msg_end(&m), 0);
    check_hdr(&m, hdr(1, 0, WS_OP_TEXT, 1, 1), 1, 0, 0);
    m.utf8 = utf8_validate(m.utf8, (const uint8_t *)"\xff", 1);
    assert_int_equal(ws_msg_end(&m), 1007);

    /* a new message resets UTF-8 state even if the caller skipped
     * ws_msg_end() after the last one */
    check_hdr(&m, hdr(1, 0, WS_OP_TEXT, 1, 1), 1, 0, 0);
    m.utf8 = UTF8_REJECT;
    m.len = 99;
    check_hdr(&m, hdr(1, 0, WS_OP_TEXT, 1, 2), 1, 0, 0);
    assert_int_equal(m.utf8, UTF8_ACCEPT);
    assert_int_equal(m.len, 2);
    assert_int_equal(ws_msg_end(&m), 0);
}

static void
test_check_max_payload(void **state)
{
    struct ws_msg m = { 0 };
    (void)state;

    /* one frame: the limit itself passes, one more byte does not */
    check_hdr(&m, hdr(1, 0, WS_OP_BINARY, 0, 100), 0, 100, 0);
    ws_msg_end(&m);
    check_hdr(&m, hdr(1, 0, WS_OP_BINARY, 0, 101), 0, 100, 1009);
    check_hdr(&m, hdr(1, 0, WS_OP_TEXT, 0, INT64_MAX), 0, 100, 1009);
    check_hdr(&m, hdr(1, 0, WS_OP_TEXT, 0, INT64_MAX), 0, 0, 0);
    ws_msg_end(&m);

    /* over several fragments: 40 + 40 + 20 = 100 passes, then 1 more */
    check_hdr(&m, hdr(0, 0, WS_OP_TEXT, 0, 40), 0, 100, 0);
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, 40), 0, 100, 0);
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, 20), 0, 100, 0);
    assert_int_equal(m.len, 100);
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, 0), 0, 100, 0);
    check_hdr(&m, hdr(1, 0, WS_OP_CONT, 0, 1), 0, 100, 1009);
    check_hdr(&m, hdr(1, 0, WS_OP_CONT, 0, 0), 0, 100, 0);
    ws_msg_end(&m);

    /* overflow attempts: m->len + h->len wraps past 2^64 */
    m = (struct ws_msg){ 1, WS_OP_BINARY, 0, 50, 0, 0 };
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, INT64_MAX), 0, 100, 1009);
    m = (struct ws_msg){ 1, WS_OP_BINARY, 0, UINT64_MAX - 5, 0, 0 };
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, 10), 0, UINT64_MAX - 1,
                 1009);
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, 4), 0, UINT64_MAX - 1, 0);
    memset(&m, 0, sizeof m);
    check_hdr(&m, hdr(0, 0, WS_OP_BINARY, 0, INT64_MAX), 0,
                 UINT64_MAX, 0);
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, INT64_MAX), 0,
                 UINT64_MAX, 0);
    assert_true(m.len == UINT64_MAX - 1);
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, INT64_MAX), 0,
                 UINT64_MAX, 1009);
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, 2), 0, UINT64_MAX, 1009);
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, 1), 0, UINT64_MAX, 0);
    /* unlimited: the running total saturates instead of wrapping */
    check_hdr(&m, hdr(0, 0, WS_OP_CONT, 0, INT64_MAX), 0, 0, 0);
    assert_true(m.len == UINT64_MAX);
    ws_msg_end(&m);

    /* an opening frame does not count what a stale m still holds */
    m = (struct ws_msg){ .opcode = WS_OP_TEXT, .len = 90 };
    check_hdr(&m, hdr(1, 0, WS_OP_TEXT, 0, 50), 0, 100, 0);
    assert_int_equal(m.len, 50);
}

/* Continuation/in-message rules come before the size limit. */
static void
test_check_order(void **state)
{
    struct ws_msg m = { 0 };
    (void)state;
    check_hdr(&m, hdr(1, 0, WS_OP_CONT, 0, 1000), 0, 10, 1002);
    m = (struct ws_msg){ .in_msg = 1, .opcode = WS_OP_TEXT };
    check_hdr(&m, hdr(1, 0, WS_OP_BINARY, 0, 1000), 0, 10, 1002);
    check_hdr(&m, hdr(0, 0, WS_OP_PING, 0, 1000), 0, 10, 1002);
}

/* ---- close payloads */

static int
spec_code_ok(unsigned c)
{
    return (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) ||
           (c >= 3000 && c <= 4999);
}

static void
test_close_codes(void **state)
{
    static const struct {
        unsigned code;
        int rc;
    } codes[] = {
        { 0, 1002 }, { 999, 1002 }, { 1000, 0 }, { 1001, 0 }, { 1002, 0 },
        { 1003, 0 }, { 1004, 1002 }, { 1005, 1002 }, { 1006, 1002 },
        { 1007, 0 }, { 1008, 0 }, { 1009, 0 }, { 1010, 0 }, { 1011, 0 },
        { 1012, 0 }, { 1013, 0 }, { 1014, 0 }, { 1015, 1002 },
        { 1016, 1002 }, { 2000, 1002 }, { 2999, 1002 }, { 3000, 0 },
        { 4000, 0 }, { 4999, 0 }, { 5000, 1002 }, { 65535, 1002 },
    };
    (void)state;
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        uint8_t p[2] = { (uint8_t)(codes[i].code >> 8),
                         (uint8_t)codes[i].code };
        assert_int_equal(ws_check_close(guarded(p, 2), 2), codes[i].rc);
        assert_int_equal(ws_close_code_ok(codes[i].code), codes[i].rc == 0);
    }
    for (unsigned c = 0; c <= 70000; c++)
        assert_int_equal(ws_close_code_ok(c), spec_code_ok(c));
}

static void
test_close_payloads(void **state)
{
    uint8_t buf[200];
    (void)state;
    assert_int_equal(ws_check_close(guarded(buf, 0), 0), 0);
    assert_int_equal(ws_check_close(NULL, 0), 0);
    assert_int_equal(ws_check_close(guarded((const uint8_t *)"\x03", 1), 1),
                     1002);
    assert_int_equal(ws_check_close(guarded((const uint8_t *)"\x03\xe8"
                                            "bye", 5), 5), 0);
    assert_int_equal(ws_check_close(guarded((const uint8_t *)"\x03\xe8"
                     "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 13), 13),
                     0);
    /* reason not UTF-8: 1007 */
    assert_int_equal(ws_check_close(guarded((const uint8_t *)"\x03\xe8"
                                            "\xff", 3), 3), 1007);
    assert_int_equal(ws_check_close(guarded((const uint8_t *)"\x03\xe8"
                                            "ab\xce", 5), 5), 1007);
    assert_int_equal(ws_check_close(guarded((const uint8_t *)"\x03\xe8"
                                            "\xed\xa0\x80", 5), 5), 1007);
    assert_int_equal(ws_check_close(guarded((const uint8_t *)"\x03\xe8"
                                            "\xc0\x80", 4), 4), 1007);
    /* a bad code wins over a bad reason */
    assert_int_equal(ws_check_close(guarded((const uint8_t *)"\x03\xed"
                                            "\xff", 3), 3), 1002);
    /* 125 bytes is the most a control frame carries (§5.5) */
    buf[0] = 0x0F;
    buf[1] = 0xA0;              /* 4000 */
    memset(buf + 2, 'x', sizeof buf - 2);
    assert_int_equal(ws_check_close(guarded(buf, 125), 125), 0);
    assert_int_equal(ws_check_close(guarded(buf, 126), 126), 1002);
}

/* ---- ws_build_close */

/* Parses the frame, unmasks it, checks the payload is a valid close. */
static size_t
built_payload(const uint8_t *frame, size_t n, const uint8_t *key,
              uint8_t *payload)
{
    struct ws_header h;
    int hl = ws_parse_header(frame, n, &h);
    assert_true(hl > 0);
    assert_int_equal(h.fin, 1);
    assert_int_equal(h.opcode, WS_OP_CLOSE);
    assert_int_equal(h.masked, key != NULL);
    assert_true(h.len <= WS_MAX_CONTROL);
    assert_int_equal((size_t)hl + h.len, n);
    memcpy(payload, frame + hl, (size_t)h.len);
    if (key != NULL)
        ws_mask(payload, (size_t)h.len, key, 0);
    assert_int_equal(ws_check_close(payload, (size_t)h.len), 0);
    return (size_t)h.len;
}

static void
test_build_close(void **state)
{
    uint8_t out[WS_MAX_HEADER + WS_MAX_CONTROL], pl[WS_MAX_CONTROL];
    char reason[400];
    const uint8_t *key = (const uint8_t *)KEY;
    (void)state;

    assert_int_equal(ws_build_close(out, 0, "ignored", NULL), 2);
    assert_memory_equal(out, "\x88\x00", 2);
    assert_int_equal(ws_build_close(out, 0, NULL, key), 6);
    assert_memory_equal(out, "\x88\x80" KEY, 6);
    assert_int_equal(ws_build_close(out, 1000, NULL, NULL), 4);
    assert_memory_equal(out, "\x88\x02\x03\xe8", 4);
    assert_int_equal(ws_build_close(out, 1009, "too big", NULL), 11);
    assert_memory_equal(out, "\x88\x09\x03\xf1too big", 11);
    assert_int_equal(ws_build_close(out, 1001, "", key), 8);
    assert_int_equal(built_payload(out, 8, key, pl), 2);
    assert_memory_equal(pl, "\x03\xe9", 2);

    size_t n = ws_build_close(out, 1008, "bye", key);
    assert_int_equal(built_payload(out, n, key, pl), 5);
    assert_memory_equal(pl, "\x03\xf0" "bye", 5);

    /* Long reasons, made of 1..4-byte characters after a 0..3-byte ASCII
     * prefix, so every cut position relative to a character is tried. */
    static const char *chars[] = { "x", "\xc3\xa9", "\xe2\x82\xac",
                                   "\xf0\x9f\x98\x80" };
    for (int c = 0; c < 4; c++) {
        size_t clen = strlen(chars[c]);
        for (size_t pre = 0; pre < 4; pre++) {
            for (size_t total = 118; total < 300; total += 1) {
                size_t r = 0;
                memset(reason, 'a', pre);
                r = pre;
                while (r + clen <= total) {
                    memcpy(reason + r, chars[c], clen);
                    r += clen;
                }
                reason[r] = '\0';
                for (int masked = 0; masked <= 1; masked++) {
                    const uint8_t *k = masked ? key : NULL;
                    n = ws_build_close(out, 4000, reason, k);
                    size_t plen = built_payload(out, n, k, pl);
                    size_t keep = plen - 2;
                    /* kept a prefix, cut on a character boundary, and as
                     * much as fits */
                    assert_memory_equal(pl + 2, reason, keep);
                    assert_true(keep == r || keep + clen > 123);
                    assert_true(keep <= 123);
                    if (r <= 123)
                        assert_int_equal(keep, r);
                }
            }
        }
    }

    /* A reason that is not UTF-8 is dropped, the code kept. */
    n = ws_build_close(out, 1000, "bad \xff reason", NULL);
    assert_int_equal(n, 4);
    assert_memory_equal(out, "\x88\x02\x03\xe8", 4);
}

/* ---- ws_mask */

static void
naive_mask(uint8_t *p, size_t n, const uint8_t key[4], uint64_t offset)
{
    for (size_t i = 0; i < n; i++)
        p[i] ^= key[(offset + i) % 4];
}

static void
test_mask(void **state)
{
    static const uint64_t offsets[] = {
        0, 1, 2, 3, 4, 5, 6, 7, 125, 65535, UINT64_C(0x100000001),
        UINT64_MAX - 2, UINT64_MAX
    };
    static const size_t lens[] = {
        0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 39, 40, 63, 64,
        65, 100, 127, 1000, 4095, 4099
    };
    const uint8_t key[4] = { 0x37, 0xFA, 0x21, 0x3D };
    uint8_t *data = malloc(4099 + 64);
    uint8_t *want = malloc(4099 + 64);
    uint8_t *orig = malloc(4099 + 64);
    (void)state;
    assert_non_null(data);
    assert_non_null(want);
    assert_non_null(orig);
    for (size_t i = 0; i < 4099 + 64; i++)
        orig[i] = (uint8_t)(i * 131 + 7);

    for (size_t o = 0; o < sizeof offsets / sizeof offsets[0]; o++) {
        for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
            for (size_t align = 0; align < 16; align++) {
                size_t n = lens[l];
                memcpy(data, orig, n + 64);
                memcpy(want, orig, n + 64);
                naive_mask(want + align, n, key, offsets[o]);
                ws_mask(data + align, n, key, offsets[o]);
                /* bytes around the range untouched too */
                assert_memory_equal(data, want, n + 64);
                ws_mask(data + align, n, key, offsets[o]);
                assert_memory_equal(data, orig, n + 64);
            }
        }
    }

    /* A frame unmasked in arbitrary pieces equals one pass. */
    for (size_t split = 0; split <= 100; split++) {
        memcpy(data, orig, 100);
        memcpy(want, orig, 100);
        naive_mask(want, 100, key, 0);
        ws_mask(data, split, key, 0);
        ws_mask(data + split, 100 - split, key, split);
        assert_memory_equal(data, want, 100);
    }
    /* Against the guard page: no access past p + n. */
    for (size_t n = 0; n < 70; n++) {
        uint8_t *g = guarded(orig, n);
        ws_mask(g, n, key, n);
    }
    free(data);
    free(want);
    free(orig);
}

/* ws_remask_ascii against the three-pass reference (unmask, find the
 * ASCII prefix, re-mask it): every length, offset and position of the
 * first non-ASCII byte; the bytes after the prefix stay as they were. */
static void
test_remask_ascii(void **state)
{
    static const uint8_t from[4] = {0x12, 0x9a, 0xf0, 0x3c};
    static const uint8_t to[4] = {0x81, 0x07, 0x55, 0xe6};
    uint8_t plain[80], in[80], got[80], want[80];

    (void)state;
    for (size_t n = 0; n <= 72; n++) {
        for (uint64_t off = 0; off < 8; off++) {
            for (size_t bad = 0; bad <= n; bad++) {
                for (size_t i = 0; i < n; i++)
                    plain[i] = (uint8_t)('a' + (i * 7 + off) % 26);
                if (bad < n)
                    plain[bad] = 0xc3;          /* first non-ASCII byte */
                memcpy(in, plain, n);
                ws_mask(in, n, from, off);
                memcpy(got, in, n);
                size_t k = ws_remask_ascii(got, n, from, to, off);
                assert_int_equal(k, bad);
                memcpy(want, plain, n);
                ws_mask(want, k, to, off);          /* prefix: new key */
                memcpy(want + k, in + k, n - k);    /* rest: untouched */
                if (n > 0)
                    assert_memory_equal(got, want, n);
            }
        }
    }
}

/* ws_remask against unmasking with one key and masking with the other:
 * every length to 40 and every offset in the key. */
static void
test_remask(void **state)
{
    static const uint8_t from[4] = {0x12, 0x9a, 0xf0, 0x3c};
    static const uint8_t to[4] = {0x81, 0x07, 0x55, 0xe6};
    uint8_t got[40], want[40];

    (void)state;
    for (size_t n = 1; n <= 40; n++) {
        for (uint64_t off = 0; off < 4; off++) {
            for (size_t i = 0; i < n; i++)
                got[i] = want[i] = (uint8_t)(i * 37 + off);
            ws_remask(got, n, from, to, off);
            ws_mask(want, n, from, off);
            ws_mask(want, n, to, off);
            assert_memory_equal(got, want, n);
        }
    }
}

/* ws_remask_all against the reference (unmask with from, check ASCII,
 * mask with to): every length up to 140 and every position of a non-ASCII
 * byte (or none). */
static void
test_remask_all(void **state)
{
    static const uint8_t from[4] = {0x12, 0x9a, 0xf0, 0x3c};
    static const uint8_t to[4] = {0x81, 0x07, 0x55, 0xe6};
    uint8_t plain[160], got[160], want[160];

    (void)state;
    for (size_t n = 0; n <= 140; n++) {
        for (size_t bad = 0; bad <= n; bad++) {
            for (size_t i = 0; i < n; i++)
                plain[i] = (uint8_t)('a' + (i * 7) % 26);
            if (bad < n)
                plain[bad] = (uint8_t)(0x80 | bad);
            memcpy(got, plain, n);
            ws_mask(got, n, from, 0);
            int ascii = ws_remask_all(got, n, from, to);
            assert_int_equal(ascii, bad == n);
            memcpy(want, plain, n);
            ws_mask(want, n, to, 0);
            if (n > 0)
                assert_memory_equal(got, want, n);
        }
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_vectors),
        cmocka_unit_test(test_write_parse_roundtrip),
        cmocka_unit_test(test_write_header_bytes),
        cmocka_unit_test(test_check_rsv),
        cmocka_unit_test(test_check_rsv1_deflate),
        cmocka_unit_test(test_check_opcodes),
        cmocka_unit_test(test_check_mask_direction),
        cmocka_unit_test(test_check_control),
        cmocka_unit_test(test_check_fragmentation),
        cmocka_unit_test(test_check_single_frame),
        cmocka_unit_test(test_check_max_payload),
        cmocka_unit_test(test_check_order),
        cmocka_unit_test(test_close_codes),
        cmocka_unit_test(test_close_payloads),
        cmocka_unit_test(test_build_close),
        cmocka_unit_test(test_mask),
        cmocka_unit_test(test_remask_ascii),
        cmocka_unit_test(test_remask),
        cmocka_unit_test(test_remask_all),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
