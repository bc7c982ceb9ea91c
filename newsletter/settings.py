"""All settings in one flat pydantic-settings model, built once at the entry point and passed down.

Precedence (highest first): explicit arguments, environment variables (`NEWSLETTER_*`), a `.env`
file in the working directory, the settings file, then the defaults below. Secrets (SMTP
password, signing keys) come from the environment or from a file named by a `*_FILE` setting,
never from the repository.

The settings file, the subscriber file and the seeds folder are looked up in this order: the
explicit setting, else `config/newsletter.toml`, `config/subscribers.yaml` or `seeds/` in the
working folder, else the read-only examples bundled in the package (`newsletter/bundled/`).
A name that is not a setting (`NEWSLETTER_SMTP_HOTS`) is an error, never silently ignored.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import shlex
import tomllib
import zoneinfo
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from newsletter.addresses import validate_address
from newsletter.errors import ConfigError

BUNDLED = Path(__file__).resolve().parent / "bundled"
BUNDLED_TEMPLATES = BUNDLED / "templates"
SETTINGS_FILE = Path("config/newsletter.toml")
SUBSCRIBERS_FILE = Path("config/subscribers.yaml")
SEEDS_DIR = Path("seeds")
DOTENV_FILE = Path(".env")
DEFAULT_DATABASE_URL = "sqlite:///var/newsletter.db"
ENV_PREFIX = "NEWSLETTER_"
SETTINGS_FILE_VAR = "NEWSLETTER_SETTINGS_FILE"
RESERVED_PREFIX = "NEWSLETTER_TEST_"  # the test suite's own variables, never settings
SECRET_FIELDS = frozenset({"smtp_password", "signing_key", "signing_key_previous"})


def look_up(relative: Path) -> Path:
    """`relative` in the working folder when it exists there, else the bundled example."""
    return relative if relative.exists() else BUNDLED / relative


def is_bundled(path: Path) -> bool:
    return path.resolve().is_relative_to(BUNDLED.resolve())


def default_seeds(subscribers_file: Path) -> Path:
    """seeds/ in the working folder; the bundled example dumps only for the bundled example
    subscribers. Real readers must never be mailed the examples: a deployment without a
    seeds/ folder whose first fetch fails would otherwise send a stale example edition."""
    if not is_bundled(subscribers_file):
        return SEEDS_DIR
    # an empty seeds/ (made for fetched days, none fetched yet) does not hide the examples
    if SEEDS_DIR.is_dir() and any(SEEDS_DIR.iterdir()):
        return SEEDS_DIR
    return BUNDLED / SEEDS_DIR


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NEWSLETTER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # --- storage and inputs -------------------------------------------------------------
    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the store: SQLite (default, WAL) or "
        "postgresql+psycopg://user@host/db for the scale-out backend.",
    )
    subscribers_file: Path = Field(
        default_factory=lambda: look_up(SUBSCRIBERS_FILE),
        description="The subscriber config file (YAML; default: config/subscribers.yaml in the "
        "working folder, else the bundled example).",
    )
    seeds_dir: Path = Field(
        default_factory=lambda data: default_seeds(data["subscribers_file"]),
        description="Folder of daily dumps to ingest (default: seeds/ in the working folder; "
        "the bundled example dumps only go with the bundled example subscribers).",
    )
    outbox_dir: Path = Field(
        Path("var/outbox"),
        description="Local Maildir used instead of SMTP when no SMTP host is configured.",
    )
    preview_dir: Path = Field(Path("var/preview"), description="Where previews are written.")
    reference_date: dt.date | None = Field(
        None,
        description="Dumps carry no year: each date is read as the latest such date not after "
        "the day after this one. Default: today's date in NEWSLETTER_TIMEZONE.",
    )
    year: int | None = Field(
        None, ge=1970, le=2999, description="Pin the year of every dump (overrides inference)."
    )
    timezone: str = Field(
        "UTC",
        description='The service\'s own time zone (IANA name): year inference and "today" '
        "use the date there, not the host's.",
    )
    max_papers_per_dump: int = Field(
        1000,
        ge=1,
        description="A dump with more papers than this is refused (named, with its count): "
        "a runaway file never stalls sending.",
    )
    db_lock_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a database statement waits for a lock held by another session "
        "(PostgreSQL lock_timeout; SQLite busy timeout) before failing with a clear error.",
    )
    db_statement_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds one PostgreSQL statement may run (statement_timeout).",
    )
    lease_seconds: float = Field(
        60.0,
        ge=1,
        description="PostgreSQL: how long a sender's claim on its rows lasts without renewal "
        "(renewed while it works); a dead sender's rows go to the others after this.",
    )

    # --- the source -------------------------------------------------------------------------
    source_url: str = Field(
        "https://huggingface.co/api/daily_papers",
        description="The Daily Papers API: `newsletter fetch` and the daemon ask "
        "<this URL>?date=YYYY-MM-DD for each day and save the answer in the seeds folder.",
    )
    fetch: bool = Field(
        True,
        description="`newsletter run` fetches the day's listing from NEWSLETTER_SOURCE_URL "
        "before each send time (the last day ended in UTC; about 15 s at most). `demo` never "
        "fetches; `newsletter fetch` always does.",
    )

    # --- matching ---------------------------------------------------------------------------
    relevance_threshold: float = Field(
        2.3,
        description="Relevance score that always sends a paper (the same for every subscriber). "
        "Scale: a specific keyword mentioned once in an abstract scores about 1, in the title "
        "about 1.4; more mentions, further keywords and the topic's description add to that. "
        "A topic whose own best papers score lower gets a lower bar (see "
        "NEWSLETTER_RELEVANCE_RELATIVE and NEWSLETTER_RELEVANCE_FLOOR).",
    )
    relevance_relative: float = Field(
        0.6,
        ge=0,
        description="Per-topic calibration: a paper is also sent when it scores this share of "
        "the topic's own 3rd-best score over all stored papers (and reaches the floor), so a "
        "narrow topic or two short keywords are not held to a broad topic's bar.",
    )
    relevance_floor: float = Field(
        1.4,
        ge=0,
        description="No paper scoring below this is sent, however low its topic's scale: a "
        "topic that matches nothing well stays silent (and `subscribers health` says why).",
    )
    description_weight: float = Field(
        8.0,
        ge=0,
        description="Weight of a topic's description: a paper matching every description term "
        "as strongly as BM25 allows would add this much (on-topic papers get 15-30% of it).",
    )
    vote_weight: float = Field(
        16.0,
        ge=0,
        description="How far a reader's votes move their ranking: a paper's score changes by "
        "this times its likeness (cosine) to the papers they voted up, less its likeness to "
        "those they voted down, relative to the typical stored paper's.",
    )
    vote_send_weight: float = Field(
        8.0,
        ge=0,
        description="How far likeness to the papers a reader voted up moves the send decision "
        "(the paper's margin over the threshold), never by more than 40% of the threshold.",
    )
    vote_contrast: float = Field(
        0.5,
        ge=0,
        description="Share of the collection's average paper taken off the centroids of a "
        "reader's liked and disliked papers, so their distinctive words count and common ones "
        "do not.",
    )
    vote_prior: float = Field(
        1.0,
        gt=0,
        description="A reader's keyword weighs (this + up) / (this + up + down) for them, where "
        "up and down count their votes on papers it matched: a keyword that sent papers they "
        "voted down counts less, never nothing.",
    )
    vote_half: float = Field(
        4.0,
        ge=0,
        description="Votes after which NEWSLETTER_VOTE_WEIGHT and NEWSLETTER_VOTE_SEND_WEIGHT "
        "act at half strength (n votes: n / (n + this) of it), so one liked paper's own words "
        "do not reorder everything.",
    )
    vote_send_contrast: float = Field(
        0.5,
        ge=0,
        description="NEWSLETTER_VOTE_CONTRAST of the likeness that moves the send decision: "
        "near the threshold, the liked papers' distinctive words tell a wanted paper from one "
        "that only shares the field's vocabulary.",
    )
    vote_sink_weight: float = Field(
        16.0,
        ge=0,
        description="NEWSLETTER_VOTE_SEND_WEIGHT of a paper less like the papers a reader voted "
        "up than the typical stored paper is: a paper they would have been sent that is unlike "
        "everything they liked is the likeliest to be unwanted, so it sinks faster than a like "
        "one rises (within the same 40% of the threshold).",
    )

    # --- rendering --------------------------------------------------------------------------
    template_dir: Path = Field(
        BUNDLED_TEMPLATES, description="Folder with digest.mjml, digest.txt and subject.txt."
    )
    paper_base_url: str = Field(
        "https://huggingface.co/papers?q=",
        description="A title without an arXiv id (text dumps) links to this URL followed by "
        "the URL-encoded title; one with an id links to https://huggingface.co/papers/<id>.",
    )
    sender_name: str = Field("Trending Papers", description="Display name in From.")
    sender_address: str = Field("digest@example.org", description="Address in From.")
    reply_to: str | None = Field(None, description="Optional Reply-To address.")
    postal_address: str = Field(
        "Trending Papers, 1 Example Street, 10115 Berlin, Germany",
        description="Sender's postal address shown in the footer (CAN-SPAM and similar laws).",
    )
    public_base_url: str | None = Field(
        None,
        description="Public base URL of the web app (`newsletter serve`), e.g. "
        "https://digest.example.org. When set, every email links to it (unsubscribe page, "
        "view in browser, votes, the day's listing) and, for https only (RFC 8058), carries the "
        "one-click `List-Unsubscribe-Post` header.",
    )
    unsubscribe_address: str | None = Field(
        None, description="mailto: target for unsubscribe (default: unsubscribe@<sender domain>)."
    )
    list_id: str | None = Field(
        None, description="List-Id value (default: daily-digest.<sender domain>)."
    )
    signing_key: SecretStr | None = Field(
        None,
        description="Secret that signs the links in every email (unsubscribe, votes, archive): "
        "any string of at least 32 bytes (UTF-8), env only or signing_key_file. Unset: created "
        "once in var/signing-key (mode 0600), shared by send and serve run in the same folder.",
    )
    signing_key_file: Path | None = Field(None, description="File holding the signing key.")
    signing_key_previous: SecretStr | None = Field(
        None,
        description="The key used before a rotation: links signed with it keep working until "
        "it is removed (keep it at least NEWSLETTER_LINK_MAX_AGE_DAYS). Env only, or "
        "signing_key_previous_file.",
    )
    signing_key_previous_file: Path | None = Field(
        None, description="File holding the previous signing key."
    )
    link_max_age_days: int = Field(
        365,
        ge=60,
        le=3650,
        description="Days a signed vote or view-in-browser link keeps working; at least 60. "
        "Unsubscribe and feed links do not expire (rotating the key revokes them).",
    )

    # --- delivery ---------------------------------------------------------------------------
    smtp_host: str | None = Field(None, description="SMTP server; unset = local Maildir outbox.")
    smtp_port: int | None = Field(
        None, ge=1, le=65535, description="Default: 465 for tls, 587 for starttls, 25 for none."
    )
    smtp_security: Literal["starttls", "tls", "none"] | None = Field(
        None, description="starttls | tls | none. Default by port: 465 tls, 25 none, else starttls."
    )
    smtp_username: str | None = Field(None, description="SMTP AUTH user name.")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password (env only).")
    smtp_password_file: Path | None = Field(None, description="File holding the SMTP password.")
    smtp_timeout: float = Field(
        30.0, gt=0, description="Seconds per SMTP command (connect, greeting, EHLO, MAIL, RCPT)."
    )
    smtp_data_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds to wait for the server's reply after the whole message was "
        "transmitted (RFC 5321 4.5.3.2.6 gives 10 minutes). A timeout there is `unknown`, "
        "not resent at once.",
    )
    unknown_retry_after: float = Field(
        86400.0,
        ge=0,
        description="Seconds before an `unknown` row (the server may have the message) is "
        "sent again; `send --resend EMAIL` sends it at once.",
    )
    smtp_brake_after: int = Field(
        10,
        ge=0,
        description="Stop the run when the first N recipient replies are all the same refusal "
        "(a misconfigured relay); the rows stay retryable. 0 turns the brake off.",
    )
    smtp_allow_plaintext_auth: bool = Field(
        False,
        description="Allow SMTP AUTH over an unencrypted connection (the password would cross "
        "the network in clear).",
    )
    smtp_helo_name: str | None = Field(None, description="Name sent in EHLO/HELO.")
    smtp_validate_certs: bool = Field(True, description="Verify the server's TLS certificate.")
    smtp_ca_file: Path | None = Field(None, description="Extra CA bundle for the server's cert.")
    smtp_pool_size: int = Field(16, ge=1, le=256, description="Reused SMTP connections.")
    smtp_max_per_connection: int = Field(
        500, ge=1, description="Messages sent on one connection before it is renewed."
    )
    smtp_rate_limit: float | None = Field(
        None, gt=0, description="Messages per second across all connections (none = no limit)."
    )
    smtp_max_attempts: int = Field(
        4,
        ge=1,
        le=20,
        description="Attempts per message within one run before it is left "
        "as a temporary failure for the next run.",
    )
    smtp_retry_base: float = Field(
        1.0, gt=0, description="First retry delay in seconds (doubles each time, with jitter)."
    )
    dkim_selector: str | None = Field(None, description="DKIM selector (signing needs all three).")
    dkim_domain: str | None = Field(None, description="DKIM signing domain (d=).")
    dkim_private_key_file: Path | None = Field(None, description="PEM private key for DKIM.")

    # --- scheduling and logs ----------------------------------------------------------------
    catch_up: bool = Field(
        True, description="On start or wake-up, send editions whose send time already passed."
    )
    lock_dir: Path | None = Field(
        None,
        description="Obsolete (accepted with a warning): the SQLite sender lock now lives "
        "beside the database file.",
    )
    log_format: Literal["text", "json"] = Field("text", description="text or json (lines).")
    log_level: str = Field("INFO", description="Python log level.")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        names = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if v.upper() not in names:
            raise ValueError(f"{v!r} is no log level; use one of {', '.join(names)}")
        return v.upper()

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f'{v!r} is not an IANA time zone; use a name such as "Europe/Berlin" or "UTC"'
            ) from None
        return v

    @field_validator("sender_address", "reply_to", "unsubscribe_address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return None if v is None else validate_address(v)

    @field_validator("signing_key", "signing_key_previous")
    @classmethod
    def _long_key(cls, v: SecretStr | None) -> SecretStr | None:
        problem = None if v is None else key_problem(v.get_secret_value())
        if problem:
            raise ValueError(problem)
        return v

    @field_validator(
        "smtp_host",
        "database_url",
        "subscribers_file",
        "seeds_dir",
        "outbox_dir",
        "preview_dir",
        "template_dir",
        "smtp_password_file",
        "signing_key_file",
        "signing_key_previous_file",
        "dkim_private_key_file",
        "smtp_ca_file",
        mode="before",
    )
    @classmethod
    def _not_blank(cls, v: object) -> object:
        # An empty value (`NEWSLETTER_SMTP_HOST=` in a unit file) is a typo, never a choice:
        # taken as "unset" it would send to the local Maildir and mark the mail sent; as a
        # path it would be the working folder.
        if isinstance(v, str) and not v.strip():
            raise ValueError("is empty: give a value, or remove the line to use the default")
        return v

    @model_validator(mode="after")
    def _smtp_needs_a_host(self) -> Settings:
        given = [
            name
            for name in ("smtp_port", "smtp_username", "smtp_password", "smtp_password_file")
            if getattr(self, name) is not None
        ]
        if self.smtp_host is None and given:
            names = ", ".join(f"NEWSLETTER_{n.upper()}" for n in given)
            raise ValueError(
                f"{names} set but NEWSLETTER_SMTP_HOST is not: without a host the mail would "
                "go to the local Maildir outbox and count as sent; set the host, or remove "
                f"{'them' if len(given) > 1 else 'it'} to deliver locally"
            )
        return self

    @field_validator("paper_base_url", "public_base_url", "source_url")
    @classmethod
    def _absolute_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "http://")):
            raise ValueError(f"must be an absolute http(s) URL, got {v!r}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        env_file = getattr(dotenv_settings, "env_file", None)
        dotenv = Path(env_file) if isinstance(env_file, str | Path) else None
        toml = TomlConfigSettingsSource(settings_cls, toml_file=settings_file(os.environ, dotenv))
        return (init_settings, env_settings, dotenv_settings, toml, file_secret_settings)

    # --- derived values ---------------------------------------------------------------------
    @property
    def sender_domain(self) -> str:
        return self.sender_address.rpartition("@")[2] or "localhost"

    @property
    def effective_unsubscribe_address(self) -> str:
        return self.unsubscribe_address or f"unsubscribe@{self.sender_domain}"

    @property
    def effective_list_id(self) -> str:
        return self.list_id or f"daily-digest.{self.sender_domain}"

    def today(self, now: dt.datetime) -> dt.date:
        """The reference date for year inference: NEWSLETTER_REFERENCE_DATE, else the date of
        `now` in the service's time zone (never the host's; a naive `now` is taken as UTC)."""
        if self.reference_date is not None:
            return self.reference_date
        return self.local_date(now)

    def local_date(self, now: dt.datetime) -> dt.date:
        """The date of `now` in the service's time zone (a naive `now` is taken as UTC)."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
        return now.astimezone(zoneinfo.ZoneInfo(self.timezone)).date()

    def smtp_secret(self) -> str | None:
        """The SMTP password from env or its file; never logged."""
        return _secret(self.smtp_password, self.smtp_password_file, "smtp_password_file")

    def signing_secret(self) -> str | None:
        """The configured signing key (env or file; None: not configured); never logged."""
        return _key(self.signing_key, self.signing_key_file, "signing_key_file")

    def previous_signing_secret(self) -> str | None:
        """The key before the last rotation, still accepted on links; never logged."""
        return _key(
            self.signing_key_previous, self.signing_key_previous_file, "signing_key_previous_file"
        )


MIN_KEY_BYTES = 32


def key_problem(key: str) -> str | None:
    """Why `key` cannot sign links: any string of at least MIN_KEY_BYTES bytes (UTF-8) can."""
    size = len(key.encode("utf-8"))
    if size >= MIN_KEY_BYTES:
        return None
    return (
        f"a signing key needs at least {MIN_KEY_BYTES} bytes, this one has {size}; make a long "
        "random one: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
    )


def _key(value: SecretStr | None, path: Path | None, name: str) -> str | None:
    key = _secret(value, path, name)
    problem = None if key is None or value is not None else key_problem(key)
    if problem:  # from the file (the variable itself is checked when the settings are built)
        raise ConfigError(f"setting NEWSLETTER_{name.upper()} ({path}): {problem}")
    return key


def _secret(value: SecretStr | None, path: Path | None, name: str) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"setting NEWSLETTER_{name.upper()}: cannot read {str(path)!r} ({exc.strerror}); "
            "point it at a readable file"
        ) from exc


def read_dotenv(path: Path | None) -> dict[str, str | None]:
    """The `.env` file's entries, or nothing when there is none."""
    if path is None or not path.is_file():
        return {}
    return dotenv_values(path, encoding="utf-8")


def settings_file(environ: Mapping[str, str], dotenv: Path | None = DOTENV_FILE) -> Path:
    """NEWSLETTER_SETTINGS_FILE (environment, then .env), else config/newsletter.toml in the
    working folder, else the bundled example (every line a comment)."""
    explicit = _explicit_settings_file(environ, dotenv)
    return Path(explicit) if explicit else look_up(SETTINGS_FILE)


def _explicit_settings_file(environ: Mapping[str, str], dotenv: Path | None) -> str | None:
    """NEWSLETTER_SETTINGS_FILE as set in the environment, else in .env."""
    return environ.get(SETTINGS_FILE_VAR) or read_dotenv(dotenv).get(SETTINGS_FILE_VAR)


def _closest(name: str, prefix: str = "") -> str:
    """'; did you mean X?' for the nearest setting name (compared without the prefix)."""
    fields = [*Settings.model_fields, SETTINGS_FILE_VAR.removeprefix(ENV_PREFIX).lower()]
    if not prefix:
        fields.pop()  # the settings file cannot name itself
    bare = name.lower().removeprefix(ENV_PREFIX.lower())
    match = difflib.get_close_matches(bare, fields, n=1)
    if match:
        return f"; did you mean {prefix}{match[0].upper() if prefix else match[0]}?"
    return "; the README's Settings table lists every setting"


def _unknown_variables(names: Iterable[str], source: str) -> list[str]:
    """NEWSLETTER_* names that are no setting; other names belong to other tools."""
    valid = {ENV_PREFIX + field.upper() for field in Settings.model_fields} | {SETTINGS_FILE_VAR}
    ours = (n for n in names if n.upper().startswith(ENV_PREFIX))
    return [
        f"{source}{name} is not a setting{_closest(name, ENV_PREFIX)}"
        for name in ours
        if name.upper() not in valid and not name.upper().startswith(RESERVED_PREFIX)
    ]


def _unknown_keys(path: Path) -> list[str]:
    """Keys of the settings file that are no setting (keys are names without the prefix), and
    secrets, which never come from a file that may be committed with the rest of config/."""
    if not path.is_file():
        return []
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"settings file {path}: cannot read it as TOML ({exc}); fix it, or point "
            f"{SETTINGS_FILE_VAR} at another file"
        ) from exc
    unknown = [
        f"settings file {path}: {key} is not a setting{_closest(key)}"
        for key in data
        if key not in Settings.model_fields
    ]
    secrets = [
        f"settings file {path}: {key} is a secret and is never read from the settings file; "
        f"set {ENV_PREFIX}{key.upper()} in the environment or {key}_file to a file holding it"
        for key in data
        if key in SECRET_FIELDS
    ]
    return unknown + secrets


def check_setting_names(environ: Mapping[str, str], dotenv: Path = DOTENV_FILE) -> None:
    """Refuse a misspelt setting in any source (a typo must not fall back to a default)."""
    explicit = _explicit_settings_file(environ, dotenv)
    if explicit and explicit != os.devnull and not Path(explicit).is_file():
        raise ConfigError(
            f"{SETTINGS_FILE_VAR}={explicit}: no such file; correct the path, or unset it to use "
            f"{SETTINGS_FILE} in the working folder ({os.devnull}: no settings file at all)"
        )
    problems = [
        *_unknown_variables(environ, "environment variable "),
        *_unknown_variables(read_dotenv(dotenv), f"{dotenv}: "),
        *_unknown_keys(settings_file(environ, dotenv)),
    ]
    if problems:
        raise ConfigError("\n".join(problems))


def load_settings(**overrides: object) -> Settings:
    """Build the settings once; turn validation errors into a ConfigError naming each setting."""
    check_setting_names(os.environ)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if not name:  # a check across settings: its message names them, never their values
                lines.append(message)
                continue
            got = "***" if name in SECRET_FIELDS else repr(err.get("input"))  # never a secret
            lines.append(f"setting NEWSLETTER_{name.upper()}: {message} (got {got})")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from exc


def sqlite_folder(url: str) -> Path | None:
    """The folder of an SQLite database file; None for other databases and in-memory ones."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None  # Store.open reports the bad URL
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if sqlite_uri(parsed):
        return None
    return Path(database).expanduser().parent


def sqlite_uri(parsed: URL) -> bool:
    """An SQLite URI filename (`file:...`, `?uri=true`): it names no plain file."""
    return (parsed.database or "").startswith("file:") or "uri" in parsed.query


def prepare_database_folder(url: str) -> None:
    """Create the default store's folder (var/); an explicit URL's folder must exist already,
    since a new, empty store there would send every subscriber every paper again."""
    folder = sqlite_folder(url)
    if folder is None or folder.is_dir():
        return
    if url != DEFAULT_DATABASE_URL:
        raise ConfigError(
            f"setting NEWSLETTER_DATABASE_URL: the folder {folder} of {url} does not exist; "
            f"correct the URL, or create the folder (mkdir -p {shlex.quote(str(folder))}) to "
            "start a new, empty store (it then sends every subscriber every matching paper)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"setting NEWSLETTER_DATABASE_URL: cannot create {folder} for {url} "
            f"({exc.strerror}); run in a writable folder or set NEWSLETTER_DATABASE_URL"
        ) from exc


def settings_reference() -> str:
    """The README's settings table, generated from the model so the two never disagree."""
    looked_up = {"seeds_dir": SEEDS_DIR, "subscribers_file": SUBSCRIBERS_FILE}
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if name in looked_up:
            shown = f"`{looked_up[name]}`, else bundled"
        elif isinstance(default, Path) and default.is_absolute():
            shown = "<bundled templates/>"
        else:
            shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `NEWSLETTER_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)
