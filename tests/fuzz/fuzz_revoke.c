/*
 * fuzz_revoke.c - the revocation message (it comes from the admin
 * listener and from anyone who can publish on the Redis channel).
 *
 * Properties: a message is accepted only with exactly one kind and a
 * value of 1 to REVOKE_VALUE_MAX bytes without NUL, a ttl within bounds;
 * an accepted one prints back to JSON that parses to the same
 * revocation; it matches its own value and goes into the table and is
 * found there.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "revoke.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                        \
    do {                                                                 \
        fprintf(stderr, "fuzz_revoke: " __VA_ARGS__);                    \
        fputc('\n', stderr);                                             \
        abort();                                                         \
    } while (0)

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct revocation rv, back;
    char err[128], out[1024];

    if (revocation_parse((const char *)data, size, 600000, &rv, err,
                         sizeof err) != 0) {
        if (err[0] == '\0')
            FAIL("refused without a reason");
        return 0;
    }
    size_t n = strlen(rv.value);
    if (n == 0 || n > REVOKE_VALUE_MAX || rv.kind >= REVOKE_COUNT)
        FAIL("accepted a bad value (%zu bytes, kind %d)", n, rv.kind);
    if (rv.ttl_ms < 1000 || rv.ttl_ms > REVOKE_TTL_MAX_MS)
        FAIL("accepted ttl %llu ms", (unsigned long long)rv.ttl_ms);
    int len = revocation_json(&rv, out, sizeof out);
    if (len < 0)
        FAIL("cannot print an accepted revocation");
    if (revocation_parse(out, (size_t)len, 1, &back, err, sizeof err) != 0)
        FAIL("printed form refused: %s (%s)", out, err);
    if (back.kind != rv.kind || strcmp(back.value, rv.value) != 0 ||
        back.ttl_ms != rv.ttl_ms)
        FAIL("round trip changed it: %s", out);
    if (!revocation_matches(&rv, rv.value, n))
        FAIL("does not match its own value");
    if (revoked_add(&rv, 0.0) != 0)
        FAIL("table refused one revocation");
    if (!revoked_match(rv.kind, rv.value, n, 0.0))
        FAIL("not found after adding");
    revoked_clear();
    return 0;
}
