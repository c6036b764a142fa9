# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-full demo-loadtest test test-quick lint servers gallery install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@# the fast engine compiles (about a minute, once) in the background while the rest goes on;
	@# whatever needs it first waits on its lock and loads it (sim.fast.engine.warm_up)
	( $(PY) -c "from sim import fast; fast.warm_up()" >/dev/null 2>&1 & )
	touch $(STAMP)

install: $(STAMP)

# Two workers, one test file each at a time (module fixtures stay whole): the load tests mostly
# wait on real servers, the simulation tests compute, so together they fill the two cores.
test: $(STAMP) lint servers
	$(PY) -c "from sim import fast; fast.warm_up()"   # compile the fast engine once, not in each worker
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# nginx, a real rate-limited server for the load tests (tests/realservers.py), from Debian's packages
# when we may install it (root with apt-get); otherwise its tests skip and say why.
servers:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends nginx >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends nginx >/dev/null; } \
	      || echo "nginx could not be installed: the tests that need it will skip"; \
	  else echo "nginx is not installed (needs root and apt-get): the tests that need it will skip"; fi; }

test-quick: $(STAMP)
	$(PY) -c "from sim import fast; fast.warm_up()"
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not slow" -q

# The flagship in about half a minute: Skype's 2007 Patch Tuesday storm at 1/500 scale (14,000
# clients, reference engine: nothing to compile), then the day-2 fix compared as if in place from
# the start (sim/demo.py prints the two loginstorm commands it runs).
demo: $(STAMP)
	$(VENV)/bin/loginstorm validate scenarios/*.toml
	$(PY) -m sim.demo --out out/demo

# The same storm at full size (7 M clients, 72 h) on the compiled engine: the first run compiles
# it (about a minute); the storm itself takes minutes (docs/engines.md).
demo-full: $(STAMP)
	$(VENV)/bin/loginstorm simulate scenarios/skype-2007.toml --engine fast --out out/skype-2007
	@echo "Open out/skype-2007/report.html: the Skype 2007 storm at full scale (7,000,000 clients)"

demo-loadtest: $(STAMP)
	$(PY) -m loadtests.demo --out out/demo-loadtest
	@echo "Open out/demo-loadtest/index.html: the measured storms beside the simulated ones"

gallery: $(STAMP)
	$(PY) -m sim.gallery --out docs/gallery

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
