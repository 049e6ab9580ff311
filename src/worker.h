/*
 * worker.h - event-loop threads.
 *
 * Each worker is one thread with its own ev_loop, its own listening
 * sockets (SO_REUSEPORT: the kernel spreads new connections), its own
 * connections, buffer freelist and random-byte pool. A connection never
 * leaves the worker that accepted it, so nothing on the data path locks.
 * The main thread talks to workers only through ev_async: a new runtime
 * snapshot on reload, or the order to drain.
 */
#ifndef WSGUARD_WORKER_H
#define WSGUARD_WORKER_H

#include <ev.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config.h"
#include "refuse.h"

/* What a connection needs from the configuration in force when it was
 * accepted: the config and the TLS context (NULL when tls is off).
 * Refcounted; connections hold a reference for their whole life. */
/* A backend address resolved when the snapshot was built. */
struct resolved {
    const struct backend_addr *be;
    struct sockaddr_storage ss;
    socklen_t len;
};

/* What the checks of one policy (global or a route) need, built from it
 * when the snapshot is made. */
struct policy_rt {
    struct origin_set *origin;          /* NULL = check off */
    struct jwt_verifier *jwt;           /* NULL = jwt off */
};

struct runtime {
    atomic_int refs;
    struct config *cfg;
    SSL_CTX *tls;
    struct resolved *addrs;
    size_t naddrs;
    struct policy_rt *prt;      /* [0] global, [1 + i] cfg->routes[i] */
    struct cidr_set *trusted;   /* [server] trusted_proxies, or NULL */
    int count_ips;              /* some policy limits connections per IP */
    /* Header names wsguard sets from claims in any policy with [jwt] on:
     * client-sent copies are removed on every route. Point into cfg. */
    const char **identity;
    size_t nidentity;
    /* Query parameter names of any policy's token sources: never in the
     * access log, whatever the route. Point into cfg. */
    const char **redact;
    size_t nredact;
};

/* The runtime of policy p (which lives in rt->cfg). */
const struct policy_rt *runtime_policy(const struct runtime *rt,
                                       const struct policy *p);

/* The per-IP connection table: one for the process, shared by all
 * workers and kept across reloads (counts outlive snapshots). */
extern struct iplimit *worker_iplimit;

/* Build a snapshot from cfg (takes over the caller's reference): the TLS
 * context and every backend address, resolved now (host names are looked
 * up at start-up and on reload, never on the data path). Returns NULL
 * with a message in err on failure (cfg is released then). */
struct runtime *runtime_new(struct config *cfg, char *err, size_t cap);
struct runtime *runtime_ref(struct runtime *rt);
void runtime_unref(struct runtime *rt);
int runtime_resolve(const struct runtime *rt, const struct backend_addr *be,
                    struct sockaddr_storage *ss, socklen_t *len);

/* Sessions ended by an enforcement, by kind (counted once per session). */
enum enforce {
    ENF_PROTOCOL = 0,           /* RFC 6455 violation: 1002/1007 */
    ENF_PAYLOAD,                /* max_payload: 1009 */
    ENF_RATE,                   /* messages/bytes per second: 1008 */
    ENF_CONTROL,                /* control frame flood: 1008 */
    ENF_PONG,                   /* no pong within pong_timeout */
    ENF_IDLE,                   /* idle_timeout: 1001 */
    ENF_LIFETIME,               /* max_lifetime: 1001 */
    ENF_WRITE_STALL,            /* write_timeout */
    ENF_EXPIRY,                 /* token expired: 1008 */
    ENF_MAX
};

/* Counters, per worker; summed by whoever reports them. */
struct stats {
    atomic_uint_fast64_t enforced[ENF_MAX];
    atomic_uint_fast64_t accepted;
    atomic_uint_fast64_t sessions;          /* reached the relay */
    atomic_uint_fast64_t rejected[REF_COUNT];   /* ended before it, by
                                                   enum refusal */
    atomic_uint_fast64_t active;
    atomic_uint_fast64_t bytes_in, bytes_out;  /* relayed, both legs */
};

struct buf;
struct conn;

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
    struct buf *free_bufs;      /* relay buffer freelist */
    unsigned nfree_bufs;
    unsigned be_next;           /* round robin over backends */
    uint8_t rnd[4096];          /* RAND_bytes pool for masking keys */
    unsigned rnd_off;
    struct stats st;
};

/* Called by each worker thread as it ends (main thread's wake-up). */
extern void (*worker_exit_hook)(void);

/* The global connection count, for max_connections (all workers). */
extern atomic_uint_fast64_t worker_total_conns;

/* Open the listening sockets for cfg, one set per worker (SO_REUSEPORT),
 * resolving port 0 once so that all workers share the same port. Logs
 * "listening on ADDR:PORT" per address. Returns 0 or -1 (message in err).*/
int workers_listen(struct worker *ws, unsigned n, const struct config *cfg,
                   char *err, size_t cap);
int worker_start(struct worker *w, struct runtime *rt);
void worker_set_runtime(struct worker *w, struct runtime *rt);
void worker_drain(struct worker *w);
void worker_join(struct worker *w);

/* Worker-internal services used by conn.c. */
struct buf *worker_buf_get(struct worker *w);
void worker_buf_put(struct worker *w, struct buf *b);
void worker_random(struct worker *w, uint8_t *out, size_t n);

#endif
