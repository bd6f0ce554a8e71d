import { expect, test } from 'vm-pool/vitest'

// A tiny HTTP service made of systemd alone: a socket unit listens on 8080 and starts one
// instance of the service per connection, with the connection as its stdin and stdout. In the unit
// file `$$` is a `$` and `%%` a `%` (systemd's own expansion), `\\r` reaches printf as `\r`.
const SOCKET_UNIT = `[Unit]
Description=hello over HTTP
[Socket]
ListenStream=8080
Accept=yes
[Install]
WantedBy=sockets.target
`
const SERVICE_UNIT = `[Unit]
Description=hello over HTTP (one connection)
[Service]
ExecStart=/bin/sh -c 'while read -r line && [ "$\${#line}" -gt 1 ]; do :; done; printf "HTTP/1.0 200 OK\\\\r\\\\nContent-Type: text/plain\\\\r\\\\n\\\\r\\\\nhello from %%s\\\\n" "$$(hostname)"'
StandardInput=socket
StandardOutput=socket
`

test('systemd is up and this is Debian 12', async ({ workerVm }) => {
  const state = await workerVm.exec('systemctl is-system-running --wait')
  expect(state.stdout.trim(), (await workerVm.exec('systemctl --failed --no-legend')).stdout).toBe('running')
  expect((await workerVm.exec('. /etc/os-release && echo "$PRETTY_NAME"')).stdout).toMatch(/^Debian GNU\/Linux 12/)
})

test('a systemd unit installed by the test serves HTTP', async ({ workerVm }) => {
  const units = await workerVm.exec(
    `cat > /etc/systemd/system/hello.socket && printf '%s' "$SERVICE" > '/etc/systemd/system/hello@.service' && systemctl daemon-reload && systemctl enable --now hello.socket`,
    { input: SOCKET_UNIT, env: { SERVICE: SERVICE_UNIT } },
  )
  expect(units.exitCode, units.stderr).toBe(0)
  expect((await workerVm.exec('systemctl is-active hello.socket')).stdout).toBe('active\n')
  // bash's /dev/tcp: a plain HTTP client with nothing installed.
  const response = await workerVm.exec(`bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3 && cat <&3'`)
  expect(response.stdout).toMatch(/^HTTP\/1.0 200 OK\r\n/)
  expect(response.stdout).toContain(`hello from ${workerVm.name}\n`)
  // And from this test process: a loopback port that reaches the guest's 8080.
  await using forward = await workerVm.forwardPort(8080)
  const page = await fetch(`http://${forward.host}:${forward.port}/`)
  expect(await page.text()).toContain(`hello from ${workerVm.name}\n`)
})

test('useradd and sudo work as on any Debian machine', async ({ workerVm }) => {
  const name = `tester${process.pid}`
  expect((await workerVm.exec(['useradd', '--create-home', '--shell', '/bin/bash', name])).exitCode).toBe(0)
  expect((await workerVm.exec(['su', '-', name, '-c', 'id -un && pwd'])).stdout).toBe(`${name}\n/home/${name}\n`)
  // The image's own non-root user has passwordless sudo.
  expect((await workerVm.exec(['su', '-', 'debian', '-c', 'sudo -n id -u'])).stdout).toBe('0\n')
})
