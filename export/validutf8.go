package export

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/grain-ebpf/grain/pipeline"
)

// Attribute values come from the kernel (a comm, an interface name) and
// so from whoever names a program or a device. Prometheus refuses a whole
// scrape over one label value that is not UTF-8, and an OTLP collector a
// whole request, so every value is mapped with pipeline.ValidUTF8 (invalid
// bytes as \xNN) before it reaches an exporter. The meter does it for
// every observation; newResource and the log encoder for theirs.

// validMeter is a meter whose callbacks observe only valid UTF-8
// attribute values.
type validMeter struct{ metric.Meter }

func (m validMeter) RegisterCallback(f metric.Callback, instruments ...metric.Observable) (metric.Registration, error) {
	return m.Meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		return f(ctx, validObserver{o})
	}, instruments...)
}

// validObserver maps the attribute values of each observation.
type validObserver struct{ metric.Observer }

func (o validObserver) ObserveInt64(inst metric.Int64Observable, v int64, opts ...metric.ObserveOption) {
	o.Observer.ObserveInt64(inst, v, validAttributes(opts))
}

func (o validObserver) ObserveFloat64(inst metric.Float64Observable, v float64, opts ...metric.ObserveOption) {
	o.Observer.ObserveFloat64(inst, v, validAttributes(opts))
}

// validAttributes resolves opts to their attribute set, mapped.
func validAttributes(opts []metric.ObserveOption) metric.MeasurementOption {
	set := metric.NewObserveConfig(opts).Attributes()
	if validSet(&set) {
		return metric.WithAttributeSet(set)
	}
	return metric.WithAttributeSet(attribute.NewSet(validKeyValues(&set)...))
}

func validSet(set *attribute.Set) bool {
	for it := set.Iter(); it.Next(); {
		if _, changed := validKeyValue(it.Attribute()); changed {
			return false
		}
	}
	return true
}

// validKeyValue maps kv's value, and its key (policies name their
// labels, so keys are valid already unless a bug lets one through).
func validKeyValue(kv attribute.KeyValue) (attribute.KeyValue, bool) {
	key := attribute.Key(pipeline.ValidUTF8(string(kv.Key)))
	changed := key != kv.Key
	switch kv.Value.Type() {
	case attribute.STRING:
		s := kv.Value.AsString()
		if v := pipeline.ValidUTF8(s); v != s || changed {
			return key.String(v), true
		}
	case attribute.STRINGSLICE:
		ss := kv.Value.AsStringSlice()
		for i, s := range ss {
			if v := pipeline.ValidUTF8(s); v != s {
				ss[i], changed = v, true
			}
		}
		if changed {
			return key.StringSlice(ss), true
		}
	default:
		if changed {
			return attribute.KeyValue{Key: key, Value: kv.Value}, true
		}
	}
	return kv, false
}

// validKeyValues maps every attribute of set.
func validKeyValues(set *attribute.Set) []attribute.KeyValue {
	kvs := set.ToSlice()
	for i := range kvs {
		kvs[i], _ = validKeyValue(kvs[i])
	}
	return kvs
}

// validResource maps the attribute values of res (the host name, the
// OTEL_RESOURCE_ATTRIBUTES given).
func validResource(res *resource.Resource) *resource.Resource {
	set := res.Set()
	if validSet(set) {
		return res
	}
	return resource.NewWithAttributes(res.SchemaURL(), validKeyValues(set)...)
}
