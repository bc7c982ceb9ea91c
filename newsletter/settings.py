"""All settings in one flat pydantic-settings model, built once at the entry point and passed down.

Precedence (highest first): explicit arguments, environment variables (`NEWSLETTER_*`), a `.env`
file in the working directory, the settings file (`config/newsletter.toml`, or the file named by
`NEWSLETTER_SETTINGS_FILE`), then the defaults below. Secrets (SMTP password, signing keys) come
from the environment or from a file named by a `*_FILE` setting, never from the repository.
"""

from __future__ import annotations

import datetime as dt
import os
import zoneinfo
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from newsletter.errors import ConfigError

DEFAULT_SETTINGS_FILE = Path("config/newsletter.toml")
BUNDLED_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


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
        "sqlite:///var/newsletter.db",
        description="SQLAlchemy URL of the store: SQLite (default, WAL) or "
        "postgresql+psycopg://user@host/db for the scale-out backend.",
    )
    seeds_dir: Path = Field(Path("seeds"), description="Folder of daily dumps to ingest.")
    subscribers_file: Path = Field(
        Path("config/subscribers.yaml"), description="The subscriber config file (YAML)."
    )
    outbox_dir: Path = Field(
        Path("var/outbox"),
        description="Local Maildir used instead of SMTP when no SMTP host is configured.",
    )
    preview_dir: Path = Field(Path("var/preview"), description="Where previews are written.")
    reference_date: dt.date | None = Field(
        None,
        description="Dumps carry no year: each date is read as the latest such date not after "
        "this one. Default: today's date in NEWSLETTER_TIMEZONE.",
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

    # --- matching ---------------------------------------------------------------------------
    relevance_threshold: float = Field(
        1.9,
        description="Global relevance score a paper needs to be sent (same for every subscriber). "
        "Scale: a keyword mentioned once in an abstract scores about 1, in the title about 1.4; "
        "more mentions, further keywords and the topic's description add to that. 1.9 asks for "
        "more than one passing mention.",
    )

    # --- rendering --------------------------------------------------------------------------
    template_dir: Path = Field(
        BUNDLED_TEMPLATES, description="Folder with digest.mjml, digest.txt and subject.txt."
    )
    paper_base_url: str = Field(
        "https://huggingface.co/papers?q=",
        description="Each title links to this URL followed by the URL-encoded title.",
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
        description="Public https base URL of the unsubscribe endpoint; when set, "
        "List-Unsubscribe carries an https link and one-click unsubscribe (RFC 8058).",
    )
    unsubscribe_address: str | None = Field(
        None, description="mailto: target for unsubscribe (default: unsubscribe@<sender domain>)."
    )
    list_id: str | None = Field(
        None, description="List-Id value (default: daily-digest.<sender domain>)."
    )
    signing_key: SecretStr | None = Field(
        None, description="Secret that signs unsubscribe tokens (env only, or signing_key_file)."
    )
    signing_key_file: Path | None = Field(None, description="File holding the signing key.")

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

    @field_validator("paper_base_url", "public_base_url")
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
        toml_file = Path(os.environ.get("NEWSLETTER_SETTINGS_FILE", DEFAULT_SETTINGS_FILE))
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_file)
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
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
        return now.astimezone(zoneinfo.ZoneInfo(self.timezone)).date()

    def smtp_secret(self) -> str | None:
        """The SMTP password from env or its file; never logged."""
        return _secret(self.smtp_password, self.smtp_password_file, "smtp_password_file")

    def signing_secret(self) -> str | None:
        return _secret(self.signing_key, self.signing_key_file, "signing_key_file")


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


def load_settings(**overrides: object) -> Settings:
    """Build the settings once; turn validation errors into a ConfigError naming each setting."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            lines.append(
                f"setting NEWSLETTER_{name.upper()}: {err['msg']} (got {err.get('input')!r})"
            )
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from exc


def settings_reference() -> str:
    """The README's settings table, generated from the model so the two never disagree."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path) and default.is_absolute():
            default = "<bundled templates/>"
        shown = "unset" if default is None else f"`{default}`"
        rows.append(f"| `NEWSLETTER_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)
