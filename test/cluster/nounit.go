//go:build !unit

package cluster

// unitBuild: see unit.go.
const unitBuild = false
