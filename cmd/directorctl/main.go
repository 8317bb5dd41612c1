// Command directorctl asks a running directord what it is doing, over its
// status socket.
package main

import (
	"os"

	"github.com/directord/directord/internal/ctl"
)

// version is set by the build (make build: -X main.version=...).
var version = "dev"

func main() { os.Exit(ctl.Main(version, os.Args[1:], os.Stdout, os.Stderr)) }
