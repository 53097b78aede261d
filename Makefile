# Two commands for a newcomer: `make run` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: run test bench clean sync-copies deb rpm
SHARED  = configkit.py convert.py keyfile.py logsetup.py wakeup.py

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "cannot create $(VENV): install python3-venv (apt install python3-venv)"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

## run: start hbdaemon and one agentd in the foreground (dev configs under etc/dev/, state in ./run/)
run: $(STAMP)
	@mkdir -p run
	@echo "hbdaemon: unix socket ./run/hbdaemon.sock, http http://127.0.0.1:8690; agentd status: http://127.0.0.1:8691"
	@echo "try: curl -s localhost:8690/agents   (Ctrl-C stops both)"
	@daemon=; agent=; \
	  stop() { trap - INT TERM EXIT; kill -TERM $$agent $$daemon 2>/dev/null; \
	           [ -z "$$agent$$daemon" ] || wait $$agent $$daemon; exit 0; }; \
	  trap stop INT TERM EXIT; \
	  $(PY) -m hbdaemon -c etc/dev/hbdaemon.yaml & daemon=$$!; \
	  for i in $$(seq 50); do [ -S run/hbdaemon.sock ] && break; sleep 0.1; done; \
	  $(PY) -m agentd -c etc/dev/agentd.yaml & agent=$$!; \
	  wait $$agent

## test: run the whole test suite
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## bench: run the benchmarks in bench/ (needs wrk: apt install wrk)
bench: $(STAMP)
	$(PY) bench/run_all.py 2>/dev/null

## deb: build dist/hbdaemon_*.deb and dist/agentd_*.deb (Debian build tools: see README)
deb:
	bash packaging/build-deb.sh

## rpm: build dist/hbdaemon-*.noarch.rpm and dist/agentd-*.noarch.rpm (PYTHON3_VERSION=3.9 by default)
rpm:
	bash packaging/build-rpm.sh

## sync-copies: agentd carries copies of these hbdaemon modules (the packages never import each other)
sync-copies:
	for f in $(SHARED); do cp hbdaemon/$$f agentd/$$f; done

clean:
	rm -rf $(VENV) run build dist *.egg-info .pytest_cache
