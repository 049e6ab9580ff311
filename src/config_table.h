/*
 * config_table.h - the option table (private to config.c and its tests).
 *
 * One row per configuration key. The same rows drive the file
 * parser, the WSGUARD_<SECTION>_<KEY> environment overrides, the defaults
 * (the default is written in file syntax and parsed like a file value, so
 * the documented default and the built-in one cannot drift apart), deep
 * copy and free, config_unsupported(), and the test that every key is in
 * docs/configuration.md and conf/wsguard.ini.
 *
 * To implement a feature, clear OPT_UNSUPPORTED on its rows.
 */
#ifndef WSGUARD_CONFIG_TABLE_H
#define WSGUARD_CONFIG_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/tls1.h>

#include "config.h"
#include "netaddr.h"
#include "origin.h"

enum opt_type {
    OPT_BOOL = 0,       /* bool */
    OPT_DURATION,       /* uint64_t, milliseconds */
    OPT_SIZE,           /* uint64_t, bytes */
    OPT_UINT,           /* uint64_t */
    OPT_STRING,         /* char *, NULL when empty */
    OPT_LIST,           /* struct strlist, space-separated, accumulates */
    OPT_ENUM,           /* int (or an enum) from opt_enum values */
    OPT_ENUM_BOOL,      /* bool from opt_enum values 0/1 */
    OPT_LISTEN,         /* config.listen/nlisten, accumulates */
    OPT_BACKEND,        /* policy.backends/nbackends, accumulates */
    OPT_WORKERS,        /* unsigned; "auto" = online CPUs */
};

/* The field lives in struct policy (the global one or a route's), so the
 * key may also appear in a [route PREFIX] section. */
#define OPT_POLICY      0x1u
/* Parsed and stored, but the feature is not implemented yet: setting it
 * is reported by config_unsupported(). */
#define OPT_UNSUPPORTED 0x2u

struct opt_enum {
    const char *name;
    int value;
};

/* Extra check of a string value or of each list item: 0 = fine, -1 with
 * a message in err. */
typedef int (*opt_check_fn)(const char *value, char *err, size_t errlen);

struct config_option {
    const char *section;
    const char *key;
    enum opt_type type;
    size_t offset;              /* in struct config, or struct policy when
                                   OPT_POLICY */
    uint64_t min, max;          /* for duration (ms), size, uint */
    const char *def;            /* default in file syntax; NULL = empty */
    unsigned flags;
    const struct opt_enum *enums;   /* OPT_ENUM, OPT_ENUM_BOOL */
    opt_check_fn check;         /* OPT_STRING, OPT_LIST; may be NULL */
    const char *alias;          /* other key accepted in a route, or NULL */
};

/* Sections other than "route PREFIX". */
struct config_section {
    const char *name;
    unsigned flags;             /* OPT_POLICY: route-overridable keys */
};

int config_check_algorithm(const char *v, char *err, size_t errlen);
int config_check_origin(const char *v, char *err, size_t errlen);
int config_check_source(const char *v, char *err, size_t errlen);
int config_check_claim(const char *v, char *err, size_t errlen);
int config_check_listen(const char *v, char *err, size_t errlen);
int config_check_access_log(const char *v, char *err, size_t errlen);
int config_check_redis(const char *v, char *err, size_t errlen);
int config_check_key_prefix(const char *v, char *err, size_t errlen);
int config_check_header(const char *v, char *err, size_t errlen);

/* Route sections themselves are not implemented yet. */
#define CONFIG_ROUTE_FLAGS 0u

static const struct config_section config_sections[] = {
    { "server", 0 },
    { "tls", 0 },
    { "backend", OPT_POLICY },
    { "origin", OPT_POLICY },
    { "jwt", OPT_POLICY },
    { "limits", OPT_POLICY },
    { "log", 0 },
    { "admin", 0 },
    { "cluster", 0 },
};
#define CONFIG_NSECTIONS (sizeof config_sections / sizeof config_sections[0])

static const struct opt_enum opt_tls_versions[] = {
    { "TLSv1.2", TLS1_2_VERSION },
    { "TLSv1.3", TLS1_3_VERSION },
    { NULL, 0 },
};
static const struct opt_enum opt_client_verify[] = {
    { "off", VERIFY_OFF },
    { "optional", VERIFY_OPTIONAL },
    { "required", VERIFY_REQUIRED },
    { NULL, 0 },
};
static const struct opt_enum opt_log_levels[] = {
    { "error", LOG_ERROR },
    { "warn", LOG_WARN },
    { "info", LOG_INFO },
    { "debug", LOG_DEBUG },
    { NULL, 0 },
};
static const struct opt_enum opt_log_formats[] = {
    { "json", 1 },
    { "text", 0 },
    { NULL, 0 },
};
static const struct opt_enum opt_on_error[] = {
    { "open", 0 },
    { "closed", 1 },
    { NULL, 0 },
};

#define MS_SEC  1000ull
#define MS_MIN  (60 * MS_SEC)
#define MS_HOUR (60 * MS_MIN)
#define MS_DAY  (24 * MS_HOUR)
#define KIB     1024ull
#define MIB     (1024 * KIB)

#define C(f) offsetof(struct config, f)
#define P(f) offsetof(struct policy, f)
#define U64 UINT64_MAX
#define UN OPT_UNSUPPORTED
#define PO OPT_POLICY

static const struct config_option config_options[] = {
    /* section  key  type  offset  min  max  default  flags  enums  check */
    { "server", "listen", OPT_LISTEN, C(listen), 0, 0, "0.0.0.0:8443",
      0, NULL, NULL, NULL },
    { "server", "workers", OPT_WORKERS, C(workers), 1, 256, "auto",
      0, NULL, NULL, NULL },
    { "server", "max_connections", OPT_UINT, C(max_connections),
      1, 10000000, "100000", 0, NULL, NULL, NULL },
    { "server", "handshake_timeout", OPT_DURATION, C(handshake_timeout_ms),
      1, MS_HOUR, "10s", 0, NULL, NULL, NULL },
    { "server", "max_header_bytes", OPT_SIZE, C(max_header_bytes),
      256, MIB, "8k", 0, NULL, NULL, NULL },
    { "server", "idle_timeout", OPT_DURATION, C(idle_timeout_ms),
      0, 30 * MS_DAY, "5m", 0, NULL, NULL, NULL },
    { "server", "max_lifetime", OPT_DURATION, C(max_lifetime_ms),
      0, 365 * MS_DAY, "0", 0, NULL, NULL, NULL },
    { "server", "ping_interval", OPT_DURATION, C(ping_interval_ms),
      0, MS_DAY, "30s", 0, NULL, NULL, NULL },
    { "server", "pong_timeout", OPT_DURATION, C(pong_timeout_ms),
      0, MS_HOUR, "10s", 0, NULL, NULL, NULL },
    { "server", "close_timeout", OPT_DURATION, C(close_timeout_ms),
      0, 5 * MS_MIN, "5s", 0, NULL, NULL, NULL },
    { "server", "drain_timeout", OPT_DURATION, C(drain_timeout_ms),
      0, MS_DAY, "30s", 0, NULL, NULL, NULL },
    { "server", "write_timeout", OPT_DURATION, C(write_timeout_ms),
      0, MS_HOUR, "30s", 0, NULL, NULL, NULL },
    { "server", "user", OPT_STRING, C(user), 0, 0, NULL,
      0, NULL, NULL, NULL },
    { "server", "group", OPT_STRING, C(group), 0, 0, NULL,
      0, NULL, NULL, NULL },
    { "server", "proxy_protocol", OPT_BOOL, C(proxy_protocol), 0, 0, "off",
      0, NULL, NULL, NULL },
    { "server", "trusted_proxies", OPT_LIST, C(trusted_proxies), 0, 0, NULL,
      0, NULL, cidr_check, NULL },
    { "server", "shared_listen", OPT_BOOL, C(shared_listen), 0, 0, "no",
      0, NULL, NULL, NULL },
    { "server", "allow_underscore_headers", OPT_BOOL,
      C(allow_underscore_headers), 0, 0, "no", 0, NULL, NULL, NULL },

    { "tls", "enabled", OPT_BOOL, C(tls_enabled), 0, 0, "yes",
      0, NULL, NULL, NULL },
    { "tls", "cert", OPT_STRING, C(tls_cert), 0, 0, "conf/certs/dev.crt",
      0, NULL, NULL, NULL },
    { "tls", "key", OPT_STRING, C(tls_key), 0, 0, "conf/certs/dev.key",
      0, NULL, NULL, NULL },
    { "tls", "extra_certs", OPT_LIST, C(tls_extra_certs), 0, 0, NULL,
      0, NULL, NULL, NULL },
    { "tls", "min_version", OPT_ENUM, C(tls_min_version), 0, 0, "TLSv1.2",
      0, opt_tls_versions, NULL, NULL },
    { "tls", "ciphers", OPT_STRING, C(tls_ciphers), 0, 0, NULL,
      0, NULL, NULL, NULL },
    { "tls", "ciphersuites", OPT_STRING, C(tls_ciphersuites), 0, 0, NULL,
      0, NULL, NULL, NULL },
    { "tls", "client_ca", OPT_STRING, C(tls_client_ca), 0, 0, NULL,
      0, NULL, NULL, NULL },
    { "tls", "client_verify", OPT_ENUM, C(tls_client_verify), 0, 0, "off",
      0, opt_client_verify, NULL, NULL },
    { "tls", "forward_client_cert", OPT_STRING, C(tls_forward_client_cert),
      0, 0, NULL, 0, NULL, config_check_header, NULL },

    { "backend", "url", OPT_BACKEND, P(backends), 0, 0,
      "ws://127.0.0.1:8080", PO, NULL, NULL, "backend" },
    { "backend", "connect_timeout", OPT_DURATION, P(connect_timeout_ms),
      1, MS_HOUR, "5s", PO, NULL, NULL, NULL },
    { "backend", "forwarded_headers", OPT_BOOL, P(forwarded_headers),
      0, 0, "yes", PO, NULL, NULL, NULL },

    { "origin", "allow", OPT_LIST, P(origin_allow), 0, 0, NULL,
      PO, NULL, config_check_origin, NULL },
    { "origin", "allow_pattern", OPT_LIST, P(origin_allow_pattern),
      0, 0, NULL, PO, NULL, origin_pattern_check, NULL },
    { "origin", "allow_missing", OPT_BOOL, P(origin_allow_missing),
      0, 0, "no", PO, NULL, NULL, NULL },

    { "jwt", "enabled", OPT_BOOL, P(jwt_enabled), 0, 0, "no",
      PO, NULL, NULL, NULL },
    { "jwt", "algorithms", OPT_LIST, P(jwt_algorithms), 0, 0,
      "RS256 ES256", PO, NULL, config_check_algorithm, NULL },
    { "jwt", "secret", OPT_STRING, P(jwt_secret), 0, 0, NULL,
      PO, NULL, NULL, NULL },
    { "jwt", "secret_file", OPT_STRING, P(jwt_secret_file), 0, 0, NULL,
      PO, NULL, NULL, NULL },
    { "jwt", "public_key_file", OPT_STRING, P(jwt_public_key_file),
      0, 0, NULL, PO, NULL, NULL, NULL },
    { "jwt", "jwks_file", OPT_STRING, P(jwt_jwks_file), 0, 0, NULL,
      PO, NULL, NULL, NULL },
    { "jwt", "issuer", OPT_STRING, P(jwt_issuer), 0, 0, NULL,
      PO, NULL, NULL, NULL },
    { "jwt", "audience", OPT_LIST, P(jwt_audience), 0, 0, NULL,
      PO, NULL, NULL, NULL },
    { "jwt", "leeway", OPT_DURATION, P(jwt_leeway_ms), 0, MS_DAY, "30s",
      PO, NULL, NULL, NULL },
    { "jwt", "require_exp", OPT_BOOL, P(jwt_require_exp), 0, 0, "yes",
      PO, NULL, NULL, NULL },
    { "jwt", "max_token_bytes", OPT_SIZE, P(jwt_max_token_bytes),
      16, MIB, "8k", PO, NULL, NULL, NULL },
    { "jwt", "sources", OPT_LIST, P(jwt_sources), 0, 0,
      "query:access_token header:authorization cookie:access_token",
      PO, NULL, config_check_source, NULL },
    { "jwt", "forward_claims", OPT_LIST, P(jwt_forward_claims), 0, 0,
      "sub:X-User-Id", PO, NULL, config_check_claim, NULL },
    { "jwt", "forward_token", OPT_BOOL, P(jwt_forward_token), 0, 0, "no",
      PO, NULL, NULL, NULL },
    { "jwt", "close_on_expiry", OPT_BOOL, P(jwt_close_on_expiry),
      0, 0, "yes", PO, NULL, NULL, NULL },

    { "limits", "max_connections_per_ip", OPT_UINT,
      P(max_connections_per_ip), 0, U64, "0", PO, NULL, NULL, NULL },
    { "limits", "ipv6_prefix", OPT_UINT, P(ipv6_prefix), 0, 128, "64",
      PO, NULL, NULL, NULL },
    { "limits", "max_payload", OPT_SIZE, P(max_payload), 0, U64, "1m",
      PO, NULL, NULL, NULL },
    { "limits", "max_payload_backend", OPT_SIZE, P(max_payload_backend),
      0, U64, "0", PO, NULL, NULL, NULL },
    { "limits", "messages_per_second", OPT_UINT, P(messages_per_second),
      0, U64, "0", PO, NULL, NULL, NULL },
    { "limits", "message_burst", OPT_UINT, P(message_burst), 0, U64, "0",
      PO, NULL, NULL, NULL },
    { "limits", "bytes_per_second", OPT_SIZE, P(bytes_per_second),
      0, U64, "0", PO, NULL, NULL, NULL },
    { "limits", "control_frames_per_second", OPT_UINT,
      P(control_frames_per_second), 0, U64, "20", PO, NULL, NULL,
      NULL },
    { "limits", "deflate", OPT_BOOL, P(deflate), 0, 0, "on", PO, NULL,
      NULL, NULL },
    { "limits", "deflate_window_bits", OPT_UINT, P(deflate_window_bits),
      8, 15, "12", PO, NULL, NULL, NULL },
    { "limits", "deflate_level", OPT_UINT, P(deflate_level), 0, 9, "1",
      PO, NULL, NULL, NULL },
    { "limits", "deflate_min_size", OPT_SIZE, P(deflate_min_size), 0,
      16777216, "256", PO, NULL, NULL, NULL },
    { "limits", "max_inflate_ratio", OPT_UINT, P(max_inflate_ratio), 0,
      100000, "100", PO, NULL, NULL, NULL },

    { "log", "level", OPT_ENUM, C(log_level), 0, 0, "info",
      0, opt_log_levels, NULL, NULL },
    { "log", "format", OPT_ENUM_BOOL, C(log_json), 0, 0, "json",
      0, opt_log_formats, NULL, NULL },
    { "log", "access_log", OPT_STRING, C(access_log), 0, 0, "stdout",
      0, NULL, config_check_access_log, NULL },

    { "admin", "listen", OPT_STRING, C(admin_listen), 0, 0,
      "127.0.0.1:9090", 0, NULL, config_check_listen, NULL },
    { "admin", "allow", OPT_LIST, C(admin_allow), 0, 0,
      "127.0.0.1/32 ::1/128", 0, NULL, cidr_check, NULL },

    { "cluster", "redis", OPT_STRING, C(cluster_redis), 0, 0, NULL,
      0, NULL, config_check_redis, NULL },
    { "cluster", "key_prefix", OPT_STRING, C(cluster_key_prefix), 0, 0,
      "wsguard:", 0, NULL, config_check_key_prefix, NULL },
    { "cluster", "on_error", OPT_ENUM_BOOL, C(cluster_fail_closed), 0, 0,
      "open", 0, opt_on_error, NULL, NULL },
    { "cluster", "lease", OPT_DURATION, C(cluster_lease_ms),
      3 * MS_SEC, MS_DAY, "30s", 0, NULL, NULL, NULL },
    { "cluster", "revoke_ttl", OPT_DURATION, C(cluster_revoke_ttl_ms),
      MS_SEC, 30 * MS_DAY, "10m", 0, NULL, NULL, NULL },
    { "cluster", "timeout", OPT_DURATION, C(cluster_timeout_ms),
      10, 10 * MS_SEC, "500ms", 0, NULL, NULL, NULL },
    { "cluster", "password_file", OPT_STRING, C(cluster_password_file), 0,
      0, NULL, 0, NULL, NULL, NULL },
    { "cluster", "ca_file", OPT_STRING, C(cluster_ca_file), 0, 0, NULL,
      0, NULL, NULL, NULL },
};
#define CONFIG_NOPTIONS (sizeof config_options / sizeof config_options[0])

#undef C
#undef P
#undef U64
#undef UN
#undef PO

#endif
