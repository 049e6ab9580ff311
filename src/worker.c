/*
 * worker.c - event-loop threads, listening sockets, runtime snapshots;
 * see worker.h.
 */
#include "worker.h"

#include <errno.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"
#include "runtime.h"

#define ACCEPTS_PER_EVENT 64
#define FREE_BUFS_MAX 64        /* per worker: 1 MiB of idle buffers */
#define ACCEPT_PAUSE 0.1        /* s, after EMFILE/ENFILE */
#define TRIM_AFTER 1.0          /* s after an accept: malloc_trim */
#define DRAIN_GRACE 2.0         /* s after drain_timeout: peers may answer
                                   wsguard's close frames, no longer */
#define REVOKE_IN_FLIGHT 256    /* revocations being applied at once */

void (*worker_exit_hook)(void);

/* ------------------------------------------------------------------ */
/* Listening                                                           */

/*
 * SO_REUSEPORT lets every worker have its own listening socket on one
 * address, but it also lets any other process of the same user bind the
 * address silently, and the kernel then splits connections between the
 * two (with different policies, half the clients meet the wrong one).
 * So before the first bind a probe without SO_REUSEPORT must succeed:
 * it fails while anything else listens there. [server] shared_listen =
 * yes skips the probe (a hand-over between two wsguard processes).
 */
static int
listen_probe(const struct listen_addr *a, char *err, size_t cap)
{
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

    if (fd == -1) {
        snprintf(err, cap, "listen %s: socket: %s", a->text, strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) == -1) {
        int e = errno;
        close(fd);
        if (e == EADDRINUSE)
            snprintf(err, cap, "listen %s: the address is in use by another "
                     "process (another wsguard? set [server] shared_listen = "
                     "yes to share it on purpose)", a->text);
        else
            snprintf(err, cap, "listen %s: %s", a->text, strerror(e));
        return -1;
    }
    close(fd);
    return 0;
}

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
    char *end;
    long p = strtol(port, &end, 10);
    return *end == '\0' && p > 0 && p < 65536 ? (int)p : -1;
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
        ws[i].all = ws;
        ws[i].nall = n;
    }
    for (size_t a = 0; a < cfg->nlisten; a++) {
        int port = -1;
        if (!cfg->shared_listen && listen_probe(&cfg->listen[a], err, cap))
            return -1;
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
        /* The loop's cached time is that of the start of this iteration,
         * which may be long past after a busy one, and so may the time of
         * the previous accept of this batch (each takes a while: a TLS
         * session is set up): a connection's clock (handshake_timeout)
         * starts from the real time of its own accept. */
        ev_now_update(loop);
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
        if (!ev_is_active(&w->trim)) {
            ev_timer_set(&w->trim, TRIM_AFTER, 0);
            ev_timer_start(loop, &w->trim);
        }
    }
}

/* Handshakes leave free fragments between the sessions that stay (their
 * transient buffers: record buffers, key exchange, request head): glibc
 * keeps those pages resident. A while after a burst of accepts, give the
 * free pages back to the kernel (malloc_trim(0) walks the free chunks of
 * every arena and madvises whole free pages away). At most once per
 * TRIM_AFTER per worker, and only when it accepted something. */
static void
trim_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    malloc_trim(0);
}

static void
accept_pause_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct worker *w = ev_userdata(loop);
    if (!w->draining)
        accept_set(w, 1);
}

/* drain_timeout passed: every session is closed with 1001; peers then
 * have DRAIN_GRACE to answer, after which nothing is waited for. */
static void
drain_expire(struct worker *w)
{
    if (w->drain_expired)
        return;
    w->drain_expired = 1;
    if (w->nconns > 0)
        log_info("worker %u: drain timeout, closing %llu sessions", w->id,
                 (unsigned long long)w->nconns);
    conn_drain_all(w);
    ev_timer_set(&w->drain_timer, DRAIN_GRACE, 0);
    ev_timer_start(w->loop, &w->drain_timer);
}

static void
drain_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct worker *w = ev_userdata(loop);

    if (!w->drain_expired) {
        drain_expire(w);
        return;
    }
    if (w->nconns > 0)
        log_warn("worker %u: drain grace over, dropping %llu connections",
                 w->id, (unsigned long long)w->nconns);
    conn_kill_all(w);
}

/* ------------------------------------------------------------------ */
/* Revocations                                                         */

static atomic_uint revokes_in_flight;

struct revoke_job *
revoke_job_new(unsigned n)
{
    return calloc(1, sizeof(struct revoke_job) +
                  n * sizeof(struct revoke_node));
}

static void
revoke_finish(struct revoke_job *job)
{
    if (atomic_fetch_sub(&job->pending, 1) == 1) {
        atomic_fetch_sub(&revokes_in_flight, 1);
        job->done(job);
    }
}

int
workers_revoke(struct worker *ws, unsigned n, struct revoke_job *job,
               double now)
{
    if (atomic_fetch_add(&revokes_in_flight, 1) >= REVOKE_IN_FLIGHT) {
        atomic_fetch_sub(&revokes_in_flight, 1);
        return -1;
    }
    if (revoked_add(&job->rv, now) != 0) {
        atomic_fetch_sub(&revokes_in_flight, 1);
        return -1;
    }
    /* One extra count, dropped at the end, so that done cannot run before
     * every worker has its node. */
    atomic_store(&job->pending, n + 1);
    for (unsigned i = 0; i < n; i++) {
        struct worker *w = &ws[i];
        int queued = 0;

        job->node[i].job = job;
        pthread_mutex_lock(&w->lock);
        if (!w->stopped) {
            job->node[i].next = w->rq;
            w->rq = &job->node[i];
            queued = 1;
        }
        pthread_mutex_unlock(&w->lock);
        if (queued)
            ev_async_send(w->loop, &w->wake);
        else
            revoke_finish(job);
    }
    revoke_finish(job);
    return 0;
}

/* Apply the revocations queued for w (all of them when the loop has
 * ended: nothing is left hanging). */
static void
revoke_apply(struct worker *w, struct revoke_node *q)
{
    /* The queue is newest first; apply in arrival order. */
    struct revoke_node *rev = NULL;
    while (q != NULL) {
        struct revoke_node *next = q->next;
        q->next = rev;
        rev = q;
        q = next;
    }
    while (rev != NULL) {
        struct revoke_node *next = rev->next;
        struct revoke_job *job = rev->job;

        /* The other replicas first: closing this worker's own sessions
         * takes a while with thousands of them. */
        if (job->publish && w->id == 0 && w->cluster != NULL &&
            !w->stopped && cluster_publish(&w->cw, &job->rv) == 0)
            atomic_store(&job->published, 1);
        unsigned n = w->stopped ? 0 : conn_revoke(w, &job->rv);
        atomic_fetch_add(&job->closed, n);
        revoke_finish(job);
        rev = next;
    }
}

static void
revoke_job_free(struct revoke_job *job)
{
    free(job);
}

/* A revocation came in on the Redis channel (worker 0). */
static void
cluster_revoked(void *priv, const struct revocation *rv)
{
    struct worker *w = priv;
    struct revoke_job *job = revoke_job_new(w->nall);

    if (job == NULL) {
        log_error("revocation of %s %s not applied: out of memory",
                  revoke_key[rv->kind], rv->value);
        return;
    }
    job->rv = *rv;
    job->done = revoke_job_free;
    if (workers_revoke(w->all, w->nall, job, ev_now(w->loop)) != 0) {
        log_error("revocation of %s %s not applied: the revocation table "
                  "is full (%d in force) or too many are in flight",
                  revoke_key[rv->kind], rv->value, REVOKE_MAX);
        free(job);
        return;
    }
    log_info("revoked %s %s (from the cluster channel)",
             revoke_key[rv->kind], rv->value);
}

static int
cluster_answered(void *priv, uintptr_t tag, enum cluster_answer a)
{
    return conn_answer_shared(priv, tag,
                              a == CLUSTER_OK     ? SHARED_OK
                              : a == CLUSTER_OVER ? SHARED_OVER
                                                  : SHARED_DOWN);
}

static void
wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    struct worker *w = ev_userdata(loop);

    pthread_mutex_lock(&w->lock);
    struct runtime *rt = w->next_rt;
    w->next_rt = NULL;
    int drain = w->drain_req;
    struct revoke_node *rq = w->rq;
    w->rq = NULL;
    pthread_mutex_unlock(&w->lock);

    revoke_apply(w, rq);

    if (rt != NULL) {
        runtime_unref(w->rt);
        w->rt = rt;
    }
    if (drain && !w->draining) {
        w->draining = 1;
        log_info("worker %u: draining, %llu connections open", w->id,
                 (unsigned long long)w->nconns);
        accept_set(w, 0);
        ev_timer_stop(loop, &w->accept_pause);
        ev_timer_stop(loop, &w->trim);
        for (size_t i = 0; i < w->nlfds; i++) {
            if (w->lfds[i] != -1)
                close(w->lfds[i]);
            w->lfds[i] = -1;
        }
        uint64_t dt = w->rt->cfg->drain_timeout_ms;
        if (dt == 0) {
            drain_expire(w);
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
    /* The last connections' slots are given back to Redis before the
     * loop ends (each command is bounded by [cluster] timeout). */
    if (w->draining && w->conns == NULL &&
        (w->cluster == NULL || w->cw.cmd.npending == 0 ||
         !redis_ready(&w->cw.cmd)))
        ev_break(loop, EVBREAK_ALL);
}

static void *
worker_main(void *arg)
{
    struct worker *w = arg;
    ev_prepare prep;

    ev_prepare_init(&prep, prepare_cb);
    ev_prepare_start(w->loop, &prep);
    if (w->cluster != NULL)
        cluster_worker_start(&w->cw, w->cluster, w->loop, w->id, &w->st,
                             cluster_answered, cluster_revoked, w);
    ev_run(w->loop, 0);
    pthread_mutex_lock(&w->lock);
    w->stopped = 1;
    struct revoke_node *rq = w->rq;
    w->rq = NULL;
    pthread_mutex_unlock(&w->lock);
    revoke_apply(w, rq);
    if (w->cluster != NULL)
        cluster_worker_stop(&w->cw);
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
    w->bufs.max = FREE_BUFS_MAX;
    rnd_init(&w->rnd, NULL);
    pthread_mutex_init(&w->lock, NULL);
    for (size_t i = 0; i < w->nlfds; i++) {
        ev_io_init(&w->accept_w[i], accept_cb, w->lfds[i], EV_READ);
        ev_io_start(w->loop, &w->accept_w[i]);
    }
    ev_init(&w->accept_pause, accept_pause_cb);
    ev_init(&w->trim, trim_cb);
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
    bufpool_clear(&w->bufs);
    await_table_free(&w->waits);
    runtime_unref(w->next_rt);
    runtime_unref(w->rt);
    ev_loop_destroy(w->loop);
    free(w->lfds);
    free(w->accept_w);
}
