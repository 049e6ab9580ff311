/*
 * deadline.h - the deadlines of a relaying session (pure).
 *
 * wsguard keeps ONE timer per connection, whatever the number of
 * purposes: its expiry is the earliest of the deadlines computed here.
 * Relaying only stores time stamps (last activity, last client byte,
 * when output got blocked); nothing touches the timer per message. When
 * the timer fires, deadline_due() says which deadline (if any) has really
 * passed, in priority order, and the timer is re-armed from the rest -
 * libev's "strategy #3". libev keeps all timers of a loop in one 4-heap,
 * so 100,000 sessions cost 100,000 heap entries that move only when they
 * fire.
 */
#ifndef WSGUARD_DEADLINE_H
#define WSGUARD_DEADLINE_H

#include <stdint.h>

/* In priority order: when several are due, the first is acted on. */
enum deadline_kind {
    DL_LIFETIME = 0,            /* max_lifetime: close 1001 */
    DL_EXPIRY,                  /* token exp + leeway: close 1008 */
    DL_IDLE,                    /* idle_timeout: close 1001 */
    DL_STALL_CLI,               /* output to the client blocked too long */
    DL_STALL_BE,                /* output to the backend blocked too long */
    DL_PONG,                    /* our ping unanswered: drop the client */
    DL_PING,                    /* time to ping a silent client */
    DL_QUIET,                   /* quiet for a while: give back the TLS
                                   record buffers (no close) */
    DL_COUNT
};

/* Times in seconds on the event loop's clock; 0 = never happened. */
struct session_times {
    double started;
    double last_activity;       /* last byte read from either side */
    double cli_rx;              /* last byte read from the client */
    double ping_sent;           /* our last ping (outstanding while
                                   > cli_rx) */
    double cli_wblock;          /* output to the client blocked since */
    double be_wblock;           /* output to the backend blocked since */
    double expiry;              /* token exp + leeway, 0 = none */
    double held;                /* TLS record buffers may be held since
                                   (the last activity), 0 = released */
};

/* The configuration that matters, in milliseconds; 0 = off. */
struct session_timeouts {
    uint64_t max_lifetime_ms;
    uint64_t idle_timeout_ms;
    uint64_t write_timeout_ms;
    uint64_t ping_interval_ms;
    uint64_t pong_timeout_ms;
    uint64_t quiet_ms;          /* release the buffers this long after
                                   the last activity */
};

/* Fill t[DL_COUNT] with every deadline (0 = none). */
void deadline_all(const struct session_times *s,
                  const struct session_timeouts *c, double t[DL_COUNT]);

/* The earliest deadline of t, or 0 when there is none. */
double deadline_next(const double t[DL_COUNT]);

/* The first deadline of t (in priority order) that has passed at now, or
 * -1. A deadline counts as passed 0.5 ms early, since timers may fire a
 * hair before their time. */
int deadline_due(const double t[DL_COUNT], double now);

#endif
