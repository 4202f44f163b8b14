package h2server

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// blockFrames writes a HEADERS frame on stream 1 carrying block[:split]
// and, when split < len(block), a CONTINUATION with the rest; then the
// same block whole on stream 3 (the second decode sees the dynamic
// table the first left).
func blockFrames(block []byte, split int) []byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	if split > len(block) {
		split = len(block)
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:split], EndStream: true, EndHeaders: split == len(block)})
	if split < len(block) {
		_ = fr.WriteContinuation(1, true, block[split:])
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block, EndStream: true, EndHeaders: true})
	return buf.Bytes()
}

// readBlocks reads frames until an error, describing every header
// block's outcome: through x/net's ReadMetaHeaders (ours false) or
// through the server's readHeaderBlock (ours true).
func readBlocks(wire []byte, limit uint32, ours bool) []string {
	var out []string
	c := &Conn{cfg: Config{MaxHeaderBytes: limit}}
	c.fr = http2.NewFramer(nil, bytes.NewReader(wire))
	c.fr.SetMaxReadFrameSize(maxReadFrame)
	if ours {
		c.initHeaders()
	} else {
		c.fr.MaxHeaderListSize = limit
		c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		c.fr.ReadMetaHeaders.SetMaxStringLength(int(limit))
	}
	for i := 0; i < 8; i++ {
		f, err := c.fr.ReadFrame()
		if hf, ok := f.(*http2.HeadersFrame); ok && err == nil && ours {
			f, err = c.readHeaderBlock(hf)
		}
		if err != nil {
			var se http2.StreamError
			var ce http2.ConnectionError
			switch {
			case errors.As(err, &se):
				out = append(out, fmt.Sprintf("stream error %d %v", se.StreamID, se.Code))
				continue // the stream is reset; the connection goes on
			case errors.As(err, &ce):
				out = append(out, fmt.Sprintf("connection error %v", http2.ErrCode(ce)))
			default:
				out = append(out, "read error")
			}
			return out
		}
		mh, ok := f.(*http2.MetaHeadersFrame)
		if !ok {
			out = append(out, fmt.Sprintf("frame %T", f))
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "block %d end=%v truncated=%v:", mh.StreamID, mh.StreamEnded(), mh.Truncated)
		for _, hf := range mh.Fields {
			fmt.Fprintf(&b, " %q=%q", hf.Name, hf.Value)
		}
		out = append(out, b.String())
	}
	return out
}

func encodeBlock(fields ...string) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for i := 0; i+1 < len(fields); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1], Sensitive: strings.HasPrefix(fields[i], "x-s")})
	}
	return buf.Bytes()
}

var headerBlockSeeds = [][]byte{
	encodeBlock(":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a.test", "user-agent", "h2load", "accept", "*/*"),
	encodeBlock(":method", "GET", ":path", "/", "x-long", strings.Repeat("v", 300)),
	encodeBlock(":method", "GET", "x", "1", ":path", "/"),                          // pseudo after regular
	encodeBlock(":method", "GET", "X-Upper", "1"),                                  // upper case name
	encodeBlock(":method", "GET", "x", "a\x00b"),                                   // invalid value
	encodeBlock(":method", "GET", ":method", "GET"),                                // duplicate pseudo
	encodeBlock(":method", "GET", ":status", "200"),                                // request and response mixed
	encodeBlock(":bogus", "1"),                                                     // unknown pseudo
	encodeBlock("trailer", "a, b, c", "x-sensitive", "s", ":method", "GET"),        // trailer budget, never-indexed
	encodeBlock("", "empty name"),                                                  // empty name
	{0x3f, 0xe1, 0x1f},                                                             // table size update above the limit
	{0xff, 0xff, 0xff, 0xff, 0xff, 0x0f},                                           // index overflow
	{0x40, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff},                                     // bad huffman
	append(encodeBlock(":method", "GET"), 0x00, 0x7f, 0xff, 0xff, 0xff, 0x07, 'a'), // string longer than the block
}

// TestHeaderBlockLikeFramer: readHeaderBlock gives what x/net's
// ReadMetaHeaders gives — the same fields, truncation, and stream or
// connection errors with the same codes — for valid and malformed
// blocks, split over a CONTINUATION at every offset, under budgets
// that do and do not fit.
func TestHeaderBlockLikeFramer(t *testing.T) {
	for i, block := range headerBlockSeeds {
		for _, limit := range []uint32{1 << 16, 64, 40, 8} {
			for split := 0; split <= len(block); split++ {
				wire := blockFrames(block, split)
				want := readBlocks(wire, limit, false)
				got := readBlocks(wire, limit, true)
				if strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Fatalf("seed %d limit %d split %d:\ngot  %q\nwant %q", i, limit, split, got, want)
				}
			}
		}
	}
}

// FuzzHeaderBlock holds readHeaderBlock to x/net's ReadMetaHeaders on
// any block bytes, split point and budget.
func FuzzHeaderBlock(f *testing.F) {
	for _, b := range headerBlockSeeds {
		f.Add(b, uint8(len(b)/2), uint16(0))
		f.Add(b, uint8(255), uint16(60))
	}
	f.Fuzz(func(t *testing.T, block []byte, split uint8, limit uint16) {
		if len(block) > 4096 {
			return
		}
		lim := uint32(limit)
		if lim == 0 {
			lim = 1 << 16
		}
		wire := blockFrames(block, int(split))
		want := readBlocks(wire, lim, false)
		got := readBlocks(wire, lim, true)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("split %d limit %d:\ngot  %q\nwant %q", split, lim, got, want)
		}
	})
}
