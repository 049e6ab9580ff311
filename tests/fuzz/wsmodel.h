/*
 * wsmodel.h - a small, independent streaming receiver of RFC 6455 frames,
 * the oracle of the frame fuzz targets (header-only: each target is one
 * translation unit). Header spill buffer like uWS, parse -> check ->
 * unmask -> UTF-8 / close check -> msg_end, on pieces of any size fed in
 * order; it records its verdict (the close code it fails with, at which
 * frame, or a valid close), counts frames and messages, hashes the
 * unmasked payload, and can report every frame and data byte to the
 * caller. The including file defines FAIL(...) (report and abort).
 */
#ifndef WSGUARD_WSMODEL_H
#define WSGUARD_WSMODEL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"
#include "ws.h"

struct rx {
    /* what the stream carries, for a caller that checks it: every
     * complete frame (control payloads whole, in ctl) and every data
     * payload byte, unmasked */
    void (*on_frame)(void *ctx, const struct ws_header *h,
                     const uint8_t *ctl, size_t ctl_n);
    void (*on_data)(void *ctx, const uint8_t *p, size_t n);
    void *ctx;

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
    if (r->on_frame != NULL)
        r->on_frame(r->ctx, &r->h, r->ctl, r->ctl_n);
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
        } else {
            if (r->on_data != NULL)
                r->on_data(r->ctx, p, take);
            if (r->m.opcode == WS_OP_TEXT) {
                /* RFC 6455 §8.1: fail as soon as the text goes bad. */
                r->m.utf8 = utf8_validate(r->m.utf8, p, take);
                if (r->m.utf8 == UTF8_REJECT) {
                    rx_fail(r, WS_CLOSE_INVALID_DATA);
                    return;
                }
            } else if (r->m.opcode != WS_OP_BINARY) {
                FAIL("data payload with message opcode %u", r->m.opcode);
            }
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
rx_init(struct rx *r, int expect_masked, uint64_t max_payload)
{
    memset(r, 0, sizeof *r);
    r->expect_masked = expect_masked;
    r->max_payload = max_payload;
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

#endif
