"""celeryconfig and worker.config: explicit parsing, the time rule, refusing to start when wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.support.clean_env import python_clean, run_clean
from worker.config import ConfigError, timing

ROOT = Path(__file__).resolve().parents[3]
KEY = Fernet.generate_key().decode()
CELERY_WORKER = [str(Path(sys.executable).parent / "celery"), "-A", "worker", "worker"]


def load_in_subprocess(**env: str) -> subprocess.CompletedProcess[str]:
    """Import the Celery app with only ``env`` set, as a worker at start would."""
    code = "import worker.celery as m; c = m.app.conf; print(c.broker_transport_options)"
    return python_clean(code, **env)


def test_visibility_timeout_covers_countdown_duplicate_wait_and_longest_attempt() -> None:
    """The longest countdown, a duplicate's wait, every request timing out, the bound on late
    processing, plus slack."""
    assert timing.longest_attempt_seconds(10) == 400
    assert (
        timing.minimum_visibility_timeout(
            iamport_timeout=10, longest_countdown=30, duplicate_wait=20, settle_seconds=60
        )
        == 30 + 20 + 400 + 60 + timing.VISIBILITY_MARGIN_SECONDS
    )
    assert timing.lease_seconds(10, 60) == 400 + 60 + timing.VISIBILITY_MARGIN_SECONDS


@pytest.mark.parametrize(
    ("iamport_timeout", "settle_seconds", "lease"),
    [
        (10, 60, 400 + 60 + 10),  # the defaults
        (0.25, 1, 10 + 1 + 10),  # the integration tests' compressed time
        (0.1, 0, 4 + 0 + 10),  # the smallest timeout; no bound on late processing
        (120, 3600, 4800 + 3600 + 10),  # the largest of both
    ],
)
def test_a_lease_is_the_longest_attempt_then_the_settle_bound_then_slack(
    iamport_timeout: float, settle_seconds: float, lease: float
) -> None:
    """A claim outlives every request timing out, and then i'mport's bound on late processing."""
    assert timing.lease_seconds(iamport_timeout, settle_seconds) == pytest.approx(lease)


@pytest.mark.parametrize(
    ("countdown", "duplicate_wait", "iamport_timeout", "settle_seconds", "minimum"),
    [
        (30, 20, 10, 60, 520),  # the defaults: README's 30 + 20 + 400 + 60 + 10
        (30, 100, 10, 60, 600),  # a longer DUPLICATE_WAIT raises it
        (0.3, 20, 0.25, 1, 42),  # 41.3 s rounds up: a whole second short would be unsafe
        (0, 0, 0.1, 0, 14),  # nothing to wait for but one attempt and the slack
    ],
)
def test_minimum_visibility_timeout_table(
    countdown: float,
    duplicate_wait: float,
    iamport_timeout: float,
    settle_seconds: float,
    minimum: int,
) -> None:
    """The minimum is the sum of the waits and the lease, rounded up to whole seconds."""
    rule = {
        "iamport_timeout": iamport_timeout,
        "longest_countdown": countdown,
        "duplicate_wait": duplicate_wait,
        "settle_seconds": settle_seconds,
    }
    assert timing.minimum_visibility_timeout(**rule) == minimum
    timing.check_visibility_timeout(minimum, **rule)
    with pytest.raises(ConfigError, match=f"must be at least {minimum};"):
        timing.check_visibility_timeout(minimum - 1, **rule)


@pytest.mark.parametrize(
    ("base", "most", "refused"),
    [(1, 300, False), (5, 5, False), (10, 5, True), (0.5, 0.25, True)],
)
def test_the_first_backoff_delay_may_not_exceed_the_cap(
    base: float, most: float, refused: bool
) -> None:
    """RETRY_BACKOFF_BASE above RETRY_BACKOFF_MAX is a typo, not a policy."""
    if refused:
        with pytest.raises(ConfigError, match=r"RETRY_BACKOFF_BASE \(\S+\) is larger than"):
            timing.check_backoff(base, most)
    else:
        timing.check_backoff(base, most)


@pytest.mark.parametrize(
    ("bounds", "largest"),
    [({"iamport": 60, "portone": 90}, 90), ({"iamport": 60}, 60), ({}, 0)],
)
def test_the_largest_bound_on_late_processing_rules(
    bounds: dict[str, float], largest: float
) -> None:
    """The lease and the visibility timeout wait out the slowest provider's bound."""
    assert timing.settle_bound(bounds) == largest


def test_importing_any_module_of_the_package_reads_no_environment() -> None:
    """Every module of worker/ and tasks/ imports with no read of ``os.environ`` by our code.

    The settings are read when the Celery app's configuration is first used, so a
    producer, a test or a tool may import anything, and worker.config's rules can be
    tested with no environment (issue 13, item 4). A read is ours
    when the code asking (past the os module's own getenv) is in this checkout and not
    in an installed library: celery, kombu and prometheus_client read a few variables
    of their own when imported, which no code of ours can help. celeryconfig, whose
    job is to read the environment, is imported last as the guard's own check.
    """
    code = """
import importlib, os, sys
ROOT = os.getcwd() + os.sep

def ours():
    frame = sys._getframe(3)  # past ours, _read and the dict method
    while frame is not None and frame.f_code.co_filename == os.__file__:
        frame = frame.f_back
    name = frame.f_code.co_filename if frame is not None else ""
    return name.startswith(ROOT) and os.sep + ".venv" + os.sep not in name

class Recording(dict):
    reads = []
    def _read(self, key):
        if ours():
            self.reads.append((importing, key))
    def __getitem__(self, key):
        self._read(key); return super().__getitem__(key)
    def get(self, key, default=None):
        self._read(key); return super().get(key, default)
    def __contains__(self, key):
        self._read(key); return super().__contains__(key)
    def __iter__(self):
        self._read("*"); return super().__iter__()
    def items(self):
        self._read("*"); return super().items()
    def keys(self):
        self._read("*"); return super().keys()
    def copy(self):
        self._read("*"); return dict(super().items())

from pathlib import Path
names = sorted(
    ".".join(path.with_suffix("").parts).removesuffix(".__init__")
    for folder in ("worker", "tasks")
    for path in Path(folder).rglob("*.py")
    if path.name != "__main__.py"
)
os.environ = Recording(os.environ)
for importing in names:
    importlib.import_module(importing)
print(len(names), sorted(set(os.environ.reads)))
importing = "celeryconfig"
import celeryconfig
print(bool(os.environ.reads))
"""
    result = python_clean(code)
    assert result.returncode == 0, result.stderr
    imported, guard = result.stdout.splitlines()
    count, reads = imported.split(maxsplit=1)
    assert int(count) >= 40
    assert reads == "[]"
    assert guard == "True"


@pytest.mark.parametrize(
    ("env", "bound"),
    [
        ({}, "60.0"),  # i'mport's default
        ({"IAMPORT_TIMEOUT": "90"}, "90.0"),  # never below the read timeout by default
        ({"IAMPORT_SETTLE_SECONDS": "5"}, "5.0"),
    ],
)
def test_settle_seconds_default_and_setting(env: dict[str, str], bound: str) -> None:
    """IAMPORT_SETTLE_SECONDS defaults to 60 s, or the read timeout when that is longer."""
    code = "import celeryconfig as c; print(c.iamport_settle_seconds, c.settle_seconds)"
    result = python_clean(code, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [bound, bound]


@pytest.mark.parametrize(
    ("providers", "settle", "lease"),
    [
        ("iamport", "60.0", "470.0"),
        # V2's 60 s read timeout, one request per call: an attempt of 600 s bounds the lease.
        ("iamport,portone", "60.0", "670.0"),
        ("portone", "60.0", "670.0"),
    ],
)
def test_the_time_rule_covers_every_provider_configured(
    providers: str, settle: str, lease: str
) -> None:
    """The lease and the visibility timeout wait out the slowest provider in PROVIDERS."""
    code = "import celeryconfig as c; print(c.providers, c.settle_seconds, c.ledger_lease_seconds)"
    result = python_clean(code, PROVIDERS=providers)
    assert result.returncode == 0, result.stderr
    named, *timing_ = result.stdout.strip().rsplit(" ", 2)
    assert timing_ == [settle, lease]
    assert named == repr(tuple(providers.split(",")))


def test_defaults_load_and_derive_the_visibility_timeout() -> None:
    """With nothing set, the documented defaults apply and the timeout is derived."""
    result = load_in_subprocess()
    assert result.returncode == 0, result.stderr
    assert "'visibility_timeout': 520" in result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IAMPORT_TIMEOUT": "ten"}, "IAMPORT_TIMEOUT must be a number"),
        ({"IAMPORT_TIMEOUT": "0"}, "IAMPORT_TIMEOUT must be between"),
        ({"RETRY_MAX_ATTEMPTS": "2.5"}, "RETRY_MAX_ATTEMPTS must be a whole number"),
        ({"RETRY_BACKOFF_MAX": "nan"}, "RETRY_BACKOFF_MAX must be between"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must be a redis or rediss or unix URL"),
        ({"IAMPORT_API_URL": "ftp://x"}, "IAMPORT_API_URL must be a https or http URL"),
        (
            {"IAMPORT_API_URL": "http://api.iamport.kr"},
            "IAMPORT_API_URL=http://api.iamport.kr is plain http",
        ),
        ({"IAMPORT_API_URL": "http://10.0.0.5:8787"}, "set IAMPORT_ALLOW_HTTP=1"),
        ({"IAMPORT_ALLOW_HTTP": "yes"}, "IAMPORT_ALLOW_HTTP must be 0 or 1"),
        ({"REQUESTS_CA_BUNDLE": "/nonexistent/ca.pem"}, "REQUESTS_CA_BUNDLE=/nonexistent/ca.pem"),
        ({"REDIS_URL": "rediss://r:6380/0?ssl_cert_reqs=none"}, "ssl_cert_reqs=none is refused"),
        ({"REDIS_URL": "rediss://r/0?ssl_cert_reqs=CERT_NONE"}, "ssl_cert_reqs=CERT_NONE is"),
        ({"REDIS_URL": "rediss://r/0?ssl_cert_reqs=optional"}, "ssl_cert_reqs=optional is"),
        ({"REDIS_URL": "rediss://r/0?ssl_check_hostname=false"}, "ssl_check_hostname=false is"),
        ({"REDIS_URL": "rediss://r/0?ssl_ca_certs=/nonexistent.pem"}, "ssl_ca_certs=/nonexistent"),
        ({"REDIS_URL": "rediss://r/0?ssl_ciphers=NULL"}, "ssl_ciphers is not supported"),
        ({"REDIS_URL": "redis://r/0?ssl_ca_certs=/etc/hosts"}, "needs a rediss:// (TLS) URL"),
        ({"REDIS_URL": ":s3cret-pass@r:6379"}, "got '**@r:6379'"),
        ({"BROKER_VISIBILITY_TIMEOUT": "300"}, "BROKER_VISIBILITY_TIMEOUT=300 is too short"),
        (
            {"RESULT_STREAM_RETENTION": "519"},
            "RESULT_STREAM_RETENTION=519 is shorter than BROKER_VISIBILITY_TIMEOUT=520",
        ),
        (
            {"RESULT_STREAM_RETENTION": "3600", "BROKER_VISIBILITY_TIMEOUT": "7200"},
            "RESULT_STREAM_RETENTION=3600 is shorter than BROKER_VISIBILITY_TIMEOUT=7200",
        ),
        ({"CELERY_BROKER_URL": "redis://elsewhere"}, "CELERY_BROKER_URL is set"),
        (
            {"RETRY_BACKOFF_BASE": "10", "RETRY_BACKOFF_MAX": "5"},
            "RETRY_BACKOFF_BASE (10) is larger than RETRY_BACKOFF_MAX",
        ),
        ({"PII_ENCRYPTION_KEYS": "not-a-key"}, "PII_ENCRYPTION_KEYS: key 1 is not a Fernet key"),
        (
            {"PII_ENCRYPTION_KEYS": f"{KEY},short"},
            "PII_ENCRYPTION_KEYS: key 2 is not a Fernet key",
        ),
        ({"PII_ENCRYPTION_KEYS_FILE": "/nonexistent/keys"}, "cannot be read"),
        (
            {"PII_ENCRYPTION_KEYS": KEY, "PII_ENCRYPTION_KEYS_FILE": "/x"},
            "not both",
        ),
        ({"ALLOW_PLAINTEXT_PII": "yes"}, "ALLOW_PLAINTEXT_PII must be 0 or 1"),
        ({"LOG_FORMAT": "JSON "}, "LOG_FORMAT must be one of text, json, got 'JSON'"),
        ({"LOG_FORMAT": "logfmt"}, "LOG_FORMAT must be one of text, json, got 'logfmt'"),
        ({"METRICS_PORT": "http"}, "METRICS_PORT must be a whole number"),
        ({"METRICS_PORT": "70000"}, "METRICS_PORT must be between 0 and 65535"),
        ({"METRICS_ADDRESS": "localhost"}, "METRICS_ADDRESS must be an IP address"),
        ({"WORKER_POOL": "gevent"}, "WORKER_POOL must be one of threads, prefork"),
        ({"PROVIDERS": "iamport,toss"}, "PROVIDERS names 'toss': the providers are iamport"),
        ({"PROVIDERS": " , "}, "PROVIDERS names no provider"),
        ({"PORTONE_TIMEOUT": "0"}, "PORTONE_TIMEOUT must be between"),
        (
            {"PORTONE_TIMEOUT": "60", "PORTONE_SETTLE_SECONDS": "30"},
            "PORTONE_SETTLE_SECONDS must be between 60",
        ),
        (
            {"PROVIDERS": "portone", "PORTONE_API_URL": "http://10.0.0.5:8787/portone"},
            "set PORTONE_ALLOW_HTTP=1",
        ),
    ],
)
def test_bad_settings_stop_at_start_with_a_clear_message(env: dict[str, str], message: str) -> None:
    """A wrong value exits non-zero with one line naming the variable, no traceback."""
    result = load_in_subprocess(**env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert KEY not in result.stderr


def test_a_longer_duplicate_wait_raises_the_derived_visibility_timeout() -> None:
    """DUPLICATE_WAIT is part of a message's time: 30 + 100 + 400 + 60 + 10 s."""
    result = load_in_subprocess(DUPLICATE_WAIT="100")
    assert result.returncode == 0, result.stderr
    assert "'visibility_timeout': 600" in result.stdout
    refused = load_in_subprocess(DUPLICATE_WAIT="100", BROKER_VISIBILITY_TIMEOUT="520")
    assert refused.returncode != 0
    assert "DUPLICATE_WAIT" in refused.stderr
    assert "at least 600" in refused.stderr


def test_visibility_timeout_may_be_raised() -> None:
    """A value above the derived minimum is taken as given."""
    result = load_in_subprocess(BROKER_VISIBILITY_TIMEOUT="7200")
    assert result.returncode == 0, result.stderr
    assert "'visibility_timeout': 7200" in result.stdout


def test_worker_refuses_to_start_without_credentials() -> None:
    """`celery -A worker worker` without IAMPORT_KEY/SECRET stops before taking work."""
    result = run_clean(CELERY_WORKER, REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode != 0
    assert "IAMPORT_KEY and IAMPORT_SECRET must be set" in result.stderr + result.stdout


def test_keys_file_is_read(tmp_path: Path) -> None:
    """PII_ENCRYPTION_KEYS_FILE holds keys one per line (Docker secrets), newest first."""
    other = Fernet.generate_key().decode()
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n{other}\n", encoding="ascii")
    code = "import celeryconfig as c; print(len(c.pii_encryption_keys))"
    result = python_clean(code, PII_ENCRYPTION_KEYS_FILE=str(keys))
    assert result.stdout.strip() == "2", result.stderr


@pytest.mark.parametrize("name", ["IAMPORT_SECRET", "REDIS_URL", "BROKER_URL"])
def test_a_credential_is_read_from_its_file_without_the_trailing_newline(
    tmp_path: Path, name: str
) -> None:
    """X_FILE (a Docker secret) stands for X; the newline that ends the file is not part of it."""
    value = {"IAMPORT_SECRET": "s3cret value", "REDIS_URL": "redis://u:p@r:6379/1"}.get(
        name, "amqp://u:p@rabbit:5672/v"
    )
    secret = tmp_path / "secret"
    secret.write_text(f"{value}\r\n", encoding="utf-8")
    code = (
        "import celeryconfig as c; print(repr({'IAMPORT_SECRET': c.iamport_secret, "
        f"'REDIS_URL': c.ledger_backend_url, 'BROKER_URL': c.broker_url}}[{name!r}]))"
    )
    result = python_clean(code, **{f"{name}_FILE": str(secret)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr(value)


@pytest.mark.parametrize("name", ["IAMPORT_SECRET", "REDIS_URL", "BROKER_URL"])
def test_a_credential_file_that_is_missing_empty_or_doubled_stops_the_start(
    tmp_path: Path, name: str
) -> None:
    """Each case exits with one line naming the variable, and never shows the value."""
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    written = tmp_path / "written"
    written.write_text("redis://u:hidden-pass@r:6379/0\n", encoding="utf-8")
    cases = [
        ({f"{name}_FILE": str(tmp_path / "missing")}, f"{name}_FILE ({tmp_path / 'missing'})"),
        ({f"{name}_FILE": str(empty)}, f"{name}_FILE ({empty}) is empty"),
        (
            {name: "redis://u:hidden-pass@r:6379/0", f"{name}_FILE": str(written)},
            f"set {name} or {name}_FILE, not both",
        ),
    ]
    for env, message in cases:
        result = load_in_subprocess(**env)
        assert result.returncode != 0
        assert message in result.stderr
        assert "cannot be read" in result.stderr or "missing" not in message
        assert "hidden-pass" not in result.stderr
        assert "Traceback" not in result.stderr


def test_worker_refuses_to_start_without_a_pii_key() -> None:
    """With credentials but no key (and no ALLOW_PLAINTEXT_PII) the worker stops at start."""
    result = run_clean(
        CELERY_WORKER, REDIS_URL="redis://127.0.0.1:1/0", IAMPORT_KEY="k", IAMPORT_SECRET="s"
    )
    assert result.returncode != 0
    assert "no PII encryption key: set PII_ENCRYPTION_KEYS" in result.stderr + result.stdout


def test_a_bare_app_gets_the_timings_celeryconfig_derives_with_nothing_set() -> None:
    """The producer helper, handed a Celery app without our settings, waits what a worker does.

    Its fallbacks come from worker.config.defaults, derived by the same time rule
    as celeryconfig's: they were a literal 460 s, left behind when the settle bound
    raised the defaults to a 470 s lease and a 520 s visibility timeout.
    """
    code = (
        "import celeryconfig as c\n"
        "from celery import Celery\n"
        "from worker.celery import producer\n"
        "bare = Celery('bare')\n"
        "print(c.ledger_lease_seconds, c.broker_visibility_timeout, producer._resend_after(bare))"
    )
    result = python_clean(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["470.0", "520", "520.0"]
