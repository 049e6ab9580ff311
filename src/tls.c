/*
 * tls.c - SSL_CTX set-up, SNI, client certificates; see tls.h.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- building the contexts ---- */

/* One name an extra_certs file serves (lower case; "*.rest" for a
 * wildcard), sorted by name for bsearch. */
struct sni_name {
    char *name;
    SSL_CTX *ctx;               /* in sni_table.ctxs */
    size_t file;                /* index in [tls] extra_certs */
};

/* Owned by the default context (its ex_data, freed with it). */
struct sni_table {
    struct sni_name *v;
    size_t n;
    SSL_CTX **ctxs;             /* one per extra_certs file, owned */
    size_t nctx;
};

static int sni_index = -1;

static void
sni_table_free(struct sni_table *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->n; i++)
        free(t->v[i].name);
    for (size_t i = 0; i < t->nctx; i++)
        SSL_CTX_free(t->ctxs[i]);
    free(t->v);
    free(t->ctxs);
    free(t);
}

/* ex_data destructor: runs for every SSL_CTX freed (ptr NULL for those
 * without a table). */
static void
sni_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
            void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    sni_table_free(ptr);
}

struct build {
    const struct config *cfg;
    tls_report_fn report;
    void *arg;
    int nerr;
};

static void fail(struct build *b, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Report a problem; the OpenSSL reason, if any, is appended. */
static void
fail(struct build *b, const char *key, const char *fmt, ...)
{
    char msg[600], text[400];
    unsigned long e = ERR_get_error();
    const char *why = NULL;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (e != 0 && (why = ERR_reason_error_string(e)) == NULL)
        why = "unknown OpenSSL error";
    ERR_clear_error();
    snprintf(msg, sizeof msg, "%s%s%s", text, why ? ": " : "",
             why ? why : "");
    b->nerr++;
    if (b->report != NULL)
        b->report(key, msg, b->arg);
}

/* The file can be opened for reading and is a regular file (never a FIFO
 * or a device that would block or never end a PEM read). */
static int
file_ok(struct build *b, const char *key, const char *path)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);

    if (fd == -1) {
        fail(b, key, "cannot open \"%s\": %s", path, strerror(errno));
        return 0;
    }
    int r = fstat(fd, &st);
    close(fd);
    if (r == -1 || !S_ISREG(st.st_mode)) {
        fail(b, key, "\"%s\": not a regular file", path);
        return 0;
    }
    return 1;
}

/* ALPN: wsguard speaks HTTP/1.1 only (a WebSocket upgrade is an HTTP/1.1
 * request). A client offering only other protocols (h2) is answered with
 * no ALPN at all rather than failed, as nginx does. */
static int
tls_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char http11[] = "\x08http/1.1";
    unsigned char *sel;
    unsigned char sel_len;

    if (SSL_select_next_proto(&sel, &sel_len, http11, sizeof http11 - 1,
                              in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    *outlen = sel_len;
    return SSL_TLSEXT_ERR_OK;
}

/*
 * A context with everything but its certificate. Every context gets the
 * whole set-up: after an SNI switch (SSL_set_SSL_CTX) OpenSSL takes the
 * ALPN callback, the client CA names it sends and the trust store it
 * verifies against from the new context. Cipher problems are reported
 * for the first (default) one only.
 */
static SSL_CTX *
ctx_base(struct build *b, int first)
{
    const struct config *cfg = b->cfg;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL) {
        fail(b, "cert", "cannot create TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, cfg->tls_min_version);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    /* RELEASE_BUFFERS: a session in its handshake keeps no 16 KiB record
     * buffers between records. A relaying session turns it off
     * (side_settle): freeing and reallocating them around nearly
     * every record costs about 80 instructions per relayed 64 B message;
     * it gives them back after RELAY_QUIET_MS without traffic instead.
     * PARTIAL_WRITE + MOVING_WRITE_BUFFER: the relay writes whatever part
     * of its buffer the socket takes and may retry with more bytes. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS |
                              SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Read-ahead: one read(2) fetches as many records as the socket
     * holds, instead of two reads (header, body) per record. The relay
     * then checks SSL_has_pending(), since those bytes no longer show up
     * as socket readiness. */
    SSL_CTX_set_read_ahead(ctx, 1);
    if (cfg->tls_ciphers && cfg->tls_ciphers[0] &&
        SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) != 1) {
        if (first)
            fail(b, "ciphers", "invalid cipher list \"%s\"",
                 cfg->tls_ciphers);
        ERR_clear_error();
    }
    if (cfg->tls_ciphersuites && cfg->tls_ciphersuites[0] &&
        SSL_CTX_set_ciphersuites(ctx, cfg->tls_ciphersuites) != 1) {
        if (first)
            fail(b, "ciphersuites", "invalid cipher suites \"%s\"",
                 cfg->tls_ciphersuites);
        ERR_clear_error();
    }
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select, NULL);
    /* Resumption: TLS 1.3 tickets and the TLS 1.2 session cache (both
     * kept by the default context, the session's first one, whichever
     * certificate SNI chose). Tickets are encrypted with keys of this
     * context, so a session from before a reload is not resumed after it:
     * a client certificate is verified again against the new CA. */
    static const unsigned char sid_ctx[] = "wsguard";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, 20000);
    SSL_CTX_set_num_tickets(ctx, 1);
    return ctx;
}

/* Certificate chain and key into ctx. keykey/certkey: the [tls] keys to
 * blame; for an extra_certs file both are the same file. */
static int
load_pair(struct build *b, SSL_CTX *ctx, const char *certkey,
          const char *cert, const char *keykey, const char *key)
{
    int combined = strcmp(certkey, keykey) == 0;
    int ok = file_ok(b, certkey, cert);

    if (!combined && !file_ok(b, keykey, key))
        ok = 0;
    if (!ok)
        return 0;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        fail(b, certkey, "\"%s\": cannot load certificate chain", cert);
        return 0;
    }
    /* A key for another certificate fails here already (OpenSSL checks
     * it against the certificate loaded before), or at the check. */
    int loaded = SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM);
    unsigned long e = ERR_peek_error();
    if (loaded != 1 && !(ERR_GET_LIB(e) == ERR_LIB_X509 &&
                         ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)) {
        fail(b, keykey, "\"%s\": cannot load private key", key);
        return 0;
    }
    if (loaded != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        if (combined)
            fail(b, keykey, "\"%s\": private key does not match the "
                 "certificate", key);
        else
            fail(b, keykey, "\"%s\": private key does not match "
                 "certificate \"%s\"", key, cert);
        return 0;
    }
    return 1;
}

static int
verify_mode(const struct config *cfg)
{
    switch (cfg->tls_client_verify) {
    case VERIFY_REQUIRED:
        return SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    case VERIFY_OPTIONAL:
        return SSL_VERIFY_PEER;
    default:
        return SSL_VERIFY_NONE;
    }
}

/* client_ca into the default context: the trust store and the names
 * sent in the CertificateRequest. Without client_verify it is only
 * checked. */
static int
load_ca(struct build *b, SSL_CTX *ctx)
{
    const char *ca = b->cfg->tls_client_ca;

    if (ca == NULL || !file_ok(b, "client_ca", ca))
        return 0;
    if (SSL_CTX_load_verify_file(ctx, ca) != 1) {
        fail(b, "client_ca", "\"%s\": cannot load CA certificates", ca);
        return 0;
    }
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(ca);
    if (names == NULL) {
        fail(b, "client_ca", "\"%s\": no CA certificate in it", ca);
        return 0;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    return 1;
}

/* An SNI context verifies clients exactly as the default one does. */
static int
share_ca(SSL_CTX *ctx, SSL_CTX *def)
{
    X509_STORE *st = SSL_CTX_get_cert_store(def);
    STACK_OF(X509_NAME) *names = SSL_CTX_get_client_CA_list(def);

    if (st == NULL || X509_STORE_up_ref(st) != 1)
        return -1;
    SSL_CTX_set_cert_store(ctx, st);
    if (names != NULL) {
        STACK_OF(X509_NAME) *dup = SSL_dup_CA_list(names);
        if (dup == NULL)
            return -1;
        SSL_CTX_set_client_CA_list(ctx, dup);
    }
    return 0;
}

/* A host name as SNI compares it: lower case, no trailing dot; NULL when
 * it is empty, too long or has bytes that no host name has. */
static char *
name_norm(const unsigned char *p, size_t len)
{
    if (len > 0 && p[len - 1] == '.')
        len--;
    if (len == 0 || len > 253)
        return NULL;
    char *s = malloc(len + 1);
    if (s == NULL)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (p[i] <= 0x20 || p[i] >= 0x7f) {
            free(s);
            return NULL;
        }
        s[i] = (char)tolower(p[i]);
    }
    s[len] = '\0';
    return s;
}

static int
names_push(char ***v, size_t *n, char *s)
{
    if (s == NULL)
        return 0;
    for (size_t i = 0; i < *n; i++) {
        if (strcmp((*v)[i], s) == 0) {
            free(s);
            return 0;
        }
    }
    char **nv = realloc(*v, (*n + 1) * sizeof *nv);
    if (nv == NULL) {
        free(s);
        return -1;
    }
    *v = nv;
    nv[(*n)++] = s;
    return 0;
}

/* The names a certificate serves: its subjectAltName DNS entries, or its
 * subject CN when it has none (as clients did before SANs). */
static int
cert_names(X509 *x, char ***v, size_t *n)
{
    GENERAL_NAMES *g = X509_get_ext_d2i(x, NID_subject_alt_name, NULL,
                                        NULL);
    int r = 0;

    *v = NULL;
    *n = 0;
    for (int i = 0; g != NULL && i < sk_GENERAL_NAME_num(g); i++) {
        const GENERAL_NAME *e = sk_GENERAL_NAME_value(g, i);
        if (e->type != GEN_DNS)
            continue;
        const ASN1_STRING *s = e->d.dNSName;
        if (names_push(v, n, name_norm(ASN1_STRING_get0_data(s),
                                       (size_t)ASN1_STRING_length(s))) != 0)
            r = -1;
    }
    GENERAL_NAMES_free(g);
    if (*n == 0 && r == 0) {
        X509_NAME *subj = X509_get_subject_name(x);
        int at = X509_NAME_get_index_by_NID(subj, NID_commonName, -1);
        unsigned char *cn = NULL;
        int len;
        if (at >= 0 && (len = ASN1_STRING_to_UTF8(&cn, X509_NAME_ENTRY_get_data(
                            X509_NAME_get_entry(subj, at)))) > 0)
            r = names_push(v, n, name_norm(cn, (size_t)len));
        OPENSSL_free(cn);
    }
    return r;
}

static void
names_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static int
sni_cmp(const void *a, const void *b)
{
    const struct sni_name *x = a, *y = b;
    int c = strcmp(x->name, y->name);

    if (c != 0)
        return c;
    return x->file < y->file ? -1 : x->file > y->file;
}

static SSL_CTX *
sni_find(const struct sni_table *t, const char *name)
{
    size_t lo = 0, hi = t->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, t->v[mid].name);
        if (c == 0)
            return t->v[mid].ctx;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* SNI: the context of the file serving the name (exact, then wildcard),
 * else the default one stays. */
static int
tls_servername(SSL *ssl, int *alert, void *arg)
{
    const struct sni_table *t = arg;
    const char *sn = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    char name[256];
    SSL_CTX *ctx = NULL;

    if (sn == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    size_t len = strlen(sn);
    if (len > 0 && sn[len - 1] == '.')
        len--;
    if (len == 0 || len > 253)
        return SSL_TLSEXT_ERR_NOACK;
    for (size_t i = 0; i < len; i++)
        name[i] = (char)tolower((unsigned char)sn[i]);
    name[len] = '\0';
    ctx = sni_find(t, name);
    if (ctx == NULL) {
        /* "*.example.com" serves "a.example.com", one label only. */
        char *dot = strchr(name, '.');
        if (dot != NULL && dot != name) {
            dot[-1] = '*';
            ctx = sni_find(t, dot - 1);
        }
    }
    if (ctx == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    if (SSL_set_SSL_CTX(ssl, ctx) == NULL) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* The extra_certs contexts and their names, into def's table. */
static void
build_sni(struct build *b, SSL_CTX *def, int def_ok)
{
    const struct strlist *files = &b->cfg->tls_extra_certs;
    struct sni_table *t = calloc(1, sizeof *t);
    char **dn = NULL, **fn;
    size_t ndn = 0, nfn;

    if (t == NULL || SSL_CTX_set_ex_data(def, sni_index, t) != 1) {
        free(t);
        fail(b, "extra_certs", "out of memory");
        return;
    }
    if ((t->ctxs = calloc(files->n, sizeof(SSL_CTX *))) == NULL) {
        fail(b, "extra_certs", "out of memory");
        return;
    }
    if (def_ok && cert_names(SSL_CTX_get0_certificate(def), &dn, &ndn))
        fail(b, "extra_certs", "out of memory");
    for (size_t i = 0; i < files->n; i++) {
        const char *f = files->v[i];
        SSL_CTX *ctx = ctx_base(b, 0);
        if (ctx == NULL)
            continue;
        t->ctxs[t->nctx++] = ctx;
        if (!load_pair(b, ctx, "extra_certs", f, "extra_certs", f))
            continue;
        if (b->cfg->tls_client_ca != NULL && share_ca(ctx, def) != 0) {
            fail(b, "extra_certs", "out of memory");
            continue;
        }
        SSL_CTX_set_verify(ctx, verify_mode(b->cfg), NULL);
        if (cert_names(SSL_CTX_get0_certificate(ctx), &fn, &nfn) != 0) {
            fail(b, "extra_certs", "out of memory");
            continue;
        }
        if (nfn == 0)
            fail(b, "extra_certs", "\"%s\": the certificate names no host "
                 "(no subjectAltName DNS entry or CN)", f);
        struct sni_name *nv = realloc(t->v, (t->n + nfn) * sizeof *nv);
        if (nv == NULL) {
            names_free(fn, nfn);
            fail(b, "extra_certs", "out of memory");
            continue;
        }
        t->v = nv;
        for (size_t k = 0; k < nfn; k++) {
            for (size_t d = 0; d < ndn; d++) {
                if (strcmp(dn[d], fn[k]) == 0)
                    fail(b, "extra_certs", "\"%s\": name \"%s\" is also "
                         "served by [tls] cert \"%s\"", f, fn[k],
                         b->cfg->tls_cert);
            }
            t->v[t->n].name = fn[k];
            t->v[t->n].ctx = ctx;
            t->v[t->n].file = i;
            t->n++;
        }
        free(fn);
    }
    names_free(dn, ndn);
    if (t->n > 1)
        qsort(t->v, t->n, sizeof *t->v, sni_cmp);
    /* Two files for one name: which one a client gets would be an
     * accident of the order. */
    for (size_t i = 1; i < t->n; i++) {
        if (strcmp(t->v[i - 1].name, t->v[i].name) == 0 &&
            t->v[i - 1].file != t->v[i].file)
            fail(b, "extra_certs", "name \"%s\" is served by both \"%s\" "
                 "and \"%s\"", t->v[i].name, files->v[t->v[i - 1].file],
                 files->v[t->v[i].file]);
    }
    SSL_CTX_set_tlsext_servername_callback(def, tls_servername);
    SSL_CTX_set_tlsext_servername_arg(def, t);
}

static SSL_CTX *
build(struct build *b)
{
    const struct config *cfg = b->cfg;

    if (sni_index == -1) {
        sni_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL,
                                             sni_ex_free);
        if (sni_index == -1) {
            fail(b, "cert", "cannot create TLS context");
            return NULL;
        }
    }
    SSL_CTX *def = ctx_base(b, 1);
    if (def == NULL)
        return NULL;
    int ok = load_pair(b, def, "cert", cfg->tls_cert, "key", cfg->tls_key);
    if (cfg->tls_client_ca != NULL)
        load_ca(b, def);
    SSL_CTX_set_verify(def, verify_mode(cfg), NULL);
    if (cfg->tls_extra_certs.n > 0)
        build_sni(b, def, ok);
    if (b->nerr > 0) {
        SSL_CTX_free(def);
        return NULL;
    }
    return def;
}

struct first_err {
    const struct config *cfg;
    char *err;
    size_t cap;
    int set;
};

/* "FILE:LINE: [tls] KEY: message" (or "env WSGUARD_TLS_KEY: ..."). */
static void
first_err(const char *key, const char *msg, void *arg)
{
    struct first_err *f = arg;
    char where[300];

    if (!f->set && f->cap > 0) {
        config_where(f->cfg, &f->cfg->global, "tls", key, where,
                     sizeof where);
        snprintf(f->err, f->cap, "%s: [tls] %s: %s", where, key, msg);
    }
    f->set = 1;
}

SSL_CTX *
tls_ctx_new(const struct config *cfg, char *err, size_t cap)
{
    struct first_err f = { cfg, err, cap, 0 };
    struct build b = { cfg, first_err, &f, 0 };

    return build(&b);
}

int
tls_check(const struct config *cfg, tls_report_fn report, void *arg)
{
    struct build b = { cfg, report, arg, 0 };

    SSL_CTX_free(build(&b));
    return b.nerr;
}

/* ---- the client's certificate ---- */

struct out {
    char *p;
    size_t len, cap;            /* cap: at most this many bytes (+ NUL) */
};

static int
printable(const unsigned char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] < 0x20 || p[i] > 0x7e)
            return 0;
    return 1;
}

/* Append ";key=value" (no ';' first): quoted when asked or needed. Whole
 * or nothing; returns -1 when it does not fit. */
static int
out_pair(struct out *o, const char *key, const unsigned char *v, size_t len,
         int quote)
{
    size_t need = (o->len ? 1 : 0) + strlen(key) + 1 + len;

    for (size_t i = 0; i < len; i++) {
        if (strchr(",;=\"\\ ", v[i]) != NULL)
            quote = 1;
        if (v[i] == '"' || v[i] == '\\')
            need++;
    }
    if (len == 0)
        quote = 1;
    if (quote)
        need += 2;
    if (o->len + need > o->cap)
        return -1;
    char *p = o->p + o->len;
    if (o->len)
        *p++ = ';';
    p += sprintf(p, "%s=", key);
    if (quote)
        *p++ = '"';
    for (size_t i = 0; i < len; i++) {
        if (quote && (v[i] == '"' || v[i] == '\\'))
            *p++ = '\\';
        *p++ = (char)v[i];
    }
    if (quote)
        *p++ = '"';
    *p = '\0';
    o->len = (size_t)(p - o->p);
    return 0;
}

int
tls_peer_identity(const SSL *ssl, char *out, size_t cap)
{
    X509 *x = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    struct out o = { out, 0, cap > TLS_IDENTITY_MAX ? TLS_IDENTITY_MAX
                                                     : (cap ? cap - 1 : 0) };

    if (cap > 0)
        out[0] = '\0';
    if (x == NULL || SSL_get_verify_result(ssl) != X509_V_OK)
        return 0;
    if (X509_digest(x, EVP_sha256(), md, &mdlen) != 1) {
        ERR_clear_error();
        return 0;
    }
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    for (size_t i = 0; i < mdlen; i++) {
        hex[2 * i] = "0123456789abcdef"[md[i] >> 4];
        hex[2 * i + 1] = "0123456789abcdef"[md[i] & 15];
    }
    if (out_pair(&o, "Hash", (const unsigned char *)hex, 2 * (size_t)mdlen,
                 0))
        return 0;

    /* RFC 2253 form, most specific first; control characters and bytes
     * above 0x7f come out escaped as \XX, so the text is ASCII. */
    BIO *m = BIO_new(BIO_s_mem());
    if (m != NULL &&
        X509_NAME_print_ex(m, X509_get_subject_name(x), 0,
                           XN_FLAG_RFC2253) >= 0) {
        char *s;
        long n = BIO_get_mem_data(m, &s);
        if (n >= 0 && printable((unsigned char *)s, (size_t)n) &&
            out_pair(&o, "Subject", (unsigned char *)s, (size_t)n, 1)) {
            BIO_free(m);
            return (int)o.len;
        }
    }
    BIO_free(m);
    ERR_clear_error();

    GENERAL_NAMES *g = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; g != NULL && i < sk_GENERAL_NAME_num(g); i++) {
        const GENERAL_NAME *e = sk_GENERAL_NAME_value(g, i);
        const ASN1_STRING *s = NULL;
        const char *key = NULL;
        char ip[INET6_ADDRSTRLEN];
        const unsigned char *v;
        size_t len;

        switch (e->type) {
        case GEN_URI:
            key = "URI";
            s = e->d.uniformResourceIdentifier;
            break;
        case GEN_DNS:
            key = "DNS";
            s = e->d.dNSName;
            break;
        case GEN_EMAIL:
            key = "Email";
            s = e->d.rfc822Name;
            break;
        case GEN_IPADD:
            key = "IP";
            s = e->d.iPAddress;
            break;
        default:
            continue;
        }
        v = ASN1_STRING_get0_data(s);
        len = (size_t)ASN1_STRING_length(s);
        if (e->type == GEN_IPADD) {
            int af = len == 4 ? AF_INET : len == 16 ? AF_INET6 : 0;
            if (af == 0 || inet_ntop(af, v, ip, sizeof ip) == NULL)
                continue;
            v = (const unsigned char *)ip;
            len = strlen(ip);
        }
        if (!printable(v, len))
            continue;
        if (out_pair(&o, key, v, len, 0) != 0)
            break;
    }
    GENERAL_NAMES_free(g);
    ERR_clear_error();
    return (int)o.len;
}

const char *
tls_failure(const SSL *ssl, unsigned long e)
{
    if (ERR_GET_LIB(e) != ERR_LIB_SSL)
        return NULL;
    switch (ERR_GET_REASON(e)) {
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        return "tls handshake failed: client certificate missing";
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
        break;
    default:
        return NULL;
    }
    switch (ssl ? SSL_get_verify_result(ssl) : X509_V_OK) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return "tls handshake failed: client certificate expired";
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return "tls handshake failed: client certificate not yet valid";
    case X509_V_ERR_INVALID_PURPOSE:
        return "tls handshake failed: client certificate not for client "
               "authentication";
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        return "tls handshake failed: client certificate not trusted";
    default:
        return "tls handshake failed: client certificate rejected";
    }
}

const char *
tls_version_name(const SSL *ssl)
{
    return ssl ? SSL_get_version(ssl) : NULL;
}
