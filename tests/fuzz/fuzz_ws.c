/*
 * fuzz_ws.c - the frame codec driven the way the relay drives it.
 *
 * Input: byte 0 picks the direction (bit 0: frames must be masked) and
 * max_payload (bits 1-3); byte 1 seeds the chunk sizes; the rest is a byte
 * stream of frames. A small streaming receiver (header spill buffer like
 * uWS, parse -> check -> unmask -> UTF-8 / close check -> msg_end) eats
 * the stream three ways: in one piece, in fuzzer-chosen chunks (uWS
 * makeChunked) and byte by byte. Every piece is an exact-size heap copy,
 * so ASan catches any read past it, and all three runs must end with the
 * same verdict: same close code at the same frame, same frames and
 * messages, same unmasked payload. Anything else aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"
#include "ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                        \
    do {                                                                 \
        fprintf(stderr, "fuzz_ws: " __VA_ARGS__);                        \
        fputc('\n', stderr);                                             \
        abort();                                                         \
    } while (0)

static const uint64_t max_payloads[8] = {
    0, 1, 16, 125, 126, 1000, 65536, UINT64_MAX
};

struct rx {
    int expect_masked;
    uint64_t max_payload;
    struct ws_msg m;

    uint8_t spill[WS_MAX_HEADER];       /* partial header across pieces */
    size_t spill_n;

    int in_payload;
    struct ws_header h;
    uint64_t remaining;                 /* payload bytes still to come */
    uint64_t off;                       /* payload bytes seen */
    uint8_t ctl[WS_MAX_CONTROL];        /* control payload, gathered */
    size_t ctl_n;

    /* the verdict */
    int done;
    int code;                           /* close code we fail with, or 0 */
    int closed;                         /* a valid close frame arrived */
    uint64_t pos;                       /* stream bytes consumed */
    uint64_t frame_pos;                 /* stream offset of this frame */
    uint64_t frames, messages;
    uint64_t hash, frame_hash;          /* FNV-1a of unmasked payload */
};

static void
rx_fail(struct rx *r, int code)
{
    r->done = 1;
    r->code = code;
    /* Where the failure is noticed inside a frame depends on the pieces;
     * the verdict is the frame it happened in. */
    r->pos = r->frame_pos;
    r->hash = r->frame_hash;
    r->spill_n = 0;
    r->in_payload = 0;
    r->remaining = 0;
    r->off = 0;
}

static void
rx_frame_done(struct rx *r)
{
    int rc;

    r->in_payload = 0;
    r->frames++;
    if (r->h.opcode == WS_OP_CLOSE) {
        rc = ws_check_close(r->ctl, r->ctl_n);
        if (rc != 0) {
            rx_fail(r, rc);
            return;
        }
        /* RFC 6455 §5.5.1: nothing follows a close frame. */
        r->closed = 1;
        r->done = 1;
    } else if (!(r->h.opcode & 0x8) && r->h.fin) {
        r->messages++;
        rc = ws_msg_end(&r->m);
        if (rc != 0)
            rx_fail(r, rc);
    }
    r->frame_pos = r->pos;
    r->frame_hash = r->hash;
}

/* The header just parsed from hb must be exactly what ws_write_header()
 * produces for it: lengths are minimal, so the encoding is canonical. */
static void
check_reencode(const struct ws_header *h, const uint8_t *hb)
{
    uint8_t out[WS_MAX_HEADER];
    size_t n;

    if (h->rsv != 0)
        return;
    n = ws_write_header(out, h->fin, h->opcode, h->masked ? h->key : NULL,
                        h->len);
    if (n != h->hdr_len || memcmp(out, hb, n) != 0)
        FAIL("header does not re-encode to the same %u bytes", h->hdr_len);
}

static void
rx_header(struct rx *r, const uint8_t *hb)
{
    int code;

    check_reencode(&r->h, hb);
    code = ws_check_header(&r->m, &r->h, r->expect_masked, r->max_payload);
    if (code != 0) {
        rx_fail(r, code);
        return;
    }
    if (r->h.opcode & 0x8 && r->h.len > WS_MAX_CONTROL)
        FAIL("control frame of %llu bytes passed",
             (unsigned long long)r->h.len);
    r->in_payload = 1;
    r->remaining = r->h.len;
    r->off = 0;
    r->ctl_n = 0;
    if (r->remaining == 0)
        rx_frame_done(r);
}

/* One piece of the stream, writable (unmasked in place). */
static void
rx_feed(struct rx *r, uint8_t *p, size_t n)
{
    while (n > 0 && !r->done) {
        if (!r->in_payload) {
            int rc;
            size_t used;

            if (r->spill_n == 0) {
                /* Common case: parse straight from the piece. */
                rc = ws_parse_header(p, n, &r->h);
                if (rc == WS_INCOMPLETE) {
                    if (n >= WS_MAX_HEADER)
                        FAIL("INCOMPLETE with %zu bytes", n);
                    memcpy(r->spill, p, n);
                    r->spill_n = n;
                    return;
                }
                if (rc == WS_ERROR) {
                    rx_fail(r, WS_CLOSE_PROTOCOL);
                    return;
                }
                used = (size_t)rc;
                r->pos += used;
                rx_header(r, p);
            } else {
                /* Top the spill up to a full header's worth at most; what
                 * turns out to be payload is not consumed from p. */
                size_t take = WS_MAX_HEADER - r->spill_n;
                size_t had = r->spill_n;
                uint8_t hb[WS_MAX_HEADER];
                if (take > n)
                    take = n;
                memcpy(r->spill + had, p, take);
                rc = ws_parse_header(r->spill, had + take, &r->h);
                if (rc == WS_INCOMPLETE) {
                    if (had + take >= WS_MAX_HEADER)
                        FAIL("INCOMPLETE with %zu bytes", had + take);
                    r->spill_n = had + take;
                    return;     /* take == n: the piece is used up */
                }
                if (rc == WS_ERROR) {
                    rx_fail(r, WS_CLOSE_PROTOCOL);
                    return;
                }
                if ((size_t)rc <= had)
                    FAIL("header of %d bytes was complete in %zu", rc, had);
                used = (size_t)rc - had;
                r->spill_n = 0;
                r->pos += (size_t)rc;      /* spilled bytes too */
                memcpy(hb, r->spill, (size_t)rc);
                rx_header(r, hb);
            }
            p += used;
            n -= used;
            continue;
        }

        size_t take = n;
        if (take > r->remaining)
            take = (size_t)r->remaining;
        if (r->h.masked)
            ws_mask(p, take, r->h.key, r->off);
        for (size_t i = 0; i < take; i++)
            r->hash = (r->hash ^ p[i]) * 0x100000001B3u;
        if (r->h.opcode & 0x8) {
            if (r->ctl_n + take > sizeof r->ctl)
                FAIL("control payload overflow");
            memcpy(r->ctl + r->ctl_n, p, take);
            r->ctl_n += take;
        } else if (r->m.opcode == WS_OP_TEXT) {
            /* RFC 6455 §8.1: fail as soon as the text goes bad. */
            r->m.utf8 = utf8_validate(r->m.utf8, p, take);
            if (r->m.utf8 == UTF8_REJECT) {
                rx_fail(r, WS_CLOSE_INVALID_DATA);
                return;
            }
        } else if (r->m.opcode != WS_OP_BINARY) {
            FAIL("data payload with message opcode %u", r->m.opcode);
        }
        r->off += take;
        r->remaining -= take;
        r->pos += take;
        p += take;
        n -= take;
        if (r->remaining == 0)
            rx_frame_done(r);
    }
}

static void
rx_init(struct rx *r, uint8_t cfg)
{
    memset(r, 0, sizeof *r);
    r->expect_masked = cfg & 1;
    r->max_payload = max_payloads[(cfg >> 1) & 7];
    r->hash = r->frame_hash = 0xCBF29CE484222325u;
}

static void
rx_piece(struct rx *r, const uint8_t *p, size_t n)
{
    uint8_t *c = calloc(n ? n : 1, 1);
    if (c == NULL)
        abort();
    memcpy(c, p, n);
    rx_feed(r, c, n);
    free(c);
}

static void
rx_compare(const struct rx *a, const struct rx *b, const char *how)
{
    if (a->done != b->done || a->code != b->code || a->closed != b->closed
        || a->pos != b->pos || a->frames != b->frames
        || a->messages != b->messages || a->hash != b->hash
        || a->spill_n != b->spill_n || a->in_payload != b->in_payload
        || a->remaining != b->remaining || a->m.in_msg != b->m.in_msg
        || a->m.opcode != b->m.opcode || a->m.len != b->m.len
        || a->m.utf8 != b->m.utf8)
        FAIL("%s differs from one-shot: code %d/%d pos %llu/%llu "
             "frames %llu/%llu", how, b->code, a->code,
             (unsigned long long)b->pos, (unsigned long long)a->pos,
             (unsigned long long)b->frames, (unsigned long long)a->frames);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rx whole, chunked, bytewise;

    if (size < 2)
        return 0;
    const uint8_t *p = data + 2;
    size_t n = size - 2;
    uint32_t seed = data[1] * 2654435761u + 1;

    rx_init(&whole, data[0]);
    rx_piece(&whole, p, n);

    rx_init(&chunked, data[0]);
    for (size_t off = 0; off < n;) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        /* sizes 0..limit, limit picked by the seed byte: small pieces
         * split headers, large ones span frames */
        size_t limit = (size_t)4 << (data[1] & 7);
        size_t c = seed % (limit + 1);
        if (c > n - off)
            c = n - off;
        rx_piece(&chunked, p + off, c);
        off += c;
    }
    rx_compare(&whole, &chunked, "chunked");

    rx_init(&bytewise, data[0]);
    for (size_t off = 0; off < n; off++)
        rx_piece(&bytewise, p + off, 1);
    rx_compare(&whole, &bytewise, "bytewise");
    return 0;
}
