#!/usr/bin/env bash
# Builds dist/tsvm: the C library, the built-in guest, and one executable that embeds both (and the
# seccomp filters, compiled at build time). The executable never reads bunfig.toml or .env from
# where it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bun=node_modules/.bin/bun
make -s -C c
bash scripts/build_guest.sh
mkdir -p dist
# --bytecode (ESM) precompiles the bundle: it halves the executable's start-up time. --splitting makes
# separate chunks of the CLI and of each device kind, so a device process loads only its own code.
"$bun" build --compile --minify --bytecode --splitting --format=esm --no-compile-autoload-bunfig --no-compile-autoload-dotenv \
  src/tsvm.ts --outfile dist/tsvm >/dev/null
echo "built dist/tsvm ($(du -h dist/tsvm | cut -f1))"
