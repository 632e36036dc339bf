# Sourced by the scripts that need a Debian package (etcd-server, etcd-client, python3).
#
# apt_install PKG COMMAND: installs Debian package PKG unless COMMAND is on PATH.
# apt_get_install PKG: installs Debian package PKG.
# Both work as root or through sudo, retry once after `apt-get update`, and exit with a
# clear message when they cannot.
apt_get_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "error: $1 is missing (not root, no sudo)" >&2; exit 1; }
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || { echo "error: apt-get is not available; install $1" >&2; exit 1; }
    echo "installing $1..." >&2
    local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0)
    "${apt[@]}" install --no-install-recommends "$1" >/dev/null \
        || { "${apt[@]}" update >/dev/null && "${apt[@]}" install --no-install-recommends "$1" >/dev/null; } \
        || { echo "error: could not install $1" >&2; exit 1; }
}

apt_install() {
    command -v "$2" >/dev/null 2>&1 && return 0
    apt_get_install "$1"
    command -v "$2" >/dev/null 2>&1 || { echo "error: $2 still not found after installing $1" >&2; exit 1; }
}
