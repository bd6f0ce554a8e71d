/**
 * File bytes to and from a QEMU guest on plain TCP instead of inside SSH. Under TCG the guest's dropbear
 * spends its emulated CPU on encryption: putFile moved ~0.4 MB/s and getFile ~3 MB/s over SSH, against
 * ~12 and ~5.5 MB/s on this path, measured side by side on one busy 2-core host (docs/qemu.md, "Files").
 *
 * How: this host listens on 127.0.0.1 (an ephemeral port, one transfer); the guest's `nc` connects to
 * the user-mode network's gateway (10.0.2.2), which QEMU maps to this host's loopback. The command that
 * starts `nc` goes over the (encrypted, authenticated) SSH connection and carries a one-time token: the
 * guest sends it first, and the listener talks only to a peer that sent it. Any other local process that
 * connects is dropped and learns nothing; what arrives is checked by size. A guest without `nc` (the
 * debian-12 minbase image), or any failure on this path, falls back to SSH: the result never depends on it.
 */
import { randomBytes } from 'node:crypto'
import { createServer, type Server, type Socket } from 'node:net'
import { quoteShellArg } from '../../transport/shell.js'
import { createDebug } from '../../util/debug.js'
import { scaleTimeout } from '../../util/timeouts.js'
import type { ExecOptions, ExecResult } from '../vm-provider.js'

/** The host as a QEMU user-mode guest sees it. */
export const GUEST_GATEWAY = '10.0.2.2'
/** Smaller files go over SSH: one exec is quicker than starting `nc` and a listener. */
export const RAW_PUT_MIN_BYTES = 256 * 1024
/** One transfer, start to end; scaled. */
export const RAW_TRANSFER_TIMEOUT_MS = 600_000
/** The guest command's exit code when it has no `nc`. */
const NO_NC_EXIT = 97
const TOKEN_BYTES = 16

const debug = createDebug('vm-pool:qemu')

type Exec = (command: string, options?: ExecOptions) => Promise<ExecResult>

/** Raw transfers for one VM; `available` turns false for good once the guest shows it has no `nc`. */
export class GuestRawTransfer {
  #available = true
  readonly #exec: Exec
  readonly #vm: string

  constructor(exec: Exec, vm: string) {
    this.#exec = exec
    this.#vm = vm
  }

  /** Write `data` to `path` in the guest; false when this path cannot do it (then use SSH). */
  async put(path: string, data: Buffer): Promise<boolean> {
    if (!this.#available || data.length < RAW_PUT_MIN_BYTES) return false
    const token = randomBytes(TOKEN_BYTES).toString('hex')
    const listener = await listenOnce(token, (socket) => socket.end(data))
    try {
      const tmp = `${path}.vm-pool-${token.slice(0, 8)}`
      const script = [
        `command -v nc >/dev/null 2>&1 || exit ${NO_NC_EXIT}`,
        `printf %s ${token} | nc ${GUEST_GATEWAY} ${listener.port} > ${quoteShellArg(tmp)} || { rm -f ${quoteShellArg(tmp)}; exit 1; }`,
        `[ "$(wc -c < ${quoteShellArg(tmp)})" -eq ${data.length} ] || { rm -f ${quoteShellArg(tmp)}; exit 1; }`,
        `mv -f ${quoteShellArg(tmp)} ${quoteShellArg(path)}`,
      ].join('\n')
      return this.#judge(await this.#exec(script, { timeoutMs: scaleTimeout(RAW_TRANSFER_TIMEOUT_MS) }), 'putFile', path)
    } finally {
      listener.close()
    }
  }

  /** Read `path` from the guest; undefined when this path cannot do it (then use SSH, which also reports errors). */
  async get(path: string): Promise<Buffer | undefined> {
    if (!this.#available) return undefined
    const token = randomBytes(TOKEN_BYTES).toString('hex')
    const chunks: Buffer[] = []
    let ended: Promise<void> | undefined
    const listener = await listenOnce(token, (socket, rest) => {
      chunks.push(rest)
      ended = new Promise((resolve) => {
        socket.on('data', (chunk: Buffer) => chunks.push(chunk))
        socket.once('close', () => resolve())
      })
    })
    try {
      const file = quoteShellArg(path)
      const script = [
        `command -v nc >/dev/null 2>&1 || exit ${NO_NC_EXIT}`,
        `[ -f ${file} ] && [ -r ${file} ] || exit 1`,
        `size=$(wc -c < ${file}) || exit 1`,
        `{ printf %s ${token}; cat -- ${file}; } | nc ${GUEST_GATEWAY} ${listener.port} || exit 1`,
        'echo "$size"',
      ].join('\n')
      const result = await this.#exec(script, { timeoutMs: scaleTimeout(RAW_TRANSFER_TIMEOUT_MS) })
      if (!this.#judge(result, 'getFile', path) || ended === undefined) return undefined
      await ended
      const data = Buffer.concat(chunks)
      if (String(data.length) !== result.stdout.trim()) {
        debug('%s: raw getFile %s got %d bytes, the guest sent %s: using SSH', this.#vm, path, data.length, result.stdout.trim())
        return undefined
      }
      return data
    } finally {
      listener.close()
    }
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
