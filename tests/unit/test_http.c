/*
 * test_http.c - the HTTP/1.1 head parser against tables of vectors.
 *
 * Every vector is parsed whole and then fed as it would arrive: one byte
 * at a time with last_len (the first non-INCOMPLETE answer must equal the
 * whole answer, and a complete head must not be reported before its last
 * byte), and split in two at every offset. Every call sees its input
 * placed against a PROT_NONE page, so a read past len faults even
 * without a sanitizer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "http.h"

#define MAXH 16

#include "guard.h"

/* ---- result capture: offsets relative to the buffer, comparable across
 * calls whose buffers live at different addresses */

struct hdr_off {
    size_t name, name_len, value, value_len;
};

struct result {
    int ret;
    size_t a, a_len;            /* method / reason */
    size_t b, b_len;            /* target / unused */
    int minor, status;
    size_t nheaders;
    struct hdr_off h[MAXH];
};

static struct result
run_req(const char *in, size_t len, size_t last_len, size_t cap)
{
    struct http_header hh[MAXH];
    struct http_request req;
    struct result r;
    const char *buf = guarded(in, len);

    memset(&r, 0, sizeof r);
    memset(&req, 0, sizeof req);
    req.headers = hh;
    req.nheaders = cap;
    r.ret = http_parse_request(buf, len, last_len, &req);
    if (r.ret <= 0) {
        /* The struct is left alone unless the head parsed. */
        assert_int_equal(req.nheaders, cap);
        return r;
    }
    r.a = (size_t)(req.method - buf);
    r.a_len = req.method_len;
    r.b = (size_t)(req.target - buf);
    r.b_len = req.target_len;
    r.minor = req.minor_version;
    r.nheaders = req.nheaders;
    for (size_t i = 0; i < req.nheaders; i++) {
        r.h[i].name = (size_t)(hh[i].name - buf);
        r.h[i].name_len = hh[i].name_len;
        r.h[i].value = (size_t)(hh[i].value - buf);
        r.h[i].value_len = hh[i].value_len;
    }
    return r;
}

static struct result
run_resp(const char *in, size_t len, size_t last_len, size_t cap)
{
    struct http_header hh[MAXH];
    struct http_response resp;
    struct result r;
    const char *buf = guarded(in, len);

    memset(&r, 0, sizeof r);
    memset(&resp, 0, sizeof resp);
    resp.headers = hh;
    resp.nheaders = cap;
    r.ret = http_parse_response(buf, len, last_len, &resp);
    if (r.ret <= 0) {
        assert_int_equal(resp.nheaders, cap);
        return r;
    }
    r.a = (size_t)(resp.reason - buf);
    r.a_len = resp.reason_len;
    r.minor = resp.minor_version;
    r.status = resp.status;
    r.nheaders = resp.nheaders;
    for (size_t i = 0; i < resp.nheaders; i++) {
        r.h[i].name = (size_t)(hh[i].name - buf);
        r.h[i].name_len = hh[i].name_len;
        r.h[i].value = (size_t)(hh[i].value - buf);
        r.h[i].value_len = hh[i].value_len;
    }
    return r;
}

static void
assert_same(const struct result *x, const struct result *y)
{
    assert_int_equal(x->ret, y->ret);
    assert_int_equal(x->a, y->a);
    assert_int_equal(x->a_len, y->a_len);
    assert_int_equal(x->b, y->b);
    assert_int_equal(x->b_len, y->b_len);
    assert_int_equal(x->minor, y->minor);
    assert_int_equal(x->status, y->status);
    assert_int_equal(x->nheaders, y->nheaders);
    for (size_t i = 0; i < x->nheaders && i < MAXH; i++) {
        assert_int_equal(x->h[i].name, y->h[i].name);
        assert_int_equal(x->h[i].name_len, y->h[i].name_len);
        assert_int_equal(x->h[i].value, y->h[i].value);
        assert_int_equal(x->h[i].value_len, y->h[i].value_len);
    }
}

typedef struct result (*run_fn)(const char *, size_t, size_t, size_t);

/*
 * Whole, byte at a time, and every two-piece split. Returns the whole
 * result. A complete head (> 0) must be found exactly when its last byte
 * arrives; an error may be found earlier, never later than the whole.
 */
static struct result
check_all_feeds(run_fn run, const char *in, size_t len, size_t cap)
{
    struct result whole = run(in, len, 0, cap);
    struct result r;
    size_t k;

    for (k = 1; k <= len; k++) {
        r = run(in, k, k - 1, cap);
        if (r.ret != HTTP_INCOMPLETE)
            break;
        /* Without last_len the answer is the same. */
        r = run(in, k, 0, cap);
        assert_int_equal(r.ret, HTTP_INCOMPLETE);
    }
    if (k > len) {
        assert_int_equal(whole.ret, HTTP_INCOMPLETE);
        return whole;
    }
    assert_same(&r, &whole);
    if (whole.ret > 0)
        assert_int_equal(k, (size_t)whole.ret);

    /* Two pieces: whatever the first piece said, the second call must
     * agree with the whole once the first piece was incomplete. */
    for (size_t s = 0; s < len; s++) {
        r = run(in, s, 0, cap);
        if (r.ret != HTTP_INCOMPLETE)
            continue;
        r = run(in, len, s, cap);
        assert_same(&r, &whole);
    }
    return whole;
}

/* ---- request vectors */

struct vec {
    const char *name;
    const char *in;
    size_t len;                 /* 0: strlen(in) */
    int ret;                    /* > 0 means "the whole input" */
};

#define OK 1

static const struct vec req_vecs[] = {
    { "minimal", "GET / HTTP/1.1\r\n\r\n", 0, OK },
    { "host", "GET /chat?x=1 HTTP/1.1\r\nHost: a.example\r\n\r\n", 0, OK },
    { "http/1.0", "GET / HTTP/1.0\r\nHost: a\r\n\r\n", 0, OK },
    { "tchar method", "M-SEARCH! / HTTP/1.1\r\n\r\n", 0, OK },
    { "empty value", "GET / HTTP/1.1\r\nX:\r\n\r\n", 0, OK },
    { "ows value", "GET / HTTP/1.1\r\nX: \t \r\n\r\n", 0, OK },
    { "obs-text value", "GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n", 0, OK },
    { "htab in value", "GET / HTTP/1.1\r\nX: a\tb\r\n\r\n", 0, OK },
    { "http/1.2", "GET / HTTP/1.2\r\n\r\n", 0, HTTP_ERROR },
    { "http/2.0", "GET / HTTP/2.0\r\n\r\n", 0, HTTP_ERROR },
    { "http/1.10", "GET / HTTP/1.10\r\n\r\n", 0, HTTP_ERROR },
    { "lower proto", "GET / http/1.1\r\n\r\n", 0, HTTP_ERROR },
    { "no version", "GET /\r\n\r\n", 0, HTTP_ERROR },
    { "two spaces", "GET  / HTTP/1.1\r\n\r\n", 0, HTTP_ERROR },
    { "empty target", "GET  HTTP/1.1\r\n\r\n", 0, HTTP_ERROR },
    { "trailing space", "GET / HTTP/1.1 \r\n\r\n", 0, HTTP_ERROR },
    { "tab separator", "GET\t/ HTTP/1.1\r\n\r\n", 0, HTTP_ERROR },
    { "tab in target", "GET /a\tb HTTP/1.1\r\n\r\n", 0, HTTP_ERROR },
    { "del in target", "GET /a\x7f HTTP/1.1\r\n\r\n", 0, HTTP_ERROR },
    { "nul in target", "GET /a\0b HTTP/1.1\r\n\r\n", 21, HTTP_ERROR },
    { "bad method char", "GE(T / HTTP/1.1\r\n\r\n", 0, HTTP_ERROR },
    { "empty method", " / HTTP/1.1\r\n\r\n", 0, HTTP_ERROR },
    { "leading crlf", "\r\nGET / HTTP/1.1\r\n\r\n", 0, HTTP_ERROR },
    { "empty head", "\r\n\r\n", 0, HTTP_ERROR },
    { "obs-fold", "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 0, HTTP_ERROR },
    { "obs-fold tab", "GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", 0,
      HTTP_ERROR },
    { "ws after start line", "GET / HTTP/1.1\r\n X: a\r\n\r\n", 0,
      HTTP_ERROR },
    { "space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 0,
      HTTP_ERROR },
    { "tab before colon", "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 0,
      HTTP_ERROR },
    { "no colon", "GET / HTTP/1.1\r\nHost a\r\n\r\n", 0, HTTP_ERROR },
    { "empty name", "GET / HTTP/1.1\r\n: a\r\n\r\n", 0, HTTP_ERROR },
    { "bad name char", "GET / HTTP/1.1\r\nX(y: a\r\n\r\n", 0, HTTP_ERROR },
    { "bare lf header", "GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n", 0,
      HTTP_ERROR },
    { "bare lf start", "GET / HTTP/1.1\nX: a\r\n\r\n", 0, HTTP_ERROR },
    { "bare lf end", "GET / HTTP/1.1\n\n", 0, HTTP_ERROR },
    { "bare cr", "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 0, HTTP_ERROR },
    { "nul in value", "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 26, HTTP_ERROR },
    { "ctl in value", "GET / HTTP/1.1\r\nX: a\x01\r\n\r\n", 0, HTTP_ERROR },
    { "del in value", "GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", 0, HTTP_ERROR },
    { "nul early", "GET / HTTP/1.1\r\nX: \0", 20, HTTP_ERROR },
    { "incomplete", "GET / HTTP/1.1\r\nHost: a\r\n\r", 0, HTTP_INCOMPLETE },
    { "incomplete empty", "", 0, HTTP_INCOMPLETE },
};

static size_t
vec_len(const struct vec *v)
{
    return v->len ? v->len : strlen(v->in);
}

static void
test_request_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof req_vecs / sizeof req_vecs[0]; i++) {
        const struct vec *v = &req_vecs[i];
        size_t len = vec_len(v);
        struct result r;

        print_message("request: %s\n", v->name);
        r = check_all_feeds(run_req, v->in, len, MAXH);
        if (v->ret == OK)
            assert_int_equal(r.ret, (int)len);
        else
            assert_int_equal(r.ret, v->ret);
    }
}

static void
test_request_fields(void **state)
{
    static const char in[] =
        "GET /chat?room=1 HTTP/1.1\r\n"
        "Host:example.com\r\n"
        "X-Trim: \t a b \t \r\n"
        "Empty:\r\n"
        "\r\n"
        "\x81\x85 frame bytes";
    size_t head = sizeof in - 1 - strlen("\x81\x85 frame bytes");
    struct http_header hh[4];
    struct http_request req = { .headers = hh, .nheaders = 4 };
    const char *buf = guarded(in, sizeof in - 1);

    (void)state;
    assert_int_equal(http_parse_request(buf, sizeof in - 1, 0, &req),
                     (int)head);
    assert_int_equal(req.method_len, 3);
    assert_memory_equal(req.method, "GET", 3);
    assert_int_equal(req.target_len, strlen("/chat?room=1"));
    assert_memory_equal(req.target, "/chat?room=1", req.target_len);
    assert_int_equal(req.minor_version, 1);
    assert_int_equal(req.nheaders, 3);
    assert_true(http_eq(hh[0].name, hh[0].name_len, "host"));
    assert_true(http_eq(hh[0].value, hh[0].value_len, "example.com"));
    assert_true(http_eq(hh[1].value, hh[1].value_len, "a b"));
    assert_int_equal(hh[2].value_len, 0);
    /* the bytes after the head are the next layer's */
    check_all_feeds(run_req, in, sizeof in - 1, 4);
}

static void
test_too_many(void **state)
{
    static const char in[] =
        "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    static const char bad[] =
        "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC : 3\r\n\r\n";
    size_t len = sizeof in - 1;

    (void)state;
    assert_int_equal(check_all_feeds(run_req, in, len, 3).ret, (int)len);
    assert_int_equal(check_all_feeds(run_req, in, len, 2).ret,
                     HTTP_TOO_MANY);
    assert_int_equal(check_all_feeds(run_req, in, len, 0).ret,
                     HTTP_TOO_MANY);
    /* malformed beyond the capacity is still malformed */
    assert_int_equal(check_all_feeds(run_req, bad, sizeof bad - 1, 1).ret,
                     HTTP_ERROR);
}

static void
test_early_error(void **state)
{
    static const struct vec early[] = {
        { "nul first", "\0", 1, HTTP_ERROR },
        { "space first", " ", 0, HTTP_ERROR },
        { "ctl in start line", "GET /\x01", 0, HTTP_ERROR },
        { "bare lf", "GET / HTTP/1.1\n", 0, HTTP_ERROR },
        { "cr not lf", "GET / HTTP/1.1\rX", 0, HTTP_ERROR },
        { "fold", "GET / HTTP/1.1\r\nA: b\r\n ", 0, HTTP_ERROR },
        { "cr at end", "GET / HTTP/1.1\r", 0, HTTP_INCOMPLETE },
        { "half terminator", "GET / HTTP/1.1\r\nA: b\r\n\r", 0,
          HTTP_INCOMPLETE },
    };

    (void)state;
    for (size_t i = 0; i < sizeof early / sizeof early[0]; i++) {
        const struct vec *v = &early[i];
        print_message("early: %s\n", v->name);
        assert_int_equal(run_req(v->in, vec_len(v), 0, MAXH).ret, v->ret);
        check_all_feeds(run_req, v->in, vec_len(v), MAXH);
    }
    assert_int_equal(run_resp("HTTX", 4, 0, MAXH).ret, HTTP_ERROR);
    assert_int_equal(run_resp("HTTP/1", 6, 0, MAXH).ret, HTTP_INCOMPLETE);
}

/* ---- response vectors */

struct rvec {
    const char *name;
    const char *in;
    int ret;
    int status;
    const char *reason;
};

static const struct rvec resp_vecs[] = {
    { "101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
      "\r\n", OK, 101, "Switching Protocols" },
    { "no reason", "HTTP/1.1 101\r\n\r\n", OK, 101, "" },
    { "empty reason", "HTTP/1.1 101 \r\n\r\n", OK, 101, "" },
    { "1.0", "HTTP/1.0 403 Forbidden\r\n\r\n", OK, 403, "Forbidden" },
    { "999", "HTTP/1.1 999 x\r\n\r\n", OK, 999, "x" },
    { "tab reason", "HTTP/1.1 200 O\tK\r\n\r\n", OK, 200, "O\tK" },
    { "099", "HTTP/1.1 099 x\r\n\r\n", HTTP_ERROR, 0, NULL },
    { "4 digits", "HTTP/1.1 1010 x\r\n\r\n", HTTP_ERROR, 0, NULL },
    { "2 digits", "HTTP/1.1 10 x\r\n\r\n", HTTP_ERROR, 0, NULL },
    { "no status", "HTTP/1.1\r\n\r\n", HTTP_ERROR, 0, NULL },
    { "two spaces", "HTTP/1.1  101 x\r\n\r\n", HTTP_ERROR, 0, NULL },
    { "glued reason", "HTTP/1.1 101x\r\n\r\n", HTTP_ERROR, 0, NULL },
    { "1.2", "HTTP/1.2 101 x\r\n\r\n", HTTP_ERROR, 0, NULL },
    { "icy", "ICY 200 OK\r\n\r\n", HTTP_ERROR, 0, NULL },
    { "ctl reason", "HTTP/1.1 101 a\x01\r\n\r\n", HTTP_ERROR, 0, NULL },
    { "fold", "HTTP/1.1 101 x\r\nA: b\r\n c\r\n\r\n", HTTP_ERROR, 0, NULL },
    { "space before colon", "HTTP/1.1 101 x\r\nA : b\r\n\r\n", HTTP_ERROR,
      0, NULL },
    { "bare lf", "HTTP/1.1 101 x\nA: b\r\n\r\n", HTTP_ERROR, 0, NULL },
    { "incomplete", "HTTP/1.1 101 x\r\nA: b\r\n", HTTP_INCOMPLETE, 0, NULL },
};

static void
test_response_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof resp_vecs / sizeof resp_vecs[0]; i++) {
        const struct rvec *v = &resp_vecs[i];
        size_t len = strlen(v->in);
        struct result r;

        print_message("response: %s\n", v->name);
        r = check_all_feeds(run_resp, v->in, len, MAXH);
        if (v->ret != OK) {
            assert_int_equal(r.ret, v->ret);
            continue;
        }
        assert_int_equal(r.ret, (int)len);
        assert_int_equal(r.status, v->status);
        assert_int_equal(r.a_len, strlen(v->reason));
        assert_memory_equal(v->in + r.a, v->reason, r.a_len);
    }
}

/* ---- helpers */

static void
test_eq_find(void **state)
{
    struct http_header hh[3] = {
        { "Connection", 10, "a", 1 },
        { "host", 4, "x", 1 },
        { "CONNECTION", 10, "b", 1 },
    };
    size_t n = 99;

    (void)state;
    assert_true(http_eq("WebSocket", 9, "websocket"));
    assert_true(http_eq("", 0, ""));
    assert_false(http_eq("websocke", 8, "websocket"));
    assert_false(http_eq("websockets", 10, "websocket"));
    assert_false(http_eq("a\0", 2, "a"));
    /* ASCII folding only: '[' and '{' differ by 0x20 but are not letters */
    assert_false(http_eq("[", 1, "{"));

    assert_ptr_equal(http_find(hh, 3, "connection", &n), &hh[0]);
    assert_int_equal(n, 2);
    assert_ptr_equal(http_find(hh, 3, "Host", NULL), &hh[1]);
    assert_null(http_find(hh, 3, "Upgrade", &n));
    assert_int_equal(n, 0);
    assert_null(http_find(hh, 0, "Host", &n));
}

static void
test_list_has(void **state)
{
    (void)state;
#define LH(s, t) http_list_has(s, strlen(s), t)
    assert_true(LH("Upgrade", "upgrade"));
    assert_true(LH("keep-alive, Upgrade", "upgrade"));
    assert_true(LH("keep-alive,Upgrade", "upgrade"));
    assert_true(LH(" ,, upgrade \t, ", "upgrade"));
    assert_true(LH("upgrade,keep-alive", "keep-alive"));
    assert_false(LH("keep-alive", "upgrade"));
    assert_false(LH("upgrades", "upgrade"));
    assert_false(LH("up grade", "upgrade"));
    assert_false(LH("upgrade-x", "upgrade"));
    assert_false(LH("", "upgrade"));
    assert_false(LH(",", "upgrade"));
    assert_false(LH("upgrade", ""));
#undef LH
    /* counted: the byte after len is not part of the list */
    assert_false(http_list_has("upgradex", 6, "upgrade"));
    assert_true(http_list_has("upgrade,x", 7, "upgrade"));
}

/* The O(n) contract: only the new bytes (and 3 before them) are searched
 * for the terminator, which shows as finding one that straddles calls. */
static void
test_straddle(void **state)
{
    static const char in[] = "GET / HTTP/1.1\r\nA: b\r\n\r\n";
    size_t len = sizeof in - 1;

    (void)state;
    for (size_t s = len - 4; s < len; s++) {
        assert_int_equal(run_req(in, s, 0, MAXH).ret, HTTP_INCOMPLETE);
        assert_int_equal(run_req(in, len, s, MAXH).ret, (int)len);
    }
    /* last_len beyond len is treated as a fresh search, not trusted */
    assert_int_equal(run_req(in, len, len + 10, MAXH).ret, (int)len);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_vectors),
        cmocka_unit_test(test_request_fields),
        cmocka_unit_test(test_too_many),
        cmocka_unit_test(test_early_error),
        cmocka_unit_test(test_response_vectors),
        cmocka_unit_test(test_eq_find),
        cmocka_unit_test(test_list_has),
        cmocka_unit_test(test_straddle),
    };
    return cmocka_run_group_tests(tests, guard_setup, guard_teardown);
}
