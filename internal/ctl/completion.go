package ctl

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// words are the second words of the commands that take one.
var words = map[string][]string{
	"lvs":     {"save"},
	"cluster": {"leave", "rejoin", "certs"},
	"rs":      {"drain", "enable", "disable", "weight"},
	"vs":      {"add", "del"},
	"bgp":     {"withdraw", "announce"},
}

// completion is the completion script for shell, generated from the
// command table so that it cannot fall behind it.
func completion(shell string) (string, error) {
	names := append(slices.Sorted(maps.Keys(commands)), "completion", "help")
	// What may follow each command: its second words and its own flags;
	// the shells differ only in how they say it.
	type follow struct{ name, words string }
	var follows []follow
	for _, n := range slices.Sorted(maps.Keys(commands)) {
		w := slices.Clone(words[n])
		for _, f := range commands[n].flags {
			if len(f) == 1 {
				w = append(w, "-"+f) // -f FILE
			} else {
				w = append(w, "--"+f)
			}
		}
		follows = append(follows, follow{n, strings.Join(append(w, "--socket", "--help"), " ")})
	}
	follows = append(follows, follow{"completion", "bash zsh"})
	var b strings.Builder
	switch shell {
	case "bash":
		b.WriteString("# bash completion for directorctl (directorctl completion bash)\n")
		b.WriteString("_directorctl() {\n\tlocal cur=\"${COMP_WORDS[COMP_CWORD]}\"\n")
		fmt.Fprintf(&b, "\tif [ \"$COMP_CWORD\" -eq 1 ]; then\n\t\tCOMPREPLY=($(compgen -W %q -- \"$cur\"))\n\t\treturn\n\tfi\n",
			strings.Join(append(names, "--socket", "--version", "--help"), " "))
		b.WriteString("\tcase \"${COMP_WORDS[1]}\" in\n")
		for _, f := range follows {
			fmt.Fprintf(&b, "\t%s) COMPREPLY=($(compgen -W %q -- \"$cur\")) ;;\n", f.name, f.words)
		}
		b.WriteString("\tesac\n}\ncomplete -F _directorctl directorctl\n")
	case "zsh":
		b.WriteString("#compdef directorctl\n# zsh completion for directorctl (directorctl completion zsh)\n")
		b.WriteString("_directorctl() {\n")
		fmt.Fprintf(&b, "\tif (( CURRENT == 2 )); then\n\t\tcompadd -- %s --socket --version --help\n\t\treturn\n\tfi\n", strings.Join(names, " "))
		b.WriteString("\tcase $words[2] in\n")
		for _, f := range follows {
			fmt.Fprintf(&b, "\t%s) compadd -- %s ;;\n", f.name, f.words)
		}
		b.WriteString("\tesac\n}\n_directorctl \"$@\"\n")
	default:
		return "", usageError("usage: directorctl completion bash|zsh")
	}
	return b.String(), nil
}
