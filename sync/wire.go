package sync

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"
)

// The wire: after the handshake every message is one line,
//
//	hex(HMAC-SHA256(session key, json)) SP json LF
//
// at most maxLine bytes long.

// message is one line on the wire.
type message struct {
	Op      string         `json:"op"` // events, resync, persist (flow, del: one event)
	Flow    *Flow          `json:"f,omitempty"`
	Flows   []Flow         `json:"fs,omitempty"`
	Events  []event        `json:"es,omitempty"`
	Persist []PersistEntry `json:"ps,omitempty"`
	// More: a resync goes on in the next message; the backup removes the
	// flows the master no longer has only after the last part.
	More bool  `json:"more,omitempty"`
	At   int64 `json:"at"` // sender's clock, unix microseconds
}

// event is a flow to write, or to delete.
type event struct {
	Del  bool `json:"d,omitempty"`
	Flow Flow `json:"f"`
	// At is when the master's conntrack reported it (unix microseconds,
	// the master's clock): the start of the sync lag.
	At int64 `json:"at,omitempty"`
}

// oldest is the earliest At of evs, or 0 when none is stamped.
func oldest(evs []event) int64 {
	var t int64
	for _, e := range evs {
		if e.At != 0 && (t == 0 || e.At < t) {
			t = e.At
		}
	}
	return t
}

const (
	// maxEvents bounds the events of one message.
	maxEvents = 512
	// resyncChunk and persistChunk bound the flows and persistence
	// entries of one message: well under maxLine (a flow is about 150
	// bytes of JSON), so a table of any size goes in parts.
	resyncChunk  = 2048
	persistChunk = 4096
	// maxLine bounds a line; a longer one ends the connection.
	maxLine = 1 << 20
)

var (
	errFormat = errors.New("not a message line")
	errAuth   = errors.New("message failed authentication")
)

// codec frames messages with the session key.
type codec struct{ key []byte }

// encode is m as a line, stamped with now.
func (c codec) encode(m message, now time.Time) []byte {
	m.At = now.UnixMicro()
	b, _ := json.Marshal(m)
	mac := hmac.New(sha256.New, c.key)
	mac.Write(b)
	line := make([]byte, 0, 2*sha256.Size+2+len(b))
	line = hex.AppendEncode(line, mac.Sum(nil))
	line = append(line, ' ')
	line = append(line, b...)
	return append(line, '\n')
}

// decode checks a line (without its newline) and reads its message. An
// errAuth or errFormat means the peer cannot be trusted; a JSON error
// only that this message is lost.
func (c codec) decode(line []byte) (message, error) {
	const macLen = 2 * sha256.Size
	if len(line) < macLen+1 || line[macLen] != ' ' {
		return message{}, errFormat
	}
	want := make([]byte, sha256.Size)
	if _, err := hex.Decode(want, line[:macLen]); err != nil {
		return message{}, errFormat
	}
	mac := hmac.New(sha256.New, c.key)
	mac.Write(line[macLen+1:])
	if !hmac.Equal(want, mac.Sum(nil)) {
		return message{}, errAuth
	}
	var m message
	err := json.Unmarshal(line[macLen+1:], &m)
	return m, err
}

// batches takes first and whatever else is queued now, in messages of up
// to maxEvents: one MAC and one decode for all of them, and one batch of
// writes on the backup.
func batches(first event, queue <-chan event) [][]event {
	evs := append(make([]event, 0, min(len(queue)+1, maxEvents)), first)
	var out [][]event
	for n := len(queue); n > 0; n-- {
		if len(evs) == maxEvents {
			out = append(out, evs)
			evs = make([]event, 0, min(n, maxEvents))
		}
		evs = append(evs, <-queue)
	}
	return append(out, evs)
}

// resyncMessages is the whole table in parts of resyncChunk flows; an
// empty table is one empty message, so that the backup clears its own.
func resyncMessages(flows []Flow) []message {
	var out []message
	for len(flows) > resyncChunk {
		out = append(out, message{Op: "resync", Flows: flows[:resyncChunk], More: true})
		flows = flows[resyncChunk:]
	}
	return append(out, message{Op: "resync", Flows: flows})
}

// persistMessages are the persistence entries in parts.
func persistMessages(es []PersistEntry) []message {
	var out []message
	for len(es) > 0 {
		n := min(len(es), persistChunk)
		out = append(out, message{Op: "persist", Persist: es[:n]})
		es = es[n:]
	}
	return out
}

// rateWindow allows at most max events in each one-second window.
type rateWindow struct {
	max   int
	start time.Time
	n     int
}

func (w *rateWindow) allow(now time.Time) bool {
	if now.Sub(w.start) >= time.Second {
		w.start, w.n = now, 0
	}
	w.n++
	return w.n <= w.max
}
