/*
 * faultshim.c - an LD_PRELOAD library for wsguard's fault-injection tests
 * (tests/integration/test_faults.py; see tests/faults/README.md).
 *
 * It interposes, for tests only and without any change to wsguard:
 *
 *   malloc calloc realloc free posix_memalign aligned_alloc memalign
 *       ENOMEM (NULL) for chosen calls; a count of live heap blocks
 *   accept4 accept                 EMFILE (or any errno) instead of a socket
 *   read recv readv                ECONNRESET, spurious EAGAIN, short reads
 *   write send writev              EPIPE/ECONNRESET, spurious EAGAIN, short
 *                                  writes (an injected error also shuts the
 *                                  socket down: a broken connection stays
 *                                  broken)
 *   connect close                  to know which descriptors are sockets
 *
 * OpenSSL's socket BIO reads and writes with read(2) and write(2), so
 * faults there reach TLS too.
 *
 * Control: the file named by $FAULTSHIM_CTL, mapped shared (struct ctl
 * below, mirrored by tests/faults/faultctl.py). The test writes the rules
 * while wsguard runs; every call reads them with plain atomic loads (no
 * system call), and the shim counts what it saw and what it injected in
 * the same file. Without $FAULTSHIM_CTL nothing is injected.
 *
 * I/O faults apply only to the descriptors wsguard's sessions use: those
 * returned by accept4 ("client") and TCP sockets it connects ("backend"),
 * never to its log files, eventfds or listeners. Malloc faults can be
 * limited to the threads that call accept4 (wsguard's workers), so start-up
 * and the log writer are spared, and to a range of sizes.
 *
 * Malloc is forwarded to glibc's __libc_malloc & co., never found with
 * dlsym (dlsym itself allocates). Under AddressSanitizer the executable's
 * own malloc comes first in the symbol search order and the shim's malloc
 * is never called (mallocs stays 0); the I/O wrappers still work, because
 * ASan's interceptors call the next definition, which is this one.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define CTL_MAGIC 0x57534654u   /* "WSFT" */
#define CTL_VERSION 1u
#define UNLIMITED 0xffffffffu
#define TRACE_N 4096

enum kind {
    F_MALLOC = 0,       /* arg, arg2: size range; where bit 0: workers only */
    F_ACCEPT,           /* err: EMFILE by default */
    F_READ_ERR,         /* err: ECONNRESET by default */
    F_READ_EAGAIN,      /* arg: burst length (calls on that fd) */
    F_READ_SHORT,       /* arg: most bytes per call (0: any fewer) */
    F_WRITE_ERR,        /* err: EPIPE by default */
    F_WRITE_EAGAIN,     /* arg: burst length */
    F_WRITE_SHORT,      /* arg: most bytes per call (0: any fewer) */
    F_KINDS
};

/* Where an I/O rule applies (rule.where). */
#define W_CLIENT 1u
#define W_BACKEND 2u
/* For F_MALLOC: only threads that have called accept4. */
#define W_WORKERS 1u

struct rule {                   /* 64 bytes */
    uint32_t on;                /* written last by the controller */
    uint32_t where;
    uint32_t skip;              /* matching calls let through first */
    uint32_t budget;            /* faults left (UNLIMITED: no end) */
    uint32_t ppm;               /* chance per matching call in 1e-6 (0: 1) */
    uint32_t err;               /* errno (0: the kind's default) */
    uint32_t arg, arg2;
    uint64_t seen;              /* matching calls while on */
    uint64_t injected;          /* faults injected */
    uint64_t last_caller;       /* return address of the last faulted call */
    uint64_t last_size;         /* its size (bytes asked for) */
};

struct ctl {
    uint32_t magic, version;
    uint32_t size;              /* sizeof(struct ctl), written by the shim */
    uint32_t pid;               /* the process that mapped it */
    uint64_t seed;
    uint64_t reserved;
    struct rule r[F_KINDS];
    int64_t live;               /* heap blocks from the shim, not freed */
    uint64_t mallocs;           /* allocation calls seen by the shim */
    uint64_t worker_mallocs;    /* of them, on threads that called accept4 */
    uint64_t accepts;           /* accept4 calls that returned a socket */
    uint64_t connects;          /* TCP connects of sessions' backends */
    uint64_t connect_mark;      /* the malloc rule's seen at the last one */
    uint64_t pad[2];
    /* The size of each matching allocation while the malloc rule is on,
     * by its ordinal (rule.seen before the call), the first TRACE_N. */
    uint32_t trace[TRACE_N];
    uint64_t trace_caller[TRACE_N];     /* and who called */
};

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);

static struct ctl *ctl;

#define FD_MAX 65536
#define K_CLIENT 1
#define K_BACKEND 2
static unsigned char fdkind[FD_MAX];
static uint16_t burst_rd[FD_MAX], burst_wr[FD_MAX];

static __thread int tl_worker __attribute__((tls_model("initial-exec")));
static __thread uint64_t tl_rng __attribute__((tls_model("initial-exec")));

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define ADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_RELAXED)

static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_recv)(int, void *, size_t, int);
static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_readv)(int, const struct iovec *, int);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static int (*real_accept)(int, struct sockaddr *, socklen_t *);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static int (*real_close)(int);

#define RESOLVE(name)                                                    \
    do {                                                                 \
        if (real_##name == NULL)                                         \
            *(void **)&real_##name = dlsym(RTLD_NEXT, #name);            \
    } while (0)

static void
say(const char *msg)
{
    size_t n = strlen(msg);
    RESOLVE(write);
    if (real_write != NULL && real_write(2, msg, n) < 0)
        return;
}

__attribute__((constructor)) static void
shim_init(void)
{
    RESOLVE(read);
    RESOLVE(write);
    RESOLVE(recv);
    RESOLVE(send);
    RESOLVE(readv);
    RESOLVE(writev);
    RESOLVE(accept4);
    RESOLVE(accept);
    RESOLVE(connect);
    RESOLVE(close);

    const char *path = getenv("FAULTSHIM_CTL");
    if (path == NULL || path[0] == '\0')
        return;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd == -1 || fstat(fd, &st) == -1 ||
        (size_t)st.st_size < sizeof(struct ctl)) {
        say("faultshim: cannot use $FAULTSHIM_CTL (missing or too small)\n");
        if (fd != -1)
            real_close(fd);
        return;
    }
    void *p = mmap(NULL, sizeof(struct ctl), PROT_READ | PROT_WRITE,
                   MAP_SHARED, fd, 0);
    real_close(fd);
    if (p == MAP_FAILED) {
        say("faultshim: mmap of $FAULTSHIM_CTL failed\n");
        return;
    }
    struct ctl *c = p;
    if (c->magic != CTL_MAGIC || c->version != CTL_VERSION) {
        say("faultshim: $FAULTSHIM_CTL has the wrong magic or version\n");
        munmap(p, sizeof(struct ctl));
        return;
    }
    c->size = sizeof(struct ctl);
    __atomic_store_n(&c->pid, (uint32_t)getpid(), __ATOMIC_RELEASE);
    ctl = c;
}

static uint32_t
rnd(void)
{
    uint64_t x = tl_rng;
    if (x == 0) {
        x = (ctl ? ctl->seed : 0) ^ (uint64_t)(uintptr_t)&tl_rng ^
            0x9e3779b97f4a7c15ull;
        if (x == 0)
            x = 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    tl_rng = x;
    return (uint32_t)(x >> 32);
}

/* Take one from *p unless it is 0 (UNLIMITED stays). */
static int
take(uint32_t *p)
{
    uint32_t v = LOAD(p);
    for (;;) {
        if (v == 0)
            return 0;
        if (v == UNLIMITED)
            return 1;
        if (__atomic_compare_exchange_n(p, &v, v - 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return 1;
    }
}

/* A matching call: does it get the fault? */
static int
decide(struct rule *r, void *caller, size_t size)
{
    ADD(&r->seen, 1);
    if (take(&r->skip))
        return 0;
    uint32_t ppm = LOAD(&r->ppm);
    if (ppm != 0 && ppm < 1000000u && rnd() % 1000000u >= ppm)
        return 0;
    if (!take(&r->budget))
        return 0;
    __atomic_store_n(&r->last_caller, (uint64_t)(uintptr_t)caller,
                     __ATOMIC_RELAXED);
    __atomic_store_n(&r->last_size, (uint64_t)size, __ATOMIC_RELAXED);
    ADD(&r->injected, 1);
    return 1;
}

static struct rule *
rule_on(enum kind k)
{
    struct ctl *c = ctl;
    if (c == NULL || !LOAD(&c->r[k].on))
        return NULL;
    return &c->r[k];
}

static int
errno_of(const struct rule *r, int dflt)
{
    uint32_t e = LOAD(&r->err);
    return e != 0 ? (int)e : dflt;
}

/* ------------------------------------------------------------------ */
/* Memory                                                              */

static int
malloc_fault(size_t n, void *caller)
{
    struct ctl *c = ctl;
    if (c == NULL)
        return 0;
    ADD(&c->mallocs, 1);
    if (tl_worker)
        ADD(&c->worker_mallocs, 1);
    struct rule *r = rule_on(F_MALLOC);
    if (r == NULL)
        return 0;
    if ((LOAD(&r->where) & W_WORKERS) && !tl_worker)
        return 0;
    uint32_t lo = LOAD(&r->arg), hi = LOAD(&r->arg2);
    if (n < lo || (hi != 0 && n > hi))
        return 0;
    uint64_t i = LOAD(&r->seen);
    if (i < TRACE_N) {
        c->trace[i] = n > 0xffffffffu ? 0xffffffffu : (uint32_t)n;
        c->trace_caller[i] = (uint64_t)(uintptr_t)caller;
    }
    return decide(r, caller, n);
}

static void
live(int d)
{
    if (ctl != NULL)
        __atomic_fetch_add(&ctl->live, d, __ATOMIC_RELAXED);
}

void *
malloc(size_t n)
{
    if (malloc_fault(n, __builtin_return_address(0))) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = __libc_malloc(n);
    if (p != NULL)
        live(1);
    return p;
}

void *
calloc(size_t n, size_t m)
{
    size_t t;
    if (!__builtin_mul_overflow(n, m, &t) && malloc_fault(t, __builtin_return_address(0))) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = __libc_calloc(n, m);
    if (p != NULL)
        live(1);
    return p;
}

void *
realloc(void *old, size_t n)
{
    if (old == NULL)
        return malloc(n);
    if (n == 0) {               /* glibc: frees, returns NULL */
        live(-1);
        return __libc_realloc(old, 0);
    }
    if (malloc_fault(n, __builtin_return_address(0))) {
        errno = ENOMEM;
        return NULL;
    }
    return __libc_realloc(old, n);
}

void
free(void *p)
{
    if (p == NULL)
        return;
    live(-1);
    __libc_free(p);
}

int
posix_memalign(void **out, size_t al, size_t n)
{
    if (al == 0 || (al & (al - 1)) != 0 || al % sizeof(void *) != 0)
        return EINVAL;
    if (malloc_fault(n, __builtin_return_address(0)))
        return ENOMEM;
    void *p = __libc_memalign(al, n);
    if (p == NULL)
        return ENOMEM;
    live(1);
    *out = p;
    return 0;
}

void *
memalign(size_t al, size_t n)
{
    if (malloc_fault(n, __builtin_return_address(0))) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = __libc_memalign(al, n);
    if (p != NULL)
        live(1);
    return p;
}

void *
aligned_alloc(size_t al, size_t n)
{
    return memalign(al, n);
}

/* ------------------------------------------------------------------ */
/* Descriptors                                                         */

static int
kind_of(int fd)
{
    if (ctl == NULL || fd < 0 || fd >= FD_MAX)
        return 0;
    return __atomic_load_n(&fdkind[fd], __ATOMIC_RELAXED);
}

static void
kind_set(int fd, int k)
{
    if (fd >= 0 && fd < FD_MAX) {
        __atomic_store_n(&fdkind[fd], (unsigned char)k, __ATOMIC_RELAXED);
        burst_rd[fd] = burst_wr[fd] = 0;
    }
}

static int
accepted(int fd)
{
    if (fd >= 0) {
        kind_set(fd, K_CLIENT);
        if (ctl != NULL)
            ADD(&ctl->accepts, 1);
    }
    return fd;
}

int
accept4(int fd, struct sockaddr *sa, socklen_t *len, int flags)
{
    struct rule *r;

    RESOLVE(accept4);
    tl_worker = 1;
    if ((r = rule_on(F_ACCEPT)) != NULL &&
        decide(r, __builtin_return_address(0), 0)) {
        errno = errno_of(r, EMFILE);
        return -1;
    }
    return accepted(real_accept4(fd, sa, len, flags));
}

int
accept(int fd, struct sockaddr *sa, socklen_t *len)
{
    struct rule *r;

    RESOLVE(accept);
    tl_worker = 1;
    if ((r = rule_on(F_ACCEPT)) != NULL &&
        decide(r, __builtin_return_address(0), 0)) {
        errno = errno_of(r, EMFILE);
        return -1;
    }
    return accepted(real_accept(fd, sa, len));
}

int
connect(int fd, const struct sockaddr *sa, socklen_t len)
{
    RESOLVE(connect);
    if (ctl != NULL && fd >= 0 && fd < FD_MAX && sa != NULL &&
        (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)) {
        int type = 0;
        socklen_t tl = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 &&
            type == SOCK_STREAM) {
            kind_set(fd, K_BACKEND);
            ADD(&ctl->connects, 1);
            __atomic_store_n(&ctl->connect_mark,
                             LOAD(&ctl->r[F_MALLOC].seen), __ATOMIC_RELAXED);
        }
    }
    return real_connect(fd, sa, len);
}

int
close(int fd)
{
    RESOLVE(close);
    if (fd >= 0 && fd < FD_MAX && fdkind[fd])
        kind_set(fd, 0);
    return real_close(fd);
}

/* ------------------------------------------------------------------ */
/* Reads and writes                                                    */

static unsigned
where_of(int k)
{
    return k == K_CLIENT ? W_CLIENT : W_BACKEND;
}

/* An EAGAIN rule: a decision starts a burst of arg calls on that fd. */
static int
eagain(enum kind kind, int fd, int k, uint16_t *burst, void *caller,
       size_t n)
{
    struct rule *r = rule_on(kind);
    if (r == NULL || !(LOAD(&r->where) & where_of(k))) {
        burst[fd] = 0;
        return 0;
    }
    if (burst[fd] > 0) {
        burst[fd]--;
        ADD(&r->seen, 1);
        ADD(&r->injected, 1);
        return 1;
    }
    if (!decide(r, caller, n))
        return 0;
    uint32_t len = LOAD(&r->arg);
    burst[fd] = (uint16_t)(len > 1 ? (len > 65535 ? 65534 : len - 1) : 0);
    return 1;
}

/* How many of n bytes this call may move (n, or fewer under a SHORT
 * rule). */
static size_t
shorten(enum kind kind, int k, size_t n, void *caller)
{
    if (n < 2)
        return n;
    struct rule *r = rule_on(kind);
    if (r == NULL || !(LOAD(&r->where) & where_of(k)) ||
        !decide(r, caller, n))
        return n;
    size_t most = LOAD(&r->arg);
    if (most == 0 || most > n - 1)
        most = n - 1;
    return 1 + rnd() % most;
}

/* A connection error is for good, as a real one is: the socket is shut
 * both ways, so later reads see EOF and writes EPIPE (without this,
 * OpenSSL, which deliberately ignores EPIPE while sending a TLS 1.3
 * session ticket, would go on writing on a "broken" connection that
 * still works, and the client would see a record missing). */
static void
dead(int fd)
{
    shutdown(fd, SHUT_RDWR);
}

/* Before a read on fd: 0 to go on (with *n possibly cut), or -1 with
 * errno set. */
static int
before_read(int fd, size_t *n, void *caller)
{
    int k = kind_of(fd);
    if (k == 0)
        return 0;
    struct rule *r = rule_on(F_READ_ERR);
    if (r != NULL && (LOAD(&r->where) & where_of(k)) &&
        decide(r, caller, *n)) {
        dead(fd);
        errno = errno_of(r, ECONNRESET);
        return -1;
    }
    if (eagain(F_READ_EAGAIN, fd, k, burst_rd, caller, *n)) {
        errno = EAGAIN;
        return -1;
    }
    *n = shorten(F_READ_SHORT, k, *n, caller);
    return 0;
}

static int
before_write(int fd, size_t *n, void *caller)
{
    int k = kind_of(fd);
    if (k == 0)
        return 0;
    struct rule *r = rule_on(F_WRITE_ERR);
    if (r != NULL && (LOAD(&r->where) & where_of(k)) &&
        decide(r, caller, *n)) {
        dead(fd);
        errno = errno_of(r, EPIPE);
        return -1;
    }
    if (eagain(F_WRITE_EAGAIN, fd, k, burst_wr, caller, *n)) {
        errno = EAGAIN;
        return -1;
    }
    *n = shorten(F_WRITE_SHORT, k, *n, caller);
    return 0;
}

ssize_t
read(int fd, void *p, size_t n)
{
    RESOLVE(read);
    if (before_read(fd, &n, __builtin_return_address(0)) != 0)
        return -1;
    return real_read(fd, p, n);
}

ssize_t
recv(int fd, void *p, size_t n, int flags)
{
    RESOLVE(recv);
    if (before_read(fd, &n, __builtin_return_address(0)) != 0)
        return -1;
    return real_recv(fd, p, n, flags);
}

ssize_t
write(int fd, const void *p, size_t n)
{
    RESOLVE(write);
    if (before_write(fd, &n, __builtin_return_address(0)) != 0)
        return -1;
    return real_write(fd, p, n);
}

ssize_t
send(int fd, const void *p, size_t n, int flags)
{
    RESOLVE(send);
    if (before_write(fd, &n, __builtin_return_address(0)) != 0)
        return -1;
    return real_send(fd, p, n, flags);
}

/* An iovec cut to at most n bytes in total (into out, at most cap
 * entries); returns the entry count. */
static int
iov_cut(const struct iovec *iov, int cnt, size_t n, struct iovec *out,
        int cap)
{
    int i;
    for (i = 0; i < cnt && i < cap && n > 0; i++) {
        out[i] = iov[i];
        if (out[i].iov_len > n)
            out[i].iov_len = n;
        n -= out[i].iov_len;
    }
    return i;
}

static size_t
iov_total(const struct iovec *iov, int cnt)
{
    size_t t = 0;
    for (int i = 0; i < cnt; i++)
        t += iov[i].iov_len;
    return t;
}

ssize_t
readv(int fd, const struct iovec *iov, int cnt)
{
    struct iovec cut[64];
    size_t total = iov_total(iov, cnt), n = total;

    RESOLVE(readv);
    if (before_read(fd, &n, __builtin_return_address(0)) != 0)
        return -1;
    if (n < total && cnt > 0)
        return real_readv(fd, cut, iov_cut(iov, cnt, n, cut, 64));
    return real_readv(fd, iov, cnt);
}

ssize_t
writev(int fd, const struct iovec *iov, int cnt)
{
    struct iovec cut[64];
    size_t total = iov_total(iov, cnt), n = total;

    RESOLVE(writev);
    if (before_write(fd, &n, __builtin_return_address(0)) != 0)
        return -1;
    if (n < total && cnt > 0)
        return real_writev(fd, cut, iov_cut(iov, cnt, n, cut, 64));
    return real_writev(fd, iov, cnt);
}
