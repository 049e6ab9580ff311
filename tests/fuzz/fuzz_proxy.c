/*
 * fuzz_proxy.c - differential fuzz target for proxy_parse().
 *
 * Input: byte 0 picks how the rest is used: as raw bytes, as the body of a
 * v2 header whose signature and length field are filled in here (so TLV
 * and address paths are reached without guessing 16 bytes), or as the
 * inside of a v1 line ("PROXY " + rest + CRLF). The header is parsed whole
 * and then at every split point: proxy_parse() is stateless, so a split is
 * the prefix that has arrived so far, and each prefix is placed at the end
 * of a heap block so ASan sees any read past it. The answers must agree:
 * a header of length n is INCOMPLETE for every shorter prefix and n for
 * every longer one (same address), an invalid input may turn to ERROR
 * early but never back, and an incomplete one is INCOMPLETE throughout.
 */
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "netaddr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                        \
    do {                                                                 \
        fprintf(stderr, "fuzz_proxy: " __VA_ARGS__);                     \
        fputc('\n', stderr);                                             \
        abort();                                                         \
    } while (0)

/* Beyond this every answer is decided (v1 107, v2 536 bytes at most). */
#define DECIDED 600

static const uint8_t v2_sig[12] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A
};

/* Parse p[0..k) placed at the end of block (cap bytes). */
static int
parse_at_end(uint8_t *block, size_t cap, const uint8_t *p, size_t k,
             struct sockaddr_storage *ss)
{
    uint8_t *at = block + cap - k;

    memmove(at, p, k);
    if (ss != NULL)
        memset(ss, 0xA5, sizeof *ss);
    return proxy_parse(at, k, ss);
}

static void
check_result(int r, size_t len, const uint8_t *p,
             const struct sockaddr_storage *ss)
{
    if (r == PROXY_ERROR || r == PROXY_INCOMPLETE)
        return;
    if (r <= 0 || (size_t)r > len)
        FAIL("length %d of %zu bytes", r, len);
    if (p[0] == 'P' && r > 107)
        FAIL("v1 header of %d bytes", r);
    if (r > 536)
        FAIL("v2 header of %d bytes", r);
    if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6 &&
        ss->ss_family != AF_UNSPEC)
        FAIL("family %d", ss->ss_family);
    if (p[0] == 'P' && (p[r - 2] != '\r' || p[r - 1] != '\n'))
        FAIL("v1 header not ending in CRLF");
}

static int
same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET)
        return memcmp(a, b, sizeof(struct sockaddr_in)) == 0;
    if (a->ss_family == AF_INET6)
        return memcmp(a, b, sizeof(struct sockaddr_in6)) == 0;
    return 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096)
        return 0;

    uint8_t mode = data[0] % 4;
    const uint8_t *rest = data + 1;
    size_t rlen = size - 1, len = 0;
    uint8_t *in = malloc(rlen + 32);
    if (in == NULL)
        abort();
    if (mode == 1 && rlen >= 2) {
        /* v2: rest = ver_cmd, fam, body */
        size_t blen = rlen - 2;
        memcpy(in, v2_sig, 12);
        in[12] = rest[0];
        in[13] = rest[1];
        in[14] = (uint8_t)(blen >> 8);
        in[15] = (uint8_t)blen;
        memcpy(in + 16, rest + 2, blen);
        len = 16 + blen;
    } else if (mode == 2) {
        memcpy(in, "PROXY ", 6);
        memcpy(in + 6, rest, rlen);
        memcpy(in + 6 + rlen, "\r\n", 2);
        len = rlen + 8;
    } else {
        memcpy(in, rest, rlen);
        len = rlen;
    }

    uint8_t *block = malloc(len ? len : 1);
    if (block == NULL)
        abort();
    struct sockaddr_storage whole_ss, ss;
    int r = parse_at_end(block, len, in, len, &whole_ss);
    check_result(r, len, in, &whole_ss);

    /* NULL src is allowed and changes nothing */
    if (parse_at_end(block, len, in, len, NULL) != r)
        FAIL("different answer without src");

    int seen_error = 0;
    size_t top = len < DECIDED ? len : DECIDED;
    for (size_t k = 0; k <= top; k++) {
        int rk = parse_at_end(block, len, in, k, &ss);
        check_result(rk, k, in, &ss);
        if (r > 0) {
            if (k < (size_t)r && rk != PROXY_INCOMPLETE)
                FAIL("prefix %zu of a %d-byte header: %d", k, r, rk);
            if (k >= (size_t)r && (rk != r || !same_addr(&ss, &whole_ss)))
                FAIL("prefix %zu: %d, whole %d", k, rk, r);
        } else if (r == PROXY_INCOMPLETE) {
            if (rk != PROXY_INCOMPLETE)
                FAIL("prefix %zu: %d, whole INCOMPLETE", k, rk);
        } else {
            if (rk != PROXY_ERROR && rk != PROXY_INCOMPLETE)
                FAIL("prefix %zu: %d, whole ERROR", k, rk);
            if (seen_error && rk != PROXY_ERROR)
                FAIL("prefix %zu: ERROR did not stick", k);
            seen_error |= rk == PROXY_ERROR;
        }
    }
    /* an undecided answer only for what could still be a header */
    if (r == PROXY_INCOMPLETE && len >= DECIDED)
        FAIL("INCOMPLETE after %zu bytes", len);

    free(block);
    free(in);
    return 0;
}
