// Package ews builds and parses the Exchange Web Services (EWS) SOAP messages
// ENSGate needs (Subscribe, GetItem, GetFolder, SendNotification and
// SendNotificationResult) and provides a small EWS client.
//
// Parsing matches elements by namespace URI and local name, never by prefix,
// so any prefix choice (soap:, soap11:, s:, default namespace) parses. It is
// strict about what matters (the right root element in the right namespace,
// required fields present) and tolerant of everything else (unknown elements,
// whitespace, comments). Input is size-bounded, and documents carrying a
// DOCTYPE are refused outright: no entity is ever expanded and no external
// reference is ever followed.
package ews

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/beevik/etree"
)

// XML namespaces of SOAP 1.1 and EWS.
const (
	NamespaceSOAP     = "http://schemas.xmlsoap.org/soap/envelope/"
	NamespaceMessages = "http://schemas.microsoft.com/exchange/services/2006/messages"
	NamespaceTypes    = "http://schemas.microsoft.com/exchange/services/2006/types"
	NamespaceErrors   = "http://schemas.microsoft.com/exchange/services/2006/errors"
)

// maxDepth bounds element nesting. EWS messages nest about 10 deep; the
// limit keeps a hostile document from building a deep tree within the size
// limit.
const maxDepth = 64

// readLimited reads all of r, refusing input longer than limit bytes. It
// reads one byte past the limit so that a body of exactly limit bytes passes.
func readLimited(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%w (limit %d bytes)", ErrTooLarge, limit)
	}
	return data, nil
}

// ParseDocument parses an untrusted XML document (an EWS message) and
// returns its root element.
//
// parseDocument parses data into an element tree, refusing DTDs.
//
// encoding/xml (under etree) never expands external entities and, with a nil
// Decoder.Entity map, knows only the five predefined ones, so a reference to
// a DTD-declared entity is a syntax error anyway. We still refuse any
// document that carries a DOCTYPE, so the caller gets a clear ErrDTD rather
// than an obscure syntax error, and so the guarantee does not rest on a
// decoder setting someone might change later.
func ParseDocument(data []byte) (*etree.Element, error) {
	if err := checkProlog(data); err != nil {
		return nil, err
	}
	doc := etree.NewDocument()
	doc.ReadSettings = etree.ReadSettings{MaxDepth: maxDepth}
	if err := doc.ReadFromBytes(data); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if hasDirective(&doc.Element) {
		return nil, ErrDTD
	}
	// etree accepts several top-level elements and stray text; XML allows
	// exactly one root.
	var root *etree.Element
	for _, tok := range doc.Child {
		switch t := tok.(type) {
		case *etree.Element:
			if root != nil {
				return nil, fmt.Errorf("%w: more than one root element", ErrMalformed)
			}
			root = t
		case *etree.CharData:
			if strings.TrimSpace(t.Data) != "" {
				return nil, fmt.Errorf("%w: text outside the root element", ErrMalformed)
			}
		}
	}
	if root == nil {
		return nil, fmt.Errorf("%w: no root element", ErrMalformed)
	}
	return root, nil
}

// checkProlog looks at the tokens before the root element, where a DOCTYPE
// belongs, and stops at the root: cheap, and it runs before etree so that an
// entity reference later in the document cannot mask the real problem.
func checkProlog(data []byte) error {
	dec := xml.NewDecoder(bytes.NewReader(data))
	for {
		tok, err := dec.RawToken()
		if err != nil {
			return nil // etree reports syntax errors with better context
		}
		switch tok.(type) {
		case xml.Directive:
			return ErrDTD
		case xml.StartElement:
			return nil
		}
	}
}

// hasDirective reports whether a <!...> directive appears anywhere in the
// tree; encoding/xml accepts them inside elements too.
func hasDirective(e *etree.Element) bool {
	for _, tok := range e.Child {
		switch t := tok.(type) {
		case *etree.Directive:
			return true
		case *etree.Element:
			if hasDirective(t) {
				return true
			}
		}
	}
	return false
}

// parseEnvelope parses a SOAP 1.1 envelope and returns its Body.
func parseEnvelope(data []byte) (*etree.Element, error) {
	root, err := ParseDocument(data)
	if err != nil {
		return nil, err
	}
	if !is(root, NamespaceSOAP, "Envelope") {
		return nil, fmt.Errorf("%w: root element is not a SOAP 1.1 Envelope", ErrMalformed)
	}
	body := child(root, NamespaceSOAP, "Body")
	if body == nil {
		return nil, fmt.Errorf("%w: SOAP Body missing", ErrMalformed)
	}
	return body, nil
}

// is reports whether e is the element {ns}local.
func is(e *etree.Element, ns, local string) bool {
	return e.Tag == local && e.NamespaceURI() == ns
}

// child returns e's first child element {ns}local, or nil. A nil e yields
// nil, so lookups can be chained and checked once.
func child(e *etree.Element, ns, local string) *etree.Element {
	if e == nil {
		return nil
	}
	for c := range e.ChildElementsSeq() {
		if is(c, ns, local) {
			return c
		}
	}
	return nil
}

// childText returns the trimmed text of e's child {ns}local, or "".
func childText(e *etree.Element, ns, local string) string {
	c := child(e, ns, local)
	if c == nil {
		return ""
	}
	return strings.TrimSpace(c.Text())
}

// parseItemID reads the Id and ChangeKey attributes of an ItemId-like
// element; a nil e yields the zero ItemID.
func parseItemID(e *etree.Element) ItemID {
	if e == nil {
		return ItemID{}
	}
	return ItemID{ID: attr(e, "Id"), ChangeKey: attr(e, "ChangeKey")}
}

// parseFolderID is parseItemID for FolderId-like elements.
func parseFolderID(e *etree.Element) FolderID {
	return FolderID(parseItemID(e))
}

// attr returns the value of e's unqualified attribute key, or "". Unlike
// etree's SelectAttrValue it does not match prefixed attributes such as
// xmlns:Id.
func attr(e *etree.Element, key string) string {
	for _, a := range e.Attr {
		if a.Space == "" && a.Key == key {
			return a.Value
		}
	}
	return ""
}

// firstChild returns e's first child element, or nil.
func firstChild(e *etree.Element) *etree.Element {
	if e == nil {
		return nil
	}
	for c := range e.ChildElementsSeq() {
		return c
	}
	return nil
}

// childLocal returns e's first child element named local in any namespace.
func childLocal(e *etree.Element, local string) *etree.Element {
	if e == nil {
		return nil
	}
	for c := range e.ChildElementsSeq() {
		if c.Tag == local {
			return c
		}
	}
	return nil
}

// text returns e's character data verbatim, or "" for a nil e.
func text(e *etree.Element) string {
	if e == nil {
		return ""
	}
	return e.Text()
}

// parseBool parses the xs:boolean of the named field. Errors name the field,
// never the value: values come from the network and may be anything.
func parseBool(field, s string) (bool, error) {
	switch s {
	case "true", "1":
		return true, nil
	case "false", "0":
		return false, nil
	}
	return false, fmt.Errorf("%w: %s is not an xs:boolean", ErrMalformed, field)
}

// parseInt parses the xs:int of the named field.
func parseInt(field, s string) (int, error) {
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: %s is not an xs:int", ErrMalformed, field)
	}
	return int(n), nil
}

// parseDateTime parses the xs:dateTime of the named field. EWS sends UTC
// with a "Z", but the schema type allows omitting the zone, read as UTC.
// Times whose UTC year falls outside 1..9999 are refused: they could not be
// written back as an xs:dateTime.
func parseDateTime(field, s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t, err = time.Parse("2006-01-02T15:04:05.999999999", s)
	}
	if y := t.UTC().Year(); err != nil || y < 1 || y > 9999 {
		return time.Time{}, fmt.Errorf("%w: %s is not an xs:dateTime", ErrMalformed, field)
	}
	return t, nil
}

// formatDateTime writes t as an xs:dateTime in UTC.
func formatDateTime(t time.Time) string {
	return t.UTC().Format(time.RFC3339Nano)
}

// envelope is a SOAP envelope under construction with the usual EWS prefixes.
type envelope struct {
	doc  *etree.Document
	body *etree.Element
}

// newEnvelope starts a SOAP 1.1 envelope declaring soap:, m: and t:. A
// non-empty version adds the RequestServerVersion header every EWS request
// carries; messages from a listener have no header.
func newEnvelope(version string) *envelope {
	doc := etree.NewDocument()
	doc.CreateProcInst("xml", `version="1.0" encoding="utf-8"`)
	// Canonical escaping writes \r, \n and \t in attributes and \r in text
	// as character references, so values survive a parse/serialise cycle.
	doc.WriteSettings = etree.WriteSettings{CanonicalText: true, CanonicalAttrVal: true}
	root := doc.CreateElement("soap:Envelope")
	root.CreateAttr("xmlns:soap", NamespaceSOAP)
	root.CreateAttr("xmlns:m", NamespaceMessages)
	root.CreateAttr("xmlns:t", NamespaceTypes)
	if version != "" {
		root.CreateElement("soap:Header").CreateElement("t:RequestServerVersion").CreateAttr("Version", version)
	}
	return &envelope{doc: doc, body: root.CreateElement("soap:Body")}
}

// bytes serialises the envelope.
func (env *envelope) bytes() []byte {
	var buf bytes.Buffer
	env.doc.WriteTo(&buf) // writing to a bytes.Buffer cannot fail
	return buf.Bytes()
}
