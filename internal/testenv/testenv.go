// Package testenv holds the test environments (throwaway PostgreSQL, KDCs,
// a test CA, EWS schema checks, exchangelib) in its sub-packages, and the
// one thing they share: TB.
package testenv

// TB is what the environments need of a test or benchmark; *testing.T and
// *testing.B have it. Taking it rather than testing.TB keeps the testing
// package (its flags and globals) out of every package that is not a test.
type TB interface {
	Helper()
	Cleanup(func())
	TempDir() string
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Skip(args ...any)
	Skipf(format string, args ...any)
	Failed() bool
}

// M is what an environment's Run needs of a package's tests: *testing.M.
type M interface {
	Run() int
}
