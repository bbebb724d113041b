package ews

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/beevik/etree"
)

// DefaultServerVersion is the RequestServerVersion sent unless configured
// otherwise: item:Preview needs Exchange2013 SP1 or later.
const DefaultServerVersion = "Exchange2013_SP1"

// serverVersions are the ExchangeVersionType values in types.xsd; Exchange
// answers any other value with a SOAP fault, so we refuse it up front.
var serverVersions = map[string]bool{
	"Exchange2007": true, "Exchange2007_SP1": true, "Exchange2009": true,
	"Exchange2010": true, "Exchange2010_SP1": true, "Exchange2010_SP2": true,
	"Exchange2012": true, "Exchange2013": true, "Exchange2013_SP1": true,
	"Exchange2015": true, "Exchange2016": true,
	"V2015_10_05": true, "V2016_01_06": true, "V2016_04_13": true, "V2016_07_13": true,
	"V2016_10_10": true, "V2017_01_07": true, "V2017_04_14": true, "V2017_07_11": true,
	"V2017_10_09": true, "V2018_01_08": true,
}

// checkVersion validates a RequestServerVersion value.
func checkVersion(version string) error {
	if !serverVersions[version] {
		return fmt.Errorf("ews: unknown RequestServerVersion %q", version)
	}
	return nil
}

// StatusFrequency bounds, in minutes (SubscriptionStatusFrequencyType).
const (
	MinStatusFrequency = 1
	MaxStatusFrequency = 1440
)

// MaxCallbackURLLength is the longest push callback URL Exchange accepts.
const MaxCallbackURLLength = 2082

// ItemID identifies a mailbox item. ChangeKey is optional.
type ItemID struct {
	ID        string
	ChangeKey string
}

// FolderID identifies a mailbox folder. ChangeKey is optional.
type FolderID struct {
	ID        string
	ChangeKey string
}

// SubscribeRequest describes a push subscription on the Inbox for
// NewMailEvent and CreatedEvent.
type SubscribeRequest struct {
	// URL is the callback Exchange POSTs SendNotification to. It may carry
	// secrets, so errors never quote it.
	URL string
	// StatusFrequency is the minutes between StatusEvents when nothing
	// happens, MinStatusFrequency to MaxStatusFrequency.
	StatusFrequency int
	// Watermark, if set, resumes the event stream after that watermark.
	Watermark string
}

func (r SubscribeRequest) validate() error {
	if r.StatusFrequency < MinStatusFrequency || r.StatusFrequency > MaxStatusFrequency {
		return fmt.Errorf("ews: StatusFrequency %d outside %d..%d minutes", r.StatusFrequency, MinStatusFrequency, MaxStatusFrequency)
	}
	if len(r.URL) > MaxCallbackURLLength {
		return fmt.Errorf("ews: callback URL is %d characters, Exchange accepts at most %d", len(r.URL), MaxCallbackURLLength)
	}
	u, err := url.Parse(r.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return errors.New("ews: callback URL must be an absolute http or https URL")
	}
	if r.Watermark != "" && !plainText(r.Watermark) {
		return errors.New("ews: watermark contains control characters or invalid UTF-8")
	}
	return nil
}

// plainText reports whether s is valid UTF-8 without control characters, as
// Exchange's ids, watermarks and URLs are; anything else would be mangled by
// XML escaping.
func plainText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// addInbox adds a DistinguishedFolderId for the Inbox of mailbox (the
// primary SMTP address), or of the logged-in user when mailbox is empty.
// Naming the mailbox makes Exchange itself check that the caller may open
// it, rather than acting on whichever mailbox the credentials log in to.
func addInbox(parent *etree.Element, mailbox string) {
	inbox := parent.CreateElement("t:DistinguishedFolderId")
	inbox.CreateAttr("Id", "inbox")
	if mailbox != "" {
		inbox.CreateElement("t:Mailbox").CreateElement("t:EmailAddress").SetText(mailbox)
	}
}

// checkMailbox validates a mailbox address before it goes into XML.
func checkMailbox(mailbox string) error {
	if len(mailbox) > 320 || !plainText(mailbox) {
		return errors.New("ews: mailbox address is too long or contains control characters")
	}
	return nil
}

// BuildSubscribe returns a Subscribe request for a push subscription on
// mailbox's Inbox for NewMailEvent and CreatedEvent.
func BuildSubscribe(version, mailbox string, r SubscribeRequest) ([]byte, error) {
	if err := checkVersion(version); err != nil {
		return nil, err
	}
	if err := checkMailbox(mailbox); err != nil {
		return nil, err
	}
	if err := r.validate(); err != nil {
		return nil, err
	}
	env := newEnvelope(version)
	// Element order follows t:PushSubscriptionRequestType: FolderIds,
	// EventTypes, Watermark?, StatusFrequency, URL.
	push := env.body.CreateElement("m:Subscribe").CreateElement("m:PushSubscriptionRequest")
	addInbox(push.CreateElement("t:FolderIds"), mailbox)
	types := push.CreateElement("t:EventTypes")
	types.CreateElement("t:EventType").SetText(string(NewMailEvent))
	types.CreateElement("t:EventType").SetText(string(CreatedEvent))
	if r.Watermark != "" {
		push.CreateElement("t:Watermark").SetText(r.Watermark)
	}
	push.CreateElement("t:StatusFrequency").SetText(fmt.Sprint(r.StatusFrequency))
	push.CreateElement("t:URL").SetText(r.URL)
	return env.bytes(), nil
}

// itemProperties are what a push notification may show (sender, subject,
// preview) and what decides whether it may be shown: the folder it is in
// and when it arrived.
var itemProperties = []string{"item:ParentFolderId", "item:Subject", "message:From", "item:Preview", "item:DateTimeReceived"}

// BuildGetItem returns a GetItem request for one item's ParentFolderId,
// Subject, From, Preview and DateTimeReceived, and nothing else (no body,
// no attachments).
func BuildGetItem(version string, id ItemID) ([]byte, error) {
	if err := checkVersion(version); err != nil {
		return nil, err
	}
	if id.ID == "" || !plainText(id.ID) || !plainText(id.ChangeKey) {
		return nil, errors.New("ews: item id is empty or contains control characters")
	}
	env := newEnvelope(version)
	get := env.body.CreateElement("m:GetItem")
	shape := get.CreateElement("m:ItemShape")
	shape.CreateElement("t:BaseShape").SetText("IdOnly")
	props := shape.CreateElement("t:AdditionalProperties")
	for _, p := range itemProperties {
		props.CreateElement("t:FieldURI").CreateAttr("FieldURI", p)
	}
	ref := get.CreateElement("m:ItemIds").CreateElement("t:ItemId")
	ref.CreateAttr("Id", id.ID)
	if id.ChangeKey != "" {
		ref.CreateAttr("ChangeKey", id.ChangeKey)
	}
	return env.bytes(), nil
}

// BuildGetInbox returns a GetFolder request for the UnreadCount of
// mailbox's Inbox, the badge count; nothing else is asked for.
func BuildGetInbox(version, mailbox string) ([]byte, error) {
	if err := checkVersion(version); err != nil {
		return nil, err
	}
	if err := checkMailbox(mailbox); err != nil {
		return nil, err
	}
	env := newEnvelope(version)
	get := env.body.CreateElement("m:GetFolder")
	shape := get.CreateElement("m:FolderShape")
	shape.CreateElement("t:BaseShape").SetText("IdOnly")
	shape.CreateElement("t:AdditionalProperties").CreateElement("t:FieldURI").CreateAttr("FieldURI", "folder:UnreadCount")
	addInbox(get.CreateElement("m:FolderIds"), mailbox)
	return env.bytes(), nil
}

// BuildVerifyMailbox returns one GetFolder request for two Inboxes: the
// logged-in user's own and mailbox's. They are the same folder exactly
// when the credentials belong to mailbox (see Client.VerifyMailbox).
func BuildVerifyMailbox(version, mailbox string) ([]byte, error) {
	if err := checkVersion(version); err != nil {
		return nil, err
	}
	if mailbox == "" {
		return nil, errors.New("ews: VerifyMailbox needs a mailbox address")
	}
	if err := checkMailbox(mailbox); err != nil {
		return nil, err
	}
	env := newEnvelope(version)
	get := env.body.CreateElement("m:GetFolder")
	get.CreateElement("m:FolderShape").CreateElement("t:BaseShape").SetText("IdOnly")
	ids := get.CreateElement("m:FolderIds")
	addInbox(ids, "")
	addInbox(ids, mailbox)
	return env.bytes(), nil
}
