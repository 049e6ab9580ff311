/*
 * test_await.c - handles for asynchronous answers: an answer that comes
 * while its connection still waits reaches it; one that comes after the
 * connection went away (cancelled), even after its slot was reused by
 * another connection, resolves to nothing. Both orders, and many
 * connections at once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "await.h"

static void
test_answer_before_close(void **state)
{
    struct await_table t = {0};
    struct await_ref r;
    int owner;

    (void)state;
    assert_int_equal(await_park(&t, &owner, &r), 0);
    assert_ptr_equal(await_resolve(&t, r), &owner);
    /* answered once: a duplicate answer is stale */
    assert_null(await_resolve(&t, r));
    /* the owner goes away after its answer: nothing to cancel */
    await_cancel(&t, r);
    await_table_free(&t);
}

static void
test_answer_after_close(void **state)
{
    struct await_table t = {0};
    struct await_ref r1, r2;
    int a, b;

    (void)state;
    assert_int_equal(await_park(&t, &a, &r1), 0);
    await_cancel(&t, r1);               /* a is freed */
    assert_null(await_resolve(&t, r1)); /* its late answer: ignored */
    /* the slot is reused by b: a's stale reference still resolves to
     * nothing, b's to b */
    assert_int_equal(await_park(&t, &b, &r2), 0);
    assert_int_equal(r2.idx, r1.idx);
    assert_int_not_equal(r2.gen, r1.gen);
    assert_null(await_resolve(&t, r1));
    assert_ptr_equal(await_resolve(&t, await_unpack(await_pack(r2))), &b);
    await_table_free(&t);
}

static void
test_many(void **state)
{
    enum { N = 1000 };
    static int owners[N];
    static struct await_ref refs[N];
    struct await_table t = {0};

    (void)state;
    for (int i = 0; i < N; i++)
        assert_int_equal(await_park(&t, &owners[i], &refs[i]), 0);
    /* odd ones leave before their answer */
    for (int i = 1; i < N; i += 2)
        await_cancel(&t, refs[i]);
    for (int i = 0; i < N; i++) {
        void *o = await_resolve(&t, refs[i]);
        if (i % 2)
            assert_null(o);
        else
            assert_ptr_equal(o, &owners[i]);
    }
    /* an unknown reference (never handed out) */
    struct await_ref bogus = { N + 5, 0 };
    assert_null(await_resolve(&t, bogus));
    await_cancel(&t, bogus);
    await_table_free(&t);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answer_before_close),
        cmocka_unit_test(test_answer_after_close),
        cmocka_unit_test(test_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
