/*
 * admin.c - the admin listener and `wsguard --healthcheck` (see admin.h).
 *
 * One thread, one ev_loop, one listening socket. Each admin connection
 * carries one request: the head is read (at most ADMIN_HEAD_MAX bytes,
 * within ADMIN_READ_TIMEOUT of the accept), answered with "Connection:
 * close", the write side shut down, and the socket closed once the peer
 * has closed too (or ADMIN_LINGER later), so that the answer is never
 * lost to a reset. At most ADMIN_MAX_CONNS connections are served at a
 * time; more, and peers outside [admin] allow, get a fixed answer (503,
 * 403) at once, without their request being read.
 *
 * Everything shown is computed when a request comes: the workers'
 * counters are summed (relaxed atomic loads of counters each worker
 * alone writes), so the data path neither knows nor pays for the admin
 * listener.
 */
#include "admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <inttypes.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "log.h"
#include "netaddr.h"
#include "revoke.h"
#include "runtime.h"
#include "stats.h"
#include "worker.h"

#define ADMIN_HEAD_MAX 8192         /* request head; more: 431 */
#define ADMIN_MAX_HEADERS 64        /* header lines; more: 431 */
#define ADMIN_MAX_CONNS 16          /* served at once; more: 503 */
#define ADMIN_MAX_REFUSING 64       /* 403/503 answers in flight; more:
                                       closed at once */
#define ADMIN_READ_TIMEOUT 5.0      /* s from accept to a complete head */
#define ADMIN_WRITE_TIMEOUT 10.0    /* s to write the whole answer */
#define ADMIN_LINGER 2.0            /* s to wait for the peer's close */
#define ADMIN_ACCEPT_PAUSE 0.1      /* s, after EMFILE/ENFILE */
#define ADMIN_TOP_CLIENTS 10        /* busiest addresses on /status */

/* ------------------------------------------------------------------ */
/* A growing output buffer                                             */

struct sbuf {
    char *p;
    size_t len, cap;
    int oom;                    /* an append failed: the answer is 503 */
};

static void
sb_reserve(struct sbuf *b, size_t more)
{
    if (b->oom || b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->oom = 1;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void
sb_put(struct sbuf *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    if (b->oom)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void
sb_str(struct sbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_printf(struct sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];

    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        sb_put(b, small, (size_t)n);
        return;
    }
    sb_reserve(b, (size_t)n);
    if (b->oom)
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* ------------------------------------------------------------------ */
/* State shared with the main thread                                  */

/*
 * The main thread writes these (reload, drain), the admin thread reads
 * them; workers never touch them, so the mutex is contended by those two
 * only, and briefly.
 */
static struct {
    pthread_mutex_t lock;
    struct runtime *rt;         /* current snapshot (own reference) */
    struct cidr_set *allow;     /* [admin] allow of rt */
    uint64_t generation;        /* 1 at start, +1 per successful reload */
    time_t loaded_at;           /* when rt was loaded */
    int last_result;            /* -1 no reload yet, 0 failed, 1 ok */
    time_t last_at;
    char last_error[256];
} sh = { .lock = PTHREAD_MUTEX_INITIALIZER, .last_result = -1 };

static atomic_int draining;
static admin_ready_fn ready_check;  /* set before the thread starts */
static int is_ready(char *why, size_t cap);

/* Admin thread's own state. */
static int lfd = -1;                /* listening socket */
static struct ev_loop *aloop;
static pthread_t athread;
static int started;
static ev_io accept_w;
static ev_timer accept_pause;
static ev_async stop_w;
static struct worker *wks;
static unsigned nwks;
static const char *version_s = "";
static time_t start_wall;
static char csp[512];               /* the status page's policy */

/* ------------------------------------------------------------------ */
/* Addresses                                                           */

/*
 * [admin] listen: HOST:PORT, [IPV6]:PORT or *:PORT, numeric only (the
 * same syntax as [server] listen, which config validation has checked).
 */
static int
parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len,
           char *err, size_t cap)
{
    char host[64];
    const char *port, *end;
    struct addrinfo hints, *res = NULL;
    size_t hlen;

    memset(&hints, 0, sizeof hints);
    if (s[0] == '[') {
        end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            goto bad;
        hlen = (size_t)(end - s - 1);
        port = end + 2;
        s++;
        hints.ai_family = AF_INET6;
    } else {
        end = strrchr(s, ':');
        if (end == NULL)
            goto bad;
        hlen = (size_t)(end - s);
        port = end + 1;
        hints.ai_family = AF_INET;
    }
    if (hlen == 0 || hlen >= sizeof host || *port == '\0')
        goto bad;
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    if (getaddrinfo(strcmp(host, "*") == 0 ? NULL : host, port, &hints,
                    &res) != 0 || res == NULL)
        goto bad;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
bad:
    snprintf(err, cap, "[admin] listen: invalid address \"%s\"", s);
    return -1;
}

static int
is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    if (IN6_IS_ADDR_LOOPBACK(&a->sin6_addr))
        return 1;
    return IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) &&
           a->sin6_addr.s6_addr[12] == 127;
}

static int
is_wildcard(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ((const struct sockaddr_in *)ss)->sin_addr.s_addr ==
               htonl(INADDR_ANY);
    return IN6_IS_ADDR_UNSPECIFIED(
        &((const struct sockaddr_in6 *)ss)->sin6_addr);
}

static void
addr_text(const struct sockaddr *sa, socklen_t len, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN], port[8];

    if (getnameinfo(sa, len, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, cap, "?");
        return;
    }
    snprintf(out, cap, strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
}

static int
admin_on(const struct config *cfg)
{
    return cfg->admin_listen != NULL && cfg->admin_listen[0] != '\0';
}

void
admin_warn(const struct config *cfg)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char err[128];

    if (!admin_on(cfg))
        return;
    if (parse_addr(cfg->admin_listen, &ss, &len, err, sizeof err) == 0 &&
        !is_loopback(&ss))
        log_warn("[admin] listen = %s is not a loopback address: /status "
                 "and /metrics reveal client addresses and traffic; only "
                 "peers in [admin] allow are served", cfg->admin_listen);
    if (cfg->admin_allow.n == 0)
        log_warn("[admin] allow is empty: every peer is refused with 403 "
                 "(including --healthcheck)");
}

int
admin_listen(const struct config *cfg, char *err, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char text[80];
    int one = 1;

    if (!admin_on(cfg))
        return 0;
    if (parse_addr(cfg->admin_listen, &ss, &len, err, cap) != 0)
        return -1;
    lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                 0);
    if (lfd == -1) {
        snprintf(err, cap, "[admin] listen %s: socket: %s",
                 cfg->admin_listen, strerror(errno));
        return -1;
    }
    /* SO_REUSEADDR only (restarts over TIME_WAIT), never SO_REUSEPORT:
     * a second process on the admin port must fail, not share it. */
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss.ss_family == AF_INET6)
        setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&ss, len) == -1 ||
        listen(lfd, 64) == -1) {
        snprintf(err, cap, "[admin] listen %s: %s (set [admin] listen = "
                 "to turn the admin listener off)", cfg->admin_listen,
                 strerror(errno));
        close(lfd);
        lfd = -1;
        return -1;
    }
    len = sizeof ss;
    if (getsockname(lfd, (struct sockaddr *)&ss, &len) == -1) {
        snprintf(err, cap, "[admin] listen %s: getsockname: %s",
                 cfg->admin_listen, strerror(errno));
        close(lfd);
        lfd = -1;
        return -1;
    }
    addr_text((struct sockaddr *)&ss, len, text, sizeof text);
    log_info("admin listening on %s", text);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Reading the counters                                                */

struct route_total {
    const char *name;           /* as displayed: "/" for the global one */
    uint64_t active, sessions;
};

struct backend_total {
    const char *route;          /* as displayed */
    const char *url;
    uint64_t ok, failed;
    int up;                     /* 1, 0, -1 never tried */
    int last_errno;
};

struct histo_total {
    uint64_t bucket[HISTO_BUCKETS];     /* cumulative */
    uint64_t sum_us;
};

/* Everything the endpoints show, read at one moment (each counter on its
 * own: the sums are not an atomic snapshot, which is the Prometheus
 * client convention too). */
struct totals {
    uint64_t accepted, active, sessions, rejected_all;
    uint64_t rejected[REF_COUNT];
    uint64_t enforced[ENF_COUNT];
    uint64_t bytes[DIR_COUNT], messages[DIR_COUNT];
    uint64_t deflate_sessions;
    uint64_t deflate_bytes[DIR_COUNT][FORM_COUNT];
    uint64_t closes[CLOSE_CODE_COUNT][BY_COUNT];
    struct histo_total handshake, be_connect;
    uint64_t reloads[2];
    uint64_t log_dropped;
    /* cluster mode */
    int cluster;                /* enabled */
    unsigned cluster_up;        /* workers connected to Redis */
    uint64_t cluster_errors;
    struct histo_total cluster_rtt;
    uint64_t revoked;           /* revocations in the table */
    struct route_total *routes;
    size_t nroutes;
    struct backend_total *backends;
    size_t nbackends;
    /* copied under sh.lock */
    uint64_t generation;
    time_t loaded_at, last_at;
    int last_result;
    char last_error[256];
    const char *config_path;    /* points into rt->cfg */
    struct runtime *rt;         /* own reference, for the pointers above */
};

/* The global policy is counted under route "": shown as "/", the path
 * prefix it covers (it serves only when no route is configured, so it
 * never competes with a [route /]; across a reload both are summed). */
static const char *
route_display(const char *name)
{
    return name[0] == '\0' ? "/" : name;
}

static struct route_total *
route_slot(struct totals *t, const char *name, size_t cap)
{
    const char *d = route_display(name);

    for (size_t i = 0; i < t->nroutes; i++)
        if (strcmp(t->routes[i].name, d) == 0)
            return &t->routes[i];
    if (t->nroutes == cap)
        return NULL;
    t->routes[t->nroutes].name = d;
    t->routes[t->nroutes].active = 0;
    t->routes[t->nroutes].sessions = 0;
    return &t->routes[t->nroutes++];
}

static int
route_cmp(const void *a, const void *b)
{
    return strcmp(((const struct route_total *)a)->name,
                  ((const struct route_total *)b)->name);
}

static void
histo_read(struct histo_total *h, const struct histo *src)
{
    for (int i = 0; i < HISTO_BUCKETS; i++)
        h->bucket[i] += stats_get(&src->bucket[i]);
    h->sum_us += stats_get(&src->sum_us);
}

static void
histo_cumulate(struct histo_total *h)
{
    for (int i = 1; i < HISTO_BUCKETS; i++)
        h->bucket[i] += h->bucket[i - 1];
}

/* The backends of the current snapshot, per policy: rt->addrs holds the
 * global policy's backends first, then each route's (runtime_new()).
 * With routes, the global policy serves nothing and is left out. A URL
 * listed twice in one policy is shown once. */
static void
read_backends(struct totals *t, const struct runtime *rt)
{
    const struct config *cfg = rt->cfg;
    size_t at = 0;

    t->backends = calloc(rt->naddrs ? rt->naddrs : 1, sizeof *t->backends);
    if (t->backends == NULL)
        return;
    for (size_t p = 0; p <= cfg->nroutes; p++) {
        const struct policy *pol = p ? &cfg->routes[p - 1].p : &cfg->global;
        const char *route = p ? cfg->routes[p - 1].prefix : "";
        size_t first = t->nbackends;

        for (size_t k = 0; k < pol->nbackends && at < rt->naddrs; k++) {
            struct resolved *r = &rt->addrs[at++];
            struct backend_total *b = NULL;

            if (p == 0 && cfg->nroutes > 0)
                continue;
            for (size_t j = first; j < t->nbackends; j++)
                if (strcmp(t->backends[j].url, r->be->url) == 0)
                    b = &t->backends[j];
            int up = atomic_load_explicit(&r->up, memory_order_relaxed);
            if (b == NULL) {
                b = &t->backends[t->nbackends++];
                b->route = route_display(route);
                b->url = r->be->url;
                b->up = up;
            } else if (up > b->up) {
                b->up = up;
            }
            b->ok += atomic_load_explicit(&r->ok, memory_order_relaxed);
            b->failed += atomic_load_explicit(&r->failed,
                                              memory_order_relaxed);
            int e = atomic_load_explicit(&r->last_errno,
                                         memory_order_relaxed);
            if (e != 0)
                b->last_errno = e;
        }
    }
}

static int
totals_read(struct totals *t)
{
    size_t cap;

    memset(t, 0, sizeof *t);
    pthread_mutex_lock(&sh.lock);
    t->rt = runtime_ref(sh.rt);
    t->generation = sh.generation;
    t->loaded_at = sh.loaded_at;
    t->last_at = sh.last_at;
    t->last_result = sh.last_result;
    memcpy(t->last_error, sh.last_error, sizeof t->last_error);
    pthread_mutex_unlock(&sh.lock);
    t->config_path = t->rt->cfg->path;

    cap = t->rt->cfg->nroutes + 1;
    for (unsigned w = 0; w < nwks; w++)
        cap += atomic_load_explicit(&wks[w].st.routes_n,
                                    memory_order_acquire);
    t->routes = calloc(cap, sizeof *t->routes);
    if (t->routes == NULL)
        return -1;
    /* Configured routes first, so that they are listed (at 0) before
     * their first session. */
    if (t->rt->cfg->nroutes == 0)
        route_slot(t, "", cap);
    for (size_t i = 0; i < t->rt->cfg->nroutes; i++)
        route_slot(t, t->rt->cfg->routes[i].prefix, cap);

    for (unsigned w = 0; w < nwks; w++) {
        const struct stats *st = &wks[w].st;
        unsigned n = atomic_load_explicit(&st->routes_n,
                                          memory_order_acquire);

        t->accepted += stats_get(&st->accepted);
        t->active += stats_get(&st->active);
        t->sessions += stats_get(&st->sessions);
        for (int i = 0; i < REF_COUNT; i++)
            t->rejected[i] += stats_get(&st->rejected[i]);
        for (int i = 0; i < ENF_COUNT; i++)
            t->enforced[i] += stats_get(&st->enforced[i]);
        for (int i = 0; i < DIR_COUNT; i++) {
            t->bytes[i] += stats_get(&st->bytes[i]);
            t->messages[i] += stats_get(&st->messages[i]);
            for (int f = 0; f < FORM_COUNT; f++)
                t->deflate_bytes[i][f] +=
                    stats_get(&st->deflate_bytes[i][f]);
        }
        t->deflate_sessions += stats_get(&st->deflate_sessions);
        for (int i = 0; i < CLOSE_CODE_COUNT; i++)
            for (int b = 0; b < BY_COUNT; b++)
                t->closes[i][b] += stats_get(&st->closes[i][b]);
        histo_read(&t->handshake, &st->handshake);
        histo_read(&t->be_connect, &st->be_connect);
        histo_read(&t->cluster_rtt, &st->cluster_rtt);
        t->cluster_up += stats_get(&st->cluster_up) != 0;
        t->cluster_errors += stats_get(&st->cluster_errors);
        for (unsigned i = 0; i < n && i < STATS_ROUTES; i++) {
            struct route_total *r = route_slot(t, st->routes[i].name, cap);
            if (r == NULL)
                continue;
            r->active += stats_get(&st->routes[i].active);
            r->sessions += stats_get(&st->routes[i].sessions);
        }
    }
    qsort(t->routes, t->nroutes, sizeof *t->routes, route_cmp);
    for (int i = 0; i < REF_COUNT; i++)
        t->rejected_all += t->rejected[i];
    histo_cumulate(&t->handshake);
    histo_cumulate(&t->be_connect);
    histo_cumulate(&t->cluster_rtt);
    t->cluster = nwks > 0 && wks[0].cluster != NULL;
    t->revoked = revoked_count();
    t->reloads[0] = stats_get(&stats_reloads[0]);
    t->reloads[1] = stats_get(&stats_reloads[1]);
    t->log_dropped = log_dropped();
    read_backends(t, t->rt);
    return 0;
}

static void
totals_free(struct totals *t)
{
    free(t->routes);
    free(t->backends);
    runtime_unref(t->rt);
}

/* ------------------------------------------------------------------ */
/* GET /metrics                                                        */

/* A label value, escaped as the text format requires (\\, \", \n). */
static void
prom_label(struct sbuf *b, const char *name, const char *v)
{
    sb_printf(b, "%s=\"", name);
    for (const char *p = v; *p; p++) {
        if (*p == '\\')
            sb_str(b, "\\\\");
        else if (*p == '"')
            sb_str(b, "\\\"");
        else if (*p == '\n')
            sb_str(b, "\\n");
        else
            sb_put(b, p, 1);
    }
    sb_str(b, "\"");
}

static void
prom_family(struct sbuf *b, const char *name, const char *type,
            const char *help)
{
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
prom_u64(struct sbuf *b, const char *name, uint64_t v)
{
    sb_printf(b, "%s %" PRIu64 "\n", name, v);
}

/* name{label="value"} v */
static void
prom_u64_1(struct sbuf *b, const char *name, const char *label,
           const char *value, uint64_t v)
{
    sb_printf(b, "%s{", name);
    prom_label(b, label, value);
    sb_printf(b, "} %" PRIu64 "\n", v);
}

static void
prom_histo(struct sbuf *b, const char *name, const char *help,
           const struct histo_total *h)
{
    prom_family(b, name, "histogram", help);
    for (int i = 0; i < HISTO_BUCKETS - 1; i++)
        sb_printf(b, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name,
                  histo_bounds[i], h->bucket[i]);
    sb_printf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name,
              h->bucket[HISTO_BUCKETS - 1]);
    sb_printf(b, "%s_sum %.6f\n", name, (double)h->sum_us / 1e6);
    sb_printf(b, "%s_count %" PRIu64 "\n", name,
              h->bucket[HISTO_BUCKETS - 1]);
}

static void
close_code_text(int i, char *out, size_t cap)
{
    if (i < CLOSE_CODE_COUNT - 1)
        snprintf(out, cap, "%d", close_codes[i]);
    else
        snprintf(out, cap, "other");
}

static void
render_metrics(struct sbuf *b, const struct totals *t)
{
    char code[16];

    prom_family(b, "wsguard_build_info", "gauge",
                "Version of wsguard and of the OpenSSL library it runs "
                "with (value 1).");
    sb_str(b, "wsguard_build_info{");
    prom_label(b, "version", version_s);
    sb_str(b, ",");
    prom_label(b, "openssl", OpenSSL_version(OPENSSL_VERSION_STRING));
    sb_str(b, "} 1\n");

    prom_family(b, "wsguard_start_time_seconds", "gauge",
                "Start time of the process, seconds since the epoch.");
    sb_printf(b, "wsguard_start_time_seconds %lld\n",
              (long long)start_wall);

    prom_family(b, "wsguard_draining", "gauge",
                "1 after SIGTERM (no new connections: /readyz is 503), "
                "else 0.");
    prom_u64(b, "wsguard_draining", (uint64_t)atomic_load(&draining));

    char why[128];
    prom_family(b, "wsguard_ready", "gauge",
                "1 while new connections are accepted (/readyz 200), "
                "else 0.");
    prom_u64(b, "wsguard_ready", (uint64_t)is_ready(why, sizeof why));

    prom_family(b, "wsguard_config_generation", "gauge",
                "Configuration in force: 1 at start, +1 per successful "
                "reload.");
    prom_u64(b, "wsguard_config_generation", t->generation);

    prom_family(b, "wsguard_config_last_reload_successful", "gauge",
                "0 if the last reload (SIGHUP) failed and the previous "
                "configuration stayed, else 1.");
    prom_u64(b, "wsguard_config_last_reload_successful",
             t->last_result != 0);

    prom_family(b, "wsguard_config_reloads_total", "counter",
                "Configuration reloads (SIGHUP) by result.");
    prom_u64_1(b, "wsguard_config_reloads_total", "result", "success",
               t->reloads[1]);
    prom_u64_1(b, "wsguard_config_reloads_total", "result", "failure",
               t->reloads[0]);

    prom_family(b, "wsguard_connections_active", "gauge",
                "Client connections open now (handshakes and sessions).");
    prom_u64(b, "wsguard_connections_active", t->active);

    prom_family(b, "wsguard_connections_accepted_total", "counter",
                "Client connections accepted.");
    prom_u64(b, "wsguard_connections_accepted_total", t->accepted);

    prom_family(b, "wsguard_connections_total", "counter",
                "Client connections by outcome of the upgrade: session "
                "(reached the relay) or rejected (ended before it; by "
                "reason in wsguard_rejections_total).");
    prom_u64_1(b, "wsguard_connections_total", "result", "session",
               t->sessions);
    prom_u64_1(b, "wsguard_connections_total", "result", "rejected",
               t->rejected_all);

    prom_family(b, "wsguard_rejections_total", "counter",
                "Connections that ended before the relay, by reason.");
    for (int i = 0; i < REF_COUNT; i++)
        prom_u64_1(b, "wsguard_rejections_total", "reason",
                   refusal_info[i].label, t->rejected[i]);

    prom_family(b, "wsguard_enforcements_total", "counter",
                "Sessions ended by an in-session limit or check, by "
                "limit.");
    for (int i = 0; i < ENF_COUNT; i++)
        prom_u64_1(b, "wsguard_enforcements_total", "limit",
                   enforce_label[i], t->enforced[i]);

    prom_family(b, "wsguard_closes_total", "counter",
                "Sessions ended, by the close code sent to the client "
                "(or relayed) and by who closed first.");
    for (int i = 0; i < CLOSE_CODE_COUNT; i++) {
        close_code_text(i, code, sizeof code);
        for (int by = 0; by < BY_COUNT; by++) {
            sb_str(b, "wsguard_closes_total{");
            prom_label(b, "code", code);
            sb_str(b, ",");
            prom_label(b, "by", closed_by_label[by]);
            sb_printf(b, "} %" PRIu64 "\n", t->closes[i][by]);
        }
    }

    prom_family(b, "wsguard_messages_total", "counter",
                "Complete data messages relayed (in: client to backend, "
                "out: backend to client); counted as they pass.");
    for (int i = 0; i < DIR_COUNT; i++)
        prom_u64_1(b, "wsguard_messages_total", "direction",
                   direction_label[i], t->messages[i]);

    prom_family(b, "wsguard_bytes_total", "counter",
                "WebSocket bytes relayed (frames as read from the "
                "source); counted as they pass.");
    for (int i = 0; i < DIR_COUNT; i++)
        prom_u64_1(b, "wsguard_bytes_total", "direction",
                   direction_label[i], t->bytes[i]);

    prom_family(b, "wsguard_deflate_sessions_total", "counter",
                "Sessions that agreed permessage-deflate with the client.");
    sb_printf(b, "wsguard_deflate_sessions_total %" PRIu64 "\n",
              t->deflate_sessions);

    prom_family(b, "wsguard_deflate_bytes_total", "counter",
                "Payload of permessage-deflate messages (in: as the client "
                "sent them and inflated; out: as the backend sent them "
                "and compressed).");
    for (int i = 0; i < DIR_COUNT; i++) {
        for (int f = 0; f < FORM_COUNT; f++) {
            sb_str(b, "wsguard_deflate_bytes_total{");
            prom_label(b, "direction", direction_label[i]);
            sb_str(b, ",");
            prom_label(b, "form", form_label[f]);
            sb_printf(b, "} %" PRIu64 "\n", t->deflate_bytes[i][f]);
        }
    }

    prom_family(b, "wsguard_route_connections_active", "gauge",
                "Sessions open now, by route (\"/\" without routes).");
    for (size_t i = 0; i < t->nroutes; i++)
        prom_u64_1(b, "wsguard_route_connections_active", "route",
                   t->routes[i].name, t->routes[i].active);

    prom_family(b, "wsguard_route_sessions_total", "counter",
                "Sessions that reached the relay, by route.");
    for (size_t i = 0; i < t->nroutes; i++)
        prom_u64_1(b, "wsguard_route_sessions_total", "route",
                   t->routes[i].name, t->routes[i].sessions);

    prom_family(b, "wsguard_backend_up", "gauge",
                "Result of the last connect to each backend of the "
                "configuration in force: 1 succeeded, 0 failed, -1 not "
                "tried yet.");
    for (size_t i = 0; i < t->nbackends; i++) {
        const struct backend_total *be = &t->backends[i];
        sb_str(b, "wsguard_backend_up{");
        prom_label(b, "route", be->route);
        sb_str(b, ",");
        prom_label(b, "backend", be->url);
        sb_printf(b, "} %d\n", be->up);
    }

    prom_family(b, "wsguard_backend_connects_total", "counter",
                "Connects to each backend by result, since the "
                "configuration in force was loaded (a reload starts "
                "again from 0).");
    for (size_t i = 0; i < t->nbackends; i++) {
        const struct backend_total *be = &t->backends[i];
        for (int ok = 1; ok >= 0; ok--) {
            sb_str(b, "wsguard_backend_connects_total{");
            prom_label(b, "route", be->route);
            sb_str(b, ",");
            prom_label(b, "backend", be->url);
            sb_str(b, ",");
            prom_label(b, "result", ok ? "success" : "failure");
            sb_printf(b, "} %" PRIu64 "\n", ok ? be->ok : be->failed);
        }
    }

    prom_histo(b, "wsguard_handshake_duration_seconds",
               "From accept to the client's 101, sessions only.",
               &t->handshake);
    prom_histo(b, "wsguard_backend_connect_duration_seconds",
               "From the start of a backend connect to its TCP "
               "connection.", &t->be_connect);

    prom_family(b, "wsguard_log_dropped_total", "counter",
                "Log lines dropped because the log could not keep up.");
    prom_u64(b, "wsguard_log_dropped_total", t->log_dropped);

    prom_family(b, "wsguard_cluster_enabled", "gauge",
                "1 in cluster mode ([cluster] redis set), else 0.");
    prom_u64(b, "wsguard_cluster_enabled", (uint64_t)t->cluster);
    prom_family(b, "wsguard_cluster_up", "gauge",
                "1 while every worker's Redis connection is up (cluster "
                "mode), else 0.");
    prom_u64(b, "wsguard_cluster_up",
             t->cluster && t->cluster_up == nwks ? 1 : 0);
    prom_family(b, "wsguard_cluster_errors_total", "counter",
                "Redis failures: commands that failed or timed out, "
                "connections lost, upgrades that could not ask Redis.");
    prom_u64(b, "wsguard_cluster_errors_total", t->cluster_errors);
    prom_histo(b, "wsguard_cluster_roundtrip_seconds",
               "From sending a Redis command to its reply.",
               &t->cluster_rtt);
    prom_family(b, "wsguard_revocations_in_force", "gauge",
                "Revocations (sub, jti, client address) in this process's "
                "table, expired ones included until purged.");
    prom_u64(b, "wsguard_revocations_in_force", t->revoked);
}

/* ------------------------------------------------------------------ */
/* GET /status.json                                                    */

/* A JSON string for text that should be UTF-8 but comes from a
 * configuration file: invalid bytes become '?' rather than failing. */
static json_t *
jstr(const char *s)
{
    json_t *j = json_string(s);
    if (j != NULL)
        return j;
    char *c = strdup(s);
    if (c == NULL)
        return json_null();
    for (char *p = c; *p; p++)
        if ((unsigned char)*p >= 0x80 || (unsigned char)*p < 0x20)
            *p = '?';
    j = json_string(c);
    free(c);
    return j ? j : json_null();
}

static json_t *
jint(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static void
render_status_json(struct sbuf *b, const struct totals *t)
{
    struct timespec now;
    struct ip_count top[ADMIN_TOP_CLIENTS];
    char code[16], text[INET6_ADDRSTRLEN + 8];
    json_t *j = json_object(), *o, *a;

    clock_gettime(CLOCK_REALTIME, &now);
    double nowf = (double)now.tv_sec + (double)now.tv_nsec / 1e9;

    json_object_set_new(j, "version", json_string(version_s));
    json_object_set_new(j, "openssl",
                        json_string(OpenSSL_version(OPENSSL_VERSION_STRING)));
    json_object_set_new(j, "now", json_real(nowf));
    json_object_set_new(j, "started", jint((uint64_t)start_wall));
    json_object_set_new(j, "uptime_seconds",
                        jint((uint64_t)(now.tv_sec - start_wall)));
    char why[128] = "";
    int ready = is_ready(why, sizeof why);
    json_object_set_new(j, "ready", json_boolean(ready));
    json_object_set_new(j, "not_ready_reason", ready ? json_null() : jstr(why));
    json_object_set_new(j, "draining", json_boolean(atomic_load(&draining)));
    json_object_set_new(j, "workers", jint(nwks));

    o = json_object();
    json_object_set_new(o, "generation", jint(t->generation));
    json_object_set_new(o, "file", t->config_path ? jstr(t->config_path)
                                                  : json_null());
    json_object_set_new(o, "loaded_at", jint((uint64_t)t->loaded_at));
    json_object_set_new(o, "last_reload",
                        json_string(t->last_result < 0    ? "none"
                                    : t->last_result == 0 ? "failure"
                                                          : "success"));
    json_object_set_new(o, "last_reload_at",
                        t->last_result < 0 ? json_null()
                                           : jint((uint64_t)t->last_at));
    json_object_set_new(o, "last_reload_error",
                        t->last_result == 0 ? jstr(t->last_error)
                                            : json_null());
    json_object_set_new(o, "reloads_success", jint(t->reloads[1]));
    json_object_set_new(o, "reloads_failure", jint(t->reloads[0]));
    json_object_set_new(j, "config", o);

    o = json_object();
    json_object_set_new(o, "active", jint(t->active));
    json_object_set_new(o, "accepted", jint(t->accepted));
    json_object_set_new(o, "sessions", jint(t->sessions));
    json_object_set_new(o, "rejected", jint(t->rejected_all));
    json_object_set_new(j, "connections", o);

    o = json_object();
    for (int i = 0; i < DIR_COUNT; i++)
        json_object_set_new(o, direction_label[i], jint(t->messages[i]));
    json_object_set_new(j, "messages", o);
    o = json_object();
    for (int i = 0; i < DIR_COUNT; i++)
        json_object_set_new(o, direction_label[i], jint(t->bytes[i]));
    json_object_set_new(j, "bytes", o);

    o = json_object();
    json_object_set_new(o, "count",
                        jint(t->handshake.bucket[HISTO_BUCKETS - 1]));
    json_object_set_new(o, "sum_seconds",
                        json_real((double)t->handshake.sum_us / 1e6));
    json_object_set_new(j, "handshakes", o);

    a = json_array();
    for (size_t i = 0; i < t->nroutes; i++) {
        o = json_object();
        json_object_set_new(o, "route", jstr(t->routes[i].name));
        json_object_set_new(o, "active", jint(t->routes[i].active));
        json_object_set_new(o, "sessions", jint(t->routes[i].sessions));
        json_array_append_new(a, o);
    }
    json_object_set_new(j, "routes", a);

    o = json_object();
    for (int i = 0; i < REF_COUNT; i++)
        json_object_set_new(o, refusal_info[i].label, jint(t->rejected[i]));
    json_object_set_new(j, "rejections", o);

    o = json_object();
    for (int i = 0; i < ENF_COUNT; i++)
        json_object_set_new(o, enforce_label[i], jint(t->enforced[i]));
    json_object_set_new(j, "enforcements", o);

    /* Only the codes that occurred: 13 codes x 3 sides is mostly 0. */
    o = json_object();
    for (int i = 0; i < CLOSE_CODE_COUNT; i++) {
        uint64_t sum = 0;
        for (int by = 0; by < BY_COUNT; by++)
            sum += t->closes[i][by];
        if (sum == 0)
            continue;
        json_t *c = json_object();
        for (int by = 0; by < BY_COUNT; by++)
            json_object_set_new(c, closed_by_label[by], jint(t->closes[i][by]));
        close_code_text(i, code, sizeof code);
        json_object_set_new(o, code, c);
    }
    json_object_set_new(j, "closes", o);

    a = json_array();
    size_t ntop = runtime_iplimit != NULL
                      ? iplimit_top(runtime_iplimit, top, ADMIN_TOP_CLIENTS)
                      : 0;
    for (size_t i = 0; i < ntop; i++) {
        ip_key_text(&top[i].key, text, sizeof text);
        o = json_object();
        json_object_set_new(o, "address", jstr(text));
        json_object_set_new(o, "connections", jint(top[i].count));
        json_array_append_new(a, o);
    }
    json_object_set_new(j, "top_clients", a);

    a = json_array();
    for (size_t i = 0; i < t->nbackends; i++) {
        const struct backend_total *be = &t->backends[i];
        o = json_object();
        json_object_set_new(o, "route", jstr(be->route));
        json_object_set_new(o, "url", jstr(be->url));
        json_object_set_new(o, "state", json_string(be->up > 0    ? "up"
                                                    : be->up == 0 ? "down"
                                                                  : "unknown"));
        json_object_set_new(o, "connects_ok", jint(be->ok));
        json_object_set_new(o, "connects_failed", jint(be->failed));
        json_object_set_new(o, "last_error",
                            be->last_errno
                                ? json_string(strerror(be->last_errno))
                                : json_null());
        json_array_append_new(a, o);
    }
    json_object_set_new(j, "backends", a);

    json_object_set_new(j, "log_dropped", jint(t->log_dropped));

    o = json_object();
    json_object_set_new(o, "enabled", json_boolean(t->cluster));
    json_object_set_new(o, "up", json_boolean(t->cluster &&
                                              t->cluster_up == nwks));
    json_object_set_new(o, "workers_connected", jint(t->cluster_up));
    json_object_set_new(o, "errors", jint(t->cluster_errors));
    json_object_set_new(o, "roundtrips", jint(t->cluster_rtt.bucket[
                                                  HISTO_BUCKETS - 1]));
    json_object_set_new(o, "revocations_in_force", jint(t->revoked));
    if (t->cluster) {
        const struct cluster *cl = wks[0].cluster;
        json_object_set_new(o, "redis", jstr(cl->target.host));
        json_object_set_new(o, "on_error", json_string(cl->fail_closed
                                                           ? "closed"
                                                           : "open"));
        json_object_set_new(o, "replica", json_string(cl->replica));
    }
    json_object_set_new(j, "cluster", o);

    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (s == NULL) {
        b->oom = 1;
        return;
    }
    sb_str(b, s);
    sb_str(b, "\n");
    free(s);
}

/* ------------------------------------------------------------------ */
/* GET /status: one self-contained page                                */

/*
 * No external resource of any kind; the style and the script are inline
 * and allowed by their SHA-256 in the Content-Security-Policy (computed
 * at start from these very strings), so nothing else can run. The script
 * only fetches /status.json (connect-src 'self') and writes text nodes
 * (textContent), never markup.
 */
static const char status_style[] =
    "body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222;"
    "background:#fafafa}"
    "h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.05em;margin:1.2em 0 .3em}"
    "#summary{color:#555}.tag{padding:0 .4em;border-radius:3px;color:#fff;"
    "background:#2a7}.tag.bad{background:#c33}.err{color:#c33}"
    ".cards{display:flex;flex-wrap:wrap;gap:.6em}"
    ".cards div{background:#fff;border:1px solid #ddd;border-radius:4px;"
    "padding:.4em .8em;min-width:8em}"
    ".cards b{display:block;font-size:1.5em;font-variant-numeric:tabular-nums}"
    ".cards span{color:#666;font-size:.85em}"
    ".grid{display:grid;"
    "grid-template-columns:repeat(auto-fit,minmax(22em,1fr));"
    "gap:0 2em}"
    "table{border-collapse:collapse;background:#fff;width:100%}"
    "th,td{border:1px solid #ddd;padding:.15em .5em;text-align:left}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "td.none{color:#999}.down{color:#c33;font-weight:bold}.up{color:#2a7}"
    "footer{margin-top:1.5em;color:#777;font-size:.85em}";

static const char status_script[] =
    "\"use strict\";\n"
    "let prev = null;\n"
    "const $ = (id) => document.getElementById(id);\n"
    "function get(o, path) {\n"
    "  return path.split(\".\").reduce((a, k) => (a == null ? a : a[k]), o);\n"
    "}\n"
    "function dur(s) {\n"
    "  s = Math.floor(s);\n"
    "  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600),\n"
    "        m = Math.floor((s % 3600) / 60);\n"
    "  return (d ? d + \"d \" : \"\") + (d || h ? h + \"h \" : \"\") +\n"
    "         m + \"m \" + (s % 60) + \"s\";\n"
    "}\n"
    "function bytes(n) {\n"
    "  const u = [\"B\", \"KiB\", \"MiB\", \"GiB\", \"TiB\"];\n"
    "  let i = 0;\n"
    "  while (n >= 1024 && i < 4) { n /= 1024; i++; }\n"
    "  return (i ? n.toFixed(1) : String(n)) + \" \" + u[i];\n"
    "}\n"
    "function when(t) { return new Date(t * 1000).toLocaleString(); }\n"
    "function fill(id, rows, cols) {\n"
    "  const tb = $(id);\n"
    "  tb.replaceChildren();\n"
    "  if (rows.length === 0) {\n"
    "    const tr = tb.insertRow(), td = tr.insertCell();\n"
    "    td.colSpan = cols; td.className = \"none\";"
    " td.textContent = \"none\";\n"
    "  }\n"
    "  for (const r of rows) {\n"
    "    const tr = tb.insertRow();\n"
    "    for (const [text, key, cls] of r) {\n"
    "      const td = tr.insertCell();\n"
    "      td.textContent = text;\n"
    "      if (key) td.dataset.k = key;\n"
    "      if (cls) td.className = cls;\n"
    "    }\n"
    "  }\n"
    "}\n"
    "function num(j, key) { return [String(get(j, key)), key, \"n\"]; }\n"
    "function render(j) {\n"
    "  $(\"version\").textContent = j.version;\n"
    "  $(\"openssl\").textContent = j.openssl;\n"
    "  $(\"workers\").textContent = j.workers +\n"
    "    (j.workers === 1 ? \" worker\" : \" workers\");\n"
    "  $(\"file\").textContent = j.config.file || \"environment only\";\n"
    "  $(\"uptime\").textContent = dur(j.uptime_seconds);\n"
    "  const cl = j.cluster;\n"
    "  $(\"cluster\").textContent = !cl.enabled ? \"off\"\n"
    "    : (cl.up ? \"up\" : \"down\") + \" (\" + cl.redis + \", on_error \" +\n"
    "      cl.on_error + \")\";\n"
    "  $(\"cluster\").className = cl.enabled && !cl.up ? \"down\" : \"\";\n"
    "  $(\"generation\").textContent = j.config.generation;\n"
    "  const st = $(\"state\");\n"
    "  st.textContent = j.ready ? \"ready\" : j.draining ? \"draining\"\n"
    "    : \"not ready: \" + j.not_ready_reason;\n"
    "  st.className = j.ready ? \"tag\" : \"tag bad\";\n"
    "  const c = j.config;\n"
    "  $(\"reload\").textContent = c.last_reload === \"none\""
    " ? \"none since start\"\n"
    "    : c.last_reload + \" at \" + when(c.last_reload_at) +\n"
    "      (c.last_reload_error ? \" (\" + c.last_reload_error + \")\""
    " : \"\");\n"
    "  $(\"reload\").className = c.last_reload === \"failure\""
    " ? \"down\" : \"\";\n"
    "  for (const el of document.querySelectorAll(\"b[data-k]\"))\n"
    "    el.textContent = String(get(j, el.dataset.k));\n"
    "  $(\"bytes_in\").textContent = bytes(j.bytes.in);\n"
    "  $(\"bytes_out\").textContent = bytes(j.bytes.out);\n"
    "  $(\"hs_avg\").textContent = j.handshakes.count ?\n"
    "    (1000 * j.handshakes.sum_seconds / j.handshakes.count).toFixed(1) +\n"
    "    \" ms\" : \"-\";\n"
    "  if (prev && j.now > prev.now) {\n"
    "    const dt = j.now - prev.now;\n"
    "    const hs = (j.connections.sessions -"
    " prev.connections.sessions) / dt;\n"
    "    const ms = (j.messages.in + j.messages.out - prev.messages.in -\n"
    "                prev.messages.out) / dt;\n"
    "    $(\"hs_rate\").textContent = hs.toFixed(1);\n"
    "    $(\"msg_rate\").textContent = ms.toFixed(1);\n"
    "  }\n"
    "  prev = j;\n"
    "  fill(\"routes\", j.routes.map((r, i) => [[r.route],\n"
    "    num(j, \"routes.\" + i + \".active\"),\n"
    "    num(j, \"routes.\" + i + \".sessions\")]), 3);\n"
    "  fill(\"backends\", j.backends.map((b, i) => [[b.route], [b.url],\n"
    "    [b.state, \"backends.\" + i + \".state\", b.state],\n"
    "    num(j, \"backends.\" + i + \".connects_ok\"),\n"
    "    num(j, \"backends.\" + i + \".connects_failed\"),\n"
    "    [b.last_error || \"\"]]), 6);\n"
    "  const nz = (o) => Object.keys(o).filter((k) => o[k] > 0)\n"
    "    .sort((a, b) => o[b] - o[a]);\n"
    "  fill(\"rejections\", nz(j.rejections).map((k) =>\n"
    "    [[k], num(j, \"rejections.\" + k)]), 2);\n"
    "  fill(\"closes\", Object.keys(j.closes).map((k) => [[k],\n"
    "    num(j, \"closes.\" + k + \".client\"),\n"
    "    num(j, \"closes.\" + k + \".backend\"),\n"
    "    num(j, \"closes.\" + k + \".wsguard\")]), 4);\n"
    "  fill(\"enforcements\", nz(j.enforcements).map((k) =>\n"
    "    [[k], num(j, \"enforcements.\" + k)]), 2);\n"
    "  fill(\"clients\", j.top_clients.map((t, i) => [[t.address],\n"
    "    num(j, \"top_clients.\" + i + \".connections\")]), 2);\n"
    "  document.body.dataset.loaded = String(j.now);\n"
    "}\n"
    "async function tick() {\n"
    "  try {\n"
    "    const r = await fetch(\"/status.json\", {cache: \"no-store\"});\n"
    "    if (!r.ok) throw new Error(\"HTTP \" + r.status);\n"
    "    render(await r.json());\n"
    "    $(\"err\").textContent = \"\";\n"
    "  } catch (e) {\n"
    "    $(\"err\").textContent = \"cannot read /status.json: \" + e.message;\n"
    "  }\n"
    "  setTimeout(tick, 2000);\n"
    "}\n"
    "tick();\n";

static const char status_head[] =
    "<!doctype html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n"
    "<title>wsguard status</title>\n<style>";

static const char status_body[] =
    "</style></head>\n<body>\n"
    "<header><h1>wsguard <span id=\"version\"></span></h1>\n"
    "<p id=\"summary\"><span id=\"state\" class=\"tag\">...</span>"
    " up <span id=\"uptime\">-</span>"
    " &middot; configuration generation <span id=\"generation\">-</span>"
    " (<span id=\"file\">-</span>)"
    " &middot; last reload: <span id=\"reload\">-</span>"
    " &middot; <span id=\"workers\">-</span>"
    " &middot; cluster <span id=\"cluster\">-</span>"
    " &middot; OpenSSL <span id=\"openssl\">-</span></p>\n"
    "<p id=\"err\" class=\"err\"></p></header>\n"
    "<section class=\"cards\">\n"
    "<div><b data-k=\"connections.active\">-</b><span>open "
    "connections</span></div>\n"
    "<div><b id=\"hs_rate\">-</b><span>handshakes/s</span></div>\n"
    "<div><b id=\"msg_rate\">-</b><span>messages/s</span></div>\n"
    "<div><b data-k=\"connections.sessions\">-</b><span>sessions since "
    "start</span></div>\n"
    "<div><b data-k=\"connections.rejected\">-</b><span>refused since "
    "start</span></div>\n"
    "<div><b id=\"hs_avg\">-</b><span>mean handshake</span></div>\n"
    "<div><b id=\"bytes_in\">-</b><span>bytes in</span></div>\n"
    "<div><b id=\"bytes_out\">-</b><span>bytes out</span></div>\n"
    "<div><b data-k=\"log_dropped\">-</b><span>log lines "
    "dropped</span></div>\n"
    "<div><b data-k=\"cluster.revocations_in_force\">-</b><span>"
    "revocations in force</span></div>\n"
    "</section>\n<div class=\"grid\">\n"
    "<section><h2>Routes</h2><table><thead><tr><th>route</th>"
    "<th>open sessions</th><th>sessions</th></tr></thead>"
    "<tbody id=\"routes\"></tbody></table></section>\n"
    "<section><h2>Busiest client addresses</h2><table><thead><tr>"
    "<th>address</th><th>open connections</th></tr></thead>"
    "<tbody id=\"clients\"></tbody></table></section>\n"
    "<section><h2>Refusals by reason</h2><table><thead><tr><th>reason</th>"
    "<th>count</th></tr></thead><tbody id=\"rejections\"></tbody></table>"
    "</section>\n"
    "<section><h2>Closes by code</h2><table><thead><tr><th>code</th>"
    "<th>client</th><th>backend</th><th>wsguard</th></tr></thead>"
    "<tbody id=\"closes\"></tbody></table></section>\n"
    "<section><h2>Enforcements</h2><table><thead><tr><th>limit</th>"
    "<th>sessions closed</th></tr></thead><tbody id=\"enforcements\">"
    "</tbody></table></section>\n"
    "</div>\n"
    "<section><h2>Backends</h2><table><thead><tr><th>route</th>"
    "<th>backend</th><th>last connect</th><th>connects ok</th>"
    "<th>failed</th><th>last error</th></tr></thead>"
    "<tbody id=\"backends\"></tbody></table></section>\n"
    "<footer>Refreshed every 2 s from <a href=\"/status.json\">"
    "/status.json</a> &middot; <a href=\"/metrics\">/metrics</a>"
    "</footer>\n<script>";

static const char status_tail[] = "</script>\n</body></html>\n";

/* 'sha256-BASE64' of s. */
static int
csp_hash(const char *s, char *out, size_t cap)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    unsigned char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];

    if (EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha256(), NULL) != 1)
        return -1;
    EVP_EncodeBlock(b64, md, (int)mdlen);
    snprintf(out, cap, "'sha256-%s'", b64);
    return 0;
}

static int
csp_init(void)
{
    char sh_script[128], sh_style[128];

    if (csp_hash(status_script, sh_script, sizeof sh_script) != 0 ||
        csp_hash(status_style, sh_style, sizeof sh_style) != 0)
        return -1;
    snprintf(csp, sizeof csp,
             "default-src 'none'; script-src %s; style-src %s; "
             "connect-src 'self'; img-src 'none'; base-uri 'none'; "
             "form-action 'none'; frame-ancestors 'none'",
             sh_script, sh_style);
    return 0;
}

static void
render_status_page(struct sbuf *b)
{
    sb_str(b, status_head);
    sb_str(b, status_style);
    sb_str(b, status_body);
    sb_str(b, status_script);
    sb_str(b, status_tail);
}

/* ------------------------------------------------------------------ */
/* Connections                                                         */

enum aconn_state {
    AC_READ = 0,                /* reading the request head (and body) */
    AC_WAIT,                    /* POST /revoke: the workers apply it */
    AC_WRITE,                   /* writing the answer */
    AC_LINGER,                  /* written, write side shut: await EOF */
};

struct aconn {
    int fd;
    enum aconn_state state;
    int served;                 /* counts in nserved, else in nrefusing */
    ev_io io;
    ev_timer timer;
    char *in;                   /* ADMIN_HEAD_MAX bytes (served only) */
    size_t inlen;
    size_t need;                /* head + body length once the head of a
                                   request with a body is in; else 0 */
    struct revoke_job *job;     /* AC_WAIT: the revocation being applied */
    struct sbuf out;
    size_t outpos;
    char peer[INET6_ADDRSTRLEN + 8];
    struct aconn *prev, *next;
};

static struct aconn *aconns;
static unsigned nserved, nrefusing;

static void aconn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void aconn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

static void
aconn_free(struct aconn *c)
{
    if (c->job != NULL)
        c->job->priv = NULL;    /* answered to nobody; freed when done */
    ev_io_stop(aloop, &c->io);
    ev_timer_stop(aloop, &c->timer);
    close(c->fd);
    if (c->served)
        nserved--;
    else
        nrefusing--;
    if (c->prev)
        c->prev->next = c->next;
    else
        aconns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->in);
    free(c->out.p);
    free(c);
}

static void
aconn_arm(struct aconn *c, enum aconn_state s, int events, double timeout)
{
    c->state = s;
    ev_io_stop(aloop, &c->io);
    ev_io_set(&c->io, c->fd, events);
    ev_io_start(aloop, &c->io);
    ev_timer_stop(aloop, &c->timer);
    ev_timer_set(&c->timer, timeout, 0);
    ev_timer_start(aloop, &c->timer);
}

static const char *
status_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 202: return "Accepted";
    case 405: return "Method Not Allowed";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    default: return "Service Unavailable";
    }
}

/* Put a complete answer into c->out: status line, headers (extra: more
 * header lines, each ending in CRLF, or NULL) and body[0..blen);
 * head_only leaves the body out (HEAD) but keeps its Content-Length. */
static void
respond(struct aconn *c, int status, const char *ctype, const char *extra,
        const char *body, size_t blen, int head_only)
{
    struct sbuf *o = &c->out;

    sb_printf(o, "HTTP/1.1 %d %s\r\n", status, status_reason(status));
    sb_printf(o, "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, blen);
    sb_str(o, "Cache-Control: no-store\r\n"
              "X-Content-Type-Options: nosniff\r\n"
              "Connection: close\r\n");
    if (extra != NULL)
        sb_str(o, extra);
    sb_str(o, "\r\n");
    if (!head_only && blen > 0)
        sb_put(o, body, blen);
}

static void
respond_text(struct aconn *c, int status, const char *text,
             const char *extra, int head_only)
{
    respond(c, status, "text/plain; charset=utf-8", extra, text,
            strlen(text), head_only);
}

static int
target_is(const char *path, size_t len, const char *lit)
{
    return len == strlen(lit) && memcmp(path, lit, len) == 0;
}

/* Answer one parsed request. */
static void
serve(struct aconn *c, const struct http_request *req)
{
    /* Method names are case-sensitive (RFC 9110 §9.1): "get" is 405. */
    int head = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    const char *path = req->target;
    size_t plen = req->target_len;
    const char *q = memchr(path, '?', plen);
    struct totals t;
    struct sbuf body = {0};
    int status = 200;

    if (q != NULL)
        plen = (size_t)(q - path);
    if (target_is(path, plen, "/revoke")) {
        status = 405;
        respond_text(c, 405, "method not allowed: POST\n", "Allow: POST\r\n",
                     head);
    } else if (!head &&
        !(req->method_len == 3 && memcmp(req->method, "GET", 3) == 0)) {
        respond_text(c, 405, "method not allowed: GET or HEAD\n",
                     "Allow: GET, HEAD\r\n", 0);
        status = 405;
    } else if (target_is(path, plen, "/healthz")) {
        respond_text(c, 200, "ok\n", NULL, head);
    } else if (target_is(path, plen, "/readyz")) {
        char why[128] = "", text[140];
        if (!is_ready(why, sizeof why)) {
            status = 503;
            snprintf(text, sizeof text, "%s\n", why);
            respond_text(c, 503, text, NULL, head);
        } else {
            respond_text(c, 200, "ready\n", NULL, head);
        }
    } else if (target_is(path, plen, "/metrics") ||
               target_is(path, plen, "/status.json")) {
        int metrics = path[1] == 'm';
        if (totals_read(&t) == 0) {
            if (metrics)
                render_metrics(&body, &t);
            else
                render_status_json(&body, &t);
        } else {
            body.oom = 1;
        }
        totals_free(&t);
        if (body.oom) {
            status = 503;
            respond_text(c, 503, "out of memory\n", NULL, head);
        } else {
            respond(c, 200, metrics ? "text/plain; version=0.0.4; "
                                      "charset=utf-8"
                                    : "application/json",
                    NULL, body.p, body.len, head);
        }
    } else if (target_is(path, plen, "/status")) {
        char extra[700];
        render_status_page(&body);
        snprintf(extra, sizeof extra,
                 "Content-Security-Policy: %s\r\n"
                 "X-Frame-Options: DENY\r\n"
                 "Referrer-Policy: no-referrer\r\n", csp);
        if (body.oom) {
            status = 503;
            respond_text(c, 503, "out of memory\n", NULL, head);
        } else {
            respond(c, 200, "text/html; charset=utf-8", extra, body.p,
                    body.len, head);
        }
    } else {
        status = 404;
        respond_text(c, 404, "not found: /metrics /healthz /readyz /status "
                     "/status.json /revoke\n", NULL, head);
    }
    free(body.p);
    log_debug("admin: %s %.*s %.*s -> %d", c->peer, (int)req->method_len,
              req->method, (int)(req->target_len > 200 ? 200
                                                       : req->target_len),
              req->target, status);
}

static void
aconn_write(struct aconn *c)
{
    if (c->out.oom) {
        aconn_free(c);
        return;
    }
    while (c->outpos < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->outpos,
                         c->out.len - c->outpos, MSG_NOSIGNAL);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (c->state != AC_WRITE)
                    aconn_arm(c, AC_WRITE, EV_WRITE, ADMIN_WRITE_TIMEOUT);
                return;
            }
            aconn_free(c);
            return;
        }
        c->outpos += (size_t)n;
    }
    /* All written: close our side, and the socket once the peer has
     * closed its side too (closing with unread input would reset the
     * connection, and the peer could lose the answer). */
    shutdown(c->fd, SHUT_WR);
    free(c->in);
    c->in = NULL;
    aconn_arm(c, AC_LINGER, EV_READ, ADMIN_LINGER);
}

/* A POST's body length from Content-Length: the length, -1 malformed or
 * a body this endpoint does not take (Transfer-Encoding), -2 missing. */
static long
body_length(const struct http_request *req)
{
    size_t n = 0;
    const struct http_header *h;

    if (http_find(req->headers, req->nheaders, "transfer-encoding", NULL))
        return -1;
    h = http_find(req->headers, req->nheaders, "content-length", &n);
    if (h == NULL)
        return -2;
    if (n != 1 || h->value_len == 0 || h->value_len > 6)
        return -1;
    long v = 0;
    for (size_t i = 0; i < h->value_len; i++) {
        if (h->value[i] < '0' || h->value[i] > '9')
            return -1;
        v = v * 10 + (h->value[i] - '0');
    }
    return v;
}

static int
is_post(const struct http_request *req)
{
    return req->method_len == 4 && memcmp(req->method, "POST", 4) == 0;
}

static int
is_revoke(const struct http_request *req)
{
    const char *q = memchr(req->target, '?', req->target_len);
    size_t n = q ? (size_t)(q - req->target) : req->target_len;

    return target_is(req->target, n, "/revoke");
}

static void revoke_start(struct aconn *c, const char *body, size_t len);

static void
aconn_read(struct aconn *c)
{
    struct http_header hdrs[ADMIN_MAX_HEADERS];
    struct http_request req;

    for (;;) {
        size_t last = c->inlen;
        size_t room = (c->need ? c->need : ADMIN_HEAD_MAX) - c->inlen;
        ssize_t n = recv(c->fd, c->in + c->inlen, room, 0);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            aconn_free(c);      /* closed or reset before a request */
            return;
        }
        c->inlen += (size_t)n;
        if (c->need && c->inlen < c->need)
            continue;           /* the rest of the body */
        memset(&req, 0, sizeof req);
        req.headers = hdrs;
        req.nheaders = ADMIN_MAX_HEADERS;
        /* Once the head was complete, the body is behind it: parse the
         * head again from its start. */
        int r = http_parse_request(c->in, c->inlen, c->need ? 0 : last,
                                   &req);
        if (r == HTTP_INCOMPLETE && c->inlen < ADMIN_HEAD_MAX)
            continue;
        if (r > 0 && is_post(&req) && is_revoke(&req)) {
            long blen = body_length(&req);
            if (blen == -2) {
                respond_text(c, 411, "Content-Length required\n", NULL, 0);
            } else if (blen < 0) {
                respond_text(c, 400, "bad Content-Length (chunked bodies "
                             "are not taken)\n", NULL, 0);
            } else if ((size_t)r + (size_t)blen > ADMIN_HEAD_MAX) {
                respond_text(c, 413, "body too large\n", NULL, 0);
            } else if (c->inlen < (size_t)r + (size_t)blen) {
                c->need = (size_t)r + (size_t)blen;
                continue;
            } else {
                revoke_start(c, c->in + r, (size_t)blen);
                if (c->state == AC_WAIT)
                    return;     /* answered when the workers are done */
            }
        } else if (r > 0) {
            serve(c, &req);
        } else if (r == HTTP_ERROR) {
            respond_text(c, 400, "bad request\n", NULL, 0);
        } else {    /* too large, or too many header lines */
            respond_text(c, 431, "request head too large\n", NULL, 0);
        }
        if (r <= 0)
            log_debug("admin: %s -> %d", c->peer, r == HTTP_ERROR ? 400 : 431);
        aconn_write(c);
        return;
    }
}

/* ------------------------------------------------------------------ */
/* POST /revoke                                                        */

/* Jobs the workers have finished, for the admin thread to answer. */
static pthread_mutex_t revoke_lock = PTHREAD_MUTEX_INITIALIZER;
static struct revoke_job *revoke_finished;
static ev_async revoke_w;

/* The last worker is done with a job (on its thread). */
static void
revoke_done(struct revoke_job *job)
{
    pthread_mutex_lock(&revoke_lock);
    job->link = revoke_finished;
    revoke_finished = job;
    pthread_mutex_unlock(&revoke_lock);
    ev_async_send(aloop, &revoke_w);
}

static void
revoke_answer_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    struct revoke_job *job, *next;

    pthread_mutex_lock(&revoke_lock);
    job = revoke_finished;
    revoke_finished = NULL;
    pthread_mutex_unlock(&revoke_lock);
    for (; job != NULL; job = next) {
        struct aconn *c = job->priv;
        unsigned closed = atomic_load(&job->closed);
        int published = atomic_load(&job->published);
        char body[96];

        next = job->link;
        log_info("revoked %s %s (ttl %llu s) from the admin listener: %u "
                 "sessions closed here%s", revoke_key[job->rv.kind],
                 job->rv.value, (unsigned long long)(job->rv.ttl_ms / 1000),
                 closed, job->publish ? (published ? ", published to the "
                                                    "cluster"
                                                  : ", NOT published: Redis "
                                                    "is unreachable")
                                      : "");
        if (c != NULL) {
            c->job = NULL;
            snprintf(body, sizeof body, "{\"closed\": %u, \"published\": "
                     "%s}\n", closed, published ? "true" : "false");
            respond(c, 202, "application/json", NULL, body, strlen(body), 0);
            aconn_write(c);
        }
        free(job);
    }
}

/* Parse the revocation, have every worker apply it (the answer comes
 * from revoke_answer_cb), or answer the error now. */
static void
revoke_start(struct aconn *c, const char *body, size_t len)
{
    struct revocation rv;
    struct revoke_job *job;
    char err[160], text[200];
    uint64_t ttl;

    pthread_mutex_lock(&sh.lock);
    ttl = sh.rt->cfg->cluster_revoke_ttl_ms;
    pthread_mutex_unlock(&sh.lock);
    if (revocation_parse(body, len, ttl, &rv, err, sizeof err) != 0) {
        snprintf(text, sizeof text, "bad revocation: %s\n", err);
        respond_text(c, 400, text, NULL, 0);
        log_info("admin: %s POST /revoke refused: %s", c->peer, err);
        return;
    }
    if ((job = revoke_job_new(nwks)) == NULL) {
        respond_text(c, 503, "out of memory\n", NULL, 0);
        return;
    }
    job->rv = rv;
    job->publish = nwks > 0 && wks[0].cluster != NULL;
    job->done = revoke_done;
    job->priv = c;
    c->job = job;
    c->state = AC_WAIT;
    ev_io_stop(aloop, &c->io);
    ev_timer_stop(aloop, &c->timer);
    ev_timer_set(&c->timer, ADMIN_WRITE_TIMEOUT, 0);
    ev_timer_start(aloop, &c->timer);
    if (workers_revoke(wks, nwks, job, ev_time()) != 0) {
        c->job = NULL;
        free(job);
        respond_text(c, 503, "revocation not applied: the table is full "
                     "or too many revocations are in flight\n", NULL, 0);
        log_error("admin: revocation of %s %s not applied: the revocation "
                  "table is full (%d in force) or too many are in flight",
                  revoke_key[rv.kind], rv.value, REVOKE_MAX);
        c->state = AC_READ;
    }
}

static void
aconn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    struct aconn *c = w->data;
    char sink[4096];
    ssize_t n;

    switch (c->state) {
    case AC_READ:
        aconn_read(c);
        break;
    case AC_WRITE:
        aconn_write(c);
        break;
    case AC_WAIT:
        break;                  /* not watched */
    case AC_LINGER:
        do
            n = recv(c->fd, sink, sizeof sink, 0);
        while (n > 0 || (n == -1 && errno == EINTR));
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            aconn_free(c);
        break;
    }
}

static void
aconn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct aconn *c = w->data;

    if (c->state == AC_READ)
        log_debug("admin: %s sent no complete request in %.0f s: closed",
                  c->peer, ADMIN_READ_TIMEOUT);
    aconn_free(c);
}

static int
peer_allowed(const struct sockaddr *sa)
{
    struct ip_key k;
    int ok;

    ip_key_from_sockaddr(sa, 128, &k);
    pthread_mutex_lock(&sh.lock);
    ok = sh.allow != NULL && cidr_contains(sh.allow, &k);
    pthread_mutex_unlock(&sh.lock);
    return ok;
}

static void
accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    for (int i = 0; i < 16; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                log_warn("admin: accept: %s; pausing for %.0f ms",
                         strerror(errno), ADMIN_ACCEPT_PAUSE * 1000);
                ev_io_stop(loop, &accept_w);
                ev_timer_set(&accept_pause, ADMIN_ACCEPT_PAUSE, 0);
                ev_timer_start(loop, &accept_pause);
            }
            return;
        }
        int allowed = peer_allowed((struct sockaddr *)&ss);
        int full = allowed && nserved >= ADMIN_MAX_CONNS;
        if (!allowed || full) {
            if (nrefusing >= ADMIN_MAX_REFUSING) {
                close(fd);
                continue;
            }
        }
        struct aconn *c = calloc(1, sizeof *c);
        if (c == NULL || (allowed && !full &&
                          (c->in = malloc(ADMIN_HEAD_MAX)) == NULL)) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        addr_text((struct sockaddr *)&ss, len, c->peer, sizeof c->peer);
        ev_io_init(&c->io, aconn_io_cb, fd, EV_READ);
        c->io.data = c;
        ev_init(&c->timer, aconn_timer_cb);
        c->timer.data = c;
        c->next = aconns;
        if (aconns)
            aconns->prev = c;
        aconns = c;
        if (allowed && !full) {
            c->served = 1;
            nserved++;
            aconn_arm(c, AC_READ, EV_READ, ADMIN_READ_TIMEOUT);
            continue;
        }
        /* Answered at once, without reading the request: such a peer
         * never holds one of the ADMIN_MAX_CONNS slots. */
        nrefusing++;
        if (!allowed) {
            log_debug("admin: %s not in [admin] allow: 403", c->peer);
            respond_text(c, 403, "forbidden: not in [admin] allow\n", NULL,
                         0);
        } else {
            log_warn("admin: %u connections already: 503 to %s",
                     nserved, c->peer);
            respond_text(c, 503, "too many admin connections\n",
                         "Retry-After: 1\r\n", 0);
        }
        c->state = AC_READ;     /* not armed yet */
        aconn_write(c);
    }
}

static void
accept_pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    ev_io_start(loop, &accept_w);
}

static void
stop_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

static void *
admin_main(void *arg)
{
    ev_run(aloop, 0);
    for (struct aconn *c = aconns, *next; c != NULL; c = next) {
        next = c->next;
        aconn_free(c);
    }
    return NULL;
}

int
admin_start(struct worker *ws, unsigned n, struct runtime *rt,
            const char *version)
{
    char err[256];
    struct cidr_set *allow;

    if (lfd == -1)
        return 0;
    if (csp_init() != 0) {
        log_error("admin: cannot compute the status page's CSP hashes");
        return -1;
    }
    allow = cidr_set_new(&rt->cfg->admin_allow, err, sizeof err);
    if (allow == NULL) {
        log_error("[admin] allow: %s", err);
        return -1;
    }
    wks = ws;
    nwks = n;
    version_s = version;
    start_wall = time(NULL);
    pthread_mutex_lock(&sh.lock);
    sh.rt = runtime_ref(rt);
    sh.allow = allow;
    sh.generation = 1;
    sh.loaded_at = start_wall;
    pthread_mutex_unlock(&sh.lock);

    aloop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (aloop == NULL) {
        log_error("admin: cannot create an event loop");
        return -1;
    }
    ev_io_init(&accept_w, accept_cb, lfd, EV_READ);
    ev_io_start(aloop, &accept_w);
    ev_init(&accept_pause, accept_pause_cb);
    ev_async_init(&stop_w, stop_cb);
    ev_async_start(aloop, &stop_w);
    ev_async_init(&revoke_w, revoke_answer_cb);
    ev_async_start(aloop, &revoke_w);
    if (pthread_create(&athread, NULL, admin_main, NULL) != 0) {
        log_error("admin: cannot start its thread");
        return -1;
    }
    started = 1;
    return 0;
}

void
admin_reloaded(struct runtime *rt)
{
    char err[256];
    struct cidr_set *allow, *old_allow = NULL;
    struct runtime *old_rt = NULL;

    if (!started)
        return;
    allow = cidr_set_new(&rt->cfg->admin_allow, err, sizeof err);
    if (allow == NULL)
        log_error("reload: [admin] allow: %s: keeping the previous list",
                  err);
    pthread_mutex_lock(&sh.lock);
    old_rt = sh.rt;
    sh.rt = runtime_ref(rt);
    if (allow != NULL) {
        old_allow = sh.allow;
        sh.allow = allow;
    }
    sh.generation++;
    sh.loaded_at = sh.last_at = time(NULL);
    sh.last_result = 1;
    sh.last_error[0] = '\0';
    pthread_mutex_unlock(&sh.lock);
    cidr_set_free(old_allow);
    runtime_unref(old_rt);
}

void
admin_reload_failed(const char *why)
{
    if (!started)
        return;
    pthread_mutex_lock(&sh.lock);
    sh.last_at = time(NULL);
    sh.last_result = 0;
    snprintf(sh.last_error, sizeof sh.last_error, "%s", why);
    pthread_mutex_unlock(&sh.lock);
}

void
admin_set_ready_check(admin_ready_fn fn)
{
    ready_check = fn;
}

/* 1 when new connections are welcome, else 0 with the reason in why. */
static int
is_ready(char *why, size_t cap)
{
    if (atomic_load(&draining)) {
        snprintf(why, cap, "draining");
        return 0;
    }
    if (ready_check != NULL && !ready_check(why, cap))
        return 0;
    return 1;
}

void
admin_draining(void)
{
    atomic_store(&draining, 1);
}

void
admin_stop(void)
{
    if (started) {
        ev_async_send(aloop, &stop_w);
        pthread_join(athread, NULL);
        ev_loop_destroy(aloop);
        aloop = NULL;
        started = 0;
    }
    /* Revocations finished after the thread stopped (the workers are
     * joined before this: none is pending). */
    for (struct revoke_job *j = revoke_finished, *next; j != NULL;
         j = next) {
        next = j->link;
        free(j);
    }
    revoke_finished = NULL;
    if (lfd != -1) {
        close(lfd);
        lfd = -1;
    }
    pthread_mutex_lock(&sh.lock);
    runtime_unref(sh.rt);
    sh.rt = NULL;
    cidr_set_free(sh.allow);
    sh.allow = NULL;
    pthread_mutex_unlock(&sh.lock);
}

/* ------------------------------------------------------------------ */
/* wsguard --healthcheck                                               */

static int
hc_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int
hc_fail(const char *fmt, ...)
{
    va_list ap;

    fputs("wsguard --healthcheck: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

static double
mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Wait for events on fd until the deadline: 1 ready, 0 timed out. */
static int
hc_wait(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - mono_now();
        if (left <= 0)
            return 0;
        struct pollfd p = { .fd = fd, .events = events };
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r == -1 && errno == EINTR)
            continue;
        return r > 0;
    }
}

int
admin_healthcheck(const struct config *cfg, double timeout)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char err[160], where[80], req[160], resp[256];
    double deadline = mono_now() + timeout;
    size_t got = 0, sent = 0;
    int fd;

    if (!admin_on(cfg))
        return hc_fail("[admin] listen is off: nothing to probe");
    if (parse_addr(cfg->admin_listen, &ss, &len, err, sizeof err) != 0)
        return hc_fail("%s", err);
    /* A wildcard address is served on loopback too: probe that. */
    if (is_wildcard(&ss)) {
        if (ss.ss_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_addr.s_addr =
                htonl(INADDR_LOOPBACK);
        else
            ((struct sockaddr_in6 *)&ss)->sin6_addr = in6addr_loopback;
    }
    addr_text((struct sockaddr *)&ss, len, where, sizeof where);
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return hc_fail("socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&ss, len) == -1 &&
        errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return hc_fail("connect to %s: %s", where, strerror(e));
    }
    if (!hc_wait(fd, POLLOUT, deadline)) {
        close(fd);
        return hc_fail("connect to %s: no answer within %.0f s", where,
                       timeout);
    }
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr != 0) {
        close(fd);
        return hc_fail("connect to %s: %s", where, strerror(soerr));
    }
    int rl = snprintf(req, sizeof req, "GET /healthz HTTP/1.1\r\nHost: %s\r\n"
                      "User-Agent: wsguard-healthcheck\r\n"
                      "Connection: close\r\n\r\n", where);
    while (sent < (size_t)rl) {
        ssize_t n = send(fd, req + sent, (size_t)rl - sent, MSG_NOSIGNAL);
        if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
            if (!hc_wait(fd, POLLOUT, deadline))
                break;
            continue;
        }
        if (n <= 0)
            break;
        sent += (size_t)n;
    }
    if (sent < (size_t)rl) {
        close(fd);
        return hc_fail("%s: cannot send the request", where);
    }
    while (got < sizeof resp - 1 && memchr(resp, '\n', got) == NULL) {
        if (!hc_wait(fd, POLLIN, deadline)) {
            close(fd);
            return hc_fail("%s: no answer within %.0f s", where, timeout);
        }
        ssize_t n = recv(fd, resp + got, sizeof resp - 1 - got, 0);
        if (n == -1 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    resp[got] = '\0';
    /* "HTTP/1.x NNN " */
    int status = 0;
    if (got < 13 || strncmp(resp, "HTTP/1.", 7) != 0 || resp[7] < '0' || resp[7] > '9' ||
        resp[8] != ' ' || resp[9] < '1' || resp[9] > '5' ||
        resp[10] < '0' || resp[10] > '9' || resp[11] < '0' ||
        resp[11] > '9' || (resp[12] != ' ' && resp[12] != '\r'))
        return hc_fail("%s: not an HTTP answer", where);
    status = (resp[9] - '0') * 100 + (resp[10] - '0') * 10 + (resp[11] - '0');
    if (status != 200)
        return hc_fail("GET http://%s/healthz: %d%s", where, status,
                       status == 403 ? " (is the probe's address in "
                                       "[admin] allow?)" : "");
    return 0;
}
