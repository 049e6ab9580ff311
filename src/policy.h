/*
 * policy.h - the upgrade checks, as a sequence of steps that can suspend.
 *
 * Every check runs on the complete request head, before any backend is
 * contacted, in this order (cheap ones first, so a flood from one address
 * never costs a signature verification):
 *
 *   RFC 6455 request (400/405/426) -> path normalised (400) -> route
 *   (404) -> capacity (503) -> per-IP limit, local (429), address
 *   revoked (401) -> Origin (403) -> token (401), token revoked (401)
 *   -> per-IP limit, fleet-wide (429; cluster mode)
 *
 * checks_run() runs the steps from where it stopped. A step either
 * passes, refuses (the kind and reason are left in the struct), or waits
 * for an asynchronous answer (CHECK_WAIT: the caller parks the connection
 * with its timer still running, and calls checks_run() again once the
 * answer is in). Only the fleet-wide count waits (a Redis round trip),
 * and it comes last, so an upgrade refused for any other reason never
 * reaches Redis: the caller asks for k->shared_limit and puts the answer
 * in k->shared_answer.
 *
 * Pure apart from the per-IP table (runtime_iplimit), the revocation
 * table (revoke.h) and the connection count it reads: no sockets, no
 * event loop.
 */
#ifndef WSGUARD_POLICY_H
#define WSGUARD_POLICY_H

#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"
#include "jwt.h"
#include "netaddr.h"
#include "refuse.h"
#include "runtime.h"
#include "upgrade.h"

#define MAX_HEADERS 64

/* Who the client is, and its slot in the per-IP table. */
struct client {
    char ip[INET6_ADDRSTRLEN];  /* the client (behind trusted proxies:
                                   the one they name) */
    char peer[INET6_ADDRSTRLEN];        /* the address wsguard talks to */
    struct ip_key key;          /* what the per-IP limit counts */
    unsigned counted : 1;       /* holds a slot in runtime_iplimit */
    unsigned over : 1;          /* the slot was refused: 429 */
    unsigned trusted : 1;       /* peer in [server] trusted_proxies */
    unsigned final : 1;         /* address known (PROXY header) */
    unsigned shared : 1;        /* holds a slot in the fleet-wide count
                                   (the caller gives it back) */
};

/* Count the client for its address (once), under the global limit (or
 * none: the count also feeds the status page's busiest addresses). Done
 * at accept for a direct client; for a trusted proxy's connection once
 * the PROXY header or X-Forwarded-For has named the client. */
void client_count(struct client *cl, const struct runtime *rt);

/* Give the slot back (at the connection's end). */
void client_release(struct client *cl);

enum check_step {
    STEP_REQUEST = 0,
    STEP_PATH,
    STEP_ROUTE,
    STEP_CAPACITY,
    STEP_IP,
    STEP_ORIGIN,
    STEP_TOKEN,
    STEP_SHARED,
    STEP_DONE
};

/* The fleet-wide count's answer, as the caller got it. */
enum shared_answer {
    SHARED_NONE = 0,            /* not asked yet */
    SHARED_OK,                  /* counted */
    SHARED_OVER,                /* the fleet-wide limit is reached */
    SHARED_DOWN,                /* no answer: on_error decides */
    SHARED_FAIL                 /* could not even be counted locally */
};

enum check_result {
    CHECK_PASS = 0,             /* every step passed: contact the backend */
    CHECK_REFUSE,               /* ref, reason say why */
    CHECK_WAIT                  /* a step waits for an answer */
};

/*
 * The request being checked and everything the checks produce. The
 * caller parses the head into req/hdrs (pointing into its buffer) and
 * sets rt, cl and draining; checks_free() releases what is owned here.
 */
struct checks {
    /* in */
    const struct runtime *rt;
    struct client *cl;
    int draining;
    int shared;                 /* cluster mode: count fleet-wide */
    int fail_closed;            /* [cluster] on_error = closed */
    enum shared_answer shared_answer;   /* STEP_SHARED's answer */
    uint64_t shared_limit;      /* with CHECK_WAIT at STEP_SHARED */
    struct http_request req;    /* req.target is the normalised target
                                   once STEP_PATH has passed */
    struct http_header hdrs[MAX_HEADERS];

    enum check_step step;       /* the next step to run */

    /* out */
    struct upgrade_req ureq;
    struct route_match route;
    enum refusal ref;           /* on CHECK_REFUSE */
    const char *reason;         /* static text, for the log */
    char *ntarget;              /* normalised path '?' raw query */
    struct jwt_token tok;       /* points into ntarget or the head */
    char *target;               /* target for the backend with the token
                                   cut; NULL: req.target */
    size_t target_len;
    char *extra;                /* header lines added for the backend */
    size_t extra_len;
    struct upgrade_edit edit[MAX_HEADERS];  /* per client header */
    char *edit_value;           /* the one replaced value (token cut) */
    char *sub;                  /* the token's sub, owned */
    char *jti;                  /* the token's jti, owned */
    int64_t tok_exp;            /* the token's exp, 0 = none */
    int64_t tok_leeway;
    char *log_path;             /* the path for the access log (token
                                   parameters left out), owned */
    char *origin;               /* the Origin header for the log, owned */
};

/* Run the steps from k->step at now (seconds since the epoch). */
enum check_result checks_run(struct checks *k, double now);

/* Free what k owns (after taking what the caller keeps: set it NULL). */
void checks_free(struct checks *k);

#endif
