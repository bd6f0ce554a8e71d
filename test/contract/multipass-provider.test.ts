import { dirname } from 'node:path'
import { afterAll, beforeAll } from 'vitest'
import { multipassProvider } from '../../src/providers/multipass-provider.js'
import { FIXTURE_BIN_DIR, useFixtureCli } from '../helpers/fixture-cli.js'
import { getSshdSkipReason, startSshd, type StartedSshd } from '../helpers/sshd.js'
import { describeProviderContract } from './provider-contract.js'

// The stand-in multipass from fixtures/bin, first on PATH; instances are directories in a temp dir.
const fixture = useFixtureCli()
afterAll(() => fixture.dispose())

// multipass cannot forward ports (its instances have their own address instead): forwardPort must say so.
describeProviderContract('multipass (local, fixture CLI)', () => multipassProvider({ image: '24.04', cpus: 2, memoryMiB: 1536, diskGiB: 8, cloudInit: '#cloud-config\npackages: [jq]\n' }), { forwardPort: 'unsupported' })

// Remote: every multipass command goes over ssh2 to a real sshd on loopback, whose sessions
// have the stand-in multipass (and this Node) first on PATH.
const skipReason = getSshdSkipReason()
let sshd: StartedSshd | undefined
beforeAll(async () => {
  if (skipReason) return
  sshd = await startSshd({ setEnv: { PATH: `${FIXTURE_BIN_DIR}:${dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin`, VM_POOL_FIXTURE_STATE: fixture.dir } })
})
afterAll(async () => sshd?.stop())

describeProviderContract(
  'multipass (remote over sshd, fixture CLI)',
  () => multipassProvider({ host: sshd!.host, port: sshd!.port, user: sshd!.user, privateKey: sshd!.clientKey.privateKey, hostKey: sshd!.hostPublicKey, image: 'jammy' }),
  { skipReason, forwardPort: 'unsupported' },
)
