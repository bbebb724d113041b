// Package kcd turns a verified client certificate into a Kerberos service
// ticket for Exchange (Kerberos Constrained Delegation: S4U2Self and
// S4U2Proxy on gokrb5) and builds the SPNEGO Negotiate header.
package kcd
