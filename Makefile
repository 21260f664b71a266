# famix: the two commands that matter are `make demo` and `make test`;
# both install what is missing (libtorch from PyPI into a per-user cache) first.
SHELL := /bin/bash
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(CURDIR)/.venv/bin:$(HOME)/.cargo/bin:$(PATH)
FAMIX := target/release/famix
MDBOOK_VERSION := 0.5.4

# The integration-test modules (crates/famix-cli/tests/it/) that `make check` runs:
# those that answer in seconds. The rest (training, mining, the demo, crash and fuzz
# runs, the soak, browsers, videos) run in `make test`.
FAST_TESTS := bench:: cancel:: classes:: clip_image:: clip_text:: data:: docs:: download:: engine:: export:: \
	fastpath:: hygiene:: library:: optim:: quiet:: segmenter:: synth::

.PHONY: setup build test check demo fixtures bench clean python docs reference python-api

# A clone without a target folder gets a link to a per-user one (like libtorch's
# cache): every clone and CI run then reuses the compiled dependencies, and only
# famix's own crates are compiled again. FAMIX_TARGET_CACHE=none keeps a local one.
TARGET_CACHE ?= $(or $(FAMIX_TARGET_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/famix/target)

setup:
	@command -v cargo >/dev/null || { echo "famix needs a Rust toolchain (cargo): https://rustup.rs" >&2; exit 1; }
	@tools/setup-libtorch.sh
	@if [ ! -e target ] && [ "$(TARGET_CACHE)" != none ]; then mkdir -p "$(TARGET_CACHE)" && ln -s "$(TARGET_CACHE)" target; fi

build: setup
	cargo build --release

# The inner loop (a few minutes with a warm target/): formatting, lints, the library's
# unit tests and the fast integration tests.
check: setup
	@# Every member's crates (the Python package's too: tests/hygiene.rs resolves them offline).
	cargo fetch --locked >/dev/null
	cargo fmt --all --check
	cargo clippy --release --all-targets -- -D warnings
	@# One cargo call builds the library's unit tests and the integration tests with the
	@# same features (two calls resolved them differently and compiled the library's tests
	@# twice). The filters are ORed per binary: `tests::` selects every unit test (they
	@# live in `mod tests`; no integration test has that in its name), $(FAST_TESTS) the
	@# fast integration modules.
	cargo test --release -p famix --lib --test lib -p famix-cli --test it -- tests:: $(FAST_TESTS)

# Everything, as .ci/run: hygiene first (formatting, lints, docs, the library free of
# CLI/server crates), then every test (unit, integration: PyTorch-parity fixtures, CLI,
# service, crash and fuzz runs; doc tests), the book and its links, and the Python
# package's (built against the same torch and the same compiled library; pytest).
# Plain cargo commands cover the default members (the library and the command); the
# Python package is checked and built alone by tools/setup-python.sh. The library
# alone is not compiled separately: the main build compiles it, and `cargo tree`
# proves its dependency tree has no CLI or server crate.
test: build
	tools/setup-test-deps.sh
	cargo fmt --all --check
	cargo clippy --release --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps
	@# Proc-macro crates run inside the compiler only (prost-derive uses anyhow), so they are left out.
	@if cargo tree -p famix -e normal,no-proc-macro --prefix none | grep -E '^(clap|indicatif|anyhow|axum|tokio|prometheus) '; then \
		echo "the famix library must not depend on the crates above" >&2; exit 1; fi
	cargo test --release
	$(MAKE) docs
	@# The Python package: its own formatting/lints, the wheel, its pytest suite.
	tools/setup-python.sh --test

# The user guide (mdBook, installed from crates.io at a pinned version when missing)
# into target/book. Its links are checked by the `docs::` integration tests.
docs:
	@if [ "$$(mdbook --version 2>/dev/null)" != "mdbook v$(MDBOOK_VERSION)" ]; then \
		echo "famix: installing mdBook $(MDBOOK_VERSION) (cargo install, once)" >&2; \
		cargo install --quiet --locked --version $(MDBOOK_VERSION) mdbook; fi
	mdbook build docs

# Regenerates the guide's command reference and the man pages from the binary's clap
# definitions (a test fails when the committed ones differ).
reference: build
	rm -rf docs/src/reference docs/man
	$(FAMIX) reference --markdown docs/src/reference --man docs/man

# Regenerates the guide's Python API page from the installed package (pytest checks it).
python-api: python
	python/.venv/bin/python tools/python_api_doc.py docs/src/python-api.md

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
