/**
 * When a connection whose server refused a channel is tried again (src/transport/ssh-channel-refusal.ts).
 * The pool and the real refusals are covered against sshd with a small MaxSessions in
 * test/integration/ssh-transport.test.ts.
 */
import { describe, expect, test } from 'vitest'
import { CHANNEL_REFUSED_BACKOFF_MS as BACKOFF, CHANNEL_REFUSED_MAX_WAIT_MS as MAX_WAIT, NO_REST, restAfterClose, restAfterRefusal, type ChannelRest } from '../../src/transport/ssh-channel-refusal.js'

const NOW = 10_000

describe('restAfterRefusal', () => {
  const cases: Array<{ name: string; rest: ChannelRest; othersOpen: number; expected: ChannelRest }> = [
    { name: 'alone, first refusal: the shortest backoff', rest: NO_REST, othersOpen: 0, expected: { until: NOW + BACKOFF, refusals: 1 } },
    { name: 'alone, third refusal in a row: doubled twice', rest: { until: NOW - 1, refusals: 2 }, othersOpen: 0, expected: { until: NOW + 4 * BACKOFF, refusals: 3 } },
    { name: 'alone, many refusals: never beyond the max wait', rest: { until: NOW - 1, refusals: 30 }, othersOpen: 0, expected: { until: NOW + MAX_WAIT, refusals: 31 } },
    { name: 'others open: wait for one of them to close, at most the max wait; the alone count stays', rest: { until: 0, refusals: 1 }, othersOpen: 3, expected: { until: NOW + MAX_WAIT, refusals: 1 } },
    { name: 'a refusal read with others never lengthens a shorter rest', rest: { until: NOW + BACKOFF, refusals: 1 }, othersOpen: 2, expected: { until: NOW + BACKOFF, refusals: 1 } },
    { name: 'the last of a batch of refusals (alone now) shortens a long rest', rest: { until: NOW + MAX_WAIT, refusals: 0 }, othersOpen: 0, expected: { until: NOW + BACKOFF, refusals: 1 } },
  ]
  test.each(cases)('$name', ({ rest, othersOpen, expected }) => {
    expect(restAfterRefusal(rest, NOW, othersOpen)).toEqual(expected)
  })
})

describe('restAfterClose', () => {
  test('a channel of ours closing cuts a long rest to the backoff (its session is freed once the server read our close)', () => {
    expect(restAfterClose({ until: NOW + MAX_WAIT, refusals: 0 }, NOW)).toEqual({ until: NOW + BACKOFF, refusals: 0 })
  })
  test('a shorter rest, or none, is left as it is', () => {
    expect(restAfterClose({ until: NOW + 5, refusals: 2 }, NOW)).toEqual({ until: NOW + 5, refusals: 2 })
    expect(restAfterClose(NO_REST, NOW)).toBe(NO_REST)
  })
})
