# Entry points for a fresh Debian machine: `make demo` and `make test`; each
# installs what it needs first (scripts/setup.sh). `make lib` builds the C
# libraries, `make install PREFIX=...` installs them with the header and
# pkg-config file.

CARGO ?= cargo
PREFIX ?= /usr/local
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
MAJOR := $(firstword $(subst ., ,$(VERSION)))
LIB := target/release
# What the static library needs besides itself (rustc --print native-static-libs).
STATIC_LIBS := -lssl -lcrypto -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc

.PHONY: setup demo lib header header-check install test bench

setup:
	bash scripts/setup.sh

demo: setup
	$(CARGO) build --release --example pull
	bash scripts/demo.sh

# Times cold and warm pulls against skopeo and the decompression floor
# (bench/run; BENCH_* variables tune it) and prints a results table.
bench: setup lib
	bash bench/run

# The libraries, plus the SONAME link and a .pc file pointing at the tree,
# so examples and tests link exactly as an installed copy would.
lib:
	$(CARGO) build --release --lib
	ln -sf liboci_cache.so $(LIB)/liboci_cache.so.$(MAJOR)
	sed -e 's|@PREFIX@|$(CURDIR)|; s|^libdir=.*|libdir=$(CURDIR)/$(LIB)|' \
	    -e 's|@VERSION@|$(VERSION)|; s|@STATIC_LIBS@|$(STATIC_LIBS)|' oci-cache.pc.in > $(LIB)/oci-cache.pc

header:
	cbindgen --quiet --config cbindgen.toml --crate oci-cache --output include/oci_cache.h

header-check:
	@tmp=$$(mktemp) && cbindgen --quiet --config cbindgen.toml --crate oci-cache --output $$tmp && \
	  if ! diff -u include/oci_cache.h $$tmp; then rm -f $$tmp; \
	    echo "include/oci_cache.h is stale: run make header and commit it" >&2; exit 1; fi; rm -f $$tmp

install: lib
	install -D -m 0644 include/oci_cache.h $(DESTDIR)$(PREFIX)/include/oci_cache.h
	install -D -m 0755 $(LIB)/liboci_cache.so $(DESTDIR)$(PREFIX)/lib/liboci_cache.so.$(VERSION)
	ln -sf liboci_cache.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/liboci_cache.so.$(MAJOR)
	ln -sf liboci_cache.so.$(MAJOR) $(DESTDIR)$(PREFIX)/lib/liboci_cache.so
	install -D -m 0644 $(LIB)/liboci_cache.a $(DESTDIR)$(PREFIX)/lib/liboci_cache.a
	mkdir -p $(DESTDIR)$(PREFIX)/lib/pkgconfig
	sed -e 's|@PREFIX@|$(PREFIX)|; s|@VERSION@|$(VERSION)|; s|@STATIC_LIBS@|$(STATIC_LIBS)|' \
	    oci-cache.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/oci-cache.pc

test: setup header-check lib
	bash scripts/install-check.sh
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps
	$(CARGO) test
	$(CARGO) test -p oci-cache-harness --doc
	cd go && test -z "$$(gofmt -l .)" && GOPROXY=off go vet ./... && GOPROXY=off go test -race -count=1 ./...
	bash scripts/fuzz-smoke.sh
