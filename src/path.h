/*
 * path.h - normalisation of the path of an origin-form request target
 * (RFC 3986 §6), so that routes are matched on, and the backend receives,
 * one canonical spelling of a path. Without it "/x/../admin/",
 * "/%61dmin/", "//admin/" and "/public/%2e%2e/admin/" all miss a
 * "[route /admin/]" that requires a token, and reach the backend as sent.
 *
 * What is done, in this order of meaning:
 *   1. Raw bytes: only RFC 3986 pchar and '/' (unreserved, sub-delims,
 *      ':', '@', '%' starting an escape); anything else is refused.
 *   2. Escapes: "%XX" needs two hex digits. An escape of an unreserved
 *      character is decoded ("%61" -> "a", "%2E" -> "."); "%2F", "%5C"
 *      and "%00" (any case) are refused; every other escape is kept,
 *      its hex digits upper-cased ("%3a" -> "%3A").
 *   3. "%25" followed (after step 2) by two hex digits ("%2561",
 *      "%252e", "%25%32%46") is refused: it is an escape encoded twice,
 *      and a backend that decodes twice would see a path routing never
 *      saw ("/%2561dmin/" as "/admin/"). A "%25" not followed by two
 *      hex digits ("%25", "%252g", "%25/2e", "%25%25") is kept.
 *   4. Runs of '/' are merged into one.
 *   5. Dot segments ("." and "..", after step 2) are removed as in RFC
 *      3986 §5.2.4, but a ".." that would climb above the root is
 *      refused rather than clamped.
 *   6. A segment that is "." or ".." followed by ';' or its escape
 *      "%3B" (".;", "..;x", ".%3b", "..%3B") is refused: servlet
 *      containers strip ";params" from a segment, so "/public/..;/admin/"
 *      reaches /admin/ there, and a backend that decodes before
 *      stripping does the same with "/public/..%3B/admin/".
 *   7. Everything else is kept byte for byte (case outside escapes,
 *      sub-delims, ';' in ordinary segments, a trailing slash).
 * The output always starts with '/', is never longer than the input and
 * is a fixed point: normalising it again gives the same bytes.
 *
 * Pure: no allocation, no global state; any thread may call it.
 */
#ifndef WSGUARD_PATH_H
#define WSGUARD_PATH_H

#include <stddef.h>

/* Normalise the path of an origin-form request target (the bytes before
 * any '?'; the caller guarantees in[0] == '/' and len >= 1). Writes the
 * normalised path into out (cap bytes; cap >= len + 1 always suffices,
 * since normalising never lengthens a path), NUL-terminated. Returns its
 * length, or -1 with *reason a short static text for the access log
 * (the caller answers 400). Pure: no allocation, no global state.
 *
 * Also -1 (with a reason) when in does not start with '/' or cap is too
 * small for the result. On -1 nothing is written to out. Only
 * in[0..len) is read; reason may be NULL. Lexical faults (rules 1, 2, 3
 * and 6) are reported before a climb above the root. */
int path_normalize(const char *in, size_t len, char *out, size_t cap,
                   const char **reason);

/*
 * The key a normalised path is routed on: the path with every segment's
 * ";params" left out (out holds at least len bytes; returns the key's
 * length, not NUL-terminated). Servlet containers cut ";params" from each
 * segment before routing, so "/admin;x/" is "/admin/" there: routing it
 * as "/admin/" puts it under the same route's policy. The backend still
 * receives the path itself.
 */
size_t path_route_key(const char *in, size_t len, char *out);

#endif
