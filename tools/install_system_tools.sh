#!/usr/bin/env bash
# System tools the tests need beyond Python packages. Idempotent: installs only what is missing.
# Kafka's jars are not here: snowtrap/devtools/kafka_jars.py resolves them from Maven Central on first use.
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

# Prometheus and promtool (tests/test_monitoring.py): Debian's prometheus package.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  apt_install prometheus
  # The package's service is not wanted here: the tests start their own server on a free port.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  elif command -v invoke-rc.d >/dev/null; then
    invoke-rc.d prometheus stop >/dev/null 2>&1 || true
  fi
fi
echo "install_system_tools: $(promtool --version 2>&1 | head -1)"

# Chromium and its driver (tests/test_live_browser.py drives the live page headless): Debian's
# packages, never a downloaded browser build.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_install chromium chromium-driver
fi
echo "install_system_tools: $(chromium --version 2>/dev/null | head -1), $(chromedriver --version 2>/dev/null | head -1)"

# helm (tests/test_deploy.py), built from the Go module proxy into .cache/bin: ~2 min from
# cold caches on 2 cores, seconds when the Go build cache is warm, skipped when the cached
# binary has the right version. The ldflags give it the version and the Kubernetes version
# its client libraries speak (as helm's own Makefile does), so `helm template` renders for a
# current cluster.
HELM_VERSION=v3.22.0
HELM_K8S_MINOR=37  # k8s.io/client-go v0.37 in helm v3.22.0's go.mod
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELM_BIN="$ROOT/.cache/bin/helm"
if [ ! -x "$HELM_BIN" ] || [ "$("$HELM_BIN" version --template '{{.Version}}' 2>/dev/null)" != "$HELM_VERSION" ]; then
  if ! command -v go >/dev/null; then
    echo "install_system_tools: building helm needs Go >= 1.24 on PATH (https://go.dev/dl)" >&2
    exit 1
  fi
  echo "install_system_tools: building helm $HELM_VERSION with $(go version) (one-time, cached in .cache/bin)"
  started=$(date +%s)
  mkdir -p "$ROOT/.cache/bin"
  GOBIN="$ROOT/.cache/bin" GOFLAGS=-modcacherw go install -ldflags "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "install_system_tools: helm built in $(( $(date +%s) - started )) s"
fi
echo "install_system_tools: helm $("$HELM_BIN" version --template '{{.Version}}')"
