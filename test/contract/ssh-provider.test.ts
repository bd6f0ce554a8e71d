import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll } from 'vitest'
import { sshProvider } from '../../src/providers/ssh-provider.js'
import { getSshdSkipReason, startSshd, type StartedSshd } from '../helpers/sshd.js'
import { INSIDE_DIR } from './inside-vm-contract.js'
import { describeProviderContract } from './provider-contract.js'

// A real OpenSSH sshd on loopback listening on two ports: two "machines" for the contract's two VMs.
const skipReason = getSshdSkipReason()
const stateDir = mkdtempSync(join(tmpdir(), 'vm-pool-ssh-contract-'))
let sshd: StartedSshd | undefined
beforeAll(async () => {
  if (!skipReason) sshd = await startSshd({ portCount: 2 })
})
afterAll(async () => {
  await sshd?.stop()
  rmSync(stateDir, { recursive: true, force: true })
})

describeProviderContract(
  'ssh (real sshd on loopback)',
  () =>
    sshProvider({
      hosts: sshd!.ports.map((port) => ({ host: sshd!.host, port, user: sshd!.user, privateKey: sshd!.clientKey.privateKey, hostKey: sshd!.hostPublicKey })),
      // The hosts are this machine: the reset removes what the contract suite leaves in the home directory.
      reset: `rm -rf contract-work ${INSIDE_DIR} abort-marker abort-gate`,
      stateDir,
    }),
  { skipReason },
)
