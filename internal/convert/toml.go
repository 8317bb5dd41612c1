package convert

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// table is a TOML table being written: its keys in order, then the
// tables under it.
type table struct {
	header  string // "[node]", "[[vrrp_instance]]"...
	comment []string
	keys    []kv
	subs    []*table
	indent  string
}

type kv struct{ key, value, comment string }

func (t *table) set(key, value string) { t.keys = append(t.keys, kv{key: key, value: value}) }

// setNote writes key with a comment after it.
func (t *table) setNote(key, value, comment string) {
	t.keys = append(t.keys, kv{key: key, value: value, comment: comment})
}

func (t *table) has(key string) bool {
	for _, k := range t.keys {
		if k.key == key {
			return true
		}
	}
	return false
}

func (t *table) sub(header string) *table {
	s := &table{header: header, indent: t.indent + "  "}
	t.subs = append(t.subs, s)
	return s
}

func (t *table) write(b *strings.Builder) {
	if t.header != "" {
		b.WriteString("\n")
		for _, c := range t.comment {
			fmt.Fprintf(b, "%s# %s\n", t.indent, c)
		}
		fmt.Fprintf(b, "%s%s\n", t.indent, t.header)
	}
	for _, k := range t.keys {
		if k.comment != "" {
			fmt.Fprintf(b, "%s%s = %s  # %s\n", t.indent, k.key, k.value, k.comment)
		} else {
			fmt.Fprintf(b, "%s%s = %s\n", t.indent, k.key, k.value)
		}
	}
	for _, s := range t.subs {
		s.write(b)
	}
}

// str is s as a TOML basic string.
func str(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func strs(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = str(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func num(n int) string { return strconv.Itoa(n) }

func boolean(b bool) string { return strconv.FormatBool(b) }

// dur writes d as a Go duration without zero units: "5m", not "5m0s".
func dur(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return str(s)
}
