import { afterAll } from 'vitest'
import { orbstackProvider } from '../../src/providers/orbstack-provider.js'
import { useFixtureCli } from '../helpers/fixture-cli.js'
import { describeProviderContract } from './provider-contract.js'

// The stand-in orbctl from fixtures/bin, first on PATH; "machines" are directories in a temp dir.
const fixture = useFixtureCli()
afterAll(() => fixture.dispose())

describeProviderContract('orbstack (fixture orbctl)', () => orbstackProvider({ image: 'ubuntu:24.04' }))
describeProviderContract('orbstack (fixture orbctl, -u user)', () => orbstackProvider({ user: 'orbuser' }))
