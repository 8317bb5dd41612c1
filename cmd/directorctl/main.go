// Command directorctl asks a running directord what it is doing, over its
// status socket.
package main

import (
	"os"

	"github.com/directord/directord/internal/ctl"
)

func main() { os.Exit(ctl.Main(os.Args[1:], os.Stdout, os.Stderr)) }
