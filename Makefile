# wsguard - build, run and test.
#
#   make run     install missing Debian packages, build, make a development
#                certificate if none, start a demo echo backend and wsguard
#   make test    install, build, run every test (unit, fuzz regressions,
#                integration); ends with "N passed, N failed"
#   make asan    the whole suite against an ASan + UBSan build
#   make lint    clang-tidy, cppcheck and scan-build over src/, clean
#   make valgrind  an integration subset under Valgrind memcheck
#   make fuzz    build the libFuzzer targets and run each for FUZZ_TIME s
#   make bench   side-by-side benchmark (see docs/performance.md)

CC       ?= cc
BUILD    ?= build
SANITIZE ?=
FUZZ_TIME ?= 30
PYTHON   ?= /usr/bin/python3

WARN  = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
        -Wmissing-prototypes -Wformat=2 -Wundef -Wimplicit-fallthrough \
        -Wno-unused-parameter
HARDEN = -fstack-protector-strong -fPIE
CFLAGS ?= -O2 -g
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) $(HARDEN) $(CFLAGS) -MMD -MP
ifeq ($(SANITIZE),)
ALL_CFLAGS += -D_FORTIFY_SOURCE=2
else
ALL_CFLAGS += -fsanitize=$(SANITIZE) -fno-sanitize-recover=all \
              -fno-omit-frame-pointer -DWSGUARD_CHECKS
LDFLAGS += -fsanitize=$(SANITIZE)
endif
LDFLAGS += -pie
# libev ships no pkg-config file in Debian 12.
PKGS = openssl inih jansson libpcre2-8 hiredis zlib
LIBS = $(shell pkg-config --libs $(PKGS)) -lev -lpthread -lm

SRC     = $(wildcard src/*.c)
OBJ     = $(SRC:src/%.c=$(BUILD)/%.o)
LIBOBJ  = $(filter-out $(BUILD)/main.o,$(OBJ))
UNIT_SRC = $(wildcard tests/unit/test_*.c)
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC = $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN = $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)
REGR_BIN = $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/regress/%)

.PHONY: all run test unit unit-build itest asan fuzz fuzz-regress bench deps cert \
        clean check install uninstall container-test deploy-test lint valgrind

all: $(BUILD)/wsguard

$(BUILD)/wsguard: $(OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/%.o: src/%.c | $(BUILD)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD) $(BUILD)/tests $(BUILD)/fuzz $(BUILD)/regress:
	mkdir -p $@

# Unit tests: one cmocka program per tests/unit/test_<module>.c, linked
# against every module but main.c.
$(BUILD)/tests/%: tests/unit/%.c $(LIBOBJ) | $(BUILD)/tests
	$(CC) $(ALL_CFLAGS) -Isrc -o $@ $< $(LIBOBJ) $(LDFLAGS) $(LIBS) -lcmocka

# Fuzz targets (libFuzzer, clang-14) and their replay programs: the same
# target linked with tests/fuzz/replay.c and the normal compiler, which
# `make test` runs over tests/fuzz/corpus/<t>/ and tests/fuzz/regress/<t>/.
FUZZ_CC = clang-14
FUZZ_FLAGS = -std=c11 -D_GNU_SOURCE -g -O1 -Isrc -DWSGUARD_CHECKS \
             -fsanitize=fuzzer,address,undefined
$(BUILD)/fuzz/%: tests/fuzz/%.c $(SRC) | $(BUILD)/fuzz
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(filter-out src/main.c,$(SRC)) $(LIBS)

$(BUILD)/regress/%: tests/fuzz/%.c tests/fuzz/replay.c $(LIBOBJ) | $(BUILD)/regress
	$(CC) $(ALL_CFLAGS) -Isrc -o $@ $< tests/fuzz/replay.c $(LIBOBJ) $(LDFLAGS) $(LIBS)

deps:
	@scripts/install-deps.sh

cert:
	@scripts/dev-cert.sh conf/certs

check: all
	$(BUILD)/wsguard -t -c conf/wsguard.ini

run: deps all cert
	@scripts/run-demo.sh

# Build and run the unit tests alone: no root, no integration packages.
unit: unit-build
	@fail=0; for t in $(UNIT_BIN); do $$t >$(BUILD)/tests/last.log 2>&1 \
	    || { cat $(BUILD)/tests/last.log; fail=1; }; \
	    tail -n 1 $(BUILD)/tests/last.log | sed "s|^|$$(basename $$t): |"; \
	done; exit $$fail
unit-build: $(UNIT_BIN)
itest: all
fuzz-regress: $(REGR_BIN)

test: deps
	@$(MAKE) --no-print-directory all unit-build fuzz-regress
	@scripts/run-tests.sh $(BUILD)

# Static analysis: clang-tidy (.clang-tidy), cppcheck
# (tests/lint/cppcheck.supp) and scan-build; any finding fails.
lint: deps
	@scripts/lint.sh

# A short integration subset with wsguard under Valgrind's memcheck
# (about 6 minutes): no invalid access, no uninitialised use, no definite
# leak, or the run fails (tests/valgrind/wsguard-vg, exit status 99).
VG_TESTS = tests/integration/test_relay.py tests/integration/test_smuggling.py \
           tests/integration/test_session.py
valgrind: deps all
	@mkdir -p $(BUILD)/valgrind && rm -f $(BUILD)/valgrind/*.log
	@VG_LOG_DIR=$(abspath $(BUILD))/valgrind VG_WSGUARD=$(abspath $(BUILD))/wsguard \
	    WSGUARD_BIN=$(abspath tests/valgrind/wsguard-vg) \
	    $(PYTHON) -m pytest -q $(VG_TESTS); rc=$$?; \
	    bad=$$(grep -L 'ERROR SUMMARY: 0 errors' $(BUILD)/valgrind/*.log); \
	    if [ -n "$$bad" ]; then echo "valgrind: errors in $$bad"; exit 1; fi; \
	    echo "valgrind: $$(ls $(BUILD)/valgrind/*.log | wc -l) wsguard runs, 0 errors"; \
	    exit $$rc

asan: deps
	@$(MAKE) --no-print-directory BUILD=build-asan CC=clang-14 \
	    SANITIZE=address,undefined all unit-build fuzz-regress
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    scripts/run-tests.sh build-asan

fuzz: deps $(FUZZ_BIN)
	@for t in $(FUZZ_BIN); do n=$$(basename $$t); \
	    mkdir -p $(BUILD)/fuzz/corpus-$$n; \
	    d=tests/fuzz/$$n.dict; [ -f $$d ] && dict=-dict=$$d || dict=; \
	    echo "== $$n ($(FUZZ_TIME)s)"; \
	    $$t $$dict -max_total_time=$(FUZZ_TIME) -print_final_stats=1 \
	        $(BUILD)/fuzz/corpus-$$n tests/fuzz/corpus/$$n || exit 1; \
	done

bench: deps all
	@$(MAKE) --no-print-directory -C bench
	@bench/run.sh

# What cluster mode costs (bench/cluster.sh, docs/performance.md "Cluster
# mode"): upgrades/s without and with [cluster], revocation fan-out.
.PHONY: bench-cluster
bench-cluster: deps all
	@$(MAKE) --no-print-directory -C bench
	@bench/cluster.sh

bench-deflate: deps all
	@$(MAKE) --no-print-directory -C bench
	@bench/deflate.sh

clean:
	rm -rf build build-asan

# Installation, GNU style: make install [PREFIX=/usr/local] [DESTDIR=/tmp/x]
# [bindir= sysconfdir= mandir= unitdir= sysusersdir=]. Installs the binary,
# the annotated default configuration as wsguard.ini.sample (a real
# wsguard.ini is never written or removed), both man pages, the systemd
# unit and its sysusers.d entry, with the paths in the unit and the pages
# rewritten for the chosen directories. `make uninstall` removes them.
PREFIX      ?= /usr/local
bindir      ?= $(PREFIX)/bin
sysconfdir  ?= $(PREFIX)/etc
datarootdir ?= $(PREFIX)/share
mandir      ?= $(datarootdir)/man
unitdir     ?= $(PREFIX)/lib/systemd/system
sysusersdir ?= $(PREFIX)/lib/sysusers.d
INSTALL     ?= install
INSTALL_PATHS = sed -e 's|/usr/local/bin/|$(bindir)/|g' \
    -e 's|/usr/local/etc/wsguard|$(sysconfdir)/wsguard|g' \
    -e 's|/usr/local/lib/systemd/system|$(unitdir)|g'

install: all
	$(INSTALL) -d $(DESTDIR)$(bindir) $(DESTDIR)$(sysconfdir)/wsguard \
	    $(DESTDIR)$(mandir)/man5 $(DESTDIR)$(mandir)/man8 \
	    $(DESTDIR)$(unitdir) $(DESTDIR)$(sysusersdir)
	$(INSTALL) -m 755 $(BUILD)/wsguard $(DESTDIR)$(bindir)/wsguard
	$(INSTALL) -m 644 conf/wsguard.ini \
	    $(DESTDIR)$(sysconfdir)/wsguard/wsguard.ini.sample
	$(INSTALL_PATHS) man/wsguard.8 >$(DESTDIR)$(mandir)/man8/wsguard.8
	$(INSTALL_PATHS) man/wsguard.ini.5 >$(DESTDIR)$(mandir)/man5/wsguard.ini.5
	$(INSTALL_PATHS) conf/wsguard.service \
	    >$(DESTDIR)$(unitdir)/wsguard.service
	printf 'u wsguard - "wsguard WebSocket proxy" -\n' \
	    >$(DESTDIR)$(sysusersdir)/wsguard.conf
	chmod 644 $(DESTDIR)$(mandir)/man8/wsguard.8 \
	    $(DESTDIR)$(mandir)/man5/wsguard.ini.5 \
	    $(DESTDIR)$(unitdir)/wsguard.service \
	    $(DESTDIR)$(sysusersdir)/wsguard.conf

uninstall:
	rm -f $(DESTDIR)$(bindir)/wsguard \
	    $(DESTDIR)$(sysconfdir)/wsguard/wsguard.ini.sample \
	    $(DESTDIR)$(mandir)/man8/wsguard.8 \
	    $(DESTDIR)$(mandir)/man5/wsguard.ini.5 \
	    $(DESTDIR)$(unitdir)/wsguard.service \
	    $(DESTDIR)$(sysusersdir)/wsguard.conf
	-rmdir $(DESTDIR)$(sysconfdir)/wsguard 2>/dev/null

# The container image built and tested for real with podman (root, about
# 6 minutes on a fresh machine, 25 s once the images are cached); see
# docs/docker.md. Ends with "N passed, N failed".
container-test:
	@scripts/container-test.sh

# The deployment tests alone (install tree, man pages, unit file,
# Kubernetes and compose manifests, the demo script).
deploy-test: all
	$(PYTHON) -m pytest -q tests/integration/test_deploy.py

# The soak (tests/soak/README.md): SOAK_TIME seconds (default 600) of
# 2,200 sessions, abusive clients and faults through $(BUILD)/wsguard;
# `make test` runs a 60-second version. SOAK_ARGS: more run.py options
# (e.g. SOAK_ARGS="--out DIR --png FILE" keeps everything).
SOAK_TIME ?= 600
.PHONY: soak
soak: deps all
	@$(MAKE) --no-print-directory -C bench build/wsecho build/wssoak
	@$(PYTHON) tests/soak/run.py --duration $(SOAK_TIME) \
	    --wsguard $(BUILD)/wsguard $(SOAK_ARGS)

-include $(OBJ:.o=.d) $(UNIT_BIN:=.d) $(REGR_BIN:=.d) $(FUZZ_BIN:=.d)
