/*
 * policy.c - the upgrade checks as resumable steps (see policy.h).
 */
#include "policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "field.h"
#include "origin.h"
#include "path.h"
#include "revoke.h"

/* ------------------------------------------------------------------ */
/* The client's per-IP slot                                            */

void
client_count(struct client *cl, const struct runtime *rt)
{
    /* Counted even without a limit: the status page lists the busiest
     * addresses. */
    if (cl->counted || cl->over)
        return;
    uint64_t lim = rt->cfg->global.max_connections_per_ip;
    int r = iplimit_acquire(runtime_iplimit, &cl->key,
                            lim ? lim : UINT64_MAX);
    if (r == 1)
        cl->counted = 1;
    else if (r == 0)
        cl->over = 1;
}

void
client_release(struct client *cl)
{
    if (cl->counted)
        iplimit_release(runtime_iplimit, &cl->key);
    cl->counted = 0;
}

/* Behind a trusted proxy the client is the rightmost address of
 * X-Forwarded-For that is not itself a trusted proxy. However long the
 * header: a client that pads it must not make wsguard fall back to
 * counting it under the proxy's address. */
static void
client_from_xff(struct checks *k)
{
    const struct http_request *req = &k->req;
    struct client *cl = k->cl;
    const char *v[MAX_HEADERS];
    size_t len[MAX_HEADERS], n = 0;
    char ip[INET6_ADDRSTRLEN + 8];
    struct ip_key key;

    for (size_t i = 0; i < req->nheaders; i++) {
        const struct http_header *h = &req->headers[i];
        if (http_eq(h->name, h->name_len, "x-forwarded-for")) {
            v[n] = h->value;
            len[n++] = h->value_len;
        }
    }
    if (n == 0 || xff_client_v(v, len, n, k->rt->trusted, ip,
                               sizeof ip) != 0)
        return;
    if (ip_key_from_text(ip, strlen(ip),
                         (unsigned)k->route.pol->ipv6_prefix, &key) != 0)
        return;
    /* Counted under the proxy's address (a PROXY header without one):
     * move the slot to the client it names. */
    client_release(cl);
    cl->key = key;
    snprintf(cl->ip, sizeof cl->ip, "%s", ip);
}

/* ------------------------------------------------------------------ */
/* Steps                                                               */

static enum check_result
refuse(struct checks *k, enum refusal kind, const char *reason)
{
    k->ref = kind;
    k->reason = reason != NULL ? reason : refusal_info[kind].text;
    return CHECK_REFUSE;
}

static char *
dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* RFC 6455 §4 (upgrade.c). Until the path is normalised the log gets no
 * query string. */
static enum check_result
step_request(struct checks *k)
{
    const struct http_request *req = &k->req;
    const char *reason = NULL;
    size_t plen = 0;

    while (plen < req->target_len && req->target[plen] != '?')
        plen++;
    free(k->log_path);
    k->log_path = dupn(req->target, plen);
    const struct http_header *o = http_find(req->headers, req->nheaders,
                                            "origin", NULL);
    if (o != NULL)
        k->origin = dupn(o->value, o->value_len < ORIGIN_MAX
                                       ? o->value_len : ORIGIN_MAX);
    int status = upgrade_check(req, &k->ureq, &reason);
    if (status != 0)
        return refuse(k, refusal_for_status(status), reason);
    return CHECK_PASS;
}

/*
 * Normalise the request's path (path.h) and make the request read the
 * normalised target from here on: routing, token extraction and the
 * backend request all see the path that was checked. The access log gets
 * that path and the query without any configured token parameter.
 */
static enum check_result
step_path(struct checks *k)
{
    struct http_request *req = &k->req;
    const char *q = memchr(req->target, '?', req->target_len);
    size_t plen = q ? (size_t)(q - req->target) : req->target_len;
    size_t qlen = q ? req->target_len - plen - 1 : 0;
    const char *why = NULL;
    int n;

    k->ntarget = malloc(req->target_len + 1);
    if (k->ntarget == NULL)
        return refuse(k, REF_INTERNAL, NULL);
    n = path_normalize(req->target, plen, k->ntarget, plen + 1, &why);
    if (n < 0)
        return refuse(k, REF_BAD_PATH, why);
    size_t o = (size_t)n;
    if (q != NULL) {
        k->ntarget[o++] = '?';
        memcpy(k->ntarget + o, q + 1, qlen);
        o += qlen;
    }
    k->ntarget[o] = '\0';
    req->target = k->ntarget;
    req->target_len = o;
    k->ureq.path = k->ntarget;
    k->ureq.path_len = (size_t)n;

    /* For the log: path, then the query without token parameters. */
    char *lp = malloc(o + 1);
    if (lp == NULL)
        return refuse(k, REF_INTERNAL, NULL);
    memcpy(lp, k->ntarget, (size_t)n);
    lp[n] = '\0';
    if (q != NULL) {
        int m = field_query_without(k->ntarget + n + 1, qlen, k->rt->redact,
                                    k->rt->nredact, lp + n + 1, qlen + 1);
        lp[n] = m > 0 ? '?' : '\0';
    }
    free(k->log_path);
    k->log_path = lp;
    return CHECK_PASS;
}

/* Routed on the path without ";params" (path_route_key): a servlet
 * backend serves "/admin;x/" as "/admin/", so it gets /admin/'s policy. */
static enum check_result
step_route(struct checks *k)
{
    char *key = malloc(k->ureq.path_len + 1);
    int r;

    if (key == NULL)
        return refuse(k, REF_INTERNAL, NULL);
    r = runtime_route(k->rt, key,
                      path_route_key(k->ureq.path, k->ureq.path_len, key),
                      &k->route);
    free(key);
    if (r != 0)
        return refuse(k, REF_NO_ROUTE, NULL);
    return CHECK_PASS;
}

static enum check_result
step_capacity(struct checks *k)
{
    uint64_t max = k->rt->cfg->max_connections;

    if (k->draining)
        return refuse(k, REF_DRAINING, NULL);
    if (max && atomic_load(&runtime_conns) > max)
        return refuse(k, REF_MAX_CONNECTIONS, NULL);
    return CHECK_PASS;
}

/* The global limit is applied when the slot is taken; a route's own
 * limit is checked in addition, so a route can only be stricter. */
static enum check_result
step_ip(struct checks *k, double now)
{
    struct client *cl = k->cl;
    uint64_t lim = k->route.pol->max_connections_per_ip;

    if (cl->trusted && !cl->final)
        client_from_xff(k);
    client_count(cl, k->rt);
    if (cl->over || (lim && cl->counted &&
                     iplimit_count(runtime_iplimit, &cl->key) > lim))
        return refuse(k, REF_IP_LIMIT, NULL);
    if (revoked_match(REVOKE_IP, cl->ip, strlen(cl->ip), now))
        return refuse(k, REF_REVOKED, "address revoked");
    return CHECK_PASS;
}

/* The fleet-wide count (cluster mode), under the stricter of the global
 * and the route's limit; none without a limit. */
static enum check_result
step_shared(struct checks *k)
{
    uint64_t g = k->rt->cfg->global.max_connections_per_ip;
    uint64_t r = k->route.pol->max_connections_per_ip;
    uint64_t lim = g == 0 ? r : r == 0 ? g : r < g ? r : g;

    if (!k->shared || lim == 0 || !k->cl->counted)
        return CHECK_PASS;
    switch (k->shared_answer) {
    case SHARED_NONE:
        k->shared_limit = lim;
        return CHECK_WAIT;
    case SHARED_OK:
        return CHECK_PASS;
    case SHARED_OVER:
        return refuse(k, REF_IP_LIMIT, "per-IP connection limit "
                      "(fleet-wide)");
    case SHARED_DOWN:
        return k->fail_closed ? refuse(k, REF_CLUSTER, NULL) : CHECK_PASS;
    default:
        return refuse(k, REF_INTERNAL, NULL);
    }
}

static enum check_result
step_origin(struct checks *k)
{
    const struct origin_set *set = k->route.prt->origin;

    if (set == NULL)
        return CHECK_PASS;
    if (k->ureq.origin == NULL)
        return k->route.pol->origin_allow_missing
                   ? CHECK_PASS : refuse(k, REF_ORIGIN, "origin missing");
    if (!origin_allowed(set, k->ureq.origin, k->ureq.origin_len))
        return refuse(k, REF_ORIGIN, "origin not allowed");
    return CHECK_PASS;
}

static char *
strcat_alloc(char *a, size_t *alen, const char *b, size_t blen)
{
    char *n = realloc(a, *alen + blen + 1);
    if (n == NULL) {
        free(a);
        return NULL;
    }
    memcpy(n + *alen, b, blen);
    *alen += blen;
    n[*alen] = '\0';
    return n;
}

static const char *
token_refusal(int r)
{
    switch (r) {
    case JWT_NO_TOKEN:
        return "token missing";
    case JWT_TWO_TOKENS:
        return "two tokens";
    default:
        return "token too large";
    }
}

/* Cut the verified token from what the backend receives: the query
 * parameter, the header, or the cookie pair or protocol entry inside its
 * one header (every other header of that name stays as it is). */
static int
cut_token(struct checks *k, const struct jwt_verifier *v)
{
    const struct jwt_token *t = &k->tok;
    size_t cap;
    int n;

    switch (t->source) {
    case JWT_SRC_QUERY:
        cap = k->req.target_len + 1;
        if ((k->target = malloc(cap)) == NULL)
            return -1;
        n = jwt_strip(v, t, &k->req, k->target, cap);
        if (n < 0)
            return -1;
        k->target_len = (size_t)n;
        return 0;
    case JWT_SRC_HEADER:
        k->edit[t->hidx].drop = 1;
        return 0;
    case JWT_SRC_COOKIE:
    case JWT_SRC_PROTOCOL:
        /* Rebuilt with "; " or ", " between elements: at most twice the
         * length of the value. */
        cap = 2 * t->header->value_len + 2;
        if ((k->edit_value = malloc(cap)) == NULL)
            return -1;
        n = jwt_strip(v, t, &k->req, k->edit_value, cap);
        if (n < 0)
            return -1;
        if (n == 0) {
            k->edit[t->hidx].drop = 1;
        } else {
            k->edit[t->hidx].value = k->edit_value;
            k->edit[t->hidx].value_len = (size_t)n;
        }
        return 0;
    default:
        return -1;
    }
}

/* [jwt]: find, verify, and keep the token away from the backend. */
static enum check_result
step_token(struct checks *k, double now)
{
    const struct jwt_verifier *v = k->route.prt->jwt;
    char buf[8192];
    const char *why = NULL;
    struct jwt_result res;

    if (v == NULL)
        return CHECK_PASS;
    int r = jwt_extract(v, &k->req, &k->tok);
    if (r != JWT_FOUND)
        return refuse(k, REF_JWT, token_refusal(r));
    if (jwt_verify(v, k->tok.tok, k->tok.len, (int64_t)now, &res, &why) != 0)
        return refuse(k, REF_JWT, why);
    k->sub = res.sub;
    k->jti = res.jti;
    res.sub = res.jti = NULL;
    if ((k->sub != NULL &&
         revoked_match(REVOKE_SUB, k->sub, strlen(k->sub), now)) ||
        (k->jti != NULL &&
         revoked_match(REVOKE_JTI, k->jti, strlen(k->jti), now))) {
        jwt_result_free(&res);
        return refuse(k, REF_REVOKED, "token revoked");
    }
    k->tok_exp = res.exp;
    k->tok_leeway = jwt_leeway(v);

    /* Claims for the backend; client headers with those names go (the
     * runtime's identity list, for every route). */
    int n = jwt_claim_headers(v, &res, buf, sizeof buf);
    jwt_result_free(&res);
    if (n < 0)
        return refuse(k, REF_JWT, "claims too large");
    if (n > 0) {
        k->extra = strcat_alloc(k->extra, &k->extra_len, buf, (size_t)n);
        if (k->extra == NULL)
            return refuse(k, REF_INTERNAL, NULL);
    }
    /* Never fall back to forwarding the request with the token. */
    if (!k->route.pol->jwt_forward_token && cut_token(k, v) != 0)
        return refuse(k, REF_INTERNAL, NULL);
    return CHECK_PASS;
}

enum check_result
checks_run(struct checks *k, double now)
{
    while (k->step != STEP_DONE) {
        enum check_result r;

        switch (k->step) {
        case STEP_REQUEST:
            r = step_request(k);
            break;
        case STEP_PATH:
            r = step_path(k);
            break;
        case STEP_ROUTE:
            r = step_route(k);
            break;
        case STEP_CAPACITY:
            r = step_capacity(k);
            break;
        case STEP_IP:
            r = step_ip(k, now);
            break;
        case STEP_ORIGIN:
            r = step_origin(k);
            break;
        case STEP_TOKEN:
            r = step_token(k, now);
            break;
        case STEP_SHARED:
            r = step_shared(k);
            break;
        default:
            r = CHECK_PASS;
            break;
        }
        if (r != CHECK_PASS)
            return r;
        k->step++;
    }
    return CHECK_PASS;
}

void
checks_free(struct checks *k)
{
    free(k->ntarget);
    free(k->target);
    free(k->extra);
    free(k->edit_value);
    free(k->sub);
    free(k->jti);
    free(k->log_path);
    free(k->origin);
    k->ntarget = k->target = k->extra = k->edit_value = NULL;
    k->sub = k->jti = k->log_path = k->origin = NULL;
}
