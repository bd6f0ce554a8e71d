/**
 * Fencing and owners on other hosts, as pure functions: tokens issued on claims (lease-table.ts), lost holds
 * found by token (findLostHolds), the heartbeat judge (heartbeat-liveness.ts), and the redaction of
 * connection strings (util/redact.ts). Table in, table out; the multi-process proof is in
 * test/integration/pool-postgres-hosts.test.ts.
 */
import { describe, expect, test } from 'vitest'
import { heartbeatLiveness } from '../../src/pool/heartbeat-liveness.js'
import type { LeaseEntry, LeaseTable } from '../../src/pool/lease-store.js'
import { adoptIdle, findLostHolds, markIdle, markLeased, reserveName, restoreHeld, type LeaseActor } from '../../src/pool/lease-table.js'
import { getConnectionPassword, redactConnectionString, redactSecrets } from '../../src/util/redact.js'

const me: LeaseActor = { owner: { pid: 10, host: 'host-a', startTime: 1 }, runId: 'r1' }
const other: LeaseActor = { owner: { pid: 20, host: 'host-b', startTime: 2 }, runId: 'r2' }
const want = { provider: 'fake', specHash: 'h' }

function counter(start = 1) {
  let next = start
  return () => next++
}

describe('fencing tokens', () => {
  test('every claim gets a new, larger token; a store without tokens issues none', () => {
    const table: LeaseTable = {}
    const tokens = counter(7)
    const reserved = reserveName(table, { base: 'vm-1', exactName: false, ...want, kind: 'slot' }, me, 0, tokens())!
    expect(reserved.token).toBe(7)
    expect(markLeased(table, reserved, { name: 'vm-1', provider: 'fake', createdAt: 'x', spec: { name: 'vm-1' }, data: {} }, me, 1).token).toBe(7)
    markIdle(table, 'vm-1', me, { ttlMs: 1000 }, 1)
    const adopted = adoptIdle(table, { ...want, key: 'k' }, other, 2, tokens)!
    expect(adopted.token).toBe(8)
    markIdle(table, 'vm-1', other, { ttlMs: 1000 }, 3)
    expect(adoptIdle(table, { ...want, key: 'k' }, me, 4, tokens)!.token).toBe(9)
    const plain: LeaseTable = {}
    expect(reserveName(plain, { base: 'vm-2', exactName: false, ...want, kind: 'slot' }, me, 0)!.token).toBeUndefined()
  })

  const held = (overrides: Partial<LeaseEntry> = {}): LeaseEntry => ({ name: 'vm-1', ...want, kind: 'slot', state: 'leased', owner: me.owner, runId: 'r1', createdAt: 'x', updatedAt: 'x', token: 5, ...overrides })

  test.each([
    ['still ours, same token', { 'vm-1': held() }, []],
    ['gone (reclaimed and deleted)', {}, ['vm-1']],
    ['claimed again by another owner', { 'vm-1': held({ owner: other.owner, token: 6 }) }, ['vm-1']],
    ['same owner, another token (we claimed it again elsewhere? never trust the copy)', { 'vm-1': held({ token: 6 }) }, ['vm-1']],
    ['being deleted by another host', { 'vm-1': held({ state: 'deleting', owner: other.owner }) }, ['vm-1']],
  ] as const)('findLostHolds: %s', (_label, table, lost) => {
    expect(findLostHolds(structuredClone(table) as LeaseTable, [held()], me).map((entry) => entry.name)).toEqual(lost)
  })

  test('restoreHeld never puts back a fenced entry (a shared store does not lose its table: gone means taken)', () => {
    const table: LeaseTable = {}
    expect(restoreHeld(table, [held()])).toEqual([])
    expect(table).toEqual({})
    expect(restoreHeld(table, [held({ token: undefined })])).toEqual(['vm-1'])
  })
})

describe('heartbeatLiveness', () => {
  const judge = heartbeatLiveness([
    { host: 'host-b', pid: 20, startTime: 2, ttlMs: 1000, ageMs: 999 },
    { host: 'host-c', pid: 30, startTime: -1, ttlMs: 1000, ageMs: 1001 },
  ])
  test.each([
    ['heartbeat within its TTL', { pid: 20, host: 'host-b', startTime: 2 }, true],
    ['heartbeat older than its TTL', { pid: 30, host: 'host-c', startTime: null }, false],
    ['no heartbeat at all', { pid: 40, host: 'host-d', startTime: 4 }, false],
    ['same pid, another start time (a reused pid)', { pid: 20, host: 'host-b', startTime: 3 }, false],
  ] as const)('%s', (_label, owner, alive) => {
    expect(judge.isAlive(owner, 0)).toBe(alive)
  })
})

describe('redaction', () => {
  test.each([
    ['postgres://vm:s3cret@db:5432/pool', 'postgres://vm:***@db:5432/pool'],
    ['postgresql://vm:p%40ss@db/pool?sslmode=require', 'postgresql://vm:***@db/pool?sslmode=require'],
    ['postgres://vm@db/pool?password=s3cret&x=1', 'postgres://vm@db/pool?password=***&x=1'],
    ['postgres://db/pool', 'postgres://db/pool'],
  ])('%s', (raw, shown) => {
    expect(redactConnectionString(raw)).toBe(shown)
  })

  test('secrets are removed from any text, raw and URL-encoded', () => {
    expect(getConnectionPassword('postgres://vm:p%40ss@db/pool')).toBe('p@ss')
    expect(redactSecrets('failed for p@ss and p%40ss at postgres://vm:p%40ss@db/x', ['p@ss'])).toBe('failed for *** and *** at postgres://vm:***@db/x')
  })
})
