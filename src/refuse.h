/*
 * refuse.h - every way an upgrade can end before the relay starts: one
 * table from the kind of refusal to the HTTP status the client gets, the
 * label it is counted under and the default reason text for the log.
 * Every path that ends a connection before its 101 names one of these
 * kinds, so nothing goes uncounted (the metrics endpoint iterates over
 * the table; it never lists kinds by hand).
 */
#ifndef WSGUARD_REFUSE_H
#define WSGUARD_REFUSE_H

enum refusal {
    REF_BAD_REQUEST = 0,        /* 400 malformed or invalid upgrade */
    REF_BAD_PATH,               /* 400 path that cannot be normalised */
    REF_METHOD,                 /* 405 method other than GET */
    REF_NOT_WEBSOCKET,          /* 426 not an upgrade, or version != 13 */
    REF_TOO_LARGE,              /* 431 head over max_header_bytes */
    REF_NO_ROUTE,               /* 404 */
    REF_DRAINING,               /* 503 */
    REF_MAX_CONNECTIONS,        /* 503 */
    REF_IP_LIMIT,               /* 429 */
    REF_ORIGIN,                 /* 403 */
    REF_JWT,                    /* 401 */
    REF_REVOKED,                /* 401 token or address revoked */
    REF_CLUSTER,                /* 503 shared limits unavailable
                                   (on_error = closed) */
    REF_BACKEND,                /* 502, or the backend's own 4xx */
    REF_BACKEND_TIMEOUT,        /* 504 */
    REF_INTERNAL,               /* 503 out of memory */
    REF_TLS,                    /* TLS handshake failed: no response */
    REF_HANDSHAKE_TIMEOUT,      /* handshake_timeout: no response */
    REF_PROXY,                  /* bad PROXY protocol header */
    REF_CLIENT_CLOSED,          /* the client left before its 101 */
    REF_COUNT
};

struct refusal_info {
    int status;                 /* HTTP status; 0 = nothing is sent */
    const char *label;          /* metric label, [a-z_]+ */
    const char *text;           /* default reason for the log */
};

extern const struct refusal_info refusal_info[REF_COUNT];

/* The kind for a status that upgrade_check() returned. */
enum refusal refusal_for_status(int status);

#endif
