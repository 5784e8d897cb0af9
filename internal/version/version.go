// Package version holds runpolicy's version. The image builder (images/build, `make images`) stamps it at link
// time with -ldflags "-X github.com/runpolicy/runpolicy/internal/version.Version=<chart appVersion>"; a plain
// `go build` leaves "devel".
package version

// Version is runpolicy's version, the images' tag.
var Version = "devel"
