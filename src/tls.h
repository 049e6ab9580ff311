/*
 * tls.h - the server's TLS contexts, built from [tls] (main thread only),
 * and what a session's client certificate says (any thread).
 *
 * One default SSL_CTX per configuration snapshot, with [tls] cert and
 * key. Each [tls] extra_certs file gets a context of its own, set up
 * exactly like the default one (versions, ciphers, ALPN, client
 * verification with the same trust store) but for its certificate; the
 * default context owns them (they are freed with it) and its SNI callback
 * switches a session to the one serving the name the client asked for:
 * an exact name first, then a wildcard "*.rest" for the name without its
 * first label, else the default certificate.
 *
 * SSL objects keep their own references to the contexts they use, so a
 * reload (which builds a whole new set from the files as they are then)
 * may free the old ones while sessions accepted under them go on.
 */
#ifndef WSGUARD_TLS_H
#define WSGUARD_TLS_H

#include <openssl/ssl.h>

#include "config.h"

/* A problem found while building the contexts: key is the [tls] key it
 * belongs to ("cert", "key", "extra_certs", "client_ca", "ciphers",
 * "ciphersuites"), msg the text without that prefix. */
typedef config_key_report_fn tls_report_fn;

/* Build the default context and the SNI ones: certificate chains and
 * keys (PEM, RSA or ECDSA; extra_certs files hold chain and key
 * together), versions, ciphers, ALPN http/1.1, session resumption,
 * buffer release, client certificate verification (client_ca,
 * client_verify). Returns NULL and writes the first problem to err (cap
 * bytes) as "WHERE: [tls] KEY: message" on failure (WHERE: the file and
 * line or the variable that set KEY, from config_where()). */
SSL_CTX *tls_ctx_new(const struct config *cfg, char *err, size_t cap);

/* Build them as tls_ctx_new() would and throw them away, reporting every
 * problem (a file that cannot be opened or is not a regular file, a
 * chain, key or CA that does not load, a key that does not match, an SNI
 * name served by two files, bad cipher lists). Returns the number of
 * problems. For configuration validation (wsguard -t, start, reload). */
int tls_check(const struct config *cfg, tls_report_fn report, void *arg);

/* Longest value tls_peer_identity() writes (without the NUL). */
#define TLS_IDENTITY_MAX 4096

/*
 * The identity of the session's verified client certificate, for
 * [tls] forward_client_cert, as one header value of printable ASCII:
 *
 *   Hash=<hex SHA-256 of the DER certificate>;Subject="<RFC 2253 DN>"
 *   [;URI=...][;DNS=...][;Email=...][;IP=...]
 *
 * one pair per subjectAltName entry, in the certificate's order. Subject
 * is always a quoted string; other values are quoted when they contain
 * , ; = " \ or a space; inside quotes " and \ are escaped with \ (RFC 9110
 * quoted-string). A SAN entry with a byte outside printable ASCII is left
 * out, as are entries past TLS_IDENTITY_MAX bytes. Writes a NUL-terminated
 * value into out (cap > TLS_IDENTITY_MAX) and returns its length, or 0
 * when the peer sent no certificate (or it did not verify).
 */
int tls_peer_identity(const SSL *ssl, char *out, size_t cap);

/* After a failed handshake whose first OpenSSL error is e: a static
 * reason for the log when the client's certificate was the cause
 * ("tls handshake failed: client certificate missing", "... not
 * trusted", "... expired", ...), else NULL. */
const char *tls_failure(const SSL *ssl, unsigned long e);

/* "TLSv1.3" etc. for the access log. */
const char *tls_version_name(const SSL *ssl);

#endif
