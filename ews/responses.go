package ews

import (
	"fmt"
	"strings"
	"time"

	"github.com/beevik/etree"
)

// DefaultMaxResponseSize is the default bound on an EWS response body. Our
// responses hold one item's headers or one folder's counts: a few KiB.
const DefaultMaxResponseSize = 1 << 20

// Subscription is the answer to Subscribe.
type Subscription struct {
	ID        string // Exchange's SubscriptionId
	Watermark string // where the event stream starts
}

// Mailbox is a sender or recipient.
type Mailbox struct {
	Name         string
	EmailAddress string
}

// Item is the part of a message a push notification may show.
type Item struct {
	ID               ItemID
	ParentFolderID   FolderID // the folder the item is in
	Subject          string
	From             Mailbox // zero if the item has no sender (e.g. a draft)
	Preview          string
	DateTimeReceived time.Time // zero if not sent
}

// Folder holds a folder's counts.
type Folder struct {
	ID          FolderID
	UnreadCount int
	TotalCount  *int // nil unless the server sent it
}

// ParseSubscribeResponse parses a SubscribeResponse. An error response or
// SOAP fault yields a *ResponseError.
func ParseSubscribeResponse(data []byte) (*Subscription, error) {
	msg, err := responseMessage(data, "SubscribeResponse", "SubscribeResponseMessage")
	if err != nil {
		return nil, err
	}
	s := &Subscription{
		ID:        childText(msg, NamespaceMessages, "SubscriptionId"),
		Watermark: childText(msg, NamespaceMessages, "Watermark"),
	}
	if s.ID == "" {
		return nil, fmt.Errorf("%w: SubscribeResponse without SubscriptionId", ErrMalformed)
	}
	return s, nil
}

// ParseGetItemResponse parses a GetItemResponse for one item of any item
// class (Message, MeetingRequest, ...). An error response or SOAP fault
// yields a *ResponseError.
func ParseGetItemResponse(data []byte) (*Item, error) {
	msg, err := responseMessage(data, "GetItemResponse", "GetItemResponseMessage")
	if err != nil {
		return nil, err
	}
	e := firstChild(child(msg, NamespaceMessages, "Items"))
	if e == nil {
		return nil, fmt.Errorf("%w: GetItemResponse without an item", ErrMalformed)
	}
	item := &Item{
		ID:             parseItemID(child(e, NamespaceTypes, "ItemId")),
		ParentFolderID: parseFolderID(child(e, NamespaceTypes, "ParentFolderId")),
		// Subject, preview and names are taken verbatim: their whitespace
		// is the sender's.
		Subject: text(child(e, NamespaceTypes, "Subject")),
		Preview: text(child(e, NamespaceTypes, "Preview")),
	}
	if item.ID.ID == "" {
		return nil, fmt.Errorf("%w: item without ItemId", ErrMalformed)
	}
	if from := child(child(e, NamespaceTypes, "From"), NamespaceTypes, "Mailbox"); from != nil {
		item.From = Mailbox{
			Name:         text(child(from, NamespaceTypes, "Name")),
			EmailAddress: childText(from, NamespaceTypes, "EmailAddress"),
		}
	}
	if s := childText(e, NamespaceTypes, "DateTimeReceived"); s != "" {
		if item.DateTimeReceived, err = parseDateTime("DateTimeReceived", s); err != nil {
			return nil, err
		}
	}
	return item, nil
}

// ParseGetFolderResponse parses a GetFolderResponse for one folder, which
// must carry UnreadCount. An error response or SOAP fault yields a
// *ResponseError.
func ParseGetFolderResponse(data []byte) (*Folder, error) {
	msg, err := responseMessage(data, "GetFolderResponse", "GetFolderResponseMessage")
	if err != nil {
		return nil, err
	}
	e := firstChild(child(msg, NamespaceMessages, "Folders"))
	if e == nil {
		return nil, fmt.Errorf("%w: GetFolderResponse without a folder", ErrMalformed)
	}
	f := &Folder{ID: parseFolderID(child(e, NamespaceTypes, "FolderId"))}
	unread := childText(e, NamespaceTypes, "UnreadCount")
	if unread == "" {
		return nil, fmt.Errorf("%w: folder without UnreadCount", ErrMalformed)
	}
	if f.UnreadCount, err = parseCount("UnreadCount", unread); err != nil {
		return nil, err
	}
	if s := childText(e, NamespaceTypes, "TotalCount"); s != "" {
		n, err := parseCount("TotalCount", s)
		if err != nil {
			return nil, err
		}
		f.TotalCount = &n
	}
	return f, nil
}

// parseCount parses a non-negative xs:int.
func parseCount(field, s string) (int, error) {
	n, err := parseInt(field, s)
	if err == nil && n < 0 {
		err = fmt.Errorf("%w: %s is negative", ErrMalformed, field)
	}
	return n, err
}

// responseMessage returns the first <m:{message}> of a <m:{root}> in a SOAP
// body, or the error that the body or the message reports.
func responseMessage(data []byte, root, message string) (*etree.Element, error) {
	msgs, err := responseMessages(data, root, message)
	if err != nil {
		return nil, err
	}
	return msgs[0], checkResponseClass(msgs[0])
}

// responseMessages returns every <m:{message}> of a <m:{root}> in a SOAP
// body (at least one), or the SOAP fault; their ResponseClass is the
// caller's to check.
func responseMessages(data []byte, root, message string) ([]*etree.Element, error) {
	body, err := parseEnvelope(data)
	if err != nil {
		return nil, err
	}
	if f := child(body, NamespaceSOAP, "Fault"); f != nil {
		return nil, parseFault(f)
	}
	var msgs []*etree.Element
	for e := range child(child(body, NamespaceMessages, root), NamespaceMessages, "ResponseMessages").NotNil().ChildElementsSeq() {
		if is(e, NamespaceMessages, message) {
			msgs = append(msgs, e)
		}
	}
	if len(msgs) == 0 {
		return nil, fmt.Errorf("%w: expected m:%s in m:%s", ErrMalformed, message, root)
	}
	return msgs, nil
}

// checkResponseClass turns a response message that is not a Success into a
// *ResponseError. Warnings count as errors: each of our requests asks for
// one thing, so a warning means we did not get it.
func checkResponseClass(msg *etree.Element) error {
	class := attr(msg, "ResponseClass")
	switch class {
	case "Success":
		return nil
	case "Error", "Warning":
		code := childText(msg, NamespaceMessages, "ResponseCode")
		if code == "" {
			return fmt.Errorf("%w: %s response without ResponseCode", ErrMalformed, class)
		}
		return &ResponseError{
			Class:   class,
			Code:    code,
			Message: text(child(msg, NamespaceMessages, "MessageText")),
			BackOff: backOff(child(msg, NamespaceMessages, "MessageXml")),
		}
	}
	return fmt.Errorf("%w: missing or unknown ResponseClass", ErrMalformed)
}

// parseFault turns a SOAP 1.1 Fault into a *ResponseError. faultcode,
// faultstring and detail are unqualified in SOAP 1.1, but some servers put
// them in a default namespace, so they are matched by local name alone.
func parseFault(f *etree.Element) error {
	detail := childLocal(f, "detail")
	code := childText(detail, NamespaceErrors, "ResponseCode")
	if code == "" {
		// "a:ErrorServerBusy" or "s:Client": the local part is the code.
		fc := strings.TrimSpace(text(childLocal(f, "faultcode")))
		code = fc[strings.LastIndexByte(fc, ':')+1:]
	}
	if code == "" {
		return fmt.Errorf("%w: SOAP fault without faultcode", ErrMalformed)
	}
	msg := text(childLocal(f, "faultstring"))
	if msg == "" {
		msg = text(child(detail, NamespaceErrors, "Message"))
	}
	return &ResponseError{
		Class:   ClassFault,
		Code:    code,
		Message: msg,
		BackOff: backOff(child(detail, NamespaceTypes, "MessageXml")),
	}
}

// backOff reads <t:Value Name="BackOffMilliseconds"> from a MessageXml
// element. It is advice, so an unreadable value counts as none.
func backOff(messageXML *etree.Element) time.Duration {
	if messageXML == nil {
		return 0
	}
	for v := range messageXML.ChildElementsSeq() {
		if is(v, NamespaceTypes, "Value") && attr(v, "Name") == "BackOffMilliseconds" {
			if ms, err := parseInt("BackOffMilliseconds", strings.TrimSpace(v.Text())); err == nil && ms > 0 {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	return 0
}
