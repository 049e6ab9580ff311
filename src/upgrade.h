/*
 * upgrade.h - the RFC 6455 §4 opening handshake on both legs (pure, apart
 * from RAND_bytes for new keys).
 *
 *   client head --upgrade_check()--> accepted, or an HTTP status to refuse
 *   upgrade_backend_request()        the request wsguard sends the backend
 *   upgrade_check_response()         is the backend's answer a valid 101?
 *   upgrade_client_response()        the 101 wsguard sends the client
 *   upgrade_refusal()                any refusal: status, headers, body
 *
 * No function keeps pointers beyond the call; outputs go to caller buffers.
 */
#ifndef WSGUARD_UPGRADE_H
#define WSGUARD_UPGRADE_H

#include <stddef.h>

#include "config.h"
#include "http.h"
#include "rnd.h"

#define UPGRADE_KEY_LEN 24      /* base64 of 16 bytes */
#define UPGRADE_ACCEPT_LEN 28   /* base64 of a SHA-1 */

/* What upgrade_check() found in an acceptable client request. Pointers
 * into the request buffer; absent = NULL/0. */
struct upgrade_req {
    const char *key;            /* Sec-WebSocket-Key, UPGRADE_KEY_LEN */
    const char *host;
    size_t host_len;
    const char *origin;
    size_t origin_len;
    const char *path;           /* target up to '?' */
    size_t path_len;
};

/*
 * Check the client's request head. Returns 0 when it is a valid RFC 6455
 * opening handshake, else the status to refuse with and *reason a short
 * static text for the log:
 *   405 method other than GET;
 *   400 not HTTP/1.1, missing/duplicate Host, target not origin-form
 *       ("/..."), missing/duplicate/invalid Sec-WebSocket-Key (must be
 *       base64 of exactly 16 bytes), duplicate Upgrade/Version headers;
 *   426 Upgrade does not list "websocket", Connection does not list
 *       "upgrade", or Sec-WebSocket-Version missing or not 13.
 */
int upgrade_check(const struct http_request *req, struct upgrade_req *out,
                  const char **reason);

/* A change to one of the client's headers on its way to the backend. */
struct upgrade_edit {
    const char *value;          /* replacement value, or NULL to keep */
    size_t value_len;
    int drop;                   /* leave the header out */
};

/* What the backend request needs besides the client's head. */
struct upgrade_fwd {
    const struct backend_addr *backend;
    const char *target;         /* path?query to send (after any rewrite) */
    size_t target_len;
    const char *client_ip;      /* textual address of the peer wsguard
                                   talked to (appended to X-Forwarded-For) */
    const char *real_ip;        /* the client behind trusted proxies, for
                                   X-Real-IP; NULL = client_ip */
    int client_tls;             /* X-Forwarded-Proto: https or http */
    int add_forwarded;          /* [backend] forwarded_headers */
    int trusted_peer;           /* peer in trusted_proxies: keep and extend
                                   its X-Forwarded-* instead of replacing */
    const char *key;            /* wsguard's own Sec-WebSocket-Key */
    const char *const *drop;    /* further header names to remove (those
                                   wsguard sets itself: claim headers) */
    size_t ndrop;
    const struct upgrade_edit *edit;    /* NULL, or one per request
                                   header, in order */
    int allow_underscore;       /* [server] allow_underscore_headers */
    const char *extra;          /* further "Name: value\r\n" lines, or NULL */
    size_t extra_len;
};

/*
 * Write the backend's request into out[0..cap): "GET <prefix><target>
 * HTTP/1.1", every end-to-end header of the client in order (Host, Origin,
 * Cookie, Sec-WebSocket-Protocol, ...), then Upgrade, Connection,
 * Sec-WebSocket-Key, Sec-WebSocket-Version: 13 and X-Forwarded-For/-Proto/
 * -Host, X-Real-IP, then extra. Removed:
 * - hop-by-hop headers (Connection and the names it lists, Keep-Alive,
 *   Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade,
 *   Proxy-Authorization); a listing in Connection never removes Host,
 *   Origin or a Sec-WebSocket-* header, which wsguard checked (RFC 9110
 *   §7.6.1 removal applies to other names only);
 * - the client's Sec-WebSocket-Key/-Version/-Extensions (no extension is
 *   offered: frames must stay inspectable);
 * - client-sent X-Forwarded-*, X-Real-IP and Forwarded (unless
 *   trusted_peer) and the names in drop (compared with '_' as '-');
 * - every header whose name contains '_' unless allow_underscore (as
 *   nginx's underscores_in_headers off); with it, those whose '_' -> '-'
 *   form names a header wsguard sets, removes or checks;
 * - headers edit marks to drop; edit can also replace a value.
 * Returns the length, or -1 if it does not fit.
 */
int upgrade_backend_request(char *out, size_t cap,
                            const struct http_request *req,
                            const struct upgrade_fwd *f);

/*
 * Validate the backend's response head to a request sent with key: status
 * 101, Upgrade: websocket, Connection: upgrade, the right
 * Sec-WebSocket-Accept, no Sec-WebSocket-Extensions, and at most one
 * Sec-WebSocket-Protocol whose value is one the client offered in req.
 * Returns 0 and sets *proto and *proto_len (NULL/0 if none), or -1 with
 * *reason a short static text (the backend's fault), or UPGRADE_NOMEM
 * when wsguard could not compute the expected accept value (its own
 * fault: no memory).
 */
int upgrade_check_response(const struct http_response *resp,
                           const char *key, const struct http_request *req,
                           const char **proto, size_t *proto_len,
                           const char **reason);

/* Write the 101 for the client into out[0..cap), with
 * Sec-WebSocket-Extensions: ext when ext is not NULL (pmd_negotiate()'s
 * answer); returns the length, -1 if it does not fit or the subprotocol
 * is not a token, or UPGRADE_NOMEM when the accept value could not be
 * computed. */
int upgrade_client_response(char *out, size_t cap, const char *client_key,
                            const char *proto, size_t proto_len,
                            const char *ext);

/* A result of the functions below: OpenSSL could not allocate. */
#define UPGRADE_NOMEM (-2)

/* out = base64(SHA-1(key ++ GUID)), NUL-terminated (29 bytes). Returns 0,
 * or -1 (out = "") when the digest could not be computed (no memory). */
int upgrade_accept(const char *key, size_t key_len, char out[29]);

/* A fresh random Sec-WebSocket-Key from rnd, NUL-terminated (25
 * bytes). */
void upgrade_new_key(struct rnd *rnd, char out[25]);

/*
 * Write a complete refusal response: "HTTP/1.1 <status> <reason phrase>",
 * Content-Type: text/plain, Content-Length, Connection: close, the
 * headers the status needs (405: Allow: GET; 426: Upgrade: websocket and
 * Sec-WebSocket-Version: 13; 401: WWW-Authenticate: Bearer
 * error="invalid_token"), then a one-line body naming the status (nothing
 * internal). phrase overrides the standard reason phrase when not NULL
 * (used to pass a backend's refusal through; it is sanitised to printable
 * ASCII and bounded). Returns length or -1.
 */
int upgrade_refusal(char *out, size_t cap, int status, const char *phrase,
                    size_t phrase_len);

#endif
