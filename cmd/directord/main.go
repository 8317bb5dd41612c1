// Command directord is the director daemon: VRRP for the virtual addresses,
// the kernel load balancer, health checks and the replicated table.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"

	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/daemon"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("directord", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // said below, on the right stream
	f := daemon.Flags(fs)
	file, check, showVersion := &f.ConfigFile, &f.Check, &f.Version
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		// Asked for: on stdout, and no error.
		fs.SetOutput(stdout)
		fs.Usage()
		return 0
	} else if err != nil {
		fmt.Fprintln(stderr, "directord:", err)
		fs.SetOutput(stderr)
		fs.Usage()
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "directord: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "directord", version)
		return 0
	}
	if *check {
		return checkConfig(*file, stdout, stderr)
	}

	// One processor for Go code unless GOMAXPROCS says otherwise. directord
	// waits on events; with a second processor idle, the runtime wakes a
	// thread to look for work at every advert handed from one goroutine
	// to another, and that thread goes back to sleep: measured at 10 ms
	// adverts, four context switches per advert and twice the CPU of one
	// processor (docs/benchmarks.md). Preemption every 10 ms still keeps
	// a long computation from holding up an advert for longer.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}

	// For developers: a CPU profile of the whole run (see README).
	if path := os.Getenv("DIRECTORD_CPUPROFILE"); path != "" {
		// %p: the pid, so that both directors of a lab can profile at once.
		path = strings.ReplaceAll(path, "%p", strconv.Itoa(os.Getpid()))
		if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{})
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
	}()
	// SIGUSR1 and SIGUSR2 dump the status, as keepalived's data and
	// statistics dumps.
	usr := make(chan os.Signal, 1)
	signal.Notify(usr, syscall.SIGUSR1, syscall.SIGUSR2)
	dump := make(chan string)
	go func() {
		for s := range usr {
			kind := "data"
			if s == syscall.SIGUSR2 {
				kind = "stats"
			}
			select {
			case dump <- kind:
			case <-ctx.Done():
				return
			}
		}
	}()
	err := daemon.Run(ctx, daemon.Options{ConfigFile: *file, Version: version, Reload: reload, Dump: dump, Log: stderr})
	if err != nil {
		printError(stderr, err)
		return 1
	}
	return 0
}

func checkConfig(file string, stdout, stderr io.Writer) int {
	if _, err := daemon.CheckConfig(file); err != nil {
		printError(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: configuration is valid\n", file)
	return 0
}

func printError(w io.Writer, err error) {
	var ce *config.Error
	if errors.As(err, &ce) {
		for _, p := range ce.Problems {
			fmt.Fprintln(w, p)
		}
		fmt.Fprintf(w, "directord: %d problem(s) in the configuration\n", len(ce.Problems))
		return
	}
	fmt.Fprintln(w, "directord:", err)
}
