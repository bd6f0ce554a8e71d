/**
 * When to try a channel again on a connection whose server refused one (SSH_MSG_CHANNEL_OPEN_FAILURE): pure
 * functions, used by ssh-connection-pool.ts. OpenSSH refuses a session beyond `MaxSessions` ("no more
 * sessions" in its log), and a session whose channel just closed still counts until the server's next loop
 * frees it: a close and the next open read together by a busy sshd refuse that open although the pool
 * kept within MaxSessions. So a refusal is a reason to wait a little, not to fail the exec or the connection.
 */

/**
 * After a refusal, no channel is tried on that connection until one of ours there closes and then this long
 * (the server frees the session in the loop after it read our close), or until CHANNEL_REFUSED_MAX_WAIT_MS
 * passed. With none of ours open there: this long, doubled per refusal in a row (up to the max).
 */
export const CHANNEL_REFUSED_BACKOFF_MS = 20
/** The longest a connection rests after a refusal: sessions of other clients, or ours just closed, may be freed meanwhile. */
export const CHANNEL_REFUSED_MAX_WAIT_MS = 1_000
/**
 * Refusals in a row for one exec, each with no other channel of ours open on that connection, after which the
 * exec fails with the refusal: that server takes no session at all (OpenSSH `MaxSessions 0`, or sessions of
 * other clients fill it). About 0.3 s of backoff in all.
 */
export const CHANNEL_REFUSED_ALONE_LIMIT = 5

/** A connection's rest after refusals. */
export interface ChannelRest {
  /** `performance.now()` before which no channel is tried there. */
  until: number
  /** Refusals in a row with none of ours open there (a channel that opens resets it): the backoff doubles with it. */
  refusals: number
}

export const NO_REST: ChannelRest = { until: 0, refusals: 0 }

/** After a refusal on a connection with `othersOpen` channels of ours still open or opening there. */
export function restAfterRefusal(rest: ChannelRest, now: number, othersOpen: number): ChannelRest {
  const alone = othersOpen === 0
  const delay = alone ? Math.min(CHANNEL_REFUSED_MAX_WAIT_MS, CHANNEL_REFUSED_BACKOFF_MS * 2 ** rest.refusals) : CHANNEL_REFUSED_MAX_WAIT_MS
  const refusals = alone ? rest.refusals + 1 : rest.refusals
  // Refusals read together (opens sent at once) never push the end of a shorter rest further out.
  const until = rest.until > now ? Math.min(rest.until, now + delay) : now + delay
  return { until, refusals }
}

/** After a channel of ours on that connection closed: its session will be free once the server read our close. */
export function restAfterClose(rest: ChannelRest, now: number): ChannelRest {
  return rest.until > now + CHANNEL_REFUSED_BACKOFF_MS ? { ...rest, until: now + CHANNEL_REFUSED_BACKOFF_MS } : rest
}
