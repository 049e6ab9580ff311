/*
 * http.h - HTTP/1.1 message-head parser (pure: no sockets, no allocation).
 *
 * Modelled on picohttpparser: the caller keeps appending received bytes to
 * one buffer and calls the parser again with the whole buffer and the
 * length it had at the previous call (last_len). The parser first looks for
 * the end of the head ("\r\n\r\n") in the new bytes only, so a head that
 * arrives one byte at a time costs O(n) in total, not O(n^2); only a
 * complete head is parsed. Results point into the caller's buffer.
 *
 * Strict: request line "METHOD SP TARGET SP HTTP/1.x CRLF", header lines
 * "name: value CRLF" with a token name, no obs-fold (a line starting with
 * SP/HTAB is an error), no bare LF, no NUL or other control characters
 * (HTAB allowed in values), optional whitespace around values trimmed.
 *
 * Return values: > 0 the length of the head including the final CRLFCRLF
 * (bytes after it belong to the next layer); HTTP_INCOMPLETE (-2) more
 * bytes are needed; HTTP_ERROR (-1) malformed; HTTP_TOO_MANY (-3) more
 * header lines than the caller's array holds.
 */
#ifndef WSGUARD_HTTP_H
#define WSGUARD_HTTP_H

#include <stddef.h>

#define HTTP_ERROR (-1)
#define HTTP_INCOMPLETE (-2)
#define HTTP_TOO_MANY (-3)

struct http_header {
    const char *name;
    size_t name_len;
    const char *value;          /* trimmed */
    size_t value_len;
};

struct http_request {
    const char *method;
    size_t method_len;
    const char *target;         /* request-target as sent (path?query) */
    size_t target_len;
    int minor_version;          /* HTTP/1.<minor> */
    struct http_header *headers;    /* caller's array */
    size_t nheaders;            /* in: capacity; out: count */
};

struct http_response {
    int minor_version;
    int status;                 /* 100..999 */
    const char *reason;
    size_t reason_len;
    struct http_header *headers;
    size_t nheaders;            /* in: capacity; out: count */
};

int http_parse_request(const char *buf, size_t len, size_t last_len,
                       struct http_request *req);
int http_parse_response(const char *buf, size_t len, size_t last_len,
                        struct http_response *resp);

/* Case-insensitive ASCII comparison of a counted string with a C string. */
int http_eq(const char *s, size_t len, const char *lit);

/* The same for a header name, where '_' and '-' also compare equal (the
 * way CGI-style frameworks read header names). */
int http_name_eq(const char *s, size_t len, const char *lit);

/* The first header named name (case-insensitive), or NULL. If count is not
 * NULL it receives how many headers have that name. */
const struct http_header *http_find(const struct http_header *h, size_t n,
                                    const char *name, size_t *count);

/* Does a comma-separated token list (e.g. Connection: keep-alive, Upgrade)
 * contain token, case-insensitively, as a whole element? */
int http_list_has(const char *value, size_t len, const char *token);
int http_list_has_n(const char *value, size_t len, const char *token,
                    size_t token_len);

#endif
