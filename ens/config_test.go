package ens

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestConfigValidateNamesEverySettingOutOfRange(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("zero settings (the defaults) refused: %v", err)
	}
	if err := (Config{StatusFrequency: 24 * time.Hour, KeyPoolSize: MaxKeyPoolSize}).Validate(); err != nil {
		t.Errorf("the largest settings refused: %v", err)
	}
	err := Config{
		KeyPoolSize: MaxKeyPoolSize + 1, StatusFrequency: 90 * time.Second, RateLimit: -1,
		DeviceRateLimit: -1, TenantRateLimit: -1, CallbackRateLimit: -1,
		KeyPairsPerTenant: -1, KeyPairsPerAddress: -1, EWSConcurrency: -1,
		KeyPairTTL: -time.Minute, EWSTimeout: -time.Second,
	}.Validate()
	if err == nil {
		t.Fatal("out-of-range settings accepted")
	}
	for _, want := range []string{
		"ens: key_pool_size must be 1 to 10000, or 0 for the default (got 10001)",
		"ens: status_frequency must be whole minutes from 1m to 24h (got 1m30s)",
		"ens: rate_limit must be a positive number", "ens: device_rate_limit", "ens: tenant_rate_limit", "ens: callback_rate_limit",
		"ens: key_pairs_per_tenant", "ens: key_pairs_per_address", "ens: ews_concurrency",
		"ens: key_pair_ttl must be positive (got -1m0s", "ens: ews_timeout",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
	if err := (Config{StatusFrequency: 25 * time.Hour}).Validate(); err == nil {
		t.Error("status_frequency above 24h accepted")
	}
	for _, v := range []float64{math.NaN(), math.Inf(1)} {
		if err := (Config{DeviceRateLimit: v}).Validate(); err == nil {
			t.Errorf("device_rate_limit %v accepted", v)
		}
	}
}
