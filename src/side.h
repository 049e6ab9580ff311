/*
 * side.h - the transport: one socket and its optional TLS session (the
 * client leg with TLS, or a plain TCP leg), with read, write, the TLS
 * handshake, shutdown of our end, close, and readiness. The only module
 * that calls OpenSSL's SSL_* functions on a connection; the relay and the
 * state machine above it see bytes and an explicit result (Redis's
 * connection.h, HAProxy's xprt_ops).
 *
 * A side belongs to one worker thread. Its two ev_io watchers are
 * initialised by the owner (who chooses the callbacks); side_watch() and
 * side_close() start and stop them.
 */
#ifndef WSGUARD_SIDE_H
#define WSGUARD_SIDE_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stddef.h>

/* What an I/O call did. */
enum io_result {
    IO_OK = 0,          /* bytes moved (*n > 0), or the handshake is done */
    IO_AGAIN,           /* nothing now: wait for readiness */
    IO_EOF,             /* the peer closed (reads only) */
    IO_ERR              /* a broken connection or protocol error */
};

struct side {
    int fd;                     /* -1 once closed */
    SSL *ssl;                   /* TLS session, or NULL for plain TCP */
    struct ev_loop *loop;
    ev_io rd, wr;
    unsigned eof : 1;           /* peer gone (EOF or error): no more I/O */
    unsigned shut : 1;          /* our end is shut down (close_notify and
                                   FIN sent); reading until the peer's EOF */
    unsigned wblocked : 1;      /* the last write took less than offered */
    unsigned rd_wants_wr : 1;   /* SSL_read needs the socket writable */
    unsigned wr_wants_rd : 1;   /* SSL_write needs the socket readable */
    unsigned hs_wants_wr : 1;   /* the TLS handshake waits for writability */
    unsigned full_stop : 1;     /* reading stopped on a full buffer: look
                                   inside TLS when it resumes */
    const char *hs_fail;        /* static reason when the TLS handshake
                                   failed over the client's certificate
                                   (tls_failure()), else NULL */
};

/* Take fd (non-blocking) on loop; with tls (not NULL), as the server
 * side of a TLS session from that context (freed by side_close). A TLS
 * 1.3 session ticket, written as the handshake completes, is handed to
 * the kernel with MSG_MORE: it leaves in the same segment as the next
 * bytes written (the 101 or the refusal), or with the FIN. The
 * watchers must already be initialised with ev_io_init (any fd: it is
 * set here). Returns 0, or -1 when the TLS session could not be made
 * (the fd is still the side's: side_close() closes it). */
int side_open(struct side *s, struct ev_loop *loop, int fd, SSL_CTX *tls);

/* The same as the client of a TLS session (tls not NULL; the context
 * verifies the peer), sending host as SNI and requiring it in the
 * server's certificate; side_handshake() then runs the client side. */
int side_open_client(struct side *s, struct ev_loop *loop, int fd,
                     SSL_CTX *tls, const char *host);

/*
 * Read up to cap bytes into p. IO_OK with *n > 0; IO_AGAIN (would block;
 * with TLS possibly because the socket must become writable:
 * rd_wants_wr); IO_EOF or IO_ERR, after which s->eof is set. With TLS an
 * empty read releases OpenSSL's record buffer, so an idle side holds none.
 */
enum io_result side_read(struct side *s, void *p, size_t cap, size_t *n);

/*
 * Write up to len bytes from p. IO_OK with *n > 0 (s->wblocked when not
 * all went); IO_AGAIN (nothing taken; wblocked set, and with TLS
 * wr_wants_rd when the socket must become readable); IO_ERR (s->eof set).
 * With TLS a write that returned IO_AGAIN must be retried with the same
 * bytes (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets them move).
 */
enum io_result side_write(struct side *s, const void *p, size_t len,
                          size_t *n);

/* Advance the TLS handshake (server side): IO_OK when complete, IO_AGAIN
 * (hs_wants_wr says which readiness), IO_ERR when it failed (*why: the
 * OpenSSL reason for a debug log, or "connection closed"). */
enum io_result side_handshake(struct side *s, char *why, size_t cap);

/* Bytes already inside the TLS session (decrypted or read ahead) that the
 * socket will not announce again. */
int side_pending(const struct side *s);

/* If a read loop stopped at its per-event limit with bytes still inside
 * TLS, queue a read event again (it runs after other connections' events:
 * fairness kept). */
void side_refeed(struct side *s);

/* The session is relaying (the 101 is out). From now on keep the TLS
 * record buffers between records (SSL_MODE_RELEASE_BUFFERS is for the
 * handshake) until side_release_buffers(), and write through the socket
 * BIO that reads (the server leg's own write BIO is for the handshake's
 * ticket). Nothing for plain TCP. */
void side_settle(struct side *s);

/* Give back the TLS record buffers (about 2 x 16.7 KiB) unless OpenSSL
 * still holds bytes in them; the next read or write allocates them again.
 * Nothing for plain TCP. */
void side_release_buffers(struct side *s);

/* Set which readiness to wait for; looks inside TLS when reading resumes
 * after a stop (watcher off, or full_stop). */
void side_watch(struct side *s, int rd, int wr);

/* Shut our end down: TLS close_notify (once, the one TLS shutdown path),
 * then TCP FIN; the side keeps reading until the peer's EOF (lingering
 * close), so late bytes from the peer do not turn into a reset. Stops the
 * write watcher. */
void side_shutdown(struct side *s);

/* Close the socket (best-effort close_notify first if the session is up
 * and our end is not shut yet), stop the watchers, free the TLS session.
 * Idempotent. */
void side_close(struct side *s);

/* "TLSv1.3" etc. for the access log, or NULL without TLS. */
const char *side_tls_version(const struct side *s);

/* The verified client certificate's identity as a header value
 * (tls_peer_identity(): out must hold TLS_IDENTITY_MAX + 1 bytes).
 * Returns its length, or 0 without TLS or without a verified client
 * certificate. */
int side_peer_identity(const struct side *s, char *out, size_t cap);

#endif
