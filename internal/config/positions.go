package config

import (
	"strconv"
	"strings"
	"sync"
)

// lazyPositions scans the source only when a line is first asked for: a
// valid file needs none, and the scan of a large file costs a fifth of
// its parse (directorctl apply of a thousand services waits for it).
type lazyPositions struct {
	src  string
	once sync.Once
	p    *positions
}

func newLazyPositions(src string) *lazyPositions { return &lazyPositions{src: src} }

func (l *lazyPositions) get() *positions {
	l.once.Do(func() { l.p = scanPositions(l.src) })
	return l.p
}

func (l *lazyPositions) line(path ...any) int { return l.get().line(path...) }

// positions records the line of every key and table in a TOML document.
// BurntSushi/toml keeps key positions private and reports unknown keys
// without them, so we scan the (already successfully parsed) source
// ourselves. Because the input is known to be valid TOML the scanner can be
// small: it only has to recognise headers, keys and where values end.
type positions struct {
	// indexed maps a path with array indices ("vrrp_instance.1.priority")
	// to its line.
	indexed map[string]int
	// plain maps a path without indices ("vrrp_instance.priority") to the
	// lines it occurs on, in order, which is how toml names undecoded keys.
	plain map[string][]int
}

// line returns the line of the longest recorded prefix of path, or 0. A
// value that is missing from the file is reported at its table's line.
func (p *positions) line(path ...any) int {
	parts := make([]string, 0, len(path))
	for _, e := range path {
		switch v := e.(type) {
		case string:
			parts = append(parts, v)
		case int:
			parts = append(parts, strconv.Itoa(v))
		}
	}
	for n := len(parts); n > 0; n-- {
		if l, ok := p.indexed[strings.Join(parts[:n], ".")]; ok {
			return l
		}
	}
	return 0
}

type scanner struct {
	src  string
	i    int
	line int
	pos  *positions
	// arrays counts the elements of each array of tables seen so far,
	// keyed by the array's indexed path.
	arrays map[string]int
}

func scanPositions(src string) *positions {
	s := &scanner{
		src:    src,
		line:   1,
		pos:    &positions{indexed: map[string]int{}, plain: map[string][]int{}},
		arrays: map[string]int{},
	}
	s.run()
	return s.pos
}

func (s *scanner) eof() bool { return s.i >= len(s.src) }

func (s *scanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.src[s.i]
}

func (s *scanner) record(indexed, plain []string, line int) {
	ik, pk := strings.Join(indexed, "."), strings.Join(plain, ".")
	if _, ok := s.pos.indexed[ik]; !ok {
		s.pos.indexed[ik] = line
	}
	s.pos.plain[pk] = append(s.pos.plain[pk], line)
}

func (s *scanner) run() {
	var table, plainTable []string
	for !s.eof() {
		start := s.i
		s.skipBlank()
		switch c := s.peek(); {
		case s.eof():
			return
		case c == '\n':
			s.line++
			s.i++
		case c == '#':
			s.skipComment()
		case c == '[':
			table, plainTable = s.header()
		default:
			line := s.line
			keys := s.key()
			idx := append(append([]string{}, table...), keys...)
			plain := append(append([]string{}, plainTable...), keys...)
			s.record(idx, plain, line)
			if s.peek() == '=' {
				s.i++
			}
			s.skipBlank()
			s.value(idx, plain)
		}
		if s.i == start {
			s.i++ // never loop without progress, whatever the input
		}
	}
}

func (s *scanner) skipBlank() {
	for !s.eof() && (s.src[s.i] == ' ' || s.src[s.i] == '\t' || s.src[s.i] == '\r') {
		s.i++
	}
}

// skipSpace skips blanks, newlines and comments, as allowed inside arrays.
func (s *scanner) skipSpace() {
	for !s.eof() {
		switch s.src[s.i] {
		case ' ', '\t', '\r':
			s.i++
		case '\n':
			s.line++
			s.i++
		case '#':
			s.skipComment()
		default:
			return
		}
	}
}

func (s *scanner) skipComment() {
	for !s.eof() && s.src[s.i] != '\n' {
		s.i++
	}
}

func (s *scanner) header() (indexed, plain []string) {
	line := s.line
	s.i++ // [
	array := s.peek() == '['
	if array {
		s.i++
	}
	keys := s.key()
	for !s.eof() && s.src[s.i] == ']' {
		s.i++
	}
	for j, k := range keys {
		indexed = append(indexed, k)
		key := strings.Join(indexed, ".")
		if array && j == len(keys)-1 {
			n := s.arrays[key]
			s.arrays[key] = n + 1
			s.record(indexed, keys[:j+1], line)
			indexed = append(indexed, strconv.Itoa(n))
			continue
		}
		if n, ok := s.arrays[key]; ok {
			indexed = append(indexed, strconv.Itoa(n-1))
		}
	}
	s.record(indexed, keys, line)
	return indexed, keys
}

// key reads a possibly dotted, possibly quoted key and stops before '=' or ']'.
func (s *scanner) key() []string {
	var parts []string
	for !s.eof() {
		s.skipBlank()
		switch c := s.peek(); {
		case c == '"' || c == '\'':
			start := s.i
			s.str()
			raw := s.src[start:s.i]
			if c == '"' {
				if u, err := strconv.Unquote(raw); err == nil {
					parts = append(parts, u)
					break
				}
			}
			parts = append(parts, strings.Trim(raw, `"'`))
		default:
			start := s.i
			for !s.eof() && isBare(s.src[s.i]) {
				s.i++
			}
			if s.i == start {
				return parts
			}
			parts = append(parts, s.src[start:s.i])
		}
		s.skipBlank()
		if s.peek() != '.' {
			return parts
		}
		s.i++
	}
	return parts
}

func isBare(c byte) bool {
	return c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// str skips a string of any of TOML's four kinds, counting newlines.
func (s *scanner) str() {
	q := s.src[s.i]
	if strings.HasPrefix(s.src[s.i:], strings.Repeat(string(q), 3)) {
		s.i += 3
		end := strings.Repeat(string(q), 3)
		for !s.eof() && !strings.HasPrefix(s.src[s.i:], end) {
			if q == '"' && s.src[s.i] == '\\' {
				s.i++
			}
			if !s.eof() && s.src[s.i] == '\n' {
				s.line++
			}
			s.i++
		}
		s.i += 3
		// A multi-line string may end with up to two extra quotes.
		for n := 0; n < 2 && s.peek() == q; n++ {
			s.i++
		}
		return
	}
	s.i++
	for !s.eof() && s.src[s.i] != q && s.src[s.i] != '\n' {
		if q == '"' && s.src[s.i] == '\\' {
			s.i++
		}
		s.i++
	}
	s.i++
}

func (s *scanner) value(indexed, plain []string) {
	switch s.peek() {
	case '"', '\'':
		s.str()
	case '[':
		s.i++
		for n := 0; !s.eof(); n++ {
			s.skipSpace()
			if s.peek() == ']' {
				s.i++
				return
			}
			elem := append(append([]string{}, indexed...), strconv.Itoa(n))
			if _, ok := s.pos.indexed[strings.Join(elem, ".")]; !ok {
				s.pos.indexed[strings.Join(elem, ".")] = s.line
			}
			s.value(elem, plain)
			s.skipSpace()
			if s.peek() == ',' {
				s.i++
			}
		}
	case '{':
		s.i++
		for !s.eof() {
			s.skipBlank()
			if s.peek() == '}' {
				s.i++
				return
			}
			line := s.line
			keys := s.key()
			if len(keys) == 0 {
				s.i++
				continue
			}
			idx := append(append([]string{}, indexed...), keys...)
			pl := append(append([]string{}, plain...), keys...)
			s.record(idx, pl, line)
			s.skipBlank()
			if s.peek() == '=' {
				s.i++
			}
			s.skipBlank()
			s.value(idx, pl)
			s.skipBlank()
			if s.peek() == ',' {
				s.i++
			}
		}
	default:
		for !s.eof() && !strings.ContainsRune(",]}\n#", rune(s.src[s.i])) {
			s.i++
		}
	}
}
