/*
 * config.c - load, validate and free the configuration snapshot.
 *
 * Order of a load: built-in defaults (the table's default strings, parsed
 * like file values), the INI file, WSGUARD_<SECTION>_<KEY> environment
 * overrides, then every route's policy is built as a copy of the global
 * one with the route's own keys applied, then validation. Every error is
 * reported through the caller's callback and loading goes on, so one run
 * of `wsguard -t` lists all problems; the result is NULL if there was any.
 *
 * inih quirks we work around (Debian's libinih is built with
 * INI_MAX_LINE=200, INI_ALLOW_MULTILINE=1, INI_HANDLER_LINENO=0 and
 * INI_CALL_HANDLER_ON_NEW_SECTION=0, which we cannot change): our reader
 * callback counts lines, strips leading blanks (an indented line would
 * otherwise continue the previous value), rejects over-long lines instead
 * of letting inih split them into two, and parses section headers itself
 * (inih truncates section names to 49 characters and says nothing about
 * a section without keys). Lines the reader has judged are handed to inih
 * as empty lines, so inih only ever sees well-formed "key = value" lines.
 */
#include "config.h"
#include "config_table.h"
#include "path.h"
#include "stats.h"
#include "units.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

_Static_assert(sizeof(enum log_level) == sizeof(int), "enum stored as int");
_Static_assert(sizeof(enum client_verify) == sizeof(int),
               "enum stored as int");

enum opt_src { SRC_DEFAULT = 0, SRC_FILE, SRC_ENV };

/* Where a key got its value, for messages and config_unsupported(). */
struct opt_where {
    enum opt_src src;
    int line;                   /* last line that set it (SRC_FILE) */
    int first_line;             /* first such line */
};

/*
 * A [route PREFIX] section while the file is read: only the route's own
 * keys, applied over the global policy once the file and the environment
 * are both read (an env override of a global key must reach every route
 * that does not set that key itself).
 */
struct route_build {
    char *prefix;
    int line;
    struct policy own;
    struct opt_where where[CONFIG_NOPTIONS];
};

struct unsupported_msg {
    int line;                   /* INT_MAX for the environment */
    size_t seq;                 /* keeps equal lines in order */
    char *msg;
};

/* Where each route's own keys were set, kept for config_where(). */
struct route_where {
    char *prefix;
    int line;
    struct opt_where where[CONFIG_NOPTIONS];
};

/* The allocation behind every struct config: config_unref() frees it. */
struct config_priv {
    struct config pub;          /* first, so the pointers convert */
    char **unsupported;         /* formatted "not supported yet" lines */
    size_t nunsupported;
    /* For messages about values after loading (keys that do not load,
     * a JWT verifier that cannot be built): where each came from. */
    char *name;
    struct opt_where where[CONFIG_NOPTIONS];
    struct route_where *rw;
    size_t nrw;
};

enum sec_state { SEC_NONE = 0, SEC_GLOBAL, SEC_ROUTE, SEC_SKIP };

struct loader {
    struct config_priv *cp;
    const char *name;           /* file name used in messages */
    config_err_fn err;
    void *ctx;
    int nerrors;

    FILE *f;
    int lineno;
    enum sec_state sec;
    const struct config_section *section;   /* SEC_GLOBAL */
    struct route_build *route;              /* SEC_ROUTE */

    struct route_build **routes;
    size_t nroutes;
    struct opt_where where[CONFIG_NOPTIONS];

    struct unsupported_msg *unsup;
    size_t nunsup;
};

#define ERRLEN 256

/* ---- messages ---- */

static void
report(struct loader *l, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
report(struct loader *l, const char *where, const char *fmt, ...)
{
    char body[512], msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "%s: %s", where, body);
    l->nerrors++;
    if (l->err != NULL)
        l->err(msg, l->ctx);
}

/* "FILE:LINE", or "FILE" for a problem that belongs to no line. */
static void
where_line(const struct loader *l, int line, char *buf, size_t len)
{
    if (line > 0)
        snprintf(buf, len, "%s:%d", l->name, line);
    else
        snprintf(buf, len, "%s", l->name);
}

static void
env_name(const struct config_option *o, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "WSGUARD_%s_%s", o->section,
                                o->key);
    for (size_t i = 0; i < n && i < len; i++)
        buf[i] = (char)toupper((unsigned char)buf[i]);
}

/* Location of option i's value: route key, route header, global key line,
 * environment variable, or just the file for a default. */
static void
where_option(const struct loader *l, size_t i, const struct route_build *r,
             char *buf, size_t len)
{
    char var[128];

    if (r != NULL) {
        where_line(l, r->where[i].src == SRC_FILE ? r->where[i].line
                                                  : r->line, buf, len);
        return;
    }
    switch (l->where[i].src) {
    case SRC_FILE:
        where_line(l, l->where[i].line, buf, len);
        break;
    case SRC_ENV:
        env_name(&config_options[i], var, sizeof var);
        snprintf(buf, len, "env %s", var);
        break;
    default:
        where_line(l, 0, buf, len);
        break;
    }
}

/* ---- string lists ---- */

static void
strlist_free(struct strlist *sl)
{
    for (size_t i = 0; i < sl->n; i++)
        free(sl->v[i]);
    free(sl->v);
    sl->v = NULL;
    sl->n = 0;
}

static int
strlist_push(struct strlist *sl, const char *s, size_t len)
{
    char **v = realloc(sl->v, (sl->n + 1) * sizeof *v);

    if (v == NULL)
        return -1;
    sl->v = v;
    v[sl->n] = strndup(s, len);
    if (v[sl->n] == NULL)
        return -1;
    sl->n++;
    return 0;
}

static int
strlist_copy(struct strlist *dst, const struct strlist *src)
{
    dst->v = NULL;
    dst->n = 0;
    for (size_t i = 0; i < src->n; i++) {
        if (strlist_push(dst, src->v[i], strlen(src->v[i])) == -1) {
            strlist_free(dst);
            return -1;
        }
    }
    return 0;
}

/* Next space-separated item of a list value, or NULL at the end. */
static const char *
next_item(const char *s, size_t *len)
{
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s == '\0')
        return NULL;
    *len = strcspn(s, " \t");
    return s;
}

/* ---- value formatting for range messages ---- */

static void
format_value(enum opt_type t, uint64_t v, char *buf, size_t len)
{
    static const struct { uint64_t mult; const char *suffix; } dur[] = {
        { MS_HOUR, "h" }, { MS_MIN, "m" }, { MS_SEC, "s" }, { 1, "ms" },
    }, size[] = {
        { 1024 * MIB, "g" }, { MIB, "m" }, { KIB, "k" }, { 1, "" },
    };
    size_t i;

    if (t == OPT_DURATION && v != 0) {
        for (i = 0; v % dur[i].mult != 0; i++)
            ;
        snprintf(buf, len, "%llu%s",
                 (unsigned long long)(v / dur[i].mult), dur[i].suffix);
    } else if (t == OPT_SIZE && v != 0) {
        for (i = 0; v % size[i].mult != 0; i++)
            ;
        snprintf(buf, len, "%llu%s",
                 (unsigned long long)(v / size[i].mult), size[i].suffix);
    } else {
        snprintf(buf, len, "%llu", (unsigned long long)v);
    }
}

/* ---- listen addresses and backend URLs ---- */

static int
parse_port(const char *s, bool allow_zero, char *err, size_t errlen)
{
    uint64_t v;

    if (units_uint(s, &v) == -1 || v > 65535 || (v == 0 && !allow_zero)) {
        snprintf(err, errlen, "invalid port \"%s\"", s);
        return -1;
    }
    return 0;
}

/*
 * host:port, [v6]:port or *:port (all IPv4 addresses). Numeric only: a
 * listener must not depend on DNS at start-up. Port 0 lets the kernel
 * pick one (tests use it).
 */
static int
parse_listen(const char *s, struct listen_addr *out, char *err,
             size_t errlen)
{
    char host[64];
    const char *port, *end;
    struct addrinfo hints, *res;
    size_t hlen;
    int rc;

    memset(&hints, 0, sizeof hints);
    if (strlen(s) >= sizeof out->text) {
        snprintf(err, errlen, "address \"%.20s...\" too long", s);
        return -1;
    }
    if (s[0] == '[') {
        end = strchr(s, ']');
        if (end == NULL || end[1] != ':') {
            snprintf(err, errlen, "invalid address \"%s\" (expected "
                     "[IPV6]:PORT)", s);
            return -1;
        }
        hlen = (size_t)(end - s - 1);
        memcpy(host, s + 1, hlen);
        port = end + 2;
        hints.ai_family = AF_INET6;
    } else {
        end = strrchr(s, ':');
        if (end == NULL) {
            snprintf(err, errlen, "invalid address \"%s\" (expected "
                     "HOST:PORT)", s);
            return -1;
        }
        if (memchr(s, ':', (size_t)(end - s)) != NULL) {
            snprintf(err, errlen, "invalid address \"%s\" (an IPv6 "
                     "address needs brackets, e.g. [::]:8443)", s);
            return -1;
        }
        hlen = (size_t)(end - s);
        memcpy(host, s, hlen);
        port = end + 1;
        hints.ai_family = AF_INET;
    }
    host[hlen] = '\0';
    if (parse_port(port, true, err, errlen) == -1)
        return -1;
    if (hlen == 0) {
        snprintf(err, errlen, "invalid address \"%s\" (missing host; "
                 "use *:PORT for every address)", s);
        return -1;
    }
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    rc = getaddrinfo(strcmp(host, "*") == 0 ? NULL : host, port, &hints,
                     &res);
    if (rc != 0) {
        snprintf(err, errlen, "invalid address \"%s\" (host must be a "
                 "numeric IP address or *)", s);
        return -1;
    }
    memset(out, 0, sizeof *out);
    memcpy(&out->ss, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    freeaddrinfo(res);
    snprintf(out->text, sizeof out->text, "%s", s);
    return 0;
}

static void
backend_free(struct backend_addr *b)
{
    free(b->url);
    free(b->host);
    free(b->port);
    free(b->host_header);
    free(b->path_prefix);
    memset(b, 0, sizeof *b);
}

static bool
valid_hostname(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '-'
            && s[i] != '_')
            return false;
    }
    return len > 0;
}

/* ws://host[:port][/path] */
static int
parse_backend(const char *s, struct backend_addr *b, char *err,
              size_t errlen)
{
    const char *auth, *auth_end, *host, *host_end, *port = NULL;
    size_t plen;
    char v6[INET6_ADDRSTRLEN + 1];
    struct in6_addr a6;

    memset(b, 0, sizeof *b);
    if (strncasecmp(s, "ws://", 5) != 0) {
        snprintf(err, errlen, "backend must be ws://");
        return -1;
    }
    if (strpbrk(s, "?#@") != NULL) {
        snprintf(err, errlen, "invalid backend \"%s\" (no query, fragment "
                 "or user info allowed)", s);
        return -1;
    }
    auth = s + 5;
    auth_end = auth + strcspn(auth, "/");
    if (auth[0] == '[') {
        host = auth + 1;
        host_end = memchr(host, ']', (size_t)(auth_end - host));
        if (host_end == NULL
            || (host_end + 1 != auth_end && host_end[1] != ':')
            || (size_t)(host_end - host) >= sizeof v6) {
            snprintf(err, errlen, "invalid backend \"%s\"", s);
            return -1;
        }
        memcpy(v6, host, (size_t)(host_end - host));
        v6[host_end - host] = '\0';
        if (inet_pton(AF_INET6, v6, &a6) != 1) {
            snprintf(err, errlen, "invalid backend \"%s\" (bad IPv6 "
                     "address)", s);
            return -1;
        }
        if (host_end + 1 != auth_end)
            port = host_end + 2;
    } else {
        host = auth;
        host_end = memchr(auth, ':', (size_t)(auth_end - auth));
        if (host_end != NULL)
            port = host_end + 1;
        else
            host_end = auth_end;
        if (!valid_hostname(host, (size_t)(host_end - host))) {
            snprintf(err, errlen, "invalid backend \"%s\" (bad host)", s);
            return -1;
        }
    }
    if (port != NULL) {
        char pbuf[8];
        size_t n = (size_t)(auth_end - port);
        if (n >= sizeof pbuf) {
            snprintf(err, errlen, "invalid backend \"%s\" (bad port)", s);
            return -1;
        }
        memcpy(pbuf, port, n);
        pbuf[n] = '\0';
        if (parse_port(pbuf, false, err, errlen) == -1)
            return -1;
    }
    /* A trailing slash would double up with the client's own path. */
    plen = strlen(auth_end);
    while (plen > 0 && auth_end[plen - 1] == '/')
        plen--;
    b->url = strdup(s);
    b->host = strndup(host, (size_t)(host_end - host));
    b->port = port ? strndup(port, (size_t)(auth_end - port))
                   : strdup("80");
    b->host_header = strndup(auth, (size_t)(auth_end - auth));
    b->path_prefix = strndup(auth_end, plen);
    if (b->url == NULL || b->host == NULL || b->port == NULL
        || b->host_header == NULL || b->path_prefix == NULL) {
        backend_free(b);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static int
backend_copy(struct backend_addr *dst, const struct backend_addr *src)
{
    dst->url = strdup(src->url);
    dst->host = strdup(src->host);
    dst->port = strdup(src->port);
    dst->host_header = strdup(src->host_header);
    dst->path_prefix = strdup(src->path_prefix);
    if (dst->url == NULL || dst->host == NULL || dst->port == NULL
        || dst->host_header == NULL || dst->path_prefix == NULL) {
        backend_free(dst);
        return -1;
    }
    return 0;
}

/* ---- item checks named in the table ---- */

int
config_check_algorithm(const char *v, char *err, size_t errlen)
{
    static const char *const known[] = {
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256",
        "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    };

    if (strcasecmp(v, "none") == 0) {
        snprintf(err, errlen, "algorithm \"none\" is never allowed");
        return -1;
    }
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        if (strcmp(v, known[i]) == 0)
            return 0;
    }
    snprintf(err, errlen, "unknown algorithm \"%s\"", v);
    return -1;
}

/* An exact [origin] allow entry must be a well-formed origin. */
int
config_check_origin(const char *v, char *err, size_t errlen)
{
    char buf[ORIGIN_MAX + 1];
    if (origin_normalize(v, strlen(v), buf, sizeof buf) >= 0)
        return 0;
    snprintf(err, errlen, "'%s' is not an origin (scheme://host[:port])",
             v);
    return -1;
}

int
config_check_source(const char *v, char *err, size_t errlen)
{
    static const char *const kinds[] = {
        "query:", "header:", "cookie:", "protocol:",
    };

    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        size_t n = strlen(kinds[i]);
        if (strncmp(v, kinds[i], n) == 0 && v[n] != '\0')
            return 0;
    }
    snprintf(err, errlen, "invalid token source \"%s\" (expected query:, "
             "header:, cookie: or protocol: and a name)", v);
    return -1;
}

int
config_check_claim(const char *v, char *err, size_t errlen)
{
    const char *colon = strchr(v, ':');

    if (colon == NULL || colon == v || colon[1] == '\0'
        || !valid_hostname(colon + 1, strlen(colon + 1))) {
        snprintf(err, errlen, "invalid claim mapping \"%s\" (expected "
                 "claim:Header-Name)", v);
        return -1;
    }
    return 0;
}

/* [tls] forward_client_cert: a plain header name ([A-Za-z0-9-]) that
 * wsguard neither sets, removes nor checks itself. */
int
config_check_header(const char *v, char *err, size_t errlen)
{
    static const char *const reserved[] = {
        "host", "connection", "upgrade", "keep-alive", "proxy-connection",
        "te", "trailer", "transfer-encoding", "content-length", "origin",
        "cookie", "authorization", "proxy-authorization", "forwarded",
        "x-real-ip", NULL
    };
    size_t len = strlen(v);

    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (!isalnum((unsigned char)v[i]) && v[i] != '-') {
            snprintf(err, errlen, "invalid header name \"%s\" (letters, "
                     "digits and '-' only)", v);
            return -1;
        }
    }
    if (v[0] == '-' || v[len - 1] == '-' || len > 64) {
        snprintf(err, errlen, "invalid header name \"%s\"", v);
        return -1;
    }
    for (size_t i = 0; reserved[i] != NULL; i++) {
        if (strcasecmp(v, reserved[i]) == 0)
            goto clash;
    }
    if (strncasecmp(v, "x-forwarded-", 12) == 0
        || strncasecmp(v, "sec-websocket-", 14) == 0)
        goto clash;
    return 0;
clash:
    snprintf(err, errlen, "\"%s\" is a header wsguard sets or checks "
             "itself", v);
    return -1;
}

int
config_check_listen(const char *v, char *err, size_t errlen)
{
    struct listen_addr a;

    if (v[0] == '\0')
        return 0;
    return parse_listen(v, &a, err, errlen);
}

int
config_check_access_log(const char *v, char *err, size_t errlen)
{
    if (v[0] == '\0') {
        snprintf(err, errlen, "must be stdout, stderr, off or a file path");
        return -1;
    }
    return 0;
}

int
config_check_redis(const char *v, char *err, size_t errlen)
{
    const char *h;

    if (v[0] == '\0')
        return 0;
    if (strncmp(v, "redis://", 8) == 0)
        h = v + 8;
    else if (strncmp(v, "rediss://", 9) == 0)
        h = v + 9;
    else
        h = NULL;
    if (h != NULL && strchr(h, '@') != NULL)
        h = strchr(h, '@') + 1;
    if (h == NULL || *h == '\0' || *h == ':' || *h == '/') {
        snprintf(err, errlen, "must be redis[s]://HOST[:PORT][/DB]");
        return -1;
    }
    return 0;
}

int
config_check_key_prefix(const char *v, char *err, size_t errlen)
{
    size_t n = strlen(v);

    for (size_t i = 0; i < n; i++)
        if (v[i] <= ' ' || v[i] == 0x7f) {
            snprintf(err, errlen, "no spaces or control characters");
            return -1;
        }
    if (n > 64) {
        snprintf(err, errlen, "at most 64 bytes");
        return -1;
    }
    return 0;
}

/* ---- generic field handling, driven by the table ---- */

static void *
field(const struct config_option *o, void *base)
{
    return (char *)base + o->offset;
}

static size_t
scalar_size(enum opt_type t)
{
    switch (t) {
    case OPT_BOOL:
    case OPT_ENUM_BOOL:
        return sizeof(bool);
    case OPT_DURATION:
    case OPT_SIZE:
    case OPT_UINT:
        return sizeof(uint64_t);
    case OPT_ENUM:
        return sizeof(int);
    case OPT_WORKERS:
        return sizeof(unsigned);
    default:
        return 0;
    }
}

/* base is the struct config for OPT_LISTEN, the policy for OPT_BACKEND. */
static void
field_free(const struct config_option *o, void *base)
{
    void *f = field(o, base);

    switch (o->type) {
    case OPT_STRING:
        free(*(char **)f);
        *(char **)f = NULL;
        break;
    case OPT_LIST:
        strlist_free(f);
        break;
    case OPT_LISTEN: {
        struct config *c = base;
        free(c->listen);
        c->listen = NULL;
        c->nlisten = 0;
        break;
    }
    case OPT_BACKEND: {
        struct policy *p = base;
        for (size_t i = 0; i < p->nbackends; i++)
            backend_free(&p->backends[i]);
        free(p->backends);
        p->backends = NULL;
        p->nbackends = 0;
        break;
    }
    default:
        break;
    }
}

/* Deep copy of one policy field; dst's field must be empty. */
static int
field_copy(const struct config_option *o, void *dst, const void *src)
{
    void *df = field(o, dst);
    const void *sf = (const char *)src + o->offset;

    switch (o->type) {
    case OPT_STRING: {
        const char *s = *(char *const *)sf;
        *(char **)df = s ? strdup(s) : NULL;
        return (s && *(char **)df == NULL) ? -1 : 0;
    }
    case OPT_LIST:
        return strlist_copy(df, sf);
    case OPT_BACKEND: {
        struct policy *dp = dst;
        const struct policy *sp = src;
        if (sp->nbackends == 0)
            return 0;
        dp->backends = calloc(sp->nbackends, sizeof *dp->backends);
        if (dp->backends == NULL)
            return -1;
        for (size_t i = 0; i < sp->nbackends; i++) {
            if (backend_copy(&dp->backends[i], &sp->backends[i]) == -1)
                return -1;      /* the caller frees what was copied */
            dp->nbackends++;
        }
        return 0;
    }
    case OPT_LISTEN:
        return -1;              /* not a policy field */
    default:
        memcpy(df, sf, scalar_size(o->type));
        return 0;
    }
}

static int
set_number(const struct config_option *o, void *f, const char *value,
           char *err, size_t errlen)
{
    uint64_t v;
    int rc;
    char lo[32], hi[32];
    const char *what;

    switch (o->type) {
    case OPT_DURATION:
        rc = units_duration_ms(value, &v);
        what = "duration (e.g. 250ms, 10s, 5m, 1h; bare number = seconds)";
        break;
    case OPT_SIZE:
        rc = units_size(value, &v);
        what = "size (e.g. 512, 64k, 1m, 1g)";
        break;
    default:
        rc = units_uint(value, &v);
        what = "non-negative integer";
        break;
    }
    if (rc == -1) {
        snprintf(err, errlen, "invalid value \"%s\" (expected a %s)",
                 value, what);
        return -1;
    }
    if (v < o->min || v > o->max) {
        format_value(o->type, o->min, lo, sizeof lo);
        format_value(o->type, o->max, hi, sizeof hi);
        snprintf(err, errlen, "%s is out of range (%s to %s)", value, lo,
                 hi);
        return -1;
    }
    *(uint64_t *)f = v;
    return 0;
}

static int
set_enum(const struct config_option *o, void *f, const char *value,
         char *err, size_t errlen)
{
    char names[128] = "";
    size_t n = 0;

    for (const struct opt_enum *e = o->enums; e->name != NULL; e++) {
        if (strcasecmp(value, e->name) == 0) {
            if (o->type == OPT_ENUM_BOOL)
                *(bool *)f = e->value != 0;
            else
                *(int *)f = e->value;
            return 0;
        }
        n += (size_t)snprintf(names + n, sizeof names - n, "%s%s",
                              n ? " | " : "", e->name);
        if (n >= sizeof names)
            n = sizeof names - 1;
    }
    snprintf(err, errlen, "invalid value \"%s\" (expected %s)", value,
             names);
    return -1;
}

static int
set_workers(const struct config_option *o, void *f, const char *value,
            char *err, size_t errlen)
{
    uint64_t v;

    if (strcasecmp(value, "auto") == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        v = n < 1 ? 1 : (uint64_t)n;
        if (v > o->max)
            v = o->max;
    } else if (units_uint(value, &v) == -1 || v < o->min || v > o->max) {
        snprintf(err, errlen, "invalid value \"%s\" (expected auto or "
                 "%llu to %llu)", value, (unsigned long long)o->min,
                 (unsigned long long)o->max);
        return -1;
    }
    *(unsigned *)f = (unsigned)v;
    return 0;
}

/* Every item of a list value must pass before any is stored, so a bad
 * value leaves the key as it was. */
static int
set_list(const struct config_option *o, void *base, const char *value,
         bool replace, char *err, size_t errlen)
{
    const char *p = value;
    size_t len, count = 0;
    char item[ERRLEN];

    for (p = next_item(p, &len); p != NULL; p = next_item(p + len, &len)) {
        count++;
        if (o->check == NULL && o->type == OPT_LIST)
            continue;
        if (len >= sizeof item) {
            snprintf(err, errlen, "item \"%.20s...\" too long", p);
            return -1;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        if (o->type == OPT_LISTEN) {
            struct listen_addr a;
            if (parse_listen(item, &a, err, errlen) == -1)
                return -1;
        } else if (o->type == OPT_BACKEND) {
            struct backend_addr b;
            if (parse_backend(item, &b, err, errlen) == -1)
                return -1;
            backend_free(&b);
        } else if (o->check != NULL && o->check(item, err, errlen) == -1) {
            return -1;
        }
    }
    if (replace)
        field_free(o, base);
    if (count == 0)
        return 0;

    void *f = field(o, base);
    if (o->type == OPT_LIST) {
        for (p = next_item(value, &len); p; p = next_item(p + len, &len)) {
            if (strlist_push(f, p, len) == -1)
                goto oom;
        }
        return 0;
    }
    if (o->type == OPT_LISTEN) {
        struct config *c = base;
        struct listen_addr *v = realloc(c->listen,
                                        (c->nlisten + count) * sizeof *v);
        if (v == NULL)
            goto oom;
        c->listen = v;
        for (p = next_item(value, &len); p; p = next_item(p + len, &len)) {
            memcpy(item, p, len);
            item[len] = '\0';
            if (parse_listen(item, &c->listen[c->nlisten], err, errlen) == 0)
                c->nlisten++;
        }
        return 0;
    }
    struct policy *pol = base;
    struct backend_addr *bv = realloc(pol->backends,
                                      (pol->nbackends + count) * sizeof *bv);
    if (bv == NULL)
        goto oom;
    pol->backends = bv;
    for (p = next_item(value, &len); p; p = next_item(p + len, &len)) {
        memcpy(item, p, len);
        item[len] = '\0';
        if (parse_backend(item, &pol->backends[pol->nbackends], err,
                          errlen) == -1)
            goto oom;           /* only allocation can fail by now */
        pol->nbackends++;
    }
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

/*
 * Apply one value to option o's field in base (struct config, or struct
 * policy for OPT_POLICY rows). replace: this is the first value from this
 * source, so an accumulating key drops what it had (the default, or the
 * file's list when the environment overrides it). Returns 0, or -1 with a
 * message in err and the field unchanged.
 */
static int
opt_set(const struct config_option *o, void *base, const char *value,
        bool replace, char *err, size_t errlen)
{
    void *f = field(o, base);

    switch (o->type) {
    case OPT_BOOL:
        if (units_bool(value, f) == -1) {
            snprintf(err, errlen, "invalid value \"%s\" (expected yes or "
                     "no)", value);
            return -1;
        }
        return 0;
    case OPT_DURATION:
    case OPT_SIZE:
    case OPT_UINT:
        return set_number(o, f, value, err, errlen);
    case OPT_ENUM:
    case OPT_ENUM_BOOL:
        return set_enum(o, f, value, err, errlen);
    case OPT_WORKERS:
        return set_workers(o, f, value, err, errlen);
    case OPT_STRING: {
        char *s = NULL;
        if (o->check != NULL && o->check(value, err, errlen) == -1)
            return -1;
        if (value[0] != '\0' && (s = strdup(value)) == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        free(*(char **)f);
        *(char **)f = s;
        return 0;
    }
    case OPT_LIST:
    case OPT_LISTEN:
    case OPT_BACKEND:
        return set_list(o, base, value, replace, err, errlen);
    }
    return -1;
}

static void *
option_base(struct loader *l, const struct config_option *o)
{
    return (o->flags & OPT_POLICY) ? (void *)&l->cp->pub.global
                                   : (void *)&l->cp->pub;
}

static void
policy_free(struct policy *p)
{
    for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
        if (config_options[i].flags & OPT_POLICY)
            field_free(&config_options[i], p);
    }
}

static int
policy_copy(struct policy *dst, const struct policy *src)
{
    memset(dst, 0, sizeof *dst);
    for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
        const struct config_option *o = &config_options[i];
        if ((o->flags & OPT_POLICY) && field_copy(o, dst, src) == -1) {
            policy_free(dst);
            return -1;
        }
    }
    return 0;
}

static void
config_free(struct config_priv *cp)
{
    struct config *c = &cp->pub;

    for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
        if (!(config_options[i].flags & OPT_POLICY))
            field_free(&config_options[i], c);
    }
    policy_free(&c->global);
    for (size_t i = 0; i < c->nroutes; i++) {
        free(c->routes[i].prefix);
        policy_free(&c->routes[i].p);
    }
    free(c->routes);
    free(c->path);
    for (size_t i = 0; i < cp->nunsupported; i++)
        free(cp->unsupported[i]);
    free(cp->unsupported);
    for (size_t i = 0; i < cp->nrw; i++)
        free(cp->rw[i].prefix);
    free(cp->rw);
    free(cp->name);
    free(cp);
}

/* ---- the file ---- */

static void
file_error(struct loader *l, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
file_error(struct loader *l, int line, const char *fmt, ...)
{
    char where[300], body[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    where_line(l, line, where, sizeof where);
    report(l, where, "%s", body);
}

static const struct config_option *
find_option(const char *section, const char *key, size_t *index)
{
    for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
        if (strcasecmp(config_options[i].section, section) == 0
            && strcasecmp(config_options[i].key, key) == 0) {
            *index = i;
            return &config_options[i];
        }
    }
    return NULL;
}

/* A route takes any policy key, named as in its own section. */
static const struct config_option *
find_route_option(const char *key, size_t *index)
{
    for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
        const struct config_option *o = &config_options[i];
        if (!(o->flags & OPT_POLICY))
            continue;
        if (strcasecmp(o->key, key) == 0
            || (o->alias != NULL && strcasecmp(o->alias, key) == 0)) {
            *index = i;
            return o;
        }
    }
    return NULL;
}

static struct route_build *
find_route(struct loader *l, const char *prefix)
{
    for (size_t i = 0; i < l->nroutes; i++) {
        if (strcmp(l->routes[i]->prefix, prefix) == 0)
            return l->routes[i];
    }
    return NULL;
}

static void
route_header(struct loader *l, const char *p)
{
    struct route_build *r, **v;

    l->sec = SEC_SKIP;          /* until the header proves valid */
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '\0') {
        file_error(l, l->lineno, "route section needs a path prefix, "
                   "e.g. [route /chat]");
        return;
    }
    if (p[strcspn(p, " \t")] != '\0') {
        file_error(l, l->lineno, "route prefix \"%s\" must not contain "
                   "blanks", p);
        return;
    }
    if (p[0] != '/') {
        file_error(l, l->lineno, "route prefix \"%s\" must start with "
                   "\"/\"", p);
        return;
    }
    {
        /* Requests are routed on their normalised path, so a prefix
         * that is not itself normalised could never match as written. */
        size_t n = strlen(p);
        char *norm = malloc(n + 1);
        const char *why = NULL;
        int m = norm != NULL ? path_normalize(p, n, norm, n + 1, &why) : -1;

        if (m >= 0 && strchr(p, ';') != NULL) {
            file_error(l, l->lineno, "route prefix \"%s\" must not "
                       "contain ';' (requests are routed on their path "
                       "without ;parameters)", p);
            free(norm);
            return;
        }
        if (m < 0 || (size_t)m != n || memcmp(norm, p, n) != 0) {
            if (m < 0)
                file_error(l, l->lineno, "route prefix \"%s\": %s", p,
                           why != NULL ? why : "out of memory");
            else
                file_error(l, l->lineno, "route prefix \"%s\" is not in "
                           "normal form (requests are routed on their "
                           "normalised path): write \"%s\"", p, norm);
            free(norm);
            return;
        }
        free(norm);
    }
    if (strlen(p) >= sizeof ((struct route_stat *)0)->name) {
        file_error(l, l->lineno, "route prefix longer than %zu bytes",
                   sizeof ((struct route_stat *)0)->name - 1);
        return;
    }
    if (l->nroutes >= STATS_ROUTES - 1) {
        file_error(l, l->lineno, "more than %d routes", STATS_ROUTES - 1);
        return;
    }
    if ((r = find_route(l, p)) != NULL) {
        file_error(l, l->lineno, "duplicate [route %s] (first at line %d)",
                   p, r->line);
        return;
    }
    v = realloc(l->routes, (l->nroutes + 1) * sizeof(struct route_build *));
    if (v == NULL) {
        file_error(l, l->lineno, "out of memory");
        return;
    }
    l->routes = v;
    r = calloc(1, sizeof *r);
    if (r == NULL || (r->prefix = strdup(p)) == NULL) {
        free(r);
        file_error(l, l->lineno, "out of memory");
        return;
    }
    r->line = l->lineno;
    l->routes[l->nroutes++] = r;
    l->route = r;
    l->sec = SEC_ROUTE;
}

static void
section_header(struct loader *l, char *line)
{
    char *p = line + 1, *end, *t;
    bool was_space = false;

    /* The same scan as inih: a ';' after a blank starts a comment. */
    for (end = p; *end != '\0' && *end != ']'
                  && !(was_space && *end == ';'); end++)
        was_space = isspace((unsigned char)*end);
    l->sec = SEC_SKIP;          /* keys of a bad section: one error only */
    if (*end != ']') {
        file_error(l, l->lineno, "malformed section header (missing "
                   "\"]\")");
        return;
    }
    for (t = end + 1; isspace((unsigned char)*t); t++)
        ;
    if (*t != '\0' && *t != ';' && *t != '#') {
        file_error(l, l->lineno, "unexpected text after section header");
        return;
    }
    *end = '\0';
    while (isspace((unsigned char)*p))
        p++;
    for (t = end; t > p && isspace((unsigned char)t[-1]); t--)
        t[-1] = '\0';
    if (strncasecmp(p, "route", 5) == 0
        && (p[5] == '\0' || isspace((unsigned char)p[5]))) {
        route_header(l, p + 5);
        return;
    }
    for (size_t i = 0; i < CONFIG_NSECTIONS; i++) {
        if (strcasecmp(p, config_sections[i].name) == 0) {
            l->sec = SEC_GLOBAL;
            l->section = &config_sections[i];
            return;
        }
    }
    file_error(l, l->lineno, "unknown section [%s]", p);
}

/*
 * inih's reader callback: one line per call, so l->lineno is the line
 * the handler is about to see. Returns buf, or NULL at the end.
 */
static char *
config_reader(char *buf, int num, void *stream)
{
    static const unsigned char bom[] = { 0xef, 0xbb, 0xbf };
    struct loader *l = stream;
    size_t cap, n = 0, nbom = 0;
    bool leading = true, too_long = false, nul = false;
    int c;

    if (num < 2 || (c = getc(l->f)) == EOF)
        return NULL;
    cap = (size_t)num - 1;
    l->lineno++;
    for (; c != EOF && c != '\n'; c = getc(l->f)) {
        if (l->lineno == 1 && leading && nbom < 3 && n == 0
            && c == bom[nbom]) {
            nbom++;
            continue;
        }
        if (leading && nbom > 0 && nbom < 3) {
            /* Not a BOM after all: keep the bytes. */
            for (size_t i = 0; i < nbom && n < cap; i++)
                buf[n++] = (char)bom[i];
            nbom = 3;
        }
        if (leading && isspace(c))
            continue;
        leading = false;
        if (c == '\0')
            nul = true;
        if (n < cap)
            buf[n++] = (char)c;
        else if (!isspace(c))
            too_long = true;    /* trailing blanks past the end are fine */
    }
    while (n > 0 && isspace((unsigned char)buf[n - 1]))
        n--;
    buf[n] = '\0';

    if (too_long) {
        file_error(l, l->lineno, "line too long (max %zu characters)",
                   cap);
        if (buf[0] == '[')
            l->sec = SEC_SKIP;
        buf[0] = '\0';
        return buf;
    }
    if (nul) {
        file_error(l, l->lineno, "NUL character in line");
        buf[0] = '\0';
        return buf;
    }
    if (buf[0] == '\0' || buf[0] == ';' || buf[0] == '#')
        return buf;
    if (buf[0] == '[') {
        section_header(l, buf);
        buf[0] = '\0';
        return buf;
    }

    /* A key line needs '=' (or ':', which inih also accepts) before any
     * inline comment, as inih's find_chars_or_comment() scans it. */
    bool was_space = false;
    char *p;
    for (p = buf; *p != '\0' && *p != '=' && *p != ':'; p++) {
        if (was_space && *p == ';')
            break;
        was_space = isspace((unsigned char)*p);
    }
    if (*p != '=' && *p != ':') {
        file_error(l, l->lineno, "expected \"key = value\"");
        buf[0] = '\0';
    } else if (p == buf) {
        file_error(l, l->lineno, "missing key name before \"%c\"", *p);
        buf[0] = '\0';
    }
    return buf;
}

static void
set_where(struct opt_where *w, enum opt_src src, int line)
{
    w->src = src;
    w->line = line;
    if (src == SRC_FILE && w->first_line == 0)
        w->first_line = line;
}

/* inih's handler: section is ignored, the reader tracks it (see top). */
static int
config_handler(void *user, const char *section, const char *name,
               const char *value)
{
    struct loader *l = user;
    const struct config_option *o;
    struct opt_where *w;
    void *base;
    size_t i;
    char err[ERRLEN];

    (void)section;
    switch (l->sec) {
    case SEC_NONE:
        file_error(l, l->lineno, "key \"%s\" outside of any section",
                   name);
        return 1;
    case SEC_SKIP:
        return 1;
    case SEC_GLOBAL:
        o = find_option(l->section->name, name, &i);
        if (o == NULL) {
            file_error(l, l->lineno, "unknown key \"%s\" in [%s]", name,
                       l->section->name);
            return 1;
        }
        w = &l->where[i];
        base = option_base(l, o);
        break;
    case SEC_ROUTE:
        o = find_route_option(name, &i);
        if (o == NULL) {
            file_error(l, l->lineno, "unknown key \"%s\" in [route %s] "
                       "(a route takes [backend], [origin], [jwt] and "
                       "[limits] keys)", name, l->route->prefix);
            return 1;
        }
        w = &l->route->where[i];
        base = &l->route->own;
        break;
    default:
        return 1;
    }
    /* Repeated keys: lists accumulate within the file, but the file's
     * first value replaces the built-in default. */
    if (opt_set(o, base, value, w->src == SRC_DEFAULT, err, sizeof err)
        == -1) {
        file_error(l, l->lineno, "[%s] %s: %s", o->section, o->key, err);
        return 1;
    }
    set_where(w, SRC_FILE, l->lineno);
    return 1;
}

static void
parse_file(struct loader *l)
{
    int rc = ini_parse_stream(config_reader, l, config_handler, l);

    /* The reader blanks every line it rejects, so inih should never
     * complain on its own; if it does, still fail the load. */
    if (rc == -2)
        file_error(l, 0, "out of memory");
    else if (rc != 0 && l->nerrors == 0)
        file_error(l, rc > 0 ? rc : 0, "syntax error");
}

/* ---- environment ---- */

/* Does var start with WSGUARD_<SECTION>_ for a known section? */
static bool
env_known_section(const char *var)
{
    char prefix[64];

    for (size_t i = 0; i < CONFIG_NSECTIONS; i++) {
        size_t n = (size_t)snprintf(prefix, sizeof prefix, "WSGUARD_%s_",
                                    config_sections[i].name);
        for (size_t k = 0; k < n; k++)
            prefix[k] = (char)toupper((unsigned char)prefix[k]);
        if (strncmp(var, prefix, n) == 0)
            return true;
    }
    return false;
}

static void
apply_env(struct loader *l, char *const *envp)
{
    char var[128], name[128], where[160], err[ERRLEN];

    for (char *const *e = envp; e != NULL && *e != NULL; e++) {
        const char *eq;
        size_t i, n;

        if (strncmp(*e, "WSGUARD_", 8) != 0
            || (eq = strchr(*e, '=')) == NULL)
            continue;
        n = (size_t)(eq - *e);
        snprintf(var, sizeof var, "%.*s", (int)n, *e);
        for (i = 0; i < CONFIG_NOPTIONS; i++) {
            env_name(&config_options[i], name, sizeof name);
            if (n == strlen(name) && memcmp(*e, name, n) == 0)
                break;
        }
        snprintf(where, sizeof where, "env %s", var);
        if (i == CONFIG_NOPTIONS) {
            /* A misspelt key of a known section is an error, as in the
             * file; other WSGUARD_* names (WSGUARD_BIN, WSGUARD_CONF of
             * the scripts) are not configuration and are left alone. */
            if (env_known_section(var))
                report(l, where, "unknown variable (no such [section] "
                       "key)");
            continue;
        }

        const struct config_option *o = &config_options[i];
        const char *v = eq + 1;
        while (isspace((unsigned char)*v))
            v++;
        n = strlen(v);
        while (n > 0 && isspace((unsigned char)v[n - 1]))
            n--;
        char *value = strndup(v, n);
        if (value == NULL) {
            report(l, where, "out of memory");
            continue;
        }
        /* The environment replaces the file's value, lists included. */
        if (opt_set(o, option_base(l, o), value, true, err, sizeof err)
            == -1)
            report(l, where, "[%s] %s: %s", o->section, o->key, err);
        else
            set_where(&l->where[i], SRC_ENV, 0);
        free(value);
    }
}

/* ---- routes, validation, unsupported keys ---- */

static int
route_cmp(const void *a, const void *b)
{
    const struct route *ra = a, *rb = b;
    size_t la = strlen(ra->prefix), lb = strlen(rb->prefix);

    if (la != lb)
        return la > lb ? -1 : 1;        /* longest first */
    return strcmp(ra->prefix, rb->prefix);
}

static void
build_routes(struct loader *l)
{
    struct config *c = &l->cp->pub;

    if (l->nroutes == 0)
        return;
    c->routes = calloc(l->nroutes, sizeof *c->routes);
    if (c->routes == NULL) {
        file_error(l, 0, "out of memory");
        return;
    }
    for (size_t k = 0; k < l->nroutes; k++) {
        struct route_build *r = l->routes[k];
        struct route *dst = &c->routes[c->nroutes];

        if (policy_copy(&dst->p, &c->global) == -1) {
            file_error(l, r->line, "out of memory");
            return;
        }
        dst->prefix = strdup(r->prefix);
        c->nroutes++;
        if (dst->prefix == NULL) {
            file_error(l, r->line, "out of memory");
            return;
        }
        for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
            const struct config_option *o = &config_options[i];
            if (r->where[i].src == SRC_DEFAULT)
                continue;
            field_free(o, &dst->p);
            if (field_copy(o, &dst->p, &r->own) == -1) {
                file_error(l, r->line, "out of memory");
                return;
            }
        }
    }
    qsort(c->routes, c->nroutes, sizeof *c->routes, route_cmp);
}

static size_t
option_index(const char *section, const char *key)
{
    size_t i = 0;

    find_option(section, key, &i);
    return i;
}

static void
check_readable(struct loader *l, size_t i, const char *path)
{
    char where[300];
    FILE *f = fopen(path, "r");

    if (f != NULL) {
        (void)fclose(f);       /* read only: nothing to lose */
        return;
    }
    where_option(l, i, NULL, where, sizeof where);
    report(l, where, "[%s] %s: cannot open \"%s\": %s",
           config_options[i].section, config_options[i].key, path,
           strerror(errno));
}

static config_tls_check_fn tls_checker;

void
config_set_tls_check(config_tls_check_fn fn)
{
    tls_checker = fn;
}

/* A problem tls_check() found, blamed on its [tls] key's line. */
static void
tls_problem(const char *key, const char *msg, void *arg)
{
    struct loader *l = arg;
    char where[300];

    where_option(l, option_index("tls", key), NULL, where, sizeof where);
    report(l, where, "[tls] %s: %s", key, msg);
}

/* [tls] beyond single values: the files load (certificates, keys, CA,
 * SNI names), mTLS and the forwarded identity fit together. */
static void
validate_tls(struct loader *l)
{
    struct config *c = &l->cp->pub;
    char where[300];
    size_t i;

    if (c->tls_enabled) {
        static const char *const keys[] = { "cert", "key" };
        char *const vals[] = { c->tls_cert, c->tls_key };
        if (vals[0] != NULL && vals[1] != NULL && tls_checker != NULL) {
            tls_checker(c, tls_problem, l);
        } else {
            for (size_t k = 0; k < 2; k++) {
                i = option_index("tls", keys[k]);
                if (vals[k] == NULL) {
                    where_option(l, i, NULL, where, sizeof where);
                    report(l, where, "[tls] %s: required when [tls] "
                           "enabled = yes", keys[k]);
                } else {
                    check_readable(l, i, vals[k]);
                }
            }
        }
    }
    /* With TLS off the other [tls] keys are not used, but still checked
     * for consistency: wsguard --healthcheck loads the real file with
     * enabled forced off. */
    if (c->tls_client_verify != VERIFY_OFF && c->tls_client_ca == NULL) {
        i = option_index("tls", "client_verify");
        where_option(l, i, NULL, where, sizeof where);
        report(l, where, "[tls] client_verify: requires [tls] client_ca");
    }
    const char *fwd = c->tls_forward_client_cert;
    if (fwd == NULL || fwd[0] == '\0')
        return;
    i = option_index("tls", "forward_client_cert");
    if (c->tls_client_verify == VERIFY_OFF) {
        where_option(l, i, NULL, where, sizeof where);
        report(l, where, "[tls] forward_client_cert: requires [tls] "
               "client_verify = optional or required");
    }
    /* One header, one meaning: never also a claim header. */
    for (size_t r = 0; r <= c->nroutes; r++) {
        const struct policy *p = r ? &c->routes[r - 1].p : &c->global;
        for (size_t k = 0; p->jwt_enabled && k < p->jwt_forward_claims.n;
             k++) {
            const char *colon = strchr(p->jwt_forward_claims.v[k], ':');
            if (colon != NULL && strcasecmp(colon + 1, fwd) == 0) {
                where_option(l, i, NULL, where, sizeof where);
                report(l, where, "[tls] forward_client_cert: \"%s\" is "
                       "also a [jwt] forward_claims header", fwd);
                return;
            }
        }
    }
}

static void
validate(struct loader *l)
{
    struct config *c = &l->cp->pub;
    char where[300];
    size_t i;

    if (c->nlisten == 0) {
        i = option_index("server", "listen");
        where_option(l, i, NULL, where, sizeof where);
        report(l, where, "[server] listen: no listen address");
    }
    i = option_index("backend", "url");
    if (c->global.nbackends == 0) {
        where_option(l, i, NULL, where, sizeof where);
        report(l, where, "[backend] url: no backend");
    }
    for (size_t k = 0; k < l->nroutes; k++) {
        const struct route_build *r = l->routes[k];
        if (r->where[i].src != SRC_DEFAULT && r->own.nbackends == 0) {
            where_option(l, i, r, where, sizeof where);
            report(l, where, "[route %s] backend: no backend", r->prefix);
        }
    }
    validate_tls(l);
}

static void
add_unsupported(struct loader *l, int line, const char *where,
                const char *what)
{
    struct unsupported_msg *v;
    char msg[600];

    snprintf(msg, sizeof msg, "%s: %s: not supported yet", where, what);
    v = realloc(l->unsup, (l->nunsup + 1) * sizeof *v);
    if (v == NULL)
        return;
    l->unsup = v;
    v[l->nunsup].line = line;
    v[l->nunsup].seq = l->nunsup;
    v[l->nunsup].msg = strdup(msg);
    if (v[l->nunsup].msg != NULL)
        l->nunsup++;
}

static int
unsup_cmp(const void *a, const void *b)
{
    const struct unsupported_msg *ua = a, *ub = b;

    if (ua->line != ub->line)
        return ua->line < ub->line ? -1 : 1;
    return ua->seq < ub->seq ? -1 : ua->seq > ub->seq;
}

static void
collect_unsupported(struct loader *l)
{
    char where[300], what[300];
    struct config_priv *cp = l->cp;

    for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
        const struct config_option *o = &config_options[i];
        const struct opt_where *w = &l->where[i];
        if (!(o->flags & OPT_UNSUPPORTED) || w->src == SRC_DEFAULT)
            continue;
        if (w->src == SRC_FILE)
            where_line(l, w->first_line, where, sizeof where);
        else
            where_option(l, i, NULL, where, sizeof where);
        snprintf(what, sizeof what, "[%s] %s", o->section, o->key);
        add_unsupported(l, w->src == SRC_FILE ? w->first_line : INT_MAX,
                        where, what);
    }
    for (size_t k = 0; k < l->nroutes; k++) {
        const struct route_build *r = l->routes[k];
        const char *prefix = r->prefix;
        if (CONFIG_ROUTE_FLAGS & OPT_UNSUPPORTED) {
            where_line(l, r->line, where, sizeof where);
            snprintf(what, sizeof what, "[route %s]", prefix);
            add_unsupported(l, r->line, where, what);
        }
        for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
            const struct config_option *o = &config_options[i];
            if (!(o->flags & OPT_UNSUPPORTED)
                || r->where[i].src == SRC_DEFAULT)
                continue;
            where_line(l, r->where[i].first_line, where, sizeof where);
            snprintf(what, sizeof what, "[route %s] %s", prefix, o->key);
            add_unsupported(l, r->where[i].first_line, where, what);
        }
    }
    if (l->nunsup > 1)
        qsort(l->unsup, l->nunsup, sizeof *l->unsup, unsup_cmp);
    cp->unsupported = calloc(l->nunsup ? l->nunsup : 1,
                             sizeof *cp->unsupported);
    for (size_t i = 0; i < l->nunsup; i++) {
        if (cp->unsupported != NULL)
            cp->unsupported[cp->nunsupported++] = l->unsup[i].msg;
        else
            free(l->unsup[i].msg);
    }
    free(l->unsup);
    l->unsup = NULL;
}

/* Copy where every value came from into the config, for config_where()
 * once the loader is gone. */
static void
keep_where(struct loader *l)
{
    struct config_priv *cp = l->cp;

    cp->name = strdup(l->name);
    memcpy(cp->where, l->where, sizeof cp->where);
    cp->rw = calloc(l->nroutes ? l->nroutes : 1, sizeof *cp->rw);
    if (cp->name == NULL || cp->rw == NULL) {
        report(l, l->name, "out of memory");
        return;
    }
    for (size_t k = 0; k < l->nroutes; k++) {
        struct route_where *rw = &cp->rw[cp->nrw];
        if ((rw->prefix = strdup(l->routes[k]->prefix)) == NULL) {
            report(l, l->name, "out of memory");
            return;
        }
        rw->line = l->routes[k]->line;
        memcpy(rw->where, l->routes[k]->where, sizeof rw->where);
        cp->nrw++;
    }
}

/* ---- loading ---- */

static struct config *
load(const char *name, const char *path, FILE *f, int open_errno,
     char *const *envp, config_err_fn err, void *ctx)
{
    struct loader l;
    char msg[ERRLEN];

    memset(&l, 0, sizeof l);
    l.name = name;
    l.err = err;
    l.ctx = ctx;
    l.f = f;
    l.cp = calloc(1, sizeof *l.cp);
    if (l.cp == NULL) {
        report(&l, name, "out of memory");
        return NULL;
    }
    atomic_init(&l.cp->pub.refs, 1);
    if (path != NULL && (l.cp->pub.path = strdup(path)) == NULL)
        report(&l, name, "out of memory");

    for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
        const struct config_option *o = &config_options[i];
        if (o->def != NULL && opt_set(o, option_base(&l, o), o->def, true,
                                      msg, sizeof msg) == -1)
            report(&l, name, "[%s] %s: bad built-in default: %s",
                   o->section, o->key, msg);
    }
    if (open_errno != 0)
        report(&l, name, "cannot open: %s", strerror(open_errno));
    else if (f != NULL)
        parse_file(&l);
    apply_env(&l, envp);
    build_routes(&l);
    validate(&l);
    collect_unsupported(&l);
    keep_where(&l);

    for (size_t k = 0; k < l.nroutes; k++) {
        free(l.routes[k]->prefix);
        policy_free(&l.routes[k]->own);
        free(l.routes[k]);
    }
    free(l.routes);
    if (l.nerrors > 0) {
        config_free(l.cp);
        return NULL;
    }
    return &l.cp->pub;
}

struct config *
config_load(const char *path, char *const *envp, config_err_fn err,
            void *ctx)
{
    FILE *f = NULL;
    int open_errno = 0;
    struct config *c;

    if (path != NULL && (f = fopen(path, "r")) == NULL)
        open_errno = errno;
    c = load(path ? path : "(defaults)", path, f, open_errno, envp, err,
             ctx);
    if (f != NULL)
        (void)fclose(f);       /* read only: nothing to lose */
    return c;
}

struct config *
config_load_string(const char *name, const char *text, char *const *envp,
                   config_err_fn err, void *ctx)
{
    FILE *f = NULL;
    int open_errno = 0;
    size_t len = text ? strlen(text) : 0;
    struct config *c;

    /* fmemopen() wants a writable-looking pointer but "r" never writes. */
    if (len > 0 && (f = fmemopen((char *)text, len, "r"))
        == NULL)
        open_errno = errno;
    c = load(name ? name : "(string)", NULL, f, open_errno, envp, err,
             ctx);
    if (f != NULL)
        (void)fclose(f);       /* read only: nothing to lose */
    return c;
}

/* ---- the public accessors ---- */

int
config_unsupported(const struct config *cfg, config_err_fn warn, void *ctx)
{
    const struct config_priv *cp = (const struct config_priv *)cfg;

    for (size_t i = 0; i < cp->nunsupported; i++) {
        if (warn != NULL)
            warn(cp->unsupported[i], ctx);
    }
    return (int)cp->nunsupported;
}

void
config_where(const struct config *cfg, const struct policy *p,
             const char *section, const char *key, char *buf, size_t len)
{
    const struct config_priv *cp = (const struct config_priv *)cfg;
    const char *name = cp->name != NULL ? cp->name : "(config)";
    size_t i = 0;
    char var[128];

    if (!find_option(section, key, &i)) {
        snprintf(buf, len, "%s", name);
        return;
    }
    /* A route's own key: its line in the file. */
    for (size_t k = 0; p != &cfg->global && k < cfg->nroutes; k++) {
        if (p != &cfg->routes[k].p)
            continue;
        for (size_t j = 0; j < cp->nrw; j++) {
            const struct route_where *rw = &cp->rw[j];
            if (strcmp(rw->prefix, cfg->routes[k].prefix) == 0
                && rw->where[i].src == SRC_FILE) {
                snprintf(buf, len, "%s:%d", name, rw->where[i].line);
                return;
            }
        }
    }
    switch (cp->where[i].src) {
    case SRC_FILE:
        snprintf(buf, len, "%s:%d", name, cp->where[i].line);
        break;
    case SRC_ENV:
        env_name(&config_options[i], var, sizeof var);
        snprintf(buf, len, "env %s", var);
        break;
    default:
        snprintf(buf, len, "%s", name);
        break;
    }
}

struct config *
config_ref(struct config *cfg)
{
    atomic_fetch_add(&cfg->refs, 1);
    return cfg;
}

void
config_unref(struct config *cfg)
{
    if (cfg != NULL && atomic_fetch_sub(&cfg->refs, 1) == 1)
        config_free((struct config_priv *)cfg);
}

int
config_route_index(const struct config *cfg, const char *path, size_t len)
{
    if (cfg->nroutes == 0)
        return 0;
    /* Longest first, so the first match is the longest prefix. */
    for (size_t i = 0; i < cfg->nroutes; i++) {
        size_t n = strlen(cfg->routes[i].prefix);
        if (n <= len && memcmp(path, cfg->routes[i].prefix, n) == 0)
            return (int)i + 1;
    }
    return -1;
}

const struct policy *
config_policy(const struct config *cfg, int index, const char **route_name)
{
    if (index < 0)
        return NULL;
    if (route_name != NULL)
        *route_name = index == 0 ? "" : cfg->routes[index - 1].prefix;
    return index == 0 ? &cfg->global : &cfg->routes[index - 1].p;
}

const struct policy *
config_route(const struct config *cfg, const char *path, size_t len,
             const char **route_name)
{
    return config_policy(cfg, config_route_index(cfg, path, len),
                         route_name);
}
