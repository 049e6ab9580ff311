/*
 * fuzz_http.c - libFuzzer target for http.c and upgrade.c.
 *
 * Input: two control bytes, then the bytes a peer sends. The control bytes
 * seed the chunk sizes of the split feed, the header capacity and the
 * upgrade_fwd flags. Properties checked (abort on violation):
 *   - request and response parsers: a whole parse and a feed in
 *     fuzzer-chosen chunks (with last_len, every chunk in its own
 *     exact-size allocation so ASan sees any read past len) agree: the
 *     first non-INCOMPLETE answer equals the whole answer, field for field,
 *     and a complete head is found exactly at its last byte;
 *   - upgrade_check answers only 0 / 400 / 405 / 426;
 *   - upgrade_backend_request into a small buffer either fails or equals
 *     the output into a large one, and that output always parses back as
 *     one strict request head of exactly its length;
 *   - upgrade_refusal with the response's reason phrase parses back with
 *     the same status.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "upgrade.h"

#define MAXH 64

#define CHECK(x) do { if (!(x)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct hdr_off {
    size_t name, name_len, value, value_len;
};

struct result {
    int ret;
    size_t a, a_len, b, b_len;
    int minor, status;
    size_t n;
    struct hdr_off h[MAXH];
};

static void
capture_headers(struct result *r, const char *buf,
                const struct http_header *hh, size_t n)
{
    r->n = n;
    for (size_t i = 0; i < n; i++) {
        r->h[i].name = (size_t)(hh[i].name - buf);
        r->h[i].name_len = hh[i].name_len;
        r->h[i].value = (size_t)(hh[i].value - buf);
        r->h[i].value_len = hh[i].value_len;
    }
}

static struct result
run(int response, const char *buf, size_t len, size_t last_len, size_t cap)
{
    struct http_header hh[MAXH];
    struct result r;

    memset(&r, 0, sizeof r);
    if (response) {
        struct http_response resp = { .headers = hh, .nheaders = cap };
        r.ret = http_parse_response(buf, len, last_len, &resp);
        if (r.ret > 0) {
            CHECK(resp.status >= 100 && resp.status <= 999);
            CHECK(resp.minor_version == 0 || resp.minor_version == 1);
            r.a = (size_t)(resp.reason - buf);
            r.a_len = resp.reason_len;
            r.minor = resp.minor_version;
            r.status = resp.status;
            capture_headers(&r, buf, hh, resp.nheaders);
        } else {
            CHECK(resp.nheaders == cap);
        }
    } else {
        struct http_request req = { .headers = hh, .nheaders = cap };
        r.ret = http_parse_request(buf, len, last_len, &req);
        if (r.ret > 0) {
            CHECK(req.method_len > 0 && req.target_len > 0);
            CHECK(req.minor_version == 0 || req.minor_version == 1);
            r.a = (size_t)(req.method - buf);
            r.a_len = req.method_len;
            r.b = (size_t)(req.target - buf);
            r.b_len = req.target_len;
            r.minor = req.minor_version;
            capture_headers(&r, buf, hh, req.nheaders);
        } else {
            CHECK(req.nheaders == cap);
        }
    }
    CHECK(r.ret > 0 || r.ret == HTTP_ERROR || r.ret == HTTP_INCOMPLETE ||
          r.ret == HTTP_TOO_MANY);
    CHECK(r.ret <= 0 || (size_t)r.ret <= len);
    return r;
}

static int
same(const struct result *x, const struct result *y)
{
    if (x->ret != y->ret || x->a != y->a || x->a_len != y->a_len ||
        x->b != y->b || x->b_len != y->b_len || x->minor != y->minor ||
        x->status != y->status || x->n != y->n)
        return 0;
    for (size_t i = 0; i < x->n; i++)
        if (x->h[i].name != y->h[i].name ||
            x->h[i].name_len != y->h[i].name_len ||
            x->h[i].value != y->h[i].value ||
            x->h[i].value_len != y->h[i].value_len)
            return 0;
    return 1;
}

static uint32_t
next_rand(uint32_t *s)
{
    /* xorshift32: deterministic from the input, so crashes reproduce */
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Feed in chunks; returns the whole result after checking the split. */
static void
split_feed(int response, const char *in, size_t len, size_t cap,
           uint32_t seed, size_t max_chunk, const struct result *whole)
{
    size_t have = 0, prev = 0;
    uint32_t s = seed | 1;

    while (have < len) {
        struct result r;
        char *copy;
        size_t step = 1 + next_rand(&s) % max_chunk;

        have = len - have < step ? len : have + step;
        copy = malloc(have);
        CHECK(copy != NULL);
        memcpy(copy, in, have);
        /* now and then forget last_len: the answer must not change */
        r = run(response, copy, have, (next_rand(&s) & 7) ? prev : 0, cap);
        free(copy);
        if (r.ret == HTTP_INCOMPLETE) {
            prev = have;
            continue;
        }
        CHECK(same(&r, whole));
        if (r.ret > 0)
            CHECK((size_t)r.ret > prev);    /* not found too late */
        return;
    }
    CHECK(whole->ret == HTTP_INCOMPLETE);
}

static void
check_backend_request(const struct http_request *req, size_t req_len,
                      uint8_t flags, size_t small_cap)
{
    static char big[16384], small[2048], again_buf[16384];
    static const char *const drop[] = { "Cookie", "authorization" };
    static const char extra[] = "X-User-Id: alice\r\n";
    struct backend_addr be = { .path_prefix = (flags & 1) ? "/p" : "" };
    struct upgrade_fwd f = {
        .backend = &be,
        .target = req->target,
        .target_len = req->target_len,
        .client_ip = "192.0.2.1",
        .client_tls = (flags >> 1) & 1,
        .add_forwarded = (flags >> 2) & 1,
        .trusted_peer = (flags >> 3) & 1,
        .key = "AQIDBAUGBwgJCgsMDQ4PEA==",
        .drop = (flags & 16) ? drop : NULL,
        .ndrop = (flags & 16) ? 2 : 0,
        .extra = (flags & 32) ? extra : NULL,
        .extra_len = (flags & 32) ? sizeof extra - 1 : 0,
    };
    struct http_header hh[2 * MAXH + 16];
    struct http_request again = { .headers = hh,
                                  .nheaders = sizeof hh / sizeof hh[0] };
    int n, m;

    n = upgrade_backend_request(big, sizeof big, req, &f);
    /* The output is the input head rearranged, plus at most ": " per
     * header and a few hundred bytes of ours: it fits unless the input
     * was nearly as large as the buffer. */
    if (n == -1 && req_len + 2048 > sizeof big)
        return;
    CHECK(n > 0);
    m = upgrade_backend_request(small, small_cap, req, &f);
    CHECK(m == -1 || (m == n && memcmp(small, big, (size_t)n) == 0));
    CHECK(m == -1 || (size_t)m <= small_cap);
    memcpy(again_buf, big, (size_t)n);
    CHECK(http_parse_request(again_buf, (size_t)n, 0, &again) == n);
    CHECK(again.minor_version == 1);
    CHECK(http_find(again.headers, again.nheaders, "Upgrade", NULL) != NULL);
    {
        size_t count;
        http_find(again.headers, again.nheaders, "Sec-WebSocket-Key",
                  &count);
        CHECK(count == 1);
        http_find(again.headers, again.nheaders, "Transfer-Encoding",
                  &count);
        CHECK(count == 0);
        if (!f.trusted_peer && !f.add_forwarded) {
            http_find(again.headers, again.nheaders, "X-Forwarded-For",
                      &count);
            CHECK(count == 0);
        }
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct http_header req_h[MAXH], resp_h[MAXH];
    struct http_request req;
    struct http_response resp;
    struct result wreq, wresp;
    const char *in;
    size_t len, cap, max_chunk;
    uint32_t seed;
    uint8_t flags;
    int req_ok, resp_ok;

    if (size < 2)
        return 0;
    seed = (uint32_t)data[0] << 8 | data[1];
    max_chunk = 1 + (data[0] & 0x3f);
    cap = (size_t)(data[1] % (MAXH + 1));
    flags = (uint8_t)(data[0] ^ data[1]);
    in = (const char *)data + 2;
    len = size - 2;

    /* Whole, straight on the fuzzer's exact-size buffer. */
    wreq = run(0, in, len, 0, cap);
    wresp = run(1, in, len, 0, cap);
    split_feed(0, in, len, cap, seed, max_chunk, &wreq);
    split_feed(1, in, len, cap, seed ^ 0x5a5a, max_chunk, &wresp);

    memset(&req, 0, sizeof req);
    req.headers = req_h;
    req.nheaders = MAXH;
    req_ok = http_parse_request(in, len, 0, &req) > 0;
    if (req_ok) {
        struct upgrade_req u;
        const char *why = NULL;
        int st = upgrade_check(&req, &u, &why);

        CHECK(st == 0 || st == 400 || st == 405 || st == 426);
        CHECK(why != NULL || st == 0);
        if (st == 0) {
            char acc[29], out[512];
            int n;

            CHECK(u.key != NULL && u.host != NULL && u.path != NULL);
            CHECK(u.path_len > 0 && u.path[0] == '/');
            CHECK(upgrade_accept(u.key, UPGRADE_KEY_LEN, acc) == 0);
            CHECK(strlen(acc) == UPGRADE_ACCEPT_LEN);
            n = upgrade_client_response(out, sizeof out, u.key, NULL, 0, NULL);
            CHECK(n > 0);
        }
        check_backend_request(&req, len, flags, 64 + (size_t)data[1] * 4);
    }

    memset(&resp, 0, sizeof resp);
    resp.headers = resp_h;
    resp.nheaders = MAXH;
    resp_ok = http_parse_response(in, len, 0, &resp) > 0;
    if (resp_ok) {
        static const char key[] = "dGhlIHNhbXBsZSBub25jZQ==";
        static const char offer_buf[] =
            "GET / HTTP/1.1\r\nHost: a\r\n"
            "Sec-WebSocket-Protocol: chat, superchat\r\n\r\n";
        struct http_header oh[4];
        struct http_request offer = { .headers = oh, .nheaders = 4 };
        const char *proto, *why;
        size_t proto_len;
        char out[1024], again_buf[1024];
        struct http_header ah[16];
        struct http_response again = { .headers = ah, .nheaders = 16 };
        int n, r;

        CHECK(http_parse_request(offer_buf, sizeof offer_buf - 1, 0,
                                 &offer) > 0);
        r = upgrade_check_response(&resp, key, req_ok ? &req : &offer,
                                   &proto, &proto_len, &why);
        CHECK(r == 0 || r == -1);
        if (r == 0) {
            CHECK(resp.status == 101);
            CHECK((proto == NULL) == (proto_len == 0));
        }
        n = upgrade_refusal(out, sizeof out, resp.status, resp.reason,
                            resp.reason_len);
        CHECK(n > 0);
        memcpy(again_buf, out, (size_t)n);
        CHECK(http_parse_response(again_buf, (size_t)n, 0, &again) > 0);
        CHECK(again.status == resp.status);
        CHECK(again.reason_len > 0 && again.reason_len <= 64);
    }
    return 0;
}
