// Package ewsproxy is the EWS proxy's core, free of Caddy: which device a
// request belongs to, whether it may reach Exchange (compliance), and which
// authentication challenges a client may see. caddymodule wraps it around
// Caddy's reverse_proxy as http.handlers.ews_proxy.
package ewsproxy
