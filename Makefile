# The two commands a new user needs: `make run` and `make test`. Everything else is a building block.
# Works on a fresh Debian 12 machine: missing apt packages and the .venv are installed on demand.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
JOBS   ?= 2
APT_PACKAGES := build-essential cmake ninja-build libssl-dev libnghttp2-dev zlib1g-dev libgtest-dev \
                clang libclang-rt-14-dev wrk nginx-light libnginx-mod-stream python3-venv python3-dev chromium
CPP_BUILD := build/cpp
SAN_BUILD := build/sanitize

.PHONY: run test deps venv build cpp-test py-test fuzz bench sanitize-test test-pythons conformance clean

run: build
	$(PY) -m fulmen --host 127.0.0.1 --port 8000 --app-dir examples hello:app

deps:
	@bash .ci/apt-deps $(APT_PACKAGES)

$(VENV)/.stamp: requirements-dev.txt | deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.stamp

# Incremental: scikit-build-core keeps its CMake tree under build/{wheel_tag}.
build: venv
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PY) -m pip install -q --no-build-isolation --no-deps .

cpp-test: deps
	cmake -S . -B $(CPP_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFULMEN_PYTHON=OFF -DFULMEN_TESTS=ON
	cmake --build $(CPP_BUILD) -j $(JOBS)
	ctest --test-dir $(CPP_BUILD) --output-on-failure -j $(JOBS)

py-test: build
	$(PY) -m pytest -q -p no:cacheprovider

test: cpp-test py-test

# ASan + UBSan over the engine tests and the Python suite (the extension is preloaded with libasan).
sanitize-test: venv
	bash .ci/sanitize

# The Python suite again on the oldest and newest supported Pythons, where installed.
test-pythons: deps
	bash .ci/pythons

fuzz: deps
	CC=clang CXX=clang++ cmake -S . -B build/fuzz -G Ninja -DFULMEN_PYTHON=OFF -DFULMEN_FUZZ=ON
	cmake --build build/fuzz -j $(JOBS)
	@# Each target for FUZZ_SECONDS; one that crashes does not stop the others, make fails at the end.
	@failed=; for t in http1 ws ws_deflate proxy; do \
	    mkdir -p fuzz/corpus/$$t; \
	    dict=; if [ -f fuzz/$$t.dict ]; then dict=-dict=fuzz/$$t.dict; fi; \
	    echo "build/fuzz/fuzz/fuzz_$$t -max_total_time=$${FUZZ_SECONDS:-60} -artifact_prefix=fuzz/regressions/$$t/ $$dict fuzz/corpus/$$t fuzz/seeds/$$t"; \
	    build/fuzz/fuzz/fuzz_$$t -max_total_time=$${FUZZ_SECONDS:-60} -artifact_prefix=fuzz/regressions/$$t/ \
	        $$dict fuzz/corpus/$$t fuzz/seeds/$$t || failed="$$failed fuzz_$$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crash in$$failed (inputs in fuzz/regressions/*/crash-*)"; exit 1; fi

bench: build
	$(PY) bench/run.py $(BENCH_ARGS)

# Every Autobahn|Testsuite fuzzing group (kosoku) against the WebSocket echo app; `make test` runs
# 1-7 and 10 only. The HTML/JSON report lands in build/conformance/autobahn/.
conformance: build
	$(PY) tests/conformance/autobahn.py --cases all --report-dir build/conformance/autobahn

clean:
	rm -rf build
