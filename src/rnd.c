/*
 * rnd.c - the random-byte pool (see rnd.h).
 */
#include "rnd.h"

#include <stdlib.h>

#include <openssl/rand.h>

static void
csprng(uint8_t *out, size_t n)
{
    if (RAND_bytes(out, (int)n) != 1)
        abort();
}

void
rnd_init(struct rnd *r, void (*fn)(uint8_t *out, size_t n))
{
    r->refill = fn != NULL ? fn : csprng;
    r->off = sizeof r->pool;
}

void
rnd_refill(struct rnd *r)
{
    r->refill(r->pool, sizeof r->pool);
    r->off = 0;
}
