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

int
units_duration_ms(const char *s, uint64_t *out_ms)
{
    uint64_t v, mult, r;
    const char *end = parse_digits(s, &v);

    if (end == NULL)
        return -1;
    if (*end == '\0' || strcasecmp(end, "s") == 0)
        mult = 1000;            /* a bare number is seconds */
    else if (strcasecmp(end, "ms") == 0)
        mult = 1;
    else if (strcasecmp(end, "m") == 0)
        mult = 60 * 1000;
    else if (strcasecmp(end, "h") == 0)
        mult = 60 * 60 * 1000;
    else
        return -1;
    if (mul_checked(v, mult, &r) == -1)
        return -1;
    *out_ms = r;
    return 0;
}

int
units_size(const char *s, uint64_t *out)
{
    uint64_t v, mult, r;
    const char *end = parse_digits(s, &v);

    if (end == NULL)
        return -1;
    if (*end == '\0')
        mult = 1;
    else if (strcasecmp(end, "k") == 0)
        mult = 1024;
    else if (strcasecmp(end, "m") == 0)
        mult = 1024 * 1024;
    else if (strcasecmp(end, "g") == 0)
        mult = 1024 * 1024 * 1024;
    else
        return -1;
    if (mul_checked(v, mult, &r) == -1)
        return -1;
    *out = r;
    return 0;
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
