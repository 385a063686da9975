#!/usr/bin/env bash
# Installs what building and testing tandem needs, once per machine; fast when already done.
#   - Debian packages: RocksDB (linked, not built: 30 s instead of 21 minutes), libclang
#     for its bindings, a C toolchain for librdkafka.
#   - tansu 0.6.0, the second Kafka-protocol broker of the compatibility test, cached under
#     ~/.cache/tandem (about 15 minutes to build, once).
#   - cargo-fuzz, for the decoders' fuzz targets, cached under ~/.cache/tandem/tools.
# Usage: scripts/setup.sh [build|test]   (build: packages only)
set -euo pipefail

want="${1:-test}"
cache="${TANDEM_CACHE:-$HOME/.cache/tandem}"
tansu_version="0.6.0"
tansu_root="$cache/tansu-$tansu_version"

say() { printf 'setup: %s\n' "$*" >&2; }

packages=(librocksdb-dev libclang-dev clang pkg-config make)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  run_as_root=()
  [ "$(id -u)" -eq 0 ] || run_as_root=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${run_as_root[@]}" apt-get update -qq
  "${run_as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$want" = "test" ]; then
  tools="$cache/tools"
  if ! "$tools/bin/cargo-fuzz" --version >/dev/null 2>&1; then
    say "installing cargo-fuzz into $tools (about a minute, once per machine)"
    cargo install cargo-fuzz --locked --root "$tools" --quiet
  fi

  installed=""
  [ -x "$tansu_root/bin/tansu" ] && installed="$("$tansu_root/bin/tansu" --version 2>/dev/null || true)"
  case "$installed" in
    *"$tansu_version"*) ;;
    *)
      say "installing tansu $tansu_version into $tansu_root (about 15 minutes, once per machine)"
      build_dir="$cache/tansu-build"
      cargo install tansu --locked --version "$tansu_version" --features dynostore,libsql \
        --root "$tansu_root" --target-dir "$build_dir" --quiet
      rm -rf "$build_dir"
      ;;
  esac
fi
