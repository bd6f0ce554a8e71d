/**
 * Snapshots on a VM host (docs/providers.md, "QEMU on a VM host"): as for local VMs (docs/qemu.md,
 * "Snapshots"), a template guest is booted once per machine shape and saved, and each VM starts by
 * restoring it; here the slot, its lock and the saved state live on the host and QEMU's monitor is
 * reached through the SSH connection (streamlocal forwarding). Initramfs images only: a disk image's VMs
 * cold-boot there. The judgement of a failed restore and the QMP save/resume steps are the local ones.
 */
import { createHash, randomBytes } from 'node:crypto'
import { posix } from 'node:path'
import { z } from 'zod'
import { VmPoolError, VmPoolTimeoutError } from '../../errors.js'
import { quoteShellArg } from '../../transport/shell.js'
import type { SshTransport } from '../../transport/ssh-transport.js'
import { createDebug } from '../../util/debug.js'
import { scaleTimeout, sleep } from '../../util/timeouts.js'
import { waitForBoot } from './boot-wait.js'
import { buildMachineArgs, type QemuMachine } from './qemu-command.js'
import type { QemuConfig } from './qemu-provider-options.js'
import { resumeRestoredGuest, saveGuestState, SNAPSHOT_LOCK_WAIT_MS } from './qemu-snapshot.js'
import { snapshotSlotName } from './snapshot-slot-name.js'
import { VM_DIR_FILES } from './qemu-vm-dir.js'
import { judgeRestoreFailure, restoreTimeout } from './snapshot-restore-strategy.js'
import { identityCommand } from './start-strategy.js'
import type { SshVmHost } from './ssh-vm-host.js'
import type { HostQemu, VmHostLauncher } from './vm-host-launcher.js'
import type { VmHostMachineResolver } from './vm-host-machine.js'
import { COMMIT_SNAPSHOT_SCRIPT, INVALIDATE_SNAPSHOT_SCRIPT, LOCK_SLOT_SCRIPT, READ_SNAPSHOT_SCRIPT } from './vm-host-scripts.js'

/** Bumped when what a slot holds changes: older slots are then not used. 2: the manifest holds the key (the slot's name no longer does). */
const FORMAT = 2
/** After the template's SSH session closed, time for the guest's dropbear to end it before the save. */
const SNAPSHOT_SETTLE_MS = 300
/** Pause between tries of a slot lock another runner holds. */
const LOCK_POLL_MS = 250

const manifestSchema = z.object({ format: z.literal(FORMAT), id: z.string().regex(/^[0-9a-f]{12}$/), key: z.string(), createdAt: z.string() })

/** A machine shape's place on the host, and what its snapshot must have been made from. */
interface Slot {
  dir: string
  key: string
}

const debug = createDebug('vm-pool:qemu')

export interface RestoredHostQemu extends HostQemu {
  transport: SshTransport
  bootMs: number
  restoredFrom: string
}

export class VmHostSnapshots {
  readonly #config: QemuConfig
  readonly #host: SshVmHost
  readonly #launcher: VmHostLauncher
  readonly #machines: VmHostMachineResolver
  /** `<hostStateDir>/qemu-snapshots` on the host. */
  readonly #dir: () => Promise<string>
  #version: Promise<string> | undefined

  constructor(parts: { config: QemuConfig; host: SshVmHost; launcher: VmHostLauncher; machines: VmHostMachineResolver; dir: () => Promise<string> }) {
    this.#config = parts.config
    this.#host = parts.host
    this.#launcher = parts.launcher
    this.#machines = parts.machines
    this.#dir = parts.dir
  }

  /** `snapshot: 'auto'` and an initramfs image (a disk image's writes are not in a saved guest state here). */
  canSnapshot(machine: QemuMachine): boolean {
    return this.#config.options.snapshot === 'auto' && machine.image.kernel !== undefined && machine.image.disk === undefined
  }

  /** Start a VM in `dir` by restoring its machine's snapshot (built first when missing); a restore proven broken rebuilds it once. */
  async restore(request: { vm: string; dir: string; machine: QemuMachine; privateKey: Buffer; preferredPort?: number }): Promise<RestoredHostQemu> {
    const slot = await this.#slot(request.machine)
    for (let attempt = 1; ; attempt++) {
      const id = await this.#ensure(slot, request.machine, request.vm)
      let qemuExited = false
      try {
        return await this.#restoreOnce(slot.dir, id, request, () => (qemuExited = true))
      } catch (error) {
        const broken = judgeRestoreFailure(error, { qemuExited })
        if (broken === undefined) throw error
        await this.#host.run(INVALIDATE_SNAPSHOT_SCRIPT, [slot.dir, id], { timeoutMs: this.#launcher.scriptTimeoutMs() })
        if (attempt >= 2) {
          throw new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', provider: 'qemu', operation: 'create', vm: request.vm, message: `restoring a fresh snapshot on VM host ${this.#host.id} failed too (${broken}); it was deleted`, hint: 'start without snapshots to see whether the image boots: qemuProvider({ host, ..., snapshot: false })', cause: error })
        }
        debug('%s: restore from snapshot %s on %s failed (%s): rebuilding it', request.vm, id, this.#host.id, broken)
      }
    }
  }

  async #restoreOnce(slot: string, id: string, request: { vm: string; dir: string; machine: QemuMachine; privateKey: Buffer; preferredPort?: number }, onQemuExited: () => void): Promise<RestoredHostQemu> {
    const { vm, dir, machine } = request
    const timeout = restoreTimeout({ bootTimeoutMs: this.#config.bootTimeoutMs(), bootTimeoutFromOption: this.#config.bootTimeoutFromOption() })
    const startedAt = performance.now()
    let qemu: HostQemu | undefined
    let transport: SshTransport | undefined
    try {
      qemu = await this.#launcher.launch({ vm, instance: vm, dir, machine, incoming: `exec:cat ${quoteShellArg(posix.join(slot, `state-${id}`))}`, preferredPort: request.preferredPort })
      const probe = this.#launcher.bootProbe(qemu, dir)
      const identity = { pid: qemu.pid, host: this.#host.id, startTime: null, port: qemu.port, accel: machine.accel }
      const qmpSocket = posix.join(dir, VM_DIR_FILES.qmp)
      await resumeRestoredGuest({ qmpSocket: () => this.#host.openUnix(qmpSocket), identity, isAlive: probe.isAlive, deadline: startedAt + timeout.timeoutMs, timeoutName: timeout.timeoutName, timeoutMs: timeout.timeoutMs, vm })
      transport = this.#launcher.guestTransport(vm, qemu.port, machine.image, request.privateKey, true)
      await waitForBoot({ vm, transport, identity, serialLog: posix.join(dir, VM_DIR_FILES.serial), ...timeout, startedAt, bootMarker: undefined, readyCommand: () => identityCommand(vm, true), context: ` (restored from snapshot ${id} on VM host ${this.#host.id})`, probe })
      return { ...qemu, transport, bootMs: Math.round(performance.now() - startedAt), restoredFrom: id }
    } catch (error) {
      // Judged before we stop it: did QEMU end on its own?
      if (qemu !== undefined && !(await this.#launcher.bootProbe(qemu, dir).isAlive().catch(() => true))) onQemuExited()
      await transport?.close()
      await this.#launcher.stop(dir, 0, 'instance').catch((stopError: unknown) => debug('%s: stopping a failed restore: %s', vm, (stopError as Error).message))
      throw error
    }
  }

  /**
   * The slot of a machine shape, as for local snapshots (qemu-snapshot.ts): one per image dir, QEMU binary,
   * accelerator, vCPUs and memory. Its key (the QEMU version, the machine's arguments and the image's manifest)
   * is in its manifest, not its name, so a rebuilt image or an upgraded QEMU rebuilds the snapshot in place
   * instead of leaving the old one on the host for ever.
   */
  async #slot(machine: QemuMachine): Promise<Slot> {
    this.#version ??= this.#host.runOk('reading the QEMU version', '"$1" --version | head -n 1', [this.#machines.binary], { timeoutMs: this.#launcher.scriptTimeoutMs() })
    this.#version.catch(() => (this.#version = undefined))
    const key = createHash('sha256')
      .update(JSON.stringify({ format: FORMAT, version: (await this.#version).trim(), args: buildMachineArgs(machine), image: machine.image }))
      .digest('hex')
      .slice(0, 16)
    return { dir: posix.join(await this.#dir(), snapshotSlotName(machine, this.#machines.binary)), key }
  }

  /** The slot's snapshot id, when it has one made from this key (one of another key is stale: rebuilt under the lock). */
  async #read(slot: Slot): Promise<string | undefined> {
    const result = await this.#host.run(READ_SNAPSHOT_SCRIPT, [slot.dir], { timeoutMs: this.#launcher.scriptTimeoutMs() })
    if (result.exitCode !== 0) return undefined
    try {
      const manifest = manifestSchema.parse(JSON.parse(result.stdout))
      if (manifest.key === slot.key) return manifest.id
      debug('snapshot %s in %s on %s was made for another image or QEMU: it is rebuilt', manifest.id, slot.dir, this.#host.id)
      return undefined
    } catch {
      return undefined
    }
  }

  /** The slot's snapshot id, built under the slot's lock on the host when there is none. */
  async #ensure(slot: Slot, machine: QemuMachine, vm: string): Promise<string> {
    const ready = await this.#read(slot)
    if (ready) return ready
    const waitMs = scaleTimeout(SNAPSHOT_LOCK_WAIT_MS)
    const deadline = performance.now() + waitMs
    for (;;) {
      const locked = await this.#host.run(LOCK_SLOT_SCRIPT, [slot.dir, String(Math.ceil(waitMs / 1000))], { timeoutMs: this.#launcher.scriptTimeoutMs() })
      if (locked.exitCode === 0) break
      if (locked.exitCode !== 75) throw new VmPoolError({ code: 'VMPOOL_SNAPSHOT_INVALID', provider: 'qemu', operation: 'create', vm, message: `could not lock the snapshot slot ${slot.dir} on VM host ${this.#host.id}: ${locked.stderr.trim() || `exit code ${locked.exitCode}`}` })
      const built = await this.#read(slot)
      if (built) return built
      if (performance.now() > deadline) throw new VmPoolTimeoutError({ provider: 'qemu', operation: 'create', vm, timeoutName: 'SNAPSHOT_LOCK_WAIT_MS', timeoutMs: waitMs, message: `another runner held the snapshot slot ${slot.dir} on VM host ${this.#host.id} for ${waitMs} ms (SNAPSHOT_LOCK_WAIT_MS)` })
      await sleep(LOCK_POLL_MS)
    }
    try {
      return (await this.#read(slot)) ?? (await this.#build(slot, machine, vm))
    } finally {
      await this.#host.run('rm -rf -- "$1.lock"', [slot.dir], { timeoutMs: this.#launcher.scriptTimeoutMs() }).catch(() => {})
    }
  }

  /** Boot a template in `<slot>/work`, save it to `<slot>/state-<id>`, stop it. Runs under the slot's lock. */
  async #build(slot: Slot, machine: QemuMachine, vm: string): Promise<string> {
    const { dir: slotDir } = slot
    const work = posix.join(slotDir, 'work')
    const { cpus, memoryMiB, accel } = machine
    // Once per machine shape (and image), and slow (a boot plus a ~90 MB save): say so, or the first create looks hung.
    process.stderr.write(`vm-pool: [qemu] building a snapshot on VM host ${this.#host.id} for a new machine shape or image (${posix.basename(machine.image.dir)}, ${cpus} cpu, ${memoryMiB} MiB, ${accel}): once, in ${slotDir}\n`)
    // A builder that died mid-build may have left its template running: it is ours to end now.
    await this.#launcher.stop(work, 0, 'dir')
    const privateKey = Buffer.from(await this.#host.runOk('reading the image key', 'mkdir -m 700 -- "$1" && cat -- "$2"', [work, machine.image.clientKey], { timeoutMs: this.#launcher.scriptTimeoutMs(), vm }))
    const instance = `snapshot-${posix.basename(slotDir)}`
    const template = await this.#launcher.coldBoot({ vm, instance, dir: work, machine, privateKey, readyCommand: 'true', context: ` (the snapshot template in ${slotDir} on VM host ${this.#host.id})` })
    try {
      // Our SSH session must be over before the save, or every clone starts with a dead session in it.
      await template.transport.close()
      await sleep(SNAPSHOT_SETTLE_MS)
      const qmpSocket = posix.join(work, VM_DIR_FILES.qmp)
      await saveGuestState(() => this.#host.openUnix(qmpSocket), posix.join(slotDir, 'state.partial'))
    } finally {
      await template.transport.close()
      await this.#launcher.stop(work, 0, 'dir')
    }
    const id = randomBytes(6).toString('hex')
    await this.#host.runOk('saving the snapshot', COMMIT_SNAPSHOT_SCRIPT, [slotDir, id, JSON.stringify({ format: FORMAT, id, key: slot.key, createdAt: new Date().toISOString() })], { timeoutMs: this.#launcher.scriptTimeoutMs(), vm })
    debug('%s: snapshot %s saved in %s on %s (template boot %d ms)', vm, id, slotDir, this.#host.id, template.bootMs)
    return id
  }
}
