/*
 * cluster.h - limits shared by every wsguard replica through Redis, and
 * fleet-wide revocation ([cluster] redis).
 *
 * Per-IP counts. Each address has one Redis hash
 * (<key_prefix>ip:<address>) with one field per replica and worker
 * ("<replica id>:<worker>") holding "<count>:<expiry>" (milliseconds on
 * Redis's own clock, so replicas' clocks do not matter). A worker writes
 * absolute counts, never increments: admitting a connection is one Lua
 * script that drops expired fields, sums the others and sets this
 * worker's field to its new count only if the sum stays within the
 * limit. The script is atomic, so two replicas racing for the last slot
 * cannot both win. Each worker renews its fields (count, new expiry)
 * every lease/3 for the addresses it holds, and at once after every
 * reconnect: a replica that crashed or was cut off loses its share
 * within `lease`, and admissions made while Redis was away (on_error =
 * open) are counted as soon as it is back. A worker's commands go over
 * its own connection and are answered in order, so an absolute value
 * never overtakes an earlier one.
 *
 * Revocation. Worker 0 subscribes to <key_prefix>revoke. A message there
 * (revoke.h's JSON) is stored in the sorted set <key_prefix>revoked
 * (member "<kind>:<value>", score its expiry) and handed to on_revoke,
 * which closes matching sessions on every worker. Worker 0 loads the set
 * when its connection comes up, so a replica that starts after a
 * revocation still refuses it.
 *
 * Nothing here blocks a worker: every command is asynchronous, with a
 * deadline ([cluster] timeout); while a connection is down, commands
 * fail at once and the caller applies on_error.
 */
#ifndef WSGUARD_CLUSTER_H
#define WSGUARD_CLUSTER_H

#include <ev.h>
#include <stdint.h>

#include "config.h"
#include "netaddr.h"
#include "redis.h"
#include "revoke.h"
#include "stats.h"

/* What the process shares between its workers' clients (immutable once
 * made; [cluster] settings are not reloadable). */
struct cluster {
    struct redis_target target;
    char *prefix;               /* key_prefix, owned */
    char *channel;              /* <prefix>revoke */
    char *revoked_key;          /* <prefix>revoked */
    char replica[17];           /* random id of this process (hex) */
    double timeout;             /* seconds per command */
    uint64_t lease_ms;
    uint64_t revoke_ttl_ms;
    int fail_closed;            /* on_error = closed */
};

/* Build from cfg when [cluster] redis is set: resolve the host (once,
 * here, never on a worker), read the password file, make the TLS
 * context for rediss://. NULL with a message in err on failure; NULL
 * with err[0] == 0 when cluster mode is off. */
struct cluster *cluster_new(const struct config *cfg, char *err, size_t cap);
void cluster_free(struct cluster *cl);

enum cluster_answer {
    CLUSTER_OK = 0,             /* counted: the slot is held */
    CLUSTER_OVER,               /* the fleet-wide limit is reached */
    CLUSTER_ERROR               /* no answer (down, slow, error) */
};

/* An answer to cluster_acquire(tag). Returns 1 when the caller takes it
 * (it then owns the slot as described there), 0 when the caller is gone:
 * the slot is given back here. */
typedef int (*cluster_answer_fn)(void *priv, uintptr_t tag,
                                 enum cluster_answer a);

/* A revocation came in on the channel (worker 0 only). */
typedef void (*cluster_revoke_fn)(void *priv, const struct revocation *rv);

/* One worker's client: its command connection (and on worker 0 the
 * subscription), the counts it holds per address, the renewal timer. */
struct cluster_worker {
    const struct cluster *cl;
    struct ev_loop *loop;
    unsigned id;
    char field[32];             /* "<replica>:<worker>" */
    struct redis cmd, sub;
    int has_sub;
    struct iplimit *held;       /* this worker's count per address */
    ev_timer renew;
    int script_reload;          /* NOSCRIPT seen: load the scripts again */
    struct stats *st;
    cluster_answer_fn on_answer;
    cluster_revoke_fn on_revoke;
    void *priv;
};

void cluster_worker_start(struct cluster_worker *cw, const struct cluster *cl,
                          struct ev_loop *loop, unsigned id,
                          struct stats *st, cluster_answer_fn on_answer,
                          cluster_revoke_fn on_revoke, void *priv);
void cluster_worker_stop(struct cluster_worker *cw);

/* Is the worker's command connection usable now? */
int cluster_up(const struct cluster_worker *cw);

/*
 * Take a slot for k under limit, fleet-wide. The worker's held count for
 * k goes up at once, whatever the outcome. 0: on_answer(tag) will be
 * called once, later. -1: Redis is not usable now (no call), which is
 * CLUSTER_ERROR. After CLUSTER_OK, or CLUSTER_ERROR that the caller
 * serves anyway (on_error = open), the caller holds the slot and calls
 * cluster_release() once at the end; otherwise (CLUSTER_OVER, or
 * refused) it calls cluster_forget().
 */
int cluster_acquire(struct cluster_worker *cw, const struct ip_key *k,
                    uint64_t limit, uintptr_t tag);

/* The slot was not kept (refused, or CLUSTER_OVER) / is given back at
 * the connection's end: either way the held count goes down and the new
 * absolute count is written asynchronously (a count written while the
 * slot was being asked for may have included it; a field at 0 is
 * deleted). When Redis cannot be told now, the renewal after
 * reconnecting, or the lease, corrects it. */
void cluster_forget(struct cluster_worker *cw, const struct ip_key *k);
void cluster_release(struct cluster_worker *cw, const struct ip_key *k);

/* Store rv for its ttl and publish it to every replica. 0 sent, -1 Redis
 * not usable now. */
int cluster_publish(struct cluster_worker *cw, const struct revocation *rv);

#endif
