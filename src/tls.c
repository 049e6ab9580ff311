/*
 * tls.c - SSL_CTX set-up; see tls.h.
 */
#include "tls.h"

#include <openssl/err.h>
#include <stdio.h>
#include <string.h>

static void
tls_err(char *err, size_t cap, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char detail[256] = "";
    if (e != 0)
        ERR_error_string_n(e, detail, sizeof detail);
    ERR_clear_error();
    snprintf(err, cap, "%s%s%s%s%s", what, file ? " " : "",
             file ? file : "", detail[0] ? ": " : "", detail);
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

SSL_CTX *
tls_ctx_new(const struct config *cfg, char *err, size_t cap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        tls_err(err, cap, "cannot create TLS context", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, cfg->tls_min_version);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    /* RELEASE_BUFFERS: an idle session keeps no 16 KiB record buffers.
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
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
        tls_err(err, cap, "cannot load certificate chain", cfg->tls_cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM)
        != 1) {
        tls_err(err, cap, "cannot load private key", cfg->tls_key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        tls_err(err, cap, "private key does not match certificate",
                cfg->tls_key);
        goto fail;
    }
    if (cfg->tls_ciphers && cfg->tls_ciphers[0] &&
        SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) != 1) {
        tls_err(err, cap, "invalid [tls] ciphers", NULL);
        goto fail;
    }
    if (cfg->tls_ciphersuites && cfg->tls_ciphersuites[0] &&
        SSL_CTX_set_ciphersuites(ctx, cfg->tls_ciphersuites) != 1) {
        tls_err(err, cap, "invalid [tls] ciphersuites", NULL);
        goto fail;
    }
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select, NULL);
    /* Resumption: TLS 1.3 tickets and the TLS 1.2 session cache. */
    static const unsigned char sid_ctx[] = "wsguard";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, 20000);
    SSL_CTX_set_num_tickets(ctx, 1);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

const char *
tls_version_name(const SSL *ssl)
{
    return ssl ? SSL_get_version(ssl) : NULL;
}
