/*
 * tls.h - the server's SSL_CTX, built from [tls] (main thread only).
 *
 * One SSL_CTX per configuration snapshot; SSL objects keep their own
 * reference, so a reload may free the old context while sessions that
 * were accepted under it go on.
 */
#ifndef WSGUARD_TLS_H
#define WSGUARD_TLS_H

#include <openssl/ssl.h>

#include "config.h"

/* Build the context: certificate chain and key (PEM, RSA or ECDSA),
 * versions, ciphers, ALPN http/1.1, session resumption, buffer release.
 * Returns NULL and writes a message to err (cap bytes) on failure. */
SSL_CTX *tls_ctx_new(const struct config *cfg, char *err, size_t cap);

/* "TLSv1.3" etc. for the access log. */
const char *tls_version_name(const SSL *ssl);

#endif
