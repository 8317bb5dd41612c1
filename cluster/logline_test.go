package cluster

import (
	"log/slog"
	"reflect"
	"testing"
)

// Library lines become records with their own level and message, not a
// whole line nested in an info message.
func TestParseLibLine(t *testing.T) {
	for _, tc := range []struct {
		line, component string
		level           slog.Level
		msg             string
		attrs           []any
	}{
		{`{"@level":"warn","@message":"no known peers, aborting election","@module":"raft","@timestamp":"2026-12-03T08:50:39.723Z","tries":2}`, "raft",
			slog.LevelWarn, "no known peers, aborting election", []any{"tries", float64(2)}},
		{`{"@level":"error","@message":"failed to contact","server-id":"lb2"}`, "raft", slog.LevelError, "failed to contact", []any{"server-id", "lb2"}},
		{"2026/12/03 08:50:39 [WARN] memberlist: Was able to connect to lb2 over TCP but UDP probes failed", "memberlist",
			slog.LevelWarn, "Was able to connect to lb2 over TCP but UDP probes failed", nil},
		{"2026/12/03 08:50:39 [DEBUG] memberlist: Stream connection from=192.0.2.12:7946", "memberlist", slog.LevelDebug, "Stream connection from=192.0.2.12:7946", nil},
		{"something else", "memberlist", slog.LevelInfo, "something else", nil},
	} {
		level, msg, attrs := parseLibLine(tc.line, tc.component)
		if level != tc.level || msg != tc.msg || !reflect.DeepEqual(attrs, tc.attrs) {
			t.Errorf("%s:\n got %v %q %v\nwant %v %q %v", tc.line, level, msg, attrs, tc.level, tc.msg, tc.attrs)
		}
	}
}
