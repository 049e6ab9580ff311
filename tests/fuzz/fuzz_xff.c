/*
 * fuzz_xff.c - differential fuzz target for xff_client().
 *
 * Input: byte 0 picks the output capacity, the rest is an X-Forwarded-For
 * value, checked against a fixed trusted set. A reference walk written
 * here (split left to right, then scan the pieces from the right) must
 * give the same answer; a client found must parse back as an address
 * outside the trusted set; a short output buffer gives -1, never a
 * truncated address.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netaddr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                        \
    do {                                                                 \
        fprintf(stderr, "fuzz_xff: " __VA_ARGS__);                       \
        fputc('\n', stderr);                                             \
        abort();                                                         \
    } while (0)

static struct cidr_set *trusted;

static void
init_trusted(void)
{
    static char *items[] = {
        "10.0.0.0/8", "192.168.0.0/16", "127.0.0.1", "2001:db8::/32",
        "::1", "fd00::/8", "::ffff:172.16.0.0/108",
    };
    struct strlist l = { items, sizeof items / sizeof items[0] };
    char err[128];

    trusted = cidr_set_new(&l, err, sizeof err);
    if (trusted == NULL)
        FAIL("trusted set: %s", err);
}

/* The reference: returns 0 with the address key in *k, or -1. */
static int
ref_client(const char *v, size_t len, struct ip_key *k)
{
    size_t starts[4097], ends[4097], n = 0, s = 0;

    for (size_t i = 0; i <= len; i++) {
        if (i == len || v[i] == ',') {
            starts[n] = s;
            ends[n] = i;
            n++;
            s = i + 1;
        }
    }
    while (n-- > 0) {
        size_t a = starts[n], b = ends[n];
        while (a < b && (v[a] == ' ' || v[a] == '\t'))
            a++;
        while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
            b--;
        if (ip_key_from_text(v + a, b - a, 128, k) != 0)
            return -1;
        if (!cidr_contains(trusted, k))
            return 0;
    }
    return -1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4097)
        return 0;
    if (trusted == NULL)
        init_trusted();

    size_t cap = (size_t)(data[0] % 66);
    size_t len = size - 1;
    char *v = malloc(len ? len : 1);
    char out[64], small[66];
    struct ip_key k, ck;
    if (v == NULL)
        abort();
    memcpy(v, data + 1, len);

    memset(out, 'Z', sizeof out);
    int r = xff_client(v, len, trusted, out, sizeof out);
    int rr = ref_client(v, len, &k);
    if (r != rr)
        FAIL("xff_client %d, reference %d", r, rr);
    if (r == 0) {
        char want[64];
        if (memchr(out, '\0', sizeof out) == NULL)
            FAIL("output not terminated");
        ip_key_text(&k, want, sizeof want);
        if (strcmp(out, want) != 0)
            FAIL("client \"%s\", reference \"%s\"", out, want);
        if (ip_key_from_text(out, strlen(out), 128, &ck) != 0)
            FAIL("client \"%s\" does not parse", out);
        if (cidr_contains(trusted, &ck))
            FAIL("client \"%s\" is trusted", out);
    }

    /* any capacity: the whole address or -1 */
    memset(small, 'Z', sizeof small);
    int rs = xff_client(v, len, trusted, small, cap);
    if (r == -1 || strlen(out) >= cap) {
        if (rs != -1)
            FAIL("cap %zu: %d", cap, rs);
    } else if (rs != 0 || strcmp(small, out) != 0) {
        FAIL("cap %zu: %d \"%.*s\"", cap, rs, (int)cap, small);
    }
    for (size_t i = cap; i < sizeof small; i++)
        if (small[i] != 'Z')
            FAIL("cap %zu: wrote byte %zu", cap, i);

    free(v);
    return 0;
}
