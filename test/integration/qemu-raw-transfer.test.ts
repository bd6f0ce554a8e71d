/**
 * Big files to and from a real QEMU guest on plain TCP (src/providers/qemu/guest-raw-transfer.ts): the
 * guest's nc connects to the user-mode gateway, the bytes skip SSH's encryption. Shown here: the raw path
 * is the one taken (a counting nc function in the guest), the bytes arrive intact,
 * a local process that connects to the listener first with a wrong token gets nothing, and a guest
 * without nc falls back to SSH with the same result.
 */
import { randomBytes } from 'node:crypto'
import { connect } from 'node:net'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { GuestRawTransfer, RAW_PUT_MIN_BYTES } from '../../src/providers/qemu/guest-raw-transfer.js'
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
