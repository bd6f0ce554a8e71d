/**
 * Big files to and from a real QEMU guest on plain TCP (src/providers/qemu/guest-raw-transfer.ts): for
 * putFile the guest's nc connects to the user-mode gateway; for getFile the guest listens behind a QEMU
 * hostfwd on 127.0.0.1. The bytes skip SSH's encryption. Shown here: the raw path is the one taken (a
 * counting nc function in the guest, the transfer's counts), the bytes arrive intact, a local process
 * that connects first with a wrong token gets nothing (either direction), a truncated stream is refused
 * (SSH then), and a guest without nc falls back to SSH with the same result.
 */
import { randomBytes } from 'node:crypto'
import { connect, createServer, type AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { GuestRawTransfer, RAW_GET_MIN_BYTES, RAW_PUT_MIN_BYTES, type OpenHostForward } from '../../src/providers/qemu/guest-raw-transfer.js'
import type { QemuVm } from '../../src/providers/qemu/qemu-vm.js'
import type { ExecOptions } from '../../src/providers/vm-provider.js'
import { getQemuSkipReason, QEMU_TEST_CREATE_TIMEOUT_MS, useQemuTestProvider, type QemuTestProvider } from '../helpers/qemu.js'

const skipReason = getQemuSkipReason()

describe.skipIf(Boolean(skipReason))('raw file transfer to a QEMU guest', () => {
  let qemu: QemuTestProvider
  let vm: QemuVm

  beforeAll(async () => {
    qemu = useQemuTestProvider()
    vm = await qemu.provider.connect(await qemu.provider.create({ name: 'raw-transfer-a' }))
  }, QEMU_TEST_CREATE_TIMEOUT_MS)
  afterAll(async () => {
    await vm?.close()
    await qemu?.cleanup()
  }, 60_000)

  test('putFile and getFile of 3 MiB take the raw path and keep every byte', async () => {
    const data = randomBytes(3 * 1024 * 1024)
    // A shell function named nc that counts its calls (busybox's sh prefers functions to its applets).
    const spied = new GuestRawTransfer((command, options) => vm.exec(`nc() { echo x >> /tmp/nc-calls; busybox nc "$@"; }\n${command}`, options), vm.name)
    expect(await spied.put('/tmp/big.bin', data)).toBe(true)
    expect((await spied.get('/tmp/big.bin'))?.equals(data)).toBe(true)
    expect((await vm.exec('wc -l < /tmp/nc-calls')).stdout.trim()).toBe('2')
    // The Vm's own methods: the same bytes both ways.
    await vm.putFile('/tmp/big2.bin', data)
    expect((await vm.exec('cmp /tmp/big.bin /tmp/big2.bin && echo same')).stdout).toBe('same\n')
    expect((await vm.getFile('/tmp/big2.bin')).equals(data)).toBe(true)
  }, 300_000)

  /** QEMU's own forwards of this VM (the Vm's hostfwd), the ports they got recorded. */
  const forwarder = (opened: { host: string; port: number }[]): OpenHostForward => async (guestPort) => {
    const forward = await vm.forwardPort(guestPort, { via: 'hostfwd' })
    opened.push({ host: forward.host, port: forward.port })
    return forward
  }

  test('getFile through a hostfwd: the guest listens, the host sends the token, every byte arrives (also with no trailing newline, empty, small)', async () => {
    const data = Buffer.concat([randomBytes(RAW_GET_MIN_BYTES + 1000), Buffer.from('no newline at the end')])
    await vm.putFile('/tmp/fwd.bin', data)
    const opened: { host: string; port: number }[] = []
    const transfer = new GuestRawTransfer((command, options) => vm.exec(`nc() { echo "$*" >> /tmp/nc-listen; busybox nc "$@"; }\n${command}`, options), vm.name, forwarder(opened))
    expect((await transfer.get('/tmp/fwd.bin'))?.equals(data)).toBe(true)
    expect(transfer.counts).toEqual({ puts: 0, gets: 1, forwardedGets: 1 })
    // The guest listened (nc -l), and QEMU's end of the forward was on loopback only.
    expect((await vm.exec('cat /tmp/nc-listen')).stdout).toMatch(/^-l -p \d+ -e sh -c /)
    expect(opened).toHaveLength(1)
    expect(opened[0]!.host).toBe('127.0.0.1')
    // The rule is gone once the transfer is done: nothing answers on that port any more.
    await expect(new Promise((resolve, reject) => connect(opened[0]!.port, '127.0.0.1').on('connect', resolve).on('error', reject))).rejects.toMatchObject({ code: 'ECONNREFUSED' })
    // Files under RAW_GET_MIN_BYTES (an empty one too): the guest connects out instead of listening.
    await vm.putFile('/tmp/empty.bin', Buffer.alloc(0))
    await vm.putFile('/tmp/short.txt', 'no newline')
    expect((await transfer.get('/tmp/empty.bin'))?.length).toBe(0)
    expect((await transfer.get('/tmp/short.txt'))?.toString()).toBe('no newline')
    expect(transfer.counts).toEqual({ puts: 0, gets: 3, forwardedGets: 1 })
    expect((await vm.exec('wc -l < /tmp/nc-listen')).stdout.trim()).toBe('3')
    expect((await vm.exec('grep -c "^-l " /tmp/nc-listen')).stdout.trim()).toBe('1')
  }, 300_000)

  test('getFile when the guest\'s bytes reach this host after its command ended: they are still taken (an empty file too)', async () => {
    // The exit status comes back over SSH, the bytes over the guest's own TCP connection: in CI the status once
    // won, and an empty file went to SSH. Here the guest's nc sends a second after its command ended.
    await vm.putFile('/tmp/late.txt', 'arrives late')
    await vm.putFile('/tmp/late-empty.bin', Buffer.alloc(0))
    const late = new GuestRawTransfer((command, options) => vm.exec(`nc() { (sleep 1; busybox nc "$@") </dev/null >/dev/null 2>&1 & }\n${command}`, options), vm.name)
    expect((await late.get('/tmp/late.txt'))?.toString()).toBe('arrives late')
    expect((await late.get('/tmp/late-empty.bin'))?.length).toBe(0)
    expect(late.counts).toEqual({ puts: 0, gets: 2, forwardedGets: 0 })
  }, 300_000)

  test('getFile through a hostfwd: a local process that reaches the guest first gets nothing, and the Vm falls back to SSH', async () => {
    const data = randomBytes(RAW_GET_MIN_BYTES * 2)
    await vm.putFile('/tmp/guarded-get.bin', data)
    let stolen = 0
    let guestDone = false
    let intruding: Promise<void> | undefined
    // The transfer is handed a port where nothing listens; the intruder knocks on QEMU's real one with
    // a wrong token until the guest's one-shot listener has taken it (the guest command then ends).
    const deadPort = await new Promise<number>((resolve) => {
      const server = createServer().listen(0, '127.0.0.1', () => {
        const { port } = server.address() as AddressInfo
        server.close(() => resolve(port))
      })
    })
    const transfer = new GuestRawTransfer(
      (command, options) => vm.exec(command, options).finally(() => (guestDone = true)),
      vm.name,
      async (guestPort) => {
        const forward = await vm.forwardPort(guestPort, { via: 'hostfwd' })
        intruding = (async () => {
          while (!guestDone) {
            await new Promise<void>((resolve) => {
              const intruder = connect(forward.port, '127.0.0.1', () => intruder.write(`${'0'.repeat(32)}\n`))
              intruder.on('data', (chunk: Buffer) => (stolen += chunk.length))
              intruder.on('error', () => resolve())
              intruder.on('close', () => resolve())
            })
            await new Promise((resolve) => setTimeout(resolve, 20))
          }
        })()
        return { port: deadPort, close: () => forward.close() }
      },
    )
    expect(await transfer.get('/tmp/guarded-get.bin')).toBeUndefined()
    await intruding
    expect(stolen).toBe(0)
    expect(transfer.counts.gets).toBe(0)
    expect((await vm.getFile('/tmp/guarded-get.bin')).equals(data)).toBe(true)
  }, 300_000)

  test('a truncated stream is refused both ways: no file is written, no short buffer is returned', async () => {
    const data = randomBytes(RAW_PUT_MIN_BYTES * 2)
    // The guest's receiving/sending cat stops early (head -c), as a connection cut halfway would.
    const cut = new GuestRawTransfer((command, options) => vm.exec(command.replace('exec cat > ', 'exec head -c 1000 > ').replace('exec cat -- ', 'exec head -c 1000 -- '), options), vm.name, forwarder([]))
    expect(await cut.put('/tmp/cut.bin', data)).toBe(false)
    expect((await vm.exec('ls /tmp/cut.bin* 2>/dev/null; true')).stdout).toBe('')
    await vm.putFile('/tmp/whole.bin', data)
    expect(await cut.get('/tmp/whole.bin')).toBeUndefined()
    expect(cut.counts).toEqual({ puts: 0, gets: 0, forwardedGets: 0 })
  }, 300_000)

  test('a local process that connects first with a wrong token gets none of the bytes; the transfer still succeeds', async () => {
    const data = randomBytes(RAW_PUT_MIN_BYTES * 2)
    let stolen = 0
    const transfer = new GuestRawTransfer(async (command, options?: ExecOptions) => {
      // The listener's port is in the command: connect to it before the guest does.
      const port = Number(/nc 10\.0\.2\.2 (\d+)/.exec(command)?.[1])
      await new Promise<void>((resolve) => {
        const intruder = connect(port, '127.0.0.1', () => intruder.write('0'.repeat(32)))
        intruder.on('data', (chunk) => (stolen += chunk.length))
        intruder.on('error', () => resolve())
        intruder.on('close', () => resolve())
      })
      return vm.exec(command, options)
    }, vm.name)
    expect(await transfer.put('/tmp/guarded.bin', data)).toBe(true)
    expect(stolen).toBe(0)
    expect((await vm.getFile('/tmp/guarded.bin')).equals(data)).toBe(true)
  }, 300_000)

  test('a guest without nc: the raw path says no once, and the Vm falls back to SSH', async () => {
    // busybox's sh finds its nc applet whatever PATH says: the guest's answer to `command -v nc` is what changes.
    const noNc = new GuestRawTransfer((command, options) => vm.exec(command.replace('command -v nc ', 'command -v no-such-nc '), options), vm.name)
    expect(await noNc.put('/tmp/x.bin', randomBytes(RAW_PUT_MIN_BYTES))).toBe(false)
    expect(await noNc.get('/tmp/big.bin')).toBeUndefined()
    // A missing file is reported by the SSH path, as before.
    await expect(vm.getFile('/tmp/no-such-file')).rejects.toMatchObject({ code: 'VMPOOL_EXEC_FAILED' })
  }, 120_000)
})
