/*
 * test_ratelimit.c - token buckets: burst, refill from the caller's clock,
 * strict and overdraw modes, a clock that does not move or goes back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ratelimit.h"

static void
test_burst_then_refill(void **state)
{
    struct bucket b;
    bucket_init(&b, 5, 100.0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(bucket_take(&b, 10, 5, 1, 100.0, 0), 1);
    assert_int_equal(bucket_take(&b, 10, 5, 1, 100.0, 0), 0);
    /* 0.1 s at 10/s gives one token back. */
    assert_int_equal(bucket_take(&b, 10, 5, 1, 100.1, 0), 1);
    assert_int_equal(bucket_take(&b, 10, 5, 1, 100.1, 0), 0);
    /* A long pause refills only up to the burst. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(bucket_take(&b, 10, 5, 1, 200.0, 0), 1);
    assert_int_equal(bucket_take(&b, 10, 5, 1, 200.0, 0), 0);
}

static void
test_just_under_rate_never_fails(void **state)
{
    /* 10 per second allowed, 9.5 per second sent, for 60 s. */
    struct bucket b;
    bucket_init(&b, 10, 0.0);
    for (int i = 0; i < 570; i++)
        assert_int_equal(bucket_take(&b, 10, 10, 1, i / 9.5, 0), 1);
}

static void
test_over_rate_fails_after_burst(void **state)
{
    struct bucket b;
    bucket_init(&b, 10, 0.0);
    int ok = 0;
    for (int i = 0; i < 100; i++)
        ok += bucket_take(&b, 10, 10, 1, i / 20.0, 0);   /* 20/s sent */
    assert_true(ok < 100);
    assert_true(ok >= 10);
}

static void
test_overdraw(void **state)
{
    struct bucket b;
    bucket_init(&b, 1000, 0.0);
    /* A frame larger than a second's budget passes once ... */
    assert_int_equal(bucket_take(&b, 1000, 1000, 5000, 0.0, 1), 1);
    /* ... and the next one, while in debt, fails and takes nothing. */
    assert_int_equal(bucket_take(&b, 1000, 1000, 1, 1.0, 1), 0);
    assert_int_equal(bucket_take(&b, 1000, 1000, 1, 3.9, 1), 0);
    /* Debt repaid after 4 s at 1000/s. */
    assert_int_equal(bucket_take(&b, 1000, 1000, 1, 4.0, 1), 1);
    /* Strict mode never overdraws. */
    bucket_init(&b, 1000, 0.0);
    assert_int_equal(bucket_take(&b, 1000, 1000, 5000, 0.0, 0), 0);
    assert_int_equal(bucket_take(&b, 1000, 1000, 1000, 0.0, 0), 1);
}

static void
test_clock_backwards(void **state)
{
    struct bucket b;
    bucket_init(&b, 2, 10.0);
    assert_int_equal(bucket_take(&b, 1, 2, 2, 10.0, 0), 1);
    /* An earlier time neither refills nor breaks the bucket. */
    assert_int_equal(bucket_take(&b, 1, 2, 1, 5.0, 0), 0);
    assert_int_equal(bucket_take(&b, 1, 2, 1, 11.0, 0), 1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_refill),
        cmocka_unit_test(test_just_under_rate_never_fails),
        cmocka_unit_test(test_over_rate_fails_after_burst),
        cmocka_unit_test(test_overdraw),
        cmocka_unit_test(test_clock_backwards),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
