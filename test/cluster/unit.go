//go:build unit

package cluster

// unitBuild is true in `make test-unit` (-tags unit), which runs no test cluster: Start refuses there, so that a
// test file that needs one but lacks the constraint //go:build !unit fails with a message saying so.
const unitBuild = true
