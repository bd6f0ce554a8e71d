import { afterAll } from 'vitest'
import { orbstackProvider } from '../../src/providers/orbstack-provider.js'
import { useFixtureCli } from '../helpers/fixture-cli.js'
import { describeProviderContract } from './provider-contract.js'

// The stand-in orbctl from fixtures/bin, first on PATH; "machines" are directories in a temp dir.
const fixture = useFixtureCli()
afterAll(() => fixture.dispose())

// orbctl cannot forward ports (OrbStack names machines <name>.orb.local instead): forwardPort must say so.
describeProviderContract('orbstack (fixture orbctl)', () => orbstackProvider({ image: 'ubuntu:24.04' }), { forwardPort: 'unsupported' })
describeProviderContract('orbstack (fixture orbctl, -u user)', () => orbstackProvider({ user: 'orbuser' }), { forwardPort: 'unsupported' })
