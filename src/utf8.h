/*
 * utf8.h - incremental UTF-8 validator (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF).
 *
 * A DFA whose state is carried across calls, so a text message can be
 * validated as its fragments and TCP segments arrive, and rejected at the
 * first byte that makes it invalid ("fail fast", RFC 6455 §8.1). The state
 * is a small integer: UTF8_ACCEPT between code points, UTF8_REJECT (sticky)
 * after an invalid byte, anything else inside a multi-byte sequence.
 * Pure, thread-safe, no allocation.
 */
#ifndef WSGUARD_UTF8_H
#define WSGUARD_UTF8_H

#include <stddef.h>
#include <stdint.h>

#define UTF8_ACCEPT 0u
#define UTF8_REJECT 1u

/* Feed p[0..n) to the DFA starting in state; returns the new state.
 * Returns UTF8_REJECT as soon as an invalid byte is seen. ASCII runs are
 * skipped several bytes at a time. */
uint32_t utf8_validate(uint32_t state, const uint8_t *p, size_t n);

/* Is p[0..n) all ASCII (then it is complete, valid UTF-8)? For the relay's
 * small whole messages: no state, one OR over overlapping words. */
int utf8_is_ascii(const uint8_t *p, size_t n);

#endif
