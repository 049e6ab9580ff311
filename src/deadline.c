/*
 * deadline.c - deadlines of a relaying session; see deadline.h.
 */
#include "deadline.h"

#include <string.h>

#include "units.h"

void
deadline_all(const struct session_times *s,
             const struct session_timeouts *c, double t[DL_COUNT])
{
    memset(t, 0, DL_COUNT * sizeof *t);
    if (c->max_lifetime_ms)
        t[DL_LIFETIME] = s->started + units_seconds(c->max_lifetime_ms);
    t[DL_EXPIRY] = s->expiry;
    if (c->idle_timeout_ms)
        t[DL_IDLE] = s->last_activity + units_seconds(c->idle_timeout_ms);
    if (c->write_timeout_ms) {
        if (s->cli_wblock)
            t[DL_STALL_CLI] = s->cli_wblock + units_seconds(c->write_timeout_ms);
        if (s->be_wblock)
            t[DL_STALL_BE] = s->be_wblock + units_seconds(c->write_timeout_ms);
    }
    if (c->quiet_ms && s->held)
        t[DL_QUIET] = s->held + units_seconds(c->quiet_ms);
    if (c->ping_interval_ms) {
        if (s->ping_sent > s->cli_rx) {
            if (c->pong_timeout_ms)
                t[DL_PONG] = s->ping_sent + units_seconds(c->pong_timeout_ms);
        } else {
            /* Ping a client that has been silent for ping_interval
             * (since its last byte or our last ping, whichever is
             * later). */
            double base = s->cli_rx > s->ping_sent ? s->cli_rx : s->ping_sent;
            t[DL_PING] = base + units_seconds(c->ping_interval_ms);
        }
    }
}

double
deadline_next(const double t[DL_COUNT])
{
    double d = 0;
    for (int i = 0; i < DL_COUNT; i++)
        if (t[i] != 0 && (d == 0 || t[i] < d))
            d = t[i];
    return d;
}

int
deadline_due(const double t[DL_COUNT], double now)
{
    for (int i = 0; i < DL_COUNT; i++)
        if (t[i] != 0 && now + 0.0005 >= t[i])
            return i;
    return -1;
}
