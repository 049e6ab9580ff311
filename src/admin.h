/*
 * admin.h - the admin listener ([admin] listen): GET /metrics
 * (Prometheus text format 0.0.4), /healthz, /readyz, /status (a live HTML
 * page) and /status.json; and the client side of `wsguard --healthcheck`.
 *
 * The listener has its own socket, thread and ev_loop. It only reads
 * what the workers write: their counters (struct stats, relaxed atomic
 * loads, summed at scrape time), the backend results of the current
 * runtime snapshot (atomics) and the per-IP table (iplimit_top(), one
 * shard lock at a time). A worker never waits for it.
 *
 * Threads: admin_listen(), admin_start(), admin_reloaded(),
 * admin_reload_failed(), admin_draining() and admin_stop() are called
 * from the main thread, in that order of life; admin_healthcheck() is a
 * command of its own (no server runs in that process).
 */
#ifndef WSGUARD_ADMIN_H
#define WSGUARD_ADMIN_H

#include <stddef.h>

#include "config.h"

struct runtime;
struct worker;

/* Bind and listen on cfg's [admin] listen (as root, before privileges
 * are dropped: it may be a privileged port). Logs "admin listening on
 * HOST:PORT". Returns 0 (also when the listener is off), or -1 with a
 * message in err (the start must fail: a configured admin listener that
 * cannot bind is an error, not a warning). */
int admin_listen(const struct config *cfg, char *err, size_t cap);

/* What is unusual about cfg's [admin] settings, said at start-up, on
 * reload and by -t: a listener on a non-loopback address (it reveals
 * client addresses), an empty allow list. */
void admin_warn(const struct config *cfg);

/* Start the admin thread (after the workers): it reads the counters of
 * ws[0..n) (which must outlive admin_stop()) and serves rt (a reference
 * is taken). version is shown in /status and wsguard_build_info. No-op
 * when the listener is off. 0 or -1. */
int admin_start(struct worker *ws, unsigned n, struct runtime *rt,
                const char *version);

/* A reload succeeded: rt is the new snapshot (a reference is taken);
 * its [admin] allow list applies from the next admin connection. */
void admin_reloaded(struct runtime *rt);

/* A reload failed; why is shown on the status page (no secrets in it). */
void admin_reload_failed(const char *why);

/* SIGTERM: /readyz answers 503 from now on. Called before the workers
 * are told to drain, so a load balancer sees it before the listeners
 * close. */
void admin_draining(void);

/* A readiness condition besides the drain, for a dependency such as the
 * coming Redis cluster mode (on_error = closed): fn is called on the
 * admin thread for each /readyz and /status.json, must not block, and
 * returns 1 when ready, else 0 with a short reason in why (then /readyz
 * is 503 with that reason). Set it before admin_start(); NULL = none. */
typedef int (*admin_ready_fn)(char *why, size_t cap);
void admin_set_ready_check(admin_ready_fn fn);

/* Stop the thread, close the listener and drop the snapshot. */
void admin_stop(void);

/*
 * `wsguard --healthcheck`: GET /healthz on cfg's [admin] listen (a
 * wildcard address is probed on loopback), within timeout seconds.
 * Returns 0 when the answer is 200; otherwise prints one line on stderr
 * saying why and returns 1.
 */
int admin_healthcheck(const struct config *cfg, double timeout);

#endif
