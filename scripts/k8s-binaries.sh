#!/usr/bin/env bash
# Builds the Kubernetes node components and kubectl from the Go module proxy
# into /var/cache/grain-k8s/<version>/ (the cluster tests in deploy/kubernetes
# run them). A warm machine skips the build: the cache holds the binaries and
# a stamp written last, so an interrupted build starts again.
#
# k8s.io/kubernetes cannot be `go install`ed (its go.mod points its staging
# modules at ./staging), so a throwaway wrapper module requires it and pins
# each staging module to its published v0.x twin.
#
#   scripts/k8s-binaries.sh            build when missing, print the directory
#   K8S_VERSION=v1.34.4 scripts/k8s-binaries.sh
set -euo pipefail
version=${K8S_VERSION:-v1.34.4}
cache=${GRAIN_K8S_CACHE:-/var/cache/grain-k8s}/$version
go=${GO:-go}
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

if [ -f "$cache/.complete" ]; then
	echo "$cache"
	exit 0
fi

staging_version=v0.${version#v1.}
major=1
minor=${version#v1.}; minor=${minor%%.*}
work=$(mktemp -d /tmp/grain-k8s-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
echo "building Kubernetes $version into $cache (about 20 minutes on a loaded 2-core machine)" >&2

cd "$work"
export GOFLAGS=-mod=mod CGO_ENABLED=0
"$go" mod init grain.local/k8s-binaries >/dev/null 2>&1
# The staging modules are the replace lines of kubernetes' own go.mod.
gomod=$("$go" mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
if [ ! -f "$gomod" ]; then
	echo "k8s-binaries: the module proxy did not serve k8s.io/kubernetes@$version; pick a version it serves (K8S_VERSION)" >&2
	exit 1
fi
{
	echo "require k8s.io/kubernetes $version"
	awk '$1 ~ /^k8s\.io\// && $2 == "=>" && $3 ~ /^\.\/staging\// { print "replace " $1 " => " $1 " '"$staging_version"'" }' "$gomod"
} >>go.mod
grep -c '^replace' go.mod | sed 's/^/staging modules: /' >&2
cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
"$go" mod tidy -e >/dev/null 2>&1 || true
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
mkdir -p "$cache"
for c in "${components[@]}"; do
	echo "  go build $c" >&2
	"$go" build -trimpath -ldflags "$ldflags" -o "$cache/$c" "k8s.io/kubernetes/cmd/$c"
done
date -u +%FT%TZ >"$cache/.complete"
echo "built in $((SECONDS - start)) s" >&2
echo "$cache"
