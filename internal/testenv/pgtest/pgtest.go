// Package pgtest gives integration tests a real PostgreSQL: one throwaway
// server per test binary (started on first use, stopped by Run) and a fresh
// database per test. Set ENSGATE_TEST_DATABASE_URL to use an existing server
// instead (its user must be allowed to create databases).
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ensgate/ensgate/internal/testenv"

	"github.com/jackc/pgx/v5"
)

var (
	mainUsed atomic.Bool
	startMu  sync.Mutex
	srv      *server
	srvErr   error
	dbSeq    atomic.Int64
)

// Run runs the tests and stops the server they started. Call it from the
// package's TestMain: func TestMain(m testenv.M) { os.Exit(pgtest.Run(m)) }.
func Run(m testenv.M) int {
	mainUsed.Store(true)
	code := m.Run()
	startMu.Lock()
	if srv != nil {
		srv.stop()
	}
	startMu.Unlock()
	return code
}

// NewDatabase creates an empty database for this test, dropped when it ends,
// and returns its connection URL. It skips the test only when no PostgreSQL
// is installed and ENSGATE_REQUIRE_POSTGRES is unset (make test sets it).
func NewDatabase(t testenv.TB) string {
	t.Helper()
	if !mainUsed.Load() {
		t.Fatal("pgtest: call pgtest.Run(m) from TestMain so the server is stopped")
	}
	adminURL := os.Getenv("ENSGATE_TEST_DATABASE_URL")
	if adminURL == "" {
		s, err := shared()
		if errors.Is(err, errNotInstalled) && os.Getenv("ENSGATE_REQUIRE_POSTGRES") == "" {
			t.Skip(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		adminURL = s.url("postgres")
	}
	name := fmt.Sprintf("t%d_%d_%d", os.Getpid(), time.Now().UnixNano()%1e6, dbSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, adminURL)
		if err != nil {
			t.Errorf("pgtest: connect to drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop %s: %v", name, err)
		}
	})
	u, err := url.Parse(adminURL)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

func shared() (*server, error) {
	startMu.Lock()
	defer startMu.Unlock()
	if srv == nil && srvErr == nil {
		srv, srvErr = start()
	}
	return srv, srvErr
}

var errNotInstalled = errors.New("pgtest: PostgreSQL is not installed (apt-get install postgresql)")

type server struct {
	dir    string // holds data/ and the Unix socket
	bin    string
	asUser string // run server commands as this user (root may not run PostgreSQL)
}

func (s *server) url(db string) string {
	return (&url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/" + db,
		RawQuery: url.Values{"host": {s.dir}, "sslmode": {"disable"}}.Encode()}).String()
}

// start runs initdb and pg_ctl with settings that trade durability for speed:
// the data is thrown away anyway. The server listens on a Unix socket only,
// so parallel test binaries never fight over a port.
func start() (*server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "ensgate-pg-")
	if err != nil {
		return nil, err
	}
	s := &server{dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		s.asUser = "postgres"
		if err := chownTo(dir, s.asUser); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := s.run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
		"--no-locale", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: initdb: %v\n%s", err, out)
	}
	if err := s.start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// start starts the initialised cluster.
func (s *server) start() error {
	opts := "-k " + s.dir + " -c listen_addresses= -c fsync=off -c synchronous_commit=off" +
		" -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB"
	if out, err := s.run("pg_ctl", "start", "-w", "-t", "60", "-D", filepath.Join(s.dir, "data"), "-l", filepath.Join(s.dir, "log"), "-o", opts); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "log"))
		return fmt.Errorf("pgtest: pg_ctl start: %v\n%s\n%s", err, out, log)
	}
	return nil
}

func (s *server) stop() {
	s.run("pg_ctl", "stop", "-m", "immediate", "-D", filepath.Join(s.dir, "data"))
	os.RemoveAll(s.dir)
}

func (s *server) run(tool string, args ...string) ([]byte, error) {
	path := filepath.Join(s.bin, tool)
	if s.asUser != "" {
		args = append([]string{"-u", s.asUser, "--", path}, args...)
		path = "runuser"
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = s.dir
	return cmd.CombinedOutput()
}

// binDir finds the newest PostgreSQL server installation.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real), nil
		}
	}
	return "", errNotInstalled
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func chownTo(dir, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("pgtest: running as root needs the %q user that the postgresql package creates: %w", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(dir, uid, gid)
}

// Server is a PostgreSQL cluster of one test's own, for tests that stop and
// start it (a restart while the gateway runs); other tests use NewDatabase.
type Server struct {
	s *server
}

// NewServer starts a cluster, stopped and removed when the test ends.
func NewServer(t testenv.TB) *Server {
	t.Helper()
	s, err := start()
	if errors.Is(err, errNotInstalled) && os.Getenv("ENSGATE_REQUIRE_POSTGRES") == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	return &Server{s: s}
}

// URL is the connection URL of the cluster's postgres database.
func (s *Server) URL() string { return s.s.url("postgres") }

// Stop shuts the cluster down as an admin would (fast: connections are
// closed, nothing is lost).
func (s *Server) Stop(t testenv.TB) {
	t.Helper()
	if out, err := s.s.run("pg_ctl", "stop", "-w", "-m", "fast", "-D", filepath.Join(s.s.dir, "data")); err != nil {
		t.Fatalf("pgtest: pg_ctl stop: %v\n%s", err, out)
	}
}

// Start starts the cluster again after Stop.
func (s *Server) Start(t testenv.TB) {
	t.Helper()
	if err := s.s.start(); err != nil {
		t.Fatal(err)
	}
}

// Kill stops the cluster as a crash would (immediate: no checkpoint, the
// connections are dropped), the way a primary dies before a failover.
func (s *Server) Kill(t testenv.TB) {
	t.Helper()
	if out, err := s.s.run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", filepath.Join(s.s.dir, "data")); err != nil {
		t.Fatalf("pgtest: pg_ctl stop -m immediate: %v\n%s", err, out)
	}
}

// NewStandby makes a streaming standby of s with pg_basebackup -R (initdb
// -A trust already lets local connections replicate) and starts it on a
// socket directory of its own. It is stopped and removed when the test ends.
func (s *Server) NewStandby(t testenv.TB) *Server {
	t.Helper()
	dir, err := os.MkdirTemp("", "ensgate-pg-standby-")
	if err != nil {
		t.Fatal(err)
	}
	st := &server{dir: dir, bin: s.s.bin, asUser: s.s.asUser}
	if st.asUser != "" {
		if err := chownTo(dir, st.asUser); err != nil {
			os.RemoveAll(dir)
			t.Fatal(err)
		}
	}
	// -c fast: no waiting for the next checkpoint; -X stream: the WAL of
	// the copy itself comes along, so the standby starts consistent.
	if out, err := st.run("pg_basebackup", "-h", s.s.dir, "-U", "postgres", "-D", filepath.Join(dir, "data"),
		"-R", "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("pgtest: pg_basebackup: %v\n%s", err, out)
	}
	if err := st.start(); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(st.stop)
	return &Server{s: st}
}

// WaitReplayed waits until standby has replayed everything s has written
// so far, so that a failover now loses none of it (replication is
// asynchronous: the last commits before a crash may be lost otherwise).
func (s *Server) WaitReplayed(t testenv.TB, standby *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	primary, err := pgx.Connect(ctx, s.URL())
	if err != nil {
		t.Fatalf("pgtest: connect to the primary: %v", err)
	}
	defer primary.Close(ctx)
	// The insert position, not pg_current_wal_lsn (written so far): with
	// synchronous_commit=off the last commits may not be written yet.
	var lsn string
	if err := primary.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn); err != nil {
		t.Fatalf("pgtest: primary's WAL position: %v", err)
	}
	replica, err := pgx.Connect(ctx, standby.URL())
	if err != nil {
		t.Fatalf("pgtest: connect to the standby: %v", err)
	}
	defer replica.Close(ctx)
	for {
		var done bool
		if err := replica.QueryRow(ctx, "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", lsn).Scan(&done); err != nil {
			t.Fatalf("pgtest: standby's replay position: %v", err)
		}
		if done {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("pgtest: the standby has not replayed up to %s", lsn)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Promote makes a standby the primary and waits until it accepts writes.
func (s *Server) Promote(t testenv.TB) {
	t.Helper()
	if out, err := s.s.run("pg_ctl", "promote", "-w", "-t", "60", "-D", filepath.Join(s.s.dir, "data")); err != nil {
		t.Fatalf("pgtest: pg_ctl promote: %v\n%s", err, out)
	}
}

// MultiHostURL is the postgres database's URL on all the servers, in
// order, with target_session_attrs=read-write: a client connects to
// whichever of them is the primary, as a DATABASE_URL for a primary and
// its standbys does.
func MultiHostURL(servers ...*Server) string {
	hosts := make([]string, len(servers))
	for i, s := range servers {
		hosts[i] = s.s.dir
	}
	return (&url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/postgres",
		RawQuery: url.Values{"host": {strings.Join(hosts, ",")}, "sslmode": {"disable"},
			"target_session_attrs": {"read-write"}}.Encode()}).String()
}
