# stallwatch: `make run` builds and starts the agent; `make test` installs what the tests need
# and runs every test; `make bench` measures it against its peers.
SHELL := /bin/bash
CARGO ?= cargo
LISTEN ?= 127.0.0.1:10139
CONFIG ?= config/stallwatch.example.toml

.PHONY: all build run test test-deps soak bench bench-deps lint clean bpf

all: build

build:
	$(CARGO) build --release --locked -p stallwatch

run: build
	./target/release/stallwatch --config.file=$(CONFIG) --web.listen-address=$(LISTEN)

# Debian packages the tests use: promtool (prometheus) parses our exposition; e2fsprogs and
# util-linux (mkfs, losetup) for the real-kernel tests; docker.io, busybox-static and iptables
# for the real-container test (a private dockerd the test starts and stops); fuse3,
# libfuse3-dev, pkg-config and gcc for the hung-disk rig (a one-file FUSE filesystem the tests
# compile and stop with SIGSTOP: crates/agent/tests/e2e/hung.rs); victoria-metrics (the store,
# vmalert and vmagent) for the fleet test's remote_write path; chromium renders the node page
# headless (crates/agent/tests/e2e/page/); clang, llvm and libbpf-dev rebuild the committed eBPF
# object to prove it comes from its source (crates/collector/src/bpf/build_test.rs; `make bpf`
# regenerates it). Installed only when missing.
TEST_DEBS := prometheus prometheus-alertmanager node-typescript curl e2fsprogs util-linux docker.io busybox-static iptables systemd binutils fuse3 libfuse3-dev pkg-config gcc victoria-metrics chromium clang llvm libbpf-dev
# PyPI packages the tests use: moto's server plays EC2 and CloudWatch on loopback; cbor2 for
# the harness's CBOR<->query proxy (aws-sdk-cloudwatch speaks RPCv2 CBOR, moto does not).
TEST_PIP := 'moto[server]>=5.1,<6' 'cbor2>=5' 'PyYAML>=6' 'kubernetes-validate>=1.28'
test-deps:
	@bash tests/scripts/ensure-debs.sh $(TEST_DEBS)
	@bash tests/scripts/ensure-pip.sh $(TEST_PIP)

# The eBPF episode source's object (crates/collector/bpf/dstate.bpf.o) is built ahead from
# dstate.bpf.c and committed, so building the agent needs no C toolchain; this regenerates it
# (reproducibly: see crates/collector/bpf/build.sh) with Debian's clang.
BPF_DEBS := clang llvm libbpf-dev
bpf:
	@bash tests/scripts/ensure-debs.sh $(BPF_DEBS)
	bash crates/collector/bpf/build.sh

test: test-deps
	$(CARGO) build --locked --workspace --all-targets
	$(CARGO) nextest run --locked --workspace --no-fail-fast

# The soak (not part of `test`): an hour of process and container churn with the agent's RSS
# sampled and a 10-minute hang of a probed disk, printed as a table
# (crates/agent/tests/e2e/soak.rs). SOAK_SCALE scales every duration: 0.05 is 3 minutes.
SOAK_SCALE ?= 1
soak: test-deps
	SOAK_SCALE=$(SOAK_SCALE) $(CARGO) test --locked -p stallwatch --test e2e -- --ignored --exact soak::soak --nocapture

# rt-tests: hackbench, the switch-heavy load the eBPF source's overhead is measured on;
# docker.io and busybox-static: bench_node.py's 200 real containers.
BENCH_DEBS := prometheus-node-exporter prometheus-process-exporter rt-tests docker.io busybox-static
bench-deps:
	@bash tests/scripts/ensure-debs.sh $(BENCH_DEBS)

bench: bench-deps
	$(CARGO) build --release --locked -p stallwatch
	$(CARGO) bench --locked -p stallwatch-collector --bench parsers
	bash tests/scripts/bench.sh
	python3 tests/scripts/bench_threads.py
	python3 tests/scripts/bench_cloud.py
	python3 tests/scripts/bench_bpf.py
	python3 tests/scripts/bench_node.py

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) fmt --all --check

clean:
	$(CARGO) clean
