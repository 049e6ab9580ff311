/*
 * redis.h - a small asynchronous Redis client on a worker's event loop.
 *
 * hiredis does the protocol (redisFormatCommandArgv to encode,
 * redisReader to decode replies); the connection itself is wsguard's
 * transport (side.h), so the same code speaks redis:// and rediss://
 * (TLS): the hiredis of Debian 12 (0.14) has no TLS, and its async API
 * owns the socket. One client per worker thread, never shared.
 *
 * Commands are pipelined and answered in order. Each has a deadline
 * ([cluster] timeout): a Redis that accepts the connection but does not
 * answer fails the command (callback with NULL) at its deadline, and the
 * connection is dropped and made again with back-off (100 ms doubling to
 * 5 s). Nothing here blocks: while the connection is down, commands fail
 * at once and the caller applies its own policy (on_error).
 *
 * A connection is usable (and on_state(1) called, and the back-off reset)
 * only once Redis has answered the set-up (AUTH, SELECT and a PING): a
 * server that accepts connections but never answers, or refuses the
 * password, stays down and is retried with back-off.
 *
 * A client in subscriber mode (redis_subscribe) receives published
 * messages through on_message instead, renews its subscription after
 * every reconnect, and sends a PING every few seconds: a connection
 * whose path died silently is noticed and made again.
 */
#ifndef WSGUARD_REDIS_H
#define WSGUARD_REDIS_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "side.h"

/* A reply (NULL: failed, timed out or the connection went down). The
 * reply is freed after the callback returns. */
typedef void (*redis_cb)(void *priv, const redisReply *reply);

/* Connection state: up = 1 when usable, 0 when it is lost and after
 * every connection attempt that fails (each one is an error to count). */
typedef void (*redis_state_cb)(void *priv, int up);

/* A message published on a subscribed channel. */
typedef void (*redis_msg_cb)(void *priv, const char *channel,
                             const char *msg, size_t len);

struct redis_target {
    char *host;                 /* owned; the name for TLS */
    char *addr;                 /* numeric address host resolved to
                                   (owned), NULL: host is numeric */
    char *port;
    int db;
    int tls;                    /* rediss:// */
    SSL_CTX *tls_ctx;           /* client context for rediss:// */
    char *password;             /* AUTH, or NULL */
};

struct redis_pending;

struct redis {
    struct ev_loop *loop;
    const struct redis_target *target;
    double timeout;             /* seconds per command */
    enum {
        RS_DOWN = 0,            /* waiting to reconnect */
        RS_CONNECTING,          /* TCP connect in progress */
        RS_HANDSHAKE,           /* TLS handshake */
        RS_SETUP,               /* AUTH, SELECT, PING sent: not usable
                                   until Redis has answered them all */
        RS_READY                /* answered: usable */
    } state;
    struct side s;
    ev_timer timer;             /* connect/command deadline, back-off */
    double backoff;
    redisReader *reader;
    char *out;                  /* bytes to write */
    size_t out_len, out_off, out_cap;
    struct redis_pending *head, *tail;  /* sent, awaiting replies */
    unsigned npending;
    int internal;               /* replies still due to AUTH/SELECT/PING */
    int write_failed;           /* a write failed in redis_command():
                                   the connection is dropped from the
                                   timer, not under the caller */
    ev_timer keepalive;         /* subscriber: PING every KEEPALIVE s */
    int ping_out;               /* subscriber: a PING is unanswered */
    const char *subscribe;      /* channel, for a subscriber client */
    redis_state_cb on_state;
    redis_msg_cb on_message;
    void *priv;
    uint64_t errors;            /* failures (connects, commands): owner */
    char last_error[128];
};

/* Parse "redis[s]://[:password@]host[:port][/db]" into t (a password in
 * the URL is allowed but a password file is better). 0 or -1 with err. */
int redis_target_parse(const char *url, struct redis_target *t, char *err,
                       size_t cap);
void redis_target_free(struct redis_target *t);

/* Start connecting on loop (callbacks run there). */
void redis_init(struct redis *r, struct ev_loop *loop,
                const struct redis_target *t, double timeout,
                redis_state_cb on_state, void *priv);

/* Subscriber mode: after each connect, SUBSCRIBE channel; messages come
 * to on_message. Call before the connection is ready. */
void redis_subscribe(struct redis *r, const char *channel,
                     redis_msg_cb on_message);

/* Send a command (argv strings with lengths). 0: cb will be called
 * exactly once, later (never before this returns); -1: not connected or
 * too much in flight (cb is not called). */
int redis_command(struct redis *r, redis_cb cb, void *priv, int argc,
                  const char **argv, const size_t *argvlen);

int redis_ready(const struct redis *r);

/* Close the connection and fail what is pending (cb with NULL). */
void redis_close(struct redis *r);

#endif
