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
	buf := make([]byte, operationPeek)
	n, _ := io.ReadFull(r.Body, buf)
	// The upstream gets the peeked bytes, then the rest (or the same error,
	// or EOF) from the original body.
	r.Body = readCloser{io.MultiReader(bytes.NewReader(buf[:n]), r.Body), r.Body}
	return operationIn(buf[:n])
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
