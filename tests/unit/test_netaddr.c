/*
 * test_netaddr.c - the per-IP table (limits, churn, threads), address keys
 * (IPv6 prefixes, v4-mapped), CIDR sets, X-Forwarded-For and the PROXY
 * protocol.
 *
 * PROXY vectors are parsed whole and at every truncated prefix: a valid
 * header must answer INCOMPLETE, never ERROR, until its last byte, and an
 * invalid one may turn to ERROR early but never back. Every call sees its
 * input placed against a PROT_NONE page, so a read past len faults.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "netaddr.h"

#include "guard.h"

/* ---- helpers */

static struct ip_key
key4(uint32_t host_order)
{
    struct sockaddr_in in;
    struct ip_key k;

    memset(&in, 0, sizeof in);
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(host_order);
    ip_key_from_sockaddr((struct sockaddr *)&in, 64, &k);
    return k;
}

static struct ip_key
key_sa6(const char *text, unsigned prefix)
{
    struct sockaddr_in6 in6;
    struct ip_key k;

    memset(&in6, 0, sizeof in6);
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(443);
    assert_int_equal(inet_pton(AF_INET6, text, &in6.sin6_addr), 1);
    ip_key_from_sockaddr((struct sockaddr *)&in6, prefix, &k);
    return k;
}

static struct ip_key
key_text(const char *text, unsigned prefix)
{
    struct ip_key k;

    assert_int_equal(ip_key_from_text(text, strlen(text), prefix, &k), 0);
    return k;
}

static int
key_same(const struct ip_key *a, const struct ip_key *b)
{
    return a->family == b->family && memcmp(a->addr, b->addr, 16) == 0;
}

static void
assert_key_text(const struct ip_key *k, const char *want)
{
    char t[64];

    ip_key_text(k, t, sizeof t);
    assert_string_equal(t, want);
}

/* ---- the per-IP table */

static void
test_table_basic(void **state)
{
    (void)state;
    struct iplimit *t = iplimit_new();
    struct ip_key a = key4(0x0A000001), b = key4(0x0A000002);

    assert_non_null(t);
    assert_int_equal(iplimit_entries(t), 0);
    assert_int_equal(iplimit_count(t, &a), 0);

    /* max 3: three counted, the fourth refused, others unaffected */
    assert_int_equal(iplimit_acquire(t, &a, 3), 1);
    assert_int_equal(iplimit_acquire(t, &a, 3), 1);
    assert_int_equal(iplimit_acquire(t, &a, 3), 1);
    assert_int_equal(iplimit_acquire(t, &a, 3), 0);
    assert_int_equal(iplimit_count(t, &a), 3);
    assert_int_equal(iplimit_acquire(t, &b, 3), 1);
    assert_int_equal(iplimit_entries(t), 2);

    /* a release makes room for exactly one */
    iplimit_release(t, &a);
    assert_int_equal(iplimit_count(t, &a), 2);
    assert_int_equal(iplimit_acquire(t, &a, 3), 1);
    assert_int_equal(iplimit_acquire(t, &a, 3), 0);

    /* a lower max applies to the current count */
    assert_int_equal(iplimit_acquire(t, &a, 1), 0);
    /* max 0 is unlimited and counts nothing */
    assert_int_equal(iplimit_acquire(t, &a, 0), 2);
    assert_int_equal(iplimit_count(t, &a), 3);
    struct ip_key c = key4(0x0A000003);
    assert_int_equal(iplimit_acquire(t, &c, 0), 2);
    assert_int_equal(iplimit_count(t, &c), 0);
    assert_int_equal(iplimit_entries(t), 2);

    /* entries go at zero */
    for (int i = 0; i < 3; i++)
        iplimit_release(t, &a);
    assert_int_equal(iplimit_count(t, &a), 0);
    assert_int_equal(iplimit_entries(t), 1);
    iplimit_release(t, &b);
    assert_int_equal(iplimit_entries(t), 0);

    /* releasing what is not there changes nothing */
    iplimit_release(t, &b);
    assert_int_equal(iplimit_entries(t), 0);
    assert_int_equal(iplimit_acquire(t, &b, 1), 1);
    iplimit_release(t, &a);
    assert_int_equal(iplimit_count(t, &b), 1);
    iplimit_release(t, &b);
    assert_int_equal(iplimit_entries(t), 0);
    iplimit_free(t);
    iplimit_free(NULL);
}

/* IPv4 10.0.0.1 and ::a00:1 and a v6 key with the same leading bytes must
 * be different entries. */
static void
test_table_families(void **state)
{
    (void)state;
    struct iplimit *t = iplimit_new();
    struct ip_key v4 = key4(0x0A000001);
    struct ip_key v6 = key_sa6("a00:1::", 128);
    struct ip_key compat = key_sa6("::a00:1", 128);

    assert_int_equal(iplimit_acquire(t, &v4, 1), 1);
    assert_int_equal(iplimit_acquire(t, &v6, 1), 1);
    assert_int_equal(iplimit_acquire(t, &compat, 1), 1);
    assert_int_equal(iplimit_entries(t), 3);
    assert_int_equal(iplimit_acquire(t, &v4, 1), 0);
    iplimit_release(t, &v4);
    iplimit_release(t, &v6);
    iplimit_release(t, &compat);
    assert_int_equal(iplimit_entries(t), 0);
    iplimit_free(t);
}

#define CHURN 100000

static void
test_table_churn(void **state)
{
    (void)state;
    struct iplimit *t = iplimit_new();

    /* 100k distinct clients at once (the table grows), then all gone */
    for (uint32_t i = 0; i < CHURN; i++) {
        struct ip_key k = key4(0xC0000000u + i * 7919u);
        assert_int_equal(iplimit_acquire(t, &k, 2), 1);
    }
    assert_int_equal(iplimit_entries(t), CHURN);
    for (uint32_t i = 0; i < CHURN; i += 997) {
        struct ip_key k = key4(0xC0000000u + i * 7919u);
        assert_int_equal(iplimit_count(t, &k), 1);
        assert_int_equal(iplimit_acquire(t, &k, 2), 1);
        assert_int_equal(iplimit_acquire(t, &k, 2), 0);
        iplimit_release(t, &k);
    }
    /* released in a different order than acquired, to exercise the
     * backward shift on every kind of probe run */
    for (uint32_t i = 0; i < CHURN; i++) {
        uint32_t j = (i * 40503u) % CHURN;
        struct ip_key k = key4(0xC0000000u + j * 7919u);
        iplimit_release(t, &k);
        if (i % 10007 == 0)
            assert_int_equal(iplimit_entries(t), CHURN - i - 1);
    }
    assert_int_equal(iplimit_entries(t), 0);

    /* rolling churn of IPv6 /64s: a window of 1000 live clients moving
     * through 100k distinct ones */
    for (uint32_t i = 0; i < CHURN + 1000; i++) {
        char a[64];
        if (i < CHURN) {
            snprintf(a, sizeof a, "2001:db8:%x:%x::1", i >> 16, i & 0xffff);
            struct ip_key k = key_text(a, 64);
            assert_int_equal(iplimit_acquire(t, &k, 1), 1);
        }
        if (i >= 1000) {
            uint32_t j = i - 1000;
            snprintf(a, sizeof a, "2001:db8:%x:%x::2", j >> 16, j & 0xffff);
            struct ip_key k = key_text(a, 64);   /* same /64 */
            assert_int_equal(iplimit_count(t, &k), 1);
            iplimit_release(t, &k);
        }
        if (i >= 1000 && i < CHURN && i % 4096 == 0)
            assert_int_equal(iplimit_entries(t), 1000);
    }
    assert_int_equal(iplimit_entries(t), 0);

    /* still works after shrinking back */
    struct ip_key k = key4(1);
    assert_int_equal(iplimit_acquire(t, &k, 1), 1);
    assert_int_equal(iplimit_entries(t), 1);
    iplimit_release(t, &k);
    assert_int_equal(iplimit_entries(t), 0);
    iplimit_free(t);
}

/* ---- threads */

#define NTHREADS 4
#define NKEYS 24
#define ROUNDS 40000
#define HOLD 8
#define TMAX 3

struct hammer {
    struct iplimit *t;
    struct ip_key *keys;
    unsigned seed;
    int bad;                    /* count seen above TMAX */
};

static void *
hammer_run(void *arg)
{
    struct hammer *h = arg;
    int held[HOLD];
    int nheld = 0;
    unsigned x = h->seed;

    for (int r = 0; r < ROUNDS; r++) {
        x = x * 1103515245u + 12345u;
        int ki = (int)((x >> 16) % NKEYS);
        /* hold up to HOLD at a time so counts rise and fall and entries
         * are created and deleted concurrently */
        if (nheld == HOLD || (nheld > 0 && (x & 0x100))) {
            int pick = (int)((x >> 9) % (unsigned)nheld);
            iplimit_release(h->t, &h->keys[held[pick]]);
            held[pick] = held[--nheld];
            continue;
        }
        int ret = iplimit_acquire(h->t, &h->keys[ki], TMAX);
        if (ret == 1) {
            held[nheld++] = ki;
            if (iplimit_count(h->t, &h->keys[ki]) > TMAX)
                h->bad++;
        } else if (ret != 0) {
            h->bad++;
        }
    }
    while (nheld > 0)
        iplimit_release(h->t, &h->keys[held[--nheld]]);
    return NULL;
}

static void
test_table_threads(void **state)
{
    (void)state;
    struct iplimit *t = iplimit_new();
    struct ip_key keys[NKEYS];
    struct hammer h[NTHREADS];
    pthread_t th[NTHREADS];

    for (int i = 0; i < NKEYS; i++) {
        char a[64];
        if (i % 2)
            snprintf(a, sizeof a, "192.0.2.%d", i);
        else
            snprintf(a, sizeof a, "2001:db8:0:%x::%x", i / 4, i);
        keys[i] = key_text(a, 64);
    }
    for (int i = 0; i < NTHREADS; i++) {
        h[i].t = t;
        h[i].keys = keys;
        h[i].seed = (unsigned)i * 2654435761u + 1;
        h[i].bad = 0;
        assert_int_equal(pthread_create(&th[i], NULL, hammer_run, &h[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(h[i].bad, 0);
    }
    for (int i = 0; i < NKEYS; i++)
        assert_int_equal(iplimit_count(t, &keys[i]), 0);
    assert_int_equal(iplimit_entries(t), 0);
    iplimit_free(t);
}

/* Every thread grabs as many slots of one key as it can, all at once: the
 * total granted must be exactly the limit. */
#define RACE_MAX 5

struct racer {
    struct iplimit *t;
    const struct ip_key *k;
    pthread_barrier_t *bar;
    int got;
};

static void *
racer_run(void *arg)
{
    struct racer *r = arg;

    pthread_barrier_wait(r->bar);
    for (int i = 0; i < 1000; i++)
        if (iplimit_acquire(r->t, r->k, RACE_MAX) == 1)
            r->got++;
    return NULL;
}

static void
test_table_race_exact(void **state)
{
    (void)state;
    struct iplimit *t = iplimit_new();
    struct ip_key k = key_text("198.51.100.7", 64);
    pthread_barrier_t bar;
    struct racer r[NTHREADS];
    pthread_t th[NTHREADS];
    int total = 0;

    for (int round = 0; round < 50; round++) {
        pthread_barrier_init(&bar, NULL, NTHREADS);
        for (int i = 0; i < NTHREADS; i++) {
            r[i] = (struct racer){ t, &k, &bar, 0 };
            pthread_create(&th[i], NULL, racer_run, &r[i]);
        }
        total = 0;
        for (int i = 0; i < NTHREADS; i++) {
            pthread_join(th[i], NULL);
            total += r[i].got;
        }
        pthread_barrier_destroy(&bar);
        assert_int_equal(total, RACE_MAX);
        assert_int_equal(iplimit_count(t, &k), RACE_MAX);
        for (int i = 0; i < total; i++)
            iplimit_release(t, &k);
        assert_int_equal(iplimit_entries(t), 0);
    }
    iplimit_free(t);
}

/* ---- keys */

static void
test_key_v6_prefix(void **state)
{
    (void)state;
    struct iplimit *t = iplimit_new();

    /* same /64 share a count, another /64 does not */
    struct ip_key a = key_sa6("2001:db8:1:2:aaaa::1", 64);
    struct ip_key b = key_sa6("2001:db8:1:2:ffff:ffff:ffff:ffff", 64);
    struct ip_key c = key_sa6("2001:db8:1:3::1", 64);
    assert_true(key_same(&a, &b));
    assert_false(key_same(&a, &c));
    assert_key_text(&a, "2001:db8:1:2::");
    assert_int_equal(iplimit_acquire(t, &a, 2), 1);
    assert_int_equal(iplimit_acquire(t, &b, 2), 1);
    assert_int_equal(iplimit_acquire(t, &a, 2), 0);
    assert_int_equal(iplimit_acquire(t, &c, 2), 1);
    assert_int_equal(iplimit_count(t, &b), 2);
    assert_int_equal(iplimit_entries(t), 2);
    iplimit_release(t, &a);
    iplimit_release(t, &b);
    iplimit_release(t, &c);
    assert_int_equal(iplimit_entries(t), 0);
    iplimit_free(t);

    /* /128: every address its own */
    a = key_sa6("2001:db8::1", 128);
    b = key_sa6("2001:db8::2", 128);
    assert_false(key_same(&a, &b));
    assert_key_text(&a, "2001:db8::1");
    /* /48 groups across /64s, not across /48s */
    a = key_sa6("2001:db8:1:2::1", 48);
    b = key_sa6("2001:db8:1:ffff::1", 48);
    c = key_sa6("2001:db8:2::1", 48);
    assert_true(key_same(&a, &b));
    assert_false(key_same(&a, &c));
    assert_key_text(&a, "2001:db8:1::");
    /* a prefix that is not a byte boundary */
    a = key_sa6("2001:db8:1:2::1", 47);
    b = key_sa6("2001:db8:1:2::1", 47);
    c = key_sa6("2001:db8::", 47);
    assert_true(key_same(&a, &c));
    assert_key_text(&b, "2001:db8::");
    a = key_sa6("2001:db8:3::", 47);
    assert_key_text(&a, "2001:db8:2::");
    /* /0 is one key for all IPv6; > 128 is 128 */
    a = key_sa6("2001:db8::1", 0);
    b = key_sa6("fe80::1", 0);
    assert_true(key_same(&a, &b));
    assert_key_text(&a, "::");
    a = key_sa6("2001:db8::1", 200);
    assert_key_text(&a, "2001:db8::1");
    /* the text path masks the same way */
    a = key_text("[2001:db8:1:2:3:4:5:6]:443", 64);
    b = key_sa6("2001:db8:1:2::", 64);
    assert_true(key_same(&a, &b));
}

static void
test_key_v4_mapped(void **state)
{
    (void)state;
    struct ip_key m = key_sa6("::ffff:192.0.2.1", 64);
    struct ip_key m128 = key_sa6("::ffff:192.0.2.1", 128);
    struct ip_key v4 = key4(0xC0000201);
    struct ip_key other = key_sa6("::ffff:192.0.2.2", 64);

    assert_int_equal(m.family, AF_INET);
    assert_true(key_same(&m, &v4));
    assert_true(key_same(&m128, &v4));
    /* counted exactly, whatever the IPv6 prefix */
    assert_false(key_same(&m, &other));
    assert_key_text(&m, "192.0.2.1");
    struct ip_key t = key_text("::ffff:192.0.2.1", 64);
    assert_true(key_same(&t, &v4));
    t = key_text("[::ffff:c000:201]:80", 0);
    assert_true(key_same(&t, &v4));
    /* ::192.0.2.1 (v4-compatible, deprecated) is not mapped */
    t = key_text("::192.0.2.1", 128);
    assert_int_equal(t.family, AF_INET6);

    struct iplimit *tab = iplimit_new();
    assert_int_equal(iplimit_acquire(tab, &m, 2), 1);
    assert_int_equal(iplimit_acquire(tab, &v4, 2), 1);
    assert_int_equal(iplimit_acquire(tab, &m128, 2), 0);
    iplimit_release(tab, &m);
    iplimit_release(tab, &v4);
    assert_int_equal(iplimit_entries(tab), 0);
    iplimit_free(tab);
}

static void
test_key_sockaddr_other(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    struct ip_key k, k2;

    memset(&ss, 0, sizeof ss);
    ss.ss_family = AF_UNIX;
    memset(&k, 0xAA, sizeof k);
    ip_key_from_sockaddr((struct sockaddr *)&ss, 64, &k);
    assert_int_equal(k.family, AF_UNSPEC);
    ss.ss_family = AF_UNSPEC;
    ip_key_from_sockaddr((struct sockaddr *)&ss, 64, &k2);
    assert_true(key_same(&k, &k2));
    assert_key_text(&k, "unknown");

    /* an IPv4 key leaves the rest of addr zero (it is hashed by the
     * table; the caller may compare keys with memcmp) */
    struct sockaddr_in in;
    memset(&in, 0, sizeof in);
    in.sin_family = AF_INET;
    in.sin_addr.s_addr = htonl(0x01020304);
    memset(&k, 0xAA, sizeof k);
    ip_key_from_sockaddr((struct sockaddr *)&in, 64, &k);
    for (int i = 4; i < 16; i++)
        assert_int_equal(k.addr[i], 0);
    assert_key_text(&k, "1.2.3.4");

    /* text truncated to the buffer, still terminated */
    char small[5];
    ip_key_text(&k, small, sizeof small);
    assert_string_equal(small, "1.2.");
}

static void
test_key_from_text(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;  /* want NULL = rejected */
    } v[] = {
        { "1.2.3.4", "1.2.3.4" },
        { "1.2.3.4:5678", "1.2.3.4" },
        { "1.2.3.4:0", "1.2.3.4" },
        { "1.2.3.4:65535", "1.2.3.4" },
        { "255.255.255.255", "255.255.255.255" },
        { "2001:db8::1", "2001:db8::1" },
        { "[2001:db8::1]", "2001:db8::1" },
        { "[2001:db8::1]:443", "2001:db8::1" },
        { "::1", "::1" },
        { "[::]:1", "::" },
        { "2001:DB8::A", "2001:db8::a" },
        { "", NULL },
        { "1.2.3", NULL },
        { "1.2.3.4.5", NULL },
        { "01.2.3.4", NULL },
        { "1.2.3.256", NULL },
        { "1.2.3.4:", NULL },
        { "1.2.3.4:65536", NULL },
        { "1.2.3.4:123456", NULL },
        { "1.2.3.4:-1", NULL },
        { "1.2.3.4:+1", NULL },
        { "1.2.3.4:80:80", NULL },
        { " 1.2.3.4", NULL },
        { "1.2.3.4 ", NULL },
        { "[1.2.3.4]", NULL },
        { "[1.2.3.4]:80", NULL },
        { "[2001:db8::1", NULL },
        { "2001:db8::1]", NULL },
        { "[2001:db8::1]443", NULL },
        { "[2001:db8::1]:", NULL },
        { "[2001:db8::1]:99999", NULL },
        { "[]", NULL },
        { "[]:80", NULL },
        { "fe80::1%eth0", NULL },
        { "unknown", NULL },
        { "_hidden", NULL },
        { "example.com", NULL },
        { "2001:db8::1::2", NULL },
        { ":::", NULL },
        { "1.2.3.4/32", NULL },
        { "[2001:0db8:0000:0000:0000:ffff:255.255.255.255]:65535x", NULL },
    };
    char t[64];

    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        struct ip_key k;
        int r = ip_key_from_text(v[i].in, strlen(v[i].in), 128, &k);
        if (v[i].want == NULL) {
            if (r != -1)
                fail_msg("accepted \"%s\"", v[i].in);
            continue;
        }
        if (r != 0)
            fail_msg("rejected \"%s\"", v[i].in);
        ip_key_text(&k, t, sizeof t);
        assert_string_equal(t, v[i].want);
    }
    /* len is honoured: no NUL needed, bytes past len ignored */
    struct ip_key k;
    assert_int_equal(ip_key_from_text("10.0.0.1, 10.0.0.2", 8, 128, &k), 0);
    assert_key_text(&k, "10.0.0.1");
    assert_int_equal(ip_key_from_text("1.2.3.4\0", 8, 128, &k), -1);
    const uint8_t *g = guarded("[2001:db8::7]:80", 16);
    assert_int_equal(ip_key_from_text((const char *)g, 16, 128, &k), 0);
    g = guarded("1.2.3.4", 7);
    assert_int_equal(ip_key_from_text((const char *)g, 7, 128, &k), 0);
    g = guarded("[", 1);
    assert_int_equal(ip_key_from_text((const char *)g, 1, 128, &k), -1);
    /* far too long */
    char big[300];
    memset(big, '1', sizeof big);
    assert_int_equal(ip_key_from_text(big, sizeof big, 128, &k), -1);
}

/* ---- CIDR */

static struct cidr_set *
set_of(const char *const *items, size_t n)
{
    struct strlist l = { (char **)items, n };
    char err[128] = "";
    struct cidr_set *s = cidr_set_new(&l, err, sizeof err);

    if (s == NULL)
        fail_msg("cidr_set_new: %s", err);
    return s;
}

static int
in_set(const struct cidr_set *s, const char *addr)
{
    struct ip_key k = key_text(addr, 128);

    return cidr_contains(s, &k);
}

static void
test_cidr_check(void **state)
{
    (void)state;
    static const char *const good[] = {
        "10.0.0.0/8", "0.0.0.0/0", "1.2.3.4/32", "1.2.3.4", "::/0",
        "2001:db8::/32", "::1", "::1/128", "10.1.2.3/8", "::ffff:0:0/96",
        "::ffff:10.0.0.0/104", "2001:db8::/0",
    };
    static const char *const bad[] = {
        "", "/8", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/+8",
        "10.0.0.0/08", "10.0.0.0/8/8", "10.0.0.0/ 8", " 10.0.0.0/8",
        "10.0.0.0/8 ", "10.0.0/8", "10.0.0.0.0/8", "2001:db8::/129",
        "2001:db8::/1000", "2001:db8:::/32", "[2001:db8::]/32", "host",
        "10.0.0.0/8x", "10.0.0.0/0x8", "1.2.3.4:80", "::/00",
        "10.0.0.256/24", "fe80::1%lo/64",
    };
    char err[128];

    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (cidr_check(good[i], err, sizeof err) != 0)
            fail_msg("rejected \"%s\": %s", good[i], err);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        if (cidr_check(bad[i], err, sizeof err) != -1)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_true(err[0] != '\0');
    }
    /* err is optional */
    assert_int_equal(cidr_check("nope", NULL, 0), -1);
    assert_int_equal(cidr_check(NULL, err, sizeof err), -1);

    /* a set with one bad item fails as a whole and names it */
    static const char *const mixed[] = { "10.0.0.0/8", "10.0.0.0/40" };
    struct strlist l = { (char **)mixed, 2 };
    err[0] = '\0';
    assert_null(cidr_set_new(&l, err, sizeof err));
    assert_non_null(strstr(err, "10.0.0.0/40"));
}

static void
test_cidr_contains(void **state)
{
    (void)state;
    struct cidr_set *s;

    /* empty sets, NULL list */
    s = cidr_set_new(NULL, NULL, 0);
    assert_non_null(s);
    assert_true(cidr_set_empty(s));
    assert_false(in_set(s, "1.2.3.4"));
    cidr_set_free(s);
    assert_true(cidr_set_empty(NULL));
    struct ip_key k = key_text("1.2.3.4", 128);
    assert_false(cidr_contains(NULL, &k));

    /* boundaries of a /8, /12, /32 */
    static const char *const a[] = { "10.0.0.0/8", "172.16.0.0/12",
                                     "192.0.2.7/32", "198.51.100.1" };
    s = set_of(a, 4);
    assert_false(cidr_set_empty(s));
    assert_true(in_set(s, "10.0.0.0"));
    assert_true(in_set(s, "10.255.255.255"));
    assert_false(in_set(s, "9.255.255.255"));
    assert_false(in_set(s, "11.0.0.0"));
    assert_true(in_set(s, "172.16.0.0"));
    assert_true(in_set(s, "172.31.255.255"));
    assert_false(in_set(s, "172.15.255.255"));
    assert_false(in_set(s, "172.32.0.0"));
    assert_true(in_set(s, "192.0.2.7"));
    assert_false(in_set(s, "192.0.2.6"));
    assert_false(in_set(s, "192.0.2.8"));
    assert_true(in_set(s, "198.51.100.1"));
    assert_false(in_set(s, "198.51.100.2"));
    /* v4 ranges never match IPv6, v4-mapped clients are IPv4 */
    assert_false(in_set(s, "::a00:1"));
    assert_false(in_set(s, "a00:1::"));
    assert_true(in_set(s, "::ffff:10.1.2.3"));
    struct ip_key raw;
    memset(&raw, 0, sizeof raw);
    raw.family = AF_INET6;                  /* unnormalised mapped key */
    raw.addr[10] = raw.addr[11] = 0xff;
    raw.addr[12] = 10;
    assert_true(cidr_contains(s, &raw));
    raw.family = AF_UNSPEC;
    assert_false(cidr_contains(s, &raw));
    cidr_set_free(s);

    /* /0 everything of its family, nothing of the other */
    static const char *const z4[] = { "0.0.0.0/0" };
    s = set_of(z4, 1);
    assert_true(in_set(s, "0.0.0.0"));
    assert_true(in_set(s, "255.255.255.255"));
    assert_false(in_set(s, "::1"));
    cidr_set_free(s);
    static const char *const z6[] = { "::/0" };
    s = set_of(z6, 1);
    assert_true(in_set(s, "::"));
    assert_true(in_set(s, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_false(in_set(s, "1.2.3.4"));
    /* ::/0 is read as IPv6 only, v4-mapped clients included out */
    assert_false(in_set(s, "::ffff:1.2.3.4"));
    cidr_set_free(s);

    /* IPv6: /32, /128, /127, odd bits, host bits dropped */
    static const char *const v6[] = { "2001:db8::/32", "::1",
                                      "fe80::/10", "2001:db9::10/127",
                                      "10.1.2.3/8" };
    s = set_of(v6, 5);
    assert_true(in_set(s, "2001:db8::"));
    assert_true(in_set(s, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_false(in_set(s, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_false(in_set(s, "2001:db9::"));
    assert_true(in_set(s, "::1"));
    assert_false(in_set(s, "::2"));
    assert_false(in_set(s, "::"));
    assert_true(in_set(s, "fe80::1"));
    assert_true(in_set(s, "febf:ffff::1"));
    assert_false(in_set(s, "fec0::1"));
    assert_true(in_set(s, "2001:db9::10"));
    assert_true(in_set(s, "2001:db9::11"));
    assert_false(in_set(s, "2001:db9::12"));
    assert_false(in_set(s, "2001:db9::f"));
    assert_true(in_set(s, "10.200.0.1"));
    cidr_set_free(s);

    /* a v4-mapped range is the IPv4 range */
    static const char *const m[] = { "::ffff:192.168.0.0/112" };
    s = set_of(m, 1);
    assert_true(in_set(s, "192.168.1.1"));
    assert_true(in_set(s, "::ffff:192.168.255.255"));
    assert_false(in_set(s, "192.169.0.0"));
    cidr_set_free(s);
    static const char *const m96[] = { "::ffff:0:0/96" };
    s = set_of(m96, 1);
    assert_true(in_set(s, "1.2.3.4"));
    assert_false(in_set(s, "::1"));
    cidr_set_free(s);
}

/* ---- X-Forwarded-For */

static void
test_xff(void **state)
{
    (void)state;
    static const char *const tr[] = { "10.0.0.0/8", "2001:db8::/32",
                                      "127.0.0.1" };
    static const struct {
        const char *in, *want;  /* want NULL = -1 */
    } v[] = {
        { "1.2.3.4", "1.2.3.4" },
        { "1.2.3.4, 10.0.0.1", "1.2.3.4" },
        { "5.6.7.8, 1.2.3.4, 10.0.0.1", "1.2.3.4" },     /* rightmost */
        { "1.2.3.4, 10.0.0.1, 10.9.9.9, 127.0.0.1", "1.2.3.4" },
        { "9.9.9.9,1.2.3.4,10.0.0.1", "1.2.3.4" },
        { "  1.2.3.4  ,\t10.0.0.1 ", "1.2.3.4" },
        { "1.2.3.4:5678", "1.2.3.4" },
        { "1.2.3.4:5678, 10.0.0.1:80", "1.2.3.4" },
        { "[2001:db9::1]:443, [2001:db8::1]:443", "2001:db9::1" },
        { "2001:db9::1, 2001:db8::5", "2001:db9::1" },
        { "[2001:db9::1]", "2001:db9::1" },
        { "::ffff:1.2.3.4, 10.0.0.1", "1.2.3.4" },
        { "::ffff:10.0.0.2, 10.0.0.1", NULL },      /* mapped trusted */
        /* garbage left of the client is never looked at */
        { "garbage, 1.2.3.4", "1.2.3.4" },
        { ", , 1.2.3.4", "1.2.3.4" },
        { "unknown, 1.2.3.4, 10.0.0.1", "1.2.3.4" },
        /* garbage reached before an untrusted hop */
        { "1.2.3.4, garbage, 10.0.0.1", NULL },
        { "1.2.3.4, unknown", NULL },
        { "1.2.3.4, , 10.0.0.1", NULL },
        { "1.2.3.4,", NULL },
        { "1.2.3.4, 10.0.0.1,", NULL },
        { "1.2.3.4 10.0.0.1", NULL },
        { "1.2.3.4:99999", NULL },
        { "[1.2.3.4]", NULL },
        { "1.2.3.4;", NULL },
        { "\"1.2.3.4\"", NULL },
        /* all trusted, empty */
        { "10.0.0.1", NULL },
        { "10.0.0.1, 127.0.0.1, 2001:db8::9", NULL },
        { "", NULL },
        { " ", NULL },
        { ",", NULL },
    };
    struct cidr_set *s = set_of(tr, 3);
    char out[64];

    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        size_t n = strlen(v[i].in);
        const char *g = (const char *)guarded(v[i].in, n);
        memset(out, 'X', sizeof out);
        int r = xff_client(g, n, s, out, sizeof out);
        if (v[i].want == NULL) {
            if (r != -1)
                fail_msg("\"%s\": got \"%s\"", v[i].in, out);
            continue;
        }
        if (r != 0)
            fail_msg("\"%s\": -1, want %s", v[i].in, v[i].want);
        assert_string_equal(out, v[i].want);
    }

    /* no trusted set: the rightmost entry */
    assert_int_equal(xff_client("1.1.1.1, 10.0.0.1", 17, NULL, out,
                                sizeof out), 0);
    assert_string_equal(out, "10.0.0.1");
    /* output too small: -1, never a truncated address */
    assert_int_equal(xff_client("1.2.3.4", 7, s, out, 7), -1);
    assert_int_equal(xff_client("1.2.3.4", 7, s, out, 8), 0);
    assert_string_equal(out, "1.2.3.4");
    /* len honoured */
    assert_int_equal(xff_client("1.2.3.4, 5.6.7.8", 7, s, out, sizeof out),
                     0);
    assert_string_equal(out, "1.2.3.4");
    /* a long chain of trusted hops */
    char chain[4096];
    size_t n = (size_t)snprintf(chain, sizeof chain, "203.0.113.9");
    for (int i = 0; i < 200; i++)
        n += (size_t)snprintf(chain + n, sizeof chain - n, ", 10.0.%d.%d",
                              i / 250, i % 250);
    assert_int_equal(xff_client(chain, n, s, out, sizeof out), 0);
    assert_string_equal(out, "203.0.113.9");
    cidr_set_free(s);
}

/* ---- PROXY protocol */

struct pvec {
    const char *name;
    const uint8_t *in;
    size_t len;
    int want;                   /* header length, or PROXY_ERROR */
    int family;                 /* for want > 0 */
    const char *addr;           /* source address text, want > 0, IP */
    int port;
};

/* Parse whole, then every prefix: a valid header answers INCOMPLETE up to
 * its last byte; an invalid one may fail early, but once ERROR it stays. */
static void
check_proxy(const struct pvec *v)
{
    struct sockaddr_storage ss;
    int r, seen_error = 0;

    memset(&ss, 0xAA, sizeof ss);
    r = proxy_parse(guarded(v->in, v->len), v->len, &ss);
    if (r != v->want)
        fail_msg("%s: whole %d, want %d", v->name, r, v->want);
    if (r > 0) {
        char t[INET6_ADDRSTRLEN] = "";
        assert_int_equal(ss.ss_family, v->family);
        if (v->family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &in->sin_addr, t, sizeof t);
            assert_string_equal(t, v->addr);
            assert_int_equal(ntohs(in->sin_port), v->port);
        } else if (v->family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &in6->sin6_addr, t, sizeof t);
            assert_string_equal(t, v->addr);
            assert_int_equal(ntohs(in6->sin6_port), v->port);
        }
        /* trailing bytes (the TLS hello) change nothing */
        uint8_t more[1024];
        assert_true(v->len + 5 <= sizeof more);
        memcpy(more, v->in, v->len);
        memcpy(more + v->len, "\x16\x03\x01\x02\x00", 5);
        assert_int_equal(proxy_parse(guarded(more, v->len + 5), v->len + 5,
                                     NULL), r);
    }
    for (size_t k = 0; k < v->len; k++) {
        int rk = proxy_parse(guarded(v->in, k), k, &ss);
        if (v->want > 0) {
            if ((size_t)v->want > k && rk != PROXY_INCOMPLETE)
                fail_msg("%s: prefix %zu gave %d", v->name, k, rk);
            if ((size_t)v->want <= k && rk != v->want)
                fail_msg("%s: prefix %zu gave %d", v->name, k, rk);
            continue;
        }
        if (rk != PROXY_INCOMPLETE && rk != PROXY_ERROR)
            fail_msg("%s: prefix %zu gave %d", v->name, k, rk);
        if (seen_error && rk != PROXY_ERROR)
            fail_msg("%s: prefix %zu: ERROR did not stick", v->name, k);
        seen_error |= rk == PROXY_ERROR;
    }
}

#define TXT(s) (const uint8_t *)(s), sizeof(s) - 1

static void
test_proxy_v1(void **state)
{
    (void)state;
    static const struct pvec v[] = {
        { "tcp4", TXT("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"),
          45, AF_INET, "192.0.2.1", 56324 },
        { "tcp4+data",
          TXT("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /"),
          45, AF_INET, "192.0.2.1", 56324 },
        { "tcp6", TXT("PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n"),
          44, AF_INET6, "2001:db8::1", 0 },
        { "tcp6 mapped",
          TXT("PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n"),
          37, AF_INET6, "::ffff:192.0.2.1", 1 },
        { "max len",
          TXT("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
              "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
          104, AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535 },
        { "unknown", TXT("PROXY UNKNOWN\r\n"), 15, AF_UNSPEC, NULL, 0 },
        { "unknown+addrs",
          TXT("PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n"),
          47, AF_UNSPEC, NULL, 0 },
        { "not proxy", TXT("GET / HTTP/1.1\r\n"), PROXY_ERROR, 0, NULL, 0 },
        { "lower", TXT("proxy TCP4 1.2.3.4 1.2.3.5 1 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "tls hello", TXT("\x16\x03\x01\x02\x00\x01"),
          PROXY_ERROR, 0, NULL, 0 },
        { "PROXYX", TXT("PROXYX TCP4"), PROXY_ERROR, 0, NULL, 0 },
        { "bare lf", TXT("PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "cr junk", TXT("PROXY TCP4 1.2.3.4 1.2.3.5 1 2\rX\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "empty", TXT("PROXY \r\n"), PROXY_ERROR, 0, NULL, 0 },
        { "tcp4 only", TXT("PROXY TCP4\r\n"), PROXY_ERROR, 0, NULL, 0 },
        { "UNKNOWNX", TXT("PROXY UNKNOWNX\r\n"), PROXY_ERROR, 0, NULL, 0 },
        { "udp4", TXT("PROXY UDP4 1.2.3.4 1.2.3.5 1 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "tcp4 v6 addr", TXT("PROXY TCP4 ::1 ::2 1 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "tcp6 v4 addr", TXT("PROXY TCP6 1.2.3.4 1.2.3.5 1 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "bad addr", TXT("PROXY TCP4 1.2.3 1.2.3.5 1 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "leading zero addr", TXT("PROXY TCP4 01.2.3.4 1.2.3.5 1 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "port 65536", TXT("PROXY TCP4 1.2.3.4 1.2.3.5 65536 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "port lead 0", TXT("PROXY TCP4 1.2.3.4 1.2.3.5 01 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "port sign", TXT("PROXY TCP4 1.2.3.4 1.2.3.5 +1 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "port hex", TXT("PROXY TCP4 1.2.3.4 1.2.3.5 0x1 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "two spaces", TXT("PROXY TCP4  1.2.3.4 1.2.3.5 1 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "trailing space", TXT("PROXY TCP4 1.2.3.4 1.2.3.5 1 2 \r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "extra field", TXT("PROXY TCP4 1.2.3.4 1.2.3.5 1 2 3\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "missing port", TXT("PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "tab", TXT("PROXY TCP4\t1.2.3.4 1.2.3.5 1 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
        { "nul", TXT("PROXY TCP4 1.2.3.4\0 1.2.3.5 1 2\r\n"),
          PROXY_ERROR, 0, NULL, 0 },
    };

    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        check_proxy(&v[i]);

    /* -1 as soon as the prefix cannot be "PROXY " */
    assert_int_equal(proxy_parse((const uint8_t *)"G", 1, NULL),
                     PROXY_ERROR);
    assert_int_equal(proxy_parse((const uint8_t *)"PROXX", 5, NULL),
                     PROXY_ERROR);
    assert_int_equal(proxy_parse((const uint8_t *)"PROX", 4, NULL),
                     PROXY_INCOMPLETE);
    assert_int_equal(proxy_parse((const uint8_t *)"", 0, NULL),
                     PROXY_INCOMPLETE);
    /* the 107-byte ceiling: whole and every prefix */
    uint8_t buf[120];
    struct pvec pv;
    memcpy(buf, "PROXY UNKNOWN ", 14);
    memset(buf + 14, 'x', sizeof buf - 14);
    memcpy(buf + 105, "\r\n", 2);
    pv = (struct pvec){ "unknown 107", buf, 107, 107, AF_UNSPEC, NULL, 0 };
    check_proxy(&pv);
    memset(buf + 14, 'x', sizeof buf - 14);
    memcpy(buf + 106, "\r\n", 2);
    pv = (struct pvec){ "unknown 108", buf, 108, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&pv);
    memset(buf + 14, 'x', sizeof buf - 14);
    pv = (struct pvec){ "no crlf", buf, 107, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&pv);
    /* 106 bytes without CRLF may still end at 107 */
    memcpy(buf, "PROXY UNKNOWN ", 14);
    memset(buf + 14, 'x', sizeof buf - 14);
    assert_int_equal(proxy_parse(guarded(buf, 105), 105, NULL),
                     PROXY_INCOMPLETE);
    buf[105] = '\r';
    assert_int_equal(proxy_parse(guarded(buf, 106), 106, NULL),
                     PROXY_INCOMPLETE);
    buf[106] = '\n';
    assert_int_equal(proxy_parse(guarded(buf, 107), 107, NULL), 107);
    /* CR at the 107th byte: the LF would be the 108th */
    buf[105] = 'x';
    buf[106] = '\r';
    assert_int_equal(proxy_parse(guarded(buf, 107), 107, NULL),
                     PROXY_ERROR);
}

/* Build a v2 header: cmd, fam, address block and TLVs. */
static size_t
v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const uint8_t *body,
   size_t blen)
{
    static const uint8_t sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                     0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
    memcpy(out, sig, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    out[14] = (uint8_t)(blen >> 8);
    out[15] = (uint8_t)blen;
    if (blen > 0)
        memcpy(out + 16, body, blen);
    return 16 + blen;
}

static void
test_proxy_v2(void **state)
{
    (void)state;
    static const uint8_t a4[12] = { 192, 0, 2, 1, 198, 51, 100, 2,
                                    0xDC, 0x04, 0x01, 0xBB };
    uint8_t a6[36];
    uint8_t body[600], h[700];
    struct pvec v;
    size_t n;

    memset(a6, 0, sizeof a6);
    memset(body, 0, sizeof body);
    a6[0] = 0x20; a6[1] = 0x01; a6[2] = 0x0d; a6[3] = 0xb8; a6[15] = 1;
    a6[16] = 0x20; a6[17] = 0x01; a6[31] = 2;
    a6[32] = 0x01; a6[33] = 0xBB; a6[34] = 0x00; a6[35] = 0x50;

    /* TCP4 */
    n = v2(h, 0x21, 0x11, a4, 12);
    v = (struct pvec){ "v2 tcp4", h, n, 28, AF_INET, "192.0.2.1", 56324 };
    check_proxy(&v);

    /* TCP6 */
    n = v2(h, 0x21, 0x21, a6, 36);
    v = (struct pvec){ "v2 tcp6", h, n, 52, AF_INET6, "2001:db8::1", 443 };
    check_proxy(&v);

    /* TCP4 with TLVs: ALPN, authority, NOOP padding, empty value */
    memcpy(body, a4, 12);
    n = 12;
    memcpy(body + n, "\x01\x00\x02h2", 5);
    n += 5;
    memcpy(body + n, "\x02\x00\x0b" "example.com", 14);
    n += 14;
    memcpy(body + n, "\x04\x00\x03\x00\x00\x00", 6);
    n += 6;
    memcpy(body + n, "\xEA\x00\x00", 3);
    n += 3;
    size_t hn = v2(h, 0x21, 0x11, body, n);
    v = (struct pvec){ "v2 tlvs", h, hn, (int)hn, AF_INET, "192.0.2.1",
                       56324 };
    check_proxy(&v);

    /* a TLV running past the end, or a partial TLV header */
    body[12 + 1] = 0x00;
    body[12 + 2] = 0x40;
    hn = v2(h, 0x21, 0x11, body, n);
    v = (struct pvec){ "v2 tlv overrun", h, hn, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    memcpy(body + 12, "\x01\x00", 2);
    hn = v2(h, 0x21, 0x11, body, 14);
    v = (struct pvec){ "v2 tlv cut", h, hn, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);

    /* LOCAL: addresses ignored whatever the family */
    n = v2(h, 0x20, 0x00, NULL, 0);
    v = (struct pvec){ "v2 local", h, n, 16, AF_UNSPEC, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x20, 0x11, a4, 12);
    v = (struct pvec){ "v2 local tcp4", h, n, 28, AF_UNSPEC, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x20, 0x12, a4, 7);
    v = (struct pvec){ "v2 local odd", h, n, 23, AF_UNSPEC, NULL, 0 };
    check_proxy(&v);

    /* PROXY with UNSPEC: no address */
    n = v2(h, 0x21, 0x00, NULL, 0);
    v = (struct pvec){ "v2 unspec", h, n, 16, AF_UNSPEC, NULL, 0 };
    check_proxy(&v);
    /* UNIX stream: no IP */
    memset(body, 0, 216);
    n = v2(h, 0x21, 0x31, body, 216);
    v = (struct pvec){ "v2 unix", h, n, 232, AF_UNSPEC, NULL, 0 };
    check_proxy(&v);

    /* the 536-byte ceiling */
    memcpy(body, a4, 12);
    body[12] = 0x04;                        /* NOOP TLV filling the rest */
    body[13] = (uint8_t)((520 - 15) >> 8);
    body[14] = (uint8_t)(520 - 15);
    memset(body + 15, 0, 520 - 15);
    n = v2(h, 0x21, 0x11, body, 520);
    v = (struct pvec){ "v2 536", h, n, 536, AF_INET, "192.0.2.1", 56324 };
    check_proxy(&v);
    body[14]++;
    n = v2(h, 0x21, 0x11, body, 521);
    v = (struct pvec){ "v2 537", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    /* refused from the length field alone, before the body arrives */
    assert_int_equal(proxy_parse(guarded(h, 16), 16, NULL), PROXY_ERROR);

    /* errors */
    n = v2(h, 0x11, 0x11, a4, 12);
    v = (struct pvec){ "v2 version 1", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x31, 0x11, a4, 12);
    v = (struct pvec){ "v2 version 3", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x22, 0x11, a4, 12);
    v = (struct pvec){ "v2 cmd 2", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x21, 0x12, a4, 12);
    v = (struct pvec){ "v2 udp4", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x21, 0x22, a6, 36);
    v = (struct pvec){ "v2 udp6", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x21, 0x32, body, 216);
    v = (struct pvec){ "v2 unix dgram", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x21, 0x41, a4, 12);
    v = (struct pvec){ "v2 family 4", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x21, 0x10, a4, 12);
    v = (struct pvec){ "v2 inet unspec", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x21, 0x11, a4, 11);
    v = (struct pvec){ "v2 tcp4 short", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x21, 0x21, a6, 35);
    v = (struct pvec){ "v2 tcp6 short", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x21, 0x21, a4, 12);
    v = (struct pvec){ "v2 tcp6 len 12", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    n = v2(h, 0x21, 0x11, a4, 12);
    h[11] = 0x0B;                           /* signature off by one bit */
    v = (struct pvec){ "v2 bad sig", h, n, PROXY_ERROR, 0, NULL, 0 };
    check_proxy(&v);
    assert_int_equal(proxy_parse(guarded(h, 11), 11, NULL),
                     PROXY_INCOMPLETE);
    assert_int_equal(proxy_parse(guarded(h, 12), 12, NULL), PROXY_ERROR);
    /* a v1 line after the v2 signature's first byte */
    assert_int_equal(proxy_parse((const uint8_t *)"\rPROXY", 6, NULL),
                     PROXY_ERROR);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_basic),
        cmocka_unit_test(test_table_families),
        cmocka_unit_test(test_table_churn),
        cmocka_unit_test(test_table_threads),
        cmocka_unit_test(test_table_race_exact),
        cmocka_unit_test(test_key_v6_prefix),
        cmocka_unit_test(test_key_v4_mapped),
        cmocka_unit_test(test_key_sockaddr_other),
        cmocka_unit_test(test_key_from_text),
        cmocka_unit_test(test_cidr_check),
        cmocka_unit_test(test_cidr_contains),
        cmocka_unit_test(test_xff),
        cmocka_unit_test(test_proxy_v1),
        cmocka_unit_test(test_proxy_v2),
    };

    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
