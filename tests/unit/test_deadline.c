/*
 * test_deadline.c - the one-timer-per-session deadline computation:
 * each purpose alone, their interplay, priority when several are due,
 * and activity moving deadlines later (lazy re-arm).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "deadline.h"

static const struct session_timeouts all_off = {0, 0, 0, 0, 0, 0};

static void
test_nothing_configured(void **state)
{
    struct session_times s = {.started = 100, .last_activity = 100,
                              .cli_rx = 100};
    double t[DL_COUNT];
    deadline_all(&s, &all_off, t);
    assert_true(deadline_next(t) == 0);
    assert_int_equal(deadline_due(t, 1e9), -1);
}

static void
test_idle_moves_with_activity(void **state)
{
    struct session_timeouts c = all_off;
    c.idle_timeout_ms = 5000;
    struct session_times s = {.started = 100, .last_activity = 100,
                              .cli_rx = 100};
    double t[DL_COUNT];
    deadline_all(&s, &c, t);
    assert_true(deadline_next(t) == 105);
    /* The timer fires at 105, but there was traffic at 103: not due,
     * re-armed for 108. */
    s.last_activity = 103;
    deadline_all(&s, &c, t);
    assert_int_equal(deadline_due(t, 105), -1);
    assert_true(deadline_next(t) == 108);
    assert_int_equal(deadline_due(t, 108), DL_IDLE);
}

/* The TLS buffers go back RELAY_QUIET_MS after the last activity, only
 * while they may be held, and after every other deadline in priority. */
static void
test_quiet_release(void **state)
{
    struct session_timeouts c = all_off;
    c.quiet_ms = 1000;
    c.idle_timeout_ms = 1000;
    struct session_times s = {.started = 100, .last_activity = 100,
                              .cli_rx = 100, .held = 100};
    double t[DL_COUNT];
    deadline_all(&s, &c, t);
    assert_true(t[DL_QUIET] == 101);
    /* Both due at 101: the idle close comes first. */
    assert_int_equal(deadline_due(t, 101), DL_IDLE);
    c.idle_timeout_ms = 0;
    deadline_all(&s, &c, t);
    assert_int_equal(deadline_due(t, 100.9), -1);
    assert_int_equal(deadline_due(t, 101), DL_QUIET);
    /* Traffic at 100.5 moves it. */
    s.held = 100.5;
    deadline_all(&s, &c, t);
    assert_true(deadline_next(t) == 101.5);
    /* Released: no deadline left. */
    s.held = 0;
    deadline_all(&s, &c, t);
    assert_true(deadline_next(t) == 0);
}

static void
test_lifetime_beats_idle(void **state)
{
    struct session_timeouts c = all_off;
    c.idle_timeout_ms = 10000;
    c.max_lifetime_ms = 10000;
    struct session_times s = {.started = 0, .last_activity = 0};
    double t[DL_COUNT];
    deadline_all(&s, &c, t);
    assert_int_equal(deadline_due(t, 10), DL_LIFETIME);
}

static void
test_ping_then_pong_timeout(void **state)
{
    struct session_timeouts c = all_off;
    c.ping_interval_ms = 30000;
    c.pong_timeout_ms = 10000;
    struct session_times s = {.started = 0, .last_activity = 0, .cli_rx = 0};
    double t[DL_COUNT];

    deadline_all(&s, &c, t);
    assert_true(t[DL_PING] == 30);
    assert_true(t[DL_PONG] == 0);
    assert_int_equal(deadline_due(t, 30), DL_PING);

    /* Ping sent at 30, nothing from the client since: pong due at 40. */
    s.ping_sent = 30;
    deadline_all(&s, &c, t);
    assert_true(t[DL_PING] == 0);
    assert_true(t[DL_PONG] == 40);
    assert_int_equal(deadline_due(t, 39.9), -1);
    assert_int_equal(deadline_due(t, 40), DL_PONG);

    /* Any byte from the client (the pong, or anything) answers it: the
     * next ping is ping_interval after that byte. */
    s.cli_rx = 35;
    deadline_all(&s, &c, t);
    assert_true(t[DL_PONG] == 0);
    assert_true(t[DL_PING] == 65);
}

static void
test_ping_without_pong_timeout_repeats(void **state)
{
    struct session_timeouts c = all_off;
    c.ping_interval_ms = 1000;
    struct session_times s = {.cli_rx = 10, .ping_sent = 11};
    double t[DL_COUNT];
    deadline_all(&s, &c, t);
    /* pong_timeout off: an outstanding ping has no deadline at all. */
    assert_true(deadline_next(t) == 0);
    s.cli_rx = 11.5;
    deadline_all(&s, &c, t);
    assert_true(t[DL_PING] == 12.5);
}

static void
test_write_stall(void **state)
{
    struct session_timeouts c = all_off;
    c.write_timeout_ms = 2000;
    struct session_times s = {.cli_wblock = 50};
    double t[DL_COUNT];
    deadline_all(&s, &c, t);
    assert_true(t[DL_STALL_CLI] == 52);
    assert_true(t[DL_STALL_BE] == 0);
    assert_int_equal(deadline_due(t, 52), DL_STALL_CLI);
    /* Progress clears the stamp: no deadline any more. */
    s.cli_wblock = 0;
    s.be_wblock = 60;
    deadline_all(&s, &c, t);
    assert_true(deadline_next(t) == 62);
    assert_int_equal(deadline_due(t, 62), DL_STALL_BE);
}

static void
test_expiry_and_early_fire(void **state)
{
    struct session_times s = {.expiry = 1000};
    double t[DL_COUNT];
    deadline_all(&s, &all_off, t);
    assert_true(deadline_next(t) == 1000);
    /* libev may fire a little early: half a millisecond is tolerated,
     * a whole one is not. */
    assert_int_equal(deadline_due(t, 999.9996), DL_EXPIRY);
    assert_int_equal(deadline_due(t, 999.998), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_configured),
        cmocka_unit_test(test_idle_moves_with_activity),
        cmocka_unit_test(test_lifetime_beats_idle),
        cmocka_unit_test(test_quiet_release),
        cmocka_unit_test(test_ping_then_pong_timeout),
        cmocka_unit_test(test_ping_without_pong_timeout_repeats),
        cmocka_unit_test(test_write_stall),
        cmocka_unit_test(test_expiry_and_early_fire),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
