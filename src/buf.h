/*
 * buf.h - the relay buffer and the pool it comes from.
 *
 * One buffer per direction while bytes are in flight, recycled through a
 * per-worker pool, so the data path allocates nothing per message.
 * Invariant (BUF_CHECK, compiled into the sanitizer and fuzz builds):
 *     0 <= pos <= parsed <= last <= BUF_SIZE
 * [pos, parsed) validated and waiting for the destination,
 * [parsed, last) received, not yet validated.
 */
#ifndef WSGUARD_BUF_H
#define WSGUARD_BUF_H

#include <stdint.h>
#include <stdlib.h>

#define BUF_SIZE 16384

struct buf {
    struct buf *next;           /* pool link */
    uint32_t pos, parsed, last;
    uint8_t data[BUF_SIZE];
};

/* Idle buffers of one worker, at most max of them kept. */
struct bufpool {
    struct buf *free;
    unsigned n, max;
};

/* An empty buffer from the pool (or malloc), or NULL when out of memory. */
struct buf *bufpool_get(struct bufpool *p);
/* Give b back (freed when the pool holds max already). */
void bufpool_put(struct bufpool *p, struct buf *b);
/* Free every idle buffer. */
void bufpool_clear(struct bufpool *p);

/* Drop the consumed bytes [0, pos) when everything validated has been
 * written (pos == parsed): what is left (at most one partial frame
 * header or control frame) moves to the front. */
static inline void
buf_compact(struct buf *b)
{
    if (b->pos == b->parsed && b->parsed > 0) {
        uint32_t rest = b->last - b->parsed;
        if (rest > 0)
            __builtin_memmove(b->data, b->data + b->parsed, rest);
        b->last = rest;
        b->pos = b->parsed = 0;
    }
}

#if defined(WSGUARD_CHECKS) || defined(__SANITIZE_ADDRESS__) \
    || defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
#define BUF_CHECK(b)                                                     \
    do {                                                                 \
        if ((b) != NULL && !((b)->pos <= (b)->parsed                     \
                             && (b)->parsed <= (b)->last                 \
                             && (b)->last <= BUF_SIZE))                  \
            abort();                                                     \
    } while (0)
#else
#define BUF_CHECK(b) ((void)0)
#endif

#endif
