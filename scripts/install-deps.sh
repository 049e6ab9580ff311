#!/bin/sh
# install-deps.sh - install the Debian 12 packages wsguard needs to build,
# run and test, but only those that are missing. Quiet when all are present.
set -eu

PACKAGES="build-essential pkg-config libssl-dev openssl libev-dev
libpcre2-dev libinih-dev libjansson-dev libhiredis-dev zlib1g-dev libcmocka-dev
python3 python3-pytest python3-websockets clang-14 libclang-rt-14-dev
clang-tidy-14 clang-tools-14 cppcheck
redis-server chromium nginx-light haproxy gnuplot-nox valgrind
curl groff-base man-db systemd python3-yaml strace"

missing=
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$status" in
    *" installed") ;;
    *) missing="$missing $p" ;;
    esac
done

[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages:$missing" >&2
    echo "install-deps: run as root:" >&2
    echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends$missing" >&2
    exit 1
fi

echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
