// Command build writes runpolicy's container images as OCI image layout tar archives (see package images), with
// no container engine and no base image:
//
//	go run ./images/build -out bin/images              # both images, as `make images` does
//	go run ./images/build -out bin/images runpolicy-hook-sidecar
//
// It prints each archive, its image reference and its manifest digest. The defaults come from the repository:
// the version from charts/runpolicy/Chart.yaml's appVersion, the revision from git HEAD, the creation time from
// SOURCE_DATE_EPOCH or HEAD's commit time; the flags override them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"time"

	"github.com/runpolicy/runpolicy/images"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	out := fs.String("out", "bin/images", "directory the archives (<image>.tar) are written to")
	root := fs.String("root", "", "repository root (default: the module containing the current directory)")
	repo := fs.String("repository", "", "registry prefix of the image references (default "+images.DefaultRepository+")")
	version := fs.String("version", "", "image tag and version (default: the chart's appVersion)")
	revision := fs.String("revision", "", "source revision (default: git HEAD)")
	source := fs.String("source", "", "source repository URL (default "+images.DefaultSource+")")
	created := fs.String("created", "", "creation time in Unix seconds (default: SOURCE_DATE_EPOCH, else HEAD's commit time)")
	fs.Usage = func() {
		_, _ = fmt.Fprintf(fs.Output(), "Usage: build [flags] [image ...]\nImages: %s, %s (default both).\n",
			images.Controller.Name, images.HookSidecar.Name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	specs := images.All()
	if fs.NArg() > 0 {
		specs = nil
		for _, name := range fs.Args() {
			spec, ok := images.Lookup(name)
			if !ok {
				fmt.Fprintf(os.Stderr, "build: unknown image %q\n", name)
				return 2
			}
			specs = append(specs, spec)
		}
	}
	if *root == "" {
		r, err := images.RepoRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, "build:", err)
			return 1
		}
		*root = r
	}
	meta, err := images.MetadataFromRepo(*root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "build:", err)
		return 1
	}
	override := func(field *string, value string) {
		if value != "" {
			*field = value
		}
	}
	override(&meta.Repository, *repo)
	override(&meta.Version, *version)
	override(&meta.Revision, *revision)
	override(&meta.Source, *source)
	if *created != "" {
		sec, err := strconv.ParseInt(*created, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "build: -created %q: not Unix seconds\n", *created)
			return 2
		}
		meta.Created = time.Unix(sec, 0).UTC()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	for _, spec := range specs {
		res, err := images.Build(ctx, *root, *out, spec, meta)
		if err != nil {
			fmt.Fprintln(os.Stderr, "build:", err)
			return 1
		}
		fmt.Printf("%s\t%s\t%s\n", res.Archive, res.Ref, res.Digest)
	}
	return 0
}
