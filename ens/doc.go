// Package ens is the Email Notification Service: device keys, registration,
// EWS push subscriptions, the Exchange webhook and the notification pipeline.
// It knows nothing of Caddy; caddymodule wires it into the server.
//
// Files by job, in the order a notification meets them:
//
//	webhook.go      Exchange's callback: authenticate, unseal, hygiene, answer
//	delivery.go     claims, the mail source, the payload at the device's level, pushes
//	ews_source.go   the mail read through EWS (GetItem, GetFolder)
//	proxy.go        ENS and an ENSGate EWS proxy: compliance, attestation, the proxy's answer
//	endpoints.go    the allowed EWS endpoints' shared clients and bulkheads
//	credentials.go  the sealed credentials and how they call Exchange
//	tokens.go       OAuth refresh tokens: redeemed, re-sealed one at a time
//
// and for Exchange Online through Microsoft Graph:
//
//	graph.go            registration, the notification URL, the mail read through Graph
//	graph_lifecycle.go  lifecycle events (renewal, re-creation, catch-up), the fallback job
//
// and for the device API and the workers:
//
//	api.go, errors.go, auth.go, ratelimit.go   routes, error answers, tenant tokens, limits
//	publickey.go, register.go, devices.go       publickey, registerdevicev2, status and unregister
//	admin.go                                    the admin API and its device actions
//	service.go, keypool.go                      the service, its workers, the key pairs
//	jobs.go                                     the durable jobs (River, in PostgreSQL): pushes to
//	                                            retry, "register again", health, key pool, clean-up
package ens
