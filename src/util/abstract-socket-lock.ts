import { createHash } from 'node:crypto'
import { realpath } from 'node:fs/promises'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { basename, dirname, join } from 'node:path'
import { getLockQueue, type LockTurn } from './lock-queue.js'
import { LockTimeoutError, type HeldLock } from './lock-timeout-error.js'

/**
 * A waiter with its turn whose bind still failed, and that the holder turned away (someone else is first in
 * line), tries the bind again after a random pause. Rare: normally only the waiter with the turn waits here.
 */
const POLL_MIN_MS = 5
const POLL_MAX_MS = 15
/** After the holder turned us away (someone else is first in line), poll this long before asking again. */
const FRONT_RETRY_MS = 30
/** Even first in line, look again this often (a missed close, a holder that answers nothing). */
const FRONT_SAFETY_MS = 1_000
/**
 * Waiting for a turn, try the bind anyway this often, whatever the queue says. The queue already gives up on
 * a server that stops answering (lock-queue.ts); this is the last resort if the queue is wrong in a way not
 * foreseen. Not shorter: a bind that lands between a release and the next turn jumps the queue.
 */
const QUEUE_SAFETY_MS = 5_000
/** The byte a holder sends the one waiter it keeps: "you are first in line; I close this on release". */
const QUEUED = 'q'
/**
 * A process that just handed the lock to a waiter pauses this long before it binds again: otherwise it wins
 * every time (its bind comes before the woken waiter is even scheduled) and starves the others.
 */
const YIELD_AFTER_HAND_OFF_MS = 2
/** Lock name → when this process last released it with a waiter first in line. */
const handedOff = new Map<string, number>()
/**
 * After a failed bind this process queues for its turn before it binds, for this long (renewed by every failed
 * bind): under contention a bind that happens to land between a release and the next holder's bind jumps the
 * whole queue, and the queued waiters' waits grew to many sections (docs/pool.md, "The lock"). Uncontended,
 * a process binds at once and needs no queue server.
 */
const QUEUE_FIRST_MS = 1_000
/** Lock name → until when this process queues before it binds. */
const contendedUntil = new Map<string, number>()

/**
 * The kernel-held lock of exclusive-lock.ts. The name is `\0vm-pool-lock-<sha256 of the real path>`:
 * every path that reaches the same file (symlinks, `..`) maps to one lock. The file may not exist yet,
 * so the directory is resolved and the base name appended.
 */
export async function getAbstractLockName(path: string): Promise<string> {
  let name = lockNames.get(path)
  if (name === undefined) {
    const real = join(await realpath(dirname(path)), basename(path))
    name = `\0vm-pool-lock-${createHash('sha256').update(real).digest('hex')}`
    lockNames.set(path, name)
  }
  return name
}

/**
 * Path → lock name, resolved once: the lease lock is taken twice per acquire+release, and the realpath and
 * hash were a tenth of a lock section's CPU. A path whose folder is later swapped for a symlink elsewhere
 * keeps its first name (a state dir is not moved under running pools).
 */
const lockNames = new Map<string, string>()

/**
 * Bind is the lock: EADDRINUSE means someone holds it, and the kernel frees the name when the holder closes
 * it or dies. A waiter queues for a turn (lock-queue.ts) and sleeps until it is woken; with its turn it binds.
 * When the bind still fails (someone took the lock without queuing: an older vm-pool, a waiter whose wait ran
 * out), it waits first in line at the holder, woken the instant it releases. Who gets the lock is decided by
 * the bind, never by the queue, so a waiter or queue server that dies or lies changes nothing about exclusivity.
 */
export async function acquireAbstractSocketLock(path: string, timeoutMs: number): Promise<HeldLock> {
  const name = await getAbstractLockName(path)
  const deadline = Date.now() + timeoutMs
  const queue = getLockQueue(name)
  let turn: LockTurn | undefined
  let frontAfter = 0
  const last = handedOff.get(name)
  if (last !== undefined) {
    handedOff.delete(name)
    const pause = last + YIELD_AFTER_HAND_OFF_MS - Date.now()
    if (pause > 0) await new Promise((resolve) => setTimeout(resolve, pause))
  }
  try {
    if ((contendedUntil.get(name) ?? 0) > Date.now()) turn = await queue.waitTurn(Math.min(timeoutMs, QUEUE_SAFETY_MS))
    for (;;) {
      const server = await tryListen(name)
      if (server) {
        // Our turn ends as we get in, not as we leave: the next in line is woken now, fails its bind, and waits
        // first in line at us (`waitFirstInLine`), so our release wakes it directly, with no queue server
        // round trip between one holder and the next (docs/pool.md, "The lock").
        return holdWith(server, name)
      }
      contendedUntil.set(name, Date.now() + QUEUE_FIRST_MS)
      const left = deadline - Date.now()
      if (left <= 0) throw new LockTimeoutError(`the process listening on the abstract unix socket @${name.slice(1)} (\`ss -xlp | grep ${name.slice(1, 30)}\` shows it)`, timeoutMs)
      if (!turn) {
        turn = await queue.waitTurn(Math.min(left, QUEUE_SAFETY_MS))
        if (turn || !queue.silent) continue
        // No turn to be had at once (the queue's server does not answer): wait at the holder as a turn would,
        // rather than retry the bind in a loop.
      }
      turn?.wait()
      if (Date.now() >= frontAfter) {
        const outcome = await waitFirstInLine(name, Math.min(left, FRONT_SAFETY_MS))
        if (outcome !== 'turned-away') continue
        frontAfter = Date.now() + FRONT_RETRY_MS
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(left, POLL_MIN_MS + Math.random() * (POLL_MAX_MS - POLL_MIN_MS))))
    }
  } finally {
    // In, timed out or failed: either way the next in the queue must not wait for our turn.
    turn?.done()
  }
}

function tryListen(name: string): Promise<Server | undefined> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', (error: NodeJS.ErrnoException) => (error.code === 'EADDRINUSE' ? resolve(undefined) : reject(error)))
    // `exclusive`: never share the handle with cluster workers; one bind, one holder.
    server.listen({ path: name, exclusive: true }, () => resolve(server))
  })
}

/** The holder keeps the first waiter that connects, turns the others away, and closes the kept one on release. */
function holdWith(server: Server, name: string): HeldLock {
  let front: Socket | undefined
  server.on('connection', (socket) => {
    socket.on('error', () => {})
    if (front) {
      socket.destroy()
      return
    }
    front = socket
    socket.on('close', () => {
      if (front === socket) front = undefined
    })
    socket.write(QUEUED)
  })
  let released: Promise<void> | undefined
  return {
    release() {
      // Closing the listening socket frees the name at once (the fd closes now, the callback comes later):
      // then wake the one in line. Nothing to wait for.
      released ??= Promise.resolve().then(() => {
        server.close()
        if (front) {
          handedOff.set(name, Date.now())
          front.destroy()
        }
      })
      return released
    },
  }
}

/**
 * Connect to the holder. `released`: we were first in line and the holder closed (released or died), or
 * nobody listens any more; `turned-away`: someone else is first in line; `timeout`: look again.
 */
function waitFirstInLine(name: string, safetyMs: number): Promise<'released' | 'turned-away' | 'timeout'> {
  return new Promise((resolve) => {
    const socket = createConnection({ path: name })
    let queued = false
    let refused = false
    const timer = setTimeout(() => finish('timeout'), safetyMs)
    function finish(outcome: 'released' | 'turned-away' | 'timeout') {
      clearTimeout(timer)
      socket.destroy()
      resolve(outcome)
    }
    socket.on('data', () => {
      queued = true
    })
    socket.on('error', () => {
      // Refused: released between our bind and our connect; reset: released while we sat in its backlog.
      refused = true
    })
    socket.on('close', () => finish(queued || refused ? 'released' : 'turned-away'))
  })
}
