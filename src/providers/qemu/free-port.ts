import { createServer } from 'node:net'

/**
 * A loopback TCP port that was free a moment ago. Another process can take it before QEMU binds it:
 * the caller retries with a new port when QEMU reports the host forwarding failed.
 */
export async function findFreeLoopbackPort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const { port } = server.address() as { port: number }
  await new Promise((resolve) => server.close(resolve))
  return port
}
