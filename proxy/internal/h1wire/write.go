package h1wire

import "strconv"

// The writers append the wire form of heads and chunks to a caller's
// buffer: no allocation beyond the buffer's growth. What goes into a
// head (which fields, what values) is the caller's.

// AppendRequestLine appends an HTTP/1.1 request-line (RFC 9112 §3):
// method SP request-target SP "HTTP/1.1" CRLF.
func AppendRequestLine(dst, method, target []byte) []byte {
	dst = append(dst, method...)
	dst = append(dst, ' ')
	dst = append(dst, target...)
	return append(dst, " HTTP/1.1\r\n"...)
}

// AppendStatusLine appends an HTTP/1.1 status-line (RFC 9112 §4) with
// status (status-code SP reason-phrase, as ResponseHead.StatusLine).
func AppendStatusLine[S ~string | ~[]byte](dst []byte, status S) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = append(dst, status...)
	return append(dst, "\r\n"...)
}

// AppendField appends a field line (RFC 9112 §5): name ": " value CRLF.
// The caller vouches for the name (a token) and the value (ValidValue).
func AppendField[N, V ~string | ~[]byte](dst []byte, name N, value V) []byte {
	dst = append(dst, name...)
	dst = append(dst, ": "...)
	dst = append(dst, value...)
	return append(dst, "\r\n"...)
}

// AppendContentLength appends a Content-Length field line of n
// (RFC 9110 §8.6).
func AppendContentLength(dst []byte, n int64) []byte {
	dst = append(dst, "Content-Length: "...)
	dst = strconv.AppendInt(dst, n, 10)
	return append(dst, "\r\n"...)
}

// AppendChunkedField appends "Transfer-Encoding: chunked" (RFC 9112
// §6.1), the framing of a body written with AppendChunk.
func AppendChunkedField(dst []byte) []byte {
	return append(dst, "Transfer-Encoding: chunked\r\n"...)
}

// AppendEndOfHead appends the empty line that ends a head (RFC 9112
// §2.1).
func AppendEndOfHead(dst []byte) []byte {
	return append(dst, "\r\n"...)
}

// AppendChunk appends data as one chunk (RFC 9112 §7.1): its size in
// hex, CRLF, data, CRLF; nothing for empty data (a zero size would end
// the body).
func AppendChunk(dst, data []byte) []byte {
	if len(data) == 0 {
		return dst
	}
	dst = AppendHex(dst, uint64(len(data)))
	dst = append(dst, '\r', '\n')
	dst = append(dst, data...)
	return append(dst, '\r', '\n')
}

// AppendHex appends n in lower-case hex without leading zeros: a
// chunk-size.
func AppendHex(dst []byte, n uint64) []byte {
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

// AppendLastChunk appends the last chunk, the trailer section
// (trailers: field lines with their CRLFs, as BodyFramer.Trailers) and
// the final CRLF (RFC 9112 §7.1.2).
func AppendLastChunk(dst, trailers []byte) []byte {
	dst = append(dst, "0\r\n"...)
	dst = append(dst, trailers...)
	return append(dst, '\r', '\n')
}

// AppendStatus appends an HTTP/1.1 status-line (RFC 9112 §4) of a
// response composed here: the three-digit code SP reason CRLF.
func AppendStatus(dst []byte, code int, reason string) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, ' ')
	dst = append(dst, reason...)
	return append(dst, "\r\n"...)
}
