# tandem: the two commands of the README, and the ones developers use.
#   make demo   an embedded broker, a simulated parallel run of two CRMs, and the daemon
#   make test   every test (installs what they need first)
#   make chaos  the full fault-injection matrix, with its results table (chaos-results.md)
#   make pipeline  the real CDC pipeline (PostgreSQL, Debezium, Kafka Connect, Kafka) to watch
#   make bench  throughput, latency and memory against baselines measured in the same run
#   make lint   rustfmt and clippy, warnings as errors

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/tandem/target
export CARGO_TERM_COLOR ?= never
CARGO_FUZZ := $(HOME)/.cache/tandem/tools/bin/cargo-fuzz
FUZZ_SECONDS ?= 10

.PHONY: demo test chaos pipeline fuzz bench lint fmt setup setup-build setup-bench build

setup-build:
	@scripts/setup.sh build

setup:
	@scripts/setup.sh test

setup-bench:
	@scripts/setup.sh bench

build: setup-build
	cargo build --locked --bin tandem

demo: build
	"$(CARGO_TARGET_DIR)/debug/tandem" demo

test: setup lint
	@scripts/prune-target.py
	cargo test --workspace --locked
	$(MAKE) --no-print-directory fuzz

# Each decoder's fuzz target, for FUZZ_SECONDS, seeded with the schema examples. The
# sanitizers need unstable compiler flags, which RUSTC_BOOTSTRAP allows on the stable toolchain.
fuzz:
	@set -o pipefail; for target in $$(cd daemon/formats && RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) list); do \
	  corpus=$$(mktemp -d); \
	  if [ "$$target" = decode ]; then seeds="../../schemas/examples/valid ../../schemas/examples/invalid"; \
	  else seeds="../../schemas/examples/formats/$$target"; fi; \
	  echo "fuzzing $$target for $(FUZZ_SECONDS) s"; \
	  (cd daemon/formats && RUSTC_BOOTSTRAP=1 $(CARGO_FUZZ) run $$target --target-dir $(HOME)/.cache/tandem/fuzz-target \
	    $$corpus $$seeds -- -max_total_time=$(FUZZ_SECONDS) 2>&1 | tail -2) \
	    || exit 1; \
	  rm -rf $$corpus; \
	done

chaos: setup-build
	cargo build --locked --bins
	cargo run --locked -p tandem-chaos --bin tandem-chaos -- chaos-results.md

pipeline: setup
	cargo build --locked --bins
	"$(CARGO_TARGET_DIR)/debug/tandem-pipeline"

bench: setup-bench
	cargo build --locked --release --bin tandem --bin tandem-bench
	TANDEM_BIN="$(CARGO_TARGET_DIR)/release/tandem" "$(CARGO_TARGET_DIR)/release/tandem-bench"

lint: setup-build
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

fmt:
	cargo fmt --all
