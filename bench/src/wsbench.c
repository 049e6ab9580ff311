/*
 * wsbench - WebSocket load generator for the wsguard benchmark.
 *
 * One thread, epoll (level-triggered), non-blocking sockets, OpenSSL 3.
 * Every frame it sends is masked with a fresh key; every echoed byte is
 * checked against the deterministic pattern it was sent with (message k of
 * connection i carries pattern[off(i,k) .. off(i,k)+S)); mismatches, short
 * or unexpected frames count as errors.
 *
 * Modes
 *   throughput  N connections x D messages in flight x S bytes; after a
 *               warm-up, counts echoed messages for T seconds (or exactly
 *               -n messages); prints messages/s, MB/s, latency p50/p99/p999
 *   idle        opens N sessions (at most --parallel at a time), waits,
 *               reads the proxy's RSS, holds them for --hold seconds while
 *               answering pings, reports RSS per session and idle CPU
 *   handshake   C slots each looping connect + TLS (optionally resumed) +
 *               upgrade + close handshake; counts completed cycles/s
 *
 * With --pid PID[,PID..] it reads utime+stime from /proc/PID/stat at the
 * edges of the measurement window and VmRSS from /proc/PID/status, so
 * every figure is also given per second of the proxy's own CPU time.
 * --backend-pid P does the same for the backend, with the bytes it read
 * and wrote (/proc/P/io; the backend's plain TCP leg).
 *
 * --json: text messages of JSON (an array of records with repeated keys,
 * varied numbers and names), 256 different ones of exactly S bytes each.
 * --deflate: offers permessage-deflate (RFC 7692; "permessage-deflate;
 * client_max_window_bits"), compresses every message it sends (RSV1, the
 * agreed client window and context takeover, zlib level --deflate-level)
 * and inflates compressed echoes before checking them. Throughput mode
 * counts the bytes of data frames (header + payload) each way and the
 * TCP payload bytes (TLS records) of the client's sockets, per message.
 *
 * Output: one line of key=value pairs on stdout.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "common.h"

#include <fcntl.h>
#include <getopt.h>
#include <linux/tcp.h> /* struct tcp_info with tcpi_bytes_* */
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <zlib.h>

#define RBUF (256 * 1024)
#define PAT_SPREAD 1024
#define STAGE_TIMEOUT 15.0

enum mode { M_THROUGHPUT, M_IDLE, M_HANDSHAKE };
enum st { S_FREE, S_CONNECT, S_TLS, S_REQ, S_OPEN, S_CLOSE_SENT };

struct conn {
    int fd;
    SSL *ssl;
    enum st st;
    uint32_t id;
    uint32_t events;
    int slot;
    double t_stage;
    struct obuf out;
    /* HTTP response head */
    char *head;
    size_t head_len;
    char accept[32];
    /* frame parser */
    uint8_t part[14 + 125];
    size_t part_len;
    uint64_t remaining;
    int f_op, f_fin, in_msg;
    uint64_t msgpos;
    /* sequencing */
    uint64_t sent_seq, recv_seq;
    uint64_t *ts;
    /* permessage-deflate, when the server agreed to it */
    int pmd, f_comp;
    int c_bits, c_nct, s_nct;
    z_stream *zd, *zi;
};

#define JSON_N 256          /* different JSON messages (--json) */

/* ---- options ---- */
static enum mode mode = M_THROUGHPUT;
static struct sockaddr_in target;
static const char *target_s = "127.0.0.1:9443";
static int use_tls = 1;
static int nconns = 100, depth = 16;
static uint64_t msize = 64;
static double duration = 10, warmup = 2, hold = 10;
static uint64_t nmessages; /* count mode when > 0 */
static const char *origin, *token, *jwt_secret, *token_in = "query";
static const char *path = "/bench", *host_hdr = "localhost";
static struct in_addr srcs[256];
static int nsrc;
static int resume;
static int binary;
static int parallel = 256;
static pid_t pids[8];
static int npids;
static pid_t bpid;          /* --backend-pid */
static int json_mode, pmd_offer, pmd_level = Z_DEFAULT_COMPRESSION;

/* ---- state ---- */
static int ep;
static SSL_CTX *sctx;
static uint8_t *pat;
static uint8_t rbuf[RBUF];
static uint64_t tnow;
static double tnow_s;
static int measuring, sending = 1;
static double t_meas0, t_meas1;
static uint64_t cnt_msgs, cnt_bytes, errors, sent_total, recv_total;
static uint64_t cnt_hs, resumed_hs, hs_attempts;
static int n_open, n_failed, n_live;
static char tokbuf[1024];
static const char *tok;
static volatile sig_atomic_t got_sig;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static char cipher_name[64] = "none";
static SSL_SESSION **slot_sess;
static uint32_t next_id;
static const char *last_err = "";
/* permessage-deflate and wire counters (throughput, while measuring):
 * data frame bytes (header + payload) sent and received */
static uint64_t wire_tx, wire_rx, plain_rx;
static int pmd_conns;
static uint8_t *zbuf;
static size_t zcap;

static inline uint64_t
rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* ---- latency histogram (log-linear, 1/64 precision, ns) ---- */
#define HBUCKETS (64 * 40)
static uint64_t hist[HBUCKETS];
static uint64_t hist_n, hist_max;

static void
hist_add(uint64_t v)
{
    unsigned idx;
    if (v < 64) {
        idx = (unsigned)v;
    } else {
        int msb = 63 - __builtin_clzll(v);
        idx = (unsigned)((msb - 5) * 64 + ((v >> (msb - 6)) & 63));
    }
    if (idx >= HBUCKETS)
        idx = HBUCKETS - 1;
    hist[idx]++;
    hist_n++;
    if (v > hist_max)
        hist_max = v;
}

static double
hist_pct(double q)
{
    if (!hist_n)
        return 0;
    uint64_t want = (uint64_t)(q * (double)hist_n);
    if (want >= hist_n)
        want = hist_n - 1;
    uint64_t acc = 0;
    for (unsigned i = 0; i < HBUCKETS; i++) {
        acc += hist[i];
        if (acc > want) {
            if (i < 64)
                return (double)i;
            int msb = (int)(i / 64) + 5;
            uint64_t lo = (64 + (uint64_t)(i % 64)) << (msb - 6);
            return (double)lo + (double)(1ull << (msb - 6)) / 2;
        }
    }
    return (double)hist_max;
}

/* ---- /proc readings ---- */
static double
proc_cpu(void)
{
    double tot = 0;
    long hz = sysconf(_SC_CLK_TCK);
    for (int i = 0; i < npids; i++) {
        char fn[64], b[1024];
        snprintf(fn, sizeof fn, "/proc/%d/stat", (int)pids[i]);
        FILE *f = fopen(fn, "r");
        if (!f)
            continue;
        size_t n = fread(b, 1, sizeof b - 1, f);
        fclose(f);
        b[n] = 0;
        char *p = strrchr(b, ')');
        if (!p)
            continue;
        unsigned long ut = 0, stt = 0;
        /* fields 3.. after ')': utime is 14, stime 15 */
        if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
                   &ut, &stt) == 2)
            tot += (double)(ut + stt) / (double)hz;
    }
    return tot;
}

static double
pid_cpu(pid_t pid)
{
    pid_t save[8];
    int n = npids;
    memcpy(save, pids, sizeof save);
    pids[0] = pid;
    npids = 1;
    double v = proc_cpu();
    memcpy(pids, save, sizeof save);
    npids = n;
    return v;
}

/* rchar + wchar of a process (bytes through read()/write()). */
static uint64_t
pid_io(pid_t pid, uint64_t *rd, uint64_t *wr)
{
    char fn[64], line[128];
    snprintf(fn, sizeof fn, "/proc/%d/io", (int)pid);
    *rd = *wr = 0;
    FILE *f = fopen(fn, "r");
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "rchar:", 6) == 0)
            *rd = strtoull(line + 6, NULL, 10);
        else if (strncmp(line, "wchar:", 6) == 0)
            *wr = strtoull(line + 6, NULL, 10);
    }
    fclose(f);
    return *rd + *wr;
}

static long
proc_rss_kb(void)
{
    long tot = 0;
    for (int i = 0; i < npids; i++) {
        char fn[64], line[256];
        snprintf(fn, sizeof fn, "/proc/%d/status", (int)pids[i]);
        FILE *f = fopen(fn, "r");
        if (!f)
            continue;
        while (fgets(line, sizeof line, f))
            if (strncmp(line, "VmRSS:", 6) == 0)
                tot += atol(line + 6);
        fclose(f);
    }
    return tot;
}

static double
self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

/* ---- JWT (HS256) ---- */
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

/* ---- connection plumbing ---- */
static void
set_events(struct conn *c, uint32_t ev)
{
    if (ev == c->events)
        return;
    struct epoll_event e = { .events = ev, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

static void start_conn(struct conn *c);

static void
conn_close(struct conn *c, int failed)
{
    if (c->fd >= 0) {
        if (c->ssl && !failed && c->st == S_CLOSE_SENT)
            SSL_shutdown(c->ssl);
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    free(c->head);
    c->head = NULL;
    c->head_len = 0;
    obuf_free(&c->out);
    if (c->zd) {
        deflateEnd(c->zd);
        free(c->zd);
        c->zd = NULL;
    }
    if (c->zi) {
        inflateEnd(c->zi);
        free(c->zi);
        c->zi = NULL;
    }
    c->pmd = 0;
    if (c->st == S_OPEN || c->st == S_CLOSE_SENT)
        n_open--;
    if (failed) {
        errors++;
        n_failed++;
    }
    c->st = S_FREE;
    n_live--;
}

static void
build_request(struct conn *c)
{
    unsigned char kr[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = rng();
        memcpy(kr + i, &r, 8);
    }
    char key[32];
    EVP_EncodeBlock((unsigned char *)key, kr, 16);
    ws_accept_key(key, strlen(key), c->accept);
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "GET %s%s%s HTTP/1.1\r\nHost: %s\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                     "%s%s%s%s%s%s%s\r\n",
                     path,
                     tok && strcmp(token_in, "query") == 0 ? "?access_token=" : "",
                     tok && strcmp(token_in, "query") == 0 ? tok : "",
                     host_hdr, key, origin ? "Origin: " : "",
                     origin ? origin : "", origin ? "\r\n" : "",
                     tok && strcmp(token_in, "header") == 0 ? "Authorization: Bearer " : "",
                     tok && strcmp(token_in, "header") == 0 ? tok : "",
                     tok && strcmp(token_in, "header") == 0 ? "\r\n" : "",
                     pmd_offer ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                 "client_max_window_bits\r\n" : "");
    obuf_put(&c->out, req, (size_t)n);
    c->st = S_REQ;
    c->t_stage = tnow_s;
}

static size_t
pat_off(const struct conn *c, uint64_t seq)
{
    if (json_mode) /* stride 31 is prime to JSON_N: a whole cycle differs */
        return (size_t)((c->id * 7919u + seq * 31u) % JSON_N) * msize;
    return (size_t)((c->id * 7919u + seq * 31u) % PAT_SPREAD);
}

/* Queues a frame; returns its length on the wire. rsv1: compressed. */
static size_t
send_frame_x(struct conn *c, int op, int rsv1, const uint8_t *payload,
             uint64_t len)
{
    uint8_t m[4];
    uint32_t r = (uint32_t)rng();
    memcpy(m, &r, 4);
    uint8_t *d = obuf_reserve(&c->out, 14 + len);
    size_t h = ws_put_header(d, 1, op, len, m);
    if (rsv1)
        d[0] |= 0x40;
    ws_mask_copy(d + h, payload, (size_t)len, m, 0);
    c->out.len += h + len;
    return h + (size_t)len;
}

static void
send_frame(struct conn *c, int op, const uint8_t *payload, uint64_t len)
{
    send_frame_x(c, op, 0, payload, len);
}

/* Compress a whole message (RFC 7692 §7.2.1: sync flush, the final
 * 00 00 ff ff removed) into zbuf; returns the payload length. */
static size_t
pmd_compress(struct conn *c, const uint8_t *src, size_t len)
{
    z_stream *z = c->zd;
    size_t need = deflateBound(z, len) + 64;
    if (zcap < need) {
        free(zbuf);
        zcap = need;
        zbuf = xmalloc(zcap);
    }
    z->next_in = (Bytef *)src;
    z->avail_in = (uInt)len;
    size_t out = 0;
    for (;;) {
        z->next_out = zbuf + out;
        z->avail_out = (uInt)(zcap - out);
        int r = deflate(z, Z_SYNC_FLUSH);
        out = zcap - z->avail_out;
        if (r != Z_OK && r != Z_BUF_ERROR) {
            errors++;
            last_err = "deflate";
            break;
        }
        if (z->avail_out > 0)
            break;
        zcap *= 2;
        zbuf = xrealloc(zbuf, zcap);
    }
    if (out >= 4 && !memcmp(zbuf + out - 4, "\0\0\xff\xff", 4))
        out -= 4;
    if (c->c_nct)
        deflateReset(z);
    return out;
}

static void
send_msg(struct conn *c)
{
    const uint8_t *m = pat + pat_off(c, c->sent_seq);
    size_t w;
    if (c->pmd)
        w = send_frame_x(c, binary ? 2 : 1, 1, zbuf, pmd_compress(c, m, msize));
    else
        w = send_frame_x(c, binary ? 2 : 1, 0, m, msize);
    if (measuring)
        wire_tx += w;
    c->ts[c->sent_seq % (uint64_t)depth] = tnow;
    c->sent_seq++;
    sent_total++;
}

static int
may_send(void)
{
    if (!sending)
        return 0;
    if (nmessages && sent_total >= nmessages)
        return 0;
    return 1;
}

static void
on_open(struct conn *c)
{
    c->st = S_OPEN;
    n_open++;
    if (mode == M_HANDSHAKE) {
        if (c->ssl && resume) {
            SSL_SESSION *s = SSL_get1_session(c->ssl);
            if (s && SSL_SESSION_is_resumable(s)) {
                if (slot_sess[c->slot])
                    SSL_SESSION_free(slot_sess[c->slot]);
                slot_sess[c->slot] = s;
            } else if (s) {
                SSL_SESSION_free(s);
            }
        }
        static const uint8_t code[2] = { 0x03, 0xe8 };
        send_frame(c, 8, code, 2);
        c->st = S_CLOSE_SENT;
        c->t_stage = tnow_s;
    }
}

static void
msg_done(struct conn *c)
{
    uint64_t seq = c->recv_seq++;
    recv_total++;
    if (seq >= c->sent_seq) {
        errors++;
        return;
    }
    if (measuring || nmessages) {
        cnt_msgs++;
        cnt_bytes += msize;
        hist_add(tnow - c->ts[seq % (uint64_t)depth]);
    }
    if (mode == M_THROUGHPUT && may_send())
        send_msg(c);
}

/* Echoed (plain) bytes of the current message: compare to what was sent. */
static void
check_bytes(struct conn *c, const uint8_t *p, size_t n)
{
    if (c->msgpos + n > msize ||
        memcmp(p, pat + pat_off(c, c->recv_seq) + c->msgpos, n) != 0)
        errors++;
    c->msgpos += n;
}

/* Inflate compressed payload bytes and check what they give. */
static void
pmd_inflate_check(struct conn *c, const uint8_t *p, size_t n)
{
    static uint8_t ob[65536];
    z_stream *z = c->zi;
    z->next_in = (Bytef *)p;
    z->avail_in = (uInt)n;
    for (;;) {
        z->next_out = ob;
        z->avail_out = sizeof ob;
        int r = inflate(z, Z_SYNC_FLUSH);
        size_t got = sizeof ob - z->avail_out;
        if (got)
            check_bytes(c, ob, got);
        if (r != Z_OK && r != Z_BUF_ERROR && r != Z_STREAM_END) {
            errors++;
            last_err = "inflate";
            inflateReset(z);
            return;
        }
        if (z->avail_out > 0 && (z->avail_in == 0 || r == Z_STREAM_END))
            return;
    }
}

/* The last frame of a message has been taken in. */
static void
msg_end(struct conn *c)
{
    if (c->f_comp) {
        static const uint8_t tail[4] = { 0, 0, 0xff, 0xff };
        pmd_inflate_check(c, tail, 4);
        if (c->s_nct)
            inflateReset(c->zi);
        c->f_comp = 0;
    }
    if (c->msgpos != msize)
        errors++;
    if (measuring)
        plain_rx += c->msgpos;
    c->in_msg = 0;
    msg_done(c);
}

/* Frames from the server. Returns -1 on a protocol error, 1 when the
 * connection is finished (close handshake complete). */
static int
ws_input(struct conn *c, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (c->remaining > 0) {
            size_t take = n < c->remaining ? n : (size_t)c->remaining;
            if (c->f_comp)
                pmd_inflate_check(c, p, take);
            else
                check_bytes(c, p, take);
            p += take;
            n -= take;
            c->remaining -= take;
            if (c->remaining == 0 && c->f_fin)
                msg_end(c);
            continue;
        }
        const uint8_t *h = p;
        size_t avail = n, add = 0;
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
        if (hl && (fh.opcode & 8) && fh.len > 125)
            return -1;
        if (hl == 0 || ((fh.opcode & 8) && avail < hl + fh.len)) {
            if (c->part_len == 0) {
                memcpy(c->part, p, n);
                c->part_len = n;
            } else {
                c->part_len += add;
            }
            return 0;
        }
        if (fh.masked)
            return -1;
        /* RSV1: the first frame of a compressed data message */
        if (fh.rsv && !(c->pmd && fh.rsv == 4 && (fh.opcode == 1 || fh.opcode == 2)))
            return -1;
        size_t used;
        if (fh.opcode & 8) {
            const uint8_t *pl = h + hl;
            used = hl + (size_t)fh.len - c->part_len;
            c->part_len = 0;
            if (fh.opcode == 9) {
                send_frame(c, 0xA, pl, fh.len);
            } else if (fh.opcode == 8) {
                if (c->st != S_CLOSE_SENT) {
                    send_frame(c, 8, pl, fh.len >= 2 ? 2 : 0);
                    c->st = S_CLOSE_SENT;
                    if (mode != M_HANDSHAKE && sending)
                        errors++; /* unexpected close from the server */
                }
                return 1;
            }
        } else {
            used = hl - c->part_len;
            c->part_len = 0;
            if (fh.opcode == 0) {
                if (!c->in_msg)
                    return -1;
            } else if (fh.opcode == 1 || fh.opcode == 2) {
                if (c->in_msg)
                    return -1;
                c->in_msg = 1;
                c->msgpos = 0;
                c->f_comp = fh.rsv == 4;
                if (fh.opcode != (binary ? 2 : 1))
                    errors++;
            } else {
                return -1;
            }
            if (measuring)
                wire_rx += hl + fh.len;
            c->remaining = fh.len;
            c->f_fin = fh.fin;
            if (fh.len == 0 && fh.fin)
                msg_end(c);
        }
        p += used;
        n -= used;
    }
    return 0;
}

/* The server's Sec-WebSocket-Extensions answer to our offer: sets up the
 * compressor (client_max_window_bits, client_no_context_takeover) and the
 * inflater (window 2^15: enough for any server_max_window_bits). No
 * answer: the session goes uncompressed. Returns -1 on an answer we did
 * not offer. */
static int
pmd_accept(struct conn *c, const char *head)
{
    const char *v = strcasestr(head, "\r\nSec-WebSocket-Extensions:");
    if (!v)
        return 0;
    v += 28;
    const char *e = strstr(v, "\r\n");
    char val[256];
    size_t vl = (size_t)(e - v) < sizeof val - 1 ? (size_t)(e - v) : sizeof val - 1;
    memcpy(val, v, vl);
    val[vl] = 0;
    c->c_bits = 15;
    c->c_nct = c->s_nct = 0;
    char *save = NULL;
    int first = 1;
    for (char *t = strtok_r(val, ";", &save); t; t = strtok_r(NULL, ";", &save)) {
        t = trim_blanks(t);
        if (first) {
            if (strcmp(t, "permessage-deflate")) {
                last_err = "unexpected extension";
                return -1;
            }
            first = 0;
        } else if (!strcmp(t, "client_no_context_takeover")) {
            c->c_nct = 1;
        } else if (!strcmp(t, "server_no_context_takeover")) {
            c->s_nct = 1;
        } else if (!strncmp(t, "client_max_window_bits=", 23)) {
            c->c_bits = atoi(t + 23);
        } else if (strncmp(t, "server_max_window_bits=", 23)) {
            last_err = "unexpected extension parameter";
            return -1;
        }
    }
    if (c->c_bits < 8 || c->c_bits > 15) {
        last_err = "bad client_max_window_bits";
        return -1;
    }
    c->zd = calloc(1, sizeof *c->zd);
    c->zi = calloc(1, sizeof *c->zi);
    /* zlib's raw deflate has no 2^8 window: 9 would break the agreement */
    if (!c->zd || !c->zi || c->c_bits < 9 ||
        deflateInit2(c->zd, pmd_level, Z_DEFLATED, -c->c_bits, 8,
                     Z_DEFAULT_STRATEGY) != Z_OK ||
        inflateInit2(c->zi, -15) != Z_OK) {
        last_err = "zlib init";
        return -1;
    }
    c->pmd = 1;
    pmd_conns++;
    return 0;
}

/* Readings at the edges of the throughput measurement. */
struct snap {
    double bcpu;            /* backend CPU seconds */
    uint64_t brd, bwr;      /* backend bytes read, written */
    uint64_t ttx, trx;      /* client sockets: TCP payload sent (acked),
                               received */
    uint64_t sin, dsin, sout, dsout;    /* their segments in, of which with
                                           data; segments out, with data */
};

static void tcp_counts(struct conn *cs, int n, struct snap *s);

static void
snap(struct snap *s, struct conn *cs, int n)
{
    if (bpid) {
        s->bcpu = pid_cpu(bpid);
        pid_io(bpid, &s->brd, &s->bwr);
    }
    tcp_counts(cs, n, s);
}

/* TCP payload bytes (TLS records and all) and segments of the open
 * connections. Segments without data are acknowledgements and window
 * updates: each one costs the receiver a trip through its TCP stack. */
static void
tcp_counts(struct conn *cs, int n, struct snap *s)
{
    s->ttx = s->trx = s->sin = s->dsin = s->sout = s->dsout = 0;
    for (int i = 0; i < n; i++) {
        if (cs[i].fd < 0 || cs[i].st == S_FREE)
            continue;
        struct tcp_info ti;
        socklen_t l = sizeof ti;
        memset(&ti, 0, sizeof ti);
        if (getsockopt(cs[i].fd, IPPROTO_TCP, TCP_INFO, &ti, &l) == 0) {
            s->ttx += ti.tcpi_bytes_acked;
            s->trx += ti.tcpi_bytes_received;
            s->sin += ti.tcpi_segs_in;
            s->dsin += ti.tcpi_data_segs_in;
            s->sout += ti.tcpi_segs_out;
            s->dsout += ti.tcpi_data_segs_out;
        }
    }
}

static int
http_input(struct conn *c, const uint8_t *p, size_t n)
{
    if (!c->head)
        c->head = xmalloc(4097);
    size_t take = n;
    if (c->head_len + take > 4096)
        take = 4096 - c->head_len;
    memcpy(c->head + c->head_len, p, take);
    c->head_len += take;
    c->head[c->head_len] = 0;
    char *end = strstr(c->head, "\r\n\r\n");
    if (!end) {
        if (c->head_len >= 4096) {
            last_err = "response head too long";
            return -1;
        }
        return 0;
    }
    if (strncmp(c->head, "HTTP/1.1 101", 12) != 0) {
        last_err = "no 101";
        if (getenv("WSBENCH_DEBUG"))
            fprintf(stderr, "wsbench: response: %.200s\n", c->head);
        return -1;
    }
    if (!strcasestr(c->head, c->accept)) {
        last_err = "bad Sec-WebSocket-Accept";
        return -1;
    }
    if (pmd_offer && pmd_accept(c, c->head) < 0)
        return -1;
    size_t hlen = (size_t)(end - c->head) + 4;
    size_t extra = c->head_len - hlen;
    char *h = c->head;
    c->head = NULL;
    c->head_len = 0;
    on_open(c);
    int r = 0;
    if (extra)
        r = ws_input(c, (uint8_t *)h + hlen, extra);
    free(h);
    if (r == 0 && take < n)
        r = ws_input(c, p + take, n - take);
    return r;
}

/* Write what is queued in c->out until the socket (or TLS) would block.
 * Returns 0, or -1 on an error (last_err set). */
static int
flush_out(struct conn *c)
{
    while (obuf_pending(&c->out)) {
        const uint8_t *b = c->out.b + c->out.off;
        size_t len = obuf_pending(&c->out);
        ssize_t n;
        if (c->ssl) {
            int r = SSL_write(c->ssl, b, len > (1u << 30) ? (int)(1u << 30) : (int)len);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                    break;
                last_err = "SSL_write";
                return -1;
            }
            n = r;
        } else {
            n = write(c->fd, b, len);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    break;
                last_err = "write";
                return -1;
            }
        }
        c->out.off += (size_t)n;
    }
    return 0;
}

/* 1 = finished normally, 0 = continue, -1 = failed */
static int
do_io(struct conn *c)
{
    /* flush */
    if (flush_out(c) == -1)
        return -1;
    /* read */
    for (;;) {
        ssize_t n;
        if (c->ssl) {
            int r = SSL_read(c->ssl, rbuf, sizeof rbuf);
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                    break;
                if (e == SSL_ERROR_ZERO_RETURN)
                    n = 0;
                else {
                    last_err = "SSL_read";
                    ERR_clear_error();
                    return -1;
                }
            } else {
                n = r;
            }
        } else {
            n = read(c->fd, rbuf, sizeof rbuf);
            if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    break;
                last_err = "read";
                return -1;
            }
        }
        if (n == 0) {
            if (c->st == S_CLOSE_SENT)
                return 1;
            last_err = "EOF";
            return -1;
        }
        int r = c->st == S_REQ ? http_input(c, rbuf, (size_t)n)
                               : ws_input(c, rbuf, (size_t)n);
        if (r < 0) {
            if (!*last_err)
                last_err = "protocol";
            return -1;
        }
        if (r == 1) {
            /* close handshake done: flush our close reply if any */
            if (obuf_pending(&c->out)) {
                if (c->ssl)
                    SSL_write(c->ssl, c->out.b + c->out.off,
                              (int)obuf_pending(&c->out));
                else if (write(c->fd, c->out.b + c->out.off,
                               obuf_pending(&c->out)) < 0) {
                }
            }
            return 1;
        }
    }
    /* anything queued by the input (echo replies, next messages) */
    if (flush_out(c) == -1)
        return -1;
    set_events(c, EPOLLIN | (obuf_pending(&c->out) ? EPOLLOUT : 0));
    return 0;
}

static void
finish_cycle(struct conn *c, int ok)
{
    if (ok && mode == M_HANDSHAKE) {
        hs_attempts++;
        if (measuring) {
            cnt_hs++;
            if (c->ssl && SSL_session_reused(c->ssl))
                resumed_hs++;
        }
    }
    conn_close(c, !ok);
    if (mode == M_HANDSHAKE && sending)
        start_conn(c);
}

static void
on_event(struct conn *c, uint32_t ev)
{
    if (c->st == S_CONNECT) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            last_err = "connect";
            finish_cycle(c, 0);
            return;
        }
        if (!(ev & (EPOLLOUT | EPOLLIN)))
            return;
        if (use_tls) {
            c->ssl = SSL_new(sctx);
            SSL_set_fd(c->ssl, c->fd);
            SSL_set_tlsext_host_name(c->ssl, "localhost");
            if (resume && slot_sess[c->slot])
                SSL_set_session(c->ssl, slot_sess[c->slot]);
            c->st = S_TLS;
            c->t_stage = tnow_s;
        } else {
            build_request(c);
        }
    }
    if (c->st == S_TLS) {
        int r = SSL_connect(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                set_events(c, EPOLLIN);
                return;
            }
            if (e == SSL_ERROR_WANT_WRITE) {
                set_events(c, EPOLLIN | EPOLLOUT);
                return;
            }
            last_err = "TLS handshake";
            ERR_clear_error();
            finish_cycle(c, 0);
            return;
        }
        if (cipher_name[0] == 'n')
            snprintf(cipher_name, sizeof cipher_name, "%s/%s",
                     SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl));
        build_request(c);
    }
    int r = do_io(c);
    if (r != 0)
        finish_cycle(c, r > 0);
}

static void
start_conn(struct conn *c)
{
    memset(&c->out, 0, sizeof c->out);
    c->part_len = 0;
    c->remaining = 0;
    c->in_msg = 0;
    c->msgpos = 0;
    c->sent_seq = c->recv_seq = 0;
    c->id = next_id++;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    n_live++;
    c->st = S_CONNECT;
    c->t_stage = tnow_s;
    if (c->fd < 0) {
        last_err = "socket";
        conn_close(c, 1);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (nsrc > 0) {
        struct sockaddr_in sa = { .sin_family = AF_INET };
        sa.sin_addr = srcs[c->id % (uint32_t)nsrc];
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            last_err = "bind";
            conn_close(c, 1);
            return;
        }
    }
    int r = connect(c->fd, (struct sockaddr *)&target, sizeof target);
    if (r < 0 && errno != EINPROGRESS) {
        last_err = "connect";
        close(c->fd);
        c->fd = -1;
        conn_close(c, 1);
        return;
    }
    c->events = EPOLLOUT | EPOLLIN;
    struct epoll_event e = { .events = c->events, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
}

static void
on_sig(int s)
{
    (void)s;
    got_sig = 1;
}

/* Message k of --json: exactly len bytes of JSON (a status update with
 * an array of records: the same keys in every record, numbers, names and
 * timestamps that vary), padded with spaces before the closing "]}". */
static uint64_t
json_rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void
json_message(char *out, size_t len, int k)
{
    static const char *const names[] = { "pump", "valve", "sensor", "meter",
        "relay", "gateway", "boiler", "chiller", "fan", "compressor" };
    static const char *const sites[] = { "north", "south", "east", "west",
        "depot", "plant-2", "annex" };
    static const char *const status[] = { "ok", "ok", "ok", "warning",
        "degraded", "offline" };
    static const char *const units[] = { "C", "kPa", "rpm", "kWh", "l/min" };
    uint64_t seed = 0x2545F4914F6CDD1Dull * (uint64_t)(k + 1);
    unsigned long long ts = 1717000000000ull + json_rng(&seed) % 86400000ull;
    unsigned src = (unsigned)(json_rng(&seed) % 32);
    size_t o = (size_t)snprintf(out, len,
        "{\"type\":\"telemetry\",\"seq\":%d,\"ts\":%llu,\"source\":"
        "\"collector-%02u\",\"items\":[", k, ts, src);
    char rec[512];
    for (int i = 0;; i++) {
        uint64_t t = 1717000000ull + json_rng(&seed) % 86400ull;
        unsigned long long id = 100000 + json_rng(&seed) % 900000;
        const char *nm = names[json_rng(&seed) % 10];
        unsigned num = (unsigned)(json_rng(&seed) % 1000);
        const char *site = sites[json_rng(&seed) % 7];
        const char *st = status[json_rng(&seed) % 6];
        double val = (double)(json_rng(&seed) % 1000000) / 1000.0;
        const char *unit = units[json_rng(&seed) % 5];
        unsigned thr = (unsigned)(json_rng(&seed) % 500);
        const char *act = json_rng(&seed) & 1 ? "true" : "false";
        unsigned ms = (unsigned)(json_rng(&seed) % 1000);
        int rl = snprintf(rec, sizeof rec,
            "%s{\"id\":%llu,\"name\":\"%s-%03u\",\"site\":\"%s\","
            "\"status\":\"%s\",\"value\":%.3f,\"unit\":\"%s\","
            "\"threshold\":%u,\"active\":%s,\"updated\":"
            "\"2024-05-%02uT%02u:%02u:%02u.%03uZ\"}",
            i ? "," : "", id, nm, num, site, st, val, unit, thr, act,
            (unsigned)(t / 86400 % 28 + 1), (unsigned)(t / 3600 % 24),
            (unsigned)(t / 60 % 60), (unsigned)(t % 60), ms);
        if (o + (size_t)rl + 2 > len)
            break;
        memcpy(out + o, rec, (size_t)rl);
        o += (size_t)rl;
    }
    while (o < len - 2)
        out[o++] = ' ';
    out[len - 2] = ']';
    out[len - 1] = '}';
}

static void
usage(void)
{
    fprintf(stderr,
"usage: wsbench [options]\n"
"  -m, --mode MODE        throughput | idle | handshake (throughput)\n"
"  -t, --target H:P       proxy or backend address (127.0.0.1:9443)\n"
"      --tls / --no-tls   wss:// or ws:// (tls)\n"
"  -c, --conns N          connections / idle sessions / handshake slots (100)\n"
"  -d, --depth D          messages in flight per connection (16)\n"
"  -s, --size S           message size, k/m suffix (64)\n"
"  -T, --duration SEC     measurement time (10)\n"
"  -w, --warmup SEC       warm-up before measuring (2)\n"
"  -n, --messages M       send exactly M messages in total, then stop\n"
"      --binary           binary frames (default text, ASCII payload)\n"
"  -o, --origin ORIGIN    send an Origin header\n"
"      --token TOKEN      bearer token to send\n"
"      --jwt-secret S     make an HS256 JWT (sub=wsbench, exp=+1d) with S\n"
"      --token-in WHERE   query (?access_token=) | header (Authorization)\n"
"  -p, --path PATH        request path (/bench)\n"
"      --host HOST        Host header (localhost)\n"
"  -B, --src A,B,...      source addresses, round robin\n"
"      --resume           TLS session resumption (handshake mode)\n"
"      --hold SEC         idle: hold the sessions this long (10)\n"
"      --parallel K       idle: at most K handshakes at once (256)\n"
"      --pid P[,P..]      proxy process(es): CPU and RSS from /proc\n"
"      --backend-pid P    backend process: CPU and bytes read+written\n"
"      --json             text messages of JSON-like records (256 different)\n"
"      --deflate          offer permessage-deflate and use it when agreed\n"
"      --deflate-level L  zlib level of the client's compressor (-1: 6)\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "mode", 1, 0, 'm' },     { "target", 1, 0, 't' },
        { "tls", 0, 0, 1 },        { "no-tls", 0, 0, 2 },
        { "conns", 1, 0, 'c' },    { "depth", 1, 0, 'd' },
        { "size", 1, 0, 's' },     { "duration", 1, 0, 'T' },
        { "warmup", 1, 0, 'w' },   { "messages", 1, 0, 'n' },
        { "binary", 0, 0, 3 },     { "origin", 1, 0, 'o' },
        { "token", 1, 0, 4 },      { "jwt-secret", 1, 0, 5 },
        { "token-in", 1, 0, 6 },   { "path", 1, 0, 'p' },
        { "host", 1, 0, 7 },       { "src", 1, 0, 'B' },
        { "resume", 0, 0, 8 },     { "hold", 1, 0, 9 },
        { "parallel", 1, 0, 10 },  { "pid", 1, 0, 11 },
        { "backend-pid", 1, 0, 12 }, { "json", 0, 0, 13 },
        { "deflate", 0, 0, 14 },   { "deflate-level", 1, 0, 15 },
        { "help", 0, 0, 'h' },     { 0, 0, 0, 0 }
    };
    int o;
    while ((o = getopt_long(argc, argv, "m:t:c:d:s:T:w:n:o:p:B:h", lo, NULL)) != -1) {
        switch (o) {
        case 'm':
            if (!strcmp(optarg, "throughput")) mode = M_THROUGHPUT;
            else if (!strcmp(optarg, "idle")) mode = M_IDLE;
            else if (!strcmp(optarg, "handshake")) mode = M_HANDSHAKE;
            else usage();
            break;
        case 't': target_s = optarg; break;
        case 1: use_tls = 1; break;
        case 2: use_tls = 0; break;
        case 'c': nconns = atoi(optarg); break;
        case 'd': depth = atoi(optarg); break;
        case 's': msize = parse_size(optarg); break;
        case 'T': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'n': nmessages = strtoull(optarg, NULL, 10); break;
        case 3: binary = 1; break;
        case 'o': origin = optarg; break;
        case 4: token = optarg; break;
        case 5: jwt_secret = optarg; break;
        case 6: token_in = optarg; break;
        case 'p': path = optarg; break;
        case 7: host_hdr = optarg; break;
        case 'B': {
            char *s = strdup(optarg), *save = NULL;
            for (char *t = strtok_r(s, ",", &save); t && nsrc < 256;
                 t = strtok_r(NULL, ",", &save))
                if (inet_pton(AF_INET, t, &srcs[nsrc]) == 1)
                    nsrc++;
            free(s);
            break;
        }
        case 8: resume = 1; break;
        case 9: hold = atof(optarg); break;
        case 10: parallel = atoi(optarg); break;
        case 11: {
            char *s = strdup(optarg), *save = NULL;
            for (char *t = strtok_r(s, ",", &save); t && npids < 8;
                 t = strtok_r(NULL, ",", &save))
                pids[npids++] = (pid_t)atoi(t);
            free(s);
            break;
        }
        case 12: bpid = (pid_t)atoi(optarg); break;
        case 13: json_mode = 1; break;
        case 14: pmd_offer = 1; break;
        case 15: pmd_level = atoi(optarg); break;
        default: usage();
        }
    }
    if (json_mode && (binary || msize < 256))
        usage();
    if (parse_hostport(target_s, &target) < 0 || nconns < 1 || depth < 1)
        usage();
    if (strcmp(token_in, "query") && strcmp(token_in, "header"))
        usage();
    if (nmessages && mode == M_THROUGHPUT) {
        warmup = 0;
        duration = 1e9;
    }
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_sig };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (jwt_secret)
        make_jwt(jwt_secret);
    else if (token)
        tok = token;
    RAND_bytes((unsigned char *)&rng_state, sizeof rng_state);
    rng_state |= 1;

    if (json_mode) {
        pat = xmalloc(JSON_N * msize);
        for (int i = 0; i < JSON_N; i++)
            json_message((char *)pat + (size_t)i * msize, (size_t)msize, i);
    } else {
        /* printable ASCII pattern: valid UTF-8 for text frames */
        pat = xmalloc(msize + PAT_SPREAD);
        for (uint64_t i = 0; i < msize + PAT_SPREAD; i++)
            pat[i] = (uint8_t)(0x20 + rng() % 95);
    }

    if (use_tls) {
        sctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(sctx, TLS1_3_VERSION);
        SSL_CTX_set_verify(sctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_mode(sctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                   SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                   SSL_MODE_RELEASE_BUFFERS);
        static const unsigned char alpn[] = "\x08http/1.1";
        SSL_CTX_set_alpn_protos(sctx, alpn, sizeof alpn - 1);
        if (!resume)
            SSL_CTX_set_options(sctx, SSL_OP_NO_TICKET);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    int ncs = nconns;
    struct conn *cs = calloc((size_t)ncs, sizeof *cs);
    slot_sess = calloc((size_t)ncs, sizeof *slot_sess);
    for (int i = 0; i < ncs; i++) {
        cs[i].fd = -1;
        cs[i].slot = i;
        cs[i].st = S_FREE;
        if (mode == M_THROUGHPUT)
            cs[i].ts = xmalloc(sizeof(uint64_t) * (size_t)depth);
    }

    double t0 = now_s();
    tnow_s = t0;
    tnow = now_ns();
    double rss0 = (double)proc_rss_kb();
    double cpu_start = proc_cpu();
    double cpu0 = 0, cpu1 = 0, lg0 = 0, lg1 = 0, t_ready = 0, cpu_ready = 0;
    double rss1 = 0, t_setup = 0;
    struct snap sn0 = { 0 }, sn1 = { 0 };
    int started = 0; /* conns started so far (idle / initial) */
    int phase = 0;   /* 0 = opening, 1 = warm-up/run, 2 = measuring, 3 = draining, 4 = closing */
    double t_phase = t0, t_run0 = 0;

    if (mode != M_IDLE) {
        for (int i = 0; i < ncs; i++)
            start_conn(&cs[i]);
        started = ncs;
    }

    struct epoll_event evs[1024];
    for (;;) {
        if (mode == M_IDLE && phase == 0) {
            while (started < ncs && n_live - n_open < parallel)
                start_conn(&cs[started++]);
        }
        int k = epoll_wait(ep, evs, 1024, 50);
        tnow = now_ns();
        tnow_s = (double)tnow * 1e-9;
        for (int i = 0; i < k; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c->st != S_FREE && c->fd >= 0)
                on_event(c, evs[i].events);
        }
        /* stage timeouts (not in the open state) */
        static double last_scan;
        if (tnow_s - last_scan > 1.0) {
            last_scan = tnow_s;
            for (int i = 0; i < ncs; i++) {
                struct conn *c = &cs[i];
                if (c->st != S_FREE && c->st != S_OPEN &&
                    tnow_s - c->t_stage > STAGE_TIMEOUT) {
                    last_err = "timeout";
                    finish_cycle(c, 0);
                }
            }
        }
        if (got_sig)
            break;
        double t = tnow_s;
        if (mode == M_THROUGHPUT) {
            if (phase == 0) {
                if (n_open + n_failed >= ncs || t - t0 > 20) {
                    if (n_open == 0)
                        break;
                    phase = 1;
                    t_phase = t;
                    t_setup = t - t0;
                    for (int i = 0; i < ncs; i++)
                        if (cs[i].st == S_OPEN) {
                            for (int j = 0; j < depth && may_send(); j++)
                                send_msg(&cs[i]);
                            do_io(&cs[i]);
                        }
                    if (nmessages) {
                        phase = 2;
                        measuring = 1;
                        t_meas0 = t;
                        cpu0 = proc_cpu();
                        lg0 = self_cpu();
                        snap(&sn0, cs, ncs);
                    }
                }
            } else if (phase == 1 && t - t_phase >= warmup) {
                phase = 2;
                measuring = 1;
                t_meas0 = t;
                cpu0 = proc_cpu();
                lg0 = self_cpu();
                snap(&sn0, cs, ncs);
            } else if (phase == 2 &&
                       ((!nmessages && t - t_meas0 >= duration) ||
                        (nmessages && recv_total >= nmessages) || n_open == 0)) {
                measuring = 0;
                t_meas1 = t;
                cpu1 = proc_cpu();
                lg1 = self_cpu();
                snap(&sn1, cs, ncs);
                sending = 0;
                phase = 3;
                t_phase = t;
            } else if (phase == 3) {
                if (recv_total >= sent_total || t - t_phase > 3) {
                    phase = 4;
                    t_phase = t;
                    static const uint8_t code[2] = { 0x03, 0xe8 };
                    for (int i = 0; i < ncs; i++)
                        if (cs[i].st == S_OPEN) {
                            send_frame(&cs[i], 8, code, 2);
                            cs[i].st = S_CLOSE_SENT;
                            cs[i].t_stage = t;
                            if (do_io(&cs[i]) != 0)
                                conn_close(&cs[i], 0);
                        }
                }
            } else if (phase == 4 && (n_live == 0 || t - t_phase > 2)) {
                break;
            }
        } else if (mode == M_HANDSHAKE) {
            if (phase == 0) {
                phase = 1;
                t_run0 = t;
            }
            if (phase == 1 && t - t_run0 >= warmup) {
                phase = 2;
                measuring = 1;
                t_meas0 = t;
                cpu0 = proc_cpu();
                lg0 = self_cpu();
            } else if (phase == 2 && t - t_meas0 >= duration) {
                measuring = 0;
                t_meas1 = t;
                cpu1 = proc_cpu();
                lg1 = self_cpu();
                sending = 0;
                phase = 3;
                t_phase = t;
            } else if (phase == 3 && (n_live == 0 || t - t_phase > 3)) {
                break;
            }
        } else { /* idle */
            if (phase == 0 && started >= ncs && n_live == n_open) {
                t_setup = t - t0;
                cpu_ready = proc_cpu();
                phase = 1;
                t_phase = t;
            } else if (phase == 0 && t - t0 > 300) {
                break;
            } else if (phase == 1 && t - t_phase >= 2.0) {
                /* settled: read RSS, then hold */
                rss1 = (double)proc_rss_kb();
                t_ready = t;
                phase = 2;
                t_meas0 = t;
                cpu0 = proc_cpu();
                lg0 = self_cpu();
                fprintf(stderr, "wsbench: %d sessions open, holding %.0fs\n",
                        n_open, hold);
            } else if (phase == 2 && t - t_meas0 >= hold) {
                t_meas1 = t;
                cpu1 = proc_cpu();
                lg1 = self_cpu();
                break;
            }
        }
    }
    if (t_meas1 == 0) { /* interrupted */
        t_meas1 = tnow_s;
        cpu1 = proc_cpu();
        lg1 = self_cpu();
    }
    if (t_meas0 == 0)
        t_meas0 = t_meas1;
    double wall = t_meas1 - t_meas0;
    if (wall <= 0)
        wall = 1e-9;
    double pcpu = cpu1 - cpu0;
    long rss_end = proc_rss_kb();
    int open_at_end = n_open;
    /* close whatever is left */
    for (int i = 0; i < ncs; i++)
        if (cs[i].st != S_FREE)
            conn_close(&cs[i], 0);
    (void)t_ready;

    char common[512];
    snprintf(common, sizeof common,
             "addr=%s tls=%d cipher=%s errors=%llu last_error=%s "
             "wall_s=%.3f proxy_cpu_s=%.3f proxy_cpu_util=%.3f "
             "lg_cpu_util=%.3f rss_kb=%ld",
             target_s, use_tls, cipher_name, (unsigned long long)errors,
             *last_err ? last_err : "-", wall, pcpu, npids ? pcpu / wall : 0,
             (lg1 - lg0) / wall, rss_end);
    if (mode == M_THROUGHPUT) {
        double ms = (double)cnt_msgs / wall;
        double nm = cnt_msgs ? (double)cnt_msgs : 1;
        double mbs = (double)cnt_bytes / wall / 1e6;
        /* per echoed message: CPU in us, bytes each way */
        char extra[768];
        int xl = snprintf(extra, sizeof extra,
               "pmd_conns=%d json=%d wire_c2s_per_msg=%.1f "
               "wire_s2c_per_msg=%.1f plain_per_msg=%.1f "
               "tcp_c2s_per_msg=%.1f tcp_s2c_per_msg=%.1f "
               "segs_in_per_msg=%.4f data_segs_in_per_msg=%.4f "
               "segs_out_per_msg=%.4f data_segs_out_per_msg=%.4f "
               "proxy_cpu_us_per_msg=%.2f lg_cpu_us_per_msg=%.2f ",
               pmd_conns, json_mode, (double)wire_tx / nm,
               (double)wire_rx / nm, (double)plain_rx / nm,
               (double)(sn1.ttx - sn0.ttx) / nm, (double)(sn1.trx - sn0.trx) / nm,
               (double)(sn1.sin - sn0.sin) / nm, (double)(sn1.dsin - sn0.dsin) / nm,
               (double)(sn1.sout - sn0.sout) / nm,
               (double)(sn1.dsout - sn0.dsout) / nm,
               pcpu / nm * 1e6, (lg1 - lg0) / nm * 1e6);
        if (bpid)
            snprintf(extra + xl, sizeof extra - (size_t)xl,
                   "backend_cpu_s=%.3f backend_cpu_us_per_msg=%.2f "
                   "backend_rx_per_msg=%.1f backend_tx_per_msg=%.1f ",
                   sn1.bcpu - sn0.bcpu, (sn1.bcpu - sn0.bcpu) / nm * 1e6,
                   (double)(sn1.brd - sn0.brd) / nm,
                   (double)(sn1.bwr - sn0.bwr) / nm);
        printf("mode=throughput conns=%d open=%d depth=%d size=%llu "
               "msgs=%llu msg_s=%.0f mb_s=%.2f p50_us=%.1f p99_us=%.1f "
               "p999_us=%.1f max_us=%.1f msg_per_cpu_s=%.0f "
               "mb_per_cpu_s=%.2f setup_s=%.2f %s%s\n",
               ncs, open_at_end, depth, (unsigned long long)msize,
               (unsigned long long)cnt_msgs, ms, mbs, hist_pct(0.50) / 1e3,
               hist_pct(0.99) / 1e3, hist_pct(0.999) / 1e3,
               (double)hist_max / 1e3,
               pcpu > 0 ? (double)cnt_msgs / pcpu : 0,
               pcpu > 0 ? (double)cnt_bytes / pcpu / 1e6 : 0, t_setup, extra,
               common);
    } else if (mode == M_HANDSHAKE) {
        printf("mode=handshake conc=%d resume=%d hs=%llu hs_s=%.0f "
               "resumed=%llu hs_per_cpu_s=%.0f origin=%d token=%d %s\n",
               ncs, resume, (unsigned long long)cnt_hs,
               (double)cnt_hs / wall, (unsigned long long)resumed_hs,
               pcpu > 0 ? (double)cnt_hs / pcpu : 0, origin != NULL,
               tok != NULL, common);
    } else {
        double per = open_at_end > 0 ? (rss1 - rss0) / (double)open_at_end : 0;
        printf("mode=idle sessions=%d failed=%d setup_s=%.2f "
               "rss0_kb=%.0f rss1_kb=%.0f rss_per_session_kb=%.2f "
               "setup_cpu_s=%.3f setup_cpu_per_session_us=%.1f "
               "hold_cpu_util=%.4f %s\n",
               open_at_end, n_failed, t_setup, rss0, rss1, per,
               cpu_ready - cpu_start,
               open_at_end ? (cpu_ready - cpu_start) / open_at_end * 1e6 : 0,
               pcpu / wall, common);
    }
    fflush(stdout);
    return errors ? 1 : 0;
}
