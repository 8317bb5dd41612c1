// Package status serves directord's versioned JSON API on a unix socket and
// is the client directorctl uses to read it.
//
// The document at GET /v1/status is assembled from sections that the
// daemon's subsystems register; each section is a function returning a JSON
// value, called on every request so that the answer is always current.
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
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// APIVersion is the version of the JSON documents; it appears in their
// paths (/v1/...) and in every status document.
const APIVersion = 1

// Server holds the registered sections and extra handlers.
type Server struct {
	log      *slog.Logger
	mux      *http.ServeMux
	mu       sync.Mutex
	sections map[string]func() any
	order    []string
}

func NewServer(log *slog.Logger) *Server {
	s := &Server{log: log, mux: http.NewServeMux(), sections: map[string]func() any{}}
	s.mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, s.Document())
	})
	s.mux.HandleFunc("GET /v1/status/{section}", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		fn, ok := s.sections[r.PathValue("section")]
		s.mu.Unlock()
		if !ok {
			WriteError(w, http.StatusNotFound, fmt.Errorf("no status section %q", r.PathValue("section")))
			return
		}
		WriteJSON(w, http.StatusOK, fn())
	})
	return s
}

// Register adds a section to the status document under name.
func (s *Server) Register(name string, fn func() any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.sections[name]; !dup {
		s.order = append(s.order, name)
	}
	s.sections[name] = fn
}

// Handle adds an endpoint, such as POST /v1/reload.
func (s *Server) Handle(pattern string, h http.HandlerFunc) { s.mux.HandleFunc(pattern, h) }

// Document returns the whole status document.
func (s *Server) Document() map[string]any {
	s.mu.Lock()
	fns := make(map[string]func() any, len(s.sections))
	for k, v := range s.sections {
		fns[k] = v
	}
	s.mu.Unlock()
	doc := map[string]any{"api_version": APIVersion}
	for name, fn := range fns {
		doc[name] = fn()
	}
	return doc
}

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

// ErrorBody is the JSON answer of a failed request.
type ErrorBody struct {
	Error   string   `json:"error"`
	Details []string `json:"details,omitempty"`
}

// WriteError answers with an ErrorBody.
func WriteError(w http.ResponseWriter, code int, err error, details ...string) {
	WriteJSON(w, code, ErrorBody{Error: err.Error(), Details: details})
}
