/*
 * test_revoke.c - the revocation message (exactly one of sub, jti,
 * client_ip; ttl bounds; addresses canonical) and the table in force
 * (matches until the ttl passes, extends, never drops an entry in force
 * when full).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "revoke.h"

static int
parse(const char *json, struct revocation *rv, char *err, size_t cap)
{
    return revocation_parse(json, strlen(json), 600000, rv, err, cap);
}

static void
test_parse_ok(void **state)
{
    struct revocation rv;
    char err[128];

    (void)state;
    assert_int_equal(parse("{\"sub\": \"user-42\"}", &rv, err, sizeof err),
                     0);
    assert_int_equal(rv.kind, REVOKE_SUB);
    assert_string_equal(rv.value, "user-42");
    assert_int_equal(rv.ttl_ms, 600000);

    assert_int_equal(parse("{\"jti\":\"0f6c\",\"ttl\":\"1h\"}", &rv, err,
                           sizeof err), 0);
    assert_int_equal(rv.kind, REVOKE_JTI);
    assert_int_equal(rv.ttl_ms, 3600000);

    /* Addresses in canonical form; v4-mapped IPv6 is IPv4. */
    assert_int_equal(parse("{\"client_ip\":\"2001:DB8:0:0::1\"}", &rv, err,
                           sizeof err), 0);
    assert_int_equal(rv.kind, REVOKE_IP);
    assert_string_equal(rv.value, "2001:db8::1");
    assert_int_equal(parse("{\"client_ip\":\"::ffff:203.0.113.9\"}", &rv,
                           err, sizeof err), 0);
    assert_string_equal(rv.value, "203.0.113.9");
}

static void
test_parse_bad(void **state)
{
    static const char *const bad[] = {
        "",
        "[]",
        "\"sub\"",
        "{}",
        "{\"ttl\":\"1m\"}",
        "{\"sub\":\"a\",\"jti\":\"b\"}",
        "{\"sub\":\"a\",\"sub\":\"b\"}",
        "{\"sub\":\"\"}",
        "{\"sub\":42}",
        "{\"sub\":null}",
        "{\"sub\":\"a\\u0000b\"}",
        "{\"sub\":\"a\",\"ttl\":\"0\"}",
        "{\"sub\":\"a\",\"ttl\":\"500ms\"}",
        "{\"sub\":\"a\",\"ttl\":\"31d\"}",
        "{\"sub\":\"a\",\"ttl\":60}",
        "{\"sub\":\"a\",\"extra\":1}",
        "{\"client_ip\":\"example.com\"}",
        "{\"client_ip\":\"10.0.0.0/8\"}",
        "{\"client_ip\":\"1.2.3.4:80\"}",
        "{\"sub\":\"a\"} trailing",
    };
    struct revocation rv;
    char err[128];

    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        if (parse(bad[i], &rv, err, sizeof err) != -1)
            fail_msg("accepted: %s", bad[i]);
        assert_true(err[0] != '\0');
    }
    /* A value of REVOKE_VALUE_MAX bytes is fine, one more is not. */
    char big[REVOKE_VALUE_MAX + 32];
    snprintf(big, sizeof big, "{\"sub\":\"%0*d\"}", REVOKE_VALUE_MAX, 0);
    assert_int_equal(parse(big, &rv, err, sizeof err), 0);
    snprintf(big, sizeof big, "{\"sub\":\"%0*d\"}", REVOKE_VALUE_MAX + 1, 0);
    assert_int_equal(parse(big, &rv, err, sizeof err), -1);
}

static void
test_json_round_trip(void **state)
{
    struct revocation rv, back;
    char out[600], err[128];

    (void)state;
    assert_int_equal(parse("{\"sub\":\"a\\\"b\",\"ttl\":\"90s\"}", &rv, err,
                           sizeof err), 0);
    assert_true(revocation_json(&rv, out, sizeof out) > 0);
    assert_int_equal(revocation_parse(out, strlen(out), 1, &back, err,
                                      sizeof err), 0);
    assert_int_equal(back.kind, REVOKE_SUB);
    assert_string_equal(back.value, "a\"b");
    assert_int_equal(back.ttl_ms, 90000);
    assert_int_equal(revocation_json(&rv, out, 8), -1);
}

static void
test_table(void **state)
{
    struct revocation rv = { .kind = REVOKE_SUB, .ttl_ms = 10000 };

    (void)state;
    revoked_clear();
    assert_false(revoked_match(REVOKE_SUB, "u1", 2, 100.0));
    strcpy(rv.value, "u1");
    assert_int_equal(revoked_add(&rv, 100.0), 0);
    assert_true(revoked_match(REVOKE_SUB, "u1", 2, 100.0));
    assert_true(revoked_match(REVOKE_SUB, "u1", 2, 109.9));
    assert_false(revoked_match(REVOKE_SUB, "u1", 2, 110.0));
    /* Kinds are separate, values exact. */
    assert_false(revoked_match(REVOKE_JTI, "u1", 2, 100.0));
    assert_false(revoked_match(REVOKE_SUB, "u", 1, 100.0));
    assert_false(revoked_match(REVOKE_SUB, "u12", 3, 100.0));
    /* Adding again extends, never shortens. */
    rv.ttl_ms = 60000;
    assert_int_equal(revoked_add(&rv, 105.0), 0);
    assert_true(revoked_match(REVOKE_SUB, "u1", 2, 160.0));
    rv.ttl_ms = 1000;
    assert_int_equal(revoked_add(&rv, 106.0), 0);
    assert_true(revoked_match(REVOKE_SUB, "u1", 2, 160.0));
    assert_int_equal(revoked_count(), 1);

    /* Addresses match in any spelling. */
    struct revocation ip = { .kind = REVOKE_IP, .ttl_ms = 10000 };
    strcpy(ip.value, "2001:db8::1");
    assert_int_equal(revoked_add(&ip, 100.0), 0);
    assert_true(revoked_match(REVOKE_IP, "2001:0db8:0::1", 14, 100.0));
    assert_false(revoked_match(REVOKE_IP, "2001:db8::2", 11, 100.0));
    assert_false(revoked_match(REVOKE_IP, "junk", 4, 100.0));
    assert_true(revocation_matches(&ip, "2001:DB8::1", 11));
    assert_false(revocation_matches(&ip, "2001:db8::", 10));
    revoked_clear();
    assert_int_equal(revoked_count(), 0);
    assert_false(revoked_match(REVOKE_SUB, "u1", 2, 100.0));
}

static void
test_full(void **state)
{
    struct revocation rv = { .kind = REVOKE_JTI, .ttl_ms = 1000 };

    (void)state;
    revoked_clear();
    for (unsigned i = 0; i < REVOKE_MAX; i++) {
        snprintf(rv.value, sizeof rv.value, "j%u", i);
        assert_int_equal(revoked_add(&rv, 0.0), 0);
    }
    /* Full of entries in force: refused, and every entry still holds. */
    strcpy(rv.value, "one-more");
    assert_int_equal(revoked_add(&rv, 0.5), -1);
    assert_true(revoked_match(REVOKE_JTI, "j0", 2, 0.5));
    assert_true(revoked_match(REVOKE_JTI, "j65535", 6, 0.5));
    assert_false(revoked_match(REVOKE_JTI, "one-more", 8, 0.5));
    /* Once they have expired, room is made. */
    assert_int_equal(revoked_add(&rv, 1.0), 0);
    assert_true(revoked_match(REVOKE_JTI, "one-more", 8, 1.0));
    assert_false(revoked_match(REVOKE_JTI, "j0", 2, 1.0));
    assert_true(revoked_count() < REVOKE_MAX);
    revoked_clear();
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ok),
        cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
