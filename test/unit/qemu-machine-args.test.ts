/**
 * What the qemu provider tells QEMU and the pool about a machine, without starting one: a disk image's
 * VM runs on its own overlay (no `snapshot=on`), an initramfs image's arguments are what they were.
 */
import { describe, expect, test } from 'vitest'
import { buildMachineArgs, buildQemuArgs, type QemuMachine } from '../../src/providers/qemu/qemu-command.js'
import type { ResolvedImage } from '../../src/providers/qemu/qemu-image.js'

const baseImage: ResolvedImage = { recipeVersion: 1, name: 'x', dir: '/images/x', append: 'console=ttyS0', diskFormat: 'qcow2', hostKey: 'SHA256:x', clientKey: '/images/x/client_key', username: 'root', minMemoryMiB: 128, build: {} }
const machine = (image: Partial<ResolvedImage>): QemuMachine => ({ accel: 'tcg', cpus: 1, memoryMiB: 256, image: { ...baseImage, ...image } })
const drives = (args: string[]) => args.flatMap((arg, i) => (args[i - 1] === '-drive' ? [arg] : []))

describe('qemu machine arguments', () => {
  test("a disk image's VM writes to its own overlay; without one QEMU's throwaway snapshot=on", () => {
    const disk = machine({ kernel: '/images/x/vmlinuz', disk: '/images/x/disk.qcow2', seed: '/images/x/seed.iso' })
    expect(drives(buildMachineArgs(disk, '/state/qemu/vm-a/disk.qcow2'))).toEqual(['file=/state/qemu/vm-a/disk.qcow2,format=qcow2,if=virtio', 'file=/images/x/seed.iso,format=raw,if=virtio,readonly=on'])
    expect(drives(buildMachineArgs(disk))).toEqual(['file=/images/x/disk.qcow2,format=qcow2,if=virtio,snapshot=on', 'file=/images/x/seed.iso,format=raw,if=virtio,readonly=on'])
    const instance = { name: 'vm-a', sshPort: 2222, pidFile: '/p', serialLog: '/s', qmpSocket: '/q', daemonize: true }
    expect(drives(buildQemuArgs(disk, { ...instance, disk: '/state/qemu/vm-a/disk.qcow2' }))).toContain('file=/state/qemu/vm-a/disk.qcow2,format=qcow2,if=virtio')
  })

  test('an initramfs image has no drive, with or without an overlay path', () => {
    const minimal = machine({ kernel: '/images/x/vmlinuz', initrd: '/images/x/initrd.img' })
    expect(buildMachineArgs(minimal, '/ignored')).toEqual(buildMachineArgs(minimal))
    expect(drives(buildMachineArgs(minimal))).toEqual([])
  })

})
