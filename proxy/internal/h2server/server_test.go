package h2server

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Frame by frame over net.Pipe: the server alone, each limit hit.

// Two streams interleaved each get their own response, and no server
// goroutine is left once the connection closed.
func TestRoundTrip(t *testing.T) {
	st := newServerTester(t, echo)
	st.Greet()
	st.Must(st.WriteHeaders(1, true, true, st.getRequest("/one")))
	st.Must(st.WriteHeaders(3, false, true, st.postRequest("/three?x", "content-length", "5")))
	st.Must(st.WriteData(3, true, []byte("hello")))
	if status, body, _ := st.Response(1); status != "200" || body != "path=/one" {
		t.Errorf("stream 1: %s %q", status, body)
	}
	if status, body, _ := st.Response(3); status != "200" || body != "path=/three?x" {
		t.Errorf("stream 3: %s %q", status, body)
	}
	st.close()
	noGoroutinesLeft(t, 10*time.Second)
}

// The preface and the first SETTINGS: what the server advertises, and
// what ends a connection before it serves anything.
func TestPrefaceAndSettings(t *testing.T) {
	t.Run("advertised", func(t *testing.T) {
		st := newServerTester(t, echo, func(c *Config) { c.MaxHeaderBytes = 4096 })
		st.Must(st.WriteSettings())
		got := map[http2.SettingID]uint32{}
		var incr uint32
		for len(got) == 0 || incr == 0 {
			f := st.WantFrame(5 * time.Second)
			switch {
			case f.Type == http2.FrameSettings && !f.Flags.Has(http2.FlagSettingsAck):
				for _, s := range f.Settings {
					got[s.ID] = s.Val
				}
			case f.Type == http2.FrameWindowUpdate && f.StreamID == 0:
				incr = f.Incr
			}
		}
		want := map[http2.SettingID]uint32{http2.SettingMaxConcurrentStreams: 250, http2.SettingInitialWindowSize: 1 << 20,
			http2.SettingMaxHeaderListSize: 4096, http2.SettingMaxFrameSize: 1 << 20}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("SETTINGS %v, want %v", got, want)
		}
		if incr != 1<<20-65535 {
			t.Errorf("connection WINDOW_UPDATE %d, want the window raised to 1 MiB", incr)
		}
		st.Must(st.WritePing(false, [8]byte{7}))
		st.Until(func(f frame) bool {
			return f.Type == http2.FramePing && f.Flags.Has(http2.FlagPingAck) && f.Ping == [8]byte{7}
		})
	})
	t.Run("bad preface", func(t *testing.T) {
		st := startServerTester(t, echo)
		_, _ = io.WriteString(st.cc, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		if f, err := st.ReadFrame(10 * time.Second); !closedCleanly(err) {
			t.Errorf("got %v %v, want the connection closed with nothing sent", f.FrameHeader, err)
		}
	})
	t.Run("no preface within read_header", func(t *testing.T) {
		st := startServerTester(t, echo, func(c *Config) { c.ReadHeader = 100 * time.Millisecond })
		if !st.waitServed(10 * time.Second) {
			t.Fatal("the connection is still served")
		}
	})
	t.Run("first frame not SETTINGS", func(t *testing.T) {
		st := newServerTester(t, echo)
		st.Must(st.WritePing(false, [8]byte{}))
		if code, _ := st.WantGoAway(); code != http2.ErrCodeProtocol {
			t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", code)
		}
	})
	for _, tc := range []struct {
		name string
		s    http2.Setting
		code http2.ErrCode
	}{
		{"INITIAL_WINDOW_SIZE over 2^31-1", http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 31}, http2.ErrCodeFlowControl},
		{"MAX_FRAME_SIZE under 16 KiB", http2.Setting{ID: http2.SettingMaxFrameSize, Val: 100}, http2.ErrCodeProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newServerTester(t, echo)
			st.Must(st.WriteSettings(tc.s))
			if code, _ := st.WantGoAway(); code != tc.code {
				t.Errorf("GOAWAY %v, want %v", code, tc.code)
			}
		})
	}
}

// Sending is bounded by the client's stream and connection windows:
// DATA stops where a window ends and resumes at its WINDOW_UPDATE; a
// window pushed past 2^31-1 is a stream or connection error.
func TestFlowControl(t *testing.T) {
	big := strings.Repeat("b", 70000)
	h := handlerFunc(func(st *Stream, req Request) {
		if req.Path == "/big" {
			_, _ = io.WriteString(st, big)
			return
		}
		_, _ = io.WriteString(st, strings.Repeat("s", 100))
	})
	t.Run("stream window", func(t *testing.T) {
		st := newServerTester(t, h)
		st.Greet(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
		st.Must(st.WriteHeaders(1, true, true, st.getRequest("/small")))
		f := st.Until(func(f frame) bool { return f.Type == http2.FrameData })
		if len(f.Data) != 10 || f.EndStream() {
			t.Fatalf("first DATA: %d bytes, end %v; want the 10 the window allows", len(f.Data), f.EndStream())
		}
		// a PING round trip: no more DATA came meanwhile
		st.Must(st.WritePing(false, [8]byte{1}))
		st.Until(func(f frame) bool {
			if f.Type == http2.FrameData {
				t.Fatalf("DATA past the stream window")
			}
			return f.Type == http2.FramePing
		})
		st.Must(st.WriteWindowUpdate(1, 90))
		got := 10
		st.Until(func(f frame) bool {
			got += len(f.Data)
			return f.EndStream()
		})
		if got != 100 {
			t.Errorf("%d bytes, want 100", got)
		}
	})
	t.Run("connection window", func(t *testing.T) {
		st := newServerTester(t, h)
		st.Greet(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		st.Must(st.WriteHeaders(1, true, true, st.getRequest("/big")))
		got := 0
		st.Until(func(f frame) bool {
			got += len(f.Data)
			return got >= 65535
		})
		if got != 65535 {
			t.Fatalf("%d bytes before a connection WINDOW_UPDATE, want 65535", got)
		}
		st.Must(st.WriteWindowUpdate(0, 70000-65535))
		st.Until(func(f frame) bool {
			got += len(f.Data)
			return f.EndStream()
		})
		if got != 70000 {
			t.Errorf("%d bytes, want 70000", got)
		}
	})
	t.Run("stream window overflow", func(t *testing.T) {
		release := make(chan struct{})
		st := newServerTester(t, handlerFunc(func(st *Stream, req Request) { <-release }))
		defer close(release)
		st.Greet()
		st.Must(st.WriteHeaders(1, true, true, st.getRequest("/")))
		st.Must(st.WriteWindowUpdate(1, 1<<31-1))
		if status, _, code := st.Response(1); status != "RST" || code != http2.ErrCodeFlowControl {
			t.Errorf("got %s %v, want RST_STREAM FLOW_CONTROL_ERROR", status, code)
		}
	})
	t.Run("connection window overflow", func(t *testing.T) {
		st := newServerTester(t, echo)
		st.Greet()
		st.Must(st.WriteWindowUpdate(0, 1<<31-1))
		if code, _ := st.WantGoAway(); code != http2.ErrCodeFlowControl {
			t.Errorf("GOAWAY %v, want FLOW_CONTROL_ERROR", code)
		}
	})
	t.Run("receive window", func(t *testing.T) {
		// the handler does not read: the client may send 1 MiB, not more
		release := make(chan struct{})
		st := newServerTester(t, handlerFunc(func(st *Stream, req Request) { <-release }))
		defer close(release)
		st.Greet()
		st.Must(st.WriteHeaders(1, false, true, st.postRequest("/")))
		chunk := make([]byte, 16<<10)
		for range (1 << 20) / len(chunk) {
			st.Must(st.WriteData(1, false, chunk))
		}
		st.Must(st.WritePing(false, [8]byte{2}))
		st.Until(func(f frame) bool { return f.Type == http2.FramePing })
		st.Must(st.WriteData(1, false, []byte("x")))
		if code, _ := st.WantGoAway(); code != http2.ErrCodeFlowControl {
			t.Errorf("GOAWAY %v, want FLOW_CONTROL_ERROR", code)
		}
	})
}

// ResetBudget: each stream the client resets before its response
// ended costs one, a completed response earns one back; the reset that
// spends the last closes the connection with ENHANCE_YOUR_CALM.
func TestResetBudget(t *testing.T) {
	exited := make(chan struct{}, 10)
	st := newServerTester(t, handlerFunc(func(st *Stream, req Request) {
		if req.Path == "/ok" {
			_, _ = io.WriteString(st, "ok")
			return
		}
		<-st.Context().Done() // the client's reset
		exited <- struct{}{}
	}))
	st.Greet()
	id := uint32(1)
	reset := func() {
		t.Helper()
		st.Must(st.WriteHeaders(id, true, true, st.getRequest("/wait")))
		st.Must(st.WriteRST(id, http2.ErrCodeCancel))
		id += 2
		select {
		case <-exited: // the stream is gone: the next cannot be refused for the stream count
		case <-time.After(10 * time.Second):
			t.Fatal("the handler of a reset stream did not return")
		}
	}
	alive := func(what string) {
		t.Helper()
		st.Must(st.WritePing(false, [8]byte{byte(id)}))
		st.Until(func(f frame) bool { return f.Type == http2.FramePing && f.Ping == [8]byte{byte(id)} })
	}
	for range ResetBudget - 1 {
		reset()
	}
	alive("after ResetBudget-1 resets")
	st.Must(st.WriteHeaders(id, true, true, st.getRequest("/ok")))
	if status, _, _ := st.Response(id); status != "200" {
		t.Fatalf("a request after the resets: %s", status)
	}
	id += 2
	reset() // the completed response earned this one
	alive("after a reset the completed response paid for")
	st.Must(st.WriteHeaders(id, true, true, st.getRequest("/wait")))
	st.Must(st.WriteRST(id, http2.ErrCodeCancel))
	if code, last := st.WantGoAway(); code != http2.ErrCodeEnhanceYourCalm || last != id {
		t.Errorf("GOAWAY %v last stream %d, want ENHANCE_YOUR_CALM after stream %d", code, last, id)
	}
}

// A flood of HEADERS + RST_STREAM pairs (rapid reset) is cut off.
func TestRapidResetFlood(t *testing.T) {
	st := newServerTester(t, handlerFunc(func(st *Stream, req Request) { <-st.Context().Done() }))
	st.Greet()
	blk := st.getRequest("/")
	st.GoWrite(func() {
		for id := uint32(1); id < 2*5000; id += 2 {
			if st.WriteHeaders(id, true, true, blk) != nil || st.WriteRST(id, http2.ErrCodeCancel) != nil {
				return
			}
		}
	})
	if code, last := st.WantGoAway(); code != http2.ErrCodeEnhanceYourCalm || last > 2*5000 {
		t.Errorf("GOAWAY %v last stream %d, want ENHANCE_YOUR_CALM", code, last)
	}
	st.close()
	noGoroutinesLeft(t, 10*time.Second)
}

// Header blocks: over Config.MaxHeaderBytes decoded (from a small
// frame) is answered 431 and the connection goes on; a single field
// larger than the limit, or an endless CONTINUATION, ends it.
func TestHeaderLimits(t *testing.T) {
	small := func(c *Config) { c.MaxHeaderBytes = 4096 }
	t.Run("431", func(t *testing.T) {
		var tooLarge []bool
		st := newServerTester(t, handlerFunc(func(st *Stream, req Request) {
			tooLarge = append(tooLarge, req.HeaderTooLarge)
			echo(st, req)
		}), small)
		st.Greet()
		v := strings.Repeat("v", 1500)
		// indexed once, then referenced: 3 × 1.5 KB decoded from a few bytes more
		st.Must(st.WriteHeaders(1, true, true, st.getRequest("/big", "x-big", v, "x-big", v, "x-big", v)))
		if status, body, _ := st.Response(1); status != "431" || body != "431 Request Header Fields Too Large\n" {
			t.Errorf("got %s %q, want 431", status, body)
		}
		st.Must(st.WriteHeaders(3, true, true, st.getRequest("/fits", "x-big", v, "x-big", v)))
		if status, body, _ := st.Response(3); status != "200" || body != "path=/fits" {
			t.Errorf("next request: %s %q", status, body)
		}
		if fmt.Sprint(tooLarge) != "[true false]" {
			t.Errorf("the handler saw HeaderTooLarge %v, want [true false]", tooLarge)
		}
	})
	t.Run("one field over the limit", func(t *testing.T) {
		st := newServerTester(t, echo, small)
		st.Greet()
		st.Must(st.WriteHeaders(1, true, true, st.getRequest("/", "x-big", strings.Repeat("v", 5000))))
		if code, _ := st.WantGoAway(); code != http2.ErrCodeCompression && code != http2.ErrCodeProtocol {
			t.Errorf("GOAWAY %v", code)
		}
	})
	t.Run("CONTINUATION flood", func(t *testing.T) {
		st := newServerTester(t, echo, small)
		st.Greet()
		st.Must(st.WriteHeaders(1, true, false, st.getRequest("/")))
		frag := bytes.Repeat([]byte{0x90}, 1000) // static "accept-encoding: gzip, deflate", 60 bytes decoded each
		st.GoWrite(func() {
			for range 10000 {
				if st.WriteContinuation(1, false, frag) != nil {
					return
				}
			}
		})
		if code, _ := st.WantGoAway(); code != http2.ErrCodeProtocol {
			t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", code)
		}
	})
}

// SETTINGS_MAX_CONCURRENT_STREAMS: the stream past 250 open ones is
// refused (REFUSED_STREAM) and the others are served.
func TestStreamLimit(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, maxStreams)
	st := newServerTester(t, handlerFunc(func(st *Stream, req Request) {
		if req.Path == "/wait" {
			started <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(st, "done")
	}))
	st.Greet()
	for i := range maxStreams {
		st.Must(st.WriteHeaders(uint32(2*i+1), true, true, st.getRequest("/wait")))
	}
	for range maxStreams {
		<-started
	}
	over := uint32(2*maxStreams + 1)
	st.Must(st.WriteHeaders(over, true, true, st.getRequest("/wait")))
	if status, _, code := st.Response(over); status != "RST" || code != http2.ErrCodeRefusedStream {
		t.Fatalf("stream %d: %s %v, want RST_STREAM REFUSED_STREAM", over, status, code)
	}
	close(release)
	ended := 0
	st.Until(func(f frame) bool {
		if f.Type == http2.FrameRSTStream {
			t.Fatalf("stream %d reset: %v", f.StreamID, f.Code)
		}
		if f.EndStream() {
			ended++
		}
		return ended == maxStreams
	})
	st.Must(st.WriteHeaders(over+2, true, true, st.getRequest("/after")))
	if status, body, _ := st.Response(over + 2); status != "200" || body != "done" {
		t.Errorf("after the streams ended: %s %q", status, body)
	}
}

// Malformed requests (RFC 9113 §8.1.1) are reset with PROTOCOL_ERROR;
// the connection serves the next request.
func TestMalformedRequests(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fields []string
		body   string // sent with END_STREAM; none: END_STREAM on HEADERS
	}{
		{"signed content-length", []string{"content-length", "+5"}, "hello"},
		{"content-length with space", []string{"content-length", "5 "}, "hello"},
		{"two content-lengths", []string{"content-length", "5", "content-length", "6"}, "hello"},
		{"body shorter than content-length", []string{"content-length", "10"}, "short"},
		{"body longer than content-length", []string{"content-length", "3"}, "hello"},
		{"content-length with no body", []string{"content-length", "5"}, ""},
		{"value with leading space", []string{"x-a", " 1"}, ""},
		{"connection-specific field", []string{"connection", "keep-alive"}, ""},
		{"te other than trailers", []string{"te", "gzip"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newServerTester(t, echo)
			st.Greet()
			st.Must(st.WriteHeaders(1, tc.body == "", true, st.postRequest("/m", tc.fields...)))
			if tc.body != "" {
				_ = st.WriteData(1, true, []byte(tc.body))
			}
			if status, _, code := st.Response(1); status != "RST" || code != http2.ErrCodeProtocol {
				t.Errorf("got %s %v, want RST_STREAM PROTOCOL_ERROR", status, code)
			}
			st.Must(st.WriteHeaders(3, true, true, st.getRequest("/fine")))
			if status, _, _ := st.Response(3); status != "200" {
				t.Errorf("next request: %s", status)
			}
		})
	}
}

// RFC 9113 §5.1: DATA and trailers the client sent on a stream the
// server ended (an answer before the body ended, then RST_STREAM
// NO_ERROR) are ignored, not charged to the reset budget: far more of
// them than the budget leave the connection serving.
func TestDataAfterOwnResetIgnored(t *testing.T) {
	st := newServerTester(t, handlerFunc(func(st *Stream, req Request) {
		if req.Method == "POST" {
			st.WriteHeader(413) // without reading the body
		}
	}))
	st.Greet()
	const rounds = 250 // × 5 frames after the reset
	if rounds*5 <= ResetBudget {
		t.Fatal("the test no longer exceeds the reset budget")
	}
	chunk := bytes.Repeat([]byte("d"), 100)
	for i := range rounds {
		id := uint32(2*i + 1)
		st.Must(st.WriteHeaders(id, false, true, st.postRequest("/form", "content-length", "10000")))
		st.Must(st.WriteData(id, false, chunk))
		status := ""
		st.Until(func(f frame) bool {
			if f.StreamID != id {
				return false
			}
			if f.Type == http2.FrameHeaders {
				status = f.Field(":status")
			}
			if f.Type == http2.FrameRSTStream {
				if f.Code != http2.ErrCodeNo {
					t.Fatalf("stream %d reset with %v", id, f.Code)
				}
				return true
			}
			return false
		})
		if status != "413" {
			t.Fatalf("round %d: status %q", i, status)
		}
		for range 5 {
			st.Must(st.WriteData(id, false, chunk))
		}
		if i%2 == 1 {
			st.Must(st.WriteHeaders(id, true, true, st.Encode("x-checksum", "abc")))
		}
	}
	id := uint32(2*rounds + 1)
	st.Must(st.WriteHeaders(id, true, true, st.getRequest("/after")))
	if status, _, _ := st.Response(id); status != "200" {
		t.Errorf("request after the early answers: %s", status)
	}
}

// The idle timer and the stall timers: an idle connection gets GOAWAY
// and is closed; a stream waiting for request body (ClientBody) or for
// window (Send) is reset with CANCEL and its handler's read or write
// fails; a connection whose streams are all stalled is idle; a client
// that stops reading is closed (Send).
func TestTimers(t *testing.T) {
	short := func(c *Config) {
		c.Idle, c.ClientBody, c.Send = 200*time.Millisecond, 200*time.Millisecond, 200*time.Millisecond
	}
	t.Run("idle", func(t *testing.T) {
		st := newServerTester(t, echo, short)
		st.Greet()
		st.Must(st.WriteHeaders(1, true, true, st.getRequest("/")))
		st.Response(1)
		if code, last := st.WantGoAway(); code != http2.ErrCodeNo || last != 1 {
			t.Errorf("GOAWAY %v last %d, want NO_ERROR after stream 1", code, last)
		}
	})
	t.Run("client_body", func(t *testing.T) {
		failed := make(chan error, 1)
		st := newServerTester(t, handlerFunc(func(st *Stream, req Request) {
			_, err := io.Copy(io.Discard, st.Body())
			failed <- err
		}), short, func(c *Config) { c.Idle = time.Minute })
		st.Greet()
		st.Must(st.WriteHeaders(1, false, true, st.postRequest("/", "content-length", "100")))
		st.Must(st.WriteData(1, false, []byte("0123456789")))
		if status, _, code := st.Response(1); status != "RST" || code != http2.ErrCodeCancel {
			t.Errorf("got %s %v, want RST_STREAM CANCEL", status, code)
		}
		if err := <-failed; err == nil {
			t.Error("the handler read the body to its end")
		}
	})
	t.Run("send", func(t *testing.T) {
		failed := make(chan error, 1)
		st := newServerTester(t, handlerFunc(func(st *Stream, req Request) {
			_, err := io.WriteString(st, "hello")
			failed <- err
		}), short, func(c *Config) { c.Idle = time.Minute })
		st.Greet(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		st.Must(st.WriteHeaders(1, true, true, st.getRequest("/")))
		if status, _, code := st.Response(1); status != "RST" || code != http2.ErrCodeCancel {
			t.Errorf("got %s %v, want RST_STREAM CANCEL", status, code)
		}
		if err := <-failed; err == nil {
			t.Error("the handler's write succeeded with no window")
		}
	})
	t.Run("idle with every stream stalled", func(t *testing.T) {
		st := newServerTester(t, handlerFunc(func(st *Stream, req Request) { _, _ = io.WriteString(st, "hello") }),
			func(c *Config) { c.Idle, c.Send = 300*time.Millisecond, time.Minute })
		st.Greet(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		for i := range 3 {
			st.Must(st.WriteHeaders(uint32(2*i+1), true, true, st.getRequest("/")))
		}
		if code, _ := st.WantGoAway(); code != http2.ErrCodeNo {
			t.Errorf("GOAWAY %v, want NO_ERROR", code)
		}
	})
	t.Run("client stops reading", func(t *testing.T) {
		// no serverTester: nobody reads the server's writes
		cc, sc := net.Pipe()
		defer cc.Close()
		cfg := testConfig()
		short(&cfg)
		c := NewConn(sc, cfg, handlerFunc(func(st *Stream, req Request) { _, _ = st.Write(make([]byte, 1<<20)) }))
		served := make(chan struct{})
		go func() { c.Serve(); close(served) }()
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			var hbuf bytes.Buffer
			enc := hpack.NewEncoder(&hbuf)
			for _, kv := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", "a"}, {":path", "/"}} {
				_ = enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
			}
			fr := http2.NewFramer(cc, nil)
			if _, err := io.WriteString(cc, http2.ClientPreface); err != nil {
				return
			}
			if fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20}) != nil {
				return
			}
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hbuf.Bytes(), EndStream: true, EndHeaders: true})
		}()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Fatal("a client that reads nothing is still served")
		}
		cc.Close()
		<-wrote
		noGoroutinesLeft(t, 10*time.Second)
	})
}

// Shutdown sends GOAWAY at once, lets the stream in flight finish,
// then closes; a new stream after the GOAWAY is refused.
func TestShutdown(t *testing.T) {
	release, started := make(chan struct{}), make(chan struct{})
	st := newServerTester(t, handlerFunc(func(st *Stream, req Request) {
		close(started)
		<-release
		_, _ = io.WriteString(st, "finished")
	}))
	st.Greet()
	st.Must(st.WriteHeaders(1, true, true, st.getRequest("/")))
	<-started
	st.sc.Shutdown()
	g := st.Until(func(f frame) bool { return f.Type == http2.FrameGoAway })
	if g.Code != http2.ErrCodeNo || g.LastID != 1 {
		t.Errorf("GOAWAY %v last %d", g.Code, g.LastID)
	}
	st.Must(st.WriteHeaders(3, true, true, st.getRequest("/late")))
	if status, _, code := st.Response(3); status != "RST" || code != http2.ErrCodeRefusedStream {
		t.Errorf("a stream after GOAWAY: %s %v", status, code)
	}
	close(release)
	if status, body, _ := st.Response(1); status != "200" || body != "finished" {
		t.Errorf("the stream in flight: %s %q", status, body)
	}
	if !st.waitServed(10 * time.Second) {
		t.Error("the connection was not closed after its last stream")
	}
}
