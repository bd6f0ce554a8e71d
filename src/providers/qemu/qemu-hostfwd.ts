import { VmPoolError } from '../../errors.js'
import { createDebug } from '../../util/debug.js'
import { FORWARD_HOST, type PortForward } from '../../transport/port-forward.js'
import { findFreeLoopbackPort } from './free-port.js'
import { runQmpCommand } from './qmp-client.js'

const debug = createDebug('vm-pool:forward')
/** The user-mode netdev every VM has (qemu-command.ts: `-netdev user,id=net0`). */
const NETDEV = 'net0'
/** Free ports tried when QEMU cannot bind the one picked (another process took it meanwhile). */
const PORT_ATTEMPTS = 3

/**
 * A forward made by QEMU's user-mode network itself (`hostfwd_add` through the monitor): QEMU listens
 * on 127.0.0.1 and connects to the guest's network address, so a server bound only to the guest's
 * loopback is NOT reached (the SSH forward reaches it). The rule lives in QEMU: closing removes it, and
 * it goes with the VM; a process that dies without closing leaves it until the VM is deleted or reset.
 */
export async function addHostForward(qmpSocket: string, guestPort: number, hostPort: number | undefined, vm: string): Promise<PortForward> {
  for (let attempt = 1; ; attempt++) {
    const port = hostPort ?? (await findFreeLoopbackPort())
    const rule = `tcp:${FORWARD_HOST}:${port}`
    const answer = await runQmpCommand(qmpSocket, 'human-monitor-command', { 'command-line': `hostfwd_add ${NETDEV} ${rule}-:${guestPort}` })
    if (typeof answer === 'string' && answer.trim() !== '') {
      if (hostPort === undefined && attempt < PORT_ATTEMPTS) continue
      throw new VmPoolError({ code: 'VMPOOL_FORWARD_FAILED', provider: 'qemu', vm, operation: 'forwardPort', message: `QEMU could not forward ${FORWARD_HOST}:${port} to guest port ${guestPort}: ${answer.trim()}`, hint: hostPort === undefined ? undefined : 'that port is taken: pick another hostPort, or leave it out' })
    }
    debug('%s: hostfwd %s -> guest port %d', vm, rule, guestPort)
    let closed: Promise<void> | undefined
    const close = () =>
      (closed ??= runQmpCommand(qmpSocket, 'human-monitor-command', { 'command-line': `hostfwd_remove ${NETDEV} ${rule}` }).then(
        () => void debug('%s: removed hostfwd %s', vm, rule),
        // QEMU is gone (the VM was deleted): so is the rule.
        (error: unknown) => void debug('%s: hostfwd_remove %s: %s', vm, rule, (error as Error).message),
      ))
    return { host: FORWARD_HOST, port, guestPort, close, [Symbol.asyncDispose]: close }
  }
}
