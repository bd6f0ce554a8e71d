import ssh2 from 'ssh2'
import { describe, expect, test } from 'vitest'
import { generateSshKeyPair, getSshFingerprint, normalizeHostKeyPin } from '../../src/transport/ssh-keys.js'

describe('generateSshKeyPair', () => {
  test('every pair is readable: ssh2 alone makes about 1 in 256 with a too-short public key that parseKey refuses', () => {
    // 1,500 pairs: without the check, the chance that none is broken is about 0.3 %.
    const unreadable = Array.from({ length: 1_500 }, () => generateSshKeyPair('vm-pool-test')).filter(
      (pair) => ssh2.utils.parseKey(pair.privateKey) instanceof Error || ssh2.utils.parseKey(pair.publicKey) instanceof Error,
    )
    expect(unreadable).toEqual([])
  }, 60_000)

  test('the public line carries the comment; its fingerprint is what a pin normalizes to', () => {
    const pair = generateSshKeyPair('my-comment')
    expect(pair.publicKey).toMatch(/^ssh-ed25519 AAAA\S+ my-comment$/)
    expect(normalizeHostKeyPin(pair.publicKey)).toBe(getSshFingerprint(pair.publicKey))
    expect(normalizeHostKeyPin(`${getSshFingerprint(pair.publicKey)}=`)).toBe(getSshFingerprint(pair.publicKey))
  })
})
