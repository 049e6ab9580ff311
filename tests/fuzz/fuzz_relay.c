/*
 * fuzz_relay.c - the real relay engine (relay.c), driven without sockets
 * through relay_rx_space/relay_rx_done and relay_tx_next/relay_tx_done,
 * both directions interleaved, and checked against the model receiver of
 * wsmodel.h as an oracle.
 *
 * Input: byte 0 picks max_payload for each direction; byte 1 seeds the
 * sizes of the writes that drain the relay (partial writes exercise the
 * ctl slot's "begun, must finish" rule); then a script of ops, each one
 * byte o:
 *   o % 4 == 0: (o >> 2) + 1 bytes from the client follow in the input;
 *   o % 4 == 1: the same from the backend;
 *   o % 4 == 2: (o >> 2) * 100 ms pass, then relay_tick() (wsguard may
 *               ping the client);
 *   o % 4 == 3: the client answers wsguard's outstanding ping with the
 *               matching pong (only at a frame boundary of its stream).
 * After every op both directions are drained.
 *
 * Properties (abort on violation):
 *   - what the relay writes toward each side parses cleanly with the
 *     model (no protocol or UTF-8 error; it may end inside a frame only
 *     where the relay cut the stream);
 *   - every data byte forwarded was received and validated: the output's
 *     data payload is a prefix of the input's (unmasked);
 *   - control frames forwarded are a prefix of those received (in order,
 *     same payload), apart from wsguard's own (its ping toward the
 *     client, its close frames), which come from the ctl slot;
 *   - the pong answering wsguard's ping is consumed, never forwarded;
 *   - the session's verdict matches the model's first verdict: a client
 *     violation V closes the client with V, a backend violation closes it
 *     with 1014 (the backend gets V either way), a peer's close is
 *     recorded with its code; the close frames wsguard sends carry those
 *     codes unless the stream toward that side was cut mid-frame;
 *   - the buffer invariant (BUF_CHECK, compiled in with WSGUARD_CHECKS)
 *     and the relay always finding room once its output is drained.
 *
 * permessage-deflate mode (byte 0 >= 0xF0; the agreed parameters from
 * byte 1): the client sends compressed messages, made by the harness with
 * zlib from input bytes or taken as arbitrary compressed bytes, in
 * arbitrary frame sizes, mixed with raw client bytes; the backend sends
 * raw bytes and whole binary frames (compressed toward the client). See
 * pmd_run() for the ops. Properties:
 *   - toward the backend: frames parse cleanly with the model (masked,
 *     no RSV bit), and no message is larger than max_payload: never more
 *     than the limit inflated reaches it;
 *   - when every compressed message was the harness's own (valid), the
 *     backend receives exactly their plain bytes and nobody fails;
 *   - toward the client: the frames parse (RSV1 only on a message's first
 *     frame), and the messages, inflated with zlib under the agreed
 *     context takeover, are a prefix of the backend's data;
 *   - memory: wsguard's zlib state never exceeds pmd_memory_bound().
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "relay.h"

#define FAIL(...)                                                        \
    do {                                                                 \
        fprintf(stderr, "fuzz_relay: " __VA_ARGS__);                     \
        fputc('\n', stderr);                                             \
        abort();                                                         \
    } while (0)
#define CHECK(x) do { if (!(x)) FAIL("%s", #x); } while (0)

#include "wsmodel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint64_t max_payloads[4] = { 0, 125, 1000, 70000 };

/* A growable byte string. */
struct bytes {
    uint8_t *p;
    size_t n, cap;
};

static void
bytes_add(struct bytes *b, const uint8_t *p, size_t n)
{
    if (n == 0)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        CHECK(b->p != NULL);
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

/* One control frame as seen by a model: opcode, then its payload. */
struct ctl_list {
    struct bytes all;           /* frames: [opcode][len][payload]... */
    size_t count;
};

/* What one model watches: a stream, its data payload, its control
 * frames, and (for an output) which stream bytes came from the ctl slot. */
struct watch {
    struct rx rx;
    struct bytes data;
    struct ctl_list ctls;
    struct bytes own;           /* output only: 1 per byte from ctl */
    struct bytes stream;        /* output only: the bytes themselves */
    int last_own_close;         /* the last frame was wsguard's close */
    int last_close_code;        /* its code */
};

static void
on_data(void *ctx, const uint8_t *p, size_t n)
{
    struct watch *w = ctx;
    bytes_add(&w->data, p, n);
}

static void
on_frame(void *ctx, const struct ws_header *h, const uint8_t *ctl,
         size_t ctl_n)
{
    struct watch *w = ctx;
    int own = w->own.n > 0 && w->own.p[w->rx.frame_pos];

    w->last_own_close = 0;
    if (!(h->opcode & 0x8))
        return;
    if (own) {
        /* wsguard's own: a ping (toward the client) or a close */
        CHECK(h->opcode == WS_OP_PING || h->opcode == WS_OP_CLOSE);
        if (h->opcode == WS_OP_CLOSE) {
            w->last_own_close = 1;
            w->last_close_code = ctl_n >= 2 ? (ctl[0] << 8 | ctl[1]) : 1005;
        }
        return;
    }
    uint8_t hdr[2] = { h->opcode, (uint8_t)ctl_n };
    bytes_add(&w->ctls.all, hdr, 2);
    bytes_add(&w->ctls.all, ctl, ctl_n);
    w->ctls.count++;
}

static void
watch_init(struct watch *w, int masked, uint64_t max)
{
    memset(w, 0, sizeof *w);
    rx_init(&w->rx, masked, max);
    w->rx.on_data = on_data;
    w->rx.on_frame = on_frame;
    w->rx.ctx = w;
}

static void
watch_free(struct watch *w)
{
    free(w->data.p);
    free(w->ctls.all.p);
    free(w->own.p);
    free(w->stream.p);
}

/* Feed a model bytes (rx_piece copies: it unmasks in place). */
static void
watch_feed(struct watch *w, const uint8_t *p, size_t n)
{
    rx_piece(&w->rx, p, n);
}

static int
is_prefix(const struct bytes *a, const struct bytes *b)
{
    return a->n <= b->n && (a->n == 0 || memcmp(a->p, b->p, a->n) == 0);
}

struct harness {
    struct relay r;
    struct side cli, be;
    struct config cfg;
    struct policy pol;
    struct bufpool bufs;
    struct rnd rnd;
    struct stats st;
    double now;
    uint32_t seed;
    struct watch in[2], out[2];         /* [0] up (client ->), [1] down */
    int verdict_dir;                    /* first model verdict: 0/1, -1 */
};

static uint32_t rnd_state;

/* Reproducible "random" bytes for masking keys and pings. */
static void
fake_random(uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rnd_state ^= rnd_state << 13;
        rnd_state ^= rnd_state >> 17;
        rnd_state ^= rnd_state << 5;
        out[i] = (uint8_t)rnd_state;
    }
}

static struct dir *
dir_at(struct harness *h, int i)
{
    return i == 0 ? &h->r.up : &h->r.down;
}

/* Write what the relay has for direction i, in seed-sized pieces. */
static void
drain(struct harness *h, int i)
{
    struct dir *d = dir_at(h, i);
    const uint8_t *p;
    size_t len;

    while ((p = relay_tx_next(&h->r, d, &len)) != NULL) {
        CHECK(len > 0);
        h->seed ^= h->seed << 13;
        h->seed ^= h->seed >> 17;
        h->seed ^= h->seed << 5;
        size_t n = 1 + h->seed % len;
        int own = d->ctl_busy;  /* set while ctl bytes are returned */
        struct watch *w = &h->out[i];
        for (size_t k = 0; k < n; k++) {
            uint8_t t = (uint8_t)own;
            bytes_add(&w->own, &t, 1);
        }
        bytes_add(&w->stream, p, n);
        watch_feed(w, p, n);
        relay_tx_done(&h->r, d, n, h->now);
    }
    BUF_CHECK(d->b);
}

static void
note_verdict(struct harness *h, int i)
{
    if (h->verdict_dir < 0 && h->in[i].rx.done)
        h->verdict_dir = i;
}

/* Bytes from peer i (0 client, 1 backend) into the relay. */
static void
feed(struct harness *h, int i, const uint8_t *p, size_t n, int to_model)
{
    struct dir *d = dir_at(h, i);

    while (n > 0) {
        size_t room;
        uint8_t *q = relay_rx_space(&h->r, d, &room);
        if (q == NULL) {
            /* full: once its output is drained there must be room */
            drain(h, i);
            q = relay_rx_space(&h->r, d, &room);
            CHECK(q != NULL && room > 0);
        }
        size_t k = n < room ? n : room;
        memcpy(q, p, k);
        if (to_model) {
            watch_feed(&h->in[i], p, k);
            note_verdict(h, i);
        }
        relay_rx_done(&h->r, d, k, h->now);
        BUF_CHECK(d->b);
        p += k;
        n -= k;
        drain(h, 0);
        drain(h, 1);
    }
}

/* The client answers wsguard's ping, at a frame boundary of its stream. */
static void
pong(struct harness *h)
{
    const struct rx *m = &h->in[0].rx;
    uint8_t f[2 + 4 + RELAY_PING_LEN], key[4] = { 0x12, 0x34, 0x56, 0x78 };

    if (h->r.ping_sent <= 0 || m->done || m->in_payload || m->spill_n ||
        h->r.failing || h->r.up.mode != MODE_RELAY)
        return;
    size_t n = ws_write_header(f, 1, WS_OP_PONG, key, RELAY_PING_LEN);
    memcpy(f + n, h->r.ping_data, RELAY_PING_LEN);
    ws_mask(f + n, RELAY_PING_LEN, key, 0);
    /* not fed to the model: wsguard must consume it */
    feed(h, 0, f, n + RELAY_PING_LEN, 0);
    CHECK(h->r.ping_sent == 0);
}

static void
check_output(struct harness *h, int i)
{
    const struct watch *in = &h->in[i], *out = &h->out[i];

    /* the output parses cleanly */
    if (out->rx.code != 0)
        FAIL("output %d: the model fails it with %d", i, out->rx.code);
    /* data: a prefix of what came in */
    if (!is_prefix(&out->data, &in->data))
        FAIL("output %d: data is not a prefix of the input's", i);
    /* control frames: a prefix of what came in */
    if (!is_prefix(&out->ctls.all, &in->ctls.all))
        FAIL("output %d: control frames are not a prefix of the input's",
             i);
}

/* The stream toward side i ended at a frame boundary: not cut. */
static int
ended_whole(const struct harness *h, int i)
{
    const struct rx *m = &h->out[i].rx;
    return !m->in_payload && m->spill_n == 0;
}

static void
check_verdict(struct harness *h)
{
    const struct relay *r = &h->r;
    int v = h->verdict_dir;

    if (v < 0) {
        /* The only close wsguard may have sent on its own is none. */
        CHECK(r->close_code == 0);
        return;
    }
    const struct rx *m = &h->in[v].rx;
    if (m->closed) {
        /* a peer's valid close: recorded, relayed as is */
        CHECK(r->close_code != 0);
        CHECK(strcmp(r->closed_by, v == 0 ? "client" : "backend") == 0);
        return;
    }
    int cli_code = v == 0 ? m->code : WS_CLOSE_BAD_GATEWAY;
    if (r->close_code != cli_code)
        FAIL("verdict: relay %d, model %d (%s)", r->close_code, cli_code,
             v == 0 ? "client" : "backend");
    CHECK(strcmp(r->closed_by, "wsguard") == 0);
    /* toward the client (output 1) and the backend (output 0): wsguard's
     * close frame last, unless that stream was cut inside a frame or the
     * peer's own close already went that way */
    if (ended_whole(h, 1) && !h->r.down.relayed_close)
        CHECK(h->out[1].last_own_close
              && h->out[1].last_close_code == cli_code);
    if (ended_whole(h, 0) && !h->r.up.relayed_close)
        CHECK(h->out[0].last_own_close
              && h->out[0].last_close_code == m->code);
}

/* ------------------------------------------------------------------ */
/* permessage-deflate mode                                             */

struct pmd_h {
    struct pmd_params prm;
    z_stream comp;              /* the client's deflater */
    z_stream dec;               /* the client's inflater (of wsguard's) */
    struct bytes expect;        /* plain bytes of the valid messages */
    struct bytes plain_out;     /* inflated from what reached the client */
    struct bytes cmsg;          /* compressed message being gathered */
    int all_valid;              /* only the harness's own messages */
    /* the parser of the stream toward the client */
    struct bytes cstream;
    size_t cpos;
    int c_in_msg, c_compressed;
};

static void
client_frame(struct harness *h, int op, int fin, int rsv1, const uint8_t *p,
             size_t n)
{
    uint8_t hdr[WS_MAX_HEADER], key[4] = { 0xa5, 0x17, 0x3c, 0x81 };
    size_t hl = ws_write_header(hdr, fin, op, key, n);
    uint8_t *f = malloc(hl + n + 1);

    CHECK(f != NULL);
    if (rsv1)
        hdr[0] |= 0x40;
    memcpy(f, hdr, hl);
    memcpy(f + hl, p, n);
    ws_mask(f + hl, n, key, 0);
    feed(h, 0, f, hl + n, 0);
    free(f);
}

/* Parse what went toward the client: whole frames only; compressed
 * messages inflated with the client's stream. */
static void
pmd_check_client(struct harness *h, struct pmd_h *z)
{
    struct bytes *b = &z->cstream;

    while (z->cpos < b->n) {
        struct ws_header hd;
        int n = ws_parse_header(b->p + z->cpos, b->n - z->cpos, &hd);
        if (n == WS_INCOMPLETE)
            return;
        CHECK(n > 0 && !hd.masked);
        if (z->cpos + (size_t)n + hd.len > b->n)
            return;
        const uint8_t *pl = b->p + z->cpos + n;
        z->cpos += (size_t)n + (size_t)hd.len;
        if (hd.opcode & 0x8) {
            CHECK(hd.rsv == 0);
            continue;
        }
        if (hd.opcode != WS_OP_CONT) {
            CHECK(!z->c_in_msg);
            CHECK(hd.rsv == 0 || hd.rsv == 4);
            z->c_compressed = hd.rsv == 4;
            z->cmsg.n = 0;
        } else {
            CHECK(z->c_in_msg && hd.rsv == 0);
        }
        z->c_in_msg = !hd.fin;
        if (!z->c_compressed) {
            bytes_add(&z->plain_out, pl, (size_t)hd.len);
            continue;
        }
        bytes_add(&z->cmsg, pl, (size_t)hd.len);
        if (!hd.fin)
            continue;
        static const uint8_t tail[4] = { 0, 0, 0xff, 0xff };
        bytes_add(&z->cmsg, tail, 4);
        uint8_t out[4096];
        z->dec.next_in = z->cmsg.p;
        z->dec.avail_in = (uInt)z->cmsg.n;
        do {
            z->dec.next_out = out;
            z->dec.avail_out = sizeof out;
            int rc = inflate(&z->dec, Z_SYNC_FLUSH);
            if (rc != Z_OK && rc != Z_BUF_ERROR)
                FAIL("toward the client: inflate %d", rc);
            bytes_add(&z->plain_out, out, sizeof out - z->dec.avail_out);
        } while (z->dec.avail_in > 0 || z->dec.avail_out == 0);
        z->cmsg.n = 0;
        if (z->prm.server_no_context_takeover)
            CHECK(inflateReset(&z->dec) == Z_OK);
    }
}

static void
pmd_drain_all(struct harness *h, struct pmd_h *z)
{
    drain(h, 0);
    drain(h, 1);
    CHECK(pmd_inflater_memory(&h->r.z->in) + pmd_deflater_memory(&h->r.z->out)
          <= pmd_memory_bound(&z->prm));
    /* toward the backend: the model checks it (no RSV, max_payload) */
    if (h->out[0].rx.code != 0)
        FAIL("toward the backend: the model fails it with %d",
             h->out[0].rx.code);
    /* toward the client: parsed and inflated here */
    z->cstream.n = 0;
    bytes_add(&z->cstream, h->out[1].stream.p ? h->out[1].stream.p
                                              : (const uint8_t *)"",
              h->out[1].stream.n);
    z->cpos = 0;
    z->c_in_msg = 0;
    z->plain_out.n = 0;
    CHECK(inflateReset(&z->dec) == Z_OK);   /* the whole stream again */
    pmd_check_client(h, z);
    if (!is_prefix(&z->plain_out, &h->in[1].data))
        FAIL("toward the client: inflated data is not a prefix of the "
             "backend's");
}

/*
 * Ops, one byte o, kind o & 7:
 *   0: (o >> 3) + 1 raw bytes from the client (any frames, RSV1 or not);
 *   1: (o >> 3) + 1 raw bytes from the backend;
 *   2: a client frame of arbitrary "compressed" bytes: the next byte is
 *      its length L, then L bytes; o bit 3: first frame of a message
 *      (RSV1, text when bit 5) or a continuation, bit 4: fin;
 *   3: a valid compressed binary message from the client: the next byte
 *      is its plain length L, then L bytes, deflated with the client's
 *      stream and sent in frames of (o >> 3) + 1 bytes;
 *   4: time passes ((o >> 3) * 100 ms), relay_tick();
 *   5: the client answers wsguard's ping;
 *   6, 7: a binary frame from the backend of 4 * the next byte bytes
 *      (the byte after it repeated, then the op byte's count), fin.
 */
static void
pmd_run(struct harness *h, const uint8_t *p, const uint8_t *end,
        uint8_t b1)
{
    struct pmd_h *z = calloc(1, sizeof *z);

    CHECK(z != NULL);
    z->prm.server_max_window_bits = (uint8_t)(8 + (b1 & 7));
    z->prm.client_max_window_bits = (uint8_t)(8 + ((b1 >> 3) & 7));
    z->prm.server_no_context_takeover = (b1 >> 6) & 1;
    z->prm.client_no_context_takeover = (b1 >> 7) & 1;
    z->all_valid = 1;
    CHECK(deflateInit2(&z->comp, 6, Z_DEFLATED,
                       -(z->prm.client_max_window_bits < 9
                             ? 9 : z->prm.client_max_window_bits),
                       8, Z_DEFAULT_STRATEGY) == Z_OK);
    CHECK(inflateInit2(&z->dec, -15) == Z_OK);
    h->pol.deflate = 1;
    h->pol.deflate_level = b1 % 10;
    h->pol.deflate_min_size = b1 & 1 ? 0 : 100;
    h->pol.max_inflate_ratio = 200;
    struct relay_setup s = {
        .cfg = &h->cfg, .pol = &h->pol, .cli = &h->cli, .be = &h->be,
        .bufs = &h->bufs, .rnd = &h->rnd, .st = &h->st, .name = "fuzz",
        .started = h->now, .expiry = 0, .pmd = &z->prm,
        .z = malloc(sizeof(struct relay_z)),
    };
    CHECK(s.z != NULL);
    relay_init(&h->r, &s);
    (void)relay_start(&h->r, h->now, NULL, 0, NULL, 0);

    while (p < end) {
        uint8_t o = *p++;
        size_t n, l;

        switch (o & 7) {
        case 0:
        case 1:
            n = (size_t)(o >> 3) + 1;
            if (n > (size_t)(end - p))
                n = (size_t)(end - p);
            if ((o & 7) == 0)
                z->all_valid = 0;
            feed(h, o & 1, p, n, o & 1);
            p += n;
            break;
        case 2:
            if (p == end)
                break;
            l = *p++;
            if (l > (size_t)(end - p))
                l = (size_t)(end - p);
            z->all_valid = 0;
            client_frame(h, (o & 8) ? ((o & 32) ? WS_OP_TEXT : WS_OP_BINARY)
                                    : WS_OP_CONT,
                         (o >> 4) & 1, (o >> 3) & 1, p, l);
            p += l;
            break;
        case 3: {
            if (p == end)
                break;
            l = *p++;
            if (l > (size_t)(end - p))
                l = (size_t)(end - p);
            uint8_t c[1024];
            z->comp.next_in = (Bytef *)(uintptr_t)p;
            z->comp.avail_in = (uInt)l;
            z->comp.next_out = c;
            z->comp.avail_out = sizeof c;
            /* Nothing to flush (an empty message after a flush) is
             * Z_BUF_ERROR: its payload is empty (RFC 7692 §7.2.3.6). */
            int rc = deflate(&z->comp, Z_SYNC_FLUSH);
            CHECK(rc == Z_OK || (rc == Z_BUF_ERROR && l == 0));
            CHECK(z->comp.avail_in == 0);
            size_t cl = sizeof c - z->comp.avail_out;
            cl = rc == Z_OK ? cl - 4 : 0;
            if (z->prm.client_no_context_takeover)
                CHECK(deflateReset(&z->comp) == Z_OK);
            if (h->pol.max_payload && l > h->pol.max_payload)
                z->all_valid = 0;
            if (z->all_valid)
                bytes_add(&z->expect, p, l);
            size_t step = (size_t)(o >> 3) + 1, off = 0;
            do {
                size_t k = cl - off < step ? cl - off : step;
                client_frame(h, off == 0 ? WS_OP_BINARY : WS_OP_CONT,
                             off + k == cl, off == 0, c + off, k);
                off += k;
            } while (off < cl);
            p += l;
            break;
        }
        case 4:
            h->now += (o >> 3) * 0.1;
            relay_tick(&h->r, h->now);
            break;
        case 5:
            /* only where the client's stream is at a frame boundary,
             * which raw bytes may have left it not */
            if (z->all_valid)
                pong(h);
            break;
        default: {
            if (end - p < 2)
                break;
            l = (size_t)p[0] * 4 + (o >> 3);
            uint8_t *f = malloc(l + WS_MAX_HEADER);
            CHECK(f != NULL);
            size_t hl = ws_write_header(f, 1, WS_OP_BINARY, NULL, l);
            memset(f + hl, p[1], l);
            for (size_t i = 0; i < l; i += 7)
                f[hl + i] = (uint8_t)(i ^ p[1]);
            feed(h, 1, f, hl + l, 1);
            free(f);
            p += 2;
            break;
        }
        }
        pmd_drain_all(h, z);
    }
    pmd_drain_all(h, z);
    if (z->all_valid && h->in[1].rx.code == 0 && !h->in[1].rx.closed) {
        CHECK(h->r.close_code == 0);
        CHECK(h->out[0].data.n == z->expect.n);
        CHECK(z->expect.n == 0 ||
              memcmp(h->out[0].data.p, z->expect.p, z->expect.n) == 0);
    }
    relay_release(&h->r);
    CHECK(h->r.z == NULL);
    deflateEnd(&z->comp);
    inflateEnd(&z->dec);
    free(z->expect.p);
    free(z->plain_out.p);
    free(z->cmsg.p);
    free(z->cstream.p);
    free(z);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct harness *hp;
    struct harness *h;

    if (size < 2)
        return 0;
    if (hp == NULL && (hp = malloc(sizeof *hp)) == NULL)
        abort();
    h = hp;
    memset(h, 0, sizeof *h);
    rnd_state = 0x9E3779B9u;
    rnd_init(&h->rnd, fake_random);
    h->bufs.max = 4;
    h->cli.fd = h->be.fd = 1000;        /* never used for I/O here */
    h->pol.max_payload = max_payloads[data[0] & 3];
    h->pol.max_payload_backend = max_payloads[(data[0] >> 2) & 3];
    h->cfg.ping_interval_ms = 1000;
    h->cfg.close_timeout_ms = 1000ull * 3600 * 24 * 365;
    h->now = 1000.0;
    h->seed = data[1] * 2654435761u + 1;
    h->verdict_dir = -1;
    watch_init(&h->in[0], 1, h->pol.max_payload);
    watch_init(&h->in[1], 0, h->pol.max_payload_backend);
    watch_init(&h->out[0], 1, UINT64_MAX);
    watch_init(&h->out[1], 0, UINT64_MAX);
    if (data[0] >= 0xF0) {
        /* permessage-deflate: the backend's model limits what it gets */
        watch_init(&h->out[0], 1, h->pol.max_payload);
        pmd_run(h, data + 2, data + size, data[1]);
        bufpool_clear(&h->bufs);
        for (int i = 0; i < 2; i++) {
            watch_free(&h->in[i]);
            watch_free(&h->out[i]);
        }
        return 0;
    }

    struct relay_setup s = {
        .cfg = &h->cfg, .pol = &h->pol, .cli = &h->cli, .be = &h->be,
        .bufs = &h->bufs, .rnd = &h->rnd, .st = &h->st, .name = "fuzz",
        .started = h->now, .expiry = 0,
    };
    relay_init(&h->r, &s);
    (void)relay_start(&h->r, h->now, NULL, 0, NULL, 0);

    const uint8_t *p = data + 2, *end = data + size;
    while (p < end) {
        uint8_t o = *p++;
        size_t n;

        switch (o & 3) {
        case 0:
        case 1:
            n = (size_t)(o >> 2) + 1;
            if (n > (size_t)(end - p))
                n = (size_t)(end - p);
            feed(h, o & 1, p, n, 1);
            p += n;
            break;
        case 2:
            h->now += (o >> 2) * 0.1;
            relay_tick(&h->r, h->now);
            drain(h, 0);
            drain(h, 1);
            break;
        default:
            pong(h);
            break;
        }
        check_output(h, 0);
        check_output(h, 1);
    }
    drain(h, 0);
    drain(h, 1);
    check_output(h, 0);
    check_output(h, 1);
    check_verdict(h);
    relay_release(&h->r);
    bufpool_clear(&h->bufs);
    for (int i = 0; i < 2; i++) {
        watch_free(&h->in[i]);
        watch_free(&h->out[i]);
    }
    return 0;
}
