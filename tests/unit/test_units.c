/*
 * test_units.c - the value syntax: durations, sizes, booleans, integers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "units.h"

#define SENTINEL 0xdeadbeefu

static void
test_uint(void **state)
{
    uint64_t v;

    (void)state;
    assert_int_equal(units_uint("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(units_uint("007", &v), 0);
    assert_int_equal(v, 7);
    assert_int_equal(units_uint("18446744073709551615", &v), 0);
    assert_true(v == UINT64_MAX);

    static const char *const bad[] = {
        "", " 1", "1 ", "-1", "+1", "1k", "0x10", "1.0",
        "18446744073709551616", "99999999999999999999999",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = SENTINEL;
        assert_int_equal(units_uint(bad[i], &v), -1);
        assert_true(v == SENTINEL);      /* untouched on error */
    }
}

static void
test_duration(void **state)
{
    static const struct { const char *s; uint64_t ms; } good[] = {
        { "0", 0 }, { "250ms", 250 }, { "10s", 10000 }, { "10", 10000 },
        { "5m", 300000 }, { "1h", 3600000 }, { "0ms", 0 }, { "0h", 0 },
        { "10S", 10000 }, { "250MS", 250 }, { "2H", 7200000 },
        { "18446744073709551615ms", UINT64_MAX },
    };
    static const char *const bad[] = {
        "", "s", "ms", "-1s", "1.5s", "10 s", " 10s", "10s ", "10sec",
        "1d", "1w", "10msx", "1hm", "18446744073709551615",
        "18446744073709551615s", "5124095576030432m", "18446744073709552h",
    };
    uint64_t v;

    (void)state;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_int_equal(units_duration_ms(good[i].s, &v), 0);
        assert_true(v == good[i].ms);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = SENTINEL;
        assert_int_equal(units_duration_ms(bad[i], &v), -1);
        assert_true(v == SENTINEL);
    }
    /* The largest hour count that fits, and one more. */
    assert_int_equal(units_duration_ms("5124095576030h", &v), 0);
    assert_true(v == 5124095576030ull * 3600000ull);
    assert_int_equal(units_duration_ms("5124095576031h", &v), -1);
}

static void
test_size(void **state)
{
    static const struct { const char *s; uint64_t n; } good[] = {
        { "0", 0 }, { "512", 512 }, { "64k", 65536 }, { "64K", 65536 },
        { "1m", 1048576 }, { "1M", 1048576 }, { "1g", 1073741824 },
        { "8k", 8192 }, { "17179869183g", 17179869183ull << 30 },
    };
    static const char *const bad[] = {
        "", "k", "1kb", "1KiB", "1t", "1 k", "-1", "1.5m", " 1", "1 ",
        "17179869184g", "18014398509481984k", "18446744073709551616",
    };
    uint64_t v;

    (void)state;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_int_equal(units_size(good[i].s, &v), 0);
        assert_true(v == good[i].n);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        v = SENTINEL;
        assert_int_equal(units_size(bad[i], &v), -1);
        assert_true(v == SENTINEL);
    }
}

static void
test_bool(void **state)
{
    static const char *const yes[] = { "yes", "YES", "on", "On", "true",
                                       "TRUE", "1" };
    static const char *const no[] = { "no", "No", "off", "OFF", "false",
                                      "False", "0" };
    static const char *const bad[] = { "", "y", "n", "2", "yes ", " no",
                                       "enabled", "nope", "00" };
    bool b;

    (void)state;
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        b = false;
        assert_int_equal(units_bool(yes[i], &b), 0);
        assert_true(b);
    }
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        b = true;
        assert_int_equal(units_bool(no[i], &b), 0);
        assert_false(b);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        b = true;
        assert_int_equal(units_bool(bad[i], &b), -1);
        assert_true(b);
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uint),
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_size),
        cmocka_unit_test(test_bool),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
