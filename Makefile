# The two commands of the README: `make run` and `make test`. Both create .venv when needed.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` installs the runtime dependencies only; `make test`/`make venv` add the test extras.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
# Debian packages the tests drive as real peers (see docs/testing.md); systemd (systemd-analyze),
# logrotate and pipx check the deployment files and the wheel (tests/test_deploy.py); yara and
# clamav are the scanner's peers (tests/scan); tesseract-ocr, dicom3tools (dciodvfy) and
# fonts-dejavu-core are de-identification's (tests/deid); sqlite3 takes the online backup that
# docs/deployment.md gives (tests/test_r7_admin_deploy.py).
SYSLOG_NG := .peers/syslog-ng
PEERS := dcmtk orthanc nmap tshark postgresql ethtool rsyslog rsyslog-gnutls rsyslog-openssl iproute2 openssl systemd logrotate faketime pipx \
	yara clamav-daemon clamav-testfiles tesseract-ocr dicom3tools fonts-dejavu-core libgdcm-tools sqlite3 zstd lz4 tcpdump \
	odil python3-odil gcc libc6-dev libpixelmed-java openjdk-17-jdk-headless \
	liblog4j2-java busybox ctn pixelmed-apps ghostscript genisoimage nodejs

.PHONY: run test venv peers bench wheel clean

venv: $(STAMP)

$(RUN_STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[postgres]'
	touch $@

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,postgres]'
	touch $@

# Installs the missing peers when run as root; otherwise says what is missing (the tests fail loudly).
# syslog-ng conflicts with rsyslog, so it is unpacked from its .deb into $(SYSLOG_NG), not installed.
peers:
	@missing=$$(for p in $(PEERS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing test peers: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages (install as root): $$missing" >&2; fi; \
	fi
	@tools/syslog-ng-peer $(SYSLOG_NG) >/dev/null || echo "syslog-ng could not be unpacked into $(SYSLOG_NG)" >&2

run: $(RUN_STAMP)
	$(BIN)/pacsguard init
	$(BIN)/pacsguard serve

# Lint and types first (seconds), then the suite; any failure fails `make test`.
test: venv peers
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest

bench: venv
	@echo "see docs/PERFORMANCE.md for each benchmark's command"

# The wheel `pipx install dist/pacsguard-*.whl` runs (docs/deployment.md).
wheel: $(RUN_STAMP)
	$(BIN)/python -m pip wheel --no-deps --quiet -w dist .

clean:
	rm -rf $(VENV) build dist *.egg-info
