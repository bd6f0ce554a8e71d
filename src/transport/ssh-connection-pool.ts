import type { ClientChannel } from 'ssh2'
import { createDebug } from '../util/debug.js'
import { CHANNEL_REFUSED_ALONE_LIMIT, NO_REST, restAfterClose, restAfterRefusal, type ChannelRest } from './ssh-channel-refusal.js'
import { SshChannelRefusedError, SshConnection, type SshConnectionConfig } from './ssh-connection.js'

const debug = createDebug('vm-pool:ssh')

export interface SshPoolLimits {
  /**
   * Exec (session) channels per connection. OpenSSH's `MaxSessions` is 10 by default; the minimal
   * image's dropbear needs 1 (it aborts a connection when a channel opens while another one's command
   * exits: mkj/dropbear#321, fixed after 2024.85; Debian 12 ships 2022.83).
   */
  maxChannels: number
  /** Connections to the host; execs beyond `maxChannels × maxConnections` wait for a free channel. */
  maxConnections: number
  /** Handshakes in flight at once: dropbear drops a sixth unauthenticated connection from one address. */
  maxConnecting: number
}

/** A channel that may be opened on `connection`; `release()` once it closed. */
export interface ChannelSlot {
  readonly connection: SshConnection
  release(): void
}

export interface AcquireOptions {
  signal?: AbortSignal | undefined
  /** `performance.now()` after which a waiting acquire gives up with `onTimeout()`. */
  deadline?: number | undefined
  /** A kill command: first in line, and may open a connection beyond maxConnections (never beyond maxConnecting). */
  urgent?: boolean
  /** Called once when the acquire has to wait, with what is busy (for DEBUG lines). */
  onWait?: (busy: string) => void
  onTimeout: () => Error
  onAborted: () => Error
}

interface Entry {
  connection: SshConnection
  /** Slots handed out on it, channels not yet released. */
  active: number
  ready: boolean
  /** Settles when the handshake is done; rejects with the connect error. */
  connected: Promise<unknown>
  /** After the server refused a channel on it: no channel is tried before `rest.until` (ssh-channel-refusal.ts). */
  rest: ChannelRest
}

type AssignedSlot = ChannelSlot & {
  connected: Promise<unknown>
  entry: Entry
  /** Give the slot back after the server refused its channel: the connection rests. */
  refused(): void
}

/** Waiters are served by rank, then in order: kills, then execs whose channel was refused, then the rest. */
const enum Rank {
  Urgent = 0,
  Refused = 1,
  Normal = 2,
}

interface Waiter {
  resolve: (slot: AssignedSlot) => void
  rank: Rank
}

/**
 * The connections of one transport to one host: opened on demand when every open connection has
 * `maxChannels` commands running, kept when idle, at most `maxConnections` (execs wait in FIFO order
 * beyond that) and at most `maxConnecting` handshakes at a time. A connection that fails to connect is
 * forgotten; the exec that asked for it tries once more when another connection works, else gets the connect error.
 *
 * Spares: during a burst, execs that wait take whichever comes first, a connection that frees up or one
 * that finished its handshake, so a burst of N ends with fewer than N connections and the next burst of
 * N pays handshakes again (about 60 ms of an emulated guest's CPU each, on top of its commands). Once
 * nothing waits, the pool opens spare connections in the background up to the most commands it has seen
 * running and waiting at once (`maxConnecting` at a time, never beyond `maxConnections`). A spare that
 * fails to connect stops that: the peak drops to the connections that exist.
 */
export class SshConnectionPool {
  #config: SshConnectionConfig
  readonly #limits: SshPoolLimits
  #entries: Entry[] = []
  readonly #waiters: Waiter[] = []
  /** Commands running and waiting at once, at most, since the pool opened or closed: spares are opened up to it. */
  #peakDemand = 0
  /** Wakes the waiters when the earliest rest after a refusal ends. */
  #backoffTimer: NodeJS.Timeout | undefined

  constructor(config: SshConnectionConfig, limits: SshPoolLimits) {
    this.#config = config
    this.#limits = limits
  }

  get limits(): Readonly<SshPoolLimits> {
    return this.#limits
  }

  /** Connections open or opening. */
  get size(): number {
    return this.#entries.length
  }

  /**
   * A channel slot on a connected connection, waiting for one when the limits are reached. When the
   * connection opened for it cannot connect, rejects with that error (the slot is given back).
   */
  async acquire(options: AcquireOptions): Promise<ChannelSlot> {
    return this.#acquire(options, options.urgent === true ? Rank.Urgent : Rank.Normal)
  }

  /**
   * A slot and the exec channel `open` opened on its connection. A channel the server refuses
   * (SshChannelRefusedError) is not a failed exec: the slot is given back, that connection rests
   * (ssh-channel-refusal.ts), and the exec asks again ahead of the execs that have not had a turn. It fails
   * with the refusal only after CHANNEL_REFUSED_ALONE_LIMIT refusals with nothing else of ours open there.
   * An exec aborted while its connection handshook rejects with `onAborted()`.
   */
  async openChannel(options: AcquireOptions, open: (connection: SshConnection) => Promise<ClientChannel>): Promise<{ slot: ChannelSlot; channel: ClientChannel }> {
    let rank = options.urgent === true ? Rank.Urgent : Rank.Normal
    let refusedAlone = 0
    for (;;) {
      const slot = await this.#acquire(options, rank)
      if (options.signal?.aborted) {
        slot.release()
        throw options.onAborted()
      }
      try {
        const channel = await open(slot.connection)
        slot.entry.rest = NO_REST
        return { slot, channel }
      } catch (error) {
        if (!(error instanceof SshChannelRefusedError)) {
          slot.release()
          throw error
        }
        const alone = slot.entry.active === 1
        slot.refused()
        if (alone && ++refusedAlone >= CHANNEL_REFUSED_ALONE_LIMIT) throw error
        debug('%s (%d of our channels open there): trying again in %d ms', error.shortMessage, slot.entry.active, Math.round(slot.entry.rest.until - performance.now()))
        if (rank === Rank.Normal) rank = Rank.Refused
      }
    }
  }

  async #acquire(options: AcquireOptions, rank: Rank): Promise<AssignedSlot> {
    for (let attempt = 1; ; attempt++) {
      const slot = await this.#assign(options, rank)
      try {
        await slot.connected
        return slot
      } catch (error) {
        slot.release()
        // An extra connection that could not connect (a guest slow to handshake under load) while
        // others work: try once more (a free channel, or a new connection) before failing the exec.
        if (attempt > 1 || !this.#entries.some((entry) => entry.ready)) throw error
        options.onWait?.(`a new connection failed (${(error as Error).message}); trying again`)
      }
    }
  }

  /** The handshake time allowed to connections opened from now on (a boot transport handed to a user). */
  setReadyTimeout(readyTimeoutMs: number): void {
    this.#config = { ...this.#config, readyTimeoutMs }
  }

  #assign(options: AcquireOptions, rank: Rank): Promise<AssignedSlot> {
    if (options.signal?.aborted) return Promise.reject(options.onAborted())
    const slot = this.#tryAssign(rank === Rank.Urgent)
    if (slot) {
      this.#noteDemand(0)
      return Promise.resolve(slot)
    }
    this.#noteDemand(1)
    options.onWait?.(this.#describeBusy())
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined
      const cleanup = () => {
        clearTimeout(timer)
        options.signal?.removeEventListener('abort', onAbort)
        const index = this.#waiters.indexOf(waiter)
        if (index >= 0) this.#waiters.splice(index, 1)
      }
      const waiter: Waiter = {
        rank,
        resolve: (assigned) => {
          cleanup()
          resolve(assigned)
        },
      }
      const onAbort = () => {
        cleanup()
        reject(options.onAborted())
      }
      options.signal?.addEventListener('abort', onAbort, { once: true })
      if (options.deadline !== undefined) {
        timer = setTimeout(() => {
          cleanup()
          reject(options.onTimeout())
        }, Math.max(0, options.deadline - performance.now()))
      }
      // A kill goes first: it frees a channel for the others. A refused exec had its turn already.
      const behind = this.#waiters.findIndex((other) => other.rank > rank)
      this.#waiters.splice(behind < 0 ? this.#waiters.length : behind, 0, waiter)
    })
  }

  /**
   * A connection for a channel that does not count as a session (a port forward's direct-tcpip
   * channel): the first one open, else one being opened, else a new one.
   */
  async anyConnection(): Promise<SshConnection> {
    const entry = this.#entries.find((candidate) => candidate.ready) ?? this.#entries[0] ?? this.#open()
    await entry.connected
    return entry.connection
  }

  /** Close every connection. The pool stays usable: the next acquire opens a new one. */
  async close(): Promise<void> {
    const entries = this.#entries
    this.#entries = []
    this.#peakDemand = 0
    clearTimeout(this.#backoffTimer)
    this.#backoffTimer = undefined
    await Promise.all(entries.map((entry) => entry.connection.close()))
  }

  #tryAssign(urgent: boolean): AssignedSlot | undefined {
    const { maxChannels, maxConnections, maxConnecting } = this.#limits
    const now = performance.now()
    const free = this.#entries.find((entry) => entry.ready && entry.active < maxChannels && entry.rest.until <= now) ?? this.#entries.find((entry) => !entry.ready && entry.active < maxChannels)
    if (free) return this.#slotOn(free)
    const connecting = this.#entries.filter((entry) => !entry.ready).length
    // A kill may exceed maxConnections but never maxConnecting: dropbear drops a connection from an
    // address with too many handshakes in flight (aborting many execs at once kills many commands).
    if (connecting >= maxConnecting || (!urgent && this.#entries.length >= maxConnections)) return undefined
    return this.#slotOn(this.#open())
  }

  #open(): Entry {
    const connection = new SshConnection(this.#config)
    const connected = connection.getClient()
    const entry: Entry = { connection, active: 0, ready: false, connected, rest: NO_REST }
    this.#entries.push(entry)
    connected.then(
      () => {
        entry.ready = true
        this.#pump()
      },
      () => {
        // The execs given slots on it get the connect error (acquire); later ones may try a new connection.
        this.#entries = this.#entries.filter((other) => other !== entry)
        // No more spares than what connects (a VM that went away must not be called again and again).
        this.#peakDemand = Math.min(this.#peakDemand, this.#entries.length * this.#limits.maxChannels)
        this.#pump()
      },
    )
    return entry
  }

  #slotOn(entry: Entry): AssignedSlot {
    entry.active++
    let released = false
    const release = (refused: boolean) => {
      if (released) return
      released = true
      entry.active--
      const rest = entry.rest
      entry.rest = refused ? restAfterRefusal(rest, performance.now(), entry.active) : restAfterClose(rest, performance.now())
      if (entry.rest.until !== rest.until) this.#scheduleWake()
      this.#pump()
    }
    return { connection: entry.connection, connected: entry.connected, entry, release: () => release(false), refused: () => release(true) }
  }

  /** Hand freed capacity to the waiters, oldest first; with none left, open spares. */
  #pump(): void {
    while (this.#waiters.length > 0) {
      const slot = this.#tryAssign(this.#waiters[0]!.rank === Rank.Urgent)
      if (!slot) return
      this.#waiters.shift()!.resolve(slot)
    }
    this.#openSpares()
  }

  /** One timer, for the earliest rest still running: then the waiters may use that connection again. */
  #scheduleWake(): void {
    clearTimeout(this.#backoffTimer)
    this.#backoffTimer = undefined
    const now = performance.now()
    const next = Math.min(...this.#entries.map((entry) => entry.rest.until).filter((until) => until > now))
    if (!Number.isFinite(next)) return
    this.#backoffTimer = setTimeout(() => {
      this.#backoffTimer = undefined
      this.#pump()
      this.#scheduleWake()
    }, next - now)
  }

  /** `waiting`: the acquire being counted waits (it is not in `#waiters` yet). */
  #noteDemand(waiting: number): void {
    const demand = this.#entries.reduce((sum, entry) => sum + entry.active, 0) + this.#waiters.length + waiting
    if (demand > this.#peakDemand) this.#peakDemand = demand
  }

  #openSpares(): void {
    const { maxChannels, maxConnections, maxConnecting } = this.#limits
    const wanted = Math.min(maxConnections, Math.ceil(this.#peakDemand / maxChannels))
    let opened = 0
    while (this.#entries.length < wanted && this.#entries.filter((entry) => !entry.ready).length < maxConnecting) {
      this.#open()
      opened++
    }
    if (opened > 0) debug('opening %d spare connection%s (%d running and waiting at once were seen; %d open)', opened, opened === 1 ? '' : 's', this.#peakDemand, this.#entries.length)
  }

  #describeBusy(): string {
    const { maxChannels, maxConnections } = this.#limits
    const running = this.#entries.reduce((sum, entry) => sum + entry.active, 0)
    const connecting = this.#entries.filter((entry) => !entry.ready).length
    return `${running} running on ${this.#entries.length} connection${this.#entries.length === 1 ? '' : 's'}${connecting ? ` (${connecting} connecting)` : ''}, limit ${maxConnections} × ${maxChannels} channel${maxChannels === 1 ? '' : 's'}, ${this.#waiters.length} already waiting`
  }
}
