package ewssim

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/beevik/etree"

	"github.com/ensgate/ensgate/ews"
)

// serveEWS handles /EWS/Exchange.asmx: authentication as IIS does it,
// then the SOAP request, with any injected fault applied first.
func (s *Server) serveEWS(w http.ResponseWriter, r *http.Request) {
	user, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		if _, tooBig := errors.AsType[*http.MaxBytesError](err); tooBig {
			http.Error(w, "request entity too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	var op *etree.Element
	doc, perr := ews.ParseDocument(raw)
	if perr == nil {
		if body := soapBody(doc); body != nil && len(body.ChildElements()) > 0 {
			op = body.ChildElements()[0]
		}
	}
	opName := ""
	if op != nil && op.NamespaceURI() == nsMsgs {
		opName = op.Tag
	}
	s.stats.request(opName)
	start := time.Now()
	defer func() { s.log.Debug("ews request", "op", opName, "duration", time.Since(start)) }()

	deleteFirst := false
	if f, ok := s.takeFault(user, opName); ok {
		switch f.Kind {
		case FaultServerBusy:
			s.writeFault(w, "ErrorServerBusy", messageTexts["ErrorServerBusy"], f.BackOff)
			return
		case FaultUnavailable:
			// What HTTP.sys sends when the application pool is gone.
			w.Header().Set("Content-Type", "text/html; charset=us-ascii")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "<HTML><HEAD><TITLE>Service Unavailable</TITLE></HEAD><BODY><h2>Service Unavailable</h2><hr><p>HTTP Error 503. The service is unavailable.</p></BODY></HTML>\r\n")
			return
		case FaultDelay:
			t := time.NewTimer(f.Delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		case FaultDeleteBeforeGetItem:
			deleteFirst = true
		}
	}

	switch {
	case perr != nil:
		s.writeFault(w, "ErrorSchemaValidation", "The request failed schema validation: "+perr.Error(), 0)
	case opName == "":
		s.writeFault(w, "ErrorSchemaValidation", "The request failed schema validation: no SOAP 1.1 Body with an EWS operation.", 0)
	case opName == "Subscribe":
		s.subscribe(w, user, op)
	case opName == "GetItem":
		s.getItem(w, user, op, deleteFirst)
	case opName == "GetFolder":
		s.getFolder(w, user, op)
	case opName == "FindItem":
		s.findItem(w, user, op)
	case opName == "Unsubscribe":
		s.unsubscribe(w)
	case opName == "ConvertId":
		s.convertID(w, op)
	default:
		s.writeFault(w, "ErrorInvalidRequest", "The request is invalid: the simulator does not implement the operation '"+op.Tag+"'.", 0)
	}
}

// Properties the simulator returns, as item and folder FieldURIs.
var (
	itemDefault = []string{"item:Subject", "item:Body", "item:DateTimeReceived", "item:HasAttachments", "message:Sender", "message:From", "message:IsRead"}
	itemAll     = append([]string{"item:ParentFolderId", "item:ItemClass", "item:Size", "item:Preview"}, itemDefault...)

	folderDefault = []string{"folder:DisplayName", "folder:TotalCount", "folder:ChildFolderCount", "folder:UnreadCount"}
	folderAll     = append([]string{"folder:FolderClass", "folder:ParentFolderId"}, folderDefault...)
)

// shape reads an ItemShape or FolderShape into the set of FieldURIs to
// return. Unknown FieldURIs are ignored: Exchange omits properties an
// object does not have.
func shape(e *etree.Element, defaults, all []string) map[string]bool {
	props := map[string]bool{}
	var base []string
	switch strings.TrimSpace(child(e, nsTypes, "BaseShape").NotNil().Text()) {
	case "Default":
		base = defaults
	case "AllProperties":
		base = all
	}
	for _, p := range base {
		props[p] = true
	}
	for _, f := range children(child(e, nsTypes, "AdditionalProperties"), nsTypes, "FieldURI") {
		props[f.SelectAttrValue("FieldURI", "")] = true
	}
	return props
}

func (s *Server) getItem(w http.ResponseWriter, user string, op *etree.Element, deleteFirst bool) {
	ids := children(child(op, nsMsgs, "ItemIds"), nsTypes, "ItemId")
	if len(ids) == 0 {
		s.writeFault(w, "ErrorSchemaValidation", "The request failed schema validation: GetItem needs ItemIds with at least one ItemId.", 0)
		return
	}
	props := shape(child(op, nsMsgs, "ItemShape"), itemDefault, itemAll)
	doc, body := responseEnvelope()
	rms := body.CreateElement("m:GetItemResponse").CreateElement("m:ResponseMessages")

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, idEl := range ids {
		id := idEl.SelectAttrValue("Id", "")
		if deleteFirst {
			if m, _ := s.findItemFor(user, id); m != nil {
				m.deleteItem(id)
			}
		}
		m, it := s.findItemFor(user, id)
		if it == nil {
			s.responseMessage(rms, "m:GetItemResponseMessage", "ErrorItemNotFound").CreateElement("m:Items")
			continue
		}
		rm := s.responseMessage(rms, "m:GetItemResponseMessage", "NoError")
		writeMessage(rm.CreateElement("m:Items").CreateElement("t:Message"), m, it, props)
	}
	writeXML(w, http.StatusOK, doc)
}

// writeMessage fills a t:Message in the schema's element order.
func writeMessage(msg *etree.Element, m *mailbox, it *Item, props map[string]bool) {
	idElem(msg, "t:ItemId", it.ID, it.ChangeKey)
	if props["item:ParentFolderId"] {
		idElem(msg, "t:ParentFolderId", m.inboxID, m.inboxCK())
	}
	if props["item:ItemClass"] {
		text(msg, "t:ItemClass", "IPM.Note")
	}
	if props["item:Subject"] {
		text(msg, "t:Subject", it.Subject)
	}
	if props["item:Body"] {
		text(msg, "t:Body", it.Body).CreateAttr("BodyType", "Text")
	}
	if props["item:DateTimeReceived"] {
		text(msg, "t:DateTimeReceived", xmlTime(it.Received))
	}
	if props["item:Size"] {
		text(msg, "t:Size", strconv.Itoa(len(it.Subject)+len(it.Body)+512))
	}
	if props["item:HasAttachments"] {
		text(msg, "t:HasAttachments", "false")
	}
	if props["item:Preview"] {
		text(msg, "t:Preview", it.Preview)
	}
	if props["message:Sender"] {
		writeMailbox(msg.CreateElement("t:Sender"), it.FromName, it.From)
	}
	if props["message:From"] {
		writeMailbox(msg.CreateElement("t:From"), it.FromName, it.From)
	}
	if props["message:IsRead"] {
		text(msg, "t:IsRead", strconv.FormatBool(it.Read))
	}
}

func writeMailbox(parent *etree.Element, name, address string) {
	mb := parent.CreateElement("t:Mailbox")
	if name == "" {
		name = address
	}
	text(mb, "t:Name", name)
	text(mb, "t:EmailAddress", address)
	text(mb, "t:RoutingType", "SMTP")
	text(mb, "t:MailboxType", "Mailbox")
}

func (s *Server) getFolder(w http.ResponseWriter, user string, op *etree.Element) {
	folders := child(op, nsMsgs, "FolderIds")
	if folders == nil || len(folders.ChildElements()) == 0 {
		s.writeFault(w, "ErrorSchemaValidation", "The request failed schema validation: GetFolder needs FolderIds.", 0)
		return
	}
	props := shape(child(op, nsMsgs, "FolderShape"), folderDefault, folderAll)
	doc, body := responseEnvelope()
	rms := body.CreateElement("m:GetFolderResponse").CreateElement("m:ResponseMessages")

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fid := range folders.ChildElements() {
		_, f, code := s.openFolder(user, fid)
		if code != "" {
			s.responseMessage(rms, "m:GetFolderResponseMessage", code)
			continue
		}
		rm := s.responseMessage(rms, "m:GetFolderResponseMessage", "NoError")
		writeFolder(rm.CreateElement("m:Folders").CreateElement("t:Folder"), f, props)
	}
	writeXML(w, http.StatusOK, doc)
}

// writeFolder fills a t:Folder in the schema's element order.
func writeFolder(e *etree.Element, f folder, props map[string]bool) {
	idElem(e, "t:FolderId", f.id, f.ck)
	if props["folder:ParentFolderId"] && f.parentID != "" {
		idElem(e, "t:ParentFolderId", f.parentID, staticCK)
	}
	if props["folder:FolderClass"] && f.class != "" {
		text(e, "t:FolderClass", f.class)
	}
	if props["folder:DisplayName"] && f.name != "" {
		text(e, "t:DisplayName", f.name)
	}
	if props["folder:TotalCount"] {
		text(e, "t:TotalCount", strconv.Itoa(f.total))
	}
	if props["folder:ChildFolderCount"] {
		text(e, "t:ChildFolderCount", strconv.Itoa(f.children))
	}
	if props["folder:UnreadCount"] {
		text(e, "t:UnreadCount", strconv.Itoa(f.unread))
	}
}

// unsubscribe answers as Exchange does for a push subscription id: EWS
// Unsubscribe only knows pull subscriptions, so it is never found. A push
// subscription ends when the listener answers Unsubscribe.
func (s *Server) unsubscribe(w http.ResponseWriter) {
	doc, body := responseEnvelope()
	rms := body.CreateElement("m:UnsubscribeResponse").CreateElement("m:ResponseMessages")
	s.responseMessage(rms, "m:UnsubscribeResponseMessage", "ErrorSubscriptionNotFound")
	writeXML(w, http.StatusOK, doc)
}

// convertID answers ConvertId, which clients such as exchangelib send with a
// dummy id only to read ServerVersionInfo from the answer's SOAP header.
// The simulator converts nothing: each AlternateId gets
// ErrorInvalidIdMalformed, as Exchange answers for an id it cannot parse.
func (s *Server) convertID(w http.ResponseWriter, op *etree.Element) {
	ids := child(op, nsMsgs, "SourceIds").NotNil().ChildElements()
	if len(ids) == 0 {
		s.writeFault(w, "ErrorSchemaValidation", "The request failed schema validation: ConvertId needs SourceIds.", 0)
		return
	}
	doc, body := responseEnvelope()
	rms := body.CreateElement("m:ConvertIdResponse").CreateElement("m:ResponseMessages")
	for range ids {
		s.responseMessage(rms, "m:ConvertIdResponseMessage", "ErrorInvalidIdMalformed")
	}
	writeXML(w, http.StatusOK, doc)
}
