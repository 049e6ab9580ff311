/*
 * buf.c - the relay buffer pool (see buf.h).
 */
#include "buf.h"

struct buf *
bufpool_get(struct bufpool *p)
{
    struct buf *b = p->free;

    if (b != NULL) {
        p->free = b->next;
        p->n--;
    } else if ((b = malloc(sizeof *b)) == NULL) {
        return NULL;
    }
    b->next = NULL;
    b->pos = b->parsed = b->last = 0;
    return b;
}

void
bufpool_put(struct bufpool *p, struct buf *b)
{
    if (p->n >= p->max) {
        free(b);
        return;
    }
    b->next = p->free;
    p->free = b;
    p->n++;
}

void
bufpool_clear(struct bufpool *p)
{
    struct buf *b;

    while ((b = p->free) != NULL) {
        p->free = b->next;
        free(b);
    }
    p->n = 0;
}
