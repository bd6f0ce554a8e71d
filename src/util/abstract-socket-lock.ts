import { createHash } from 'node:crypto'
import { realpath } from 'node:fs/promises'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { basename, dirname, join } from 'node:path'
import { LockTimeoutError, type HeldLock } from './lock-timeout-error.js'

/**
 * A waiter re-checks at least this often even without a hand-off signal (a missed close, a holder that
 * refuses connections). The hand-off itself is immediate: waiters are connected to the holder.
 */
const POLL_MIN_MS = 20
const POLL_MAX_MS = 50

/**
 * The kernel-held lock of exclusive-lock.ts. The name is `\0vm-pool-lock-<sha256 of the real path>`:
 * every path that reaches the same file (symlinks, `..`) maps to one lock. The file may not exist yet,
 * so the directory is resolved and the base name appended.
 */
export async function getAbstractLockName(path: string): Promise<string> {
  const real = join(await realpath(dirname(path)), basename(path))
  return `\0vm-pool-lock-${createHash('sha256').update(real).digest('hex')}`
}

export async function acquireAbstractSocketLock(path: string, timeoutMs: number): Promise<HeldLock> {
  const name = await getAbstractLockName(path)
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const server = await tryListen(name)
    if (server) return holdWith(server)
    if (Date.now() >= deadline) throw new LockTimeoutError(`the process listening on the abstract unix socket @${name.slice(1)} (\`ss -xlp | grep ${name.slice(1, 30)}\` shows it)`, timeoutMs)
    await waitForRelease(name, Math.min(deadline - Date.now(), POLL_MIN_MS + Math.random() * (POLL_MAX_MS - POLL_MIN_MS)))
  }
}

/** Bind is the lock: EADDRINUSE means someone holds it. */
function tryListen(name: string): Promise<Server | undefined> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', (error: NodeJS.ErrnoException) => (error.code === 'EADDRINUSE' ? resolve(undefined) : reject(error)))
    // `exclusive`: never share the handle with cluster workers; one bind, one holder.
    server.listen({ path: name, exclusive: true }, () => resolve(server))
  })
}

/** The holder keeps the waiters' connections and closes them on release: that close is their signal. */
function holdWith(server: Server): HeldLock {
  const waiters = new Set<Socket>()
  server.on('connection', (socket) => {
    waiters.add(socket)
    socket.on('error', () => {})
    socket.on('close', () => waiters.delete(socket))
  })
  let released: Promise<void> | undefined
  return {
    release() {
      released ??= new Promise<void>((resolve) => {
        // Closing the listening socket frees the name at once; then wake the waiters.
        server.close(() => resolve())
        for (const socket of waiters) socket.destroy()
      })
      return released
    },
  }
}

/** Resolves when the holder we connect to closes (released or died), when nobody listens, or after `pollMs`. */
function waitForRelease(name: string, pollMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const socket = createConnection({ path: name })
    const timer = setTimeout(done, pollMs)
    function done() {
      clearTimeout(timer)
      socket.destroy()
      resolve()
    }
    socket.on('error', done)
    socket.on('close', done)
  })
}
