//go:build gatehouse_pprof

package main

// This file is compiled only with -tags gatehouse_pprof (bench/run.sh
// builds such a binary for its profiling pass). With GATEHOUSE_PPROF set
// to a loopback address it serves net/http/pprof there, from process
// start, so startup itself can be profiled. Production builds carry no
// pprof handler at all; the admin listener never does.

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // registers on http.DefaultServeMux, served only here
	"os"
)

func init() {
	addr := os.Getenv("GATEHOUSE_PPROF")
	if addr == "" {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		fmt.Fprintf(os.Stderr, "gatehouse: GATEHOUSE_PPROF=%q: want a loopback host:port\n", addr)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gatehouse: GATEHOUSE_PPROF: %v\n", err)
		os.Exit(2)
	}
	go func() { _ = http.Serve(ln, http.DefaultServeMux) }()
}
