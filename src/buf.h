/*
 * buf.h - the relay buffer: one per direction while bytes are in flight,
 * recycled through a per-worker freelist (worker_buf_get/put), so the
 * data path allocates nothing per message. Invariant:
 *     0 ≤ pos ≤ parsed ≤ last ≤ BUF_SIZE
 * [pos, parsed) validated and waiting for the destination,
 * [parsed, last) received, not yet validated.
 */
#ifndef WSGUARD_BUF_H
#define WSGUARD_BUF_H

#include <stdint.h>

#define BUF_SIZE 16384

struct buf {
    struct buf *next;           /* freelist link */
    uint32_t pos, parsed, last;
    uint8_t data[BUF_SIZE];
};

#endif
