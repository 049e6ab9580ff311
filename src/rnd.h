/*
 * rnd.h - a pool of random bytes for masking keys and ping payloads.
 *
 * RFC 6455 §5.3 wants masking keys that cannot be predicted; asking the
 * CSPRNG for 4 bytes per frame is slow, so a pool is refilled 4 KiB at a
 * time. The refill function is injected (RAND_bytes in the server; the
 * relay's fuzz target uses a deterministic one), so what uses the pool
 * stays testable without OpenSSL's generator.
 */
#ifndef WSGUARD_RND_H
#define WSGUARD_RND_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct rnd {
    uint8_t pool[4096];
    unsigned off;               /* bytes used; sizeof pool = empty */
    void (*refill)(uint8_t *out, size_t n);
};

/* A pool refilled by fn (NULL: the CSPRNG, RAND_bytes, aborting when it
 * cannot be seeded: nothing the process does with TLS is safe then). */
void rnd_init(struct rnd *r, void (*fn)(uint8_t *out, size_t n));

/* Fill the pool again (rnd_take does when it runs out). */
void rnd_refill(struct rnd *r);

/* n <= sizeof pool bytes into out (a constant n, such as a masking key's
 * 4, compiles to a single move). */
static inline void
rnd_take(struct rnd *r, uint8_t *out, size_t n)
{
    if (r->off + n > sizeof r->pool)
        rnd_refill(r);
    memcpy(out, r->pool + r->off, n);
    r->off += (unsigned)n;
}

#endif
