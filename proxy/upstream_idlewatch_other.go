//go:build !linux

package proxy

// Without epoll, idle upstream connections are not watched while idle;
// each reuse still peeks at the socket (quiet) and a connection with
// bytes nobody asked for is closed, not used. gatehouse is built and
// tested for Linux, where upstream_idlewatch_linux.go watches them.

func (c *upConn) watchIdle() bool { return true }

func (c *upConn) take() bool { return c.watch.Load() != watchDead }
