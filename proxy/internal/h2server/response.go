package h2server

import (
	"github.com/gatehouse-proxy/gatehouse/proxy/internal/httpfield"
	"net/http"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// A Handler writes its response through the Stream: as an
// http.ResponseWriter (Header, WriteHeader, Write: the proxy's own
// answers) or frame by frame (SendHeaders, SendData, SendTrailers,
// SendInterim) with its fields written by an Encoder. Each waits for
// the client's flow-control windows and for room in the connection's
// write queue; each fails once the stream has ended.

// Header, WriteHeader and Write make the stream an http.ResponseWriter.
func (st *Stream) Header() http.Header {
	if st.hdr == nil {
		st.hdr = make(http.Header)
	}
	return st.hdr
}

func (st *Stream) WriteHeader(code int) {
	if st.wroteHeader {
		return
	}
	_ = st.SendHeaders(code, false, nil)
}

func (st *Stream) Write(p []byte) (int, error) {
	if !st.wroteHeader {
		st.WriteHeader(http.StatusOK)
	}
	if err := st.SendData(p, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Status is the response status sent (0: none yet).
func (st *Stream) Status() int { return st.status }

// Written is the number of response body bytes sent.
func (st *Stream) Written() int64 { return st.bytes }

// End sends END_STREAM if the response has not ended yet (an empty 200
// if nothing was sent).
func (st *Stream) End() {
	if !st.wroteHeader {
		_ = st.SendHeaders(http.StatusOK, true, nil)
		return
	}
	c := st.c
	c.mu.Lock()
	ended := st.ended || st.err != nil
	c.mu.Unlock()
	if !ended {
		_ = st.sendData(nil, true)
	}
}

// Encoder adds fields to the header block being written. It is valid
// only inside the function it is passed to, which runs with the
// connection's lock held: it must not call the Stream's methods.
type Encoder struct{ c *Conn }

// Field adds one field; name must be lower case.
func (e Encoder) Field(name, value string) {
	e.c.enc.WriteField(hpack.HeaderField{Name: name, Value: value})
}

// Header adds h's fields in lower case, less the connection-specific
// ones HTTP/2 forbids (RFC 9113 §8.2.2: hop-by-hop fields and those the
// Connection field names). It reports whether h had a Date.
func (e Encoder) Header(h http.Header) (date bool) { return encodeFields(e.c.enc, h) }

// LowerName is a field name in lower case, as a string shared across
// the connection's responses.
func (e Encoder) LowerName(b []byte) string { return e.c.lowerName(b) }

// Intern returns b as a string, the same one for the same bytes while
// the connection's table has room (HPACK keeps the strings it indexes).
func (e Encoder) Intern(b []byte) string { return e.c.intern(b) }

// queueBlock queues one header block on st (HEADERS, then
// CONTINUATIONs as needed) once the connection's write buffer has room:
// fill encodes the fields with c's HPACK encoder, with c.mu held; end
// ends the stream with the block.
func (st *Stream) queueBlock(end bool, fill func(c *Conn)) error {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.waitRoomLocked(st); err != nil {
		return err
	}
	if st.err != nil {
		return st.err
	}
	c.hbuf.Reset()
	fill(c)
	c.writeBlockLocked(st.id, end)
	st.headed = true
	if end {
		st.ended = true
	}
	c.wake()
	return nil
}

// SendInterim queues an informational response other than 100 (103
// Early Hints …) as HEADERS without END_STREAM, unless the final
// response has begun; fill adds its fields.
func (st *Stream) SendInterim(status int, fill func(Encoder)) error {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.waitRoomLocked(st); err != nil {
		return err
	}
	if st.err != nil || st.headed {
		return st.err
	}
	c.hbuf.Reset()
	c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusString(status)})
	fill(Encoder{c})
	c.writeBlockLocked(st.id, false)
	c.wake()
	return nil
}

// SendHeaders queues the response HEADERS (and CONTINUATIONs): the
// status, the fields of Header() (without connection-specific ones),
// then what fill adds (nil: nothing), and a Date unless either had one
// (fill reports whether it wrote one). end ends the stream with them.
func (st *Stream) SendHeaders(status int, end bool, fill func(Encoder) (date bool)) error {
	st.wroteHeader, st.status = true, status
	own := st.hdr
	return st.queueBlock(end, func(c *Conn) {
		c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusString(status)})
		date := encodeFields(c.enc, own)
		if fill != nil {
			date = fill(Encoder{c}) || date
		}
		if !date {
			c.enc.WriteField(hpack.HeaderField{Name: "date", Value: httpfield.Date()})
		}
	})
}

// SendTrailers ends the stream with a trailer section; fill adds its
// fields.
func (st *Stream) SendTrailers(fill func(Encoder)) error {
	return st.queueBlock(true, func(c *Conn) { fill(Encoder{c}) })
}

// SendData queues p as DATA frames as the client's windows allow,
// waiting for WINDOW_UPDATEs and queue room; end sets END_STREAM on the
// last frame (an empty one if p is empty).
func (st *Stream) SendData(p []byte, end bool) error {
	if err := st.sendData(p, end); err != nil {
		return err
	}
	st.bytes += int64(len(p))
	return nil
}

// writeBlockLocked queues the header block in c.hbuf as HEADERS and
// CONTINUATION frames within the client's frame size.
func (c *Conn) writeBlockLocked(id uint32, end bool) {
	block := c.hbuf.Bytes()
	max := int(c.peerMaxFrame)
	first := block
	if len(first) > max {
		first = first[:max]
	}
	block = block[len(first):]
	_ = c.wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0})
	for len(block) > 0 {
		frag := block
		if len(frag) > max {
			frag = frag[:max]
		}
		block = block[len(frag):]
		_ = c.wfr.WriteContinuation(id, len(block) == 0, frag)
	}
}

// sendData queues p as DATA frames as the client's windows allow,
// waiting for WINDOW_UPDATEs and queue room; end sets END_STREAM on the
// last frame (an empty one if p is empty).
func (st *Stream) sendData(p []byte, end bool) error {
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	defer st.unstallLocked()
	for {
		if st.err != nil {
			return st.err
		}
		if c.closed || c.finishing {
			return errClosed
		}
		if len(p) == 0 {
			if end {
				_ = c.wfr.WriteData(st.id, true, nil)
				st.ended = true
				c.wake()
			}
			return nil
		}
		n := min(int64(len(p)), int64(c.peerMaxFrame), st.sendWin, c.sendWin)
		if len(c.out) >= maxPending || n <= 0 {
			if len(c.out) >= maxPending || c.sendWin <= 0 {
				c.blocked = append(c.blocked, st)
			}
			c.wake()
			// waiting for the client's window or for it to read: no
			// progress for [timeouts] send resets the stream
			st.stallLocked(c.cfg.Send)
			st.cond.Wait()
			continue
		}
		st.unstallLocked()
		last := end && n == int64(len(p))
		_ = c.wfr.WriteData(st.id, last, p[:n])
		st.sendWin -= n
		c.sendWin -= n
		p = p[n:]
		if last {
			st.ended = true
		}
		if len(p) == 0 {
			c.wake()
			return nil
		}
	}
}
