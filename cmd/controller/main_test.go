package main

import "testing"

func TestSoftMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		env   map[string]string
		limit int64
		ok    bool
	}{
		{"no limit given", nil, 0, false},
		{"container limit", map[string]string{memoryLimitEnv: "268435456"}, 241591905, true},
		{"GOMEMLIMIT wins", map[string]string{memoryLimitEnv: "268435456", "GOMEMLIMIT": "100MiB"}, 0, false},
		{"not a number", map[string]string{memoryLimitEnv: "256Mi"}, 0, false},
		{"zero", map[string]string{memoryLimitEnv: "0"}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limit, ok := softMemoryLimit(func(k string) string { return tc.env[k] })
			if limit != tc.limit || ok != tc.ok {
				t.Errorf("softMemoryLimit = %d, %v; want %d, %v", limit, ok, tc.limit, tc.ok)
			}
		})
	}
}
