package ctl

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// words are the second words of the commands that take one.
var words = map[string][]string{
	"cluster": {"leave", "rejoin", "certs"},
	"rs":      {"drain", "enable", "disable", "weight"},
	"vs":      {"add", "del"},
}

// completion is the completion script for shell, generated from the
// command table so that it cannot fall behind it.
func completion(shell string) (string, error) {
	names := append(slices.Sorted(maps.Keys(commands)), "completion", "help")
	flagsOf := func(name string) string {
		var fs []string
		for _, f := range commands[name].flags {
			if len(f) == 1 {
				fs = append(fs, "-"+f) // -f FILE
			} else {
				fs = append(fs, "--"+f)
			}
		}
		return strings.Join(append(fs, "--socket", "--help"), " ")
	}
	var b strings.Builder
	switch shell {
	case "bash":
		b.WriteString("# bash completion for directorctl (directorctl completion bash)\n")
		b.WriteString("_directorctl() {\n\tlocal cur=\"${COMP_WORDS[COMP_CWORD]}\"\n")
		fmt.Fprintf(&b, "\tif [ \"$COMP_CWORD\" -eq 1 ]; then\n\t\tCOMPREPLY=($(compgen -W %q -- \"$cur\"))\n\t\treturn\n\tfi\n",
			strings.Join(append(names, "--socket", "--version", "--help"), " "))
		b.WriteString("\tcase \"${COMP_WORDS[1]}\" in\n")
		for _, n := range slices.Sorted(maps.Keys(commands)) {
			w := flagsOf(n)
			if ws := words[n]; len(ws) > 0 {
				w = strings.Join(ws, " ") + " " + w
			}
			fmt.Fprintf(&b, "\t%s) COMPREPLY=($(compgen -W %q -- \"$cur\")) ;;\n", n, w)
		}
		b.WriteString("\tcompletion) COMPREPLY=($(compgen -W \"bash zsh\" -- \"$cur\")) ;;\n")
		b.WriteString("\tesac\n}\ncomplete -F _directorctl directorctl\n")
	case "zsh":
		b.WriteString("#compdef directorctl\n# zsh completion for directorctl (directorctl completion zsh)\n")
		b.WriteString("_directorctl() {\n")
		fmt.Fprintf(&b, "\tif (( CURRENT == 2 )); then\n\t\tcompadd -- %s --socket --version --help\n\t\treturn\n\tfi\n", strings.Join(names, " "))
		b.WriteString("\tcase $words[2] in\n")
		for _, n := range slices.Sorted(maps.Keys(commands)) {
			w := flagsOf(n)
			if ws := words[n]; len(ws) > 0 {
				w = strings.Join(ws, " ") + " " + w
			}
			fmt.Fprintf(&b, "\t%s) compadd -- %s ;;\n", n, w)
		}
		b.WriteString("\tcompletion) compadd -- bash zsh ;;\n")
		b.WriteString("\tesac\n}\n_directorctl \"$@\"\n")
	default:
		return "", usageError("usage: directorctl completion bash|zsh")
	}
	return b.String(), nil
}
