/**
 * A VM's own disk: a qcow2 copy-on-write overlay in its VM dir whose backing file is read-only — the
 * image's disk for a cold boot, a snapshot's frozen disk for a restore (docs/qemu.md, "Snapshots").
 * Every VM writes only to its overlay, so VMs never see each other's writes and the backing files stay
 * shareable. Deleting the VM dir deletes the overlay.
 */
import { chmod } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { VmPoolError } from '../../errors.js'
import { runProcess } from '../../transport/process-runner.js'
import { scaleTimeout } from '../../util/timeouts.js'
import { findOnPath } from './images/host-tools.js'

/** `qemu-img create` of an overlay writes a few hundred bytes; slow only on a very busy host. */
export const DISK_OVERLAY_TIMEOUT_MS = 30_000

export interface DiskOverlayRequest {
  /** Where the overlay goes (`<vm dir>/disk.qcow2`). */
  file: string
  /** The read-only file below it (absolute). */
  backing: string
  backingFormat: 'qcow2' | 'raw'
  /** Virtual size; undefined: the backing file's size. */
  sizeBytes?: number
  /** For messages. */
  vm: string
  /** The QEMU binary: its own dir is searched for qemu-img before PATH. */
  qemuBinary: string
}

/** Make the overlay (replacing any file of that name): qemu-img from QEMU's dir or PATH (package qemu-utils). */
export async function createDiskOverlay(request: DiskOverlayRequest): Promise<void> {
  const qemuImg = await findQemuImg(request.qemuBinary)
  const args = ['create', '-q', '-f', 'qcow2', '-F', request.backingFormat, '-b', request.backing, request.file]
  if (request.sizeBytes !== undefined) args.push(String(request.sizeBytes))
  const result = await runProcess(qemuImg, args, { timeoutMs: scaleTimeout(DISK_OVERLAY_TIMEOUT_MS), env: process.env, provider: 'qemu', vm: request.vm })
  if (result.exitCode !== 0) {
    throw new VmPoolError({
      code: 'VMPOOL_CREATE_FAILED',
      provider: 'qemu',
      operation: 'create',
      vm: request.vm,
      message: `could not create the VM's disk overlay ${request.file} on ${request.backing}${result.timedOut ? ' (DISK_OVERLAY_TIMEOUT_MS ran out)' : ''}: ${result.stderr.trim() || `qemu-img exited with ${result.exitCode}`}`,
    })
  }
}

/** A template's overlay becomes a snapshot's frozen disk: read-only from now on, for everyone. */
export async function freezeDisk(file: string): Promise<void> {
  await chmod(file, 0o444)
}

async function findQemuImg(qemuBinary: string): Promise<string> {
  const beside = await findOnPath('qemu-img', { PATH: dirname(qemuBinary) })
  if (beside && beside === join(dirname(qemuBinary), 'qemu-img')) return beside
  const onPath = await findOnPath('qemu-img')
  if (onPath) return onPath
  throw new VmPoolError({ code: 'VMPOOL_PROVIDER_UNAVAILABLE', provider: 'qemu', operation: 'create', message: 'qemu-img is not on PATH: VMs of images with a disk need it for their own disk overlay', hint: 'sudo apt-get install qemu-utils' })
}
