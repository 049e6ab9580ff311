/*
 * fuzz_ws.c - the frame codec driven the way the relay drives it.
 *
 * Input: byte 0 picks the direction (bit 0: frames must be masked) and
 * max_payload (bits 1-3); byte 1 seeds the chunk sizes; the rest is a byte
 * stream of frames. The model receiver of wsmodel.h (header spill buffer
 * like uWS, parse -> check -> unmask -> UTF-8 / close check -> msg_end)
 * eats the stream three ways: in one piece, in fuzzer-chosen chunks (uWS
 * makeChunked) and byte by byte. Every piece is an exact-size heap copy,
 * so ASan catches any read past it, and all three runs must end with the
 * same verdict: same close code at the same frame, same frames and
 * messages, same unmasked payload. Anything else aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"
#include "ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                        \
    do {                                                                 \
        fprintf(stderr, "fuzz_ws: " __VA_ARGS__);                        \
        fputc('\n', stderr);                                             \
        abort();                                                         \
    } while (0)

static const uint64_t max_payloads[8] = {
    0, 1, 16, 125, 126, 1000, 65536, UINT64_MAX
};

#include "wsmodel.h"

static void
rx_compare(const struct rx *a, const struct rx *b, const char *how)
{
    if (a->done != b->done || a->code != b->code || a->closed != b->closed
        || a->pos != b->pos || a->frames != b->frames
        || a->messages != b->messages || a->hash != b->hash
        || a->spill_n != b->spill_n || a->in_payload != b->in_payload
        || a->remaining != b->remaining || a->m.in_msg != b->m.in_msg
        || a->m.opcode != b->m.opcode || a->m.len != b->m.len
        || a->m.utf8 != b->m.utf8)
        FAIL("%s differs from one-shot: code %d/%d pos %llu/%llu "
             "frames %llu/%llu", how, b->code, a->code,
             (unsigned long long)b->pos, (unsigned long long)a->pos,
             (unsigned long long)b->frames, (unsigned long long)a->frames);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rx whole, chunked, bytewise;

    if (size < 2)
        return 0;
    const uint8_t *p = data + 2;
    size_t n = size - 2;
    uint32_t seed = data[1] * 2654435761u + 1;

    int masked = data[0] & 1;
    uint64_t max = max_payloads[(data[0] >> 1) & 7];

    rx_init(&whole, masked, max);
    rx_piece(&whole, p, n);

    rx_init(&chunked, masked, max);
    for (size_t off = 0; off < n;) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        /* sizes 0..limit, limit picked by the seed byte: small pieces
         * split headers, large ones span frames */
        size_t limit = (size_t)4 << (data[1] & 7);
        size_t c = seed % (limit + 1);
        if (c > n - off)
            c = n - off;
        rx_piece(&chunked, p + off, c);
        off += c;
    }
    rx_compare(&whole, &chunked, "chunked");

    rx_init(&bytewise, masked, max);
    for (size_t off = 0; off < n; off++)
        rx_piece(&bytewise, p + off, 1);
    rx_compare(&whole, &bytewise, "bytewise");
    return 0;
}
