/*
 * log.c - error and access logs; see log.h.
 *
 * No worker thread ever blocks on a log: a line goes into the calling
 * thread's own ring (single producer, single consumer), and one writer
 * thread drains every ring to the log's file descriptor with ordinary
 * blocking writes. When a ring is full (the reader of stdout stopped, a
 * disk is slow) the line is dropped and counted (log_dropped(), the
 * metric wsguard_log_dropped_total); the session goes on. Before the
 * writer starts and after it stops, lines are written directly.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level_cur = LOG_INFO;
static atomic_bool log_json = true;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* ---- where lines go ---------------------------------------------------- */

enum dest { DEST_ERR = 0, DEST_ACCESS = 1 };

#define RING_SIZE ((size_t)256 * 1024)  /* per thread: about 1,000 access lines */
#define ENTRY_HDR 3             /* dest, length (2 bytes) */
#define LINE_MAX_LEN 4096

struct ring {
    _Atomic size_t head;        /* written by the thread that logs */
    _Atomic size_t tail;        /* written by the writer */
    stat_t dropped;             /* lines that did not fit */
    struct ring *_Atomic next;  /* rings are only ever added */
    char buf[RING_SIZE];
};

static struct {
    struct ring *_Atomic rings;
    pthread_mutex_t add_lock;   /* appending to rings */
    pthread_t thread;
    atomic_bool running;        /* lines go through the rings */
    atomic_bool stop;
    atomic_bool sleeping;       /* the writer waits on efd */
    int efd;                    /* eventfd that wakes the writer */
    atomic_int access_fd;       /* -1 = off */
    atomic_int next_access_fd;  /* -2 = none pending; else the fd the
                                   writer switches to (closing its own) */
} w = {
    .add_lock = PTHREAD_MUTEX_INITIALIZER,
    .efd = -1,
    .access_fd = STDOUT_FILENO,
    .next_access_fd = -2,
};

static _Thread_local struct ring *my_ring;

static int
open_access(const char *access_log, int *fd)
{
    if (access_log == NULL || strcmp(access_log, "stdout") == 0)
        *fd = STDOUT_FILENO;
    else if (strcmp(access_log, "stderr") == 0)
        *fd = STDERR_FILENO;
    else if (strcmp(access_log, "off") == 0)
        *fd = -1;
    else if ((*fd = open(access_log, O_WRONLY | O_APPEND | O_CREAT |
                         O_CLOEXEC, 0640)) == -1)
        return -1;
    return 0;
}

static int
is_std(int fd)
{
    return fd == STDOUT_FILENO || fd == STDERR_FILENO;
}

/* Make fd the access log's: at once before the writer runs, else handed
 * to the writer, which closes the descriptor it replaces (so a reload or
 * a reopen leaks nothing). */
static void
switch_access(int fd)
{
    if (!atomic_load(&w.running)) {
        int old = atomic_exchange(&w.access_fd, fd);
        if (old != fd && old >= 0 && !is_std(old))
            close(old);
        return;
    }
    int old = atomic_exchange(&w.next_access_fd, fd);
    if (old >= 0 && !is_std(old))
        close(old);             /* superseded before the writer took it */
    uint64_t one = 1;
    ssize_t r = write(w.efd, &one, sizeof one);
    (void)r;
}

static char *access_path;       /* main thread: for log_reopen() */

int
log_setup(enum log_level level, bool json, const char *access_log)
{
    int fd;

    if (open_access(access_log, &fd) == -1)
        return -1;
    switch_access(fd);
    free(access_path);
    access_path = access_log != NULL ? strdup(access_log) : NULL;
    atomic_store(&log_level_cur, (int)level);
    atomic_store(&log_json, json);
    return 0;
}

int
log_reopen(void)
{
    int fd;

    if (access_path == NULL || strcmp(access_path, "stdout") == 0 ||
        strcmp(access_path, "stderr") == 0 ||
        strcmp(access_path, "off") == 0)
        return 0;
    if (open_access(access_path, &fd) == -1)
        return -1;
    switch_access(fd);
    return 0;
}

static void
write_all(int fd, const char *p, size_t n)
{
    while (n > 0 && fd >= 0) {
        ssize_t r = write(fd, p, n);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
        } else if (r == -1 && errno == EINTR) {
            continue;
        } else {
            return;             /* nowhere to write: the lines are lost */
        }
    }
}

static struct ring *
ring_of_thread(void)
{
    struct ring *r = my_ring;

    if (r != NULL)
        return r;
    if ((r = calloc(1, sizeof *r)) == NULL)
        return NULL;
    pthread_mutex_lock(&w.add_lock);
    atomic_store(&r->next, atomic_load(&w.rings));
    atomic_store(&w.rings, r);
    pthread_mutex_unlock(&w.add_lock);
    my_ring = r;
    return r;
}

/* One line for dest: into this thread's ring (dropped and counted when
 * it does not fit), or written at once when no writer runs. */
static void
emit(enum dest d, const char *p, size_t n)
{
    struct ring *r;

    if (!atomic_load(&w.running)) {
        write_all(d == DEST_ERR ? STDERR_FILENO : atomic_load(&w.access_fd),
                  p, n);
        return;
    }
    if ((r = ring_of_thread()) == NULL)
        return;
    size_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    size_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (n > LINE_MAX_LEN || RING_SIZE - (head - tail) < ENTRY_HDR + n) {
        stats_add(&r->dropped, 1);
        return;
    }
    char hdr[ENTRY_HDR] = { (char)d, (char)(n >> 8), (char)(n & 0xff) };
    for (size_t i = 0; i < ENTRY_HDR; i++)
        r->buf[(head + i) % RING_SIZE] = hdr[i];
    size_t at = (head + ENTRY_HDR) % RING_SIZE;
    size_t first = n < RING_SIZE - at ? n : RING_SIZE - at;
    memcpy(r->buf + at, p, first);
    memcpy(r->buf, p + first, n - first);
    atomic_store(&r->head, head + ENTRY_HDR + n);      /* seq_cst */
    /* Wake the writer only when it sleeps (Dekker with its check). */
    if (atomic_load(&w.sleeping)) {
        uint64_t one = 1;
        ssize_t x = write(w.efd, &one, sizeof one);
        (void)x;
    }
}

/* The writer's batch: consecutive lines for one descriptor, written in
 * one call. */
struct batch {
    int dest;
    size_t len;
    char buf[64 * 1024];
};

static void
batch_flush(struct batch *b)
{
    if (b->len > 0)
        write_all(b->dest == DEST_ERR ? STDERR_FILENO
                                      : atomic_load(&w.access_fd),
                  b->buf, b->len);
    b->len = 0;
}

/* Copy out every line of r; returns how many there were. */
static size_t
drain_ring(struct ring *r, struct batch *b)
{
    size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    size_t head = atomic_load_explicit(&r->head, memory_order_acquire);
    size_t lines = 0;

    while (tail != head) {
        unsigned char h[ENTRY_HDR];
        for (size_t i = 0; i < ENTRY_HDR; i++)
            h[i] = (unsigned char)r->buf[(tail + i) % RING_SIZE];
        size_t n = (size_t)h[1] << 8 | h[2];
        if (b->dest != h[0] || b->len + n > sizeof b->buf) {
            batch_flush(b);
            b->dest = h[0];
        }
        size_t at = (tail + ENTRY_HDR) % RING_SIZE;
        size_t first = n < RING_SIZE - at ? n : RING_SIZE - at;
        memcpy(b->buf + b->len, r->buf + at, first);
        memcpy(b->buf + b->len + first, r->buf, n - first);
        b->len += n;
        tail += ENTRY_HDR + n;
        lines++;
    }
    /* The bytes are copied out: the producer may reuse them. */
    atomic_store_explicit(&r->tail, tail, memory_order_release);
    return lines;
}

static size_t
drain_all(struct batch *b)
{
    size_t lines = 0;

    for (struct ring *r = atomic_load(&w.rings); r != NULL;
         r = atomic_load(&r->next))
        lines += drain_ring(r, b);
    batch_flush(b);
    return lines;
}

static void *
writer_main(void *arg)
{
    static struct batch b;

    (void)arg;
    for (;;) {
        int fd = atomic_exchange(&w.next_access_fd, -2);
        if (fd != -2) {
            /* Lines logged before the switch go to the old file. */
            drain_all(&b);
            int old = atomic_exchange(&w.access_fd, fd);
            if (old != fd && old >= 0 && !is_std(old))
                close(old);
        }
        if (drain_all(&b) > 0)
            continue;
        if (atomic_load(&w.stop))
            break;
        atomic_store(&w.sleeping, true);
        if (drain_all(&b) == 0 && !atomic_load(&w.stop) &&
            atomic_load(&w.next_access_fd) == -2) {
            uint64_t v;
            ssize_t r = read(w.efd, &v, sizeof v);
            (void)r;
        }
        atomic_store(&w.sleeping, false);
    }
    return NULL;
}

int
log_start(void)
{
    if (atomic_load(&w.running))
        return 0;
    w.efd = eventfd(0, EFD_CLOEXEC);
    if (w.efd == -1)
        return -1;
    atomic_store(&w.running, true);
    if (pthread_create(&w.thread, NULL, writer_main, NULL) != 0) {
        atomic_store(&w.running, false);
        close(w.efd);
        w.efd = -1;
        return -1;
    }
    return 0;
}

int
log_stop(void)
{
    struct timespec until;
    uint64_t one = 1;

    if (!atomic_load(&w.running))
        return 0;
    atomic_store(&w.stop, true);
    ssize_t r = write(w.efd, &one, sizeof one);
    (void)r;
    /* A writer stuck on a reader that never reads (a full pipe) is not
     * waited for long: the process exits anyway. */
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    if (pthread_timedjoin_np(w.thread, NULL, &until) != 0)
        return -1;
    atomic_store(&w.running, false);
    atomic_store(&w.stop, false);
    close(w.efd);
    w.efd = -1;
    for (struct ring *p = atomic_load(&w.rings), *next; p != NULL; p = next) {
        next = atomic_load(&p->next);
        free(p);
    }
    atomic_store(&w.rings, NULL);
    my_ring = NULL;
    return 0;
}

uint64_t
log_dropped(void)
{
    uint64_t n = 0;

    for (struct ring *r = atomic_load(&w.rings); r != NULL;
         r = atomic_load(&r->next))
        n += stats_get(&r->dropped);
    return n;
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
    emit(DEST_ERR, buf, l.len);
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
    if (atomic_load(&w.access_fd) == -1 &&
        atomic_load(&w.next_access_fd) == -2)
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
    rec_str(&l, json, "deflate", r->deflate,
            r->deflate ? strlen(r->deflate) : 0);
    if (json)
        line_str(&l, "}");
    line_end(&l);
    emit(DEST_ACCESS, buf, l.len);
}
