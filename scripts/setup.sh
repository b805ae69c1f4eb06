#!/usr/bin/env bash
# Installs the Debian packages cipgw needs to build and test, and only those
# that are missing: safe to run again and again. Runs as root without a
# terminal (CI); as another user it uses sudo when something is missing.
#
#   libelf-dev zlib1g-dev clang llvm pkg-config m4 libpcap-dev
#       xsk-rs builds libxdp/libbpf from source; clang also compiles the XDP
#       program (forwarder/bpf/), which needs the kernel uapi headers
#       (linux-libc-dev).
#   make gcc libc6-dev    the Makefile and libbpf's C build
#   iproute2 ethtool      network-namespace labs (tests, demo, benchmarks)
#   iputils-ping          the XDP/netlink namespace tests ping through labs
set -euo pipefail

PACKAGES=(
    libelf-dev zlib1g-dev clang llvm pkg-config m4 libpcap-dev linux-libc-dev
    make gcc libc6-dev
    iproute2 ethtool iputils-ping
    # dig and host: the DNS end-to-end tests (tests/dns.rs) and the demo.
    bind9-dnsutils
    # curl http://echo-server-clusterip:8080, by name, in the demo.
    curl
    # dnsmasq: the upstream resolver of the --dns-upstream test
    # (tests/dns.rs); the binary only, no system service.
    dnsmasq-base
    # make image: buildah builds the OCI image from scratch; podman runs
    # it in tests/image.rs (and loads nothing from a registry), with runc:
    # crun refuses the hybrid cgroup layout of machines such as CI's.
    buildah podman runc
    # benches/icount.sh counts instructions per packet under cachegrind.
    valgrind
)

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    echo "setup: all ${#PACKAGES[@]} system packages are installed"
else
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null; then
            sudo=(sudo)
        else
            echo "setup: missing packages: ${missing[*]}; run this script as root" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "setup: installing ${missing[*]}"
    echo "setup: apt-get update"
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
    for pkg in "${missing[@]}"; do
        installed "$pkg" || { echo "setup: $pkg did not install" >&2; exit 1; }
    done
    echo "setup: installed ${missing[*]}"
fi

# The Rust toolchain comes with the machine (rustup); lint needs its
# rustfmt and clippy components. They cannot be fetched from here, so only
# report them.
for tool in cargo rustfmt cargo-clippy; do
    command -v "$tool" >/dev/null || echo "setup: warning: $tool not found on PATH" >&2
done
