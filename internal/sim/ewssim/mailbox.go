package ewssim

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/beevik/etree"
)

// Errors returned by the mailbox methods (and mapped to 404/409 by the
// control API).
var (
	ErrNoSuchUser = errors.New("ewssim: no such user")
	ErrNoSuchItem = errors.New("ewssim: no such item")
	ErrUserExists = errors.New("ewssim: user already exists")
)

// User is a mailbox owner. Address, the primary SMTP address, identifies
// the mailbox everywhere (Basic user name, UPN for Kerberos, control API).
type User struct {
	Address     string `json:"address"`
	Password    string `json:"password,omitempty"`
	Token       string `json:"token,omitempty"` // OAuth bearer token; empty: none
	DisplayName string `json:"displayName,omitempty"`
}

// Mail is a message to deliver into an Inbox.
type Mail struct {
	From     string    `json:"from"`               // sender SMTP address
	FromName string    `json:"fromName,omitempty"` // sender display name
	Subject  string    `json:"subject"`
	Body     string    `json:"body"`              // plain text
	Received time.Time `json:"received,omitzero"` // zero: now
}

// Item is a message in an Inbox.
type Item struct {
	ID        string `json:"itemId"`
	ChangeKey string `json:"changeKey"`
	Mail
	Preview string `json:"preview"`
	Read    bool   `json:"read"`
	version uint32
}

// previewLen is how much of the body Exchange puts in item:Preview.
const previewLen = 255

// maxEventLog bounds the events kept per mailbox for Subscribe with a
// watermark; an older watermark gets ErrorInvalidWatermark, as in Exchange
// once the event has aged out.
const maxEventLog = 1000

// event is one entry of a mailbox's event log.
type event struct {
	kind   string // NotificationEventTypeType: NewMailEvent, CreatedEvent, ...
	seq    uint64
	at     time.Time
	itemID string // empty for a folder event
	ck     string // the item's (or folder's) change key at the time
	unread int    // folder ModifiedEvent only
}

type mailbox struct {
	User
	key      uint64 // identifies the mailbox inside watermarks
	inboxID  string
	rootID   string // the Inbox's parent, msgfolderroot
	hierID   string // msgfolderroot's parent, the hierarchy's root ("root")
	inboxVer uint32
	items    map[string]*Item
	unread   int     // items not read, kept rather than counted: benchmarks fill Inboxes
	seq      uint64  // sequence number of the latest event
	events   []event // the latest events, oldest first
	subs     map[string]*subscription
	// delegates may open this mailbox (full access or delegate rights),
	// by their primary SMTP address.
	delegates map[string]bool
}

func newMailbox(u User) *mailbox {
	var k [8]byte
	rand.Read(k[:])
	return &mailbox{
		User:     u,
		key:      binary.BigEndian.Uint64(k[:]),
		inboxID:  newID("AAMkAGInbox"),
		rootID:   newID("AAMkAGRoot"),
		hierID:   newID("AAMkAGHier"),
		inboxVer: 1,
		items:    map[string]*Item{},
		subs:     map[string]*subscription{},

		delegates: map[string]bool{},
	}
}

// newID returns an opaque, URL-safe id shaped like an EWS id.
func newID(prefix string) string {
	b := make([]byte, 18)
	rand.Read(b)
	return prefix + base64.URLEncoding.EncodeToString(b)
}

func changeKey(kind byte, version uint32) string {
	b := []byte{kind, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[4:], version)
	return base64.StdEncoding.EncodeToString(b)
}

func (m *mailbox) inboxCK() string { return changeKey(0x01, m.inboxVer) }

// folder is a folder as GetFolder reports it. The simulator has three:
// the hierarchy's root, the top of the message store below it, and the
// Inbox below that (clients such as exchangelib look up "root" before
// the Inbox).
type folder struct {
	id, ck, parentID string // parentID: empty for root
	class, name      string // FolderClass and DisplayName; empty: none
	children         int
	total, unread    int
}

// staticCK is the change key of the folders that never change.
const staticCK = "AQAAAA=="

// folder returns the folder a DistinguishedFolderId or FolderId element
// names in this mailbox, if the simulator has it. Which mailbox an element
// addresses is Server.mailboxFor's to decide.
func (m *mailbox) folder(e *etree.Element) (folder, bool) {
	if e.NamespaceURI() != nsTypes {
		return folder{}, false
	}
	id := e.SelectAttrValue("Id", "")
	switch {
	case e.Tag == "DistinguishedFolderId":
		switch id {
		case "root":
			id = m.hierID
		case "msgfolderroot":
			id = m.rootID
		case "inbox":
			id = m.inboxID
		default:
			return folder{}, false
		}
	case e.Tag != "FolderId":
		return folder{}, false
	}
	switch id {
	case m.hierID:
		return folder{id: m.hierID, ck: staticCK, children: 1}, true
	case m.rootID:
		return folder{id: m.rootID, ck: staticCK, parentID: m.hierID, name: "Top of Information Store", children: 1}, true
	case m.inboxID:
		return folder{id: m.inboxID, ck: m.inboxCK(), parentID: m.rootID, class: "IPF.Note", name: "Inbox",
			total: len(m.items), unread: m.unread}, true
	}
	return folder{}, false
}

// folderModified is the Inbox's ModifiedEvent, carrying its new unread
// count.
func (m *mailbox) folderModified() event {
	return event{kind: "ModifiedEvent", ck: m.inboxCK(), unread: m.unread}
}

// record appends events to the log and queues them on every active
// subscription that asked for their kind. Called with Server.mu held, so
// events reach each subscription in log order.
func (m *mailbox) record(at time.Time, evs ...event) {
	for i := range evs {
		m.seq++
		evs[i].seq = m.seq
		evs[i].at = at
	}
	m.events = append(m.events, evs...)
	if over := len(m.events) - maxEventLog; over > 0 {
		m.events = slices.Delete(m.events, 0, over)
	}
	for _, s := range m.subs {
		s.enqueue(evs)
	}
}

// eventsAfter returns the logged events after seq, or false when seq is
// older than the log keeps or newer than the mailbox has seen.
func (m *mailbox) eventsAfter(seq uint64) ([]event, bool) {
	if seq > m.seq {
		return nil, false
	}
	if len(m.events) > 0 && seq+1 < m.events[0].seq {
		return nil, false
	}
	var out []event
	for _, e := range m.events {
		if e.seq > seq {
			out = append(out, e)
		}
	}
	return out, true
}

func makePreview(body string) string {
	p := strings.Join(strings.Fields(body), " ")
	if utf8.RuneCountInString(p) <= previewLen {
		return p
	}
	return string([]rune(p)[:previewLen])
}

func normAddr(a string) string { return strings.ToLower(strings.TrimSpace(a)) }

// AddUser creates a mailbox with an empty Inbox.
func (s *Server) AddUser(u User) error {
	addr := normAddr(u.Address)
	if addr == "" || !strings.Contains(addr, "@") {
		return fmt.Errorf("ewssim: user address %q is not an SMTP address", u.Address)
	}
	u.Address = addr
	if u.DisplayName == "" {
		u.DisplayName = addr[:strings.IndexByte(addr, '@')]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.users[addr]; ok {
		return ErrUserExists
	}
	if u.Token != "" {
		if _, taken := s.tokens[u.Token]; taken {
			return errors.New("ewssim: token already assigned to another user")
		}
		s.tokens[u.Token] = addr
	}
	s.users[addr] = newMailbox(u)
	return nil
}

// Users returns the users, without their secrets.
func (s *Server) Users() []User {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]User, 0, len(s.users))
	for _, m := range s.users {
		out = append(out, User{Address: m.Address, DisplayName: m.DisplayName})
	}
	slices.SortFunc(out, func(a, b User) int { return strings.Compare(a.Address, b.Address) })
	return out
}

// SetPassword changes a user's password; Basic requests with the old one
// then get 401, like Exchange after a password change.
func (s *Server) SetPassword(address, password string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.users[normAddr(address)]
	if !ok {
		return ErrNoSuchUser
	}
	m.Password = password
	return nil
}

// SetToken assigns a user's bearer token, replacing (revoking) the
// previous one; an empty token only revokes.
func (s *Server) SetToken(address, token string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.users[normAddr(address)]
	if !ok {
		return ErrNoSuchUser
	}
	if owner, taken := s.tokens[token]; token != "" && taken && owner != m.Address {
		return errors.New("ewssim: token already assigned to another user")
	}
	delete(s.tokens, m.Token)
	m.Token = token
	if token != "" {
		s.tokens[token] = m.Address
	}
	return nil
}

// Deliver puts a message into the user's Inbox and raises CreatedEvent and
// NewMailEvent for it, then ModifiedEvent for the Inbox (its counts
// changed), as Exchange's transport delivery does.
func (s *Server) Deliver(address string, mail Mail) (Item, error) {
	now := time.Now().UTC()
	if mail.Received.IsZero() {
		mail.Received = now
	}
	mail.Received = mail.Received.UTC().Truncate(time.Second)
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.users[normAddr(address)]
	if !ok {
		return Item{}, ErrNoSuchUser
	}
	it := &Item{ID: newID("AAMkAGItem"), Mail: mail, Preview: makePreview(mail.Body), version: 1}
	it.ChangeKey = changeKey(0x09, it.version)
	m.items[it.ID] = it
	m.unread++
	m.inboxVer++
	m.record(now,
		event{kind: "CreatedEvent", itemID: it.ID, ck: it.ChangeKey},
		event{kind: "NewMailEvent", itemID: it.ID, ck: it.ChangeKey},
		m.folderModified())
	s.stats.add(&s.stats.c.Delivered, 1)
	return *it, nil
}

// DeleteItem hard-deletes an item (DeletedEvent, and ModifiedEvent for the
// Inbox); a later GetItem for it answers ErrorItemNotFound.
func (s *Server) DeleteItem(address, itemID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.users[normAddr(address)]
	if !ok {
		return ErrNoSuchUser
	}
	return m.deleteItem(itemID)
}

func (m *mailbox) deleteItem(itemID string) error {
	it, ok := m.items[itemID]
	if !ok {
		return ErrNoSuchItem
	}
	delete(m.items, itemID)
	if !it.Read {
		m.unread--
	}
	m.inboxVer++
	m.record(time.Now().UTC(), event{kind: "DeletedEvent", itemID: it.ID, ck: it.ChangeKey}, m.folderModified())
	return nil
}

// MarkRead sets an item's read flag, raising ModifiedEvent for the item and
// for the Inbox (with its new UnreadCount), as Exchange does.
func (s *Server) MarkRead(address, itemID string, read bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.users[normAddr(address)]
	if !ok {
		return ErrNoSuchUser
	}
	it, ok := m.items[itemID]
	if !ok {
		return ErrNoSuchItem
	}
	if it.Read == read {
		return nil
	}
	it.Read = read
	if read {
		m.unread--
	} else {
		m.unread++
	}
	it.version++
	it.ChangeKey = changeKey(0x09, it.version)
	m.inboxVer++
	m.record(time.Now().UTC(),
		event{kind: "ModifiedEvent", itemID: it.ID, ck: it.ChangeKey},
		m.folderModified())
	return nil
}

// Items returns the user's Inbox, oldest first.
func (s *Server) Items(address string) ([]Item, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.users[normAddr(address)]
	if !ok {
		return nil, ErrNoSuchUser
	}
	out := make([]Item, 0, len(m.items))
	for _, it := range m.items {
		out = append(out, *it)
	}
	slices.SortFunc(out, func(a, b Item) int {
		if c := a.Received.Compare(b.Received); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// UnreadCount returns the Inbox's unread count, as GetFolder reports it.
func (s *Server) UnreadCount(address string) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.users[normAddr(address)]
	if !ok {
		return 0, ErrNoSuchUser
	}
	return m.unread, nil
}

// GrantAccess lets delegate open owner's mailbox, as Exchange's full access
// or delegate permissions do.
func (s *Server) GrantAccess(owner, delegate string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.users[normAddr(owner)]
	if !ok || s.users[normAddr(delegate)] == nil {
		return ErrNoSuchUser
	}
	m.delegates[normAddr(delegate)] = true
	return nil
}

// mailboxFor returns the mailbox a folder element addresses for user: the
// one a DistinguishedFolderId names in its Mailbox, else user's own; a
// FolderId is looked up in user's own mailbox, then in those user may
// open. Like Exchange, it answers ErrorNonExistentMailbox for an address it
// does not know and ErrorFolderNotFound for a mailbox user may not open
// ("Handling delegation-related errors in EWS in Exchange", Microsoft
// Learn). Called with s.mu held.
func (s *Server) mailboxFor(user string, e *etree.Element) (*mailbox, string) {
	own := s.users[user]
	if e.Tag == "DistinguishedFolderId" {
		addr := child(child(e, nsTypes, "Mailbox"), nsTypes, "EmailAddress")
		if addr == nil {
			return own, ""
		}
		m := s.users[normAddr(addr.Text())]
		switch {
		case m == nil:
			return nil, "ErrorNonExistentMailbox"
		case m != own && !m.delegates[user]:
			return nil, "ErrorFolderNotFound"
		}
		return m, ""
	}
	if _, ok := own.folder(e); ok {
		return own, ""
	}
	for _, m := range s.users {
		if m.delegates[user] {
			if _, ok := m.folder(e); ok {
				return m, ""
			}
		}
	}
	return own, ""
}

// openFolder resolves a folder element for user: the mailbox and folder,
// or the ResponseCode to answer. Called with s.mu held.
func (s *Server) openFolder(user string, e *etree.Element) (*mailbox, folder, string) {
	m, code := s.mailboxFor(user, e)
	if code != "" {
		return nil, folder{}, code
	}
	f, ok := m.folder(e)
	if !ok {
		return nil, folder{}, "ErrorFolderNotFound"
	}
	return m, f, ""
}

// findItem looks an item up in user's own mailbox, then in those user may
// open; another mailbox's item is not found. Called with s.mu held.
func (s *Server) findItemFor(user, id string) (*mailbox, *Item) {
	own := s.users[user]
	if it, ok := own.items[id]; ok {
		return own, it
	}
	for _, m := range s.users {
		if it, ok := m.items[id]; ok && m.delegates[user] {
			return m, it
		}
	}
	return own, nil
}
