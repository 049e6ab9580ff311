/*
 * log.c - error and access logs; see log.h.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level_cur = LOG_INFO;
static atomic_bool log_json = true;
static atomic_int access_fd = STDOUT_FILENO;     /* -1 = off */

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int
log_setup(enum log_level level, bool json, const char *access_log)
{
    int fd = STDOUT_FILENO;

    if (access_log == NULL || strcmp(access_log, "stdout") == 0)
        fd = STDOUT_FILENO;
    else if (strcmp(access_log, "stderr") == 0)
        fd = STDERR_FILENO;
    else if (strcmp(access_log, "off") == 0)
        fd = -1;
    else {
        fd = open(access_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
                  0640);
        if (fd == -1)
            return -1;
    }
    /* The old file descriptor is left open on purpose: a worker may be
     * writing to it this very moment. So each reload that opens a file
     * leaves the previous one open (one descriptor per such reload). */
    atomic_store(&access_fd, fd);
    atomic_store(&log_level_cur, (int)level);
    atomic_store(&log_json, json);
    return 0;
}

int
log_enabled(enum log_level level)
{
    return (int)level <= atomic_load(&log_level_cur);
}

static size_t
fmt_time(char *out, size_t cap)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    int m = snprintf(out + n, cap - n, ".%03ldZ", ts.tv_nsec / 1000000);
    return n + (m > 0 ? (size_t)m : 0);
}

/* A bounded line builder: appends until full, then silently truncates. */
struct line {
    char *p;
    size_t len, cap;
};

static void
line_put(struct line *l, const char *s, size_t n)
{
    if (n > l->cap - l->len)
        n = l->cap - l->len;
    memcpy(l->p + l->len, s, n);
    l->len += n;
}

static void
line_str(struct line *l, const char *s)
{
    line_put(l, s, strlen(s));
}

static void line_fmt(struct line *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
line_fmt(struct line *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->p + l->len, l->cap - l->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->len += (size_t)n < l->cap - l->len ? (size_t)n : l->cap - l->len;
}

/* JSON string contents: quotes, backslashes and control characters
 * escaped; other bytes copied (the caller's text is UTF-8 or ASCII). */
static void
line_json(struct line *l, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            line_put(l, e, 2);
        } else if (ch < 0x20 || ch == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            line_put(l, e, 6);
        } else {
            line_put(l, (const char *)&s[i], 1);
        }
    }
}

static void
line_end(struct line *l)
{
    if (l->len == l->cap)
        l->len--;               /* keep room for the newline */
    l->p[l->len++] = '\n';
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;

    char msg[1024], buf[1600], ts[40];
    va_list ap;
    int saved = errno;

    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t mlen = (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
    fmt_time(ts, sizeof ts);

    struct line l = {buf, 0, sizeof buf};
    if (atomic_load(&log_json)) {
        line_fmt(&l, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts,
                 level_names[level]);
        line_json(&l, msg, mlen);
        line_str(&l, "\"}");
    } else {
        line_fmt(&l, "%s %s ", ts, level_names[level]);
        line_put(&l, msg, mlen);
    }
    line_end(&l);
    ssize_t w = write(STDERR_FILENO, buf, l.len);
    (void)w;
    errno = saved;
}

static void
rec_str(struct line *l, bool json, const char *key, const char *v, size_t n)
{
    if (v == NULL)
        return;
    if (json) {
        line_fmt(l, ",\"%s\":\"", key);
        line_json(l, v, n);
        line_str(l, "\"");
    } else {
        line_fmt(l, " %s=\"", key);
        line_json(l, v, n);
        line_str(l, "\"");
    }
}

static void
rec_num(struct line *l, bool json, const char *key, uint64_t v)
{
    line_fmt(l, json ? ",\"%s\":%llu" : " %s=%llu", key,
             (unsigned long long)v);
}

void
log_access(const struct access_rec *r)
{
    int fd = atomic_load(&access_fd);
    if (fd == -1)
        return;

    bool json = atomic_load(&log_json);
    char buf[4096], ts[40];
    struct line l = {buf, 0, sizeof buf};

    fmt_time(ts, sizeof ts);
    if (json)
        line_fmt(&l, "{\"ts\":\"%s\",\"event\":\"%s\"", ts, r->event);
    else
        line_fmt(&l, "%s event=%s", ts, r->event);
    rec_str(&l, json, "client_ip", r->client_ip,
            r->client_ip ? strlen(r->client_ip) : 0);
    rec_str(&l, json, "route", r->route, r->route ? strlen(r->route) : 0);
    rec_str(&l, json, "path", r->path, r->path_len);
    rec_str(&l, json, "origin", r->origin, r->origin_len);
    rec_str(&l, json, "sub", r->sub, r->sub ? strlen(r->sub) : 0);
    if (r->status)
        rec_num(&l, json, "status", (uint64_t)r->status);
    if (r->close_code)
        rec_num(&l, json, "close_code", (uint64_t)r->close_code);
    rec_str(&l, json, "closed_by", r->closed_by,
            r->closed_by ? strlen(r->closed_by) : 0);
    rec_str(&l, json, "reason", r->reason,
            r->reason ? strlen(r->reason) : 0);
    rec_num(&l, json, "bytes_in", r->bytes_in);
    rec_num(&l, json, "bytes_out", r->bytes_out);
    rec_num(&l, json, "msgs_in", r->msgs_in);
    rec_num(&l, json, "msgs_out", r->msgs_out);
    rec_num(&l, json, "duration_ms", r->duration_ms);
    rec_str(&l, json, "tls_version", r->tls_version,
            r->tls_version ? strlen(r->tls_version) : 0);
    if (json)
        line_str(&l, "}");
    line_end(&l);
    ssize_t w = write(fd, buf, l.len);
    (void)w;
}
