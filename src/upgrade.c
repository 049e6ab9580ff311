/*
 * upgrade.c - the RFC 6455 §4 opening handshake on both legs.
 *
 * Everything here works on heads already accepted by http.c, so names are
 * tokens and values contain no CR, LF or other CTL but HTAB. Output is
 * built with a bounded writer that refuses (rather than truncates) when
 * the caller's buffer is too small, and that also refuses any CTL in a
 * value wsguard supplies itself, so no header can be injected whatever a
 * caller passes.
 */
#include "upgrade.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* RFC 6455 §1.3 */
static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* A bounded output buffer: the first write that does not fit (or that
 * would emit a control character inside a value) sets fail, and every
 * later write is ignored, so a builder checks once at the end. */
struct writer {
    char *buf;
    size_t len;
    size_t cap;
    int fail;
};

static void
put(struct writer *w, const char *s, size_t n)
{
    if (w->fail)
        return;
    if (w->buf == NULL || n > w->cap - w->len) {
        w->fail = 1;
        return;
    }
    if (n > 0)
        memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static void
put_str(struct writer *w, const char *s)
{
    put(w, s, strlen(s));
}

/* "name: value\r\n". A value byte that could end the line or the head
 * (CR, LF, NUL, any CTL but HTAB) fails the whole output: parsed values
 * cannot hold one, so this only trips on a caller bug, which must not
 * become header injection. */
static void
put_header(struct writer *w, const char *name, size_t name_len,
           const char *value, size_t value_len)
{
    for (size_t i = 0; i < value_len; i++) {
        unsigned char c = (unsigned char)value[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            w->fail = 1;
            return;
        }
    }
    put(w, name, name_len);
    put(w, ": ", 2);
    put(w, value, value_len);
    put(w, "\r\n", 2);
}

static void
put_header_str(struct writer *w, const char *name, const char *value)
{
    put_header(w, name, strlen(name), value, strlen(value));
}

static int
writer_result(const struct writer *w)
{
    if (w->fail || w->len > INT_MAX)
        return -1;
    return (int)w->len;
}

static int
is_b64(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '+' || c == '/';
}

/*
 * RFC 6455 §4.1: the key is the base64 of 16 random bytes, i.e. 22
 * alphabet characters and "==". Checked by hand because EVP_DecodeBlock
 * does not report padding and would accept 15 or 17 bytes padded out.
 * Non-zero bits in the last character's unused low 4 bits (a
 * non-canonical encoding) are accepted, as python-websockets and most
 * servers do: the key is only ever hashed as text.
 */
static int
valid_key(const char *v, size_t len)
{
    if (len != UPGRADE_KEY_LEN)
        return 0;
    for (size_t i = 0; i < UPGRADE_KEY_LEN - 2; i++)
        if (!is_b64((unsigned char)v[i]))
            return 0;
    return v[22] == '=' && v[23] == '=';
}

/* Does any header named name list token (Connection may be repeated:
 * RFC 9110 §5.3, the values combine as one list)? */
static int
any_list_has(const struct http_header *h, size_t n, const char *name,
             const char *token)
{
    for (size_t i = 0; i < n; i++)
        if (http_eq(h[i].name, h[i].name_len, name) &&
            http_list_has(h[i].value, h[i].value_len, token))
            return 1;
    return 0;
}

static int
refuse(int status, const char *why, const char **reason)
{
    if (reason != NULL)
        *reason = why;
    return status;
}

int
upgrade_check(const struct http_request *req, struct upgrade_req *out,
              const char **reason)
{
    const struct http_header *h, *host, *key, *origin;
    const struct http_header *cl, *te;
    size_t n, count;

    if (req == NULL)
        return refuse(400, "no request", reason);
    h = req->headers;
    n = req->nheaders;
    if (out != NULL)
        memset(out, 0, sizeof *out);

    /* Method names are case-sensitive (RFC 9110 §9.1): "get" is not GET. */
    if (req->method_len != 3 || memcmp(req->method, "GET", 3) != 0)
        return refuse(405, "method not GET", reason);
    if (req->minor_version != 1)
        return refuse(400, "not HTTP/1.1", reason);
    if (req->target_len == 0 || req->target[0] != '/')
        return refuse(400, "target not origin-form", reason);

    host = http_find(h, n, "Host", &count);
    if (count == 0 || host->value_len == 0)
        return refuse(400, "missing Host", reason);
    if (count > 1)
        return refuse(400, "duplicate Host", reason);

    /* A second Origin would let the origin check read one value while
     * the backend, which receives both, reads the other. */
    origin = http_find(h, n, "Origin", &count);
    if (count > 1)
        return refuse(400, "duplicate Origin", reason);

    /* Bytes after the head are WebSocket frames to us; a message body
     * announced to the backend would make it read them differently. */
    te = http_find(h, n, "Transfer-Encoding", &count);
    if (te != NULL)
        return refuse(400, "request body", reason);
    cl = http_find(h, n, "Content-Length", &count);
    if (cl != NULL && (count > 1 || !http_eq(cl->value, cl->value_len, "0")))
        return refuse(400, "request body", reason);

    /* Duplicates of single-valued handshake headers are malformed (400),
     * checked before the 426 checks so they cannot hide behind them. */
    http_find(h, n, "Upgrade", &count);
    if (count > 1)
        return refuse(400, "duplicate Upgrade", reason);
    http_find(h, n, "Sec-WebSocket-Version", &count);
    if (count > 1)
        return refuse(400, "duplicate Sec-WebSocket-Version", reason);
    key = http_find(h, n, "Sec-WebSocket-Key", &count);
    if (count > 1)
        return refuse(400, "duplicate Sec-WebSocket-Key", reason);

    /* RFC 6455 §4.2.1 items 3 and 4: not an upgrade at all -> 426, which
     * tells a plain HTTP client what this endpoint speaks. */
    if (!any_list_has(h, n, "Upgrade", "websocket"))
        return refuse(426, "not a websocket upgrade", reason);
    if (!any_list_has(h, n, "Connection", "upgrade"))
        return refuse(426, "connection not upgrade", reason);
    {
        const struct http_header *ver;
        ver = http_find(h, n, "Sec-WebSocket-Version", NULL);
        if (ver == NULL)
            return refuse(426, "missing Sec-WebSocket-Version", reason);
        if (ver->value_len != 2 || memcmp(ver->value, "13", 2) != 0)
            return refuse(426, "unsupported Sec-WebSocket-Version", reason);
    }
    if (key == NULL)
        return refuse(400, "missing Sec-WebSocket-Key", reason);
    if (!valid_key(key->value, key->value_len))
        return refuse(400, "invalid Sec-WebSocket-Key", reason);

    if (out != NULL) {
        const char *q;

        out->key = key->value;
        out->host = host->value;
        out->host_len = host->value_len;
        if (origin != NULL) {
            out->origin = origin->value;
            out->origin_len = origin->value_len;
        }
        out->path = req->target;
        q = memchr(req->target, '?', req->target_len);
        out->path_len = q ? (size_t)(q - req->target) : req->target_len;
    }
    if (reason != NULL)
        *reason = NULL;
    return 0;
}

/* RFC 9110 §7.6.1 hop-by-hop fields, plus Proxy-Authorization, which is
 * meant for this hop only (RFC 9110 §11.7.2). */
static const char *const hop_by_hop[] = {
    "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Proxy-Authorization",
};

/* The client's own handshake fields: wsguard sends its own key and
 * version, and offers no extension so frames stay inspectable. */
static const char *const ws_own[] = {
    "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
};

/* Fields that claim where the connection came from: believed only from a
 * trusted proxy. Forwarded (RFC 7239) is not re-added by wsguard, but a
 * client-sent one is just as spoofable as X-Forwarded-For. */
static const char *const fwd_names[] = {
    "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP",
    "Forwarded",
};

static int
name_in(const struct http_header *hh, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (http_eq(hh->name, hh->name_len, list[i]))
            return 1;
    return 0;
}

/* The same, reading '_' as '-' (http_name_eq). */
static int
name_in_fold(const struct http_header *hh, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] != NULL && http_name_eq(hh->name, hh->name_len, list[i]))
            return 1;
    return 0;
}

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int
is_ws_header(const struct http_header *hh)
{
    static const char pfx[] = "sec-websocket-";

    return hh->name_len >= sizeof pfx - 1
           && http_name_eq(hh->name, sizeof pfx - 1, pfx);
}

/* What wsguard checked besides the Sec-WebSocket-* fields: a Connection
 * listing never removes them. */
static const char *const checked[] = { "Host", "Origin" };

/* What may carry a token: a '_' spelling of them never passes. */
static const char *const token_carriers[] = { "Cookie", "Authorization" };

/* RFC 9110 §7.6.1: fields the client lists in Connection are hop-by-hop
 * too, except those wsguard checked: removing Origin after the Origin
 * check would tell the backend the request came from no browser. */
static int
nominated(const struct http_request *req, const struct http_header *hh)
{
    if (is_ws_header(hh) || name_in(hh, checked, NELEM(checked)))
        return 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct http_header *c = &req->headers[i];
        if (http_eq(c->name, c->name_len, "Connection")
            && http_list_has_n(c->value, c->value_len, hh->name,
                               hh->name_len))
            return 1;
    }
    return 0;
}

static int
dropped(const struct upgrade_fwd *f, const struct http_header *hh)
{
    return f->drop != NULL && name_in_fold(hh, f->drop, f->ndrop);
}

/* A client header whose name has '_' is read as the '-' name by CGI,
 * WSGI, Rack and several Go and Node frameworks, where it can sit beside
 * (and win over) the header wsguard set or checked. */
static int
underscore_refused(const struct upgrade_fwd *f, const struct http_header *hh)
{
    if (memchr(hh->name, '_', hh->name_len) == NULL)
        return 0;
    if (!f->allow_underscore)
        return 1;
    return is_ws_header(hh) || dropped(f, hh)
           || name_in_fold(hh, hop_by_hop, NELEM(hop_by_hop))
           || name_in_fold(hh, fwd_names, NELEM(fwd_names))
           || name_in_fold(hh, checked, NELEM(checked))
           || name_in_fold(hh, token_carriers, NELEM(token_carriers));
}

/* The extra lines must be whole "token: value\r\n" lines without CTL in
 * values; they may carry claim values taken from a client's token, so a
 * caller that forgot to sanitise must not be able to inject headers. */
static int
valid_extra(const char *p, size_t len)
{
    size_t i = 0;

    while (i < len) {
        size_t s = i;
        unsigned char c;

        while (i < len && (c = (unsigned char)p[i]) != ':' && c > 0x20 &&
               c < 0x7f && strchr("\"(),/;<=>?@[\\]{}", c) == NULL)
            i++;
        if (i == s || i >= len || p[i] != ':')
            return 0;
        for (i++; i < len && p[i] != '\r'; i++) {
            c = (unsigned char)p[i];
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return 0;
        }
        if (i + 1 >= len || p[i + 1] != '\n')
            return 0;
        i += 2;
    }
    return 1;
}

int
upgrade_backend_request(char *out, size_t cap,
                        const struct http_request *req,
                        const struct upgrade_fwd *f)
{
    struct writer w = { out, 0, cap, 0 };
    const struct http_header *h;
    const struct http_header *host = NULL, *xfp = NULL, *xfh = NULL;
    const char *target, *prefix = "";
    size_t n, target_len, nxff = 0;
    int keep_fwd, readd;

    if (req == NULL || f == NULL || f->key == NULL)
        return -1;
    if (f->extra != NULL && !valid_extra(f->extra, f->extra_len))
        return -1;
    h = req->headers;
    n = req->nheaders;
    target = f->target ? f->target : req->target;
    target_len = f->target ? f->target_len : req->target_len;
    if (f->backend != NULL && f->backend->path_prefix != NULL)
        prefix = f->backend->path_prefix;
    /* The target is spliced into the request line: it must not be able
     * to end it. */
    for (size_t i = 0; i < target_len; i++) {
        unsigned char c = (unsigned char)target[i];
        if (c <= 0x20 || c == 0x7f)
            return -1;
    }

    keep_fwd = f->trusted_peer;
    readd = f->add_forwarded;

    put_str(&w, "GET ");
    put_str(&w, prefix);
    put(&w, target, target_len);
    put_str(&w, " HTTP/1.1\r\n");

    for (size_t i = 0; i < n; i++) {
        const struct http_header *hh = &h[i];
        const struct upgrade_edit *e = f->edit != NULL ? &f->edit[i] : NULL;
        int is_fwd;

        if (e != NULL && e->drop)
            continue;
        if (underscore_refused(f, hh))
            continue;
        if (name_in(hh, hop_by_hop, NELEM(hop_by_hop)) ||
            name_in(hh, ws_own, NELEM(ws_own)))
            continue;
        if (dropped(f, hh))
            continue;
        is_fwd = name_in(hh, fwd_names, NELEM(fwd_names));
        if (is_fwd) {
            if (!keep_fwd)
                continue;
            if (readd && !http_eq(hh->name, hh->name_len, "Forwarded")) {
                /* Rewritten below from the trusted values. */
                if (http_eq(hh->name, hh->name_len, "X-Forwarded-For") &&
                    hh->value_len > 0)
                    nxff++;
                else if (xfp == NULL &&
                         http_eq(hh->name, hh->name_len, "X-Forwarded-Proto"))
                    xfp = hh;
                else if (xfh == NULL &&
                         http_eq(hh->name, hh->name_len, "X-Forwarded-Host"))
                    xfh = hh;
                continue;
            }
            /* Forwarding fields are governed by trusted_peer, not by a
             * Connection nomination. */
            put_header(&w, hh->name, hh->name_len, hh->value, hh->value_len);
            continue;
        }
        if (http_eq(hh->name, hh->name_len, "Host")) {
            /* Never removable by nomination: a request without Host is
             * not HTTP/1.1, and X-Forwarded-Host copies it. */
            if (host == NULL)
                host = hh;
        } else if (nominated(req, hh)) {
            /* RFC 9110 §7.6.1: fields the client lists in Connection are
             * hop-by-hop too. */
            continue;
        }
        if (e != NULL && e->value != NULL)
            put_header(&w, hh->name, hh->name_len, e->value, e->value_len);
        else
            put_header(&w, hh->name, hh->name_len, hh->value, hh->value_len);
    }

    put_header_str(&w, "Upgrade", "websocket");
    put_header_str(&w, "Connection", "Upgrade");
    put_header(&w, "Sec-WebSocket-Key", 17, f->key, UPGRADE_KEY_LEN);
    put_header_str(&w, "Sec-WebSocket-Version", "13");

    if (readd) {
        const char *ip = f->client_ip ? f->client_ip : "";
        size_t ip_len = strlen(ip);

        if (nxff > 0 || ip_len > 0) {
            size_t emitted = 0;

            /* One X-Forwarded-For: the trusted chain in order, then the
             * peer we actually talked to. */
            put_str(&w, "X-Forwarded-For: ");
            for (size_t i = 0; i < n && nxff > 0; i++) {
                const struct http_header *hh = &h[i];
                if (!http_eq(hh->name, hh->name_len, "X-Forwarded-For") ||
                    hh->value_len == 0 || dropped(f, hh))
                    continue;
                if (emitted++ > 0)
                    put(&w, ", ", 2);
                put(&w, hh->value, hh->value_len);
            }
            if (ip_len > 0) {
                for (size_t i = 0; i < ip_len; i++)
                    if ((unsigned char)ip[i] <= 0x20 ||
                        (unsigned char)ip[i] == 0x7f)
                        w.fail = 1;
                if (emitted > 0)
                    put(&w, ", ", 2);
                put(&w, ip, ip_len);
            }
            put(&w, "\r\n", 2);
        }
        if (xfp != NULL && xfp->value_len > 0)
            put_header(&w, "X-Forwarded-Proto", 17, xfp->value,
                       xfp->value_len);
        else
            put_header_str(&w, "X-Forwarded-Proto",
                           f->client_tls ? "https" : "http");
        if (xfh != NULL && xfh->value_len > 0)
            put_header(&w, "X-Forwarded-Host", 16, xfh->value,
                       xfh->value_len);
        else if (host != NULL)
            put_header(&w, "X-Forwarded-Host", 16, host->value,
                       host->value_len);
        /* X-Real-IP is the client itself: behind a trusted proxy that is
         * the address found in its X-Forwarded-For, not the proxy. */
        const char *real = f->real_ip ? f->real_ip : ip;
        size_t real_len = strlen(real);
        for (size_t i = 0; i < real_len; i++)
            if ((unsigned char)real[i] <= 0x20 ||
                (unsigned char)real[i] == 0x7f)
                w.fail = 1;
        if (real_len > 0)
            put_header(&w, "X-Real-IP", 9, real, real_len);
    }

    if (f->extra != NULL)
        put(&w, f->extra, f->extra_len);
    put(&w, "\r\n", 2);
    return writer_result(&w);
}

int
upgrade_check_response(const struct http_response *resp,
                       const char *key, const struct http_request *req,
                       const char **proto, size_t *proto_len,
                       const char **reason)
{
    const struct http_header *h, *up, *acc, *sp;
    char want[29];
    size_t n, count;
    int offered = 0;

    if (proto != NULL)
        *proto = NULL;
    if (proto_len != NULL)
        *proto_len = 0;
    if (resp == NULL || key == NULL)
        return refuse(-1, "no response", reason);
    h = resp->headers;
    n = resp->nheaders;

    if (resp->status != 101)
        return refuse(-1, "backend refused the upgrade", reason);
    /* RFC 6455 §4.1, the client's checks of the server's handshake. */
    up = http_find(h, n, "Upgrade", &count);
    if (up == NULL || count != 1 || !http_eq(up->value, up->value_len,
                                             "websocket"))
        return refuse(-1, "backend 101 without Upgrade: websocket", reason);
    if (!any_list_has(h, n, "Connection", "upgrade"))
        return refuse(-1, "backend 101 without Connection: upgrade", reason);
    acc = http_find(h, n, "Sec-WebSocket-Accept", &count);
    if (acc == NULL || count != 1)
        return refuse(-1, "backend 101 without one Sec-WebSocket-Accept",
                      reason);
    /* Our own failure (no memory for the digest) is not the backend's. */
    if (upgrade_accept(key, UPGRADE_KEY_LEN, want) != 0)
        return refuse(UPGRADE_NOMEM, "out of memory", reason);
    if (acc->value_len != UPGRADE_ACCEPT_LEN ||
        memcmp(acc->value, want, UPGRADE_ACCEPT_LEN) != 0)
        return refuse(-1, "backend 101 with wrong Sec-WebSocket-Accept",
                      reason);
    /* We offered no extension; one accepted anyway would change the
     * framing under the relay's feet. */
    if (http_find(h, n, "Sec-WebSocket-Extensions", NULL) != NULL)
        return refuse(-1, "backend 101 with extensions", reason);

    sp = http_find(h, n, "Sec-WebSocket-Protocol", &count);
    if (sp == NULL)
        return 0;
    if (count > 1)
        return refuse(-1, "backend 101 with several subprotocols", reason);
    /* Subprotocol names compare exactly (RFC 6455 §4.1: "one of the values
     * ... the client's handshake"); the client offered them as a list
     * spread over any number of headers. */
    for (size_t i = 0; req != NULL && i < req->nheaders && !offered; i++) {
        const struct http_header *ch = &req->headers[i];
        size_t j = 0;

        if (!http_eq(ch->name, ch->name_len, "Sec-WebSocket-Protocol"))
            continue;
        while (j < ch->value_len && !offered) {
            size_t s, e;

            while (j < ch->value_len &&
                   (ch->value[j] == ' ' || ch->value[j] == '\t'))
                j++;
            s = j;
            while (j < ch->value_len && ch->value[j] != ',')
                j++;
            e = j;
            while (e > s && (ch->value[e - 1] == ' ' ||
                             ch->value[e - 1] == '\t'))
                e--;
            if (e > s && e - s == sp->value_len &&
                memcmp(ch->value + s, sp->value, e - s) == 0)
                offered = 1;
            j++;
        }
    }
    if (!offered)
        return refuse(-1, "backend 101 with a subprotocol not offered",
                      reason);
    if (proto != NULL)
        *proto = sp->value;
    if (proto_len != NULL)
        *proto_len = sp->value_len;
    return 0;
}

int
upgrade_client_response(char *out, size_t cap, const char *client_key,
                        const char *proto, size_t proto_len, const char *ext)
{
    struct writer w = { out, 0, cap, 0 };
    char acc[29];

    if (client_key == NULL)
        return -1;
    if (upgrade_accept(client_key, UPGRADE_KEY_LEN, acc) != 0)
        return UPGRADE_NOMEM;
    put_str(&w, "HTTP/1.1 101 Switching Protocols\r\n");
    put_header_str(&w, "Upgrade", "websocket");
    put_header_str(&w, "Connection", "Upgrade");
    put_header_str(&w, "Sec-WebSocket-Accept", acc);
    if (proto != NULL && proto_len > 0) {
        /* A subprotocol is a token (RFC 6455 §4.1); it came from the
         * client or the backend, so make sure it is one. */
        for (size_t i = 0; i < proto_len; i++) {
            unsigned char c = (unsigned char)proto[i];
            if (c <= 0x20 || c >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", c))
                return -1;
        }
        put_header(&w, "Sec-WebSocket-Protocol", 22, proto, proto_len);
    }
    if (ext != NULL)
        put_header_str(&w, "Sec-WebSocket-Extensions", ext);
    put(&w, "\r\n", 2);
    return writer_result(&w);
}

/* SHA-1, fetched once: EVP_sha1() makes OpenSSL 3 look the algorithm
 * up again on every EVP_DigestInit_ex (two per upgrade). */
static EVP_MD *sha1_md;
static pthread_once_t sha1_once = PTHREAD_ONCE_INIT;

static void
sha1_fetch(void)
{
    sha1_md = EVP_MD_fetch(NULL, "SHA1", NULL);
}

static const EVP_MD *
sha1(void)
{
    pthread_once(&sha1_once, sha1_fetch);
    return sha1_md != NULL ? sha1_md : EVP_sha1();
}

int
upgrade_accept(const char *key, size_t key_len, char out[29])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok;

    /* Streamed rather than concatenated, so any key length is fine. */
    ok = ctx != NULL && key != NULL &&
         EVP_DigestInit_ex(ctx, sha1(), NULL) == 1 &&
         EVP_DigestUpdate(ctx, key, key_len) == 1 &&
         EVP_DigestUpdate(ctx, ws_guid, sizeof ws_guid - 1) == 1 &&
         EVP_DigestFinal_ex(ctx, md, &md_len) == 1 && md_len == 20;
    EVP_MD_CTX_free(ctx);
    if (!ok) {
        /* An empty string never equals a real accept value, so a caller
         * that ignored the result would still fail the handshake. */
        out[0] = '\0';
        return -1;
    }
    EVP_EncodeBlock((unsigned char *)out, md, 20);
    out[28] = '\0';
    return 0;
}

void
upgrade_new_key(struct rnd *rnd, char out[25])
{
    unsigned char raw[16];

    /* RFC 6455 §4.1 asks for a randomly selected nonce: from the pool
     * the masking keys come from (the CSPRNG in 4 KiB draws), instead of
     * one RAND_bytes call per upgrade. */
    rnd_take(rnd, raw, sizeof raw);
    EVP_EncodeBlock((unsigned char *)out, raw, sizeof raw);
    out[24] = '\0';
}

static const char *
standard_phrase(int status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Error";
    }
}

#define PHRASE_MAX 64

int
upgrade_refusal(char *out, size_t cap, int status, const char *phrase,
                size_t phrase_len)
{
    struct writer w = { out, 0, cap, 0 };
    const char *std = standard_phrase(status);
    char clean[PHRASE_MAX];
    size_t clean_len = 0;
    char line[64], body[96];
    int body_len;

    if (status < 100 || status > 999)
        return -1;
    /* A phrase passed through from a backend is untrusted: printable
     * ASCII only (no CR/LF, no UTF-8 a log or terminal might misread),
     * bounded, and blank means the standard one. */
    for (size_t i = 0; phrase != NULL && i < phrase_len &&
                       clean_len < PHRASE_MAX; i++) {
        unsigned char c = (unsigned char)phrase[i];
        if (c >= 0x20 && c <= 0x7e)
            clean[clean_len++] = (char)c;
    }
    while (clean_len > 0 && clean[clean_len - 1] == ' ')
        clean_len--;
    {
        size_t lead = 0;
        while (lead < clean_len && clean[lead] == ' ')
            lead++;
        memmove(clean, clean + lead, clean_len - lead);
        clean_len -= lead;
    }

    /* The body names the status with the standard phrase only: nothing a
     * backend or wsguard's internals said reaches it. */
    body_len = snprintf(body, sizeof body, "%d %s\n", status, std);
    if (body_len < 0 || (size_t)body_len >= sizeof body)
        return -1;

    snprintf(line, sizeof line, "HTTP/1.1 %d ", status);
    put_str(&w, line);
    if (clean_len > 0)
        put(&w, clean, clean_len);
    else
        put_str(&w, std);
    put(&w, "\r\n", 2);
    put_header_str(&w, "Content-Type", "text/plain");
    snprintf(line, sizeof line, "%d", body_len);
    put_header_str(&w, "Content-Length", line);
    put_header_str(&w, "Connection", "close");
    switch (status) {
    case 401:
        put_header_str(&w, "WWW-Authenticate",
                       "Bearer error=\"invalid_token\"");
        break;
    case 405:
        put_header_str(&w, "Allow", "GET");
        break;
    case 426:
        put_header_str(&w, "Upgrade", "websocket");
        put_header_str(&w, "Sec-WebSocket-Version", "13");
        break;
    default:
        break;
    }
    put(&w, "\r\n", 2);
    put(&w, body, (size_t)body_len);
    return writer_result(&w);
}
