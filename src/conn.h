/*
 * conn.h - one client session: the client leg (TLS or plain TCP), the
 * backend leg (plain TCP) and the state machine that drives both.
 *
 *   accept -> TLS_HANDSHAKE -> REQ_READ -> (policy) -> BE_CONNECT ->
 *   BE_SEND -> BE_READ -> CLI_101 -> RELAY -> CLOSING -> (freed)
 *        any refusal before the client's 101 -> REFUSING -> (freed)
 *
 * Everything here runs on the thread of the worker that accepted the
 * connection. conn.c is the only code that changes a connection's state
 * or frees it; see docs/architecture.md.
 */
#ifndef WSGUARD_CONN_H
#define WSGUARD_CONN_H

#include <sys/socket.h>

struct worker;

/* Take ownership of an accepted, non-blocking socket. On failure the
 * socket is closed. */
void conn_accept(struct worker *w, int fd, const struct sockaddr *sa,
                 socklen_t salen);

/* drain_timeout passed: close every relaying session of w with 1001
 * (requests still in their handshake are refused with 503 by the policy
 * step, which checks w->draining). */
void conn_drain_all(struct worker *w);

#endif
