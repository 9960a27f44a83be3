#!/bin/sh
# What `make demo` and `make test` need before Python takes over, on a fresh Debian 12:
# a python3 that can make a virtualenv, a JDK and Maven (ZooKeeper, Cassandra and HBase run
# from Maven jars; the HBase gateway is compiled with javac). Whatever is missing is
# installed with apt-get when running as root, with one line saying what and why; without
# root it prints the one command to run and exits 1. Must never download anything but
# Debian packages, and must stay silent when nothing is missing.
set -eu
PYTHON=${PYTHON:-python3}
packages=""
reasons=""

need() {
    packages="$packages $1"
    reasons="${reasons:+$reasons; }$1 ($2)"
}

command -v "$PYTHON" >/dev/null 2>&1 || { echo "nxnw needs $PYTHON (3.11 or newer) on PATH" >&2; exit 1; }
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need python3-venv "for the project's virtualenv"
command -v javac >/dev/null 2>&1 || need openjdk-17-jdk-headless "Java 17 runs ZooKeeper, Cassandra and HBase"
command -v mvn >/dev/null 2>&1 || need maven "fetches the ZooKeeper, Cassandra and HBase jars"

[ -z "$packages" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "nxnw needs Debian packages: $reasons. Run: sudo apt-get update && sudo apt-get install -y --no-install-recommends$packages" >&2
    exit 1
fi
echo "installing with apt-get: $reasons"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null
apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends $packages >/dev/null
