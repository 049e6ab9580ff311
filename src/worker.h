/*
 * worker.h - event-loop threads.
 *
 * Each worker is one thread with its own ev_loop, its own listening
 * sockets (SO_REUSEPORT: the kernel spreads new connections), its own
 * connections, buffer pool, random-byte pool and counters. A connection
 * never leaves the worker that accepted it, so nothing on the data path
 * locks. The main thread talks to workers only through ev_async: a new
 * runtime snapshot on reload, or the order to drain.
 */
#ifndef WSGUARD_WORKER_H
#define WSGUARD_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "await.h"
#include "buf.h"
#include "cluster.h"
#include "config.h"
#include "revoke.h"
#include "rnd.h"
#include "stats.h"

struct conn;
struct runtime;
struct revoke_job;

/* A revocation queued for one worker. */
struct revoke_node {
    struct revoke_node *next;
    struct revoke_job *job;
};

struct worker {
    unsigned id;
    pthread_t thread;
    struct ev_loop *loop;
    int *lfds;                  /* listening sockets, one per address */
    ev_io *accept_w;
    size_t nlfds;
    ev_timer accept_pause;      /* EMFILE/ENFILE back-off */
    ev_timer trim;              /* heap trim after accepts (TRIM_AFTER) */
    ev_async wake;              /* main thread -> worker */
    ev_timer drain_timer;
    pthread_mutex_t lock;       /* guards next_rt, drain_req */
    struct runtime *next_rt;
    int drain_req;
    struct runtime *rt;         /* snapshot for new connections */
    int draining;
    int drain_expired;          /* drain_timeout passed: sessions that
                                   start relaying now are closed at once */
    struct conn *conns;         /* doubly linked list of live conns */
    uint64_t nconns;
    unsigned be_next;           /* round robin over backends */
    struct bufpool bufs;        /* relay buffers */
    struct rnd rnd;             /* masking keys, ping payloads */
    struct await_table waits;   /* connections parked for an answer */
    const struct cluster *cluster;      /* cluster mode: set before
                                           worker_start(), or NULL */
    struct cluster_worker cw;   /* its Redis client (cluster mode) */
    struct worker *all;         /* every worker (revocations fan out) */
    unsigned nall;
    struct revoke_node *rq;     /* revocations to apply (under lock) */
    int stopped;                /* under lock: its loop has ended */
    struct stats st;
};

/*
 * A revocation applied by every worker: each closes its matching
 * sessions on its own thread and adds to closed; the last one calls done
 * (on its thread; on the caller's when no worker runs any more), which
 * owns the job from then on.
 */
struct revoke_job {
    struct revocation rv;
    int publish;                /* cluster mode: worker 0 also stores and
                                   publishes it to the other replicas */
    atomic_uint pending;        /* workers still to apply it */
    atomic_uint closed;         /* sessions closed */
    atomic_int published;       /* publish: 1 when handed to Redis */
    void (*done)(struct revoke_job *job);
    void *priv;                 /* the initiator's */
    struct revoke_job *link;    /* the initiator's */
    struct revoke_node node[];  /* one per worker */
};

/* A job for n workers (zeroed), or NULL. Free it with free(). */
struct revoke_job *revoke_job_new(unsigned n);

/* Put job->rv in the process's revocation table (new upgrades that match
 * are refused from now on) and hand it to every worker of ws[0..n).
 * 0; -1 when the table is full or too many revocations are in flight
 * (nothing is started: the caller still owns the job). */
int workers_revoke(struct worker *ws, unsigned n, struct revoke_job *job,
                   double now);

/* Called by each worker thread as it ends (main thread's wake-up). */
extern void (*worker_exit_hook)(void);

/* Open the listening sockets for cfg, one set per worker (SO_REUSEPORT),
 * resolving port 0 once so that all workers share the same port. Logs
 * "listening on ADDR:PORT" per address. Returns 0 or -1 (message in err).*/
int workers_listen(struct worker *ws, unsigned n, const struct config *cfg,
                   char *err, size_t cap);
int worker_start(struct worker *w, struct runtime *rt);
void worker_set_runtime(struct worker *w, struct runtime *rt);
void worker_drain(struct worker *w);
void worker_join(struct worker *w);

#endif
