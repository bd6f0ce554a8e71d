import { createHash } from 'node:crypto'
import { invalidOptions } from '../errors.js'
import { lazyModule } from '../util/lazy-module.js'

/** ssh2, loaded on first use (util/lazy-module.ts): the fake and CLI providers never need it. */
export const loadSsh2 = lazyModule<typeof import('ssh2')>('ssh2')

export interface SshKeyPair {
  /** OpenSSH private key text (`-----BEGIN OPENSSH PRIVATE KEY-----`). A secret: never log it. */
  privateKey: string
  /** One OpenSSH public key line: `ssh-ed25519 AAAA... comment`. */
  publicKey: string
}

/** Pairs tried before giving up; a bad pair is about 1 in 256, so two in a row are already rare. */
const KEY_PAIR_ATTEMPTS = 16

/**
 * A fresh ed25519 key pair, for test sshds, guest images and per-run client keys. ssh2's generator
 * strips leading zero bytes from the 32-byte public key (mscdex/ssh2#1390, open) and `parseKey`
 * then refuses the pair ("the ssh private key could not be parsed" in a test run): a pair is kept
 * only when both halves parse.
 */
export function generateSshKeyPair(comment = 'vm-pool'): SshKeyPair {
  for (let attempt = 1; ; attempt++) {
    const { utils } = loadSsh2()
    const pair = utils.generateKeyPairSync('ed25519', { comment })
    const readable = !(utils.parseKey(pair.private) instanceof Error) && !(utils.parseKey(pair.public) instanceof Error)
    if (readable) return { privateKey: pair.private, publicKey: pair.public.trim() }
    if (attempt >= KEY_PAIR_ATTEMPTS) throw new Error(`ssh2 generated ${KEY_PAIR_ATTEMPTS} unreadable ed25519 key pairs in a row`)
  }
}

/** The raw key blob of an OpenSSH public key line (`type base64 [comment]`). */
export function getPublicKeyBlob(publicKeyLine: string): Buffer {
  const [type, base64] = publicKeyLine.trim().split(/\s+/)
  if (!type || !base64 || !/^[A-Za-z0-9+/]+={0,2}$/.test(base64)) {
    throw invalidOptions(`not an OpenSSH public key line: ${JSON.stringify(publicKeyLine.slice(0, 40))}`, { hint: "expected 'ssh-ed25519 AAAA...'" })
  }
  const blob = Buffer.from(base64, 'base64')
  // The blob starts with the key type as an SSH string: a line whose type and blob disagree is corrupt.
  const embedded = blob.length >= 4 ? blob.subarray(4, 4 + blob.readUInt32BE(0)).toString('latin1') : ''
  if (embedded !== type) throw invalidOptions(`OpenSSH public key line names type ${type} but its key is ${JSON.stringify(embedded)}`)
  return blob
}

/** OpenSSH's `SHA256:...` fingerprint (unpadded base64) of a key blob or public key line. */
export function getSshFingerprint(key: Buffer | string): string {
  const blob = typeof key === 'string' ? getPublicKeyBlob(key) : key
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`
}

/** Normalize a pinned host key (a public key line or a `SHA256:` fingerprint) to a fingerprint. */
export function normalizeHostKeyPin(pin: string): string {
  const trimmed = pin.trim()
  if (/^SHA256:[A-Za-z0-9+/]{43}=?$/.test(trimmed)) return trimmed.replace(/=$/, '')
  return getSshFingerprint(trimmed)
}
