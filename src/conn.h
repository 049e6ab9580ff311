/*
 * conn.h - one client session: the client leg (TLS or plain TCP), the
 * backend leg (plain TCP) and the state machine that drives both (see
 * conn.c and docs/architecture.md for the states).
 *
 * Everything here runs on the thread of the worker that accepted the
 * connection.
 */
#ifndef WSGUARD_CONN_H
#define WSGUARD_CONN_H

#include <stdint.h>
#include <sys/socket.h>

#include "policy.h"
#include "revoke.h"

struct worker;

/* Take ownership of an accepted, non-blocking socket. On failure the
 * socket is closed. */
void conn_accept(struct worker *w, int fd, const struct sockaddr *sa,
                 socklen_t salen);

/* drain_timeout passed: close every relaying session of w with 1001
 * (requests still in their handshake are refused with 503 by the
 * capacity check, which reads w->draining). */
void conn_drain_all(struct worker *w);

/* The drain's grace after drain_timeout ran out: close every connection
 * of w now, whatever its peers do, so the process exits in a bounded
 * time. */
void conn_kill_all(struct worker *w);

/* The fleet-wide count's answer for a parked connection has come (ref:
 * the packed await reference it was parked under, in w->waits): the
 * checks go on. Returns 1, or 0 when the connection is gone meanwhile
 * (it is not touched; the caller gives the slot back). */
int conn_answer_shared(struct worker *w, uintptr_t ref,
                       enum shared_answer a);

/* Close w's live sessions that rv names with 1008 "revoked"; returns how
 * many. (Connections still in their handshake are checked against the
 * revocation table when their relay would start.) */
unsigned conn_revoke(struct worker *w, const struct revocation *rv);

#endif
