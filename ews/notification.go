package ews

import (
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/beevik/etree"
)

// MaxNotificationSize bounds a SendNotification body. A notification holds
// a few hundred bytes per event; 1 MiB is thousands of events.
const MaxNotificationSize = 1 << 20

// EventType names a notification event, as its element is named.
type EventType string

// The events a Notification can carry (t:NotificationType).
const (
	StatusEvent          EventType = "StatusEvent"
	NewMailEvent         EventType = "NewMailEvent"
	CreatedEvent         EventType = "CreatedEvent"
	ModifiedEvent        EventType = "ModifiedEvent"
	DeletedEvent         EventType = "DeletedEvent"
	MovedEvent           EventType = "MovedEvent"
	CopiedEvent          EventType = "CopiedEvent"
	FreeBusyChangedEvent EventType = "FreeBusyChangedEvent"
)

// eventKinds says which fields each event type has in the schema.
var eventKinds = map[EventType]struct{ changed, movedCopied bool }{
	StatusEvent:          {},
	NewMailEvent:         {changed: true},
	CreatedEvent:         {changed: true},
	ModifiedEvent:        {changed: true},
	DeletedEvent:         {changed: true},
	FreeBusyChangedEvent: {changed: true},
	MovedEvent:           {changed: true, movedCopied: true},
	CopiedEvent:          {changed: true, movedCopied: true},
}

// Notification is one SendNotification from Exchange.
type Notification struct {
	SubscriptionID    string
	PreviousWatermark string // may be empty
	MoreEvents        bool
	Events            []Event
}

// Event is one event of a Notification. Which fields are set depends on
// Type: a StatusEvent has only a Watermark; the others have a TimeStamp,
// either ItemID or FolderID, and ParentFolderID; MovedEvent and CopiedEvent
// also have OldItemID or OldFolderID, and OldParentFolderID; a ModifiedEvent
// on a folder may have UnreadCount.
type Event struct {
	Type              EventType
	Watermark         string
	TimeStamp         time.Time
	ItemID            ItemID
	FolderID          FolderID
	ParentFolderID    FolderID
	OldItemID         ItemID
	OldFolderID       FolderID
	OldParentFolderID FolderID
	UnreadCount       *int
}

// ParseSendNotification reads and parses a SendNotification request from
// Exchange, refusing bodies over MaxNotificationSize with ErrTooLarge.
//
// Exchange sends one notification per request; should a request hold
// several response messages, the first is returned.
func ParseSendNotification(r io.Reader) (*Notification, error) {
	data, err := readLimited(r, MaxNotificationSize)
	if err != nil {
		return nil, err
	}
	return parseSendNotification(data)
}

func parseSendNotification(data []byte) (*Notification, error) {
	msg, err := responseMessage(data, "SendNotification", "SendNotificationResponseMessage")
	if err != nil {
		return nil, err
	}
	e := child(msg, NamespaceMessages, "Notification")
	if e == nil {
		return nil, fmt.Errorf("%w: SendNotification without Notification", ErrMalformed)
	}
	n := &Notification{
		SubscriptionID:    childText(e, NamespaceTypes, "SubscriptionId"),
		PreviousWatermark: childText(e, NamespaceTypes, "PreviousWatermark"),
	}
	if n.SubscriptionID == "" {
		return nil, fmt.Errorf("%w: Notification without SubscriptionId", ErrMalformed)
	}
	if s := childText(e, NamespaceTypes, "MoreEvents"); s != "" {
		if n.MoreEvents, err = parseBool("MoreEvents", s); err != nil {
			return nil, err
		}
	}
	for c := range e.ChildElementsSeq() {
		t := EventType(c.Tag)
		if _, ok := eventKinds[t]; !ok || c.NamespaceURI() != NamespaceTypes {
			continue // SubscriptionId etc., or an element from a newer schema
		}
		ev, err := parseEvent(t, c)
		if err != nil {
			return nil, err
		}
		n.Events = append(n.Events, ev)
	}
	if len(n.Events) == 0 {
		return nil, fmt.Errorf("%w: Notification without events", ErrMalformed)
	}
	return n, nil
}

func parseEvent(t EventType, e *etree.Element) (Event, error) {
	ev := Event{Type: t, Watermark: childText(e, NamespaceTypes, "Watermark")}
	kind := eventKinds[t]
	if !kind.changed {
		return ev, nil
	}
	var err error
	if ev.TimeStamp, err = parseDateTime(string(t)+"/TimeStamp", childText(e, NamespaceTypes, "TimeStamp")); err != nil {
		return ev, err
	}
	ev.ItemID = parseItemID(child(e, NamespaceTypes, "ItemId"))
	ev.FolderID = parseFolderID(child(e, NamespaceTypes, "FolderId"))
	if (ev.ItemID.ID == "") == (ev.FolderID.ID == "") {
		return ev, fmt.Errorf("%w: %s needs exactly one of ItemId and FolderId", ErrMalformed, t)
	}
	ev.ParentFolderID = parseFolderID(child(e, NamespaceTypes, "ParentFolderId"))
	if kind.movedCopied {
		ev.OldItemID = parseItemID(child(e, NamespaceTypes, "OldItemId"))
		ev.OldFolderID = parseFolderID(child(e, NamespaceTypes, "OldFolderId"))
		ev.OldParentFolderID = parseFolderID(child(e, NamespaceTypes, "OldParentFolderId"))
	}
	if s := childText(e, NamespaceTypes, "UnreadCount"); s != "" && t == ModifiedEvent {
		n, err := parseCount("UnreadCount", s)
		if err != nil {
			return ev, err
		}
		ev.UnreadCount = &n
	}
	return ev, nil
}

// BuildSendNotification serialises n as Exchange would send it, for
// simulators and tests. It does not check that n is complete.
func BuildSendNotification(n *Notification) []byte {
	env := newEnvelope("")
	msg := env.body.CreateElement("m:SendNotification").CreateElement("m:ResponseMessages").
		CreateElement("m:SendNotificationResponseMessage")
	msg.CreateAttr("ResponseClass", "Success")
	msg.CreateElement("m:ResponseCode").SetText("NoError")
	e := msg.CreateElement("m:Notification")
	e.CreateElement("t:SubscriptionId").SetText(n.SubscriptionID)
	if n.PreviousWatermark != "" {
		e.CreateElement("t:PreviousWatermark").SetText(n.PreviousWatermark)
	}
	e.CreateElement("t:MoreEvents").SetText(strconv.FormatBool(n.MoreEvents))
	for _, ev := range n.Events {
		writeEvent(e.CreateElement("t:"+string(ev.Type)), ev)
	}
	return env.bytes()
}

// writeEvent writes ev's fields in the order of the schema's event types.
func writeEvent(e *etree.Element, ev Event) {
	if ev.Watermark != "" {
		e.CreateElement("t:Watermark").SetText(ev.Watermark)
	}
	kind := eventKinds[ev.Type]
	if !kind.changed {
		return
	}
	e.CreateElement("t:TimeStamp").SetText(formatDateTime(ev.TimeStamp))
	if ev.FolderID.ID != "" {
		writeID(e, "t:FolderId", ItemID(ev.FolderID))
	} else {
		writeID(e, "t:ItemId", ev.ItemID)
	}
	writeID(e, "t:ParentFolderId", ItemID(ev.ParentFolderID))
	if kind.movedCopied {
		if ev.OldFolderID.ID != "" {
			writeID(e, "t:OldFolderId", ItemID(ev.OldFolderID))
		} else {
			writeID(e, "t:OldItemId", ev.OldItemID)
		}
		writeID(e, "t:OldParentFolderId", ItemID(ev.OldParentFolderID))
	}
	if ev.UnreadCount != nil && ev.Type == ModifiedEvent {
		e.CreateElement("t:UnreadCount").SetText(strconv.Itoa(*ev.UnreadCount))
	}
}

func writeID(parent *etree.Element, tag string, id ItemID) {
	e := parent.CreateElement(tag)
	e.CreateAttr("Id", id.ID)
	if id.ChangeKey != "" {
		e.CreateAttr("ChangeKey", id.ChangeKey)
	}
}

// SubscriptionStatus is the listener's answer to a notification.
type SubscriptionStatus string

const (
	// SubscriptionOK keeps the subscription.
	SubscriptionOK SubscriptionStatus = "OK"
	// SubscriptionUnsubscribe ends it: the only way to end a push
	// subscription.
	SubscriptionUnsubscribe SubscriptionStatus = "Unsubscribe"
)

// BuildSendNotificationResult returns the SendNotificationResult body that
// answers a notification.
func BuildSendNotificationResult(status SubscriptionStatus) ([]byte, error) {
	if status != SubscriptionOK && status != SubscriptionUnsubscribe {
		return nil, fmt.Errorf("ews: unknown SubscriptionStatus %q", status)
	}
	env := newEnvelope("")
	env.body.CreateElement("m:SendNotificationResult").CreateElement("m:SubscriptionStatus").SetText(string(status))
	return env.bytes(), nil
}

// ParseSendNotificationResult parses a listener's SendNotificationResult,
// for simulators playing Exchange.
func ParseSendNotificationResult(data []byte) (SubscriptionStatus, error) {
	body, err := parseEnvelope(data)
	if err != nil {
		return "", err
	}
	switch s := SubscriptionStatus(childText(child(body, NamespaceMessages, "SendNotificationResult"), NamespaceMessages, "SubscriptionStatus")); s {
	case SubscriptionOK, SubscriptionUnsubscribe:
		return s, nil
	}
	return "", fmt.Errorf("%w: SendNotificationResult without a valid SubscriptionStatus", ErrMalformed)
}
