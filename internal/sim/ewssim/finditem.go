package ewssim

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/beevik/etree"
)

// findItem answers FindItem: the Inbox's messages in DateTimeReceived
// order, paged by an IndexedPageItemView, with the properties of the
// ItemShape. Restrictions, grouping, search queries and the other views
// are not simulated and get ErrorInvalidRequest, like unknown operations.
func (s *Server) findItem(w http.ResponseWriter, user string, op *etree.Element) {
	folders := child(op, nsMsgs, "ParentFolderIds")
	if folders == nil || len(folders.ChildElements()) == 0 {
		s.writeFault(w, "ErrorSchemaValidation", "The request failed schema validation: FindItem needs ParentFolderIds.", 0)
		return
	}
	for _, unsupported := range []string{"Restriction", "GroupBy", "DistinguishedGroupBy", "QueryString",
		"FractionalPageItemView", "SeekToConditionPageItemView", "CalendarView", "ContactsView"} {
		if child(op, nsMsgs, unsupported) != nil {
			s.writeFault(w, "ErrorInvalidRequest", "The request is invalid: the simulator does not implement FindItem with "+unsupported+".", 0)
			return
		}
	}
	descending := true // Exchange's default view: newest first
	if orders := children(child(op, nsMsgs, "SortOrder"), nsTypes, "FieldOrder"); len(orders) > 0 {
		if len(orders) > 1 || child(orders[0], nsTypes, "FieldURI").NotNil().SelectAttrValue("FieldURI", "") != "item:DateTimeReceived" {
			s.writeFault(w, "ErrorInvalidRequest", "The request is invalid: the simulator sorts by item:DateTimeReceived only.", 0)
			return
		}
		descending = orders[0].SelectAttrValue("Order", "Ascending") == "Descending"
	}
	page, err := parsePage(child(op, nsMsgs, "IndexedPageItemView"))
	if err != nil {
		s.writeFault(w, "ErrorSchemaValidation", "The request failed schema validation: IndexedPageItemView: "+err.Error()+".", 0)
		return
	}
	props := shape(child(op, nsMsgs, "ItemShape"), itemDefault, itemAll)
	// Exchange never returns bodies from FindItem; clients GetItem them.
	delete(props, "item:Body")
	// Associated (hidden) and soft-deleted items: the simulator has none.
	shallow := op.SelectAttrValue("Traversal", "Shallow") == "Shallow"

	doc, body := responseEnvelope()
	rms := body.CreateElement("m:FindItemResponse").CreateElement("m:ResponseMessages")
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, fid := range folders.ChildElements() {
		m, f, code := s.openFolder(user, fid)
		if code != "" {
			s.responseMessage(rms, "m:FindItemResponseMessage", code)
			continue
		}
		var view []*Item
		if shallow && f.id == m.inboxID {
			view = m.sortedItems(descending)
		}
		first, last := page.window(len(view))
		rm := s.responseMessage(rms, "m:FindItemResponseMessage", "NoError")
		root := rm.CreateElement("m:RootFolder")
		root.CreateAttr("IndexedPagingOffset", strconv.Itoa(page.next(first, last, len(view))))
		root.CreateAttr("TotalItemsInView", strconv.Itoa(len(view)))
		root.CreateAttr("IncludesLastItemInRange", strconv.FormatBool(page.reachesEnd(first, last, len(view))))
		items := root.CreateElement("t:Items")
		for _, it := range view[first:last] {
			writeMessage(items.CreateElement("t:Message"), m, it, props)
		}
	}
	writeXML(w, http.StatusOK, doc)
}

// sortedItems returns the Inbox by DateTimeReceived (ties by id, so pages
// are stable).
func (m *mailbox) sortedItems(descending bool) []*Item {
	out := make([]*Item, 0, len(m.items))
	for _, it := range m.items {
		out = append(out, it)
	}
	slices.SortFunc(out, func(a, b *Item) int {
		c := a.Received.Compare(b.Received)
		if c == 0 {
			c = strings.Compare(a.ID, b.ID)
		}
		if descending {
			return -c
		}
		return c
	})
	return out
}

// indexedPage is an IndexedPageItemView: up to max items (0: no limit),
// offset items away from the view's beginning, or from its end.
type indexedPage struct {
	max, offset int
	fromEnd     bool
}

var errBadPage = errors.New("MaxEntriesReturned must be positive, Offset not negative, BasePoint Beginning or End")

func parsePage(e *etree.Element) (indexedPage, error) {
	var p indexedPage
	if e == nil {
		return p, nil
	}
	var err error
	if v := e.SelectAttrValue("MaxEntriesReturned", ""); v != "" {
		if p.max, err = strconv.Atoi(v); err != nil || p.max < 1 {
			return p, errBadPage
		}
	}
	if p.offset, err = strconv.Atoi(e.SelectAttrValue("Offset", "")); err != nil || p.offset < 0 {
		return p, errBadPage
	}
	switch e.SelectAttrValue("BasePoint", "") {
	case "Beginning":
	case "End":
		p.fromEnd = true
	default:
		return p, errBadPage
	}
	return p, nil
}

// window returns the slice bounds of the page in a view of n items.
func (p indexedPage) window(n int) (first, last int) {
	if p.fromEnd {
		last = max(n-p.offset, 0)
		first = 0
		if p.max > 0 {
			first = max(last-p.max, 0)
		}
		return first, last
	}
	first = min(p.offset, n)
	last = n
	if p.max > 0 {
		last = min(first+p.max, n)
	}
	return first, last
}

// next is IndexedPagingOffset: the Offset that asks for the following page
// in the same direction.
func (p indexedPage) next(first, last, n int) int {
	if p.fromEnd {
		return n - first
	}
	return last
}

// reachesEnd is IncludesLastItemInRange: no page follows in this direction.
func (p indexedPage) reachesEnd(first, last, n int) bool {
	if p.fromEnd {
		return first == 0
	}
	return last == n
}
