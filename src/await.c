/*
 * await.c - generation-counted handles for asynchronous answers (see
 * await.h).
 */
#include "await.h"

#include <stdlib.h>

int
await_park(struct await_table *t, void *owner, struct await_ref *ref)
{
    uint32_t i;

    if (t->free_head != 0) {
        i = t->free_head - 1;
        t->free_head = t->v[i].next_free;
    } else {
        if (t->n == t->cap) {
            uint32_t cap = t->cap ? 2 * t->cap : 64;
            struct await_slot *v;
            if (cap <= t->cap ||
                (v = realloc(t->v, (size_t)cap * sizeof *v)) == NULL)
                return -1;
            t->v = v;
            t->cap = cap;
        }
        i = t->n++;
        t->v[i].gen = 0;
    }
    t->v[i].owner = owner;
    t->v[i].next_free = 0;
    ref->idx = i;
    ref->gen = t->v[i].gen;
    return 0;
}

static void
slot_free(struct await_table *t, uint32_t i)
{
    t->v[i].owner = NULL;
    t->v[i].gen++;
    t->v[i].next_free = t->free_head;
    t->free_head = i + 1;
}

static int
current(const struct await_table *t, struct await_ref ref)
{
    return ref.idx < t->n && t->v[ref.idx].owner != NULL
           && t->v[ref.idx].gen == ref.gen;
}

void *
await_resolve(struct await_table *t, struct await_ref ref)
{
    void *owner;

    if (!current(t, ref))
        return NULL;
    owner = t->v[ref.idx].owner;
    slot_free(t, ref.idx);
    return owner;
}

void
await_cancel(struct await_table *t, struct await_ref ref)
{
    if (current(t, ref))
        slot_free(t, ref.idx);
}

void
await_table_free(struct await_table *t)
{
    free(t->v);
    t->v = NULL;
    t->n = t->cap = t->free_head = 0;
}
