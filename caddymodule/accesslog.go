package caddymodule

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ensgate/ensgate/attest"
	"github.com/ensgate/ensgate/ens"
)

// accessLog writes the access-log entries of the requests the ens and
// ews_proxy handlers serve, with what must not be logged redacted: the
// callback key `f` in Exchange's notify URL (with a database dump it opens
// the credentials), the device secret, the mailbox address in
// X-AnchorMailbox (ENS's EWS calls and devices send it for Exchange's
// routing, so it is forwarded as is), ENS's device attestation and every
// credential header. Caddy captures the request for its own entry before
// any handler runs, so no handler can redact that entry: these handlers
// skip it (caddyhttp.LogSkipVar) and write this one instead, under the same
// logger names and with the same fields, plus those they add with
// addLogFields (fields that handlers before them add to the access log are
// not carried over: Caddy's ExtraLogFields cannot be read back).
type accessLog struct {
	logger *zap.Logger // "http.log.access", routed like Caddy's own
}

func newAccessLog(ctx caddy.Context) accessLog {
	return accessLog{logger: ctx.Logger(new(caddyhttp.App)).Named("log.access")}
}

// redacted replaces secrets in what the access log shows.
const redacted = "REDACTED"

// redactedHeaders are the request headers the access log shows as
// REDACTED, besides the credential headers LoggableHTTPHeader redacts
// (Authorization, Cookie and the like) whatever the server's
// log_credentials says: ENS's are tokens, the proxy's carry users'
// passwords.
var redactedHeaders = []string{
	ens.DeviceSecretHeader,
	"X-AnchorMailbox", // a mail address: personal data
	// ENS's signed device list: a token bound to its request, useless in
	// a log; the proxy's own log lines name the devices it refuses.
	attest.DevicesHeader,
}

// serve runs next, writing the redacted entry when Caddy would have
// written one, and returns next's error for Caddy to answer.
func (a accessLog) serve(w http.ResponseWriter, r *http.Request, next func(http.ResponseWriter, *http.Request) error) error {
	ctx := r.Context()
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if skip, _ := caddyhttp.GetVar(ctx, caddyhttp.LogSkipVar).(bool); skip || srv == nil || srv.Logs == nil || !shouldLog(srv.Logs, r) {
		return next(w, r)
	}
	caddyhttp.SetVar(ctx, caddyhttp.LogSkipVar, true)
	request := zap.Object("request", caddyhttp.LoggableHTTPRequest{Request: redactRequest(r)})
	body := &countingReader{r: r.Body}
	if r.Body != nil {
		r.Body = body
	}
	extra := new(entryFields)
	r = r.WithContext(context.WithValue(ctx, entryFieldsKey{}, extra))
	rec := caddyhttp.NewResponseRecorder(w, nil, nil)
	err := next(rec, r)

	start, ok := caddyhttp.GetVar(ctx, "start_time").(time.Time)
	if !ok {
		start = time.Now()
	}
	status := rec.Status()
	if err != nil && status == 0 {
		// Caddy answers the error after the handlers have returned: with
		// its status, or 500 (an error route, if any, may answer otherwise).
		status = http.StatusInternalServerError
		if he, ok := errors.AsType[caddyhttp.HandlerError](err); ok {
			status = he.StatusCode
		}
	}
	level := zapcore.InfoLevel
	if status >= 500 {
		level = zapcore.ErrorLevel
	}
	if name, ok := caddyhttp.GetVar(ctx, caddyhttp.LogLevelVar).(string); ok {
		if l, err := zapcore.ParseLevel(name); err == nil && l >= zapcore.DebugLevel && l <= zapcore.ErrorLevel {
			level = l
		}
	}
	fields := append([]zap.Field{request,
		zap.Int64("bytes_read", body.n.Load()),
		zap.String("user_id", userID(r)),
		zap.Duration("duration", time.Since(start)),
		zap.Int("size", rec.Size()),
		zap.Int("status", status),
		zap.Object("resp_headers", caddyhttp.LoggableHTTPHeader{Header: rec.Header()}),
	}, extra.fields...)
	for _, logger := range loggersFor(a.logger, srv.Logs, r) {
		if c := logger.Check(level, "handled request"); c != nil {
			c.Write(fields...)
		}
	}
	return err
}

// entryFields are the fields a handler adds to the entry serve writes.
type entryFields struct{ fields []zap.Field }

type entryFieldsKey struct{}

// addLogFields adds fields to r's access-log entry, if serve writes one.
func addLogFields(r *http.Request, fields ...zap.Field) {
	if e, ok := r.Context().Value(entryFieldsKey{}).(*entryFields); ok {
		e.fields = append(e.fields, fields...)
	}
}

// userID is what an authentication handler before ours set, as Caddy logs it.
func userID(r *http.Request) string {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return ""
	}
	id, _ := repl.GetString("http.auth.user.id")
	return id
}

// redactRequest returns a copy of r for the log, without its secrets.
func redactRequest(r *http.Request) *http.Request {
	c := r.Clone(r.Context())
	for _, h := range redactedHeaders {
		if len(c.Header.Values(h)) > 0 {
			c.Header.Set(h, redacted)
		}
	}
	if path, query, ok := strings.Cut(c.RequestURI, "?"); ok {
		c.RequestURI = path + "?" + redactQuery(query)
	}
	return c
}

// redactQuery replaces the values of the callback key `f`, however its
// name is escaped (the notify handler unescapes it), and of any parameter
// whose name cannot be unescaped.
func redactQuery(query string) string {
	params := strings.Split(query, "&")
	for i, p := range params {
		name, _, _ := strings.Cut(p, "=")
		if n, err := url.QueryUnescape(name); err != nil || n == "f" {
			params[i] = name + "=" + redacted
		}
	}
	return strings.Join(params, "&")
}

// countingReader counts the request body bytes read, for bytes_read.
// countingReader counts the body bytes read. Behind reverse_proxy the
// transport may still be reading the body on its own goroutine when the
// handler returns (an upstream answering early), hence the atomic.
type countingReader struct {
	r io.ReadCloser
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

// The rest follows caddyhttp's (unexported) shouldLogRequest and
// wrapLogger, so that these entries go where Caddy's would.

// shouldLog reports whether Caddy logs requests to r's host.
func shouldLog(logs *caddyhttp.ServerLogConfig, r *http.Request) bool {
	host := hostOnly(r.Host)
	for name := range logs.LoggerNames {
		if matchWildcard(host, name) {
			return true
		}
	}
	for _, skip := range logs.SkipHosts {
		if matchWildcard(host, skip) {
			return false
		}
	}
	return !logs.SkipUnmappedHosts
}

// loggersFor returns the access loggers named for r: by the log_name
// directive, else by the server's logger_names for its host.
func loggersFor(base *zap.Logger, logs *caddyhttp.ServerLogConfig, r *http.Request) []*zap.Logger {
	var names []string
	if v, ok := caddyhttp.GetVar(r.Context(), caddyhttp.AccessLoggerNameVarKey).([]any); ok {
		for _, n := range v {
			s, _ := n.(string)
			names = append(names, s)
		}
	} else {
		names = loggerNames(logs, strings.ToLower(hostOnly(r.Host)))
	}
	loggers := make([]*zap.Logger, len(names))
	for i, n := range names {
		loggers[i] = base
		if n != "" {
			loggers[i] = base.Named(n)
		}
	}
	return loggers
}

func loggerNames(logs *caddyhttp.ServerLogConfig, host string) []string {
	if names, ok := logs.LoggerNames[host]; ok {
		return names
	}
	labels := strings.Split(host, ".")
	for i := range labels {
		if labels[i] == "" {
			continue
		}
		labels[i] = "*"
		if names, ok := logs.LoggerNames[strings.Join(labels, ".")]; ok {
			return names
		}
	}
	return []string{logs.DefaultLoggerName}
}

// matchWildcard is certmagic.MatchWildcard: "*.example.com" matches
// "a.example.com".
func matchWildcard(subject, wildcard string) bool {
	if subject == wildcard {
		return true
	}
	if !strings.Contains(wildcard, "*") {
		return false
	}
	labels := strings.Split(subject, ".")
	for i := range labels {
		if labels[i] == "" {
			continue
		}
		labels[i] = "*"
		if strings.Join(labels, ".") == wildcard {
			return true
		}
	}
	return false
}

func hostOnly(hostport string) string {
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		return host
	}
	return hostport
}
