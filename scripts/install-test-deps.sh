#!/usr/bin/env bash
# Installs what the end-to-end tests need and cargo cannot fetch: `protoc` (and the
# well-known .proto files), which the `etcd-client` dev-dependency uses to compile etcd's
# protos. Concord's own crates never need it. Does nothing when protoc is already there.
set -euo pipefail

if [ -n "${PROTOC:-}" ] && [ -x "${PROTOC}" ]; then
    exit 0
fi
if command -v protoc >/dev/null 2>&1 && [ -f /usr/include/google/protobuf/descriptor.proto ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "error: protoc is missing and this user cannot install packages (not root, no sudo)." >&2
    echo "       Install the Debian/Ubuntu packages protobuf-compiler and libprotobuf-dev," >&2
    echo "       or set PROTOC to a protoc binary, then run this again." >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: protoc is missing and apt-get is not available; install protoc (protobuf" >&2
    echo "       compiler, with its include files) with your package manager, or set PROTOC." >&2
    exit 1
fi

echo "installing protobuf-compiler (protoc) for the etcd-client end-to-end tests..." >&2
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0)
if ! "${APT[@]}" install --no-install-recommends protobuf-compiler libprotobuf-dev >/dev/null; then
    "${APT[@]}" update >/dev/null
    "${APT[@]}" install --no-install-recommends protobuf-compiler libprotobuf-dev >/dev/null
fi
command -v protoc >/dev/null 2>&1 || { echo "error: protoc still not found after install" >&2; exit 1; }
