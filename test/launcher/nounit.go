//go:build !unit

package launcher

// unitBuild: see unit.go.
const unitBuild = false
