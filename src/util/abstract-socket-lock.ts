import { createHash } from 'node:crypto'
import { realpath } from 'node:fs/promises'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { basename, dirname, join } from 'node:path'
import { LockTimeoutError, type HeldLock } from './lock-timeout-error.js'

/**
 * Waiters that are not first in line try the bind again after a random pause. Waking every waiter at each
 * release (all connected to the holder) was measured slower under contention: 8 processes on 2 busy cores
 * woke ~8 times per acquisition, a herd of failed binds and reconnects on a saturated CPU; short pauses
 * (1-4 ms) and pauses that shrink with the wait measured slower too (more wake-ups). The one waiter first in
 * line is woken at once, so the pause only decides who gets in line next.
 */
const POLL_MIN_MS = 5
const POLL_MAX_MS = 15
/** After the holder turned us away (someone else is first in line), poll this long before asking again. */
const FRONT_RETRY_MS = 30
/** Even first in line, look again this often (a missed close, a holder that answers nothing). */
const FRONT_SAFETY_MS = 1_000
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
 * The kernel-held lock of exclusive-lock.ts. The name is `\0vm-pool-lock-<sha256 of the real path>`:
 * every path that reaches the same file (symlinks, `..`) maps to one lock. The file may not exist yet,
 * so the directory is resolved and the base name appended.
 */
export async function getAbstractLockName(path: string): Promise<string> {
  const real = join(await realpath(dirname(path)), basename(path))
  return `\0vm-pool-lock-${createHash('sha256').update(real).digest('hex')}`
}

/**
 * Bind is the lock: EADDRINUSE means someone holds it, and the kernel frees the name when the holder closes
 * it or dies. One waiter at a time stays connected to the holder and is woken the instant it releases
 * (the hand-off); the others poll with a jittered pause. Who gets the lock next is decided by the bind,
 * never by the queue, so a waiter that dies or a holder that lies changes nothing about exclusivity.
 */
export async function acquireAbstractSocketLock(path: string, timeoutMs: number): Promise<HeldLock> {
  const name = await getAbstractLockName(path)
  const deadline = Date.now() + timeoutMs
  let frontAfter = 0
  const last = handedOff.get(name)
  if (last !== undefined) {
    handedOff.delete(name)
    const pause = last + YIELD_AFTER_HAND_OFF_MS - Date.now()
    if (pause > 0) await new Promise((resolve) => setTimeout(resolve, pause))
  }
  for (;;) {
    const server = await tryListen(name)
    if (server) return holdWith(server, name)
    const left = deadline - Date.now()
    if (left <= 0) throw new LockTimeoutError(`the process listening on the abstract unix socket @${name.slice(1)} (\`ss -xlp | grep ${name.slice(1, 30)}\` shows it)`, timeoutMs)
    if (Date.now() >= frontAfter) {
      const outcome = await waitFirstInLine(name, Math.min(left, FRONT_SAFETY_MS))
      if (outcome !== 'turned-away') continue
      frontAfter = Date.now() + FRONT_RETRY_MS
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(left, POLL_MIN_MS + Math.random() * (POLL_MAX_MS - POLL_MIN_MS))))
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
