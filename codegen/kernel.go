package codegen

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode"
)

// Kernel holds one value in the layout a program reads it: a struct the
// bpf package generates from the C sources (bpf.Rule, bpf.Content, ...).
// It adds only the JSON form `grain compile` prints: every field the C
// struct has, named in snake_case, but the padding (always zero). 64-bit
// words are hex strings; an array is a string of its elements, uint8s as
// hex pairs and four or more equal neighbours as "value*count", or, for arrays of
// structs, a JSON array that ends at its last nonzero element (the rest
// are zero).
type Kernel[T any] struct {
	Value T
}

// MarshalJSON writes the value as described at Kernel.
func (k Kernel[T]) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	if err := writeKernel(&b, reflect.ValueOf(k.Value)); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// minRun is the fewest equal neighbours written as "value*count".
const minRun = 4

func writeKernel(b *bytes.Buffer, v reflect.Value) error {
	switch v.Kind() {
	case reflect.Struct:
		b.WriteByte('{')
		first := true
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if !f.IsExported() || strings.HasPrefix(f.Name, "Pad") {
				continue
			}
			if !first {
				b.WriteByte(',')
			}
			first = false
			name, _ := json.Marshal(snakeCase(f.Name))
			b.Write(name)
			b.WriteByte(':')
			if err := writeKernel(b, v.Field(i)); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	case reflect.Array, reflect.Slice:
		elem := v.Type().Elem()
		if elem.Kind() == reflect.Struct || elem.Kind() == reflect.Array {
			n := v.Len()
			for n > 0 && v.Index(n-1).IsZero() {
				n--
			}
			b.WriteByte('[')
			for i := 0; i < n; i++ {
				if i > 0 {
					b.WriteByte(',')
				}
				if err := writeKernel(b, v.Index(i)); err != nil {
					return err
				}
			}
			b.WriteByte(']')
			return nil
		}
		var s strings.Builder
		for i := 0; i < v.Len(); {
			j := i
			for j+1 < v.Len() && v.Index(j+1).Equal(v.Index(i)) {
				j++
			}
			if s.Len() > 0 {
				s.WriteByte(' ')
			}
			if j-i+1 < minRun {
				j = i
			}
			s.WriteString(kernelScalar(v.Index(i), true))
			if j > i {
				s.WriteString("*" + strconv.Itoa(j-i+1))
			}
			i = j + 1
		}
		q, _ := json.Marshal(s.String())
		b.Write(q)
	case reflect.Uint64:
		q, _ := json.Marshal(kernelScalar(v, false))
		b.Write(q)
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint8, reflect.Uint16, reflect.Uint32:
		b.WriteString(kernelScalar(v, false))
	default:
		return fmt.Errorf("codegen: no kernel form for %s", v.Type())
	}
	return nil
}

// kernelScalar formats one integer: 64-bit words in hex, bytes of an array
// as hex pairs, the rest in decimal.
func kernelScalar(v reflect.Value, inArray bool) string {
	switch v.Kind() {
	case reflect.Uint64:
		return "0x" + strconv.FormatUint(v.Uint(), 16)
	case reflect.Uint8:
		if inArray {
			return fmt.Sprintf("%02x", v.Uint())
		}
		return strconv.FormatUint(v.Uint(), 10)
	case reflect.Int8:
		if inArray {
			return fmt.Sprintf("%02x", uint8(v.Int()))
		}
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Uint16, reflect.Uint32:
		return strconv.FormatUint(v.Uint(), 10)
	default:
		return strconv.FormatInt(v.Int(), 10)
	}
}

// snakeCase turns a Go field name (QuickPattern, Pre1Index, N_src4) into
// the JSON key (quick_pattern, pre1_index, n_src4).
func snakeCase(name string) string {
	var b strings.Builder
	for i, r := range name {
		if unicode.IsUpper(r) {
			if i > 0 && name[i-1] != '_' {
				b.WriteByte('_')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}
