# cipgw: the commands a user and CI need. `make demo` and `make test` are all
# a fresh Debian machine with the Rust toolchain needs (as root: the demo and
# the namespace tests create network namespaces; setup installs packages).

CARGO ?= cargo
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: all setup build image demo test lint bench bench-veth bench-veth-smoke bench-dns

all: build

# Installs the missing system packages (idempotent).
setup:
	bash scripts/setup.sh

build: setup
	$(CARGO) build --release -p cipgw

# The image deploy/ runs, $(IMAGE_NAME):VERSION (and
# :VERSION-COMMIT), in the local container storage podman reads: the
# binary linked statically (glibc's static libc; libelf and zlib from
# libelf-dev and zlib1g-dev) in an image from scratch (deploy/Containerfile,
# buildah). No registry needed; deploy/README.md says how to load it on a
# node. The first build compiles every dependency for the static target
# (about 10 min on 2 cores); after that, a changed binary re-packs in
# seconds and an unchanged one is kept.
IMAGE_NAME ?= localhost/cipgw
STATIC_TARGET := x86_64-unknown-linux-gnu
image: setup
	RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --release -p cipgw --bin cipgw --target $(STATIC_TARGET)
	bash scripts/image.sh $(TARGET_DIR)/$(STATIC_TARGET)/release/cipgw $(IMAGE_NAME)

# Self-contained: namespaces, echo Pods, the gateway, requests to the VIP.
demo: setup
	$(CARGO) build --release -p cipgw
	$(TARGET_DIR)/release/cipgw demo

# The binary first: end-to-end tests run it (CARGO_BIN_EXE_cipgw). The
# fuzzer is a workspace of its own: its seed tests (every committed input
# reaches its verdict) run here too.
test: setup
	$(CARGO) build -p cipgw --bins
	$(CARGO) test --workspace
	$(CARGO) test --manifest-path forwarder/fuzz/Cargo.toml
	$(CARGO) test --manifest-path vendor/xsk-rs/Cargo.toml --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: setup
	$(CARGO) bench -p cipgw-datapath --bench packet_path --bench conntrack
	$(CARGO) bench -p cipgw --bench control

# End-to-end veth benchmark (root, ~15-25 min): cipgw against kernel
# forwarding and kube-proxy's iptables and nftables rulesets; results in
# target/veth-bench/<time>/.
bench-veth: setup
	bash benches/veth/run.sh

# Its CI smoke mode: every peer and workload present and non-zero (~80 s).
bench-veth-smoke: setup
	bash benches/veth/run.sh --smoke --debug

# cipgw's DNS against unbound, knot-resolver and dnsmasq (dnsperf).
bench-dns: setup
	bash benches/dns/run.sh
