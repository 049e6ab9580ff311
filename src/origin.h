/*
 * origin.h - the Origin allowlist (defence against cross-site WebSocket
 * hijacking). Built once per configuration snapshot, read-only after, so
 * any worker thread may call origin_allowed() concurrently.
 *
 * An Origin header value is normalised before it is compared: scheme and
 * host lower-cased, an explicit default port removed (:443 for https and
 * wss, :80 for http and ws), so "HTTPS://App.Example.com:443" equals
 * "https://app.example.com". A value that is not "scheme://host[:port]"
 * (RFC 6454 serialisation: no path, query, fragment, userinfo; host a
 * DNS name, IPv4 or [IPv6]; port 1-65535) is malformed and never allowed;
 * "null" is never allowed.
 * Exact entries (allow) are normalised the same way at load and looked up
 * exactly. Patterns (allow_pattern, PCRE2, JIT-compiled when available)
 * must match the whole normalised origin: they are compiled with
 * PCRE2_ANCHORED | PCRE2_ENDANCHORED, so "https://app\.example\.com"
 * cannot be satisfied by "https://app.example.com.evil.net". Matching
 * uses a match limit so a pathological pattern cannot stall a worker.
 */
#ifndef WSGUARD_ORIGIN_H
#define WSGUARD_ORIGIN_H

#include <stddef.h>

#include "config.h"

#define ORIGIN_MAX 512          /* longer Origin values are malformed */

struct origin_set;

/* Compile allow + allow_pattern. Returns NULL with a message in err when
 * an exact entry is malformed or a pattern does not compile ("pattern
 * 'X': <PCRE2 message> at offset N"). An empty set (no entries at all)
 * is valid: origin_active() is then 0. */
struct origin_set *origin_set_new(const struct strlist *allow,
                                  const struct strlist *patterns,
                                  char *err, size_t cap);
void origin_set_free(struct origin_set *s);

/* 1 when the set has any entry (the check is on), else 0. */
int origin_active(const struct origin_set *s);

/* 1 if the Origin value in[0..len) is allowed, 0 if not (including
 * malformed and "null"). Thread-safe (match data per call on the stack
 * or per thread; no shared mutable state). */
int origin_allowed(const struct origin_set *s, const char *in, size_t len);

/* Normalise in[0..len) into out (cap bytes, NUL-terminated). Returns the
 * length, or -1 when malformed, "null" or too long. Pure. */
int origin_normalize(const char *in, size_t len, char *out, size_t cap);

/* Check that one pattern compiles (for config validation with a line
 * number). Returns 0, or -1 with a message in err. */
int origin_pattern_check(const char *pattern, char *err, size_t cap);

#endif
