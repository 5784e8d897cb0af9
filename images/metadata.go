package images

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// DefaultRepository is the registry prefix of the chart's default images (values.yaml image.repository and
// hookSidecar.image.repository).
const DefaultRepository = "ghcr.io/runpolicy"

// DefaultSource is the source repository recorded in org.opencontainers.image.source.
const DefaultSource = "https://github.com/runpolicy/runpolicy"

// ChartPath is the chart's directory, relative to the repository root; its appVersion is the images' version.
const ChartPath = "charts/runpolicy"

// OCI annotation keys (github.com/opencontainers/image-spec annotations.md), set on the image manifest and, for
// tools that read only the config (docker inspect), as labels.
const (
	AnnotationCreated     = "org.opencontainers.image.created"
	AnnotationSource      = "org.opencontainers.image.source"
	AnnotationRevision    = "org.opencontainers.image.revision"
	AnnotationVersion     = "org.opencontainers.image.version"
	AnnotationTitle       = "org.opencontainers.image.title"
	AnnotationDescription = "org.opencontainers.image.description"
	// AnnotationRefName is the image's tag in the archive's index (OCI image layout).
	AnnotationRefName = "org.opencontainers.image.ref.name"
	// AnnotationImageName is the image's full reference in the archive's index, which containerd's `ctr images
	// import` (and with it `kind load image-archive`) and `docker load` name the imported image after.
	AnnotationImageName = "io.containerd.image.name"
)

// Metadata is what an image records about its build besides its content; all of it is an input of the digest.
type Metadata struct {
	Repository string    // registry prefix, e.g. ghcr.io/runpolicy
	Version    string    // the image tag and org.opencontainers.image.version, e.g. 0.1.0
	Revision   string    // the source's commit, org.opencontainers.image.revision
	Source     string    // org.opencontainers.image.source
	Created    time.Time // org.opencontainers.image.created, the config's created and every file's mtime
}

func (m Metadata) validate() error {
	switch {
	case m.Repository == "":
		return errors.New("images: no repository")
	case m.Version == "":
		return errors.New("images: no version")
	case strings.ContainsAny(m.Version, " '\"\t\n"):
		return fmt.Errorf("images: bad version %q", m.Version)
	}
	return nil
}

// MetadataFromRepo returns the default metadata of the repository at root: the chart's appVersion, the commit at
// HEAD and, for the creation time, SOURCE_DATE_EPOCH if set, else HEAD's commit time (never the current time, so
// that a rebuild gives the same digest). Without git (a source tarball) the revision is empty and the time is
// SOURCE_DATE_EPOCH or the Unix epoch.
func MetadataFromRepo(root string) (Metadata, error) {
	version, err := ChartAppVersion(root)
	if err != nil {
		return Metadata{}, err
	}
	m := Metadata{Repository: DefaultRepository, Version: version, Source: DefaultSource, Created: time.Unix(0, 0).UTC()}
	if rev, err := git(root, "rev-parse", "HEAD"); err == nil {
		m.Revision = rev
		if ct, err := git(root, "log", "-1", "--format=%ct", "HEAD"); err == nil {
			if m.Created, err = parseEpoch(ct); err != nil {
				return Metadata{}, fmt.Errorf("commit time: %w", err)
			}
		}
	}
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		if m.Created, err = parseEpoch(epoch); err != nil {
			return Metadata{}, fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
	}
	return m, nil
}

func parseEpoch(s string) (time.Time, error) {
	sec, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || sec < 0 {
		return time.Time{}, fmt.Errorf("not a Unix time in seconds: %q", s)
	}
	return time.Unix(sec, 0).UTC(), nil
}

func git(root string, args ...string) (string, error) {
	cmd := exec.Command("git", append([]string{"-C", root}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// ChartAppVersion returns the chart's appVersion, the images' version (the chart's image tags default to it).
func ChartAppVersion(root string) (string, error) {
	data, err := os.ReadFile(filepath.Join(root, ChartPath, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(data, &chart); err != nil {
		return "", fmt.Errorf("%s/Chart.yaml: %w", ChartPath, err)
	}
	if chart.AppVersion == "" {
		return "", fmt.Errorf("%s/Chart.yaml has no appVersion", ChartPath)
	}
	return chart.AppVersion, nil
}

// RepoRoot returns the root of the runpolicy module containing the current directory (where `go env GOMOD` is),
// so that tests in any package can build the images.
func RepoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}
