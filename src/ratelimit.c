/*
 * ratelimit.c - token buckets; see ratelimit.h.
 */
#include "ratelimit.h"

void
bucket_init(struct bucket *b, double burst, double now)
{
    b->tokens = burst;
    b->stamp = now;
}

int
bucket_take(struct bucket *b, double rate, double burst, double n,
            double now, int overdraw)
{
    if (now > b->stamp) {
        b->tokens += (now - b->stamp) * rate;
        if (b->tokens > burst)
            b->tokens = burst;
        b->stamp = now;
    }
    /* The epsilon absorbs floating-point error in elapsed * rate (0.1 s
     * at 10/s must give a whole token back). */
    if (overdraw ? b->tokens < -1e-9 : b->tokens + 1e-9 < n)
        return 0;
    b->tokens -= n;
    return 1;
}
