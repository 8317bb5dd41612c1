package sync

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// The wire: after the handshake every message is one frame,
//
//	length uint32 | seq uint64 | AES-256-GCM(json, nonce = seq, aad = seq)
//
// length counts seq and the sealed bytes, at most maxFrame. The key comes
// from the handshake's session key, so a frame captured in one session
// means nothing in the next; within a session seq counts from 1 and the
// receiver takes only the next one, so a frame replayed, dropped or
// reordered ends the connection.

// message is one frame on the wire.
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
	// entries of one message: well under maxFrame (a flow is about 150
	// bytes of JSON), so a table of any size goes in parts.
	resyncChunk  = 2048
	persistChunk = 4096
	// maxFrame bounds a frame; a longer one ends the connection.
	maxFrame = 1 << 20
)

var (
	errFormat = errors.New("not a message frame")
	errAuth   = errors.New("message failed authentication")
	errReplay = errors.New("message out of sequence: replayed, dropped or reordered")
)

// sessionAEAD is the cipher of a session's frames, from its key.
func sessionAEAD(session []byte) cipher.AEAD {
	m := hmac.New(sha256.New, session)
	m.Write([]byte("directord sync frames v2"))
	block, _ := aes.NewCipher(m.Sum(nil)) // 32 bytes: AES-256
	aead, _ := cipher.NewGCM(block)
	return aead
}

// sealer writes a session's frames.
type sealer struct {
	aead cipher.AEAD
	seq  uint64
}

// seal is m as a frame, stamped with now.
func (s *sealer) seal(m message, now time.Time) []byte {
	m.At = now.UnixMicro()
	b, _ := json.Marshal(m)
	s.seq++
	frame := make([]byte, 12, 12+len(b)+s.aead.Overhead())
	binary.BigEndian.PutUint64(frame[4:12], s.seq)
	frame = s.aead.Seal(frame, nonce(s.seq), b, frame[4:12])
	binary.BigEndian.PutUint32(frame[:4], uint32(len(frame)-4))
	return frame
}

func nonce(seq uint64) []byte {
	n := make([]byte, 12)
	binary.BigEndian.PutUint64(n[4:], seq)
	return n
}

// opener reads a session's frames.
type opener struct {
	aead cipher.AEAD
	last uint64
}

// open checks a frame (without its length) and reads its message. An
// errAuth, errFormat or errReplay means the peer cannot be trusted; a JSON
// error only that this message is lost.
func (o *opener) open(frame []byte) (message, error) {
	if len(frame) < 8+o.aead.Overhead() {
		return message{}, errFormat
	}
	seq := binary.BigEndian.Uint64(frame[:8])
	if seq != o.last+1 {
		return message{}, fmt.Errorf("%w (got %d after %d)", errReplay, seq, o.last)
	}
	b, err := o.aead.Open(nil, nonce(seq), frame[8:], frame[:8])
	if err != nil {
		return message{}, errAuth
	}
	o.last = seq
	var m message
	err = json.Unmarshal(b, &m)
	return m, err
}

// readFrame reads one frame's seq and sealed bytes.
func readFrame(r io.Reader) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxFrame {
		return nil, fmt.Errorf("%w: %d bytes, over %d", errFormat, size, maxFrame)
	}
	b := make([]byte, size)
	_, err := io.ReadFull(r, b)
	return b, err
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
