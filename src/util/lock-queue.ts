import { createConnection, createServer, type Server, type Socket } from 'node:net'

/**
 * The wait queue of the abstract-socket lock (abstract-socket-lock.ts). Waiters sleep on one connection to a
 * queue server and are woken one at a time, in the order they asked, instead of retrying the bind.
 * Why: under contention the retries (failed binds and connects, their error objects and timers) cost more CPU
 * than the sections they wait for; on 2 cores that CPU is taken from the holder (docs/benchmarks.md).
 *
 * The queue decides only the order. Exclusivity stays with the section socket: whoever gets a turn still binds
 * it, so a queue server that dies, pauses or lies can delay waiters, never let two in.
 *
 * The server is whichever process first binds `@vm-pool-lockq-<hash>`; it serves until it exits (its socket
 * is unref'd: serving never keeps a process alive). When it goes away its clients reconnect, one of them
 * becomes the server, and the others queue again (in the order they reconnect: the old order is lost).
 *
 * Wire protocol, one byte each. Client → server: `a` (I want a turn; at most one outstanding per client),
 * `h` (I have my turn and wait at the lock's holder with it: sent only when the bind failed), `r` (my turn is
 * over: I am in, or gave up), `p` (are you there?). Server → client: `g` (your
 * turn), `o` (yes). Each `a` gets one `g`, each `g` one `r`.
 *
 * Nobody stuck blocks the others for long: a turn neither used (`r`) nor kept (`h`) within TURN_ACK_MS goes to
 * the next in line (its holder's event loop is blocked, or it is paused), and a waiter whose server does not
 * answer `p` within QUEUE_PING_MS tries the bind without its turn (and does not wait for that server again
 * until it answers).
 */
const REQUEST = 0x61 // 'a'
const HAVE = 0x68 // 'h'
const RETURN = 0x72 // 'r'
const PING = 0x70 // 'p'
const GRANT = 0x67 // 'g'
const PONG = 0x6f // 'o'

/**
 * A turn whose holder has not said `h` by then passes to the next in line (the late one still binds to get in).
 * A process whose event loop is blocked costs the others this much, once: it gets no other turn until it asks.
 */
export const TURN_ACK_MS = 250
/** A waiter asks its server this often whether it is there; no answer by the next ask: it tries the bind itself. */
export const QUEUE_PING_MS = 250

/** A turn this process was given: hand it back once its holder is in (or gave up). */
export interface LockTurn {
  /** Its holder could not get in at once and waits at the lock's holder: keep the turn (`h`). Once is enough. */
  wait(): void
  done(): void
}

interface Member {
  grant(): void
}

/** The server's side: one FIFO of members, at most one granted at a time. */
class QueueServer {
  readonly #queue: Member[] = []
  #current: Member | undefined
  #ackTimer: NodeJS.Timeout | undefined

  constructor(readonly server: Server) {}

  /** `member` took up its turn (`h`): it keeps it until it says `r` or leaves. */
  acknowledged(member: Member): void {
    if (this.#current === member) clearTimeout(this.#ackTimer)
  }

  enqueue(member: Member): void {
    this.#queue.push(member)
    this.#pump()
  }

  /** `member`'s turn is over (a `r`), or it left (its connection closed). */
  finished(member: Member): void {
    if (this.#current === member) {
      clearTimeout(this.#ackTimer)
      this.#current = undefined
    }
    this.#pump()
  }

  left(member: Member): void {
    for (let i = this.#queue.indexOf(member); i !== -1; i = this.#queue.indexOf(member)) this.#queue.splice(i, 1)
    this.finished(member)
  }

  #pump(): void {
    if (this.#current !== undefined || this.#queue.length === 0) return
    const member = this.#queue.shift()!
    this.#current = member
    this.#ackTimer = setTimeout(() => this.finished(member), TURN_ACK_MS)
    this.#ackTimer.unref()
    member.grant()
  }
}

/** One per lock name and process: this process's place in the queue, shared by its local waiters. */
class QueueClient {
  readonly #name: string
  #socket: Socket | undefined
  #server: QueueServer | undefined
  #connecting: Promise<void> | undefined
  /** An `a` is outstanding at the server (sent, no `g` yet). */
  #requested = false
  /** When the unanswered `p` was sent. */
  #pingSentAt: number | undefined
  /** The connection (or server) the outstanding request went to: a grant from an old one is void. */
  #generation = 0
  readonly #waiters: ((turn: LockTurn) => void)[] = []
  /** The member the local server knows this process by. */
  readonly #local: Member = { grant: () => this.#onGrant(this.#generation) }

  constructor(name: string) {
    this.#name = name
  }

  /**
   * Resolves with a turn, or `undefined` when the caller should try the bind without one: after `waitMs`, when
   * this process is not in the queue (no server could be reached), or when the server did not answer a ping.
   * The request stays queued.
   */
  /** Our server has not answered a ping for QUEUE_PING_MS or more (paused, stuck): `waitTurn` does not wait for it. */
  get silent(): boolean {
    return this.#socket !== undefined && !this.#connecting && this.#pingSentAt !== undefined && Date.now() - this.#pingSentAt >= QUEUE_PING_MS
  }

  waitTurn(waitMs: number): Promise<LockTurn | undefined> {
    // Our last ping is unanswered for longer than QUEUE_PING_MS: the server is paused or stuck. Do not wait for
    // it again on every lock (the lock's contended callers queue before they bind); its answer, when it comes
    // back, clears this.
    if (this.silent) return Promise.resolve(undefined)
    return new Promise((resolve) => {
      const deadline = Date.now() + waitMs
      let timer: NodeJS.Timeout | undefined
      const finish = (turn: LockTurn | undefined) => {
        clearTimeout(timer)
        const index = this.#waiters.indexOf(waiter)
        if (index !== -1) this.#waiters.splice(index, 1)
        resolve(turn)
      }
      const waiter = (turn: LockTurn) => finish(turn)
      const check = () => {
        if (Date.now() >= deadline || (!this.#requested && !this.#connecting)) return finish(undefined)
        const socket = this.#socket
        if (socket && !this.#connecting) {
          // Asked last time and still no answer: the server is paused or stuck.
          if (this.#pingSentAt !== undefined && Date.now() - this.#pingSentAt >= QUEUE_PING_MS) return finish(undefined)
          if (this.#pingSentAt === undefined) {
            this.#pingSentAt = Date.now()
            socket.write(Buffer.of(PING))
          }
        }
        timer = setTimeout(check, Math.min(QUEUE_PING_MS, Math.max(0, deadline - Date.now())))
      }
      this.#waiters.push(waiter)
      if (!this.#requested) this.#request()
      timer = setTimeout(check, Math.min(QUEUE_PING_MS, waitMs))
    })
  }

  #request(): void {
    this.#requested = true
    if (this.#server) return this.#server.enqueue(this.#local)
    if (this.#socket && !this.#connecting) {
      this.#socket.write(Buffer.of(REQUEST))
      return
    }
    this.#connecting ??= this.#connect().finally(() => {
      this.#connecting = undefined
    })
    void this.#connecting.then(() => {
      if (!this.#requested) return
      if (this.#server) this.#server.enqueue(this.#local)
      else this.#socket?.write(Buffer.of(REQUEST))
    })
  }

  /** Connect to the server, or become it. On failure `#requested` is cleared: the waiters' timers retry by the bind. */
  async #connect(): Promise<void> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const socket = await connectTo(this.#name)
      if (socket) return this.#adopt(socket)
      const server = await listenOn(this.#name)
      if (server) {
        this.#generation++
        this.#server = new QueueServer(server)
        server.on('connection', (peer) => serveMember(this.#server!, peer))
        server.unref()
        return
      }
    }
    this.#requested = false
  }

  #adopt(socket: Socket): void {
    const generation = ++this.#generation
    this.#socket = socket
    socket.unref()
    socket.on('data', (bytes) => {
      for (const byte of bytes) {
        if (byte === GRANT) this.#onGrant(generation)
        else if (byte === PONG) this.#pingSentAt = undefined
      }
    })
    socket.on('error', () => {})
    socket.on('close', () => {
      if (this.#socket !== socket) return
      this.#socket = undefined
      this.#pingSentAt = undefined
      this.#generation++
      // The server went away (exited, died): our place in its queue is gone. Ask the next one.
      this.#requested = false
      if (this.#waiters.length > 0) this.#request()
    })
  }

  #onGrant(generation: number): void {
    if (generation !== this.#generation) return
    this.#requested = false
    const waiter = this.#waiters.shift()
    let returned = false
    let waiting = false
    const turn: LockTurn = {
      // Only a turn whose bind failed says `h`: one that gets in at once says `r` before TURN_ACK_MS is near.
      wait: () => {
        if (waiting || returned || generation !== this.#generation) return
        waiting = true
        if (this.#server) this.#server.acknowledged(this.#local)
        else this.#socket?.write(Buffer.of(HAVE))
      },
      done: () => {
        if (returned) return
        returned = true
        if (generation === this.#generation) {
          if (this.#server) this.#server.finished(this.#local)
          else this.#socket?.write(Buffer.of(RETURN))
        }
        if (this.#waiters.length > 0 && !this.#requested) this.#request()
      },
    }
    // Nobody waits any more (they timed out and took the lock by the bind): give the turn straight back.
    if (!waiter) return turn.done()
    waiter(turn)
  }
}

function serveMember(queue: QueueServer, socket: Socket): void {
  socket.unref()
  const member: Member = { grant: () => socket.write(Buffer.of(GRANT)) }
  socket.on('data', (bytes) => {
    for (const byte of bytes) {
      if (byte === REQUEST) queue.enqueue(member)
      else if (byte === HAVE) queue.acknowledged(member)
      else if (byte === RETURN) queue.finished(member)
      else if (byte === PING) socket.write(Buffer.of(PONG))
    }
  })
  socket.on('error', () => {})
  socket.on('close', () => queue.left(member))
}

function connectTo(name: string): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const socket = createConnection({ path: name })
    socket.once('connect', () => {
      socket.removeAllListeners('error')
      resolve(socket)
    })
    socket.once('error', () => {
      socket.destroy()
      resolve(undefined)
    })
  })
}

function listenOn(name: string): Promise<Server | undefined> {
  return new Promise((resolve) => {
    const server = createServer()
    server.once('error', () => resolve(undefined))
    server.listen({ path: name, exclusive: true }, () => resolve(server))
  })
}

const clients = new Map<string, QueueClient>()

/** This process's client of the queue for the lock socket `lockName` (`\0vm-pool-lock-<hash>`). */
export function getLockQueue(lockName: string): QueueClient {
  let client = clients.get(lockName)
  if (!client) {
    client = new QueueClient(lockName.replace('\0vm-pool-lock-', '\0vm-pool-lockq-'))
    clients.set(lockName, client)
  }
  return client
}
