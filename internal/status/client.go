package status

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"

	"github.com/directord/directord/internal/api"
)

// ErrNotRunning means nothing answers on the status socket.
var ErrNotRunning = errors.New("directord is not running")

// Client talks to a daemon's status socket.
type Client struct {
	Socket string
	http   *http.Client
}

func NewClient(socket string) *Client {
	return &Client{
		Socket: socket,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
		}},
	}
}

// Get decodes the JSON answer at path (such as "/v1/status") into v.
func (c *Client) Get(ctx context.Context, path string, v any) error {
	return c.do(ctx, http.MethodGet, path, nil, v)
}

// Post sends body as JSON (nil for none) and decodes the answer into v.
func (c *Client) Post(ctx context.Context, path string, body, v any) error {
	return c.do(ctx, http.MethodPost, path, body, v)
}

// Raw returns the answer's body unparsed.
func (c *Client) Raw(ctx context.Context, path string) ([]byte, error) {
	var raw json.RawMessage
	err := c.do(ctx, http.MethodGet, path, nil, &raw)
	return raw, err
}

// APIError is a non-2xx answer.
type APIError struct {
	Status int
	api.ErrorBody
}

func (e *APIError) Error() string {
	if len(e.Details) == 0 {
		return e.ErrorBody.Error
	}
	return e.ErrorBody.Error + ":\n  " + strings.Join(e.Details, "\n  ")
}

func (c *Client) do(ctx context.Context, method, path string, body, v any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://directord"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.dialError(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		ae := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(data, &ae.ErrorBody) != nil || ae.ErrorBody.Error == "" {
			ae.ErrorBody.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return ae
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode answer of %s: %w", path, err)
	}
	return nil
}

func (c *Client) dialError(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%w (no socket at %s)", ErrNotRunning, c.Socket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w (nothing answers on %s)", ErrNotRunning, c.Socket)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%s: permission denied (the status socket is root's: run as root)", c.Socket)
	}
	return fmt.Errorf("status socket %s: %w", c.Socket, err)
}
