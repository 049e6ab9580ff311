/*
 * wsrevoke - revocation fan-out timer for wsguard's cluster mode
 * (bench/cluster.sh, docs/performance.md "Cluster mode").
 *
 * Opens N idle wss:// sessions spread round robin over one or more
 * targets (the replicas), waits until all are open, then sends
 * POST /revoke with a JSON body to one admin listener (or, with
 * --publish-redis, PUBLISHes the body on the revocation channel as an
 * application would) and records, for every session, when its close frame
 * arrived and with which code.
 *
 * Two clocks per close frame, both on CLOCK_REALTIME so that they compare
 * with the publish instant:
 *   kernel  the receive time stamp the kernel put on the segment that
 *           carried the close frame (SO_TIMESTAMPNS, read with a 1-byte
 *           MSG_PEEK before the TLS read). On loopback it is taken when
 *           the segment is queued to the receiving socket, i.e. when
 *           wsguard wrote it: the client's own event-loop lag is not in it.
 *   user    when this program parsed the frame (clock_gettime right
 *           then). user - kernel is the client's lag; it is reported
 *           (lag_*), and it bounds how much the user figures overstate.
 * publish is clock_gettime(CLOCK_REALTIME) just before write() of the
 * POST request or the PUBLISH command (the connection is made beforehand).
 * admin_closed is the admin listener's "closed" count (with
 * --publish-redis: PUBLISH's count of receivers).
 *
 * With --observe H:P --channel C it also subscribes to C on that Redis
 * and stamps (kernel receive time) the first message after the publish:
 * when Redis delivered the revocation to the subscribers (redis_ms).
 *
 * One thread, epoll (level-triggered), non-blocking sockets, OpenSSL 3.
 * Output: one line of key=value pairs on stdout; with --out FILE one line
 * per session: id target kernel_ms user_ms code (ms from publish; -1 for
 * a session that got no close frame).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "common.h"

#include <getopt.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_TARGETS 8

enum st { S_FREE, S_CONNECT, S_TLS, S_REQ, S_OPEN, S_CLOSING, S_DONE };

struct sess {
    int fd;
    SSL *ssl;
    enum st st;
    int tgt;
    uint32_t events;
    struct obuf out;
    char *head;
    size_t head_len;
    char accept[32];
    uint8_t part[14 + 125];
    size_t part_len;
    uint64_t skip;              /* payload bytes of a data frame to skip */
    int64_t rx_ns;              /* kernel receive stamp of the last peek */
    int64_t close_kernel_ns, close_user_ns;
    int close_code;             /* -1 until a close frame came */
};

static struct sockaddr_in targets[MAX_TARGETS];
static int ntargets;
static struct sockaddr_in admin;
static const char *admin_s;
static const char *body = "{\"client_ip\":\"127.0.0.1\"}";
static int nsess = 1000, parallel = 64;
static double settle = 1.0, wait_max = 20.0, open_max = 300.0;
static const char *origin, *jwt_secret, *token_in = "query";
static const char *path = "/bench", *host_hdr = "localhost";
static const char *out_file;
static struct sockaddr_in redis_addr;
static const char *channel;     /* --observe: SUBSCRIBE to it on Redis */
static int via_redis;           /* --publish-redis: PUBLISH, not POST */
static struct in_addr srcs[256];
static int nsrc;

static int ep;
static SSL_CTX *sctx;
static uint8_t rbuf[64 * 1024];
static char tokbuf[1024];
static const char *tok;
static volatile sig_atomic_t got_sig;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static int n_live, n_open, n_failed, n_closed;
static int published;
static const char *last_err = "";

static inline uint64_t
rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static int64_t
rt_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- JWT (HS256), as wsbench makes it ---- */
static size_t
b64url(const unsigned char *in, size_t n, char *out)
{
    static const char t[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = t[(v >> 6) & 63];
        out[o++] = t[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = t[(v >> 6) & 63];
    }
    out[o] = 0;
    return o;
}

static void
make_jwt(const char *secret)
{
    char payload[256];
    long now = (long)time(NULL);
    int pl = snprintf(payload, sizeof payload,
                      "{\"sub\":\"wsbench\",\"iat\":%ld,\"exp\":%ld}", now,
                      now + 86400);
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    size_t o = b64url((const unsigned char *)hdr, sizeof hdr - 1, tokbuf);
    tokbuf[o++] = '.';
    o += b64url((const unsigned char *)payload, (size_t)pl, tokbuf + o);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)tokbuf, o,
         mac, &ml);
    tokbuf[o++] = '.';
    b64url(mac, ml, tokbuf + o);
    tok = tokbuf;
}

/* ---- sessions ---- */
static void
set_events(struct sess *s, uint32_t ev)
{
    if (ev == s->events)
        return;
    struct epoll_event e = { .events = ev, .data.ptr = s };
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &e);
    s->events = ev;
}

static void
sess_end(struct sess *s, int failed)
{
    if (s->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
    if (s->ssl) {
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    free(s->head);
    s->head = NULL;
    obuf_free(&s->out);
    if (s->st == S_OPEN || s->st == S_CLOSING)
        n_open--;
    if (failed) {
        n_failed++;
        if (!*last_err)
            last_err = "failed";
    }
    n_live--;
    s->st = S_DONE;
}

static void
send_frame(struct sess *s, int op, const uint8_t *p, size_t len)
{
    uint8_t m[4];
    uint32_t r = (uint32_t)rng();
    memcpy(m, &r, 4);
    uint8_t *d = obuf_reserve(&s->out, 14 + len);
    size_t h = ws_put_header(d, 1, op, len, m);
    ws_mask_copy(d + h, p, len, m, 0);
    s->out.len += h + len;
}

static void
build_request(struct sess *s)
{
    unsigned char kr[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = rng();
        memcpy(kr + i, &r, 8);
    }
    char key[32];
    EVP_EncodeBlock((unsigned char *)key, kr, 16);
    ws_accept_key(key, strlen(key), s->accept);
    int q = tok && strcmp(token_in, "query") == 0;
    int hd = tok && strcmp(token_in, "header") == 0;
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "GET %s%s%s HTTP/1.1\r\nHost: %s\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                     "%s%s%s%s%s%s\r\n",
                     path, q ? "?access_token=" : "", q ? tok : "", host_hdr,
                     key, origin ? "Origin: " : "", origin ? origin : "",
                     origin ? "\r\n" : "", hd ? "Authorization: Bearer " : "",
                     hd ? tok : "", hd ? "\r\n" : "");
    obuf_put(&s->out, req, (size_t)n);
    s->st = S_REQ;
}

static int
flush_out(struct sess *s)
{
    while (obuf_pending(&s->out)) {
        int r = SSL_write(s->ssl, s->out.b + s->out.off,
                          (int)obuf_pending(&s->out));
        if (r <= 0) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                break;
            ERR_clear_error();
            last_err = "SSL_write";
            return -1;
        }
        s->out.off += (size_t)r;
    }
    return 0;
}

/* A close frame (or the end of the stream) arrived. */
static void
got_close(struct sess *s, int code)
{
    if (s->close_code >= 0)
        return;
    s->close_user_ns = rt_ns();
    s->close_kernel_ns = s->rx_ns ? s->rx_ns : s->close_user_ns;
    s->close_code = code;
    n_closed++;
}

/* Server frames in the open state. -1 error, 1 close received. */
static int
ws_input(struct sess *s, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (s->skip) {
            size_t k = n < s->skip ? n : (size_t)s->skip;
            s->skip -= k;
            p += k;
            n -= k;
            continue;
        }
        const uint8_t *h = p;
        size_t avail = n, add = 0;
        if (s->part_len) {
            add = sizeof s->part - s->part_len;
            if (add > n)
                add = n;
            memcpy(s->part + s->part_len, p, add);
            h = s->part;
            avail = s->part_len + add;
        }
        struct ws_hdr fh = { 0 };
        size_t hl = ws_parse_header(h, avail, &fh);
        if (hl && (fh.opcode & 8) && fh.len > 125)
            return -1;
        if (hl == 0 || ((fh.opcode & 8) && avail < hl + fh.len)) {
            if (s->part_len == 0) {
                memcpy(s->part, p, n);
                s->part_len = n;
            } else {
                s->part_len += add;
            }
            return 0;
        }
        size_t used;
        if (fh.opcode & 8) {
            const uint8_t *pl = h + hl;
            used = hl + (size_t)fh.len - s->part_len;
            s->part_len = 0;
            if (fh.opcode == 9) {
                send_frame(s, 0xA, pl, (size_t)fh.len);
            } else if (fh.opcode == 8) {
                got_close(s, fh.len >= 2 ? (pl[0] << 8 | pl[1]) : 1005);
                send_frame(s, 8, pl, fh.len >= 2 ? 2 : 0);
                s->st = S_CLOSING;
                return 1;
            }
        } else {
            used = hl - s->part_len;
            s->part_len = 0;
            s->skip = fh.len;   /* nothing is expected: skip it */
        }
        p += used;
        n -= used;
    }
    return 0;
}

static int
http_input(struct sess *s, const uint8_t *p, size_t n)
{
    if (!s->head)
        s->head = xmalloc(4097);
    size_t take = n;
    if (s->head_len + take > 4096)
        take = 4096 - s->head_len;
    memcpy(s->head + s->head_len, p, take);
    s->head_len += take;
    s->head[s->head_len] = 0;
    char *end = strstr(s->head, "\r\n\r\n");
    if (!end)
        return s->head_len >= 4096 ? -1 : 0;
    if (strncmp(s->head, "HTTP/1.1 101", 12) != 0) {
        last_err = "no 101";
        if (getenv("WSBENCH_DEBUG"))
            fprintf(stderr, "wsrevoke: response: %.200s\n", s->head);
        return -1;
    }
    if (!strcasestr(s->head, s->accept)) {
        last_err = "bad Sec-WebSocket-Accept";
        return -1;
    }
    size_t hlen = (size_t)(end - s->head) + 4, extra = s->head_len - hlen;
    char *h = s->head;
    s->head = NULL;
    s->head_len = 0;
    s->st = S_OPEN;
    n_open++;
    int r = 0;
    if (extra)
        r = ws_input(s, (uint8_t *)h + hlen, extra);
    free(h);
    if (r == 0 && take < n)
        r = ws_input(s, p + take, n - take);
    return r;
}

/* The kernel's receive stamp of the first unread segment. */
static void
peek_stamp(struct sess *s)
{
    char b;
    char ctl[CMSG_SPACE(sizeof(struct timespec))];
    struct iovec iov = { &b, 1 };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
                        .msg_control = ctl, .msg_controllen = sizeof ctl };
    if (recvmsg(s->fd, &m, MSG_PEEK | MSG_DONTWAIT) <= 0)
        return;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof ts);
            s->rx_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
        }
}

/* 1 finished, 0 continue, -1 failed */
static int
do_io(struct sess *s)
{
    if (flush_out(s) < 0)
        return -1;
    if (published && s->st == S_OPEN && s->close_code < 0)
        peek_stamp(s);
    for (;;) {
        int r = SSL_read(s->ssl, rbuf, sizeof rbuf);
        if (r <= 0) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                break;
            ERR_clear_error();
            if (s->st == S_CLOSING)
                return 1;
            if (s->st == S_OPEN && published) {
                got_close(s, 1006);     /* the stream ended, no close */
                return 1;
            }
            last_err = e == SSL_ERROR_ZERO_RETURN ? "EOF" : "SSL_read";
            return -1;
        }
        int k = s->st == S_REQ ? http_input(s, rbuf, (size_t)r)
                               : ws_input(s, rbuf, (size_t)r);
        if (k < 0) {
            if (!*last_err)
                last_err = "protocol";
            return -1;
        }
        if (k == 1) {
            flush_out(s);
            return 1;
        }
    }
    if (flush_out(s) < 0)
        return -1;
    set_events(s, EPOLLIN | (obuf_pending(&s->out) ? EPOLLOUT : 0));
    return 0;
}

static void
on_event(struct sess *s, uint32_t ev)
{
    if (s->st == S_CONNECT) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            last_err = "connect";
            sess_end(s, 1);
            return;
        }
        s->ssl = SSL_new(sctx);
        SSL_set_fd(s->ssl, s->fd);
        SSL_set_tlsext_host_name(s->ssl, "localhost");
        s->st = S_TLS;
    }
    if (s->st == S_TLS) {
        int r = SSL_connect(s->ssl);
        if (r != 1) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                set_events(s, EPOLLIN);
                return;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                set_events(s, EPOLLIN | EPOLLOUT);
                return;
            }
            ERR_clear_error();
            last_err = "TLS handshake";
            sess_end(s, 1);
            return;
        }
        build_request(s);
    }
    int r = do_io(s);
    if (r != 0)
        sess_end(s, r < 0 && s->close_code < 0);
}

static void
start_sess(struct sess *s, int i)
{
    memset(s, 0, sizeof *s);
    s->close_code = -1;
    s->tgt = i % ntargets;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    n_live++;
    s->st = S_CONNECT;
    if (s->fd < 0) {
        last_err = "socket";
        sess_end(s, 1);
        return;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    if (nsrc > 0) {
        struct sockaddr_in sa = { .sin_family = AF_INET };
        sa.sin_addr = srcs[i % nsrc];
        setsockopt(s->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(s->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            last_err = "bind";
            sess_end(s, 1);
            return;
        }
    }
    int r = connect(s->fd, (struct sockaddr *)&targets[s->tgt],
                    sizeof targets[s->tgt]);
    if (r < 0 && errno != EINPROGRESS) {
        last_err = "connect";
        sess_end(s, 1);
        return;
    }
    s->events = EPOLLIN | EPOLLOUT;
    struct epoll_event e = { .events = s->events, .data.ptr = s };
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &e);
}

/* ---- the publish: POST /revoke to an admin listener, or (with
 * --publish-redis) PUBLISH on the channel, as an application would ---- */
static int afd = -1;
static char aresp[4096];
static size_t aresp_len;
static int64_t t_pub, t_resp;

static int
admin_connect(void)
{
    const struct sockaddr_in *to = via_redis ? &redis_addr : &admin;
    afd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (afd < 0 || connect(afd, (const struct sockaddr *)to, sizeof *to) < 0)
        return -1;
    int one = 1;
    setsockopt(afd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static int
admin_publish(void)
{
    char req[2048];
    int n;
    if (via_redis)
        n = snprintf(req, sizeof req,
                     "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n",
                     strlen(channel), channel, strlen(body), body);
    else
        n = snprintf(req, sizeof req,
                     "POST /revoke HTTP/1.1\r\nHost: %s\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     admin_s, strlen(body), body);
    t_pub = rt_ns();
    if (write(afd, req, (size_t)n) != n)
        return -1;
    published = 1;
    struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, afd, &e);
    return 0;
}

static void
admin_read(void)
{
    ssize_t n = recv(afd, aresp + aresp_len, sizeof aresp - 1 - aresp_len,
                     MSG_DONTWAIT);
    if (n > 0) {
        aresp_len += (size_t)n;
        aresp[aresp_len] = 0;
        if (!t_resp && strstr(aresp, "\r\n\r\n") && strchr(aresp, '}'))
            t_resp = rt_ns();
        if (via_redis && strstr(aresp, "\r\n"))
            t_resp = rt_ns();   /* ":<receivers>" */
        else if (aresp_len < sizeof aresp - 1)
            return;
    } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
    }
    if (!t_resp)
        t_resp = rt_ns();
    epoll_ctl(ep, EPOLL_CTL_DEL, afd, NULL);
    close(afd);
    afd = -1;
}

/* ---- the Redis observer (a subscriber of the revocation channel) ---- */
static int rfd = -1;
static int64_t t_redis;
static struct sess robs;        /* only for peek_stamp: fd and rx_ns */

static void peek_stamp(struct sess *s);

static int
observer_start(void)
{
    char b[512];
    rfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rfd < 0 ||
        connect(rfd, (struct sockaddr *)&redis_addr, sizeof redis_addr) < 0)
        return -1;
    int one = 1;
    setsockopt(rfd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    int n = snprintf(b, sizeof b, "SUBSCRIBE %s\r\n", channel);
    if (write(rfd, b, (size_t)n) != n)
        return -1;
    /* the confirmation: *3 $9 subscribe $len chan :1 */
    size_t got = 0;
    while (got < sizeof b - 1) {
        ssize_t k = read(rfd, b + got, sizeof b - 1 - got);
        if (k <= 0)
            return -1;
        got += (size_t)k;
        b[got] = 0;
        if (strstr(b, "subscribe") && strstr(b, "\r\n:1\r\n"))
            break;
    }
    robs.fd = rfd;
    struct epoll_event e = { .events = EPOLLIN, .data.ptr = &robs };
    epoll_ctl(ep, EPOLL_CTL_ADD, rfd, &e);
    return 0;
}

static void
observer_read(void)
{
    char b[4096];
    robs.rx_ns = 0;
    peek_stamp(&robs);
    ssize_t k = recv(rfd, b, sizeof b, MSG_DONTWAIT);
    if (k <= 0) {
        if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
            epoll_ctl(ep, EPOLL_CTL_DEL, rfd, NULL);
            close(rfd);
            rfd = -1;
        }
        return;
    }
    if (published && !t_redis)
        t_redis = robs.rx_ns ? robs.rx_ns : rt_ns();
}

/* ---- statistics ---- */
static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* nearest-rank percentile of a sorted array, in ms */
static double
pct_ms(const int64_t *v, int n, double q)
{
    if (n <= 0)
        return -1;
    int k = (int)(q * n + 0.999999) - 1;
    if (k < 0)
        k = 0;
    if (k >= n)
        k = n - 1;
    return (double)v[k] / 1e6;
}

static void
on_sig(int sg)
{
    (void)sg;
    got_sig = 1;
}

static void
usage(void)
{
    fprintf(stderr,
"usage: wsrevoke -t H:P[,H:P..] (-a H:P | --publish-redis) [options]\n"
"  -t, --targets LIST     wss:// replicas; sessions round robin over them\n"
"  -a, --admin H:P        admin listener that gets POST /revoke\n"
"  -b, --body JSON        revocation ({\"client_ip\":\"127.0.0.1\"})\n"
"  -c, --sessions N       sessions in total (1000)\n"
"      --parallel K       at most K handshakes at once (64)\n"
"      --settle SEC       wait after the last session opened (1)\n"
"      --wait SEC         give up on missing closes after (20)\n"
"  -o, --origin ORIGIN    send an Origin header\n"
"      --jwt-secret S     HS256 JWT (sub=wsbench) made with S\n"
"      --token-in WHERE   query | header (query)\n"
"  -p, --path PATH        request path (/bench)\n"
"  -B, --src A,B,...      source addresses, round robin\n"
"      --out FILE         per-session close times\n"
"      --observe H:P      Redis to watch the publish on, with\n"
"      --channel NAME     the revocation channel (e.g. wsguard:revoke)\n"
"      --publish-redis    publish with PUBLISH on that Redis, not POST /revoke\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "targets", 1, 0, 't' },  { "admin", 1, 0, 'a' },
        { "body", 1, 0, 'b' },     { "sessions", 1, 0, 'c' },
        { "parallel", 1, 0, 1 },   { "settle", 1, 0, 2 },
        { "wait", 1, 0, 3 },       { "origin", 1, 0, 'o' },
        { "jwt-secret", 1, 0, 4 }, { "token-in", 1, 0, 5 },
        { "path", 1, 0, 'p' },     { "src", 1, 0, 'B' },
        { "out", 1, 0, 6 },        { "observe", 1, 0, 7 },
        { "channel", 1, 0, 8 },    { "publish-redis", 0, 0, 9 },
        { "help", 0, 0, 'h' },
        { 0, 0, 0, 0 }
    };
    int o;
    while ((o = getopt_long(argc, argv, "t:a:b:c:o:p:B:h", lo, NULL)) != -1) {
        switch (o) {
        case 't': {
            char *s = strdup(optarg), *save = NULL;
            for (char *t = strtok_r(s, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (ntargets == MAX_TARGETS || parse_hostport(t, &targets[ntargets]) < 0)
                    usage();
                ntargets++;
            }
            free(s);
            break;
        }
        case 'a':
            admin_s = optarg;
            if (parse_hostport(optarg, &admin) < 0)
                usage();
            break;
        case 'b': body = optarg; break;
        case 'c': nsess = atoi(optarg); break;
        case 1: parallel = atoi(optarg); break;
        case 2: settle = atof(optarg); break;
        case 3: wait_max = atof(optarg); break;
        case 'o': origin = optarg; break;
        case 4: jwt_secret = optarg; break;
        case 5: token_in = optarg; break;
        case 'p': path = optarg; break;
        case 'B': {
            char *s = strdup(optarg), *save = NULL;
            for (char *t = strtok_r(s, ",", &save); t && nsrc < 256;
                 t = strtok_r(NULL, ",", &save))
                if (inet_pton(AF_INET, t, &srcs[nsrc]) == 1)
                    nsrc++;
            free(s);
            break;
        }
        case 6: out_file = optarg; break;
        case 7:
            if (parse_hostport(optarg, &redis_addr) < 0)
                usage();
            break;
        case 8: channel = optarg; break;
        case 9: via_redis = 1; break;
        default: usage();
        }
    }
    if (ntargets == 0 || (!admin_s && !via_redis) || nsess < 1 ||
        parallel < 1 || (channel && !redis_addr.sin_port) ||
        (via_redis && !channel))
        usage();
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_sig };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (jwt_secret)
        make_jwt(jwt_secret);
    RAND_bytes((unsigned char *)&rng_state, sizeof rng_state);
    rng_state |= 1;

    sctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(sctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(sctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_options(sctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_mode(sctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                               SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                               SSL_MODE_RELEASE_BUFFERS);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(sctx, alpn, sizeof alpn - 1);

    ep = epoll_create1(EPOLL_CLOEXEC);
    struct sess *ss = calloc((size_t)nsess, sizeof *ss);
    if (!ss)
        return 2;
    int started = 0, phase = 0; /* 0 opening, 1 settling, 2 published */
    int open_at_pub = 0;
    double t0 = now_s(), t_phase = t0, t_setup = 0;
    double lag_loop_max = 0;    /* longest loop iteration after publish, s */
    int64_t pub_deadline_ns = 0;
    struct epoll_event evs[1024];
    if (channel && observer_start() < 0) {
        fprintf(stderr, "wsrevoke: cannot subscribe on Redis\n");
        return 2;
    }

    for (;;) {
        if (phase == 0)
            while (started < nsess && n_live - n_open < parallel) {
                start_sess(&ss[started], started);
                started++;
            }
        int k = epoll_wait(ep, evs, 1024, phase == 2 ? 10 : 50);
        double it0 = now_s();
        for (int i = 0; i < k; i++) {
            struct sess *s = evs[i].data.ptr;
            if (s == NULL)
                admin_read();
            else if (s == &robs)
                observer_read();
            else if (s->fd >= 0 && s->st != S_DONE)
                on_event(s, evs[i].events);
        }
        double t = now_s();
        if (phase == 2 && t - it0 > lag_loop_max)
            lag_loop_max = t - it0;
        if (got_sig)
            break;
        if (phase == 0) {
            if (started == nsess && n_live == n_open) {
                t_setup = t - t0;
                phase = 1;
                t_phase = t;
                fprintf(stderr, "wsrevoke: %d sessions open in %.1fs, "
                        "%d failed\n", n_open, t_setup, n_failed);
            } else if (t - t0 > open_max) {
                last_err = "open timeout";
                break;
            }
        } else if (phase == 1 && t - t_phase >= settle) {
            if (n_open == 0)
                break;
            if (admin_connect() < 0) {
                last_err = "admin connect";
                break;
            }
            open_at_pub = n_open;
            for (int i = 0; i < nsess; i++)
                if (ss[i].st == S_OPEN)
                    ss[i].rx_ns = 0;
            if (admin_publish() < 0) {
                last_err = "admin write";
                break;
            }
            phase = 2;
            pub_deadline_ns = t_pub + (int64_t)(wait_max * 1e9);
        } else if (phase == 2) {
            if ((n_closed >= open_at_pub && afd < 0) ||
                rt_ns() > pub_deadline_ns)
                break;
        }
    }

    /* results */
    int64_t *kv = calloc((size_t)nsess + 1, sizeof *kv);
    int64_t *uv = calloc((size_t)nsess + 1, sizeof *uv);
    int64_t *lv = calloc((size_t)nsess + 1, sizeof *lv);
    int64_t *tk[MAX_TARGETS];
    int tn[MAX_TARGETS] = { 0 };
    for (int j = 0; j < ntargets; j++)
        tk[j] = calloc((size_t)nsess + 1, sizeof(int64_t));
    int nk = 0, n1008 = 0, nother = 0;
    FILE *of = out_file ? fopen(out_file, "w") : NULL;
    if (of)
        fprintf(of, "id\ttarget\tkernel_ms\tuser_ms\tcode\n");
    for (int i = 0; i < nsess; i++) {
        struct sess *s = &ss[i];
        if (s->close_code < 0) {
            if (of && (s->st == S_OPEN))
                fprintf(of, "%d\t%d\t-1\t-1\t-1\n", i, s->tgt);
            continue;
        }
        if (s->close_code == 1008)
            n1008++;
        else
            nother++;
        int64_t dk = s->close_kernel_ns - t_pub, du = s->close_user_ns - t_pub;
        kv[nk] = dk;
        uv[nk] = du;
        lv[nk] = s->close_user_ns - s->close_kernel_ns;
        nk++;
        tk[s->tgt][tn[s->tgt]++] = dk;
        if (of)
            fprintf(of, "%d\t%d\t%.3f\t%.3f\t%d\n", i, s->tgt, (double)dk / 1e6,
                    (double)du / 1e6, s->close_code);
    }
    if (of)
        fclose(of);
    qsort(kv, (size_t)nk, sizeof *kv, cmp_i64);
    qsort(uv, (size_t)nk, sizeof *uv, cmp_i64);
    qsort(lv, (size_t)nk, sizeof *lv, cmp_i64);
    int acl = -1, astatus = 0;
    const char *cp = strstr(aresp, "\"closed\"");
    if (cp && (cp = strchr(cp, ':')))
        acl = atoi(cp + 1);
    if (via_redis)
        acl = aresp[0] == ':' ? atoi(aresp + 1) : -1;  /* receivers */
    else
        astatus = aresp_len > 12 ? atoi(aresp + 9) : 0;
    printf("mode=revoke via=%s sessions=%d open_at_publish=%d failed=%d setup_s=%.2f "
           "closed=%d code1008=%d code_other=%d missing=%d "
           "p50_ms=%.2f p99_ms=%.2f max_ms=%.2f first_ms=%.2f "
           "user_p50_ms=%.2f user_p99_ms=%.2f user_max_ms=%.2f "
           "lag_p50_ms=%.3f lag_max_ms=%.3f loop_max_ms=%.3f "
           "admin_status=%d admin_closed=%d admin_published=%d admin_resp_ms=%.2f "
           "redis_ms=%.2f publish_epoch_us=%lld",
           via_redis ? "redis" : "admin", nsess, open_at_pub, n_failed, t_setup, nk, n1008, nother,
           open_at_pub - nk, pct_ms(kv, nk, 0.5), pct_ms(kv, nk, 0.99),
           pct_ms(kv, nk, 1.0), pct_ms(kv, nk, 0.0), pct_ms(uv, nk, 0.5),
           pct_ms(uv, nk, 0.99), pct_ms(uv, nk, 1.0), pct_ms(lv, nk, 0.5),
           pct_ms(lv, nk, 1.0), lag_loop_max * 1e3, astatus, acl,
           strstr(aresp, "\"published\": true") || strstr(aresp, "\"published\":true") ? 1 : 0,
           t_resp ? (double)(t_resp - t_pub) / 1e6 : -1,
           t_redis ? (double)(t_redis - t_pub) / 1e6 : -1,
           (long long)(t_pub / 1000));
    for (int j = 0; j < ntargets; j++) {
        qsort(tk[j], (size_t)tn[j], sizeof(int64_t), cmp_i64);
        printf(" t%d_closed=%d t%d_first_ms=%.2f t%d_p50_ms=%.2f t%d_max_ms=%.2f",
               j, tn[j], j, pct_ms(tk[j], tn[j], 0.0), j,
               pct_ms(tk[j], tn[j], 0.5), j, pct_ms(tk[j], tn[j], 1.0));
    }
    printf(" last_error=%s\n", *last_err ? last_err : "-");
    fflush(stdout);
    for (int i = 0; i < nsess; i++)
        if (ss[i].fd >= 0)
            close(ss[i].fd);
    return (nk == open_at_pub && open_at_pub == nsess && nother == 0) ? 0 : 1;
}
