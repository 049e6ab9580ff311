/*
 * wsecho - a fast plain ws:// echo server for the benchmark.
 *
 *   wsecho [-l HOST:PORT] [-q] [--deflate [--deflate-level L]
 *          [--deflate-bits B] [--deflate-memlevel M]]
 *
 * One thread, epoll (level-triggered), non-blocking sockets. Answers any
 * GET with an Upgrade: websocket (101 + Sec-WebSocket-Accept), then echoes
 * every data frame back unmasked, frame by frame, streaming the payload
 * (a frame is never buffered whole, so fragmentation and large messages
 * cost no memory), answers ping with pong, echoes a close frame and closes
 * the TCP connection. Per idle connection it holds only a small struct.
 * SIGTERM/SIGINT: exit 0.
 *
 * --deflate: a compressing backend. It accepts the first
 * permessage-deflate offer (RFC 7692) and answers it as Python's
 * websockets does by default: server_max_window_bits=B and, when the
 * offer has the parameter, client_max_window_bits=B (B = --deflate-bits,
 * 12; lower when the client asks for less), the *_no_context_takeover
 * parameters the client offered, context takeover otherwise. On such a
 * session every message is collected whole, inflated when it is
 * compressed (RSV1), and echoed compressed at zlib level --deflate-level
 * (1, wsguard's default) and memLevel --deflate-memlevel (5: websockets'
 * default, and wsguard's for a 2^12 window) in one frame. Sessions
 * without the offer are echoed as above.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "common.h"

#include <fcntl.h>
#include <getopt.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

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
    /* permessage-deflate (--deflate, when the client offered it) */
    int pmd, m_op, m_comp, f_fin;
    int s_bits, s_nct, c_nct;
    struct obuf msg;    /* the message being received, unmasked */
    z_stream *zd, *zi;
};

static int ep;
static volatile sig_atomic_t stop;
static uint8_t rbuf[RBUF];
static int quiet;
static int pmd_on, pmd_level = 1, pmd_bits = 12, pmd_memlevel = 5;
static struct obuf plain;   /* an inflated message */
static struct obuf zout;    /* a compressed echo */

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
    obuf_free(&c->msg);
    if (c->zd) {
        deflateEnd(c->zd);
        free(c->zd);
    }
    if (c->zi) {
        inflateEnd(c->zi);
        free(c->zi);
    }
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

/* A whole message of a compressed session is in c->msg: inflate it if it
 * came compressed, echo it compressed (RFC 7692 §7.2.1: sync flush, the
 * final 00 00 ff ff removed). Returns -1 on invalid data. */
static int
pmd_echo(struct conn *c)
{
    const uint8_t *m = c->msg.b + c->msg.off;
    size_t mlen = obuf_pending(&c->msg);
    if (c->m_comp) {
        static const uint8_t tail[4] = { 0, 0, 0xff, 0xff };
        plain.off = plain.len = 0;
        z_stream *z = c->zi;
        for (int part = 0; part < 2; part++) {
            z->next_in = (Bytef *)(part ? tail : m);
            z->avail_in = (uInt)(part ? 4 : mlen);
            for (;;) {
                size_t room = 65536;
                z->next_out = obuf_reserve(&plain, room);
                z->avail_out = (uInt)room;
                int r = inflate(z, Z_SYNC_FLUSH);
                plain.len += room - z->avail_out;
                if (r != Z_OK && r != Z_BUF_ERROR && r != Z_STREAM_END)
                    return -1;
                if (z->avail_out > 0)
                    break;
            }
        }
        if (c->c_nct)
            inflateReset(z);
        m = plain.b + plain.off;
        mlen = obuf_pending(&plain);
    }
    z_stream *z = c->zd;
    size_t room = deflateBound(z, mlen) + 64;
    zout.off = zout.len = 0;
    z->next_in = (Bytef *)m;
    z->avail_in = (uInt)mlen;
    for (;;) {
        z->next_out = obuf_reserve(&zout, room);
        z->avail_out = (uInt)room;
        int r = deflate(z, Z_SYNC_FLUSH);
        zout.len += room - z->avail_out;
        if (r != Z_OK && r != Z_BUF_ERROR)
            return -1;
        if (z->avail_out > 0)
            break;
    }
    if (c->s_nct)
        deflateReset(z);
    size_t got = zout.len;
    if (got >= 4 && !memcmp(zout.b + got - 4, "\0\0\xff\xff", 4))
        got -= 4;
    uint8_t hh[14];
    size_t k = ws_put_header(hh, 1, c->m_op, got, NULL);
    hh[0] |= 0x40;
    obuf_put(&c->out, hh, k);
    obuf_put(&c->out, zout.b, got);
    c->msg.off = c->msg.len = 0;
    return 0;
}

/* Process bytes of frames; returns -1 to drop the connection. */
static int
ws_input(struct conn *c, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (c->remaining > 0) {
            /* compressed session: collect the message; else stream it */
            struct obuf *o = c->pmd ? &c->msg : &c->out;
            size_t take = n < c->remaining ? n : (size_t)c->remaining;
            uint8_t *d = obuf_reserve(o, take);
            c->mph = ws_mask_copy(d, p, take, c->mask, c->mph);
            o->len += take;
            p += take;
            n -= take;
            c->remaining -= take;
            if (c->pmd && c->remaining == 0 && c->f_fin && pmd_echo(c) < 0)
                return -1;
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
        } else if (c->pmd) {
            used = hl - c->part_len;
            c->part_len = 0;
            if (fh.rsv & 3 || (fh.rsv && fh.opcode == 0))
                return -1;
            if (fh.opcode != 0) {
                c->m_op = fh.opcode;
                c->m_comp = fh.rsv == 4;
                c->msg.off = c->msg.len = 0;
            }
            c->f_fin = fh.fin;
            c->remaining = fh.len;
            memcpy(c->mask, fh.mask, 4);
            c->mph = 0;
            if (fh.len == 0 && fh.fin && pmd_echo(c) < 0)
                return -1;
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

/* The first permessage-deflate offer in the request head: sets up c's
 * streams and writes the answer's value into ans (empty: none). */
static void
pmd_offer(struct conn *c, const char *head, char *ans, size_t cap)
{
    ans[0] = 0;
    size_t vlen;
    const char *v = find_header(head, "Sec-WebSocket-Extensions", &vlen);
    if (!v || vlen >= 512)
        return;
    char val[512];
    memcpy(val, v, vlen);
    val[vlen] = 0;
    char *save = NULL;
    for (char *off = strtok_r(val, ",", &save); off;
         off = strtok_r(NULL, ",", &save)) {
        int sbits = pmd_bits, cbits = 15, c_offered = 0, snct = 0, cnct = 0;
        int ok = 1, first = 1;
        char *s2 = NULL;
        for (char *t = strtok_r(off, ";", &s2); t; t = strtok_r(NULL, ";", &s2)) {
            t = trim_blanks(t);
            if (first) {
                ok = !strcmp(t, "permessage-deflate");
                first = 0;
            } else if (!strcmp(t, "server_no_context_takeover")) {
                snct = 1;
            } else if (!strcmp(t, "client_no_context_takeover")) {
                cnct = 1;
            } else if (!strcmp(t, "client_max_window_bits")) {
                c_offered = 1;
            } else if (!strncmp(t, "client_max_window_bits=", 23)) {
                c_offered = 1;
                cbits = atoi(t + 23);
            } else if (!strncmp(t, "server_max_window_bits=", 23)) {
                int b = atoi(t + 23);
                if (b < sbits)
                    sbits = b;
            } else {
                ok = 0;
            }
            if (!ok)
                break;
        }
        /* zlib's raw deflate has no 2^8 window */
        if (!ok || sbits < 9 || sbits > 15 || cbits < 8 || cbits > 15)
            continue;
        if (c_offered && cbits > pmd_bits)
            cbits = pmd_bits;
        c->zd = calloc(1, sizeof *c->zd);
        c->zi = calloc(1, sizeof *c->zi);
        if (!c->zd || !c->zi ||
            deflateInit2(c->zd, pmd_level, Z_DEFLATED, -sbits, pmd_memlevel,
                         Z_DEFAULT_STRATEGY) != Z_OK ||
            inflateInit2(c->zi, -15) != Z_OK) {
            fprintf(stderr, "wsecho: zlib init failed\n");
            exit(1);
        }
        c->pmd = 1;
        c->s_bits = sbits;
        c->s_nct = snct;
        c->c_nct = cnct;
        size_t o = (size_t)snprintf(ans, cap,
            "permessage-deflate; server_max_window_bits=%d", sbits);
        if (c_offered)
            o += (size_t)snprintf(ans + o, cap - o,
                                  "; client_max_window_bits=%d", cbits);
        if (snct)
            o += (size_t)snprintf(ans + o, cap - o, "; server_no_context_takeover");
        if (cnct)
            snprintf(ans + o, cap - o, "; client_no_context_takeover");
        return;
    }
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
    char ext[256] = "";
    if (pmd_on)
        pmd_offer(c, c->head, ext, sizeof ext);
    char resp[512];
    int rl = snprintf(resp, sizeof resp,
                      "HTTP/1.1 101 Switching Protocols\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\n%s%s%s\r\n", acc,
                      ext[0] ? "Sec-WebSocket-Extensions: " : "", ext,
                      ext[0] ? "\r\n" : "");
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
    static const struct option lo[] = {
        { "deflate", 0, 0, 1 }, { "deflate-level", 1, 0, 2 },
        { "deflate-bits", 1, 0, 3 }, { "deflate-memlevel", 1, 0, 4 },
        { 0, 0, 0, 0 }
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "l:qh", lo, NULL)) != -1) {
        switch (opt) {
        case 'l': listen_on = optarg; break;
        case 'q': quiet = 1; break;
        case 1: pmd_on = 1; break;
        case 2: pmd_level = atoi(optarg); break;
        case 3: pmd_bits = atoi(optarg); break;
        case 4: pmd_memlevel = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: wsecho [-l HOST:PORT] [-q] [--deflate "
                    "[--deflate-level L] [--deflate-bits 9-15] "
                    "[--deflate-memlevel 1-9]]\n");
            return 2;
        }
    }
    if (pmd_bits < 9 || pmd_bits > 15 || pmd_level < -1 || pmd_level > 9 ||
        pmd_memlevel < 1 || pmd_memlevel > 9) {
        fprintf(stderr, "wsecho: --deflate-bits 9-15, --deflate-level -1-9, "
                "--deflate-memlevel 1-9\n");
        return 2;
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
