#!/usr/bin/env bash
# Packs a statically linked cipgw binary into an OCI image from scratch
# (deploy/Containerfile) with buildah, in the local container storage that
# podman reads, tagged NAME:VERSION (what deploy/30-daemonset.yaml runs)
# and NAME:VERSION-COMMIT, both as the binary's own `--version` reports
# them. `make image` builds the binary and calls this.
#
#   scripts/image.sh BINARY [NAME]      NAME defaults to localhost/cipgw
#
# Refuses a binary that needs a loader or shared libraries: the image has
# neither. An image already built from the same binary (its sha256 is a
# label) is kept as it is, so running this again costs a second.
set -euo pipefail

bin=${1:?usage: scripts/image.sh BINARY [NAME]}
name=${2:-localhost/cipgw}
repo=$(cd "$(dirname "$0")/.." && pwd)

[[ -x $bin ]] || { echo "image: $bin is not an executable" >&2; exit 1; }

# A static binary has no program interpreter and needs no library.
if readelf --program-headers "$bin" | grep -q INTERP ||
    readelf --dynamic "$bin" | grep -q NEEDED; then
    echo "image: $bin is dynamically linked:" >&2
    readelf --dynamic "$bin" | grep NEEDED >&2 || true
    echo "image: build it with RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu (make image does)" >&2
    exit 1
fi

# `cipgw 0.1.0 (git 1a2b3c4d5e6f)`
read -r _ version _ commit < <("$bin" --version)
commit=${commit%)}
[[ -n $version && -n $commit ]] || { echo "image: cannot read the version of $bin" >&2; exit 1; }
sha=$(sha256sum "$bin" | cut -d' ' -f1)

tag="$name:$version"
if [[ $(podman image inspect --format '{{ index .Labels "io.cipgw.binary-sha256" }}' "$tag" 2>/dev/null) == "$sha" ]]; then
    podman tag "$tag" "$name:$version-$commit"
    echo "image: $tag is up to date (binary $sha)"
    exit 0
fi

previous=$(podman image inspect --format '{{ .Id }}' "$tag" 2>/dev/null || true)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
# Without its line tables (a quarter of the size; panics still name
# their functions).
strip --strip-debug -o "$context/cipgw" "$bin"
started=$SECONDS
buildah build --quiet --layers=false \
    --file "$repo/deploy/Containerfile" \
    --build-arg "VERSION=$version" --build-arg "REVISION=$commit" \
    --label "io.cipgw.binary-sha256=$sha" \
    --tag "$tag" --tag "$name:$version-$commit" \
    "$context" >/dev/null
# The previous build of the tag would only take space: its tags of this
# name go, and the image with them unless a container still uses it.
if [[ -n $previous && $previous != $(podman image inspect --format '{{ .Id }}' "$tag") ]]; then
    for old in $(podman image inspect --format '{{ range .RepoTags }}{{ . }} {{ end }}' "$previous"); do
        [[ $old == "$name:"* ]] && podman untag "$previous" "$old"
    done
    podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{ .Size }}' "$tag")
echo "image: built $tag and $name:$version-$commit ($((size / 1024 / 1024)) MiB, $((SECONDS - started)) s)"
echo "image: load it on a node with   podman save $tag | ctr -n k8s.io images import -"
echo "image: or into kind with        podman save -o cipgw.tar $tag && kind load image-archive cipgw.tar"
