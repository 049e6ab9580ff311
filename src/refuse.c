/*
 * refuse.c - the refusal table (see refuse.h).
 */
#include "refuse.h"

const struct refusal_info refusal_info[REF_COUNT] = {
    [REF_BAD_REQUEST] = { 400, "bad_request", "bad request" },
    [REF_BAD_PATH] = { 400, "bad_path", "bad path" },
    [REF_METHOD] = { 405, "method", "method not GET" },
    [REF_NOT_WEBSOCKET] = { 426, "not_websocket", "not a websocket upgrade" },
    [REF_TOO_LARGE] = { 431, "too_large", "request head too large" },
    [REF_NO_ROUTE] = { 404, "no_route", "no route" },
    [REF_DRAINING] = { 503, "draining", "draining" },
    [REF_MAX_CONNECTIONS] = { 503, "max_connections", "max_connections" },
    [REF_IP_LIMIT] = { 429, "ip_limit", "per-IP connection limit" },
    [REF_ORIGIN] = { 403, "origin", "origin not allowed" },
    [REF_JWT] = { 401, "jwt", "invalid token" },
    [REF_REVOKED] = { 401, "revoked", "revoked" },
    [REF_CLUSTER] = { 503, "cluster", "shared limits unavailable" },
    [REF_BACKEND] = { 502, "backend", "backend failed" },
    [REF_BACKEND_TIMEOUT] = { 504, "timeout", "backend timeout" },
    [REF_INTERNAL] = { 503, "internal", "out of memory" },
    [REF_TLS] = { 0, "tls", "tls handshake failed" },
    [REF_HANDSHAKE_TIMEOUT] = { 0, "handshake_timeout",
                                "handshake timeout" },
    [REF_PROXY] = { 0, "proxy", "bad PROXY protocol header" },
    [REF_CLIENT_CLOSED] = { 0, "client_closed", "client closed" },
};

enum refusal
refusal_for_status(int status)
{
    switch (status) {
    case 405:
        return REF_METHOD;
    case 426:
        return REF_NOT_WEBSOCKET;
    case 431:
        return REF_TOO_LARGE;
    default:
        return REF_BAD_REQUEST;
    }
}
