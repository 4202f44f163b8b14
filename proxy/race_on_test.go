//go:build race

package proxy

// raceEnabled: the race detector's instrumentation makes frames larger,
// so stack sizes measured under it are not the ones users run.
const raceEnabled = true
