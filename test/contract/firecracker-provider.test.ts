import { randomBytes } from 'node:crypto'
import { afterAll, beforeAll } from 'vitest'
import { startFirecrackerServer, type StartedFirecrackerServer } from '../../fixtures/firecracker-server.js'
import { firecrackerProvider } from '../../src/providers/firecracker-provider.js'
import { describeProviderContract } from './provider-contract.js'

// A real HTTP server on 127.0.0.1:0 speaking the fcctl-web API; the token is generated per run.
const token = `test-${randomBytes(16).toString('hex')}`
let server: StartedFirecrackerServer
beforeAll(async () => {
  server = await startFirecrackerServer({ token, bootDelayMs: 300 })
})
afterAll(async () => server?.close())

// The API has no port forwarding: forwardPort must say so.
describeProviderContract('firecracker (fixture API server)', () => firecrackerProvider({ url: server.url, token, vmType: 'focal' }), { forwardPort: 'unsupported' })
