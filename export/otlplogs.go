package export

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/grain-ebpf/grain/pipeline"
)

// grain's events go to the collector through this small OTLP log client
// rather than the SDK's record, transform and reflection-based protobuf
// steps: it encodes the request straight from pipeline events with
// protowire, which measured ~6x cheaper per record (BENCHMARKS.md). It
// reads the same OTEL_EXPORTER_OTLP_* variables as the SDK's exporters.

// logClient sends encoded ExportLogsServiceRequest bodies. rejected is the
// collector's partial-success count of records it did not accept.
type logClient interface {
	send(ctx context.Context, body []byte) (rejected int64, err error)
	close() error
}

// logsEnv reads OTEL_EXPORTER_OTLP_LOGS_<name>, then OTEL_EXPORTER_OTLP_<name>.
func logsEnv(name string) string {
	if v := os.Getenv("OTEL_EXPORTER_OTLP_LOGS_" + name); v != "" {
		return v
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_" + name)
}

// exportHeaders parses OTEL_EXPORTER_OTLP_(LOGS_)HEADERS: "k=v,k2=v2"
// with URL-encoded values.
func exportHeaders() map[string]string {
	h := map[string]string{}
	for _, src := range []string{os.Getenv("OTEL_EXPORTER_OTLP_HEADERS"), os.Getenv("OTEL_EXPORTER_OTLP_LOGS_HEADERS")} {
		for _, kv := range strings.Split(src, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			if u, err := url.PathUnescape(strings.TrimSpace(v)); err == nil {
				v = u
			}
			h[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return h
}

// exportTLS builds the TLS configuration from the certificate variables.
func exportTLS() (*tls.Config, error) {
	cfg := &tls.Config{}
	if f := logsEnv("CERTIFICATE"); f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("OTLP certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("OTLP certificate %s: no PEM certificate", f)
		}
		cfg.RootCAs = pool
	}
	cert, key := logsEnv("CLIENT_CERTIFICATE"), logsEnv("CLIENT_KEY")
	if cert != "" && key != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("OTLP client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func newLogClient(cfg Config) (logClient, error) {
	proto, err := cfg.protocol("LOGS")
	if err != nil {
		return nil, err
	}
	tlsCfg, err := exportTLS()
	if err != nil {
		return nil, err
	}
	gz := logsEnv("COMPRESSION") == "gzip"
	headers := exportHeaders()
	if proto == ProtocolGRPC {
		return newGRPCLogClient(cfg, tlsCfg, gz, headers)
	}
	// The URL: Config.Endpoint as a base, then the signal's own variable
	// (used as is), then the general one as a base, then the default.
	var u string
	switch {
	case cfg.Endpoint != "":
		u, err = signalURL(cfg.Endpoint, "v1/logs")
	case os.Getenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT") != "":
		u = os.Getenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
	case os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "":
		u, err = signalURL(os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), "v1/logs")
	default:
		u = "http://localhost:4318/v1/logs"
	}
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	return &httpLogClient{url: u, gzip: gz, headers: headers, client: &http.Client{Transport: tr}}, nil
}

type httpLogClient struct {
	url     string
	gzip    bool
	headers map[string]string
	client  *http.Client
	zbuf    bytes.Buffer
	zw      *gzip.Writer
}

func (c *httpLogClient) send(ctx context.Context, body []byte) (int64, error) {
	if c.gzip {
		c.zbuf.Reset()
		if c.zw == nil {
			c.zw = gzip.NewWriter(&c.zbuf)
		} else {
			c.zw.Reset(&c.zbuf)
		}
		c.zw.Write(body)
		c.zw.Close()
		body = c.zbuf.Bytes()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/x-protobuf")
	if c.gzip {
		req.Header.Set("Content-Encoding", "gzip")
	}
	for k, v := range c.headers {
		req.Header.Set(k, v)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return 0, fmt.Errorf("OTLP/HTTP %s: %s: %s", c.url, resp.Status, truncate(b, 200))
	}
	var out collogspb.ExportLogsServiceResponse
	if err == nil && len(b) > 0 && proto.Unmarshal(b, &out) == nil {
		return out.GetPartialSuccess().GetRejectedLogRecords(), nil
	}
	return 0, nil
}

func (c *httpLogClient) close() error {
	c.client.CloseIdleConnections()
	return nil
}

type grpcLogClient struct {
	conn    *grpc.ClientConn
	md      metadata.MD
	callOps []grpc.CallOption
}

// rawCodec sends an already encoded request and decodes the response.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	return proto.Unmarshal(data, v.(proto.Message))
}
func (rawCodec) Name() string { return "proto" }

func newGRPCLogClient(cfg Config, tlsCfg *tls.Config, gz bool, headers map[string]string) (logClient, error) {
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = logsEnv("ENDPOINT")
	}
	if endpoint == "" {
		endpoint = "http://localhost:4317"
	}
	target, secure := endpoint, true
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		target, secure = u.Host, u.Scheme != "http"
	}
	if v, err := strconv.ParseBool(logsEnv("INSECURE")); err == nil && v {
		secure = false
	}
	creds := insecure.NewCredentials()
	if secure {
		creds = credentials.NewTLS(tlsCfg)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds),
		// Reconnect within seconds of the collector's return (gRPC's own
		// default backs off to two minutes).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: time.Second}))
	if err != nil {
		return nil, fmt.Errorf("OTLP/gRPC %s: %w", target, err)
	}
	c := &grpcLogClient{conn: conn, md: metadata.New(headers), callOps: []grpc.CallOption{grpc.ForceCodec(rawCodec{})}}
	if gz {
		c.callOps = append(c.callOps, grpc.UseCompressor("gzip"))
	}
	return c, nil
}

func (c *grpcLogClient) send(ctx context.Context, body []byte) (int64, error) {
	if len(c.md) > 0 {
		ctx = metadata.NewOutgoingContext(ctx, c.md)
	}
	var out collogspb.ExportLogsServiceResponse
	err := c.conn.Invoke(ctx, "/opentelemetry.proto.collector.logs.v1.LogsService/Export", &body, &out, c.callOps...)
	if err != nil {
		return 0, err
	}
	return out.GetPartialSuccess().GetRejectedLogRecords(), nil
}

func (c *grpcLogClient) close() error { return c.conn.Close() }

func truncate(b []byte, n int) string {
	s := string(b)
	if len(s) > n {
		s = s[:n] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// Field numbers of the OTLP protobuf messages (opentelemetry-proto).
const (
	reqResourceLogs  = 1 // ExportLogsServiceRequest.resource_logs
	rlResource       = 1 // ResourceLogs.resource
	rlScopeLogs      = 2
	rlSchemaURL      = 3
	resAttributes    = 1 // Resource.attributes
	slScope          = 1 // ScopeLogs.scope
	slLogRecords     = 2
	scopeName        = 1 // InstrumentationScope.name
	scopeVersion     = 2
	lrTime           = 1 // LogRecord.time_unix_nano
	lrSeverityNumber = 2
	lrSeverityText   = 3
	lrBody           = 5
	lrAttributes     = 6
	lrObservedTime   = 11
	lrEventName      = 12
	kvKey            = 1 // KeyValue.key
	kvValue          = 2
	avString         = 1 // AnyValue.string_value
	avBool           = 2
	avInt            = 3
	avDouble         = 4
	avArray          = 5
	arrayValues      = 1 // ArrayValue.values
	severityInfo     = 9 // SeverityNumber INFO
)

// logEncoder encodes ExportLogsServiceRequest bodies. The resource and
// scope never change, so they are encoded once; so are the parts of a
// record that repeat from one event to the next (severity, the attribute
// keys, the policy and event name of the last event), which leaves the
// per-event work to the values.
type logEncoder struct {
	head  []byte // resource and schema URL of the ResourceLogs
	scope []byte // the InstrumentationScope message

	keys      []encodedKey // event field keys seen, with their encoding
	hints     []uint8      // per field place, the index in keys last found there
	policyKey []byte       // the encoded key of grain.policy

	// The last event's policy and name, and what they encode to: body,
	// event name and the grain.policy attribute.
	policy, name string
	named        []byte
}

// maxRequestBytes bounds one request body: the collector's OTLP receiver
// refuses gRPC messages over 4 MiB unless configured otherwise, and a
// batch of events with long strings (paths, DNS names) could reach that.
const maxRequestBytes = 3 << 20

func newLogEncoder(res *resource.Resource, version string) *logEncoder {
	e := &logEncoder{}
	e.policyKey = protowire.AppendTag(nil, kvKey, protowire.BytesType)
	e.policyKey = protowire.AppendString(e.policyKey, string(AttrPolicy))
	var attrs []byte
	for _, kv := range res.Attributes() {
		attrs = protowire.AppendTag(attrs, resAttributes, protowire.BytesType)
		attrs = protowire.AppendBytes(attrs, appendKeyValue(nil, string(kv.Key), kv.Value))
	}
	e.head = protowire.AppendTag(e.head, rlResource, protowire.BytesType)
	e.head = protowire.AppendBytes(e.head, attrs)
	if s := res.SchemaURL(); s != "" {
		e.head = protowire.AppendTag(e.head, rlSchemaURL, protowire.BytesType)
		e.head = protowire.AppendString(e.head, s)
	}
	e.scope = protowire.AppendTag(e.scope, scopeName, protowire.BytesType)
	e.scope = protowire.AppendString(e.scope, instrumentationScope)
	if version != "" {
		e.scope = protowire.AppendTag(e.scope, scopeVersion, protowire.BytesType)
		e.scope = protowire.AppendString(e.scope, pipeline.ValidUTF8(version))
	}
	return e
}

func appendAnyValue(b []byte, v attribute.Value) []byte {
	switch v.Type() {
	case attribute.BOOL:
		b = protowire.AppendTag(b, avBool, protowire.VarintType)
		return protowire.AppendVarint(b, protowire.EncodeBool(v.AsBool()))
	case attribute.INT64:
		b = protowire.AppendTag(b, avInt, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(v.AsInt64()))
	case attribute.FLOAT64:
		b = protowire.AppendTag(b, avDouble, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(v.AsFloat64()))
	case attribute.STRINGSLICE, attribute.INT64SLICE, attribute.BOOLSLICE, attribute.FLOAT64SLICE:
		var arr []byte
		for _, s := range v.AsStringSlice() {
			arr = protowire.AppendTag(arr, arrayValues, protowire.BytesType)
			arr = protowire.AppendBytes(arr, appendAnyValue(nil, attribute.StringValue(s)))
		}
		if v.Type() != attribute.STRINGSLICE { // others as their string form
			arr = arr[:0]
			arr = protowire.AppendTag(arr, arrayValues, protowire.BytesType)
			arr = protowire.AppendBytes(arr, appendAnyValue(nil, attribute.StringValue(v.Emit())))
		}
		b = protowire.AppendTag(b, avArray, protowire.BytesType)
		return protowire.AppendBytes(b, arr)
	}
	b = protowire.AppendTag(b, avString, protowire.BytesType)
	return protowire.AppendString(b, pipeline.ValidUTF8(v.AsString()))
}

func appendKeyValue(b []byte, key string, v attribute.Value) []byte {
	b = protowire.AppendTag(b, kvKey, protowire.BytesType)
	b = protowire.AppendString(b, pipeline.ValidUTF8(key))
	val := appendAnyValue(nil, v)
	b = protowire.AppendTag(b, kvValue, protowire.BytesType)
	return protowire.AppendBytes(b, val)
}

// encodedKey is an event field's key and its KeyValue.key field.
type encodedKey struct {
	key string
	enc []byte
}

// maxKeys bounds the keys an encoder keeps: events carry a few of a small
// vocabulary, so a short list scanned in order beats a map.
const maxKeys = 64

// key returns the encoded KeyValue.key field of the key of an event's
// j-th field. Events of a policy have the same keys in the same places,
// so the key found for place j last time is tried first.
func (e *logEncoder) key(j int, k string) []byte {
	if j < len(e.hints) {
		if h := &e.keys[e.hints[j]]; h.key == k {
			return h.enc
		}
	}
	for i := range e.keys {
		if e.keys[i].key == k {
			e.hint(j, i)
			return e.keys[i].enc
		}
	}
	b := protowire.AppendTag(nil, kvKey, protowire.BytesType)
	b = protowire.AppendString(b, pipeline.ValidUTF8(string(fieldKey(k))))
	if len(e.keys) < maxKeys {
		e.keys = append(e.keys, encodedKey{k, b})
		e.hint(j, len(e.keys)-1)
	}
	return b
}

// hint remembers that place j held key i.
func (e *logEncoder) hint(j, i int) {
	if j >= maxKeys {
		return
	}
	for len(e.hints) <= j {
		e.hints = append(e.hints, 0)
	}
	e.hints[j] = uint8(i)
}

// appendStringAttr appends an attribute with a string value that is valid
// UTF-8 already; key is the encoded KeyValue.key.
func appendStringAttr(b, key []byte, value string) []byte {
	vlen := 1 + protowire.SizeBytes(len(value))
	b = protowire.AppendTag(b, lrAttributes, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(len(key)+1+protowire.SizeBytes(vlen)))
	b = append(b, key...)
	b = protowire.AppendTag(b, kvValue, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(vlen))
	b = protowire.AppendTag(b, avString, protowire.BytesType)
	return protowire.AppendString(b, value)
}

func appendIntAttr(b, key []byte, value int64) []byte {
	vlen := 1 + protowire.SizeVarint(uint64(value))
	b = protowire.AppendTag(b, lrAttributes, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(len(key)+1+protowire.SizeBytes(vlen)))
	b = append(b, key...)
	b = protowire.AppendTag(b, kvValue, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(vlen))
	b = protowire.AppendTag(b, avInt, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(value))
}

// appendNamed appends the fields that follow from the event's policy and
// name: body and event name (the name) and the grain.policy attribute.
// Events come in runs of the same policy, so the encoding of the last one
// is kept.
func (e *logEncoder) appendNamed(b []byte, ev *pipeline.Event) []byte {
	if e.named != nil && ev.Policy == e.policy && ev.Name == e.name {
		return append(b, e.named...)
	}
	e.policy, e.name = ev.Policy, ev.Name
	name := pipeline.ValidUTF8(ev.Name)
	if name == "" {
		name = "unknown"
	}
	n := e.named[:0]
	n = protowire.AppendTag(n, lrBody, protowire.BytesType)
	n = protowire.AppendVarint(n, uint64(1+protowire.SizeBytes(len(name))))
	n = protowire.AppendTag(n, avString, protowire.BytesType)
	n = protowire.AppendString(n, name)
	n = protowire.AppendTag(n, lrEventName, protowire.BytesType)
	n = protowire.AppendString(n, name)
	n = appendStringAttr(n, e.policyKey, pipeline.ValidUTF8(ev.Policy))
	e.named = n
	return append(b, n...)
}

// room is the bytes a batch reserves in front of its records for the
// request's framing (frame).
func (e *logEncoder) room() int {
	return 1 + 5 + len(e.head) + 1 + 5 + 1 + protowire.SizeBytes(len(e.scope))
}

// appendRecord appends ev's LogRecord, as a ScopeLogs.log_records field,
// to b. Its observed time is left zero for setObserved to fill in when
// the batch leaves: reading the clock per record cost ~80 ns here, a
// tenth of an event's whole path through grain.
func (e *logEncoder) appendRecord(b []byte, ev *pipeline.Event) []byte {
	at := len(b)
	// Tag and a two-byte length (a record of 128 to 16383 bytes),
	// corrected below if the record's length needs another size.
	b = append(b, byte(slLogRecords<<3|protowire.BytesType), 0, 0)
	b = protowire.AppendTag(b, lrTime, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(ev.Time.UnixNano()))
	b = protowire.AppendTag(b, lrObservedTime, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 0)
	b = append(b, severity...)
	b = e.appendNamed(b, ev)
	var addr [64]byte
	for j := range ev.Fields {
		f := &ev.Fields[j]
		switch f.Kind {
		case pipeline.Uint:
			b = appendIntAttr(b, e.key(j, f.Key), toInt64(f.Num))
		case pipeline.Addr:
			b = appendStringAttr(b, e.key(j, f.Key), string(f.Addr.AppendTo(addr[:0])))
		default:
			b = appendStringAttr(b, e.key(j, f.Key), pipeline.ValidUTF8(f.Str))
		}
	}
	return fixLength(b, at+1)
}

// observedAt returns where the observed time of the record appended at
// b[at:] is: after the field's tag, the record's length, its time field
// (a tag and 8 bytes) and the observed time's tag.
func observedAt(b []byte, at int) int {
	_, n := protowire.ConsumeVarint(b[at+1:])
	return at + 1 + n + 9 + 1
}

// setObserved writes t as the observed time of the records whose
// observed times are at offsets in b.
func setObserved(b []byte, offsets []int32, t time.Time) {
	v := uint64(t.UnixNano())
	for _, o := range offsets {
		binary.LittleEndian.PutUint64(b[o:], v)
	}
}

// severity is every record's severity number and text.
var severity = func() []byte {
	b := protowire.AppendTag(nil, lrSeverityNumber, protowire.VarintType)
	b = protowire.AppendVarint(b, severityInfo)
	b = protowire.AppendTag(b, lrSeverityText, protowire.BytesType)
	return protowire.AppendString(b, "INFO")
}()

// frame writes the request's framing (resource, scope and the lengths
// around the records) into the room in front of the records in buf and
// returns the request body, a tail of buf. It only reads e, so it needs
// no lock.
func (e *logEncoder) frame(buf []byte) []byte {
	room := e.room()
	records := len(buf) - room
	scopeLogsLen := 1 + protowire.SizeBytes(len(e.scope)) + records
	resourceLogsLen := len(e.head) + 1 + protowire.SizeBytes(scopeLogsLen)
	start := room - (protowire.SizeTag(reqResourceLogs) + protowire.SizeVarint(uint64(resourceLogsLen)) + len(e.head) +
		protowire.SizeTag(rlScopeLogs) + protowire.SizeVarint(uint64(scopeLogsLen)) +
		protowire.SizeTag(slScope) + protowire.SizeBytes(len(e.scope)))
	h := protowire.AppendTag(buf[start:start], reqResourceLogs, protowire.BytesType)
	h = protowire.AppendVarint(h, uint64(resourceLogsLen))
	h = append(h, e.head...)
	h = protowire.AppendTag(h, rlScopeLogs, protowire.BytesType)
	h = protowire.AppendVarint(h, uint64(scopeLogsLen))
	h = protowire.AppendTag(h, slScope, protowire.BytesType)
	protowire.AppendBytes(h, e.scope)
	return buf[start:]
}

// fixLength writes the length of the message that follows the two bytes
// reserved for it at b[at:at+2], moving the message when its length takes
// another number of bytes than two.
func fixLength(b []byte, at int) []byte {
	l := len(b) - at - 2
	size := protowire.SizeVarint(uint64(l))
	switch {
	case size < 2:
		copy(b[at+1:], b[at+2:])
		b = b[:len(b)-1]
	case size > 2:
		b = append(b, make([]byte, size-2)...)
		copy(b[at+size:], b[at+2:at+2+l])
	}
	protowire.AppendVarint(b[at:at], uint64(l))
	return b
}
