/*
 * main.c - command line, start-up order and signals.
 *
 * config -> log -> runtime (TLS context, keys, backend addresses) ->
 * listening sockets -> privileges dropped ([server] user) -> workers ->
 * the main thread waits for signals:
 *   SIGTERM/SIGINT  drain (stop accepting, let sessions finish for
 *                   drain_timeout, close the rest with 1001) and exit 0;
 *   SIGHUP          reload: a new snapshot for new connections, live ones
 *                   keep theirs; a bad configuration is logged and the
 *                   old one stays;
 *   SIGUSR1         open the access-log file again (after logrotate).
 * The signals are blocked from before the first listening socket until
 * their watchers run, so a signal sent as soon as "listening on" is
 * logged is handled, never fatal. Logging goes through the writer thread
 * (log_start) from before the first worker to the end (log_stop).
 * The admin listener ([admin] listen) is bound with the other sockets,
 * before privileges are dropped, and served by its own thread (admin.c),
 * which main tells about reloads and, first of all, about a drain.
 *
 * `wsguard --healthcheck` loads the configuration the same way and probes
 * the admin listener's /healthz instead of starting (admin_healthcheck()).
 */
#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin.h"
#include "cluster.h"
#include "config.h"
#include "log.h"
#include "netaddr.h"
#include "stats.h"
#include "runtime.h"
#include "tls.h"
#include "worker.h"

#define WSGUARD_VERSION "0.1.0"
#define DEFAULT_CONFIG "/etc/wsguard/wsguard.ini"
#define HEALTHCHECK_TIMEOUT 2.0     /* s, for --healthcheck */

extern char **environ;

static struct worker *workers;
static unsigned nworkers;
static struct cluster *cluster; /* cluster mode, or NULL */
static const char *config_path = DEFAULT_CONFIG;
static int config_given;        /* -c was used */

/* A sidecar may run on environment variables alone: without -c and
 * without the default file, wsguard starts from the built-in defaults
 * plus WSGUARD_* overrides. A file named with -c must exist. */
static const char *
config_source(void)
{
    if (!config_given && access(config_path, F_OK) == -1)
        return NULL;
    return config_path;
}

static void
usage(FILE *f)
{
    fprintf(f,
            "usage: wsguard [-c FILE] [-t] [-V] [-h] [--healthcheck]\n"
            "  -c FILE        configuration file (default " DEFAULT_CONFIG
            ")\n"
            "  -t             check the configuration and exit\n"
            "  -V             print the version and exit\n"
            "  -h             this help\n"
            "  --healthcheck  GET /healthz on the configured [admin] listen;\n"
            "                 exit 0 if it answers 200, else 1 (for a\n"
            "                 container HEALTHCHECK)\n"
            "Environment: WSGUARD_<SECTION>_<KEY>=value overrides a key.\n");
}

static void
print_err(const char *msg, void *ctx)
{
    int *count = ctx;
    if (count)
        (*count)++;
    fprintf(stderr, "%s\n", msg);
}

/* The first error only (--healthcheck prints one line). */
static void
first_err(const char *msg, void *ctx)
{
    char *first = ctx;
    if (first[0] == '\0')
        snprintf(first, 512, "%s", msg);
}

static void
log_err_cb(const char *msg, void *ctx)
{
    int *count = ctx;
    if (count)
        (*count)++;
    log_error("%s", msg);
}

static void
warn_cb(const char *msg, void *ctx)
{
    log_warn("%s", msg);
}

/* A redis:// URL (no TLS) to a host other than loopback. */
static int
redis_plain_remote(const char *url)
{
    struct redis_target t;
    char err[128];
    int r;

    if (redis_target_parse(url, &t, err, sizeof err) != 0)
        return 0;
    r = !t.tls && strcmp(t.host, "127.0.0.1") != 0 &&
        strcmp(t.host, "::1") != 0 && strcmp(t.host, "localhost") != 0;
    redis_target_free(&t);
    return r;
}

/* Every unsafe or unusual setting is said out loud at start-up. */
static void
warn_unsafe(const struct config *cfg)
{
    if (!cfg->tls_enabled)
        log_warn("[tls] enabled = no: serving plain ws:// (only safe "
                 "behind another TLS terminator)");
    if (cfg->global.max_payload == 0)
        log_warn("[limits] max_payload = 0: client messages are unlimited");
    if (cfg->shared_listen)
        log_warn("[server] shared_listen = yes: another process may listen "
                 "on the same address and take part of the connections");
    if (cfg->cluster_redis != NULL && redis_plain_remote(cfg->cluster_redis))
        log_warn("[cluster] redis = redis://: the shared counts and "
                 "revocations travel unencrypted (rediss:// for TLS)");
    if (cfg->cluster_redis != NULL && cfg->cluster_fail_closed)
        log_info("[cluster] on_error = closed: new connections are "
                 "refused (503) while Redis is unreachable");
    if (cfg->global.origin_allow.n == 0 &&
        cfg->global.origin_allow_pattern.n == 0)
        log_warn("[origin] no allow or allow_pattern: the Origin check is "
                 "off, any web page may open sockets here (CSWSH)");
    else if (cfg->global.origin_allow_missing)
        log_warn("[origin] allow_missing = yes: requests without an Origin "
                 "header are accepted");
    if (cfg->global.jwt_enabled && cfg->global.jwt_forward_token)
        log_warn("[jwt] forward_token = yes: the token reaches the backend");
    if (cfg->allow_underscore_headers)
        log_warn("[server] allow_underscore_headers = yes: client headers "
                 "with '_' in their names reach the backend (only those "
                 "that spell a header wsguard sets or checks are dropped)");
    if (cfg->global.jwt_enabled && !cfg->global.jwt_require_exp)
        log_warn("[jwt] require_exp = no: tokens without exp never expire");
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct policy *p = &cfg->routes[i].p;
        if (p->origin_allow.n == 0 && p->origin_allow_pattern.n == 0)
            log_warn("[route %s] the Origin check is off", cfg->routes[i].prefix);
    }
    if (cfg->idle_timeout_ms == 0)
        log_warn("[server] idle_timeout = 0: idle sessions are never "
                 "closed");
    admin_warn(cfg);
}

/*
 * [server] user (and group): bound and keys read as root, the process
 * then runs as that user. setgroups/setgid/setuid before any worker
 * thread starts; a drop that fails, or that could be undone, stops the
 * start. Files that SIGHUP re-reads (certificates, keys, JWKS, the
 * configuration itself) must be readable by that user.
 */
static int
drop_privileges(const struct config *cfg)
{
    const char *user = cfg->user, *group = cfg->group;
    struct passwd *pw;
    gid_t gid;

    if (user == NULL || user[0] == '\0')
        return 0;
    errno = 0;
    if ((pw = getpwnam(user)) == NULL) {
        log_error("[server] user: no user \"%s\"%s%s", user,
                  errno ? ": " : "", errno ? strerror(errno) : "");
        return -1;
    }
    gid = pw->pw_gid;
    if (group != NULL && group[0] != '\0') {
        struct group *gr;
        errno = 0;
        if ((gr = getgrnam(group)) == NULL) {
            log_error("[server] group: no group \"%s\"%s%s", group,
                      errno ? ": " : "", errno ? strerror(errno) : "");
            return -1;
        }
        gid = gr->gr_gid;
    }
    if (getuid() == pw->pw_uid && geteuid() == pw->pw_uid &&
        getgid() == gid)
        return 0;               /* already that user */
    if (setgroups(1, &gid) == -1 || setgid(gid) == -1 ||
        setuid(pw->pw_uid) == -1) {
        log_error("cannot switch to user %s (uid %u, gid %u): %s", user,
                  (unsigned)pw->pw_uid, (unsigned)gid, strerror(errno));
        return -1;
    }
    if (pw->pw_uid != 0 && (setuid(0) != -1 || seteuid(0) != -1)) {
        log_error("privileges could be regained after switching to %s",
                  user);
        return -1;
    }
    log_info("running as user %s (uid %u, gid %u)", user,
             (unsigned)pw->pw_uid, (unsigned)gid);
    return 0;
}

/* What a reload cannot change on a running process: said out loud, with
 * the old and new values, instead of being dropped silently. */
static void
warn_not_reloadable(const struct config *old, const struct config *cfg)
{
    int same = old->nlisten == cfg->nlisten;

    for (size_t i = 0; same && i < cfg->nlisten; i++)
        same = strcmp(old->listen[i].text, cfg->listen[i].text) == 0;
    if (!same) {
        char was[512] = "", now[512] = "";
        for (size_t i = 0; i < old->nlisten; i++)
            snprintf(was + strlen(was), sizeof was - strlen(was), "%s%s",
                     i ? " " : "", old->listen[i].text);
        for (size_t i = 0; i < cfg->nlisten; i++)
            snprintf(now + strlen(now), sizeof now - strlen(now), "%s%s",
                     i ? " " : "", cfg->listen[i].text);
        log_warn("reload: [server] listen changed (%s -> %s) but the "
                 "listening sockets are kept: restart wsguard to apply it",
                 was, now);
    }
    if (old->workers != cfg->workers)
        log_warn("reload: [server] workers changed (%u -> %u): restart "
                 "wsguard to apply it", old->workers, cfg->workers);
#define STR_CHANGED(a, b) (strcmp((a) ? (a) : "", (b) ? (b) : "") != 0)
    if (STR_CHANGED(old->user, cfg->user) || STR_CHANGED(old->group,
                                                        cfg->group))
        log_warn("reload: [server] user/group changed: restart wsguard "
                 "to apply it");
    if (STR_CHANGED(old->admin_listen, cfg->admin_listen))
        log_warn("reload: [admin] listen changed (%s -> %s): restart "
                 "wsguard to apply it",
                 old->admin_listen ? old->admin_listen : "off",
                 cfg->admin_listen ? cfg->admin_listen : "off");
    if (STR_CHANGED(old->cluster_redis, cfg->cluster_redis) ||
        STR_CHANGED(old->cluster_key_prefix, cfg->cluster_key_prefix) ||
        STR_CHANGED(old->cluster_password_file,
                    cfg->cluster_password_file) ||
        STR_CHANGED(old->cluster_ca_file, cfg->cluster_ca_file) ||
        old->cluster_fail_closed != cfg->cluster_fail_closed ||
        old->cluster_lease_ms != cfg->cluster_lease_ms ||
        old->cluster_timeout_ms != cfg->cluster_timeout_ms ||
        old->cluster_revoke_ttl_ms != cfg->cluster_revoke_ttl_ms)
        log_warn("reload: [cluster] changed: restart wsguard to apply it "
                 "(the running process keeps its Redis settings)");
#undef STR_CHANGED
}

static struct ev_loop *main_loop;
static ev_async workers_done;
static atomic_uint workers_left;
static int draining;
static struct config *running;  /* the configuration in force */

/* A worker thread ends (after its drain): wake the main loop. */
static void
on_worker_exit(void)
{
    atomic_fetch_sub(&workers_left, 1);
    ev_async_send(main_loop, &workers_done);
}

static void
on_workers_done(struct ev_loop *loop, ev_async *a, int revents)
{
    if (atomic_load(&workers_left) == 0)
        ev_break(loop, EVBREAK_ALL);
}

static void
on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    if (w->signum == SIGUSR1) {
        if (log_reopen() != 0)
            log_error("SIGUSR1: cannot open the access log %s again: %s",
                      running->access_log, strerror(errno));
        else
            log_info("SIGUSR1: access log opened again");
        return;
    }
    if (w->signum == SIGHUP) {
        int errors = 0;
        struct config *cfg = config_load(config_source(), environ,
                                         log_err_cb, &errors);
        if (cfg == NULL) {
            char why[64];
            log_error("reload failed (%d errors): keeping the running "
                      "configuration", errors);
            snprintf(why, sizeof why, "%d configuration error%s (see the "
                     "error log)", errors, errors == 1 ? "" : "s");
            stats_add(&stats_reloads[0], 1);
            admin_reload_failed(why);
            return;
        }
        char err[512];
        struct config *keep = config_ref(cfg);
        struct runtime *rt = runtime_new(cfg, err, sizeof err);
        if (rt == NULL) {
            log_error("reload failed: %s: keeping the running "
                      "configuration", err);
            stats_add(&stats_reloads[0], 1);
            admin_reload_failed(err);
            config_unref(keep);
            return;
        }
        warn_not_reloadable(running, keep);
        if (log_setup(keep->log_level, keep->log_json, keep->access_log))
            log_error("reload: cannot open access log %s: %s (the old one "
                      "stays)", keep->access_log, strerror(errno));
        config_unsupported(keep, warn_cb, NULL);
        warn_unsafe(keep);
        for (unsigned i = 0; i < nworkers; i++)
            worker_set_runtime(&workers[i], rt);
        admin_reloaded(rt);
        runtime_unref(rt);
        config_unref(running);
        running = keep;
        stats_add(&stats_reloads[1], 1);
        log_info("configuration reloaded");
        return;
    }
    if (draining) {
        /* A second SIGTERM/SIGINT: the operator does not want to wait. */
        log_warn("signal %d again: exiting now, dropping live sessions",
                 w->signum);
        _exit(1);
    }
    draining = 1;
    log_info("signal %d: draining", w->signum);
    /* /readyz turns 503 before any listener closes, so that a load
     * balancer polling it stops sending first. */
    admin_draining();
    for (unsigned i = 0; i < nworkers; i++)
        worker_drain(&workers[i]);
}

/*
 * --healthcheck: the configuration is loaded as a start would load it
 * (-c, the default file or the environment alone), but with [tls]
 * enabled forced off, so that certificates and keys are not read: the
 * probe needs only [admin] listen, and runs as whatever user the
 * container or unit gives it, which need not be able to read the key.
 * One line on stderr when it fails.
 */
static int
healthcheck(void)
{
    size_t n = 0;
    for (char **e = environ; *e; e++)
        n++;
    char **env = calloc(n + 2, sizeof *env);
    if (env == NULL)
        return 1;
    n = 0;
    for (char **e = environ; *e; e++)
        if (strncmp(*e, "WSGUARD_TLS_ENABLED=", 20) != 0)
            env[n++] = *e;
    env[n++] = "WSGUARD_TLS_ENABLED=no";
    env[n] = NULL;

    char first[512] = "";
    struct config *cfg = config_load(config_source(), env, first_err,
                                     first);
    free(env);
    if (cfg == NULL) {
        fprintf(stderr, "wsguard --healthcheck: %s\n",
                first[0] ? first : "cannot load the configuration");
        return 1;
    }
    int rc = admin_healthcheck(cfg, HEALTHCHECK_TIMEOUT);
    config_unref(cfg);
    return rc;
}

/* /readyz with [cluster] on_error = closed: not ready while a worker
 * cannot reach Redis (its new connections would be refused). */
static int
cluster_ready(char *why, size_t cap)
{
    for (unsigned i = 0; i < nworkers; i++)
        if (!stats_get(&workers[i].st.cluster_up)) {
            snprintf(why, cap, "Redis is unreachable (on_error = closed)");
            return 0;
        }
    return 1;
}

/* A start that fails before any thread runs: release what was built
 * (the sockets close with the process), so that a sanitizer build sees
 * no leak, and return the exit status. */
static int
start_failed(struct runtime *rt, struct config *keep)
{
    admin_stop();
    for (unsigned i = 0; workers != NULL && i < nworkers; i++) {
        free(workers[i].lfds);
        free(workers[i].accept_w);
    }
    free(workers);
    workers = NULL;
    iplimit_free(runtime_iplimit);
    runtime_iplimit = NULL;
    runtime_unref(rt);
    config_unref(keep);
    cluster_free(cluster);
    cluster = NULL;
    log_stop();
    return 1;
}

int
main(int argc, char **argv)
{
    int check = 0, probe = 0, opt;
    static const struct option longopts[] = {
        { "healthcheck", no_argument, NULL, 'H' },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };

    while ((opt = getopt_long(argc, argv, "c:tVh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'H':
            probe = 1;
            break;
        case 'c':
            config_path = optarg;
            config_given = 1;
            break;
        case 't':
            check = 1;
            break;
        case 'V':
            printf("wsguard " WSGUARD_VERSION "\n");
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 1;
    }
    (void)signal(SIGPIPE, SIG_IGN);
    /* Configuration validation loads the [tls] files as the server will. */
    config_set_tls_check(tls_check);
    if (probe)
        return healthcheck();

    int errors = 0;
    if (config_source() == NULL)
        config_path = "(environment)";
    struct config *cfg = config_load(config_source() ? config_path : NULL,
                                     environ, print_err, &errors);
    if (cfg == NULL) {
        fprintf(stderr, "%s: %d error%s\n", config_path, errors,
                errors == 1 ? "" : "s");
        return 1;
    }
    if (log_setup(cfg->log_level, cfg->log_json, cfg->access_log) != 0) {
        fprintf(stderr, "cannot open access log %s: %s\n", cfg->access_log,
                strerror(errno));
        config_unref(cfg);
        return 1;
    }
    struct config *keep = config_ref(cfg);
    char err[512];
    /* The errors name where the value was set (FILE:LINE or the
     * environment variable). */
    struct runtime *rt = runtime_new(cfg, err, sizeof err);
    if (rt == NULL) {
        fprintf(stderr, "%s\n", err);
        config_unref(keep);
        return 1;
    }
    /* Cluster mode: the Redis host resolved, the password file read, the
     * TLS context made; the connections come with the workers. */
    cluster = cluster_new(keep, err, sizeof err);
    if (cluster == NULL && err[0] != '\0') {
        fprintf(stderr, "[cluster] %s\n", err);
        runtime_unref(rt);
        config_unref(keep);
        return 1;
    }
    if (check) {
        /* The same warnings a real start prints. */
        int n = config_unsupported(keep, print_err, NULL);
        warn_unsafe(keep);
        printf("%s: configuration OK%s\n", config_path,
               n ? " (with keys not supported yet, see above)" : "");
        cluster_free(cluster);
        runtime_unref(rt);
        config_unref(keep);
        return 0;
    }
    config_unsupported(keep, warn_cb, NULL);
    warn_unsafe(keep);

    runtime_iplimit = iplimit_new();
    if (runtime_iplimit == NULL) {
        log_error("cannot create the per-IP table (no randomness?)");
        return 1;
    }
    /* Signals wait (blocked, pending) until their watchers run: a
     * supervisor may send one as soon as "listening on" is logged.
     * Threads started meanwhile inherit the mask, so only the main loop
     * ever takes them. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    nworkers = keep->workers ? keep->workers : 1;
    workers = calloc(nworkers, sizeof *workers);
    if (workers == NULL ||
        workers_listen(workers, nworkers, keep, err, sizeof err) != 0) {
        log_error("%s", workers ? err : "out of memory");
        return start_failed(rt, keep);
    }
    if (admin_listen(keep, err, sizeof err) != 0) {
        log_error("%s", err);
        return start_failed(rt, keep);
    }
    /* Every socket is bound and every key read: root is not needed any
     * more (and no thread has started yet). */
    if (drop_privileges(keep) != 0)
        return start_failed(rt, keep);
    running = config_ref(keep);

    main_loop = ev_default_loop(0);
    ev_async_init(&workers_done, on_workers_done);
    ev_async_start(main_loop, &workers_done);
    atomic_init(&workers_left, nworkers);
    worker_exit_hook = on_worker_exit;

    /* From here on no thread writes the log itself: lines go through
     * per-thread buffers to the writer thread. */
    if (log_start() != 0) {
        log_error("cannot start the log writer thread");
        return start_failed(rt, keep);
    }
    if (cluster != NULL && cluster->fail_closed)
        admin_set_ready_check(cluster_ready);
    for (unsigned i = 0; i < nworkers; i++) {
        workers[i].id = i;
        workers[i].cluster = cluster;
        if (worker_start(&workers[i], rt) != 0) {
            log_error("cannot start worker %u", i);
            return 1;
        }
    }
    if (admin_start(workers, nworkers, rt, WSGUARD_VERSION) != 0)
        return 1;
    runtime_unref(rt);
    if (cluster != NULL)
        log_info("cluster mode: Redis %s:%s, replica %s, on_error = %s",
                 cluster->target.host, cluster->target.port,
                 cluster->replica, cluster->fail_closed ? "closed" : "open");
    log_info("wsguard " WSGUARD_VERSION " started: %u worker%s", nworkers,
             nworkers == 1 ? "" : "s");

    struct ev_loop *loop = main_loop;
    ev_signal sig_term, sig_int, sig_hup, sig_usr1;
    ev_signal_init(&sig_term, on_signal, SIGTERM);
    ev_signal_init(&sig_int, on_signal, SIGINT);
    ev_signal_init(&sig_hup, on_signal, SIGHUP);
    ev_signal_init(&sig_usr1, on_signal, SIGUSR1);
    ev_signal_start(loop, &sig_term);
    ev_signal_start(loop, &sig_int);
    ev_signal_start(loop, &sig_hup);
    ev_signal_start(loop, &sig_usr1);
    /* The watchers are in place: signals sent meanwhile arrive now. */
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    ev_run(loop, 0);

    for (unsigned i = 0; i < nworkers; i++)
        worker_join(&workers[i]);
    /* The admin thread reads the workers' counters: stopped before they
     * are freed. */
    admin_stop();
    free(workers);
    cluster_free(cluster);
    iplimit_free(runtime_iplimit);
    config_unref(running);
    config_unref(keep);
    log_info("stopped");
    /* What is still buffered is written out (a reader that does not read
     * is waited for a few seconds, not forever). */
    for (int i = 0; i < 5 && log_stop() != 0; i++)
        ;
    return 0;
}
