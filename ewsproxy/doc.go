// Package ewsproxy is the EWS proxy's core, free of Caddy: which devices a
// request belongs to, whether it may reach Exchange (by the states of the
// compliance package's cache), which authentication challenges a client may
// see, and which EWS operation it is. caddymodule wraps it around Caddy's
// reverse_proxy.
package ewsproxy
