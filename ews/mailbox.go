package ews

import (
	"context"
	"errors"
	"fmt"
)

// ErrMailboxMismatch means the credentials log in to another mailbox than
// the one named: one that Exchange does not know, that the user may not
// open, or that the user may open only as a delegate.
var ErrMailboxMismatch = errors.New("ews: the credentials do not belong to this mailbox")

// VerifyMailbox checks that acct's credentials log in to acct.Mailbox
// itself. EWS has no "who am I", but a folder has one id however it is
// addressed: one GetFolder asks for the logged-in user's own Inbox and for
// acct.Mailbox's Inbox, and they must be the same folder. Delegate access
// to acct.Mailbox gives another folder's id, so it does not pass. It
// returns the Inbox's id, to check later that an item is in it.
func (c *Client) VerifyMailbox(ctx context.Context, acct Account, opts ...CallOption) (FolderID, error) {
	body, err := BuildVerifyMailbox(c.version, acct.Mailbox)
	if err != nil {
		return FolderID{}, err
	}
	id, err := call(ctx, c, acct, body, true, parseVerifyMailbox, opts)
	if err != nil {
		return FolderID{}, err
	}
	return *id, nil
}

// mismatchCodes are the answers for a mailbox named in a request that the
// caller may not open: Exchange reports ErrorNonExistentMailbox for an
// address it does not know, and ErrorFolderNotFound (or ErrorItemNotFound,
// ErrorAccessDenied) for a mailbox it may not open ("Handling
// delegation-related errors in EWS in Exchange", Microsoft Learn).
var mismatchCodes = []error{ErrMailboxNotFound, ErrFolderNotFound, ErrItemNotFound, ErrAccessDenied}

// parseVerifyMailbox reads the two GetFolder answers of BuildVerifyMailbox.
func parseVerifyMailbox(data []byte) (*FolderID, error) {
	msgs, err := responseMessages(data, "GetFolderResponse", "GetFolderResponseMessage")
	if err != nil {
		return nil, err
	}
	if len(msgs) != 2 {
		return nil, fmt.Errorf("%w: expected 2 GetFolderResponseMessages, got %d", ErrMalformed, len(msgs))
	}
	var ids [2]FolderID
	for i, msg := range msgs {
		if err := checkResponseClass(msg); err != nil {
			if i == 1 && isAny(err, mismatchCodes) {
				return nil, fmt.Errorf("%w (%w)", ErrMailboxMismatch, err)
			}
			return nil, err
		}
		ids[i] = parseFolderID(child(firstChild(child(msg, NamespaceMessages, "Folders")), NamespaceTypes, "FolderId"))
		if ids[i].ID == "" {
			return nil, fmt.Errorf("%w: GetFolderResponseMessage without a FolderId", ErrMalformed)
		}
	}
	if ids[0].ID != ids[1].ID {
		return nil, ErrMailboxMismatch
	}
	return &ids[0], nil
}

func isAny(err error, targets []error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
