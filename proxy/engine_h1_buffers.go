package proxy

import (
	"sync"

	"github.com/gatehouse-proxy/gatehouse/proxy/internal/h1wire"
)

// Buffers of the HTTP/1.1 path come from pools and are held only while
// a request is being handled: an idle keep-alive connection (client or
// upstream) holds none. net/http keeps a 4 KiB bufio.Reader and a
// 4 KiB bufio.Writer for a connection's whole life, which was 57% of
// the heap of an idle TLS connection (bench/README.md). They are lent
// and counted by h1wire.GetBuf / PutBuf (h1wire.BufReader takes its
// read buffer that way).
const (
	smallBuf = 4 << 10                   // client request heads, response assembly
	largeBuf = maxHeaderBytes + smallBuf // a request head over smallBuf grows to this
	upBuf    = 32 << 10                  // upstream reads (the reverse proxy's copy buffer size)
	bulkBuf  = 64 << 10                  // upstream reads of a large body (bulkMin and more)
	bulkMin  = 256 << 10                 // a Content-Length from which a body is read in bulkBuf reads
	maxKept  = largeBuf                  // larger assembled buffers are dropped, not pooled
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}
	bulkBufs  = sync.Pool{New: func() any { b := make([]byte, bulkBuf); return &b }}
)

// errHeadTooLarge refuses a request head over maxHeaderBytes.
var errHeadTooLarge = &h1wire.ParseError{Status: 431, Msg: "request header block larger than 64 KiB"}
