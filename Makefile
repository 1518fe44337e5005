# grain: `make demo` runs the self-contained demo, `make test` the tests.
GO ?= go
SHELL := /bin/bash
GOARCH ?= $(shell $(GO) env GOARCH)
BIN := bin/grain

# Tests run inside stock distribution kernels under QEMU by `make test`
# (scripts/vm-test.sh). The guests run these packages whole: each test says
# itself what it needs from a kernel (internal/vmtest): vmtest.HostOnly when
# one kernel shows what it checks (it skips in the guests), vmtest.Missing
# for a kernel feature. A new test runs in every guest unless it opts out.
VM_PACKAGES := ./bpf ./engine/... ./examples ./cmd/grain ./internal/vmtest
# A kernel older than grain supports (Debian 11's 5.10): grain must refuse
# it with an error that names what it lacks. Only the tests of that refusal
# run there, and they are named so: TestOldKernel...
VM_OLD_TESTS := ./engine:^TestOldKernel ./cmd/grain:^TestOldKernel
VM_OLD_KERNEL := --kernel linux-image-5.10.0-32-amd64 --suite bullseye --modules '' --features older-than-5.15

# grain's minimum, Linux 5.15, as Ubuntu 22.04 ships it (no Debian suite has
# a 5.15 any more): the amd64 tests, where fentry is missing (its programs
# cannot read attach cookies before 5.19) and kprobes serve instead. It runs
# when archive.ubuntu.com answers; CI's output says when it did not.
UBUNTU_POOL := http://archive.ubuntu.com/ubuntu/pool/main/l/linux
VM_515_KERNEL := --deb $(UBUNTU_POOL)/linux-image-unsigned-5.15.0-204-generic_5.15.0-204.214_amd64.deb\#2fa65ba92f39485b97c53d68b4245931a2fb6abadadf250769b48f86f7eaa815 \
	--deb $(UBUNTU_POOL)/linux-modules-5.15.0-204-generic_5.15.0-204.214_amd64.deb\#e205a3933a1f6551dc04e3975b46df119fe12a0ba4b5ea37bdcd30862ad69a98 \
	--features kprobe --timeout 1500
# Between the two, Ubuntu 20.04's 5.13: every helper is there and the older
# verifier gives up on the XDP program; grain must still say why.
UBUNTU_POOL_513 := http://archive.ubuntu.com/ubuntu/pool/main/l/linux-hwe-5.13
VM_513_KERNEL := --deb $(UBUNTU_POOL_513)/linux-image-unsigned-5.13.0-52-generic_5.13.0-52.59~20.04.1_amd64.deb\#27182e23c7587d1f60edc68a5277f13459acc663bb8539f677c7979cb525d0fa \
	--deb $(UBUNTU_POOL_513)/linux-modules-5.13.0-52-generic_5.13.0-52.59~20.04.1_amd64.deb\#8b9c9e679883b97b3d583415796c79980ac623488b20722d55a13bb60bbd616b \
	--modules '' --features older-than-5.15

.PHONY: build image demo test test-unit test-privileged generate check-generated deps bench clean

# The version is the commit (GOFLAGS=-buildvcs=false, set on some machines,
# keeps Go from stamping it itself).
VERSION ?= $(shell git describe --always --dirty 2>/dev/null)

build:
	CGO_ENABLED=0 GOARCH=$(GOARCH) $(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/grain

# The container image (deploy/image): an OCI archive with an amd64 and an
# arm64 image of the static binary, both from this one commit, no base image.
IMAGE_NAME ?= localhost/grain:$(VERSION)
image:
	@for arch in amd64 arm64; do \
		CGO_ENABLED=0 GOARCH=$$arch $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/grain-linux-$$arch ./cmd/grain || exit 1; \
	done
	$(GO) run ./deploy/image -o bin/grain-image.tar -name $(IMAGE_NAME) -version $(VERSION) \
		-epoch $$(git log -1 --format=%ct 2>/dev/null || echo 0) amd64=bin/grain-linux-amd64 arm64=bin/grain-linux-arm64
	@ls -l bin/grain-image.tar

# The cluster tests' Kubernetes components (about 20 minutes on a cold
# machine) and OpenTelemetry Collector (about 5), built from the Go module
# proxy once and cached under /var/cache (deploy/kubernetes).
.PHONY: cluster-deps
cluster-deps:
	@start=$$SECONDS; ./scripts/k8s-binaries.sh >/dev/null && ./scripts/otelcol-binary.sh >/dev/null; rc=$$?; echo "== cluster binaries took $$((SECONDS-start)) s"; exit $$rc

# deps installs what the demo and the tests use when it is missing (root).
deps:
	@GO=$(GO) ./scripts/deps.sh

demo: deps build
	./scripts/demo.sh

# Unit tests, then the privileged kernel and network tests (root).
# -v so that CI output shows each privileged test ran (or why it skipped).
test: deps build cluster-deps
	@start=$$SECONDS; $(GO) vet ./... && echo "== go vet took $$((SECONDS-start)) s"
	@start=$$SECONDS; $(GO) test -count=1 -v ./...; rc=$$?; echo "== host tests took $$((SECONDS-start)) s"; exit $$rc
	@start=$$SECONDS; $(MAKE) --no-print-directory -j2 -O test-guests; rc=$$?; echo "== guests took $$((SECONDS-start)) s"; exit $$rc
	$(MAKE) --no-print-directory check-generated

# The guests, two at a time: each QEMU emulates on one host thread, and a
# machine here has two cores. -O keeps each guest's output together. The
# longest first, so that the short ones fill the gaps.
GUESTS := guest-amd64 guest-amd64-5.15 guest-arm64 guest-old guest-5.13
.PHONY: test-guests $(GUESTS)
test-guests: $(GUESTS)

guest-amd64:
	@start=$$SECONDS; GO=$(GO) ./scripts/vm-test.sh --arch amd64 --timeout 1500 $(VM_PACKAGES); rc=$$?; echo "== $@ took $$((SECONDS-start)) s"; exit $$rc
guest-arm64:
	@start=$$SECONDS; GO=$(GO) ./scripts/vm-test.sh --arch arm64 --timeout 1500 $(VM_PACKAGES); rc=$$?; echo "== $@ took $$((SECONDS-start)) s"; exit $$rc
guest-old:
	@start=$$SECONDS; GO=$(GO) ./scripts/vm-test.sh --arch amd64 $(VM_OLD_KERNEL) $(VM_OLD_TESTS); rc=$$?; echo "== $@ took $$((SECONDS-start)) s"; exit $$rc
guest-amd64-5.15:
	@if curl -fsS -m 20 -o /dev/null http://archive.ubuntu.com/ubuntu/dists/jammy/Release; then \
		start=$$SECONDS; GO=$(GO) ./scripts/vm-test.sh --arch amd64 $(VM_515_KERNEL) $(VM_PACKAGES); rc=$$?; echo "== $@ took $$((SECONDS-start)) s"; exit $$rc; \
	else echo "== amd64 guest 5.15 (grain's minimum) NOT RUN: archive.ubuntu.com does not answer from here"; fi
guest-5.13:
	@if curl -fsS -m 20 -o /dev/null http://archive.ubuntu.com/ubuntu/dists/jammy/Release; then \
		start=$$SECONDS; GO=$(GO) ./scripts/vm-test.sh --arch amd64 $(VM_513_KERNEL) $(VM_OLD_TESTS); rc=$$?; echo "== $@ took $$((SECONDS-start)) s"; exit $$rc; \
	else echo "== amd64 guest 5.13 (too old) NOT RUN: archive.ubuntu.com does not answer from here"; fi

# Rebuild the committed BPF objects with Debian's clang-19.
generate:
	$(GO) generate ./bpf/... ./bench/...

# The committed objects must match their sources when clang is present.
check-generated:
	@if command -v clang-19 >/dev/null; then \
		$(GO) generate ./bpf/... ./bench/... && git diff --exit-code --stat -- '*.o' '*_bpfel.go' 'bpf/*limits.go' \
		&& echo "committed BPF objects match their sources"; \
	else echo "clang-19 missing: skipping the generated-object check"; fi

# Every harness once (root: BPF, network namespaces), about 6 minutes in
# all. Each benchmark reads -benchtime in its own unit (rounds of tables,
# hooked calls, events, runs), so each gets its own count. The reload
# benchmarks make fewer edits and reloads than BENCHMARKS.md's figures
# (200 and 1000, several minutes each); set BENCH_EDITS and BENCH_RELOADS
# to measure those. The reload and export benchmarks build grain.
BENCH_EDITS ?= 100
BENCH_RELOADS ?= 300
bench: build
	$(GO) test -run '^$$' -bench 'PerPacket|PrefixIndex' -benchtime 1x ./bench/xdp/
	N=500000 RUNS=7 CPU=1 CONFIGS="none dropall iptables grain grain-every" bench/veth/run.sh
	N=300000 RUNS=5 CPU=1 INSTALL=1 bench/veth/cidr.sh
	GRAIN_BENCH_EDITS=$(BENCH_EDITS) GRAIN_BENCH_RELOADS=$(BENCH_RELOADS) $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./bench/reload/
	$(GO) test -run '^$$' -bench . -benchtime 1x ./bench/export/
	$(GO) test -run '^$$' -bench KernelToCollector -rates 500000 -protocol grpc -collector "$$(./scripts/otelcol-binary.sh)" ./bench/export/
	$(GO) test -run '^$$' -bench KernelToCollector -rates 500000 -protocol http/protobuf -collector "$$(./scripts/otelcol-binary.sh)" ./bench/export/
	$(GO) test -run '^$$' -bench Overhead -benchtime 300000x ./bench/hook/
	$(GO) test -run '^$$' -bench 'Throughput|Decode' -benchtime 2000000x ./bench/hook/
	$(GO) test -run '^$$' -bench BesideBpftraceSyscalls -benchtime 1000000x ./bench/hook/
	$(GO) test -run '^$$' -bench BesideBpftraceExec -benchtime 2000x ./bench/hook/

clean:
	rm -rf bin
