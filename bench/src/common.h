/*
 * common.h - small helpers shared by wsbench (load generator) and wsecho
 * (echo backend): growable output buffer, RFC 6455 accept key, masking,
 * address parsing, time. Header-only, C11.
 */
#ifndef WSBENCH_COMMON_H
#define WSBENCH_COMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* t without the blanks around it (cut in place): an extension parameter
 * taken out of a header value with strtok_r. */
static inline char *
trim_blanks(char *t)
{
    while (*t == ' ' || *t == '\t')
        t++;
    size_t tl = strlen(t);
    while (tl && (t[tl - 1] == ' ' || t[tl - 1] == '\t'))
        t[--tl] = 0;
    return t;
}

static inline double
now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void *
xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static inline void *
xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* Output buffer: [off, len) pending. */
struct obuf {
    uint8_t *b;
    size_t off, len, cap;
};

static inline uint8_t *
obuf_reserve(struct obuf *o, size_t n)
{
    if (o->off == o->len)
        o->off = o->len = 0;
    if (o->len + n > o->cap) {
        if (o->off > 0 && o->len - o->off + n <= o->cap) {
            memmove(o->b, o->b + o->off, o->len - o->off);
        } else {
            size_t nc = o->cap ? o->cap : 4096;
            while (nc < o->len - o->off + n)
                nc *= 2;
            uint8_t *nb = xmalloc(nc);
            if (o->len > o->off)
                memcpy(nb, o->b + o->off, o->len - o->off);
            free(o->b);
            o->b = nb;
            o->cap = nc;
        }
        o->len -= o->off;
        o->off = 0;
    }
    return o->b + o->len;
}

static inline void
obuf_put(struct obuf *o, const void *p, size_t n)
{
    memcpy(obuf_reserve(o, n), p, n);
    o->len += n;
}

static inline size_t
obuf_pending(const struct obuf *o)
{
    return o->len - o->off;
}

static inline void
obuf_free(struct obuf *o)
{
    free(o->b);
    o->b = NULL;
    o->off = o->len = o->cap = 0;
}

/* Sec-WebSocket-Accept for key (base64, NUL-terminated). out >= 29. */
static inline void
ws_accept_key(const char *key, size_t klen, char out[32])
{
    unsigned char md[SHA_DIGEST_LENGTH];
    char tmp[128];
    if (klen > 64)
        klen = 64;
    memcpy(tmp, key, klen);
    memcpy(tmp + klen, WS_GUID, sizeof WS_GUID - 1);
    SHA1((const unsigned char *)tmp, klen + sizeof WS_GUID - 1, md);
    EVP_EncodeBlock((unsigned char *)out, md, SHA_DIGEST_LENGTH);
}

/* XOR n bytes of src with the 4-byte mask starting at mask phase ph into
 * dst (dst may equal src). Returns the new phase. */
static inline unsigned
ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t m[4],
             unsigned ph)
{
    size_t i = 0;
    if (n >= 16) {
        uint8_t rot[8];
        for (int k = 0; k < 8; k++)
            rot[k] = m[(ph + k) & 3];
        uint64_t m64;
        memcpy(&m64, rot, 8);
        for (; i + 8 <= n; i += 8) {
            uint64_t v;
            memcpy(&v, src + i, 8);
            v ^= m64;
            memcpy(dst + i, &v, 8);
        }
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ m[(ph + i) & 3];
    return (unsigned)((ph + n) & 3);
}

/* Frame header: returns header length written (2..14). */
static inline size_t
ws_put_header(uint8_t *h, int fin, int opcode, uint64_t len,
              const uint8_t *mask)
{
    size_t n = 0;
    h[n++] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
    uint8_t mb = mask ? 0x80 : 0;
    if (len < 126) {
        h[n++] = (uint8_t)(mb | len);
    } else if (len <= 0xffff) {
        h[n++] = mb | 126;
        h[n++] = (uint8_t)(len >> 8);
        h[n++] = (uint8_t)len;
    } else {
        h[n++] = mb | 127;
        for (int k = 7; k >= 0; k--)
            h[n++] = (uint8_t)(len >> (8 * k));
    }
    if (mask) {
        memcpy(h + n, mask, 4);
        n += 4;
    }
    return n;
}

/* Parsed frame header; returns bytes used, 0 if incomplete. */
struct ws_hdr {
    int fin, rsv, opcode, masked;
    uint64_t len;
    uint8_t mask[4];
};

static inline size_t
ws_parse_header(const uint8_t *p, size_t n, struct ws_hdr *h)
{
    if (n < 2)
        return 0;
    h->fin = p[0] >> 7;
    h->rsv = (p[0] >> 4) & 7;
    h->opcode = p[0] & 0x0f;
    h->masked = p[1] >> 7;
    uint64_t l = p[1] & 0x7f;
    size_t need = 2;
    if (l == 126)
        need += 2;
    else if (l == 127)
        need += 8;
    if (h->masked)
        need += 4;
    if (n < need)
        return 0;
    size_t q = 2;
    if (l == 126) {
        l = ((uint64_t)p[2] << 8) | p[3];
        q = 4;
    } else if (l == 127) {
        l = 0;
        for (int k = 0; k < 8; k++)
            l = (l << 8) | p[2 + k];
        q = 10;
    }
    h->len = l;
    if (h->masked)
        memcpy(h->mask, p + q, 4);
    return need;
}

/* "host:port" -> sockaddr_in (IPv4 only: the benchmark uses 127/8). */
static inline int
parse_hostport(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *c = strrchr(s, ':');
    if (!c || (size_t)(c - s) >= sizeof host)
        return -1;
    memcpy(host, s, (size_t)(c - s));
    host[c - s] = 0;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(c + 1));
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static inline void
raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* size with k/m suffix */
static inline uint64_t
parse_size(const char *s)
{
    char *e;
    uint64_t v = strtoull(s, &e, 10);
    if (*e == 'k' || *e == 'K')
        v <<= 10;
    else if (*e == 'm' || *e == 'M')
        v <<= 20;
    return v;
}

#endif
