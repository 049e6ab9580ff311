/*
 * units.c - the configuration's value syntax: durations, sizes, booleans
 * and plain integers. Pure functions; see units.h for the contracts.
 */
#include "units.h"

#include <stddef.h>
#include <strings.h>

/*
 * Parse the leading decimal digits of s into *out. Returns a pointer past
 * the digits, or NULL when there is no digit or the number overflows.
 */
static const char *
parse_digits(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    const char *p = s;

    while (*p >= '0' && *p <= '9') {
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return NULL;
        v = v * 10 + d;
        p++;
    }
    if (p == s)
        return NULL;
    *out = v;
    return p;
}

/* Multiply with overflow detection: a value that wraps must be an error,
 * never a silently tiny limit. */
static int
mul_checked(uint64_t a, uint64_t b, uint64_t *out)
{
    if (b != 0 && a > UINT64_MAX / b)
        return -1;
    *out = a * b;
    return 0;
}

int
units_uint(const char *s, uint64_t *out)
{
    uint64_t v;
    const char *end = parse_digits(s, &v);

    if (end == NULL || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

/* A number with an optional unit suffix (case-insensitive), scaled by
 * the suffix's multiplier; "" is the bare number. */
struct suffix {
    const char *name;
    uint64_t mult;
};

static int
parse_scaled(const char *s, const struct suffix *t, size_t n, uint64_t *out)
{
    uint64_t v, r;
    const char *end = parse_digits(s, &v);

    if (end == NULL)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(end, t[i].name) != 0)
            continue;
        if (mul_checked(v, t[i].mult, &r) == -1)
            return -1;
        *out = r;
        return 0;
    }
    return -1;
}

int
units_duration_ms(const char *s, uint64_t *out_ms)
{
    static const struct suffix t[] = {
        { "", 1000 },           /* a bare number is seconds */
        { "s", 1000 },
        { "ms", 1 },
        { "m", 60ull * 1000 },
        { "h", 60ull * 60 * 1000 },
    };
    return parse_scaled(s, t, sizeof t / sizeof t[0], out_ms);
}

int
units_size(const char *s, uint64_t *out)
{
    static const struct suffix t[] = {
        { "", 1 },
        { "k", 1024 },
        { "m", 1024ull * 1024 },
        { "g", 1024ull * 1024 * 1024 },
    };
    return parse_scaled(s, t, sizeof t / sizeof t[0], out);
}

int
units_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "yes", "on", "true", "1" };
    static const char *const no[] = { "no", "off", "false", "0" };

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}
