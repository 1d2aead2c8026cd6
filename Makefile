# The few entry points a person types. Each fetches what it needs (scripts/fetch-tools.sh).
export ORT_DYLIB_PATH ?= $(CURDIR)/.tools/onnxruntime/libonnxruntime.so
export LONGMEM_TANSU ?= $(CURDIR)/.tools/bin/tansu
export LONGMEM_PROMTOOL ?= $(CURDIR)/.tools/bin/promtool

.PHONY: demo test lint check-training training-env tools models run bench

## demo: stream MovieLens-100k through the daemon on an embedded broker and print a summary
demo: tools
	cargo run --release -- demo $(ARGS)

## test: formatting, lints, unit tests and integration tests against a real broker (tansu)
test: tools lint check-training
	cargo test -- --test-threads=2
	# The CUDA build on a machine without a GPU: refuses to start, or falls back when allowed.
	cargo test --features cuda --lib model

## check-training: the training code (training/tests): forecast accuracy against the official M5
## figures, and one epoch of each recommender trained, exported and checked step vs full through
## onnxruntime; in the locked training environment. Also installs kubernetes-validate into
## .tools/checks for tests/operations.rs
check-training: training-env
	test -x .tools/checks/bin/kubernetes-validate || (python3 -m venv .tools/checks && .tools/checks/bin/pip install -q kubernetes-validate==1.37.0)
	LONGMEM_REQUIRE_TORCH=1 .tools/venv/bin/python -m unittest discover -s training/tests

## training-env: .tools/venv with exactly training/requirements.lock (hashes checked); reinstalled
## when the lock changes
training-env: .tools/venv/.installed
.tools/venv/.installed: training/requirements.lock
	test -x .tools/venv/bin/python || python3 -m venv .tools/venv
	.tools/venv/bin/pip install -q --require-hashes -r training/requirements.lock
	touch $@

lint:
	cargo fmt --check
	# The daemon's core builds without the tools: it cannot reach into them.
	cargo check --no-default-features --lib --bins
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features cuda -- -D warnings

## bench: throughput, latency, CPU, RSS and the ceilings on tansu (results/bench/: JSON, Markdown, PNG)
BENCH_OUT ?= results/bench
bench: tools
	cargo run --release -- bench --out $(BENCH_OUT) $(ARGS)
	test -x .tools/plot/bin/python || (python3 -m venv .tools/plot && .tools/plot/bin/pip install -q matplotlib==3.11.2)
	.tools/plot/bin/python scripts/plot_bench.py $(BENCH_OUT)/bench.json

## run: the daemon with config/default.toml (needs a Kafka at kafka.bootstrap_servers)
run: tools
	cargo run --release -- run --config config/default.toml

tools:
	@bash scripts/fetch-tools.sh >/dev/null

## models: retrain every recommender from ../shared/data on CPU (installs PyTorch into .tools/venv)
models: training-env
	bash training/reproduce.sh
