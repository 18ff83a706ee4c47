#!/usr/bin/env bash
# Build the server image from the project's Dockerfile with buildah: no Docker daemon, no registry.
#
#   bash scripts/build_image.sh            # as root; installs buildah + debootstrap when missing
#
# Where no registry is reachable the Dockerfile's public base (python:3.11-slim) cannot be pulled,
# so a Debian bookworm base with python3 3.11 + python3-venv is made here with debootstrap and kept
# in buildah's storage under BASE_IMAGE (built once; delete it with `buildah rmi` to rebuild).
# torch comes from TORCH_WHEEL_DIR (default /opt/wheels, where these machines keep the CPU wheel),
# mounted read-only at build time; without one the Dockerfile's default, PyTorch's CPU index.
# Layers are cached (--layers), so a rebuild after a source change reruns only the last steps.
#
# Environment: IMAGE (default pegasus-gsg-server), BASE_IMAGE (default localhost/pegasus-gsg-base:
# bookworm; set python:3.11-slim where a registry is reachable), TORCH_WHEEL_DIR, CA_BUNDLE (the
# host's, mounted during the build; empty: none), WORK (scratch space for the debootstrap root and
# logs, outside the checkout; default /var/tmp/pegasus-gsg-image).
# Prints the build time and the image size; scripts/probe_image.sh then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${IMAGE:-pegasus-gsg-server}"
BASE_IMAGE="${BASE_IMAGE:-localhost/pegasus-gsg-base:bookworm}"
TORCH_WHEEL_DIR="${TORCH_WHEEL_DIR-/opt/wheels}"
WORK="${WORK:-/var/tmp/pegasus-gsg-image}"
CA_BUNDLE="${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
# chroot isolation: RUN steps need no namespaces or OCI runtime (so this works inside a container).
# Storage is buildah's default (/etc/containers/storage.conf: overlay), outside the checkout.
export BUILDAH_ISOLATION="${BUILDAH_ISOLATION:-chroot}"
started=$SECONDS
step() { echo "build_image: [$((SECONDS - started)) s] $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "scripts/build_image.sh: run as root (buildah without a daemon needs it here)" >&2
    exit 2
fi
if ! command -v buildah > /dev/null || ! command -v debootstrap > /dev/null; then
    step "installing buildah and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap > /dev/null
fi

if buildah inspect --type image "$BASE_IMAGE" > /dev/null 2>&1; then
    step "base image $BASE_IMAGE: cached"
elif [[ "$BASE_IMAGE" == localhost/pegasus-gsg-base:* ]]; then
    step "building the base image $BASE_IMAGE (debootstrap bookworm + python3 + python3-venv)"
    rootfs="$WORK/rootfs"
    rm -rf "$rootfs" "$WORK/rootfs.tar"
    mkdir -p "$WORK"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian > "$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; echo "build_image: debootstrap failed" >&2; exit 1; }
    # What a slim base does without: package lists, caches, docs.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
    tar -C "$rootfs" -cf "$WORK/rootfs.tar" .
    ctr=$(buildah from scratch)
    buildah add --quiet "$ctr" "$WORK/rootfs.tar" / > /dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
    buildah commit --quiet "$ctr" "$BASE_IMAGE" > /dev/null
    buildah rm "$ctr" > /dev/null
    rm -rf "$rootfs" "$WORK/rootfs.tar"
    step "base image $BASE_IMAGE built"
fi

build_mounts=()
torch_from=""
if [ -n "$TORCH_WHEEL_DIR" ] && compgen -G "$TORCH_WHEEL_DIR/torch-*.whl" > /dev/null; then
    build_mounts+=(--volume "$TORCH_WHEEL_DIR:/wheels:ro" --build-arg TORCH_WHEEL_DIR=/wheels)
    torch_from=", torch from $TORCH_WHEEL_DIR"
fi
# The host's CA bundle over the image's, for the build only: where PyPI is reached through a
# TLS-inspecting proxy, pip trusts its CA through this file (Debian's pip reads the system bundle).
if [ -n "$CA_BUNDLE" ] && [ -f "$CA_BUNDLE" ]; then
    build_mounts+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
fi
step "building $IMAGE from Dockerfile (base $BASE_IMAGE$torch_from)"
build_started=$SECONDS
# --format docker keeps HEALTHCHECK (the OCI image format has no field for it).
buildah bud --layers --format docker --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
    "${build_mounts[@]}" -t "$IMAGE" -f Dockerfile . > "$WORK/bud.log" 2>&1 \
    || { tail -40 "$WORK/bud.log"; echo "build_image: buildah bud failed (log: $WORK/bud.log)" >&2; exit 1; }
size=$(buildah images --format '{{.Size}}' "$IMAGE" | head -1)
step "built $IMAGE in $((SECONDS - build_started)) s (all steps $((SECONDS - started)) s); image size $size"
