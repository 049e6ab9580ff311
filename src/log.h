/*
 * log.h - the error log (stderr) and the access log.
 *
 * Error log: one line per event on stderr, JSON ({"ts","level","msg"}) or
 * text ("TS LEVEL msg"), filtered by level. Access log: one line per
 * session end or refusal (the fields are listed in docs/configuration.md, [log]), JSON or
 * key=value text, to stdout, stderr, a file (O_APPEND) or nowhere.
 *
 * Logging never blocks the thread that logs: once log_start() has run, a
 * line goes into the calling thread's bounded buffer and a writer thread
 * writes it out; a line that does not fit is dropped and counted
 * (log_dropped()). Lines are whole and never interleave. log_setup(),
 * log_reopen(), log_start() and log_stop() are called from the main
 * thread; the rest is thread-safe.
 */
#ifndef WSGUARD_LOG_H
#define WSGUARD_LOG_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "stats.h"

/* Returns 0, or -1 if the access log file cannot be opened (errno set).
 * Called again on reload: a new file replaces the old one, which is
 * closed once every line logged before is written. */
int log_setup(enum log_level level, bool json, const char *access_log);

/* Open the access-log file again (SIGUSR1, after logrotate moved it);
 * stdout, stderr and off are left alone. 0, or -1 (errno set). */
int log_reopen(void);

/* Start the writer thread (before any worker); 0 or -1. */
int log_start(void);

/* Write out what is buffered and stop the writer (at exit). Waits at
 * most a second for a log reader that does not read: -1 then (the writer
 * still runs; call again to wait more), else 0. */
int log_stop(void);

/* Lines dropped so far because a buffer was full (any thread). */
uint64_t log_dropped(void);

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
    const char *deflate;        /* sessions: permessage-deflate as agreed
                                   (NULL: not) */
};

void log_access(const struct access_rec *r);

#endif
