/*
 * runtime.c - configuration snapshots and what they need at run time
 * (see runtime.h).
 */
#include "runtime.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jwt.h"
#include "netaddr.h"
#include "origin.h"
#include "tls.h"

atomic_uint_fast64_t runtime_conns;
struct iplimit *runtime_iplimit;

static int
resolve_one(const struct backend_addr *be, struct resolved *r, char *err,
            size_t cap)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int e = getaddrinfo(be->host, be->port, &hints, &res);
    if (e != 0 || res == NULL) {
        snprintf(err, cap, "backend %s: cannot resolve %s: %s", be->url,
                 be->host, gai_strerror(e));
        return -1;
    }
    r->be = be;
    memcpy(&r->ss, res->ai_addr, res->ai_addrlen);
    atomic_init(&r->ok, 0);
    atomic_init(&r->failed, 0);
    atomic_init(&r->last_errno, 0);
    atomic_init(&r->up, -1);
    r->len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int
resolve_policy(struct runtime *rt, const struct policy *p, char *err,
               size_t cap)
{
    for (size_t i = 0; i < p->nbackends; i++) {
        struct resolved *n = realloc(rt->addrs,
                                     (rt->naddrs + 1) * sizeof *rt->addrs);
        if (n == NULL) {
            snprintf(err, cap, "out of memory");
            return -1;
        }
        rt->addrs = n;
        if (resolve_one(&p->backends[i], &rt->addrs[rt->naddrs], err, cap))
            return -1;
        rt->naddrs++;
    }
    return 0;
}

/* Errors name where the value at fault was set (config_where): the file
 * and line, or the environment variable. */
static int
policy_rt_init(const struct config *cfg, struct policy_rt *prt,
               const struct policy *p, char *err, size_t cap)
{
    char e[400], where[300];
    const char *key = NULL;

    if (p->origin_allow.n || p->origin_allow_pattern.n) {
        prt->origin = origin_set_new(&p->origin_allow,
                                     &p->origin_allow_pattern, e, sizeof e);
        if (prt->origin == NULL) {
            config_where(cfg, p, "origin", p->origin_allow_pattern.n
                         ? "allow_pattern" : "allow", where, sizeof where);
            snprintf(err, cap, "%s: [origin] %s", where, e);
            return -1;
        }
    }
    if (p->jwt_enabled) {
        prt->jwt = jwt_verifier_new(p, &key, e, sizeof e);
        if (prt->jwt == NULL) {
            config_where(cfg, p, "jwt", key, where, sizeof where);
            snprintf(err, cap, "%s: %s", where, e);
            return -1;
        }
    }
    return 0;
}

int
runtime_route(const struct runtime *rt, const char *path, size_t len,
              struct route_match *m)
{
    int i = config_route_index(rt->cfg, path, len);

    if (i < 0)
        return -1;
    m->pol = config_policy(rt->cfg, i, &m->name);
    m->prt = &rt->prt[i];
    return 0;
}

/* rt->identity and rt->redact, from every policy (see runtime.h). */
static int
collect_names(struct runtime *rt, char *err, size_t cap)
{
    const struct config *cfg = rt->cfg;
    size_t ni = 0, nr = 0;

    for (size_t i = 0; i <= cfg->nroutes; i++) {
        const struct policy *p = i ? &cfg->routes[i - 1].p : &cfg->global;
        ni += p->jwt_forward_claims.n;
        nr += p->jwt_sources.n;
    }
    ni++;       /* [tls] forward_client_cert */
    rt->identity = calloc(ni + 1, sizeof *rt->identity);
    rt->redact = calloc(nr + 1, sizeof *rt->redact);
    if (rt->identity == NULL || rt->redact == NULL) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    /* Set by wsguard from the client certificate: a client's own copy
     * never reaches a backend, whatever the route. */
    if (cfg->tls_forward_client_cert && cfg->tls_forward_client_cert[0])
        rt->identity[rt->nidentity++] = cfg->tls_forward_client_cert;
    for (size_t i = 0; i <= cfg->nroutes; i++) {
        const struct policy *p = i ? &cfg->routes[i - 1].p : &cfg->global;
        for (size_t k = 0; p->jwt_enabled && k < p->jwt_forward_claims.n;
             k++) {
            const char *colon = strchr(p->jwt_forward_claims.v[k], ':');
            if (colon != NULL)
                rt->identity[rt->nidentity++] = colon + 1;
        }
        for (size_t k = 0; k < p->jwt_sources.n; k++)
            if (strncmp(p->jwt_sources.v[k], "query:", 6) == 0)
                rt->redact[rt->nredact++] = p->jwt_sources.v[k] + 6;
    }
    return 0;
}

struct runtime *
runtime_new(struct config *cfg, char *err, size_t cap)
{
    struct runtime *rt = calloc(1, sizeof *rt);
    if (rt == NULL) {
        snprintf(err, cap, "out of memory");
        config_unref(cfg);
        return NULL;
    }
    atomic_init(&rt->refs, 1);
    rt->cfg = cfg;
    if (cfg->tls_enabled && (rt->tls = tls_ctx_new(cfg, err, cap)) == NULL)
        goto fail;
    rt->prt = calloc(cfg->nroutes + 1, sizeof *rt->prt);
    if (rt->prt == NULL) {
        snprintf(err, cap, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i <= cfg->nroutes; i++) {
        const struct policy *p = i ? &cfg->routes[i - 1].p : &cfg->global;
        if (resolve_policy(rt, p, err, cap) != 0 ||
            policy_rt_init(cfg, &rt->prt[i], p, err, cap) != 0)
            goto fail;
    }
    if (cfg->trusted_proxies.n &&
        (rt->trusted = cidr_set_new(&cfg->trusted_proxies, err, cap)) == NULL)
        goto fail;
    if (collect_names(rt, err, cap) != 0)
        goto fail;
    return rt;
fail:
    runtime_unref(rt);
    return NULL;
}

struct runtime *
runtime_ref(struct runtime *rt)
{
    atomic_fetch_add(&rt->refs, 1);
    return rt;
}

void
runtime_unref(struct runtime *rt)
{
    if (rt == NULL || atomic_fetch_sub(&rt->refs, 1) != 1)
        return;
    if (rt->prt) {
        for (size_t i = 0; i <= rt->cfg->nroutes; i++) {
            origin_set_free(rt->prt[i].origin);
            jwt_verifier_free(rt->prt[i].jwt);
        }
        free(rt->prt);
    }
    cidr_set_free(rt->trusted);
    free(rt->identity);
    free(rt->redact);
    config_unref(rt->cfg);
    SSL_CTX_free(rt->tls);
    free(rt->addrs);
    free(rt);
}

void
runtime_backend_result(struct runtime *rt, const struct backend_addr *be,
                       int err)
{
    for (size_t i = 0; i < rt->naddrs; i++) {
        struct resolved *r = &rt->addrs[i];
        if (r->be != be)
            continue;
        atomic_fetch_add_explicit(err ? &r->failed : &r->ok, 1,
                                  memory_order_relaxed);
        atomic_store_explicit(&r->last_errno, err, memory_order_relaxed);
        atomic_store_explicit(&r->up, err == 0, memory_order_relaxed);
        return;
    }
}

int
runtime_resolve(const struct runtime *rt, const struct backend_addr *be,
                struct sockaddr_storage *ss, socklen_t *len)
{
    for (size_t i = 0; i < rt->naddrs; i++) {
        if (rt->addrs[i].be == be) {
            memcpy(ss, &rt->addrs[i].ss, rt->addrs[i].len);
            *len = rt->addrs[i].len;
            return 0;
        }
    }
    return -1;
}

