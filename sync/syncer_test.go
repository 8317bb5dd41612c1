package sync

import (
	"bytes"
	"net"
	"testing"
)

func TestHandshake(t *testing.T) {
	for _, tc := range []struct {
		name       string
		keyA, keyB string
		ok         bool
	}{
		{"same key", "0123456789abcdef", "0123456789abcdef", true},
		{"another key", "0123456789abcdef", "fedcba9876543210", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// TCP on loopback: both ends write first, which needs buffers.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			a, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			b, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			master := &Syncer{cfg: Config{Key: []byte(tc.keyA)}}
			backup := &Syncer{cfg: Config{Key: []byte(tc.keyB)}}
			type res struct {
				key []byte
				err error
			}
			ch := make(chan res, 1)
			go func() {
				k, err := backup.handshake(b, false)
				if err != nil {
					b.Close() // as receive does: the master's read ends
				}
				ch <- res{k, err}
			}()
			km, errM := master.handshake(a, true)
			rb := <-ch
			if tc.ok {
				if errM != nil || rb.err != nil || !bytes.Equal(km, rb.key) {
					t.Fatalf("master %v, backup %v, keys equal %v", errM, rb.err, bytes.Equal(km, rb.key))
				}
				return
			}
			if errM == nil || rb.err == nil {
				t.Fatalf("a wrong key was accepted: master %v, backup %v", errM, rb.err)
			}
		})
	}
}
