package ewsproxy

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ensgate/ensgate/internal/promreg"
)

// requests counts EWS requests by operation and by what the proxy did.
var requests = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "ensgate",
	Subsystem: "ews",
	Name:      "requests_total",
	Help:      "EWS requests through the proxy, by operation and decision (forwarded, refused_device, refused_ntlm, refused_attestation, refused_kerberos, unavailable).",
}, []string{"operation", "decision"})

// Register adds the proxy's metrics to reg; registering twice (a config
// reload) is fine.
func Register(reg prometheus.Registerer) error {
	return promreg.Register(reg, requests)
}

// operationLabel keeps the label set bounded: known EWS operations by
// name, anything else as "other".
func operationLabel(op string) string {
	if knownOperations[op] {
		return op
	}
	if op == "" {
		return "unknown"
	}
	return "other"
}

var knownOperations = map[string]bool{}

func init() {
	for _, op := range []string{"ConvertId", "CopyItem", "CreateAttachment", "CreateFolder", "CreateItem", "DeleteAttachment",
		"DeleteFolder", "DeleteItem", "ExpandDL", "FindConversation", "FindFolder", "FindItem", "GetAttachment",
		"GetConversationItems", "GetEvents", "GetFolder", "GetItem", "GetRoomLists", "GetRooms", "GetServerTimeZones",
		"GetStreamingEvents", "GetUserAvailability", "GetUserConfiguration", "GetUserOofSettings", "MoveItem",
		"ResolveNames", "SendItem", "SetUserOofSettings", "Subscribe", "SyncFolderHierarchy", "SyncFolderItems",
		"Unsubscribe", "UpdateFolder", "UpdateItem", "UploadItems", "ExportItems", "MarkAllItemsAsRead"} {
		knownOperations[op] = true
	}
}
