/*
 * config.h - the configuration snapshot.
 *
 * A struct config is built once by config_load() (file, then WSGUARD_*
 * environment overrides, then validation) and is immutable afterwards.
 * Workers take a reference per connection (config_ref/config_unref), so a
 * SIGHUP reload swaps the snapshot without touching live sessions.
 * config_ref/config_unref may be called from any thread; everything else
 * is called from the main thread only.
 *
 * Every configuration key exists in the option table in
 * config.c. Keys whose feature is not implemented yet are parsed, stored
 * and reported by config_unsupported() so that -t and start-up can say
 * "not supported yet" instead of silently ignoring them.
 */
#ifndef WSGUARD_CONFIG_H
#define WSGUARD_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };
enum client_verify { VERIFY_OFF = 0, VERIFY_OPTIONAL, VERIFY_REQUIRED };

/* A list value: space-separated items, accumulated over repeated keys. */
struct strlist {
    char **v;       /* owned; each item NUL-terminated */
    size_t n;
};

struct listen_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[64];              /* as written, e.g. "[::]:8443" */
};

/* One ws:// backend from [backend] url (or a route's backend). */
struct backend_addr {
    char *url;                  /* as written */
    char *host;                 /* host name or address, no brackets */
    char *port;                 /* decimal, default "80" */
    char *host_header;          /* value of the Host header we send */
    char *path_prefix;          /* "" or "/x" (no trailing slash): prefixed
                                   to the client's request target */
};

/*
 * The keys a [route PREFIX] section may override: [backend], [origin],
 * [jwt] and [limits]. The global one is config.global; every route gets a
 * full copy with its own overrides applied (list keys set in a route
 * replace the global list).
 */
struct policy {
    /* [backend] */
    struct backend_addr *backends;
    size_t nbackends;
    uint64_t connect_timeout_ms;
    bool forwarded_headers;
    /* [origin] */
    struct strlist origin_allow;
    struct strlist origin_allow_pattern;
    bool origin_allow_missing;
    /* [jwt] */
    bool jwt_enabled;
    struct strlist jwt_algorithms;
    char *jwt_secret;
    char *jwt_secret_file;
    char *jwt_public_key_file;
    char *jwt_jwks_file;
    char *jwt_issuer;
    struct strlist jwt_audience;
    uint64_t jwt_leeway_ms;
    bool jwt_require_exp;
    uint64_t jwt_max_token_bytes;
    struct strlist jwt_sources;
    struct strlist jwt_forward_claims;
    bool jwt_forward_token;
    bool jwt_close_on_expiry;
    /* [limits] */
    uint64_t max_connections_per_ip;
    uint64_t ipv6_prefix;
    uint64_t max_payload;           /* bytes, 0 = unlimited */
    uint64_t max_payload_backend;   /* bytes, 0 = unlimited */
    uint64_t messages_per_second;
    uint64_t message_burst;
    uint64_t bytes_per_second;
    uint64_t control_frames_per_second;
    /* permessage-deflate (RFC 7692), terminated at wsguard */
    bool deflate;
    uint64_t deflate_window_bits;   /* 8..15, both directions */
    uint64_t deflate_level;         /* zlib level 0..9 */
    uint64_t deflate_min_size;      /* bytes: smaller backend messages go
                                       uncompressed */
    uint64_t max_inflate_ratio;     /* inflated/compressed; 0 = no limit */
};

struct route {
    char *prefix;               /* path prefix, from "[route /chat]" */
    struct policy p;
};

struct config {
    atomic_int refs;
    char *path;                 /* file it was loaded from, or NULL */

    /* [server] */
    struct listen_addr *listen;
    size_t nlisten;
    unsigned workers;           /* resolved: "auto" = CPU count */
    uint64_t max_connections;
    uint64_t handshake_timeout_ms;
    uint64_t max_header_bytes;
    uint64_t idle_timeout_ms;
    uint64_t max_lifetime_ms;
    uint64_t ping_interval_ms;
    uint64_t pong_timeout_ms;
    uint64_t close_timeout_ms;
    uint64_t drain_timeout_ms;
    uint64_t write_timeout_ms;  /* output to a side blocked this long: cut */
    char *user;                 /* NULL or "" = keep */
    char *group;                /* NULL or "": the user's own group */
    bool proxy_protocol;
    struct strlist trusted_proxies;
    bool allow_underscore_headers;  /* forward client headers with '_' */
    bool shared_listen;         /* another process may listen there too */

    /* [tls] */
    bool tls_enabled;
    char *tls_cert;
    char *tls_key;
    struct strlist tls_extra_certs;
    int tls_min_version;        /* TLS1_2_VERSION or TLS1_3_VERSION */
    char *tls_ciphers;          /* NULL = default */
    char *tls_ciphersuites;     /* NULL = default */
    char *tls_client_ca;        /* PEM trust anchors for client certs */
    enum client_verify tls_client_verify;
    char *tls_forward_client_cert;  /* header name for the verified client
                                   certificate's identity, or NULL */

    /* [log] */
    enum log_level log_level;
    bool log_json;              /* format = json */
    char *access_log;           /* "stdout", "stderr", "off" or a path */

    /* [admin] */
    char *admin_listen;         /* NULL or "" = off */
    struct strlist admin_allow; /* peers allowed on it (CIDRs) */

    /* [cluster] */
    char *cluster_redis;
    char *cluster_key_prefix;
    bool cluster_fail_closed;   /* on_error = closed */
    uint64_t cluster_lease_ms;
    uint64_t cluster_revoke_ttl_ms;
    uint64_t cluster_timeout_ms;        /* per Redis command */
    char *cluster_password_file;
    char *cluster_ca_file;              /* rediss:// trust anchors */

    struct policy global;
    struct route *routes;       /* sorted by prefix length, longest first */
    size_t nroutes;
};

/*
 * Load path (NULL = defaults only), apply WSGUARD_<SECTION>_<KEY>
 * environment overrides from envp (NULL-terminated, usually environ), and
 * validate. On success returns a config with refs = 1. On failure returns
 * NULL after calling err(line, ctx) once per error, each already formatted
 * as "FILE:LINE: message" (environment errors as "env WSGUARD_X: message").
 * Errors are collected: every problem is reported, not only the first.
 * Validation includes that cert/key files are readable when tls is on,
 * and that they load when a TLS check is installed (below).
 */
typedef void (*config_err_fn)(const char *msg, void *ctx);

/* A problem with the value of [tls] key, found by a check outside this
 * module; the loader blames it on the key's line. */
typedef void (*config_key_report_fn)(const char *key, const char *msg,
                                     void *arg);

/* The check of the [tls] files (chains, keys, CA, SNI names, ciphers)
 * that validation runs when TLS is on. It is tls_check() (tls.h), which
 * sits above this module (it reads the configuration), so the program
 * installs it (main.c, the tests) instead of config.c calling up. Without
 * one the files are only checked to be readable. */
typedef int (*config_tls_check_fn)(const struct config *cfg,
                                   config_key_report_fn report, void *arg);
void config_set_tls_check(config_tls_check_fn fn);
struct config *config_load(const char *path, char *const *envp,
                           config_err_fn err, void *ctx);

/*
 * For each key that was set (file or environment) but whose feature is
 * not implemented yet, call warn("FILE:LINE: [section] key: not supported
 * yet") once. Returns how many there were.
 */
int config_unsupported(const struct config *cfg, config_err_fn warn,
                       void *ctx);

/* Where the value of [section] key of policy p (the global one or a
 * route's) came from, for a message about it: "FILE:LINE" (the line that
 * set it), "env WSGUARD_SECTION_KEY", or "FILE" for a built-in default. */
void config_where(const struct config *cfg, const struct policy *p,
                  const char *section, const char *key, char *buf,
                  size_t len);

struct config *config_ref(struct config *cfg);
void config_unref(struct config *cfg);

/* The policy for a request path: longest matching route prefix, or the
 * global policy when no route is defined. Returns NULL when routes exist
 * but none matches (the caller answers 404). */
const struct policy *config_route(const struct config *cfg,
                                  const char *path, size_t len,
                                  const char **route_name);

/* The same as an index: 0 the global policy (no routes defined), 1 + i
 * cfg->routes[i], -1 none; config_policy() turns it into the policy and
 * the route's name ("" for the global one). */
int config_route_index(const struct config *cfg, const char *path,
                       size_t len);
const struct policy *config_policy(const struct config *cfg, int index,
                                   const char **route_name);

/*
 * Added for tests and fuzzing (not used by the server): like config_load()
 * but the INI text comes from the NUL-terminated string text; name is used
 * in messages in place of the file name, and cfg->path stays NULL.
 */
struct config *config_load_string(const char *name, const char *text,
                                  char *const *envp, config_err_fn err,
                                  void *ctx);

#endif
