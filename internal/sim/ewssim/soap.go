package ewssim

import (
	"net/http"
	"strconv"
	"time"

	"github.com/beevik/etree"
)

const (
	nsSOAP   = "http://schemas.xmlsoap.org/soap/envelope/"
	nsMsgs   = "http://schemas.microsoft.com/exchange/services/2006/messages"
	nsTypes  = "http://schemas.microsoft.com/exchange/services/2006/types"
	nsErrors = "http://schemas.microsoft.com/exchange/services/2006/errors"
)

// child returns e's first child element with the namespace and local name,
// whatever prefix the sender chose.
func child(e *etree.Element, ns, local string) *etree.Element {
	if e == nil {
		return nil
	}
	for _, c := range e.ChildElements() {
		if c.Tag == local && c.NamespaceURI() == ns {
			return c
		}
	}
	return nil
}

func children(e *etree.Element, ns, local string) []*etree.Element {
	if e == nil {
		return nil
	}
	var out []*etree.Element
	for _, c := range e.ChildElements() {
		if c.Tag == local && c.NamespaceURI() == ns {
			out = append(out, c)
		}
	}
	return out
}

// soapBody returns the Body element of a SOAP 1.1 envelope.
func soapBody(env *etree.Element) *etree.Element {
	if env == nil || env.Tag != "Envelope" || env.NamespaceURI() != nsSOAP {
		return nil
	}
	return child(env, nsSOAP, "Body")
}

// envelope starts an outgoing SOAP message with the s, m and t prefixes
// declared on the root; it returns the document, Header and Body.
func envelope() (*etree.Document, *etree.Element, *etree.Element) {
	doc := etree.NewDocument()
	doc.CreateProcInst("xml", `version="1.0" encoding="utf-8"`)
	env := doc.CreateElement("s:Envelope")
	env.CreateAttr("xmlns:s", nsSOAP)
	env.CreateAttr("xmlns:m", nsMsgs)
	env.CreateAttr("xmlns:t", nsTypes)
	return doc, env.CreateElement("s:Header"), env.CreateElement("s:Body")
}

// responseEnvelope is envelope with Exchange's ServerVersionInfo header,
// for answers to EWS requests.
func responseEnvelope() (*etree.Document, *etree.Element) {
	doc, hdr, body := envelope()
	v := hdr.CreateElement("t:ServerVersionInfo")
	v.CreateAttr("MajorVersion", "15")
	v.CreateAttr("MinorVersion", "2")
	v.CreateAttr("MajorBuildNumber", "1544")
	v.CreateAttr("MinorBuildNumber", "4")
	v.CreateAttr("Version", "V2017_07_11")
	return doc, body
}

func text(parent *etree.Element, tag, value string) *etree.Element {
	e := parent.CreateElement(tag)
	e.SetText(value)
	return e
}

func idElem(parent *etree.Element, tag, id, ck string) *etree.Element {
	e := parent.CreateElement(tag)
	e.CreateAttr("Id", id)
	e.CreateAttr("ChangeKey", ck)
	return e
}

func xmlTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

// messageTexts are Exchange's MessageText for the error codes the
// simulator answers with.
var messageTexts = map[string]string{
	"ErrorItemNotFound":               "The specified object was not found in the store., The process failed to get the correct properties.",
	"ErrorInvalidIdMalformed":         "Id is malformed.",
	"ErrorFolderNotFound":             "The specified folder could not be found in the store.",
	"ErrorSubscriptionNotFound":       "The specified subscription was not found.",
	"ErrorExceededSubscriptionCount":  "You have exceeded the available subscriptions for your account. Remove unnecessary subscriptions and try your request again.",
	"ErrorInvalidWatermark":           "Watermark is invalid.",
	"ErrorInvalidPushSubscriptionUrl": "The push subscription URL is invalid.",
	"ErrorInvalidSubscriptionRequest": "This server accepts push subscriptions only.",
	"ErrorServerBusy":                 "The server cannot service this request right now. Try again later.",
}

// responseMessage adds a ResponseMessageType element: Success for
// NoError, otherwise Error with Exchange's MessageText and
// DescriptiveLinkKey. The caller appends the operation's own elements.
func (s *Server) responseMessage(parent *etree.Element, tag, code string) *etree.Element {
	s.stats.response(code)
	rm := parent.CreateElement(tag)
	if code == "NoError" {
		rm.CreateAttr("ResponseClass", "Success")
		text(rm, "m:ResponseCode", code)
		return rm
	}
	rm.CreateAttr("ResponseClass", "Error")
	text(rm, "m:MessageText", messageTexts[code])
	text(rm, "m:ResponseCode", code)
	text(rm, "m:DescriptiveLinkKey", "0")
	return rm
}

// writeFault answers with an EWS SOAP fault (HTTP 500), shaped like
// Exchange's: faultcode a:<code>, the code and message again in detail,
// and for ErrorServerBusy the BackOffMilliseconds hint.
func (s *Server) writeFault(w http.ResponseWriter, code, message string, backOff time.Duration) {
	s.stats.response(code)
	doc := etree.NewDocument()
	doc.CreateProcInst("xml", `version="1.0" encoding="utf-8"`)
	env := doc.CreateElement("s:Envelope")
	env.CreateAttr("xmlns:s", nsSOAP)
	f := env.CreateElement("s:Body").CreateElement("s:Fault")
	fc := text(f, "faultcode", "a:"+code)
	fc.CreateAttr("xmlns:a", nsTypes)
	text(f, "faultstring", message).CreateAttr("xml:lang", "en-US")
	d := f.CreateElement("detail")
	text(d, "e:ResponseCode", code).CreateAttr("xmlns:e", nsErrors)
	text(d, "e:Message", message).CreateAttr("xmlns:e", nsErrors)
	if backOff > 0 {
		mx := d.CreateElement("t:MessageXml")
		mx.CreateAttr("xmlns:t", nsTypes)
		v := text(mx, "t:Value", strconv.FormatInt(backOff.Milliseconds(), 10))
		v.CreateAttr("Name", "BackOffMilliseconds")
	}
	writeXML(w, http.StatusInternalServerError, doc)
}

func writeXML(w http.ResponseWriter, status int, doc *etree.Document) {
	b, err := doc.WriteToBytes()
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}
