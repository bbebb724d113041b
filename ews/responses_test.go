package ews

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// errorResponse is a GetItemResponse with one error message.
func errorResponse(class, code, text, messageXML string) []byte {
	return fmt.Appendf(nil, `<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>
<m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
<m:ResponseMessages><m:GetItemResponseMessage ResponseClass=%q>
<m:MessageText>%s</m:MessageText><m:ResponseCode>%s</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>%s<m:Items/>
</m:GetItemResponseMessage></m:ResponseMessages></m:GetItemResponse></s:Body></s:Envelope>`, class, text, code, messageXML)
}

func TestResponseCodesMapToSentinels(t *testing.T) {
	sentinels := []error{ErrItemNotFound, ErrFolderNotFound, ErrSubscriptionNotFound, ErrInvalidSubscription,
		ErrExceededSubscriptionCount, ErrInvalidPushSubscriptionURL, ErrInvalidWatermark, ErrServerBusy,
		ErrAccessDenied, ErrMailboxNotFound, ErrMailboxUnavailable, ErrInvalidID, ErrInvalidRequest}
	for code, want := range map[string]error{
		"ErrorItemNotFound":               ErrItemNotFound,
		"ErrorFolderNotFound":             ErrFolderNotFound,
		"ErrorSubscriptionNotFound":       ErrSubscriptionNotFound,
		"ErrorInvalidSubscription":        ErrInvalidSubscription,
		"ErrorExpiredSubscription":        ErrInvalidSubscription,
		"ErrorExceededSubscriptionCount":  ErrExceededSubscriptionCount,
		"ErrorInvalidPushSubscriptionUrl": ErrInvalidPushSubscriptionURL,
		"ErrorInvalidWatermark":           ErrInvalidWatermark,
		"ErrorServerBusy":                 ErrServerBusy,
		"ErrorAccessDenied":               ErrAccessDenied,
		"ErrorImpersonateUserDenied":      ErrAccessDenied,
		"ErrorNonExistentMailbox":         ErrMailboxNotFound,
		"ErrorMailboxMoveInProgress":      ErrMailboxUnavailable,
		"ErrorInvalidIdMalformed":         ErrInvalidID,
		"ErrorSchemaValidation":           ErrInvalidRequest,
		"ErrorSomethingNew":               nil,
	} {
		_, err := ParseGetItemResponse(errorResponse("Error", code, "text for "+code, ""))
		var re *ResponseError
		if !errors.As(err, &re) || re.Code != code || re.Class != "Error" || re.Message != "text for "+code {
			t.Errorf("%s: got %#v", code, err)
			continue
		}
		for _, s := range sentinels {
			if got := errors.Is(err, s); got != (s == want) {
				t.Errorf("%s: errors.Is(err, %v) = %t", code, s, got)
			}
		}
	}
}

func TestWarningIsAnError(t *testing.T) {
	_, err := ParseGetItemResponse(errorResponse("Warning", "ErrorBatchProcessingStopped", "", ""))
	var re *ResponseError
	if !errors.As(err, &re) || re.Class != "Warning" || re.Code != "ErrorBatchProcessingStopped" {
		t.Fatalf("got %#v", err)
	}
}

// ErrorServerBusy can also come in a response message, with the back-off
// in its MessageXml.
func TestResponseMessageBackOff(t *testing.T) {
	mx := `<m:MessageXml><t:Value Name="Policy">x</t:Value><t:Value Name="BackOffMilliseconds">1500</t:Value></m:MessageXml>`
	_, err := ParseGetItemResponse(errorResponse("Error", "ErrorServerBusy", "busy", mx))
	if !errors.Is(err, ErrServerBusy) || RetryAfter(err) != 1500*time.Millisecond {
		t.Fatalf("got %#v", err)
	}
	for _, bad := range []string{"-5", "soon", "99999999999"} {
		mx := `<m:MessageXml><t:Value Name="BackOffMilliseconds">` + bad + `</t:Value></m:MessageXml>`
		if _, err := ParseGetItemResponse(errorResponse("Error", "ErrorServerBusy", "", mx)); RetryAfter(err) != 0 || !errors.Is(err, ErrServerBusy) {
			t.Errorf("back-off %q: got %#v", bad, err)
		}
	}
}

func TestSOAPFaults(t *testing.T) {
	fault := func(inner string) []byte {
		return []byte(`<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>` + inner + `</s:Fault></s:Body></s:Envelope>`)
	}
	for name, tc := range map[string]struct {
		doc      []byte
		code     string
		msg      string
		sentinel error
	}{
		"code in detail": {fault(`<faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:ErrorSchemaValidation</faultcode>
			<faultstring>The request failed schema validation</faultstring><detail>
			<e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorSchemaValidation</e:ResponseCode></detail>`),
			"ErrorSchemaValidation", "The request failed schema validation", ErrInvalidRequest},
		"code only in faultcode": {fault(`<faultcode xmlns:a="urn:x">a:ErrorInvalidServerVersion</faultcode><faultstring>bad version</faultstring>`),
			"ErrorInvalidServerVersion", "bad version", ErrInvalidRequest},
		"plain soap fault": {fault(`<faultcode>s:Client</faultcode><faultstring>nope</faultstring>`), "Client", "nope", nil},
		"message from detail": {fault(`<faultcode>s:Server</faultcode><detail><e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">ErrorAccessDenied</e:ResponseCode>
			<e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">denied</e:Message></detail>`), "ErrorAccessDenied", "denied", ErrAccessDenied},
	} {
		_, err := ParseSubscribeResponse(tc.doc)
		var re *ResponseError
		if !errors.As(err, &re) || re.Class != ClassFault || re.Code != tc.code || re.Message != tc.msg {
			t.Errorf("%s: got %#v", name, err)
			continue
		}
		if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
			t.Errorf("%s: not %v", name, tc.sentinel)
		}
	}
	if _, err := ParseSubscribeResponse(fault(`<faultstring>no code</faultstring>`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("fault without code: got %v", err)
	}
}

// Server text can name people and addresses: it stays out of Error().
func TestResponseErrorStringOmitsServerText(t *testing.T) {
	_, err := ParseGetItemResponse(errorResponse("Error", "ErrorNonExistentMailbox", "No mailbox for bob@example.com", ""))
	if err == nil || strings.Contains(err.Error(), "bob@example.com") || !strings.Contains(err.Error(), "ErrorNonExistentMailbox") {
		t.Fatalf("error string %q", err)
	}
}

func TestParseResponsesStrict(t *testing.T) {
	item := string(sample(t, "10-getitem.response.xml"))
	folder := string(sample(t, "12-getfolder-inbox.response.xml"))
	sub := string(sample(t, "02-subscribe.response.xml"))
	for name, tc := range map[string]struct {
		doc   string
		parse func([]byte) error
	}{
		"item: no item":            {cut(item, "<t:Message>", "</t:Message>"), nil},
		"item: no ItemId":          {strings.Replace(item, `<t:ItemId Id="AAMkAGItem1=" ChangeKey="CQAAAA=="/>`, "", 1), nil},
		"item: bad received":       {strings.Replace(item, "2024-05-01T09:15:00Z", "May 1st", 1), nil},
		"item: wrong response":     {strings.ReplaceAll(item, "m:GetItemResponse>", "m:GetFolderResponse>"), nil},
		"item: no ResponseClass":   {strings.Replace(item, ` ResponseClass="Success"`, "", 1), nil},
		"item: error without code": {strings.Replace(strings.Replace(item, "Success", "Error", 1), "<m:ResponseCode>NoError</m:ResponseCode>", "", 1), nil},
		"folder: no UnreadCount":   {strings.Replace(folder, "<t:UnreadCount>7</t:UnreadCount>", "", 1), parseFolder},
		"folder: negative":         {strings.Replace(folder, ">7<", ">-1<", 1), parseFolder},
		"folder: not a number":     {strings.Replace(folder, ">7<", ">seven<", 1), parseFolder},
		"folder: overflow":         {strings.Replace(folder, ">7<", ">99999999999<", 1), parseFolder},
		"folder: no folder":        {cut(folder, "<t:Folder>", "</t:Folder>"), parseFolder},
		"subscribe: no id":         {strings.Replace(sub, "FwB0ZXN0LW1haWwyLm1zZnQudmlydHVhbBAAAABzUd2ea9nSRZxccnlZiYGL", "", 1), parseSubscribe},
		"subscribe: envelope ns":   {strings.Replace(sub, "http://schemas.xmlsoap.org/soap/envelope/", "urn:other", 1), parseSubscribe},
	} {
		parse := tc.parse
		if parse == nil {
			parse = parseItem
		}
		if err := parse([]byte(tc.doc)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: want ErrMalformed, got %v", name, err)
		}
	}
}

// cut removes s from the first start to the following end, inclusive.
func cut(s, start, end string) string {
	i := strings.Index(s, start)
	j := strings.Index(s[i:], end) + i + len(end)
	return s[:i] + s[j:]
}

func parseItem(b []byte) error      { _, err := ParseGetItemResponse(b); return err }
func parseFolder(b []byte) error    { _, err := ParseGetFolderResponse(b); return err }
func parseSubscribe(b []byte) error { _, err := ParseSubscribeResponse(b); return err }

func TestParseResponsesTolerant(t *testing.T) {
	// A meeting request (another item class), no From, extra elements, a
	// TotalCount, and unusual prefixes.
	item := strings.NewReplacer("t:Message>", "t:MeetingRequest>", "<t:Subject>", "<t:Unknown a='1'/><t:Subject>").
		Replace(string(sample(t, "10-getitem.response.xml")))
	got, err := ParseGetItemResponse([]byte(cut(item, "<t:From>", "</t:From>")))
	if err != nil || got.Subject != "Quarterly report" || got.From != (Mailbox{}) || got.ID.ID != "AAMkAGItem1=" {
		t.Errorf("meeting request: %+v, %v", got, err)
	}

	folder := strings.NewReplacer("<t:UnreadCount>7</t:UnreadCount>", "<t:TotalCount> 12 </t:TotalCount><t:ChildFolderCount>0</t:ChildFolderCount><t:UnreadCount>\n 7\n</t:UnreadCount>",
		"m:", "msg:", "xmlns:m=", "xmlns:msg=").Replace(string(sample(t, "12-getfolder-inbox.response.xml")))
	f, err := ParseGetFolderResponse([]byte(folder))
	if err != nil || f.UnreadCount != 7 || f.TotalCount == nil || *f.TotalCount != 12 {
		t.Errorf("folder: %+v, %v", f, err)
	}
}
