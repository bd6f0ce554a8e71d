import { createHash } from 'node:crypto'
import { makeIso9660Image } from './iso9660-image.js'

/** Printed on the console by cloud-init's last stage: users, keys and sshd settings are in place by then. */
export const CLOUD_INIT_BOOT_MARKER = 'vm-pool: cloud-init finished'
/** cloud-init's sessions-per-connection setting for the image's sshd (see DEBIAN_SSH_MAX_SESSIONS). */
export const CLOUD_SSH_MAX_SESSIONS = 64

export interface CloudInitSeedOptions {
  /** The non-root user cloud-init creates (passwordless sudo). */
  user: string
  /** The client key's public line: trusted by `user` and by root. */
  clientPublicKey: string
  /** The guest's ed25519 host key, so the host can pin it before the first boot. */
  hostKey: { privateKey: string; publicKey: string }
  hostname: string
}

/**
 * A NoCloud seed (ISO 9660, label `cidata`) with `meta-data` and `user-data`: the user with sudo and
 * the client key, root's key (the provider logs in as root), the pinned host key instead of generated
 * ones (`ssh_genkeytypes: [ed25519]`, which the seed gives: no slow RSA key generation under TCG), more
 * SSH sessions per connection, the C.UTF-8 locale,
 * and a console line when cloud-init is done. Made locally: no network access is needed to boot with it.
 */
export function makeCloudInitSeed(options: CloudInitSeedOptions): Buffer {
  const instanceId = `vm-pool-${createHash('sha256').update(options.hostKey.publicKey).digest('hex').slice(0, 12)}`
  const metaData = `instance-id: ${instanceId}
local-hostname: ${options.hostname}
public-keys:
  - ${JSON.stringify(options.clientPublicKey)}
`
  const indented = (text: string) => text.trim().split('\n').map((line) => `    ${line}`).join('\n')
  const userData = `#cloud-config
users:
  - name: ${options.user}
    gecos: vm-pool
    shell: /bin/bash
    lock_passwd: true
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    ssh_authorized_keys:
      - ${JSON.stringify(options.clientPublicKey)}
disable_root: false
ssh_pwauth: false
ssh_deletekeys: true
ssh_genkeytypes: [ed25519]
ssh_keys:
  ed25519_private: |
${indented(options.hostKey.privateKey)}
  ed25519_public: ${JSON.stringify(options.hostKey.publicKey)}
write_files:
  - path: /etc/ssh/sshd_config.d/vm-pool.conf
    permissions: "0644"
    content: |
      MaxSessions ${CLOUD_SSH_MAX_SESSIONS}
      MaxStartups 100:30:200
      UseDNS no
runcmd:
  - [sh, -c, "systemctl reload ssh.service 2>/dev/null || systemctl reload sshd.service 2>/dev/null || true"]
package_update: false
package_upgrade: false
# C.UTF-8 is built into glibc: cloud-init's default (en_US.UTF-8) fails where no locale was generated.
locale: C.UTF-8
final_message: "${CLOUD_INIT_BOOT_MARKER}"
`
  return makeIso9660Image('cidata', [
    { name: 'meta-data', data: metaData },
    { name: 'user-data', data: userData },
  ])
}
