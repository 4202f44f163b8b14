package proxy

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// Buffers of the HTTP/1.1 path come from pools and are held only while
// a request is being handled: an idle keep-alive connection (client or
// upstream) holds none. net/http keeps a 4 KiB bufio.Reader and a
// 4 KiB bufio.Writer for a connection's whole life, which was 57% of
// the heap of an idle TLS connection (bench/README.md).
const (
	smallBuf = 4 << 10                     // client request heads, response assembly
	largeBuf = maxHeaderBytes + smallBuf   // a request head over smallBuf grows to this
	upBuf    = 32 << 10                    // upstream reads (the reverse proxy's copy buffer size)
	bulkBuf  = 64 << 10                    // upstream reads of a large body (bulkMin and more)
	bulkMin  = 256 << 10                   // a Content-Length from which a body is read in bulkBuf reads
	maxKept  = largeBuf                    // larger assembled buffers are dropped, not pooled
	chunkHdr = len("ffffffffffffffff\r\n") // room for a chunk-size line
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}
	bulkBufs  = sync.Pool{New: func() any { b := make([]byte, bulkBuf); return &b }}
)

// bufStats counts pooled buffers handed out and not yet returned, so a
// test can check that idle connections hold none.
var bufsOut atomic.Int64

func getBuf(p *sync.Pool) *[]byte {
	bufsOut.Add(1)
	return p.Get().(*[]byte)
}

func putBuf(p *sync.Pool, b *[]byte) {
	bufsOut.Add(-1)
	p.Put(b)
}

// buffersOut reports how many pooled HTTP/1.1 buffers are lent out.
func buffersOut() int64 { return bufsOut.Load() }

// bufReader is the read side of a connection with a buffer lent from a
// pool: r..w are the bytes read and not yet consumed.
type bufReader struct {
	src  io.Reader
	pool *sync.Pool
	pb   *[]byte
	buf  []byte
	r, w int
}

func (b *bufReader) take(p *sync.Pool) {
	b.pool, b.pb = p, getBuf(p)
	b.buf = (*b.pb)[:cap(*b.pb)]
	b.r, b.w = 0, 0
}

// release returns the buffer to its pool; unread bytes are lost.
func (b *bufReader) release() {
	if b.pb != nil {
		putBuf(b.pool, b.pb)
		b.pb, b.buf, b.r, b.w = nil, nil, 0, 0
	}
}

func (b *bufReader) buffered() int { return b.w - b.r }

var errBufFull = errors.New("buffer full")

// fill reads more bytes (one Read), compacting first when the buffer is
// full; errBufFull when it holds nothing consumable and no room.
func (b *bufReader) fill() error {
	if b.r == b.w {
		b.r, b.w = 0, 0
	}
	if b.w == len(b.buf) {
		if b.r == 0 {
			return errBufFull
		}
		b.w = copy(b.buf, b.buf[b.r:b.w])
		b.r = 0
	}
	n, err := b.src.Read(b.buf[b.w:])
	b.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// grow moves the buffered bytes into a buffer from pool p (larger).
func (b *bufReader) grow(p *sync.Pool) {
	old, oldPool := b.pb, b.pool
	data := b.buf[b.r:b.w]
	b.take(p)
	b.w = copy(b.buf, data)
	putBuf(oldPool, old)
}

// Body framings.
const (
	bodyNone    = iota
	bodyLength  // Content-Length
	bodyChunked // Transfer-Encoding: chunked
	bodyClose   // until the connection closes (responses only)
)

// bodyFramer walks a message body in a bufReader without copying:
// next returns the body bytes available now, so a relay can forward
// what arrived and read again only when it has sent it all.
type bodyFramer struct {
	kind   int
	remain int64 // bodyLength: bytes left; bodyChunked: bytes left in this chunk
	phase  int   // bodyChunked: chunkSize, chunkData, chunkCRLF, chunkTrailers, chunkDone
	done   bool
	// trailers: for chunked, the trailer section as received (field
	// lines with their CRLFs, not the final empty line), set when done;
	// it aliases the buffer until the next fill.
	trailers []byte
}

const (
	chunkSize = iota
	chunkData
	chunkCRLF
	chunkTrailers
)

func (f *bodyFramer) init(kind int, n int64) {
	*f = bodyFramer{kind: kind, remain: n}
	if kind == bodyNone || kind == bodyLength && n == 0 {
		f.done = true
	}
}

// take consumes as much of avail (the unread bytes of b) as the body
// or chunk still has to come, and returns it.
func (f *bodyFramer) take(b *bufReader, avail []byte) []byte {
	n := min(int64(len(avail)), f.remain)
	f.remain -= n
	b.r += int(n)
	return avail[:n]
}

// next returns body bytes available in b without reading. (nil, nil)
// with !f.done means more input is needed: call b.fill. At the end of
// a close-delimited body the caller sees io.EOF from fill and calls
// finishClose.
func (f *bodyFramer) next(b *bufReader) ([]byte, error) {
	for !f.done {
		avail := b.buf[b.r:b.w]
		switch f.kind {
		case bodyLength:
			if len(avail) == 0 {
				return nil, nil
			}
			p := f.take(b, avail)
			f.done = f.remain == 0
			return p, nil
		case bodyClose:
			if len(avail) == 0 {
				return nil, nil
			}
			b.r = b.w
			return avail, nil
		case bodyChunked:
			switch f.phase {
			case chunkSize:
				i := bytes.IndexByte(avail, '\n')
				if i < 0 {
					if len(avail) >= maxChunkLine {
						return nil, errBadChunk
					}
					return nil, nil
				}
				if i == 0 || avail[i-1] != '\r' || bytes.IndexByte(avail[:i-1], '\r') >= 0 {
					return nil, errBadChunk
				}
				n, err := parseChunkLine(avail[:i-1])
				if err != nil {
					return nil, err
				}
				b.r += i + 1
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
					return nil, errBadChunk
				}
				b.r += 2
				f.phase = chunkSize
			case chunkTrailers:
				// trailer-section = *( field-line CRLF ) CRLF
				end := 0
				if len(avail) >= 2 && avail[0] == '\r' && avail[1] == '\n' {
					end = 2
				} else if len(avail) > 0 {
					var err error
					if end, _, err = headEnd(avail, 0); err != nil {
						return nil, errBadChunk
					}
				}
				if end == 0 {
					if len(avail) >= maxChunkLine {
						return nil, errBadChunk
					}
					return nil, nil
				}
				f.trailers = avail[:end-2]
				if !validFieldLines(f.trailers) {
					return nil, errBadChunk
				}
				b.r += end
				f.done = true
			}
		default:
			f.done = true
		}
	}
	return nil, nil
}

// appendChunk appends data as one chunk.
func appendChunk(dst, data []byte) []byte {
	if len(data) == 0 {
		return dst
	}
	dst = appendHex(dst, uint64(len(data)))
	dst = append(dst, '\r', '\n')
	dst = append(dst, data...)
	return append(dst, '\r', '\n')
}

func appendHex(dst []byte, n uint64) []byte {
	const digits = "0123456789abcdef"
	var tmp [16]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = digits[n&15]
		n >>= 4
		if n == 0 {
			break
		}
	}
	return append(dst, tmp[i:]...)
}

// appendLastChunk appends the last chunk with trailers (field lines
// with their CRLFs) and the final CRLF.
func appendLastChunk(dst, trailers []byte) []byte {
	dst = append(dst, "0\r\n"...)
	dst = append(dst, trailers...)
	return append(dst, '\r', '\n')
}

// validFieldLines checks field lines (each ending in CRLF, as headEnd
// found them): a token name, a colon, a valid value.
func validFieldLines(b []byte) bool {
	for len(b) > 0 {
		nl := bytes.IndexByte(b, '\n')
		line := b[:nl-1]
		b = b[nl+1:]
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isTokenBytes(line[:colon]) || !validValue(line[colon+1:]) {
			return false
		}
	}
	return true
}

// forEachTrailer calls fn with each end-to-end field of a chunked body's
// trailer section as received (bodyFramer.trailers: field lines with
// their CRLFs), name and value trimmed; malformed lines and fields of a
// single connection are skipped.
func forEachTrailer(t []byte, fn func(name, value []byte)) {
	for len(t) > 0 {
		line := t
		if i := bytes.IndexByte(t, '\n'); i >= 0 {
			line, t = t[:i], t[i+1:]
		} else {
			t = nil
		}
		line = bytes.TrimRight(line, "\r")
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := bytes.TrimSpace(line[:colon])
		if isRespHop(name, nil, false) {
			continue
		}
		fn(name, bytes.TrimSpace(line[colon+1:]))
	}
}
