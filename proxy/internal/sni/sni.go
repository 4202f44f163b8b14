// Package sni reads the server name from a ClientHello's first record
// without allocating, for the accept loop's refusal of unknown names
// (proxy/listener_flood.go). It never names another name than crypto/tls
// would (FuzzHelloSNI); anything it is not sure of it leaves to crypto/tls.
package sni

// FromHello returns the host_name of the server_name extension of the
// ClientHello that b begins with, read as crypto/tls reads it
// (handshake_messages.go): ok is false for anything the caller must
// leave to crypto/tls — a hello not complete in its first record, no
// server_name, an encrypted_client_hello extension (the inner hello
// may name a route), any malformation. It allocates nothing.
func FromHello(b []byte) (name []byte, ok bool) {
	if len(b) < 5 || b[0] != 22 { // a handshake record
		return nil, false
	}
	rec := int(b[3])<<8 | int(b[4])
	if len(b) < 5+rec {
		return nil, false
	}
	m := b[5 : 5+rec]
	if len(m) < 4 || m[0] != 1 { // client_hello
		return nil, false
	}
	n := int(m[1])<<16 | int(m[2])<<8 | int(m[3])
	if len(m) < 4+n {
		return nil, false // continues in the next record
	}
	h := m[4 : 4+n]
	if len(h) < 2+32 {
		return nil, false
	}
	h = h[2+32:] // legacy_version, random
	var good bool
	if h, good = skipVec(h, 1); !good { // legacy_session_id
		return nil, false
	}
	if h, good = skipVec(h, 2); !good { // cipher_suites
		return nil, false
	}
	if h, good = skipVec(h, 1); !good { // legacy_compression_methods
		return nil, false
	}
	if len(h) < 2 || int(h[0])<<8|int(h[1]) != len(h)-2 {
		return nil, false // no extensions (so no SNI), or bytes after them
	}
	exts := h[2:]
	seen := false
	for len(exts) > 0 {
		if len(exts) < 4 {
			return nil, false
		}
		typ := int(exts[0])<<8 | int(exts[1])
		l := int(exts[2])<<8 | int(exts[3])
		if len(exts) < 4+l {
			return nil, false
		}
		data := exts[4 : 4+l]
		exts = exts[4+l:]
		switch typ {
		case 0xfe0d: // encrypted_client_hello: the full path decrypts it
			return nil, false
		case 0: // server_name (RFC 6066 §3)
			if seen {
				return nil, false // crypto/tls refuses a repeated extension
			}
			seen = true
			if len(data) < 2 || int(data[0])<<8|int(data[1]) != len(data)-2 || len(data) == 2 {
				return nil, false
			}
			for list := data[2:]; len(list) > 0; {
				if len(list) < 3 {
					return nil, false
				}
				typ, l := list[0], int(list[1])<<8|int(list[2])
				if l == 0 || len(list) < 3+l {
					return nil, false
				}
				v := list[3 : 3+l]
				list = list[3+l:]
				if typ != 0 { // not host_name: skipped, as crypto/tls does
					continue
				}
				if name != nil || v[len(v)-1] == '.' {
					return nil, false
				}
				name = v
			}
		}
	}
	return name, name != nil
}

// skipVec skips a vector with a lenBytes-byte length.
func skipVec(b []byte, lenBytes int) ([]byte, bool) {
	if len(b) < lenBytes {
		return nil, false
	}
	n := int(b[0])
	if lenBytes == 2 {
		n = n<<8 | int(b[1])
	}
	if len(b) < lenBytes+n {
		return nil, false
	}
	return b[lenBytes+n:], true
}
