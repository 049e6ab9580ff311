/*
 * ratelimit.h - token buckets refilled lazily from a clock the caller
 * passes in (the event loop's cached time), so a rate limit costs no
 * timer and no system call per message. Pure; one bucket per connection
 * and purpose, owned by the connection's worker thread.
 */
#ifndef WSGUARD_RATELIMIT_H
#define WSGUARD_RATELIMIT_H

struct bucket {
    double tokens;
    double stamp;               /* time of the last refill, seconds */
};

/* Start full (burst tokens) at time now. */
void bucket_init(struct bucket *b, double burst, double now);

/*
 * Refill at rate tokens/s up to burst, then take n tokens.
 * Strict (overdraw = 0): succeeds only if n tokens are there.
 * Overdraw (overdraw = 1): succeeds unless the bucket is already in debt,
 * and may leave it negative; used for byte budgets, where a single frame
 * may be larger than one second's allowance: the frame passes, and the
 * next one that finds the bucket in debt fails. Returns 1 if taken, 0 if
 * not (nothing taken).
 */
int bucket_take(struct bucket *b, double rate, double burst, double n,
                double now, int overdraw);

#endif
