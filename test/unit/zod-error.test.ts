import { describe, expect, test } from 'vitest'
import { z } from 'zod'
import { formatZodError } from '../../src/config/zod-error.js'
import { fakeProvider } from '../../src/providers/fake-provider.js'
import { firecrackerProvider } from '../../src/providers/firecracker-provider.js'

describe('formatZodError', () => {
  const schema = z.object({ cpus: z.number().int().min(1), nested: z.object({ list: z.array(z.string()) }), token: z.string(), privateKey: z.string().optional() }).strict()

  test('names the key path and quotes the bad value', () => {
    const input = { cpus: -1, nested: { list: ['ok', 7] }, token: 'x' }
    const message = formatZodError(schema.safeParse(input).error!, input)
    expect(message).toContain('cpus: ')
    expect(message).toContain('got -1')
    expect(message).toContain('nested.list[1]: ')
    expect(message).toContain('got 7')
  })

  test('a value that fits no shape of a union: the shapes are named, or the one whose type it has says why', () => {
    const union = z.object({ keepWarm: z.union([z.boolean(), z.object({ ttlMs: z.number() }).strict()]), command: z.union([z.string().min(1), z.array(z.string()).min(1)]), mode: z.union([z.literal('a'), z.literal('b')]) })
    const input = { keepWarm: 'yes', command: '', mode: 'c' }
    const message = formatZodError(union.safeParse(input).error!, input)
    expect(message).toContain('keepWarm: expected a boolean or an object, got "yes"')
    expect(message).toContain('command: Too small: expected string to have >=1 characters, got ""')
    expect(message).toContain('mode: expected "a" or "b", got "c"')
    expect(message).not.toContain('Invalid input')
    // A failure inside an object alternative: zod's own words, with the deeper path.
    const deeper = { keepWarm: { ttlMs: 'x' }, command: 'ls', mode: 'a' }
    expect(formatZodError(union.safeParse(deeper).error!, deeper)).toMatch(/^keepWarm/)
  })

  test('never quotes values of secret-looking keys', () => {
    const input = { cpus: 1, nested: { list: [] }, token: 1234567890, privateKey: ['-----BEGIN OPENSSH PRIVATE KEY-----'] }
    const message = formatZodError(schema.safeParse(input).error!, input)
    expect(message).toMatch(/token: .*not shown/)
    expect(message).not.toContain('1234567890')
    expect(message).not.toContain('BEGIN OPENSSH')
  })

  test('long values are cut; without the input nothing is quoted', () => {
    const input = { cpus: 'x'.repeat(500), nested: { list: [] }, token: 't' }
    const message = formatZodError(schema.safeParse(input).error!, input)
    expect(message).toContain('…')
    expect(message.length).toBeLessThan(250)
    expect(formatZodError(schema.safeParse(input).error!)).not.toContain('got')
  })

  test('provider factories quote the bad value, and keep tokens out', () => {
    expect(() => fakeProvider({ bootDelayMs: -5 })).toThrow(/bootDelayMs: .*got -5/)
    let message = ''
    try {
      firecrackerProvider({ url: 'http://127.0.0.1:9', token: 987654321 as unknown as string })
    } catch (error) {
      message = String(error)
    }
    expect(message).toContain('token')
    expect(message).not.toContain('987654321')
  })
})
