// Package status serves directord's versioned JSON API (package api) on a
// unix socket and is the client directorctl uses to read it.
//
// The document at GET /v1/status is built on every request by the
// daemon's DocumentFunc, so that the answer is always current; GET
// /v1/status/{section} asks it for that section alone.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/directord/directord/internal/api"
)

// DocumentFunc builds the status document: every section when section
// is "", else at least the one named.
type DocumentFunc func(section string) api.Document

// Server answers the API's requests.
type Server struct {
	log *slog.Logger
	mux *http.ServeMux
}

// NewServer serves the status document that doc builds.
func NewServer(log *slog.Logger, doc DocumentFunc) *Server {
	s := &Server{log: log, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		d := doc("")
		d.APIVersion = api.Version
		WriteJSON(w, http.StatusOK, d)
	})
	s.mux.HandleFunc("GET /v1/status/{section}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("section")
		d := doc(name)
		v, ok := d.Section(name)
		if !ok {
			WriteError(w, http.StatusNotFound, fmt.Errorf("no status section %q", name))
			return
		}
		WriteJSON(w, http.StatusOK, v)
	})
	return s
}

// Handle adds an endpoint, such as POST /v1/reload. Request bodies are
// capped at MaxRequestBody.
func (s *Server) Handle(pattern string, h http.HandlerFunc) { s.handle(pattern, MaxRequestBody, h) }

// HandleTable adds an endpoint that takes a whole load-balancer table
// (directorctl apply), capped at MaxTableBody.
func (s *Server) HandleTable(pattern string, h http.HandlerFunc) { s.handle(pattern, MaxTableBody, h) }

func (s *Server) handle(pattern string, limit int64, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		h(w, r)
	})
}

// ServeHTTP answers one request; for tests without a socket.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// MaxRequestBody bounds what a client may send.
const MaxRequestBody = 1 << 20

// MaxTableBody bounds a table of virtual servers for directorctl apply:
// ten thousand services of ten real servers each are about 40 MiB.
const MaxTableBody = 64 << 20

// Serve answers on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return ServeHTTP(ctx, ln, s.mux, s.log)
}

// ServeHTTP serves h on ln until ctx ends, then shuts down within half a
// second so that the daemon stops promptly on SIGTERM.
func ServeHTTP(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-errc
	return nil
}

// Listen creates the status socket at path: mode 0600, owned by root when
// run as root. A stale socket left by a crash is replaced; a live one
// (another daemon answering) is an error, so two daemons never share a path.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("status socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("status socket %s: another directord is answering there", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale status socket: %w", err)
	}
	// The umask closes the window between bind and chmod in which the
	// socket would be reachable with the default mode. It is process-wide,
	// which is why the daemon listens before it starts anything else.
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("status socket: %w", err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(path, 0, 0); err != nil {
			ln.Close()
			return nil, fmt.Errorf("status socket: %w", err)
		}
	}
	return ln, nil
}

// WriteJSON writes v as an indented JSON answer.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	// Compact: the health section alone is thousands of entries, and
	// directorctl indents what it prints for people.
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError answers with an api.ErrorBody.
func WriteError(w http.ResponseWriter, code int, err error, details ...string) {
	WriteJSON(w, code, api.ErrorBody{Error: err.Error(), Details: details})
}
