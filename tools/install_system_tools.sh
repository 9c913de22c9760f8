#!/usr/bin/env bash
# System tools the tests need beyond Python packages. Idempotent: installs only what is missing.
# Kafka's jars are not here: stream/local_broker.py resolves them from Maven Central on first use.
set -euo pipefail

need_java() { command -v java >/dev/null && command -v mvn >/dev/null; }

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "install_system_tools: need root to apt-get install $*" >&2
    return 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! need_java; then
  apt_install openjdk-17-jre-headless maven
fi
echo "install_system_tools: java $(java -version 2>&1 | head -1), $(mvn -v 2>/dev/null | head -1)"
