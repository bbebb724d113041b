package caddymodule

import (
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ensgate/ensgate/ens"
)

// accessLog writes the access-log entries of the requests the ens handler
// serves, with their secrets redacted: the callback key `f` in Exchange's
// notify URL (with a database dump it opens the credentials), the device
// secret header and every credential header. Caddy captures the request for
// its own entry before any handler runs, so no handler can redact that
// entry: the ens handler skips it (caddyhttp.LogSkipVar) and writes this one
// instead, under the same logger names and with the same fields (fields
// that handlers before ens add to the access log are not carried over).
type accessLog struct {
	logger *zap.Logger // "http.log.access", routed like Caddy's own
}

func newAccessLog(ctx caddy.Context) accessLog {
	return accessLog{logger: ctx.Logger(new(caddyhttp.App)).Named("log.access")}
}

// redacted replaces secrets in what the access log shows.
const redacted = "REDACTED"

// serve runs h, writing the redacted entry when Caddy would have written
// one.
func (a accessLog) serve(w http.ResponseWriter, r *http.Request, h http.Handler) {
	ctx := r.Context()
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if skip, _ := caddyhttp.GetVar(ctx, caddyhttp.LogSkipVar).(bool); skip || srv == nil || srv.Logs == nil || !shouldLog(srv.Logs, r) {
		h.ServeHTTP(w, r)
		return
	}
	caddyhttp.SetVar(ctx, caddyhttp.LogSkipVar, true)
	request := zap.Object("request", caddyhttp.LoggableHTTPRequest{Request: redactRequest(r)})
	body := &countingReader{r: r.Body}
	if r.Body != nil {
		r.Body = body
	}
	rec := caddyhttp.NewResponseRecorder(w, nil, nil)
	h.ServeHTTP(rec, r)

	start, ok := caddyhttp.GetVar(ctx, "start_time").(time.Time)
	if !ok {
		start = time.Now()
	}
	level := zapcore.InfoLevel
	if rec.Status() >= 500 {
		level = zapcore.ErrorLevel
	}
	if name, ok := caddyhttp.GetVar(ctx, caddyhttp.LogLevelVar).(string); ok {
		if l, err := zapcore.ParseLevel(name); err == nil && l >= zapcore.DebugLevel && l <= zapcore.ErrorLevel {
			level = l
		}
	}
	for _, logger := range loggersFor(a.logger, srv.Logs, r) {
		if c := logger.Check(level, "handled request"); c != nil {
			c.Write(request,
				zap.Int("bytes_read", body.n),
				zap.String("user_id", userID(r)),
				zap.Duration("duration", time.Since(start)),
				zap.Int("size", rec.Size()),
				zap.Int("status", rec.Status()),
				zap.Object("resp_headers", caddyhttp.LoggableHTTPHeader{Header: rec.Header()}))
		}
	}
}

// userID is what an authentication handler before ens set, as Caddy logs it.
func userID(r *http.Request) string {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return ""
	}
	id, _ := repl.GetString("http.auth.user.id")
	return id
}

// redactRequest returns a copy of r for the log, without its secrets.
// Credential headers are redacted by LoggableHTTPHeader whatever the
// server's log_credentials says: ENS's are tokens.
func redactRequest(r *http.Request) *http.Request {
	c := r.Clone(r.Context())
	if c.Header.Get(ens.DeviceSecretHeader) != "" {
		c.Header.Set(ens.DeviceSecretHeader, redacted)
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
type countingReader struct {
	r io.ReadCloser
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
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
