package ens

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/privacy"
	"github.com/ensgate/ensgate/store"
)

// The work that must happen later or again is a River job in PostgreSQL:
// every node works jobs, each job once, and the jobs a dead node was
// running are retried elsewhere after rescueAfter. A job's arguments hold
// row ids and opaque hashes only, never a token, an address or content.
//
//	ensgate_push        a push APNs or FCM did not take within the callback
//	ensgate_reregister  the silent "register again" pushes of a mailbox
//	ensgate_health      fails subscriptions Exchange stopped calling (periodic)
//	ensgate_key_pool    counts the key pool and queues its top-up (periodic, and on hand-out)
//	ensgate_key_pairs   generates key pairs: the top-up spreads over the nodes
//	ensgate_clean_up    forgets old push claims and unused key pairs (periodic)
//	ensgate_graph_fallback  a Graph notification's items, in case its node dies (graph_lifecycle.go)
const (
	// jobTimeout bounds one job's run (a push with its retries takes
	// PushTimeBudget at most).
	jobTimeout = PushTimeBudget + 10*time.Second
	// rescueAfter is when a job still "running" is taken to be a dead
	// node's and retried by another.
	rescueAfter = jobTimeout + 15*time.Second
	// pushRetryWindow is how long a push waits for APNs or FCM to come back.
	pushRetryWindow = 4 * time.Hour
	// maxRetryDelay caps the back-off between a job's attempts.
	maxRetryDelay = 5 * time.Minute
	// jobWorkers is how many jobs one node runs at once.
	jobWorkers = 64
	// keyPairBatch is how many key pairs one ensgate_key_pairs job makes.
	keyPairBatch = 4
)

// waiting are the states in which a job is still to run: a unique job is
// not inserted again while one like it waits.
var waiting = []rivertype.JobState{rivertype.JobStateAvailable, rivertype.JobStatePending,
	rivertype.JobStateRetryable, rivertype.JobStateRunning, rivertype.JobStateScheduled}

func newJobs(s *Service) (*river.Client[pgx.Tx], error) {
	workers := river.NewWorkers()
	river.AddWorker(workers, &pushWorker{s: s})
	river.AddWorker(workers, &reregisterWorker{s: s})
	river.AddWorker(workers, river.WorkFunc(s.failSilentSubscriptions))
	river.AddWorker(workers, river.WorkFunc(s.topUpKeyPool))
	river.AddWorker(workers, &keyPairsWorker{s: s})
	river.AddWorker(workers, river.WorkFunc(s.cleanUp))
	river.AddWorker(workers, &graphFallbackWorker{s: s})
	periodic := func(every time.Duration, args river.JobArgs) *river.PeriodicJob {
		return river.NewPeriodicJob(river.PeriodicInterval(every),
			func() (river.JobArgs, *river.InsertOpts) { return args, nil }, &river.PeriodicJobOpts{RunOnStart: true})
	}
	return river.NewClient(riverpgxv5.New(s.store.Pool()), &river.Config{
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: jobWorkers}},
		Workers: workers,
		PeriodicJobs: []*river.PeriodicJob{
			periodic(30*time.Second, healthArgs{}),
			periodic(10*time.Second, keyPoolArgs{}),
			periodic(time.Minute, cleanUpArgs{}),
		},
		JobTimeout:           jobTimeout,
		RescueStuckJobsAfter: rescueAfter,
		// Finished jobs are kept a while for operators to look at, no more.
		CompletedJobRetentionPeriod: time.Hour,
		Logger:                      slog.New(warnings{s.log.Handler()}).With(slog.String("component", "jobs")),
	})
}

// warnings passes on River's warnings and errors only: its debug and info
// lines (leadership, producers, every job) are its own business.
type warnings struct{ slog.Handler }

func (h warnings) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && h.Handler.Enabled(ctx, l)
}

func (h warnings) WithAttrs(attrs []slog.Attr) slog.Handler {
	return warnings{h.Handler.WithAttrs(attrs)}
}
func (h warnings) WithGroup(name string) slog.Handler { return warnings{h.Handler.WithGroup(name)} }

// retryAfter is the back-off after a job's attempt (1, 2, ...): 1 s,
// doubling, at most maxRetryDelay.
func retryAfter(attempt int) time.Time {
	return time.Now().Add(min(time.Second<<min(max(attempt-1, 0), 20), maxRetryDelay))
}

// pushArgs is one push that APNs or FCM did not take while Exchange's
// callback waited. Its claim is the job's until the job finishes it.
type pushArgs struct {
	Subscription int64     `json:"subscription"`
	Item         []byte    `json:"item"` // itemHash: opaque
	Device       int64     `json:"device"`
	Badge        int       `json:"badge"`
	Arrived      time.Time `json:"arrived"` // Exchange's callback
}

func (pushArgs) Kind() string { return "ensgate_push" }

func (pushArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 1000} // pushRetryWindow ends it first
}

type pushWorker struct {
	river.WorkerDefaults[pushArgs]
	s *Service
}

func (w *pushWorker) NextRetry(job *river.Job[pushArgs]) time.Time { return retryAfter(job.Attempt) }

// Work sends the push as it may be sent from the database: the content of
// the mail was never stored, so the device gets "New message" and the
// badge where its level shows an alert, the badge alone otherwise, under
// the item's collapse id.
func (w *pushWorker) Work(ctx context.Context, job *river.Job[pushArgs]) error {
	s, a := w.s, job.Args
	finish := func(outcome store.PushOutcome) error {
		return s.store.FinishPushes(ctx, a.Subscription, a.Item, []int64{a.Device}, outcome)
	}
	dev, err := s.store.DeviceByRowID(ctx, a.Device)
	if errors.Is(err, store.ErrNotFound) {
		return finish(store.PushNotAnnounced)
	}
	if err != nil {
		return err
	}
	if dev.State != store.DeviceActive {
		return finish(store.PushNotAnnounced)
	}
	if state, err := s.store.ComplianceState(ctx, store.DeviceKey{TenantID: dev.TenantID, DeviceID: dev.DeviceID}); err != nil {
		return err
	} else if !mayGetMail(state) {
		return finish(store.PushNotAnnounced)
	}
	if time.Since(job.CreatedAt) > pushRetryWindow {
		s.log.Warn("giving up a push: APNs or FCM stayed away", slog.String("device", dev.DeviceID),
			slog.Duration("waited", time.Since(job.CreatedAt).Round(time.Second)))
		return finish(store.PushExpired)
	}
	tenant, err := s.store.TenantByID(ctx, dev.TenantID)
	if err != nil {
		return err
	}
	m := newMailMessage(dev, max(privacy.For(tenant.NotificationLevel, dev.NotificationLevel), privacy.Generic), nil, a.Badge)
	m.CollapseID = CollapseID(dev.MailboxHash, a.Item)
	res := s.push.Send(ctx, m)
	switch res.Outcome {
	case push.Failed:
		return fmt.Errorf("push to %s not taken: %s", dev.Platform, res.Reason)
	case push.TokenDead:
		if _, err := s.store.SetDeviceState(ctx, dev.TenantID, dev.DeviceID, store.DeviceInactive, "push token dead: "+res.Reason); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return finish(store.PushTokenDead)
	case push.Rejected:
		s.log.Warn("push rejected", slog.String("device", dev.DeviceID), slog.String("reason", res.Reason))
		return finish(store.PushRejected)
	}
	webhookToPush.Observe(time.Since(a.Arrived).Seconds())
	if job.Attempt > 1 {
		s.hurryPushJobs(ctx)
	}
	return finish(store.PushDelivered)
}

// hurryPushJobs makes the push jobs waiting out their back-off due now, at
// most every few seconds per node: a push got through after failing, so
// APNs or FCM is back, and the others need not wait up to maxRetryDelay.
func (s *Service) hurryPushJobs(ctx context.Context) {
	now := time.Now().UnixNano()
	last := s.hurried.Load()
	if now-last < int64(5*time.Second) || !s.hurried.CompareAndSwap(last, now) {
		return
	}
	if n, err := s.store.HurryJobs(ctx, pushArgs{}.Kind()); err != nil {
		s.log.Warn("hurrying the waiting pushes", slog.Any("error", err))
	} else if n > 0 {
		s.log.Info("APNs or FCM took a retried push; the waiting pushes are due now", slog.Int64("pushes", n))
	}
}

// queuePushes hands the pushes APNs or FCM did not take to jobs, so that
// Exchange's callback can be answered: the job retries them from the
// database, on whichever node is up.
func (s *Service) queuePushes(ctx context.Context, subscriptionID int64, item []byte, devices []int64, badge int, arrived time.Time) error {
	return s.store.QueuePushes(ctx, subscriptionID, item, devices, func(ctx context.Context, tx pgx.Tx, owned []int64) error {
		params := make([]river.InsertManyParams, len(owned))
		for i, dev := range owned {
			params[i] = river.InsertManyParams{Args: pushArgs{Subscription: subscriptionID, Item: item, Device: dev, Badge: badge, Arrived: arrived}}
		}
		_, err := s.jobs.InsertManyTx(ctx, tx, params)
		return err
	})
}

// reregisterArgs asks a mailbox's devices to register again: its active
// devices, or with Reverify those deactivated by the upgrade to mailbox
// binding. Devices registered since the job was queued are left alone.
type reregisterArgs struct {
	Tenant   int64  `json:"tenant"`
	Mailbox  []byte `json:"mailbox"` // the mailbox hash
	NewMail  bool   `json:"new_mail"`
	Reverify bool   `json:"reverify"`
}

func (reregisterArgs) Kind() string { return "ensgate_reregister" }

func (reregisterArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 20, UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: waiting}}
}

type reregisterWorker struct {
	river.WorkerDefaults[reregisterArgs]
	s *Service
}

func (w *reregisterWorker) NextRetry(job *river.Job[reregisterArgs]) time.Time {
	return retryAfter(job.Attempt)
}

// Work sends each device the silent "register again" push and, with
// NewMail and where its level allows, a generic "New message". A failure
// retries the whole job: the silent push is harmless twice, and the alert
// carries a collapse id of its own, so it replaces itself.
func (w *reregisterWorker) Work(ctx context.Context, job *river.Job[reregisterArgs]) error {
	s, a := w.s, job.Args
	list := s.store.ActiveDevices
	if a.Reverify {
		list = s.store.DevicesToReverify
	}
	devices, err := list(ctx, a.Tenant, a.Mailbox)
	if err != nil {
		return err
	}
	tenant, err := s.store.TenantByID(ctx, a.Tenant)
	if err != nil {
		return err
	}
	failed := 0
	for _, dev := range devices {
		if dev.RegisteredAt.After(job.CreatedAt) {
			continue
		}
		m := baseMessage(dev)
		m.Kind = push.Reregister
		m.Badge = -1
		outcomes := []push.Outcome{s.push.Send(ctx, m).Outcome}
		if a.NewMail && privacy.For(tenant.NotificationLevel, dev.NotificationLevel).ShowsAlert() {
			alert := newMailMessage(dev, privacy.Generic, nil, -1)
			alert.CollapseID = CollapseID(dev.MailboxHash, []byte("register again"))
			outcomes = append(outcomes, s.push.Send(ctx, alert).Outcome)
		}
		for _, o := range outcomes {
			if o == push.Failed {
				failed++
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d register-again pushes not taken by APNs or FCM", failed)
	}
	return nil
}

// askToReregister is a Then that queues the "register again" pushes in
// the transaction that ends the subscription: the subscription does not
// fail without its devices being told.
func (s *Service) askToReregister(args reregisterArgs) store.Then {
	return func(ctx context.Context, tx pgx.Tx) error {
		_, err := s.jobs.InsertTx(ctx, tx, args, nil)
		return err
	}
}

// The jobs of which one waits at a time (periodic, or woken): a failed
// one is not retried, the next one comes.
type (
	healthArgs  struct{ singleton }
	keyPoolArgs struct{ singleton }
	cleanUpArgs struct{ singleton }
)

type singleton struct{}

func (singleton) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 1, UniqueOpts: river.UniqueOpts{ByState: waiting}}
}

func (healthArgs) Kind() string  { return "ensgate_health" }
func (keyPoolArgs) Kind() string { return "ensgate_key_pool" }
func (cleanUpArgs) Kind() string { return "ensgate_clean_up" }

// failSilentSubscriptions fails subscriptions Exchange (or Graph) has
// stopped calling back for (twice their status frequency) or that expired,
// and, in the same transaction, queues the "register again" pushes of
// their devices.
func (s *Service) failSilentSubscriptions(ctx context.Context, _ *river.Job[healthArgs]) error {
	for {
		subs, err := s.store.FailSilentSubscriptions(ctx, 100, func(ctx context.Context, tx pgx.Tx, subs []store.Subscription) error {
			params := make([]river.InsertManyParams, len(subs))
			for i, sub := range subs {
				params[i] = river.InsertManyParams{Args: reregisterArgs{Tenant: sub.TenantID, Mailbox: sub.MailboxHash}}
			}
			_, err := s.jobs.InsertManyTx(ctx, tx, params)
			return err
		})
		if err != nil {
			return err
		}
		for _, sub := range subs {
			s.log.Info("subscription silent; asking its devices to register again", slog.String("subscription", sub.PublicID))
		}
		if len(subs) < 100 {
			return nil
		}
	}
}

// topUpKeyPool re-seals key pairs under rotated-out master keys, counts
// the free pairs and queues one ensgate_key_pairs job per batch missing,
// so that every node generates some.
func (s *Service) topUpKeyPool(ctx context.Context, _ *river.Job[keyPoolArgs]) error {
	s.resealKeyPairs(ctx)
	free, err := s.store.FreeKeyPairs(ctx, s.keys.IDs())
	if err != nil {
		return err
	}
	keyPoolFree.Set(float64(free))
	var params []river.InsertManyParams
	for slot := range (s.cfg.KeyPoolSize - free + keyPairBatch - 1) / keyPairBatch {
		params = append(params, river.InsertManyParams{Args: keyPairsArgs{Slot: slot}})
	}
	if len(params) > 0 {
		_, err = s.jobs.InsertMany(ctx, params)
	}
	return err
}

// wakeKeyPool asks for the pool to be counted and topped up now (a pair
// was handed out, or none was left). One such job waits at a time.
func (s *Service) wakeKeyPool(ctx context.Context) {
	if _, err := s.jobs.Insert(ctx, keyPoolArgs{}, nil); err != nil && ctx.Err() == nil {
		s.log.Warn("queueing a key pool top-up", slog.Any("error", err))
	}
}

// keyPairsArgs generates up to a batch of key pairs. Slots keep at most
// one job per missing batch waiting, however often the pool is counted.
type keyPairsArgs struct {
	Slot int `json:"slot"`
}

func (keyPairsArgs) Kind() string { return "ensgate_key_pairs" }

func (keyPairsArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 3, UniqueOpts: river.UniqueOpts{ByArgs: true, ByState: waiting}}
}

type keyPairsWorker struct {
	river.WorkerDefaults[keyPairsArgs]
	s *Service
}

func (w *keyPairsWorker) Work(ctx context.Context, _ *river.Job[keyPairsArgs]) error {
	s := w.s
	usable := s.keys.IDs()
	free, err := s.store.FreeKeyPairs(ctx, usable)
	if err != nil {
		return err
	}
	var pairs []store.KeyPair
	for range min(keyPairBatch, s.cfg.KeyPoolSize-free) {
		kp, err := s.newKeyPair()
		if err != nil {
			return err
		}
		pairs = append(pairs, kp)
	}
	added, err := s.store.AddKeyPairs(ctx, s.cfg.KeyPoolSize, usable, pairs)
	if added > 0 {
		s.log.Debug("key pool filled", slog.Int("added", added))
	}
	return err
}

// cleanUp forgets push claims older than Exchange retries and key pairs
// handed out but never used.
func (s *Service) cleanUp(ctx context.Context, _ *river.Job[cleanUpArgs]) error {
	_, err := s.store.DeleteOldClaims(ctx, pushMemory)
	_, err2 := s.store.DeleteStaleKeyPairs(ctx, s.cfg.KeyPairTTL)
	return errors.Join(err, err2)
}
