/*
 * cluster.c - shared per-IP counts and revocation through Redis (see
 * cluster.h).
 */
#include "cluster.h"

#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define RENEW_BATCH 64          /* addresses per renewal command */
#define PASSWORD_MAX 1024

/* ---- the scripts --------------------------------------------------------- */

/* Milliseconds on Redis's clock. */
#define LUA_NOW                                                              \
    "local t = redis.call('TIME')\n"                                         \
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/* KEYS[1] the address's hash; ARGV: field, limit, lease ms, this
 * worker's new count. 1 when set, 0 over the limit. */
static const char lua_acquire[] =
    LUA_NOW
    "local h = redis.call('HGETALL', KEYS[1])\n"
    "local others = 0\n"
    "for i = 1, #h, 2 do\n"
    "  if h[i] ~= ARGV[1] then\n"
    "    local c, e = string.match(h[i + 1], '^(%d+):(%d+)$')\n"
    "    if c == nil or tonumber(e) <= now then\n"
    "      redis.call('HDEL', KEYS[1], h[i])\n"
    "    else\n"
    "      others = others + tonumber(c)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if others + tonumber(ARGV[4]) > tonumber(ARGV[2]) then return 0 end\n"
    "redis.call('HSET', KEYS[1], ARGV[1],"
    " ARGV[4] .. ':' .. (now + tonumber(ARGV[3])))\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "return 1\n";

/* KEYS: address hashes; ARGV: field, lease ms, then one count per key
 * (0 deletes the field). */
static const char lua_set[] =
    LUA_NOW
    "local exp = now + tonumber(ARGV[2])\n"
    "for i = 1, #KEYS do\n"
    "  local c = tonumber(ARGV[2 + i])\n"
    "  if c == 0 then\n"
    "    redis.call('HDEL', KEYS[i], ARGV[1])\n"
    "  else\n"
    "    redis.call('HSET', KEYS[i], ARGV[1], c .. ':' .. exp)\n"
    "    redis.call('PEXPIRE', KEYS[i], ARGV[2])\n"
    "  end\n"
    "end\n"
    "return #KEYS\n";

/* KEYS[1] the revoked set; ARGV: member, ttl ms, channel ("" = store
 * only), message. */
static const char lua_revoke[] =
    LUA_NOW
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[2]), ARGV[1])\n"
    "if ARGV[3] ~= '' then\n"
    "  return redis.call('PUBLISH', ARGV[3], ARGV[4])\n"
    "end\n"
    "return 0\n";

/* KEYS[1] the revoked set: members in force with their time left (ms). */
static const char lua_load[] =
    LUA_NOW
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "local r = redis.call('ZRANGE', KEYS[1], now, '+inf', 'BYSCORE',"
    " 'LIMIT', 0, 65536, 'WITHSCORES')\n"
    "local out = {}\n"
    "for i = 1, #r, 2 do\n"
    "  out[#out + 1] = r[i]\n"
    "  out[#out + 1] = tostring(tonumber(r[i + 1]) - now)\n"
    "end\n"
    "return out\n";

enum script { S_ACQUIRE = 0, S_SET, S_REVOKE, S_LOAD, S_COUNT };

static const char *const script_text[S_COUNT] = {
    lua_acquire, lua_set, lua_revoke, lua_load
};

/* SHA-1 of each script, as EVALSHA wants it. */
static char script_sha[S_COUNT][41];

static void
scripts_hash(void)
{
    for (int i = 0; i < S_COUNT; i++) {
        unsigned char md[20];
        unsigned len = 0;
        EVP_Digest(script_text[i], strlen(script_text[i]), md, &len,
                   EVP_sha1(), NULL);
        for (size_t j = 0; j < 20; j++) {
            script_sha[i][2 * j] = "0123456789abcdef"[md[j] >> 4];
            script_sha[i][2 * j + 1] = "0123456789abcdef"[md[j] & 15];
        }
    }
}

/* ---- the shared part ----------------------------------------------------- */

static char *
read_password(const char *path, char *err, size_t cap)
{
    char buf[PASSWORD_MAX + 2];
    FILE *f = fopen(path, "re");
    size_t n;

    if (f == NULL) {
        snprintf(err, cap, "cannot read password_file %s: %s", path,
                 strerror(errno));
        return NULL;
    }
    n = fread(buf, 1, sizeof buf - 1, f);
    (void)fclose(f);       /* read only: nothing to lose */
    if (n > PASSWORD_MAX) {
        snprintf(err, cap, "password_file %s: longer than %d bytes", path,
                 PASSWORD_MAX);
        explicit_bzero(buf, sizeof buf);
        return NULL;
    }
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = '\0';
    if (n == 0 || memchr(buf, '\0', n) != NULL) {
        snprintf(err, cap, "password_file %s: empty or not text", path);
        explicit_bzero(buf, sizeof buf);
        return NULL;
    }
    char *p = strdup(buf);
    explicit_bzero(buf, sizeof buf);
    if (p == NULL)
        snprintf(err, cap, "out of memory");
    return p;
}

static SSL_CTX *
client_tls(const char *ca_file, char *err, size_t cap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL)
        goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (ca_file != NULL) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
            snprintf(err, cap, "cannot load ca_file %s", ca_file);
            SSL_CTX_free(ctx);
            ERR_clear_error();
            return NULL;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        goto fail;
    }
    return ctx;
fail:
    snprintf(err, cap, "cannot make a TLS context for rediss://");
    if (ctx != NULL)
        SSL_CTX_free(ctx);
    ERR_clear_error();
    return NULL;
}

/* The host as a numeric address, resolved now (start-up), never later
 * on a worker. */
static int
resolve(struct redis_target *t, char *err, size_t cap)
{
    struct addrinfo hints = {0}, *res = NULL;
    char host[NI_MAXHOST];
    int e;

    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if ((e = getaddrinfo(t->host, t->port, &hints, &res)) != 0) {
        snprintf(err, cap, "cannot resolve the Redis host %s: %s", t->host,
                 gai_strerror(e));
        return -1;
    }
    e = getnameinfo(res->ai_addr, res->ai_addrlen, host, sizeof host, NULL,
                    0, NI_NUMERICHOST);
    freeaddrinfo(res);
    if (e != 0 || (t->addr = strdup(host)) == NULL) {
        snprintf(err, cap, "cannot resolve the Redis host %s", t->host);
        return -1;
    }
    return 0;
}

static char *
concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);

    if (s != NULL) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb);
        s[la + lb] = '\0';
    }
    return s;
}

struct cluster *
cluster_new(const struct config *cfg, char *err, size_t cap)
{
    struct cluster *cl;
    unsigned char id[8];

    err[0] = '\0';
    if (cfg->cluster_redis == NULL)
        return NULL;
    if ((cl = calloc(1, sizeof *cl)) == NULL) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    if (redis_target_parse(cfg->cluster_redis, &cl->target, err, cap) != 0)
        goto fail;
    if (cfg->cluster_password_file != NULL) {
        free(cl->target.password);
        cl->target.password = read_password(cfg->cluster_password_file, err,
                                            cap);
        if (cl->target.password == NULL)
            goto fail;
    }
    if (cl->target.tls &&
        (cl->target.tls_ctx = client_tls(cfg->cluster_ca_file, err,
                                         cap)) == NULL)
        goto fail;
    if (resolve(&cl->target, err, cap) != 0)
        goto fail;
    const char *prefix = cfg->cluster_key_prefix ? cfg->cluster_key_prefix
                                                 : "";
    cl->prefix = strdup(prefix);
    cl->channel = concat(prefix, "revoke");
    cl->revoked_key = concat(prefix, "revoked");
    if (cl->prefix == NULL || cl->channel == NULL ||
        cl->revoked_key == NULL) {
        snprintf(err, cap, "out of memory");
        goto fail;
    }
    if (RAND_bytes(id, sizeof id) != 1) {
        snprintf(err, cap, "no random bytes for the replica id");
        goto fail;
    }
    for (size_t i = 0; i < sizeof id; i++) {
        cl->replica[2 * i] = "0123456789abcdef"[id[i] >> 4];
        cl->replica[2 * i + 1] = "0123456789abcdef"[id[i] & 15];
    }
    cl->timeout = (double)cfg->cluster_timeout_ms / 1000.0;
    cl->lease_ms = cfg->cluster_lease_ms;
    cl->revoke_ttl_ms = cfg->cluster_revoke_ttl_ms;
    cl->fail_closed = cfg->cluster_fail_closed;
    scripts_hash();
    return cl;
fail:
    cluster_free(cl);
    return NULL;
}

void
cluster_free(struct cluster *cl)
{
    if (cl == NULL)
        return;
    redis_target_free(&cl->target);
    free(cl->prefix);
    free(cl->channel);
    free(cl->revoked_key);
    free(cl);
}

/* ---- commands ------------------------------------------------------------ */

/* What a command's callback needs: when it was sent, and for an
 * acquisition, which address and whose answer it is. */
struct call {
    struct cluster_worker *cw;
    double sent;
    struct ip_key key;
    uintptr_t tag;
};

static void
count_error(struct cluster_worker *cw)
{
    stats_add(&cw->st->cluster_errors, 1);
}

/* A reply came (or did not): the round trip is observed; a NOSCRIPT error
 * has the scripts loaded again. Returns 1 for a usable reply. */
static int
reply_ok(struct cluster_worker *cw, const struct call *c,
         const redisReply *reply)
{
    if (reply == NULL) {
        count_error(cw);
        return 0;
    }
    stats_observe(&cw->st->cluster_rtt, ev_now(cw->loop) - c->sent);
    if (reply->type == REDIS_REPLY_ERROR) {
        count_error(cw);
        if (strncmp(reply->str, "NOSCRIPT", 8) == 0)
            cw->script_reload = 1;
        else
            log_warn("redis: %.*s", (int)(reply->len < 200 ? reply->len
                                                           : 200),
                     reply->str);
        return 0;
    }
    return 1;
}

static void
load_scripts(struct cluster_worker *cw)
{
    for (int i = 0; i < S_COUNT; i++) {
        const char *a[] = { "SCRIPT", "LOAD", script_text[i] };
        size_t l[] = { 6, 4, strlen(script_text[i]) };
        redis_command(&cw->cmd, NULL, NULL, 3, a, l);
    }
    cw->script_reload = 0;
}

/* EVALSHA script with keys and args (all strings). */
static int
eval(struct cluster_worker *cw, enum script s, redis_cb cb, struct call *c,
     int nkeys, const char **keys, int nargs, const char **args)
{
    const char *argv[3 + 2 * RENEW_BATCH + 2];
    size_t len[3 + 2 * RENEW_BATCH + 2];
    char nk[16];
    int n = 0;

    if (cw->script_reload && redis_ready(&cw->cmd))
        load_scripts(cw);
    snprintf(nk, sizeof nk, "%d", nkeys);
    argv[n++] = "EVALSHA";
    argv[n++] = script_sha[s];
    argv[n++] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[n++] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[n++] = args[i];
    for (int i = 0; i < n; i++)
        len[i] = strlen(argv[i]);
    c->cw = cw;
    c->sent = ev_now(cw->loop);
    return redis_command(&cw->cmd, cb, c, n, argv, len);
}

static void
addr_key(const struct cluster_worker *cw, const struct ip_key *k, char *out,
         size_t cap)
{
    char ip[64];

    ip_key_text(k, ip, sizeof ip);
    snprintf(out, cap, "%sip:%s", cw->cl->prefix, ip);
}

/* ---- counts -------------------------------------------------------------- */

static void
set_done(void *priv, const redisReply *reply)
{
    struct call *c = priv;

    reply_ok(c->cw, c, reply);
    free(c);
}

/* Write the worker's absolute counts for n addresses. */
static int
send_counts(struct cluster_worker *cw, const struct ip_count *v, size_t n)
{
    char keys[RENEW_BATCH][600];
    char counts[RENEW_BATCH][24];
    const char *kp[RENEW_BATCH], *args[2 + RENEW_BATCH];
    char lease[24];
    struct call *c;

    if (n > RENEW_BATCH || (c = calloc(1, sizeof *c)) == NULL)
        return -1;
    snprintf(lease, sizeof lease, "%llu", (unsigned long long)cw->cl->lease_ms);
    args[0] = cw->field;
    args[1] = lease;
    for (size_t i = 0; i < n; i++) {
        addr_key(cw, &v[i].key, keys[i], sizeof keys[i]);
        snprintf(counts[i], sizeof counts[i], "%llu",
                 (unsigned long long)v[i].count);
        kp[i] = keys[i];
        args[2 + i] = counts[i];
    }
    if (eval(cw, S_SET, set_done, c, (int)n, kp, 2 + (int)n, args) != 0) {
        free(c);
        count_error(cw);
        return -1;
    }
    return 0;
}

/* Every address this worker holds, with a new expiry. */
static void
renew_all(struct cluster_worker *cw)
{
    size_t cap, n;
    struct ip_count *v;

    if (cw->held == NULL || (cap = iplimit_entries(cw->held)) == 0 ||
        !redis_ready(&cw->cmd))
        return;
    if ((v = malloc(cap * sizeof *v)) == NULL)
        return;                 /* the next renewal tries again */
    n = iplimit_snapshot(cw->held, v, cap);
    for (size_t i = 0; i < n; i += RENEW_BATCH)
        if (send_counts(cw, v + i, n - i < RENEW_BATCH ? n - i
                                                       : RENEW_BATCH) != 0)
            break;
    free(v);
}

static void
renew_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    renew_all(t->data);
}

static void
acquire_done(void *priv, const redisReply *reply)
{
    struct call *c = priv;
    struct cluster_worker *cw = c->cw;
    enum cluster_answer a = CLUSTER_ERROR;

    if (reply_ok(cw, c, reply)) {
        if (reply->type == REDIS_REPLY_INTEGER)
            a = reply->integer == 1 ? CLUSTER_OK : CLUSTER_OVER;
        else
            count_error(cw);
    }
    if (!cw->on_answer(cw->priv, c->tag, a)) {
        /* The connection went away while it waited. */
        if (a == CLUSTER_OK)
            cluster_release(cw, &c->key);
        else
            cluster_forget(cw, &c->key);
    }
    free(c);
}

int
cluster_acquire(struct cluster_worker *cw, const struct ip_key *k,
                uint64_t limit, uintptr_t tag)
{
    char key[600], lim[24], lease[24], count[24];
    const char *kp[1] = { key };
    struct call *c;

    if (cw->held == NULL || iplimit_acquire(cw->held, k, UINT64_MAX) != 1)
        return -2;
    if (!redis_ready(&cw->cmd) || (c = calloc(1, sizeof *c)) == NULL) {
        count_error(cw);
        return -1;
    }
    c->key = *k;
    c->tag = tag;
    addr_key(cw, k, key, sizeof key);
    snprintf(lim, sizeof lim, "%llu", (unsigned long long)limit);
    snprintf(lease, sizeof lease, "%llu",
             (unsigned long long)cw->cl->lease_ms);
    snprintf(count, sizeof count, "%llu",
             (unsigned long long)iplimit_count(cw->held, k));
    const char *args[] = { cw->field, lim, lease, count };
    if (eval(cw, S_ACQUIRE, acquire_done, c, 1, kp, 4, args) != 0) {
        free(c);
        count_error(cw);
        return -1;
    }
    return 0;
}

/* The held count for k goes down by one, and Redis is told the new
 * absolute count when it can be: a count written meanwhile (a release
 * while this slot was still being asked for) may have included it. When
 * Redis cannot be told now, the renewal after reconnecting or the lease
 * sets it right. */
static void
drop_slot(struct cluster_worker *cw, const struct ip_key *k)
{
    struct ip_count v;

    if (cw->held == NULL)
        return;
    iplimit_release(cw->held, k);
    if (!redis_ready(&cw->cmd))
        return;
    v.key = *k;
    v.count = iplimit_count(cw->held, k);
    send_counts(cw, &v, 1);
}

void
cluster_forget(struct cluster_worker *cw, const struct ip_key *k)
{
    drop_slot(cw, k);
}

void
cluster_release(struct cluster_worker *cw, const struct ip_key *k)
{
    drop_slot(cw, k);
}

/* ---- revocation ---------------------------------------------------------- */

static int
store_revocation(struct cluster_worker *cw, const struct revocation *rv,
                 int publish)
{
    char member[REVOKE_VALUE_MAX + 16], ttl[24], msg[600];
    const char *kp[1] = { cw->cl->revoked_key };
    struct call *c;

    snprintf(member, sizeof member, "%s:%s", revoke_key[rv->kind],
             rv->value);
    snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)rv->ttl_ms);
    if (revocation_json(rv, msg, sizeof msg) < 0)
        return -1;
    const char *args[] = { member, ttl, publish ? cw->cl->channel : "",
                           msg };
    if (!redis_ready(&cw->cmd) || (c = calloc(1, sizeof *c)) == NULL)
        return -1;
    if (eval(cw, S_REVOKE, set_done, c, 1, kp, 4, args) != 0) {
        free(c);
        count_error(cw);
        return -1;
    }
    return 0;
}

int
cluster_publish(struct cluster_worker *cw, const struct revocation *rv)
{
    return store_revocation(cw, rv, 1);
}

static void
on_message(void *priv, const char *channel, const char *msg, size_t len)
{
    struct cluster_worker *cw = priv;
    struct revocation rv;
    char err[128];

    (void)channel;
    if (revocation_parse(msg, len, cw->cl->revoke_ttl_ms, &rv, err,
                         sizeof err) != 0) {
        log_warn("revocation on %s ignored: %s", cw->cl->channel, err);
        return;
    }
    /* Stored too when published by an application with its own client,
     * so that replicas starting later refuse it as well. */
    store_revocation(cw, &rv, 0);
    cw->on_revoke(cw->priv, &rv);
}

static void
load_done(void *priv, const redisReply *reply)
{
    struct call *c = priv;
    struct cluster_worker *cw = c->cw;
    unsigned n = 0;

    if (reply_ok(cw, c, reply) && reply->type == REDIS_REPLY_ARRAY) {
        double now = ev_now(cw->loop);
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            const redisReply *m = reply->element[i], *t = reply->element[i + 1];
            struct revocation rv = {0};
            int k;

            if (m->type != REDIS_REPLY_STRING || t->type != REDIS_REPLY_STRING)
                continue;
            for (k = 0; k < REVOKE_COUNT; k++) {
                size_t kl = strlen(revoke_key[k]);
                if (m->len > kl + 1 && m->len - kl - 1 <= REVOKE_VALUE_MAX &&
                    memcmp(m->str, revoke_key[k], kl) == 0 &&
                    m->str[kl] == ':')
                    break;
            }
            if (k == REVOKE_COUNT)
                continue;
            size_t kl = strlen(revoke_key[k]);
            rv.kind = (enum revoke_kind)k;
            memcpy(rv.value, m->str + kl + 1, m->len - kl - 1);
            rv.ttl_ms = strtoull(t->str, NULL, 10);
            if (rv.ttl_ms == 0 || revoked_add(&rv, now) != 0)
                continue;
            n++;
        }
        if (n > 0)
            log_info("cluster: %u revocations in force loaded", n);
    }
    free(c);
}

static void
load_revocations(struct cluster_worker *cw)
{
    const char *kp[1] = { cw->cl->revoked_key };
    struct call *c = calloc(1, sizeof *c);

    if (c == NULL)
        return;
    if (eval(cw, S_LOAD, load_done, c, 1, kp, 0, NULL) != 0) {
        free(c);
        count_error(cw);
    }
}

/* ---- the worker's client ------------------------------------------------- */

static void
cmd_state(void *priv, int up)
{
    struct cluster_worker *cw = priv;

    atomic_store_explicit(&cw->st->cluster_up, up ? 1u : 0u,
                          memory_order_relaxed);
    if (!up) {
        count_error(cw);
        return;
    }
    /* In this order on the one connection: scripts, then the counts
     * held (admissions made while Redis was away included), then what
     * was revoked meanwhile. */
    load_scripts(cw);
    renew_all(cw);
    if (cw->has_sub)
        load_revocations(cw);
}

static void
sub_state(void *priv, int up)
{
    struct cluster_worker *cw = priv;

    /* Messages published while the subscription was down are in the
     * stored set: load it again. */
    if (up && redis_ready(&cw->cmd))
        load_revocations(cw);
}

void
cluster_worker_start(struct cluster_worker *cw, const struct cluster *cl,
                     struct ev_loop *loop, unsigned id, struct stats *st,
                     cluster_answer_fn on_answer,
                     cluster_revoke_fn on_revoke, void *priv)
{
    memset(cw, 0, sizeof *cw);
    cw->cl = cl;
    cw->loop = loop;
    cw->id = id;
    cw->st = st;
    cw->on_answer = on_answer;
    cw->on_revoke = on_revoke;
    cw->priv = priv;
    snprintf(cw->field, sizeof cw->field, "%s:%u", cl->replica, id);
    cw->held = iplimit_new();
    if (cw->held == NULL) {
        /* Without a table nothing can be counted: every acquisition
         * fails (-2) and is refused. */
        log_error("cluster: out of memory for worker %u", id);
    }
    redis_init(&cw->cmd, loop, &cl->target, cl->timeout, cmd_state, cw);
    if (id == 0) {
        cw->has_sub = 1;
        redis_init(&cw->sub, loop, &cl->target, cl->timeout, sub_state, cw);
        redis_subscribe(&cw->sub, cl->channel, on_message);
    }
    double every = (double)cl->lease_ms / 3000.0;
    ev_timer_init(&cw->renew, renew_cb, every, every);
    cw->renew.data = cw;
    ev_timer_start(loop, &cw->renew);
}

void
cluster_worker_stop(struct cluster_worker *cw)
{
    if (cw->cl == NULL)
        return;
    ev_timer_stop(cw->loop, &cw->renew);
    redis_close(&cw->cmd);
    if (cw->has_sub)
        redis_close(&cw->sub);
    if (cw->held != NULL)
        iplimit_free(cw->held);
    cw->held = NULL;
    cw->cl = NULL;
}

int
cluster_up(const struct cluster_worker *cw)
{
    return cw->cl != NULL && redis_ready(&cw->cmd);
}
