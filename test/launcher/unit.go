//go:build unit

package launcher

// unitBuild is true in `make test-unit` (-tags unit), which runs no virt-launcher, libvirt or QEMU: Require fails
// there, so that a test file that needs them but lacks the constraint //go:build !unit says so.
const unitBuild = true
