package ens

import (
	"context"
	"log/slog"
)

// failSilentSubscriptions fails subscriptions Exchange has stopped calling
// back for (twice their status frequency) and asks their devices to
// register again. The database hands each to one node only.
func (s *Service) failSilentSubscriptions(ctx context.Context) {
	for {
		subs, err := s.store.FailSilentSubscriptions(ctx, 100)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("checking subscription health", slog.Any("error", err))
			}
			return
		}
		for _, sub := range subs {
			s.log.Info("subscription silent; asking its devices to register again", slog.String("subscription", sub.PublicID))
			devices, err := s.store.ActiveDevices(ctx, sub.TenantID, sub.MailboxHash)
			if err != nil {
				s.log.Warn("listing devices of a silent subscription", slog.Any("error", err))
				continue
			}
			tenant, err := s.store.TenantByID(ctx, sub.TenantID)
			if err != nil {
				s.log.Warn("loading the tenant of a silent subscription", slog.Any("error", err))
				continue
			}
			s.askToReregister(ctx, tenant, devices, false)
		}
		if len(subs) < 100 {
			return
		}
	}
}
