# Sourced by the scripts that need a Debian package (etcd-server, etcd-client, python3).
#
# apt_install PKG COMMAND: installs Debian package PKG unless COMMAND is on PATH; as root,
# or through sudo; retries once after `apt-get update`. Exits with a clear message when it
# cannot.
apt_install() {
    command -v "$2" >/dev/null 2>&1 && return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "error: $2 is missing; install $1 (not root, no sudo)" >&2; exit 1; }
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || { echo "error: $2 is missing and apt-get is not available; install $1" >&2; exit 1; }
    echo "installing $1..." >&2
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0)
    "${apt[@]}" install --no-install-recommends "$1" >/dev/null \
        || { "${apt[@]}" update >/dev/null && "${apt[@]}" install --no-install-recommends "$1" >/dev/null; }
    command -v "$2" >/dev/null 2>&1 || { echo "error: $2 still not found after installing $1" >&2; exit 1; }
}
