import { connect } from 'node:net'
import type { Duplex } from 'node:stream'
import { withTimeout } from '../../util/timeouts.js'

/** A QEMU monitor: the path of its unix socket here, or a function opening a stream to it (on a VM host, over SSH). */
export type QmpTarget = string | (() => Promise<Duplex>)

/** How long one QMP exchange (connect, greeting, capabilities, command) may take. */
export const QMP_TIMEOUT_MS = 3_000

/**
 * Run one QMP command on a QEMU monitor socket and return its `return` value. QMP speaks one JSON
 * object per line: a greeting, then `qmp_capabilities` must be acknowledged before any command.
 * Events (`{"event": ...}`) are skipped. The connection is closed afterwards.
 */
export async function runQmpCommand(target: QmpTarget, command: string, args?: Record<string, unknown>, timeoutMs = QMP_TIMEOUT_MS): Promise<unknown> {
  let socket: Duplex | undefined
  let finished = false
  const opened = typeof target === 'string' ? Promise.resolve<Duplex>(connect(target)) : target()
  const exchange = opened.then((stream) => new Promise<unknown>((resolve, reject) => {
    socket = stream
    // Opened after the timeout gave up on it: nobody waits for this exchange any more.
    if (finished) return void stream.destroy()
    let buffer = ''
    let stage: 'greeting' | 'capabilities' | 'command' = 'greeting'
    socket.setEncoding('utf8')
    socket.on('error', reject)
    // `quit` closes the socket, possibly before its reply arrives: that also means success.
    socket.on('close', () => (stage === 'command' && command === 'quit' ? resolve(undefined) : reject(new Error(`QMP socket closed during ${stage}`))))
    socket.on('data', (chunk: string) => {
      buffer += chunk
      let newline: number
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline).trim()
        buffer = buffer.slice(newline + 1)
        if (!line) continue
        const message = JSON.parse(line) as { QMP?: unknown; return?: unknown; error?: { class: string; desc: string }; event?: string }
        if (message.event) continue
        if (message.error) return reject(new Error(`QMP ${stage === 'command' ? command : 'qmp_capabilities'}: ${message.error.class}: ${message.error.desc}`))
        if (stage === 'greeting' && message.QMP) {
          stage = 'capabilities'
          socket!.write(`${JSON.stringify({ execute: 'qmp_capabilities' })}\n`)
        } else if (stage === 'capabilities' && 'return' in message) {
          stage = 'command'
          socket!.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`)
        } else if (stage === 'command' && 'return' in message) {
          resolve(message.return)
        }
      }
    })
  }))
  try {
    return await withTimeout(exchange, { name: 'QMP_TIMEOUT_MS', ms: timeoutMs, what: `QMP ${command} on ${typeof target === 'string' ? target : 'a VM host'}`, provider: 'qemu' })
  } finally {
    finished = true
    socket?.destroy()
  }
}
