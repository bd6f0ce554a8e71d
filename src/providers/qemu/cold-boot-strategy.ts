import { waitForBoot } from './boot-wait.js'
import type { QemuMachine } from './qemu-command.js'
import { launchQemu, stopQemuOf } from './qemu-process.js'
import { makeGuestTransport } from './qemu-vm.js'
import { identityCommand, type StartedQemu, type StartRequest, type StartStrategy, type StrategyContext } from './start-strategy.js'

/** From QEMU start to a command running in the guest (TCG boot is ~4-9 s alone, slower with several VMs per core). */
export const BOOT_TIMEOUT_MS = 120_000

/**
 * A cold boot: QEMU boots the image's kernel (or disk), the guest prints its boot marker, SSH answers
 * the ready command. Used for every VM when snapshots are off or impossible, and for the template a
 * snapshot is saved from (snapshot-restore-strategy.ts).
 */
export class ColdBootStrategy implements StartStrategy {
  readonly kind = 'cold-boot'
  readonly #context: StrategyContext
  readonly #machine: QemuMachine
  readonly #readyCommand: (vm: string) => string

  /** `readyCommand`: the first command (default: name the guest after the VM). A template runs `true`. */
  constructor(context: StrategyContext, machine: QemuMachine, options: { readyCommand?: (vm: string) => string } = {}) {
    this.#context = context
    this.#machine = machine
    this.#readyCommand = options.readyCommand ?? ((vm) => identityCommand(vm, false))
  }

  async start(request: StartRequest): Promise<StartedQemu> {
    const { dir } = request
    const startedAt = performance.now()
    const identity = await launchQemu({ binary: this.#context.binary, machine: this.#machine, dir, vm: request.vm, preferredPort: request.preferredPort, pathHint: this.#context.pathHint })
    const image = this.#machine.image
    const transport = makeGuestTransport({ vm: request.vm, port: identity.port, username: image.username, hostKey: image.hostKey, privateKey: request.privateKey, maxChannels: image.sshMaxSessions, booting: true })
    try {
      await waitForBoot({
        vm: request.vm,
        transport,
        identity,
        serialLog: dir.path('serial'),
        timeoutName: 'BOOT_TIMEOUT_MS',
        timeoutMs: this.#context.bootTimeoutMs,
        timeoutFromOption: this.#context.bootTimeoutFromOption,
        startedAt,
        bootMarker: image.bootMarker,
        readyCommand: () => this.#readyCommand(request.vm),
        context: request.context,
      })
    } catch (error) {
      await transport.close()
      await stopQemuOf(dir, false)
      throw error
    }
    return { identity, transport, bootMs: Math.round(performance.now() - startedAt) }
  }
}
