/*
 * ws.c - RFC 6455 frame codec.
 *
 * Why hand-written: a relay has to validate every frame and forward it
 * incrementally out of its own fixed buffers - header first (to refuse an
 * oversized or illegal frame before a byte of its payload goes out), then
 * payload in whatever pieces TCP/TLS delivers, unmasked and re-masked in
 * place. The WebSocket libraries packaged in Debian (libwebsockets,
 * wslay, ...) own the socket or the message buffering and call back with
 * whole messages; none offers the header/payload split as pure functions
 * over the caller's bytes, which is all this needs (~200 lines).
 *
 * Message state (struct ws_msg) as kept here:
 *   in_msg  1 while more frames of a fragmented message are expected, i.e.
 *           from a data frame with fin = 0 up to the header of its final
 *           continuation (fin = 1), where it drops back to 0;
 *   opcode  WS_OP_TEXT/WS_OP_BINARY of the current message, set by its
 *           first frame - also for a single-frame message - and kept until
 *           ws_msg_end(), so the caller knows to feed payload to the UTF-8
 *           validator for every frame of a text message;
 *   utf8    validator state, reset when a message opens;
 *   len     payload bytes of the message so far (headers seen).
 * ws_msg_end() zeroes all of it.
 */
#if defined(__SSE2__)
#include <emmintrin.h>              /* baseline on x86-64 */
#endif
#include "ws.h"

#include <string.h>

#include "utf8.h"

static int
ws_opcode_known(unsigned op)
{
    /* RFC 6455 §5.2: 0x3-0x7 and 0xB-0xF are reserved. */
    return op <= WS_OP_BINARY || (op >= WS_OP_CLOSE && op <= WS_OP_PONG);
}

int
ws_parse_header(const uint8_t *p, size_t n, struct ws_header *h)
{
    size_t need;
    unsigned len7;
    uint64_t len;
    int masked;

    if (n < 2)
        return WS_INCOMPLETE;
    masked = p[1] >> 7;
    len7 = p[1] & 0x7F;
    need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (masked ? 4 : 0);
    /* Wait for the whole header, mask key included, before judging any of
     * it: the result for a prefix never depends on where it was cut. */
    if (n < need)
        return WS_INCOMPLETE;

    if (len7 < 126) {
        len = len7;
    } else if (len7 == 126) {
        len = (uint64_t)p[2] << 8 | p[3];
        /* RFC 6455 §5.2: "the minimal number of bytes MUST be used". */
        if (len < 126)
            return WS_ERROR;
    } else {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        /* RFC 6455 §5.2: "the most significant bit MUST be 0". */
        if (len >> 63)
            return WS_ERROR;
        if (len < 65536)
            return WS_ERROR;
    }

    h->fin = p[0] >> 7;
    h->rsv = (p[0] >> 4) & 0x7;
    h->opcode = p[0] & 0xF;
    h->masked = (uint8_t)masked;
    if (masked)
        memcpy(h->key, p + need - 4, 4);
    else
        memset(h->key, 0, 4);
    h->len = len;
    h->hdr_len = (uint8_t)need;
    return (int)need;
}

int
ws_check_header(struct ws_msg *m, const struct ws_header *h,
                int expect_masked, uint64_t max_payload)
{
    uint64_t base;

    /* RFC 6455 §5.2: RSV bits MUST be 0 unless an extension defines them.
     * The only one wsguard agrees to is permessage-deflate, on the client
     * leg: RFC 7692 §6.1, RSV1 on a message's first frame marks it
     * compressed; on a control frame or a continuation it is an error. */
    if (h->rsv != 0 &&
        (h->rsv != 4 || !m->rsv1_ok || (h->opcode & 0x8) ||
         h->opcode == WS_OP_CONT))
        return WS_CLOSE_PROTOCOL;
    /* RFC 6455 §5.2: reserved opcodes fail the connection. */
    if (!ws_opcode_known(h->opcode))
        return WS_CLOSE_PROTOCOL;
    /* RFC 6455 §5.1: clients MUST mask, servers MUST NOT. */
    if (!h->masked != !expect_masked)
        return WS_CLOSE_PROTOCOL;

    if (h->opcode & 0x8) {
        /* RFC 6455 §5.5: control frames are never fragmented and carry
         * at most 125 bytes. They may sit between fragments (§5.4), so
         * they leave the data message state alone. */
        if (!h->fin || h->len > WS_MAX_CONTROL)
            return WS_CLOSE_PROTOCOL;
        return 0;
    }

    /* RFC 6455 §5.4: fragments of one message arrive in order and are not
     * interleaved with another data message. */
    if (h->opcode == WS_OP_CONT) {
        if (!m->in_msg)
            return WS_CLOSE_PROTOCOL;
        base = m->len;
    } else {
        if (m->in_msg)
            return WS_CLOSE_PROTOCOL;
        base = 0;               /* a new message, whatever m still holds */
    }

    /* The wire size of a compressed message gets a little slack (its
     * inflated size is checked while inflating). */
    int compressed = h->opcode == WS_OP_CONT ? m->compressed : h->rsv != 0;
    if (compressed && max_payload != 0 && max_payload < UINT64_MAX / 2)
        max_payload += WS_COMPRESSED_SLACK(max_payload);
    /* Written so neither side can overflow: h->len < 2^63 and base is at
     * most max_payload when a limit is set. */
    if (max_payload != 0 &&
        (h->len > max_payload || base > max_payload - h->len))
        return WS_CLOSE_TOO_BIG;

    if (h->opcode == WS_OP_CONT) {
        /* Without a limit the total may exceed 2^64 over many frames;
         * saturate rather than wrap so len stays an upper bound. */
        m->len = base > UINT64_MAX - h->len ? UINT64_MAX : base + h->len;
    } else {
        m->opcode = h->opcode;
        m->utf8 = UTF8_ACCEPT;
        m->len = h->len;
        m->compressed = (uint8_t)compressed;
    }
    m->in_msg = !h->fin;
    return 0;
}

int
ws_msg_end(struct ws_msg *m)
{
    int rc = 0;

    /* RFC 6455 §8.1: a text message that ends inside a code point is
     * invalid even though every fragment so far was a valid prefix. */
    if (m->opcode == WS_OP_TEXT && m->utf8 != UTF8_ACCEPT)
        rc = WS_CLOSE_INVALID_DATA;
    uint8_t rsv1_ok = m->rsv1_ok;
    memset(m, 0, sizeof *m);
    m->rsv1_ok = rsv1_ok;
    return rc;
}

int
ws_close_code_ok(unsigned code)
{
    /* RFC 6455 §7.4.1/§7.4.2 and the IANA registry: 1004 is reserved,
     * 1005/1006/1015 are for APIs only, 1016-2999 are unassigned or
     * reserved for extensions, 3000-4999 belong to libraries and apps. */
    return (code >= 1000 && code <= 1003) ||
           (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

int
ws_check_close(const uint8_t *p, size_t n)
{
    unsigned code;

    if (n == 0)
        return 0;
    /* RFC 6455 §5.5: a control payload never exceeds 125 bytes; checked
     * here too so a caller's buffer mix-up cannot pass as a close. */
    if (n == 1 || n > WS_MAX_CONTROL)
        return WS_CLOSE_PROTOCOL;
    code = (unsigned)p[0] << 8 | p[1];
    if (!ws_close_code_ok(code))
        return WS_CLOSE_PROTOCOL;
    /* RFC 6455 §5.5.1: the reason is UTF-8 text. */
    if (utf8_validate(UTF8_ACCEPT, p + 2, n - 2) != UTF8_ACCEPT)
        return WS_CLOSE_INVALID_DATA;
    return 0;
}

/* The 4-byte key as the 8-byte pattern that masks p[0..8) when p is
 * `offset` bytes into the payload (8 is a multiple of 4, so the same
 * pattern fits every later word, whatever the alignment of p). */
static uint64_t
key64(const uint8_t key[4], uint64_t offset)
{
    uint32_t k;
    unsigned r = (unsigned)(offset & 3) * 8;

    memcpy(&k, key, 4);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (r)
        k = (k >> r) | (k << (32 - r));
#else
    if (r)
        k = (k << r) | (k >> (32 - r));
#endif
    return (uint64_t)k | (uint64_t)k << 32;
}

void
ws_mask(uint8_t *p, size_t n, const uint8_t key[4], uint64_t offset)
{
    size_t i = 0;
    uint64_t k64 = key64(key, offset);
    const uint8_t *k = (const uint8_t *)&k64;

#if defined(__SSE2__)
    /* 32 bytes per iteration in two SSE2 registers. */
    const __m128i k128 = _mm_set1_epi64x((long long)k64);
    for (; n - i >= 32; i += 32) {
        __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(p + i + 16));
        _mm_storeu_si128((__m128i *)(void *)(p + i), _mm_xor_si128(a, k128));
        _mm_storeu_si128((__m128i *)(void *)(p + i + 16),
                         _mm_xor_si128(b, k128));
    }
#endif
    /* The relay's hot path: 32 bytes per iteration, unaligned loads and
     * stores through memcpy (one instruction each on common targets). */
    for (; n - i >= 32; i += 32) {
        uint64_t a, b, c, d;
        memcpy(&a, p + i, 8);
        memcpy(&b, p + i + 8, 8);
        memcpy(&c, p + i + 16, 8);
        memcpy(&d, p + i + 24, 8);
        a ^= k64;
        b ^= k64;
        c ^= k64;
        d ^= k64;
        memcpy(p + i, &a, 8);
        memcpy(p + i + 8, &b, 8);
        memcpy(p + i + 16, &c, 8);
        memcpy(p + i + 24, &d, 8);
    }
    for (; n - i >= 8; i += 8) {
        uint64_t a;
        memcpy(&a, p + i, 8);
        a ^= k64;
        memcpy(p + i, &a, 8);
    }
    for (; i < n; i++)
        p[i] ^= k[i & 7];
}

void
ws_remask(uint8_t *p, size_t n, const uint8_t from[4], const uint8_t to[4],
          uint64_t offset)
{
    uint8_t k[4];

    for (int i = 0; i < 4; i++)
        k[i] = from[i] ^ to[i];
    ws_mask(p, n, k, offset);
}

int
ws_remask_all(uint8_t *p, size_t n, const uint8_t from[4],
              const uint8_t to[4])
{
    uint32_t f32, t32;
    size_t i = 0;
    uint64_t seen = 0;          /* OR of the unmasked bytes */

    memcpy(&f32, from, 4);
    memcpy(&t32, to, 4);
#if defined(__SSE2__)
    if (n >= 32) {
        /* Unmask (u = a ^ from), note u, mask again (u ^ to): two XORs
         * on the one register, no reload. */
        const __m128i f128 = _mm_set1_epi32((int)f32);
        const __m128i t128 = _mm_set1_epi32((int)t32);
        __m128i acc = _mm_setzero_si128();
        do {
            __m128i u = _mm_xor_si128(
                _mm_loadu_si128((const __m128i *)(const void *)(p + i)), f128);
            __m128i v = _mm_xor_si128(
                _mm_loadu_si128((const __m128i *)(const void *)(p + i + 16)),
                f128);
            acc = _mm_or_si128(_mm_or_si128(acc, u), v);
            _mm_storeu_si128((__m128i *)(void *)(p + i), _mm_xor_si128(u, t128));
            _mm_storeu_si128((__m128i *)(void *)(p + i + 16),
                             _mm_xor_si128(v, t128));
            i += 32;
        } while (n - i >= 32);
        if (_mm_movemask_epi8(acc) != 0)
            seen = 0x80;
        if (i == n)
            return seen == 0;
    }
#endif
    /* i is a multiple of 32 (SSE2) or 0: the keys are still aligned. */
    const uint64_t kf = f32 * 0x100000001ull;
    const uint64_t kx = kf ^ t32 * 0x100000001ull;
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        seen |= w ^ kf;
        memcpy(p + i, &(uint64_t){ w ^ kx }, 8);
    }
    for (; i < n; i++) {
        unsigned sh = (unsigned)(i & 7) * 8;
        seen |= (uint64_t)(p[i] ^ (uint8_t)(kf >> sh));
        p[i] ^= (uint8_t)(kx >> sh);
    }
    return (seen & 0x8080808080808080ull) == 0;
}

size_t
ws_remask_ascii(uint8_t *p, size_t n, const uint8_t from[4],
                const uint8_t to[4], uint64_t offset)
{
    const uint64_t high = 0x8080808080808080ull;
    uint64_t kf = key64(from, offset);
    uint64_t kx = kf ^ key64(to, offset);
    const uint8_t *f = (const uint8_t *)&kf;
    const uint8_t *x = (const uint8_t *)&kx;
    size_t i = 0;

#if defined(__SSE2__)
    /* 32 bytes per iteration: unmask, one sign-bit test for all 32 bytes,
     * re-mask. */
    const __m128i f128 = _mm_set1_epi64x((long long)kf);
    const __m128i x128 = _mm_set1_epi64x((long long)kx);
    for (; n - i >= 32; i += 32) {
        __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(p + i + 16));
        if (_mm_movemask_epi8(_mm_or_si128(_mm_xor_si128(a, f128),
                                           _mm_xor_si128(b, f128))))
            break;
        _mm_storeu_si128((__m128i *)(void *)(p + i), _mm_xor_si128(a, x128));
        _mm_storeu_si128((__m128i *)(void *)(p + i + 16),
                         _mm_xor_si128(b, x128));
    }
#endif
    /* One pass: unmask a word, check that it is ASCII (then it is valid
     * UTF-8 between code points), store it masked with the new key. */
    for (; n - i >= 8; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if ((w ^ kf) & high)
            break;
        w ^= kx;
        memcpy(p + i, &w, 8);
    }
    for (; i < n; i++) {
        if ((p[i] ^ f[i & 7]) & 0x80)
            break;
        p[i] ^= x[i & 7];
    }
    return i;
}

size_t
ws_write_header(uint8_t *out, int fin, int opcode, const uint8_t *key,
                uint64_t len)
{
    size_t n;

    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0xF));
    out[1] = key != NULL ? 0x80 : 0;
    /* RFC 6455 §5.2: the minimal length encoding, which is also the only
     * one ws_parse_header() accepts. */
    if (len < 126) {
        out[1] |= (uint8_t)len;
        n = 2;
    } else if (len <= 0xFFFF) {
        out[1] |= 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    } else {
        out[1] |= 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    if (key != NULL) {
        memcpy(out + n, key, 4);
        n += 4;
    }
    return n;
}

size_t
ws_build_close(uint8_t *out, unsigned code, const char *reason,
               const uint8_t *key)
{
    size_t hlen, rlen = 0, plen = 0;
    uint8_t payload[WS_MAX_CONTROL];

    if (code != 0) {
        payload[0] = (uint8_t)(code >> 8);
        payload[1] = (uint8_t)code;
        plen = 2;
        if (reason != NULL) {
            rlen = strlen(reason);
            if (rlen > WS_MAX_CONTROL - 2) {
                /* Back up to the start of a character, so the cut never
                 * splits one and the peer does not fail us with 1007. */
                rlen = WS_MAX_CONTROL - 2;
                while (rlen > 0 && ((uint8_t)reason[rlen] & 0xC0) == 0x80)
                    rlen--;
            }
            /* A reason that is not UTF-8 to begin with would make the
             * peer fail the connection (RFC 6455 §5.5.1); send the code
             * alone instead. */
            if (utf8_validate(UTF8_ACCEPT, (const uint8_t *)reason, rlen)
                != UTF8_ACCEPT)
                rlen = 0;
            memcpy(payload + 2, reason, rlen);
            plen += rlen;
        }
    }
    /* RFC 6455 §5.5: control frames are never fragmented. */
    hlen = ws_write_header(out, 1, WS_OP_CLOSE, key, plen);
    if (plen > 0)
        memcpy(out + hlen, payload, plen);
    if (key != NULL)
        ws_mask(out + hlen, plen, key, 0);
    return hlen + plen;
}
