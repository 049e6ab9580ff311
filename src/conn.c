/*
 * conn.c - the session state machine (the frame relay itself is relay.c).
 *
 *   accept ─► TLS_HANDSHAKE ─► REQ_READ ─► policy ─► BE_CONNECT ─► BE_SEND
 *                 │               │           │          │            │
 *                 │               └───────────┴──────────┴─► REFUSING ─┤
 *                 ▼                                                    ▼
 *              (freed)   BE_READ ─► CLI_101 ─► RELAY ─► CLOSING ─► (freed)
 *
 * A session is two sides (struct side: the client leg, TLS or plain, and
 * the backend leg, plain TCP) and two directions (struct dir: "up" carries
 * frames client -> backend, "down" backend -> client). Each direction owns
 * at most one 16 KiB buffer, taken from the worker's freelist while bytes
 * are in flight and given back as soon as it is empty:
 *
 *      data[0] ≤ pos ≤ parsed ≤ last ≤ BUF_SIZE
 *      [pos, parsed)   validated bytes not yet written to the destination
 *      [parsed, last)  received bytes not yet validated (at most a frame
 *                      header or one control frame: ≤ 14 + 125 bytes)
 *
 * Reads land at last, the frame parser advances parsed (unmasking,
 * checking UTF-8 and re-masking payload in place as it goes), and the
 * writer drains [pos, parsed). Unvalidated bytes are never forwarded. A
 * full buffer stops reading from the source until the destination takes
 * bytes: that is all the backpressure there is, and it bounds memory.
 *
 * Frames wsguard sends itself (close frames) wait in the direction's
 * small ctl slot until the stream toward that side is at a frame boundary.
 *
 * Teardown: handlers never free. They set sides closed or the connection
 * dead; every libev callback ends in conn_settle(), which closes what is
 * finished and frees the connection when both sides are closed.
 */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "jwt.h"
#include "log.h"
#include "netaddr.h"
#include "field.h"
#include "origin.h"
#include "path.h"
#include "upgrade.h"
#include "utf8.h"
#include "worker.h"
#include "ws.h"
#include "buf.h"
#include "deadline.h"
#include "ratelimit.h"
#include "tls.h"
#include "conn_int.h"

static const char *const state_names[] = {
    "PROXY", "TLS_HANDSHAKE", "REQ_READ", "BE_CONNECT", "BE_SEND", "BE_READ",
    "CLI_101", "RELAY", "CLOSING", "REFUSING"
};

void
hs_free(struct hs *h)
{
    if (h == NULL)
        return;
    free(h->head);
    free(h->out);
    free(h->bhead);
    free(h->ntarget);
    free(h->target);
    free(h->extra);
    free(h->edit_value);
    free(h);
}

/* ------------------------------------------------------------------ */
/* State, timer, teardown                                              */

static void conn_refuse(struct conn *c, enum refusal kind,
                        const char *reason);
static void conn_drop(struct conn *c, enum refusal kind, const char *reason);

static ev_tstamp
ms(uint64_t v)
{
    return (ev_tstamp)v / 1000.0;
}

void
conn_set_state(struct conn *c, enum conn_state s)
{
    if (log_enabled(LOG_DEBUG))
        log_debug("conn %s: %s -> %s", c->client_ip, state_names[c->state],
                  state_names[s]);
    c->state = s;
    c->phase_start = ev_now(c->w->loop);
    conn_timer_arm(c);
}

/* The one deadline of the current phase (libev's "strategy #3": activity
 * only stores a time stamp; the timer re-arms itself from it when it
 * fires). Returns 0 when no deadline applies. */

static ev_tstamp
conn_deadline(const struct conn *c)
{
    const struct config *cfg = cfg_of(c);
    ev_tstamp d = 0;

    switch (c->state) {
    case CS_PROXY:
    case CS_TLS_HANDSHAKE:
    case CS_REQ_READ:
        d = c->started + ms(cfg->handshake_timeout_ms);
        break;
    case CS_REFUSING:
        d = c->phase_start + LINGER_TIME;
        break;
    case CS_BE_CONNECT:
    case CS_BE_SEND:
    case CS_BE_READ:
        d = c->phase_start + ms(c->pol->connect_timeout_ms);
        break;
    case CS_CLI_101:
        d = c->started + ms(cfg->handshake_timeout_ms) +
            ms(c->pol->connect_timeout_ms);
        break;
    case CS_RELAY: {
        double t[DL_COUNT];
        relay_deadlines(c, t);
        d = deadline_next(t);
        break;
    }
    case CS_CLOSING:
        d = c->closing_since + ms(cfg->close_timeout_ms ?
                                      cfg->close_timeout_ms : 1);
        break;
    }
    return d;
}

void
conn_timer_arm(struct conn *c)
{
    ev_tstamp d = conn_deadline(c);
    ev_timer_stop(c->w->loop, &c->timer);
    if (d == 0)
        return;
    ev_tstamp after = d - ev_now(c->w->loop);
    ev_timer_set(&c->timer, after > 0 ? after : 0, 0);
    ev_timer_start(c->w->loop, &c->timer);
}




static void
conn_timeout(struct conn *c)
{
    ev_tstamp now = ev_now(c->w->loop);
    ev_tstamp d = conn_deadline(c);

    if (d > now + 0.0005) {     /* activity moved the deadline: re-arm */
        conn_timer_arm(c);
        return;
    }
    switch (c->state) {
    case CS_PROXY:
    case CS_TLS_HANDSHAKE:
    case CS_REQ_READ:
        conn_drop(c, REF_HANDSHAKE_TIMEOUT, "handshake timeout");
        break;
    case CS_REFUSING:
        c->dead = 1;
        break;
    case CS_BE_CONNECT:
    case CS_BE_SEND:
    case CS_BE_READ:
        conn_refuse(c, REF_BACKEND_TIMEOUT, "backend timeout");
        break;
    case CS_CLI_101:
        conn_drop(c, REF_HANDSHAKE_TIMEOUT, "client did not read the 101");
        break;
    case CS_RELAY:
        relay_timeout(c, now);
        break;
    case CS_CLOSING:
        if (c->reason == NULL)
            c->reason = "close timeout";
        c->dead = 1;
        break;
    }
}

void
side_close(struct conn *c, struct side *s)
{
    if (s->fd == -1)
        return;
    ev_io_stop(c->w->loop, &s->rd);
    ev_io_stop(c->w->loop, &s->wr);
    if (s->ssl != NULL) {
        /* Best effort close_notify; the socket is non-blocking and we do
         * not wait for the peer's. */
        if (!s->eof && !s->lingering && SSL_is_init_finished(s->ssl))
            SSL_shutdown(s->ssl);
        ERR_clear_error();
    }
    close(s->fd);
    s->fd = -1;
}

static void
conn_log(struct conn *c)
{
    if (c->logged)
        return;
    c->logged = 1;
    /* Every connection that ends before the relay is counted here, once,
     * under the kind that ended it. */
    if (!c->relayed)
        atomic_fetch_add_explicit(&c->w->st.rejected[c->ref], 1,
                                  memory_order_relaxed);
    struct access_rec r = {0};
    r.event = c->relayed ? "session" : "reject";
    r.client_ip = c->client_ip;
    r.route = c->route;
    r.path = c->path;
    r.path_len = c->path ? strlen(c->path) : 0;
    r.origin = c->origin;
    r.origin_len = c->origin ? strlen(c->origin) : 0;
    r.sub = c->sub;
    r.status = c->relayed ? 0 : c->status;
    r.close_code = c->relayed ? c->close_code : 0;
    r.closed_by = c->relayed ? c->closed_by : NULL;
    r.reason = c->reason;
    r.bytes_in = c->up.bytes;
    r.bytes_out = c->down.bytes;
    r.msgs_in = c->up.msgs;
    r.msgs_out = c->down.msgs;
    r.duration_ms = (uint64_t)((ev_now(c->w->loop) - c->started) * 1000);
    r.tls_version = c->cli.ssl ? tls_version_name(c->cli.ssl) : NULL;
    log_access(&r);
}

static void
conn_free(struct conn *c)
{
    struct worker *w = c->w;

    conn_log(c);
    side_close(c, &c->cli);
    side_close(c, &c->be);
    ev_timer_stop(w->loop, &c->timer);
    if (c->cli.ssl)
        SSL_free(c->cli.ssl);
    if (c->up.b)
        worker_buf_put(w, c->up.b);
    if (c->down.b)
        worker_buf_put(w, c->down.b);
    hs_free(c->hs);
    c->hs = NULL;
    free(c->path);
    free(c->origin);
    free(c->sub);
    if (c->ip_counted)
        iplimit_release(worker_iplimit, &c->ip);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    atomic_fetch_sub(&worker_total_conns, 1);
    atomic_fetch_sub(&w->st.active, 1);
    runtime_unref(c->rt);
    free(c);
}

/* ------------------------------------------------------------------ */
/* Socket I/O over either leg                                          */

/* SSL_get_error() reads the thread's error queue, so it must be empty
 * before each SSL call. ERR_clear_error() walks all 16 slots (about 190
 * instructions, per record on the hot path); peeking first costs a
 * quarter of that when, as almost always, the queue is empty. */
static void
ssl_clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* Returns > 0 bytes read, 0 when nothing is available now, -1 at EOF or
 * on an error (s->eof set). */
ssize_t
side_read(struct side *s, void *p, size_t n)
{
    if (s->ssl == NULL) {
        for (;;) {
            ssize_t r = read(s->fd, p, n);
            if (r > 0)
                return r;
            if (r == 0) {
                s->eof = 1;
                return -1;
            }
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            s->eof = 1;
            return -1;
        }
    }
    s->rd_wants_wr = 0;
    ssl_clear_errors();
    int r = SSL_read(s->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0)
        return r;
    switch (SSL_get_error(s->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        /* SSL_MODE_RELEASE_BUFFERS frees the read buffer only after a
         * record was consumed; a read that found nothing keeps its 16 KiB
         * allocated. An idle session must hold no such buffer. */
        if (!SSL_has_pending(s->ssl))
            SSL_free_buffers(s->ssl);
        return 0;
    case SSL_ERROR_WANT_WRITE:
        s->rd_wants_wr = 1;
        return 0;
    default:
        ERR_clear_error();
        s->eof = 1;
        return -1;
    }
}

/* Returns > 0 bytes written, 0 when the socket takes nothing now
 * (s->wblocked set), -1 on error (s->eof set). */
ssize_t
side_write(struct side *s, const void *p, size_t n)
{
    if (s->ssl == NULL) {
        for (;;) {
            ssize_t r = write(s->fd, p, n);
            if (r >= 0) {
                s->wblocked = (size_t)r < n;
                return r;
            }
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                s->wblocked = 1;
                return 0;
            }
            s->eof = 1;
            return -1;
        }
    }
    s->wr_wants_rd = 0;
    ssl_clear_errors();
    int r = SSL_write(s->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
    if (r > 0) {
        s->wblocked = (size_t)r < n;
        return r;
    }
    switch (SSL_get_error(s->ssl, r)) {
    case SSL_ERROR_WANT_WRITE:
        s->wblocked = 1;
        return 0;
    case SSL_ERROR_WANT_READ:
        s->wblocked = 1;
        s->wr_wants_rd = 1;
        return 0;
    default:
        ERR_clear_error();
        s->eof = 1;
        return -1;
    }
}

/* A read loop stopped at READS_PER_EVENT with bytes still inside
 * OpenSSL: the socket will not announce them, so queue the event again
 * (it runs after the other connections' events: fairness is kept). */
void
side_refeed(struct conn *c, struct side *s, int i)
{
    if (i == READS_PER_EVENT && s->fd != -1 && s->ssl &&
        SSL_has_pending(s->ssl))
        ev_feed_event(c->w->loop, &s->rd, EV_READ);
}

static void
io_set(struct ev_loop *loop, ev_io *io, int on)
{
    if (on && !ev_is_active(io))
        ev_io_start(loop, io);
    else if (!on && ev_is_active(io))
        ev_io_stop(loop, io);
}

/* ------------------------------------------------------------------ */
/* Handshake phase                                                     */

/* Write c->hs->out to side s. Returns 1 when all is written, 0 when blocked,
 * -1 on error. */
static int
out_flush(struct conn *c, struct side *s)
{
    while (c->hs->out_off < c->hs->out_len) {
        ssize_t n = side_write(s, c->hs->out + c->hs->out_off,
                               c->hs->out_len - c->hs->out_off);
        if (n < 0)
            return -1;
        if (n == 0)
            return 0;
        c->hs->out_off += (size_t)n;
    }
    s->wblocked = 0;
    return 1;
}

/* After the refusal is written: stop sending, then read and drop what
 * the client still sends until it closes (bounded by a short deadline).
 * Closing a socket with unread input makes the kernel send a reset, which
 * can destroy the response before the client reads it (nginx's
 * "lingering close"). */
static void
conn_linger(struct conn *c)
{
    char sink[4096];

    if (!c->lingering) {
        c->lingering = 1;
        if (c->cli.ssl) {
            SSL_shutdown(c->cli.ssl);
            ERR_clear_error();
        }
        shutdown(c->cli.fd, SHUT_WR);
    }
    for (int i = 0; i < READS_PER_EVENT; i++) {
        ssize_t n = side_read(&c->cli, sink, sizeof sink);
        if (n < 0) {
            c->dead = 1;
            return;
        }
        if (n == 0)
            return;
    }
    side_refeed(c, &c->cli, READS_PER_EVENT);
}

static void
conn_refusing_io(struct conn *c)
{
    if (c->lingering) {
        conn_linger(c);
        return;
    }
    int r = out_flush(c, &c->cli);
    if (r < 0)
        c->dead = 1;
    else if (r == 1)
        conn_linger(c);
}

/* End a connection before its 101 without an answer (the peer is gone,
 * or speaks no HTTP yet): counted and logged under kind. */
static void
conn_drop(struct conn *c, enum refusal kind, const char *reason)
{
    c->ref = kind;
    c->reason = reason != NULL ? reason : refusal_info[kind].text;
    c->dead = 1;
}

/* Answer the client with status (0 = the kind's own) and a one-line
 * body, then close; counted and logged under kind with reason. */
static void
conn_refuse_status(struct conn *c, enum refusal kind, int status,
                   const char *reason)
{
    char buf[512];

    if (status == 0)
        status = refusal_info[kind].status;
    c->ref = kind;
    c->status = status;
    c->reason = reason != NULL ? reason : refusal_info[kind].text;
    log_info("refused %s: %d %s", c->client_ip, status, c->reason);
    side_close(c, &c->be);
    int n = upgrade_refusal(buf, sizeof buf, status, NULL, 0);
    free(c->hs->out);
    c->hs->out = NULL;
    if (n <= 0 || (c->hs->out = malloc((size_t)n)) == NULL) {
        c->dead = 1;
        return;
    }
    memcpy(c->hs->out, buf, (size_t)n);
    c->hs->out_len = (size_t)n;
    c->hs->out_off = 0;
    conn_set_state(c, CS_REFUSING);
    conn_refusing_io(c);
}

static void
conn_refuse(struct conn *c, enum refusal kind, const char *reason)
{
    conn_refuse_status(c, kind, 0, reason);
}

static void be_connect(struct conn *c);
static void conn_req_read(struct conn *c);
static void conn_tls_handshake(struct conn *c);
static void addr_text(const struct sockaddr *sa, char *out, size_t cap);

/* Copy a counted string for the access log. */
static char *
dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* Count this connection for its client address (once). Called at accept
 * for direct clients; for a trusted proxy's connection once the PROXY
 * header or X-Forwarded-For has named the client. The global limit is
 * applied here; a route's own limit is checked in conn_ip_check. */
static void
conn_ip_count(struct conn *c)
{
    if (!c->rt->count_ips || c->ip_counted || c->ip_over)
        return;
    uint64_t lim = cfg_of(c)->global.max_connections_per_ip;
    int r = iplimit_acquire(worker_iplimit, &c->ip, lim ? lim : UINT64_MAX);
    if (r == 1)
        c->ip_counted = 1;
    else if (r == 0)
        c->ip_over = 1;
}

static int
conn_ip_check(struct conn *c)
{
    conn_ip_count(c);
    if (c->ip_over)
        return -1;
    uint64_t lim = c->pol->max_connections_per_ip;
    if (lim && c->ip_counted && iplimit_count(worker_iplimit, &c->ip) > lim)
        return -1;
    return 0;
}

/* Behind a trusted proxy the client is the rightmost address of
 * X-Forwarded-For that is not itself a trusted proxy. However long the
 * header: a client that pads it must not make wsguard fall back to
 * counting it under the proxy's address. */
static void
conn_client_from_xff(struct conn *c)
{
    const struct http_request *req = &c->hs->req;
    const char *v[MAX_HEADERS];
    size_t len[MAX_HEADERS], n = 0;
    char ip[INET6_ADDRSTRLEN + 8];

    for (size_t i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        if (http_eq(h->name, h->name_len, "x-forwarded-for")) {
            v[n] = h->value;
            len[n++] = h->value_len;
        }
    }
    if (n == 0 || xff_client_v(v, len, n, c->rt->trusted, ip,
                               sizeof ip) != 0)
        return;
    struct ip_key k;
    if (ip_key_from_text(ip, strlen(ip), (unsigned)c->pol->ipv6_prefix,
                         &k) != 0)
        return;
    if (c->ip_counted) {
        /* Counted under the proxy's address (a PROXY header without
         * one): move the slot to the client it names. */
        iplimit_release(worker_iplimit, &c->ip);
        c->ip_counted = 0;
    }
    c->ip = k;
    snprintf(c->client_ip, sizeof c->client_ip, "%s", ip);
}

static char *
strcat_alloc(char *a, size_t *alen, const char *b, size_t blen)
{
    char *n = realloc(a, *alen + blen + 1);
    if (n == NULL) {
        free(a);
        return NULL;
    }
    memcpy(n + *alen, b, blen);
    *alen += blen;
    n[*alen] = '\0';
    return n;
}

static const char *
token_refusal(int r)
{
    switch (r) {
    case JWT_NO_TOKEN:
        return "token missing";
    case JWT_TWO_TOKENS:
        return "two tokens";
    default:
        return "token too large";
    }
}

/* Cut the verified token from what the backend receives: the query
 * parameter, the header, or the cookie pair or protocol entry inside its
 * one header (every other header of that name stays as it is). */
static int
conn_cut_token(struct conn *c, const struct jwt_verifier *v)
{
    struct hs *hs = c->hs;
    const struct jwt_token *t = &hs->tok;
    size_t cap;
    int n;

    switch (t->source) {
    case JWT_SRC_QUERY:
        cap = hs->req.target_len + 1;
        if ((hs->target = malloc(cap)) == NULL)
            return -1;
        n = jwt_strip(v, t, &hs->req, hs->target, cap);
        if (n < 0)
            return -1;
        hs->target_len = (size_t)n;
        return 0;
    case JWT_SRC_HEADER:
        hs->edit[t->hidx].drop = 1;
        return 0;
    case JWT_SRC_COOKIE:
    case JWT_SRC_PROTOCOL:
        /* Rebuilt with "; " or ", " between elements: at most twice the
         * length of the value. */
        cap = 2 * t->header->value_len + 2;
        if ((hs->edit_value = malloc(cap)) == NULL)
            return -1;
        n = jwt_strip(v, t, &hs->req, hs->edit_value, cap);
        if (n < 0)
            return -1;
        if (n == 0) {
            hs->edit[t->hidx].drop = 1;
        } else {
            hs->edit[t->hidx].value = hs->edit_value;
            hs->edit[t->hidx].value_len = (size_t)n;
        }
        return 0;
    default:
        return -1;
    }
}

/* [jwt]: find, verify, and keep the token away from the backend and the
 * log. Returns 0, or -1 after refusing the client. */
static int
conn_jwt(struct conn *c, const struct jwt_verifier *v)
{
    struct hs *hs = c->hs;
    char buf[8192];
    const char *why = NULL;
    struct jwt_result res;

    int r = jwt_extract(v, &hs->req, &hs->tok);
    if (r != JWT_FOUND) {
        conn_refuse(c, REF_JWT, token_refusal(r));
        return -1;
    }
    if (jwt_verify(v, hs->tok.tok, hs->tok.len, (int64_t)ev_now(c->w->loop),
                   &res, &why) != 0) {
        conn_refuse(c, REF_JWT, why);
        return -1;
    }
    c->sub = res.sub;
    res.sub = NULL;
    c->tok_exp = res.exp;
    c->tok_leeway = jwt_leeway(v);

    /* Claims for the backend; client headers with those names go (the
     * runtime's identity list, for every route). */
    int n = jwt_claim_headers(v, &res, buf, sizeof buf);
    jwt_result_free(&res);
    if (n < 0) {
        conn_refuse(c, REF_JWT, "claims too large");
        return -1;
    }
    if (n > 0) {
        hs->extra = strcat_alloc(hs->extra, &hs->extra_len, buf, (size_t)n);
        if (hs->extra == NULL) {
            conn_refuse(c, REF_INTERNAL, NULL);
            return -1;
        }
    }
    if (!c->pol->jwt_forward_token && conn_cut_token(c, v) != 0) {
        /* Never fall back to forwarding the request with the token. */
        conn_refuse(c, REF_INTERNAL, NULL);
        return -1;
    }
    return 0;
}

/*
 * Normalise the request's path (path.h) and make the request read the
 * normalised target from here on: routing, token extraction and the
 * backend request all see the path that was checked. The access log gets
 * that path and the query without any configured token parameter.
 * Returns 0, or -1 after refusing with 400.
 */
static int
conn_normalise(struct conn *c)
{
    struct hs *hs = c->hs;
    struct http_request *req = &hs->req;
    const char *q = memchr(req->target, '?', req->target_len);
    size_t plen = q ? (size_t)(q - req->target) : req->target_len;
    size_t qlen = q ? req->target_len - plen - 1 : 0;
    const char *why = NULL;
    int n;

    hs->ntarget = malloc(req->target_len + 1);
    if (hs->ntarget == NULL) {
        conn_refuse(c, REF_INTERNAL, NULL);
        return -1;
    }
    n = path_normalize(req->target, plen, hs->ntarget, plen + 1, &why);
    if (n < 0) {
        conn_refuse(c, REF_BAD_PATH, why);
        return -1;
    }
    size_t o = (size_t)n;
    if (q != NULL) {
        hs->ntarget[o++] = '?';
        memcpy(hs->ntarget + o, q + 1, qlen);
        o += qlen;
    }
    hs->ntarget[o] = '\0';
    req->target = hs->ntarget;
    req->target_len = o;
    hs->ureq.path = hs->ntarget;
    hs->ureq.path_len = (size_t)n;

    /* For the log: path, then the query without token parameters. */
    char *lp = malloc(o + 1);
    if (lp == NULL) {
        conn_refuse(c, REF_INTERNAL, NULL);
        return -1;
    }
    memcpy(lp, hs->ntarget, (size_t)n);
    lp[n] = '\0';
    if (q != NULL) {
        int m = field_query_without(hs->ntarget + n + 1, qlen,
                                    c->rt->redact, c->rt->nredact,
                                    lp + n + 1, qlen + 1);
        if (m > 0)
            lp[n] = '?';
        else
            lp[n] = '\0';
    }
    free(c->path);
    c->path = lp;
    return 0;
}

/* The complete request head is in c->hs->head[0..c->hs->head_used). Every check
 * runs here, before any backend is contacted. */
static void
conn_policy(struct conn *c)
{
    const struct config *cfg = cfg_of(c);
    const struct http_request *req = &c->hs->req;
    const char *reason = NULL;

    /* Until the path is normalised the log gets no query string. */
    size_t plen = 0;
    while (plen < req->target_len && req->target[plen] != '?')
        plen++;
    c->path = dupn(req->target, plen);
    const struct http_header *o = http_find(req->headers, req->nheaders,
                                            "origin", NULL);
    if (o)
        c->origin = dupn(o->value, o->value_len < ORIGIN_MAX
                                       ? o->value_len : ORIGIN_MAX);

    int status = upgrade_check(req, &c->hs->ureq, &reason);
    if (status != 0) {
        conn_refuse(c, refusal_for_status(status), reason);
        return;
    }
    if (conn_normalise(c) != 0)
        return;
    c->pol = config_route(cfg, c->hs->ureq.path, c->hs->ureq.path_len, &c->route);
    if (c->pol == NULL) {
        conn_refuse(c, REF_NO_ROUTE, NULL);
        return;
    }
    if (c->w->draining) {
        conn_refuse(c, REF_DRAINING, NULL);
        return;
    }
    if (cfg->max_connections &&
        atomic_load(&worker_total_conns) > cfg->max_connections) {
        conn_refuse(c, REF_MAX_CONNECTIONS, NULL);
        return;
    }
    if (c->peer_trusted && !c->addr_final)
        conn_client_from_xff(c);
    if (conn_ip_check(c) != 0) {
        conn_refuse(c, REF_IP_LIMIT, NULL);
        return;
    }
    const struct policy_rt *prt = runtime_policy(c->rt, c->pol);
    if (prt->origin != NULL) {
        if (o == NULL) {
            if (!c->pol->origin_allow_missing) {
                conn_refuse(c, REF_ORIGIN, "origin missing");
                return;
            }
        } else if (!origin_allowed(prt->origin, o->value, o->value_len)) {
            conn_refuse(c, REF_ORIGIN, "origin not allowed");
            return;
        }
    }
    if (prt->jwt != NULL && conn_jwt(c, prt->jwt) != 0)
        return;
    c->hs->be_tries = 0;
    be_connect(c);
}

static void
conn_req_read(struct conn *c)
{
    size_t cap = (size_t)cfg_of(c)->max_header_bytes;

    if (c->hs->head == NULL && (c->hs->head = malloc(cap + 1)) == NULL) {
        conn_drop(c, REF_INTERNAL, NULL);
        return;
    }
    for (int i = 0; i < READS_PER_EVENT; i++) {
        if (c->hs->head_len >= cap) {
            conn_refuse(c, REF_TOO_LARGE, NULL);
            return;
        }
        size_t last = c->hs->head_len;
        ssize_t n = side_read(&c->cli, c->hs->head + c->hs->head_len,
                              cap - c->hs->head_len);
        if (n < 0) {
            conn_drop(c, REF_CLIENT_CLOSED,
                      c->hs->head_len ? "client closed during request"
                                      : "client closed before request");
            return;
        }
        if (n == 0)
            return;
        c->hs->head_len += (size_t)n;
        c->hs->req.headers = c->hs->hdrs;
        c->hs->req.nheaders = MAX_HEADERS;
        int r = http_parse_request(c->hs->head, c->hs->head_len, last, &c->hs->req);
        if (r == HTTP_INCOMPLETE)
            continue;
        if (r == HTTP_ERROR) {
            conn_refuse(c, REF_BAD_REQUEST, "malformed request");
            return;
        }
        if (r == HTTP_TOO_MANY) {
            conn_refuse(c, REF_TOO_LARGE, "too many header lines");
            return;
        }
        c->hs->head_used = (size_t)r;
        conn_policy(c);
        return;
    }
    side_refeed(c, &c->cli, READS_PER_EVENT);
}

static void
conn_tls_handshake(struct conn *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->cli.ssl);
    if (r == 1) {
        c->cli.hs_want_wr = 0;
        conn_set_state(c, CS_REQ_READ);
        conn_req_read(c);
        return;
    }
    switch (SSL_get_error(c->cli.ssl, r)) {
    case SSL_ERROR_WANT_READ:
        c->cli.hs_want_wr = 0;
        return;
    case SSL_ERROR_WANT_WRITE:
        c->cli.hs_want_wr = 1;
        return;
    default: {
        unsigned long e = ERR_peek_error();
        if (log_enabled(LOG_DEBUG)) {
            char msg[200] = "connection closed";
            if (e)
                ERR_error_string_n(e, msg, sizeof msg);
            log_debug("TLS handshake with %s failed: %s", c->client_ip, msg);
        }
        ERR_clear_error();
        c->cli.eof = 1;
        conn_drop(c, REF_TLS, NULL);
    }
    }
}

/* After accept (and any PROXY header): TLS handshake or the request. */
static void
conn_begin(struct conn *c)
{
    if (c->cli.ssl != NULL) {
        conn_set_state(c, CS_TLS_HANDSHAKE);
        conn_tls_handshake(c);
    } else {
        conn_set_state(c, CS_REQ_READ);
        conn_req_read(c);
    }
}

#define PROXY_MAX 536           /* v2 header with TLVs; v1 is ≤ 107 */

/*
 * [server] proxy_protocol: every connection starts with a PROXY v1/v2
 * header (as with nginx's "listen ... proxy_protocol"); the address in it
 * is believed only when the peer is in trusted_proxies. The bytes are
 * peeked, and consumed only while they are certainly header bytes (an
 * incomplete header) or exactly the header's length, so the TLS
 * handshake behind it is left in the socket for OpenSSL.
 */
static void
conn_proxy_read(struct conn *c)
{
    if (c->hs->head == NULL && (c->hs->head = malloc(PROXY_MAX)) == NULL) {
        conn_drop(c, REF_INTERNAL, NULL);
        return;
    }
    ssize_t n = recv(c->cli.fd, c->hs->head + c->hs->head_len,
                     PROXY_MAX - c->hs->head_len, MSG_PEEK);
    if (n == -1 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        conn_drop(c, REF_CLIENT_CLOSED, "client closed before PROXY header");
        return;
    }
    size_t have = c->hs->head_len + (size_t)n;
    struct sockaddr_storage ss;
    int r = proxy_parse((const uint8_t *)c->hs->head, have, &ss);
    if (r == PROXY_INCOMPLETE && have < PROXY_MAX) {
        /* Everything so far belongs to the header: take it out. */
        if (recv(c->cli.fd, c->hs->head + c->hs->head_len, (size_t)n, 0) != n) {
            conn_drop(c, REF_CLIENT_CLOSED, "client closed in PROXY header");
            return;
        }
        c->hs->head_len = have;
        return;
    }
    if (r <= 0) {
        conn_drop(c, REF_PROXY, have >= PROXY_MAX && r == PROXY_INCOMPLETE
                                ? "PROXY header too large" : NULL);
        log_info("refused %s: %s", c->peer_ip, c->reason);
        return;
    }
    size_t rest = (size_t)r - c->hs->head_len;
    if (recv(c->cli.fd, c->hs->head + c->hs->head_len, rest, 0) != (ssize_t)rest) {
        conn_drop(c, REF_CLIENT_CLOSED, "client closed in PROXY header");
        return;
    }
    free(c->hs->head);
    c->hs->head = NULL;
    c->hs->head_len = 0;
    if (c->peer_trusted && ss.ss_family != AF_UNSPEC) {
        addr_text((struct sockaddr *)&ss, c->client_ip, sizeof c->client_ip);
        ip_key_from_sockaddr((struct sockaddr *)&ss,
                             (unsigned)cfg_of(c)->global.ipv6_prefix, &c->ip);
        c->addr_final = 1;
    }
    conn_ip_count(c);
    conn_begin(c);
}

/* Pick the backend for this attempt: round robin over the pool per
 * worker; a failed connect tries the next one (failover). */
static const struct backend_addr *
be_pick(struct conn *c)
{
    const struct policy *p = c->pol;
    if (p->nbackends == 0)
        return NULL;
    if (c->hs->be_tries == 0)
        c->w->be_next++;
    return &p->backends[(c->w->be_next + c->hs->be_tries) % p->nbackends];
}

static void
be_failed(struct conn *c, const char *why)
{
    side_close(c, &c->be);
    c->be.eof = 0;
    c->hs->be_tries++;
    if (c->hs->be_tries < c->pol->nbackends) {
        log_warn("backend connect failed (%s), trying the next one", why);
        be_connect(c);
        return;
    }
    conn_refuse(c, REF_BACKEND, why);
}

static void
be_connect(struct conn *c)
{
    const struct backend_addr *be = be_pick(c);
    struct sockaddr_storage ss;

    c->hs->be_addr = be;
    socklen_t sl;

    if (be == NULL || runtime_resolve(c->rt, be, &ss, &sl) != 0) {
        conn_refuse(c, REF_BACKEND, "backend address unknown");
        return;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);
    if (fd == -1) {
        conn_refuse(c, REF_BACKEND, "backend socket failed");
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->be.fd = fd;
    ev_io_set(&c->be.rd, fd, EV_READ);
    ev_io_set(&c->be.wr, fd, EV_WRITE);
    if (c->state != CS_BE_CONNECT)
        conn_set_state(c, CS_BE_CONNECT);
    if (connect(fd, (struct sockaddr *)&ss, sl) == -1 &&
        errno != EINPROGRESS) {
        be_failed(c, "backend unreachable");
        return;
    }
    /* Completion is reported by writability (be_connected). */
}

static void
be_connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(c->be.fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
        err = errno;
    if (err != 0) {
        be_failed(c, "backend unreachable");
        return;
    }
    const struct backend_addr *be = c->hs->be_addr;
    struct upgrade_fwd f = {0};
    upgrade_new_key(c->hs->be_key);
    f.backend = be;
    f.target = c->hs->target ? c->hs->target : c->hs->req.target;
    f.target_len = c->hs->target ? c->hs->target_len : c->hs->req.target_len;
    f.client_ip = c->peer_ip;
    f.real_ip = c->client_ip;
    f.client_tls = c->cli.ssl != NULL;
    f.add_forwarded = c->pol->forwarded_headers;
    f.trusted_peer = c->peer_trusted;
    f.key = c->hs->be_key;
    f.drop = c->rt->identity;
    f.ndrop = c->rt->nidentity;
    f.edit = c->hs->edit;
    f.allow_underscore = cfg_of(c)->allow_underscore_headers;
    f.extra = c->hs->extra;
    f.extra_len = c->hs->extra_len;
    size_t cap = c->hs->head_used + c->hs->extra_len + c->hs->ureq.host_len + 2048 +
                 strlen(be->path_prefix);
    free(c->hs->out);
    c->hs->out = malloc(cap);
    int n = c->hs->out ? upgrade_backend_request(c->hs->out, cap, &c->hs->req, &f) : -1;
    if (n < 0) {
        conn_refuse(c, REF_BACKEND, "backend request too large");
        return;
    }
    c->hs->out_len = (size_t)n;
    c->hs->out_off = 0;
    conn_set_state(c, CS_BE_SEND);
    int r = out_flush(c, &c->be);
    if (r < 0)
        be_failed(c, "backend write failed");
    else if (r == 1)
        conn_set_state(c, CS_BE_READ);
}

static void
be_read_response(struct conn *c)
{
    if (c->hs->bhead == NULL && (c->hs->bhead = malloc(BE_HEAD_MAX)) == NULL) {
        conn_refuse(c, REF_INTERNAL, NULL);
        return;
    }
    size_t last = c->hs->bhead_len;
    ssize_t n = side_read(&c->be, c->hs->bhead + c->hs->bhead_len,
                          BE_HEAD_MAX - c->hs->bhead_len);
    if (n == 0)
        return;
    if (n < 0) {
        conn_refuse(c, REF_BACKEND, "backend closed during upgrade");
        return;
    }
    c->hs->bhead_len += (size_t)n;

    struct http_header h[MAX_HEADERS];
    struct http_response resp = {.headers = h, .nheaders = MAX_HEADERS};
    int r = http_parse_response(c->hs->bhead, c->hs->bhead_len, last, &resp);
    if (r == HTTP_INCOMPLETE) {
        if (c->hs->bhead_len == BE_HEAD_MAX)
            conn_refuse(c, REF_BACKEND, "backend response head too large");
        return;
    }
    if (r < 0) {
        conn_refuse(c, REF_BACKEND, "backend sent a malformed response");
        return;
    }
    const char *proto = NULL, *reason = NULL;
    size_t proto_len = 0;
    if (resp.status != 101) {
        /* The application's own refusal (401, 403, 404 ...) is passed on
         * by status; its body and headers are not. */
        int st = resp.status >= 400 && resp.status <= 499 ? resp.status : 502;
        conn_refuse_status(c, REF_BACKEND, st, "backend refused the upgrade");
        return;
    }
    if (upgrade_check_response(&resp, c->hs->be_key, &c->hs->req, &proto, &proto_len,
                               &reason) != 0) {
        conn_refuse(c, REF_BACKEND, reason ? reason : "invalid 101 from backend");
        return;
    }
    /* Bytes after the 101 head are the backend's first frames. */
    size_t extra = c->hs->bhead_len - (size_t)r;
    if (extra > 0) {
        c->down.b = worker_buf_get(c->w);
        if (c->down.b == NULL || extra > BUF_SIZE) {
            conn_refuse(c, REF_BACKEND, "backend sent too much early data");
            return;
        }
        memcpy(c->down.b->data, c->hs->bhead + r, extra);
        c->down.b->last = (uint32_t)extra;
    }
    char key[UPGRADE_KEY_LEN + 1];
    memcpy(key, c->hs->ureq.key, UPGRADE_KEY_LEN);
    key[UPGRADE_KEY_LEN] = '\0';
    if (proto == NULL && c->hs->tok.source == JWT_SRC_PROTOCOL &&
        !c->pol->jwt_forward_token) {
        /* Browsers fail a handshake that answers none of the protocols
         * they offered; the token entry is the one we can answer. */
        proto = c->hs->tok.entry;
        proto_len = c->hs->tok.entry_len;
    }
    /* The echoed token entry can be as long as max_token_bytes. */
    size_t cap = 256 + proto_len;
    free(c->hs->out);
    if ((c->hs->out = malloc(cap)) == NULL) {
        conn_refuse(c, REF_INTERNAL, NULL);
        return;
    }
    int m = upgrade_client_response(c->hs->out, cap, key, proto, proto_len);
    if (m <= 0) {
        conn_refuse(c, REF_BACKEND, "invalid subprotocol");
        return;
    }
    c->hs->out_len = (size_t)m;
    c->hs->out_off = 0;
    conn_set_state(c, CS_CLI_101);
    int w = out_flush(c, &c->cli);
    if (w < 0) {
        conn_drop(c, REF_CLIENT_CLOSED, "client gone before 101");
    } else if (w == 1) {
        relay_start(c);
    }
}

/* ------------------------------------------------------------------ */
/* Relay                                                               */












/* Write what d holds for its destination. */

/* Write what d holds for its destination: validated bytes first, then
 * wsguard's own frames, but only where a frame may start. */









/* ------------------------------------------------------------------ */
/* Watchers                                                            */

static void
side_watch(struct conn *c, struct side *s, int rd, int wr)
{
    struct ev_loop *loop = c->w->loop;
    if (s->fd == -1)
        return;
    int was_rd = ev_is_active(&s->rd);
    io_set(loop, &s->rd, rd);
    io_set(loop, &s->wr, wr);
    /* OpenSSL may hold bytes (decrypted, or records read ahead) that
     * the socket will never announce again: once reading is possible
     * again after a stop (watcher off, or a full buffer), look. */
    if (rd && (!was_rd || s->full_stop) && s->ssl && SSL_has_pending(s->ssl))
        ev_feed_event(loop, &s->rd, EV_READ);
    if (rd)
        s->full_stop = 0;
}

static void
conn_watch(struct conn *c)
{
    switch (c->state) {
    case CS_PROXY:
        side_watch(c, &c->cli, 1, 0);
        break;
    case CS_TLS_HANDSHAKE:
        side_watch(c, &c->cli, !c->cli.hs_want_wr, c->cli.hs_want_wr);
        break;
    case CS_REQ_READ:
        side_watch(c, &c->cli, 1, c->cli.rd_wants_wr);
        break;
    case CS_BE_CONNECT:
        side_watch(c, &c->cli, 0, 0);
        side_watch(c, &c->be, 0, 1);
        break;
    case CS_BE_SEND:
        side_watch(c, &c->be, 0, 1);
        break;
    case CS_BE_READ:
        side_watch(c, &c->be, 1, 0);
        break;
    case CS_CLI_101:
        side_watch(c, &c->be, 0, 0);
        side_watch(c, &c->cli, c->cli.wr_wants_rd, 1);
        break;
    case CS_REFUSING:
        side_watch(c, &c->be, 0, 0);
        if (c->lingering)
            side_watch(c, &c->cli, 1, c->cli.rd_wants_wr);
        else
            side_watch(c, &c->cli, c->cli.wr_wants_rd, 1);
        break;
    case CS_RELAY:
    case CS_CLOSING: {
        struct side *sides[2] = {&c->cli, &c->be};
        for (int i = 0; i < 2; i++) {
            struct side *s = sides[i];
            struct dir *in = s == &c->cli ? &c->up : &c->down;
            struct dir *out = s == &c->cli ? &c->down : &c->up;
            int pending = dir_pending(out);
            int rd = (dir_room(in) && !s->eof) || s->wr_wants_rd;
            int wr = (pending && s->wblocked) || s->rd_wants_wr;
            side_watch(c, s, rd, wr);
        }
        break;
    }
    }
}

void
conn_settle(struct conn *c)
{
    if (!c->dead && (c->state == CS_RELAY || c->state == CS_CLOSING))
        relay_settle(c);
    if (c->dead) {
        conn_free(c);
        return;
    }
    conn_watch(c);
}

static void
conn_io(struct conn *c, struct side *s, int revents)
{
    switch (c->state) {
    case CS_PROXY:
        conn_proxy_read(c);
        break;
    case CS_TLS_HANDSHAKE:
        conn_tls_handshake(c);
        break;
    case CS_REQ_READ:
        conn_req_read(c);
        break;
    case CS_BE_CONNECT:
        be_connected(c);
        break;
    case CS_BE_SEND: {
        int r = out_flush(c, &c->be);
        if (r < 0)
            be_failed(c, "backend write failed");
        else if (r == 1)
            conn_set_state(c, CS_BE_READ);
        break;
    }
    case CS_BE_READ:
        be_read_response(c);
        break;
    case CS_CLI_101: {
        int r = out_flush(c, &c->cli);
        if (r < 0) {
            conn_drop(c, REF_CLIENT_CLOSED, "client gone before 101");
        } else if (r == 1) {
            relay_start(c);
        }
        break;
    }
    case CS_REFUSING:
        conn_refusing_io(c);
        break;
    case CS_RELAY:
    case CS_CLOSING:
        relay_io(c, s, revents);
        break;
    }
}

static void
cli_rd_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct conn *c = (struct conn *)((char *)io - offsetof(struct conn, cli.rd));
    conn_io(c, &c->cli, EV_READ);
    conn_settle(c);
}

static void
cli_wr_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct conn *c = (struct conn *)((char *)io - offsetof(struct conn, cli.wr));
    conn_io(c, &c->cli, EV_WRITE);
    conn_settle(c);
}

static void
be_rd_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct conn *c = (struct conn *)((char *)io - offsetof(struct conn, be.rd));
    conn_io(c, &c->be, EV_READ);
    conn_settle(c);
}

static void
be_wr_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct conn *c = (struct conn *)((char *)io - offsetof(struct conn, be.wr));
    conn_io(c, &c->be, EV_WRITE);
    conn_settle(c);
}

static void
timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct conn *c = (struct conn *)((char *)t - offsetof(struct conn, timer));
    conn_timeout(c);
    conn_settle(c);
}

/* ------------------------------------------------------------------ */

static void
addr_text(const struct sockaddr *sa, char *out, size_t cap)
{
    out[0] = '\0';
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out,
                  (socklen_t)cap);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
            inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], out,
                      (socklen_t)cap);
        else
            inet_ntop(AF_INET6, &s6->sin6_addr, out, (socklen_t)cap);
    }
}

void
conn_accept(struct worker *w, int fd, const struct sockaddr *sa,
            socklen_t salen)
{
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return;
    }
    c->w = w;
    c->hs = calloc(1, sizeof *c->hs);
    if (c->hs == NULL) {
        free(c);
        close(fd);
        return;
    }
    c->rt = runtime_ref(w->rt);
    c->ref = REF_CLIENT_CLOSED;     /* until something else ends it */
    c->started = c->last_activity = ev_now(w->loop);
    c->cli.fd = fd;
    c->be.fd = -1;
    addr_text(sa, c->client_ip, sizeof c->client_ip);
    memcpy(c->peer_ip, c->client_ip, sizeof c->peer_ip);
    (void)salen;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ev_io_init(&c->cli.rd, cli_rd_cb, fd, EV_READ);
    ev_io_init(&c->cli.wr, cli_wr_cb, fd, EV_WRITE);
    ev_io_init(&c->be.rd, be_rd_cb, -1, EV_READ);
    ev_io_init(&c->be.wr, be_wr_cb, -1, EV_WRITE);
    ev_init(&c->timer, timer_cb);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    atomic_fetch_add(&worker_total_conns, 1);
    atomic_fetch_add(&w->st.accepted, 1);
    atomic_fetch_add(&w->st.active, 1);

    const struct config *cfg = cfg_of(c);
    ip_key_from_sockaddr(sa, (unsigned)cfg->global.ipv6_prefix, &c->ip);
    if (c->rt->trusted != NULL) {
        /* Trust is decided on the exact peer address, never a prefix. */
        struct ip_key exact;
        ip_key_from_sockaddr(sa, 128, &exact);
        c->peer_trusted = cidr_contains(c->rt->trusted, &exact) != 0;
    }
    /* A direct client is counted from accept; a trusted proxy's
     * connection once the client behind it is known. */
    if (!c->peer_trusted)
        conn_ip_count(c);
    if (c->rt->tls != NULL) {
        c->cli.ssl = SSL_new(c->rt->tls);
        if (c->cli.ssl == NULL || SSL_set_fd(c->cli.ssl, fd) != 1) {
            conn_drop(c, REF_INTERNAL, NULL);
            conn_free(c);
            return;
        }
        SSL_set_accept_state(c->cli.ssl);
    }
    if (cfg->proxy_protocol)
        conn_set_state(c, CS_PROXY);
    else
        conn_begin(c);
    conn_settle(c);
}

void
conn_drain_all(struct worker *w)
{
    struct conn *c = w->conns;
    while (c != NULL) {
        struct conn *next = c->next;
        if (c->state == CS_RELAY) {
            relay_fail(c, WS_CLOSE_GOING_AWAY, WS_CLOSE_GOING_AWAY,
                       "draining", "wsguard");
            conn_settle(c);
        }
        c = next;
    }
}
