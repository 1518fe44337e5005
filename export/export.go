// Package export turns what grain's engine produces into OpenTelemetry
// signals sent over OTLP: rule counters, reload status and the event
// pipeline's counts become metrics (NewMetrics, NewPrometheus), and the
// events leaving the pipeline become log records (NewLogSink, a sink of
// package pipeline).
//
// Both follow the standard OpenTelemetry environment so that grain behaves
// like any other instrumented program: OTEL_EXPORTER_OTLP_* choose the
// collector, headers, TLS and compression, OTEL_EXPORTER_OTLP_PROTOCOL (or
// its per-signal _METRICS_/_LOGS_ form) chooses between "grpc" and
// "http/protobuf", OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES shape the
// resource, OTEL_METRIC_EXPORT_INTERVAL and OTEL_BLRP_* tune the export.
// Fields set in Config take precedence over the environment.
package export

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Transport protocols accepted in Config.Protocol and in
// OTEL_EXPORTER_OTLP_PROTOCOL.
const (
	ProtocolGRPC         = "grpc"
	ProtocolHTTPProtobuf = "http/protobuf"
)

// DefaultServiceName is the service.name of the resource unless
// OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name another.
const DefaultServiceName = "grain"

// instrumentationScope names the meter and the logger.
const instrumentationScope = "github.com/grain-ebpf/grain/export"

// Config is what metrics and logs have in common: where they go and which
// resource they describe.
type Config struct {
	// Protocol is ProtocolGRPC or ProtocolHTTPProtobuf. Empty reads
	// OTEL_EXPORTER_OTLP_{METRICS,LOGS}_PROTOCOL, then
	// OTEL_EXPORTER_OTLP_PROTOCOL, then defaults to http/protobuf as the
	// OTLP exporter specification recommends.
	Protocol string
	// Endpoint is the collector's base URL, e.g. "http://localhost:4317"
	// for gRPC or "https://collector:4318" for HTTP, where the signal's
	// path (/v1/metrics, /v1/logs) is appended as for
	// OTEL_EXPORTER_OTLP_ENDPOINT. An http:// scheme disables TLS. Empty
	// leaves the choice to the OTEL_EXPORTER_OTLP_* variables and the
	// exporters' defaults.
	Endpoint string
	// ServiceVersion is the resource's service.version, typically grain's
	// build version. Empty leaves it out.
	ServiceVersion string
}

// protocol resolves the transport of one signal ("METRICS" or "LOGS").
func (c Config) protocol(signal string) (string, error) {
	p := c.Protocol
	if p == "" {
		p = os.Getenv("OTEL_EXPORTER_OTLP_" + signal + "_PROTOCOL")
	}
	if p == "" {
		p = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch p {
	case "":
		return ProtocolHTTPProtobuf, nil
	case ProtocolGRPC, ProtocolHTTPProtobuf:
		return p, nil
	}
	// http/json is a valid OTLP protocol but the Go exporters do not
	// implement it: refuse rather than silently speak something else.
	return "", fmt.Errorf("unsupported OTLP protocol %q (want %q or %q)", p, ProtocolGRPC, ProtocolHTTPProtobuf)
}

// signalURL appends the signal path (e.g. "v1/metrics") to the base
// endpoint, the way OTEL_EXPORTER_OTLP_ENDPOINT is interpreted for HTTP.
func signalURL(base, signalPath string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("parse OTLP endpoint %q: %w", base, err)
	}
	if u.Scheme == "" || u.Host == "" {
		return "", fmt.Errorf("OTLP endpoint %q: want a URL such as http://host:4318", base)
	}
	u.Path = path.Join("/", strings.TrimSuffix(u.Path, "/"), signalPath)
	return u.String(), nil
}

// newResource describes this grain process. The environment is applied
// last so that OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override the
// built-in service.name.
func newResource(ctx context.Context, cfg Config) (*resource.Resource, error) {
	attrs := []resource.Option{
		resource.WithAttributes(semconv.ServiceName(DefaultServiceName)),
	}
	if cfg.ServiceVersion != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceVersion(cfg.ServiceVersion)))
	}
	attrs = append(attrs,
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithOSType(),
		resource.WithFromEnv(),
	)
	res, err := resource.New(ctx, attrs...)
	if err != nil {
		// resource.New returns a usable resource alongside partial
		// detection errors (e.g. no hostname); only a nil one is fatal.
		if res == nil {
			return nil, fmt.Errorf("build OpenTelemetry resource: %w", err)
		}
		otel.Handle(err)
	}
	return validResource(res), nil
}
