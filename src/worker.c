/*
 * worker.c - event-loop threads, listening sockets, runtime snapshots;
 * see worker.h.
 */
#include "worker.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "conn.h"
#include "jwt.h"
#include "log.h"
#include "netaddr.h"
#include "origin.h"
#include "tls.h"

#define ACCEPTS_PER_EVENT 64
#define FREE_BUFS_MAX 64        /* per worker: 1 MiB of idle buffers */
#define ACCEPT_PAUSE 0.1        /* s, after EMFILE/ENFILE */

atomic_uint_fast64_t worker_total_conns;
void (*worker_exit_hook)(void);
struct iplimit *worker_iplimit;

/* ------------------------------------------------------------------ */
/* Runtime snapshots                                                   */

static int
resolve_one(const struct backend_addr *be, struct resolved *r, char *err,
            size_t cap)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int e = getaddrinfo(be->host, be->port, &hints, &res);
    if (e != 0 || res == NULL) {
        snprintf(err, cap, "backend %s: cannot resolve %s: %s", be->url,
                 be->host, gai_strerror(e));
        return -1;
    }
    r->be = be;
    memcpy(&r->ss, res->ai_addr, res->ai_addrlen);
    r->len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int
resolve_policy(struct runtime *rt, const struct policy *p, char *err,
               size_t cap)
{
    for (size_t i = 0; i < p->nbackends; i++) {
        struct resolved *n = realloc(rt->addrs,
                                     (rt->naddrs + 1) * sizeof *rt->addrs);
        if (n == NULL) {
            snprintf(err, cap, "out of memory");
            return -1;
        }
        rt->addrs = n;
        if (resolve_one(&p->backends[i], &rt->addrs[rt->naddrs], err, cap))
            return -1;
        rt->naddrs++;
    }
    return 0;
}

static int
policy_rt_init(struct policy_rt *prt, const struct policy *p, char *err,
               size_t cap)
{
    char e[400];
    if (p->origin_allow.n || p->origin_allow_pattern.n) {
        prt->origin = origin_set_new(&p->origin_allow,
                                     &p->origin_allow_pattern, e, sizeof e);
        if (prt->origin == NULL) {
            snprintf(err, cap, "[origin] %s", e);
            return -1;
        }
    }
    if (p->jwt_enabled) {
        prt->jwt = jwt_verifier_new(p, e, sizeof e);
        if (prt->jwt == NULL) {
            snprintf(err, cap, "[jwt] %s", e);
            return -1;
        }
    }
    return 0;
}

const struct policy_rt *
runtime_policy(const struct runtime *rt, const struct policy *p)
{
    const struct config *cfg = rt->cfg;
    if (p == &cfg->global || cfg->nroutes == 0)
        return &rt->prt[0];
    return &rt->prt[1 + (size_t)((const struct route *)
                                     ((const char *)p -
                                      offsetof(struct route, p)) -
                                 cfg->routes)];
}

/* rt->identity and rt->redact, from every policy (see worker.h). */
static int
collect_names(struct runtime *rt, char *err, size_t cap)
{
    const struct config *cfg = rt->cfg;
    size_t ni = 0, nr = 0;

    for (size_t i = 0; i <= cfg->nroutes; i++) {
        const struct policy *p = i ? &cfg->routes[i - 1].p : &cfg->global;
        ni += p->jwt_forward_claims.n;
        nr += p->jwt_sources.n;
    }
    rt->identity = calloc(ni + 1, sizeof *rt->identity);
    rt->redact = calloc(nr + 1, sizeof *rt->redact);
    if (rt->identity == NULL || rt->redact == NULL) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    for (size_t i = 0; i <= cfg->nroutes; i++) {
        const struct policy *p = i ? &cfg->routes[i - 1].p : &cfg->global;
        for (size_t k = 0; p->jwt_enabled && k < p->jwt_forward_claims.n;
             k++) {
            const char *colon = strchr(p->jwt_forward_claims.v[k], ':');
            if (colon != NULL)
                rt->identity[rt->nidentity++] = colon + 1;
        }
        for (size_t k = 0; k < p->jwt_sources.n; k++)
            if (strncmp(p->jwt_sources.v[k], "query:", 6) == 0)
                rt->redact[rt->nredact++] = p->jwt_sources.v[k] + 6;
    }
    return 0;
}

struct runtime *
runtime_new(struct config *cfg, char *err, size_t cap)
{
    struct runtime *rt = calloc(1, sizeof *rt);
    if (rt == NULL) {
        snprintf(err, cap, "out of memory");
        config_unref(cfg);
        return NULL;
    }
    atomic_init(&rt->refs, 1);
    rt->cfg = cfg;
    if (cfg->tls_enabled && (rt->tls = tls_ctx_new(cfg, err, cap)) == NULL)
        goto fail;
    rt->prt = calloc(cfg->nroutes + 1, sizeof *rt->prt);
    if (rt->prt == NULL) {
        snprintf(err, cap, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i <= cfg->nroutes; i++) {
        const struct policy *p = i ? &cfg->routes[i - 1].p : &cfg->global;
        if (resolve_policy(rt, p, err, cap) != 0 ||
            policy_rt_init(&rt->prt[i], p, err, cap) != 0)
            goto fail;
        if (p->max_connections_per_ip)
            rt->count_ips = 1;
    }
    if (cfg->trusted_proxies.n &&
        (rt->trusted = cidr_set_new(&cfg->trusted_proxies, err, cap)) == NULL)
        goto fail;
    if (collect_names(rt, err, cap) != 0)
        goto fail;
    return rt;
fail:
    runtime_unref(rt);
    return NULL;
}

struct runtime *
runtime_ref(struct runtime *rt)
{
    atomic_fetch_add(&rt->refs, 1);
    return rt;
}

void
runtime_unref(struct runtime *rt)
{
    if (rt == NULL || atomic_fetch_sub(&rt->refs, 1) != 1)
        return;
    if (rt->prt) {
        for (size_t i = 0; i <= rt->cfg->nroutes; i++) {
            origin_set_free(rt->prt[i].origin);
            jwt_verifier_free(rt->prt[i].jwt);
        }
        free(rt->prt);
    }
    cidr_set_free(rt->trusted);
    free(rt->identity);
    free(rt->redact);
    config_unref(rt->cfg);
    SSL_CTX_free(rt->tls);
    free(rt->addrs);
    free(rt);
}

int
runtime_resolve(const struct runtime *rt, const struct backend_addr *be,
                struct sockaddr_storage *ss, socklen_t *len)
{
    for (size_t i = 0; i < rt->naddrs; i++) {
        if (rt->addrs[i].be == be) {
            memcpy(ss, &rt->addrs[i].ss, rt->addrs[i].len);
            *len = rt->addrs[i].len;
            return 0;
        }
    }
    return -1;
}

/* ------------------------------------------------------------------ */
/* Listening                                                           */

static int
listen_one(struct listen_addr *a, int port, char *err, size_t cap)
{
    struct sockaddr_storage ss;
    memcpy(&ss, &a->ss, a->len);
    if (port >= 0) {
        if (ss.ss_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
        else
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);
    if (fd == -1) {
        snprintf(err, cap, "listen %s: socket: %s", a->text, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, a->len) == -1 ||
        listen(fd, 4096) == -1) {
        snprintf(err, cap, "listen %s: %s", a->text, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static int
bound_port(int fd, char *host, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char port[16];
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == -1 ||
        getnameinfo((struct sockaddr *)&ss, len, host, (socklen_t)cap, port,
                    sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        return -1;
    return atoi(port);
}

int
workers_listen(struct worker *ws, unsigned n, const struct config *cfg,
               char *err, size_t cap)
{
    for (unsigned i = 0; i < n; i++) {
        ws[i].lfds = calloc(cfg->nlisten, sizeof *ws[i].lfds);
        ws[i].accept_w = calloc(cfg->nlisten, sizeof *ws[i].accept_w);
        if (ws[i].lfds == NULL || ws[i].accept_w == NULL) {
            snprintf(err, cap, "out of memory");
            return -1;
        }
        ws[i].nlfds = cfg->nlisten;
    }
    for (size_t a = 0; a < cfg->nlisten; a++) {
        int port = -1;
        for (unsigned i = 0; i < n; i++) {
            int fd = listen_one(&cfg->listen[a], port, err, cap);
            if (fd == -1)
                return -1;
            ws[i].lfds[a] = fd;
            if (i == 0) {
                /* Port 0 picks a free port once; the other workers'
                 * sockets join it through SO_REUSEPORT. */
                char host[64];
                port = bound_port(fd, host, sizeof host);
                if (port < 0) {
                    snprintf(err, cap, "listen %s: getsockname failed",
                             cfg->listen[a].text);
                    return -1;
                }
                log_info(strchr(host, ':') ? "listening on [%s]:%d"
                                           : "listening on %s:%d",
                         host, port);
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* The loop                                                            */

static void
accept_set(struct worker *w, int on)
{
    for (size_t i = 0; i < w->nlfds; i++) {
        if (w->lfds[i] == -1)
            continue;
        if (on)
            ev_io_start(w->loop, &w->accept_w[i]);
        else
            ev_io_stop(w->loop, &w->accept_w[i]);
    }
}

static void
accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct worker *w = ev_userdata(loop);

    for (int i = 0; i < ACCEPTS_PER_EVENT; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(io->fd, (struct sockaddr *)&ss, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                /* Out of descriptors: pause accepting instead of spinning
                 * on a listener that stays readable (relayd). */
                log_warn("accept: %s; pausing new connections for %.0f ms",
                         strerror(errno), ACCEPT_PAUSE * 1000);
                accept_set(w, 0);
                ev_timer_set(&w->accept_pause, ACCEPT_PAUSE, 0);
                ev_timer_start(loop, &w->accept_pause);
            }
            return;
        }
        conn_accept(w, fd, (struct sockaddr *)&ss, len);
    }
}

static void
accept_pause_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct worker *w = ev_userdata(loop);
    if (!w->draining)
        accept_set(w, 1);
}

static void
drain_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct worker *w = ev_userdata(loop);
    log_info("worker %u: drain timeout, closing %llu sessions", w->id,
             (unsigned long long)w->nconns);
    w->drain_expired = 1;
    conn_drain_all(w);
}

static void
wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    struct worker *w = ev_userdata(loop);

    pthread_mutex_lock(&w->lock);
    struct runtime *rt = w->next_rt;
    w->next_rt = NULL;
    int drain = w->drain_req;
    pthread_mutex_unlock(&w->lock);

    if (rt != NULL) {
        runtime_unref(w->rt);
        w->rt = rt;
    }
    if (drain && !w->draining) {
        w->draining = 1;
        accept_set(w, 0);
        ev_timer_stop(loop, &w->accept_pause);
        for (size_t i = 0; i < w->nlfds; i++) {
            if (w->lfds[i] != -1)
                close(w->lfds[i]);
            w->lfds[i] = -1;
        }
        uint64_t dt = w->rt->cfg->drain_timeout_ms;
        if (dt == 0) {
            w->drain_expired = 1;
            conn_drain_all(w);
        } else {
            ev_timer_set(&w->drain_timer, (ev_tstamp)dt / 1000.0, 0);
            ev_timer_start(loop, &w->drain_timer);
        }
    }
}

static void
prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    struct worker *w = ev_userdata(loop);
    if (w->draining && w->conns == NULL)
        ev_break(loop, EVBREAK_ALL);
}

static void *
worker_main(void *arg)
{
    struct worker *w = arg;
    ev_prepare prep;

    ev_prepare_init(&prep, prepare_cb);
    ev_prepare_start(w->loop, &prep);
    ev_run(w->loop, 0);
    log_debug("worker %u: stopped", w->id);
    if (worker_exit_hook)
        worker_exit_hook();
    return NULL;
}

int
worker_start(struct worker *w, struct runtime *rt)
{
    w->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (w->loop == NULL)
        return -1;
    ev_set_userdata(w->loop, w);
    w->rt = runtime_ref(rt);
    w->rnd_off = sizeof w->rnd;
    pthread_mutex_init(&w->lock, NULL);
    for (size_t i = 0; i < w->nlfds; i++) {
        ev_io_init(&w->accept_w[i], accept_cb, w->lfds[i], EV_READ);
        ev_io_start(w->loop, &w->accept_w[i]);
    }
    ev_init(&w->accept_pause, accept_pause_cb);
    ev_init(&w->drain_timer, drain_timer_cb);
    ev_async_init(&w->wake, wake_cb);
    ev_async_start(w->loop, &w->wake);
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        return -1;
    return 0;
}

void
worker_set_runtime(struct worker *w, struct runtime *rt)
{
    pthread_mutex_lock(&w->lock);
    if (w->next_rt)
        runtime_unref(w->next_rt);
    w->next_rt = runtime_ref(rt);
    pthread_mutex_unlock(&w->lock);
    ev_async_send(w->loop, &w->wake);
}

void
worker_drain(struct worker *w)
{
    pthread_mutex_lock(&w->lock);
    w->drain_req = 1;
    pthread_mutex_unlock(&w->lock);
    ev_async_send(w->loop, &w->wake);
}

void
worker_join(struct worker *w)
{
    pthread_join(w->thread, NULL);
    struct buf *b;
    while ((b = w->free_bufs) != NULL) {
        w->free_bufs = b->next;
        free(b);
    }
    runtime_unref(w->next_rt);
    runtime_unref(w->rt);
    ev_loop_destroy(w->loop);
    free(w->lfds);
    free(w->accept_w);
}

/* ------------------------------------------------------------------ */
/* Per-worker services                                                 */

struct buf *
worker_buf_get(struct worker *w)
{
    struct buf *b = w->free_bufs;
    if (b != NULL) {
        w->free_bufs = b->next;
        w->nfree_bufs--;
    } else if ((b = malloc(sizeof *b)) == NULL) {
        return NULL;
    }
    b->next = NULL;
    b->pos = b->parsed = b->last = 0;
    return b;
}

void
worker_buf_put(struct worker *w, struct buf *b)
{
    if (w->nfree_bufs >= FREE_BUFS_MAX) {
        free(b);
        return;
    }
    b->next = w->free_bufs;
    w->free_bufs = b;
    w->nfree_bufs++;
}

/* Masking keys must be unpredictable (RFC 6455 §5.3); RAND_bytes is
 * called once per 1024 keys, not once per frame. */
void
worker_random(struct worker *w, uint8_t *out, size_t n)
{
    if (w->rnd_off + n > sizeof w->rnd) {
        if (RAND_bytes(w->rnd, sizeof w->rnd) != 1)
            abort();            /* no entropy: nothing safe to do */
        w->rnd_off = 0;
    }
    memcpy(out, w->rnd + w->rnd_off, n);
    w->rnd_off += (unsigned)n;
}
