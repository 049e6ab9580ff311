/*
 * stats.c - the name tables of stats.h.
 */
#include "stats.h"

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
};

const char *const direction_label[DIR_COUNT] = {
    [DIR_IN] = "in",
    [DIR_OUT] = "out",
};
