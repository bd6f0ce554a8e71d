import { StringDecoder } from 'node:string_decoder'
import { invalidOptions } from '../errors.js'
import { DEFAULT_MAX_OUTPUT_BYTES } from './exec-types.js'

/** `maxOutputBytes` checked once, where an exec starts: a positive whole number, or Infinity. */
export function normalizeMaxOutputBytes(value: number | undefined): number {
  if (value === undefined) return DEFAULT_MAX_OUTPUT_BYTES
  if (value === Number.POSITIVE_INFINITY || (Number.isSafeInteger(value) && value > 0)) return value
  throw invalidOptions(`maxOutputBytes must be a positive whole number or Infinity, got ${JSON.stringify(value)}`)
}

/**
 * The bounded memory of one output stream: its first `max / 2` bytes and its last `max / 2` bytes,
 * whatever the command prints in between (that part is only counted). Nothing is dropped until the
 * stream passes `max` bytes, so short output comes back whole.
 */
export class OutputCapture {
  readonly #headLimit: number
  readonly #tailLimit: number
  readonly #head: Buffer[] = []
  #headBytes = 0
  #tail: Buffer[] = []
  #tailBytes = 0
  #total = 0

  constructor(maxBytes: number) {
    this.#headLimit = maxBytes === Number.POSITIVE_INFINITY ? maxBytes : Math.floor(maxBytes / 2)
    this.#tailLimit = maxBytes === Number.POSITIVE_INFINITY ? 0 : maxBytes - this.#headLimit
  }

  /** Bytes seen so far, dropped ones included. */
  get totalBytes(): number {
    return this.#total
  }

  /** Bytes seen but not kept. */
  get droppedBytes(): number {
    return this.#total - this.#headBytes - this.#tailBytes
  }

  push(chunk: Buffer | string): void {
    let data = typeof chunk === 'string' ? Buffer.from(chunk) : chunk
    this.#total += data.length
    if (this.#headBytes < this.#headLimit) {
      const take = Math.min(data.length, this.#headLimit - this.#headBytes)
      this.#head.push(take === data.length ? data : data.subarray(0, take))
      this.#headBytes += take
      data = data.subarray(take)
    }
    if (data.length === 0 || this.#tailLimit === 0) return
    // A copy: the caller's buffer may be a slice of a larger one that must not stay alive.
    this.#tail.push(Buffer.from(data))
    this.#tailBytes += data.length
    while (this.#tailBytes > this.#tailLimit) {
      const excess = this.#tailBytes - this.#tailLimit
      const first = this.#tail[0]!
      if (first.length <= excess) {
        this.#tail.shift()
        this.#tailBytes -= first.length
      } else {
        this.#tail[0] = first.subarray(excess)
        this.#tailBytes -= excess
      }
    }
  }

  /** The kept bytes, head then tail, without any marker (binary output). */
  bytes(): Buffer {
    return Buffer.concat([...this.#head, ...this.#tail])
  }

  /**
   * The kept output as UTF-8 text. When bytes were dropped, a marker line naming `stream` and the count
   * stands where they were; a character cut in two at either edge is left out rather than mangled.
   */
  text(stream: 'stdout' | 'stderr'): string {
    const dropped = this.droppedBytes
    if (dropped === 0) return this.bytes().toString('utf8')
    const headBytes = Buffer.concat(this.#head)
    const head = new StringDecoder('utf8').write(headBytes)
    const headCut = Math.max(0, headBytes.length - Buffer.byteLength(head))
    let tail = Buffer.concat(this.#tail)
    let skip = 0
    while (skip < 3 && skip < tail.length && (tail[skip]! & 0xc0) === 0x80) skip++
    tail = tail.subarray(skip)
    const marker = `${head.endsWith('\n') || head === '' ? '' : '\n'}[vm-pool: ${dropped + headCut + skip} bytes of ${stream} dropped (maxOutputBytes)]\n`
    return `${head}${marker}${tail.toString('utf8')}`
  }
}
