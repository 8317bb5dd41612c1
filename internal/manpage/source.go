package manpage

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/directord/directord/internal/ctl"
	"github.com/directord/directord/internal/daemon"
)

// Dir is where the pages are kept, from the repository's root.
const Dir = "docs/man"

// FromRepo reads the sources from the repository at root.
func FromRepo(root string) (Sources, error) {
	conf, err := os.ReadFile(filepath.Join(root, "docs", "configuration.md"))
	if err != nil {
		return Sources{}, fmt.Errorf("read the configuration's documentation: %w", err)
	}
	fs := flag.NewFlagSet("directord", flag.ContinueOnError)
	daemon.Flags(fs)
	var flags []Flag
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		if f.DefValue != "" && f.DefValue != "false" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		flags = append(flags, Flag{Name: f.Name, Arg: arg, Usage: usage})
	})
	// The version is left out: a page that changed with every commit
	// would always differ from the one committed.
	return Sources{Version: "", DirectordArgs: flags, CtlUsage: ctl.Usage(), Configuration: string(conf)}, nil
}
