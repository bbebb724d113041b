package store

import (
	"context"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed migrations/*.sql
var embedded embed.FS

var migrations = mustSub(embedded, "migrations")

const versionTable = "public.ensgate_schema_version"

// newMigrator loads the embedded migrations. tern serialises concurrent
// migrators with an advisory lock, so several nodes may migrate at once.
func newMigrator(ctx context.Context, conn *pgx.Conn) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, conn, versionTable)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	if err := m.LoadMigrations(migrations); err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return m, nil
}

// Migrate brings the schema up to the version this binary needs and returns
// the versions before and after. Running it again changes nothing. River's
// tables come first, so a schema at ENSGate's version has them.
func (s *Store) Migrate(ctx context.Context) (from, to int32, err error) {
	if err := s.migrateJobs(ctx); err != nil {
		return 0, 0, err
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return 0, 0, s.unreachable(err)
	}
	defer conn.Release()
	m, err := newMigrator(ctx, conn.Conn())
	if err != nil {
		return 0, 0, err
	}
	if from, err = m.GetCurrentVersion(ctx); err != nil {
		return 0, 0, fmt.Errorf("migrations: %w", err)
	}
	if err := m.Migrate(ctx); err != nil {
		return from, 0, fmt.Errorf("migrations: %w", err)
	}
	to, err = m.GetCurrentVersion(ctx)
	return from, to, err
}

// SchemaVersion reports the database's schema version and the one this
// binary was built for, without changing anything.
func (s *Store) SchemaVersion(ctx context.Context) (current, wanted int32, err error) {
	var exists bool
	if err := s.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", versionTable).Scan(&exists); err != nil {
		return 0, 0, s.unreachable(err)
	}
	if exists {
		if err := s.pool.QueryRow(ctx, "SELECT version FROM "+versionTable).Scan(&current); err != nil {
			return 0, 0, fmt.Errorf("schema version: %w", err)
		}
	}
	names, err := migrate.FindMigrations(migrations)
	if err != nil {
		return 0, 0, err
	}
	return current, int32(len(names)), nil
}

func mustSub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		panic(err) // the directory is embedded at build time
	}
	return sub
}
