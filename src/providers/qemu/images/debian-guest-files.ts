/**
 * What the Debian recipe puts into the guest's root on top of Debian's packages: why each file is
 * there is said next to it. Written into an overlay directory that the build copies into the root.
 */

/** The non-root user with passwordless sudo, trusting the image's client key (like Debian's cloud images' user). */
export const DEBIAN_GUEST_USER = 'debian'
/** Printed on the serial console once sshd runs and the guest has an address: the provider's SSH attempts wait for it. */
export const DEBIAN_BOOT_MARKER = 'vm-pool: guest network up'
/**
 * sshd's sessions per connection: the transport multiplexes concurrent execs as channels of one
 * connection (another issue runs 24 at once on one VM). OpenSSH's default is 10.
 */
export const DEBIAN_SSH_MAX_SESSIONS = 64
/** Kernel command line: the root file system is the whole virtio disk (no partition table). */
export const DEBIAN_KERNEL_APPEND = 'root=/dev/vda rw console=ttyS0 quiet panic=-1 fsck.mode=skip mitigations=off 8250.nr_uarts=1 systemd.show_status=false'

/** Timers and services a throwaway test VM does not need; each costs boot time under TCG. */
const MASKED_UNITS = [
  'apt-daily.timer',
  'apt-daily-upgrade.timer',
  'dpkg-db-backup.timer',
  'e2scrub_all.timer',
  'e2scrub_reap.service',
  'fstrim.timer',
  'getty@.service',
  'serial-getty@.service',
  // Nothing here waits for "online"; networkd's DHCP lease arrives within a second or two anyway.
  'systemd-networkd-wait-online.service',
  'systemd-pstore.service',
  'modprobe@drm.service',
  'modprobe@fuse.service',
  'modprobe@efi_pstore.service',
  'modprobe@dm_mod.service',
  'modprobe@loop.service',
]

export interface DebianGuestFilesOptions {
  /** The client's public key line; undefined for a cloud-init image (the key comes from the seed). */
  clientPublicKey?: string
  /** The guest's ed25519 host key (OpenSSH private key + public line); undefined for cloud-init images. */
  hostKey?: { privateKey: string; publicKey: string }
}

export interface GuestFile {
  path: string
  text: string
  mode: number
  /**
   * Written after the packages are installed: the build itself needs the host's resolv.conf (mmdebstrap
   * copies it in) and must not see the guest's. Other files go in before the packages, so e.g. the
   * initramfs settings apply when the kernel package builds the initramfs.
   */
  afterPackages?: boolean
}

/** Files for the overlay, paths relative to the guest's root. */
export function getDebianGuestFiles(options: DebianGuestFilesOptions): GuestFile[] {
  const files: GuestFile[] = [
    // Whole-disk ext4; x-systemd.growfs grows it at boot to the disk the VM got (a per-VM overlay of diskGiB).
    { path: 'etc/fstab', text: '/dev/vda / ext4 rw,noatime,x-systemd.growfs 0 0\n', mode: 0o644 },
    { path: 'etc/hostname', text: 'vm-pool\n', mode: 0o644, afterPackages: true },
    { path: 'etc/hosts', text: '127.0.0.1 localhost\n127.0.1.1 vm-pool\n::1 localhost ip6-localhost ip6-loopback\n', mode: 0o644, afterPackages: true },
    // QEMU user-mode networking's DNS forwarder (networkd does not write resolv.conf without resolved).
    { path: 'etc/resolv.conf', text: 'nameserver 10.0.2.3\n', mode: 0o644, afterPackages: true },
    {
      path: 'etc/systemd/network/80-vm-pool.network',
      text: '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n',
      mode: 0o644,
    },
    // No disk writes for logs, and no 90 s unit timeouts on a busy 2-core host emulating the guest.
    { path: 'etc/systemd/journald.conf.d/vm-pool.conf', text: '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n', mode: 0o644 },
    { path: 'etc/systemd/system.conf.d/vm-pool.conf', text: '[Manager]\nDefaultTimeoutStartSec=15min\n', mode: 0o644 },
    {
      path: 'etc/ssh/sshd_config.d/vm-pool.conf',
      text: [
        '# vm-pool: key logins only; many exec channels per connection and many connections at once.',
        'HostKey /etc/ssh/ssh_host_ed25519_key',
        'PermitRootLogin prohibit-password',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        `MaxSessions ${DEBIAN_SSH_MAX_SESSIONS}`,
        'MaxStartups 100:30:200',
        'UseDNS no',
        'PrintMotd no',
        '',
      ].join('\n'),
      mode: 0o644,
    },
    // sshd's config test runs once at build time (setup script), not at every boot: one sshd start less under TCG.
    { path: 'etc/systemd/system/ssh.service.d/vm-pool.conf', text: '[Service]\nExecStartPre=\n', mode: 0o644 },
    { path: `etc/sudoers.d/vm-pool`, text: `${DEBIAN_GUEST_USER} ALL=(ALL) NOPASSWD:ALL\n`, mode: 0o440 },
    {
      path: 'etc/systemd/system/vm-pool-ready.service',
      text: `[Unit]
Description=vm-pool: tell the host (on the serial console) that SSH can be reached
After=ssh.service systemd-networkd.service
Wants=ssh.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for i in $(seq 1 3000); do ip -4 -o addr show scope global | grep -q inet && break; sleep 0.1; done; echo "${DEBIAN_BOOT_MARKER}" > /dev/ttyS0'

[Install]
WantedBy=multi-user.target
`,
      mode: 0o644,
    },
    // Only the modules that mount the root: a much smaller initramfs than MODULES=most, decompressed faster.
    { path: 'etc/initramfs-tools/conf.d/vm-pool.conf', text: 'MODULES=list\nRESUME=none\n', mode: 0o644 },
    {
      path: 'etc/initramfs-tools/hooks/vm-pool',
      text: `#!/bin/sh
# vm-pool: the root is ext4 on virtio-blk; MODULES=list includes only what this hook adds.
case "$1" in prereqs) echo ""; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
manual_add_modules virtio_pci virtio_blk ext4 crc32c_generic
`,
      mode: 0o755,
    },
  ]
  if (options.hostKey) {
    files.push({ path: 'etc/ssh/ssh_host_ed25519_key', text: options.hostKey.privateKey, mode: 0o600 })
    files.push({ path: 'etc/ssh/ssh_host_ed25519_key.pub', text: `${options.hostKey.publicKey}\n`, mode: 0o644 })
  }
  return files
}

/** Run inside the chroot after every package is installed (and before the user's --script); `set -e`: any failure fails the build. */
export function getDebianSetupScript(options: DebianGuestFilesOptions): string {
  const key = options.clientPublicKey
  const installKey = (home: string, owner: string) =>
    key
      ? `install -d -m 700 -o ${owner} -g ${owner} ${home}/.ssh\nprintf '%s\\n' '${key}' > ${home}/.ssh/authorized_keys\nchown ${owner}:${owner} ${home}/.ssh/authorized_keys\nchmod 600 ${home}/.ssh/authorized_keys\n`
      : ''
  return `#!/bin/sh
set -eu
useradd --create-home --shell /bin/bash --comment vm-pool ${DEBIAN_GUEST_USER}
${installKey('/root', 'root')}${installKey(`/home/${DEBIAN_GUEST_USER}`, DEBIAN_GUEST_USER)}
# Debian's openssh-server generated host keys of every type: the guest keeps only the pinned ed25519 key${key ? '' : ' (cloud-init installs it from the seed)'}.
find /etc/ssh -name 'ssh_host_*' ! -name 'ssh_host_ed25519_key*' -delete
${key ? '' : 'rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub\n'}systemctl enable systemd-networkd.service vm-pool-ready.service
systemctl mask ${MASKED_UNITS.join(' ')}
${key ? '# The config test ssh.service no longer runs at boot (it needs its privilege separation dir).\ninstall -d -m 755 /run/sshd && /usr/sbin/sshd -t\n' : ''}
# Each VM gets its own machine id at first boot.
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
`
}
