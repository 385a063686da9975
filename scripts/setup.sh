#!/usr/bin/env bash
# Installs what building and testing tandem needs, once per machine; fast when already done.
#   - Debian packages: RocksDB (linked, not built: 30 s instead of 21 minutes), libclang
#     for its bindings, a C toolchain for librdkafka, OpenSSL for its TLS and SASL/SCRAM.
#   - Apache Kafka, the broker the tests run: its jars resolved from Maven Central by
#     scripts/kafka/pom.xml into ~/.cache/tandem/kafka-<version>/libs (about 20 s, once per
#     version; needs Java 17 and Maven).
#   - Kafka Connect and Debezium's PostgreSQL connector, for the CDC pipeline test: resolved
#     by scripts/connect/pom.xml into ~/.cache/tandem/connect-<version>-debezium-<version>;
#     PostgreSQL from Debian's packages.
#   - cargo-fuzz, for the decoders' fuzz targets, cached under ~/.cache/tandem/tools.
#   - openapi-spec-validator and schemathesis (PyPI), which check schemas/openapi.yaml and a
#     live daemon's answers against it, and moto's S3 server, the object store the backup
#     tests write to, in a virtual environment under ~/.cache/tandem/python.
#   - Chromium and its WebDriver (Debian's chromium, chromium-driver), which drive the console's
#     browser test headless.
#   - promtool, which checks the shipped alert rules and the live /metrics: built from the
#     Go module proxy into ~/.cache/tandem/tools (about 4 minutes, once per version).
#   - For make bench only: reladiff and DuckDB (PyPI), the diff a data team would run instead
#     of tandem, in a virtual environment under ~/.cache/tandem/bench-python; the Kafka Streams
#     reconciler a Kafka team would write instead (daemon/bench/peers/kafka-streams), built by
#     Maven into ~/.cache/tandem/bench-streams.
# Usage: scripts/setup.sh [build|test|bench]   (build: packages only; bench: test's and reladiff)
set -euo pipefail

want="${1:-test}"
cache="${TANDEM_CACHE:-$HOME/.cache/tandem}"
kafka_version="4.4.0"   # keep in step with scripts/kafka/pom.xml and daemon/testkit/src/kafka.rs
kafka_home="$cache/kafka-$kafka_version"
connect_version="4.3.2"              # keep in step with scripts/connect/pom.xml and
debezium_version="3.6.1.Final"       # daemon/testkit/src/connect.rs
connect_home="$cache/connect-$connect_version-debezium-$debezium_version"

say() { printf 'setup: %s\n' "$*" >&2; }

packages=(librocksdb-dev libclang-dev clang pkg-config make libssl-dev)
[ "$want" != "build" ] && packages+=(openssl openjdk-17-jre-headless maven postgresql-15 python3-venv chromium chromium-driver)
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

if [ "$want" != "build" ]; then
  tools="$cache/tools"
  if ! "$tools/bin/cargo-fuzz" --version >/dev/null 2>&1; then
    say "installing cargo-fuzz into $tools (about a minute, once per machine)"
    cargo install cargo-fuzz --locked --root "$tools" --quiet
  fi

  promtool_version="0.316.0"   # Prometheus 3.16's module version (needs Go 1.26.7 or newer;
                               # an older go fetches that toolchain from the module proxy)
  if [ "$(cat "$tools/promtool.VERSION" 2>/dev/null)" != "$promtool_version" ] || [ ! -x "$tools/bin/promtool" ]; then
    say "building promtool $promtool_version into $tools/bin (Go module proxy, about 4 minutes, once per machine)"
    mkdir -p "$tools/bin"
    GOBIN="$tools/bin" go install "github.com/prometheus/prometheus/cmd/promtool@v$promtool_version" </dev/null
    printf '%s\n' "$promtool_version" > "$tools/promtool.VERSION"
  fi

  python_tools="$cache/python"
  validator_version="0.9.0"
  schemathesis_version="4.32.5"
  moto_version="5.2.6"
  python_versions="openapi-spec-validator $validator_version, schemathesis $schemathesis_version, moto $moto_version"
  if [ "$(cat "$python_tools/VERSION" 2>/dev/null)" != "$python_versions" ] || [ ! -x "$python_tools/bin/openapi-spec-validator" ] || [ ! -x "$python_tools/bin/st" ] || [ ! -x "$python_tools/bin/moto_server" ]; then
    say "installing $python_versions into $python_tools (PyPI, once per machine)"
    rm -rf "$python_tools"
    python3 -m venv "$python_tools"
    "$python_tools/bin/pip" install --quiet --disable-pip-version-check \
      "openapi-spec-validator==$validator_version" "schemathesis==$schemathesis_version" \
      "moto[server]==$moto_version" </dev/null
    printf '%s\n' "$python_versions" > "$python_tools/VERSION"
  fi

  # The jars are copied into a fresh directory and the version file is written last, so an
  # interrupted install is done again instead of being trusted.
  if [ "$(cat "$kafka_home/VERSION" 2>/dev/null)" != "$kafka_version" ]; then
    say "installing Apache Kafka $kafka_version into $kafka_home (Maven Central, about 20 s, once per machine)"
    rm -rf "$kafka_home"
    mkdir -p "$kafka_home"
    mvn -B -q -Dstyle.color=never -f "$(dirname "$0")/kafka/pom.xml" dependency:copy-dependencies \
      -Dkafka.version="$kafka_version" -DincludeScope=runtime \
      -DoutputDirectory="$kafka_home/libs" </dev/null
    printf '%s\n' "$kafka_version" > "$kafka_home/VERSION"
  fi

  if [ "$(cat "$connect_home/VERSION" 2>/dev/null)" != "$connect_version $debezium_version" ]; then
    say "installing Kafka Connect $connect_version and Debezium $debezium_version into $connect_home (Maven Central, once per machine)"
    rm -rf "$connect_home"
    mkdir -p "$connect_home"
    mvn -B -q -Dstyle.color=never -f "$(dirname "$0")/connect/pom.xml" -P runtime \
      dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$connect_home/libs" </dev/null
    mvn -B -q -Dstyle.color=never -f "$(dirname "$0")/connect/pom.xml" -P debezium \
      dependency:copy-dependencies -DincludeScope=runtime \
      -DexcludeGroupIds=org.apache.kafka,org.slf4j \
      -DoutputDirectory="$connect_home/plugins/debezium-postgres" </dev/null
    printf '%s\n' "$connect_version $debezium_version" > "$connect_home/VERSION"
  fi
fi

if [ "$want" = "bench" ]; then
  bench_python="$cache/bench-python"
  bench_versions="reladiff 0.6.0, duckdb 2.0.1"
  if [ "$(cat "$bench_python/VERSION" 2>/dev/null)" != "$bench_versions" ] || [ ! -x "$bench_python/bin/reladiff" ]; then
    say "installing $bench_versions into $bench_python (PyPI, once per machine)"
    rm -rf "$bench_python"
    python3 -m venv "$bench_python"
    "$bench_python/bin/pip" install --quiet --disable-pip-version-check \
      "reladiff[duckdb]==0.6.0" "duckdb==2.0.1" </dev/null
    printf '%s\n' "$bench_versions" > "$bench_python/VERSION"
  fi

  # Built again whenever its sources change.
  streams_peer="$(cd "$(dirname "$0")/.." && pwd)/daemon/bench/peers/kafka-streams"
  streams_home="$cache/bench-streams"
  streams_key="$(cat "$streams_peer/pom.xml" "$streams_peer"/src/main/java/tandem/bench/*.java | sha256sum | cut -c1-16)"
  if [ "$(cat "$streams_home/VERSION" 2>/dev/null)" != "$streams_key" ]; then
    say "building the Kafka Streams peer into $streams_home (Maven Central, once per change)"
    rm -rf "$streams_home"
    mvn -B -q -Dstyle.color=never -f "$streams_peer/pom.xml" -Dpeer.build="$streams_home/build" \
      compile dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$streams_home/libs" </dev/null
    printf '%s\n' "$streams_key" > "$streams_home/VERSION"
  fi
fi
