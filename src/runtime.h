/*
 * runtime.h - a configuration snapshot as the workers use it: the
 * immutable config, the TLS context built from it, every backend address
 * resolved, and the policy objects (Origin sets, JWT verifiers) of the
 * global policy and each route. Built on the main thread at start-up and
 * on SIGHUP, handed to the workers, refcounted: a connection holds the
 * snapshot it was accepted under for its whole life, so a reload never
 * touches live sessions.
 *
 * Also the process-wide state that outlives snapshots (the per-IP table
 * and the connection count), shared by all workers.
 */
#ifndef WSGUARD_RUNTIME_H
#define WSGUARD_RUNTIME_H

#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config.h"

/* A backend address resolved when the snapshot was built, and how
 * connecting to it went (written by every worker: a connect is rare next
 * to the data path, so these are plain atomics). */
struct resolved {
    const struct backend_addr *be;
    struct sockaddr_storage ss;
    socklen_t len;
    atomic_uint_fast64_t ok, failed;    /* connects */
    atomic_int last_errno;      /* of the last failure, 0 = last one ok */
    atomic_int up;              /* the last connect: 1 succeeded, 0
                                   failed, -1 none yet */
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
    /* Header names wsguard sets from claims in any policy with [jwt] on:
     * client-sent copies are removed on every route. Point into cfg. */
    const char **identity;
    size_t nidentity;
    /* Query parameter names of any policy's token sources: never in the
     * access log, whatever the route. Point into cfg. */
    const char **redact;
    size_t nredact;
};

/* Where a request goes: its policy (in rt->cfg), that policy's checks,
 * and the route's name ("" without routes). */
struct route_match {
    const struct policy *pol;
    const struct policy_rt *prt;
    const char *name;
};

/* Route a normalised path: 0 with *m filled, or -1 when routes exist and
 * none matches (404). */
int runtime_route(const struct runtime *rt, const char *path, size_t len,
                  struct route_match *m);


/* Build a snapshot from cfg (takes over the caller's reference): the TLS
 * context and every backend address, resolved now (host names are looked
 * up at start-up and on reload, never on the data path). Returns NULL
 * with a message in err on failure (cfg is released then). */
struct runtime *runtime_new(struct config *cfg, char *err, size_t cap);
struct runtime *runtime_ref(struct runtime *rt);
void runtime_unref(struct runtime *rt);
int runtime_resolve(const struct runtime *rt, const struct backend_addr *be,
                    struct sockaddr_storage *ss, socklen_t *len);

/* Record how a connect to be went (err: 0 for success, else the errno). */
void runtime_backend_result(struct runtime *rt, const struct backend_addr *be,
                            int err);

/* The per-IP connection table: one for the process, shared by all
 * workers and kept across reloads (counts outlive snapshots). */
extern struct iplimit *runtime_iplimit;

/* Connections open in the process, for max_connections (all workers). */
extern atomic_uint_fast64_t runtime_conns;

#endif
