/*
 * wssoak - soak and fault load generator for wsguard (tests/soak/run.py).
 *
 * One thread, epoll (level-triggered), non-blocking sockets, OpenSSL 3.
 * It keeps --sessions slots busy. Each slot belongs to one class and runs
 * one session after another (churn): when a session ends, the slot starts
 * a new one after a short pause.
 *
 *   good      upgrade with a fresh HS256 JWT (query, Authorization header
 *             or cookie) and an allowed Origin; sends messages of 1 B to
 *             256 KiB, text (UTF-8 with 2-, 3- and 4-byte characters) or
 *             binary, often fragmented, sometimes with a ping between the
 *             fragments; every echo is checked byte for byte and in order;
 *             after its lifetime it closes with 1000 once everything is
 *             echoed.
 *   oversize  a few good messages, then a message over --max-payload
 *             (one frame announcing it, or a continuation frame that
 *             crosses it): expects close 1009
 *   flood     a few good messages, then a burst of messages beyond
 *             --mps (the server's messages_per_second): expects 1008
 *   utf8      a few good messages, then a text message with invalid UTF-8
 *             (bad byte, overlong form, surrogate, truncated sequence at
 *             the end, or a bad continuation fragment): expects 1007
 *   slow      slowloris: TCP (+ TLS) and then a request head dribbled one
 *             byte at a time, never finished: expects no response at all
 *             and the connection cut at --handshake-timeout after connect
 *   stall     a few good messages, then stops reading while pushing 64 KiB
 *             messages: expects the connection cut (reset) no earlier than
 *             --write-timeout after it stopped reading, with no close frame
 *   noauth    a bad Origin (403), a bad signature, an expired token or no
 *             token (401): expects exactly that status
 *
 * Message format. Message `seq` of session `sid` is a pure function of
 * (sid, seq, length, opcode). A message of 41 bytes or more starts with
 * the ASCII header "W<sid:8 hex>:<seq:12 hex>:<len:8 hex>:<crc32:8 hex>|"
 * (the CRC-32 of the rest of the message); a shorter one starts with up
 * to 8 base64url digits of seq. The rest comes from a generator seeded
 * with (sid, seq). The receiver regenerates every expected byte, compares
 * it as it streams in, recomputes the CRC and compares it with the one in
 * the header, and checks opcode, length and order against the queue of
 * messages sent. A wrong message is classified as order (another
 * message's header or sequence digits: lost, duplicated or reordered),
 * length or corrupt (wrong bytes in the body, or checksum).
 *
 * Faults announced on stdin (one command per line; each is acknowledged
 * with "ack ..." on stdout):
 *   outage-begin / outage-end   the backend is being killed / is back;
 *             between them and for --outage-grace seconds after, a
 *             session may end with close 1014 ("backend_cut"; also a
 *             connection cut inside a frame the backend was sending,
 *             which cannot be closed with a frame), and an upgrade may be
 *             refused with 502 ("refused_outage"). Both are errors at any
 *             other time.
 *   mass F    abruptly close (half with a TCP reset, half with a plain
 *             close, no close frame) fraction F of the open good sessions
 *   stop      stop starting sessions; good sessions finish what is in
 *             flight and close; exit when every session has ended
 *
 * Output (stdout): "ready ..." once every good slot has had a session
 * open, "stats ..." every second, "ack ...", and at the end one line
 * "summary key=value ...". --records FILE gets one JSON line per session
 * (the driver matches them with wsguard's access log by path
 * /soak/<class>/<sid>). Exit status 0 when there was no error.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "common.h"

#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define RBUF (256 * 1024)
#define MAXMSG (256 * 1024)
#define HDR 41                  /* long-message header length */
#define MAXQ 16                 /* messages in flight per session, max */
#define MAXPING 8
#define STAGE_LIMIT 30.0        /* upper bounds, never synchronisation */
#define STUCK_LIMIT 60.0
#define SLOW_GAP 0.5            /* slowloris: one byte per SLOW_GAP s */

enum cls { C_GOOD, C_OVERSIZE, C_FLOOD, C_UTF8, C_SLOW, C_STALL, C_NOAUTH,
           C_N };
static const char *cls_name[C_N] = { "good", "oversize", "flood", "utf8",
                                     "slow", "stall", "noauth" };
static const int cls_code[C_N] = { 0, 1009, 1008, 1007, 0, 0, 0 };

enum st { S_IDLE, S_CONNECT, S_TLS, S_REQ, S_SLOW, S_OPEN, S_CLOSING };
/* abusive sessions, inside S_OPEN */
enum ph { P_WARM, P_STEP, P_EXPECT, P_STALL };

enum errc { E_LOST, E_ORDER, E_LENGTH, E_CORRUPT, E_CLOSE, E_REFUSED,
            E_CONNECT, E_PROTO, E_TIMEOUT, E_ABUSE, E_N };
static const char *err_name[E_N] = { "lost", "order", "length", "corrupt",
                                     "close", "refused", "connect",
                                     "protocol", "timeout", "abuse" };

struct expmsg {
    uint64_t seq;
    uint32_t len, crc;
    uint8_t op;
};

struct gen {
    uint64_t s, word;
    int wleft;
    uint32_t len, pos;
    uint8_t op, hn, pn, pi;
    uint8_t pend[4];
    char hdr[48];
};

struct sess {
    int fd;
    SSL *ssl;
    uint32_t events;
    uint8_t st, cls, variant, phase;
    uint8_t got_close, sent_close, partial_tx, counted_open, hs_slot;
    uint32_t slot;
    uint64_t sid;
    int src;
    double t_start, t_conn, t_open, t_stage, t_next_send, t_life_end;
    double t_abuse, t_stall, t_last_rx, t_dribble;
    double think;
    int depth, warm_left, close_code, status;
    struct obuf out;
    char *head;
    size_t head_len, dribble_pos;
    char *req;
    size_t req_len;
    char accept[32];
    /* receive side */
    uint8_t part[14 + 125];
    size_t part_len;
    uint64_t remaining;
    int f_fin, in_msg, rx_check, rbad;
    struct gen rg;
    struct expmsg cur;
    uint64_t rpos;
    uint32_t rcrc;
    uint8_t rhdr[HDR];
    int abuse_frames;
    /* send side */
    struct expmsg q[MAXQ];
    int qh, qn;
    uint64_t next_seq;
    uint32_t pings[MAXPING];
    int ping_h, ping_n;
    uint32_t ping_seq;
    /* counters */
    uint64_t msgs_sent, msgs_echoed, pay_sent, pay_echoed;
    uint64_t wire_out, wire_in, stall_bytes;
    int srv_pings, pongs;
    const char *err;
    int errc;
};

/* ---- options ---- */
static struct sockaddr_in target;
static const char *target_s = "127.0.0.1:8443";
static int nslots = 2000;
static const char *ca_file, *secret_file, *records_path;
static char secret[512];
static const char *origin_ok = "https://soak.example";
static uint64_t max_payload = 288 * 1024;
static int mps = 40;
static double hs_timeout = 5, write_timeout = 5;
static double duration;               /* 0: until "stop" */
static double rate = 1.0;             /* messages/s per good session */
static double lifetime = 20;          /* mean good-session lifetime, s */
static double outage_grace = 10;
static int parallel = 64;
static int use_src = 1;
static int mix[C_N] = { 940, 10, 10, 10, 10, 5, 15 };  /* permille */
static uint64_t seed;

/* ---- state ---- */
static int ep;
static SSL_CTX *sctx;
static struct sess *ss;
static SSL_SESSION **slot_sess;
static double *slot_restart;
static uint8_t *slot_opened;
static uint8_t rbuf[RBUF];
static uint8_t scratch[MAXMSG + 64];
static uint8_t cmpbuf[65536];
static double tnow, t0;
static uint64_t next_sid = 1;
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static int stopping, outage, ready_said;
static double outage_until, quiet_until;
static int n_hs, n_open, n_live, n_good_slots, n_good_opened;
static int max_open, min_open_after_ready = -1;
static FILE *recf;
static volatile sig_atomic_t got_sig;

static uint64_t errs[E_N];
static uint64_t c_sessions[C_N], c_ok[C_N], c_cut[C_N], c_refused_outage,
    c_mass, c_resumed;
static uint64_t t_msgs_sent, t_msgs_echoed, t_pay_sent, t_pay_echoed,
    t_wire_out, t_wire_in, t_pings, t_pongs, t_srv_pings, t_frames_frag,
    t_lost_inflight, t_stall_bytes, t_text, t_bin, t_max_msg;
static uint64_t hist_size[8];

/* ---- small helpers ---- */
static inline uint64_t
rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static inline double
urand(void)
{
    return (double)(rng() >> 11) * (1.0 / 9007199254740992.0);
}

static inline uint64_t
splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint32_t crc_tab[256];

static void
crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tab[i] = c;
    }
}

static inline uint32_t
crc_upd(uint32_t c, const uint8_t *p, size_t n)
{
    c = ~c;
    for (size_t i = 0; i < n; i++)
        c = crc_tab[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return ~c;
}

static const char b64u[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t
b64url(const unsigned char *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64u[v >> 18];
        out[o++] = b64u[(v >> 12) & 63];
        out[o++] = b64u[(v >> 6) & 63];
        out[o++] = b64u[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64u[v >> 18];
        out[o++] = b64u[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64u[v >> 18];
        out[o++] = b64u[(v >> 12) & 63];
        out[o++] = b64u[(v >> 6) & 63];
    }
    out[o] = 0;
    return o;
}

/* HS256 JWT for session sid; exp_off seconds from now. */
static void
make_jwt(char *out, uint64_t sid, long exp_off, int bad_sig)
{
    char payload[256];
    long now = (long)time(NULL);
    int pl = snprintf(payload, sizeof payload,
                      "{\"sub\":\"soak-%llu\",\"jti\":\"%llu\",\"iat\":%ld,"
                      "\"exp\":%ld}", (unsigned long long)sid,
                      (unsigned long long)sid,
                      exp_off < 0 ? now - 7200 : now, now + exp_off);
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    size_t o = b64url((const unsigned char *)hdr, sizeof hdr - 1, out);
    out[o++] = '.';
    o += b64url((const unsigned char *)payload, (size_t)pl, out + o);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)out, o,
         mac, &ml);
    if (bad_sig)
        mac[0] ^= 0x55;
    out[o++] = '.';
    b64url(mac, ml, out + o);
}

/* ---- message content ---- */
static void
gen_init(struct gen *g, uint64_t sid, uint64_t seq, uint32_t len, int op,
         uint32_t crc)
{
    memset(g, 0, sizeof *g);
    g->s = sid * 0x100000001B3ull ^ (seq + 1) * 0xD6E8FEB86659FD93ull;
    g->len = len;
    g->op = (uint8_t)op;
    if (len >= HDR) {
        snprintf(g->hdr, sizeof g->hdr, "W%08x:%012llx:%08x:%08x|",
                 (unsigned)sid, (unsigned long long)seq, len, crc);
        g->hn = HDR;
    } else {
        g->hn = (uint8_t)(len < 8 ? len : 8);
        for (int i = 0; i < g->hn; i++)
            g->hdr[i] = b64u[(seq >> (6 * i)) & 63];
    }
}

static void
utf8_put(struct gen *g, uint32_t cp, int w)
{
    if (w == 2) {
        g->pend[0] = (uint8_t)(0xC0 | (cp >> 6));
        g->pend[1] = (uint8_t)(0x80 | (cp & 0x3F));
    } else if (w == 3) {
        g->pend[0] = (uint8_t)(0xE0 | (cp >> 12));
        g->pend[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        g->pend[2] = (uint8_t)(0x80 | (cp & 0x3F));
    } else {
        g->pend[0] = (uint8_t)(0xF0 | (cp >> 18));
        g->pend[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
        g->pend[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        g->pend[3] = (uint8_t)(0x80 | (cp & 0x3F));
    }
    g->pn = (uint8_t)w;
    g->pi = 0;
}

/* The next n bytes of the message. */
static void
gen_fill(struct gen *g, uint8_t *o, size_t n)
{
    size_t i = 0;
    while (i < n && g->pos < g->hn)
        o[i++] = (uint8_t)g->hdr[g->pos++];
    if (i == n)
        return;
    if (g->op == 2) {
        while (i < n) {
            if (g->wleft == 0) {
                if (n - i >= 8) {
                    uint64_t w = splitmix(&g->s);
                    memcpy(o + i, &w, 8);
                    i += 8;
                    g->pos += 8;
                    continue;
                }
                g->word = splitmix(&g->s);
                g->wleft = 8;
            }
            o[i++] = (uint8_t)g->word;
            g->word >>= 8;
            g->wleft--;
            g->pos++;
        }
        return;
    }
    while (i < n) {
        if (g->pi < g->pn) {
            o[i++] = g->pend[g->pi++];
            g->pos++;
            continue;
        }
        uint32_t rem = g->len - g->pos;
        uint64_t r = splitmix(&g->s);
        unsigned k = (unsigned)(r % 100);
        r >>= 8;
        if (k < 75 || rem < 2) {
            /* up to four ASCII characters from one draw (kept pending,
             * so the stream does not depend on how it is cut) */
            int w = rem < 4 ? (int)rem : 4;
            for (int j = 0; j < w; j++) {
                g->pend[j] = (uint8_t)(0x20 + (r & 0xff) % 95);
                r >>= 8;
            }
            g->pn = (uint8_t)w;
            g->pi = 0;
            o[i++] = g->pend[g->pi++];
            g->pos++;
            continue;
        }
        uint32_t cp;
        int w;
        if (k < 88 || rem < 3) {
            cp = 0x80 + (uint32_t)(r % 0x780);
            w = 2;
        } else if (k < 96 || rem < 4) {
            cp = 0x800 + (uint32_t)(r % (0x10000 - 0x800 - 0x800));
            if (cp >= 0xD800)
                cp += 0x800;    /* no surrogates */
            w = 3;
        } else {
            cp = 0x10000 + (uint32_t)(r % 0x100000);
            w = 4;
        }
        utf8_put(g, cp, w);
        o[i++] = g->pend[g->pi++];
        g->pos++;
    }
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

static int in_outage(void)
{
    return outage || tnow < outage_until;
}

static void
sess_err(struct sess *s, int e, const char *why)
{
    if (s->err == NULL) {
        s->err = why;
        s->errc = e;
        errs[e]++;
        if (getenv("WSSOAK_DEBUG"))
            fprintf(stderr, "wssoak: %s sid=%llu: %s: %s\n",
                    cls_name[s->cls], (unsigned long long)s->sid,
                    err_name[e], why);
    }
}

static const char *
src_ip(const struct sess *s, char *b)
{
    if (!use_src)
        return "127.0.0.1";
    if (s->cls == C_GOOD)
        sprintf(b, "127.0.1.%d", 1 + (int)(s->sid % 16));
    else
        sprintf(b, "127.0.2.%d", s->cls);
    return b;
}

static void
json_str(FILE *f, const char *k, const char *v)
{
    fprintf(f, ",\"%s\":\"", k);
    for (; v && *v; v++) {
        if (*v == '"' || *v == '\\')
            fputc('\\', f);
        fputc(*v, f);
    }
    fputc('"', f);
}

/* End a session: count it, write its record, free it, and plan the
 * slot's next session. */
static void
sess_end(struct sess *s, const char *outcome)
{
    char ipb[32];
    if (s->err)
        outcome = "error";
    /* messages still in flight: lost unless the session was cut on
     * purpose (backend restart, mass disconnect) */
    int cut = !strcmp(outcome, "backend_cut") || !strcmp(outcome, "mass");
    if (s->qn > 0) {
        if (cut)
            t_lost_inflight += (uint64_t)s->qn;
        else if (s->cls == C_GOOD || s->phase == P_WARM) {
            if (!s->err)
                sess_err(s, E_LOST, "messages never echoed");
            errs[E_LOST] += (uint64_t)s->qn - 1;
        }
    }
    c_sessions[s->cls]++;
    if (!strcmp(outcome, "ok") || !strcmp(outcome, "expected"))
        c_ok[s->cls]++;
    else if (!strcmp(outcome, "backend_cut"))
        c_cut[s->cls]++;
    else if (!strcmp(outcome, "refused_outage"))
        c_refused_outage++;
    else if (!strcmp(outcome, "mass"))
        c_mass++;
    if (recf) {
        fprintf(recf, "{\"sid\":%llu", (unsigned long long)s->sid);
        json_str(recf, "class", cls_name[s->cls]);
        fprintf(recf, ",\"variant\":%d", s->variant);
        json_str(recf, "src", src_ip(s, ipb));
        fprintf(recf, ",\"path\":\"/soak/%s/%llu\"", cls_name[s->cls],
                (unsigned long long)s->sid);
        json_str(recf, "outcome", outcome);
        fprintf(recf, ",\"status\":%d,\"close\":%d,\"sent\":%llu,"
                "\"echoed\":%llu,\"inflight\":%d,\"wire_out\":%llu,"
                "\"wire_in\":%llu,\"srv_pings\":%d,\"t0\":%.3f,\"t1\":%.3f",
                s->status, s->close_code,
                (unsigned long long)s->msgs_sent,
                (unsigned long long)s->msgs_echoed, s->qn,
                (unsigned long long)s->wire_out,
                (unsigned long long)s->wire_in, s->srv_pings,
                s->t_start - t0, tnow - t0);
        if (s->cls == C_STALL)
            fprintf(recf, ",\"t_stall\":%.3f", s->t_stall > 0 ? s->t_stall - t0 : -1);
        if (s->cls == C_SLOW)
            fprintf(recf, ",\"t_conn\":%.3f", s->t_conn > 0 ? s->t_conn - t0 : -1);
        if (in_outage())
            fprintf(recf, ",\"outage\":1");
        if (s->err) {
            json_str(recf, "error", err_name[s->errc]);
            json_str(recf, "detail", s->err);
        }
        fputs("}\n", recf);
    }
    if (s->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
    if (s->ssl) {
        /* without this, OpenSSL drops the session from the client cache
         * and marks it not resumable (ssl_clear_bad_session) */
        SSL_set_shutdown(s->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    free(s->head);
    s->head = NULL;
    free(s->req);
    s->req = NULL;
    obuf_free(&s->out);
    if (s->hs_slot) {
        n_hs--;
        s->hs_slot = 0;
    }
    if (s->counted_open) {
        n_open--;
        s->counted_open = 0;
    }
    n_live--;
    s->st = S_IDLE;
    double d;
    if (!strcmp(outcome, "refused_outage"))
        d = 0.1 + 0.2 * urand();
    else if (!strcmp(outcome, "backend_cut"))
        d = 0.05 + 0.5 * urand();
    else if (!strcmp(outcome, "mass"))
        d = 0.1 * urand();
    else if (s->cls == C_GOOD)
        d = 0.005 + 0.045 * urand();
    else if (s->cls == C_STALL)
        d = 2.0 + 2.0 * urand();      /* each one moves ~2 x 4.5 MB */
    else
        d = 0.2 + 0.8 * urand();
    slot_restart[s->slot] = tnow + d;
}

static void
queue_frame(struct sess *s, int fin, int op, const uint8_t *p, uint64_t len)
{
    uint8_t m[4];
    uint32_t r = (uint32_t)rng();
    memcpy(m, &r, 4);
    uint8_t *d = obuf_reserve(&s->out, 14 + len);
    size_t h = ws_put_header(d, fin, op, len, m);
    ws_mask_copy(d + h, p, (size_t)len, m, 0);
    s->out.len += h + len;
    s->wire_out += h + len;
    t_wire_out += h + len;
}

static void
send_ping(struct sess *s)
{
    if (s->ping_n >= MAXPING)
        return;
    uint32_t v = (uint32_t)(s->sid * 1000003u) ^ ++s->ping_seq;
    char pl[32];
    int n = snprintf(pl, sizeof pl, "P%08x", v);
    queue_frame(s, 1, 9, (uint8_t *)pl, (uint64_t)n);
    s->pings[(s->ping_h + s->ping_n) % MAXPING] = v;
    s->ping_n++;
    t_pings++;
}

static uint32_t
pick_size(void)
{
    double u = urand();
    uint32_t lo, hi;
    if (u < 0.01)
        return 1;
    if (u < 0.02)
        return MAXMSG;
    if (u < 0.60)
        lo = 1, hi = 256;
    else if (u < 0.85)
        lo = 256, hi = 4096;
    else if (u < 0.95)
        lo = 4096, hi = 65536;
    else
        lo = 65536, hi = MAXMSG;
    double l = log((double)lo), h = log((double)hi);
    uint32_t v = (uint32_t)exp(l + (h - l) * urand());
    return v < 1 ? 1 : v > MAXMSG ? MAXMSG : v;
}

/* Queue one verified message: maybe fragmented, maybe with a ping
 * between fragments. */
static void
send_msg(struct sess *s, uint32_t len, int op)
{
    uint64_t seq = s->next_seq++;
    struct gen g;
    gen_init(&g, s->sid, seq, len, op, 0);
    gen_fill(&g, scratch, len);
    uint32_t crc = 0;
    if (len >= HDR) {
        crc = crc_upd(0, scratch + HDR, len - HDR);
        char h[48];
        snprintf(h, sizeof h, "W%08x:%012llx:%08x:%08x|", (unsigned)s->sid,
                 (unsigned long long)seq, len, crc);
        memcpy(scratch, h, HDR);
    }
    int nfr = 1;
    double u = urand();
    if (u < 0.35)
        nfr = 2 + (int)(rng() % 7);
    if ((uint32_t)nfr > len)
        nfr = (int)len;
    if (nfr < 1)
        nfr = 1;
    /* fragment boundaries: random cut points (a frame may be empty) */
    uint32_t cuts[10];
    cuts[0] = 0;
    for (int i = 1; i < nfr; i++)
        cuts[i] = (uint32_t)(rng() % (len + 1));
    cuts[nfr] = len;
    for (int i = 1; i < nfr; i++)   /* sort the inner cuts */
        for (int j = i + 1; j < nfr; j++)
            if (cuts[j] < cuts[i]) {
                uint32_t t = cuts[i];
                cuts[i] = cuts[j];
                cuts[j] = t;
            }
    int ping_at = (nfr > 1 && urand() < 0.3) ? 1 + (int)(rng() % (nfr - 1)) : -1;
    for (int i = 0; i < nfr; i++) {
        if (i == ping_at)
            send_ping(s);
        queue_frame(s, i == nfr - 1, i == 0 ? op : 0, scratch + cuts[i],
                    cuts[i + 1] - cuts[i]);
    }
    if (nfr > 1)
        t_frames_frag++;
    struct expmsg *e = &s->q[(s->qh + s->qn) % MAXQ];
    e->seq = seq;
    e->len = len;
    e->crc = crc;
    e->op = (uint8_t)op;
    s->qn++;
    s->msgs_sent++;
    s->pay_sent += len;
    t_msgs_sent++;
    t_pay_sent += len;
    if (op == 1)
        t_text++;
    else
        t_bin++;
    if (len > t_max_msg)
        t_max_msg = len;
    int b = 0;
    for (uint32_t v = len; v >= 8 && b < 7; v >>= 3)
        b++;
    hist_size[b]++;
    if (s->qn == 1)
        s->t_last_rx = tnow;    /* the stuck clock starts now */
}

static void
send_close(struct sess *s, int code)
{
    uint8_t pl[2] = { (uint8_t)(code >> 8), (uint8_t)code };
    queue_frame(s, 1, 8, pl, 2);
    s->sent_close = 1;
}

/* ---- receive side ---- */
static void
rx_msg_start(struct sess *s, int op)
{
    s->rx_check = s->cls == C_GOOD || s->phase == P_WARM;
    s->rpos = 0;
    s->rcrc = 0;
    s->rbad = 0;
    if (!s->rx_check)
        return;
    if (s->qn == 0) {
        sess_err(s, E_ORDER, "a message that was never sent (duplicate)");
        s->rbad = 1;
        return;
    }
    s->cur = s->q[s->qh];
    if (s->cur.op != op) {
        sess_err(s, E_ORDER, "wrong opcode: another message");
        s->rbad = 1;
    }
    gen_init(&s->rg, s->sid, s->cur.seq, s->cur.len, s->cur.op, s->cur.crc);
}

static void
rx_payload(struct sess *s, const uint8_t *p, size_t n)
{
    if (!s->rx_check || s->rbad) {
        s->rpos += n;
        return;
    }
    if (s->rpos + n > s->cur.len) {
        sess_err(s, E_LENGTH, "echo longer than the message");
        s->rbad = 1;
        return;
    }
    size_t off = 0;
    while (off < n) {
        size_t k = n - off;
        if (k > sizeof cmpbuf)
            k = sizeof cmpbuf;
        gen_fill(&s->rg, cmpbuf, k);
        if (memcmp(cmpbuf, p + off, k) != 0) {
            size_t i = 0;
            while (cmpbuf[i] == p[off + i])
                i++;
            uint64_t at = s->rpos + off + i;
            if (at < s->rg.hn)
                sess_err(s, E_ORDER, "header/sequence of another message");
            else
                sess_err(s, E_CORRUPT, "payload bytes differ");
            s->rbad = 1;
            s->rpos += n;
            return;
        }
        /* keep the received header, checksum the rest */
        uint64_t at = s->rpos + off;
        if (s->cur.len >= HDR) {
            size_t j = 0;
            for (; j < k && at + j < HDR; j++)
                s->rhdr[at + j] = p[off + j];
            if (j < k)
                s->rcrc = crc_upd(s->rcrc, p + off + j, k - j);
        }
        off += k;
    }
    s->rpos += n;
}

static void
rx_msg_end(struct sess *s)
{
    s->in_msg = 0;
    if (!s->rx_check)
        return;
    if (!s->rbad) {
        if (s->rpos != s->cur.len) {
            sess_err(s, E_LENGTH, "echo shorter than the message");
        } else if (s->cur.len >= HDR) {
            unsigned hc = 0;
            char h[HDR + 1];
            memcpy(h, s->rhdr, HDR);
            h[HDR] = 0;
            if (sscanf(h + 32, "%8x", &hc) != 1 || hc != s->rcrc)
                sess_err(s, E_CORRUPT, "checksum mismatch");
        }
    }
    if (s->qn > 0) {
        s->qh = (s->qh + 1) % MAXQ;
        s->qn--;
    }
    s->msgs_echoed++;
    s->pay_echoed += s->cur.len;
    t_msgs_echoed++;
    t_pay_echoed += s->cur.len;
}

/* Frames from wsguard. Returns -1 on a protocol error, 1 when a close
 * frame arrived, 0 otherwise. */
static int
rx_frames(struct sess *s, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (s->remaining > 0) {
            size_t take = n < s->remaining ? n : (size_t)s->remaining;
            rx_payload(s, p, take);
            p += take;
            n -= take;
            s->remaining -= take;
            if (s->remaining == 0) {
                s->abuse_frames++;
                if (s->f_fin)
                    rx_msg_end(s);
            }
            continue;
        }
        const uint8_t *h = p;
        size_t avail = n, add = 0;
        if (s->part_len > 0) {
            add = sizeof s->part - s->part_len;
            if (add > n)
                add = n;
            memcpy(s->part + s->part_len, p, add);
            h = s->part;
            avail = s->part_len + add;
        }
        struct ws_hdr fh = { 0 };
        size_t hl = ws_parse_header(h, avail, &fh);
        if (hl && (fh.opcode & 8) && (fh.len > 125 || !fh.fin))
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
        if (fh.masked || fh.rsv)
            return -1;
        size_t used;
        if (fh.opcode & 8) {
            const uint8_t *pl = h + hl;
            used = hl + (size_t)fh.len - s->part_len;
            s->part_len = 0;
            if (fh.opcode == 9) {               /* wsguard's heartbeat */
                s->srv_pings++;
                t_srv_pings++;
                if (!s->sent_close && !s->partial_tx)
                    queue_frame(s, 1, 0xA, pl, fh.len);
            } else if (fh.opcode == 0xA) {      /* echo of our ping */
                char want[16];
                if (s->ping_n == 0) {
                    sess_err(s, E_ORDER, "unexpected pong");
                } else {
                    snprintf(want, sizeof want, "P%08x", s->pings[s->ping_h]);
                    if (fh.len != 9 || memcmp(pl, want, 9) != 0)
                        sess_err(s, E_CORRUPT, "pong payload differs");
                    s->ping_h = (s->ping_h + 1) % MAXPING;
                    s->ping_n--;
                    s->pongs++;
                    t_pongs++;
                }
            } else if (fh.opcode == 8) {
                s->close_code = fh.len >= 2 ? (pl[0] << 8 | pl[1]) : 1005;
                s->got_close = 1;
                return 1;
            } else {
                return -1;
            }
        } else {
            used = hl - s->part_len;
            s->part_len = 0;
            if (fh.opcode == 0) {
                if (!s->in_msg)
                    return -1;
            } else if (fh.opcode == 1 || fh.opcode == 2) {
                if (s->in_msg)
                    return -1;
                s->in_msg = 1;
                rx_msg_start(s, fh.opcode);
            } else {
                return -1;
            }
            s->remaining = fh.len;
            s->f_fin = fh.fin;
            if (fh.len == 0) {
                s->abuse_frames++;
                if (fh.fin)
                    rx_msg_end(s);
            }
        }
        p += used;
        n -= used;
    }
    return 0;
}

/* ---- HTTP ---- */
static void
build_request(struct sess *s, char *req, size_t cap, size_t *len)
{
    unsigned char kr[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = rng();
        memcpy(kr + i, &r, 8);
    }
    char key[32];
    EVP_EncodeBlock((unsigned char *)key, kr, 16);
    ws_accept_key(key, strlen(key), s->accept);
    char tok[1024] = "";
    const char *org = origin_ok;
    char orgb[128];
    if (s->sid % 4 == 1) {          /* a pattern-allowed subdomain */
        const char *h = strstr(origin_ok, "://");
        snprintf(orgb, sizeof orgb, "https://a%llu.%s",
                 (unsigned long long)(s->sid % 97), h ? h + 3 : origin_ok);
        org = orgb;
    }
    int where = (int)(s->sid % 3);  /* 0 query, 1 header, 2 cookie */
    if (s->cls == C_NOAUTH) {
        switch (s->variant) {
        case 0: org = "https://evil.example"; make_jwt(tok, s->sid, 86400, 0); break;
        case 1: make_jwt(tok, s->sid, 86400, 1); break;
        case 2: make_jwt(tok, s->sid, -3600, 0); break;
        default: tok[0] = 0; break;
        }
    } else {
        make_jwt(tok, s->sid, 86400, 0);
    }
    int n = snprintf(req, cap,
                     "GET /soak/%s/%llu%s%s HTTP/1.1\r\nHost: localhost\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                     "Origin: %s\r\n%s%s%s%s%s%s\r\n",
                     cls_name[s->cls], (unsigned long long)s->sid,
                     *tok && where == 0 ? "?access_token=" : "",
                     *tok && where == 0 ? tok : "",
                     key, org,
                     *tok && where == 1 ? "Authorization: Bearer " : "",
                     *tok && where == 1 ? tok : "",
                     *tok && where == 1 ? "\r\n" : "",
                     *tok && where == 2 ? "Cookie: access_token=" : "",
                     *tok && where == 2 ? tok : "",
                     *tok && where == 2 ? "\r\n" : "");
    *len = (size_t)n;
}

/* Write what is queued until the socket (or TLS) would block. Returns 0,
 * or -1 on an error. */
static int
flush_out(struct sess *s)
{
    while (obuf_pending(&s->out)) {
        const uint8_t *b = s->out.b + s->out.off;
        size_t len = obuf_pending(&s->out);
        int chunk = len > (1u << 20) ? (1 << 20) : (int)len;
        int r = SSL_write(s->ssl, b, chunk);
        if (r <= 0) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                break;
            ERR_clear_error();
            return -1;
        }
        s->out.off += (size_t)r;
    }
    if (!obuf_pending(&s->out)) {
        s->out.off = s->out.len = 0;
        if (s->out.cap > (64u << 10))
            obuf_free(&s->out);
    }
    return 0;
}

static void
on_open(struct sess *s)
{
    s->st = S_OPEN;
    s->t_open = tnow;
    s->t_last_rx = tnow;
    s->counted_open = 1;
    n_open++;
    if (n_open > max_open)
        max_open = n_open;
    if (s->hs_slot) {
        n_hs--;
        s->hs_slot = 0;
    }
    if (SSL_session_reused(s->ssl))
        c_resumed++;
    SSL_SESSION *se = SSL_get1_session(s->ssl);
    if (se && SSL_SESSION_is_resumable(se)) {
        if (slot_sess[s->slot])
            SSL_SESSION_free(slot_sess[s->slot]);
        slot_sess[s->slot] = se;
    } else if (se) {
        SSL_SESSION_free(se);
    }
    if (s->cls == C_GOOD && !slot_opened[s->slot]) {
        slot_opened[s->slot] = 1;
        n_good_opened++;
    }
    /* good: lifetime around the mean; a few quiet ones that think long
     * enough to get wsguard's heartbeat */
    if (s->cls == C_GOOD) {
        s->depth = 1 + (int)(rng() % 4);
        int quiet = urand() < 0.05;
        s->think = quiet ? 12.0 + 10.0 * urand() : s->depth / rate;
        s->t_life_end = tnow + lifetime * (quiet ? 1.5 : 0.25 + 1.5 * urand());
    } else {
        s->depth = 1;
        s->think = 0.05;
        s->warm_left = 1 + (int)(rng() % 3);
        s->phase = P_WARM;
    }
    s->t_next_send = tnow + s->think * urand();
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
    int status = 0;
    if (sscanf(s->head, "HTTP/1.1 %d", &status) != 1)
        return -1;
    s->status = status;
    if (status != 101)
        return 2;
    if (!strcasestr(s->head, s->accept)) {
        sess_err(s, E_PROTO, "bad Sec-WebSocket-Accept");
        return -1;
    }
    size_t hlen = (size_t)(end - s->head) + 4;
    size_t extra = s->head_len - hlen;
    char *h = s->head;
    s->head = NULL;
    s->head_len = 0;
    on_open(s);
    int r = 0;
    if (extra) {
        s->wire_in += extra;
        t_wire_in += extra;
        r = rx_frames(s, (uint8_t *)h + hlen, extra);
    }
    free(h);
    if (r == 0 && take < n) {
        s->wire_in += n - take;
        t_wire_in += n - take;
        r = rx_frames(s, p + take, n - take);
    }
    return r;
}

/* The server closed or cut the connection (EOF or error). */
static void
on_eof(struct sess *s)
{
    if (s->st == S_REQ) {
        /* wsguard always answers an upgrade (502 when the backend is
         * gone), so this is an error */
        sess_err(s, E_CONNECT, "connection closed before the response");
        sess_end(s, "error");
        return;
    }
    if (s->got_close) {
        /* the close handshake is over */
        if (s->cls == C_GOOD) {
            if (s->close_code == 1000 && s->sent_close)
                sess_end(s, "ok");
            else if (s->close_code == 1014 && in_outage())
                sess_end(s, "backend_cut");
            else {
                sess_err(s, E_CLOSE, "unexpected close code");
                sess_end(s, "error");
            }
        } else if (s->close_code == cls_code[s->cls] && s->phase == P_EXPECT) {
            sess_end(s, "expected");
        } else if (s->close_code == 1014 && in_outage()) {
            sess_end(s, "backend_cut");
        } else if (s->close_code == 1000 && s->sent_close && stopping) {
            sess_end(s, "ok");
        } else {
            sess_err(s, E_CLOSE, "unexpected close code");
            sess_end(s, "error");
        }
        return;
    }
    /* no close frame */
    if (s->cls == C_STALL && s->phase == P_STALL) {
        double dt = tnow - s->t_stall;
        if (in_outage()) {
            /* the backend went away while it stalled: wsguard cut it at
             * close_timeout after queueing 1014 (or at write_timeout,
             * whichever came first) */
            sess_end(s, "backend_cut");
            return;
        }
        if (dt < write_timeout - 0.25) {
            sess_err(s, E_ABUSE, "stalled reader cut before write_timeout");
            sess_end(s, "error");
        } else {
            sess_end(s, "expected");
        }
        return;
    }
    if (in_outage() && s->remaining > 0) {
        /* cut inside a frame the backend was sending (no close frame can
         * be placed there); the access log must say 1014 */
        sess_end(s, "backend_cut");
        return;
    }
    sess_err(s, E_CLOSE, "connection cut without a close frame");
    sess_end(s, "error");
}

/* Read and write as far as possible. */
static void
do_io(struct sess *s, uint32_t ev)
{
    int stalled = s->st == S_OPEN && s->phase == P_STALL;
    int wr_err = flush_out(s) < 0;
    if (stalled && (wr_err || (ev & (EPOLLERR | EPOLLHUP)))) {
        /* the stalled reader was cut (a reset) */
        on_eof(s);
        return;
    }
    /* after a write error, read what came before it */
    while (!stalled) {
        int r = SSL_read(s->ssl, rbuf, sizeof rbuf);
        if (r <= 0) {
            int e = SSL_get_error(s->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                break;
            ERR_clear_error();
            on_eof(s);
            return;
        }
        size_t n = (size_t)r;
        s->t_last_rx = tnow;
        int rr;
        if (s->st == S_REQ) {
            rr = http_input(s, rbuf, n);
            if (rr == 2) {             /* refused */
                int st = s->status;
                if (s->cls == C_NOAUTH) {
                    int want = s->variant == 0 ? 403 : 401;
                    if (st != want)
                        sess_err(s, E_REFUSED, "wrong refusal status");
                    sess_end(s, "expected");
                } else if (st == 502 && in_outage()) {
                    sess_end(s, "refused_outage");
                } else {
                    sess_err(s, E_REFUSED, "upgrade refused");
                    sess_end(s, "error");
                }
                return;
            }
            if (rr == 0 && s->st == S_OPEN && s->cls == C_NOAUTH) {
                sess_err(s, E_REFUSED, "bad credentials got a 101");
                sess_end(s, "error");
                return;
            }
        } else {
            s->wire_in += n;
            t_wire_in += n;
            rr = rx_frames(s, rbuf, n);
        }
        if (rr < 0) {
            sess_err(s, E_PROTO, "invalid frame from wsguard");
            sess_end(s, "error");
            return;
        }
        if (rr == 1) {
            /* close received: reply unless we are inside a frame of our
             * own (the oversize case) or already sent ours */
            if (!s->sent_close && !s->partial_tx) {
                uint8_t pl[2] = { (uint8_t)(s->close_code >> 8),
                                  (uint8_t)s->close_code };
                queue_frame(s, 1, 8, pl, s->close_code == 1005 ? 0 : 2);
                s->sent_close = 1;
            }
            s->st = S_CLOSING;
            s->t_stage = tnow;
        }
    }
    if (flush_out(s) < 0)
        wr_err = 1;
    if (wr_err && !stalled) {
        /* nothing more to read and the connection is broken */
        on_eof(s);
        return;
    }
    uint32_t want = stalled ? 0 : EPOLLIN;
    if (obuf_pending(&s->out))
        want |= EPOLLOUT;
    set_events(s, want);
}

/* After the timers queued something: write it, keep the events right. */
static void
kick(struct sess *s)
{
    if (s->st == S_IDLE || s->fd < 0 || s->ssl == NULL)
        return;
    int stalled = s->st == S_OPEN && s->phase == P_STALL;
    if (flush_out(s) < 0) {
        do_io(s, EPOLLERR);
        return;
    }
    uint32_t want = stalled ? 0 : EPOLLIN;
    if (obuf_pending(&s->out))
        want |= EPOLLOUT;
    set_events(s, want);
}

static void
start_sess(uint32_t slot)
{
    struct sess *s = &ss[slot];
    uint8_t cls = s->cls;
    memset(s, 0, sizeof *s);
    s->cls = cls;
    s->slot = slot;
    s->fd = -1;
    s->sid = next_sid++;
    s->variant = (uint8_t)(rng() % (cls == C_UTF8 ? 5 : 4));
    s->t_start = s->t_stage = tnow;
    s->st = S_CONNECT;
    n_live++;
    if (cls != C_SLOW) {
        s->hs_slot = 1;
        n_hs++;
    }
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        sess_err(s, E_CONNECT, "socket");
        sess_end(s, "error");
        return;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (cls == C_STALL) {
        int small = 8192;
        setsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        setsockopt(s->fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    }
    if (use_src) {
        char ipb[32];
        struct sockaddr_in sa = { .sin_family = AF_INET };
        inet_pton(AF_INET, src_ip(s, ipb), &sa.sin_addr);
        setsockopt(s->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(s->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            sess_err(s, E_CONNECT, "bind");
            sess_end(s, "error");
            return;
        }
    }
    int r = connect(s->fd, (struct sockaddr *)&target, sizeof target);
    if (r < 0 && errno != EINPROGRESS) {
        sess_err(s, E_CONNECT, "connect");
        sess_end(s, "error");
        return;
    }
    s->events = EPOLLOUT | EPOLLIN;
    struct epoll_event e = { .events = s->events, .data.ptr = s };
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &e);
}

static void
slow_event(struct sess *s, uint32_t ev)
{
    /* Anything but the end of the connection is an error: no response
     * may come before the head is complete. */
    if (s->ssl) {
        int r = SSL_read(s->ssl, rbuf, sizeof rbuf);
        if (r > 0) {
            sess_err(s, E_ABUSE, "slowloris got a response");
            sess_end(s, "error");
            return;
        }
        int e = SSL_get_error(s->ssl, r);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (!(ev & (EPOLLHUP | EPOLLERR)))
                return;
        }
    } else {
        ssize_t n = read(s->fd, rbuf, sizeof rbuf);
        if (n > 0) {
            sess_err(s, E_ABUSE, "slowloris got a response");
            sess_end(s, "error");
            return;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR) &&
            !(ev & (EPOLLHUP | EPOLLERR)))
            return;
    }
    double dt = tnow - s->t_conn;
    if (dt < hs_timeout - 0.25) {
        sess_err(s, E_ABUSE, "slowloris cut before handshake_timeout");
        sess_end(s, "error");
    } else {
        sess_end(s, "expected");
    }
}

static void
on_event(struct sess *s, uint32_t ev)
{
    if (s->st == S_CONNECT) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            sess_err(s, E_CONNECT, "connect failed");
            sess_end(s, "error");
            return;
        }
        if (!(ev & (EPOLLOUT | EPOLLIN)))
            return;
        s->t_conn = tnow;
        /* When the SYN-ACK came (the kernel's clock, not our loop's: on
         * a loaded machine we may see the event late). The server's
         * handshake_timeout starts at its accept, which is later still. */
        struct tcp_info ti;
        socklen_t tl = sizeof ti;
        if (getsockopt(s->fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 &&
            ti.tcpi_last_ack_recv < 60000)
            s->t_conn = tnow - ti.tcpi_last_ack_recv / 1000.0;
        if (s->cls == C_SLOW && s->variant >= 2) {
            /* TCP only: never a byte of TLS */
            s->st = S_SLOW;
            set_events(s, EPOLLIN);
            return;
        }
        s->ssl = SSL_new(sctx);
        SSL_set_fd(s->ssl, s->fd);
        SSL_set_tlsext_host_name(s->ssl, "localhost");
        SSL_set1_host(s->ssl, "localhost");
        if ((s->sid & 1) && slot_sess[s->slot])
            SSL_set_session(s->ssl, slot_sess[s->slot]);
        s->st = S_TLS;
        s->t_stage = tnow;
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
            if (s->cls == C_SLOW && tnow - s->t_conn >= hs_timeout - 0.25) {
                sess_end(s, "expected");
                return;
            }
            sess_err(s, E_CONNECT, "TLS handshake failed");
            sess_end(s, "error");
            return;
        }
        char req[4096];
        size_t len;
        build_request(s, req, sizeof req, &len);
        if (s->cls == C_SLOW) {
            s->st = S_SLOW;
            s->req = xmalloc(len);
            memcpy(s->req, req, len);
            s->req_len = len;
            s->dribble_pos = 0;
            s->t_dribble = tnow;
            set_events(s, EPOLLIN);
            return;
        }
        obuf_put(&s->out, req, len);
        s->st = S_REQ;
        s->t_stage = tnow;
    }
    if (s->st == S_SLOW) {
        slow_event(s, ev);
        return;
    }
    do_io(s, ev);
}

/* ---- the abusive acts ---- */
static void
abuse(struct sess *s)
{
    s->t_abuse = tnow;
    s->abuse_frames = 0;
    switch (s->cls) {
    case C_OVERSIZE:
        if (s->variant < 2) {
            /* one frame announcing more than max_payload; only the start
             * of its payload is sent */
            uint64_t big = max_payload + 1 + (s->variant ? (1u << 20) : 0);
            uint8_t m[4] = { 1, 2, 3, 4 };
            uint8_t *d = obuf_reserve(&s->out, 14 + 1024);
            size_t h = ws_put_header(d, 1, 2, big, m);
            memset(d + h, 'x', 1024);
            ws_mask_copy(d + h, d + h, 1024, m, 0);
            s->out.len += h + 1024;
            s->wire_out += h + 1024;
            t_wire_out += h + 1024;
            s->partial_tx = 1;
            s->phase = P_EXPECT;
        } else {
            /* a first fragment under the limit; after its echo, a
             * continuation frame that crosses it */
            memset(scratch, 'y', 200 * 1024);
            queue_frame(s, 0, 2, scratch, 200 * 1024);
            s->phase = P_STEP;
        }
        break;
    case C_FLOOD: {
        /* one burst (one TLS record) of tiny messages, more than the
         * bucket holds */
        int k = mps * 2 + 20;
        for (int i = 0; i < k; i++) {
            uint8_t b = (uint8_t)i;
            queue_frame(s, 1, 2, &b, 1);
        }
        s->phase = P_EXPECT;
        break;
    }
    case C_UTF8: {
        static const uint8_t bad0[] = "hello \xff world";
        static const uint8_t bad1[] = "overlong \xc0\xaf slash";
        static const uint8_t bad2[] = "surrogate \xed\xa0\x80 half";
        static const uint8_t bad3[] = "ends inside \xe2\x82";
        switch (s->variant) {
        case 0: queue_frame(s, 1, 1, bad0, sizeof bad0 - 1); break;
        case 1: queue_frame(s, 1, 1, bad1, sizeof bad1 - 1); break;
        case 2: queue_frame(s, 1, 1, bad2, sizeof bad2 - 1); break;
        case 3: queue_frame(s, 1, 1, bad3, sizeof bad3 - 1); break;
        default: {
            /* valid first fragment; after its echo, a final fragment
             * that ends inside a code point */
            static const uint8_t ok[] = "fine so far \xc3\xa9";
            queue_frame(s, 0, 1, ok, sizeof ok - 1);
            s->phase = P_STEP;
            return;
        }
        }
        s->phase = P_EXPECT;
        break;
    }
    case C_STALL:
        s->phase = P_STALL;
        s->t_stall = tnow;
        break;
    default:
        break;
    }
}

static void
abuse_step(struct sess *s)
{
    if (s->abuse_frames < 1)
        return;                 /* the first fragment's echo is not back */
    s->t_abuse = tnow;
    if (s->cls == C_OVERSIZE) {
        uint64_t more = max_payload - 200 * 1024 + 4096;
        uint8_t m[4] = { 5, 6, 7, 8 };
        uint8_t *d = obuf_reserve(&s->out, 14 + 512);
        size_t h = ws_put_header(d, 1, 0, more, m);
        memset(d + h, 'z', 512);
        ws_mask_copy(d + h, d + h, 512, m, 0);
        s->out.len += h + 512;
        s->wire_out += h + 512;
        t_wire_out += h + 512;
        s->partial_tx = 1;
    } else {
        static const uint8_t bad[] = " and then \xe2\x82";
        queue_frame(s, 1, 0, bad, sizeof bad - 1);
    }
    s->phase = P_EXPECT;
}

/* Stalled reader: push stall_push bytes of 64 KiB messages, then a
 * one-byte message every STALL_TRICKLE s. The push is larger than the
 * most the kernel can buffer for wsguard toward us (its send buffer,
 * autotuned up to tcp_wmem[2], plus our small receive buffer), so the
 * rest of the echoes stays in wsguard's relay buffer: output it cannot
 * write, which is what write_timeout is about. Once wsguard has cut the
 * connection, the next one-byte message meets a closed socket and comes
 * back as a reset: the cut is seen without reading. */
#define STALL_TRICKLE 0.2
static uint64_t stall_push = (4u << 20) + (512u << 10);
static void
stall_pump(struct sess *s)
{
    if (obuf_pending(&s->out))
        return;
    if (s->stall_bytes < stall_push) {
        memset(scratch, 's', 65536);
        queue_frame(s, 1, 2, scratch, 65536);
        s->stall_bytes += 65536;
        t_stall_bytes += 65536;
    } else if (tnow - s->t_dribble >= STALL_TRICKLE) {
        uint8_t b = 't';
        queue_frame(s, 1, 2, &b, 1);
        s->t_dribble = tnow;
    }
}

static void
mass_disconnect(double frac)
{
    int k = 0, seen = 0;
    for (int i = 0; i < nslots; i++) {
        struct sess *s = &ss[i];
        if (s->st != S_OPEN || s->cls != C_GOOD || s->sent_close)
            continue;
        seen++;
        /* every 1/frac-th open good session */
        if ((double)k >= frac * (double)seen)
            continue;
        k++;
        if (k & 1) {
            struct linger lg = { 1, 0 };   /* reset */
            setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        sess_end(s, "mass");
    }
    quiet_until = tnow + 5;     /* not counted in min_open */
    printf("ack mass closed=%d\n", k);
    fflush(stdout);
}

static void
print_stats(void)
{
    uint64_t e = 0;
    for (int i = 0; i < E_N; i++)
        e += errs[i];
    uint64_t ended = 0;
    for (int i = 0; i < C_N; i++)
        ended += c_sessions[i];
    printf("stats t=%.1f open=%d live=%d hs=%d ended=%llu msgs=%llu "
           "echoed=%llu bytes=%llu errors=%llu outage=%d\n",
           tnow - t0, n_open, n_live, n_hs, (unsigned long long)ended,
           (unsigned long long)t_msgs_sent,
           (unsigned long long)t_msgs_echoed,
           (unsigned long long)(t_pay_sent + t_pay_echoed),
           (unsigned long long)e, in_outage());
    fflush(stdout);
}

static void
on_command(char *line)
{
    if (!strcmp(line, "outage-begin")) {
        outage = 1;
        printf("ack outage-begin\n");
    } else if (!strcmp(line, "outage-end")) {
        outage = 0;
        outage_until = tnow + outage_grace;
        printf("ack outage-end\n");
    } else if (!strncmp(line, "mass", 4)) {
        double f = atof(line + 4);
        mass_disconnect(f > 0 && f <= 1 ? f : 0.5);
    } else if (!strcmp(line, "stop")) {
        stopping = 1;
        printf("ack stop\n");
    } else if (!strcmp(line, "stats")) {
        print_stats();
    } else if (*line) {
        printf("ack unknown %s\n", line);
    }
    fflush(stdout);
}

static char cmdbuf[4096];
static size_t cmdlen;

static void
read_commands(void)
{
    ssize_t n = read(0, cmdbuf + cmdlen, sizeof cmdbuf - 1 - cmdlen);
    if (n <= 0) {
        /* the driver went away: finish */
        epoll_ctl(ep, EPOLL_CTL_DEL, 0, NULL);
        stopping = 1;
        return;
    }
    cmdlen += (size_t)n;
    cmdbuf[cmdlen] = 0;
    char *p = cmdbuf, *nl;
    while ((nl = strchr(p, '\n')) != NULL) {
        *nl = 0;
        if (nl > p && nl[-1] == '\r')
            nl[-1] = 0;
        on_command(p);
        p = nl + 1;
    }
    cmdlen = strlen(p);
    memmove(cmdbuf, p, cmdlen);
}

/* Timers of every slot: restarts, sends, abusive acts, upper bounds. */
static void
tick(void)
{
    for (int i = 0; i < nslots; i++) {
        struct sess *s = &ss[i];
        switch (s->st) {
        case S_IDLE:
            if (!stopping && tnow >= slot_restart[i] &&
                (s->cls == C_SLOW || n_hs < parallel))
                start_sess((uint32_t)i);
            break;
        case S_CONNECT:
        case S_TLS:
        case S_REQ:
            if (tnow - s->t_stage > STAGE_LIMIT) {
                sess_err(s, E_TIMEOUT, "upgrade took too long");
                sess_end(s, "error");
            }
            break;
        case S_SLOW:
            if (s->req && tnow - s->t_dribble >= SLOW_GAP &&
                s->dribble_pos + 4 < s->req_len) {
                /* one more byte of the head (never its end) */
                int r = SSL_write(s->ssl, s->req + s->dribble_pos, 1);
                if (r == 1)
                    s->dribble_pos++;
                else
                    ERR_clear_error();
                s->t_dribble = tnow;
            }
            if (tnow - s->t_conn > hs_timeout + STAGE_LIMIT) {
                sess_err(s, E_ABUSE, "slowloris never cut");
                sess_end(s, "error");
            }
            break;
        case S_OPEN:
            if (s->cls == C_GOOD || s->phase == P_WARM) {
                int closing = stopping || (s->cls == C_GOOD &&
                                           tnow >= s->t_life_end);
                if (!closing && s->phase == P_WARM && s->cls != C_GOOD &&
                    s->warm_left == 0) {
                    if (s->qn == 0 && s->ping_n == 0)
                        abuse(s);
                } else if (!closing && s->qn < s->depth &&
                           tnow >= s->t_next_send) {
                    uint32_t len = pick_size();
                    send_msg(s, len, urand() < 0.55 ? 1 : 2);
                    if (s->warm_left > 0)
                        s->warm_left--;
                    if (urand() < 0.05)
                        send_ping(s);
                    double gap = s->think * -log(1.0 - urand() * 0.999);
                    s->t_next_send = tnow + gap;
                } else if (closing && s->qn == 0 && s->ping_n == 0 &&
                           !s->sent_close) {
                    send_close(s, 1000);
                    s->st = S_CLOSING;
                    s->t_stage = tnow;
                }
                if (s->qn > 0 && tnow - s->t_last_rx > STUCK_LIMIT) {
                    sess_err(s, E_TIMEOUT, "no echo for a long time");
                    sess_end(s, "error");
                    break;
                }
            } else if (s->phase == P_STEP) {
                abuse_step(s);
                if (tnow - s->t_abuse > STAGE_LIMIT) {
                    sess_err(s, E_ABUSE, "no echo of the first fragment");
                    sess_end(s, "error");
                    break;
                }
            } else if (s->phase == P_EXPECT) {
                if (tnow - s->t_abuse > STAGE_LIMIT) {
                    sess_err(s, E_ABUSE, "no close after the abuse");
                    sess_end(s, "error");
                    break;
                }
            } else if (s->phase == P_STALL) {
                stall_pump(s);
                /* wsguard's write_timeout only starts once the kernel
                 * buffers on the way back are full, which the echo fills
                 * slowly on a loaded machine (7-32 s seen with CPU hogs):
                 * a bound, not a measurement, so it is generous. */
                if (tnow - s->t_stall > write_timeout + 2 * STAGE_LIMIT) {
                    sess_err(s, E_ABUSE, "stalled reader never cut");
                    sess_end(s, "error");
                    break;
                }
            }
            if (s->st == S_OPEN || s->st == S_CLOSING)
                kick(s);
            break;
        case S_CLOSING:
            if (tnow - s->t_stage > STAGE_LIMIT) {
                sess_err(s, E_TIMEOUT, "close handshake took too long");
                sess_end(s, "error");
            }
            break;
        }
    }
}

static double
self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static long
self_maxrss(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static void
on_sig(int sig)
{
    (void)sig;
    got_sig = 1;
}

static void
usage(void)
{
    fprintf(stderr,
"usage: wssoak [options]   (see the comment at the top of wssoak.c)\n"
"  -t, --target H:P          wsguard (127.0.0.1:8443)\n"
"  -c, --sessions N          slots, i.e. concurrent sessions (2000)\n"
"      --ca FILE             CA for the server certificate (verify on)\n"
"      --jwt-secret-file F   HS256 secret\n"
"      --origin O            allowed Origin (https://soak.example); the\n"
"                            tool also sends https://aN.<host of O>\n"
"      --max-payload B       server's max_payload (288k)\n"
"      --mps N               server's messages_per_second (40)\n"
"      --handshake-timeout S server's handshake_timeout (5)\n"
"      --write-timeout S     server's write_timeout (5)\n"
"      --rate R              messages/s per good session (1)\n"
"      --lifetime S          mean good-session lifetime (20)\n"
"      --parallel K          upgrades in progress at most (64)\n"
"      --mix g,o,f,u,s,t,n   permille of slots per class\n"
"                            (good,oversize,flood,utf8,slow,stall,noauth;\n"
"                            940,10,10,10,10,5,15)\n"
"      --outage-grace S      (10)\n"
"      --duration S          stop by itself after S seconds (0: on 'stop')\n"
"      --records FILE        one JSON line per session\n"
"      --no-src              do not bind per-class source addresses\n"
"      --seed N\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "target", 1, 0, 't' },      { "sessions", 1, 0, 'c' },
        { "ca", 1, 0, 1 },            { "jwt-secret-file", 1, 0, 2 },
        { "origin", 1, 0, 3 },        { "max-payload", 1, 0, 4 },
        { "mps", 1, 0, 5 },           { "handshake-timeout", 1, 0, 6 },
        { "write-timeout", 1, 0, 7 }, { "rate", 1, 0, 8 },
        { "lifetime", 1, 0, 9 },      { "parallel", 1, 0, 10 },
        { "mix", 1, 0, 11 },          { "outage-grace", 1, 0, 12 },
        { "duration", 1, 0, 13 },     { "records", 1, 0, 14 },
        { "no-src", 0, 0, 15 },       { "seed", 1, 0, 16 },
        { "help", 0, 0, 'h' },        { 0, 0, 0, 0 }
    };
    int o;
    while ((o = getopt_long(argc, argv, "t:c:h", lo, NULL)) != -1) {
        switch (o) {
        case 't': target_s = optarg; break;
        case 'c': nslots = atoi(optarg); break;
        case 1: ca_file = optarg; break;
        case 2: secret_file = optarg; break;
        case 3: origin_ok = optarg; break;
        case 4: max_payload = parse_size(optarg); break;
        case 5: mps = atoi(optarg); break;
        case 6: hs_timeout = atof(optarg); break;
        case 7: write_timeout = atof(optarg); break;
        case 8: rate = atof(optarg); break;
        case 9: lifetime = atof(optarg); break;
        case 10: parallel = atoi(optarg); break;
        case 11:
            if (sscanf(optarg, "%d,%d,%d,%d,%d,%d,%d", &mix[0], &mix[1],
                       &mix[2], &mix[3], &mix[4], &mix[5], &mix[6]) != 7)
                usage();
            break;
        case 12: outage_grace = atof(optarg); break;
        case 13: duration = atof(optarg); break;
        case 14: records_path = optarg; break;
        case 15: use_src = 0; break;
        case 16: seed = strtoull(optarg, NULL, 10); break;
        default: usage();
        }
    }
    if (parse_hostport(target_s, &target) < 0 || nslots < 1 || !secret_file ||
        rate <= 0 || lifetime <= 0 || max_payload < 200 * 1024 + 1 ||
        max_payload >= 1u << 30 || mps < 1)
        usage();
    FILE *sf = fopen(secret_file, "r");
    if (!sf || !fgets(secret, sizeof secret, sf)) {
        fprintf(stderr, "wssoak: cannot read %s\n", secret_file);
        return 2;
    }
    fclose(sf);
    secret[strcspn(secret, "\r\n")] = 0;
    if (max_payload <= MAXMSG) {
        fprintf(stderr, "wssoak: --max-payload must exceed 256 KiB, the "
                        "largest good message\n");
        return 2;
    }
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_sig };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    crc_init();
    FILE *wf = fopen("/proc/sys/net/ipv4/tcp_wmem", "r");
    unsigned long wmin, wdef, wmax;
    if (wf && fscanf(wf, "%lu %lu %lu", &wmin, &wdef, &wmax) == 3)
        stall_push = ((wmax + 65535) / 65536) * 65536 + (512u << 10);
    if (wf)
        fclose(wf);
    if (seed == 0)
        RAND_bytes((unsigned char *)&seed, sizeof seed);
    rng_state = seed | 1;
    if (records_path && !(recf = fopen(records_path, "w"))) {
        fprintf(stderr, "wssoak: cannot write %s\n", records_path);
        return 2;
    }

    sctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(sctx, TLS1_2_VERSION);
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(sctx, ca_file, NULL) != 1) {
            fprintf(stderr, "wssoak: cannot load %s\n", ca_file);
            return 2;
        }
        SSL_CTX_set_verify(sctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(sctx, SSL_VERIFY_NONE, NULL);
    }
    SSL_CTX_set_mode(sctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                               SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                               SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(sctx, SSL_SESS_CACHE_CLIENT);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(sctx, alpn, sizeof alpn - 1);

    ep = epoll_create1(EPOLL_CLOEXEC);
    ss = calloc((size_t)nslots, sizeof *ss);
    slot_sess = calloc((size_t)nslots, sizeof *slot_sess);
    slot_restart = calloc((size_t)nslots, sizeof *slot_restart);
    slot_opened = calloc((size_t)nslots, 1);
    /* classes: the abusive minority spread over the slots */
    int total = 0;
    for (int c = 0; c < C_N; c++)
        total += mix[c];
    double acc[C_N];
    for (int c = 0; c < C_N; c++)
        acc[c] = 0;
    for (int i = 0; i < nslots; i++) {
        int pick = 0;
        double best = -1e9;
        for (int c = 0; c < C_N; c++) {
            acc[c] += (double)mix[c] / total;
            if (acc[c] > best) {
                best = acc[c];
                pick = c;
            }
        }
        acc[pick] -= 1.0;
        ss[i].cls = (uint8_t)pick;
        ss[i].fd = -1;
        ss[i].st = S_IDLE;
        if (pick == C_GOOD)
            n_good_slots++;
    }
    struct epoll_event ce = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ce);

    t0 = tnow = now_s();
    /* stagger the first sessions of the abusive slots */
    for (int i = 0; i < nslots; i++)
        slot_restart[i] = ss[i].cls == C_GOOD ? t0 : t0 + 2.0 * urand();
    fprintf(stderr, "wssoak: %d slots (%d good), target %s\n", nslots,
            n_good_slots, target_s);

    double last_tick = 0, last_stats = t0;
    struct epoll_event evs[1024];
    for (;;) {
        int k = epoll_wait(ep, evs, 1024, 10);
        tnow = now_s();
        for (int i = 0; i < k; i++) {
            struct sess *s = evs[i].data.ptr;
            if (s == NULL) {
                read_commands();
                continue;
            }
            if (s->st != S_IDLE && s->fd >= 0)
                on_event(s, evs[i].events);
        }
        if (tnow - last_tick >= 0.01) {
            last_tick = tnow;
            tick();
        }
        if (!ready_said && n_good_opened >= n_good_slots) {
            ready_said = 1;
            printf("ready open=%d t=%.1f\n", n_open, tnow - t0);
            fflush(stdout);
        }
        if (ready_said && !stopping && !in_outage() && tnow >= quiet_until &&
            (min_open_after_ready < 0 || n_open < min_open_after_ready))
            min_open_after_ready = n_open;
        if (tnow - last_stats >= 1.0) {
            last_stats = tnow;
            print_stats();
        }
        if (duration > 0 && tnow - t0 >= duration)
            stopping = 1;
        if (got_sig)
            break;
        if (stopping && n_live == 0)
            break;
    }
    for (int i = 0; i < nslots; i++)
        if (ss[i].st != S_IDLE) {
            sess_err(&ss[i], E_TIMEOUT, "still open at exit (signal)");
            sess_end(&ss[i], "error");
        }
    uint64_t e = 0;
    for (int i = 0; i < E_N; i++)
        e += errs[i];
    uint64_t sessions = 0;
    for (int i = 0; i < C_N; i++)
        sessions += c_sessions[i];
    printf("summary wall_s=%.1f slots=%d sessions=%llu max_open=%d "
           "min_open=%d msgs_sent=%llu msgs_echoed=%llu text=%llu "
           "binary=%llu fragmented=%llu pings=%llu pongs=%llu "
           "srv_pings=%llu payload_sent=%llu payload_echoed=%llu "
           "wire_out=%llu wire_in=%llu max_msg=%llu lost_inflight=%llu "
           "stall_bytes=%llu resumed=%llu refused_outage=%llu mass=%llu "
           "cpu_s=%.2f maxrss_kb=%ld errors=%llu",
           tnow - t0, nslots, (unsigned long long)sessions, max_open,
           min_open_after_ready, (unsigned long long)t_msgs_sent,
           (unsigned long long)t_msgs_echoed, (unsigned long long)t_text,
           (unsigned long long)t_bin, (unsigned long long)t_frames_frag,
           (unsigned long long)t_pings, (unsigned long long)t_pongs,
           (unsigned long long)t_srv_pings, (unsigned long long)t_pay_sent,
           (unsigned long long)t_pay_echoed, (unsigned long long)t_wire_out,
           (unsigned long long)t_wire_in, (unsigned long long)t_max_msg,
           (unsigned long long)t_lost_inflight,
           (unsigned long long)t_stall_bytes, (unsigned long long)c_resumed,
           (unsigned long long)c_refused_outage, (unsigned long long)c_mass,
           self_cpu(), self_maxrss(), (unsigned long long)e);
    for (int i = 0; i < E_N; i++)
        printf(" err_%s=%llu", err_name[i], (unsigned long long)errs[i]);
    for (int c = 0; c < C_N; c++)
        printf(" %s=%llu/%llu/%llu", cls_name[c],
               (unsigned long long)c_sessions[c], (unsigned long long)c_ok[c],
               (unsigned long long)c_cut[c]);
    printf(" sizes=");
    for (int b = 0; b < 8; b++)
        printf("%s%llu", b ? "," : "", (unsigned long long)hist_size[b]);
    printf("\n");
    fflush(stdout);
    if (recf)
        fclose(recf);
    return e ? 1 : 0;
}
