/*
 * ws.h - RFC 6455 frame codec (pure: no sockets, no allocation).
 *
 * The relay keeps frames in its own buffers; this module only reads and
 * writes frame headers, applies masks in place and decides whether a frame
 * is allowed. Validation is split the way a streaming relay needs it:
 *   ws_parse_header()  bytes -> struct ws_header (as soon as the header is
 *                      complete, before any payload is read);
 *   ws_check_header()  RFC 6455 §5 rules + max_payload, against the
 *                      direction's message state (fragmentation order),
 *                      so an oversized or illegal frame is refused before
 *                      one byte of its payload is forwarded;
 *   utf8_validate()    payload of text messages, fragment by fragment;
 *   ws_check_close()   a complete close payload.
 * Checks return 0 or the close code to fail the connection with
 * (WS_CLOSE_PROTOCOL 1002, WS_CLOSE_INVALID_DATA 1007, WS_CLOSE_TOO_BIG
 * 1009).
 */
#ifndef WSGUARD_WS_H
#define WSGUARD_WS_H

#include <stddef.h>
#include <stdint.h>

#define WS_ERROR (-1)
#define WS_INCOMPLETE (-2)

#define WS_MAX_HEADER 14        /* 2 + 8 (64-bit length) + 4 (mask) */
#define WS_MAX_CONTROL 125      /* RFC 6455 §5.5 */
#define WS_MAX_CTL_FRAME (2 + 4 + WS_MAX_CONTROL)   /* a whole control
                                   frame: short header, mask, payload */

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA
};

enum ws_close_code {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_NO_STATUS = 1005,      /* never sent on the wire */
    WS_CLOSE_ABNORMAL = 1006,       /* never sent: the peer just left */
    WS_CLOSE_INVALID_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL = 1011,
    WS_CLOSE_BAD_GATEWAY = 1014
};

struct ws_header {
    uint8_t fin;                /* 0 or 1 */
    uint8_t rsv;                /* RSV1..3 as bits 2..0 (0 = none set) */
    uint8_t opcode;             /* 0x0..0xF */
    uint8_t masked;             /* 0 or 1 */
    uint8_t key[4];             /* masking key when masked */
    uint64_t len;               /* payload length */
    uint8_t hdr_len;            /* 2..14 */
};

/* Per direction: the state of the message being received. Zero-initialise.
 * in_msg is set between a non-final data frame and its final continuation. */
struct ws_msg {
    uint8_t in_msg;
    uint8_t opcode;             /* WS_OP_TEXT or WS_OP_BINARY of in_msg */
    uint32_t utf8;              /* utf8_validate() state of a text message */
    uint64_t len;               /* payload bytes of the message so far */
    uint8_t rsv1_ok;            /* permessage-deflate agreed for this
                                   direction (RFC 7692): RSV1 allowed on a
                                   message's first frame; kept by
                                   ws_msg_end() */
    uint8_t compressed;         /* the message had RSV1 on its first
                                   frame */
};

/* A compressed message may be a little longer on the wire than
 * max_payload allows inflated (stored blocks, block headers): its wire
 * size is limited to this much more (the inflated size is the inflater's
 * business, pmd.h). */
#define WS_COMPRESSED_SLACK(max) ((max) / 256 + 64)

/*
 * Parse the header at p[0..n). Returns hdr_len (2..14) and fills *h, or
 * WS_INCOMPLETE when more bytes are needed, or WS_ERROR when the length
 * field is illegal (64-bit length with the top bit set, or a length not in
 * its minimal encoding, RFC 6455 §5.2).
 */
int ws_parse_header(const uint8_t *p, size_t n, struct ws_header *h);

/*
 * Check h, a header received in one direction: client frames must be
 * masked (expect_masked = 1), server frames must not (0). Rules: no RSV
 * bits, except RSV1 on the first frame of a data message when m->rsv1_ok
 * (permessage-deflate: the message is compressed, m->compressed is set;
 * RSV1 on a control or continuation frame is 1002), known opcodes, control frames
 * final and <= 125 bytes, continuation only inside a message, no new data
 * frame inside one. max_payload (0 = unlimited) bounds the whole message:
 * m->len + h->len > max_payload fails with 1009 at once (for a compressed
 * message, max_payload + WS_COMPRESSED_SLACK(max_payload)).
 * On success updates m for data frames (opens/extends the message; the
 * caller clears it after the final frame's payload, see ws_msg_end) and
 * returns 0; otherwise returns the close code and leaves m unchanged.
 */
int ws_check_header(struct ws_msg *m, const struct ws_header *h,
                    int expect_masked, uint64_t max_payload);

/* Called after the payload of a final data frame (fin = 1) was seen in
 * full: returns 1007 if the text message is not complete UTF-8, else 0;
 * resets m for the next message either way (rsv1_ok stays). */
int ws_msg_end(struct ws_msg *m);

/*
 * Check an unmasked close payload p[0..n): n == 0 is fine; n == 1 fails
 * (1002); the code must be one an endpoint may send (1000-1003, 1007-1014,
 * 3000-4999; 1002 otherwise); the reason must be UTF-8 (1007 otherwise).
 * Returns 0 or the close code.
 */
int ws_check_close(const uint8_t *p, size_t n);

/* Is code one an endpoint may put on the wire (see ws_check_close)? */
int ws_close_code_ok(unsigned code);

/* XOR p[0..n) in place with key, starting at key byte (offset % 4), where
 * offset is how many payload bytes of this frame came before p. Applying
 * it twice restores the data. */
void ws_mask(uint8_t *p, size_t n, const uint8_t key[4], uint64_t offset);

/* Change p[0..n) from masked with `from` to masked with `to` in one XOR
 * pass ((x^a)^b = x^(a^b)); offset as for ws_mask. */
void ws_remask(uint8_t *p, size_t n, const uint8_t from[4],
               const uint8_t to[4], uint64_t offset);

/* The fast path for a whole small frame (offset 0): re-mask all of
 * p[0..n) from `from` to `to` in one pass, and say whether every
 * unmasked byte was ASCII (1) or not (0). Either way p ends up masked
 * with `to`; after a 0 the caller unmasks it with `to` to validate the
 * UTF-8 (rare: the price is two more passes over a non-ASCII payload). */
int ws_remask_all(uint8_t *p, size_t n, const uint8_t from[4],
                  const uint8_t to[4]);

/* The general path for a client's text payload: for the longest prefix of
 * p[0..n) whose bytes, unmasked with `from`, are ASCII, re-mask them
 * with `to` in one pass (ASCII is valid UTF-8 between code points, so
 * a UTF-8 state of UTF8_ACCEPT stays so). offset as for ws_mask. Returns
 * the length of that prefix; the rest is left untouched (still masked
 * with `from`). */
size_t ws_remask_ascii(uint8_t *p, size_t n, const uint8_t from[4],
                       const uint8_t to[4], uint64_t offset);

/* Write a header for a frame of len payload bytes into out (room for
 * WS_MAX_HEADER bytes), masked with key when key is not NULL. Returns its
 * length. The payload is not touched. */
size_t ws_write_header(uint8_t *out, int fin, int opcode,
                       const uint8_t *key, uint64_t len);

/*
 * Write a whole close frame (code, reason truncated to fit 125 bytes at a
 * UTF-8 boundary) into out, which has room for WS_MAX_CTL_FRAME bytes;
 * masked with key when key is not NULL. code 0 writes an empty close.
 * Returns the frame length.
 */
size_t ws_build_close(uint8_t *out, unsigned code, const char *reason,
                      const uint8_t *key);

#endif
