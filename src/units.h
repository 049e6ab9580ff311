/*
 * units.h - parsing of the configuration's value syntax (pure functions).
 *
 * Durations: "250ms", "10s", "5m", "1h"; a bare number is seconds; "0" = off.
 * Sizes: "512", "64k", "1m", "1g" (binary multiples, case-insensitive).
 * Booleans: yes/no, on/off, true/false, 1/0 (case-insensitive).
 * Every function accepts a NUL-terminated string, writes *out only on
 * success, returns 0 on success and -1 on any malformed or overflowing
 * value. Leading/trailing blanks are not accepted (the caller trims).
 * Thread-safe, no allocation.
 */
#ifndef WSGUARD_UNITS_H
#define WSGUARD_UNITS_H

#include <stdbool.h>
#include <stdint.h>

int units_duration_ms(const char *s, uint64_t *out_ms);
int units_size(const char *s, uint64_t *out);
int units_bool(const char *s, bool *out);
/* Plain non-negative decimal integer (no suffix). */
int units_uint(const char *s, uint64_t *out);

/* A configured duration (milliseconds) in seconds, the event loop's unit. */
static inline double
units_seconds(uint64_t ms)
{
    return (double)ms / 1000.0;
}

#endif
