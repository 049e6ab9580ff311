/*
 * side.c - the transport: a socket with optional TLS (see side.h).
 *
 * OpenSSL keeps a per-thread error queue that SSL_get_error() consults, so
 * it must be empty before each SSL call and left empty after a failure:
 * a stale entry would make the next connection's result on this thread
 * read as an error.
 */
#include "side.h"

#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tls.h"

/*
 * The server leg's write BIO: OpenSSL's socket BIO, except that the TLS
 * 1.3 session ticket that the server writes as its handshake completes
 * goes with MSG_MORE. The kernel then keeps it until the next write (the
 * 101, or the refusal) and sends both in one segment: one transmit and
 * one wake-up of the client fewer per connection. Held bytes also
 * leave with the FIN, with any segment that takes the kernel's slow path,
 * or when its zero-window probe timer fires (the larger of the RTO and
 * 200 ms: 200 ms on loopback). The client needs the ticket only for its
 * next connection; a connection closed with unread input (a reset) loses
 * it, and with it only a later resumption. Reads keep OpenSSL's socket
 * BIO, which takes over writing as well once the relay starts
 * (side_settle). BIO_dup_chain() is not supported (wsguard never
 * duplicates an SSL).
 */
static BIO_METHOD *wbio_method;
static pthread_once_t wbio_once = PTHREAD_ONCE_INIT;

static int
wbio_write(BIO *b, const char *p, int len)
{
    struct side *s = BIO_get_data(b);
    int flags = MSG_NOSIGNAL;

    if (SSL_get_state(s->ssl) == TLS_ST_SW_SESSION_TICKET &&
        SSL_version(s->ssl) == TLS1_3_VERSION)
        flags |= MSG_MORE;
    BIO_clear_retry_flags(b);
    ssize_t r = send(s->fd, p, (size_t)len, flags);
    if (r >= 0)
        return (int)r;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        BIO_set_retry_write(b);
    return -1;
}

static long
wbio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    const struct side *s = BIO_get_data(b);

    (void)num;
    switch (cmd) {
    case BIO_C_GET_FD:
        if (ptr != NULL)
            *(int *)ptr = s->fd;
        return s->fd;
    case BIO_CTRL_FLUSH:        /* nothing is buffered here */
        return 1;
    default:
        return 0;
    }
}

static void
wbio_make(void)
{
    int index = BIO_get_new_index();
    BIO_METHOD *m = index == -1 ? NULL
                    : BIO_meth_new(index | BIO_TYPE_SOURCE_SINK |
                                       BIO_TYPE_DESCRIPTOR,
                                   "wsguard socket write");
    if (m != NULL && (BIO_meth_set_write(m, wbio_write) != 1 ||
                      BIO_meth_set_ctrl(m, wbio_ctrl) != 1)) {
        BIO_meth_free(m);
        m = NULL;
    }
    wbio_method = m;
}

/* The server side's BIOs: OpenSSL's socket BIO to read, ours to write. */
static int
server_bios(struct side *s)
{
    pthread_once(&wbio_once, wbio_make);
    if (wbio_method == NULL)
        return -1;
    BIO *r = BIO_new_socket(s->fd, BIO_NOCLOSE);
    BIO *w = BIO_new(wbio_method);
    if (r == NULL || w == NULL) {
        BIO_free(r);
        BIO_free(w);
        return -1;
    }
    BIO_set_data(w, s);
    BIO_set_init(w, 1);
    SSL_set_bio(s->ssl, r, w);
    return 0;
}

/* ERR_clear_error() walks all 16 slots (about 190 instructions, per
 * record on the hot path); peeking first costs a quarter of that when,
 * as almost always, the queue is empty. */
static void
ssl_clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

static int
clamp(size_t n)
{
    return n > INT_MAX ? INT_MAX : (int)n;
}

int
side_open_client(struct side *s, struct ev_loop *loop, int fd, SSL_CTX *tls,
                 const char *host)
{
    s->fd = fd;
    s->ssl = NULL;
    s->loop = loop;
    ev_io_set(&s->rd, fd, EV_READ);
    ev_io_set(&s->wr, fd, EV_WRITE);
    if (tls == NULL)
        return 0;
    s->ssl = SSL_new(tls);
    /* SNI and the name the server's certificate must carry. */
    if (s->ssl == NULL || SSL_set_fd(s->ssl, fd) != 1 ||
        SSL_set_tlsext_host_name(s->ssl, host) != 1 ||
        SSL_set1_host(s->ssl, host) != 1) {
        ERR_clear_error();
        return -1;
    }
    SSL_set_connect_state(s->ssl);
    return 0;
}

int
side_open(struct side *s, struct ev_loop *loop, int fd, SSL_CTX *tls)
{
    s->fd = fd;
    s->ssl = NULL;
    s->loop = loop;
    s->hs_fail = NULL;
    ev_io_set(&s->rd, fd, EV_READ);
    ev_io_set(&s->wr, fd, EV_WRITE);
    if (tls == NULL)
        return 0;
    s->ssl = SSL_new(tls);
    if (s->ssl == NULL || server_bios(s) != 0) {
        ERR_clear_error();
        return -1;
    }
    SSL_set_accept_state(s->ssl);
    return 0;
}

enum io_result
side_read(struct side *s, void *p, size_t cap, size_t *n)
{
    *n = 0;
    if (s->ssl == NULL) {
        for (;;) {
            ssize_t r = read(s->fd, p, cap);
            if (r > 0) {
                *n = (size_t)r;
                return IO_OK;
            }
            if (r == 0) {
                s->eof = 1;
                return IO_EOF;
            }
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return IO_AGAIN;
            s->eof = 1;
            return IO_ERR;
        }
    }
    s->rd_wants_wr = 0;
    ssl_clear_errors();
    int r = SSL_read(s->ssl, p, clamp(cap));
    if (r > 0) {
        *n = (size_t)r;
        return IO_OK;
    }
    switch (SSL_get_error(s->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        /* SSL_MODE_RELEASE_BUFFERS frees the read buffer only after a
         * record was consumed; a read that found nothing keeps its 16 KiB
         * allocated. An idle session must hold no such buffer. */
        if (!SSL_has_pending(s->ssl))
            SSL_free_buffers(s->ssl);
        return IO_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        s->rd_wants_wr = 1;
        return IO_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        s->eof = 1;
        return IO_EOF;
    default:
        ERR_clear_error();
        s->eof = 1;
        return IO_ERR;
    }
}

enum io_result
side_write(struct side *s, const void *p, size_t len, size_t *n)
{
    *n = 0;
    if (s->ssl == NULL) {
        for (;;) {
            ssize_t r = write(s->fd, p, len);
            if (r >= 0) {
                *n = (size_t)r;
                s->wblocked = (size_t)r < len;
                return r > 0 || len == 0 ? IO_OK : IO_AGAIN;
            }
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                s->wblocked = 1;
                return IO_AGAIN;
            }
            s->eof = 1;
            return IO_ERR;
        }
    }
    s->wr_wants_rd = 0;
    ssl_clear_errors();
    int r = SSL_write(s->ssl, p, clamp(len));
    if (r > 0) {
        *n = (size_t)r;
        s->wblocked = (size_t)r < len;
        return IO_OK;
    }
    switch (SSL_get_error(s->ssl, r)) {
    case SSL_ERROR_WANT_WRITE:
        s->wblocked = 1;
        return IO_AGAIN;
    case SSL_ERROR_WANT_READ:
        s->wblocked = 1;
        s->wr_wants_rd = 1;
        return IO_AGAIN;
    default:
        ERR_clear_error();
        s->eof = 1;
        return IO_ERR;
    }
}

enum io_result
side_handshake(struct side *s, char *why, size_t cap)
{
    ERR_clear_error();
    int r = SSL_do_handshake(s->ssl);
    if (r == 1) {
        s->hs_wants_wr = 0;
        return IO_OK;
    }
    switch (SSL_get_error(s->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        s->hs_wants_wr = 0;
        return IO_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        s->hs_wants_wr = 1;
        return IO_AGAIN;
    default: {
        unsigned long e = ERR_peek_error();
        s->hs_fail = tls_failure(s->ssl, e);
        if (s->hs_fail == NULL)
            s->hs_fail = tls_failure(s->ssl, ERR_peek_last_error());
        if (cap > 0) {
            if (e != 0)
                ERR_error_string_n(e, why, cap);
            else
                snprintf(why, cap, "connection closed");
        }
        ERR_clear_error();
        s->eof = 1;
        return IO_ERR;
    }
    }
}

int
side_pending(const struct side *s)
{
    return s->ssl != NULL && SSL_has_pending(s->ssl);
}

void
side_refeed(struct side *s)
{
    if (s->fd != -1 && side_pending(s))
        ev_feed_event(s->loop, &s->rd, EV_READ);
}

static void
io_set(struct ev_loop *loop, ev_io *io, int on)
{
    if (on && !ev_is_active(io))
        ev_io_start(loop, io);
    else if (!on && ev_is_active(io))
        ev_io_stop(loop, io);
}

void
side_settle(struct side *s)
{
    if (s->ssl == NULL)
        return;
    SSL_clear_mode(s->ssl, SSL_MODE_RELEASE_BUFFERS);
    /* The write BIO was there for the ticket: from here the socket BIO
     * writes as well, and the session keeps one BIO, not two (about 280
     * bytes per idle session). OpenSSL frees ours. */
    BIO *r = SSL_get_rbio(s->ssl);
    if (r != NULL && SSL_get_wbio(s->ssl) != r && BIO_up_ref(r) == 1)
        SSL_set0_wbio(s->ssl, r);
}

void
side_release_buffers(struct side *s)
{
    /* SSL_free_buffers() itself refuses while a record is pending in
     * either direction. */
    if (s->ssl != NULL && !SSL_has_pending(s->ssl))
        SSL_free_buffers(s->ssl);
}

void
side_watch(struct side *s, int rd, int wr)
{
    if (s->fd == -1)
        return;
    int was_rd = ev_is_active(&s->rd);
    io_set(s->loop, &s->rd, rd);
    io_set(s->loop, &s->wr, wr);
    /* OpenSSL may hold bytes (decrypted, or records read ahead) that
     * the socket will never announce again: once reading is possible
     * again after a stop (watcher off, or a full buffer), look. */
    if (rd && (!was_rd || s->full_stop) && side_pending(s))
        ev_feed_event(s->loop, &s->rd, EV_READ);
    if (rd)
        s->full_stop = 0;
}

/* The one place a TLS close_notify is sent: only on an established
 * session, once, and never to a peer that is gone. */
static void
tls_notify(struct side *s)
{
    if (s->ssl == NULL || s->eof || s->shut || !SSL_is_init_finished(s->ssl))
        return;
    ssl_clear_errors();
    SSL_shutdown(s->ssl);
    ERR_clear_error();
}

void
side_shutdown(struct side *s)
{
    if (s->fd == -1 || s->shut)
        return;
    tls_notify(s);
    s->shut = 1;
    shutdown(s->fd, SHUT_WR);
    io_set(s->loop, &s->wr, 0);
}

void
side_close(struct side *s)
{
    if (s->fd == -1)
        return;
    io_set(s->loop, &s->rd, 0);
    io_set(s->loop, &s->wr, 0);
    tls_notify(s);
    close(s->fd);
    s->fd = -1;
    if (s->ssl != NULL) {
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
}

const char *
side_tls_version(const struct side *s)
{
    return s->ssl != NULL ? tls_version_name(s->ssl) : NULL;
}

int
side_peer_identity(const struct side *s, char *out, size_t cap)
{
    if (cap > 0)
        out[0] = '\0';
    return s->ssl != NULL ? tls_peer_identity(s->ssl, out, cap) : 0;
}
