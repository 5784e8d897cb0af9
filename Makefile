# runpolicy — run `make help` for the targets.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

ROOT       := $(abspath .)
BIN        := $(ROOT)/bin
TOOLS_MOD  := test/tools
CONTROLLER_GEN := $(BIN)/tools/controller-gen
HELM       := $(BIN)/tools/helm
PROM_TOOLS_MOD := test/tools/prom
PROMTOOL   := $(BIN)/tools/promtool
LINT_TOOLS_MOD := test/tools/lint
GOLANGCI_LINT  := $(BIN)/tools/golangci-lint
GUEST_DIR  ?= $(BIN)/guest
# The kube binaries the tests run beside kube-apiserver and etcd: the garbage collector and the real node (test/cluster).
KUBE_EXTRA := kube-controller-manager kubelet kube-proxy kube-scheduler
GO_TEST_FLAGS ?= -count=1 -timeout 45m
UNIT_TEST_FLAGS ?=
BENCH_FLAGS ?=
CHAOS_SEED ?= 1
CHAOS_EVENTS ?= 1000
CHAOS_MAX_STARTS ?= 0
export GOTOOLCHAIN := local

##@ General
.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Main jobs
.PHONY: demo
demo: test-assets guest images $(HELM) ## Local demo on a real node: test cluster up with KubeVirt's virt-handler, helm install of the chart (the operator as pods), VMs in real QEMU guests following their policies (needs root).
	EXTRA="kubectl $(KUBE_EXTRA)" test/cluster/build-assets.sh >/dev/null
	HELM=$(HELM) GUEST_DIR=$(GUEST_DIR) test/demo.sh

.PHONY: test
test: verify lint test-unit test-assets guest $(HELM) $(PROMTOOL) images ## Run everything: generated-file check, lint, unit tests (-race), then every test (unit, envtest integration, real QEMU, KubeVirt, chart, images).
	HELM=$(HELM) PROMTOOL=$(PROMTOOL) KUBEBUILDER_ASSETS="$$(EXTRA="$(KUBE_EXTRA)" test/cluster/build-assets.sh)" \
		RUNPOLICY_GUEST_DIR=$(GUEST_DIR) RUNPOLICY_REQUIRE_GUEST=1 go test $(GO_TEST_FLAGS) ./...

.PHONY: bench
bench: build test-assets $(HELM) ## Scale benchmark (real operator binary under the chart's RBAC and args, real virt-api/virt-controller, KubeVirt Always as baseline); BENCH_FLAGS="-n 100,1000 -resets 60 -reset-rate 1"; BENCH_FLAGS="-memory 400": operator RSS vs the chart's limit with users' large annotations and templates.
	HELM=$(HELM) go run ./test/cmd/bench $(BENCH_FLAGS)

.PHONY: chaos
chaos: test-assets $(HELM) ## Chaos test: random events, operator kills, conflict storms over 50 VMs; CHAOS_SEED, CHAOS_EVENTS, CHAOS_MAX_STARTS.
	HELM=$(HELM) CHAOS_SEED=$(CHAOS_SEED) CHAOS_EVENTS=$(CHAOS_EVENTS) CHAOS_MAX_STARTS=$(CHAOS_MAX_STARTS) go test -tags chaos ./test/chaos/ -count=1 -v -timeout 30m

##@ Development
.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code.
	$(CONTROLLER_GEN) object paths=./api/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs (crds/), RBAC and the chart's CRD and RBAC templates.
	rm -rf crds && $(CONTROLLER_GEN) crd:generateEmbeddedObjectMeta=true,allowDangerousTypes=true paths=./api/... output:crd:dir=crds
	$(CONTROLLER_GEN) rbac:roleName=runpolicy-controller paths=./controllers/... output:rbac:dir=charts/runpolicy/rbac
	charts/runpolicy/hack/sync.sh

.PHONY: verify
verify: ## Fail when generated files (deepcopy, CRDs, RBAC, chart) are stale or Go files are not gofmt'ed.
	test/verify-generated.sh
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then \
		echo "verify: not gofmt'ed (run make fmt):"; echo "$$unformatted"; exit 1; fi

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Lint the root module: golangci-lint (.golangci.yml), with kube-api-linter on api/.
	$(GOLANGCI_LINT) run ./...

.PHONY: test-unit
test-unit: $(HELM) $(PROMTOOL) ## Tests that need no cluster, KubeVirt or QEMU, with -race (test/unit.sh); UNIT_TEST_FLAGS="-run TestDecide".
	HELM=$(HELM) PROMTOOL=$(PROMTOOL) test/unit.sh $(UNIT_TEST_FLAGS)

.PHONY: fmt
fmt: ## go fmt.
	go fmt ./...

.PHONY: vet
vet: ## go vet.
	go vet ./...

.PHONY: helm
helm: $(HELM) ## Build the pinned helm (test/tools/go.mod) into bin/tools/helm.

.PHONY: promtool
promtool: $(PROMTOOL) ## Build the pinned promtool (test/tools/prom/go.mod) into bin/tools/promtool (tests the chart's alerts).

.PHONY: build
build: ## Build the binaries into bin/ (runpolicy-controller, hook-sidecar, the kubectl plugin kubectl-runpolicy).
	CGO_ENABLED=0 go build -o $(BIN)/runpolicy-controller ./cmd/controller
	CGO_ENABLED=0 go build -o $(BIN)/hook-sidecar ./cmd/hook-sidecar
	CGO_ENABLED=0 go build -o $(BIN)/kubectl-runpolicy ./cmd/kubectl-runpolicy

# Neither a container engine nor a base image: images/build assembles each image around its static binary with
# go-containerregistry. Same sources, version and Go toolchain give the same digests (SOURCE_DATE_EPOCH or the
# commit time dates them).
.PHONY: images
images: ## Build the runpolicy-controller and runpolicy-hook-sidecar images as OCI archives into bin/images/ (no container engine).
	go run ./images/build -out $(BIN)/images

.PHONY: run
run: ## Run the operator against the current kubeconfig.
	go run ./cmd/controller --leader-elect=false

.PHONY: test-assets
test-assets: ## Build kube-apiserver, etcd, kube-controller-manager, the node's kubelet, kube-proxy and kube-scheduler (bin/k8s) and KubeVirt's virt-api, virt-controller, virt-launcher (bin/kubevirt) from Go modules (cached).
	EXTRA="$(KUBE_EXTRA)" test/cluster/build-assets.sh
	test/kubevirt/build.sh
	COMPONENTS="virt-launcher virt-launcher-monitor launcherctl launcher-image" test/kubevirt/build.sh

.PHONY: guest
guest: ## Install QEMU/libvirt if missing, fetch and build the tiny guest into bin/guest (cached).
	test/guest/setup.sh $(GUEST_DIR)

$(CONTROLLER_GEN): $(TOOLS_MOD)/go.mod
	go -C $(TOOLS_MOD) build -o $@ sigs.k8s.io/controller-tools/cmd/controller-gen

# helm's own Makefile stamps the Kubernetes version it defaults to (helm template, lint); without it that is v1.20.
$(HELM): $(TOOLS_MOD)/go.mod
	minor=$$(go -C $(TOOLS_MOD) list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2); \
	CGO_ENABLED=0 go -C $(TOOLS_MOD) build -o $@ -ldflags "$(foreach p,chartutil lint/rules,\
		-X helm.sh/helm/v3/pkg/$(p).k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/$(p).k8sVersionMinor=$$minor)" \
		helm.sh/helm/v3/cmd/helm

# Prometheus' rule checker and unit tester, for the chart's PrometheusRule (test/chart). A module of its own: in
# test/tools it would move helm's and controller-gen's Kubernetes dependencies.
$(PROMTOOL): $(PROM_TOOLS_MOD)/go.mod
	v=$$(go -C $(PROM_TOOLS_MOD) list -m -f '{{.Version}}' github.com/prometheus/prometheus); \
	CGO_ENABLED=0 go -C $(PROM_TOOLS_MOD) build -o $@ -ldflags "-X github.com/prometheus/common/version.Version=$$v" \
		github.com/prometheus/prometheus/cmd/promtool

# golangci-lint with Kubernetes' API linter compiled in as a module plugin: kube-api-linter's own
# cmd/golangci-lint-kube-api-linter, built against the golangci-lint that test/tools/lint/go.mod pins. It is what
# `golangci-lint custom` builds, but from the module proxy: custom clones golangci-lint from GitHub. A module of its
# own: in test/tools it would move golang.org/x/tools and grpc under controller-gen and protoc-gen-go-grpc.
$(GOLANGCI_LINT): $(LINT_TOOLS_MOD)/go.mod
	go -C $(LINT_TOOLS_MOD) build -o $@ sigs.k8s.io/kube-api-linter/cmd/golangci-lint-kube-api-linter
