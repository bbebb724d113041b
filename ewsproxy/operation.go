package ewsproxy

import (
	"bytes"
	"encoding/xml"
	"io"
	"net/http"
)

// operationPeek bounds how much of a body is read to find the operation:
// the SOAP header and the start of the body fit in far less, and large
// requests (attachments) stream on untouched after it.
const operationPeek = 16 << 10

// Operation returns the EWS operation of a SOAP request (the first element
// in the SOAP Body, e.g. "GetItem"), or "" if it cannot be told from the
// first 16 KiB. The request body is left intact for the upstream.
func Operation(r *http.Request) string {
	if r.Method != http.MethodPost || r.Body == nil || r.Body == http.NoBody {
		return ""
	}
	// Read a little first and more only if the operation is not in it
	// yet: EWS requests name it within their first kilobyte or two, and a
	// 16 KiB buffer per request would dominate the proxy's allocations.
	var op string
	buf := make([]byte, 0, 2<<10)
	for {
		n, err := io.ReadFull(r.Body, buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if op = operationIn(buf); op != "" || err != nil || len(buf) >= operationPeek {
			break
		}
		grown := make([]byte, len(buf), min(2*cap(buf), operationPeek))
		copy(grown, buf)
		buf = grown
	}
	// The upstream gets the peeked bytes, then the rest (or the same error,
	// or EOF) from the original body.
	r.Body = readCloser{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}
	return op
}

type readCloser struct {
	io.Reader
	io.Closer
}

// operationIn scans tokens, without building a tree and without any DTD
// processing, to the first element inside soap:Body.
func operationIn(data []byte) string {
	d := xml.NewDecoder(bytes.NewReader(data))
	inBody := false
	for {
		tok, err := d.RawToken()
		if err != nil {
			return ""
		}
		if _, ok := tok.(xml.Directive); ok {
			return "" // a DOCTYPE: not EWS, and not ours to parse
		}
		se, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if inBody {
			return se.Name.Local
		}
		inBody = se.Name.Local == "Body"
	}
}
