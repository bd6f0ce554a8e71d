import { closeSync, constants, fstatSync, ftruncateSync, openSync, readSync, statSync, writeSync } from 'node:fs'

/**
 * Past this much shrinking, the file is truncated to its new length; below it, the new text is padded with
 * spaces to the old length instead (JSON ignores them), so one write replaces the whole text. A page.
 */
const PAD_RATHER_THAN_TRUNCATE = 4_096

/**
 * Overwrite `path` in place with `text`: open (created with `mode` if missing), one positioned write from
 * offset 0, close. No new inode, no rename: on ext4 under contention a temp file + rename took 0.2-2 ms
 * (journal and directory locks, shared with every other writer on the file system), an overwrite ~0.02 ms
 * (docs/pool.md, "Numbers").
 *
 * What this gives up: a reader that does not hold the writer's lock may see a mix of old and new pages, and a
 * writer SIGKILLed during the write (the kernel stops between pages) leaves a torn file. Callers detect both:
 * the lease file carries a checksum and a copy beside it (pool/lease-file.ts); the reaper marker is one page
 * and a second source of what it lists.
 */
export function overwriteFileSync(path: string, text: string, mode = 0o600): void {
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT, mode)
  try {
    overwriteFd(fd, Buffer.from(text), fstatSync(fd).size)
  } finally {
    closeSync(fd)
  }
}

/** Writes `data` over a file of `size` bytes from offset 0 (padded or truncated, see above); the new size. */
function overwriteFd(fd: number, data: Buffer, size: number): number {
  const shrink = size - data.length
  const truncate = shrink > PAD_RATHER_THAN_TRUNCATE
  const padded = shrink > 0 && !truncate ? Buffer.concat([data, Buffer.alloc(shrink, 0x20)]) : data
  for (let written = 0; written < padded.length; ) written += writeSync(fd, padded, written, padded.length - written, written)
  if (truncate) ftruncateSync(fd, data.length)
  return padded.length
}

/**
 * A file read and overwritten in place many times by one process, under a lock the caller holds: kept open
 * between uses. Each use checks (one `stat` of the path) that the path still names the file we have open;
 * when it was replaced (renamed over, deleted), the next use opens the new one. Open/close was two thirds of a
 * lease update's file I/O. `close()` when done; a forgotten one is closed when this object is collected.
 * Another process may replace the file between the `stat` and the read or write (a rename over it): callers
 * hold the lock every writer takes, so only a writer that ignores it (an older vm-pool's rename) can.
 */
export class InPlaceFile {
  readonly path: string
  readonly #mode: number
  #handle: { fd: number; ino: number; size: number } | undefined

  constructor(path: string, mode = 0o600) {
    this.path = path
    this.#mode = mode
  }

  /** The text, or `undefined` when there is no file. */
  read(): string | undefined {
    const handle = this.#current()
    if (handle === undefined) return undefined
    const buffer = Buffer.allocUnsafe(handle.size)
    let length = 0
    while (length < buffer.length) {
      const count = readSync(handle.fd, buffer, length, buffer.length - length, length)
      if (count === 0) break
      length += count
    }
    return buffer.toString('utf8', 0, length)
  }

  /** Created (with the mode given) when there is no file. */
  write(text: string): void {
    const handle = this.#current() ?? this.#open()
    handle.size = overwriteFd(handle.fd, Buffer.from(text), handle.size)
  }

  close(): void {
    if (this.#handle === undefined) return
    closeSync(this.#handle.fd)
    this.#handle = undefined
    unclosed.unregister(this)
  }

  /** The open file if the path still names it (else the one it names now); `undefined` when there is none. */
  #current(): { fd: number; ino: number; size: number } | undefined {
    const stats = statSync(this.path, { throwIfNoEntry: false })
    if (stats === undefined) {
      this.close()
      return undefined
    }
    if (this.#handle?.ino !== stats.ino) return this.#open()
    this.#handle.size = stats.size
    return this.#handle
  }

  #open(): { fd: number; ino: number; size: number } {
    this.close()
    const fd = openSync(this.path, constants.O_RDWR | constants.O_CREAT, this.#mode)
    const stats = fstatSync(fd)
    this.#handle = { fd, ino: stats.ino, size: stats.size }
    unclosed.register(this, fd, this)
    return this.#handle
  }
}

const unclosed = new FinalizationRegistry<number>((fd) => {
  try {
    closeSync(fd)
  } catch {
    // already closed
  }
})
