package h2server

import (
	"errors"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// A header block (HEADERS and its CONTINUATION frames) is decoded here
// rather than by the Framer's ReadMetaHeaders: that one allocates a
// MetaHeadersFrame, an emit closure and its captured variables, and
// grows a fresh field slice (1, 2, 4, 8 …) for every block — 8 of the
// ~10 allocations per request the server made. This decoder keeps one
// emit method, one MetaHeadersFrame and one field slice per connection;
// a new stream copies its fields out once (onHeaders).
//
// The checks are x/net's readMetaFrame's (golang.org/x/net v0.62.0,
// http2/frame.go), in the same order and with the same errors, so the
// server's answer to any block is unchanged: an invalid field value or
// name, or a pseudo-field after a regular one, stops decoding and is a
// stream error (PROTOCOL_ERROR) if the block ends in that frame, a
// connection error if a CONTINUATION follows; a block over
// Config.MaxHeaderBytes is Truncated (the stream gets 431), and a
// fragment more than twice the budget left is a connection error; an
// HPACK error is a connection error (COMPRESSION_ERROR); the pseudo-
// fields are checked last (unknown, duplicate, request and response
// mixed). TestHeaderBlockLikeFramer and FuzzFrames hold it to that.

// headerBlock is the decoding state of the block being read.
type headerBlock struct {
	dec     *hpack.Decoder
	mh      http2.MetaHeadersFrame // handed to onHeaders; valid until the next block
	fields  []hpack.HeaderField    // mh.Fields' storage, reused
	remain  uint32                 // header list budget left
	trailer uint32                 // the budget for "trailer" fields (x/net counts them apart)
	sawReg  bool
	invalid error
}

var errPseudoAfterRegular = errors.New("pseudo header field after regular")

func (c *Conn) initHeaders() {
	c.hb.dec = hpack.NewDecoder(4096, c.emit)
	c.hb.dec.SetMaxStringLength(int(c.cfg.MaxHeaderBytes))
}

// emit takes one decoded field (readMetaFrame's emit function).
func (c *Conn) emit(hf hpack.HeaderField) {
	b := &c.hb
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		b.invalid = errors.New("invalid header field value")
	}
	if strings.HasPrefix(hf.Name, ":") {
		if b.sawReg {
			b.invalid = errPseudoAfterRegular
		}
	} else {
		b.sawReg = true
		if !validWireName(hf.Name) {
			b.invalid = errors.New("invalid header field name")
		}
	}
	if b.invalid != nil {
		b.dec.SetEmitEnabled(false)
		return
	}
	remain := &b.remain
	var size uint32
	if hf.Name == "trailer" {
		remain = &b.trailer
		n := strings.Count(hf.Value, ",") + 1
		size = uint32(len(hf.Value)-n+1) + uint32(n)*hpack.HeaderField{}.Size()
	} else {
		size = hf.Size()
	}
	if size > *remain {
		b.dec.SetEmitEnabled(false)
		b.mh.Truncated = true
		b.remain, b.trailer = 0, 0
		return
	}
	*remain -= size
	b.fields = append(b.fields, hf)
}

// validWireName is x/net's validWireHeaderFieldName: a token in lower
// case.
func validWireName(v string) bool {
	if v == "" {
		return false
	}
	for _, r := range v {
		if !httpguts.IsTokenRune(r) || 'A' <= r && r <= 'Z' {
			return false
		}
	}
	return true
}

// readHeaderBlock decodes the block hf begins, reading its CONTINUATION
// frames; the result is valid until the next call.
func (c *Conn) readHeaderBlock(hf *http2.HeadersFrame) (*http2.MetaHeadersFrame, error) {
	b := &c.hb
	clear(b.fields)
	b.fields = b.fields[:0]
	b.mh = http2.MetaHeadersFrame{HeadersFrame: hf}
	b.remain, b.trailer = c.cfg.MaxHeaderBytes, c.cfg.MaxHeaderBytes
	b.sawReg, b.invalid = false, nil
	b.dec.SetEmitEnabled(true)
	frag := hf.HeaderBlockFragment()
	ended := hf.HeadersEnded()
	for {
		if int64(len(frag)) > 2*int64(b.remain+b.trailer) {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if b.invalid != nil {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := b.dec.Write(frag); err != nil {
			return nil, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if ended {
			break
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		cf := f.(*http2.ContinuationFrame) // the Framer's frame order check
		frag, ended = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	if err := b.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	b.mh.Fields = b.fields
	if b.invalid != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: b.invalid}
	}
	if err := checkPseudos(b.fields); err != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return &b.mh, nil
}

// checkPseudos is MetaHeadersFrame.checkPseudos: known pseudo-fields,
// none twice, not request and response ones mixed.
func checkPseudos(fields []hpack.HeaderField) error {
	var isReq, isResp bool
	n := 0
	for n < len(fields) && strings.HasPrefix(fields[n].Name, ":") {
		n++
	}
	pf := fields[:n]
	for i, f := range pf {
		switch f.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			isReq = true
		case ":status":
			isResp = true
		default:
			return errors.New("invalid pseudo-header")
		}
		for _, g := range pf[:i] {
			if f.Name == g.Name {
				return errors.New("duplicate pseudo-header")
			}
		}
	}
	if isReq && isResp {
		return errors.New("mix of request and response pseudo headers")
	}
	return nil
}
