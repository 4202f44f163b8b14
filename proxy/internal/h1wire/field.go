package h1wire

import (
	"bytes"
	"encoding/binary"
	"math/bits"
)

// fieldErr is why scanField refused a field line. The request parser
// answers each with its own 400 (fieldErrs), the response parser with
// ErrBadResponse, the chunked framer with ErrBadChunk.
type fieldErr uint8

const (
	fieldOK       fieldErr = iota
	fieldObsFold           // the line starts with SP or HTAB: obs-fold (RFC 9112 §5.2)
	fieldNoName            // no colon in the line, or nothing before it
	fieldBadName           // a byte before the colon that is not a tchar, whitespace included (§5.1)
	fieldBadValue          // a CTL other than HTAB, or DEL, in the value (RFC 9110 §5.5), or no CRLF after it
)

// fieldErrs: a request's refusal for each fieldErr.
var fieldErrs = [...]*ParseError{
	fieldObsFold:  bad("obsolete line folding in a header field"),
	fieldNoName:   bad("header line without a field name"),
	fieldBadName:  bad("invalid header field name"),
	fieldBadValue: bad("invalid header field value"),
}

// scanField is the one field-line scanner, for request heads, response
// heads and trailer sections: b starts with a field line, field-name ":"
// OWS field-value OWS CRLF (RFC 9112 §5). It returns the name, the value
// without its OWS and the length of the line with its CRLF; or why the
// line is refused, with the length of the line up to its LF (or len(b))
// to skip it. Each parser then looks only at the fields it interprets.
//
// One pass over the line, no bytes.IndexByte: the name's bytes are
// checked as tchars up to the colon, the value's for CTLs eight at a
// time up to the CR. A shared scanner built of the parsers' former steps
// (IndexByte for the LF and the colon, IsToken, TrimOWS, ValidValue) as
// a call per line cost 3.5% more instructions than their inlined loops
// (reverted in 6414b28); this one costs less than they did.
func scanField(b []byte) (name, value []byte, n int, fe fieldErr) {
	nb := b // the name's bytes, four at a time
	for len(nb) >= 4 && tchar[nb[0]] && tchar[nb[1]] && tchar[nb[2]] && tchar[nb[3]] {
		nb = nb[4:]
	}
	for len(nb) > 0 && tchar[nb[0]] {
		nb = nb[1:]
	}
	i := len(b) - len(nb)
	if i == 0 || i >= len(b) || b[i] != ':' {
		return nil, nil, lineLen(b), nameErr(b)
	}
	name = b[:i]
	i++
	for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	vs := i
	i += valueLen(b[i:])
	if i+1 >= len(b) || b[i] != '\r' || b[i+1] != '\n' {
		return nil, nil, lineLen(b), fieldBadValue
	}
	ve := i
	for ve > vs && (b[ve-1] == ' ' || b[ve-1] == '\t') {
		ve--
	}
	return name, b[vs:ve], i + 2, fieldOK
}

// lineLen is the length of the line at the start of b with its LF, or
// len(b) when there is no LF.
func lineLen(b []byte) int {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return i + 1
	}
	return len(b)
}

// nameErr tells why the field line at the start of b has no valid name,
// checked in the order the parsers always have: obs-fold, then a colon
// with something before it, then the name's bytes.
func nameErr(b []byte) fieldErr {
	line := b[:lineLen(b)]
	switch {
	case len(line) > 0 && (line[0] == ' ' || line[0] == '\t'):
		return fieldObsFold
	case bytes.IndexByte(line, ':') <= 0:
		return fieldNoName
	}
	return fieldBadName
}

// valueLen is the length of the longest prefix of b that may be in a
// field value (RFC 9110 §5.5: VCHAR, obs-text, SP, HTAB); a field line's
// value ends at its CR. Eight bytes at a time: m flags the bytes below
// 0x20 and those equal to 0x7f (the "hasless" and "haszero" tests of Bit
// Twiddling Hacks; bytes of 0x80 and above are obs-text, never flagged).
// A borrow can flag a byte above a flagged one, never below, so the
// lowest flag is the first such byte: a tab is skipped, anything else
// ends the value.
func valueLen(b []byte) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	n := len(b)
	for len(b) >= 8 {
		x := binary.LittleEndian.Uint64(b)
		m := ((x - 0x20*ones) | ((x ^ 0x7f*ones) - ones)) &^ x & highs
		if m == 0 {
			b = b[8:]
			continue
		}
		j := bits.TrailingZeros64(m) >> 3
		if b[j] != '\t' {
			return n - len(b) + j
		}
		b = b[j+1:]
	}
	for i, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return n - len(b) + i
		}
	}
	return n
}
