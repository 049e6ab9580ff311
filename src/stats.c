/*
 * stats.c - the name tables of stats.h.
 */
#include "stats.h"

#include <stdio.h>
#include <string.h>

const char *const enforce_label[ENF_COUNT] = {
    [ENF_PROTOCOL] = "protocol",
    [ENF_PAYLOAD] = "max_payload",
    [ENF_RATE] = "rate",
    [ENF_CONTROL] = "control_frames",
    [ENF_PONG] = "pong_timeout",
    [ENF_IDLE] = "idle_timeout",
    [ENF_LIFETIME] = "max_lifetime",
    [ENF_WRITE_STALL] = "write_timeout",
    [ENF_EXPIRY] = "token_expiry",
    [ENF_REVOKED] = "revoked",
    [ENF_INFLATE_SIZE] = "inflate_size",
    [ENF_INFLATE_RATIO] = "inflate_ratio",
    [ENF_INFLATE_INVALID] = "inflate_invalid",
};

const char *const direction_label[DIR_COUNT] = {
    [DIR_IN] = "in",
    [DIR_OUT] = "out",
};

const char *const form_label[FORM_COUNT] = {
    [FORM_COMPRESSED] = "compressed",
    [FORM_UNCOMPRESSED] = "uncompressed",
};

const int close_codes[CLOSE_CODE_COUNT - 1] = {
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011,
    1014,
};

const char *const closed_by_label[BY_COUNT] = {
    [BY_CLIENT] = "client",
    [BY_BACKEND] = "backend",
    [BY_WSGUARD] = "wsguard",
};

const double histo_bounds[HISTO_BUCKETS - 1] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
    2.5, 5,
};

stat_t stats_reloads[2];

int
stats_close_index(int code)
{
    for (int i = 0; i < CLOSE_CODE_COUNT - 1; i++)
        if (close_codes[i] == code)
            return i;
    return CLOSE_CODE_COUNT - 1;
}

void
stats_observe(struct histo *h, double seconds)
{
    int i = 0;

    if (seconds < 0)
        seconds = 0;
    while (i < HISTO_BUCKETS - 1 && seconds > histo_bounds[i])
        i++;
    stats_add(&h->bucket[i], 1);
    stats_add(&h->sum_us, (uint64_t)(seconds * 1e6));
}

struct route_stat *
stats_route(struct stats *st, const char *name)
{
    unsigned n = atomic_load_explicit(&st->routes_n, memory_order_relaxed);

    for (unsigned i = 0; i < n; i++)
        if (strcmp(st->routes[i].name, name) == 0)
            return &st->routes[i];
    if (n == STATS_ROUTES)
        return NULL;
    snprintf(st->routes[n].name, sizeof st->routes[n].name, "%s", name);
    /* The name is complete before a reporter can see the entry. */
    atomic_store_explicit(&st->routes_n, n + 1, memory_order_release);
    return &st->routes[n];
}
