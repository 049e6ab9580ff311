/*
 * test_refuse.c - the refusal table: every kind has a status from the
 * contract (or none, for connections that never spoke HTTP), a metric
 * label that is unique and a valid Prometheus label value, and a reason
 * text; every status of the contract has a kind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "refuse.h"

static void
test_table(void **state)
{
    static const int contract[] = {
        400, 401, 403, 404, 405, 426, 429, 431, 502, 503, 504,
    };

    (void)state;
    for (int k = 0; k < REF_COUNT; k++) {
        const struct refusal_info *r = &refusal_info[k];
        int st = r->status;

        assert_non_null(r->label);
        assert_non_null(r->text);
        assert_true(r->text[0] != '\0');
        assert_true(r->label[0] != '\0');
        for (const char *p = r->label; *p; p++)
            assert_true((*p >= 'a' && *p <= 'z') || *p == '_');
        for (int j = 0; j < k; j++)
            assert_string_not_equal(r->label, refusal_info[j].label);
        if (st != 0) {
            int found = 0;
            for (size_t i = 0; i < sizeof contract / sizeof contract[0]; i++)
                found |= contract[i] == st;
            assert_true(found);
        }
    }
    for (size_t i = 0; i < sizeof contract / sizeof contract[0]; i++) {
        int found = 0;
        for (int k = 0; k < REF_COUNT; k++)
            found |= refusal_info[k].status == contract[i];
        assert_true(found);
    }
    /* the labels the interface contract names exist */
    {
        static const char *const named[] = {
            "origin", "jwt", "ip_limit", "max_connections", "bad_request",
            "no_route", "backend", "timeout", "tls",
        };
        for (size_t i = 0; i < sizeof named / sizeof named[0]; i++) {
            int found = 0;
            for (int k = 0; k < REF_COUNT; k++)
                found |= strcmp(refusal_info[k].label, named[i]) == 0;
            assert_true(found);
        }
    }
}

static void
test_for_status(void **state)
{
    (void)state;
    assert_int_equal(refusal_for_status(400), REF_BAD_REQUEST);
    assert_int_equal(refusal_for_status(405), REF_METHOD);
    assert_int_equal(refusal_for_status(426), REF_NOT_WEBSOCKET);
    assert_int_equal(refusal_for_status(431), REF_TOO_LARGE);
    for (int s = 400; s < 432; s++)
        assert_int_equal(refusal_info[refusal_for_status(s)].status,
                         s == 405 || s == 426 || s == 431 ? s : 400);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_for_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
