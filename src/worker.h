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
#include <stdint.h>

#include "await.h"
#include "buf.h"
#include "config.h"
#include "rnd.h"
#include "stats.h"

struct conn;
struct runtime;

struct worker {
    unsigned id;
    pthread_t thread;
    struct ev_loop *loop;
    int *lfds;                  /* listening sockets, one per address */
    ev_io *accept_w;
    size_t nlfds;
    ev_timer accept_pause;      /* EMFILE/ENFILE back-off */
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
    struct stats st;
};

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
