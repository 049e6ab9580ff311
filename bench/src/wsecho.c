/*
 * wsecho - a fast plain ws:// echo server for the benchmark.
 *
 *   wsecho [-l HOST:PORT] [-q]
 *
 * One thread, epoll (level-triggered), non-blocking sockets. Answers any
 * GET with an Upgrade: websocket (101 + Sec-WebSocket-Accept), then echoes
 * every data frame back unmasked, frame by frame, streaming the payload
 * (a frame is never buffered whole, so fragmentation and large messages
 * cost no memory), answers ping with pong, echoes a close frame and closes
 * the TCP connection. Per idle connection it holds only a small struct.
 * SIGTERM/SIGINT: exit 0.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "common.h"

#include <fcntl.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define RBUF (256 * 1024)
#define OUT_HIGH (4u << 20)   /* stop reading above this much unsent */
#define HEAD_MAX 8192

enum { ST_HTTP, ST_WS, ST_CLOSING };

struct conn {
    int fd;
    int st;
    uint32_t events;
    /* HTTP head accumulation (ST_HTTP only) */
    char *head;
    size_t head_len;
    /* frame parser: partial header / control frame */
    uint8_t part[14 + 125];
    size_t part_len;
    uint64_t remaining; /* payload bytes left of the current data frame */
    uint8_t mask[4];
    unsigned mph;
    struct obuf out;
};

static int ep;
static volatile sig_atomic_t stop;
static uint8_t rbuf[RBUF];
static int quiet;

static void
on_sig(int s)
{
    (void)s;
    stop = 1;
}

static void
set_events(struct conn *c, uint32_t ev)
{
    if (ev == c->events)
        return;
    struct epoll_event e = { .events = ev, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

static void
conn_free(struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->head);
    obuf_free(&c->out);
    free(c);
}

/* Returns -1 on a fatal error. */
static int
flush_out(struct conn *c)
{
    while (obuf_pending(&c->out)) {
        ssize_t n = write(c->fd, c->out.b + c->out.off, obuf_pending(&c->out));
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->out.off += (size_t)n;
    }
    if (!obuf_pending(&c->out)) {
        c->out.off = c->out.len = 0;
        if (c->out.cap > (1u << 20))
            obuf_free(&c->out);
    }
    return 0;
}

/* Process bytes of frames; returns -1 to drop the connection. */
static int
ws_input(struct conn *c, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (c->remaining > 0) {
            size_t take = n < c->remaining ? n : (size_t)c->remaining;
            uint8_t *d = obuf_reserve(&c->out, take);
            c->mph = ws_mask_copy(d, p, take, c->mask, c->mph);
            c->out.len += take;
            p += take;
            n -= take;
            c->remaining -= take;
            continue;
        }
        /* need a header (and the whole payload of a control frame) */
        const uint8_t *h = p;
        size_t avail = n;
        size_t add = 0;
        if (c->part_len > 0) {
            add = sizeof c->part - c->part_len;
            if (add > n)
                add = n;
            memcpy(c->part + c->part_len, p, add);
            h = c->part;
            avail = c->part_len + add;
        }
        struct ws_hdr fh = { 0 };
        size_t hl = ws_parse_header(h, avail, &fh);
        if (hl == 0 || ((fh.opcode & 8) && avail < hl + fh.len)) {
            if (fh.opcode & 8 && hl && fh.len > 125)
                return -1;
            if (c->part_len == 0) {
                memcpy(c->part, p, n);
                c->part_len = n;
            } else {
                c->part_len += add;
            }
            return 0;
        }
        if (!fh.masked)
            return -1;
        size_t used; /* bytes of p consumed by this header (+ctrl payload) */
        if (fh.opcode & 8) {
            if (fh.len > 125)
                return -1;
            uint8_t pl[125];
            ws_mask_copy(pl, h + hl, (size_t)fh.len, fh.mask, 0);
            size_t total = hl + (size_t)fh.len;
            used = total - c->part_len;
            c->part_len = 0;
            if (fh.opcode == 0x9) { /* ping -> pong */
                uint8_t hh[14];
                size_t k = ws_put_header(hh, 1, 0xA, fh.len, NULL);
                obuf_put(&c->out, hh, k);
                obuf_put(&c->out, pl, (size_t)fh.len);
            } else if (fh.opcode == 0x8) { /* close -> echo, then close */
                uint8_t hh[14];
                size_t k = ws_put_header(hh, 1, 0x8, fh.len, NULL);
                obuf_put(&c->out, hh, k);
                obuf_put(&c->out, pl, (size_t)fh.len);
                c->st = ST_CLOSING;
                return 0;
            } /* pong: ignore */
        } else {
            used = hl - c->part_len;
            c->part_len = 0;
            uint8_t hh[14];
            size_t k = ws_put_header(hh, fh.fin, fh.opcode, fh.len, NULL);
            obuf_put(&c->out, hh, k);
            c->remaining = fh.len;
            memcpy(c->mask, fh.mask, 4);
            c->mph = 0;
        }
        p += used;
        n -= used;
    }
    return 0;
}

static const char *
find_header(const char *head, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    const char *p = strstr(head, "\r\n");
    while (p && p[2] != '\r') {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *e = strstr(v, "\r\n");
            while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            *vlen = (size_t)(e - v);
            return v;
        }
        p = strstr(p, "\r\n");
    }
    return NULL;
}

static int
http_input(struct conn *c, const uint8_t *p, size_t n)
{
    if (!c->head)
        c->head = xmalloc(HEAD_MAX + 1);
    size_t take = n;
    if (c->head_len + take > HEAD_MAX)
        take = HEAD_MAX - c->head_len;
    memcpy(c->head + c->head_len, p, take);
    c->head_len += take;
    c->head[c->head_len] = 0;
    char *end = strstr(c->head, "\r\n\r\n");
    if (!end)
        return c->head_len >= HEAD_MAX ? -1 : 0;
    size_t hlen = (size_t)(end - c->head) + 4;
    size_t klen;
    const char *key = find_header(c->head, "Sec-WebSocket-Key", &klen);
    if (!key) {
        static const char bad[] = "HTTP/1.1 400 Bad Request\r\n"
                                  "Content-Length: 0\r\nConnection: close\r\n\r\n";
        obuf_put(&c->out, bad, sizeof bad - 1);
        c->st = ST_CLOSING;
        return 0;
    }
    char acc[32];
    ws_accept_key(key, klen, acc);
    char resp[256];
    int rl = snprintf(resp, sizeof resp,
                      "HTTP/1.1 101 Switching Protocols\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\n\r\n", acc);
    obuf_put(&c->out, resp, (size_t)rl);
    c->st = ST_WS;
    /* bytes after the head (already in c->head, and the rest of p) */
    size_t extra_in_head = c->head_len - hlen;
    char *rest = c->head;
    c->head = NULL;
    int r = 0;
    if (extra_in_head)
        r = ws_input(c, (uint8_t *)rest + hlen, extra_in_head);
    free(rest);
    if (r == 0 && take < n && c->st == ST_WS)
        r = ws_input(c, p + take, n - take);
    return r;
}

static void
on_conn(struct conn *c, uint32_t ev)
{
    if (ev & (EPOLLERR | EPOLLHUP) && !(ev & EPOLLIN)) {
        conn_free(c);
        return;
    }
    if (ev & EPOLLIN && c->st != ST_CLOSING) {
        for (int rounds = 0; rounds < 4; rounds++) {
            ssize_t n = read(c->fd, rbuf, sizeof rbuf);
            if (n == 0) {
                conn_free(c);
                return;
            }
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    break;
                conn_free(c);
                return;
            }
            int r = c->st == ST_HTTP ? http_input(c, rbuf, (size_t)n)
                                     : ws_input(c, rbuf, (size_t)n);
            if (r < 0) {
                conn_free(c);
                return;
            }
            if ((size_t)n < sizeof rbuf || c->st == ST_CLOSING ||
                obuf_pending(&c->out) > OUT_HIGH)
                break;
        }
    } else if (ev & EPOLLIN && c->st == ST_CLOSING) {
        ssize_t n = read(c->fd, rbuf, sizeof rbuf);
        if (n == 0 || (n < 0 && errno != EAGAIN)) {
            conn_free(c);
            return;
        }
    }
    if (flush_out(c) < 0) {
        conn_free(c);
        return;
    }
    if (c->st == ST_CLOSING && !obuf_pending(&c->out)) {
        conn_free(c); /* server closes the TCP connection first (RFC 6455) */
        return;
    }
    uint32_t want = 0;
    if (obuf_pending(&c->out))
        want |= EPOLLOUT;
    if (c->st != ST_CLOSING && obuf_pending(&c->out) <= OUT_HIGH)
        want |= EPOLLIN;
    set_events(c, want);
}

int
main(int argc, char **argv)
{
    const char *listen_on = "127.0.0.1:9001";
    int opt;
    while ((opt = getopt(argc, argv, "l:qh")) != -1) {
        switch (opt) {
        case 'l': listen_on = optarg; break;
        case 'q': quiet = 1; break;
        default:
            fprintf(stderr, "usage: wsecho [-l HOST:PORT] [-q]\n");
            return 2;
        }
    }
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_sig };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct sockaddr_in addr;
    if (parse_hostport(listen_on, &addr) < 0) {
        fprintf(stderr, "wsecho: bad address %s\n", listen_on);
        return 2;
    }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        listen(ls, 4096) < 0) {
        fprintf(stderr, "wsecho: bind/listen %s: %s\n", listen_on,
                strerror(errno));
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event le = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &le);
    if (!quiet)
        fprintf(stderr, "wsecho: listening on %s\n", listen_on);

    struct epoll_event evs[512];
    while (!stop) {
        int k = epoll_wait(ep, evs, 512, 500);
        for (int i = 0; i < k; i++) {
            if (evs[i].data.ptr == NULL) {
                for (int a = 0; a < 256; a++) {
                    int fd = accept4(ls, NULL, NULL,
                                     SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *c = calloc(1, sizeof *c);
                    if (!c) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    c->st = ST_HTTP;
                    c->events = EPOLLIN;
                    struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            on_conn(evs[i].data.ptr, evs[i].events);
        }
    }
    return 0;
}
