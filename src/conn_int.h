/*
 * conn_int.h - the session's internals, shared by conn.c (state machine,
 * handshake, policy, timers, watchers, teardown) and relay.c (the frame
 * relay of an upgraded session). Private: nothing else includes it.
 * Everything here runs on the thread of the worker that owns the
 * connection.
 */
#ifndef WSGUARD_CONN_INT_H
#define WSGUARD_CONN_INT_H

#include <ev.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <sys/types.h>

#include "buf.h"
#include "config.h"
#include "deadline.h"
#include "http.h"
#include "jwt.h"
#include "netaddr.h"
#include "ratelimit.h"
#include "refuse.h"
#include "upgrade.h"
#include "worker.h"
#include "ws.h"

enum conn_state {
    CS_PROXY = 0,               /* reading a PROXY protocol header */
    CS_TLS_HANDSHAKE,
    CS_REQ_READ,
    CS_BE_CONNECT,
    CS_BE_SEND,
    CS_BE_READ,
    CS_CLI_101,
    CS_RELAY,
    CS_CLOSING,
    CS_REFUSING
};


#define MAX_HEADERS 64
#define BE_HEAD_MAX 8192        /* backend's 101 head */
#define READS_PER_EVENT 8       /* fairness between connections */
#define LINGER_TIME 2.0         /* s: reading after a refusal */

struct side {
    int fd;                     /* -1 once closed */
    SSL *ssl;                   /* client leg with TLS, else NULL */
    ev_io rd, wr;
    unsigned eof : 1;           /* peer gone (EOF or error) */
    unsigned wblocked : 1;      /* last write returned EAGAIN */
    unsigned rd_wants_wr : 1;   /* SSL_read needs the socket writable */
    unsigned wr_wants_rd : 1;   /* SSL_write needs the socket readable */
    unsigned sent_close : 1;    /* a close frame was fully written to it */
    unsigned got_close : 1;     /* it sent us a close frame */
    unsigned kill : 1;          /* close it as soon as output is flushed */
    unsigned hs_want_wr : 1;    /* TLS handshake waits for writability */
    unsigned lingering : 1;     /* our end is shut, reading until EOF */
    unsigned full_stop : 1;     /* reading stopped on a full buffer */
    ev_tstamp wblock_since;     /* output to it blocked since; 0 = not */
};

enum dir_mode {
    DIR_RELAY = 0,              /* validate and forward */
    DIR_DISCARD                 /* after a close: parse, forward nothing */
};

struct dir {
    struct buf *b;              /* NULL while nothing is in flight */
    struct side *src, *dst;
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
    uint16_t ctl_len, ctl_off;
    uint8_t ctl[2 * (WS_MAX_HEADER + WS_MAX_CONTROL)];  /* a ping and a
                                   close of wsguard's own, for dst */
    const char *why;            /* reason for the close code dir_parse
                                   returned, for the log */
    uint8_t enf;                /* enum enforce of a 1008 from a limit */
    uint64_t bytes, msgs;       /* relayed in this direction */
};

/*
 * What only the handshake needs (about 2.7 KiB with the header array):
 * one allocation at accept, freed when the relay starts, so an idle
 * session keeps none of it.
 */
struct hs {
    char *head;                 /* client request head, max_header_bytes */
    size_t head_len;
    size_t head_used;           /* length of the parsed head */
    struct http_request req;
    struct http_header hdrs[MAX_HEADERS];
    struct upgrade_req ureq;
    char be_key[UPGRADE_KEY_LEN + 1];
    char *out;                  /* bytes being written (request/101/refusal) */
    size_t out_len, out_off;
    char *bhead;                /* backend response head */
    size_t bhead_len;
    unsigned be_tries;
    const struct backend_addr *be_addr;

    /* The request as checked: req.target points at ntarget once the
     * path is normalised, and everything after (routing, the token,
     * the backend request) reads that. */
    char *ntarget;              /* normalised path '?' raw query */

    /* The token and what the backend request changes because of it. */
    struct jwt_token tok;       /* points into ntarget or head */
    char *target;               /* request target sent on (token cut) */
    size_t target_len;
    char *extra;                /* header lines added for the backend */
    size_t extra_len;
    struct upgrade_edit edit[MAX_HEADERS];  /* per client header */
    char *edit_value;           /* the one replaced value (token cut) */
};

struct conn {
    struct worker *w;
    struct runtime *rt;         /* reference held */
    const struct policy *pol;   /* in rt->cfg, chosen by route */
    const char *route;
    struct conn *prev, *next;   /* worker's list */
    enum conn_state state;
    unsigned dead : 1;
    unsigned failing : 1;       /* wsguard is ending the session */
    unsigned relayed : 1;       /* reached RELAY */
    unsigned logged : 1;
    unsigned lingering : 1;    /* refusal sent, draining input */
    struct side cli, be;
    struct dir up, down;
    ev_timer timer;
    ev_tstamp started, last_activity, phase_start, closing_since;
    ev_tstamp cli_rx;           /* last byte from the client */
    ev_tstamp ping_sent;        /* our last ping, when it was written;
                                   outstanding while > cli_rx */
    unsigned ping_queued : 1;   /* a ping waits in down.ctl */
    uint8_t ping_data[8];       /* its payload, to recognise the pong */
    struct bucket b_msgs, b_bytes, b_ctl;   /* [limits] per connection */
    char client_ip[INET6_ADDRSTRLEN];   /* the client (behind trusted
                                           proxies: the one they name) */
    char peer_ip[INET6_ADDRSTRLEN];     /* the address we talk to */
    struct ip_key ip;           /* what the per-IP limit counts */
    unsigned ip_counted : 1;    /* holds a slot in worker_iplimit */
    unsigned ip_over : 1;       /* the slot was refused: 429 */
    unsigned peer_trusted : 1;  /* peer in [server] trusted_proxies */
    unsigned addr_final : 1;    /* client address known (PROXY header) */

    int64_t tok_exp;            /* exp of a verified token, 0 = none */
    int64_t tok_leeway;
    char *sub;

    struct hs *hs;              /* handshake state; NULL once relaying */

    /* For the access log. */
    char why_buf[96];           /* reason text built at run time */
    enum refusal ref;           /* why it ended before the relay */
    char *path;                 /* the normalised path and the query
                                   without any token parameter */
    char *origin;
    int status;                 /* refusal status */
    int close_code;
    const char *closed_by;
    const char *reason;
};

static inline const struct config *
cfg_of(const struct conn *c)
{
    return c->rt->cfg;
}

/* conn.c */
void hs_free(struct hs *h);
void conn_set_state(struct conn *c, enum conn_state s);
void conn_timer_arm(struct conn *c);
void conn_settle(struct conn *c);
void side_close(struct conn *c, struct side *s);
ssize_t side_read(struct side *s, void *p, size_t n);
ssize_t side_write(struct side *s, const void *p, size_t n);
void side_refeed(struct conn *c, struct side *s, int i);

/* relay.c */
void relay_deadlines(const struct conn *c, double t[DL_COUNT]);
void relay_timeout(struct conn *c, ev_tstamp now);
void relay_fail(struct conn *c, int cli_code, int be_code, const char *reason,
           const char *by);
void relay_start(struct conn *c);
void relay_settle(struct conn *c);
void relay_io(struct conn *c, struct side *s, int revents);
int dir_room(const struct dir *d);
int dir_pending(const struct dir *d);

#endif
