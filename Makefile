# Thin wrapper over CMake. The two commands a new user needs:
#   make demo    build, then run the quickstart example on ./batpak-data
#   make test    build, then run every test through CTest
# Both install missing Debian packages first when run as root
# (scripts/deps.sh), and otherwise print the command to run.

BUILD      ?= build
BUILD_TYPE ?= RelWithDebInfo
DATA_DIR   ?= ./batpak-data
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=

.PHONY: all deps configure build demo test bench install asan tsan portable-park fuzz clean

all: build

deps:
	@scripts/deps.sh

$(BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS)

configure: $(BUILD)/CMakeCache.txt

build: deps configure
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	$(BUILD)/examples/quickstart $(DATA_DIR)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# make bench [ARGS="--quick --json"]
bench: build
	$(BUILD)/bench/batpak-bench $(ARGS)

install: build
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX),)

# The suite under AddressSanitizer + UndefinedBehaviorSanitizer (clang).
asan: deps
	CC=clang cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DBATPAK_SANITIZE=address,undefined -DBATPAK_BUILD_BENCH=OFF
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j $(JOBS)

# The threaded tests under ThreadSanitizer (clang).
tsan: deps
	CC=clang cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DBATPAK_SANITIZE=thread -DBATPAK_BUILD_BENCH=OFF
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -j $(JOBS) -L threads

# The threaded tests with appenders parked by the portable fallback (park.c),
# which builds elsewhere than on Linux.
portable-park: deps
	cmake -S . -B build-portable -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBATPAK_PORTABLE_PARK=ON -DBATPAK_BUILD_BENCH=OFF -DBATPAK_BUILD_EXAMPLES=OFF
	cmake --build build-portable -j $(JOBS)
	cd build-portable && ctest --output-on-failure -j $(JOBS) -L threads

# The library without its optional cache backends (no LMDB, no SQLite): the
# suite (cache tests skip) and a check that libbatpak.so links neither.
lean: deps
	cmake -S . -B build-lean -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBATPAK_WITH_LMDB=OFF -DBATPAK_WITH_SQLITE=OFF -DBATPAK_BUILD_BENCH=OFF
	cmake --build build-lean -j $(JOBS)
	cd build-lean && ctest --output-on-failure -j $(JOBS)
	@if ldd build-lean/libbatpak.so | grep -E 'lmdb|sqlite'; then echo "lean: libbatpak.so links a cache backend" >&2; exit 1; fi
	@echo "lean: libbatpak.so links neither LMDB nor SQLite"

# libFuzzer targets, each run for FUZZ_SECONDS on its checked-in corpus.
FUZZ_SECONDS ?= 10
fuzz:
	@scripts/deps.sh --fuzz
	CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DBATPAK_BUILD_FUZZ=ON -DBATPAK_BUILD_TESTS=OFF -DBATPAK_BUILD_EXAMPLES=OFF -DBATPAK_BUILD_BENCH=OFF
	cmake --build build-fuzz -j $(JOBS)
	scripts/run-fuzzers.sh build-fuzz/fuzz $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) build-asan build-tsan build-portable build-fuzz build-lean
