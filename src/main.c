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
 *                   old one stays.
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
#include "config.h"
#include "log.h"
#include "netaddr.h"
#include "stats.h"
#include "runtime.h"
#include "worker.h"

#define WSGUARD_VERSION "0.1.0"
#define DEFAULT_CONFIG "/etc/wsguard/wsguard.ini"
#define HEALTHCHECK_TIMEOUT 2.0     /* s, for --healthcheck */

extern char **environ;

static struct worker *workers;
static unsigned nworkers;
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

/* Every unsafe or unusual setting is said out loud at start-up. */
static void
warn_unsafe(const struct config *cfg)
{
    if (!cfg->tls_enabled)
        log_warn("[tls] enabled = no: serving plain ws:// (only safe "
                 "behind another TLS terminator)");
    if (cfg->global.max_payload == 0)
        log_warn("[limits] max_payload = 0: client messages are unlimited");
    if (cfg->handshake_timeout_ms == 0)
        log_warn("[server] handshake_timeout = 0: slow clients can hold "
                 "connections forever");
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
            log_error("reload: cannot open access log %s", keep->access_log);
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
    signal(SIGPIPE, SIG_IGN);
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
        fprintf(stderr, "cannot open access log %s\n", cfg->access_log);
        config_unref(cfg);
        return 1;
    }
    struct config *keep = config_ref(cfg);
    char err[512];
    struct runtime *rt = runtime_new(cfg, err, sizeof err);
    if (rt == NULL) {
        fprintf(stderr, "%s: %s\n", config_path, err);
        config_unref(keep);
        return 1;
    }
    if (check) {
        /* The same warnings a real start prints. */
        int n = config_unsupported(keep, print_err, NULL);
        warn_unsafe(keep);
        printf("%s: configuration OK%s\n", config_path,
               n ? " (with keys not supported yet, see above)" : "");
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

    /* Workers must not take the signals; the main loop handles them. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    for (unsigned i = 0; i < nworkers; i++) {
        workers[i].id = i;
        if (worker_start(&workers[i], rt) != 0) {
            log_error("cannot start worker %u", i);
            return 1;
        }
    }
    if (admin_start(workers, nworkers, rt, WSGUARD_VERSION) != 0)
        return 1;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    runtime_unref(rt);
    log_info("wsguard " WSGUARD_VERSION " started: %u worker%s", nworkers,
             nworkers == 1 ? "" : "s");

    struct ev_loop *loop = main_loop;
    ev_signal sig_term, sig_int, sig_hup;
    ev_signal_init(&sig_term, on_signal, SIGTERM);
    ev_signal_init(&sig_int, on_signal, SIGINT);
    ev_signal_init(&sig_hup, on_signal, SIGHUP);
    ev_signal_start(loop, &sig_term);
    ev_signal_start(loop, &sig_int);
    ev_signal_start(loop, &sig_hup);
    ev_run(loop, 0);

    for (unsigned i = 0; i < nworkers; i++)
        worker_join(&workers[i]);
    /* The admin thread reads the workers' counters: stopped before they
     * are freed. */
    admin_stop();
    free(workers);
    iplimit_free(runtime_iplimit);
    config_unref(running);
    config_unref(keep);
    log_info("stopped");
    return 0;
}
