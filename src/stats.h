/*
 * stats.h - the counters of one worker, with a name for every counter and
 * every kind, so that a reporter (the metrics endpoint) exports them by
 * iterating over the tables, never by listing them by hand.
 *
 * Each worker owns one struct stats and is its only writer; a reporter on
 * another thread reads them (relaxed atomic loads) and sums over workers.
 * A writer therefore needs no atomic read-modify-write: stats_add() is a
 * relaxed load and store on a line no other thread writes, so nothing
 * bounces between cores and nothing is locked.
 */
#ifndef WSGUARD_STATS_H
#define WSGUARD_STATS_H

#include <stdatomic.h>
#include <stdint.h>

#include "refuse.h"

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
    ENF_REVOKED,                /* revoked (sub, jti, address): 1008 */
    ENF_INFLATE_SIZE,           /* a compressed message inflated beyond
                                   max_payload: 1009 */
    ENF_INFLATE_RATIO,          /* beyond max_inflate_ratio: 1009 */
    ENF_INFLATE_INVALID,        /* not a valid DEFLATE stream: 1007 */
    ENF_COUNT
};

/* The metric label of each enforcement kind ([a-z_]+). */
extern const char *const enforce_label[ENF_COUNT];

/* Relayed data, by direction. */
enum direction {
    DIR_IN = 0,                 /* client -> backend */
    DIR_OUT,                    /* backend -> client */
    DIR_COUNT
};

extern const char *const direction_label[DIR_COUNT];

/* permessage-deflate: payload bytes by form (in: as the client sent them
 * and as inflated; out: as the backend sent them and as compressed). */
enum deflate_form {
    FORM_COMPRESSED = 0,
    FORM_UNCOMPRESSED,
    FORM_COUNT
};

extern const char *const form_label[FORM_COUNT];

/* How a session ended: close codes counted one by one, and who closed. */
#define CLOSE_CODE_COUNT 13     /* the codes of close_codes[], then
                                   "other" */
extern const int close_codes[CLOSE_CODE_COUNT - 1];

enum closed_by {
    BY_CLIENT = 0,
    BY_BACKEND,
    BY_WSGUARD,
    BY_COUNT
};

extern const char *const closed_by_label[BY_COUNT];

/* The index of code in the closes table (the last one for any other). */
int stats_close_index(int code);

/* Latency histograms: fixed bucket bounds (seconds, Prometheus "le"),
 * counts per bucket (not cumulative; the exposition adds them up). */
#define HISTO_BUCKETS 14        /* 13 bounds, then +Inf */
extern const double histo_bounds[HISTO_BUCKETS - 1];

typedef atomic_uint_fast64_t stat_t;

struct histo {
    stat_t bucket[HISTO_BUCKETS];
    stat_t sum_us;              /* sum of the observations, microseconds */
};

/* Per route (by name), sessions open now and relayed in all; the table
 * is append-only (a reporter reads names up to n), one entry per route
 * name ever seen by this worker. A configuration with more routes than
 * STATS_ROUTES is refused at load time, so no route goes uncounted. */
#define STATS_ROUTES 256
struct route_stat {
    char name[128];             /* "" for the global policy */
    stat_t active;
    stat_t sessions;
};

struct stats {
    stat_t accepted;            /* connections accepted */
    stat_t active;              /* connections open now (may go down) */
    stat_t sessions;            /* reached the relay */
    stat_t rejected[REF_COUNT]; /* ended before the relay, by kind */
    stat_t enforced[ENF_COUNT];
    stat_t bytes[DIR_COUNT];    /* relayed, as read from the source */
    stat_t messages[DIR_COUNT]; /* complete data messages relayed */
    stat_t deflate_sessions;    /* sessions with permessage-deflate */
    stat_t deflate_bytes[DIR_COUNT][FORM_COUNT];  /* payload of the
                                   messages it transformed */
    stat_t closes[CLOSE_CODE_COUNT][BY_COUNT];
    struct histo handshake;     /* accept to the client's 101 */
    struct histo be_connect;    /* backend connect started to connected */
    /* cluster mode ([cluster] redis) */
    stat_t cluster_up;          /* 1 while the worker's connection is up */
    stat_t cluster_errors;      /* failed commands and connections */
    struct histo cluster_rtt;   /* command sent to reply */
    atomic_uint routes_n;
    struct route_stat routes[STATS_ROUTES];
};

/* Log lines dropped because the log could not keep up: log_dropped() in
 * log.h (the log's buffers are per thread, not per worker). */

/* Process-wide, main thread only: configuration reloads by result. */
extern stat_t stats_reloads[2];         /* [0] failed, [1] succeeded */

/* The owner's increment: no atomic read-modify-write (see above). */
static inline void
stats_add(stat_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed)
                          + n, memory_order_relaxed);
}

static inline void
stats_sub(stat_t *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed)
                          - n, memory_order_relaxed);
}

/* A reporter's read (any thread). */
static inline uint64_t
stats_get(const stat_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* Record one observation of seconds in h (owner only). */
void stats_observe(struct histo *h, double seconds);

/* The entry of route name in st, made on first use (owner only); NULL
 * only if the table is full, which configuration validation rules out. */
struct route_stat *stats_route(struct stats *st, const char *name);

#endif
