import { existsSync } from 'node:fs'
import { posix } from 'node:path'
import { quoteShellArg, toShellLine } from '../../transport/shell.js'
import type { KeptVmHelp, LocalCommand, VmRecord } from '../vm-provider.js'
import { QEMU_NAME_PREFIX } from './qemu-command.js'
import { QemuVmDir, VM_DIR_FILES, parseQemuRecordData } from './qemu-vm-dir.js'

/** An OpenSSH public key line (`ssh-ed25519 AAAA...`), which a known_hosts file can pin; a `SHA256:` fingerprint cannot be. */
export function isPublicKeyLine(hostKey: string): boolean {
  return /^(ssh-|ecdsa-|sk-)\S+ \S+/.test(hostKey.trim())
}

/** The alias a VM's host key is pinned under in its known_hosts file: stable when a reset moves the port. */
export function getHostKeyAlias(name: string): string {
  return `${QEMU_NAME_PREFIX}${name}`
}

/**
 * How a person reaches a kept QEMU VM and deletes it alone. `reach`: an OpenSSH command with the VM's
 * key file (by path, never its contents), its port and user on 127.0.0.1, checking the pinned host key
 * (the VM dir's known_hosts) when there is one, else with host key checking off and quiet (the port is
 * loopback and changes per VM). `remove`: stop that VM's QEMU by the pid QEMU wrote, only if that pid's
 * command line still names this VM's pid file, then remove its dir.
 */
export function describeQemuVm(record: VmRecord): KeptVmHelp {
  if (record.data.vmHost !== undefined) return describeVmHostVm(record)
  const { dir, sshArgv } = parseQemuRecord(record)
  const reach = toShellLine(sshArgv)
  const pidFile = quoteShellArg(dir.path('pid'))
  const remove = `pid=$(cat ${pidFile} 2>/dev/null) && grep -qF -- ${pidFile} "/proc/$pid/cmdline" 2>/dev/null && kill "$pid"; rm -rf -- ${quoteShellArg(dir.dir)}`
  return { reach, remove }
}

/**
 * `vm-pool ssh` for a QEMU VM: the system `ssh` with the VM's key path, port and user, as `describe`'s
 * line; `-t` for an interactive shell; a command goes to the guest as one quoted shell line.
 */
export function getQemuShellCommand(record: VmRecord, command?: string[]): LocalCommand | undefined {
  // On a VM host the guest's key is there, not here: `vm-pool ssh` runs commands through exec instead.
  if (record.data.vmHost !== undefined) return undefined
  const { sshArgv } = parseQemuRecord(record)
  const target = sshArgv.pop()!
  if (!command || command.length === 0) return { argv: [...sshArgv, '-t', target] }
  // `--` ends ssh's options: OpenSSH parses options after the destination too.
  return { argv: [...sshArgv, '--', target, toShellLine(command)] }
}

/** Where a VM-host record says the VM lives: what another runner needs to reach it through the same VM host (no secret). */
export interface VmHostRef {
  host: string
  port: number
  user: string
  hostKey: string
}

/**
 * How a person reaches a kept VM on a VM host: copy the guest's key from its dir there (umask 077), then
 * `ssh -J` through the VM host to the guest's port on the host's loopback; `remove` stops its QEMU by
 * the pid QEMU wrote (only if that pid's command line names the VM's pid file) and removes its dir.
 * The VM host is reached with the person's own key for it; no key is ever printed.
 */
function describeVmHostVm(record: VmRecord): KeptVmHelp {
  const { data } = parseQemuRecord(record)
  const vmHost = data.vmHost as VmHostRef
  const hostSsh = ['ssh', '-p', String(vmHost.port), `${vmHost.user}@${vmHost.host}`]
  const keyFile = `vm-key-${record.name}`
  const copyKey = `(umask 077; ${toShellLine([...hostSsh, toShellLine(['cat', '--', data.keyPath])])} > ${quoteShellArg(keyFile)})`
  const jump = toShellLine(['ssh', '-i', keyFile, '-J', `${vmHost.user}@${vmHost.host}:${vmHost.port}`, '-p', String(data.port), '-o', 'IdentitiesOnly=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', `${data.username}@127.0.0.1`])
  const pidFile = quoteShellArg(posix.join(data.vmDir, VM_DIR_FILES.pid))
  const removeOnHost = `pid=$(cat ${pidFile} 2>/dev/null) && grep -qF -- ${pidFile} "/proc/$pid/cmdline" 2>/dev/null && kill "$pid"; rm -rf -- ${quoteShellArg(data.vmDir)}`
  return { reach: `${copyKey} && ${jump}`, remove: toShellLine([...hostSsh, removeOnHost]) }
}

function parseQemuRecord(record: VmRecord) {
  const data = parseQemuRecordData(record)
  const dir = new QemuVmDir(data.vmDir, record.name)
  const knownHosts = dir.path('knownHosts')
  const hostKeyOptions = existsSync(knownHosts)
    ? ['-o', `HostKeyAlias=${getHostKeyAlias(record.name)}`, '-o', `UserKnownHostsFile=${knownHosts}`, '-o', 'StrictHostKeyChecking=yes']
    : ['-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR']
  const sshArgv = ['ssh', '-i', data.keyPath, '-p', String(data.port), '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', ...hostKeyOptions, `${data.username}@${data.host}`]
  return { data, dir, sshArgv }
}
