/*
 * await.h - handles for asynchronous answers that may outlive what they
 * answer.
 *
 * A connection that waits for an answer (a Redis reply) parks itself in
 * its worker's table and hands out a reference: the slot's index and its
 * generation. The answer comes back with the reference; await_resolve()
 * gives the owner only if the slot still belongs to that same wait. When
 * the connection goes first (closed, freed), await_cancel() bumps the
 * generation, so a late answer resolves to nothing and is ignored, even
 * when the slot has been reused by another connection since.
 *
 * A table belongs to one worker thread (no locking). References fit in a
 * pointer-sized integer (await_pack), for libraries that carry a void *.
 */
#ifndef WSGUARD_AWAIT_H
#define WSGUARD_AWAIT_H

#include <stdint.h>

struct await_slot {
    void *owner;                /* NULL when free */
    uint32_t gen;               /* bumped each time the slot is freed */
    uint32_t next_free;         /* free list link (index + 1, 0 = end) */
};

struct await_table {
    struct await_slot *v;
    uint32_t n, cap;
    uint32_t free_head;         /* index + 1 of the first free slot */
};

struct await_ref {
    uint32_t idx, gen;
};

/* Park owner: fills *ref. 0, or -1 when out of memory. */
int await_park(struct await_table *t, void *owner, struct await_ref *ref);

/* The owner of a wait that is still current, which ends the wait (the
 * slot is freed); NULL for a stale or unknown reference. */
void *await_resolve(struct await_table *t, struct await_ref ref);

/* The owner no longer waits (it is going away): a later answer to ref
 * resolves to NULL. A stale reference is ignored. */
void await_cancel(struct await_table *t, struct await_ref ref);

/* Free the table (its owners must have cancelled or resolved). */
void await_table_free(struct await_table *t);

static inline uintptr_t
await_pack(struct await_ref r)
{
    return (uintptr_t)r.idx << 32 | r.gen;
}

static inline struct await_ref
await_unpack(uintptr_t v)
{
    struct await_ref r = { (uint32_t)(v >> 32), (uint32_t)v };
    return r;
}

#endif
