# runpolicy — run `make help` for the targets.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

ROOT       := $(abspath .)
BIN        := $(ROOT)/bin
TOOLS_MOD  := test/tools
CONTROLLER_GEN := $(BIN)/tools/controller-gen
HELM       := $(BIN)/tools/helm
GUEST_DIR  ?= $(BIN)/guest
GO_TEST_FLAGS ?= -count=1 -timeout 45m
export GOTOOLCHAIN := local

##@ General
.PHONY: help
help: ## Show the targets.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Main jobs
.PHONY: demo
demo: build test-assets ## Local demo: test cluster up, operator running, VMs following their policies.
	EXTRA=kubectl test/cluster/build-assets.sh >/dev/null
	test/demo.sh

.PHONY: test
test: verify test-assets guest ## Run all tests (generated-file check, unit, envtest integration, real QEMU).
	KUBEBUILDER_ASSETS="$$(EXTRA=kube-controller-manager test/cluster/build-assets.sh)" \
		RUNPOLICY_GUEST_DIR=$(GUEST_DIR) RUNPOLICY_REQUIRE_GUEST=1 go test $(GO_TEST_FLAGS) ./...

##@ Development
.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate deepcopy code.
	$(CONTROLLER_GEN) object paths=./api/...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs (crds/), RBAC and the KubeVirt test CRDs.
	rm -rf crds && $(CONTROLLER_GEN) crd:generateEmbeddedObjectMeta=true,allowDangerousTypes=true paths=./api/... output:crd:dir=crds
	$(CONTROLLER_GEN) rbac:roleName=runpolicy-controller paths=./controllers/... output:rbac:dir=charts/runpolicy/rbac
	rm -rf test/crds/kubevirt && $(CONTROLLER_GEN) crd:generateEmbeddedObjectMeta=true,allowDangerousTypes=true \
		paths=kubevirt.io/api/core/v1 output:crd:dir=test/crds/kubevirt
	cd test/crds/kubevirt && rm -f *datavolumetemplatespecs.yaml *kubevirts.yaml *presets.yaml *replicasets.yaml

.PHONY: verify
verify: ## Fail when generated files (deepcopy, CRDs, RBAC) are stale.
	test/verify-generated.sh

.PHONY: fmt
fmt: ## go fmt.
	go fmt ./...

.PHONY: vet
vet: ## go vet.
	go vet ./...

.PHONY: build
build: ## Build the binaries into bin/.
	CGO_ENABLED=0 go build -o $(BIN)/runpolicy-controller ./cmd/controller
	CGO_ENABLED=0 go build -o $(BIN)/hook-sidecar ./cmd/hook-sidecar

.PHONY: run
run: ## Run the operator against the current kubeconfig.
	go run ./cmd/controller --leader-elect=false

.PHONY: test-assets
test-assets: ## Build kube-apiserver, etcd and kube-controller-manager from Go modules into bin/k8s (cached).
	EXTRA=kube-controller-manager test/cluster/build-assets.sh

.PHONY: guest
guest: ## Install QEMU/libvirt if missing, fetch and build the tiny guest into bin/guest (cached).
	test/guest/setup.sh $(GUEST_DIR)

$(CONTROLLER_GEN): $(TOOLS_MOD)/go.mod
	go -C $(TOOLS_MOD) build -o $@ sigs.k8s.io/controller-tools/cmd/controller-gen

$(HELM): $(TOOLS_MOD)/go.mod
	CGO_ENABLED=0 go -C $(TOOLS_MOD) build -o $@ helm.sh/helm/v3/cmd/helm
