package graph

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// User is the signed-in user (/me): the mailbox a token belongs to.
type User struct {
	ID                string `json:"id"`
	Mail              string `json:"mail"` // primary SMTP address; may be empty
	UserPrincipalName string `json:"userPrincipalName"`
}

// Me returns the token's user.
func (c *Client) Me(ctx context.Context, token string) (User, error) {
	var u User
	err := c.do(ctx, token, request{method: http.MethodGet, url: c.url("/me", url.Values{"$select": {"id,mail,userPrincipalName"}})}, &u)
	return u, err
}

// Organization is the signed-in user's directory: its id (the tenant id)
// and the domains it has verified. A domain is verified by one directory
// only, so an address in one of them is that directory's to give.
type Organization struct {
	ID              string
	VerifiedDomains []string
}

// Organization returns the token's directory (User.Read allows it).
func (c *Client) Organization(ctx context.Context, token string) (Organization, error) {
	var answer struct {
		Value []struct {
			ID              string `json:"id"`
			VerifiedDomains []struct {
				Name string `json:"name"`
			} `json:"verifiedDomains"`
		} `json:"value"`
	}
	err := c.do(ctx, token, request{method: http.MethodGet, url: c.url("/organization", url.Values{"$select": {"id,verifiedDomains"}})}, &answer)
	if err != nil {
		return Organization{}, err
	}
	if len(answer.Value) != 1 {
		return Organization{}, &APIError{Status: http.StatusOK, Code: "unexpectedAnswer"}
	}
	org := Organization{ID: answer.Value[0].ID}
	for _, d := range answer.Value[0].VerifiedDomains {
		org.VerifiedDomains = append(org.VerifiedDomains, d.Name)
	}
	return org, nil
}

// Folder is a mail folder's id and counts.
type Folder struct {
	ID              string `json:"id"`
	UnreadItemCount int    `json:"unreadItemCount"`
	TotalItemCount  int    `json:"totalItemCount"`
}

// Inbox returns the Inbox's id and counts (the badge is UnreadItemCount).
func (c *Client) Inbox(ctx context.Context, token string) (Folder, error) {
	var f Folder
	err := c.do(ctx, token, request{method: http.MethodGet, url: c.url("/me/mailFolders/inbox", url.Values{"$select": {"id,unreadItemCount,totalItemCount"}})}, &f)
	return f, err
}

// Message fields for $select: the ones Message has besides its id, which
// Graph always returns.
const (
	FieldSubject          = "subject"
	FieldBodyPreview      = "bodyPreview" // needs Mail.Read (not Mail.ReadBasic)
	FieldFrom             = "from"
	FieldReceivedDateTime = "receivedDateTime"
	FieldIsRead           = "isRead"
	FieldParentFolderID   = "parentFolderId"
)

// MetadataFields are what Message and Delta select when given no fields:
// no content (no sender, subject or preview), so a caller that forgets to
// choose reads nothing a privacy level might forbid.
var MetadataFields = []string{FieldReceivedDateTime, FieldIsRead, FieldParentFolderID}

// Address is a name and an email address.
type Address struct {
	Name    string `json:"name"`
	Address string `json:"address"`
}

// Message is a message's selected fields; unselected ones are zero.
type Message struct {
	ID               string
	Subject          string
	BodyPreview      string
	From             Address
	ReceivedDateTime time.Time
	IsRead           bool
	ParentFolderID   string
	// Removed is set in delta results for a message deleted from (or
	// moved out of) the folder; only ID is set then.
	Removed bool
}

// UnmarshalJSON reads Graph's message JSON.
func (m *Message) UnmarshalJSON(b []byte) error {
	var v struct {
		ID          string `json:"id"`
		Subject     string `json:"subject"`
		BodyPreview string `json:"bodyPreview"`
		From        *struct {
			EmailAddress Address `json:"emailAddress"`
		} `json:"from"`
		ReceivedDateTime *time.Time      `json:"receivedDateTime"`
		IsRead           bool            `json:"isRead"`
		ParentFolderID   string          `json:"parentFolderId"`
		Removed          json.RawMessage `json:"@removed"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*m = Message{ID: v.ID, Subject: v.Subject, BodyPreview: v.BodyPreview, IsRead: v.IsRead, ParentFolderID: v.ParentFolderID}
	if v.From != nil {
		m.From = v.From.EmailAddress
	}
	if v.ReceivedDateTime != nil {
		m.ReceivedDateTime = *v.ReceivedDateTime
	}
	m.Removed = len(v.Removed) > 0 && string(v.Removed) != "null"
	return nil
}

// selectOf joins fields for $select (MetadataFields if none), refusing
// anything that is not a property name. "id" is dropped: Graph returns it
// anyway (and the simulator refuses it in $select), and an empty $select
// would mean every property.
func selectOf(fields []string) (string, error) {
	fields = slices.DeleteFunc(slices.Clone(fields), func(f string) bool { return f == "id" })
	if len(fields) == 0 {
		fields = MetadataFields
	}
	for _, f := range fields {
		if f == "" || len(f) > 64 || strings.IndexFunc(f, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '/')
		}) >= 0 {
			return "", errors.New("graph: invalid field name for $select")
		}
	}
	return strings.Join(fields, ","), nil
}

// Message returns the message's fields (MetadataFields if none given). A
// message that is gone is ErrNotFound.
func (c *Client) Message(ctx context.Context, token, id string, fields ...string) (Message, error) {
	sel, err := selectOf(fields)
	if err != nil {
		return Message{}, err
	}
	if id == "" {
		return Message{}, errors.New("graph: empty message id")
	}
	var m Message
	err = c.do(ctx, token, request{method: http.MethodGet, url: c.url("/me/messages/"+url.PathEscape(id), url.Values{"$select": {sel}})}, &m)
	return m, err
}

// DeltaPage is one page of a delta round.
type DeltaPage struct {
	Changes []Message
	// NextLink: more pages follow in this round; DeltaLink: the round is
	// over, and this link starts the next one. Exactly one is set.
	NextLink  string
	DeltaLink string
}

// maxDeltaPages bounds one Delta call; an Inbox that needs more should be
// paged with DeltaNext.
const maxDeltaPages = 10000

// DeltaNext fetches one page: the first page of a new round on the
// Inbox's messages when link is empty (with fields for $select;
// MetadataFields if none), else the page link names (a NextLink or a
// DeltaLink from an earlier answer, which carry the selection: fields are
// then ignored). Links must be on the client's root.
func (c *Client) DeltaNext(ctx context.Context, token, link string, fields ...string) (DeltaPage, error) {
	u := link
	if u == "" {
		sel, err := selectOf(fields)
		if err != nil {
			return DeltaPage{}, err
		}
		u = c.url("/me/mailFolders/inbox/messages/delta", url.Values{"$select": {sel}})
	} else if !c.sameOrigin(u) {
		return DeltaPage{}, errors.New("graph: delta link is not on the Graph root")
	}
	r := request{method: http.MethodGet, url: u, limit: maxDeltaAnswer}
	if c.MaxPageSize > 0 {
		r.header = http.Header{"Prefer": {"odata.maxpagesize=" + strconv.Itoa(c.MaxPageSize)}}
	}
	var v struct {
		Value     []Message `json:"value"`
		NextLink  string    `json:"@odata.nextLink"`
		DeltaLink string    `json:"@odata.deltaLink"`
	}
	if err := c.do(ctx, token, r, &v); err != nil {
		return DeltaPage{}, err
	}
	if (v.NextLink == "") == (v.DeltaLink == "") {
		return DeltaPage{}, errors.New("graph: delta answer without exactly one of nextLink and deltaLink")
	}
	return DeltaPage{Changes: v.Value, NextLink: v.NextLink, DeltaLink: v.DeltaLink}, nil
}

// DeltaSince is the link of a first delta round that lists only the
// Inbox's messages received since t (the one $filter message delta takes),
// to give Delta or DeltaNext: a catch-up need not list a whole Inbox.
func (c *Client) DeltaSince(t time.Time, fields ...string) (string, error) {
	sel, err := selectOf(fields)
	if err != nil {
		return "", err
	}
	return c.url("/me/mailFolders/inbox/messages/delta", url.Values{"$select": {sel},
		"$filter": {"receivedDateTime ge " + t.UTC().Format(time.RFC3339)}}), nil
}

// Delta runs a delta round to its end: from the Inbox's start when link
// is empty (the current messages), else from a stored DeltaLink (what was
// created, updated or removed since). It follows NextLinks and returns
// the changes in order and the DeltaLink to store for the next round. An
// expired link is ErrDeltaExpired: start again with an empty one.
func (c *Client) Delta(ctx context.Context, token, link string, fields ...string) (changes []Message, deltaLink string, err error) {
	for range maxDeltaPages {
		p, err := c.DeltaNext(ctx, token, link, fields...)
		if err != nil {
			return nil, "", err
		}
		changes = append(changes, p.Changes...)
		if p.DeltaLink != "" {
			return changes, p.DeltaLink, nil
		}
		link = p.NextLink
	}
	return nil, "", errors.New("graph: delta round did not end")
}
