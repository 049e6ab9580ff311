/*
 * netaddr.h - client addresses: the per-IP connection table, trusted
 * proxy ranges (CIDR), X-Forwarded-For, and the PROXY protocol (v1/v2).
 *
 * The table is shared by all workers (a connection is counted from accept
 * to socket close, whatever worker holds it), so it is a hash table with
 * striped mutexes; entries are freed when their count drops to zero, so
 * churn leaves nothing behind. Everything else here is pure.
 */
#ifndef WSGUARD_NETADDR_H
#define WSGUARD_NETADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "config.h"

/* The unit a limit counts: an IPv4 address, or an IPv6 address masked to
 * ipv6_prefix bits. IPv4-mapped IPv6 addresses count as IPv4. */
struct ip_key {
    uint8_t family;             /* AF_INET or AF_INET6 */
    uint8_t addr[16];           /* IPv4 in the first 4 bytes */
};

void ip_key_from_sockaddr(const struct sockaddr *sa, unsigned v6_prefix,
                          struct ip_key *k);
/* Parse a textual address ("1.2.3.4", "2001:db8::1", "[2001:db8::1]",
 * optionally with ":port" for IPv4 and bracketed IPv6). 0 or -1. */
int ip_key_from_text(const char *s, size_t len, unsigned v6_prefix,
                     struct ip_key *k);
/* The key's address as text (masked for IPv6): for logs. */
void ip_key_text(const struct ip_key *k, char *out, size_t cap);

struct iplimit;
struct iplimit *iplimit_new(void);
void iplimit_free(struct iplimit *t);
/* Count one connection for k if fewer than max are counted (max 0 =
 * unlimited: always succeeds, counts nothing, returns 2). Returns 1 when
 * counted (the caller must call iplimit_release once), 0 over the limit,
 * 2 when not counted. Thread-safe. */
int iplimit_acquire(struct iplimit *t, const struct ip_key *k, uint64_t max);
void iplimit_release(struct iplimit *t, const struct ip_key *k);
uint64_t iplimit_count(struct iplimit *t, const struct ip_key *k);
size_t iplimit_entries(struct iplimit *t);

/* The max addresses with the most connections, largest first, into out;
 * returns how many (a reporter's view; locks one shard at a time). */
struct ip_count {
    struct ip_key key;
    uint64_t count;
};
size_t iplimit_top(struct iplimit *t, struct ip_count *out, size_t max);

/* Every address counted now, with its count, into out (at most max, in
 * no particular order; size out with iplimit_entries()). */
size_t iplimit_snapshot(struct iplimit *t, struct ip_count *out,
                        size_t max);

/* A set of CIDR ranges ("10.0.0.0/8", "2001:db8::/32", a bare address =
 * /32 or /128). */
struct cidr_set;
struct cidr_set *cidr_set_new(const struct strlist *l, char *err,
                              size_t cap);
void cidr_set_free(struct cidr_set *s);
int cidr_set_empty(const struct cidr_set *s);
int cidr_contains(const struct cidr_set *s, const struct ip_key *addr);
/* Check one CIDR string (config validation). 0 or -1 with err. */
int cidr_check(const char *s, char *err, size_t cap);

/*
 * The client address behind trusted proxies: walk the X-Forwarded-For
 * values v[0..n) (each comma-separated; several headers form one list in
 * order) from the right, skipping addresses inside trusted; the first
 * address not trusted is the client. Writes its text to out. Returns 0,
 * or -1 when the list is malformed or holds only trusted addresses. No
 * length limit: only the entries up to the client are read.
 */
int xff_client_v(const char *const *v, const size_t *len, size_t n,
                 const struct cidr_set *trusted, char *out, size_t cap);
/* The same for one value. */
int xff_client(const char *v, size_t len, const struct cidr_set *trusted,
               char *out, size_t cap);

/*
 * PROXY protocol (HAProxy's proxy-protocol.txt), v1 text and v2 binary,
 * parsed incrementally from buf[0..len). Returns the header length (> 0)
 * and the source address in *src (family AF_UNSPEC for "UNKNOWN"/LOCAL),
 * PROXY_INCOMPLETE (-2) when more bytes are needed, PROXY_ERROR (-1) when
 * the bytes are not a valid PROXY header. v1 is at most 107 bytes; v2
 * headers longer than 536 bytes are refused.
 */
#define PROXY_ERROR (-1)
#define PROXY_INCOMPLETE (-2)
#define PROXY_MAX 536           /* the longest header accepted (v2) */
struct sockaddr_storage;
int proxy_parse(const uint8_t *buf, size_t len, struct sockaddr_storage *src);

#endif
