# Entry points for humans and CI. `make run` serves a demo image; `make test`
# is exactly what CI runs (.ci/run).

CARGO ?= cargo

.PHONY: setup run test lint tidy fuzz soak clean

# Installs what the tests use and is missing (as root, through apt) and
# checks /dev/fuse. Quiet and idempotent when everything is already there.
# Each pair is a program the tests run and the Debian package that has it;
# with CI set, a test whose program is missing fails instead of skipping.
SETUP_TOOLS := fusermount3:fuse3 fio:fio qemu-img:qemu-utils qemu-io:qemu-utils \
	python3:python3 mkfs.ext4:e2fsprogs debugfs:e2fsprogs losetup:mount
setup:
	@missing=""; \
	for pair in $(SETUP_TOOLS); do \
		tool=$${pair%%:*}; package=$${pair#*:}; \
		command -v $$tool >/dev/null 2>&1 || case " $$missing " in \
			*" $$package "*) ;; \
			*) missing="$$missing $$package" ;; \
		esac; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
			echo "setup: missing packages:$$missing; install them with: sudo apt-get install$$missing" >&2; \
			echo "setup: continuing; tests that need them will skip (and fail when CI is set)" >&2; \
		else \
			echo "setup: installing$$missing"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
		fi; \
	fi; \
	if [ ! -c /dev/fuse ]; then \
		echo "setup: /dev/fuse is missing: the FUSE module is not loaded or the device is not" >&2; \
		echo "setup: passed into this container; end-to-end tests will SKIP and 'make run' cannot mount" >&2; \
	fi

# Extra arguments for `cargo xtask run`, e.g. make run RUN_ARGS='--image disk.raw --mount /mnt/x'
RUN_ARGS ?=
run: setup
	$(CARGO) xtask run $(RUN_ARGS)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) xtask tidy

tidy:
	$(CARGO) xtask tidy

# The end-to-end suite runs on each transport: readv with everything else,
# then FUSE-over-io_uring, under a wrapper that turns
# /sys/module/fuse/parameters/enable_uring on for the run and restores it
# afterwards (also on failure or Ctrl-C).
test: setup lint
	FUSE_EXPORT_TEST_TRANSPORT=readv $(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) run -q -p fuse-dev --example with_enable_uring -- \
		env FUSE_EXPORT_TEST_TRANSPORT=uring $(CARGO) nextest run -p fuse-export --no-fail-fast
	$(CARGO) test --doc --workspace

# Soak (not part of `make test`): rounds of fio verify (mixed unaligned
# sizes, QD64, 2 queues), restart, verify-only through a fresh export and on
# the image, until SOAK_SECONDS have passed. Stops and cleans up by itself.
SOAK_SECONDS ?= 600
soak: setup
	SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test -p fuse-export --test faults -- --ignored --exact soak --nocapture

# Fuzzes request parsing (nightly + cargo-fuzz; not part of `make test`).
FUZZ_DIR := crates/fuse-proto/fuzz
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	cd $(FUZZ_DIR) && $(CARGO) +nightly fuzz run parse_request -- -max_total_time=$(FUZZ_SECONDS)

clean:
	$(CARGO) clean
