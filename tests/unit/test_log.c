/*
 * test_log.c - the log never blocks the thread that logs.
 *
 * The access log goes to a FIFO that nobody reads: once the pipe and the
 * thread's buffer are full, log_access() returns at once and the line is
 * counted as dropped; every line that does reach the reader is whole.
 * A file moved away (logrotate) and reopened loses nothing: lines before
 * the reopen are in the old file, lines after in the new one. log_stop()
 * returns even when the writer is stuck on a reader that never reads.
 * (A hang would be caught by the alarm, not a timing bound.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

static void
one_record(int i)
{
    char path[32];
    struct access_rec r = {0};

    snprintf(path, sizeof path, "/p%d", i);
    r.event = "session";
    r.client_ip = "192.0.2.1";
    r.path = path;
    r.path_len = strlen(path);
    r.close_code = 1000;
    r.closed_by = "client";
    log_access(&r);
}

/* Every line of buf[0..n) is one whole JSON record. Returns the count. */
static size_t
whole_lines(const char *buf, size_t n)
{
    size_t lines = 0, s = 0;

    for (size_t i = 0; i < n; i++) {
        if (buf[i] != '\n')
            continue;
        assert_true(i > s);
        assert_int_equal(buf[s], '{');
        assert_int_equal(buf[i - 1], '}');
        assert_non_null(memmem(buf + s, i - s, "\"event\":\"session\"", 17));
        lines++;
        s = i + 1;
    }
    assert_int_equal(s, n);     /* no partial line at the end */
    return lines;
}

static char *
slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    char *buf;

    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc(*n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, *n, f), *n);
    fclose(f);
    return buf;
}

static void
test_blocked_reader_drops(void **state)
{
    char dir[] = "/tmp/wsg-log-XXXXXX", fifo[64];
    enum { N = 20000 };
    size_t got = 0;
    static char buf[4 * 1024 * 1024];

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    /* a reader that exists but does not read (yet) */
    int rd = open(fifo, O_RDONLY | O_NONBLOCK);
    assert_true(rd >= 0);
    assert_int_equal(log_setup(LOG_ERROR, true, fifo), 0);
    assert_int_equal(log_start(), 0);
    uint64_t before = log_dropped();
    alarm(20);                  /* a blocked log_access() would hang */
    for (int i = 0; i < N; i++)
        one_record(i);
    alarm(0);
    /* the pipe (64 KiB) and the ring (256 KiB) hold far fewer than N */
    assert_true(log_dropped() - before > 0);
    /* the writer is stuck on the full pipe: stopping does not hang */
    assert_int_equal(log_stop(), -1);
    /* the reader starts reading: the writer finishes and stops; what the
     * reader gets is whole lines, however the pipe cut them */
    alarm(20);
    do {
        ssize_t r;
        while ((r = read(rd, buf + got, sizeof buf - got)) > 0)
            got += (size_t)r;
    } while (log_stop() != 0);
    ssize_t r;
    while ((r = read(rd, buf + got, sizeof buf - got)) > 0)
        got += (size_t)r;
    alarm(0);
    size_t lines = whole_lines(buf, got);
    assert_true(lines > 0);
    assert_true(lines + (log_dropped() - before) <= N);
    close(rd);
    unlink(fifo);
    rmdir(dir);
}

static void
test_reopen_loses_nothing(void **state)
{
    char dir[] = "/tmp/wsg-log-XXXXXX", a[64], moved[64];
    size_t n1, n2;
    char *b1, *b2;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(a, sizeof a, "%s/access.log", dir);
    snprintf(moved, sizeof moved, "%s/access.log.1", dir);
    assert_int_equal(log_setup(LOG_ERROR, true, a), 0);
    assert_int_equal(log_start(), 0);
    uint64_t dropped = log_dropped();
    for (int i = 0; i < 500; i++)
        one_record(i);
    assert_int_equal(rename(a, moved), 0);
    assert_int_equal(log_reopen(), 0);
    /* The writer switches files in its own time (lines logged around the
     * switch may still go to the old file, as with nginx): log until the
     * new file gets lines. */
    int after = 0;
    struct stat st;
    alarm(20);
    do {
        one_record(after++);
        usleep(1000);
    } while (stat(a, &st) != 0 || st.st_size == 0);
    alarm(0);
    log_stop();
    assert_int_equal(log_dropped(), dropped);
    b1 = slurp(moved, &n1);
    b2 = slurp(a, &n2);
    /* nothing lost, nothing cut: every line in one file or the other */
    size_t l1 = whole_lines(b1, n1), l2 = whole_lines(b2, n2);
    assert_true(l1 >= 500);
    assert_true(l2 >= 1);
    assert_int_equal(l1 + l2, 500 + (size_t)after);
    free(b1);
    free(b2);
    unlink(a);
    unlink(moved);
    rmdir(dir);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocked_reader_drops),
        cmocka_unit_test(test_reopen_loses_nothing),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
