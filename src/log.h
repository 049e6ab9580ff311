/*
 * log.h - the error log (stderr) and the access log.
 *
 * Error log: one line per event on stderr, JSON ({"ts","level","msg"}) or
 * text ("TS LEVEL msg"), filtered by level. Access log: one line per
 * session end or refusal (the fields are listed in docs/configuration.md, [log]), JSON or
 * key=value text, to stdout, stderr, a file (O_APPEND) or nowhere.
 * Each line is written with a single write(2), so lines from several
 * worker threads never interleave. log_setup() is called from the main
 * thread before workers start (and again on reload); the rest is
 * thread-safe.
 */
#ifndef WSGUARD_LOG_H
#define WSGUARD_LOG_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

/* Returns 0, or -1 if the access log file cannot be opened (errno set). */
int log_setup(enum log_level level, bool json, const char *access_log);

void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

int log_enabled(enum log_level level);

/* One access-log record. Strings may be NULL (omitted) and need not be
 * NUL-terminated beyond their length; they are JSON-escaped. */
struct access_rec {
    const char *event;          /* "session" or "reject" */
    const char *client_ip;
    const char *route;
    const char *path;  size_t path_len;     /* token already removed */
    const char *origin; size_t origin_len;
    const char *sub;
    int status;                 /* refusals: HTTP status; 0 = omit */
    int close_code;             /* sessions: code sent/relayed; 0 = none */
    const char *closed_by;      /* "client", "backend", "wsguard" */
    const char *reason;
    uint64_t bytes_in, bytes_out, msgs_in, msgs_out;
    uint64_t duration_ms;
    const char *tls_version;
};

void log_access(const struct access_rec *r);

#endif
