package status

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/directord/directord/internal/api"
)

func serve(t *testing.T, doc DocumentFunc) (*Server, *Client) {
	t.Helper()
	s := NewServer(slog.New(slog.DiscardHandler), doc)
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return s, NewClient(sock)
}

// The document is typed; a section comes alone or not at all.
func TestServerDocument(t *testing.T) {
	var mu sync.Mutex
	var asked []string
	_, c := serve(t, func(section string) api.Document {
		mu.Lock()
		defer mu.Unlock()
		asked = append(asked, section)
		return api.Document{Node: &api.NodeStatus{Name: "lb1"}, VRRP: &api.VRRPStatus{Instances: []api.VRRPInstance{{Name: "VI_1", State: api.StateMaster}}}}
	})
	var doc api.Document
	if err := c.Get(context.Background(), "/v1/status", &doc); err != nil {
		t.Fatal(err)
	}
	if doc.APIVersion != api.Version || doc.Node.Name != "lb1" || doc.VRRP.Instances[0].State != "MASTER" || doc.LVS != nil {
		t.Fatalf("document %+v", doc)
	}
	raw, err := c.Raw(context.Background(), "/v1/status/node")
	if err != nil || strings.TrimSpace(string(raw)) != `{"name":"lb1","version":"","pid":0,"started_at":"0001-01-01T00:00:00Z","uptime":""}` {
		t.Fatalf("node section: %s %v", raw, err)
	}
	err = c.Get(context.Background(), "/v1/status/cluster", &struct{}{})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || ae.Error() != `no status section "cluster"` {
		t.Fatalf("absent section: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(asked, ",") != ",node,cluster" {
		t.Fatalf("sections asked for: %q", asked)
	}
}

// A handler reads at most MaxRequestBody; errors carry their details.
func TestServerHandlers(t *testing.T) {
	s, c := serve(t, func(string) api.Document { return api.Document{} })
	s.Handle("POST /v1/echo", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			WriteError(w, http.StatusRequestEntityTooLarge, err, "read", "more")
			return
		}
		WriteJSON(w, http.StatusOK, n)
	})
	var n int64
	if err := c.Post(context.Background(), "/v1/echo", strings.Repeat("x", 1000), &n); err != nil || n != 1002 {
		t.Fatalf("small body: %d %v", n, err)
	}
	if MaxRequestBody > 1<<20 {
		t.Fatalf("requests may be %d bytes", MaxRequestBody)
	}
	err := c.Post(context.Background(), "/v1/echo", strings.Repeat("x", 2<<20), &n)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusRequestEntityTooLarge || !strings.HasSuffix(ae.Error(), ":\n  read\n  more") {
		t.Fatalf("big body: %v", err)
	}
	// A table for directorctl apply may be larger, within its own cap.
	s.HandleTable("POST /v1/table", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			WriteError(w, http.StatusRequestEntityTooLarge, err)
			return
		}
		WriteJSON(w, http.StatusOK, n)
	})
	if err := c.Post(context.Background(), "/v1/table", strings.Repeat("x", 2<<20), &n); err != nil || n != 2<<20+2 {
		t.Fatalf("a 2 MiB table: %d %v", n, err)
	}
	if err := c.Post(context.Background(), "/v1/table", strings.Repeat("x", MaxTableBody), &n); !errors.As(err, &ae) {
		t.Fatalf("a table over the cap: %v", err)
	}
}

// A client without a daemon says so.
func TestClientNotRunning(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	err := NewClient(sock).Get(context.Background(), "/v1/status", &struct{}{})
	if !errors.Is(err, ErrNotRunning) {
		t.Fatalf("no socket: %v", err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // the file stays, nothing answers
	if err := NewClient(sock).Get(context.Background(), "/v1/status", &struct{}{}); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("stale socket: %v", err)
	}
	// Listen replaces a stale socket but never a live one.
	ln, err = Listen(sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer ln.Close()
	go http.Serve(ln, http.NotFoundHandler())
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "another directord is answering") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}
}
