/**
 * Killing a timed-out exec on the minimal image's dropbear (src/transport/ssh-exec-protocol.ts): the
 * shell is NOT made a group leader there (no `setsid` + second `sh`, two program starts per exec on an
 * emulated CPU); it stays in the group its connection's dropbear leads, and the kill ends the members
 * that started with or after it — the command, a child, an orphan — and spares a background process an
 * earlier exec on the same connection left behind; and the connection carries nothing else until the kill is
 * done (src/transport/ssh-transport.ts `releaseAfterKill`).
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import type { QemuVm } from '../../src/providers/qemu/qemu-vm.js'
import { getQemuSkipReason, QEMU_TEST_CREATE_TIMEOUT_MS, useQemuTestProvider, type QemuTestProvider } from '../helpers/qemu.js'

const skipReason = getQemuSkipReason()
/** A `sleep` found by its argument (odd durations no other test uses) in `ps`, which lists every process. */
const running = async (vm: QemuVm, seconds: number) => (await vm.exec(`ps -o args | grep -q '^sleep ${seconds}$' && echo yes || echo no`)).stdout.trim()

describe.skipIf(Boolean(skipReason))('a timed-out exec on dropbear', () => {
  let qemu: QemuTestProvider
  let vm: QemuVm

  beforeAll(async () => {
    qemu = useQemuTestProvider()
    vm = await qemu.provider.connect(await qemu.provider.create({ name: 'exec-kill-a' }))
  }, QEMU_TEST_CREATE_TIMEOUT_MS)
  afterAll(async () => {
    await vm?.close()
    await qemu?.cleanup()
  }, 60_000)

  test('runs in its connection\'s group (no setsid); the kill ends it, its child and its orphan, not what an earlier exec left', async () => {
    // One exec at a time: every exec here takes the same (first) connection of the pool.
    const stat = (await vm.exec('read -r l </proc/$$/stat; set -- ${l##*) }; echo "$$ $2 $3"', { timeoutMs: 60_000 })).stdout.trim().split(' ')
    expect(stat[2]).not.toBe(stat[0]) // not a group leader
    expect(stat[2]).toBe(stat[1]) // the group is its parent's: the connection's dropbear
    await vm.exec('sleep 3601 >/dev/null 2>&1 </dev/null &')
    expect(await running(vm, 3601)).toBe('yes')
    const result = await vm.exec('sleep 3602 >/dev/null 2>&1 & (sleep 3603 >/dev/null 2>&1 &); sleep 3604', { timeoutMs: 3_000 })
    expect(result).toMatchObject({ timedOut: true, exitCode: 124 })
    await new Promise((resolve) => setTimeout(resolve, 500))
    expect(await running(vm, 3602)).toBe('no')
    expect(await running(vm, 3603)).toBe('no')
    expect(await running(vm, 3604)).toBe('no')
    expect(await running(vm, 3601)).toBe('yes')
    await vm.exec("kill $(ps -o pid,args | awk '$2 == \"sleep\" && $3 == \"3601\" { print $1 }')")
    expect(await running(vm, 3601)).toBe('no')
    expect((await vm.exec('echo still-here', { timeoutMs: 30_000 })).stdout).toBe('still-here\n')
  }, 120_000)

  test('a command that ends on its own while its kill is on the way: the next command on that connection is not killed', async () => {
    // The timeout fires a moment before the command ends; the kill (a second connection, then a scan of
    // /proc) lands after it ended. The next exec must not be on that connection before the kill is done:
    // it would be a member of the group the kill empties.
    for (let round = 0; round < 3; round++) {
      const first = await vm.exec('sleep 1.3', { timeoutMs: 1_000 })
      expect(first.timedOut).toBe(true)
      const next = await vm.exec('sleep 2; echo survived', { timeoutMs: 60_000 })
      expect(next).toMatchObject({ exitCode: 0, stdout: 'survived\n' })
    }
  }, 180_000)
})
