/*
 * relay.c - the relay engine of an upgraded session (see relay.h and
 * docs/architecture.md, "Relay and buffer ownership").
 *
 * Each direction holds at most one 16 KiB buffer (buf.h). Reads land at
 * last, dir_parse() advances parsed (unmasking, checking UTF-8 and
 * re-masking payload in place as it goes), and the writer drains
 * [pos, parsed): unvalidated bytes are never forwarded. A full buffer
 * stops reading from the source until the destination takes bytes: that
 * is all the backpressure there is, and it bounds memory.
 *
 * Frames wsguard sends itself (its ping, close frames) wait in the
 * direction's small ctl slot until the stream toward that side is at a
 * frame boundary; a ctl write that has begun is finished before any other
 * byte goes out (with TLS a record of it may already be inside OpenSSL).
 */
#include "relay.h"

#include <stdio.h>
#include <string.h>

#include "log.h"
#include "units.h"
#include "utf8.h"

static void dir_flush(struct relay *r, struct dir *d);

/* Internal event: wsguard's close frames were queued in both directions;
 * the socket path writes them before returning (relay_rx_done leaves
 * that to its caller, who drains with relay_tx_next). */
#define RELAY_FLUSH 0x100u


static void
enforced(struct relay *r, enum enforce e)
{
    stats_add(&r->st->enforced[e], 1);
}

/* The direction that carries what s sends, and the one toward s. */
static struct dir *
dir_of(struct relay *r, const struct side *s)
{
    return s == r->cli.io ? &r->up : &r->down;
}

static struct dir *
dir_to(struct relay *r, const struct side *s)
{
    return s == r->cli.io ? &r->down : &r->up;
}

static void
dir_init(struct dir *d, struct peer *src, struct peer *dst, int from_client,
         uint64_t max_payload)
{
    d->src = src;
    d->dst = dst;
    d->from_client = (uint8_t)from_client;
    d->mbit = from_client ? 0x80 : 0;
    d->max_payload = max_payload;
}

/* What the fast path takes in d (dir_fast): once max_payload, zmin and
 * the rate limits are known. */
static void
dir_fast_init(struct dir *d, const struct policy *p)
{
    uint64_t end = 126;

    if (d->max_payload != 0 && d->max_payload < end)
        end = d->max_payload + 1;
    if (d->zmin < end)
        end = d->zmin;
    d->fast_end = (uint8_t)end;
    d->fast_lim = d->from_client &&
                  (p->messages_per_second || p->bytes_per_second);
}

void
relay_init(struct relay *r, const struct relay_setup *s)
{
    const struct policy *p = s->pol;

    memset(r, 0, sizeof *r);
    r->cfg = s->cfg;
    r->pol = p;
    r->cli.io = s->cli;
    r->be.io = s->be;
    r->bufs = s->bufs;
    r->rnd = s->rnd;
    r->st = s->st;
    r->name = s->name;
    r->started = s->started;
    r->expiry = s->expiry;
    dir_init(&r->up, &r->cli, &r->be, 1, p->max_payload);
    dir_init(&r->down, &r->be, &r->cli, 0, p->max_payload_backend);
    r->up.zmin = r->down.zmin = UINT64_MAX;
    if (s->pmd == NULL)
        free(s->z);             /* (owned from here either way) */
    else
        r->z = s->z;
    if (r->z != NULL) {
        /* Nothing is allocated until a message needs it (pmd.h). */
        r->up.msg.rsv1_ok = 1;
        pmd_inflater_init(&r->z->in, s->pmd, p->max_payload,
                          (uint32_t)p->max_inflate_ratio);
        pmd_deflater_init(&r->z->out, s->pmd, (int)p->deflate_level);
        r->down.zmin = p->deflate_min_size;
    }
    dir_fast_init(&r->up, p);
    dir_fast_init(&r->down, p);
}

/* ------------------------------------------------------------------ */
/* Deadlines                                                           */

static void
relay_deadlines(const struct relay *r, double t[DL_COUNT])
{
    const struct config *cfg = r->cfg;
    struct session_times st = {
        .started = r->started,
        .last_activity = r->last_activity,
        .cli_rx = r->cli_rx,
        .ping_sent = r->ping_sent,
        .cli_wblock = r->cli.wblock_since,
        .be_wblock = r->be.wblock_since,
        .expiry = r->expiry,
        .held = r->held,
    };
    struct session_timeouts to = {
        .max_lifetime_ms = cfg->max_lifetime_ms,
        .idle_timeout_ms = cfg->idle_timeout_ms,
        .write_timeout_ms = cfg->write_timeout_ms,
        .ping_interval_ms = cfg->ping_interval_ms,
        .pong_timeout_ms = cfg->pong_timeout_ms,
        .quiet_ms = RELAY_QUIET_MS,
    };
    if (r->ping_queued)
        to.ping_interval_ms = 0;        /* no ping, no pong deadline */
    deadline_all(&st, &to, t);
}

/* Closing: the peers have close_timeout to answer our close frames. */
static double
close_deadline(const struct relay *r)
{
    uint64_t t = r->cfg->close_timeout_ms;

    return r->closing_since + units_seconds(t ? t : 1);
}

/* After the close handshake with the backend, the time it is given to
 * close its TCP connection first: a tenth of close_timeout. */
static double
backend_fin_grace(const struct relay *r)
{
    return units_seconds(r->cfg->close_timeout_ms) / 10;
}

double
relay_deadline(const struct relay *r)
{
    double t[DL_COUNT];

    if (r->closing) {
        double d = close_deadline(r);
        return r->be_fin_by > 0 && r->be_fin_by < d ? r->be_fin_by : d;
    }
    relay_deadlines(r, t);
    return deadline_next(t);
}

/* ------------------------------------------------------------------ */
/* Closing                                                             */

static void
start_closing(struct relay *r)
{
    if (r->closing)
        return;
    r->closing = 1;
    r->closing_since = r->now;
    r->ev |= RELAY_CLOSING | RELAY_REARM;
}

/* The first end is the one on record; reason_of says whose protocol
 * error reason names (0: reason is the whole text). */
static void
record_end_of(struct relay *r, int code, const char *by, uint8_t reason_of,
              const char *reason)
{
    if (r->close_code == 0) {
        r->close_code = code;
        r->closed_by = by;
        r->reason = reason;
        r->reason_of = reason_of;
    }
}

static void
record_end(struct relay *r, int code, const char *by, const char *reason)
{
    record_end_of(r, code, by, 0, reason);
}

/* A reason with its sender in front, when it is a peer's protocol error
 * ("client invalid UTF-8"): composed when it is said, so no session
 * keeps a copy. */
static const char *
reason_text(uint8_t of, const char *reason, char *buf, size_t cap)
{
    if (of == 0 || reason == NULL)
        return reason;
    snprintf(buf, cap, "%s %s", of == REASON_OF_CLIENT ? "client" : "backend",
             reason);
    return buf;
}

const char *
relay_reason(const struct relay *r, char *buf, size_t cap)
{
    return reason_text(r->reason_of, r->reason, buf, cap);
}

/* Nothing may be sent through d's ctl slot any more (or what waits
 * there is dropped). */
static void
ctl_reset(struct relay *r, struct dir *d)
{
    d->ctl_len = d->ctl_off = 0;
    d->ctl_close = d->ctl_ping = d->ctl_busy = 0;
    if (d == &r->down)
        r->ping_queued = 0;
}

/* A side that is gone for good (stalled, silent): its socket is closed by
 * relay_settle(), which tells the other side with a close frame. */
static void
relay_drop(struct relay *r, struct peer *p, int code, const char *reason)
{
    record_end(r, code, "wsguard", reason);
    log_debug("session %s: dropping the %s: %s", r->name,
              p == &r->cli ? "client" : "backend", reason);
    p->io->eof = 1;
}

/* The bytes of d's ctl slot (wsguard's ping, then its close), written
 * into out: made again from what the slot holds each time they are
 * needed, so a session does not keep them. Returns their length. */
static size_t
ctl_bytes(const struct relay *r, const struct dir *d,
          uint8_t out[RELAY_CTL_MAX])
{
    size_t n = 0;

    if (d->ctl_ping) {
        n = ws_write_header(out, 1, WS_OP_PING, NULL, sizeof r->ping_data);
        memcpy(out + n, r->ping_data, sizeof r->ping_data);
        n += sizeof r->ping_data;
    }
    if (d->ctl_close) {
        char buf[RELAY_REASON_MAX];
        n += ws_build_close(out + n, d->ctl_code,
                            reason_text(d->ctl_reason_of, d->ctl_reason,
                                        buf, sizeof buf),
                            d->from_client ? d->ctl_key : NULL);
    }
    return n;
}

/* Where relay_tx_next() makes the ctl bytes: one per thread, as the
 * bytes are written before the thread turns to another session. */
static _Thread_local uint8_t ctl_out[RELAY_CTL_MAX];

/* They are the same bytes every time (checked in the sanitizer and fuzz
 * builds, like OFR_CHECK): a partial write goes on where it stopped. */
static const uint8_t *
ctl_next(const struct relay *r, const struct dir *d, size_t *len)
{
    size_t n = ctl_bytes(r, d, ctl_out);

#if defined(WSGUARD_CHECKS) || defined(__SANITIZE_ADDRESS__) \
    || defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
    if (n != d->ctl_len || d->ctl_off >= n)
        abort();
#else
    (void)n;
#endif
    *len = (size_t)(d->ctl_len - d->ctl_off);
    return ctl_out + d->ctl_off;
}

/* Put a close frame for d's destination in d's ctl slot (reason: static
 * text, as reason_text() takes it). Toward a server (the backend) frames
 * are masked with a fresh key (RFC 6455 §5.3). */
static void
dir_queue_close(struct relay *r, struct dir *d, int code, uint8_t reason_of,
                const char *reason)
{
    /* One close per side: not after the peer's close went (or is going)
     * that way, not twice from wsguard. */
    if (d->dst->io->fd == -1 || d->dst->sent_close || d->ctl_close ||
        d->relayed_close)
        return;
    if (d->from_client)         /* toward the backend: masked */
        rnd_take(r->rnd, d->ctl_key, 4);
    d->ctl_code = (uint16_t)code;
    d->ctl_reason = reason;
    d->ctl_reason_of = reason_of;
    d->ctl_close = 1;
    d->ctl_len = (uint16_t)ctl_bytes(r, d, ctl_out);
}

/* wsguard's own ping to a silent client (server to client: unmasked).
 * Its pong is recognised by the random payload and not relayed. */
static void
relay_ping(struct relay *r)
{
    struct dir *d = &r->down;

    if (d->ctl_len || d->relayed_close || r->cli.io->fd == -1)
        return;
    rnd_take(r->rnd, r->ping_data, sizeof r->ping_data);
    d->ctl_ping = 1;
    d->ctl_len = (uint16_t)ctl_bytes(r, d, ctl_out);
    /* Until it is written (it may wait for the end of a frame the
     * backend is sending), neither another ping nor the pong timeout is
     * due: see relay_deadlines. */
    r->ping_queued = 1;
    r->held = r->now;           /* writing it takes a record buffer */
    r->ev |= RELAY_FLUSH;
}

/* Stop forwarding in d: what was validated still goes out, the rest of
 * the sender's stream is parsed only to notice its close frame. */
static void
dir_discard(struct dir *d)
{
    if (d->mode == MODE_DISCARD)
        return;
    d->mode = MODE_DISCARD;
    /* The forwarded stream is left inside a frame: no frame of ours can
     * follow it, the destination's connection is cut after the flush. */
    if (d->in_frame && !d->xform)
        d->cut = 1;
}

static unsigned
take_events(struct relay *r)
{
    unsigned ev = r->ev & ~RELAY_FLUSH;

    r->ev = 0;
    return ev;
}

/* The socket path's end of an entry point: write what fail() queued. */
static unsigned
flushed_events(struct relay *r)
{
    if (r->ev & RELAY_FLUSH) {
        r->ev &= ~RELAY_FLUSH;
        dir_flush(r, &r->down);
        dir_flush(r, &r->up);
    }
    return take_events(r);
}

static void
fail_of(struct relay *r, int cli_code, int be_code, uint8_t reason_of,
        const char *reason, const char *by)
{
    char buf[RELAY_REASON_MAX];

    if (r->failing)
        return;
    r->failing = 1;
    record_end_of(r, cli_code, by, reason_of, reason);
    log_debug("session %s: closing: %d %s", r->name, cli_code,
              reason_text(reason_of, reason, buf, sizeof buf));
    dir_discard(&r->up);
    dir_discard(&r->down);
    /* to the client, to the backend */
    dir_queue_close(r, &r->down, cli_code, reason_of, reason);
    dir_queue_close(r, &r->up, be_code, reason_of, reason);
    start_closing(r);
    r->ev |= RELAY_FLUSH;
}

static void
fail(struct relay *r, int cli_code, int be_code, const char *reason,
     const char *by)
{
    fail_of(r, cli_code, be_code, 0, reason, by);
}

unsigned
relay_fail(struct relay *r, int cli_code, int be_code, const char *reason,
           const char *by, double now)
{
    r->now = now;
    fail(r, cli_code, be_code, reason, by);
    return flushed_events(r);
}

/* ------------------------------------------------------------------ */
/* Validation                                                          */

/* How many bytes at the end of p[0..n) belong to an unfinished UTF-8
 * sequence: continuation bytes back to and including their lead byte
 * (all n when the lead byte came before p). At most 3. */
static size_t
utf8_tail(const uint8_t *p, size_t n)
{
    size_t k = 0;
    while (k < n && k < 3 && (p[n - 1 - k] & 0xC0) == 0x80)
        k++;
    if (k < n && k < 3 && (p[n - 1 - k] & 0xC0) == 0xC0)
        k++;                    /* the lead byte */
    return k;
}

/* [limits] on a complete client control frame: pings and pongs share
 * one bucket; close frames are never limited. */
static int
limit_control(struct relay *r, struct dir *d, const struct ws_header *h)
{
    uint64_t n = r->pol->control_frames_per_second;
    if (n == 0 || h->opcode == WS_OP_CLOSE ||
        bucket_take(&r->b_ctl, (double)n, (double)n, 1, r->now, 0))
        return 0;
    d->why = "control frame rate exceeded";
    d->enf = ENF_CONTROL;
    return WS_CLOSE_POLICY;
}

/* The byte rate, charged n bytes (a frame's payload, or what a
 * compressed message inflated to). */
static int
limit_bytes(struct relay *r, struct dir *d, uint64_t n)
{
    const struct policy *p = r->pol;

    if (p->bytes_per_second) {
        double rate = (double)p->bytes_per_second;
        if (!bucket_take(&r->b_bytes, rate, rate, (double)n, r->now, 1)) {
            d->why = "byte rate exceeded";
            d->enf = ENF_RATE;
            return WS_CLOSE_POLICY;
        }
    }
    return 0;
}

/* [limits] on a client data frame header, before any of its payload is
 * forwarded: the message rate is charged on a message's first frame, the
 * byte rate on every frame. */
static int
limit_data(struct relay *r, struct dir *d, const struct ws_header *h)
{
    const struct policy *p = r->pol;

    if (p->messages_per_second && h->opcode != WS_OP_CONT) {
        double rate = (double)p->messages_per_second;
        double burst = p->message_burst ? (double)p->message_burst : rate;
        if (!bucket_take(&r->b_msgs, rate, burst, 1, r->now, 0)) {
            d->why = "message rate exceeded";
            d->enf = ENF_RATE;
            return WS_CLOSE_POLICY;
        }
    }
    /* A compressed message is charged as it inflates (dir_zout). */
    if (h->rsv == 0 && !(h->opcode == WS_OP_CONT && d->msg.compressed))
        return limit_bytes(r, d, h->len);
    return 0;
}

/* A complete control frame at p (header n bytes, h parsed and checked).
 * Returns 0 (handled: forwarded, or wsguard's pong consumed), 1 when d
 * switched to discard mode after a close, or the close code the sender
 * earned. */
static int
dir_control(struct relay *r, struct dir *d, uint8_t *p, int n,
            const struct ws_header *h, size_t avail)
{
    struct buf *b = d->b;
    uint8_t *pl = p + n;
    int code;

    if (d->from_client && (code = limit_control(r, d, h)))
        return code;
    if (h->masked)
        ws_mask(pl, (size_t)h->len, h->key, 0);
    if (d->from_client && h->opcode == WS_OP_PONG && r->ping_sent > 0 &&
        h->len == sizeof r->ping_data &&
        memcmp(pl, r->ping_data, sizeof r->ping_data) == 0) {
        /* The pong to wsguard's own ping: consumed here. */
        size_t flen = (size_t)n + (size_t)h->len;
        memmove(p, p + flen, avail - flen);
        b->last -= (uint32_t)flen;
        r->ping_sent = 0;
        return 0;
    }
    if (h->opcode == WS_OP_CLOSE) {
        code = ws_check_close(pl, (size_t)h->len);
        if (code) {
            d->why = "invalid close frame";
            return code;
        }
        d->src->got_close = 1;
        d->close_fwd = 1;
        d->relayed_close = 1;
        /* Nothing of ours may follow the peer's close (a close of ours is
         * refused by relayed_close). */
        if (d->ctl_len && !d->ctl_busy)
            ctl_reset(r, d);
        if (r->close_code == 0) {
            r->close_code = h->len >= 2 ? (pl[0] << 8 | pl[1])
                                        : WS_CLOSE_NO_STATUS;
            r->closed_by = d->from_client ? "client" : "backend";
        }
    }
    if (h->masked) {
        rnd_take(r->rnd, p + n - 4, 4);
        ws_mask(pl, (size_t)h->len, p + n - 4, 0);
    }
    b->parsed += (uint32_t)(n + h->len);
    if (h->opcode == WS_OP_CLOSE) {
        /* RFC 6455 §5.5.1: nothing follows a close frame. */
        d->mode = MODE_DISCARD;
        b->last = b->parsed;
        start_closing(r);
        return 1;
    }
    return 0;
}

/* Text payload p[0..take) of the current frame: unmask, validate UTF-8,
 * re-mask. Returns how many bytes may be forwarded (the rest, at most 3,
 * is an unfinished code point at the end of the final frame, held back),
 * or -1 for invalid UTF-8. */
static long
dir_text(struct dir *d, uint8_t *p, size_t take)
{
    /* Client text that is ASCII (the common case) is unmasked, validated
     * and re-masked in one pass; whatever follows the first non-ASCII
     * byte takes the general path. */
    size_t done = 0;
    if (d->masked && d->msg.utf8 == UTF8_ACCEPT)
        done = ws_remask_ascii(p, take, d->ckey, d->okey, d->frame_off);
    uint8_t *q = p + done;
    size_t m = take - done;
    uint64_t off = d->frame_off + done;
    uint32_t before = d->msg.utf8;
    if (m > 0 && d->masked)
        ws_mask(q, m, d->ckey, off);
    uint32_t st = m > 0 ? utf8_validate(before, q, m) : before;
    int last = d->fin && take == d->remaining;
    if (st == UTF8_REJECT || (last && st != UTF8_ACCEPT))
        return -1;
    size_t hold = 0;
    if (st != UTF8_ACCEPT && d->fin) {
        /* The final frame so far ends inside a code point: hold those
         * bytes back until it completes, so a message that ends there is
         * refused before any of it goes out (the backend never gets an
         * invalid message). */
        hold = utf8_tail(q, m);
        st = utf8_validate(before, q, m - hold);
    }
    d->msg.utf8 = st;
    if (m > 0 && d->masked) {
        ws_mask(q, m - hold, d->okey, off);
        /* Held bytes go back to the sender's mask, to be processed again
         * when the rest arrives. */
        ws_mask(q + m - hold, hold, d->ckey, off + m - hold);
    }
    return (long)(take - hold);
}

/* n whole data messages went through d: counted for the log and the
 * metrics. */
static void
msgs_relayed(struct relay *r, struct dir *d, uint32_t n)
{
    d->msgs += n;
    stats_add(&r->st->messages[d->from_client ? DIR_IN : DIR_OUT], n);
}

/*
 * The common case in one pass: whole, unfragmented text or binary
 * messages of at most 125 bytes (a 2-byte header, plus the key when
 * masked) lying complete in the buffer, outside any fragmented message,
 * one after the other from b->parsed. Every rule of the general path
 * applies (RSV 0, the masking direction, max_payload, the rate limits,
 * UTF-8 of text), only without the state kept for frames that arrive in
 * pieces. Stops at the first frame that is not one of these (the general
 * path takes it; nothing of it was changed). Returns 0, or a close code
 * with d->why set.
 */
static int
dir_fast(struct relay *r, struct dir *d)
{
    struct buf *b = d->b;
    uint8_t *const data = b->data;
    uint32_t at = b->parsed, msgs = 0;
    const uint32_t last = b->last;
    /* Copied: stores into the payload may alias anything (uint8_t *), so
     * fields read in the loop would be loaded again on every frame. */
    const uint8_t from_client = d->from_client, mbit = d->mbit,
                  fast_end = d->fast_end, fast_lim = d->fast_lim;
    const size_t hdr = from_client ? 6 : 2;
    int code = 0;

    if (d->msg.in_msg)
        return 0;
    while (last - at >= 2) {
        uint8_t *p = data + at;
        uint8_t b0 = p[0];
        size_t len = (uint8_t)(p[1] ^ mbit);

        /* b0: FIN, RSV 0, text or binary. len: the mask bit as the
         * direction wants it and a 7-bit length short enough. */
        if ((unsigned)(b0 - 0x81) > 1 || len >= fast_end ||
            last - at < hdr + len)
            break;
        if (fast_lim) {
            struct ws_header h = { .fin = 1, .opcode = b0 & 0xF, .len = len };
            if ((code = limit_data(r, d, &h)) != 0)
                break;
        }
        uint8_t *pl = p + hdr;
        if (from_client) {
            uint8_t ckey[4], okey[4];
            memcpy(ckey, p + 2, 4);
            rnd_take(r->rnd, okey, 4);
            if (b0 == 0x81) {
                if (!ws_remask_all(pl, len, ckey, okey)) {
                    /* Not all ASCII: unmask (now with our key), validate,
                     * mask again (a refused frame is never sent, so its
                     * bytes may stay transformed). */
                    ws_mask(pl, len, okey, 0);
                    if (utf8_validate(UTF8_ACCEPT, pl, len) != UTF8_ACCEPT)
                        goto bad_utf8;
                    ws_mask(pl, len, okey, 0);
                }
            } else {
                ws_remask(pl, len, ckey, okey, 0);
            }
            memcpy(p + 2, okey, 4);
        } else if (b0 == 0x81 && !utf8_is_ascii(pl, len) &&
                   utf8_validate(UTF8_ACCEPT, pl, len) != UTF8_ACCEPT) {
            goto bad_utf8;
        }
        at += (uint32_t)(hdr + len);
        msgs++;
    }
    if (0) {
bad_utf8:
        d->why = "invalid UTF-8";
        code = WS_CLOSE_INVALID_DATA;
    }
    b->parsed = at;
    if (msgs > 0)
        msgs_relayed(r, d, msgs);
    return code;
}

/* ------------------------------------------------------------------ */
/* permessage-deflate: the transformed messages                        */

/* Room kept for the header of a frame built in o: 2 + 2 (a 16-bit
 * length: o is smaller than 64 KiB) + 4 (the mask toward the backend). */
#define OFR_HDR 8
/* Less room than this left in o: wait for it to drain rather than build
 * small frames. */
#define OFR_MIN 1024

/* A frame is built in o only inside one call of the engine: between
 * calls o may go back to the pool (checked in the sanitizer and fuzz
 * builds, like BUF_CHECK). */
#if defined(WSGUARD_CHECKS) || defined(__SANITIZE_ADDRESS__) \
    || defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
#define OFR_CHECK(d) do { if ((d)->oopen) abort(); } while (0)
#else
#define OFR_CHECK(d) ((void)0)
#endif

/* n bytes at b->parsed were consumed by the transform: they are never
 * forwarded. When everything validated is written the window just moves
 * (no copy); else the rest of the input moves down. */
static void
buf_consume(struct buf *b, size_t n)
{
    if (n == 0)
        return;
    if (b->pos == b->parsed) {
        b->pos += (uint32_t)n;
        b->parsed += (uint32_t)n;
    } else {
        memmove(b->data + b->parsed, b->data + b->parsed + n,
                b->last - b->parsed - n);
        b->last -= (uint32_t)n;
    }
}

/* Where more payload of the frame being built in o goes, and how much
 * fits (*cap). NULL when o lacks room (wait for it to drain), or when no
 * buffer could be had (*code = 1011). */
static uint8_t *
ofr_room(struct relay *r, struct dir *d, size_t *cap, int *code)
{
    struct buf *o = d->o;

    *cap = 0;
    if (o == NULL && (o = d->o = bufpool_get(r->bufs)) == NULL) {
        d->why = "out of memory";
        *code = WS_CLOSE_INTERNAL;
        return NULL;
    }
    if (!d->oopen) {
        if (o->pos == o->last)
            o->pos = o->parsed = o->last = 0;
        if (BUF_SIZE - o->last < OFR_HDR + OFR_MIN)
            return NULL;
        d->oopen = 1;
        d->olen = 0;
    }
    size_t at = o->last + OFR_HDR + d->olen;
    if (at >= BUF_SIZE)
        return NULL;
    *cap = BUF_SIZE - at;
    return o->data + at;
}

/* Finish the frame being built: its header (RSV1 on the first frame of a
 * message compressed toward the client; masked with a fresh key toward
 * the backend), then it may be sent. */
static void
ofr_close(struct relay *r, struct dir *d, int fin)
{
    struct buf *o = d->o;
    uint8_t *fr = o->data + o->last;
    uint8_t hdr[WS_MAX_HEADER], key[4];
    const uint8_t *k = NULL;

    if (d->from_client) {
        rnd_take(r->rnd, key, 4);
        k = key;
    }
    size_t hl = ws_write_header(hdr, fin, d->xfirst ? d->xop : WS_OP_CONT,
                                k, d->olen);
    if (!d->from_client && d->xfirst)
        hdr[0] |= 0x40;         /* RSV1: compressed (RFC 7692 §6) */
    if (hl < OFR_HDR)
        memmove(fr + hl, fr + OFR_HDR, d->olen);
    memcpy(fr, hdr, hl);
    if (k != NULL)
        ws_mask(fr + hl, d->olen, k, 0);
    o->last += (uint32_t)(hl + d->olen);
    o->parsed = o->last;
    d->oopen = 0;
    d->xfirst = 0;
    d->xframes++;
    BUF_CHECK(o);
}

/* Leave the frame being built: sent as a non-final fragment when it has
 * payload, forgotten otherwise. */
static void
ofr_pause(struct relay *r, struct dir *d)
{
    if (d->oopen && d->olen > 0)
        ofr_close(r, d, 0);
    d->oopen = 0;
}

/* The close code of a failed compressor call. */
static int
dir_zfail(struct dir *d, int res)
{
    switch (res) {
    case PMD_TOO_BIG:
        d->why = "message too big (inflated)";
        d->zenf = ENF_INFLATE_SIZE + 1;
        return WS_CLOSE_TOO_BIG;
    case PMD_RATIO:
        d->why = "inflate ratio exceeded";
        d->zenf = ENF_INFLATE_RATIO + 1;
        return WS_CLOSE_TOO_BIG;
    case PMD_BAD_DATA:
        d->why = "invalid deflate data";
        d->zenf = ENF_INFLATE_INVALID + 1;
        return WS_CLOSE_INVALID_DATA;
    default:
        d->why = "compression failed";
        return WS_CLOSE_INTERNAL;
    }
}

/* n bytes were inflated from the client at p: the byte rate counts them,
 * and a text message's UTF-8 is checked on them. Returns 0 or the close
 * code. */
static int
dir_zout(struct relay *r, struct dir *d, const uint8_t *p, size_t n)
{
    int code;

    if (!d->from_client)
        return 0;
    if ((code = limit_bytes(r, d, n)) != 0)
        return code;
    if (d->xop == WS_OP_TEXT &&
        !(d->msg.utf8 == UTF8_ACCEPT && utf8_is_ascii(p, n))) {
        d->msg.utf8 = utf8_validate(d->msg.utf8, p, n);
        if (d->msg.utf8 == UTF8_REJECT) {
            d->why = "invalid UTF-8";
            return WS_CLOSE_INVALID_DATA;
        }
    }
    return 0;
}

static void
zcount(struct relay *r, const struct dir *d, size_t in, size_t out)
{
    stat_t *c = r->st->deflate_bytes[d->from_client ? DIR_IN : DIR_OUT];

    /* in: the client's compressed bytes in, plain out; out: the
     * reverse. */
    stats_add(&c[d->from_client ? FORM_COMPRESSED : FORM_UNCOMPRESSED], in);
    stats_add(&c[d->from_client ? FORM_UNCOMPRESSED : FORM_COMPRESSED], out);
}

/*
 * Feed p[0..len) (compressed from the client, or plain from the backend;
 * len 0 drains what the inflater holds) to d's compressor, its output
 * into frames in o. Returns the bytes taken: all of them, or fewer when o
 * must drain first (d->xstall) or with *code set.
 */
static size_t
dir_zfeed(struct relay *r, struct dir *d, const uint8_t *p, size_t len,
          int *code)
{
    size_t done = 0;

    for (;;) {
        size_t cap, used, prod;
        uint8_t *dst = ofr_room(r, d, &cap, code);
        if (dst == NULL) {
            if (*code == 0) {
                ofr_pause(r, d);
                d->xstall = 1;
            }
            return done;
        }
        int res = d->from_client
            ? pmd_inflate(&r->z->in, p + done, len - done, &used, dst, cap,
                          &prod)
            : pmd_deflate(&r->z->out, p + done, len - done, &used, dst, cap,
                          &prod);
        if (res > PMD_NEED_OUTPUT_SPACE) {
            *code = dir_zfail(d, res);
            return done;
        }
        done += used;
        zcount(r, d, used, prod);
        if (prod > 0 && (*code = dir_zout(r, d, dst, prod)) != 0)
            return done;
        d->olen += (uint32_t)prod;
        if (res == PMD_OK) {
            d->xmore = 0;
            return done;
        }
        /* o is full: what it holds may go; more output may wait in the
         * inflater even when all the input was taken. */
        d->xmore = done == len;
        if (prod == 0 && d->olen == 0) {
            ofr_pause(r, d);
            d->xstall = 1;
            return done;
        }
        ofr_pause(r, d);
    }
}

/*
 * The final frame of a transformed message was taken whole: flush the
 * compressor (the inflater appends the 00 00 ff ff tail, the deflater
 * strips it) and write the message's final frame. Returns 0 (done, or
 * waiting for o to drain with d->xend and d->xstall set) or the close
 * code.
 */
static int
dir_zend(struct relay *r, struct dir *d)
{
    int code = 0;

    d->xend = 1;
    for (;;) {
        size_t cap, prod;
        uint8_t *dst = ofr_room(r, d, &cap, &code);
        if (dst == NULL) {
            if (code == 0) {
                ofr_pause(r, d);
                d->xstall = 1;
            }
            return code;
        }
        int res = d->from_client
            ? pmd_inflate_end(&r->z->in, dst, cap, &prod)
            : pmd_deflate_end(&r->z->out, dst, cap, &prod);
        if (res > PMD_NEED_OUTPUT_SPACE)
            return dir_zfail(d, res);
        zcount(r, d, 0, prod);
        if (prod > 0 && (code = dir_zout(r, d, dst, prod)) != 0)
            return code;
        d->olen += (uint32_t)prod;
        if (res == PMD_OK)
            break;
        ofr_pause(r, d);
        if (prod == 0) {
            d->xstall = 1;
            return 0;
        }
    }
    /* RFC 6455 §8.1 (in: on the inflated text): refused before its
     * final frame goes out. */
    if (d->xop == WS_OP_TEXT && d->msg.utf8 != UTF8_ACCEPT) {
        d->why = "invalid UTF-8";
        return WS_CLOSE_INVALID_DATA;
    }
    ofr_close(r, d, 1);
    d->xend = d->xform = 0;
    (void)ws_msg_end(&d->msg);  /* UTF-8 checked above or on the input */
    msgs_relayed(r, d, 1);
    return 0;
}

/* Payload p[0..take) of a transformed frame: unmasked (in) or validated
 * (out), fed to the compressor and consumed from b. Returns the bytes
 * consumed, or -1 with *code set. */
static long
dir_xpayload(struct relay *r, struct dir *d, uint8_t *p, size_t take,
             int *code)
{
    size_t feed = take;
    uint32_t st0 = d->msg.utf8;

    if (!d->from_client && d->xop == WS_OP_TEXT) {
        /* The backend's text is validated before it is compressed (an
         * unfinished code point at the end of the final frame waits). */
        long ok = dir_text(d, p, take);
        if (ok < 0) {
            d->why = "invalid UTF-8";
            *code = WS_CLOSE_INVALID_DATA;
            return -1;
        }
        feed = (size_t)ok;
    }
    if (d->masked)
        ws_mask(p, feed, d->ckey, d->frame_off);
    size_t used = dir_zfeed(r, d, p, feed, code);
    if (*code != 0)
        return -1;
    if (used < feed) {
        /* Not taken yet: back to the sender's mask and UTF-8 state, to
         * be processed again when o has drained. */
        if (d->masked)
            ws_mask(p + used, feed - used, d->ckey, d->frame_off + used);
        if (!d->from_client && d->xop == WS_OP_TEXT)
            d->msg.utf8 = utf8_validate(st0, p, used);
    }
    buf_consume(d->b, used);
    d->remaining -= used;
    d->frame_off += used;
    return (long)used;
}

/* A transformed message goes on after o drained: what the compressor
 * still holds first. Returns 0 or the close code. */
static int
dir_zresume(struct relay *r, struct dir *d)
{
    int code = 0;

    d->xstall = 0;
    if (d->xend)
        return dir_zend(r, d);
    if (d->xmore) {
        (void)dir_zfeed(r, d, (const uint8_t *)"", 0, &code);
        if (code == 0)
            ofr_pause(r, d);
    }
    return code;
}

/* Validate and transform new bytes [parsed, last) of d. Returns 0, or the
 * close code the sender has earned. */
static int
dir_parse(struct relay *r, struct dir *d)
{
    struct buf *b = d->b;

    while (b->parsed < b->last) {
        uint8_t *p = b->data + b->parsed;
        size_t avail = b->last - b->parsed;

        /* Frames in o go first: until they are written, only the message
         * being transformed goes on (into o). */
        if (d->o != NULL && (d->xstall || d->o->pos < d->o->parsed) &&
            !(d->in_frame && d->xform)) {
            d->xstall = 1;
            return 0;
        }
        if (d->xstall)
            return 0;
        if (!d->in_frame && avail >= 2) {
            uint32_t at = b->parsed;
            int code = dir_fast(r, d);
            if (code)
                return code;
            if (b->parsed != at)
                continue;
        }
        if (!d->in_frame) {
            struct ws_header h;
            int n = ws_parse_header(p, avail, &h);
            if (n == WS_INCOMPLETE)
                return 0;
            if (n == WS_ERROR) {
                d->why = "invalid frame length";
                return WS_CLOSE_PROTOCOL;
            }
            int code = ws_check_header(&d->msg, &h, d->from_client,
                                       d->max_payload);
            if (code) {
                d->why = code == WS_CLOSE_TOO_BIG ? "message too big"
                                                  : "protocol error";
                return code;
            }
            if (h.opcode & 0x8) {
                /* Control frames are handled whole (<= 139 bytes): the
                 * close payload must be checked before it is relayed. */
                if (avail < (size_t)n + h.len)
                    return 0;
                code = dir_control(r, d, p, n, &h, avail);
                if (code == 1)
                    return 0;
                if (code)
                    return code;
                continue;
            }
            if (d->from_client && (code = limit_data(r, d, &h)))
                return code;
            if (h.opcode != WS_OP_CONT) {
                /* in: the client compressed it (RSV1, allowed by
                 * ws_check_header only when agreed); out: wsguard
                 * compresses what is large enough, and a fragmented
                 * message whose size is not known yet. */
                d->xform = d->from_client
                    ? d->msg.compressed
                    : d->zmin != UINT64_MAX && (h.len >= d->zmin || !h.fin);
                d->xop = h.opcode;
                d->xfirst = 1;
            }
            if (d->xform) {
                /* Its header is consumed: wsguard writes its own. */
                if (h.masked)
                    memcpy(d->ckey, h.key, 4);
                d->masked = h.masked;
                d->fin = h.fin;
                d->remaining = h.len;
                d->frame_off = 0;
                d->in_frame = 1;
                buf_consume(b, (size_t)n);
                goto frame_end;
            }
            if (h.fin && h.len == 0 && d->msg.opcode == WS_OP_TEXT &&
                d->msg.utf8 != UTF8_ACCEPT) {
                /* An empty final fragment ends a text message inside a
                 * code point: refused before its header goes out. */
                d->why = "invalid UTF-8";
                return WS_CLOSE_INVALID_DATA;
            }
            if (h.masked) {
                memcpy(d->ckey, h.key, 4);
                rnd_take(r->rnd, d->okey, 4);
                memcpy(p + n - 4, d->okey, 4);
            }
            d->masked = h.masked;
            d->fin = h.fin;
            d->remaining = h.len;
            d->frame_off = 0;
            d->in_frame = 1;
            b->parsed += (uint32_t)n;
        } else if (d->xform) {
            size_t take = avail < d->remaining ? avail : (size_t)d->remaining;
            int code = 0;
            long used = dir_xpayload(r, d, p, take, &code);
            if (used < 0)
                return code;
            /* The frame being built stays open only into the message's
             * end, which follows at once: b holds no more of this frame
             * now, and o may go back to the pool before it comes. */
            if (d->remaining > 0)
                ofr_pause(r, d);
            if ((size_t)used < take)
                return 0;       /* o must drain, or a code point waits */
        } else {
            size_t take = avail < d->remaining ? avail : (size_t)d->remaining;
            if (d->msg.opcode == WS_OP_TEXT) {
                long ok = dir_text(d, p, take);
                if (ok < 0) {
                    d->why = "invalid UTF-8";
                    return WS_CLOSE_INVALID_DATA;
                }
                if ((size_t)ok < take) {
                    b->parsed += (uint32_t)ok;
                    d->remaining -= (uint64_t)ok;
                    d->frame_off += (uint64_t)ok;
                    return 0;
                }
            } else if (d->masked) {
                ws_remask(p, take, d->ckey, d->okey, d->frame_off);
            }
            b->parsed += (uint32_t)take;
            d->remaining -= take;
            d->frame_off += take;
        }
frame_end:
        if (d->in_frame && d->remaining == 0) {
            d->in_frame = 0;
            if (d->xform) {
                int code = 0;
                if (d->fin)
                    code = dir_zend(r, d);
                else
                    ofr_pause(r, d);
                if (code)
                    return code;
                continue;
            }
            if (d->fin) {
                int code = ws_msg_end(&d->msg);
                if (code) {
                    d->why = "invalid UTF-8";
                    return code;
                }
                msgs_relayed(r, d, 1);
            }
        }
    }
    return 0;
}

/* Discard mode: walk the sender's frames without forwarding any, to see
 * its close frame; the bytes are dropped from the buffer. */
static void
dir_skip(struct dir *d)
{
    struct buf *b = d->b;
    uint32_t q = b->parsed;

    while (q < b->last) {
        if (d->remaining > 0) {
            uint32_t n = b->last - q;
            if (n > d->remaining)
                n = (uint32_t)d->remaining;
            q += n;
            d->remaining -= n;
            continue;
        }
        struct ws_header h;
        int n = ws_parse_header(b->data + q, b->last - q, &h);
        if (n == WS_INCOMPLETE)
            break;
        if (n == WS_ERROR) {
            /* Garbage: nothing sensible can follow, stop listening. */
            d->src->kill = 1;
            q = b->last;
            break;
        }
        /* RFC 6455 §5.5.1: frames after a close are ignored. */
        if (h.opcode == WS_OP_CLOSE)
            d->src->got_close = 1;
        q += (uint32_t)n;
        d->remaining = h.len;
    }
    d->in_frame = d->remaining > 0;
    memmove(b->data + b->parsed, b->data + q, b->last - q);
    b->last = b->parsed + (b->last - q);
}

static void
dir_process(struct relay *r, struct dir *d)
{
    if (d->mode == MODE_DISCARD) {
        if (d->b != NULL) {
            dir_skip(d);
            BUF_CHECK(d->b);
        }
        return;
    }
    uint32_t before = d->b != NULL ? d->b->parsed : 0;
    uint64_t xbefore = d->xframes;
    int code = 0;
    if (d->xstall) {
        /* A transformed message waits for o to drain. */
        if (d->o != NULL && d->o->pos < d->o->parsed)
            return;
        code = dir_zresume(r, d);
    }
    if (code == 0 && !d->xstall && d->b != NULL)
        code = dir_parse(r, d);
    BUF_CHECK(d->b);
    /* Activity for idle_timeout is what gets relayed: the pong to
     * wsguard's own ping is consumed without advancing parsed, so
     * heartbeats alone never keep an idle session open. */
    if ((d->b != NULL && d->b->parsed != before) || d->xframes != xbefore)
        r->last_activity = r->now;
    if (code == 0)
        return;
    /* A frame being built in o is dropped (the frames before it are
     * complete and validated: they still go). */
    d->oopen = 0;
    if (code == WS_CLOSE_INTERNAL) {
        /* wsguard's own failure (no memory for zlib or a buffer), not
         * the sender's. */
        fail(r, code, code, "out of memory", "wsguard");
        if (d->b != NULL && d->mode == MODE_DISCARD)
            dir_skip(d);
        return;
    }
    /* A peer that broke the protocol is not waited for: it may be inside
     * a frame it will never finish, or its broken frame was its close.
     * Once our close frame is written, its connection is shut. */
    d->src->got_close = 1;
    d->src->broke = 1;
    /* The backend is told the same code as the client, so the
     * application sees why the session ended (the reason text says whose
     * fault it was). */
    const char *why = d->why ? d->why : "protocol error";
    enforced(r, d->zenf ? (enum enforce)(d->zenf - 1)
                : code == WS_CLOSE_TOO_BIG ? ENF_PAYLOAD
                : code == WS_CLOSE_POLICY ? (enum enforce)d->enf
                                          : ENF_PROTOCOL);
    if (d->from_client)
        fail_of(r, code, code, REASON_OF_CLIENT, why, "wsguard");
    else
        fail_of(r, WS_CLOSE_BAD_GATEWAY, code, REASON_OF_BACKEND, why,
                "wsguard");
    /* What is left unparsed is dropped now, so a full buffer never stops
     * reading (the peer's close reply must still be seen). */
    if (d->b != NULL && d->mode == MODE_DISCARD)
        dir_skip(d);
}

/* ------------------------------------------------------------------ */
/* The engine over buffers                                             */

uint8_t *
relay_rx_space(struct relay *r, struct dir *d, size_t *room)
{
    *room = 0;
    if (d->nomem)
        return NULL;
    if (d->b == NULL && (d->b = bufpool_get(r->bufs)) == NULL) {
        /* Retrying on every readiness event would spin on a readable
         * socket; with no buffer its close reply cannot be read anyway. */
        d->nomem = 1;
        fail(r, WS_CLOSE_INTERNAL, WS_CLOSE_INTERNAL, "out of memory",
             "wsguard");
        return NULL;
    }
    struct buf *b = d->b;
    if (b->last == BUF_SIZE)
        buf_compact(b);
    *room = BUF_SIZE - b->last;
    return *room > 0 ? b->data + b->last : NULL;
}

/* n bytes landed at last: count them, validate them. */
static void
dir_rx_done(struct relay *r, struct dir *d, size_t n)
{
    d->b->last += (uint32_t)n;
    if (d->mode == MODE_RELAY)
        d->bytes += (uint64_t)n;
    stats_add(&r->st->bytes[d->from_client ? DIR_IN : DIR_OUT], n);
    if (d->from_client) {
        /* Any byte answers an outstanding ping: the next deadline is the
         * next ping, which may come before the pong deadline the timer
         * is armed for. */
        if (r->ping_sent > r->cli_rx)
            r->ev |= RELAY_REARM;
        r->cli_rx = r->now;
    }
    /* The TLS record buffers are kept while traffic flows and given
     * back once the session has been quiet for RELAY_QUIET_MS. */
    if (r->held == 0)
        r->ev |= RELAY_REARM;
    r->held = r->now;
    dir_process(r, d);
}

unsigned
relay_rx_done(struct relay *r, struct dir *d, size_t n, double now)
{
    r->now = now;
    dir_rx_done(r, d, n);
    OFR_CHECK(d);
    return take_events(r);
}

/* The output d must not send any more (its destination is gone). */
static void
dir_drop_output(struct relay *r, struct dir *d)
{
    if (d->b != NULL)
        d->b->pos = d->b->parsed;
    if (d->o != NULL)
        d->o->pos = d->o->parsed;
    ctl_reset(r, d);
}

/* Everything for d's destination has been written: the buffer goes back
 * to the pool, or keeps only the partial frame at its end. */
static void
dir_tx_idle(struct relay *r, struct dir *d)
{
    struct buf *b = d->b;

    if (d->o != NULL && d->o->pos == d->o->last && !d->xstall) {
        bufpool_put(r->bufs, d->o);
        d->o = NULL;
    }
    if (b == NULL)
        return;
    if (b->parsed == b->last) {
        d->b = NULL;
        bufpool_put(r->bufs, b);
    } else {
        buf_compact(b);
    }
}

const uint8_t *
relay_tx_next(struct relay *r, struct dir *d, size_t *len)
{
    struct buf *b;

    OFR_CHECK(d);
    if (d->ctl_busy)
        return ctl_next(r, d, len);
again:
    b = d->b;
    if (b != NULL && b->pos < b->parsed) {
        *len = b->parsed - b->pos;
        return b->data + b->pos;
    }
    /* (A stalled message always has o: plain sessions test one pointer
     * here.) */
    if (d->o != NULL) {
        if (d->o->pos < d->o->parsed) {
            *len = d->o->parsed - d->o->pos;
            return d->o->data + d->o->pos;
        }
        if (d->xstall && d->mode == MODE_RELAY) {
            /* o has drained: the transformed message goes on (and
             * whatever waits behind it in b). */
            uint64_t x = d->xframes;
            uint32_t p = b != NULL ? b->parsed : 0;
            dir_process(r, d);
            if (d->xframes != x || (d->b != NULL && d->b->parsed != p) ||
                (d->b != NULL && d->b->pos < d->b->parsed))
                goto again;
        }
    }
    if (d->close_fwd && d->mode == MODE_DISCARD) {
        /* The relayed close frame was the last forwarded byte. */
        d->close_fwd = 0;
        d->dst->sent_close = 1;
    }
    if (d->cut) {
        d->dst->kill = 1;
        ctl_reset(r, d);
    }
    /* In relay mode a frame of the peer's may be half forwarded: ours
     * wait for its end. In discard mode the forwarded stream ended on a
     * frame boundary (or is cut). */
    if (d->ctl_len && (d->mode == MODE_DISCARD || !d->in_frame ||
                       d->xform)) {
        d->ctl_busy = 1;        /* from here it must be finished first */
        return ctl_next(r, d, len);
    }
    dir_tx_idle(r, d);
    *len = 0;
    return NULL;
}

/* n bytes of what relay_tx_next returned were written. */
static void
dir_tx_done(struct relay *r, struct dir *d, size_t n)
{
    if (!d->ctl_busy) {
        /* b's validated bytes go before o's (relay_tx_next). */
        struct buf *b = d->b != NULL && d->b->pos < d->b->parsed ? d->b
                                                                 : d->o;
        b->pos += (uint32_t)n;
        BUF_CHECK(b);
        return;
    }
    d->ctl_off += (uint16_t)n;
    if (d->ctl_off < d->ctl_len)
        return;
    if (d->ctl_close)
        d->dst->sent_close = 1;
    if (d->ctl_ping) {
        r->ping_sent = r->now;
        r->ping_queued = 0;
        r->ev |= RELAY_REARM;           /* the pong deadline starts */
    }
    ctl_reset(r, d);
}

unsigned
relay_tx_done(struct relay *r, struct dir *d, size_t n, double now)
{
    r->now = now;
    dir_tx_done(r, d, n);
    return take_events(r);
}

/* ------------------------------------------------------------------ */
/* The engine over the transport                                       */

/* Write what d holds for its destination: validated bytes first, then
 * wsguard's own frames, but only where a frame may start. */
static void
dir_flush(struct relay *r, struct dir *d)
{
    struct peer *dst = d->dst;
    const uint8_t *p;
    size_t len, n;

    if (dst->io->fd == -1 || dst->io->eof)
        dir_drop_output(r, d);
    while ((p = relay_tx_next(r, d, &len)) != NULL) {
        enum io_result res = side_write(dst->io, p, len, &n);
        if (res != IO_OK) {
            /* Blocked: write_timeout counts from here (any progress
             * resets it). Broken: relay_settle() notices eof. */
            if (res == IO_AGAIN && dst->wblock_since == 0) {
                dst->wblock_since = r->now;
                if (r->cfg->write_timeout_ms && !r->closing)
                    r->ev |= RELAY_REARM;
            }
            return;
        }
        dst->wblock_since = 0;
        dir_tx_done(r, d, n);
    }
    dst->io->wblocked = 0;
}

/* Read from d's source while there is room, validate, forward. */
static void
dir_pump(struct relay *r, struct dir *d)
{
    struct side *src = d->src->io;
    int i;

    for (i = 0; i < RELAY_READS_PER_EVENT && src->fd != -1 && !src->eof;
         i++) {
        size_t room, n;
        uint8_t *p = relay_rx_space(r, d, &room);
        if (p == NULL) {
            if (room == 0 && d->b != NULL)
                src->full_stop = 1;     /* full: wait for the destination */
            break;
        }
        if (side_read(src, p, room, &n) != IO_OK) {
            if (d->b->last == 0) {
                bufpool_put(r->bufs, d->b);
                d->b = NULL;
            }
            break;
        }
        dir_rx_done(r, d, n);
        dir_flush(r, d);
        /* A short read drained the socket (level-triggered epoll tells
         * us when more comes); with TLS only if OpenSSL holds nothing
         * either. This saves a read(2) that would return EAGAIN. */
        if (n < room && !side_pending(src))
            break;
    }
    if (i == RELAY_READS_PER_EVENT)
        side_refeed(src);
}

unsigned
relay_start(struct relay *r, double now, const uint8_t *up, size_t up_n,
            const uint8_t *down, size_t down_n)
{
    const struct policy *p = r->pol;
    size_t room;
    uint8_t *q;

    r->now = now;
    r->last_activity = r->cli_rx = now;
    /* The handshake freed its record buffers after every record; from
     * here they are kept while traffic flows (see RELAY_QUIET_MS). */
    side_settle(r->cli.io);
    side_release_buffers(r->cli.io);
    r->held = 0;
    bucket_init(&r->b_msgs, p->message_burst ? (double)p->message_burst
                                             : (double)p->messages_per_second,
                now);
    bucket_init(&r->b_bytes, (double)p->bytes_per_second, now);
    bucket_init(&r->b_ctl, (double)p->control_frames_per_second, now);
    r->ev |= RELAY_REARM;
    /* The backend's first frames may have come with its 101. */
    if (down_n > 0) {
        if ((q = relay_rx_space(r, &r->down, &room)) == NULL ||
            down_n > room) {
            fail(r, WS_CLOSE_BAD_GATEWAY, WS_CLOSE_GOING_AWAY,
                 "too much data after the backend's 101", "wsguard");
        } else {
            memcpy(q, down, down_n);
            dir_rx_done(r, &r->down, down_n);
            dir_flush(r, &r->down);
        }
    }
    /* The client may have sent frames right behind its request. */
    if (up_n > 0) {
        if (up_n > BUF_SIZE ||
            (q = relay_rx_space(r, &r->up, &room)) == NULL) {
            fail(r, WS_CLOSE_PROTOCOL, WS_CLOSE_GOING_AWAY,
                 "too much data before the upgrade", "wsguard");
        } else {
            memcpy(q, up, up_n);
            dir_rx_done(r, &r->up, up_n);
            dir_flush(r, &r->up);
        }
    }
    return flushed_events(r);
}

unsigned
relay_io(struct relay *r, struct side *s, int revents, double now)
{
    struct dir *in = dir_of(r, s);
    struct dir *out = dir_to(r, s);

    r->now = now;
    if ((revents & EV_WRITE) || ((revents & EV_READ) && s->wr_wants_rd))
        dir_flush(r, out);
    if ((revents & EV_READ) || ((revents & EV_WRITE) && s->rd_wants_wr))
        dir_pump(r, in);
    return flushed_events(r);
}

/* Act on the deadline that is due at r->now. */
static void
tick(struct relay *r)
{
    double t[DL_COUNT];

    r->ev |= RELAY_REARM;
    if (r->closing) {
        if (r->be_fin_by > 0 && r->now + 0.0005 >= r->be_fin_by) {
            /* The backend did not close first: shut our end and read
             * until it closes, bounded by close_timeout. */
            r->be_fin_by = 0;
            side_shutdown(r->be.io);
        }
        if (r->now + 0.0005 >= close_deadline(r)) {
            if (r->reason == NULL)
                r->reason = "close timeout";
            side_close(r->cli.io);
            side_close(r->be.io);
            r->ev |= RELAY_DONE;
        }
        return;
    }
    relay_deadlines(r, t);
    switch (deadline_due(t, r->now)) {
    case DL_LIFETIME:
        enforced(r, ENF_LIFETIME);
        fail(r, WS_CLOSE_GOING_AWAY, WS_CLOSE_GOING_AWAY, "max lifetime",
             "wsguard");
        break;
    case DL_EXPIRY:
        enforced(r, ENF_EXPIRY);
        fail(r, WS_CLOSE_POLICY, WS_CLOSE_POLICY, "token expired",
             "wsguard");
        break;
    case DL_IDLE:
        enforced(r, ENF_IDLE);
        fail(r, WS_CLOSE_GOING_AWAY, WS_CLOSE_GOING_AWAY, "idle timeout",
             "wsguard");
        break;
    case DL_STALL_CLI:
        /* It does not read: a close frame would not reach it either. */
        enforced(r, ENF_WRITE_STALL);
        relay_drop(r, &r->cli, WS_CLOSE_GOING_AWAY, "client not reading");
        break;
    case DL_STALL_BE:
        enforced(r, ENF_WRITE_STALL);
        relay_drop(r, &r->be, WS_CLOSE_BAD_GATEWAY, "backend not reading");
        break;
    case DL_PONG:
        enforced(r, ENF_PONG);
        relay_drop(r, &r->cli, WS_CLOSE_GOING_AWAY, "pong timeout");
        break;
    case DL_PING:
        relay_ping(r);
        break;
    case DL_QUIET:
        side_release_buffers(r->cli.io);
        side_release_buffers(r->be.io);
        r->held = 0;
        break;
    default:
        break;
    }
}

unsigned
relay_tick(struct relay *r, double now)
{
    r->now = now;
    tick(r);
    return take_events(r);
}

unsigned
relay_timeout(struct relay *r, double now)
{
    r->now = now;
    tick(r);
    return flushed_events(r);
}

/* The other side of a leg that vanished without the close handshake is
 * told with a close frame of its own. */
static void
peer_vanished(struct relay *r, struct peer *gone)
{
    if (gone == &r->be) {
        record_end(r, WS_CLOSE_BAD_GATEWAY, "backend",
                   "backend connection lost");
        int code = r->cli.got_close ? WS_CLOSE_NORMAL : WS_CLOSE_BAD_GATEWAY;
        dir_discard(&r->up);
        /* If it died inside a frame it was sending, that frame can not be
         * finished toward the client: cut, no close frame. */
        dir_discard(&r->down);
        dir_queue_close(r, &r->down, code, r->reason_of, r->reason);
        dir_flush(r, &r->down);
    } else {
        record_end(r, WS_CLOSE_ABNORMAL, "client", "client connection lost");
        dir_discard(&r->down);
        dir_discard(&r->up);
        dir_queue_close(r, &r->up, WS_CLOSE_GOING_AWAY, r->reason_of,
                        r->reason);
        dir_flush(r, &r->up);
    }
    start_closing(r);
}

unsigned
relay_settle(struct relay *r, double now)
{
    struct peer *peers[2] = {&r->cli, &r->be};

    r->now = now;
    for (int i = 0; i < 2; i++) {
        struct peer *p = peers[i];
        struct side *s = p->io;
        struct dir *out = dir_to(r, s);

        if (s->fd == -1)
            continue;
        if (p->sent_close && p->got_close && !s->shut && !s->eof &&
            !p->kill) {
            /* The close handshake with it is complete. RFC 6455 §7.1.1:
             * the server closes the TCP connection first, so the client
             * leg is closed at once (browsers wait for it). On the
             * backend leg wsguard is the client: the backend is given a
             * tenth of close_timeout to close first (it then holds the
             * TIME_WAIT state, not wsguard, whose connections to one
             * backend address would otherwise hold an ephemeral port
             * each for a minute); after that, tick() shuts our end. A
             * peer that broke the protocol may still be sending: closing
             * with unread input would reset the connection and could
             * destroy the close frame before it reads it, so our end of
             * the stream is shut at once and it gets until close_timeout
             * to close. */
            if (p == &r->cli && !p->broke) {
                side_close(s);
                dir_flush(r, out);
            } else if (p->broke) {
                side_shutdown(s);
            } else if (r->be_fin_by == 0) {
                r->be_fin_by = r->now + backend_fin_grace(r);
                r->ev |= RELAY_REARM;
            }
            continue;
        }
        int done = s->eof || (p->kill && !relay_dir_pending(out));
        if (!done)
            continue;
        int abnormal = !(p->sent_close && p->got_close);
        side_close(s);
        if (p == &r->be)
            r->be_fin_by = 0;   /* it closed: nothing left to wait for */
        /* What was waiting for it is dropped, which makes room to keep
         * reading the other side (and see its close reply). */
        dir_flush(r, out);
        if (!abnormal)
            continue;
        peer_vanished(r, p);
        i = -1;                 /* re-check both sides */
    }
    if (r->cli.io->fd == -1 && r->be.io->fd == -1)
        r->ev |= RELAY_DONE;
    return flushed_events(r);
}

int
relay_dir_pending(const struct dir *d)
{
    return (d->b && d->b->pos < d->b->parsed) ||
           (d->o && d->o->pos < d->o->parsed) || d->ctl_len;
}

/* Can d take more bytes from its source right now? */
static int
dir_room(const struct dir *d)
{
    const struct buf *b = d->b;
    if (d->nomem)
        return 0;
    /* Full: room only by compaction (a transformed message waiting for
     * o to drain may fill b with input that is not parsed yet). */
    return b == NULL || b->last < BUF_SIZE ||
           (b->pos == b->parsed && b->parsed > 0);
}

void
relay_watch(struct relay *r)
{
    const struct peer *peers[2] = {&r->cli, &r->be};

    for (int i = 0; i < 2; i++) {
        struct side *s = peers[i]->io;
        const struct dir *in = dir_of(r, s);
        const struct dir *out = dir_to(r, s);
        int rd = (dir_room(in) && !s->eof) || s->wr_wants_rd;
        int wr = (relay_dir_pending(out) && s->wblocked) || s->rd_wants_wr;
        side_watch(s, rd, wr);
    }
}

void
relay_release(struct relay *r)
{
    if (r->up.b != NULL)
        bufpool_put(r->bufs, r->up.b);
    if (r->down.b != NULL)
        bufpool_put(r->bufs, r->down.b);
    r->up.b = r->down.b = NULL;
    if (r->up.o != NULL)
        bufpool_put(r->bufs, r->up.o);
    if (r->down.o != NULL)
        bufpool_put(r->bufs, r->down.o);
    r->up.o = r->down.o = NULL;
    if (r->z != NULL) {
        pmd_inflater_free(&r->z->in);
        pmd_deflater_free(&r->z->out);
        free(r->z);
        r->z = NULL;
    }
}
