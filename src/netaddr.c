/*
 * netaddr.c - client addresses: the per-IP connection table, CIDR sets,
 * X-Forwarded-For and the PROXY protocol. See netaddr.h for the contracts.
 *
 * The per-IP table is the only shared state. It is split into IPLIMIT_SHARDS
 * independent open-addressing tables, each behind its own mutex, so workers
 * counting different clients rarely contend. Keys are hashed with SipHash-2-4
 * under a random 128-bit key drawn at creation: a client choosing its
 * addresses (any IPv6 /64 holder, or anyone behind a trusted proxy) cannot
 * aim them at one bucket. Linear probing with backward-shift deletion leaves
 * no tombstones, so a slot is occupied exactly when its count is non-zero
 * and churn leaves nothing behind; each shard also shrinks when it empties.
 *
 * Everything else in this file is pure.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "netaddr.h"

/* ---- keys ------------------------------------------------------------- */

static const uint8_t v4_mapped_prefix[12] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
};

/* Clear every bit of a[0..nbytes) after the first bits. */
static void
mask_bits(uint8_t *a, unsigned bits, size_t nbytes)
{
    size_t full = bits / 8;

    if (full >= nbytes)
        return;
    if (bits % 8 != 0) {
        a[full] &= (uint8_t)(0xff << (8 - bits % 8));
        full++;
    }
    memset(a + full, 0, nbytes - full);
}

/* Fill k from a raw address. A v4-mapped IPv6 address is an IPv4 client
 * (a dual-stack socket shows IPv4 peers that way), so it is counted
 * exactly, like one accepted on an IPv4 socket. */
static void
key_from_raw(int family, const uint8_t *raw, unsigned v6_prefix,
             struct ip_key *k)
{
    memset(k, 0, sizeof *k);
    if (family == AF_INET) {
        k->family = AF_INET;
        memcpy(k->addr, raw, 4);
    } else if (family == AF_INET6) {
        if (memcmp(raw, v4_mapped_prefix, 12) == 0) {
            k->family = AF_INET;
            memcpy(k->addr, raw + 12, 4);
            return;
        }
        k->family = AF_INET6;
        memcpy(k->addr, raw, 16);
        mask_bits(k->addr, v6_prefix > 128 ? 128 : v6_prefix, 16);
    } else {
        /* No IP (a UNIX socket, PROXY UNKNOWN): one shared key, so such
         * connections are still counted rather than silently unlimited. */
        k->family = AF_UNSPEC;
    }
}

void
ip_key_from_sockaddr(const struct sockaddr *sa, unsigned v6_prefix,
                     struct ip_key *k)
{
    if (sa != NULL && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        key_from_raw(AF_INET, (const uint8_t *)&in->sin_addr, v6_prefix, k);
    } else if (sa != NULL && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        key_from_raw(AF_INET6, in6->sin6_addr.s6_addr, v6_prefix, k);
    } else {
        key_from_raw(AF_UNSPEC, NULL, v6_prefix, k);
    }
}

/* A decimal port: 1 to 5 digits, at most 65535. */
static int
parse_port(const char *s, size_t len)
{
    unsigned long v = 0;

    if (len == 0 || len > 5)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    return v > 65535 ? -1 : (int)v;
}

/* Longest accepted text: "[" + 45-char IPv6 + "]:65535". */
#define ADDR_TEXT_MAX 64

int
ip_key_from_text(const char *s, size_t len, unsigned v6_prefix,
                 struct ip_key *k)
{
    char a[ADDR_TEXT_MAX];
    uint8_t raw[16];
    const char *addr = s, *colon;
    size_t alen = len;
    int family;

    if (s == NULL || len == 0 || len >= sizeof a || memchr(s, 0, len))
        return -1;
    if (s[0] == '[') {
        /* "[v6]" or "[v6]:port": brackets only ever hold IPv6. */
        const char *rb = memchr(s, ']', len);
        if (rb == NULL)
            return -1;
        addr = s + 1;
        alen = (size_t)(rb - addr);
        size_t rest = len - (size_t)(rb + 1 - s);
        if (rest > 0 && (rb[1] != ':' || parse_port(rb + 2, rest - 1) < 0))
            return -1;
        family = AF_INET6;
    } else if ((colon = memchr(s, ':', len)) == NULL) {
        family = AF_INET;
    } else if (memchr(colon + 1, ':', len - (size_t)(colon + 1 - s))) {
        /* Two colons or more: a bare IPv6 address, which cannot carry a
         * port without brackets. */
        family = AF_INET6;
    } else {
        alen = (size_t)(colon - s);
        if (parse_port(colon + 1, len - alen - 1) < 0)
            return -1;
        family = AF_INET;
    }
    if (alen == 0)
        return -1;
    memcpy(a, addr, alen);
    a[alen] = '\0';
    if (inet_pton(family, a, raw) != 1)
        return -1;
    key_from_raw(family, raw, v6_prefix, k);
    return 0;
}

void
ip_key_text(const struct ip_key *k, char *out, size_t cap)
{
    char t[INET6_ADDRSTRLEN];

    if (out == NULL || cap == 0)
        return;
    if (k->family == AF_INET) {
        inet_ntop(AF_INET, k->addr, t, sizeof t);
    } else if (k->family == AF_INET6) {
        inet_ntop(AF_INET6, k->addr, t, sizeof t);
    } else {
        snprintf(t, sizeof t, "unknown");
    }
    snprintf(out, cap, "%s", t);
}

/* ---- SipHash-2-4 ------------------------------------------------------ */

#define ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND                                                          \
    do {                                                                  \
        v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32);     \
        v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;                          \
        v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;                          \
        v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32);     \
    } while (0)

static uint64_t
load_le64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t
siphash24(uint64_t k0, uint64_t k1, const uint8_t *m, size_t len)
{
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL;
    uint64_t v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL;
    uint64_t v3 = k1 ^ 0x7465646279746573ULL;
    uint64_t b = (uint64_t)len << 56;
    size_t i;

    for (i = 0; i + 8 <= len; i += 8) {
        uint64_t w = load_le64(m + i);
        v3 ^= w;
        SIPROUND;
        SIPROUND;
        v0 ^= w;
    }
    for (size_t j = 0; i + j < len; j++)
        b |= (uint64_t)m[i + j] << (8 * j);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- the per-IP table ------------------------------------------------- */

/* 64 shards: enough that a few dozen workers rarely meet on one lock. */
#define IPLIMIT_SHARDS 64
#define IPLIMIT_SHARD_BITS 6
/* Smallest table a shard keeps: 8 slots * 28 bytes. */
#define IPLIMIT_MIN_CAP 8u
/* A shard never grows past this (2^31 slots could not be allocated
 * anyway); it keeps the slot index within the stored 32-bit hash. */
#define IPLIMIT_MAX_CAP (1u << 30)

/* One counted client: 28 bytes. A slot is in use exactly when count > 0. */
struct ip_slot {
    uint32_t hash;              /* low bits of the key's hash: home slot */
    uint32_t count;             /* connections counted, > 0 when in use */
    uint8_t addr[16];
    uint8_t family;
};

struct iplimit_shard {
    /* Own cache line per shard, so workers locking neighbouring shards do
     * not bounce one line between cores. */
    _Alignas(64) pthread_mutex_t lock;
    struct ip_slot *slots;      /* cap slots, cap a power of two */
    uint32_t cap;
    uint32_t n;                 /* slots in use */
};

struct iplimit {
    struct iplimit_shard shard[IPLIMIT_SHARDS];
    uint64_t k0, k1;            /* SipHash key, random per table */
};

/* How many address bytes a key of this family holds. */
static size_t
key_len(const struct ip_key *k)
{
    if (k->family == AF_INET)
        return 4;
    if (k->family == AF_INET6)
        return 16;
    return k->family == AF_UNSPEC ? 0 : 16;
}

static int
key_eq(const struct ip_slot *s, const struct ip_key *k)
{
    return s->family == k->family &&
           memcmp(s->addr, k->addr, key_len(k)) == 0;
}

static uint64_t
key_hash(const struct iplimit *t, const struct ip_key *k)
{
    uint8_t m[17];
    size_t n = key_len(k);

    m[0] = k->family;
    memcpy(m + 1, k->addr, n);
    return siphash24(t->k0, t->k1, m, n + 1);
}

static struct iplimit_shard *
shard_of(struct iplimit *t, uint64_t h)
{
    /* The top bits pick the shard and the low bits the slot, so the two
     * choices are independent. */
    return &t->shard[h >> (64 - IPLIMIT_SHARD_BITS)];
}

/* The slot holding k, or the empty slot where it would go. */
static uint32_t
shard_find(const struct iplimit_shard *s, uint32_t h, const struct ip_key *k)
{
    uint32_t mask = s->cap - 1, i = h & mask;

    while (s->slots[i].count != 0) {
        if (s->slots[i].hash == h && key_eq(&s->slots[i], k))
            return i;
        i = (i + 1) & mask;
    }
    return i;
}

/* Move every entry into a table of ncap slots. -1 when out of memory,
 * leaving the shard as it was. */
static int
shard_resize(struct iplimit_shard *s, uint32_t ncap)
{
    struct ip_slot *ns = calloc(ncap, sizeof *ns);
    uint32_t mask = ncap - 1;

    if (ns == NULL)
        return -1;
    for (uint32_t i = 0; i < s->cap; i++) {
        if (s->slots[i].count == 0)
            continue;
        uint32_t j = s->slots[i].hash & mask;
        while (ns[j].count != 0)
            j = (j + 1) & mask;
        ns[j] = s->slots[i];
    }
    free(s->slots);
    s->slots = ns;
    s->cap = ncap;
    return 0;
}

/* Empty slot i and shift later entries of its probe run back, so lookups
 * never need tombstones and the table holds only live entries. */
static void
shard_delete(struct iplimit_shard *s, uint32_t i)
{
    uint32_t mask = s->cap - 1, j = i;

    for (;;) {
        j = (j + 1) & mask;
        if (s->slots[j].count == 0)
            break;
        uint32_t home = s->slots[j].hash & mask;
        /* j may move into the hole at i only if i lies on its probe path,
         * from home to j. */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            s->slots[i] = s->slots[j];
            i = j;
        }
    }
    memset(&s->slots[i], 0, sizeof s->slots[i]);
    s->n--;
    /* Shrink at 1/8 full to half size: the new load is below 1/4, far from
     * the 3/4 that grows it again, so churn around a size cannot make
     * every operation resize. A failed shrink only keeps memory. */
    if (s->cap > IPLIMIT_MIN_CAP && (uint64_t)s->n * 8 < s->cap)
        (void)shard_resize(s, s->cap / 2);
}

static int
fill_random(uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r == -1) {
            if (errno == EINTR)
                continue;
            break;
        }
        p += r;
        n -= (size_t)r;
    }
    if (n == 0)
        return 0;
    /* getrandom() missing (old kernel, seccomp): the device instead. */
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return -1;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r == -1 && errno == EINTR)
            continue;
        if (r <= 0) {
            close(fd);
            return -1;
        }
        p += r;
        n -= (size_t)r;
    }
    close(fd);
    return 0;
}

struct iplimit *
iplimit_new(void)
{
    struct iplimit *t;
    void *mem;
    uint8_t seed[16];
    int i;

    /* Without a secret key the hash is predictable and the table can be
     * flooded into one long probe run, so no seed means no table. */
    if (fill_random(seed, sizeof seed) == -1)
        return NULL;
    if (posix_memalign(&mem, 64, sizeof *t) != 0)
        return NULL;
    t = mem;
    memset(t, 0, sizeof *t);
    t->k0 = load_le64(seed);
    t->k1 = load_le64(seed + 8);
    for (i = 0; i < IPLIMIT_SHARDS; i++) {
        struct iplimit_shard *s = &t->shard[i];
        s->slots = calloc(IPLIMIT_MIN_CAP, sizeof *s->slots);
        if (s->slots == NULL ||
            pthread_mutex_init(&s->lock, NULL) != 0) {
            free(s->slots);
            break;
        }
        s->cap = IPLIMIT_MIN_CAP;
    }
    if (i < IPLIMIT_SHARDS) {
        while (i-- > 0) {
            pthread_mutex_destroy(&t->shard[i].lock);
            free(t->shard[i].slots);
        }
        free(t);
        return NULL;
    }
    return t;
}

void
iplimit_free(struct iplimit *t)
{
    if (t == NULL)
        return;
    for (int i = 0; i < IPLIMIT_SHARDS; i++) {
        pthread_mutex_destroy(&t->shard[i].lock);
        free(t->shard[i].slots);
    }
    free(t);
}

int
iplimit_acquire(struct iplimit *t, const struct ip_key *k, uint64_t max)
{
    if (max == 0)
        return 2;

    uint64_t h = key_hash(t, k);
    struct iplimit_shard *s = shard_of(t, h);
    uint32_t h32 = (uint32_t)h;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    uint32_t i = shard_find(s, h32, k);
    struct ip_slot *e = &s->slots[i];
    if (e->count != 0) {
        /* The 32-bit count saturates long before fds run out. */
        if (e->count < max && e->count < UINT32_MAX) {
            e->count++;
            ret = 1;
        }
        goto out;
    }
    /* A new entry. Grow at 3/4 full; if that fails, insert anyway while
     * one slot stays empty (probes stop at an empty slot), else refuse
     * this one connection: out of memory must not lift the limit. */
    if ((uint64_t)(s->n + 1) * 4 > (uint64_t)s->cap * 3) {
        if (s->cap < IPLIMIT_MAX_CAP && shard_resize(s, s->cap * 2) == 0)
            i = shard_find(s, h32, k);
        else if (s->n + 2 > s->cap)
            goto out;
    }
    e = &s->slots[i];
    e->hash = h32;
    e->count = 1;
    e->family = k->family;
    memset(e->addr, 0, sizeof e->addr);
    memcpy(e->addr, k->addr, key_len(k));
    s->n++;
    ret = 1;
out:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

void
iplimit_release(struct iplimit *t, const struct ip_key *k)
{
    uint64_t h = key_hash(t, k);
    struct iplimit_shard *s = shard_of(t, h);

    pthread_mutex_lock(&s->lock);
    uint32_t i = shard_find(s, (uint32_t)h, k);
    /* An unknown key is a caller bug (release without a counted acquire);
     * ignoring it keeps other clients' counts right. */
    if (s->slots[i].count != 0 && --s->slots[i].count == 0)
        shard_delete(s, i);
    pthread_mutex_unlock(&s->lock);
}

uint64_t
iplimit_count(struct iplimit *t, const struct ip_key *k)
{
    uint64_t h = key_hash(t, k);
    struct iplimit_shard *s = shard_of(t, h);
    uint64_t c;

    pthread_mutex_lock(&s->lock);
    c = s->slots[shard_find(s, (uint32_t)h, k)].count;
    pthread_mutex_unlock(&s->lock);
    return c;
}

size_t
iplimit_entries(struct iplimit *t)
{
    size_t n = 0;

    for (int i = 0; i < IPLIMIT_SHARDS; i++) {
        pthread_mutex_lock(&t->shard[i].lock);
        n += t->shard[i].n;
        pthread_mutex_unlock(&t->shard[i].lock);
    }
    return n;
}

size_t
iplimit_snapshot(struct iplimit *t, struct ip_count *out, size_t max)
{
    size_t n = 0;

    for (int i = 0; i < IPLIMIT_SHARDS && n < max; i++) {
        struct iplimit_shard *s = &t->shard[i];

        pthread_mutex_lock(&s->lock);
        for (uint32_t j = 0; s->slots != NULL && j < s->cap && n < max;
             j++) {
            const struct ip_slot *e = &s->slots[j];

            if (e->count == 0)
                continue;
            out[n].count = e->count;
            out[n].key.family = e->family;
            memcpy(out[n].key.addr, e->addr, sizeof out[n].key.addr);
            n++;
        }
        pthread_mutex_unlock(&s->lock);
    }
    return n;
}

size_t
iplimit_top(struct iplimit *t, struct ip_count *out, size_t max)
{
    size_t n = 0;

    if (max == 0)
        return 0;
    /* One shard locked at a time, each briefly: a reporter never holds a
     * lock a worker waits on for longer than one shard's scan. */
    for (int i = 0; i < IPLIMIT_SHARDS; i++) {
        struct iplimit_shard *s = &t->shard[i];

        pthread_mutex_lock(&s->lock);
        for (uint32_t j = 0; s->slots != NULL && j < s->cap; j++) {
            const struct ip_slot *e = &s->slots[j];
            size_t k;

            if (e->count == 0)
                continue;
            /* out[] is kept sorted, largest first; insertion, since max
             * is small (a status page's list). */
            if (n == max && out[n - 1].count >= e->count)
                continue;
            k = n < max ? n++ : max - 1;
            while (k > 0 && out[k - 1].count < e->count) {
                out[k] = out[k - 1];
                k--;
            }
            out[k].count = e->count;
            out[k].key.family = e->family;
            memcpy(out[k].key.addr, e->addr, sizeof out[k].key.addr);
        }
        pthread_mutex_unlock(&s->lock);
    }
    return n;
}

/* ---- CIDR sets -------------------------------------------------------- */

struct cidr {
    uint8_t family;
    uint8_t prefix;             /* bits, <= 32 or <= 128 */
    uint8_t addr[16];           /* masked to prefix */
};

struct cidr_set {
    size_t n;
    struct cidr v[];
};

static int
cidr_parse(const char *s, struct cidr *c, char *err, size_t cap)
{
    char a[ADDR_TEXT_MAX];
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    unsigned prefix = 0;
    int family;

    if (alen == 0 || alen >= sizeof a) {
        snprintf(err, cap, "\"%.80s\": not an address or CIDR range", s);
        return -1;
    }
    memcpy(a, s, alen);
    a[alen] = '\0';
    family = memchr(a, ':', alen) ? AF_INET6 : AF_INET;
    memset(c, 0, sizeof *c);
    if (inet_pton(family, a, c->addr) != 1) {
        snprintf(err, cap, "\"%.80s\": not an address or CIDR range", s);
        return -1;
    }
    if (slash != NULL) {
        const char *p = slash + 1;
        size_t plen = strlen(p);
        /* Plain decimal only: no sign, no spaces, no leading zeros. */
        int ok = plen >= 1 && plen <= 3 && !(plen > 1 && p[0] == '0');
        for (size_t i = 0; ok && i < plen; i++) {
            ok = p[i] >= '0' && p[i] <= '9';
            prefix = prefix * 10 + (unsigned)(p[i] - '0');
        }
        if (!ok || prefix > (family == AF_INET ? 32u : 128u)) {
            snprintf(err, cap, "\"%.80s\": bad prefix length (0-%d)", s,
                     family == AF_INET ? 32 : 128);
            return -1;
        }
    } else {
        prefix = family == AF_INET ? 32 : 128;
    }
    /* "::ffff:10.0.0.0/104" is 10.0.0.0/8: peers are keyed as IPv4 when
     * v4-mapped, so the range must be too. A shorter IPv6 range (::/0
     * included) is taken to mean IPv6 clients only: trusting fewer peers
     * is the safe reading. */
    if (family == AF_INET6 && prefix >= 96 &&
        memcmp(c->addr, v4_mapped_prefix, 12) == 0) {
        memmove(c->addr, c->addr + 12, 4);
        memset(c->addr + 4, 0, 12);
        family = AF_INET;
        prefix -= 96;
    }
    /* Host bits ("10.1.2.3/8") are dropped, as nginx and HAProxy do. */
    mask_bits(c->addr, prefix, 16);
    c->family = (uint8_t)family;
    c->prefix = (uint8_t)prefix;
    return 0;
}

/* cidr_parse() with err optional. */
static int
cidr_parse_opt(const char *s, struct cidr *c, char *err, size_t cap)
{
    char dummy[1];

    if (err == NULL || cap == 0) {
        err = dummy;
        cap = sizeof dummy;
    }
    if (s == NULL) {
        snprintf(err, cap, "missing address");
        return -1;
    }
    return cidr_parse(s, c, err, cap);
}

int
cidr_check(const char *s, char *err, size_t cap)
{
    struct cidr c;

    return cidr_parse_opt(s, &c, err, cap);
}

struct cidr_set *
cidr_set_new(const struct strlist *l, char *err, size_t cap)
{
    size_t n = l != NULL ? l->n : 0;
    struct cidr_set *s = malloc(sizeof *s + n * sizeof s->v[0]);

    if (s == NULL) {
        if (err != NULL && cap > 0)
            snprintf(err, cap, "out of memory");
        return NULL;
    }
    s->n = n;
    for (size_t i = 0; i < n; i++) {
        if (cidr_parse_opt(l->v[i], &s->v[i], err, cap) == -1) {
            free(s);
            return NULL;
        }
    }
    return s;
}

void
cidr_set_free(struct cidr_set *s)
{
    free(s);
}

int
cidr_set_empty(const struct cidr_set *s)
{
    return s == NULL || s->n == 0;
}

int
cidr_contains(const struct cidr_set *s, const struct ip_key *addr)
{
    uint8_t a[16];
    int family = addr->family;

    if (s == NULL)
        return 0;
    memcpy(a, addr->addr, 16);
    if (family == AF_INET6 && memcmp(a, v4_mapped_prefix, 12) == 0) {
        memmove(a, a + 12, 4);
        memset(a + 4, 0, 12);
        family = AF_INET;
    } else if (family == AF_INET) {
        memset(a + 4, 0, 12);
    } else if (family != AF_INET6) {
        return 0;
    }
    for (size_t i = 0; i < s->n; i++) {
        const struct cidr *c = &s->v[i];
        uint8_t m[16];
        if (c->family != family)
            continue;
        memcpy(m, a, 16);
        mask_bits(m, c->prefix, 16);
        if (memcmp(m, c->addr, 16) == 0)
            return 1;
    }
    return 0;
}

/* ---- X-Forwarded-For -------------------------------------------------- */

static int
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* One value of xff_client_v: 0 client found, 1 every entry trusted,
 * -1 malformed. */
static int
xff_one(const char *v, size_t len, const struct cidr_set *trusted,
        char *out, size_t cap)
{
    size_t end = len;

    /* From the right: each hop appends the address it received from, so
     * only entries added by trusted proxies can be believed; the first
     * untrusted one is as far as the chain of trust reaches. Anything
     * malformed on the way means a trusted hop wrote nonsense (or the
     * header was not what we think), so nothing is believed. */
    for (;;) {
        size_t start = end;
        while (start > 0 && v[start - 1] != ',')
            start--;
        size_t a = start, b = end;
        while (a < b && is_ows(v[a]))
            a++;
        while (b > a && is_ows(v[b - 1]))
            b--;

        struct ip_key k;
        if (ip_key_from_text(v + a, b - a, 128, &k) == -1)
            return -1;
        if (!cidr_contains(trusted, &k)) {
            char t[INET6_ADDRSTRLEN];
            ip_key_text(&k, t, sizeof t);
            if (strlen(t) >= cap)
                return -1;
            memcpy(out, t, strlen(t) + 1);
            return 0;
        }
        if (start == 0)
            return 1;
        end = start - 1;
    }
}

int
xff_client_v(const char *const *v, const size_t *len, size_t n,
             const struct cidr_set *trusted, char *out, size_t cap)
{
    if (v == NULL || len == NULL || out == NULL || cap == 0)
        return -1;
    for (size_t i = n; i-- > 0;) {
        int r = xff_one(v[i], len[i], trusted, out, cap);
        if (r != 1)
            return r;
    }
    return -1;                  /* every hop trusted: no client in it */
}

int
xff_client(const char *v, size_t len, const struct cidr_set *trusted,
           char *out, size_t cap)
{
    if (v == NULL)
        return -1;
    return xff_client_v(&v, &len, 1, trusted, out, cap);
}

/* ---- PROXY protocol --------------------------------------------------- */

#define PROXY_V1_MAX 107
#define PROXY_V2_HDR 16

static const uint8_t proxy_v2_sig[12] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A
};

/* Take the next space-terminated token of line[*pos..end) into t (NUL
 * terminated). Exactly one space separates tokens; last says whether the
 * token must end the line. */
static int
v1_token(const uint8_t *line, size_t *pos, size_t end, char *t, size_t cap,
         int last)
{
    size_t i = *pos, n = 0;

    while (i < end && line[i] != ' ') {
        /* Printable only: a NUL would cut the token short for inet_pton
         * and let trailing junk through. */
        if (n + 1 >= cap || line[i] < 0x21 || line[i] > 0x7e)
            return -1;
        t[n++] = (char)line[i++];
    }
    if (n == 0)
        return -1;
    t[n] = '\0';
    if (last ? i != end : i == end)
        return -1;
    *pos = last ? i : i + 1;
    return 0;
}

/* A v1 port: "0" or digits without a leading zero, at most 65535. */
static int
v1_port(const char *t)
{
    size_t n = strlen(t);

    if (n > 1 && t[0] == '0')
        return -1;
    return parse_port(t, n);
}

/* Parse the complete v1 line buf[0..end) (CRLF excluded). */
static int
proxy_v1_line(const uint8_t *buf, size_t end, struct sockaddr_storage *src)
{
    char proto[8], sa[INET6_ADDRSTRLEN], da[INET6_ADDRSTRLEN];
    char sp[8], dp[8];
    size_t pos = 6;
    uint8_t sraw[16], draw[16];
    int family, sport;

    if (v1_token(buf, &pos, end, proto, sizeof proto, 0) == -1) {
        /* "PROXY UNKNOWN" alone ends the line. */
        if (end - 6 == 7 && memcmp(buf + 6, "UNKNOWN", 7) == 0)
            goto unknown;
        return PROXY_ERROR;
    }
    /* UNKNOWN: the rest of the line is to be ignored (the sender may put
     * addresses there or not). */
    if (strcmp(proto, "UNKNOWN") == 0)
        goto unknown;
    if (strcmp(proto, "TCP4") == 0)
        family = AF_INET;
    else if (strcmp(proto, "TCP6") == 0)
        family = AF_INET6;
    else
        return PROXY_ERROR;
    if (v1_token(buf, &pos, end, sa, sizeof sa, 0) == -1 ||
        v1_token(buf, &pos, end, da, sizeof da, 0) == -1 ||
        v1_token(buf, &pos, end, sp, sizeof sp, 0) == -1 ||
        v1_token(buf, &pos, end, dp, sizeof dp, 1) == -1)
        return PROXY_ERROR;
    if (inet_pton(family, sa, sraw) != 1 || inet_pton(family, da, draw) != 1)
        return PROXY_ERROR;
    if ((sport = v1_port(sp)) < 0 || v1_port(dp) < 0)
        return PROXY_ERROR;
    if (src != NULL) {
        memset(src, 0, sizeof *src);
        if (family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)src;
            in->sin_family = AF_INET;
            in->sin_port = htons((uint16_t)sport);
            memcpy(&in->sin_addr, sraw, 4);
        } else {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)src;
            in6->sin6_family = AF_INET6;
            in6->sin6_port = htons((uint16_t)sport);
            memcpy(&in6->sin6_addr, sraw, 16);
        }
    }
    return (int)end + 2;
unknown:
    if (src != NULL) {
        memset(src, 0, sizeof *src);
        src->ss_family = AF_UNSPEC;
    }
    return (int)end + 2;
}

static int
proxy_v1(const uint8_t *buf, size_t len, struct sockaddr_storage *src)
{
    size_t scan = len < PROXY_V1_MAX ? len : PROXY_V1_MAX;

    if (memcmp(buf, "PROXY ", len < 6 ? len : 6) != 0)
        return PROXY_ERROR;
    /* Fail as soon as the line cannot end well, so a peer cannot hold the
     * connection with bytes that will never parse. */
    for (size_t i = 0; i < scan; i++) {
        if (buf[i] == '\n')
            return PROXY_ERROR;         /* bare LF */
        if (buf[i] != '\r')
            continue;
        if (i + 2 > PROXY_V1_MAX)
            return PROXY_ERROR;
        if (i + 1 == len)
            return PROXY_INCOMPLETE;
        if (buf[i + 1] != '\n')
            return PROXY_ERROR;
        return proxy_v1_line(buf, i, src);
    }
    return len >= PROXY_V1_MAX ? PROXY_ERROR : PROXY_INCOMPLETE;
}

static int
proxy_v2(const uint8_t *buf, size_t len, struct sockaddr_storage *src)
{
    size_t need, alen, total;
    int cmd, fam;

    if (memcmp(buf, proxy_v2_sig, len < 12 ? len : 12) != 0)
        return PROXY_ERROR;
    /* Each field is checked as soon as it has arrived. */
    if (len < 13)
        return PROXY_INCOMPLETE;
    if ((buf[12] >> 4) != 2)
        return PROXY_ERROR;             /* version */
    cmd = buf[12] & 0x0F;
    if (cmd > 1)
        return PROXY_ERROR;             /* 0 LOCAL, 1 PROXY */
    if (len < 14)
        return PROXY_INCOMPLETE;
    fam = buf[13];
    /* LOCAL (a health check from the proxy itself): the family and any
     * address block are to be ignored, so only the length is used. */
    switch (cmd == 0 ? 0x00 : fam) {
    case 0x00:                          /* UNSPEC */
        need = 0;
        break;
    case 0x11:                          /* TCP over IPv4 */
        need = 12;
        break;
    case 0x21:                          /* TCP over IPv6 */
        need = 36;
        break;
    case 0x31:                          /* UNIX stream */
        need = 216;
        break;
    default:
        /* UDP (a WebSocket never arrives over it) or unassigned. */
        return PROXY_ERROR;
    }
    if (len < PROXY_V2_HDR)
        return PROXY_INCOMPLETE;
    alen = (size_t)buf[14] << 8 | buf[15];
    total = PROXY_V2_HDR + alen;
    if (total > PROXY_MAX || alen < need)
        return PROXY_ERROR;
    if (len < total)
        return PROXY_INCOMPLETE;
    if (cmd == 0) {
        if (src != NULL) {
            memset(src, 0, sizeof *src);
            src->ss_family = AF_UNSPEC;
        }
        return (int)total;
    }
    /* TLVs after the addresses are not used, but their framing must be
     * exact: a header whose lengths disagree is not trusted for the
     * address either. */
    for (size_t p = PROXY_V2_HDR + need; p < total;) {
        if (total - p < 3)
            return PROXY_ERROR;
        size_t tl = (size_t)buf[p + 1] << 8 | buf[p + 2];
        if (tl > total - p - 3)
            return PROXY_ERROR;
        p += 3 + tl;
    }
    if (src == NULL)
        return (int)total;
    memset(src, 0, sizeof *src);
    /* UNSPEC and UNIX carry no IP: the caller keeps the real peer. */
    if (fam == 0x00 || fam == 0x31) {
        src->ss_family = AF_UNSPEC;
    } else if (fam == 0x11) {
        struct sockaddr_in *in = (struct sockaddr_in *)src;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, buf + 16, 4);
        memcpy(&in->sin_port, buf + 24, 2);     /* already network order */
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)src;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, buf + 16, 16);
        memcpy(&in6->sin6_port, buf + 48, 2);
    }
    return (int)total;
}

int
proxy_parse(const uint8_t *buf, size_t len, struct sockaddr_storage *src)
{
    if (len == 0)
        return PROXY_INCOMPLETE;
    /* The first byte tells the versions apart: 'P' or CR. */
    if (buf[0] == 'P')
        return proxy_v1(buf, len, src);
    if (buf[0] == proxy_v2_sig[0])
        return proxy_v2(buf, len, src);
    return PROXY_ERROR;
}
