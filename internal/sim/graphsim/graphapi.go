package graphsim

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// graphError answers Graph's error JSON:
// {"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}.
func graphError(w http.ResponseWriter, status int, code, msg string) {
	id := newGUID()
	w.Header().Set("request-id", id)
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"code": code, "message": msg,
		"innerError": map[string]string{"date": time.Now().UTC().Format("2006-01-02T15:04:05"), "request-id": id, "client-request-id": id},
	}})
}

// splitPath splits a Graph path into segments, keeping OData keys
// ("mailFolders('inbox')") as one segment with the key separate.
func splitPath(p string) []string {
	var segs []string
	for _, s := range strings.Split(strings.Trim(p, "/"), "/") {
		if s == "" {
			continue
		}
		if name, key, ok := strings.Cut(s, "("); ok && strings.HasSuffix(key, ")") {
			key = strings.TrimSuffix(key, ")")
			key = strings.Trim(key, "'")
			segs = append(segs, name, key)
			continue
		}
		segs = append(segs, s)
	}
	return segs
}

func (s *Server) serveGraph(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/v1.0")
	segs := splitPath(path)
	if len(segs) == 0 {
		graphError(w, http.StatusNotFound, "BadRequest", "Invalid version.")
		return
	}
	at, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	me := at.user
	release, ok := s.admit(w, at.client, me)
	s.stats.request(me.address)
	if !ok {
		return
	}
	defer release()

	if strings.EqualFold(segs[0], "subscriptions") {
		s.serveSubscriptions(w, r, at, segs[1:])
		return
	}
	if strings.EqualFold(segs[0], "organization") && len(segs) == 1 && r.Method == http.MethodGet {
		s.stats.op("organization")
		s.serveOrganization(w, r)
		return
	}
	var rest []string
	switch {
	case strings.EqualFold(segs[0], "me"):
		rest = segs[1:]
	case strings.EqualFold(segs[0], "users") && len(segs) >= 2:
		if !s.isUser(me, segs[1]) {
			// Delegated access reaches only the signed-in user's mailbox.
			graphError(w, http.StatusForbidden, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
			return
		}
		rest = segs[2:]
	default:
		graphError(w, http.StatusBadRequest, "BadRequest", "Resource not found for the segment '"+segs[0]+"'.")
		return
	}
	if len(rest) == 0 {
		if r.Method != http.MethodGet {
			graphError(w, http.StatusMethodNotAllowed, "Request_BadRequest", "Specified HTTP method is not allowed for the request target.")
			return
		}
		s.stats.op("me")
		s.serveMe(w, r, me)
		return
	}
	if r.Method != http.MethodGet {
		graphError(w, http.StatusMethodNotAllowed, "ErrorInvalidRequest", "The OData request is not supported.")
		return
	}
	if ok, _ := at.canRead(); !ok {
		graphError(w, http.StatusForbidden, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
		return
	}
	// mailFolders/{inbox}[/messages[/delta|/{id}]] or messages/{id}
	if strings.EqualFold(rest[0], "mailFolders") {
		if len(rest) < 2 || !s.isInbox(me, rest[1]) {
			graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
			return
		}
		rest = rest[2:]
		if len(rest) == 0 {
			s.stats.op("mailFolder")
			s.serveFolder(w, r, me)
			return
		}
		if !strings.EqualFold(rest[0], "messages") {
			graphError(w, http.StatusBadRequest, "BadRequest", "Resource not found for the segment '"+rest[0]+"'.")
			return
		}
		if len(rest) == 2 && strings.EqualFold(rest[1], "delta") {
			s.stats.op("delta")
			s.serveDelta(w, r, at)
			return
		}
	} else if !strings.EqualFold(rest[0], "messages") {
		graphError(w, http.StatusBadRequest, "BadRequest", "Resource not found for the segment '"+rest[0]+"'.")
		return
	}
	switch len(rest) {
	case 1:
		s.stats.op("messages")
		s.serveMessages(w, r, at)
	case 2:
		s.stats.op("message")
		s.serveMessage(w, r, at, rest[1])
	default:
		graphError(w, http.StatusBadRequest, "BadRequest", "Resource not found for the segment '"+rest[2]+"'.")
	}
}

// isUser reports whether key (an object id, "id@tenant", a UPN or the
// address) names m.
func (s *Server) isUser(m *mailbox, key string) bool {
	key, _ = url.PathUnescape(key)
	key = strings.ToLower(key)
	if id, tenant, ok := strings.Cut(key, "@"); ok && id == m.id && tenant == s.tenant {
		return true
	}
	return key == m.id || key == strings.ToLower(m.upn) || key == m.address
}

func (s *Server) isInbox(m *mailbox, key string) bool {
	return strings.EqualFold(key, "inbox") || key == m.inboxID
}

func (s *Server) context(r *http.Request, tail string) string {
	return baseURL(r) + "/v1.0/$metadata#" + tail
}

func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func (s *Server) serveMe(w http.ResponseWriter, r *http.Request, m *mailbox) {
	s.mu.Lock()
	u := map[string]any{
		"@odata.context": s.context(r, "users/$entity"),
		"businessPhones": []string{}, "displayName": m.name, "givenName": nil, "jobTitle": nil,
		"mail": m.address, "mobilePhone": nil, "officeLocation": nil, "preferredLanguage": nil,
		"surname": nil, "userPrincipalName": m.upn, "id": m.id,
	}
	s.mu.Unlock()
	writeSelected(w, r, u, []string{"businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone", "officeLocation", "preferredLanguage", "surname", "userPrincipalName", "id"}, "microsoft.graph.user")
}

// serveOrganization answers the signed-in user's directory (User.Read
// allows it): its id and verified domains, a collection of one.
func (s *Server) serveOrganization(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	domains := s.cfg.VerifiedDomains
	if len(domains) == 0 {
		for _, m := range s.users {
			if _, d, ok := strings.Cut(m.address, "@"); ok && !slices.Contains(domains, d) {
				domains = append(domains, d)
			}
		}
		slices.Sort(domains)
	}
	var verified []map[string]any
	for i, d := range domains {
		verified = append(verified, map[string]any{"capabilities": "Email", "isDefault": i == 0, "isInitial": false, "name": d, "type": "Managed"})
	}
	org := map[string]any{"id": s.tenant, "displayName": "Simulated directory", "verifiedDomains": verified}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"@odata.context": s.context(r, "organization"), "value": []any{org}})
}

func (s *Server) serveFolder(w http.ResponseWriter, r *http.Request, m *mailbox) {
	s.mu.Lock()
	f := map[string]any{
		"@odata.context": s.context(r, "users('"+m.id+"')/mailFolders/$entity"),
		"id":             m.inboxID, "displayName": "Inbox", "parentFolderId": "AQMkAD" + m.id[:8] + "AAAAAAEIAAAA",
		"childFolderCount": 0, "unreadItemCount": m.unread(), "totalItemCount": len(m.messages),
		"sizeInBytes": 0, "isHidden": false,
	}
	s.mu.Unlock()
	writeSelected(w, r, f, []string{"id", "displayName", "parentFolderId", "childFolderCount", "unreadItemCount", "totalItemCount", "sizeInBytes", "isHidden"}, "microsoft.graph.mailFolder")
}

// writeSelected applies $select to an entity and writes it.
func writeSelected(w http.ResponseWriter, r *http.Request, v map[string]any, props []string, typ string) {
	sel, bad := parseSelect(r.URL.Query().Get("$select"), props)
	if bad != "" {
		graphError(w, http.StatusBadRequest, "RequestBroker--ParseUri", "Could not find a property named '"+bad+"' on type '"+typ+"'.")
		return
	}
	if sel != nil {
		for k := range v {
			if !strings.HasPrefix(k, "@") && k != "id" && !slices.Contains(sel, k) {
				delete(v, k)
			}
		}
	}
	writeJSON(w, http.StatusOK, v)
}

// parseSelect returns the selected properties (nil: all) in their
// canonical case, or the first unknown one.
func parseSelect(q string, props []string) (sel []string, bad string) {
	if strings.TrimSpace(q) == "" {
		return nil, ""
	}
	sel = []string{}
	for _, p := range strings.Split(q, ",") {
		p = strings.TrimSpace(p)
		i := slices.IndexFunc(props, func(x string) bool { return strings.EqualFold(x, p) })
		if i < 0 {
			return nil, p
		}
		sel = append(sel, props[i])
	}
	return sel, ""
}

var messageProps = []string{
	"createdDateTime", "lastModifiedDateTime", "changeKey", "categories", "receivedDateTime", "sentDateTime",
	"hasAttachments", "internetMessageId", "subject", "bodyPreview", "importance", "parentFolderId",
	"conversationId", "isDeliveryReceiptRequested", "isReadReceiptRequested", "isRead", "isDraft", "webLink",
	"inferenceClassification", "body", "sender", "from", "toRecipients", "ccRecipients", "bccRecipients", "replyTo",
	"flag", "uniqueBody",
}

// etag is a message's @odata.etag.
func (msg *message) etag() string { return `W/"` + msg.changeKey + `"` }

// messageJSON renders a message with all its properties (basic: without
// body and bodyPreview, as with Mail.ReadBasic only).
func (m *mailbox) messageJSON(msg *message, basic bool) map[string]any {
	addr := func(name, a string) map[string]any {
		return map[string]any{"emailAddress": map[string]string{"name": name, "address": a}}
	}
	v := map[string]any{
		"@odata.etag":     msg.etag(),
		"id":              msg.ID,
		"createdDateTime": graphTime(msg.created), "lastModifiedDateTime": graphTime(msg.modified),
		"changeKey": msg.changeKey, "categories": []string{},
		"receivedDateTime": graphTime(msg.Received), "sentDateTime": graphTime(msg.Received),
		"hasAttachments": false, "internetMessageId": "<" + msg.ID[6:22] + "@sim.graph>",
		"subject": msg.Subject, "bodyPreview": msg.Preview, "importance": "normal",
		"parentFolderId": m.inboxID, "conversationId": "AAQkAD" + msg.ID[6:30] + "=",
		"isDeliveryReceiptRequested": false, "isReadReceiptRequested": false,
		"isRead": msg.IsRead, "isDraft": false,
		"webLink":                 "https://outlook.office365.com/owa/?ItemID=" + url.QueryEscape(msg.ID) + "&viewmodel=ReadMessageItem",
		"inferenceClassification": "focused",
		"body":                    map[string]string{"contentType": "text", "content": msg.Body},
		"uniqueBody":              map[string]string{"contentType": "text", "content": msg.Body},
		"sender":                  addr(msg.FromName, msg.From), "from": addr(msg.FromName, msg.From),
		"toRecipients": []any{addr(m.name, m.address)}, "ccRecipients": []any{}, "bccRecipients": []any{}, "replyTo": []any{},
		"flag": map[string]string{"flagStatus": "notFlagged"},
	}
	if basic {
		delete(v, "body")
		delete(v, "uniqueBody")
		delete(v, "bodyPreview")
	}
	return v
}

func applySelect(v map[string]any, sel []string) {
	if sel == nil {
		return
	}
	delete(v, "uniqueBody") // only when selected, as in Graph
	for k := range v {
		if !strings.HasPrefix(k, "@") && k != "id" && !slices.Contains(sel, k) {
			delete(v, k)
		}
	}
}

func (s *Server) serveMessage(w http.ResponseWriter, r *http.Request, at *accessToken, id string) {
	id, _ = url.PathUnescape(id)
	sel, bad := parseSelect(r.URL.Query().Get("$select"), messageProps)
	if bad != "" {
		graphError(w, http.StatusBadRequest, "RequestBroker--ParseUri", "Could not find a property named '"+bad+"' on type 'microsoft.graph.message'.")
		return
	}
	_, basic := at.canRead()
	s.mu.Lock()
	m := at.user
	msg := m.find(id)
	if msg == nil {
		s.mu.Unlock()
		graphError(w, http.StatusNotFound, "ErrorItemNotFound", "The specified object was not found in the store.")
		return
	}
	v := m.messageJSON(msg, basic)
	s.mu.Unlock()
	if sel == nil {
		delete(v, "uniqueBody")
	}
	applySelect(v, sel)
	ctx := "users('" + at.user.id + "')/messages"
	if sel != nil {
		ctx += "(" + strings.Join(sel, ",") + ")"
	}
	v["@odata.context"] = s.context(r, ctx+"/$entity")
	writeJSON(w, http.StatusOK, v)
}

// pageSize reads Prefer: odata.maxpagesize and $top.
func (s *Server) pageSize(w http.ResponseWriter, r *http.Request) int {
	n := s.cfg.DefaultPageSize
	for _, pref := range r.Header.Values("Prefer") {
		for _, p := range strings.Split(pref, ",") {
			if k, v, ok := strings.Cut(strings.TrimSpace(p), "="); ok && strings.EqualFold(k, "odata.maxpagesize") {
				if x, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && x > 0 {
					n = min(x, 1000)
					w.Header().Set("Preference-Applied", "odata.maxpagesize="+strconv.Itoa(n))
				}
			}
		}
	}
	if t, err := strconv.Atoi(r.URL.Query().Get("$top")); err == nil && t > 0 {
		n = min(t, 1000)
	}
	return n
}

// serveMessages lists the Inbox, newest first ($select, $top, $skip).
func (s *Server) serveMessages(w http.ResponseWriter, r *http.Request, at *accessToken) {
	q := r.URL.Query()
	sel, bad := parseSelect(q.Get("$select"), messageProps)
	if bad != "" {
		graphError(w, http.StatusBadRequest, "RequestBroker--ParseUri", "Could not find a property named '"+bad+"' on type 'microsoft.graph.message'.")
		return
	}
	size := s.pageSize(w, r)
	skip, _ := strconv.Atoi(q.Get("$skip"))
	_, basic := at.canRead()
	s.mu.Lock()
	m := at.user
	msgs := slices.Clone(m.messages)
	slices.SortStableFunc(msgs, func(a, b *message) int { return b.Received.Compare(a.Received) })
	var page []any
	for i := skip; i < len(msgs) && len(page) < size; i++ {
		v := m.messageJSON(msgs[i], basic)
		delete(v, "uniqueBody")
		applySelect(v, sel)
		page = append(page, v)
	}
	more := skip+size < len(msgs)
	s.mu.Unlock()
	out := map[string]any{"@odata.context": s.context(r, "users('"+m.id+"')/messages"), "value": orEmpty(page)}
	if more {
		nq := url.Values{}
		for k, v := range q {
			nq[k] = v
		}
		nq.Set("$skip", strconv.Itoa(skip+size))
		out["@odata.nextLink"] = baseURL(r) + r.URL.Path + "?" + nq.Encode()
	}
	writeJSON(w, http.StatusOK, out)
}

func orEmpty(v []any) []any {
	if v == nil {
		return []any{}
	}
	return v
}

// deltaState is what a skip or delta token encodes (opaque to clients).
type deltaState struct {
	User   string   `json:"u"`
	Since  uint64   `json:"s"`           // changes after this sequence
	Upto   uint64   `json:"t"`           // ... up to this one (the round's end)
	After  uint64   `json:"a,omitempty"` // paging cursor within the round
	Select []string `json:"f,omitempty"`
	Change string   `json:"c,omitempty"`
	Init   bool     `json:"i,omitempty"` // the first round: current messages only
	// From: the first round's $filter=receivedDateTime ge …, the one
	// filter message delta supports (unix nanoseconds; 0: none).
	From int64 `json:"r,omitempty"`
}

func encodeState(st deltaState) string {
	b, _ := json.Marshal(st)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeState(tok string) (deltaState, bool) {
	var st deltaState
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || json.Unmarshal(b, &st) != nil {
		return st, false
	}
	return st, true
}

// serveDelta answers message delta on the Inbox (api/message-delta.md,
// concepts/delta-query-messages.md): the first round returns the folder's
// messages, later rounds (from @odata.deltaLink) what was created or
// updated since, and deletions as {"@removed":{"reason":"deleted"}}. Pages
// end with @odata.nextLink ($skiptoken) until the last, which carries
// @odata.deltaLink ($deltatoken). $select and changeType go in the first
// request only; the tokens carry them.
func (s *Server) serveDelta(w http.ResponseWriter, r *http.Request, at *accessToken) {
	q := r.URL.Query()
	size := s.pageSize(w, r)
	m := at.user
	var st deltaState
	tok, isSkip := q.Get("$skiptoken"), true
	if tok == "" {
		tok, isSkip = q.Get("$deltatoken"), false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if tok != "" {
		var ok bool
		st, ok = decodeState(tok)
		if !ok || st.User != m.id {
			graphError(w, http.StatusBadRequest, "BadRequest", "The syncState token is invalid.")
			return
		}
		if st.Upto < m.deltaFloor {
			graphError(w, http.StatusGone, "SyncStateNotFound", "The sync state generation is not found.")
			return
		}
		if !isSkip {
			// A new round from a delta token: changes since its end.
			st = deltaState{User: m.id, Since: st.Upto, Upto: m.seq, After: st.Upto, Select: st.Select, Change: st.Change}
		}
	} else {
		sel, bad := parseSelect(q.Get("$select"), messageProps)
		if bad != "" {
			graphError(w, http.StatusBadRequest, "RequestBroker--ParseUri", "Could not find a property named '"+bad+"' on type 'microsoft.graph.message'.")
			return
		}
		ct := q.Get("changeType")
		if ct != "" && ct != "created" && ct != "updated" && ct != "deleted" {
			graphError(w, http.StatusBadRequest, "ErrorInvalidParameter", "The value '"+ct+"' of parameter 'changeType' is invalid.")
			return
		}
		st = deltaState{User: m.id, Since: 0, Upto: m.seq, Select: sel, Change: ct, Init: true}
		if f := q.Get("$filter"); f != "" {
			field, value, _ := strings.Cut(strings.TrimSpace(f), " ge ")
			from, err := time.Parse(time.RFC3339, strings.TrimSpace(value))
			if !strings.EqualFold(strings.TrimSpace(field), "receivedDateTime") || err != nil {
				graphError(w, http.StatusBadRequest, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")
				return
			}
			st.From = from.UnixNano()
		}
	}
	_, basic := at.canRead()

	// Candidates in this round, by sequence: current messages changed in
	// (Since, Upto] and, after the first round, deletions.
	type entry struct {
		seq uint64
		v   map[string]any
	}
	var cands []entry
	for _, msg := range m.messages {
		if msg.seq <= st.After || msg.seq > st.Upto || msg.seq <= st.Since {
			continue
		}
		if st.Init && st.From != 0 && msg.Received.UnixNano() < st.From {
			continue
		}
		created := msg.createSeq > st.Since
		if !st.Init && (st.Change == "created" && !created || st.Change == "updated" && created) || st.Change == "deleted" {
			continue
		}
		v := m.messageJSON(msg, basic)
		delete(v, "uniqueBody")
		applySelect(v, st.Select)
		v["@odata.type"] = "#microsoft.graph.message"
		cands = append(cands, entry{msg.seq, v})
	}
	if !st.Init && (st.Change == "" || st.Change == "deleted") {
		for _, t := range m.tombstones {
			if t.seq > st.After && t.seq > st.Since && t.seq <= st.Upto {
				cands = append(cands, entry{t.seq, map[string]any{"@odata.type": "#microsoft.graph.message", "id": t.id, "@removed": map[string]string{"reason": "deleted"}}})
			}
		}
	}
	slices.SortFunc(cands, func(a, b entry) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	page := make([]any, 0, size)
	for _, c := range cands {
		if len(page) == size {
			break
		}
		page = append(page, c.v)
		st.After = c.seq
	}
	link := baseURL(r) + "/v1.0/me/mailFolders('" + m.inboxID + "')/messages/delta?"
	out := map[string]any{"@odata.context": s.context(r, "Collection(message)"), "value": page}
	if len(cands) > len(page) {
		out["@odata.nextLink"] = link + "$skiptoken=" + encodeState(st)
	} else {
		out["@odata.deltaLink"] = link + "$deltatoken=" + encodeState(deltaState{User: m.id, Upto: st.Upto, Select: st.Select, Change: st.Change})
	}
	writeJSON(w, http.StatusOK, out)
}
