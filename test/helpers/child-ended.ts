import type { ChildProcess } from 'node:child_process'

/** After 'exit', how long piped output may take to end: a grandchild that inherited the pipes can hold them open past the child. */
const DRAIN_GRACE_MS = 5_000

export interface ChildEnd {
  code: number | null
  signal: NodeJS.Signals | null
}

/**
 * How `child` ended, once its piped output has been read too.
 *
 * Node emits 'exit' as soon as the process is gone, possibly before the last of its stdout and stderr has been
 * read from the pipes: a test that looks at the output on 'exit' can miss the last line (CI once saw "exited with
 * 3" without the "broken install" printed right before). 'close' comes after both; when a grandchild still holds
 * the pipes, DRAIN_GRACE_MS after 'exit' will do.
 */
export function childEnded(child: ChildProcess): Promise<ChildEnd> {
  return new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined
    const finish = () => {
      clearTimeout(timer)
      resolve({ code: child.exitCode, signal: child.signalCode })
    }
    child.once('close', finish)
    const exited = () => {
      const open = [child.stdout, child.stderr].some((stream) => stream !== null && !stream.destroyed && !stream.readableEnded)
      if (open) timer = setTimeout(finish, DRAIN_GRACE_MS)
      else finish()
    }
    if (child.exitCode !== null || child.signalCode !== null) exited()
    else child.once('exit', exited)
  })
}
