/*
 * pmd.h - permessage-deflate (RFC 7692), terminated at wsguard: the
 * negotiation and the two compressors, as pure functions over the
 * caller's buffers (zlib does the DEFLATE work; no sockets, no event
 * loop, nothing kept beyond the objects below).
 *
 *   pmd_negotiate()   the client's Sec-WebSocket-Extensions offers ->
 *                     the agreed parameters and the response value
 *   pmd_inflate*()    client -> backend: compressed payload pieces in,
 *                     plain bytes out in bounded chunks, with the bomb
 *                     guard (message size and ratio) enforced while
 *                     inflating, never after
 *   pmd_deflate*()    backend -> client: a message in pieces, compressed
 *                     payload out in bounded chunks, the 00 00 ff ff tail
 *                     stripped (RFC 7692 §7.2.1)
 *
 * wsguard is always the server: its inflater uses the client_* parameters
 * (the client compresses), its deflater the server_* ones.
 *
 * Memory. zlib's state is allocated lazily (at a message's first byte),
 * counted through zalloc/zfree hooks (pmd_*_memory()), and released at
 * the end of every message when no context takeover was agreed for that
 * direction; with context takeover it lives as long as the session. For
 * a window of 2^b bytes (zlib 1.2.13, x86-64, measured with the counting
 * allocator, tests/unit/test_pmd.c checks it):
 *   inflater   7,160 (struct inflate_state) + 2^b (window)
 *   deflater   5,952 (struct deflate_state) + 8 * 2^b' (window 2 * w,
 *              prev 2 * w, hash head 2 * 2^(memLevel + 7), pending
 *              4 * 2^(memLevel + 6)), b' = max(b, 9), memLevel = b' - 7
 * plus 16 bytes per block (the allocator's count) and the 120-byte
 * struct pmd_zs per stream; pmd_memory_bound() adds it all up:
 *   server/client bits   deflater    inflater    session worst case
 *   15 / 15              268,296     40,080      308,376 (zlib defaults)
 *   12 / 15 (*)           38,920     40,080       79,000
 *   12 / 12               38,920     11,408       50,328
 *   10 / 10               14,344      8,336       22,680
 * (*) an offer without client_max_window_bits (Firefox sends a bare
 * "permessage-deflate") leaves the client free to use 2^15, so the
 * inflater needs the full window whatever the policy prefers.
 * An idle session without context takeover holds none of it; the structs
 * below are all a session carries between messages then.
 *
 * Suggested defaults (PMD_DEFAULT_*): windows of 2^12 both ways, level 1,
 * context takeover on. On 4 KiB JSON-like messages (200 of them, zlib
 * 1.2.13 through Python, one core) that compresses 6.4:1 in 23 us a
 * message, against 7.1:1 in 19 us for 2^15 at level 1 (8.1:1 in 39 us at
 * 2^12, level 6), with 16 % of the memory of 2^15.
 *
 * Everything here runs on the thread that owns the objects; the module
 * has no global state.
 */
#ifndef WSGUARD_PMD_H
#define WSGUARD_PMD_H

#include <stddef.h>
#include <stdint.h>

#include "http.h"

/* ---- negotiation (RFC 7692 §5-7) */

#define PMD_BITS_MIN 8
#define PMD_BITS_MAX 15

/* Long enough for the longest response value and its NUL (129 bytes). */
#define PMD_RESPONSE_MAX 160

/* What wsguard is willing to agree to. Window bits 8..15 (out of range
 * values are clamped). */
struct pmd_policy {
    uint8_t enabled;            /* 0: never accept an offer */
    uint8_t server_no_context_takeover;  /* always ask for it: our
                                   deflater is released between messages */
    uint8_t client_no_context_takeover;  /* always require it of the
                                   client: our inflater is released */
    uint8_t server_max_window_bits;  /* the largest window our deflater
                                   uses (answered even when not offered) */
    uint8_t client_max_window_bits;  /* the largest window we ask the
                                   client to compress with (possible only
                                   when its offer has the parameter) */
};

#define PMD_DEFAULT_SERVER_BITS 12
#define PMD_DEFAULT_CLIENT_BITS 12
#define PMD_DEFAULT_LEVEL 1

/* What was agreed. */
struct pmd_params {
    uint8_t server_no_context_takeover;  /* our deflater resets per
                                   message */
    uint8_t client_no_context_takeover;  /* the client's deflater (so our
                                   inflater) resets per message */
    uint8_t server_max_window_bits;  /* 8..15: our deflater's window
                                   (zlib deflates 8 as 9, see pmd.c) */
    uint8_t client_max_window_bits;  /* 8..15: the client's window, so
                                   our inflater's (15 when not limited) */
};

#define PMD_NEG_NONE 0          /* no extension (not a failure) */
#define PMD_NEG_MALFORMED (-1)  /* no extension either: a header value
                                   is not valid syntax (log it) */

/*
 * Negotiate over the request headers h[0..n): every header named
 * Sec-WebSocket-Extensions, in order, is one comma-separated list of
 * offers (RFC 6455 §9.1: extension *( ";" param ), param values a token or
 * a quoted-string that unescapes to a token; RFC 7230 list rules: empty
 * elements and optional whitespace allowed). Names are compared exactly
 * (case-sensitive), as Chrome, ws (Node) and websockets (Python) do.
 *
 * The first acceptable permessage-deflate offer wins; an offer is not
 * acceptable (and the next one is tried) when it has an unknown
 * parameter, a parameter twice, a value on a parameter that takes none,
 * or a window value that is not 8..15 without leading zeros (RFC 7692
 * §7). Other extensions are ignored. A syntax error anywhere in those
 * headers makes the whole offer list unusable: nothing is accepted.
 *
 * The answer (RFC 7692 §7.1): server_no_context_takeover when offered or
 * when the policy wants it; client_no_context_takeover when offered
 * (it costs the client nothing it did not offer, and lets our inflater be
 * released between messages) or when the policy wants it;
 * server_max_window_bits = min(offered, policy) when offered, the
 * policy's when it is below 15 and not offered; client_max_window_bits =
 * min(offered value or 15, policy) when offered, and only then (the
 * parameter must not be answered otherwise), left out when that is 15 and
 * the offer had no value.
 *
 * On acceptance writes the response value (NUL-terminated) into
 * resp[0..cap), cap >= PMD_RESPONSE_MAX, fills *out and returns the
 * value's length (> 0). Otherwise returns PMD_NEG_NONE or
 * PMD_NEG_MALFORMED: the upgrade goes on without the extension (and
 * without a Sec-WebSocket-Extensions header). *out is zeroed then.
 */
int pmd_negotiate(const struct pmd_policy *pol, const struct http_header *h,
                  size_t n, struct pmd_params *out, char *resp, size_t cap);

/*
 * Bytes of zlib state (and this module's bookkeeping) a session can hold
 * at most for the agreed parameters: a deflater and an inflater, each
 * with its full window.
 */
size_t pmd_memory_bound(const struct pmd_params *p);

/* ---- results of the compressors */

enum pmd_result {
    PMD_OK = 0,                 /* all input taken (and, at the end of a
                                   message, the message is complete) */
    PMD_NEED_OUTPUT_SPACE,      /* dst is full: hand it on, then call
                                   again with the input not yet taken */
    PMD_TOO_BIG,                /* inflated message > max_msg: 1009 */
    PMD_RATIO,                  /* inflated/compressed > max_ratio: 1009
                                   (or the caller's policy code) */
    PMD_BAD_DATA,               /* not a valid DEFLATE stream: 1007 */
    PMD_ERROR                   /* zlib could not allocate its state (or
                                   failed internally): 1011 */
};

/* Short text of a result, for the log. */
const char *pmd_result_name(int r);

/* The ratio limit applies once a message has inflated to this many bytes:
 * below it a high ratio is normal (a short repeated message under context
 * takeover is a few bytes on the wire) and harmless. */
#define PMD_RATIO_MIN_BYTES 65536u

struct pmd_zs;                  /* a z_stream and its allocation count */

/* ---- inflater: client -> backend */

struct pmd_inflater {
    struct pmd_zs *z;           /* NULL while no stream is allocated */
    uint64_t max_msg;           /* inflated bytes per message; 0 = no
                                   limit */
    uint64_t msg_in;            /* compressed payload bytes taken in this
                                   message (the appended tail not
                                   counted) */
    uint64_t msg_out;           /* bytes inflated in this message */
    uint32_t max_ratio;         /* msg_out / msg_in; 0 = no limit */
    uint8_t bits;               /* window: client_max_window_bits */
    uint8_t no_takeover;        /* client_no_context_takeover */
    uint8_t tail;               /* bytes of 00 00 ff ff fed at the end */
    uint8_t ended;              /* a BFINAL block ended the stream */
    uint8_t failed;             /* the sticky result after an error */
};

/* Set up for the agreed parameters and the guard's limits; allocates
 * nothing. */
void pmd_inflater_init(struct pmd_inflater *in, const struct pmd_params *p,
                       uint64_t max_msg, uint32_t max_ratio);

/*
 * Inflate src[0..len), the next piece of a compressed message's payload
 * (any split; a message begins with the first call after init or after
 * pmd_inflate_end() returned PMD_OK), into dst[0..cap), cap >= 1.
 * *used receives the input bytes taken, *produced the bytes written.
 * Returns
 *   PMD_OK                 all of src was taken and everything it yields
 *                          is in dst;
 *   PMD_NEED_OUTPUT_SPACE  dst is full: more output may be waiting even
 *                          when all of src was taken; call again with
 *                          src + *used (possibly len 0) and fresh space;
 *   PMD_TOO_BIG            the message inflated to more than max_msg
 *                          bytes: detected at the first byte too many,
 *                          so never more than max_msg + 1 bytes are
 *                          inflated;
 *   PMD_RATIO              after PMD_RATIO_MIN_BYTES, more than
 *                          max_ratio inflated bytes per compressed byte
 *                          (checked after every zlib call, so at most cap
 *                          bytes beyond the point where it was exceeded);
 *   PMD_BAD_DATA           invalid DEFLATE data;
 *   PMD_ERROR              out of memory.
 * After an error the output of that call must not be used, and every
 * later call returns the same result: the session is failing.
 */
int pmd_inflate(struct pmd_inflater *in, const uint8_t *src, size_t len,
                size_t *used, uint8_t *dst, size_t cap, size_t *produced);

/*
 * The message's final payload byte has been passed to pmd_inflate():
 * append 00 00 ff ff (RFC 7692 §7.2.2) and inflate what remains into
 * dst[0..cap). Returns PMD_OK when the message is complete (and then
 * releases the stream under client_no_context_takeover), or
 * PMD_NEED_OUTPUT_SPACE (call again with fresh space), or an error as for
 * pmd_inflate(). The data must end on a DEFLATE block boundary (what a
 * sync flush leaves) or with a final block: a truncated message is
 * PMD_BAD_DATA. An empty payload is an empty message (zlib-based
 * senders produce one for an empty message under context takeover).
 */
int pmd_inflate_end(struct pmd_inflater *in, uint8_t *dst, size_t cap,
                    size_t *produced);

/* Release the zlib state (the session is going). The inflater may be
 * initialised again. */
void pmd_inflater_free(struct pmd_inflater *in);

/* Bytes it holds now (0 while no stream is allocated). */
size_t pmd_inflater_memory(const struct pmd_inflater *in);

/* ---- deflater: backend -> client */

/* Output space pmd_deflate()/pmd_deflate_end() need at least: the last 4
 * bytes produced are held back until it is known whether they are the
 * tail to strip, and zlib wants more than 6 bytes for a flush (zlib.h,
 * deflate()). */
#define PMD_DEFLATE_MIN_OUT 16

struct pmd_deflater {
    struct pmd_zs *z;           /* NULL while no stream is allocated */
    int level;                  /* zlib level 0..9 (or -1, zlib's 6) */
    uint8_t bits;               /* server_max_window_bits */
    uint8_t no_takeover;        /* server_no_context_takeover */
    uint8_t fed;                /* this message has had input */
    uint8_t flushing;           /* pmd_deflate_end() has begun */
    uint8_t nhold;              /* bytes in hold */
    uint8_t hold[4];            /* last bytes produced, not yet given out */
    uint8_t failed;             /* the sticky result after an error */
};

/* Set up for the agreed parameters; allocates nothing. */
void pmd_deflater_init(struct pmd_deflater *d, const struct pmd_params *p,
                       int level);

/*
 * Compress src[0..len), the next piece of a message, writing what zlib
 * gives out into dst[0..cap), cap >= PMD_DEFLATE_MIN_OUT (less: returns
 * PMD_NEED_OUTPUT_SPACE having done nothing). *used and *produced as for
 * pmd_inflate(). Returns PMD_OK when all of src was taken (zlib may keep
 * some of it for later output), PMD_NEED_OUTPUT_SPACE, or PMD_ERROR.
 */
int pmd_deflate(struct pmd_deflater *d, const uint8_t *src, size_t len,
                size_t *used, uint8_t *dst, size_t cap, size_t *produced);

/*
 * End the message: flush (Z_SYNC_FLUSH) into dst[0..cap), cap >=
 * PMD_DEFLATE_MIN_OUT, without the final 00 00 ff ff. Returns
 * PMD_NEED_OUTPUT_SPACE (call again with fresh space) until the message's
 * last byte has been written, then PMD_OK (releasing the stream under
 * server_no_context_takeover), or PMD_ERROR. An empty message is the one
 * byte 00 (an empty stored block's header, RFC 7692 §7.2.3.6).
 */
int pmd_deflate_end(struct pmd_deflater *d, uint8_t *dst, size_t cap,
                    size_t *produced);

/* Release the zlib state (the session is going). */
void pmd_deflater_free(struct pmd_deflater *d);

/* Bytes it holds now (0 while no stream is allocated). */
size_t pmd_deflater_memory(const struct pmd_deflater *d);

#endif
