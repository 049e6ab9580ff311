/*
 * fuzz_units.c - differential fuzz target for the value parsers.
 *
 * The input (cut at its first NUL) goes to every units_* function. Each
 * result is checked against a reference written here with strtoull() and
 * explicit overflow arithmetic: same accept/reject decision, same value.
 */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "units.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FAIL(...)                                                        \
    do {                                                                 \
        fprintf(stderr, "fuzz_units: " __VA_ARGS__);                     \
        fputc('\n', stderr);                                             \
        abort();                                                         \
    } while (0)

/* Digits then a suffix from the table; -1 if malformed or overflowing. */
static int
ref_parse(const char *s, const char *const *suffixes, const uint64_t *mult,
          size_t n, uint64_t *out)
{
    size_t d = 0;
    unsigned long long v;
    char *end;

    while (isdigit((unsigned char)s[d]))
        d++;
    if (d == 0)
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno == ERANGE || end != s + d)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (strcasecmp(s + d, suffixes[i]) == 0) {
            if (mult[i] != 0 && v > UINT64_MAX / mult[i])
                return -1;
            *out = v * mult[i];
            return 0;
        }
    }
    return -1;
}

static void
compare(const char *what, const char *s, int rc, uint64_t v, int ref_rc,
        uint64_t ref)
{
    if (rc != ref_rc || (rc == 0 && v != ref))
        FAIL("%s(\"%s\"): got %d/%llu, want %d/%llu", what, s, rc,
             (unsigned long long)v, ref_rc, (unsigned long long)ref);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const dur_sfx[] = { "", "ms", "s", "m", "h" };
    static const uint64_t dur_mult[] = { 1000, 1, 1000, 60000, 3600000 };
    static const char *const size_sfx[] = { "", "k", "m", "g" };
    static const uint64_t size_mult[] = { 1, 1024, 1048576, 1073741824 };
    static const char *const none[] = { "" };
    static const uint64_t one[] = { 1 };
    char *s = malloc(size + 1);
    uint64_t v = 0, ref = 0;
    int rc, ref_rc;
    bool b;

    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    rc = units_uint(s, &v);
    ref_rc = ref_parse(s, none, one, 1, &ref);
    compare("units_uint", s, rc, v, ref_rc, ref);

    rc = units_duration_ms(s, &v);
    ref_rc = ref_parse(s, dur_sfx, dur_mult, 5, &ref);
    compare("units_duration_ms", s, rc, v, ref_rc, ref);

    rc = units_size(s, &v);
    ref_rc = ref_parse(s, size_sfx, size_mult, 4, &ref);
    compare("units_size", s, rc, v, ref_rc, ref);

    rc = units_bool(s, &b);
    bool known = strcasecmp(s, "yes") == 0 || strcasecmp(s, "no") == 0
        || strcasecmp(s, "on") == 0 || strcasecmp(s, "off") == 0
        || strcasecmp(s, "true") == 0 || strcasecmp(s, "false") == 0
        || strcmp(s, "1") == 0 || strcmp(s, "0") == 0;
    if ((rc == 0) != known)
        FAIL("units_bool(\"%s\") = %d", s, rc);

    free(s);
    return 0;
}
