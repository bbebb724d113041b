package graphsim

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// User is a mailbox to create.
type User struct {
	// Address is the primary SMTP address (Graph's mail); required.
	Address string `json:"address"`
	// UPN is the userPrincipalName; empty: the address.
	UPN string `json:"upn,omitempty"`
	// DisplayName; empty: the address's local part.
	DisplayName string `json:"displayName,omitempty"`
	// ID is the user's object id (a GUID); empty: a random one.
	ID string `json:"id,omitempty"`
}

// Mail is a message to deliver to a user's Inbox.
type Mail struct {
	From     string    `json:"from"`               // sender address
	FromName string    `json:"fromName,omitempty"` // display name; empty: the address
	Subject  string    `json:"subject"`
	Body     string    `json:"body"`              // plain text
	Received time.Time `json:"received,omitzero"` // zero: the sim clock's now
}

// Message is a delivered message as tests see it.
type Message struct {
	ID       string    `json:"id"`
	From     string    `json:"from"`
	FromName string    `json:"fromName"`
	Subject  string    `json:"subject"`
	Body     string    `json:"body"`
	Preview  string    `json:"bodyPreview"`
	Received time.Time `json:"receivedDateTime"`
	IsRead   bool      `json:"isRead"`
}

// UserInfo describes a user.
type UserInfo struct {
	ID          string `json:"id"`
	Address     string `json:"address"`
	UPN         string `json:"upn"`
	DisplayName string `json:"displayName"`
	InboxID     string `json:"inboxId"`
}

type mailbox struct {
	id, address, upn, name string
	inboxID                string
	messages               []*message // oldest first
	seq                    uint64     // change sequence
	tombstones             []tombstone
	deltaFloor             uint64 // delta tokens older than this are gone (410)
}

type message struct {
	Message
	created        time.Time
	modified       time.Time
	createSeq, seq uint64
	changeKey      string
}

type tombstone struct {
	id  string
	seq uint64
}

func normAddr(a string) string { return strings.ToLower(strings.TrimSpace(a)) }

// AddUser creates a mailbox with an empty Inbox.
func (s *Server) AddUser(u User) (UserInfo, error) {
	addr := normAddr(u.Address)
	if addr == "" || !strings.Contains(addr, "@") {
		return UserInfo{}, fmt.Errorf("graphsim: a user needs an address")
	}
	m := &mailbox{id: strings.ToLower(u.ID), address: addr, upn: u.UPN, name: u.DisplayName}
	if m.id == "" {
		m.id = newGUID()
	}
	if m.upn == "" {
		m.upn = addr
	}
	if m.name == "" {
		m.name, _, _ = strings.Cut(addr, "@")
	}
	m.inboxID = "AQMkAD" + randomID(24) + "AAAA=="
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.users[addr] != nil || s.usersByID[m.id] != nil {
		return UserInfo{}, ErrUserExists
	}
	s.users[addr] = m
	s.usersByID[m.id] = m
	return m.info(), nil
}

func (m *mailbox) info() UserInfo {
	return UserInfo{ID: m.id, Address: m.address, UPN: m.upn, DisplayName: m.name, InboxID: m.inboxID}
}

// UserInfo describes the user with this address.
func (s *Server) UserInfo(address string) (UserInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.users[normAddr(address)]
	if m == nil {
		return UserInfo{}, ErrNoSuchUser
	}
	return m.info(), nil
}

// Users lists every user.
func (s *Server) Users() []UserInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]UserInfo, 0, len(s.users))
	for _, m := range s.users {
		out = append(out, m.info())
	}
	slices.SortFunc(out, func(a, b UserInfo) int { return strings.Compare(a.Address, b.Address) })
	return out
}

// preview is Graph's bodyPreview: the first 255 characters of the body,
// whitespace collapsed.
func preview(body string) string {
	p := strings.Join(strings.Fields(body), " ")
	if r := []rune(p); len(r) > 255 {
		p = string(r[:255])
	}
	return p
}

func (m *mailbox) bump(msg *message, now time.Time) {
	m.seq++
	msg.seq = m.seq
	msg.modified = now
	msg.changeKey = "CQAAABYAAA" + randomID(12)
}

func (m *mailbox) find(id string) *message {
	for _, msg := range m.messages {
		if msg.ID == id {
			return msg
		}
	}
	return nil
}

func (m *mailbox) unread() int {
	n := 0
	for _, msg := range m.messages {
		if !msg.IsRead {
			n++
		}
	}
	return n
}

// Deliver puts a mail in the user's Inbox and notifies the subscriptions
// that asked for "created".
func (s *Server) Deliver(address string, mail Mail) (Message, error) {
	now := s.clock.Now()
	s.mu.Lock()
	m := s.users[normAddr(address)]
	if m == nil {
		s.mu.Unlock()
		return Message{}, ErrNoSuchUser
	}
	if mail.Received.IsZero() {
		mail.Received = now
	}
	msg := &message{Message: Message{
		ID: "AAMkAD" + randomID(48) + "AAA=", From: normAddr(mail.From), FromName: mail.FromName,
		Subject: mail.Subject, Body: mail.Body, Preview: preview(mail.Body),
		Received: mail.Received.UTC().Truncate(time.Second),
	}, created: now}
	if msg.FromName == "" {
		msg.FromName = msg.From
	}
	m.bump(msg, now)
	msg.createSeq = msg.seq
	m.messages = append(m.messages, msg)
	out := msg.Message
	s.changedLocked(m, msg.ID, "created")
	s.mu.Unlock()
	s.stats.add(&s.stats.c.Delivered, 1)
	return out, nil
}

// MarkRead sets a message's read state (an "updated" change).
func (s *Server) MarkRead(address, id string, read bool) error {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.users[normAddr(address)]
	if m == nil {
		return ErrNoSuchUser
	}
	msg := m.find(id)
	if msg == nil {
		return ErrNoSuchMessage
	}
	if msg.IsRead == read {
		return nil
	}
	msg.IsRead = read
	m.bump(msg, now)
	s.changedLocked(m, id, "updated")
	return nil
}

// DeleteMessage hard-deletes a message (a "deleted" change).
func (s *Server) DeleteMessage(address, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.users[normAddr(address)]
	if m == nil {
		return ErrNoSuchUser
	}
	i := slices.IndexFunc(m.messages, func(msg *message) bool { return msg.ID == id })
	if i < 0 {
		return ErrNoSuchMessage
	}
	m.messages = slices.Delete(m.messages, i, i+1)
	m.seq++
	m.tombstones = append(m.tombstones, tombstone{id: id, seq: m.seq})
	s.changedLocked(m, id, "deleted")
	return nil
}

// Messages lists the user's Inbox, oldest first.
func (s *Server) Messages(address string) ([]Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.users[normAddr(address)]
	if m == nil {
		return nil, ErrNoSuchUser
	}
	out := make([]Message, len(m.messages))
	for i, msg := range m.messages {
		out[i] = msg.Message
	}
	return out, nil
}

// ExpireDeltaTokens makes every delta and skip token issued so far for the
// user's Inbox invalid: the next use gets 410 Gone (SyncStateNotFound) and
// the client must start a new round.
func (s *Server) ExpireDeltaTokens(address string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.users[normAddr(address)]
	if m == nil {
		return ErrNoSuchUser
	}
	m.seq++
	m.deltaFloor = m.seq
	return nil
}
