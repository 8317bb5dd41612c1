package healthcheck

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A program runs as the script user, with only PATH in its environment,
// its output capped, and no more at once than the bound.
func TestPrograms(t *testing.T) {
	ctx := context.Background()
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p := NewPrograms(&syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, 4)
		out, err := p.Run(ctx, []string{"/usr/bin/id", "-u"})
		if err != nil || strings.TrimSpace(string(out)) != u.Uid {
			t.Fatalf("id -u as nobody: %q %v", out, err)
		}
	}
	t.Setenv("DIRECTORD_SECRET", "s3cret")
	p := NewPrograms(nil, 1)
	out, err := p.Run(ctx, []string{"/usr/bin/env"})
	if err != nil || strings.TrimSpace(string(out)) != minimalPath {
		t.Fatalf("environment: %q %v", out, err)
	}
	out, err = p.Run(ctx, []string{"/usr/bin/head", "-c", "300000", "/dev/zero"})
	if err != nil || len(out) != MaxOutput {
		t.Fatalf("%d bytes of output kept, %v", len(out), err)
	}
	var ee *exec.ExitError
	if _, err := p.Run(ctx, []string{"/bin/false"}); !errors.As(err, &ee) {
		t.Fatalf("a failing program: %v", err)
	}
	// One slot: a second program waits, and gives up at its deadline.
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		close(started)
		_, err := p.Run(ctx, []string{"/bin/sleep", "1"})
		done <- err
	}()
	<-started
	deadline := time.Now().Add(5 * time.Second)
	for len(p.slots) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := p.Run(short, []string{"/bin/true"}); !errors.Is(err, ErrBusy) {
		t.Fatalf("a program beyond the bound: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
