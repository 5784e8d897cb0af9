// Sources that test/kubevirt/build.sh compiles inside its throwaway KubeVirt build module (bin/kubevirt/.work).
// This go.mod only keeps them out of runpolicy's module: runpolicy never imports kubevirt.io/kubevirt.
module runpolicy.local/kubevirtbuild/src

go 1.26.0
