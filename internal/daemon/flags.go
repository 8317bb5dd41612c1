package daemon

import "flag"

// CommandLine is what directord's options say.
type CommandLine struct {
	ConfigFile string
	Check      bool
	Version    bool
}

// Flags defines directord's options on fs: the one definition the
// program and its manual page (internal/manpage) both read.
func Flags(fs *flag.FlagSet) *CommandLine {
	var c CommandLine
	fs.StringVar(&c.ConfigFile, "c", "/etc/directord/directord.toml", "the configuration `file`")
	fs.BoolVar(&c.Check, "t", false, "check the configuration file and exit: 0 valid, 1 not. Every problem is listed with its file, line and key; a keepalived.conf is recognised and pointed at directorctl convert")
	fs.BoolVar(&c.Version, "version", false, "print the version and exit")
	return &c
}
