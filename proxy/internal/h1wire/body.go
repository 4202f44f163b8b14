package h1wire

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// bufsOut counts pooled buffers handed out and not yet returned, so a
// test can check that idle connections hold none.
var bufsOut atomic.Int64

// GetBuf lends a buffer from pool p (whose New makes a *[]byte),
// counted until PutBuf gives it back.
func GetBuf(p *sync.Pool) *[]byte {
	bufsOut.Add(1)
	return p.Get().(*[]byte)
}

// PutBuf returns b, lent by GetBuf, to its pool p.
func PutBuf(p *sync.Pool, b *[]byte) {
	bufsOut.Add(-1)
	p.Put(b)
}

// BuffersOut reports how many buffers GetBuf lent and PutBuf has not
// had back yet.
func BuffersOut() int64 { return bufsOut.Load() }

// BufReader is the read side of a connection with a buffer lent from a
// pool (held only while a message is being read, so an idle connection
// holds none): Buf[R:W] are the bytes read and not yet consumed.
type BufReader struct {
	Src  io.Reader
	Buf  []byte
	R, W int
	pool *sync.Pool
	pb   *[]byte
}

// Take lends b a buffer from pool p (GetBuf), empty.
func (b *BufReader) Take(p *sync.Pool) {
	b.pool, b.pb = p, GetBuf(p)
	b.Buf = (*b.pb)[:cap(*b.pb)]
	b.R, b.W = 0, 0
}

// Held reports whether b holds a pooled buffer (Take, and no Release
// since).
func (b *BufReader) Held() bool { return b.pb != nil }

// Release returns the buffer to its pool; unread bytes are lost.
func (b *BufReader) Release() {
	if b.pb != nil {
		PutBuf(b.pool, b.pb)
		b.pb, b.Buf, b.R, b.W = nil, nil, 0, 0
	}
}

// Buffered is the number of bytes read and not yet consumed.
func (b *BufReader) Buffered() int { return b.W - b.R }

// ErrBufFull is Fill's error when the buffer holds nothing consumable
// and has no room: a head or line longer than the buffer.
var ErrBufFull = errors.New("buffer full")

// Fill reads more bytes (one Read of Src), compacting first when the
// buffer is full; ErrBufFull when it holds nothing consumable and no
// room. Offsets into the unread bytes (Buf[R:]) stay valid across it.
func (b *BufReader) Fill() error {
	if b.R == b.W {
		b.R, b.W = 0, 0
	}
	if b.W == len(b.Buf) {
		if b.R == 0 {
			return ErrBufFull
		}
		b.W = copy(b.Buf, b.Buf[b.R:b.W])
		b.R = 0
	}
	n, err := b.Src.Read(b.Buf[b.W:])
	b.W += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// Grow moves the buffered bytes into a buffer from pool p (larger) and
// gives the old one back.
func (b *BufReader) Grow(p *sync.Pool) {
	old, oldPool := b.pb, b.pool
	data := b.Buf[b.R:b.W]
	b.Take(p)
	b.W = copy(b.Buf, data)
	PutBuf(oldPool, old)
}

// Body framings (RFC 9112 §6.3).
const (
	BodyNone    = iota // no body
	BodyLength         // Content-Length
	BodyChunked        // Transfer-Encoding: chunked
	BodyClose          // until the connection closes (responses only)
)

// ErrBadChunk is a chunked body (RFC 9112 §7.1) that does not parse.
var ErrBadChunk = errors.New("malformed chunked encoding")

// MaxChunkLine bounds a chunk-size line (with extensions) and a trailer
// line; past it the body is refused rather than buffered.
const MaxChunkLine = 4096

// ChunkHeaderMax is room enough for a chunk-size line that
// AppendChunk writes (16 hex digits and CRLF).
const ChunkHeaderMax = len("ffffffffffffffff\r\n")

// parseChunkLine parses a chunk-size line (without its CRLF): hex size,
// optional extensions (RFC 9112 §7.1, §7.1.1).
func parseChunkLine(line []byte) (int64, error) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		if !ValidValue(line[i:]) {
			return 0, ErrBadChunk
		}
		// No whitespace before ';': RFC 9112 allows it, but net/http
		// refuses it, and an upstream must never read a body's framing
		// differently from gatehouse (found by FuzzChunked).
		line = line[:i]
	} else {
		for len(line) > 0 && (line[len(line)-1] == ' ' || line[len(line)-1] == '\t') {
			line = line[:len(line)-1] // trailing whitespace, as net/http trims it
		}
	}
	if len(line) == 0 || len(line) > 15 {
		return 0, ErrBadChunk
	}
	var n int64
	for _, c := range line {
		switch {
		case c >= '0' && c <= '9':
			n = n<<4 | int64(c-'0')
		case c >= 'a' && c <= 'f':
			n = n<<4 | int64(c-'a'+10)
		case c >= 'A' && c <= 'F':
			n = n<<4 | int64(c-'A'+10)
		default:
			return 0, ErrBadChunk
		}
	}
	return n, nil
}

// BodyFramer walks a message body in a BufReader without copying: Next
// returns the body bytes available now, so a relay can forward what
// arrived and read again only when it has sent it all.
type BodyFramer struct {
	// Done: the body is complete (a close-delimited one is set done by
	// the caller when the connection ends).
	Done bool
	// Trailers: for chunked, the trailer section as received (field
	// lines with their CRLFs, not the final empty line), set when done;
	// it aliases the buffer until the next fill.
	Trailers []byte
	kind     int
	remain   int64 // BodyLength: bytes left; BodyChunked: bytes left in this chunk
	phase    int   // BodyChunked: chunkSize, chunkData, chunkCRLF, chunkTrailers
}

const (
	chunkSize = iota
	chunkData
	chunkCRLF
	chunkTrailers
)

// Init starts a body of framing kind (BodyNone, …), n bytes long for
// BodyLength.
func (f *BodyFramer) Init(kind int, n int64) {
	*f = BodyFramer{kind: kind, remain: n}
	if kind == BodyNone || kind == BodyLength && n == 0 {
		f.Done = true
	}
}

// take consumes as much of avail (the unread bytes of b) as the body
// or chunk still has to come, and returns it.
func (f *BodyFramer) take(b *BufReader, avail []byte) []byte {
	n := min(int64(len(avail)), f.remain)
	f.remain -= n
	b.R += int(n)
	return avail[:n]
}

// Next returns body bytes available in b without reading, consuming
// them and the framing around them (chunk-size lines, chunk CRLFs, the
// trailer section: RFC 9112 §7.1, each line within MaxChunkLine, the
// trailers valid field lines). (nil, nil) with !f.Done means more input
// is needed: call b.Fill. At the end of a close-delimited body the
// caller sees io.EOF from Fill and sets Done.
func (f *BodyFramer) Next(b *BufReader) ([]byte, error) {
	for !f.Done {
		avail := b.Buf[b.R:b.W]
		switch f.kind {
		case BodyLength:
			if len(avail) == 0 {
				return nil, nil
			}
			p := f.take(b, avail)
			f.Done = f.remain == 0
			return p, nil
		case BodyClose:
			if len(avail) == 0 {
				return nil, nil
			}
			b.R = b.W
			return avail, nil
		case BodyChunked:
			switch f.phase {
			case chunkSize:
				i := bytes.IndexByte(avail, '\n')
				if i < 0 {
					if len(avail) >= MaxChunkLine {
						return nil, ErrBadChunk
					}
					return nil, nil
				}
				if i == 0 || avail[i-1] != '\r' || bytes.IndexByte(avail[:i-1], '\r') >= 0 {
					return nil, ErrBadChunk
				}
				n, err := parseChunkLine(avail[:i-1])
				if err != nil {
					return nil, err
				}
				b.R += i + 1
				if n == 0 {
					f.phase = chunkTrailers
				} else {
					f.remain, f.phase = n, chunkData
				}
			case chunkData:
				if len(avail) == 0 {
					return nil, nil
				}
				p := f.take(b, avail)
				if f.remain == 0 {
					f.phase = chunkCRLF
				}
				return p, nil
			case chunkCRLF:
				if len(avail) < 2 {
					return nil, nil
				}
				if avail[0] != '\r' || avail[1] != '\n' {
					return nil, ErrBadChunk
				}
				b.R += 2
				f.phase = chunkSize
			case chunkTrailers:
				// trailer-section = *( field-line CRLF ) CRLF
				end := 0
				if len(avail) >= 2 && avail[0] == '\r' && avail[1] == '\n' {
					end = 2
				} else if len(avail) > 0 {
					var err error
					if end, _, err = HeadEnd(avail, 0); err != nil {
						return nil, ErrBadChunk
					}
				}
				if end == 0 {
					if len(avail) >= MaxChunkLine {
						return nil, ErrBadChunk
					}
					return nil, nil
				}
				f.Trailers = avail[:end-2]
				if !validFieldLines(f.Trailers) {
					return nil, ErrBadChunk
				}
				b.R += end
				f.Done = true
			}
		default:
			f.Done = true
		}
	}
	return nil, nil
}

// validFieldLines checks field lines (each ending in CRLF, as HeadEnd
// found them) with scanField, as the fields of a head.
func validFieldLines(b []byte) bool {
	for len(b) > 0 {
		_, _, n, fe := scanField(b)
		if fe != fieldOK {
			return false
		}
		b = b[n:]
	}
	return true
}

// ForEachTrailer calls fn with each field of a chunked body's trailer
// section as received (BodyFramer.Trailers: field lines with their
// CRLFs), the value without its OWS, as scanField reads them; a line it
// refuses is skipped. Which fields may be passed on is the caller's
// decision.
func ForEachTrailer(t []byte, fn func(name, value []byte)) {
	for len(t) > 0 {
		name, value, n, fe := scanField(t)
		if fe == fieldOK {
			fn(name, value)
		}
		t = t[n:]
	}
}
