import { createHash } from 'node:crypto'
import { basename } from 'node:path'
import type { QemuMachine } from './qemu-command.js'

/**
 * A slot's directory name, here and on a VM host: `<image>-<accel>-<cpus>c-<memory>m[-<disk>g]-<hash of the QEMU
 * binary and image dir>`. What the snapshot was made from is its key, in the manifest: a changed key rebuilds
 * the snapshot in the same slot.
 */
export function snapshotSlotName(machine: QemuMachine, qemuBinary: string): string {
  const where = createHash('sha256').update(`${qemuBinary}\0${machine.image.dir}`).digest('hex').slice(0, 8)
  const imageName = basename(machine.image.dir).toLowerCase().replace(/[^a-z0-9-]/g, '-').slice(0, 24) || 'image'
  const diskSize = machine.diskBytes === undefined ? '' : `-${Math.round(machine.diskBytes / 1024 ** 3)}g`
  return `${imageName}-${machine.accel}-${machine.cpus}c-${machine.memoryMiB}m${diskSize}-${where}`
}
