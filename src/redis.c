/*
 * redis.c - a small asynchronous Redis client (see redis.h).
 */
#include "redis.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"

#define BACKOFF_MIN 0.1
#define BACKOFF_MAX 5.0
#define MAX_PENDING 65536       /* commands in flight: beyond, refuse */
#define MAX_OUT (4u << 20)      /* bytes queued to write: beyond, refuse */
#define KEEPALIVE 5.0           /* s between a subscriber's PINGs */

struct redis_pending {
    struct redis_pending *next;
    redis_cb cb;
    void *priv;
    double deadline;
};

static void redis_io_cb(struct ev_loop *loop, ev_io *io, int revents);
static void redis_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);

/* ---- targets ------------------------------------------------------------ */

int
redis_target_parse(const char *url, struct redis_target *t, char *err,
                   size_t cap)
{
    const char *p, *host, *end;

    memset(t, 0, sizeof *t);
    if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else if (strncmp(url, "rediss://", 9) == 0) {
        p = url + 9;
        t->tls = 1;
    } else {
        snprintf(err, cap, "not a redis:// or rediss:// URL");
        return -1;
    }
    const char *at = strchr(p, '@');
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon != NULL ? colon + 1 : p;
        t->password = strndup(pw, (size_t)(at - pw));
        p = at + 1;
    }
    host = p;
    if (*host == '[') {                 /* [v6]:port */
        end = strchr(host, ']');
        if (end == NULL) {
            snprintf(err, cap, "unterminated [address]");
            goto fail;
        }
        t->host = strndup(host + 1, (size_t)(end - host - 1));
        p = end + 1;
    } else {
        end = host + strcspn(host, ":/");
        t->host = strndup(host, (size_t)(end - host));
        p = end;
    }
    if (*p == ':') {
        const char *ps = ++p;
        p += strcspn(p, "/");
        t->port = strndup(ps, (size_t)(p - ps));
    } else {
        t->port = strdup("6379");
    }
    if (*p == '/' && p[1] != '\0') {
        char *e;
        long db = strtol(p + 1, &e, 10);
        if (*e != '\0' || db < 0 || db > 1000000) {
            snprintf(err, cap, "bad database number \"%s\"", p + 1);
            goto fail;
        }
        t->db = (int)db;
    }
    if (t->host == NULL || t->port == NULL || t->host[0] == '\0' ||
        t->port[0] == '\0') {
        snprintf(err, cap, "no host");
        goto fail;
    }
    return 0;
fail:
    redis_target_free(t);
    return -1;
}

void
redis_target_free(struct redis_target *t)
{
    free(t->host);
    free(t->addr);
    free(t->port);
    if (t->password != NULL) {
        explicit_bzero(t->password, strlen(t->password));
        free(t->password);
    }
    if (t->tls_ctx != NULL)
        SSL_CTX_free(t->tls_ctx);
    memset(t, 0, sizeof *t);
}

/* ---- the connection ----------------------------------------------------- */

static void
set_error(struct redis *r, const char *what, int err)
{
    snprintf(r->last_error, sizeof r->last_error, "%s%s%s", what,
             err ? ": " : "", err ? strerror(err) : "");
}

static void
arm_timer(struct redis *r, double after)
{
    ev_timer_stop(r->loop, &r->timer);
    ev_timer_set(&r->timer, after > 0 ? after : 0, 0);
    ev_timer_start(r->loop, &r->timer);
}

/* The head command's deadline, or nothing while idle. */
static void
arm_for_pending(struct redis *r)
{
    ev_timer_stop(r->loop, &r->timer);
    if (r->head != NULL)
        arm_timer(r, r->head->deadline - ev_now(r->loop));
}

static void
fail_pending(struct redis *r)
{
    struct redis_pending *p;

    while ((p = r->head) != NULL) {
        r->head = p->next;
        r->npending--;
        if (p->cb != NULL)
            p->cb(p->priv, NULL);
        free(p);
    }
    r->tail = NULL;
}

/* Drop the connection; try again after the back-off. */
static void
lost(struct redis *r, const char *why, int err)
{
    set_error(r, why, err);
    r->errors++;
    log_warn("redis %s:%s: %s", r->target->host, r->target->port,
             r->last_error);
    side_close(&r->s);
    r->s.eof = 0;
    r->s.shut = 0;
    if (r->reader != NULL) {
        redisReaderFree(r->reader);
        r->reader = NULL;
    }
    r->out_len = r->out_off = 0;
    r->internal = 0;
    r->write_failed = 0;
    r->ping_out = 0;
    ev_timer_stop(r->loop, &r->keepalive);
    r->state = RS_DOWN;
    fail_pending(r);
    arm_timer(r, r->backoff);
    r->backoff = r->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : r->backoff * 2;
    if (r->on_state != NULL)    /* lost, or an attempt that failed */
        r->on_state(r->priv, 0);
}

static int
out_append(struct redis *r, const char *cmd, size_t n)
{
    if (r->out_off > 0 && r->out_off == r->out_len)
        r->out_len = r->out_off = 0;
    if (r->out_len + n > r->out_cap) {
        size_t cap = r->out_cap ? r->out_cap : 4096;
        while (cap < r->out_len + n)
            cap *= 2;
        if (cap > MAX_OUT)
            return -1;
        char *o = realloc(r->out, cap);
        if (o == NULL)
            return -1;
        r->out = o;
        r->out_cap = cap;
    }
    memcpy(r->out + r->out_len, cmd, n);
    r->out_len += n;
    return 0;
}

static int
send_argv(struct redis *r, int argc, const char **argv, const size_t *len)
{
    char *cmd = NULL;
    int n = redisFormatCommandArgv(&cmd, argc, argv, len);
    int rc;

    if (n < 0)
        return -1;
    rc = out_append(r, cmd, (size_t)n);
    redisFreeCommand(cmd);
    return rc;
}

static void
watch(struct redis *r)
{
    int wr = r->out_off < r->out_len || r->state == RS_CONNECTING ||
             r->s.rd_wants_wr || r->s.hs_wants_wr;
    int rd = r->state != RS_CONNECTING;

    if (r->state == RS_HANDSHAKE && r->s.hs_wants_wr)
        rd = 0;
    side_watch(&r->s, rd, wr);
}

/* Write what is queued as far as the socket takes it: 0 (all written or
 * the rest waits for writability), -1 on an error (errno set). */
static int
try_flush(struct redis *r)
{
    while (r->out_off < r->out_len) {
        size_t n;
        enum io_result res = side_write(&r->s, r->out + r->out_off,
                                        r->out_len - r->out_off, &n);
        if (res == IO_AGAIN)
            return 0;
        if (res != IO_OK)
            return -1;
        r->out_off += n;
    }
    r->out_len = r->out_off = 0;
    return 0;
}

static void
flush_out(struct redis *r)
{
    if (try_flush(r) != 0)
        lost(r, "write failed", errno);
}

/* Connected: AUTH, SELECT and a PING go first; the connection is usable
 * once all three are answered (dispatch), and SUBSCRIBE follows them. */
static void
begin_setup(struct redis *r)
{
    const struct redis_target *t = r->target;
    char db[16];

    r->state = RS_SETUP;
    arm_timer(r, r->timeout);
    if (t->password != NULL) {
        const char *a[] = { "AUTH", t->password };
        size_t l[] = { 4, strlen(t->password) };
        send_argv(r, 2, a, l);
        r->internal++;
    }
    if (t->db != 0) {
        snprintf(db, sizeof db, "%d", t->db);
        const char *a[] = { "SELECT", db };
        size_t l[] = { 6, strlen(db) };
        send_argv(r, 2, a, l);
        r->internal++;
    }
    {
        const char *a[] = { "PING" };
        size_t l[] = { 4 };
        send_argv(r, 1, a, l);
        r->internal++;
    }
    if (r->subscribe != NULL) {
        const char *a[] = { "SUBSCRIBE", r->subscribe };
        size_t l[] = { 9, strlen(r->subscribe) };
        send_argv(r, 2, a, l);
    }
    flush_out(r);
}

/* Redis answered the set-up: usable from now on. */
static void
became_ready(struct redis *r)
{
    r->state = RS_READY;
    r->backoff = BACKOFF_MIN;
    arm_for_pending(r);
    if (r->subscribe != NULL) {
        ev_timer_set(&r->keepalive, KEEPALIVE, KEEPALIVE);
        ev_timer_start(r->loop, &r->keepalive);
    }
    if (r->on_state != NULL)
        r->on_state(r->priv, 1);
}

static void
do_connect(struct redis *r)
{
    const struct redis_target *t = r->target;
    struct addrinfo hints = {0}, *res = NULL;
    int fd, e;

    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    /* Only numeric addresses here: a name was resolved to one when the
     * configuration was loaded (redis_target_parse's caller), never on a
     * worker thread. */
    if ((e = getaddrinfo(t->addr != NULL ? t->addr : t->host, t->port,
                         &hints, &res)) != 0) {
        set_error(r, gai_strerror(e), 0);
        lost(r, "bad address", 0);
        return;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                0);
    if (fd == -1) {
        freeaddrinfo(res);
        lost(r, "socket", errno);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (side_open_client(&r->s, r->loop, fd, t->tls ? t->tls_ctx : NULL,
                         t->host) != 0) {
        freeaddrinfo(res);
        lost(r, "TLS session", 0);
        return;
    }
    r->reader = redisReaderCreate();
    if (connect(fd, res->ai_addr, res->ai_addrlen) == -1 &&
        errno != EINPROGRESS) {
        e = errno;
        freeaddrinfo(res);
        lost(r, "connect", e);
        return;
    }
    freeaddrinfo(res);
    r->state = RS_CONNECTING;
    arm_timer(r, r->timeout);
    watch(r);
}

static void
dispatch(struct redis *r, redisReply *reply)
{
    if (r->internal > 0) {
        r->internal--;
        if (reply->type == REDIS_REPLY_ERROR) {
            char why[100];
            snprintf(why, sizeof why, "setup refused: %.*s",
                     (int)(reply->len < 80 ? reply->len : 80), reply->str);
            lost(r, why, 0);
        } else if (r->internal == 0) {
            became_ready(r);
        }
        return;
    }
    if (r->subscribe != NULL) {
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
            reply->element[0]->type == REDIS_REPLY_STRING &&
            strcmp(reply->element[0]->str, "pong") == 0) {
            r->ping_out = 0;
            return;
        }
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 3 &&
            reply->element[0]->type == REDIS_REPLY_STRING &&
            strcmp(reply->element[0]->str, "message") == 0 &&
            reply->element[2]->type == REDIS_REPLY_STRING &&
            r->on_message != NULL)
            r->on_message(r->priv, reply->element[1]->str,
                          reply->element[2]->str, reply->element[2]->len);
        return;
    }
    struct redis_pending *p = r->head;
    if (p == NULL) {
        lost(r, "unexpected reply", 0);
        return;
    }
    r->head = p->next;
    if (r->head == NULL)
        r->tail = NULL;
    r->npending--;
    if (p->cb != NULL)
        p->cb(p->priv, reply);
    free(p);
}

static void
read_replies(struct redis *r)
{
    char buf[16384];

    for (int i = 0; i < 8 && r->state >= RS_SETUP; i++) {
        size_t n;
        enum io_result res = side_read(&r->s, buf, sizeof buf, &n);
        if (res == IO_AGAIN)
            break;
        if (res != IO_OK) {
            lost(r, res == IO_EOF ? "closed by the server" : "read failed",
                 res == IO_EOF ? 0 : errno);
            return;
        }
        if (redisReaderFeed(r->reader, buf, n) != REDIS_OK) {
            lost(r, "protocol error", 0);
            return;
        }
        void *reply;
        while (r->state >= RS_SETUP) {
            if (redisReaderGetReply(r->reader, &reply) != REDIS_OK) {
                lost(r, "protocol error", 0);
                return;
            }
            if (reply == NULL)
                break;
            dispatch(r, reply);
            freeReplyObject(reply);
        }
        if (n < sizeof buf && !side_pending(&r->s))
            break;
    }
}

static void
redis_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    struct redis *r = io->data;
    int err = 0;
    socklen_t len = sizeof err;

    (void)loop;
    switch (r->state) {
    case RS_CONNECTING:
        if (getsockopt(r->s.fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
            err = errno;
        if (err != 0) {
            lost(r, "connect", err);
            return;
        }
        if (r->s.ssl != NULL) {
            r->state = RS_HANDSHAKE;
        } else {
            begin_setup(r);
            break;
        }
        __attribute__((fallthrough));   /* TLS: the handshake starts */
    case RS_HANDSHAKE: {
        char why[200];
        enum io_result res = side_handshake(&r->s, why, sizeof why);
        if (res == IO_AGAIN)
            break;
        if (res != IO_OK) {
            char msg[240];
            snprintf(msg, sizeof msg, "TLS: %s", why);
            lost(r, msg, 0);
            return;
        }
        begin_setup(r);
        break;
    }
    case RS_SETUP:
    case RS_READY:
        if ((revents & EV_WRITE) || r->s.wr_wants_rd)
            flush_out(r);
        if (r->state >= RS_SETUP)
            read_replies(r);
        if (r->state == RS_READY)
            arm_for_pending(r);
        break;
    default:
        return;
    }
    if (r->state != RS_DOWN)
        watch(r);
}

static void
redis_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct redis *r = t->data;

    (void)loop;
    switch (r->state) {
    case RS_DOWN:
        do_connect(r);
        break;
    case RS_CONNECTING:
    case RS_HANDSHAKE:
        lost(r, "connect timed out", 0);
        break;
    case RS_SETUP:
        lost(r, "no answer to the connection set-up in time", 0);
        break;
    case RS_READY:
        if (r->write_failed)
            lost(r, "write failed", 0);
        else if (r->head != NULL && r->head->deadline <= ev_now(r->loop) + 0.0005)
            lost(r, "no answer in time", 0);
        else
            arm_for_pending(r);
        break;
    }
}

/* A subscriber's PING: the previous one must have been answered. */
static void
keepalive_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct redis *r = t->data;
    const char *a[] = { "PING" };
    size_t l[] = { 4 };

    (void)loop;
    if (r->state != RS_READY)
        return;
    if (r->ping_out) {
        lost(r, "no answer to a keepalive PING", 0);
        return;
    }
    if (send_argv(r, 1, a, l) != 0) {
        lost(r, "out of memory", 0);
        return;
    }
    r->ping_out = 1;
    flush_out(r);
    if (r->state != RS_DOWN)
        watch(r);
}

void
redis_init(struct redis *r, struct ev_loop *loop,
           const struct redis_target *t, double timeout,
           redis_state_cb on_state, void *priv)
{
    memset(r, 0, sizeof *r);
    r->loop = loop;
    r->target = t;
    r->timeout = timeout;
    r->on_state = on_state;
    r->priv = priv;
    r->backoff = BACKOFF_MIN;
    r->s.fd = -1;
    r->s.loop = loop;
    ev_io_init(&r->s.rd, redis_io_cb, -1, EV_READ);
    ev_io_init(&r->s.wr, redis_io_cb, -1, EV_WRITE);
    r->s.rd.data = r->s.wr.data = r;
    ev_init(&r->timer, redis_timer_cb);
    r->timer.data = r;
    ev_init(&r->keepalive, keepalive_cb);
    r->keepalive.data = r;
    arm_timer(r, 0);
}

void
redis_subscribe(struct redis *r, const char *channel, redis_msg_cb on_message)
{
    r->subscribe = channel;
    r->on_message = on_message;
}

int
redis_ready(const struct redis *r)
{
    return r->state == RS_READY;
}

int
redis_command(struct redis *r, redis_cb cb, void *priv, int argc,
              const char **argv, const size_t *argvlen)
{
    struct redis_pending *p;

    if (r->state != RS_READY || r->npending >= MAX_PENDING)
        return -1;
    if ((p = calloc(1, sizeof *p)) == NULL)
        return -1;
    if (send_argv(r, argc, argv, argvlen) != 0) {
        free(p);
        return -1;
    }
    p->cb = cb;
    p->priv = priv;
    p->deadline = ev_now(r->loop) + r->timeout;
    if (r->tail != NULL)
        r->tail->next = p;
    else
        r->head = p;
    r->tail = p;
    r->npending++;
    if (r->head == p)
        arm_for_pending(r);
    /* Written now, not one loop iteration later (behind whatever else
     * the worker does first). A write that fails here must not fail the
     * command (and run cb) before the caller has even returned: the
     * connection is dropped from the timer instead. */
    if (!r->write_failed && try_flush(r) != 0) {
        r->write_failed = 1;
        arm_timer(r, 0);
        return 0;
    }
    watch(r);
    return 0;
}

void
redis_close(struct redis *r)
{
    ev_timer_stop(r->loop, &r->timer);
    ev_timer_stop(r->loop, &r->keepalive);
    side_close(&r->s);
    if (r->reader != NULL) {
        redisReaderFree(r->reader);
        r->reader = NULL;
    }
    r->state = RS_DOWN;
    fail_pending(r);
    free(r->out);
    r->out = NULL;
    r->out_len = r->out_off = r->out_cap = 0;
}
