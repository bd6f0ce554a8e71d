import { access, constants } from 'node:fs/promises'
import { delimiter, join } from 'node:path'
import type { ResolvedImage } from './qemu-image.js'

export type QemuAccel = 'kvm' | 'tcg'

/** `-name` of every QEMU this provider starts is `vm-pool-<instance name>`: how `ps` and the leak scan find them. */
export const QEMU_NAME_PREFIX = 'vm-pool-'

/**
 * Everything that defines the emulated machine. A VM restored from a saved state must be started
 * with exactly the same machine options (QEMU refuses or corrupts a migration otherwise), so they
 * live in one value and one function builds them into arguments.
 */
export interface QemuMachine {
  accel: QemuAccel
  cpus: number
  memoryMiB: number
  image: ResolvedImage
}

/** Per-instance plumbing: differs between a VM and a clone restored from its saved state. */
export interface QemuInstance {
  /** Shown in `ps` as `-name`. */
  name: string
  /** 127.0.0.1:sshPort is forwarded to the guest's port 22. */
  sshPort: number
  pidFile: string
  serialLog: string
  qmpSocket: string
  /** Start QEMU in the background: the parent returns once the machine is set up (or failed to be). */
  daemonize: boolean
  /** `-incoming` source, for a restore. */
  incoming?: string
}

/** The guest CPU/accelerator options: TCG emulates a modern CPU with one host thread per vCPU. */
export function getAccelArgs(accel: QemuAccel): string[] {
  return accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,thread=multi', '-cpu', 'max']
}

/** The machine's devices and boot source: identical for a fresh boot and a restore. */
export function buildMachineArgs(machine: QemuMachine): string[] {
  const { image } = machine
  const args = [
    ...getAccelArgs(machine.accel),
    '-smp', String(machine.cpus),
    '-m', String(machine.memoryMiB),
    // No default devices (VGA, floppy, CD...): less to emulate, a faster boot, and a stable device set.
    '-nodefaults',
    '-display', 'none',
    // A guest that panics (`panic=-1`) or reboots makes QEMU exit, so a broken boot fails fast.
    '-no-reboot',
    '-device', 'virtio-net-pci,netdev=net0',
    // A VM generation ID: a guest restored from a saved state sees a new one and reseeds its RNG
    // (Linux: "crng reseeded due to virtual machine fork"), so clones do not share random numbers.
    '-device', 'vmgenid,guid=auto',
  ]
  if (image.kernel) {
    args.push('-kernel', image.kernel, '-append', image.append)
    if (image.initrd) args.push('-initrd', image.initrd)
  }
  // snapshot=on: the guest writes to a temporary overlay, the image file stays pristine and shareable.
  if (image.disk) args.push('-drive', `file=${image.disk},format=${image.diskFormat},if=virtio,snapshot=on`)
  if (image.seed) args.push('-drive', `file=${image.seed},format=raw,if=virtio,readonly=on`)
  return args
}

export function buildQemuArgs(machine: QemuMachine, instance: QemuInstance): string[] {
  const args = [
    '-name', `${QEMU_NAME_PREFIX}${instance.name}`,
    ...buildMachineArgs(machine),
    '-netdev', `user,id=net0,hostfwd=tcp:127.0.0.1:${instance.sshPort}-:22`,
    '-serial', `file:${instance.serialLog}`,
    '-qmp', `unix:${instance.qmpSocket},server=on,wait=off`,
    '-pidfile', instance.pidFile,
  ]
  if (instance.incoming) args.push('-incoming', instance.incoming)
  if (instance.daemonize) args.push('-daemonize')
  return args
}

/** The `qemuBinary` option if given, else `qemu-system-x86_64` on PATH; undefined when not found. */
export async function findQemuBinary(qemuBinary: string | undefined, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const candidates = qemuBinary
    ? [qemuBinary]
    : (env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(delimiter).filter(Boolean).map((dir) => join(dir, 'qemu-system-x86_64'))
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK)
      return candidate
    } catch {
      // try the next one
    }
  }
  return undefined
}
