/*
 * relay.h - the relay engine of an upgraded session.
 *
 * It owns the two directions ("in": client -> backend, "out": backend ->
 * client) and their buffers, validates every frame before any of it is
 * forwarded (RFC 6455 §5-7, [limits]), sends wsguard's own frames (the
 * heartbeat ping, close frames) between the peers' frames, and runs the
 * close handshakes. It reads and writes through the transport (side.h)
 * and reports what happened to its caller, the connection's state
 * machine, as RELAY_* events; it never changes the connection's state,
 * frees any part of the connection or calls back up.
 *
 * The per-direction processing is also callable without sockets
 * (relay_rx_space/relay_rx_done, relay_tx_next/relay_tx_done): the fuzz
 * target drives the real engine through them. The clock is an argument
 * of every entry point and the random source is the injected rnd pool,
 * so a run is reproducible.
 *
 * Everything runs on the thread of the worker that owns the session.
 */
#ifndef WSGUARD_RELAY_H
#define WSGUARD_RELAY_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "config.h"
#include "deadline.h"
#include "pmd.h"
#include "ratelimit.h"
#include "rnd.h"
#include "side.h"
#include "stats.h"
#include "ws.h"

/* Reads per readiness event and direction: fairness between sessions. */
#define RELAY_READS_PER_EVENT 8

/* A session quiet (nothing read, no ping written) for this long gives its
 * TLS record buffers back; while traffic flows they are kept, which saves
 * a malloc and free of ~16.7 KiB per record and direction
 * (docs/performance.md). */
#define RELAY_QUIET_MS 1000

/* The payload of wsguard's own ping, random, to recognise its pong. */
#define RELAY_PING_LEN 8

/* The most a ctl slot holds: a ping (to the client: unmasked) and a
 * close. */
#define RELAY_CTL_MAX (2 + RELAY_PING_LEN + WS_MAX_CTL_FRAME)

/* What an entry point reports (a bit set). */
#define RELAY_REARM   0x1u      /* the next deadline may have moved */
#define RELAY_CLOSING 0x2u      /* the close handshakes have begun */
#define RELAY_DONE    0x4u      /* both sides are closed: free it */

/* One peer as the relay sees it: its transport and the WebSocket-level
 * state of its leg. */
struct peer {
    struct side *io;
    double wblock_since;        /* output to it blocked since; 0 = not */
    uint8_t sent_close;         /* a close frame was fully written to it */
    uint8_t got_close;          /* it sent a close frame (or broke the
                                   protocol: nothing more is expected) */
    uint8_t broke;              /* it broke the protocol: it may still be
                                   sending, so its connection lingers */
    uint8_t kill;               /* close it once its output is flushed */
};

enum dir_mode {
    MODE_RELAY = 0,             /* validate and forward */
    MODE_DISCARD                /* after a close: parse, forward nothing */
};

struct dir {
    struct buf *b;              /* NULL while nothing is in flight */
    struct peer *src, *dst;
    struct ws_msg msg;          /* message being received */
    uint64_t remaining;         /* payload bytes left of the current frame */
    uint64_t frame_off;         /* payload bytes of it already seen */
    uint64_t max_payload;
    uint8_t in_frame;           /* inside a data frame's payload */
    uint8_t fin;                /* of the current data frame */
    uint8_t masked;             /* of the current data frame */
    uint8_t from_client;        /* frames must be masked */
    uint8_t mode;               /* enum dir_mode */
    uint8_t cut;                /* forwarded stream ends mid-frame */
    uint8_t close_fwd;          /* a forwarded close is in [pos, parsed) */
    uint8_t ckey[4];            /* sender's masking key */
    uint8_t okey[4];            /* wsguard's masking key toward a server */
    uint8_t ctl_close;          /* ctl ends with a close frame */
    uint8_t ctl_ping;           /* ctl starts with wsguard's ping */
    uint8_t ctl_busy;           /* a write of ctl has begun: it must be
                                   finished before any other byte goes */
    uint8_t relayed_close;      /* a peer's close went through here */
    uint8_t enf;                /* enum enforce of a 1008 from a limit */
    uint8_t nomem;              /* no buffer could be had: the session
                                   fails (1011) and this source is not
                                   read again (close_timeout ends it) */
    /* The ctl slot: wsguard's own ping (to the client) and close for
     * dst, kept as what makes them; relay_tx_next() makes the bytes. */
    uint8_t ctl_reason_of;      /* of the close: see relay_reason() */
    uint8_t ctl_key[4];         /* its masking key (toward the backend) */
    uint16_t ctl_code;          /* its code */
    uint16_t ctl_len, ctl_off;  /* bytes of the slot, written */
    const char *ctl_reason;     /* static text */
    const char *why;            /* reason for the close code dir_parse
                                   returned, for the log */
    uint64_t bytes, msgs;       /* relayed in this direction */

    /* permessage-deflate (pmd.h). A transformed message (in: compressed
     * by the client; out: one wsguard compresses) is consumed from b and
     * re-framed into o, complete frames of wsguard's own; tx sends b's
     * validated bytes, then o's. While o holds unsent frames, nothing
     * more of b is forwarded (only the transformed message goes on into
     * o), which keeps the order. */
    struct buf *o;              /* NULL while nothing is in flight */
    uint64_t zmin;              /* out: messages from this size on are
                                   compressed; UINT64_MAX: never */
    uint64_t xframes;           /* frames written into o (activity) */
    uint32_t olen;              /* payload bytes of the open frame */
    uint8_t oopen;              /* a frame is being built at o->last (only
                                   inside one call) */
    uint8_t xform;              /* the current message is transformed */
    uint8_t xop;                /* its opcode */
    uint8_t xfirst;             /* its next output frame is its first */
    uint8_t xend;               /* its end is being flushed */
    uint8_t xmore;              /* the inflater holds more output */
    uint8_t xstall;             /* waiting for o to drain */
    uint8_t zenf;               /* enum enforce + 1 of an inflate-guard
                                   close; 0 = none */

    /* The fast path (dir_fast), set at relay start: */
    uint8_t mbit;               /* 0x80 when frames must be masked: the
                                   second header byte of a frame it takes,
                                   XOR this, is the payload length */
    uint8_t fast_end;           /* it takes payloads shorter than this
                                   (<= 126: max_payload and compression
                                   allowing); 0 = none */
    uint8_t fast_lim;           /* rate limits apply to its frames */
};

/* permessage-deflate's zlib state, in its own allocation: only sessions
 * that agreed the extension carry it. */
struct relay_z {
    struct pmd_inflater in;     /* client -> backend */
    struct pmd_deflater out;    /* backend -> client */
};

/* What a relay is made from. Pointers stay owned by the caller and must
 * outlive the relay, except z. */
struct relay_setup {
    const struct config *cfg;   /* timeouts */
    const struct policy *pol;   /* [limits] */
    struct side *cli, *be;      /* the two legs, connected */
    struct bufpool *bufs;
    struct rnd *rnd;
    struct stats *st;
    const char *name;           /* the client, for debug logs */
    double started;             /* when the connection was accepted */
    double expiry;              /* token exp + leeway to close at with
                                   1008; 0 = none */
    const struct pmd_params *pmd;   /* permessage-deflate agreed with the
                                   client; NULL = not */
    struct relay_z *z;          /* memory for pmd's state, required with
                                   pmd (from malloc; the relay owns it
                                   from relay_init, which frees it at
                                   once without pmd) */
};

struct relay {
    struct dir up, down;        /* in (client -> backend), out */
    struct peer cli, be;
    const struct config *cfg;
    const struct policy *pol;
    struct bufpool *bufs;
    struct rnd *rnd;
    struct stats *st;
    const char *name;
    double now;                 /* of the current entry point */
    double started, last_activity, closing_since, expiry;
    double be_fin_by;           /* the backend is given until then to
                                   close first (0 = not waiting) */
    double cli_rx;              /* last byte from the client */
    double ping_sent;           /* our last ping, when it was written;
                                   outstanding while > cli_rx */
    struct bucket b_msgs, b_bytes, b_ctl;   /* [limits] */
    uint8_t ping_data[RELAY_PING_LEN];  /* its payload, to recognise
                                   the pong */
    double held;                /* TLS record buffers may be held
                                   since (last read or ping), 0 = given
                                   back: see RELAY_QUIET_MS */
    uint8_t ping_queued;        /* a ping waits in down's ctl slot */
    uint8_t failing;            /* wsguard is ending the session */
    uint8_t closing;            /* the close handshakes have begun */
    struct relay_z *z;          /* permessage-deflate agreed: its state;
                                   NULL = not agreed */
    unsigned ev;                /* RELAY_* gathered for the caller */

    /* For the access log: how the session ended. */
    int close_code;
    const char *closed_by;      /* "client", "backend", "wsguard" */
    const char *reason;         /* static text: see relay_reason() */
    uint8_t reason_of;          /* 0, or REASON_OF_*: reason is that
                                   peer's protocol error */
};

#define REASON_OF_CLIENT 1
#define REASON_OF_BACKEND 2
#define RELAY_REASON_MAX 96     /* room for relay_reason() */

/* How the session ended, as the log and the close frames say it (NULL
 * while it has not): r->reason, or "client "/"backend " and r->reason,
 * composed into buf (cap bytes, RELAY_REASON_MAX is enough). */
const char *relay_reason(const struct relay *r, char *buf, size_t cap);

/* Set up the directions; nothing is read or written yet. */
void relay_init(struct relay *r, const struct relay_setup *s);

/*
 * Start relaying at now. Bytes that arrived behind the two handshakes are
 * processed first: up[0..up_n) from the client (at most BUF_SIZE, else
 * the session fails with 1002), down[0..down_n) from the backend (at most
 * BUF_SIZE). Returns RELAY_* events.
 */
unsigned relay_start(struct relay *r, double now, const uint8_t *up,
                     size_t up_n, const uint8_t *down, size_t down_n);

/* Readiness of s (one of the two legs): read, validate, forward. */
unsigned relay_io(struct relay *r, struct side *s, int revents, double now);

/* The deadline passed (or the timer fired early): act on what is due. */
unsigned relay_timeout(struct relay *r, double now);

/* wsguard ends the session: close frames with cli_code to the client and
 * be_code to the backend, after what was validated; by and reason for
 * the log (static text: the close frames are made from it when they are
 * written). Does nothing when it is already ending. */
unsigned relay_fail(struct relay *r, int cli_code, int be_code,
                    const char *reason, const char *by, double now);

/* After every event: shut and close the legs that are finished, tell the
 * survivor with a close frame when one vanished; RELAY_DONE when both are
 * closed. */
unsigned relay_settle(struct relay *r, double now);

/* The next deadline (seconds on the loop's clock), or 0 for none. */
double relay_deadline(const struct relay *r);

/* Set both legs' watchers to what the relay waits for. */
void relay_watch(struct relay *r);

/* Give the buffers back to the pool (the connection is going). */
void relay_release(struct relay *r);

/* Has d bytes (relayed or wsguard's own) waiting for its destination? */
int relay_dir_pending(const struct dir *d);

/*
 * The engine without sockets, one direction at a time (d: &r->up or
 * &r->down).
 *   relay_rx_space: where received bytes go and how many fit (NULL when
 *       none fit now, or when no buffer could be had: the session then
 *       fails with 1011);
 *   relay_rx_done: n bytes were written there: validate and transform;
 *   relay_tx_next: the next bytes that may be written to d's destination
 *       now (NULL: nothing; a write of what it returns must be attempted,
 *       and a partial one continued, before anything else);
 *   relay_tx_done: n of them were written;
 *   relay_tick: relay_timeout() without writing (what it queues is
 *       drained with relay_tx_next).
 * The socket path (relay_io, relay_timeout) is built from these.
 */
uint8_t *relay_rx_space(struct relay *r, struct dir *d, size_t *room);
unsigned relay_rx_done(struct relay *r, struct dir *d, size_t n, double now);
const uint8_t *relay_tx_next(struct relay *r, struct dir *d, size_t *len);
unsigned relay_tx_done(struct relay *r, struct dir *d, size_t n, double now);
unsigned relay_tick(struct relay *r, double now);

#endif
