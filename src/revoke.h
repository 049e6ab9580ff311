/*
 * revoke.h - session revocation: the message that names what to revoke,
 * and the process's table of revocations in force.
 *
 * A revocation names exactly one of a token subject ("sub"), a token id
 * ("jti") or a client address ("client_ip"), with an optional "ttl": how
 * long new upgrades that match stay refused (401). The same JSON comes
 * in on the admin listener (POST /revoke) and on the Redis channel
 * <key_prefix>revoke, so an application can publish it with any Redis
 * client:
 *
 *     {"sub": "user-42"}
 *     {"jti": "0f6c3e", "ttl": "1h"}
 *     {"client_ip": "203.0.113.9", "ttl": "30m"}
 *
 * The table is process-wide: every worker checks it at each upgrade, and
 * any thread adds to it (a mutex, held briefly; a lock-free count makes
 * the check free while nothing is revoked). It holds at most REVOKE_MAX
 * entries: when it is full of entries still in force, a new revocation
 * is refused (an error to whoever sent it), never dropped silently.
 */
#ifndef WSGUARD_REVOKE_H
#define WSGUARD_REVOKE_H

#include <stddef.h>
#include <stdint.h>

#define REVOKE_VALUE_MAX 255
#define REVOKE_MAX 65536
#define REVOKE_TTL_MAX_MS (30ull * 24 * 3600 * 1000)   /* 30 days */

/* What a revocation names. */
enum revoke_kind {
    REVOKE_SUB = 0,
    REVOKE_JTI,
    REVOKE_IP,
    REVOKE_COUNT
};

/* The JSON key of each kind: "sub", "jti", "client_ip". */
extern const char *const revoke_key[REVOKE_COUNT];

struct revocation {
    enum revoke_kind kind;
    char value[REVOKE_VALUE_MAX + 1];   /* NUL-terminated; an address in
                                           canonical form */
    uint64_t ttl_ms;
};

/*
 * Parse a revocation: a JSON object with exactly one of sub, jti and
 * client_ip (a non-empty string of at most REVOKE_VALUE_MAX bytes, no
 * NUL; client_ip an IPv4 or IPv6 address, stored canonical, v4-mapped
 * IPv6 as IPv4), and optionally "ttl" (a duration string such as "10m",
 * 1 s to 30 days); other keys are refused. default_ttl_ms when ttl is
 * absent. 0, or -1 with a short reason in err.
 */
int revocation_parse(const char *json, size_t len, uint64_t default_ttl_ms,
                     struct revocation *rv, char *err, size_t cap);

/* Does rv name value (len bytes)? An address in canonical form. */
int revocation_matches(const struct revocation *rv, const char *value,
                       size_t len);

/* The revocation as JSON, with its ttl (into out; length, or -1 when it
 * does not fit). */
int revocation_json(const struct revocation *rv, char *out, size_t cap);

/* Add rv to the table from now (seconds, any clock used consistently
 * with revoked_match), or extend the one in force. 0, or -1 when the
 * table is full of entries still in force. */
int revoked_add(const struct revocation *rv, double now);

/* Is value (len bytes) revoked at now? An address is compared in
 * canonical form. */
int revoked_match(enum revoke_kind kind, const char *value, size_t len,
                  double now);

/* Entries in the table (expired ones included until purged). */
size_t revoked_count(void);

/* Empty the table (tests). */
void revoked_clear(void);

#endif
