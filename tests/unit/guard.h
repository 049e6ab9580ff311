/*
 * guard.h - a PROT_NONE guard page for parser tests (picohttpparser's
 * test.c idea): guarded() copies an input so that it ends exactly where
 * an unreadable page begins, so any read past the input's length faults
 * at once instead of passing unnoticed. Use guard_setup/guard_teardown as
 * the cmocka group setup and teardown. Header-only: each test program is
 * one translation unit.
 */
#ifndef WSGUARD_TEST_GUARD_H
#define WSGUARD_TEST_GUARD_H

#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static unsigned char *guard_base;
static size_t guard_page;

static int
guard_setup(void **state)
{
    (void)state;
    guard_page = (size_t)sysconf(_SC_PAGESIZE);
    guard_base = mmap(NULL, 4 * guard_page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard_base == MAP_FAILED)
        return -1;
    if (mprotect(guard_base + 3 * guard_page, guard_page, PROT_NONE) == -1)
        return -1;
    return 0;
}

static int
guard_teardown(void **state)
{
    (void)state;
    munmap(guard_base, 4 * guard_page);
    return 0;
}

/* Copy p[0..n) so it ends at the guard page; n <= 3 pages. */
static void *
guarded(const void *p, size_t n)
{
    unsigned char *dst = guard_base + 3 * guard_page - n;
    assert_true(n <= 3 * guard_page);
    if (n > 0)
        memmove(dst, p, n);
    return dst;
}

#endif
