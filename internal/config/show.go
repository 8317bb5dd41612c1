package config

import (
	"encoding"
	"reflect"
	"strings"
	"time"
)

// Shown is cfg as directorctl config prints it: the JSON of the file's
// keys, with durations written as the file writes them ("1s", not
// nanoseconds) and empty lists as [] rather than null. Fields the JSON
// leaves out (secrets: json:"-") stay out.
func Shown(cfg *Config) any { return shown(reflect.ValueOf(cfg)) }

var durationType = reflect.TypeFor[time.Duration]()

func shown(v reflect.Value) any {
	if v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if v.Type() == durationType {
		return time.Duration(v.Int()).String()
	}
	// Addresses and prefixes write themselves as text.
	if v.CanInterface() {
		if m, ok := v.Interface().(encoding.TextMarshaler); ok && v.Kind() != reflect.Slice {
			return m
		}
	}
	switch v.Kind() {
	case reflect.Struct:
		out := map[string]any{}
		for i := range v.NumField() {
			f := v.Type().Field(i)
			tag := f.Tag.Get("json")
			if !f.IsExported() || tag == "-" {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			if name == "" {
				name = f.Name
			}
			fv := v.Field(i)
			if strings.Contains(opts, "omitempty") && fv.IsZero() || strings.Contains(opts, "omitzero") && fv.IsZero() {
				continue
			}
			out[name] = shown(fv)
		}
		return out
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return v.Interface() // bytes: base64, as encoding/json does
		}
		out := make([]any, v.Len())
		for i := range out {
			out[i] = shown(v.Index(i))
		}
		return out
	case reflect.Map:
		out := map[string]any{}
		for _, k := range v.MapKeys() {
			out[k.String()] = shown(v.MapIndex(k))
		}
		return out
	}
	return v.Interface()
}
