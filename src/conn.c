/*
 * conn.c - the connection's state machine: from accept, through the TLS
 * handshake, the request, the checks (policy.c) and the backend's
 * upgrade, to the relay (relay.c) and the end.
 *
 *   accept -> [PROXY] -> TLS_HANDSHAKE -> REQ_READ -> checks -> BE_CONNECT
 *   -> BE_SEND -> BE_READ -> CLI_101 -> RELAY -> CLOSING -> (freed)
 *   checks may park the connection in WAIT until an answer comes;
 *   any refusal before the client's 101 -> REFUSING -> (freed)
 *
 * Layers call downward only: this file drives relay.c, policy.c and the
 * transport (side.c); they report back through return values. This is
 * the only code that sets a connection's state (conn_set_state) or frees
 * it. A handler never frees: it marks the connection dead, and every
 * libev callback ends in conn_settle(), which frees it once both sides
 * are closed. The counters it holds (the per-IP slot, the connection
 * count) are released in conn_free() only, keyed by flags.
 */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "await.h"
#include "cluster.h"
#include "log.h"
#include "units.h"
#include "policy.h"
#include "relay.h"
#include "revoke.h"
#include "runtime.h"
#include "side.h"
#include "tls.h"
#include "upgrade.h"
#include "worker.h"

enum conn_state {
    CS_PROXY = 0,               /* reading a PROXY protocol header */
    CS_TLS_HANDSHAKE,
    CS_REQ_READ,
    CS_WAIT,                    /* a check waits for an answer */
    CS_BE_CONNECT,
    CS_BE_SEND,
    CS_BE_READ,
    CS_CLI_101,
    CS_RELAY,
    CS_CLOSING,
    CS_REFUSING
};

static const char *const state_names[] = {
    "PROXY", "TLS_HANDSHAKE", "REQ_READ", "WAIT", "BE_CONNECT", "BE_SEND",
    "BE_READ", "CLI_101", "RELAY", "CLOSING", "REFUSING"
};

#define BE_HEAD_MAX 8192        /* backend's 101 head */
#define READS_PER_EVENT 8       /* fairness between connections */
#define LINGER_TIME 2.0         /* s: reading after a refusal */

/*
 * What only the handshake needs (the request head, the checks' results,
 * the backend's answer): one allocation at accept, freed when the relay
 * starts, so an idle session keeps none of it.
 */
struct hs {
    char *head;                 /* client request head (or PROXY header) */
    size_t head_len;
    size_t head_used;           /* length of the parsed head */
    struct checks k;
    char be_key[UPGRADE_KEY_LEN + 1];
    char *out;                  /* bytes being written (request/101/refusal) */
    size_t out_len, out_off;
    char *bhead;                /* backend response head */
    size_t bhead_len;
    unsigned be_tries;
    const struct backend_addr *be_addr;
    double be_started;          /* this connect attempt began */
    struct pmd_params pmd;      /* permessage-deflate, as agreed (the
                                   relay keeps them in its compressors) */
    struct relay_z *z;          /* memory for its state, had before the
                                   101 so that a lack of it is a 500;
                                   the relay takes it */
};

struct conn {
    struct worker *w;
    struct runtime *rt;         /* reference held */
    const struct policy *pol;   /* in rt->cfg, chosen by route */
    const char *route;
    struct conn *prev, *next;   /* worker's list */
    enum conn_state state;
    unsigned dead : 1;
    unsigned relayed : 1;       /* reached RELAY */
    unsigned logged : 1;
    unsigned parked : 1;        /* holds wait in the worker's table */
    unsigned packed : 1;        /* path..jti share one allocation, which
                                   starts at the first that is set */
    struct side cli, be;
    ev_timer timer;
    double started, phase_start;
    struct client cl;
    struct hs *hs;              /* handshake state; NULL once relaying */
    struct relay r;             /* the relay, from CLI_101 on */
    struct await_ref wait;      /* while parked */
    struct route_stat *rstat;   /* its route's counters, while relaying */

    /* For the access log. */
    enum refusal ref;           /* why it ended before the relay */
    int status;                 /* refusal status */
    const char *reason;
    const char *tls_version;
    char *path;                 /* normalised path, token parameters cut */
    char *origin;
    char *sub;
    char *jti;                  /* for revocation */
    int pmd_neg;                /* pmd_negotiate(): > 0 agreed,
                                   PMD_NEG_NONE, PMD_NEG_MALFORMED */
};

static void conn_refuse(struct conn *c, enum refusal kind,
                        const char *reason);
static void conn_checks(struct conn *c);
static void conn_ask_shared(struct conn *c);
static int conn_revoked(const struct conn *c, const struct revocation *rv);
static void be_connect(struct conn *c);
static void conn_req_read(struct conn *c);
static void conn_tls_handshake(struct conn *c);
static void conn_send_101(struct conn *c);
static void conn_settle(struct conn *c);


static double
now_of(const struct conn *c)
{
    return ev_now(c->w->loop);
}

static const struct config *
cfg_of(const struct conn *c)
{
    return c->rt->cfg;
}

static void
hs_free(struct hs *h)
{
    if (h == NULL)
        return;
    checks_free(&h->k);
    free(h->z);
    free(h->head);
    free(h->out);
    free(h->bhead);
    free(h);
}

/* ------------------------------------------------------------------ */
/* State, timer                                                        */

static void conn_timer_arm(struct conn *c);

static void
conn_set_state(struct conn *c, enum conn_state s)
{
    if (log_enabled(LOG_DEBUG))
        log_debug("conn %s: %s -> %s", c->cl.ip, state_names[c->state],
                  state_names[s]);
    c->state = s;
    c->phase_start = now_of(c);
    conn_timer_arm(c);
}

/* The one deadline of the current phase (libev's "strategy #3": activity
 * only stores a time stamp; the timer re-arms itself from it when it
 * fires). Returns 0 when no deadline applies. */
static double
conn_deadline(const struct conn *c)
{
    const struct config *cfg = cfg_of(c);

    switch (c->state) {
    case CS_PROXY:
    case CS_TLS_HANDSHAKE:
    case CS_REQ_READ:
    case CS_WAIT:
        return c->started + units_seconds(cfg->handshake_timeout_ms);
    case CS_REFUSING:
        return c->phase_start + LINGER_TIME;
    case CS_BE_CONNECT:
    case CS_BE_SEND:
    case CS_BE_READ:
        return c->phase_start + units_seconds(c->pol->connect_timeout_ms);
    case CS_CLI_101:
        return c->started + units_seconds(cfg->handshake_timeout_ms) +
               units_seconds(c->pol->connect_timeout_ms);
    case CS_RELAY:
    case CS_CLOSING:
        return relay_deadline(&c->r);
    }
    return 0;
}

static void
conn_timer_arm(struct conn *c)
{
    double d = conn_deadline(c);

    ev_timer_stop(c->w->loop, &c->timer);
    if (d == 0)
        return;
    double after = d - now_of(c);
    ev_timer_set(&c->timer, after > 0 ? after : 0, 0);
    ev_timer_start(c->w->loop, &c->timer);
}

/* Act on what the relay reported. */
static void
conn_relay_events(struct conn *c, unsigned ev)
{
    if ((ev & RELAY_CLOSING) && c->state == CS_RELAY)
        conn_set_state(c, CS_CLOSING);
    else if (ev & RELAY_REARM)
        conn_timer_arm(c);
    if (ev & RELAY_DONE)
        c->dead = 1;
}

/* ------------------------------------------------------------------ */
/* Teardown                                                            */

static void
conn_log(struct conn *c)
{
    struct access_rec rec = {0};
    char reason[RELAY_REASON_MAX];

    if (c->logged)
        return;
    c->logged = 1;
    /* Every connection that ends before the relay is counted here, once,
     * under the kind that ended it. */
    if (!c->relayed)
        stats_add(&c->w->st.rejected[c->ref], 1);
    rec.event = c->relayed ? "session" : "reject";
    rec.client_ip = c->cl.ip;
    rec.route = c->route;
    rec.path = c->path;
    rec.path_len = c->path ? strlen(c->path) : 0;
    rec.origin = c->origin;
    rec.origin_len = c->origin ? strlen(c->origin) : 0;
    rec.sub = c->sub;
    rec.status = c->relayed ? 0 : c->status;
    rec.close_code = c->relayed ? c->r.close_code : 0;
    rec.closed_by = c->relayed ? c->r.closed_by : NULL;
    rec.reason = c->relayed ? relay_reason(&c->r, reason, sizeof reason)
                            : c->reason;
    rec.bytes_in = c->r.up.bytes;
    rec.bytes_out = c->r.down.bytes;
    rec.msgs_in = c->r.up.msgs;
    rec.msgs_out = c->r.down.msgs;
    rec.duration_ms = (uint64_t)((now_of(c) - c->started) * 1000);
    rec.tls_version = c->tls_version;
    char dfl[96];
    if (c->relayed && c->r.z != NULL) {
        /* What was agreed, compactly: windows, then the takeovers given
         * up. wsguard deflates with the server's parameters and inflates
         * with the client's. */
        snprintf(dfl, sizeof dfl, "server_bits=%u client_bits=%u%s%s",
                 c->r.z->out.bits, c->r.z->in.bits,
                 c->r.z->out.no_takeover ? " server_no_context_takeover" : "",
                 c->r.z->in.no_takeover ? " client_no_context_takeover" : "");
        rec.deflate = dfl;
    } else if (c->relayed && c->pmd_neg == PMD_NEG_MALFORMED) {
        rec.deflate = "malformed offer";
    }
    log_access(&rec);
    if (c->relayed && c->r.closed_by != NULL) {
        int by = strcmp(c->r.closed_by, "client") == 0    ? BY_CLIENT
                 : strcmp(c->r.closed_by, "backend") == 0 ? BY_BACKEND
                                                          : BY_WSGUARD;
        stats_add(&c->w->st.closes[stats_close_index(c->r.close_code)][by],
                  1);
    }
}

static void
conn_free_log_fields(struct conn *c)
{
    char **f[] = { &c->path, &c->origin, &c->sub, &c->jti };
    int first = 1;

    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (*f[i] != NULL && (!c->packed || first)) {
            free(*f[i]);
            first = 0;
        }
        *f[i] = NULL;
    }
    c->packed = 0;
}

/* The log fields the checks produced outlive the handshake state. A
 * session keeps them to its end, in one allocation (pack): four small
 * ones would cost four malloc headers each time. Without memory for it,
 * or for a connection that is ending anyway, they are kept as they are.
 * They replace the ones kept before, if k has any. */
static void
conn_keep_log_fields(struct conn *c, int pack)
{
    struct checks *k = &c->hs->k;
    char **from[] = { &k->log_path, &k->origin, &k->sub, &k->jti };
    char **to[] = { &c->path, &c->origin, &c->sub, &c->jti };
    size_t len[sizeof from / sizeof from[0]], total = 0;
    char *p;

    for (size_t i = 0; i < sizeof from / sizeof from[0]; i++) {
        len[i] = *from[i] != NULL ? strlen(*from[i]) + 1 : 0;
        total += len[i];
    }
    if (total == 0)
        return;                 /* (kept already) */
    conn_free_log_fields(c);
    p = pack ? malloc(total) : NULL;
    c->packed = p != NULL;
    for (size_t i = 0; i < sizeof from / sizeof from[0]; i++) {
        if (*from[i] == NULL)
            continue;
        if (p != NULL) {
            *to[i] = memcpy(p, *from[i], len[i]);
            p += len[i];
            free(*from[i]);
        } else {
            *to[i] = *from[i];
        }
        *from[i] = NULL;
    }
}

static void
conn_free(struct conn *c)
{
    struct worker *w = c->w;

    if (c->hs != NULL)
        conn_keep_log_fields(c, 0);
    conn_log(c);
    side_close(&c->cli);
    side_close(&c->be);
    ev_timer_stop(w->loop, &c->timer);
    if (c->parked)
        await_cancel(&w->waits, c->wait);
    relay_release(&c->r);
    if (c->rstat != NULL)
        stats_sub(&c->rstat->active, 1);
    hs_free(c->hs);
    c->hs = NULL;
    conn_free_log_fields(c);
    if (c->cl.shared)
        cluster_release(&w->cw, &c->cl.key);
    client_release(&c->cl);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nconns--;
    atomic_fetch_sub(&runtime_conns, 1);
    stats_sub(&w->st.active, 1);
    runtime_unref(c->rt);
    free(c);
}

/* ------------------------------------------------------------------ */
/* Handshake phase                                                     */

/* Write c->hs->out to side s. Returns 1 when all is written, 0 when
 * blocked, -1 on error. */
static int
out_flush(struct conn *c, struct side *s)
{
    struct hs *h = c->hs;
    size_t n;

    while (h->out_off < h->out_len) {
        switch (side_write(s, h->out + h->out_off, h->out_len - h->out_off,
                           &n)) {
        case IO_OK:
            h->out_off += n;
            break;
        case IO_AGAIN:
            return 0;
        default:
            return -1;
        }
    }
    s->wblocked = 0;
    return 1;
}

/* Read and drop what the side sends until it closes. Returns 1 at its
 * EOF (or error), 0 when nothing is left to read now. */
static int
drain_input(struct side *s)
{
    char sink[4096];
    size_t n;
    int i;

    for (i = 0; i < READS_PER_EVENT; i++) {
        enum io_result r = side_read(s, sink, sizeof sink, &n);
        if (r == IO_EOF || r == IO_ERR)
            return 1;
        if (r == IO_AGAIN)
            return 0;
    }
    side_refeed(s);
    return 0;
}

/* After the refusal is written: shut our end, then read and drop what the
 * client still sends until it closes (bounded by a short deadline).
 * Closing a socket with unread input makes the kernel send a reset,
 * which can destroy the response before the client reads it (nginx's
 * "lingering close"). */
static void
conn_refusing_io(struct conn *c)
{
    if (!c->cli.shut) {
        int r = out_flush(c, &c->cli);
        if (r < 0) {
            c->dead = 1;
            return;
        }
        if (r == 0)
            return;
        side_shutdown(&c->cli);
    }
    if (drain_input(&c->cli))
        c->dead = 1;
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
    log_info("refused %s: %d %s", c->cl.ip, status, c->reason);
    side_close(&c->be);
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

/* The head is complete: run the checks, from the first step. */
static void
conn_checks(struct conn *c)
{
    struct checks *k = &c->hs->k;

    k->rt = c->rt;
    k->cl = &c->cl;
    k->draining = c->w->draining;
    k->shared = c->w->cluster != NULL;
    k->fail_closed = k->shared && c->w->cluster->fail_closed;
    switch (checks_run(k, now_of(c))) {
    case CHECK_PASS:
        c->pol = k->route.pol;
        c->route = k->route.name;
        c->hs->be_tries = 0;
        be_connect(c);
        break;
    case CHECK_REFUSE:
        if (k->route.pol != NULL) {
            c->pol = k->route.pol;
            c->route = k->route.name;
        }
        conn_refuse(c, k->ref, k->reason);
        break;
    case CHECK_WAIT:
        /* Parked: the timer still bounds the wait, and an answer that
         * comes after the connection is gone resolves to nothing. */
        if (await_park(&c->w->waits, c, &c->wait) != 0) {
            conn_refuse(c, REF_INTERNAL, NULL);
            break;
        }
        c->parked = 1;
        conn_set_state(c, CS_WAIT);
        if (k->step == STEP_SHARED)
            conn_ask_shared(c);
        break;
    }
}

/* The fleet-wide count's answer is in: a slot that is not kept is given
 * back at once, one that is kept at the connection's end. */
static void
conn_take_shared(struct conn *c, enum shared_answer a)
{
    struct checks *k = &c->hs->k;

    if (a == SHARED_OK || (a == SHARED_DOWN && !k->fail_closed))
        c->cl.shared = 1;
    else if (a != SHARED_FAIL)
        cluster_forget(&c->w->cw, &c->cl.key);
    k->shared_answer = a;
}

/* Parked at STEP_SHARED: ask Redis; when it cannot be asked now, the
 * answer is known at once (on_error decides). */
static void
conn_ask_shared(struct conn *c)
{
    struct worker *w = c->w;
    int r = cluster_acquire(&w->cw, &c->cl.key, c->hs->k.shared_limit,
                            await_pack(c->wait));

    if (r == 0)
        return;
    await_resolve(&w->waits, c->wait);
    c->parked = 0;
    conn_take_shared(c, r == -1 ? SHARED_DOWN : SHARED_FAIL);
    conn_checks(c);
}

int
conn_answer_shared(struct worker *w, uintptr_t ref, enum shared_answer a)
{
    struct conn *c = await_resolve(&w->waits, await_unpack(ref));

    if (c == NULL)
        return 0;               /* it went away meanwhile */
    c->parked = 0;
    c->hs->k.draining = w->draining;
    conn_take_shared(c, a);
    conn_checks(c);
    conn_settle(c);
    return 1;
}

static void
conn_req_read(struct conn *c)
{
    struct hs *h = c->hs;
    size_t cap = (size_t)cfg_of(c)->max_header_bytes;

    if (h->head == NULL && (h->head = malloc(cap + 1)) == NULL) {
        conn_drop(c, REF_INTERNAL, NULL);
        return;
    }
    for (int i = 0; i < READS_PER_EVENT; i++) {
        size_t last = h->head_len, n;

        if (h->head_len >= cap) {
            conn_refuse(c, REF_TOO_LARGE, NULL);
            return;
        }
        switch (side_read(&c->cli, h->head + h->head_len, cap - h->head_len,
                          &n)) {
        case IO_OK:
            break;
        case IO_AGAIN:
            return;
        default:
            conn_drop(c, REF_CLIENT_CLOSED,
                      h->head_len ? "client closed during request"
                                  : "client closed before request");
            return;
        }
        h->head_len += n;
        h->k.req.headers = h->k.hdrs;
        h->k.req.nheaders = MAX_HEADERS;
        int r = http_parse_request(h->head, h->head_len, last, &h->k.req);
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
        h->head_used = (size_t)r;
        conn_checks(c);
        return;
    }
    side_refeed(&c->cli);
}

/* [tls] forward_client_cert: the verified client certificate's identity
 * as a header line for the backend. It opens the extra lines, to which
 * the checks append claim headers; client-sent copies of the name are
 * removed on every route (rt->identity). No certificate (client_verify =
 * optional): no line. */
static int
conn_client_cert(struct conn *c)
{
    const char *name = cfg_of(c)->tls_forward_client_cert;
    struct checks *k = &c->hs->k;
    char v[TLS_IDENTITY_MAX + 1];

    if (name == NULL || name[0] == '\0')
        return 0;
    int n = side_peer_identity(&c->cli, v, sizeof v);
    if (n <= 0)
        return 0;
    size_t cap = strlen(name) + (size_t)n + 5;
    free(k->extra);
    k->extra_len = 0;
    if ((k->extra = malloc(cap)) == NULL)
        return -1;
    k->extra_len = (size_t)snprintf(k->extra, cap, "%s: %s\r\n", name, v);
    return 0;
}

static void
conn_tls_handshake(struct conn *c)
{
    char why[200];

    switch (side_handshake(&c->cli, why, sizeof why)) {
    case IO_OK:
        c->tls_version = side_tls_version(&c->cli);
        if (conn_client_cert(c) != 0) {
            conn_drop(c, REF_INTERNAL, NULL);
            break;
        }
        conn_set_state(c, CS_REQ_READ);
        conn_req_read(c);
        break;
    case IO_AGAIN:
        break;
    default:
        log_debug("TLS handshake with %s failed: %s", c->cl.ip, why);
        /* A client certificate missing or refused under client_verify
         * gets its own reason in the log (the client only sees the
         * TLS alert). */
        conn_drop(c, REF_TLS, c->cli.hs_fail);
        break;
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
    struct hs *h = c->hs;

    if (h->head == NULL && (h->head = malloc(PROXY_MAX)) == NULL) {
        conn_drop(c, REF_INTERNAL, NULL);
        return;
    }
    ssize_t n = recv(c->cli.fd, h->head + h->head_len,
                     PROXY_MAX - h->head_len, MSG_PEEK);
    if (n == -1 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        conn_drop(c, REF_CLIENT_CLOSED, "client closed before PROXY header");
        return;
    }
    size_t have = h->head_len + (size_t)n;
    struct sockaddr_storage ss;
    int r = proxy_parse((const uint8_t *)h->head, have, &ss);
    if (r == PROXY_INCOMPLETE && have < PROXY_MAX) {
        /* Everything so far belongs to the header: take it out. */
        if (recv(c->cli.fd, h->head + h->head_len, (size_t)n, 0) != n) {
            conn_drop(c, REF_CLIENT_CLOSED, "client closed in PROXY header");
            return;
        }
        h->head_len = have;
        return;
    }
    if (r <= 0) {
        conn_drop(c, REF_PROXY, have >= PROXY_MAX && r == PROXY_INCOMPLETE
                                ? "PROXY header too large" : NULL);
        log_info("refused %s: %s", c->cl.peer, c->reason);
        return;
    }
    size_t rest = (size_t)r - h->head_len;
    if (recv(c->cli.fd, h->head + h->head_len, rest, 0) != (ssize_t)rest) {
        conn_drop(c, REF_CLIENT_CLOSED, "client closed in PROXY header");
        return;
    }
    free(h->head);
    h->head = NULL;
    h->head_len = 0;
    if (c->cl.trusted && ss.ss_family != AF_UNSPEC) {
        addr_text((struct sockaddr *)&ss, c->cl.ip, sizeof c->cl.ip);
        ip_key_from_sockaddr((struct sockaddr *)&ss,
                             (unsigned)cfg_of(c)->global.ipv6_prefix,
                             &c->cl.key);
        c->cl.final = 1;
    }
    client_count(&c->cl, c->rt);
    conn_begin(c);
}

/* ------------------------------------------------------------------ */
/* The backend's upgrade                                               */

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

/* This attempt failed (err: the errno, or 0): say which backend and why,
 * then try the next one of the pool, or refuse with 502. */
static void
be_failed(struct conn *c, const char *why, int err)
{
    const char *url = c->hs->be_addr != NULL ? c->hs->be_addr->url : "?";

    if (c->hs->be_addr != NULL)
        runtime_backend_result(c->rt, c->hs->be_addr, err ? err : EIO);
    side_close(&c->be);
    c->be.eof = 0;
    c->hs->be_tries++;
    if (c->hs->be_tries < c->pol->nbackends) {
        log_warn("backend %s: %s%s%s; trying the next one", url, why,
                 err ? ": " : "", err ? strerror(err) : "");
        be_connect(c);
        return;
    }
    log_warn("backend %s: %s%s%s", url, why, err ? ": " : "",
             err ? strerror(err) : "");
    conn_refuse(c, REF_BACKEND, why);
}

/* Send (the rest of) the backend's request. */
static void
be_send(struct conn *c)
{
    int r = out_flush(c, &c->be);
    if (r < 0)
        be_failed(c, "backend write failed", 0);
    else if (r == 1)
        conn_set_state(c, CS_BE_READ);
}

/* The connection to the backend is up: count it. */
static void
be_up(struct conn *c)
{
    stats_observe(&c->w->st.be_connect, ev_time() - c->hs->be_started);
    runtime_backend_result(c->rt, c->hs->be_addr, 0);
}

/* Build the backend's upgrade request in c->hs->out. Returns 0, or -1
 * when the client was refused. */
static int
be_request(struct conn *c)
{
    struct hs *h = c->hs;
    struct checks *k = &h->k;
    const struct backend_addr *be = h->be_addr;
    struct upgrade_fwd f = {0};
    upgrade_new_key(&c->w->rnd, h->be_key);
    f.backend = be;
    f.target = k->target ? k->target : k->req.target;
    f.target_len = k->target ? k->target_len : k->req.target_len;
    f.client_ip = c->cl.peer;
    f.real_ip = c->cl.ip;
    f.client_tls = c->cli.ssl != NULL;
    f.add_forwarded = c->pol->forwarded_headers;
    f.trusted_peer = c->cl.trusted;
    f.key = h->be_key;
    f.drop = c->rt->identity;
    f.ndrop = c->rt->nidentity;
    f.edit = k->edit;
    f.allow_underscore = cfg_of(c)->allow_underscore_headers;
    f.extra = k->extra;
    f.extra_len = k->extra_len;
    size_t cap = h->head_used + k->extra_len + k->ureq.host_len + 2048 +
                 strlen(be->path_prefix);
    free(h->out);
    h->out_len = h->out_off = 0;
    if ((h->out = malloc(cap)) == NULL) {
        conn_refuse(c, REF_INTERNAL, NULL);
        return -1;
    }
    int n = upgrade_backend_request(h->out, cap, &k->req, &f);
    if (n < 0) {
        conn_refuse(c, REF_BACKEND, "backend request too large");
        return -1;
    }
    h->out_len = (size_t)n;
    return 0;
}

static void
be_connect(struct conn *c)
{
    const struct backend_addr *be = be_pick(c);
    struct sockaddr_storage ss;
    socklen_t sl;

    c->hs->be_addr = be;
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
    side_open(&c->be, c->w->loop, fd, NULL);
    /* The real time, not the loop's: the connection may be up before
     * this callback returns. */
    c->hs->be_started = ev_time();
    if (c->state != CS_BE_CONNECT)
        conn_set_state(c, CS_BE_CONNECT);
    if (connect(fd, (struct sockaddr *)&ss, sl) == -1 &&
        errno != EINPROGRESS) {
        be_failed(c, "backend unreachable", errno);
        return;
    }
    if (be_request(c) != 0)
        return;
    /* The request goes at once. To a backend on the same host the
     * connection is usually up when connect() returns (the backend's
     * SYN-ACK is taken in as connect() releases the socket), and the
     * request then costs no wait for writability, no SO_ERROR and no
     * round of the loop. A socket still connecting takes nothing
     * (EAGAIN); one whose connect failed says why (ECONNREFUSED,
     * ETIMEDOUT, ...); EPIPE and ECONNRESET come from a connection that
     * was up. */
    int r = out_flush(c, &c->be), err = errno;
    if (r == 0 && c->hs->out_off == 0)
        return;     /* connecting: writability reports it (be_connected) */
    if (r < 0 && err != EPIPE && err != ECONNRESET) {
        be_failed(c, "backend unreachable", err);
        return;
    }
    be_up(c);
    if (r < 0)
        be_failed(c, "backend write failed", 0);
    else
        conn_set_state(c, r == 1 ? CS_BE_READ : CS_BE_SEND);
}

static void
be_connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(c->be.fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
        err = errno;
    if (err != 0) {
        be_failed(c, "backend unreachable", err);
        return;
    }
    be_up(c);
    conn_set_state(c, CS_BE_SEND);
    be_send(c);
}

/* The relay takes over from the handshake (the client has its 101). */
static void
relay_begin(struct conn *c)
{
    struct hs *h = c->hs;
    const struct checks *k = &h->k;
    struct relay_setup s = {
        .pmd = c->pmd_neg > 0 ? &h->pmd : NULL,
        .z = c->pmd_neg > 0 ? h->z : NULL,
        .cfg = cfg_of(c),
        .pol = c->pol,
        .cli = &c->cli,
        .be = &c->be,
        .bufs = &c->w->bufs,
        .rnd = &c->w->rnd,
        .st = &c->w->st,
        .name = c->cl.ip,
        .started = c->started,
        .expiry = k->tok_exp && c->pol->jwt_close_on_expiry
                      ? (double)(k->tok_exp + k->tok_leeway) : 0,
    };
    /* Bytes behind the client's head and the backend's 101 head are the
     * peers' first frames. */
    size_t up_n = h->head_len - h->head_used;
    unsigned ev;

    relay_init(&c->r, &s);
    if (s.z != NULL)
        h->z = NULL;            /* the relay's now */
    c->relayed = 1;
    stats_add(&c->w->st.sessions, 1);
    if (c->pmd_neg > 0)
        stats_add(&c->w->st.deflate_sessions, 1);
    stats_observe(&c->w->st.handshake, now_of(c) - c->started);
    if ((c->rstat = stats_route(&c->w->st, c->route)) != NULL) {
        stats_add(&c->rstat->active, 1);
        stats_add(&c->rstat->sessions, 1);
    }
    conn_keep_log_fields(c, 1);
    conn_set_state(c, CS_RELAY);
    ev = 0;
    if (c->w->drain_expired) {
        ev |= relay_fail(&c->r, WS_CLOSE_GOING_AWAY, WS_CLOSE_GOING_AWAY,
                         "draining", "wsguard", now_of(c));
    } else if (conn_revoked(c, NULL)) {
        /* Revoked after its checks passed, while the backend was being
         * contacted. */
        stats_add(&c->w->st.enforced[ENF_REVOKED], 1);
        ev |= relay_fail(&c->r, WS_CLOSE_POLICY, WS_CLOSE_POLICY, "revoked",
                         "wsguard", now_of(c));
    }
    ev |= relay_start(&c->r, now_of(c),
                      (const uint8_t *)h->head + h->head_used, up_n,
                      (const uint8_t *)h->bhead, h->bhead_len);
    hs_free(c->hs);
    c->hs = NULL;
    /* Records the client sent behind its request may wait inside OpenSSL
     * (read ahead with the head). The socket will not announce them, and
     * the client's read watcher may have stayed on since REQ_READ (see
     * be_connect), so starting it again would not look either. */
    side_refeed(&c->cli);
    conn_relay_events(c, ev);
}

static void
be_read_response(struct conn *c)
{
    struct hs *h = c->hs;
    const struct checks *k = &h->k;
    size_t last = h->bhead_len, n;

    if (h->bhead == NULL && (h->bhead = malloc(BE_HEAD_MAX)) == NULL) {
        conn_refuse(c, REF_INTERNAL, NULL);
        return;
    }
    switch (side_read(&c->be, h->bhead + h->bhead_len,
                      BE_HEAD_MAX - h->bhead_len, &n)) {
    case IO_OK:
        break;
    case IO_AGAIN:
        return;
    default:
        conn_refuse(c, REF_BACKEND, "backend closed during upgrade");
        return;
    }
    h->bhead_len += n;

    struct http_header hdrs[MAX_HEADERS];
    struct http_response resp = {.headers = hdrs, .nheaders = MAX_HEADERS};
    int r = http_parse_response(h->bhead, h->bhead_len, last, &resp);
    if (r == HTTP_INCOMPLETE) {
        if (h->bhead_len == BE_HEAD_MAX)
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
    int ok = upgrade_check_response(&resp, h->be_key, &k->req, &proto,
                                    &proto_len, &reason);
    if (ok == UPGRADE_NOMEM) {
        conn_refuse(c, REF_INTERNAL, NULL);
        return;
    }
    if (ok != 0) {
        conn_refuse(c, REF_BACKEND,
                    reason ? reason : "invalid 101 from backend");
        return;
    }
    /* Bytes after the 101 head are the backend's first frames. */
    if (h->bhead_len - (size_t)r > BUF_SIZE) {
        conn_refuse(c, REF_BACKEND, "backend sent too much early data");
        return;
    }
    char key[UPGRADE_KEY_LEN + 1];
    memcpy(key, k->ureq.key, UPGRADE_KEY_LEN);
    key[UPGRADE_KEY_LEN] = '\0';
    if (proto == NULL && k->tok.source == JWT_SRC_PROTOCOL &&
        !c->pol->jwt_forward_token) {
        /* Browsers fail a handshake that answers none of the protocols
         * they offered; the token entry is the one we can answer. */
        proto = k->tok.entry;
        proto_len = k->tok.entry_len;
    }
    /* permessage-deflate is agreed with the client alone (the backend
     * was offered no extension). A malformed offer is no extension, not
     * a failed upgrade (what browsers expect). */
    const struct policy *pol = c->pol;
    struct pmd_policy pp = {
        .enabled = pol->deflate,
        .server_max_window_bits = (uint8_t)pol->deflate_window_bits,
        .client_max_window_bits = (uint8_t)pol->deflate_window_bits,
    };
    char ext[PMD_RESPONSE_MAX];
    c->pmd_neg = pmd_negotiate(&pp, k->req.headers, k->req.nheaders,
                               &h->pmd, ext, sizeof ext);
    if (c->pmd_neg == PMD_NEG_MALFORMED)
        log_info("%s: malformed Sec-WebSocket-Extensions: "
                 "permessage-deflate not agreed", c->cl.ip);
    if (c->pmd_neg > 0 && h->z == NULL &&
        (h->z = malloc(sizeof *h->z)) == NULL) {
        conn_refuse(c, REF_INTERNAL, NULL);
        return;
    }
    /* The echoed token entry can be as long as max_token_bytes. */
    size_t cap = 256 + PMD_RESPONSE_MAX + proto_len;
    free(h->out);
    if ((h->out = malloc(cap)) == NULL) {
        conn_refuse(c, REF_INTERNAL, NULL);
        return;
    }
    int m = upgrade_client_response(h->out, cap, key, proto, proto_len,
                                    c->pmd_neg > 0 ? ext : NULL);
    if (m == UPGRADE_NOMEM) {
        conn_refuse(c, REF_INTERNAL, NULL);
        return;
    }
    if (m <= 0) {
        conn_refuse(c, REF_BACKEND, "invalid subprotocol");
        return;
    }
    h->out_len = (size_t)m;
    h->out_off = 0;
    /* Where the backend's first frames start, kept until the relay
     * takes them (the 101 head itself is not needed any more). */
    h->bhead_len -= (size_t)r;
    memmove(h->bhead, h->bhead + r, h->bhead_len);
    conn_set_state(c, CS_CLI_101);
    conn_send_101(c);
}

/* Write the client's 101; the relay starts once it is all out. */
static void
conn_send_101(struct conn *c)
{
    int r = out_flush(c, &c->cli);

    if (r < 0)
        conn_drop(c, REF_CLIENT_CLOSED, "client gone before 101");
    else if (r == 1)
        relay_begin(c);
}

/* ------------------------------------------------------------------ */
/* Events                                                              */

static void
conn_watch(struct conn *c)
{
    switch (c->state) {
    case CS_PROXY:
        side_watch(&c->cli, 1, 0);
        break;
    case CS_TLS_HANDSHAKE:
        side_watch(&c->cli, !c->cli.hs_wants_wr, c->cli.hs_wants_wr);
        break;
    case CS_REQ_READ:
        side_watch(&c->cli, 1, c->cli.rd_wants_wr);
        break;
    case CS_WAIT:
        side_watch(&c->cli, 0, 0);
        break;
    case CS_BE_CONNECT:
        side_watch(&c->cli, 0, 0);
        side_watch(&c->be, 0, 1);
        break;
    case CS_BE_SEND:
        side_watch(&c->be, 0, 1);
        break;
    case CS_BE_READ:
        side_watch(&c->be, 1, 0);
        break;
    case CS_CLI_101:
        side_watch(&c->be, 0, 0);
        side_watch(&c->cli, c->cli.wr_wants_rd, 1);
        break;
    case CS_REFUSING:
        side_watch(&c->be, 0, 0);
        if (c->cli.shut)
            side_watch(&c->cli, 1, c->cli.rd_wants_wr);
        else
            side_watch(&c->cli, c->cli.wr_wants_rd, 1);
        break;
    case CS_RELAY:
    case CS_CLOSING:
        relay_watch(&c->r);
        break;
    }
}

/* After every event: let the relay close what is finished, free the
 * connection when it is dead, or set the watchers for what comes next. */
static void
conn_settle(struct conn *c)
{
    if (!c->dead && (c->state == CS_RELAY || c->state == CS_CLOSING))
        conn_relay_events(c, relay_settle(&c->r, now_of(c)));
    if (c->dead) {
        conn_free(c);
        return;
    }
    conn_watch(c);
}

static void
conn_timeout(struct conn *c)
{
    double now = now_of(c);

    if (conn_deadline(c) > now + 0.0005) {  /* activity moved it: re-arm */
        conn_timer_arm(c);
        return;
    }
    switch (c->state) {
    case CS_PROXY:
    case CS_TLS_HANDSHAKE:
    case CS_REQ_READ:
        conn_drop(c, REF_HANDSHAKE_TIMEOUT, "handshake timeout");
        break;
    case CS_WAIT:
        conn_refuse(c, REF_INTERNAL, "no answer in time");
        break;
    case CS_REFUSING:
        c->dead = 1;
        break;
    case CS_BE_CONNECT:
    case CS_BE_SEND:
    case CS_BE_READ:
        conn_refuse(c, REF_BACKEND_TIMEOUT, NULL);
        break;
    case CS_CLI_101:
        conn_drop(c, REF_HANDSHAKE_TIMEOUT, "client did not read the 101");
        break;
    case CS_RELAY:
    case CS_CLOSING:
        conn_relay_events(c, relay_timeout(&c->r, now));
        break;
    }
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
    case CS_WAIT:
        break;
    case CS_BE_CONNECT:
        be_connected(c);
        break;
    case CS_BE_SEND:
    case CS_BE_READ:
        if (s == &c->cli) {
            /* The client is not heard until the relay starts. Coming
             * straight from REQ_READ (be_connect), its watchers were left
             * as they were: stopping and restarting them costs one or two
             * epoll_ctl per session, so they go off only if the client
             * actually stirs (bytes before its 101, EOF). */
            side_watch(&c->cli, 0, 0);
        } else if (c->state == CS_BE_SEND) {
            be_send(c);
        } else {
            be_read_response(c);
        }
        break;
    case CS_CLI_101:
        conn_send_101(c);
        break;
    case CS_REFUSING:
        conn_refusing_io(c);
        break;
    case CS_RELAY:
    case CS_CLOSING:
        conn_relay_events(c, relay_io(&c->r, s, revents, now_of(c)));
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

void
conn_accept(struct worker *w, int fd, const struct sockaddr *sa,
            socklen_t salen)
{
    struct conn *c = calloc(1, sizeof *c);

    if (c != NULL && (c->hs = calloc(1, sizeof *c->hs)) == NULL) {
        free(c);
        c = NULL;
    }
    if (c == NULL) {
        /* Nothing to answer with: the socket is closed at once, counted
         * and logged like any refusal without an answer. */
        close(fd);
        stats_add(&w->st.rejected[REF_INTERNAL], 1);
        log_error("accept: out of memory for a connection; closed");
        return;
    }
    c->w = w;
    c->rt = runtime_ref(w->rt);
    c->ref = REF_CLIENT_CLOSED;     /* until something else ends it */
    c->started = now_of(c);
    ev_io_init(&c->cli.rd, cli_rd_cb, fd, EV_READ);
    ev_io_init(&c->cli.wr, cli_wr_cb, fd, EV_WRITE);
    ev_io_init(&c->be.rd, be_rd_cb, -1, EV_READ);
    ev_io_init(&c->be.wr, be_wr_cb, -1, EV_WRITE);
    ev_init(&c->timer, timer_cb);
    if (side_open(&c->cli, w->loop, fd, c->rt->tls) != 0)
        c->dead = 1;
    c->be.fd = -1;
    c->be.loop = w->loop;
    addr_text(sa, c->cl.ip, sizeof c->cl.ip);
    memcpy(c->cl.peer, c->cl.ip, sizeof c->cl.peer);
    (void)salen;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    atomic_fetch_add(&runtime_conns, 1);
    stats_add(&w->st.accepted, 1);
    stats_add(&w->st.active, 1);

    const struct config *cfg = cfg_of(c);
    ip_key_from_sockaddr(sa, (unsigned)cfg->global.ipv6_prefix, &c->cl.key);
    if (c->rt->trusted != NULL) {
        /* Trust is decided on the exact peer address, never a prefix. */
        struct ip_key exact;
        ip_key_from_sockaddr(sa, 128, &exact);
        c->cl.trusted = cidr_contains(c->rt->trusted, &exact) != 0;
    }
    /* A direct client is counted from accept; a trusted proxy's
     * connection once the client behind it is known. */
    if (!c->cl.trusted)
        client_count(&c->cl, c->rt);
    if (c->dead) {
        conn_drop(c, REF_INTERNAL, NULL);
        conn_free(c);
        return;
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
            conn_relay_events(c, relay_fail(&c->r, WS_CLOSE_GOING_AWAY,
                                            WS_CLOSE_GOING_AWAY, "draining",
                                            "wsguard", now_of(c)));
            conn_settle(c);
        }
        c = next;
    }
}

/* Does c match rv (NULL: any revocation in force)? */
static int
conn_revoked(const struct conn *c, const struct revocation *rv)
{
    const char *v[REVOKE_COUNT] = {
        [REVOKE_SUB] = c->sub, [REVOKE_JTI] = c->jti,
        [REVOKE_IP] = c->cl.ip,
    };

    if (rv != NULL)
        return v[rv->kind] != NULL &&
               revocation_matches(rv, v[rv->kind], strlen(v[rv->kind]));
    for (int i = 0; i < REVOKE_COUNT; i++)
        if (v[i] != NULL &&
            revoked_match((enum revoke_kind)i, v[i], strlen(v[i]),
                          now_of(c)))
            return 1;
    return 0;
}

unsigned
conn_revoke(struct worker *w, const struct revocation *rv)
{
    struct conn *c = w->conns;
    unsigned n = 0;

    while (c != NULL) {
        struct conn *next = c->next;
        if (c->state == CS_RELAY && !c->r.failing && !c->r.closing &&
            conn_revoked(c, rv)) {
            stats_add(&w->st.enforced[ENF_REVOKED], 1);
            conn_relay_events(c, relay_fail(&c->r, WS_CLOSE_POLICY,
                                            WS_CLOSE_POLICY, "revoked",
                                            "wsguard", now_of(c)));
            conn_settle(c);
            n++;
        }
        c = next;
    }
    return n;
}

void
conn_kill_all(struct worker *w)
{
    struct conn *c = w->conns;

    while (c != NULL) {
        struct conn *next = c->next;
        if (c->relayed && c->r.reason == NULL)
            c->r.reason = "drain grace expired";
        else if (!c->relayed && c->reason == NULL)
            conn_drop(c, REF_DRAINING, "drain grace expired");
        c->dead = 1;
        conn_settle(c);
        c = next;
    }
}
