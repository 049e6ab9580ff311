/*
 * test_upgrade.c - the RFC 6455 opening handshake on both legs.
 *
 * Client requests come as a table of whole heads with the expected
 * verdict: a parse error, or the status upgrade_check() must answer
 * (0 = accepted). Each is parsed whole and fed one byte at a time with
 * last_len (INCOMPLETE until its last byte, then the same result), against
 * a PROT_NONE guard page. The backend request and the responses are
 * checked by parsing wsguard's own output back with http.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "http.h"
#include "upgrade.h"

#define MAXH 32

#include "guard.h"

/* ---- parsing helpers: requests/responses kept in static storage so the
 * structs stay valid for the checks that follow */

static char req_buf[8192];
static struct http_header req_h[MAXH];
static struct http_request req;

static int
parse_req(const char *s, size_t len)
{
    assert_true(len <= sizeof req_buf);
    memcpy(req_buf, s, len);
    memset(&req, 0, sizeof req);
    req.headers = req_h;
    req.nheaders = MAXH;
    return http_parse_request(req_buf, len, 0, &req);
}

static char resp_buf[4096];
static struct http_header resp_h[MAXH];
static struct http_response resp;

static int
parse_resp(const char *s, size_t len)
{
    assert_true(len <= sizeof resp_buf);
    memcpy(resp_buf, s, len);
    memset(&resp, 0, sizeof resp);
    resp.headers = resp_h;
    resp.nheaders = MAXH;
    return http_parse_response(resp_buf, len, 0, &resp);
}

/* ---- client request vectors */

#define GET "GET /chat HTTP/1.1\r\n"
#define HOST "Host: server.example.com\r\n"
#define UPG "Upgrade: websocket\r\n"
#define CONN "Connection: Upgrade\r\n"
#define KEY "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
#define VER "Sec-WebSocket-Version: 13\r\n"
#define ORIGIN "Origin: https://app.example.com\r\n"
#define END "\r\n"

#define PARSE_ERROR (-1000)

struct vec {
    const char *name;
    const char *in;
    size_t len;                 /* 0: strlen */
    int expect;                 /* PARSE_ERROR, 0 or a status */
};

static const struct vec vecs[] = {
    { "chrome",
      "GET /chat HTTP/1.1\r\n"
      "Host: example.com:8443\r\n"
      "Connection: Upgrade\r\n"
      "Pragma: no-cache\r\n"
      "Cache-Control: no-cache\r\n"
      "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
      "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\n"
      "Upgrade: websocket\r\n"
      "Origin: https://app.example.com\r\n"
      "Sec-WebSocket-Version: 13\r\n"
      "Accept-Encoding: gzip, deflate, br\r\n"
      "Accept-Language: en-US,en;q=0.9\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      "Sec-WebSocket-Extensions: permessage-deflate; "
      "client_max_window_bits\r\n"
      "\r\n", 0, 0 },
    { "firefox",
      "GET /chat?access_token=abc HTTP/1.1\r\n"
      "Host: example.com\r\n"
      "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) "
      "Gecko/20100101 Firefox/121.0\r\n"
      "Accept: */*\r\n"
      "Accept-Language: en-US,en;q=0.5\r\n"
      "Accept-Encoding: gzip, deflate, br\r\n"
      "Sec-WebSocket-Version: 13\r\n"
      "Origin: https://app.example.com\r\n"
      "Sec-WebSocket-Protocol: chat, superchat\r\n"
      "Sec-WebSocket-Extensions: permessage-deflate\r\n"
      "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
      "Connection: keep-alive, Upgrade\r\n"
      "Sec-Fetch-Dest: empty\r\n"
      "Sec-Fetch-Mode: websocket\r\n"
      "Sec-Fetch-Site: same-origin\r\n"
      "Pragma: no-cache\r\n"
      "Cache-Control: no-cache\r\n"
      "Upgrade: websocket\r\n"
      "\r\n", 0, 0 },
    { "python-websockets",
      "GET /ws HTTP/1.1\r\n"
      "Host: localhost:8765\r\n"
      "Upgrade: websocket\r\n"
      "Connection: Upgrade\r\n"
      "Sec-WebSocket-Key: 9vWfqHdNDbXL+lBcNpB2Gg==\r\n"
      "Sec-WebSocket-Version: 13\r\n"
      "Sec-WebSocket-Extensions: permessage-deflate; "
      "client_max_window_bits\r\n"
      "User-Agent: Python/3.11 websockets/12.0\r\n"
      "\r\n", 0, 0 },
    { "minimal", GET HOST UPG CONN KEY VER END, 0, 0 },
    { "POST", "POST /chat HTTP/1.1\r\n" HOST UPG CONN KEY VER END, 0, 405 },
    { "lower-case get", "get /chat HTTP/1.1\r\n" HOST UPG CONN KEY VER END,
      0, 405 },
    { "HTTP/1.0", "GET /chat HTTP/1.0\r\n" HOST UPG CONN KEY VER END, 0,
      400 },
    { "asterisk target", "GET * HTTP/1.1\r\n" HOST UPG CONN KEY VER END, 0,
      400 },
    { "absolute target", "GET http://a/chat HTTP/1.1\r\n" HOST UPG CONN KEY
      VER END, 0, 400 },
    { "no Host", GET UPG CONN KEY VER END, 0, 400 },
    { "empty Host", GET "Host:\r\n" UPG CONN KEY VER END, 0, 400 },
    { "two Hosts", GET HOST "Host: evil.example\r\n" UPG CONN KEY VER END, 0,
      400 },
    { "two Origins", GET HOST ORIGIN "Origin: https://evil.example\r\n" UPG
      CONN KEY VER END, 0, 400 },
    { "Transfer-Encoding", GET HOST UPG CONN KEY VER
      "Transfer-Encoding: chunked\r\n" END, 0, 400 },
    { "Content-Length 5", GET HOST UPG CONN KEY VER "Content-Length: 5\r\n"
      END, 0, 400 },
    { "Content-Length 0", GET HOST UPG CONN KEY VER "Content-Length: 0\r\n"
      END, 0, 0 },
    { "Upgrade: h2c", GET HOST "Upgrade: h2c\r\n" CONN KEY VER END, 0, 426 },
    { "no Upgrade", GET HOST CONN KEY VER END, 0, 426 },
    { "two Upgrades", GET HOST UPG UPG CONN KEY VER END, 0, 400 },
    { "Upgrade list", GET HOST "Upgrade: h2c, WebSocket\r\n" CONN KEY VER END,
      0, 0 },
    { "keep-alive only", GET HOST UPG "Connection: keep-alive\r\n" KEY VER
      END, 0, 426 },
    { "no Connection", GET HOST UPG KEY VER END, 0, 426 },
    { "keep-alive, Upgrade", GET HOST UPG
      "Connection: keep-alive, Upgrade\r\n" KEY VER END, 0, 0 },
    { "Connection split", GET HOST UPG "Connection: keep-alive\r\n"
      "Connection: upgrade\r\n" KEY VER END, 0, 0 },
    { "lower-case", "GET /chat HTTP/1.1\r\nhost: a\r\nupgrade: websocket\r\n"
      "connection: upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      "sec-websocket-version: 13\r\n\r\n", 0, 0 },
    { "version 8", GET HOST UPG CONN KEY "Sec-WebSocket-Version: 8\r\n" END,
      0, 426 },
    { "version 13, 8", GET HOST UPG CONN KEY
      "Sec-WebSocket-Version: 13, 8\r\n" END, 0, 426 },
    { "version 013", GET HOST UPG CONN KEY "Sec-WebSocket-Version: 013\r\n"
      END, 0, 426 },
    { "missing version", GET HOST UPG CONN KEY END, 0, 426 },
    { "two versions", GET HOST UPG CONN KEY VER VER END, 0, 400 },
    { "missing key", GET HOST UPG CONN VER END, 0, 400 },
    { "two keys", GET HOST UPG CONN KEY KEY VER END, 0, 400 },
    { "key 15 bytes", GET HOST UPG CONN
      "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n" VER END, 0, 400 },
    { "key 16 zero bytes", GET HOST UPG CONN
      "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n" VER END, 0, 0 },
    { "key 17 bytes", GET HOST UPG CONN
      "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\n" VER END, 0, 400 },
    { "key 18 bytes", GET HOST UPG CONN
      "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAA\r\n" VER END, 0, 400 },
    { "key bad char", GET HOST UPG CONN
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ!==\r\n" VER END, 0, 400 },
    { "key url-safe", GET HOST UPG CONN
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j_Q==\r\n" VER END, 0, 400 },
    { "key pad early", GET HOST UPG CONN
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ===\r\n" VER END, 0, 400 },
    { "key unpadded", GET HOST UPG CONN
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n" VER END, 0, 400 },
    { "key inner space", GET HOST UPG CONN
      "Sec-WebSocket-Key: dGhlIHNhbXBs ZSBub25jZQ==\r\n" VER END, 0, 400 },
    { "key empty", GET HOST UPG CONN "Sec-WebSocket-Key:\r\n" VER END, 0,
      400 },
    { "obs-fold", GET HOST UPG CONN KEY VER "X-A: b\r\n c\r\n" END, 0,
      PARSE_ERROR },
    { "space before colon", GET "Host : a\r\n" UPG CONN KEY VER END, 0,
      PARSE_ERROR },
    { "bare LF", GET HOST "Upgrade: websocket\n" CONN KEY VER END, 0,
      PARSE_ERROR },
    { "NUL", GET HOST UPG "Connection: Upgrade\0\r\n" KEY VER END,
      sizeof(GET HOST UPG "Connection: Upgrade\0\r\n" KEY VER END) - 1,
      PARSE_ERROR },
};

static void
test_request_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++) {
        const struct vec *v = &vecs[i];
        size_t len = v->len ? v->len : strlen(v->in);
        struct http_header hh[MAXH];
        struct http_request r;
        struct upgrade_req u;
        const char *why = NULL, *buf;
        int whole, ret, st;
        size_t k;

        print_message("vector: %s\n", v->name);
        /* byte at a time, as a slowloris client would send it */
        for (k = 1; k <= len; k++) {
            memset(&r, 0, sizeof r);
            r.headers = hh;
            r.nheaders = MAXH;
            ret = http_parse_request(guarded(v->in, k), k, k - 1, &r);
            if (ret != HTTP_INCOMPLETE)
                break;
        }
        buf = guarded(v->in, len);
        memset(&r, 0, sizeof r);
        r.headers = hh;
        r.nheaders = MAXH;
        whole = http_parse_request(buf, len, 0, &r);
        assert_true(k <= len);
        assert_int_equal(ret, whole);
        if (v->expect == PARSE_ERROR) {
            assert_int_equal(whole, HTTP_ERROR);
            continue;
        }
        assert_int_equal(whole, (int)len);
        assert_int_equal(k, len);
        st = upgrade_check(&r, &u, &why);
        assert_int_equal(st, v->expect);
        if (st != 0) {
            assert_non_null(why);
            assert_null(u.key);
            continue;
        }
        assert_non_null(u.key);
        assert_true(u.key >= buf && u.key + UPGRADE_KEY_LEN <= buf + len);
        assert_int_equal(u.key[UPGRADE_KEY_LEN - 1], '=');
        assert_non_null(u.host);
        assert_true(u.host_len > 0);
        assert_non_null(u.path);
        assert_int_equal(u.path[0], '/');
        assert_null(memchr(u.path, '?', u.path_len));
    }
}

static void
test_upgrade_req_fields(void **state)
{
    static const char in[] =
        "GET /chat/room?access_token=abc&x=1 HTTP/1.1\r\n"
        "Host: ws.example.com\r\n"
        "Origin: https://app.example.com\r\n"
        UPG CONN KEY VER END;
    struct upgrade_req u;
    const char *why;

    (void)state;
    assert_int_equal(parse_req(in, sizeof in - 1), (int)sizeof in - 1);
    assert_int_equal(upgrade_check(&req, &u, &why), 0);
    assert_memory_equal(u.key, "dGhlIHNhbXBsZSBub25jZQ==", UPGRADE_KEY_LEN);
    assert_int_equal(u.host_len, strlen("ws.example.com"));
    assert_memory_equal(u.host, "ws.example.com", u.host_len);
    assert_int_equal(u.origin_len, strlen("https://app.example.com"));
    assert_memory_equal(u.origin, "https://app.example.com", u.origin_len);
    assert_int_equal(u.path_len, strlen("/chat/room"));
    assert_memory_equal(u.path, "/chat/room", u.path_len);

    /* no Origin: NULL/0 */
    assert_int_equal(parse_req(GET HOST UPG CONN KEY VER END,
                               strlen(GET HOST UPG CONN KEY VER END)),
                     (int)strlen(GET HOST UPG CONN KEY VER END));
    assert_int_equal(upgrade_check(&req, &u, &why), 0);
    assert_null(u.origin);
    assert_int_equal(u.origin_len, 0);
    assert_int_equal(u.path_len, 5);
}

/* ---- keys */

static void
test_accept(void **state)
{
    char out[29];

    (void)state;
    /* RFC 6455 §1.3 */
    assert_int_equal(upgrade_accept("dGhlIHNhbXBsZSBub25jZQ==", 24, out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_int_equal(upgrade_accept("x3JJHMbDL1EzLkh9GBhXDw==", 24, out), 0);
    assert_string_equal(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
}

static void
test_new_key(void **state)
{
    char a[25], b[25], msg[256];
    struct upgrade_req u;
    const char *why;
    int n;
    struct rnd rnd;

    (void)state;
    rnd_init(&rnd, NULL);
    upgrade_new_key(&rnd, a);
    upgrade_new_key(&rnd, b);
    assert_int_equal(strlen(a), UPGRADE_KEY_LEN);
    assert_string_not_equal(a, b);
    /* our own keys pass our own client check */
    n = snprintf(msg, sizeof msg, GET HOST UPG CONN VER
                 "Sec-WebSocket-Key: %s\r\n\r\n", a);
    assert_int_equal(parse_req(msg, (size_t)n), n);
    assert_int_equal(upgrade_check(&req, &u, &why), 0);
}

/* ---- the backend request */

static char out[4096];
static char again_buf[4096];
static struct http_header again_h[64];
static struct http_request again;

/* Parse wsguard's output back; it must be one complete, strict head. */
static void
reparse(int n)
{
    assert_true(n > 0);
    memcpy(again_buf, out, (size_t)n);
    memset(&again, 0, sizeof again);
    again.headers = again_h;
    again.nheaders = 64;
    assert_int_equal(http_parse_request(again_buf, (size_t)n, 0, &again), n);
}

static const char *
value_of(const char *name, size_t *count)
{
    static char v[512];
    const struct http_header *h;

    h = http_find(again.headers, again.nheaders, name, count);
    if (h == NULL)
        return NULL;
    assert_true(h->value_len < sizeof v);
    memcpy(v, h->value, h->value_len);
    v[h->value_len] = '\0';
    return v;
}

static void
assert_header(const char *name, const char *want)
{
    size_t count;
    const char *v = value_of(name, &count);

    if (want == NULL) {
        assert_null(v);
        return;
    }
    assert_non_null(v);
    assert_int_equal(count, 1);
    assert_string_equal(v, want);
}

static const char client_full[] =
    "GET /chat?x=1 HTTP/1.1\r\n"
    "Host: ws.example.com\r\n"
    "Connection: keep-alive, Upgrade, X-Secret, Host, X-Forwarded-For\r\n"
    "Keep-Alive: 300\r\n"
    "Proxy-Connection: keep-alive\r\n"
    "TE: trailers\r\n"
    "Trailer: X-T\r\n"
    "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
    "Upgrade: websocket\r\n"
    "Origin: https://app.example.com\r\n"
    "Cookie: session=1\r\n"
    "X-Secret: hop\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate\r\n"
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "X-Forwarded-For: 6.6.6.6\r\n"
    "x-forwarded-for: 7.7.7.7\r\n"
    "X-Forwarded-Proto: ftp\r\n"
    "X-Forwarded-Host: evil.example\r\n"
    "X-Real-IP: 6.6.6.6\r\n"
    "Forwarded: for=6.6.6.6\r\n"
    "Authorization: Bearer t0k3n\r\n"
    "\r\n";

static struct backend_addr be = {
    .url = "ws://app:3000/api", .host = "app", .port = "3000",
    .host_header = "app:3000", .path_prefix = "/api",
};

static const char our_key[] = "AQIDBAUGBwgJCgsMDQ4PEA==";

static struct upgrade_fwd
fwd_default(void)
{
    struct upgrade_fwd f = {
        .backend = &be,
        .target = req.target,
        .target_len = req.target_len,
        .client_ip = "192.0.2.1",
        .client_tls = 1,
        .add_forwarded = 1,
        .trusted_peer = 0,
        .key = our_key,
    };
    return f;
}

static void
test_backend_untrusted(void **state)
{
    struct upgrade_fwd f;
    const char *line = "GET /api/chat?x=1 HTTP/1.1\r\n";
    int n;

    (void)state;
    assert_true(parse_req(client_full, sizeof client_full - 1) > 0);
    f = fwd_default();
    n = upgrade_backend_request(out, sizeof out, &req, &f);
    reparse(n);
    assert_memory_equal(out, line, strlen(line));
    /* end-to-end headers kept, in order */
    assert_true(http_eq(again_h[0].name, again_h[0].name_len, "Host"));
    assert_true(http_eq(again_h[1].name, again_h[1].name_len, "Origin"));
    assert_true(http_eq(again_h[2].name, again_h[2].name_len, "Cookie"));
    assert_true(http_eq(again_h[3].name, again_h[3].name_len,
                        "Sec-WebSocket-Protocol"));
    assert_true(http_eq(again_h[4].name, again_h[4].name_len,
                        "Authorization"));
    assert_header("Host", "ws.example.com");
    assert_header("Sec-WebSocket-Protocol", "chat, superchat");
    /* hop-by-hop, nominated and the client's handshake fields gone */
    assert_header("Keep-Alive", NULL);
    assert_header("Proxy-Connection", NULL);
    assert_header("TE", NULL);
    assert_header("Trailer", NULL);
    assert_header("Proxy-Authorization", NULL);
    assert_header("X-Secret", NULL);
    assert_header("Sec-WebSocket-Extensions", NULL);
    assert_header("Forwarded", NULL);
    /* ours, exactly once */
    assert_header("Upgrade", "websocket");
    assert_header("Connection", "Upgrade");
    assert_header("Sec-WebSocket-Key", our_key);
    assert_header("Sec-WebSocket-Version", "13");
    /* client-sent X-Forwarded-* replaced */
    assert_header("X-Forwarded-For", "192.0.2.1");
    assert_header("X-Forwarded-Proto", "https");
    assert_header("X-Forwarded-Host", "ws.example.com");
    assert_header("X-Real-IP", "192.0.2.1");

    /* plain ws: http */
    f.client_tls = 0;
    reparse(upgrade_backend_request(out, sizeof out, &req, &f));
    assert_header("X-Forwarded-Proto", "http");
}

static void
test_backend_trusted(void **state)
{
    struct upgrade_fwd f;

    (void)state;
    assert_true(parse_req(client_full, sizeof client_full - 1) > 0);
    f = fwd_default();
    f.trusted_peer = 1;
    f.client_tls = 0;
    reparse(upgrade_backend_request(out, sizeof out, &req, &f));
    assert_header("X-Forwarded-For", "6.6.6.6, 7.7.7.7, 192.0.2.1");
    assert_header("X-Forwarded-Proto", "ftp");
    assert_header("X-Forwarded-Host", "evil.example");
    assert_header("X-Real-IP", "192.0.2.1");
    assert_header("Forwarded", "for=6.6.6.6");

    /* a trusted peer that sent none: the same as untrusted */
    {
        static const char plain[] = GET HOST UPG CONN KEY VER END;
        assert_true(parse_req(plain, sizeof plain - 1) > 0);
        f = fwd_default();
        f.trusted_peer = 1;
        reparse(upgrade_backend_request(out, sizeof out, &req, &f));
        assert_header("X-Forwarded-For", "192.0.2.1");
        assert_header("X-Forwarded-Proto", "https");
        assert_header("X-Forwarded-Host", "server.example.com");
    }
}

static void
test_backend_no_forwarded(void **state)
{
    struct upgrade_fwd f;

    (void)state;
    assert_true(parse_req(client_full, sizeof client_full - 1) > 0);
    f = fwd_default();
    f.add_forwarded = 0;
    reparse(upgrade_backend_request(out, sizeof out, &req, &f));
    assert_header("X-Forwarded-For", NULL);
    assert_header("X-Forwarded-Proto", NULL);
    assert_header("X-Forwarded-Host", NULL);
    assert_header("X-Real-IP", NULL);

    /* trusted: the peer's own values pass through untouched */
    f.trusted_peer = 1;
    reparse(upgrade_backend_request(out, sizeof out, &req, &f));
    {
        size_t count;
        assert_string_equal(value_of("X-Forwarded-For", &count), "6.6.6.6");
        assert_int_equal(count, 2);
    }
    assert_header("X-Forwarded-Proto", "ftp");
    assert_header("X-Real-IP", "6.6.6.6");
}

/* The n-th value (0-based) of the header name in the reparsed request,
 * or NULL; names compare exactly as written, case aside. */
static const char *
nth_value(const char *name, size_t nth)
{
    static char v[512];

    for (size_t i = 0; i < again.nheaders; i++) {
        const struct http_header *h = &again.headers[i];
        if (!http_eq(h->name, h->name_len, name) || nth-- > 0)
            continue;
        assert_true(h->value_len < sizeof v);
        memcpy(v, h->value, h->value_len);
        v[h->value_len] = '\0';
        return v;
    }
    return NULL;
}

static const char client_smuggle[] =
    "GET /chat HTTP/1.1\r\n"
    "Host: ws.example.com\r\n"
    "Connection: Upgrade, Origin, Sec-WebSocket-Protocol, X-Drop-Me, "
    "Host, sec-websocket-foo\r\n"
    "Upgrade: websocket\r\n"
    "Origin: https://app.example.com\r\n"
    "X-Drop-Me: 1\r\n"
    "X_User_Id: admin\r\n"
    "X-User-Id: admin2\r\n"
    "x-user-id: admin3\r\n"
    "X-User-Id-Extra: keep\r\n"
    "X-User-I: keep\r\n"
    "X_Forwarded_For: 6.6.6.6\r\n"
    "X_Real_IP: 6.6.6.6\r\n"
    "X_Forwarded_Proto: ftp\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: chat\r\n"
    "Sec_WebSocket_Protocol: evil\r\n"
    "Sec-WebSocket-Foo: x\r\n"
    "Cookie: a=1\r\n"
    "Cookie: access_token=T; b=2\r\n"
    "Authori_zation: x\r\n"
    "Proxy_Authorization: Basic eA==\r\n"
    "X_Custom: yes\r\n"
    "\r\n";

static void
test_backend_smuggling(void **state)
{
    static const char *const drop[] = { "X-User-Id" };
    static const char extra[] = "X-User-Id: alice\r\n";
    struct upgrade_edit edit[MAXH];
    struct upgrade_fwd f;
    size_t count;

    (void)state;
    assert_true(parse_req(client_smuggle, sizeof client_smuggle - 1) > 0);
    memset(edit, 0, sizeof edit);
    /* the token's cookie pair cut from the second Cookie header only */
    for (size_t i = 0; i < req.nheaders; i++)
        if (http_eq(req.headers[i].value, 14, "access_token=T")) {
            edit[i].value = "b=2";
            edit[i].value_len = 3;
        }
    f = fwd_default();
    f.drop = drop;
    f.ndrop = 1;
    f.extra = extra;
    f.extra_len = sizeof extra - 1;
    f.edit = edit;
    reparse(upgrade_backend_request(out, sizeof out, &req, &f));
    /* what wsguard checked survives a Connection listing */
    assert_header("Origin", "https://app.example.com");
    assert_header("Sec-WebSocket-Protocol", "chat");
    assert_header("Host", "ws.example.com");
    assert_header("Sec-WebSocket-Foo", "x");
    assert_header("X-Drop-Me", NULL);
    /* identity: only wsguard's, exact names only */
    assert_header("X-User-Id", "alice");
    assert_header("X_User_Id", NULL);
    assert_header("X-User-Id-Extra", "keep");
    assert_header("X-User-I", "keep");
    /* '_' spellings never pass by default */
    assert_header("X_Forwarded_For", NULL);
    assert_header("X_Real_IP", NULL);
    assert_header("X_Forwarded_Proto", NULL);
    assert_header("Sec_WebSocket_Protocol", NULL);
    assert_header("Authori_zation", NULL);
    assert_header("Proxy_Authorization", NULL);
    assert_header("X_Custom", NULL);
    assert_header("X-Forwarded-For", "192.0.2.1");
    /* every other Cookie header kept, the edited one replaced */
    value_of("Cookie", &count);
    assert_int_equal(count, 2);
    assert_string_equal(nth_value("Cookie", 0), "a=1");
    assert_string_equal(nth_value("Cookie", 1), "b=2");

    /* allow_underscore_headers: other '_' names pass, but never one that
     * spells a header wsguard sets, drops or checks */
    f.allow_underscore = 1;
    reparse(upgrade_backend_request(out, sizeof out, &req, &f));
    assert_header("X_Custom", "yes");
    assert_header("X_User_Id", NULL);
    assert_header("X_Forwarded_For", NULL);
    assert_header("X_Real_IP", NULL);
    assert_header("X_Forwarded_Proto", NULL);
    assert_header("Sec_WebSocket_Protocol", NULL);
    assert_header("Proxy_Authorization", NULL);
    assert_header("Authori_zation", "x");      /* spells nothing of ours */
    assert_header("X-User-Id", "alice");

    /* an edit can drop a header outright */
    for (size_t i = 0; i < req.nheaders; i++)
        if (http_eq(req.headers[i].name, req.headers[i].name_len, "Cookie"))
            edit[i].drop = 1;
    reparse(upgrade_backend_request(out, sizeof out, &req, &f));
    assert_header("Cookie", NULL);
}

static void
test_backend_drop_extra_target(void **state)
{
    static const char *const drop[] = { "authorization", "COOKIE" };
    static const char extra[] = "X-User-Id: alice\r\nX-Role: admin\r\n";
    struct upgrade_fwd f;
    int n;

    (void)state;
    assert_true(parse_req(client_full, sizeof client_full - 1) > 0);
    f = fwd_default();
    f.drop = drop;
    f.ndrop = 2;
    f.extra = extra;
    f.extra_len = sizeof extra - 1;
    f.target = "/chat?x=1&y=2";
    f.target_len = strlen(f.target);
    n = upgrade_backend_request(out, sizeof out, &req, &f);
    reparse(n);
    assert_memory_equal(out, "GET /api/chat?x=1&y=2 HTTP/1.1\r\n", 32);
    assert_header("Authorization", NULL);
    assert_header("Cookie", NULL);
    assert_header("Origin", "https://app.example.com");
    assert_header("X-User-Id", "alice");
    assert_header("X-Role", "admin");
    /* extra lines come last */
    assert_true(http_eq(again_h[again.nheaders - 1].name,
                        again_h[again.nheaders - 1].name_len, "X-Role"));

    /* no prefix */
    be.path_prefix = "";
    n = upgrade_backend_request(out, sizeof out, &req, &f);
    be.path_prefix = "/api";
    reparse(n);
    assert_memory_equal(out, "GET /chat?x=1&y=2 HTTP/1.1\r\n", 28);

    /* extra that is not whole lines, or would inject, is refused */
    f.extra = "X-A: b\r\nX-B: c";
    f.extra_len = strlen(f.extra);
    assert_int_equal(upgrade_backend_request(out, sizeof out, &req, &f), -1);
    f.extra = "X-A: b\r\n\r\nGET / HTTP/1.1\r\n";
    f.extra_len = strlen(f.extra);
    assert_int_equal(upgrade_backend_request(out, sizeof out, &req, &f), -1);
    f.extra = "X-A: b\nX-B: c\r\n";
    f.extra_len = strlen(f.extra);
    assert_int_equal(upgrade_backend_request(out, sizeof out, &req, &f), -1);
    f.extra = "X A: b\r\n";
    f.extra_len = strlen(f.extra);
    assert_int_equal(upgrade_backend_request(out, sizeof out, &req, &f), -1);

    /* a client ip that could end a line is refused */
    f.extra = NULL;
    f.extra_len = 0;
    f.client_ip = "1.2.3.4\r\nX: y";
    assert_int_equal(upgrade_backend_request(out, sizeof out, &req, &f), -1);
}

static void
test_backend_cap(void **state)
{
    struct upgrade_fwd f;
    int full;

    (void)state;
    assert_true(parse_req(client_full, sizeof client_full - 1) > 0);
    f = fwd_default();
    full = upgrade_backend_request(out, sizeof out, &req, &f);
    assert_true(full > 0);
    /* every cap short of the full length is refused, never truncated;
     * the output is placed against the guard page */
    for (int cap = 0; cap < full; cap++) {
        char *g = (char *)guard_base + 3 * guard_page - (size_t)cap;
        assert_int_equal(upgrade_backend_request(g, (size_t)cap, &req, &f),
                         -1);
    }
    {
        char *g = (char *)guard_base + 3 * guard_page - (size_t)full;
        assert_int_equal(upgrade_backend_request(g, (size_t)full, &req, &f),
                         full);
        assert_memory_equal(g, out, (size_t)full);
    }
}

/* ---- the backend's 101 */

static const char offer[] =
    "GET /chat HTTP/1.1\r\n" HOST UPG CONN KEY VER
    "Sec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Protocol: v2.chat\r\n"
    "\r\n";

/* The key wsguard sent is the RFC's sample here, so the accept is known. */
#define ACC "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
#define R101 "HTTP/1.1 101 Switching Protocols\r\n"

struct rvec {
    const char *name;
    const char *in;
    int expect;
    const char *proto;
};

static const struct rvec rvecs[] = {
    { "good", R101 UPG CONN ACC END, 0, NULL },
    { "good, no reason", "HTTP/1.1 101\r\n" UPG CONN ACC END, 0, NULL },
    { "good, case", R101 "upgrade: WebSocket\r\nconnection: upgrade\r\n"
      "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" END, 0, NULL },
    { "Connection list", R101 UPG "Connection: keep-alive, Upgrade\r\n" ACC
      END, 0, NULL },
    { "protocol", R101 UPG CONN ACC "Sec-WebSocket-Protocol: superchat\r\n"
      END, 0, "superchat" },
    { "protocol from second header", R101 UPG CONN ACC
      "Sec-WebSocket-Protocol: v2.chat\r\n" END, 0, "v2.chat" },
    { "protocol case differs", R101 UPG CONN ACC
      "Sec-WebSocket-Protocol: Chat\r\n" END, -1, NULL },
    { "protocol not offered", R101 UPG CONN ACC
      "Sec-WebSocket-Protocol: other\r\n" END, -1, NULL },
    { "protocol list", R101 UPG CONN ACC
      "Sec-WebSocket-Protocol: chat, superchat\r\n" END, -1, NULL },
    { "protocol prefix", R101 UPG CONN ACC
      "Sec-WebSocket-Protocol: cha\r\n" END, -1, NULL },
    { "two protocol headers", R101 UPG CONN ACC
      "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: chat\r\n" END,
      -1, NULL },
    { "wrong accept", R101 UPG CONN
      "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo\r\n" END, -1, NULL },
    { "accept of another key", R101 UPG CONN
      "Sec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=\r\n" END, -1,
      NULL },
    { "missing accept", R101 UPG CONN END, -1, NULL },
    { "two accepts", R101 UPG CONN ACC ACC END, -1, NULL },
    { "missing upgrade", R101 CONN ACC END, -1, NULL },
    { "upgrade h2c", R101 "Upgrade: h2c\r\n" CONN ACC END, -1, NULL },
    { "two upgrades", R101 UPG UPG CONN ACC END, -1, NULL },
    { "missing connection", R101 UPG ACC END, -1, NULL },
    { "extensions", R101 UPG CONN ACC
      "Sec-WebSocket-Extensions: permessage-deflate\r\n" END, -1, NULL },
    { "status 200", "HTTP/1.1 200 OK\r\n" UPG CONN ACC END, -1, NULL },
    { "status 403", "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n" END, -1,
      NULL },
};

static void
test_check_response(void **state)
{
    static const char key[] = "dGhlIHNhbXBsZSBub25jZQ==";

    (void)state;
    assert_true(parse_req(offer, sizeof offer - 1) > 0);
    for (size_t i = 0; i < sizeof rvecs / sizeof rvecs[0]; i++) {
        const struct rvec *v = &rvecs[i];
        const char *proto = "junk", *why = NULL;
        size_t proto_len = 99;
        int ret;

        print_message("response: %s\n", v->name);
        assert_int_equal(parse_resp(v->in, strlen(v->in)),
                         (int)strlen(v->in));
        ret = upgrade_check_response(&resp, key, &req, &proto, &proto_len,
                                     &why);
        assert_int_equal(ret, v->expect);
        if (ret != 0) {
            assert_non_null(why);
            continue;
        }
        if (v->proto == NULL) {
            assert_null(proto);
            assert_int_equal(proto_len, 0);
        } else {
            assert_int_equal(proto_len, strlen(v->proto));
            assert_memory_equal(proto, v->proto, proto_len);
        }
    }

    /* a client that offered nothing gets no subprotocol forced on it */
    {
        static const char none[] = GET HOST UPG CONN KEY VER END;
        static const char r[] = R101 UPG CONN ACC
            "Sec-WebSocket-Protocol: chat\r\n" END;
        const char *proto, *why;
        size_t proto_len;

        assert_true(parse_req(none, sizeof none - 1) > 0);
        assert_true(parse_resp(r, sizeof r - 1) > 0);
        assert_int_equal(upgrade_check_response(&resp, key, &req, &proto,
                                                &proto_len, &why), -1);
    }
}

static void
test_client_response(void **state)
{
    int n;
    size_t count;
    const struct http_header *h;

    (void)state;
    n = upgrade_client_response(out, sizeof out, "dGhlIHNhbXBsZSBub25jZQ==",
                                "chat", 4, NULL);
    assert_true(n > 0);
    assert_int_equal(parse_resp(out, (size_t)n), n);
    assert_int_equal(resp.status, 101);
    h = http_find(resp.headers, resp.nheaders, "Sec-WebSocket-Accept",
                  &count);
    assert_int_equal(count, 1);
    assert_int_equal(h->value_len, UPGRADE_ACCEPT_LEN);
    assert_memory_equal(h->value, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                        UPGRADE_ACCEPT_LEN);
    h = http_find(resp.headers, resp.nheaders, "Sec-WebSocket-Protocol",
                  &count);
    assert_int_equal(count, 1);
    assert_true(http_eq(h->value, h->value_len, "chat"));
    /* and it passes our own backend-side check */
    assert_true(parse_req(offer, sizeof offer - 1) > 0);
    {
        const char *proto, *why;
        size_t proto_len;
        assert_int_equal(upgrade_check_response(&resp,
                                                "dGhlIHNhbXBsZSBub25jZQ==",
                                                &req, &proto, &proto_len,
                                                &why), 0);
    }

    n = upgrade_client_response(out, sizeof out, "dGhlIHNhbXBsZSBub25jZQ==",
                                NULL, 0, NULL);
    assert_int_equal(parse_resp(out, (size_t)n), n);
    assert_null(http_find(resp.headers, resp.nheaders,
                          "Sec-WebSocket-Protocol", NULL));
    assert_null(http_find(resp.headers, resp.nheaders,
                          "Sec-WebSocket-Extensions", NULL));
    for (int cap = 0; cap < n; cap++)
        assert_int_equal(upgrade_client_response(out, (size_t)cap,
                                                 "dGhlIHNhbXBsZSBub25jZQ==",
                                                 NULL, 0, NULL), -1);
    /* a subprotocol that is not a token is refused */
    assert_int_equal(upgrade_client_response(out, sizeof out,
                                             "dGhlIHNhbXBsZSBub25jZQ==",
                                             "a\r\nX: y", 8, NULL), -1);
    assert_int_equal(upgrade_client_response(out, sizeof out,
                                             "dGhlIHNhbXBsZSBub25jZQ==",
                                             "a, b", 4, NULL), -1);
    /* permessage-deflate's answer (pmd_negotiate) */
    n = upgrade_client_response(out, sizeof out, "dGhlIHNhbXBsZSBub25jZQ==",
                                NULL, 0, "permessage-deflate; "
                                "server_max_window_bits=12");
    assert_int_equal(parse_resp(out, (size_t)n), n);
    h = http_find(resp.headers, resp.nheaders, "Sec-WebSocket-Extensions",
                  &count);
    assert_int_equal(count, 1);
    assert_true(http_eq(h->value, h->value_len, "permessage-deflate; "
                        "server_max_window_bits=12"));
}

/* ---- refusals */

static void
check_refusal(int n, int status, const char *phrase)
{
    char body[64];
    const struct http_header *h;
    size_t count;

    assert_true(n > 0);
    {
        int head = parse_resp(out, (size_t)n);
        assert_true(head > 0);
        assert_int_equal(resp.status, status);
        assert_int_equal(resp.reason_len, strlen(phrase));
        assert_memory_equal(resp.reason, phrase, resp.reason_len);
        h = http_find(resp.headers, resp.nheaders, "Content-Length", &count);
        assert_int_equal(count, 1);
        snprintf(body, sizeof body, "%d", n - head);
        assert_true(http_eq(h->value, h->value_len, body));
        h = http_find(resp.headers, resp.nheaders, "Connection", &count);
        assert_true(http_eq(h->value, h->value_len, "close"));
        h = http_find(resp.headers, resp.nheaders, "Content-Type", &count);
        assert_true(http_eq(h->value, h->value_len, "text/plain"));
        /* one line naming the status */
        assert_int_equal(out[n - 1], '\n');
        assert_null(memchr(out + head, '\n', (size_t)(n - head - 1)));
        snprintf(body, sizeof body, "%d ", status);
        assert_memory_equal(out + head, body, 4);
    }
}

static void
test_refusal(void **state)
{
    static const struct {
        int status;
        const char *phrase;
    } std[] = {
        { 400, "Bad Request" }, { 401, "Unauthorized" },
        { 403, "Forbidden" }, { 404, "Not Found" },
        { 405, "Method Not Allowed" }, { 426, "Upgrade Required" },
        { 429, "Too Many Requests" },
        { 431, "Request Header Fields Too Large" },
        { 500, "Internal Server Error" }, { 502, "Bad Gateway" },
        { 503, "Service Unavailable" }, { 504, "Gateway Timeout" },
    };
    const struct http_header *h;
    int n;

    (void)state;
    for (size_t i = 0; i < sizeof std / sizeof std[0]; i++) {
        n = upgrade_refusal(out, sizeof out, std[i].status, NULL, 0);
        check_refusal(n, std[i].status, std[i].phrase);
    }

    n = upgrade_refusal(out, sizeof out, 403, NULL, 0);
    assert_true(strstr(out, "\r\n\r\n403 Forbidden\n") != NULL);

    n = upgrade_refusal(out, sizeof out, 405, NULL, 0);
    check_refusal(n, 405, "Method Not Allowed");
    h = http_find(resp.headers, resp.nheaders, "Allow", NULL);
    assert_true(h && http_eq(h->value, h->value_len, "GET"));

    n = upgrade_refusal(out, sizeof out, 426, NULL, 0);
    check_refusal(n, 426, "Upgrade Required");
    h = http_find(resp.headers, resp.nheaders, "Upgrade", NULL);
    assert_true(h && http_eq(h->value, h->value_len, "websocket"));
    h = http_find(resp.headers, resp.nheaders, "Sec-WebSocket-Version", NULL);
    assert_true(h && http_eq(h->value, h->value_len, "13"));

    n = upgrade_refusal(out, sizeof out, 401, NULL, 0);
    check_refusal(n, 401, "Unauthorized");
    h = http_find(resp.headers, resp.nheaders, "WWW-Authenticate", NULL);
    assert_true(h && http_eq(h->value, h->value_len,
                             "Bearer error=\"invalid_token\""));

    /* a backend's phrase passes, sanitised and bounded; the body keeps the
     * standard phrase */
    n = upgrade_refusal(out, sizeof out, 502, "Nope", 4);
    check_refusal(n, 502, "Nope");
    assert_true(strstr(out, "\r\n\r\n502 Bad Gateway\n") != NULL);
    {
        static const char evil[] = " Bad\r\nSet-Cookie: x=1\x00\xff ";
        n = upgrade_refusal(out, sizeof out, 502, evil, sizeof evil - 1);
        check_refusal(n, 502, "BadSet-Cookie: x=1");
        assert_null(http_find(resp.headers, resp.nheaders, "Set-Cookie",
                              NULL));
    }
    {
        char longp[300];
        memset(longp, 'x', sizeof longp);
        n = upgrade_refusal(out, sizeof out, 502, longp, sizeof longp);
        assert_int_equal(parse_resp(out, (size_t)n) > 0, 1);
        assert_int_equal(resp.reason_len, 64);
    }
    /* all-junk phrase: the standard one */
    n = upgrade_refusal(out, sizeof out, 502, "\r\n", 2);
    check_refusal(n, 502, "Bad Gateway");

    /* unknown but valid status, invalid status, small buffers */
    n = upgrade_refusal(out, sizeof out, 418, NULL, 0);
    check_refusal(n, 418, "Error");
    assert_int_equal(upgrade_refusal(out, sizeof out, 99, NULL, 0), -1);
    assert_int_equal(upgrade_refusal(out, sizeof out, 1000, NULL, 0), -1);
    n = upgrade_refusal(out, sizeof out, 431, NULL, 0);
    for (int cap = 0; cap < n; cap++) {
        char *g = (char *)guard_base + 3 * guard_page - (size_t)cap;
        assert_int_equal(upgrade_refusal(g, (size_t)cap, 431, NULL, 0), -1);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_vectors),
        cmocka_unit_test(test_upgrade_req_fields),
        cmocka_unit_test(test_accept),
        cmocka_unit_test(test_new_key),
        cmocka_unit_test(test_backend_untrusted),
        cmocka_unit_test(test_backend_trusted),
        cmocka_unit_test(test_backend_no_forwarded),
        cmocka_unit_test(test_backend_drop_extra_target),
        cmocka_unit_test(test_backend_smuggling),
        cmocka_unit_test(test_backend_cap),
        cmocka_unit_test(test_check_response),
        cmocka_unit_test(test_client_response),
        cmocka_unit_test(test_refusal),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
