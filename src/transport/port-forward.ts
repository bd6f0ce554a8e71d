import { connect, createServer, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { VmPoolError, invalidOptions } from '../errors.js'
import { createDebug } from '../util/debug.js'

/** The only address a forward listens on. */
export const FORWARD_HOST = '127.0.0.1'

const debug = createDebug('vm-pool:forward')

/** A TCP port on 127.0.0.1 that reaches a port in the guest (`Vm.forwardPort`). */
export interface PortForward extends AsyncDisposable {
  /** Always `127.0.0.1`: a forward never listens on another address. */
  readonly host: string
  readonly port: number
  /** The port in the guest it reaches. */
  readonly guestPort: number
  /** Stop listening and end the connections through it. Idempotent. */
  close(): Promise<void>
}

export interface ForwardPortOptions {
  /** The local port to listen on. @default a free port chosen by the system */
  hostPort?: number
}

/** `guestPort` and `hostPort` checked where a forward starts, with the bad value quoted. */
export function validateForwardPorts(guestPort: number, options: ForwardPortOptions | undefined, context: { provider: string; vm: string }): void {
  const check = (name: string, value: unknown) => {
    if (!Number.isInteger(value) || (value as number) < 1 || (value as number) > 65_535) {
      throw invalidOptions(`forwardPort: ${name} must be a whole number from 1 to 65535, got ${JSON.stringify(value)}`, { ...context, operation: 'forwardPort' })
    }
  }
  check('guestPort', guestPort)
  if (options?.hostPort !== undefined) check('hostPort', options.hostPort)
}

export interface LocalForwardOptions extends ForwardPortOptions {
  guestPort: number
  /** A stream to the guest port, one per accepted connection (an SSH direct-tcpip channel, a socket). */
  connect(): Promise<Duplex>
  provider: string
  vm: string
}

/**
 * A server on 127.0.0.1 that pipes every accepted connection to a stream `connect()` opens to the guest
 * port. A connection the guest side refuses is closed at once (the client sees a reset or an EOF).
 */
export async function startLocalForward(options: LocalForwardOptions): Promise<PortForward> {
  const context = { provider: options.provider, vm: options.vm }
  validateForwardPorts(options.guestPort, options, context)
  const open = new Set<Socket | Duplex>()
  const server = createServer({ pauseOnConnect: true }, (socket) => {
    open.add(socket)
    socket.once('close', () => open.delete(socket))
    socket.on('error', () => socket.destroy())
    options.connect().then(
      (remote) => {
        if (socket.destroyed) return void remote.destroy()
        open.add(remote)
        remote.once('close', () => {
          open.delete(remote)
          socket.end()
        })
        remote.on('error', () => socket.destroy())
        socket.once('close', () => remote.destroy())
        socket.pipe(remote)
        remote.pipe(socket)
        socket.resume()
      },
      (error: unknown) => {
        debug('%s: a connection to guest port %d failed: %s', options.vm, options.guestPort, (error as Error).message)
        socket.destroy()
      },
    )
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      reject(
        new VmPoolError({
          code: 'VMPOOL_FORWARD_FAILED',
          ...context,
          operation: 'forwardPort',
          message: `cannot listen on ${FORWARD_HOST}:${options.hostPort ?? 0} for guest port ${options.guestPort}: ${error.message}`,
          hint: error.code === 'EADDRINUSE' ? 'that port is taken: pick another hostPort, or leave it out to get a free one' : undefined,
          cause: error,
        }),
      )
    })
    server.listen(options.hostPort ?? 0, FORWARD_HOST, () => resolve())
  })
  const { port } = server.address() as { port: number }
  debug('%s: 127.0.0.1:%d -> guest port %d', options.vm, port, options.guestPort)
  let closed: Promise<void> | undefined
  const close = () =>
    (closed ??= new Promise<void>((resolve) => {
      server.close(() => resolve())
      for (const stream of open) stream.destroy()
      debug('%s: closed 127.0.0.1:%d', options.vm, port)
    }))
  return { host: FORWARD_HOST, port, guestPort: options.guestPort, close, [Symbol.asyncDispose]: close }
}

/** A TCP connection to `host:port`, once established (a forward's far side when the guest shares this machine's network). */
export function connectTcp(host: string, port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port })
    socket.once('connect', () => {
      socket.off('error', reject)
      resolve(socket)
    })
    socket.once('error', reject)
  })
}

/**
 * The forwards one `Vm` opened: closed together when the Vm is closed or its VM deleted. A forward
 * closed on its own leaves the set.
 */
export class PortForwardSet {
  readonly #forwards = new Set<PortForward>()

  get size(): number {
    return this.#forwards.size
  }

  track(forward: PortForward): PortForward {
    const close = async () => {
      this.#forwards.delete(tracked)
      await forward.close()
    }
    const tracked: PortForward = { host: forward.host, port: forward.port, guestPort: forward.guestPort, close, [Symbol.asyncDispose]: close }
    this.#forwards.add(tracked)
    return tracked
  }

  async closeAll(): Promise<void> {
    const forwards = [...this.#forwards]
    this.#forwards.clear()
    await Promise.all(forwards.map((forward) => forward.close()))
  }
}
