#!/usr/bin/env bash
# Builds a small OpenTelemetry Collector distribution (OTLP receiver, batch
# processor, debug and OTLP/HTTP exporters; core components only: contrib's
# depend on modules the proxy here refuses) from the Go module proxy into
# /var/cache/grain-otelcol/<version>/otelcol and prints that path. A warm
# machine skips the build. The cluster tests (deploy/kubernetes) run it as
# the collector grain exports to; any test or benchmark that needs a real
# collector can use the printed path.
#
# The collector's builder generates the distribution's sources; its own
# `go mod tidy` step trips on a test-only dependency the proxy refuses, so
# the sources are compiled here with a plain `go build` instead.
set -euo pipefail
version=${OTELCOL_VERSION:-v0.165.0}
cache=${GRAIN_OTELCOL_CACHE:-/var/cache/grain-otelcol}/$version
go=${GO:-go}

if [ -f "$cache/.complete" ]; then
	echo "$cache/otelcol"
	exit 0
fi
work=$(mktemp -d /tmp/grain-otelcol-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
echo "building the OpenTelemetry Collector $version into $cache (about 5 minutes)" >&2
export GOFLAGS=-mod=mod CGO_ENABLED=0
GOBIN=$work/bin "$go" install "go.opentelemetry.io/collector/cmd/builder@$version"
cat >"$work/builder.yaml" <<YAML
dist:
  name: otelcol
  description: grain's test collector
  output_path: $work/dist
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver $version
processors:
  - gomod: go.opentelemetry.io/collector/processor/batchprocessor $version
exporters:
  - gomod: go.opentelemetry.io/collector/exporter/debugexporter $version
  - gomod: go.opentelemetry.io/collector/exporter/otlphttpexporter $version
YAML
# Its module step writes go.mod, then fails in `go mod tidy`; the build
# below resolves what tidy would have.
"$work/bin/builder" --config "$work/builder.yaml" --skip-compilation >&2 || true
if [ ! -f "$work/dist/go.mod" ]; then
	echo "otelcol-binary: the collector builder wrote no go.mod in $work/dist (see its output above)" >&2
	exit 1
fi
mkdir -p "$cache"
(cd "$work/dist" && "$go" build -trimpath -ldflags "-s -w" -o "$cache/otelcol" .)
date -u +%FT%TZ >"$cache/.complete"
echo "built in $((SECONDS - start)) s" >&2
echo "$cache/otelcol"
