// Package libnbd is runpolicy's stand-in for libguestfs.org/libnbd, used only to build KubeVirt's virt-launcher for
// the tests (test/kubevirt/build.sh replaces the real module with this directory).
//
// The real module cannot be fetched here: the Go module proxy answers 403 "Go module host not permitted" for
// libguestfs.org. KubeVirt uses it only in pkg/virt-launcher/virtwrap/storage/nbd_client.go, for NBD-based
// backups, which runpolicy's tests never run. This package has the same API surface as that file uses; every
// operation fails with ErrNotAvailable, so a backup attempted with this build fails loudly instead of doing
// something wrong.
package libnbd

import "errors"

// ErrNotAvailable is returned by every operation.
var ErrNotAvailable = errors.New("libnbd: NBD is not available in runpolicy's test build of virt-launcher " +
	"(libguestfs.org/libnbd is replaced by test/kubevirt/build/libnbd)")

// Meta contexts and extent flags, with the values of the NBD protocol.
const (
	CONTEXT_BASE_ALLOCATION   = "base:allocation"
	CONTEXT_QEMU_DIRTY_BITMAP = "qemu:dirty-bitmap:"

	STATE_HOLE  = uint32(0x01)
	STATE_ZERO  = uint32(0x02)
	STATE_DIRTY = uint32(0x01)
)

// LibnbdError is the error type of the real module's Close.
type LibnbdError struct {
	Op     string
	Errmsg string
	Errno  int
}

func (e *LibnbdError) Error() string { return e.Op + ": " + e.Errmsg }

// LibnbdExtent is one extent of a block status reply.
type LibnbdExtent struct {
	Length uint64
	Flags  uint64
}

// ExtentCallback64 receives the extents of BlockStatus64.
type ExtentCallback64 func(metacontext string, offset uint64, entries []LibnbdExtent, err *int) int

// BlockStatus64Optargs are BlockStatus64's optional arguments.
type BlockStatus64Optargs struct{}

// PreadOptargs are Pread's optional arguments.
type PreadOptargs struct{}

// Libnbd is a handle; Create never returns one.
type Libnbd struct{}

// Create fails: NBD is not available in this build.
func Create() (*Libnbd, error) { return nil, ErrNotAvailable }

// Close does nothing.
func (h *Libnbd) Close() *LibnbdError { return nil }

// AddMetaContext fails with ErrNotAvailable.
func (h *Libnbd) AddMetaContext(name string) error { return ErrNotAvailable }

// CanMetaContext fails with ErrNotAvailable.
func (h *Libnbd) CanMetaContext(metacontext string) (bool, error) { return false, ErrNotAvailable }

// GetSize fails with ErrNotAvailable.
func (h *Libnbd) GetSize() (uint64, error) { return 0, ErrNotAvailable }

// SetExportName fails with ErrNotAvailable.
func (h *Libnbd) SetExportName(exportName string) error { return ErrNotAvailable }

// ConnectUnix fails with ErrNotAvailable.
func (h *Libnbd) ConnectUnix(unixSocket string) error { return ErrNotAvailable }

// BlockStatus64 fails with ErrNotAvailable.
func (h *Libnbd) BlockStatus64(count, offset uint64, extent ExtentCallback64, optargs *BlockStatus64Optargs) error {
	return ErrNotAvailable
}

// Pread fails with ErrNotAvailable.
func (h *Libnbd) Pread(buf []byte, offset uint64, optargs *PreadOptargs) error {
	return ErrNotAvailable
}
