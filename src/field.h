/*
 * field.h - query parameters and cookies as the frameworks behind wsguard
 * read them (pure: no allocation, no global state).
 *
 * A backend does not compare parameter names byte for byte: Go, Python,
 * Node and Java percent-decode them, PHP also turns '+', ' ', '.' and '['
 * into '_', ASP.NET ignores case, and every common cookie parser trims
 * blanks around names and values. A token parameter that wsguard failed
 * to recognise because it was spelled differently would reach the backend
 * unverified. So names are compared here the way the most permissive of
 * those parsers would: a raw name "is" a configured name when its folded
 * form equals the folded configured name, where folding is
 *   percent-decoding (%XX; '+' as a space), dropping leading blanks,
 *   mapping ' ', '.' and '[' to '_', and ASCII lower-casing.
 * Values are never decoded: a JWT needs no escaping, so an escaped token
 * is not one wsguard issued and fails verification as malformed.
 */
#ifndef WSGUARD_FIELD_H
#define WSGUARD_FIELD_H

#include <stdbool.h>
#include <stddef.h>

/* One element of a query string or of a Cookie header value. Pointers
 * into the caller's buffer. */
struct field {
    const char *raw;            /* the whole element as sent */
    size_t raw_len;
    const char *name;           /* query: raw name; cookie: trimmed */
    size_t name_len;
    const char *value;          /* query: raw value (empty without '=');
                                   cookie: trimmed, one pair of DQUOTEs
                                   removed (RFC 6265 §4.1.1) */
    size_t value_len;
};

/*
 * Iterate over a query string (the bytes after '?', without it), split
 * at '&' (and at ';', which several parsers also treat as a separator).
 * Start with *pos = 0. Returns 1 with *f filled, 0 at the end. Empty
 * elements are skipped.
 */
int field_query_next(const char *q, size_t len, size_t *pos,
                     struct field *f);

/*
 * Iterate over a Cookie header value, split at ';' (RFC 6265 §5.4; user
 * agents join pairs with "; ", servers split at ';' and trim). Names and
 * values are trimmed of SP and HTAB. Elements without '=' are returned
 * with the whole trimmed element as the name (PHP, Go and Node treat
 * "name" as a cookie with an empty value). Empty elements are skipped.
 */
int field_cookie_next(const char *v, size_t len, size_t *pos,
                      struct field *f);

/* Could a backend read the raw name [raw, raw+len) as name (a C string)?
 * See the folding above. */
bool field_name_is(const char *raw, size_t len, const char *name);

/*
 * Write q without every element whose name field_name_is() any of
 * names[0..n) (split as field_query_next does). Everything else stays
 * byte for byte, separators and empty elements included: a removed
 * element goes with the separator before it (with those around it, when
 * no element is kept before it). Returns the length written (out is NUL-terminated, so cap must
 * exceed it), or -1 if it does not fit; cap >= len + 1 always suffices.
 */
int field_query_without(const char *q, size_t len, const char *const *names,
                        size_t n, char *out, size_t cap);

#endif
