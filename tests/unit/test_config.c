/*
 * test_config.c - the configuration loader: defaults, every value type,
 * repeated keys, environment overrides, routes, error collection and
 * format, inih quirks, config_unsupported(), and that every key of the
 * option table is documented in docs/configuration.md and present in
 * conf/wsguard.ini (run from the repository root).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "config.h"
#include "config_table.h"
#include "tls.h"

/* ---- collected messages */

struct msgs {
    char v[64][600];
    size_t n;
};

static void
collect(const char *msg, void *ctx)
{
    struct msgs *m = ctx;

    if (m->n < 64)
        snprintf(m->v[m->n++], sizeof m->v[0], "%s", msg);
}

static bool
has_msg(const struct msgs *m, const char *want)
{
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->v[i], want) == 0)
            return true;
    }
    return false;
}

static void
dump(const struct msgs *m)
{
    for (size_t i = 0; i < m->n; i++)
        print_message("  msg[%zu] = %s\n", i, m->v[i]);
}

#define assert_msg(m, want) do {                                        \
        if (!has_msg((m), (want))) {                                    \
            dump(m);                                                    \
            fail_msg("missing message: %s", (want));                    \
        }                                                               \
    } while (0)

/* A certificate and key, for [tls] cert and key (validation loads them). */
static char tmp_cert[] = "/tmp/wsguard-test-certXXXXXX";
static char env_cert[128], env_key[128];
static char *const no_tls[] = { "WSGUARD_TLS_ENABLED=no", NULL };
static char *tls_env[3];

/* Write a self-signed certificate for san (a subjectAltName value such
 * as "DNS:a.example", or NULL: CN only) signed by certkey, followed by
 * filekey, to a new temporary file whose name goes to path. */
static int
write_pem(char *path, const char *cn, const char *san, EVP_PKEY *certkey,
          EVP_PKEY *filekey)
{
    X509 *x = X509_new();
    X509V3_CTX v3;
    FILE *f;
    int fd = mkstemp(path), ok = 0;

    if (fd == -1 || x == NULL || (f = fdopen(fd, "w")) == NULL)
        return -1;
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, certkey);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    if (san != NULL) {
        X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3,
                                                NID_subject_alt_name, san);
        if (e == NULL)
            goto out;
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    if (X509_sign(x, certkey, EVP_sha256()) > 0 && PEM_write_X509(f, x)
        && PEM_write_PrivateKey(f, filekey, NULL, NULL, 0, NULL, NULL))
        ok = 1;
out:
    fclose(f);
    X509_free(x);
    return ok ? 0 : -1;
}

static int
setup(void **state)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");

    (void)state;
    if (k == NULL || write_pem(tmp_cert, "localhost", "DNS:localhost", k, k))
        return -1;
    EVP_PKEY_free(k);
    snprintf(env_cert, sizeof env_cert, "WSGUARD_TLS_CERT=%s", tmp_cert);
    snprintf(env_key, sizeof env_key, "WSGUARD_TLS_KEY=%s", tmp_cert);
    tls_env[0] = env_cert;
    tls_env[1] = env_key;
    tls_env[2] = NULL;
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    unlink(tmp_cert);
    return 0;
}

/* Load text that must succeed (TLS off unless env says otherwise). */
static struct config *
load_ok(const char *text, char *const *envp)
{
    struct msgs m = { .n = 0 };
    struct config *c = config_load_string("t.ini", text,
                                          envp ? envp : no_tls, collect,
                                          &m);
    if (c == NULL || m.n != 0) {
        dump(&m);
        fail_msg("load failed");
    }
    return c;
}

/* Load text that must fail; messages in *m. */
static void
load_bad(const char *text, char *const *envp, struct msgs *m)
{
    m->n = 0;
    struct config *c = config_load_string("t.ini", text,
                                          envp ? envp : no_tls, collect, m);
    if (c != NULL) {
        config_unref(c);
        fail_msg("load succeeded: %s", text);
    }
    assert_true(m->n > 0);
}

/* ---- defaults */

static void
test_defaults(void **state)
{
    struct config *c = load_ok("", NULL);
    const struct policy *p = &c->global;
    const struct sockaddr_in *sin;

    (void)state;
    assert_null(c->path);
    assert_int_equal(c->nlisten, 1);
    assert_string_equal(c->listen[0].text, "0.0.0.0:8443");
    sin = (const struct sockaddr_in *)&c->listen[0].ss;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 8443);
    assert_int_equal(sin->sin_addr.s_addr, htonl(INADDR_ANY));
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    assert_int_equal(c->workers, cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
    assert_int_equal(c->max_connections, 100000);
    assert_int_equal(c->handshake_timeout_ms, 10000);
    assert_int_equal(c->max_header_bytes, 8192);
    assert_int_equal(c->idle_timeout_ms, 300000);
    assert_int_equal(c->max_lifetime_ms, 0);
    assert_int_equal(c->ping_interval_ms, 30000);
    assert_int_equal(c->pong_timeout_ms, 10000);
    assert_int_equal(c->close_timeout_ms, 5000);
    assert_int_equal(c->drain_timeout_ms, 30000);
    assert_int_equal(c->write_timeout_ms, 30000);
    assert_null(c->user);
    assert_false(c->proxy_protocol);
    assert_int_equal(c->trusted_proxies.n, 0);

    assert_false(c->tls_enabled);           /* from the environment */
    assert_string_equal(c->tls_cert, "conf/certs/dev.crt");
    assert_string_equal(c->tls_key, "conf/certs/dev.key");
    assert_int_equal(c->tls_extra_certs.n, 0);
    assert_int_equal(c->tls_min_version, TLS1_2_VERSION);
    assert_null(c->tls_ciphers);
    assert_null(c->tls_ciphersuites);
    assert_null(c->tls_client_ca);
    assert_int_equal(c->tls_client_verify, VERIFY_OFF);

    assert_int_equal(p->nbackends, 1);
    assert_string_equal(p->backends[0].url, "ws://127.0.0.1:8080");
    assert_string_equal(p->backends[0].host, "127.0.0.1");
    assert_string_equal(p->backends[0].port, "8080");
    assert_string_equal(p->backends[0].host_header, "127.0.0.1:8080");
    assert_string_equal(p->backends[0].path_prefix, "");
    assert_int_equal(p->connect_timeout_ms, 5000);
    assert_true(p->forwarded_headers);
    assert_int_equal(p->origin_allow.n, 0);
    assert_int_equal(p->origin_allow_pattern.n, 0);
    assert_false(p->origin_allow_missing);
    assert_false(p->jwt_enabled);
    assert_int_equal(p->jwt_algorithms.n, 2);
    assert_string_equal(p->jwt_algorithms.v[0], "RS256");
    assert_string_equal(p->jwt_algorithms.v[1], "ES256");
    assert_null(p->jwt_secret);
    assert_null(p->jwt_secret_file);
    assert_null(p->jwt_public_key_file);
    assert_null(p->jwt_jwks_file);
    assert_null(p->jwt_issuer);
    assert_int_equal(p->jwt_audience.n, 0);
    assert_int_equal(p->jwt_leeway_ms, 30000);
    assert_true(p->jwt_require_exp);
    assert_int_equal(p->jwt_max_token_bytes, 8192);
    assert_int_equal(p->jwt_sources.n, 3);
    assert_string_equal(p->jwt_sources.v[0], "query:access_token");
    assert_string_equal(p->jwt_sources.v[1], "header:authorization");
    assert_string_equal(p->jwt_sources.v[2], "cookie:access_token");
    assert_int_equal(p->jwt_forward_claims.n, 1);
    assert_string_equal(p->jwt_forward_claims.v[0], "sub:X-User-Id");
    assert_false(p->jwt_forward_token);
    assert_true(p->jwt_close_on_expiry);
    assert_int_equal(p->max_connections_per_ip, 0);
    assert_int_equal(p->ipv6_prefix, 64);
    assert_int_equal(p->max_payload, 1048576);
    assert_int_equal(p->max_payload_backend, 0);
    assert_int_equal(p->messages_per_second, 0);
    assert_int_equal(p->message_burst, 0);
    assert_int_equal(p->bytes_per_second, 0);
    assert_int_equal(p->control_frames_per_second, 20);

    assert_int_equal(c->log_level, LOG_INFO);
    assert_true(c->log_json);
    assert_string_equal(c->access_log, "stdout");
    assert_string_equal(c->admin_listen, "127.0.0.1:9090");
    assert_null(c->cluster_redis);
    assert_string_equal(c->cluster_key_prefix, "wsguard:");
    assert_false(c->cluster_fail_closed);
    assert_int_equal(c->cluster_lease_ms, 30000);
    assert_int_equal(c->cluster_revoke_ttl_ms, 600000);
    assert_int_equal(c->cluster_timeout_ms, 500);
    assert_null(c->cluster_password_file);
    assert_null(c->cluster_ca_file);
    assert_int_equal(c->nroutes, 0);
    assert_int_equal(atomic_load(&c->refs), 1);
    /* Defaults are not "set": nothing to warn about. */
    assert_int_equal(config_unsupported(c, NULL, NULL), 0);
    config_unref(c);
}

/* ---- values of every type */

static void
test_values(void **state)
{
    struct config *c = load_ok(
        "[server]\n"
        "listen = 127.0.0.1:0 [::1]:8443\n"
        "listen = *:9000\n"
        "workers = 3\n"
        "max_connections = 7\n"
        "handshake_timeout = 250ms\n"
        "max_header_bytes = 16k\n"
        "idle_timeout = 1h\n"
        "max_lifetime = 90\n"
        "[tls]\n"
        "min_version = TLSv1.3\n"
        "ciphers = HIGH:!aNULL\n"
        "[backend]\n"
        "url = ws://app:3000/base/ ws://[::1]/ ws://h.example/a/b\n"
        "forwarded_headers = off\n"
        "[limits]\n"
        "max_payload = 64k\n"
        "max_payload_backend = 1g\n"
        "[log]\n"
        "level = DEBUG\n"
        "format = text\n"
        "access_log = /var/log/wsguard/access.log\n", NULL);
    const struct sockaddr_in6 *s6;
    const struct sockaddr_in *s4;

    (void)state;
    assert_int_equal(c->nlisten, 3);
    assert_string_equal(c->listen[0].text, "127.0.0.1:0");
    s4 = (const struct sockaddr_in *)&c->listen[0].ss;
    assert_int_equal(s4->sin_family, AF_INET);
    assert_int_equal(s4->sin_port, 0);
    assert_int_equal(s4->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    assert_int_equal(c->listen[0].len, sizeof(struct sockaddr_in));
    s6 = (const struct sockaddr_in6 *)&c->listen[1].ss;
    assert_int_equal(s6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(s6->sin6_port), 8443);
    assert_memory_equal(&s6->sin6_addr, &in6addr_loopback,
                        sizeof in6addr_loopback);
    assert_int_equal(c->listen[1].len, sizeof(struct sockaddr_in6));
    s4 = (const struct sockaddr_in *)&c->listen[2].ss;
    assert_int_equal(s4->sin_family, AF_INET);
    assert_int_equal(s4->sin_addr.s_addr, htonl(INADDR_ANY));
    assert_int_equal(ntohs(s4->sin_port), 9000);
    assert_int_equal(c->workers, 3);
    assert_int_equal(c->max_connections, 7);
    assert_int_equal(c->handshake_timeout_ms, 250);
    assert_int_equal(c->max_header_bytes, 16384);
    assert_int_equal(c->idle_timeout_ms, 3600000);
    assert_int_equal(c->max_lifetime_ms, 90000);
    assert_int_equal(c->tls_min_version, TLS1_3_VERSION);
    assert_string_equal(c->tls_ciphers, "HIGH:!aNULL");

    const struct policy *p = &c->global;
    assert_int_equal(p->nbackends, 3);
    assert_string_equal(p->backends[0].url, "ws://app:3000/base/");
    assert_string_equal(p->backends[0].host, "app");
    assert_string_equal(p->backends[0].port, "3000");
    assert_string_equal(p->backends[0].host_header, "app:3000");
    assert_string_equal(p->backends[0].path_prefix, "/base");
    assert_string_equal(p->backends[1].host, "::1");
    assert_string_equal(p->backends[1].port, "80");
    assert_string_equal(p->backends[1].host_header, "[::1]");
    assert_string_equal(p->backends[1].path_prefix, "");
    assert_string_equal(p->backends[2].host_header, "h.example");
    assert_string_equal(p->backends[2].path_prefix, "/a/b");
    assert_false(p->forwarded_headers);
    assert_int_equal(p->max_payload, 65536);
    assert_int_equal(p->max_payload_backend, 1073741824);
    assert_int_equal(c->log_level, LOG_DEBUG);
    assert_false(c->log_json);
    assert_string_equal(c->access_log, "/var/log/wsguard/access.log");
    config_unref(c);
}

/* ---- repeated keys, comments, inih quirks */

static void
test_repeat_and_syntax(void **state)
{
    struct config *c = load_ok(
        "\xef\xbb\xbf; a BOM, then a comment\r\n"
        "# hash comment\r\n"
        "[server]   ; comment after a header\r\n"
        "max_connections = 5\r\n"
        "max_connections = 6   ; last one wins\r\n"
        "  idle_timeout = 2m\r\n"       /* indented: a key, not a
                                           continuation of the line above */
        "\tping_interval=1s\n"
        "drain_timeout: 3s\n"           /* inih also takes ':' */
        "\n"
        "[SERVER]\n"                    /* case-insensitive, reopened */
        "Pong_Timeout = 4s\n"
        "[origin]\n"
        "allow = https://a.example ; comment\n"
        "allow = https://b.example https://c.example\n"
        "allow_pattern = ^https://x;y$\n"   /* no blank before ';' */
        "[jwt]\n"
        "algorithms = HS256\n"          /* replaces the default list */
        "algorithms = EdDSA\n", NULL);
    const struct policy *p = &c->global;

    (void)state;
    assert_int_equal(c->max_connections, 6);
    assert_int_equal(c->idle_timeout_ms, 120000);
    assert_int_equal(c->ping_interval_ms, 1000);
    assert_int_equal(c->drain_timeout_ms, 3000);
    assert_int_equal(c->pong_timeout_ms, 4000);
    assert_int_equal(p->origin_allow.n, 3);
    assert_string_equal(p->origin_allow.v[0], "https://a.example");
    assert_string_equal(p->origin_allow.v[2], "https://c.example");
    assert_int_equal(p->origin_allow_pattern.n, 1);
    assert_string_equal(p->origin_allow_pattern.v[0], "^https://x;y$");
    assert_int_equal(p->jwt_algorithms.n, 2);
    assert_string_equal(p->jwt_algorithms.v[0], "HS256");
    assert_string_equal(p->jwt_algorithms.v[1], "EdDSA");
    config_unref(c);
}

static void
test_long_lines(void **state)
{
    char text[1024];
    struct msgs m;
    struct config *c;

    (void)state;
    /* 199 characters fit, indentation not counted. */
    snprintf(text, sizeof text, "[jwt]\n    issuer = %0*d\n", 199 - 9, 0);
    c = load_ok(text, NULL);
    assert_int_equal(strlen(c->global.jwt_issuer), 190);
    config_unref(c);

    /* 200 do not; the rest of the line is skipped, not a new line. */
    snprintf(text, sizeof text, "[jwt]\nissuer = %0*d\nissuer = x y\n"
             "[server]\nmax_connections = 1\n", 200 - 9, 0);
    load_bad(text, NULL, &m);
    assert_int_equal(m.n, 1);
    assert_msg(&m, "t.ini:2: line too long (max 199 characters)");

    /* An over-long section header: its keys are skipped silently. */
    snprintf(text, sizeof text, "[%0*d]\nfoo = 1\n", 250, 0);
    load_bad(text, NULL, &m);
    assert_int_equal(m.n, 1);
    assert_msg(&m, "t.ini:1: line too long (max 199 characters)");
}

/* ---- error collection and format */

static void
test_errors(void **state)
{
    struct msgs m;

    (void)state;
    load_bad("max_connections = 1\n"
             "[server]\n"
             "max_connections = lots\n"
             "nosuchkey = 1\n"
             "[nosuch]\n"
             "[bogus]\n"
             "whatever = 1\n"
             "[server\n"
             "[tls] junk\n"
             "[server]\n"
             "just some words\n"
             "= 5\n"
             "handshake_timeout = 0\n"
             "idle_timeout = 1.5s\n"
             "max_header_bytes = 99999999999999999999g\n"
             "workers = 0\n"
             "listen = localhost:80\n"
             "listen = ::1:80\n"
             "listen = 1.2.3.4:65536\n"
             "[backend]\n"
             "url = wss://app:443\n"
             "url = http://app\n"
             "url = ws://app:0\n"
             "url = ws://a?b\n"
             "[log]\n"
             "level = verbose\n"
             "access_log =\n"
             "[jwt]\n"
             "algorithms = RS256 none\n"
             "[limits]\n"
             "ipv6_prefix = 129\n"
             "[cluster]\n"
             "redis = http://r:6379\n"
             "redis = redis://\n"
             "key_prefix = a b\n"
             "lease = 1s\n", NULL, &m);
    assert_msg(&m, "t.ini:1: key \"max_connections\" outside of any "
               "section");
    assert_msg(&m, "t.ini:3: [server] max_connections: invalid value "
               "\"lots\" (expected a non-negative integer)");
    assert_msg(&m, "t.ini:4: unknown key \"nosuchkey\" in [server]");
    assert_msg(&m, "t.ini:5: unknown section [nosuch]");
    assert_msg(&m, "t.ini:6: unknown section [bogus]");
    assert_msg(&m, "t.ini:8: malformed section header (missing \"]\")");
    assert_msg(&m, "t.ini:9: unexpected text after section header");
    assert_msg(&m, "t.ini:11: expected \"key = value\"");
    assert_msg(&m, "t.ini:12: missing key name before \"=\"");
    assert_msg(&m, "t.ini:13: [server] handshake_timeout: 0 is out of "
               "range (1ms to 1h)");
    assert_msg(&m, "t.ini:14: [server] idle_timeout: invalid value "
               "\"1.5s\" (expected a duration (e.g. 250ms, 10s, 5m, 1h; "
               "bare number = seconds))");
    assert_msg(&m, "t.ini:16: [server] workers: invalid value \"0\" "
               "(expected auto or 1 to 256)");
    assert_msg(&m, "t.ini:17: [server] listen: invalid address "
               "\"localhost:80\" (host must be a numeric IP address or *)");
    assert_msg(&m, "t.ini:18: [server] listen: invalid address \"::1:80\" "
               "(an IPv6 address needs brackets, e.g. [::]:8443)");
    assert_msg(&m, "t.ini:19: [server] listen: invalid port \"65536\"");
    assert_msg(&m, "t.ini:21: [backend] url: backend must be ws://");
    assert_msg(&m, "t.ini:22: [backend] url: backend must be ws://");
    assert_msg(&m, "t.ini:23: [backend] url: invalid port \"0\"");
    assert_msg(&m, "t.ini:26: [log] level: invalid value \"verbose\" "
               "(expected error | warn | info | debug)");
    assert_msg(&m, "t.ini:27: [log] access_log: must be stdout, stderr, "
               "off or a file path");
    assert_msg(&m, "t.ini:29: [jwt] algorithms: algorithm \"none\" is "
               "never allowed");
    assert_msg(&m, "t.ini:31: [limits] ipv6_prefix: 129 is out of range "
               "(0 to 128)");
    assert_msg(&m, "t.ini:33: [cluster] redis: must be "
               "redis[s]://HOST[:PORT][/DB]");
    assert_msg(&m, "t.ini:34: [cluster] redis: must be "
               "redis[s]://HOST[:PORT][/DB]");
    assert_msg(&m, "t.ini:35: [cluster] key_prefix: no spaces or control "
               "characters");
    assert_msg(&m, "t.ini:36: [cluster] lease: 1s is out of range (3s to "
               "24h)");
    /* Nothing about line 7 (a key of an unknown section). */
    for (size_t i = 0; i < m.n; i++)
        assert_null(strstr(m.v[i], "t.ini:7:"));
    /* Every message is FILE:LINE: ... */
    for (size_t i = 0; i < m.n; i++)
        assert_int_equal(strncmp(m.v[i], "t.ini:", 6), 0);
    assert_int_equal(m.n, 28);
}

static void
test_validation(void **state)
{
    struct msgs m;
    char *const env_nocert[] = { "WSGUARD_TLS_CERT=/nonexistent/c.pem",
                                 NULL };

    (void)state;
    load_bad("[server]\nlisten =\n[backend]\nurl =\n", NULL, &m);
    assert_int_equal(m.n, 2);
    assert_msg(&m, "t.ini:2: [server] listen: no listen address");
    assert_msg(&m, "t.ini:4: [backend] url: no backend");

    /* TLS on: cert from env must be readable, key set in the file. */
    load_bad("[tls]\nkey =\nclient_verify = required\n", env_nocert, &m);
    assert_msg(&m, "env WSGUARD_TLS_CERT: [tls] cert: cannot open "
               "\"/nonexistent/c.pem\": No such file or directory");
    assert_msg(&m, "t.ini:2: [tls] key: required when [tls] enabled = yes");
    assert_msg(&m, "t.ini:3: [tls] client_verify: requires [tls] "
               "client_ca");
    assert_int_equal(m.n, 3);

    /* [origin] entries and patterns, [server] trusted_proxies: checked
     * at load, each with its line (a route's too). */
    load_bad("[origin]\n"
             "allow = https://ok.example null\n"
             "allow_pattern = ^https://(a$\n"
             "[server]\n"
             "trusted_proxies = 10.0.0.0/33\n"
             "[route /r]\n"
             "allow_pattern = (b\n", NULL, &m);
    assert_msg(&m, "t.ini:2: [origin] allow: 'null' is not an origin "
               "(scheme://host[:port])");
    assert_msg(&m, "t.ini:3: [origin] allow_pattern: pattern "
               "'^https://(a$': missing closing parenthesis at offset 12");
    assert_msg(&m, "t.ini:5: [server] trusted_proxies: \"10.0.0.0/33\": "
               "bad prefix length (0-32)");
    assert_msg(&m, "t.ini:7: [origin] allow_pattern: pattern '(b': "
               "missing closing parenthesis at offset 2");
    assert_int_equal(m.n, 4);

    /* With a readable cert and key it loads. */
    config_unref(load_ok("[tls]\nenabled = yes\n", tls_env));

    /* A missing file. */
    m.n = 0;
    assert_null(config_load("/nonexistent/wsguard.ini", no_tls, collect,
                            &m));
    assert_msg(&m, "/nonexistent/wsguard.ini: cannot open: No such file "
               "or directory");
}

/* ---- [tls]: files, SNI names, mTLS, the forwarded identity */

static bool
has_prefix(const struct msgs *m, const char *want)
{
    for (size_t i = 0; i < m->n; i++) {
        if (strncmp(m->v[i], want, strlen(want)) == 0)
            return true;
    }
    return false;
}

#define assert_prefix(m, want) do {                                     \
        if (!has_prefix((m), (want))) {                                 \
            dump(m);                                                    \
            fail_msg("missing message: %s...", (want));                 \
        }                                                               \
    } while (0)

static void
test_tls(void **state)
{
    char a[] = "/tmp/wsguard-test-aXXXXXX", a2[] = "/tmp/wsguard-test-bXXXXXX";
    char bad[] = "/tmp/wsguard-test-cXXXXXX";
    char dflt[] = "/tmp/wsguard-test-dXXXXXX";
    char empty[] = "/tmp/wsguard-test-eXXXXXX";
    char text[2048], want[600];
    EVP_PKEY *k1 = EVP_EC_gen("P-256"), *k2 = EVP_EC_gen("P-256");
    struct msgs m;
    struct config *c;
    int fd;

    (void)state;
    assert_non_null(k1);
    assert_non_null(k2);
    assert_int_equal(write_pem(a, "a.example",
                               "DNS:a.example,DNS:*.b.example", k1, k1), 0);
    assert_int_equal(write_pem(a2, "x", "DNS:A.Example", k2, k2), 0);
    assert_int_equal(write_pem(bad, "c.example", "DNS:c.example", k1, k2),
                     0);
    assert_int_equal(write_pem(dflt, "localhost", NULL, k1, k1), 0);
    fd = mkstemp(empty);
    assert_true(fd != -1);
    close(fd);

    /* A good set: SNI file, mTLS, the header. */
    snprintf(text, sizeof text, "[tls]\nextra_certs = %s\nclient_ca = %s\n"
             "client_verify = required\nforward_client_cert = "
             "X-Client-Cert\n", a, tmp_cert);
    c = load_ok(text, tls_env);
    assert_int_equal(c->tls_extra_certs.n, 1);
    assert_string_equal(c->tls_client_ca, tmp_cert);
    assert_int_equal(c->tls_client_verify, VERIFY_REQUIRED);
    assert_string_equal(c->tls_forward_client_cert, "X-Client-Cert");
    config_unref(c);

    /* Every file problem, on the line of its key. */
    snprintf(text, sizeof text, "[tls]\nextra_certs = %s %s\n"
             "extra_certs = %s\nextra_certs = %s /nonexistent/x.pem\n"
             "client_ca = %s\n", a, a2, bad, dflt, empty);
    load_bad(text, tls_env, &m);
    snprintf(want, sizeof want, "t.ini:4: [tls] extra_certs: \"%s\": "
             "private key does not match the certificate", bad);
    assert_prefix(&m, want);
    /* CN only: the CN is the name; the default certificate has it. */
    snprintf(want, sizeof want, "t.ini:4: [tls] extra_certs: \"%s\": name "
             "\"localhost\" is also served by [tls] cert \"%s\"", dflt,
             tmp_cert);
    assert_msg(&m, want);
    assert_msg(&m, "t.ini:4: [tls] extra_certs: cannot open "
               "\"/nonexistent/x.pem\": No such file or directory");
    /* Names compare without case. */
    snprintf(want, sizeof want, "t.ini:4: [tls] extra_certs: name "
             "\"a.example\" is served by both \"%s\" and \"%s\"", a, a2);
    assert_msg(&m, want);
    snprintf(want, sizeof want, "t.ini:5: [tls] client_ca: \"%s\": ", empty);
    assert_prefix(&m, want);
    assert_int_equal(m.n, 5);

    /* The default pair: a key that does not match, a directory. */
    char *const no_env[] = { NULL };
    snprintf(text, sizeof text, "[tls]\ncert = %s\nkey = %s\n"
             "extra_certs = /tmp\n", tmp_cert, a);
    load_bad(text, no_env, &m);
    snprintf(want, sizeof want, "t.ini:3: [tls] key: \"%s\": private key "
             "does not match certificate \"%s\"", a, tmp_cert);
    assert_prefix(&m, want);
    assert_msg(&m, "t.ini:4: [tls] extra_certs: \"/tmp\": not a regular "
               "file");
    assert_int_equal(m.n, 2);

    /* Bad cipher lists. */
    load_bad("[tls]\nciphers = NOPE\nciphersuites = NOPE\n", tls_env, &m);
    assert_prefix(&m, "t.ini:2: [tls] ciphers: invalid cipher list \"NOPE\"");
    assert_prefix(&m, "t.ini:3: [tls] ciphersuites: invalid cipher suites "
                  "\"NOPE\"");
    assert_int_equal(m.n, 2);

    /* mTLS and the header must fit together. */
    load_bad("[tls]\nforward_client_cert = X-Client-Cert\n", tls_env, &m);
    assert_msg(&m, "t.ini:2: [tls] forward_client_cert: requires [tls] "
               "client_verify = optional or required");
    assert_int_equal(m.n, 1);
    load_bad("[tls]\nclient_verify = optional\nenabled = no\n", NULL, &m);
    assert_msg(&m, "t.ini:2: [tls] client_verify: requires [tls] client_ca");
    assert_int_equal(m.n, 1);
    /* With TLS off (wsguard --healthcheck forces it) mTLS keys are not
     * used and their files not read. */
    config_unref(load_ok("[tls]\nenabled = no\nclient_ca = /nonexistent\n"
                         "client_verify = required\nforward_client_cert = "
                         "X-Client-Cert\n", NULL));
    snprintf(text, sizeof text, "[tls]\nclient_ca = %s\nclient_verify = "
             "optional\nforward_client_cert = x-user-id\n[jwt]\nenabled = "
             "yes\nsecret = 0123456789abcdef0123456789abcdef\n"
             "algorithms = HS256\n", tmp_cert);
    load_bad(text, tls_env, &m);
    assert_msg(&m, "t.ini:4: [tls] forward_client_cert: \"x-user-id\" is "
               "also a [jwt] forward_claims header");
    assert_int_equal(m.n, 1);

    /* Header names: a plain token, never one wsguard handles itself. */
    load_bad("[tls]\nforward_client_cert = X_Client\n"
             "forward_client_cert = X-Forwarded-Client\n"
             "forward_client_cert = sec-websocket-key\n"
             "forward_client_cert = Host\n", NULL, &m);
    assert_msg(&m, "t.ini:2: [tls] forward_client_cert: invalid header name "
               "\"X_Client\" (letters, digits and '-' only)");
    assert_msg(&m, "t.ini:3: [tls] forward_client_cert: "
               "\"X-Forwarded-Client\" is a header wsguard sets or checks "
               "itself");
    assert_msg(&m, "t.ini:4: [tls] forward_client_cert: "
               "\"sec-websocket-key\" is a header wsguard sets or checks "
               "itself");
    assert_msg(&m, "t.ini:5: [tls] forward_client_cert: \"Host\" is a "
               "header wsguard sets or checks itself");

    /* From the environment: the variable is named. */
    char ca_env[160];
    snprintf(ca_env, sizeof ca_env, "WSGUARD_TLS_CLIENT_CA=%s", empty);
    char *const env[] = { env_cert, env_key, ca_env, NULL };
    load_bad("[tls]\n", env, &m);
    snprintf(want, sizeof want, "env WSGUARD_TLS_CLIENT_CA: [tls] client_ca: "
             "\"%s\": ", empty);
    assert_prefix(&m, want);

    unlink(a);
    unlink(a2);
    unlink(bad);
    unlink(dflt);
    unlink(empty);
    EVP_PKEY_free(k1);
    EVP_PKEY_free(k2);
}

/* ---- environment */

static void
test_env(void **state)
{
    char *const env[] = {
        "WSGUARD_TLS_ENABLED=no",
        "WSGUARD_BACKEND_URL= ws://a:1 ws://b:2 ",
        "WSGUARD_SERVER_LISTEN=127.0.0.1:0",
        "WSGUARD_SERVER_MAX_CONNECTIONS=42",
        "WSGUARD_LIMITS_MAX_PAYLOAD=2k",
        "WSGUARD_JWT_AUDIENCE=",
        "WSGUARD_CLUSTER_KEY_PREFIX=",
        "OTHER=1",
        NULL,
    };
    struct config *c = load_ok(
        "[server]\nlisten = 127.0.0.1:1\nlisten = 127.0.0.1:2\n"
        "max_connections = 9\n"
        "[backend]\nurl = ws://file:1\n"
        "[jwt]\naudience = x y\n"
        "[cluster]\nkey_prefix = file:\n", env);
    struct msgs m;

    (void)state;
    assert_false(c->tls_enabled);
    assert_int_equal(c->nlisten, 1);
    assert_string_equal(c->listen[0].text, "127.0.0.1:0");
    assert_int_equal(c->max_connections, 42);
    assert_int_equal(c->global.nbackends, 2);
    assert_string_equal(c->global.backends[0].host, "a");
    assert_string_equal(c->global.backends[1].port, "2");
    assert_int_equal(c->global.max_payload, 2048);
    assert_int_equal(c->global.jwt_audience.n, 0);
    assert_null(c->cluster_key_prefix);
    /* Every key is implemented: nothing reported. */
    m.n = 0;
    assert_int_equal(config_unsupported(c, collect, &m), 0);
    config_unref(c);

    char *const bad[] = {
        "WSGUARD_TLS_ENABLED=no",
        "WSGUARD_SERVER_MAX_CONECTIONS=1",
        "WSGUARD_SERVER_IDLE_TIMEOUT=forever",
        "WSGUARD_=x",                   /* not a section: ignored */
        "WSGUARD_BIN=build/wsguard",    /* the scripts' own: ignored */
        "WSGUARD_BAKEND_URL=ws://x",    /* ignored too (no section) */
        "WSGUARD_LOG_LEVEL_X=1",
        NULL,
    };
    load_bad("", bad, &m);
    assert_int_equal(m.n, 3);
    assert_msg(&m, "env WSGUARD_LOG_LEVEL_X: unknown variable (no such "
               "[section] key)");
    assert_msg(&m, "env WSGUARD_SERVER_MAX_CONECTIONS: unknown variable "
               "(no such [section] key)");
    assert_msg(&m, "env WSGUARD_SERVER_IDLE_TIMEOUT: [server] "
               "idle_timeout: invalid value \"forever\" (expected a "
               "duration (e.g. 250ms, 10s, 5m, 1h; bare number = "
               "seconds))");

    /* A sidecar: no file at all. */
    char *const sidecar[] = {
        "WSGUARD_TLS_ENABLED=0",
        "WSGUARD_SERVER_LISTEN=[::]:0",
        "WSGUARD_BACKEND_URL=ws://app:3000",
        NULL,
    };
    m.n = 0;
    c = config_load(NULL, sidecar, collect, &m);
    assert_non_null(c);
    assert_int_equal(m.n, 0);
    assert_string_equal(c->global.backends[0].host_header, "app:3000");
    assert_int_equal(c->listen[0].ss.ss_family, AF_INET6);
    config_unref(c);
}

/* ---- routes */

static void
test_routes(void **state)
{
    char *const env[] = { "WSGUARD_TLS_ENABLED=no",
                          "WSGUARD_BACKEND_CONNECT_TIMEOUT=7s", NULL };
    struct config *c = load_ok(
        "[route /chat]\n"
        "backend = ws://chat:1\n"
        "max_payload = 64k\n"
        "[backend]\n"
        "url = ws://main:1\n"
        "[route /chat/admin]\n"
        "url = ws://admin:1\n"
        "url = ws://admin:2\n"
        "allow = https://a\n"
        "[route /]\n"
        "[jwt]\n"
        "sources = header:authorization\n"
        "[route /api]\n"
        "sources = query:t\n"
        "enabled = yes\n", env);
    const struct policy *p;
    const char *name = NULL;

    (void)state;
    assert_int_equal(c->nroutes, 4);
    /* Longest first. */
    assert_string_equal(c->routes[0].prefix, "/chat/admin");
    assert_string_equal(c->routes[3].prefix, "/");

    p = config_route(c, "/chat/admin/x", 13, &name);
    assert_string_equal(name, "/chat/admin");
    assert_int_equal(p->nbackends, 2);
    assert_string_equal(p->backends[1].port, "2");
    assert_int_equal(p->origin_allow.n, 1);
    assert_int_equal(p->max_payload, 1048576);        /* global */
    assert_int_equal(p->connect_timeout_ms, 7000);    /* global via env */

    p = config_route(c, "/chatroom", 9, &name);       /* plain prefix */
    assert_string_equal(name, "/chat");
    assert_string_equal(p->backends[0].host, "chat");
    assert_int_equal(p->nbackends, 1);
    assert_int_equal(p->max_payload, 65536);

    /* len bounds the match, the path need not be NUL-terminated. */
    p = config_route(c, "/chat/admin", 6, &name);
    assert_string_equal(name, "/chat");

    p = config_route(c, "/api/v1", 7, &name);
    assert_string_equal(name, "/api");
    assert_int_equal(p->jwt_sources.n, 1);
    assert_string_equal(p->jwt_sources.v[0], "query:t");
    assert_true(p->jwt_enabled);
    assert_string_equal(p->backends[0].host, "main");

    p = config_route(c, "/other", 6, &name);
    assert_string_equal(name, "/");
    assert_int_equal(p->jwt_sources.n, 1);
    assert_string_equal(p->jwt_sources.v[0], "header:authorization");
    assert_false(p->jwt_enabled);

    /* Global left alone by the routes. */
    assert_int_equal(c->global.nbackends, 1);
    assert_false(c->global.jwt_enabled);

    /* Routes and every key they take are implemented: neither a
     * [route] section nor a route's [origin]/[jwt]/[limits] key nor the
     * global [jwt] key is reported. */
    struct msgs m = { .n = 0 };
    assert_int_equal(config_unsupported(c, collect, &m), 0);
    assert_int_equal(m.n, 0);

    /* A struct config outlives its loader; refs count. */
    assert_ptr_equal(config_ref(c), c);
    config_unref(c);
    config_unref(c);

    c = load_ok("[route /x]\n", NULL);
    assert_null(config_route(c, "/y", 2, &name));
    assert_non_null(config_route(c, "/x", 2, &name));
    config_unref(c);

    /* inih truncates section names to 49 characters; we do not. */
    char text[256], prefix[128];
    memset(prefix, 'a', 100);
    prefix[0] = '/';
    prefix[100] = '\0';
    snprintf(text, sizeof text, "[route %s]\nmax_payload = 1\n", prefix);
    c = load_ok(text, NULL);
    assert_string_equal(c->routes[0].prefix, prefix);
    assert_int_equal(c->routes[0].p.max_payload, 1);
    config_unref(c);

    c = load_ok("", NULL);
    name = NULL;
    assert_ptr_equal(config_route(c, "/any", 4, &name), &c->global);
    assert_string_equal(name, "");
    config_unref(c);

    load_bad("[route /a]\n[route /a]\n[route a]\n[route]\n[route /b c]\n"
             "[route /b]\nlisten = 1.2.3.4:1\nurl =\n", NULL, &m);
    assert_msg(&m, "t.ini:2: duplicate [route /a] (first at line 1)");
    assert_msg(&m, "t.ini:3: route prefix \"a\" must start with \"/\"");
    assert_msg(&m, "t.ini:4: route section needs a path prefix, e.g. "
               "[route /chat]");
    assert_msg(&m, "t.ini:5: route prefix \"/b c\" must not contain "
               "blanks");
    assert_msg(&m, "t.ini:7: unknown key \"listen\" in [route /b] (a route "
               "takes [backend], [origin], [jwt] and [limits] keys)");
    assert_msg(&m, "t.ini:8: [route /b] backend: no backend");
    assert_int_equal(m.n, 6);
}

/* ---- unsupported keys */

static void
test_unsupported(void **state)
{
    char *const env[] = { "WSGUARD_TLS_ENABLED=no",
                          "WSGUARD_ADMIN_LISTEN=", NULL };
    struct config *c = load_ok(
        "[server]\nuser = nobody\nuser = daemon\nmax_connections = 5\n"
        "proxy_protocol = on\ntrusted_proxies = 10.0.0.0/8 ::1\n"
        "write_timeout = 1m\n"
        "[limits]\nmax_payload = 1k\nipv6_prefix = 48\n"
        "max_connections_per_ip = 3\nmessages_per_second = 10\n"
        "[origin]\nallow = https://a.example\n"
        "[jwt]\nsources = query:t\nforward_token = yes\n"
        "[cluster]\nlease = 1m\n"
        "[route /r]\nbytes_per_second = 1k\nallow_missing = yes\n", env);
    struct msgs m = { .n = 0 };

    (void)state;
    assert_string_equal(c->user, "daemon");
    assert_null(c->admin_listen);
    /* Implemented keys are stored and not reported. */
    assert_true(c->proxy_protocol);
    assert_int_equal(c->trusted_proxies.n, 2);
    assert_int_equal(c->write_timeout_ms, 60000);
    assert_int_equal(c->global.ipv6_prefix, 48);
    assert_int_equal(c->global.max_connections_per_ip, 3);
    assert_int_equal(c->nroutes, 1);
    assert_int_equal(c->routes[0].p.bytes_per_second, 1024);
    /* [cluster] (the last section that was not) is implemented now:
     * nothing is reported. */
    assert_int_equal(c->cluster_lease_ms, 60000);
    assert_int_equal(config_unsupported(c, collect, &m), 0);
    assert_int_equal(m.n, 0);
    assert_int_equal(config_unsupported(c, NULL, NULL), 0);
    config_unref(c);

    /* SNI and mTLS are implemented: nothing reported. */
    c = load_ok("[tls]\nclient_verify = off\nextra_certs =\n"
                "client_ca =\n", NULL);
    m.n = 0;
    assert_int_equal(config_unsupported(c, collect, &m), 0);
    config_unref(c);
}

/* ---- the shipped file and the docs */

static char *
read_all(const char *path)
{
    FILE *f = fopen(path, "r");
    char *buf;
    long n;

    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)n + 1);
    if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

/* The text from the line "marker" to the next line starting with
 * next_prefix (or the end); NULL if the marker line is missing. */
static char *
block(const char *text, const char *marker, const char *next_prefix)
{
    size_t ml = strlen(marker);
    const char *p = text;

    for (;;) {
        if (strncmp(p, marker, ml) == 0
            && (p[ml] == '\n' || p[ml] == ' ' || p[ml] == '\0'))
            break;
        p = strchr(p, '\n');
        if (p == NULL)
            return NULL;
        p++;
    }
    const char *end = strchr(p, '\n');
    while (end != NULL && strncmp(end + 1, next_prefix,
                                  strlen(next_prefix)) != 0)
        end = strchr(end + 1, '\n');
    return strndup(p, end ? (size_t)(end - p) : strlen(p));
}

/* Does the ini block have "key =" or ";key =" (commented out)? */
static bool
ini_has_key(const char *blk, const char *key)
{
    size_t kl = strlen(key);

    for (const char *p = blk; p != NULL; p = strchr(p, '\n')) {
        while (*p == '\n' || *p == ' ' || *p == '\t' || *p == ';')
            p++;
        if (strncmp(p, key, kl) == 0) {
            const char *q = p + kl;
            while (*q == ' ' || *q == '\t')
                q++;
            if (*q == '=')
                return true;
        }
    }
    return false;
}

static void
test_documented(void **state)
{
    char *doc = read_all("docs/configuration.md");
    char *ini = read_all("conf/wsguard.ini");
    char marker[64], row[96];

    (void)state;
    assert_non_null(doc);
    assert_non_null(ini);
    for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
        const struct config_option *o = &config_options[i];

        snprintf(marker, sizeof marker, "### [%s]", o->section);
        char *b = block(doc, marker, "### ");
        if (b == NULL)
            fail_msg("docs/configuration.md: no \"%s\" heading", marker);
        snprintf(row, sizeof row, "\n| `%s` |", o->key);
        if (strstr(b, row) == NULL)
            fail_msg("docs/configuration.md: [%s] %s not documented",
                     o->section, o->key);
        /* The unsupported marker must match the table. */
        char *line = strstr(b, row) + 1;
        char *eol = strchr(line, '\n');
        bool says = memmem(line, eol ? (size_t)(eol - line) : strlen(line),
                           "not supported yet", 17) != NULL;
        if (says != ((o->flags & OPT_UNSUPPORTED) != 0))
            fail_msg("docs/configuration.md: [%s] %s: \"not supported "
                     "yet\" does not match the option table", o->section,
                     o->key);
        free(b);

        snprintf(marker, sizeof marker, "[%s]", o->section);
        b = block(ini, marker, "[");
        if (b == NULL)
            fail_msg("conf/wsguard.ini: no %s section", marker);
        if (!ini_has_key(b, o->key))
            fail_msg("conf/wsguard.ini: [%s] %s missing", o->section,
                     o->key);
        free(b);
    }
    free(doc);
    free(ini);
}

static void
test_shipped_file(void **state)
{
    struct msgs m = { .n = 0 };
    struct config *c = config_load("conf/wsguard.ini", tls_env, collect,
                                   &m);

    (void)state;
    if (c == NULL)
        dump(&m);
    assert_non_null(c);
    assert_string_equal(c->path, "conf/wsguard.ini");
    assert_int_equal(m.n, 0);
    /* The shipped file sets no unimplemented key. */
    assert_int_equal(config_unsupported(c, collect, &m), 0);
    assert_string_equal(c->listen[0].text, "0.0.0.0:8443");
    assert_string_equal(c->global.backends[0].url, "ws://127.0.0.1:8080");
    assert_true(c->tls_enabled);
    config_unref(c);
}

/* Each env name is unique and the table has no duplicate rows. */
static void
test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < CONFIG_NOPTIONS; i++) {
        for (size_t j = i + 1; j < CONFIG_NOPTIONS; j++) {
            assert_false(strcasecmp(config_options[i].section,
                                    config_options[j].section) == 0
                         && strcasecmp(config_options[i].key,
                                       config_options[j].key) == 0);
            /* Route keys are looked up by key alone. */
            if ((config_options[i].flags & OPT_POLICY)
                && (config_options[j].flags & OPT_POLICY))
                assert_true(strcasecmp(config_options[i].key,
                                       config_options[j].key) != 0);
        }
    }
}

int
main(void)
{
    /* As main.c does: validation loads the [tls] files. */
    config_set_tls_check(tls_check);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_repeat_and_syntax),
        cmocka_unit_test(test_long_lines),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_env),
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_unsupported),
        cmocka_unit_test(test_documented),
        cmocka_unit_test(test_shipped_file),
        cmocka_unit_test(test_table),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
