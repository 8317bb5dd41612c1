// Package convert turns a keepalived.conf into directord's TOML
// (directorctl convert). It reads keepalived's syntax as keepalived does:
// include directives, @ conditional lines, $VAR definitions, ! and #
// comments, blocks in braces. Every keyword with no equivalent, or only an
// approximate one, is reported with its file and line.
package convert

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Note is something the conversion could not carry over exactly.
type Note struct {
	File    string
	Line    int
	Keyword string
	Msg     string
}

func (n Note) String() string {
	if n.Line == 0 {
		return fmt.Sprintf("%s: %s: %s", n.File, n.Keyword, n.Msg)
	}
	return fmt.Sprintf("%s:%d: %s: %s", n.File, n.Line, n.Keyword, n.Msg)
}

// node is a keepalived statement: a keyword, its arguments and, for a
// block, the statements inside its braces.
type node struct {
	Key      string
	Args     []string
	Children []*node
	Block    bool
	File     string
	Line     int
}

// arg is the i-th argument, or "".
func (n *node) arg(i int) string {
	if i < len(n.Args) {
		return n.Args[i]
	}
	return ""
}

type token struct {
	text string
	file string
	line int
	eol  bool // the last token of its line
}

// maxIncludeDepth bounds include chains (keepalived stops at 8 too).
const maxIncludeDepth = 8

type reader struct {
	configID string
	vars     map[string]string
	notes    []Note
	tokens   []token
}

func (r *reader) note(file string, line int, key, format string, args ...any) {
	r.notes = append(r.notes, Note{File: file, Line: line, Keyword: key, Msg: fmt.Sprintf(format, args...)})
}

var (
	varDef = regexp.MustCompile(`^\$([A-Za-z_][A-Za-z0-9_]*)=(.*)$`)
	// $NAME runs to the next blank, as keepalived reads it: $GW/24 is
	// the variable "GW/24"; ${GW}/24 is GW's value and /24.
	varUse = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][^\s"]*)`)
)

// readFile reads path's lines into r.tokens, following include
// directives.
func (r *reader) readFile(path string, depth int) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		lineNo := i + 1
		line := strings.TrimRight(lines[i], "\r")
		// A line ending in \ goes on on the next one.
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, `\`) + " " + strings.TrimRight(lines[i], "\r")
		}
		text := strings.TrimSpace(line)
		if text == "" || text[0] == '!' || text[0] == '#' {
			continue
		}
		// @ID lines are for the host whose config id is ID (keepalived
		// -i, the host name by default); @^ID for every other.
		if text[0] == '@' {
			id, rest, _ := strings.Cut(text[1:], " ")
			want := true
			if strings.HasPrefix(id, "^") {
				id, want = id[1:], false
			}
			if (id == r.configID) != want {
				continue
			}
			text = strings.TrimSpace(rest)
		}
		if m := varDef.FindStringSubmatch(text); m != nil {
			r.vars[m[1]] = strings.TrimSpace(m[2])
			continue
		}
		text = varUse.ReplaceAllStringFunc(text, func(s string) string {
			m := varUse.FindStringSubmatch(s)
			name := m[1] + m[2]
			v, ok := r.vars[name]
			if !ok {
				r.note(path, lineNo, "$"+name, "not defined: left as it is")
				return s
			}
			return v
		})
		if strings.HasPrefix(text, "~SEQ") {
			r.note(path, lineNo, "~SEQ", "keepalived's sequence expansion is not supported: write the lines out")
			continue
		}
		words := splitWords(text)
		if len(words) > 0 && words[0] == "include" {
			if depth >= maxIncludeDepth {
				return fmt.Errorf("%s:%d: include nested more than %d deep", path, lineNo, maxIncludeDepth)
			}
			for _, pattern := range words[1:] {
				if !filepath.IsAbs(pattern) {
					pattern = filepath.Join(filepath.Dir(path), pattern)
				}
				files, err := filepath.Glob(pattern)
				if err != nil {
					return fmt.Errorf("%s:%d: include %s: %w", path, lineNo, pattern, err)
				}
				if len(files) == 0 {
					r.note(path, lineNo, "include", "%s matches no file", pattern)
				}
				sort.Strings(files)
				for _, f := range files {
					if err := r.readFile(f, depth+1); err != nil {
						return err
					}
				}
			}
			continue
		}
		for j, w := range words {
			r.tokens = append(r.tokens, token{text: w, file: path, line: lineNo, eol: j == len(words)-1})
		}
	}
	return nil
}

// splitWords splits a line into words as keepalived does: on blanks,
// keeping "quoted strings" whole (without their quotes), with braces
// words of their own, and stopping at a comment.
func splitWords(s string) []string {
	var out []string
	var cur strings.Builder
	inWord, quoted := false, false
	flush := func() {
		if inWord {
			out = append(out, cur.String())
			cur.Reset()
			inWord = false
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '"':
			quoted = false
		case quoted:
			cur.WriteByte(c)
		case c == '"':
			quoted, inWord = true, true
		case c == ' ' || c == '\t':
			flush()
		case (c == '!' || c == '#') && !inWord:
			flush()
			return out
		case c == '{' || c == '}':
			flush()
			out = append(out, string(c))
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	flush()
	return out
}

// parse builds the statements from the tokens.
func (r *reader) parse() []*node {
	pos := 0
	var block func(depth int) []*node
	block = func(depth int) []*node {
		var out []*node
		for pos < len(r.tokens) {
			t := r.tokens[pos]
			switch t.text {
			case "}":
				pos++
				if depth == 0 {
					r.note(t.file, t.line, "}", "closes no block: ignored")
					continue
				}
				return out
			case "{":
				// A block with no keyword: its statements belong to the
				// previous one (keepalived's "keyword\n{" layout).
				pos++
				kids := block(depth + 1)
				if len(out) > 0 {
					prev := out[len(out)-1]
					prev.Children = append(prev.Children, kids...)
					prev.Block = true
				}
				continue
			}
			n := &node{Key: t.text, File: t.file, Line: t.line}
			pos++
			for !t.eol && pos < len(r.tokens) {
				t = r.tokens[pos]
				if t.text == "{" {
					pos++
					n.Children, n.Block = block(depth+1), true
					break
				}
				if t.text == "}" {
					break // "keyword arg }" closes the enclosing block
				}
				n.Args = append(n.Args, t.text)
				pos++
			}
			out = append(out, n)
		}
		if depth > 0 && len(r.tokens) > 0 {
			last := r.tokens[len(r.tokens)-1]
			r.note(last.file, last.line, "{", "a block is not closed before the end of the file")
		}
		return out
	}
	return block(0)
}
