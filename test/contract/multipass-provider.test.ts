import { afterAll } from 'vitest'
import { multipassProvider } from '../../src/providers/multipass-provider.js'
import { useFixtureCli } from '../helpers/fixture-cli.js'
import { describeProviderContract } from './provider-contract.js'

// The stand-in multipass from fixtures/bin, first on PATH; instances are directories in a temp dir.
const fixture = useFixtureCli()
afterAll(() => fixture.dispose())

describeProviderContract('multipass (local, fixture CLI)', () => multipassProvider({ image: '24.04', cpus: 2, memoryMiB: 1536, diskGiB: 8, cloudInit: '#cloud-config\npackages: [jq]\n' }))
