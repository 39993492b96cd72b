# Two entry points for a fresh Debian machine: `make demo` and `make test`.
# Each installs what it needs first (scripts/setup.sh).

CARGO ?= cargo

.PHONY: setup demo test

setup:
	bash scripts/setup.sh

demo: setup
	$(CARGO) build --release --example pull
	bash scripts/demo.sh

test: setup
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps
	$(CARGO) test
