/**
 * `vm-pool ls | head -1`: the reader of our stdout (or stderr) may close its end of the pipe at any time.
 * Node then emits `EPIPE` as an 'error' event on process.stdout, and with no listener that is an uncaught
 * exception: a stack trace, exit 1, and `vm-pool run` dying before it deleted its VMs. A closed output
 * instead ends the command quietly: `onClosed` runs once (the bin aborts the command's signal, so `run`
 * kills its commands and cleans up as after Ctrl-C), nothing is printed — there is no one to print to.
 * Later writes to the destroyed stream are dropped by Node without another 'error' event.
 */
export function endQuietlyOnClosedOutput(streams: NodeJS.WritableStream[], onClosed: () => void): void {
  let closed = false
  for (const stream of streams) {
    stream.on('error', (error: NodeJS.ErrnoException) => {
      // Only a closed reader is expected; any other write error keeps today's loud failure.
      if (error.code !== 'EPIPE' && error.code !== 'ERR_STREAM_DESTROYED') throw error
      if (closed) return
      closed = true
      onClosed()
    })
  }
}
