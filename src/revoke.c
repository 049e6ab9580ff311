/*
 * revoke.c - revocation messages and the table in force (see revoke.h).
 */
#include "revoke.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "units.h"

const char *const revoke_key[REVOKE_COUNT] = {
    [REVOKE_SUB] = "sub",
    [REVOKE_JTI] = "jti",
    [REVOKE_IP] = "client_ip",
};

/* ---- the message -------------------------------------------------------- */

/* An address in canonical text (v4-mapped IPv6 as IPv4). 0 or -1. */
static int
canon_ip(const char *s, size_t len, char *out, size_t cap)
{
    char tmp[INET6_ADDRSTRLEN];
    unsigned char a[16];

    if (len == 0 || len >= sizeof tmp)
        return -1;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    if (inet_pton(AF_INET, tmp, a) == 1)
        return inet_ntop(AF_INET, a, out, (socklen_t)cap) ? 0 : -1;
    if (inet_pton(AF_INET6, tmp, a) != 1)
        return -1;
    static const unsigned char mapped[12] = {
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
    };
    if (memcmp(a, mapped, sizeof mapped) == 0)
        return inet_ntop(AF_INET, a + 12, out, (socklen_t)cap) ? 0 : -1;
    return inet_ntop(AF_INET6, a, out, (socklen_t)cap) ? 0 : -1;
}

int
revocation_parse(const char *json, size_t len, uint64_t default_ttl_ms,
                 struct revocation *rv, char *err, size_t cap)
{
    json_error_t jerr;
    json_t *o = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    const char *key;
    json_t *val;
    int found = 0, rc = -1;

    memset(rv, 0, sizeof *rv);
    rv->ttl_ms = default_ttl_ms;
    if (o == NULL || !json_is_object(o)) {
        snprintf(err, cap, "not a JSON object");
        goto out;
    }
    json_object_foreach(o, key, val) {
        if (strcmp(key, "ttl") == 0) {
            uint64_t ms;
            if (!json_is_string(val) ||
                units_duration_ms(json_string_value(val), &ms) != 0 ||
                ms < 1000 || ms > REVOKE_TTL_MAX_MS) {
                snprintf(err, cap, "ttl must be a duration from 1s to 30d");
                goto out;
            }
            rv->ttl_ms = ms;
            continue;
        }
        int k;
        for (k = 0; k < REVOKE_COUNT; k++)
            if (strcmp(key, revoke_key[k]) == 0)
                break;
        if (k == REVOKE_COUNT) {
            snprintf(err, cap, "unknown key (sub, jti, client_ip, ttl)");
            goto out;
        }
        if (found++) {
            snprintf(err, cap, "name exactly one of sub, jti, client_ip");
            goto out;
        }
        const char *s = json_string_value(val);
        size_t n = json_string_length(val);
        if (!json_is_string(val) || n == 0 || n > REVOKE_VALUE_MAX ||
            memchr(s, '\0', n) != NULL) {
            snprintf(err, cap, "%s must be a string of 1 to %d bytes",
                     key, REVOKE_VALUE_MAX);
            goto out;
        }
        rv->kind = (enum revoke_kind)k;
        if (k == REVOKE_IP) {
            if (canon_ip(s, n, rv->value, sizeof rv->value) != 0) {
                snprintf(err, cap, "client_ip is not an IP address");
                goto out;
            }
        } else {
            memcpy(rv->value, s, n);
            rv->value[n] = '\0';
        }
    }
    if (!found) {
        snprintf(err, cap, "name one of sub, jti, client_ip");
        goto out;
    }
    rc = 0;
out:
    json_decref(o);
    return rc;
}

int
revocation_matches(const struct revocation *rv, const char *value,
                   size_t len)
{
    char ip[INET6_ADDRSTRLEN];

    if (rv->kind == REVOKE_IP) {
        if (canon_ip(value, len, ip, sizeof ip) != 0)
            return 0;
        value = ip;
        len = strlen(ip);
    }
    return strlen(rv->value) == len && memcmp(rv->value, value, len) == 0;
}

int
revocation_json(const struct revocation *rv, char *out, size_t cap)
{
    json_t *o = json_object();
    char ttl[32];
    char *s;
    int n = -1;

    if (o == NULL)
        return -1;
    snprintf(ttl, sizeof ttl, "%llums", (unsigned long long)rv->ttl_ms);
    if (json_object_set_new(o, revoke_key[rv->kind],
                            json_string(rv->value)) == 0 &&
        json_object_set_new(o, "ttl", json_string(ttl)) == 0 &&
        (s = json_dumps(o, JSON_COMPACT)) != NULL) {
        size_t l = strlen(s);
        if (l < cap) {
            memcpy(out, s, l + 1);
            n = (int)l;
        }
        free(s);
    }
    json_decref(o);
    return n;
}

/* ---- the table ---------------------------------------------------------- */

#define NBUCKETS 4096

struct rentry {
    struct rentry *next;
    double until;
    unsigned char kind;
    unsigned short len;
    char value[];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct rentry *bucket[NBUCKETS];
static atomic_size_t count;             /* entries; read without the lock */

static unsigned
hash(enum revoke_kind kind, const char *v, size_t len)
{
    uint32_t h = 2166136261u ^ (uint32_t)kind;   /* FNV-1a */

    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)v[i]) * 16777619u;
    return h % NBUCKETS;
}

/* Drop the expired entries of one chain (lock held). */
static void
purge_chain(struct rentry **pp, double now)
{
    while (*pp != NULL) {
        struct rentry *e = *pp;
        if (e->until <= now) {
            *pp = e->next;
            free(e);
            atomic_fetch_sub(&count, 1);
        } else {
            pp = &e->next;
        }
    }
}

int
revoked_add(const struct revocation *rv, double now)
{
    size_t len = strlen(rv->value);
    unsigned b = hash(rv->kind, rv->value, len);
    double until = now + (double)rv->ttl_ms / 1000.0;
    struct rentry *e;
    int rc = 0;

    pthread_mutex_lock(&lock);
    purge_chain(&bucket[b], now);
    for (e = bucket[b]; e != NULL; e = e->next)
        if (e->kind == rv->kind && e->len == len &&
            memcmp(e->value, rv->value, len) == 0)
            break;
    if (e != NULL) {
        if (until > e->until)
            e->until = until;
        goto out;
    }
    if (atomic_load(&count) >= REVOKE_MAX)
        for (unsigned i = 0; i < NBUCKETS; i++)
            purge_chain(&bucket[i], now);
    if (atomic_load(&count) >= REVOKE_MAX ||
        (e = malloc(sizeof *e + len)) == NULL) {
        rc = -1;
        goto out;
    }
    e->until = until;
    e->kind = (unsigned char)rv->kind;
    e->len = (unsigned short)len;
    memcpy(e->value, rv->value, len);
    e->next = bucket[b];
    bucket[b] = e;
    atomic_fetch_add(&count, 1);
out:
    pthread_mutex_unlock(&lock);
    return rc;
}

int
revoked_match(enum revoke_kind kind, const char *value, size_t len,
              double now)
{
    char ip[INET6_ADDRSTRLEN];
    int hit = 0;

    if (atomic_load_explicit(&count, memory_order_relaxed) == 0 ||
        value == NULL)
        return 0;
    if (kind == REVOKE_IP) {
        if (canon_ip(value, len, ip, sizeof ip) != 0)
            return 0;
        value = ip;
        len = strlen(ip);
    }
    if (len == 0 || len > REVOKE_VALUE_MAX)
        return 0;
    unsigned b = hash(kind, value, len);
    pthread_mutex_lock(&lock);
    for (const struct rentry *e = bucket[b]; e != NULL; e = e->next)
        if (e->kind == kind && e->len == len &&
            memcmp(e->value, value, len) == 0) {
            hit = e->until > now;
            break;
        }
    pthread_mutex_unlock(&lock);
    return hit;
}

size_t
revoked_count(void)
{
    return atomic_load(&count);
}

void
revoked_clear(void)
{
    pthread_mutex_lock(&lock);
    for (unsigned i = 0; i < NBUCKETS; i++)
        purge_chain(&bucket[i], 1e300);
    pthread_mutex_unlock(&lock);
}
