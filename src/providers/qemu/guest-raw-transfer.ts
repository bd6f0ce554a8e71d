/**
 * File bytes to and from a QEMU guest on plain TCP instead of inside SSH. Under TCG the guest's dropbear
 * spends its emulated CPU on encryption, and small copy buffers cost a syscall round per few KB on an
 * emulated CPU: the guest side here hands the socket to `cat` (busybox `nc -e`), whose copy loop uses
 * sendfile() for a file → socket and big reads for socket → file. docs/qemu.md, "Files", has the figures.
 *
 * putFile: this host listens on 127.0.0.1 (an ephemeral port, one transfer); the guest's `nc` connects to
 * the user-mode network's gateway (10.0.2.2), which QEMU maps to this host's loopback. The guest sends a
 * one-time token first (the command that carries it goes over the encrypted, authenticated SSH
 * connection); the listener talks only to a peer that sent it, so another local process that connects
 * is dropped and learns nothing.
 *
 * getFile: a guest-initiated connection carries guest → host bytes 4-5x slower than one QEMU accepted
 * on a hostfwd (slirp; measured 5.7 vs 23-30 MB/s for 50 MB), so for a file from RAW_GET_MIN_BYTES the
 * guest listens (`nc -l`) and QEMU forwards a loopback port to it (`hostfwd_add`, one rule per transfer).
 * Here the HOST sends the token first: a local process that reaches QEMU's port first gets nothing and
 * ends the guest's one-shot listener, so the transfer falls back to SSH. A smaller file (or no
 * forwarder) goes the putFile direction: the guest connects out, no wait for its listener to come up.
 *
 * What arrives is checked by size both ways. A guest without `nc` (the debian-12 minbase image), or any
 * failure on this path, falls back to SSH: the result never depends on it.
 */
import { randomBytes } from 'node:crypto'
import { connect, createServer, type Server, type Socket } from 'node:net'
import { quoteShellArg } from '../../transport/shell.js'
import { createDebug } from '../../util/debug.js'
import { scaleTimeout, settleWithin } from '../../util/timeouts.js'
import type { ExecOptions, ExecResult } from '../vm-provider.js'

/** The host as a QEMU user-mode guest sees it. */
export const GUEST_GATEWAY = '10.0.2.2'
/** Smaller files go over SSH: one exec is quicker than starting `nc` and a listener. */
export const RAW_PUT_MIN_BYTES = 256 * 1024
/** getFile: from this size the guest listens behind a hostfwd; smaller files it sends out (no wait for a listener). */
export const RAW_GET_MIN_BYTES = RAW_PUT_MIN_BYTES
/** One transfer, start to end; scaled. */
export const RAW_TRANSFER_TIMEOUT_MS = 600_000
/** getFile: how long the host keeps trying to reach the guest's listener, and the guest waits for the token; scaled. */
export const RAW_GET_CONNECT_TIMEOUT_MS = 30_000
/**
 * getFile, the guest connecting out: how long after its command ended (exit 0: its nc connected and sent) the
 * bytes may still take to reach this host. The exit status comes over SSH and can arrive first; scaled.
 */
export const RAW_GET_LATE_PEER_MS = 5_000
/** Pause between attempts to reach a guest listener that is not up yet (QEMU accepts, then closes). */
const CONNECT_RETRY_MS = 50
/** The guest command's exit code when it has no `nc`. */
const NO_NC_EXIT = 97
const TOKEN_BYTES = 16
/** Guest ports a getFile listener picks from at random (a collision fails that transfer: SSH then). */
const GUEST_PORT_MIN = 20_000
const GUEST_PORT_SPAN = 40_000

const debug = createDebug('vm-pool:qemu')

type Exec = (command: string, options?: ExecOptions) => Promise<ExecResult>
/** A loopback port on this host that QEMU forwards to `guestPort` (qemu-hostfwd.ts). */
export type OpenHostForward = (guestPort: number) => Promise<{ port: number; close(): Promise<void> }>

/** How many transfers took the raw path (tests and DEBUG show which path ran). */
export interface RawTransferCounts {
  puts: number
  gets: number
  /** Of `gets`, those that went through a QEMU hostfwd. */
  forwardedGets: number
}

/** Raw transfers for one VM; `available` turns false for good once the guest shows it has no `nc`. */
export class GuestRawTransfer {
  #available = true
  readonly #exec: Exec
  readonly #vm: string
  readonly #openForward: OpenHostForward | undefined
  readonly counts: RawTransferCounts = { puts: 0, gets: 0, forwardedGets: 0 }

  constructor(exec: Exec, vm: string, openForward?: OpenHostForward) {
    this.#exec = exec
    this.#vm = vm
    this.#openForward = openForward
  }

  /** Write `data` to `path` in the guest; false when this path cannot do it (then use SSH). */
  async put(path: string, data: Buffer): Promise<boolean> {
    if (!this.#available || data.length < RAW_PUT_MIN_BYTES) return false
    const token = newToken()
    const listener = await listenOnce(token, (socket) => socket.end(data))
    try {
      const tmp = quoteShellArg(`${path}.vm-pool-${token.slice(0, 8)}`)
      // `nc -e` makes the socket cat's stdin: one big read per chunk instead of nc's small relay buffer.
      const receive = `printf %s ${token}; exec cat > ${tmp}`
      const script = [
        `command -v nc >/dev/null 2>&1 || exit ${NO_NC_EXIT}`,
        `nc ${GUEST_GATEWAY} ${listener.port} -e sh -c ${quoteShellArg(receive)} || { rm -f ${tmp}; exit 1; }`,
        `[ "$(${sizeOf(tmp)})" -eq ${data.length} ] || { rm -f ${tmp}; exit 1; }`,
        `mv -f ${tmp} ${quoteShellArg(path)}`,
      ].join('\n')
      const done = this.#judge(await this.#exec(script, { timeoutMs: scaleTimeout(RAW_TRANSFER_TIMEOUT_MS) }), 'putFile', path)
      if (done) {
        this.counts.puts++
        debug('%s: putFile %s: %d bytes on the raw path', this.#vm, path, data.length)
      }
      return done
    } finally {
      listener.close()
    }
  }

  /** Read `path` from the guest; undefined when this path cannot do it (then use SSH, which also reports errors). */
  async get(path: string): Promise<Buffer | undefined> {
    if (!this.#available) return undefined
    const token = newToken()
    const guestPort = GUEST_PORT_MIN + Math.floor(Math.random() * GUEST_PORT_SPAN)
    const sent: { chunks: Buffer[]; ended?: Promise<void> } = { chunks: [] }
    let peerArrived = () => {}
    const peer = new Promise<void>((resolve) => (peerArrived = resolve))
    // Both ends ready before the one exec: the guest picks by size (a small file does not wait for a
    // listener to come up; a big one is worth it).
    const [listener, forward] = await Promise.all([
      listenOnce(token, (socket, rest) => {
        sent.chunks.push(rest)
        sent.ended = new Promise((resolve) => {
          socket.on('data', (chunk: Buffer) => sent.chunks.push(chunk))
          socket.once('close', () => resolve())
        })
        peerArrived()
      }),
      this.#openForward?.(guestPort).catch((error: unknown) => {
        debug('%s: raw getFile %s: no hostfwd (%s): the guest connects out', this.#vm, path, (error as Error).message)
        return undefined
      }),
    ])
    const stop = new AbortController()
    try {
      const file = quoteShellArg(path)
      const connectSeconds = Math.ceil(scaleTimeout(RAW_GET_CONNECT_TIMEOUT_MS) / 1000)
      // cat's stdout is the socket: busybox copies a file to it with sendfile().
      const sendOut = `nc ${GUEST_GATEWAY} ${listener.port} -e sh -c ${quoteShellArg(`printf %s ${token}; exec cat -- ${file}`)} || exit 1`
      const sendListening = `nc -l -p ${guestPort} -e sh -c ${quoteShellArg(`read -r -t ${connectSeconds} t && [ "$t" = ${token} ] || exit 1; exec cat -- ${file}`)} || exit 1`
      const script = [
        `command -v nc >/dev/null 2>&1 || exit ${NO_NC_EXIT}`,
        `[ -f ${file} ] && [ -r ${file} ] || exit 1`,
        `size=$(${sizeOf(file)}) || exit 1`,
        forward ? `if [ "$size" -ge ${RAW_GET_MIN_BYTES} ]; then ${sendListening}; else ${sendOut}; fi` : sendOut,
        'echo "$size"',
      ].join('\n')
      let finished = false
      const running = this.#exec(script, { timeoutMs: scaleTimeout(RAW_TRANSFER_TIMEOUT_MS), signal: stop.signal }).then(
        (result) => result,
        // Aborted below because nothing came through the forward: SSH then. Any other error is the caller's to see.
        (error: unknown) => {
          if (stop.signal.aborted) return undefined
          throw error
        },
      )
      void running.finally(() => (finished = true)).catch(() => {})
      // Until the guest command ends: it may be listening behind the forward (a big file).
      const forwarded = forward
        ? receiveFromGuest(forward.port, token, () => finished || sent.ended !== undefined, performance.now() + scaleTimeout(RAW_GET_CONNECT_TIMEOUT_MS)).then((bytes) => {
            // Neither path got anything in time: end the guest's wait instead of letting it run out.
            if (bytes === undefined && sent.ended === undefined) stop.abort()
            return bytes
          })
        : Promise.resolve(undefined)
      const [result, viaForward] = await Promise.all([running, forwarded])
      if (result === undefined || !this.#judge(result, 'getFile', path)) return undefined
      let data = viaForward
      if (data === undefined && sent.ended === undefined) await settleWithin(peer, scaleTimeout(RAW_GET_LATE_PEER_MS))
      if (data === undefined && sent.ended !== undefined) {
        await sent.ended
        data = Buffer.concat(sent.chunks)
      }
      if (data === undefined) debug('%s: raw getFile %s: the guest sent nothing this host received: using SSH', this.#vm, path)
      const checked = data === undefined ? undefined : this.#checkSize(path, data, result.stdout)
      if (checked) {
        this.counts.gets++
        if (viaForward) this.counts.forwardedGets++
        debug('%s: getFile %s: %d bytes on the raw path (%s)', this.#vm, path, checked.length, viaForward ? 'the guest listened behind a hostfwd' : 'the guest connected out')
      }
      return checked
    } finally {
      stop.abort()
      listener.close()
      await forward?.close()
    }
  }

  #checkSize(path: string, data: Buffer, stdout: string): Buffer | undefined {
    if (String(data.length) === stdout.trim()) return data
    debug('%s: raw getFile %s got %d bytes, the guest sent %s: using SSH', this.#vm, path, data.length, stdout.trim())
    return undefined
  }

  #judge(result: ExecResult, operation: string, path: string): boolean {
    if (result.exitCode === 0) return true
    if (result.exitCode === NO_NC_EXIT) {
      this.#available = false
      debug('%s: the guest has no nc: files go over SSH', this.#vm)
    } else {
      debug('%s: raw %s %s failed (exit %d%s): using SSH', this.#vm, operation, path, result.exitCode, result.timedOut ? ', timed out' : '')
    }
    return false
  }
}

/** A file's size from its inode (busybox `wc -c` reads the whole file: 2 s for 50 MB under TCG); `wc -c` where `stat` is missing. */
const sizeOf = (quotedPath: string) => `stat -c %s -- ${quotedPath} 2>/dev/null || wc -c < ${quotedPath}`

const newToken = () => randomBytes(TOKEN_BYTES).toString('hex')

/**
 * Connect to QEMU's forward of the guest listener, send the token, read until the guest closes. QEMU
 * accepts before the guest listens and then closes with no bytes: try again until `deadline`, unless
 * the guest command already ended. Undefined when no attempt got a byte.
 */
async function receiveFromGuest(port: number, token: string, guestDone: () => boolean, deadline: number): Promise<Buffer | undefined> {
  for (;;) {
    const chunks = await new Promise<Buffer[]>((resolve) => {
      const received: Buffer[] = []
      const socket = connect(port, '127.0.0.1', () => socket.write(`${token}\n`))
      socket.on('data', (chunk: Buffer) => received.push(chunk))
      socket.on('error', () => {})
      socket.once('close', () => resolve(received))
    })
    if (chunks.length > 0) return Buffer.concat(chunks)
    if (guestDone() || performance.now() > deadline) return undefined
    await new Promise((resolve) => setTimeout(resolve, CONNECT_RETRY_MS))
  }
}

/**
 * A listener on 127.0.0.1 that hands `onPeer` the first connection whose first bytes are `token` (with
 * whatever followed the token). Connections with anything else are dropped; it stops accepting after one.
 */
async function listenOnce(token: string, onPeer: (socket: Socket, rest: Buffer) => void): Promise<{ port: number; close(): void }> {
  const sockets = new Set<Socket>()
  let served = false
  const server: Server = createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    socket.once('close', () => sockets.delete(socket))
    if (served) return void socket.destroy()
    let head = Buffer.alloc(0)
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk])
      if (head.length < token.length) return
      socket.off('data', onData)
      if (served || head.subarray(0, token.length).toString('latin1') !== token) return void socket.destroy()
      served = true
      server.close()
      onPeer(socket, head.subarray(token.length))
    }
    socket.on('data', onData)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('the transfer listener has no TCP port')
  return {
    port: address.port,
    close: () => {
      server.close()
      for (const socket of sockets) socket.destroy()
    },
  }
}
