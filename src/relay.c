/*
 * relay.c - the frame relay of an upgraded session: two directions, each
 * with at most one 16 KiB buffer (see buf.h and docs/architecture.md),
 * the RFC 6455 checks and [limits] on every frame before any of it is
 * forwarded, wsguard's own frames (heartbeat ping, close) through the
 * ctl slot, the close handshakes, and the deadlines of a relaying
 * session. The state machine that leads here, and all teardown, is in
 * conn.c.
 */
#include <errno.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn_int.h"
#include "log.h"
#include "utf8.h"

static void enforced(struct conn *c, enum enforce e);
static void relay_drop(struct conn *c, struct side *s, int code, const char *reason);
static void dir_init(struct conn *c, struct dir *d, struct side *src, struct side *dst,
         int from_client, uint64_t max_payload);
static void conn_closing(struct conn *c);
static void dir_queue_close(struct conn *c, struct dir *d, int code, const char *reason);
static void relay_ping(struct conn *c);
static void dir_discard(struct dir *d);
static size_t utf8_tail(const uint8_t *p, size_t n);
static int limit_control(struct conn *c, struct dir *d, const struct ws_header *h);
static int limit_data(struct conn *c, struct dir *d, const struct ws_header *h);
static int dir_parse(struct conn *c, struct dir *d);
static void dir_skip(struct conn *c, struct dir *d);
static size_t dir_write(struct conn *c, struct side *dst, const uint8_t *p, size_t n);
static int ctl_flush(struct conn *c, struct dir *d);
static void dir_flush(struct conn *c, struct dir *d);
static void dir_process(struct conn *c, struct dir *d);
static void dir_pump(struct conn *c, struct dir *d);
static void side_linger(struct conn *c, struct side *s);

/* The session's deadlines (deadline.h) from its time stamps. */
void
relay_deadlines(const struct conn *c, double t[DL_COUNT])
{
    const struct config *cfg = cfg_of(c);
    struct session_times st = {
        .started = c->started,
        .last_activity = c->last_activity,
        .cli_rx = c->cli_rx,
        .ping_sent = c->ping_sent,
        .cli_wblock = c->cli.wblock_since,
        .be_wblock = c->be.wblock_since,
        .expiry = c->tok_exp && c->pol->jwt_close_on_expiry
                      ? (double)(c->tok_exp + c->tok_leeway) : 0,
    };
    struct session_timeouts to = {
        .max_lifetime_ms = cfg->max_lifetime_ms,
        .idle_timeout_ms = cfg->idle_timeout_ms,
        .write_timeout_ms = cfg->write_timeout_ms,
        .ping_interval_ms = cfg->ping_interval_ms,
        .pong_timeout_ms = cfg->pong_timeout_ms,
    };
    if (c->ping_queued)
        to.ping_interval_ms = 0;        /* no ping, no pong deadline */
    deadline_all(&st, &to, t);
}

static void
enforced(struct conn *c, enum enforce e)
{
    atomic_fetch_add(&c->w->st.enforced[e], 1);
}

/* A side that is gone for good (stalled, silent): its socket is closed by
 * conn_settle(), which tells the other side with a close frame. */
static void
relay_drop(struct conn *c, struct side *s, int code, const char *reason)
{
    if (c->close_code == 0) {
        c->close_code = code;
        c->closed_by = "wsguard";
        c->reason = reason;
    }
    log_debug("session %s: dropping the %s: %s", c->client_ip,
              s == &c->cli ? "client" : "backend", reason);
    s->eof = 1;
}

void
relay_timeout(struct conn *c, ev_tstamp now)
{
    double t[DL_COUNT];
    relay_deadlines(c, t);
    switch (deadline_due(t, now)) {
    case DL_LIFETIME:
        enforced(c, ENF_LIFETIME);
        relay_fail(c, WS_CLOSE_GOING_AWAY, WS_CLOSE_GOING_AWAY,
                   "max lifetime", "wsguard");
        break;
    case DL_EXPIRY:
        enforced(c, ENF_EXPIRY);
        relay_fail(c, WS_CLOSE_POLICY, WS_CLOSE_POLICY, "token expired",
                   "wsguard");
        break;
    case DL_IDLE:
        enforced(c, ENF_IDLE);
        relay_fail(c, WS_CLOSE_GOING_AWAY, WS_CLOSE_GOING_AWAY,
                   "idle timeout", "wsguard");
        break;
    case DL_STALL_CLI:
        /* It does not read: a close frame would not reach it either. */
        enforced(c, ENF_WRITE_STALL);
        relay_drop(c, &c->cli, WS_CLOSE_GOING_AWAY, "client not reading");
        break;
    case DL_STALL_BE:
        enforced(c, ENF_WRITE_STALL);
        relay_drop(c, &c->be, WS_CLOSE_BAD_GATEWAY, "backend not reading");
        break;
    case DL_PONG:
        enforced(c, ENF_PONG);
        relay_drop(c, &c->cli, WS_CLOSE_GOING_AWAY, "pong timeout");
        break;
    case DL_PING:
        relay_ping(c);
        break;
    default:
        break;
    }
    conn_timer_arm(c);
}

static void
dir_init(struct conn *c, struct dir *d, struct side *src, struct side *dst,
         int from_client, uint64_t max_payload)
{
    d->src = src;
    d->dst = dst;
    d->from_client = (uint8_t)from_client;
    d->max_payload = max_payload;
}

static void
conn_closing(struct conn *c)
{
    if (c->state == CS_CLOSING)
        return;
    c->closing_since = ev_now(c->w->loop);
    conn_set_state(c, CS_CLOSING);
}

/* Put a close frame for d's destination in d's ctl slot. Toward a server
 * (the backend) frames are masked with a fresh key (RFC 6455 §5.3). */
static void
dir_queue_close(struct conn *c, struct dir *d, int code, const char *reason)
{
    /* One close per side: not after the peer's close went (or is going)
     * that way, not twice from wsguard. */
    if (d->dst->fd == -1 || d->dst->sent_close || d->ctl_close ||
        d->relayed_close)
        return;
    uint8_t key[4];
    const uint8_t *k = NULL;
    if (d->from_client) {       /* toward the backend: masked */
        worker_random(c->w, key, 4);
        k = key;
    }
    d->ctl_len += (uint16_t)ws_build_close(d->ctl + d->ctl_len,
                                           (unsigned)code, reason, k);
    d->ctl_close = 1;
}

/* wsguard's own ping to a silent client (server to client: unmasked).
 * Its pong is recognised by the random payload and not relayed. */
static void
relay_ping(struct conn *c)
{
    struct dir *d = &c->down;
    if (d->ctl_len || d->relayed_close || c->cli.fd == -1)
        return;
    worker_random(c->w, c->ping_data, sizeof c->ping_data);
    d->ctl_len = (uint16_t)ws_write_header(d->ctl, 1, WS_OP_PING, NULL,
                                           sizeof c->ping_data);
    memcpy(d->ctl + d->ctl_len, c->ping_data, sizeof c->ping_data);
    d->ctl_len += sizeof c->ping_data;
    d->ctl_ping = 1;
    /* Until it is written (it may wait for the end of a frame the
     * backend is sending), neither another ping nor the pong timeout is
     * due: see relay_deadlines. */
    c->ping_queued = 1;
    dir_flush(c, d);
}

/* Stop forwarding in d: what was validated still goes out, the rest of
 * the sender's stream is parsed only to notice its close frame. */
static void
dir_discard(struct dir *d)
{
    if (d->mode == DIR_DISCARD)
        return;
    d->mode = DIR_DISCARD;
    /* The forwarded stream is left inside a frame: no frame of ours can
     * follow it, the destination's connection is cut after the flush. */
    if (d->in_frame)
        d->cut = 1;
}

void
relay_fail(struct conn *c, int cli_code, int be_code, const char *reason,
           const char *by)
{
    if (c->failing)
        return;
    c->failing = 1;
    if (c->close_code == 0) {
        c->close_code = cli_code;
        c->closed_by = by;
        c->reason = reason;
    }
    log_debug("session %s: closing: %d %s", c->client_ip, cli_code, reason);
    dir_discard(&c->up);
    dir_discard(&c->down);
    dir_queue_close(c, &c->down, cli_code, reason);  /* to the client */
    dir_queue_close(c, &c->up, be_code, reason);     /* to the backend */
    conn_closing(c);
    dir_flush(c, &c->down);
    dir_flush(c, &c->up);
}

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
limit_control(struct conn *c, struct dir *d, const struct ws_header *h)
{
    uint64_t n = c->pol->control_frames_per_second;
    if (n == 0 || h->opcode == WS_OP_CLOSE ||
        bucket_take(&c->b_ctl, (double)n, (double)n, 1,
                    ev_now(c->w->loop), 0))
        return 0;
    d->why = "control frame rate exceeded";
    d->enf = ENF_CONTROL;
    return WS_CLOSE_POLICY;
}

/* [limits] on a client data frame header, before any of its payload is
 * forwarded: the message rate is charged on a message's first frame, the
 * byte rate on every frame. */
static int
limit_data(struct conn *c, struct dir *d, const struct ws_header *h)
{
    const struct policy *p = c->pol;
    ev_tstamp now = ev_now(c->w->loop);

    if (p->messages_per_second && h->opcode != WS_OP_CONT) {
        double rate = (double)p->messages_per_second;
        double burst = p->message_burst ? (double)p->message_burst : rate;
        if (!bucket_take(&c->b_msgs, rate, burst, 1, now, 0)) {
            d->why = "message rate exceeded";
            d->enf = ENF_RATE;
            return WS_CLOSE_POLICY;
        }
    }
    if (p->bytes_per_second) {
        double rate = (double)p->bytes_per_second;
        if (!bucket_take(&c->b_bytes, rate, rate, (double)h->len, now, 1)) {
            d->why = "byte rate exceeded";
            d->enf = ENF_RATE;
            return WS_CLOSE_POLICY;
        }
    }
    return 0;
}

/* Validate and transform new bytes [parsed, last) of d. Returns 0, or the
 * close code the sender has earned. */
static int
dir_parse(struct conn *c, struct dir *d)
{
    struct buf *b = d->b;

    while (b->parsed < b->last) {
        uint8_t *p = b->data + b->parsed;
        size_t avail = b->last - b->parsed;

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
                /* Control frames are handled whole (≤ 139 bytes): the
                 * close payload must be checked before it is relayed. */
                if (avail < (size_t)n + h.len)
                    return 0;
                if (d->from_client && (code = limit_control(c, d, &h)))
                    return code;
                uint8_t *pl = p + n;
                if (h.masked)
                    ws_mask(pl, (size_t)h.len, h.key, 0);
                if (d->from_client && h.opcode == WS_OP_PONG &&
                    c->ping_sent > 0 && h.len == sizeof c->ping_data &&
                    memcmp(pl, c->ping_data, sizeof c->ping_data) == 0) {
                    /* The pong to wsguard's own ping: consumed here. */
                    size_t flen = (size_t)n + (size_t)h.len;
                    memmove(p, p + flen, avail - flen);
                    b->last -= (uint32_t)flen;
                    c->ping_sent = 0;
                    continue;
                }
                if (h.opcode == WS_OP_CLOSE) {
                    code = ws_check_close(pl, (size_t)h.len);
                    if (code) {
                        d->why = "invalid close frame";
                        return code;
                    }
                    d->src->got_close = 1;
                    d->close_fwd = 1;
                    d->relayed_close = 1;
                    if (d->ctl_len && !d->ctl_busy) {
                        /* Nothing of ours may follow the peer's close
                         * (a close of ours is refused by relayed_close). */
                        d->ctl_len = d->ctl_off = 0;
                        d->ctl_close = d->ctl_ping = 0;
                        if (d == &c->down)
                            c->ping_queued = 0;
                    }
                    if (c->close_code == 0) {
                        c->close_code = h.len >= 2 ? (pl[0] << 8 | pl[1])
                                                   : WS_CLOSE_NO_STATUS;
                        c->closed_by = d->from_client ? "client" : "backend";
                    }
                }
                if (h.masked) {
                    worker_random(c->w, p + n - 4, 4);
                    ws_mask(pl, (size_t)h.len, p + n - 4, 0);
                }
                b->parsed += (uint32_t)(n + h.len);
                if (h.opcode == WS_OP_CLOSE) {
                    /* RFC 6455 §5.5.1: nothing follows a close frame. */
                    d->mode = DIR_DISCARD;
                    b->last = b->parsed;
                    conn_closing(c);
                    return 0;
                }
                continue;
            }
            if (d->from_client && (code = limit_data(c, d, &h)))
                return code;
            if (h.fin && h.len == 0 && d->msg.opcode == WS_OP_TEXT &&
                d->msg.utf8 != UTF8_ACCEPT) {
                /* An empty final fragment ends a text message inside a
                 * code point: refused before its header goes out. */
                d->why = "invalid UTF-8";
                return WS_CLOSE_INVALID_DATA;
            }
            if (h.masked) {
                memcpy(d->ckey, h.key, 4);
                worker_random(c->w, d->okey, 4);
                memcpy(p + n - 4, d->okey, 4);
            }
            d->masked = h.masked;
            d->fin = h.fin;
            d->remaining = h.len;
            d->frame_off = 0;
            d->in_frame = 1;
            b->parsed += (uint32_t)n;
        } else {
            size_t take = avail < d->remaining ? avail : (size_t)d->remaining;
            if (d->msg.opcode == WS_OP_TEXT) {
                /* Client text that is ASCII (the common case) is unmasked,
                 * validated and re-masked in one pass; whatever follows
                 * the first non-ASCII byte takes the general path. */
                size_t done = 0;
                if (d->masked && d->msg.utf8 == UTF8_ACCEPT)
                    done = ws_remask_ascii(p, take, d->ckey, d->okey,
                                           d->frame_off);
                uint8_t *q = p + done;
                size_t m = take - done;
                uint64_t off = d->frame_off + done;
                uint32_t before = d->msg.utf8;
                if (m > 0 && d->masked)
                    ws_mask(q, m, d->ckey, off);
                uint32_t st = m > 0 ? utf8_validate(before, q, m) : before;
                int last = d->fin && take == d->remaining;
                if (st == UTF8_REJECT || (last && st != UTF8_ACCEPT)) {
                    d->why = "invalid UTF-8";
                    return WS_CLOSE_INVALID_DATA;
                }
                size_t hold = 0;
                if (st != UTF8_ACCEPT && d->fin) {
                    /* The final frame so far ends inside a code point: hold
                     * those bytes back until it completes, so a message
                     * that ends there is refused before any of it goes
                     * out (the backend never gets an invalid message). */
                    hold = utf8_tail(q, m);
                    st = utf8_validate(before, q, m - hold);
                }
                d->msg.utf8 = st;
                if (m > 0 && d->masked) {
                    ws_mask(q, m - hold, d->okey, off);
                    /* Held bytes go back to the sender's mask, to be
                     * processed again when the rest arrives. */
                    ws_mask(q + m - hold, hold, d->ckey, off + m - hold);
                }
                if (hold) {
                    take -= hold;
                    b->parsed += (uint32_t)take;
                    d->remaining -= take;
                    d->frame_off += take;
                    return 0;
                }
            } else if (d->masked) {
                /* Unmask and re-mask in one pass: (x^a)^b = x^(a^b). */
                uint8_t k[4];
                for (int i = 0; i < 4; i++)
                    k[i] = d->ckey[i] ^ d->okey[i];
                ws_mask(p, take, k, d->frame_off);
            }
            b->parsed += (uint32_t)take;
            d->remaining -= take;
            d->frame_off += take;
        }
        if (d->in_frame && d->remaining == 0) {
            d->in_frame = 0;
            if (d->fin) {
                int code = ws_msg_end(&d->msg);
                if (code) {
                    d->why = "invalid UTF-8";
                    return code;
                }
                d->msgs++;
            }
        }
    }
    return 0;
}

/* Discard mode: walk the sender's frames without forwarding any, to see
 * its close frame; the bytes are dropped from the buffer. */
static void
dir_skip(struct conn *c, struct dir *d)
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
    (void)c;
}

/* Write n bytes at p to dst; returns what was written (0 when blocked or
 * broken). Tracks how long output to dst has been blocked, for
 * write_timeout: any progress resets the clock. */
static size_t
dir_write(struct conn *c, struct side *dst, const uint8_t *p, size_t n)
{
    ssize_t w = side_write(dst, p, n);
    if (w > 0) {
        dst->wblock_since = 0;
        return (size_t)w;
    }
    if (w == 0 && dst->wblock_since == 0) {
        dst->wblock_since = ev_now(c->w->loop);
        if (cfg_of(c)->write_timeout_ms && c->state == CS_RELAY)
            conn_timer_arm(c);
    }
    return 0;
}

/* Write what is left of d's ctl slot. Returns 1 when it is all out. */
static int
ctl_flush(struct conn *c, struct dir *d)
{
    struct side *dst = d->dst;

    while (d->ctl_len) {
        size_t n = dir_write(c, dst, d->ctl + d->ctl_off,
                             (size_t)(d->ctl_len - d->ctl_off));
        if (n == 0) {
            /* Begun (or blocked: with TLS a record of it may already be
             * inside OpenSSL): nothing else may be written first. */
            d->ctl_busy = 1;
            return 0;
        }
        d->ctl_busy = 1;
        d->ctl_off += (uint16_t)n;
        if (d->ctl_off < d->ctl_len)
            continue;
        if (d->ctl_close)
            dst->sent_close = 1;
        if (d->ctl_ping) {
            c->ping_sent = ev_now(c->w->loop);
            c->ping_queued = 0;
            conn_timer_arm(c);          /* the pong deadline starts */
        }
        d->ctl_len = d->ctl_off = 0;
        d->ctl_close = d->ctl_ping = d->ctl_busy = 0;
    }
    return 1;
}

/* Write what d holds for its destination: validated bytes first, then
 * wsguard's own frames, but only where a frame may start. A ctl write
 * that has begun is always finished before anything else. */
static void
dir_flush(struct conn *c, struct dir *d)
{
    struct side *dst = d->dst;
    struct buf *b = d->b;

    if (dst->fd == -1 || dst->eof) {
        if (b)
            b->pos = b->parsed;
        d->ctl_len = d->ctl_off = 0;
        d->ctl_close = d->ctl_ping = d->ctl_busy = 0;
        c->ping_queued = d == &c->down ? 0 : c->ping_queued;
    }
    if (d->ctl_busy && !ctl_flush(c, d))
        return;
    while (b && b->pos < b->parsed) {
        size_t n = dir_write(c, dst, b->data + b->pos, b->parsed - b->pos);
        if (n == 0)
            return;
        b->pos += (uint32_t)n;
    }
    if (d->close_fwd && d->mode == DIR_DISCARD) {
        /* The relayed close frame was the last forwarded byte. */
        d->close_fwd = 0;
        dst->sent_close = 1;
    }
    if (d->cut) {
        dst->kill = 1;
        d->ctl_len = d->ctl_off = 0;
        d->ctl_close = d->ctl_ping = d->ctl_busy = 0;
    }
    /* In relay mode a frame of the peer's may be half forwarded: ours
     * wait for its end. In discard mode the forwarded stream ended on a
     * frame boundary (or is cut). */
    int boundary = d->mode == DIR_DISCARD || !d->in_frame;
    if (d->ctl_len && boundary && !ctl_flush(c, d))
        return;
    dst->wblocked = 0;
    if (b) {
        if (b->parsed == b->last) {
            d->b = NULL;
            worker_buf_put(c->w, b);
        } else if (b->pos > 0) {
            /* Only an incomplete header or control frame is left. */
            memmove(b->data, b->data + b->parsed, b->last - b->parsed);
            b->last -= b->parsed;
            b->pos = b->parsed = 0;
        }
    }
}

/* Has d bytes (relayed or its own) waiting for its destination? */
int
dir_pending(const struct dir *d)
{
    return (d->b && d->b->pos < d->b->parsed) || d->ctl_len;
}

/* Can d take more bytes from its source right now? */
int
dir_room(const struct dir *d)
{
    const struct buf *b = d->b;
    return b == NULL || b->last < BUF_SIZE || b->pos == b->parsed;
}

static void
dir_process(struct conn *c, struct dir *d)
{
    if (d->mode == DIR_DISCARD) {
        dir_skip(c, d);
        return;
    }
    uint32_t before = d->b->parsed;
    int code = dir_parse(c, d);
    /* Activity for idle_timeout is what gets relayed: the pong to
     * wsguard's own ping is consumed without advancing parsed, so
     * heartbeats alone never keep an idle session open. */
    if (d->b->parsed != before)
        c->last_activity = ev_now(c->w->loop);
    if (code == 0)
        return;
    /* A peer that broke the protocol is not waited for: it may be inside
     * a frame it will never finish, or its broken frame was its close.
     * Once our close frame is written, its connection is shut. */
    d->src->got_close = 1;
    /* The backend is told the same code as the client, so the
     * application sees why the session ended (the reason text says whose
     * fault it was). */
    snprintf(c->why_buf, sizeof c->why_buf, "%s %s",
             d->from_client ? "client" : "backend",
             d->why ? d->why : "protocol error");
    enforced(c, code == WS_CLOSE_TOO_BIG ? ENF_PAYLOAD
                : code == WS_CLOSE_POLICY ? (enum enforce)d->enf
                                          : ENF_PROTOCOL);
    if (d->from_client)
        relay_fail(c, code, code, c->why_buf, "wsguard");
    else
        relay_fail(c, WS_CLOSE_BAD_GATEWAY, code, c->why_buf, "wsguard");
    /* What is left unparsed is dropped now, so a full buffer never stops
     * reading (the peer's close reply must still be seen). */
    if (d->b != NULL && d->mode == DIR_DISCARD)
        dir_skip(c, d);
}

/* Read from d's source while there is room, validate, forward. */
static void
dir_pump(struct conn *c, struct dir *d)
{
    struct side *src = d->src;
    int i;

    for (i = 0; i < READS_PER_EVENT && src->fd != -1 && !src->eof; i++) {
        if (d->b == NULL && (d->b = worker_buf_get(c->w)) == NULL) {
            relay_fail(c, WS_CLOSE_INTERNAL, WS_CLOSE_INTERNAL,
                       "out of memory", "wsguard");
            return;
        }
        struct buf *b = d->b;
        if (b->last == BUF_SIZE && b->pos == b->parsed && b->parsed > 0) {
            memmove(b->data, b->data + b->parsed, b->last - b->parsed);
            b->last -= b->parsed;
            b->pos = b->parsed = 0;
        }
        size_t room = BUF_SIZE - b->last;
        if (room == 0) {
            src->full_stop = 1; /* full: wait for the destination */
            break;
        }
        ssize_t n = side_read(src, b->data + b->last, room);
        if (n <= 0) {
            if (b->last == 0) {
                d->b = NULL;
                worker_buf_put(c->w, b);
            }
            break;
        }
        b->last += (uint32_t)n;
        if (d->mode == DIR_RELAY)
            d->bytes += (uint64_t)n;
        atomic_fetch_add_explicit(d->from_client ? &c->w->st.bytes_in
                                                 : &c->w->st.bytes_out,
                                  (uint64_t)n, memory_order_relaxed);
        if (d->from_client) {
            /* Any byte answers an outstanding ping: the next deadline is
             * the next ping, which may come before the pong deadline the
             * timer is armed for. */
            int answered = c->ping_sent > c->cli_rx;
            c->cli_rx = ev_now(c->w->loop);
            if (answered)
                conn_timer_arm(c);
        }
        dir_process(c, d);
        dir_flush(c, d);
        /* A short read drained the socket (level-triggered epoll tells
         * us when more comes); with TLS only if OpenSSL holds nothing
         * either. This saves a read(2) that would return EAGAIN. */
        if ((size_t)n < room &&
            (src->ssl == NULL || !SSL_has_pending(src->ssl)))
            break;
    }
    side_refeed(c, src, i);
}

void
relay_start(struct conn *c)
{
    const struct policy *p = c->pol;

    c->relayed = 1;
    c->last_activity = c->cli_rx = ev_now(c->w->loop);
    bucket_init(&c->b_msgs, p->message_burst ? (double)p->message_burst
                                             : (double)p->messages_per_second,
                c->cli_rx);
    bucket_init(&c->b_bytes, (double)p->bytes_per_second, c->cli_rx);
    bucket_init(&c->b_ctl, (double)p->control_frames_per_second, c->cli_rx);
    atomic_fetch_add(&c->w->st.sessions, 1);
    dir_init(c, &c->up, &c->cli, &c->be, 1, p->max_payload);
    dir_init(c, &c->down, &c->be, &c->cli, 0, p->max_payload_backend);
    conn_set_state(c, CS_RELAY);
    if (c->w->drain_expired)
        relay_fail(c, WS_CLOSE_GOING_AWAY, WS_CLOSE_GOING_AWAY, "draining",
                   "wsguard");
    if (c->down.b) {
        dir_process(c, &c->down);
        dir_flush(c, &c->down);
    }
    /* The client may have sent frames right behind its request. */
    size_t extra = c->hs->head_len - c->hs->head_used;
    if (extra > 0) {
        if (extra > BUF_SIZE || (c->up.b = worker_buf_get(c->w)) == NULL) {
            relay_fail(c, WS_CLOSE_PROTOCOL, WS_CLOSE_GOING_AWAY,
                       "too much data before the upgrade", "wsguard");
        } else {
            memcpy(c->up.b->data, c->hs->head + c->hs->head_used, extra);
            c->up.b->last = (uint32_t)extra;
            c->up.bytes += extra;
            dir_process(c, &c->up);
            dir_flush(c, &c->up);
        }
    }
    hs_free(c->hs);
    c->hs = NULL;
}

/* The close handshake with s is complete: send our end of the stream
 * (TLS close_notify, TCP FIN) and keep reading until the peer closes too,
 * bounded by close_timeout. Closing at once with unread input would make
 * the kernel answer the peer's late frames with a reset. */
static void
side_linger(struct conn *c, struct side *s)
{
    s->lingering = 1;
    if (s->ssl) {
        SSL_shutdown(s->ssl);
        ERR_clear_error();
    }
    shutdown(s->fd, SHUT_WR);
    ev_io_stop(c->w->loop, &s->wr);
}

/* After every event: close sides that are finished, tell the other side
 * when one vanished, free the connection when both are closed. */
void
relay_settle(struct conn *c)
{
    struct side *sides[2] = {&c->cli, &c->be};

    for (int i = 0; i < 2; i++) {
        struct side *s = sides[i];
        struct dir *out = s == &c->cli ? &c->down : &c->up;
        if (s->fd == -1)
            continue;
        int pending = dir_pending(out);
        if (s->sent_close && s->got_close && !s->lingering && !s->eof &&
            !s->kill) {
            side_linger(c, s);
            continue;
        }
        int done = s->eof || (s->kill && !pending);
        if (!done)
            continue;
        int abnormal = !(s->sent_close && s->got_close);
        side_close(c, s);
        /* What was waiting for it is dropped, which makes room to keep
         * reading the other side (and see its close reply). */
        dir_flush(c, out);
        if (!abnormal)
            continue;
        /* It vanished without the close handshake: the other side is
         * told with a close frame of its own. */
        if (s == &c->be) {
            if (c->close_code == 0) {
                c->close_code = WS_CLOSE_BAD_GATEWAY;
                c->closed_by = "backend";
                c->reason = "backend connection lost";
            }
            int code = c->cli.got_close ? WS_CLOSE_NORMAL
                                        : WS_CLOSE_BAD_GATEWAY;
            dir_discard(&c->up);
            /* If it died inside a frame it was sending, that frame can
             * not be finished toward the client: cut, no close frame. */
            dir_discard(&c->down);
            dir_queue_close(c, &c->down, code, c->reason);
            dir_flush(c, &c->down);
        } else {
            if (c->close_code == 0) {
                c->close_code = 1006;
                c->closed_by = "client";
                c->reason = "client connection lost";
            }
            dir_discard(&c->down);
            dir_discard(&c->up);
            dir_queue_close(c, &c->up, WS_CLOSE_GOING_AWAY, c->reason);
            dir_flush(c, &c->up);
        }
        conn_closing(c);
        i = -1;                 /* re-check both sides */
    }
    if (c->cli.fd == -1 && c->be.fd == -1)
        c->dead = 1;
}

void
relay_io(struct conn *c, struct side *s, int revents)
{
    struct dir *in = s == &c->cli ? &c->up : &c->down;
    struct dir *out = s == &c->cli ? &c->down : &c->up;

    if ((revents & EV_WRITE) || ((revents & EV_READ) && s->wr_wants_rd))
        dir_flush(c, out);
    if ((revents & EV_READ) || ((revents & EV_WRITE) && s->rd_wants_wr))
        dir_pump(c, in);
}
