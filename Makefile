# famix: the two commands that matter are `make demo` and `make test`;
# both install what is missing (libtorch from PyPI into a per-user cache) first.
SHELL := /bin/bash
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(CURDIR)/.venv/bin:$(PATH)
FAMIX := target/release/famix

.PHONY: setup build test demo fixtures bench clean python

setup:
	@command -v cargo >/dev/null || { echo "famix needs a Rust toolchain (cargo): https://rustup.rs" >&2; exit 1; }
	@tools/setup-libtorch.sh

build: setup
	cargo build --release

# Hygiene first (formatting, lints, docs, the library alone and free of CLI/server
# crates), then every test: unit, integration (PyTorch-parity fixtures, CLI), doc
# tests, and the Python package's (built against the same torch; pytest).
test: build
	tools/setup-test-deps.sh
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --release --workspace --no-deps
	cargo build --release -p famix
	@# Proc-macro crates run inside the compiler only (prost-derive uses anyhow), so they are left out.
	@if cargo tree -p famix -e normal,no-proc-macro --prefix none | grep -E '^(clap|indicatif|anyhow|axum|tokio|prometheus) '; then \
		echo "the famix library must not depend on the crates above" >&2; exit 1; fi
	cargo test --release --workspace
	@# The Python package: its own formatting/lints, the wheel, its pytest suite.
	tools/setup-python.sh --test

# The Python package `famix`: wheel in target/wheels/, installed into python/.venv
# (with the per-user torch 2.11 of `make setup`); then python/.venv/bin/python -c 'import famix'.
python: setup
	tools/setup-python.sh

demo: build
	$(FAMIX) demo --out demo-out

bench: build
	$(FAMIX) bench --device cpu --what infer,train,mine --batch 2 --crop 256 --infer-size 512x512 --json

# Regenerates the committed PyTorch parity fixtures (installs tools/requirements-tools.txt, exact versions).
fixtures: setup
	tools/setup-libtorch.sh --tools
	.venv/bin/python tools/make_fixtures.py

clean:
	cargo clean
