import { expect, test } from 'vm-pool/vitest'

// A server in the guest, a client in the test process: forwardPort gives a port on 127.0.0.1 here that
// reaches the guest's port (also a server bound to the guest's own 127.0.0.1), until it is closed.
test('an HTTP server in the VM, requested from the test through forwardPort', async ({ workerVm }) => {
  const www = `/tmp/www-${process.pid}`
  await workerVm.exec(`mkdir -p ${www} && echo 'hello from the guest' > ${www}/index.html`)
  // The server runs as a long exec of its own; the other execs on the VM keep running next to it.
  const stop = new AbortController()
  const server = workerVm.exec(`exec busybox httpd -f -p 127.0.0.1:8080 -h ${www}`, { signal: stop.signal }).catch(() => {})
  try {
    await using forward = await workerVm.forwardPort(8080)
    expect(forward.host).toBe('127.0.0.1')
    const url = `http://${forward.host}:${forward.port}/index.html`
    // The server needs a moment to listen: retry until it answers.
    let response: Response | undefined
    for (let attempt = 0; attempt < 50 && !response?.ok; attempt++) {
      response = await fetch(url).catch(() => undefined)
      if (!response?.ok) await new Promise((resolve) => setTimeout(resolve, 200))
    }
    expect(response?.status).toBe(200)
    expect(await response!.text()).toBe('hello from the guest\n')
  } finally {
    stop.abort()
    await server
    await workerVm.exec(['rm', '-rf', www])
  }
})
