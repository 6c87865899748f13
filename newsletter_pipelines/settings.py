"""Every knob of newsletter_pipelines, read from `NEWSLETTER_*` environment variables.

Nested values use a double underscore: `NEWSLETTER_CRM_SCHEMA__EMAIL=mail_address`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


DEMO_WEBHOOK_SECRET = "embedded-demo-webhook-secret"
ALWAYS_ACTIVITIES = frozenset({"subscribed", "unsubscribed"})
OPTIONAL_ACTIVITIES = ("hard_bounce", "delivered", "opened", "clicked")
"""Webhook secret of the embedded demo (no provider API key); never used for a real provider."""
WEBHOOK_SECRET_MIN_LENGTH = 16


class CrmSchema(BaseModel):
    """Table and column names of the CRM; defaults: the schema `crm load-demo` creates."""

    contacts_table: str = "contacts"
    id: str = "id"
    salutation: str = "salutation"
    first_name: str = "first_name"
    last_name: str = "last_name"
    email: str = "email"
    newsletter: str = "newsletter"
    is_private: str = "is_private"
    updated_at: str = "updated_at"
    created_at: str = "created_at"
    tags_table: str = "contact_tags"
    tag_contact_id: str = "contact_id"
    tag: str = "tag"
    tag_updated_at: str | None = None  # a tag row's time, if the tags table has one
    activities_table: str = "activities"
    activities_id: str = "id"
    activities_contact_id: str = "contact_id"
    activities_kind: str = "kind"
    activities_provider: str = "provider"
    activities_audience: str = "audience"
    activities_occurred_at: str = "occurred_at"
    activities_details: str = "details"
    activities_source_key: str = "source_key"


class CrmValues(BaseModel):
    """The values the import-back writes into the CRM's newsletter column."""

    yes: str = "yes"
    no: str = "no"
    unspecified: str = "unspecified"

    @model_validator(mode="after")
    def _distinct(self) -> CrmValues:
        if len({self.yes, self.no, self.unspecified}) != 3:
            raise ValueError("NEWSLETTER_CRM_VALUES__YES/NO/UNSPECIFIED must differ")
        return self


class BrevoAttributes(BaseModel):
    """Brevo contact attribute names the sync writes; they depend on the account language."""

    first_name: str = "FIRSTNAME"
    last_name: str = "LASTNAME"
    salutation: str = "SALUTATION"


class AudienceConfig(BaseModel):
    """One provider audience the CRM is synced into; its key is the Dagster partition key."""

    key: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    provider: Literal["mailchimp", "brevo"]
    name: str = Field(default="CRM Newsletter", min_length=1, max_length=100)
    system_tag: str | None = Field(
        default="CRM",
        description="Tag the sync puts on every contact it manages (Mailchimp only; ignored "
        "when tags are imported back).",
    )

    @model_validator(mode="after")
    def _mailchimp_only_tag(self) -> AudienceConfig:
        """A Brevo list has no system tag, whatever the configuration says."""
        if self.provider == "brevo":
            self.system_tag = None
        return self


def default_audiences() -> list[AudienceConfig]:
    """One Mailchimp audience and one Brevo list, both named "CRM Newsletter"."""
    return [
        AudienceConfig(key="mailchimp", provider="mailchimp"),
        AudienceConfig(key="brevo", provider="brevo"),
    ]


class Settings(BaseSettings):
    """Runtime settings; see the README's table for each variable."""

    model_config = SettingsConfigDict(
        env_prefix="NEWSLETTER_",
        env_nested_delimiter="__",
        extra="ignore",
        hide_input_in_errors=True,  # an error names the variable, never its value (secrets)
    )

    deployment: Literal["embedded", "production"] = Field(
        default="embedded",
        description="`production`: the CRM, state database, IO base URI, API keys and webhook "
        "secret must be set (an error names each missing variable), and the sandbox is never "
        "used. "
        "`embedded` (make demo, make dev): unset ones fall back to local files and the sandbox.",
    )
    home: Path = Field(
        default=Path(".newsletter"),
        description="Folder for generated local files: demo CRM, state database, asset values, "
        "demo instance.",
    )
    crm_database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the CRM. Default: a SQLite file in NEWSLETTER_HOME, "
        "built from data/ on first use.",
    )
    crm_schema: CrmSchema = Field(default_factory=CrmSchema)
    crm_values: CrmValues = Field(default_factory=CrmValues)
    crm_write_back: bool = Field(
        default=True,
        description="False: the import-back only reports what it would write to the CRM.",
    )
    import_back_cron: str = Field(
        default="0 2 * * *", description="Cron schedule of the import-back (provider → CRM)."
    )
    change_sensor_seconds: int = Field(
        default=15, ge=5, le=55, description="Interval of crm_changes_sensor in seconds."
    )
    change_batch: int = Field(
        default=10_000, ge=1, description="Changed CRM contacts crm_changes_sensor takes a tick."
    )
    change_overlap_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How far before its watermark crm_changes_sensor looks again for changes "
        "committed late (clock skew, long transactions).",
    )
    nightly_cron: str = Field(
        default="0 3 * * *",
        description="Cron schedule of the nightly full two-way sync of every audience.",
    )
    timezone: str = Field(
        default="Europe/Berlin", description="IANA time zone the schedules run in."
    )
    state_database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the state database (exclusions, ledger, outcomes). "
        "Default: a SQLite file in NEWSLETTER_HOME.",
    )
    io_base_uri: str | None = Field(
        default=None,
        description="Where asset values are stored as Parquet: a folder or an object-store "
        "prefix such as s3://bucket/prefix (credentials from the standard AWS_* variables, "
        "never in the URI). Default: NEWSLETTER_HOME/io.",
    )
    demo_data_dir: Path = Field(
        default=PROJECT_ROOT / "data", description="Folder of the demo CRM CSV files."
    )
    audiences: list[AudienceConfig] = Field(
        default_factory=default_audiences,
        description="Audiences to sync, as JSON (see README); each is a Dagster partition.",
    )
    removal_max_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Largest share of an audience's active members one push may unsubscribe or "
        "remove before the removal guard holds them.",
    )
    rename_max_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Largest share of an audience's active members one push may move to other "
        "addresses before the rename guard holds those changes.",
    )
    rename_min_count: int = Field(
        default=10,
        ge=0,
        description="Floor of the rename guard: this many address changes never trip it.",
    )
    removal_min_count: int = Field(
        default=10,
        ge=0,
        description="Floor of the removal guard: this many unsubscribes and removals never trip "
        "it, whatever the share (small audiences keep moving).",
    )
    eligible_max_drop_share: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Largest tolerated drop of the eligible count against the previous "
        "materialization before the blocking check fails.",
    )

    # --- providers (owned by the provider clients; see README "Providers") ---
    mailchimp_api_key: SecretStr | None = Field(
        default=None, description="Mailchimp API key (`<key>-<dc>`). Unset: the embedded sandbox."
    )
    mailchimp_base_url: str | None = Field(
        default=None,
        description="Mailchimp API root. Default: https://<dc>.api.mailchimp.com/3.0 from the key.",
    )
    mailchimp_max_connections: int = Field(
        default=10,
        ge=1,
        le=10,
        description="Concurrent connections of one run to Mailchimp. Mailchimp allows an "
        "account 10 in all: with a PostgreSQL state database every call holds one of the "
        "account's 10 connection slots there, shared by all runs and processes; with another, "
        "the run queue lets 2 runs of one account run at once (dagster.yaml) and a run never "
        "opens more than its share, 10 // that limit.",
    )
    brevo_api_key: SecretStr | None = Field(
        default=None, description="Brevo API key. Unset: the embedded sandbox."
    )
    brevo_base_url: str = Field(default="https://api.brevo.com/v3", description="Brevo API root.")
    brevo_requests_per_second: float = Field(
        default=9.5,
        gt=0,
        le=10,
        description="Request rate on Brevo contact endpoints (Brevo allows 10/s; at 9.5 any 10 "
        "calls span at least 1.05 s).",
    )
    brevo_attributes: BrevoAttributes = Field(default_factory=BrevoAttributes)
    brevo_tags_attribute: str | None = Field(
        default="NEWSLETTER_TAGS",
        description="Brevo text attribute holding a contact's tags, comma-separated. "
        "Empty: tags are not synced to Brevo.",
    )
    brevo_folder_name: str = Field(
        default="newsletter_pipelines", description="Brevo folder the sync's lists live in."
    )
    mailchimp_salutation_tag: str = Field(
        default="SALUTATION", description="Mailchimp merge tag of the salutation field."
    )
    mailchimp_audience_defaults: dict[str, str] = Field(
        default_factory=dict,
        description="JSON with company, address1, city, country, permission_reminder, "
        "from_name, from_email: lets the sync create a missing Mailchimp audience. "
        "Empty: audiences must exist.",
    )
    sandbox_state_file: Path | None = Field(
        default=None,
        description="State file of the embedded provider sandbox. Default: "
        "NEWSLETTER_HOME/sandbox.json.",
    )
    # --- webhook receiver (see README "Webhook receiver") ---
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Shared secret of the webhook receiver (Mailchimp: `?secret=` in the URL, "
        "Brevo: bearer token), at least 16 characters. Required as soon as an audience's "
        "provider has an API key; unset in the embedded demo: DEMO_WEBHOOK_SECRET.",
    )
    webhook_public_url: str | None = Field(
        default=None,
        description="Public base URL of the webhook receiver (e.g. https://hooks.example.com). "
        "When set, every sync registers the audience's webhook there (once; again if it was "
        "deleted or changed). Unset: only the nightly import-back brings changes back.",
    )
    alert_webhook_url: SecretStr | None = Field(
        default=None,
        description="Slack-compatible incoming webhook URL (a JSON body with `text`) for alerts: "
        "failed runs, failed blocking checks, stalled sensors. Unset: alerts go to the log only.",
    )
    webhook_signing_secret: SecretStr | None = Field(
        default=None,
        description="Mailchimp webhook signing secret: when set, every Mailchimp delivery must "
        "carry a valid `X-Mailchimp-Signature`. Unset: the URL secret alone.",
    )
    webhook_rate_per_second: float = Field(
        default=50.0,
        gt=0,
        description="Requests per second the receiver accepts per client "
        "and provider (token bucket refill); more are answered 429.",
    )
    webhook_rate_burst: int = Field(
        default=500, ge=1, description="Token bucket size: requests a client may send at once."
    )
    activities: Annotated[frozenset[str], NoDecode] = Field(
        default=ALWAYS_ACTIVITIES,
        description="Comma-separated activity kinds the CRM receives: `subscribed` and "
        f"`unsubscribed` always; add any of {', '.join(OPTIONAL_ACTIVITIES)}.",
    )
    api_specs_dir: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "specs",
        description="Folder of the official API specifications used by the contract tests.",
    )

    @field_validator("activities", mode="before")
    @classmethod
    def _known_activities(cls, value: object) -> frozenset[str]:
        names = value.split(",") if isinstance(value, str) else value
        if not isinstance(names, Iterable):
            raise ValueError("NEWSLETTER_ACTIVITIES: expected comma-separated names")
        chosen = frozenset(str(n).strip() for n in names) - {""}
        unknown = chosen - ALWAYS_ACTIVITIES - set(OPTIONAL_ACTIVITIES)
        if unknown:
            raise ValueError(
                f"NEWSLETTER_ACTIVITIES: unknown activities {sorted(unknown)} (known: "
                f"{', '.join(sorted(ALWAYS_ACTIVITIES))}, {', '.join(OPTIONAL_ACTIVITIES)})"
            )
        return chosen | ALWAYS_ACTIVITIES

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder such as "Europe"
            raise ValueError(
                f"NEWSLETTER_TIMEZONE: unknown time zone {value!r} "
                "(expected an IANA name such as Europe/Berlin)"
            ) from None
        return value

    @field_validator("io_base_uri")
    @classmethod
    def _no_credentials_in_uri(cls, value: str | None) -> str | None:
        if value and (urlsplit(value).username or urlsplit(value).password):
            raise ValueError(
                "NEWSLETTER_IO_BASE_URI must not hold credentials (they would show in the "
                "metadata of every asset): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        return value

    @field_validator("audiences")
    @classmethod
    def _unique_audience_keys(cls, audiences: list[AudienceConfig]) -> list[AudienceConfig]:
        keys = [a.key for a in audiences]
        if len(set(keys)) != len(keys):
            raise ValueError(f"audience keys must be unique: {keys}")
        return audiences

    @model_validator(mode="after")
    def _production_is_complete(self) -> Settings:
        """In production nothing falls back: every missing setting is named at once."""
        if self.deployment != "production":
            return self
        missing = [
            name
            for name, given in (
                ("NEWSLETTER_CRM_DATABASE_URL", self.crm_database_url),
                ("NEWSLETTER_STATE_DATABASE_URL", self.state_database_url),
                ("NEWSLETTER_WEBHOOK_SECRET", self.webhook_secret),
                ("NEWSLETTER_IO_BASE_URI", self.io_base_uri),
            )
            if not given or (isinstance(given, SecretStr) and not given.get_secret_value())
        ]
        missing += [
            f"NEWSLETTER_{provider.upper()}_API_KEY"
            for provider in sorted({a.provider for a in self.audiences})
            if self.uses_sandbox(provider)
        ]
        if missing:
            raise ValueError(
                "NEWSLETTER_DEPLOYMENT=production needs "
                f"{', '.join(missing)} (unset or empty); nothing falls back to the demo CRM, "
                "a local state database, a folder in NEWSLETTER_HOME or the embedded sandbox"
            )
        return self

    def audience(self, key: str) -> AudienceConfig:
        """The audience with this partition key."""
        for audience in self.audiences:
            if audience.key == key:
                return audience
        raise KeyError(f"no audience {key!r} configured (NEWSLETTER_AUDIENCES)")

    def resolved_crm_database_url(self) -> str:
        """The CRM URL, falling back to the embedded demo SQLite file."""
        return self.crm_database_url or f"sqlite:///{(self.home / 'crm.sqlite3').resolve()}"

    def resolved_state_database_url(self) -> str:
        """The state database URL, falling back to a SQLite file in NEWSLETTER_HOME."""
        return self.state_database_url or f"sqlite:///{(self.home / 'state.sqlite3').resolve()}"

    def resolved_io_base_uri(self) -> str:
        """NEWSLETTER_IO_BASE_URI, falling back to the folder `io` in NEWSLETTER_HOME."""
        return self.io_base_uri or str((self.home / "io").resolve())

    def uses_sandbox(self, provider: str) -> bool:
        """True when `provider` has no API key, so the embedded sandbox stands in for it."""
        key = self.mailchimp_api_key if provider == "mailchimp" else self.brevo_api_key
        return key is None or not key.get_secret_value()

    def webhook_url(self, audience: AudienceConfig) -> str | None:
        """Where the audience's provider delivers its webhooks (None without a public URL)."""
        if not self.webhook_public_url:
            return None
        base = self.webhook_public_url.rstrip("/")
        return f"{base}/webhooks/{audience.provider}/{audience.key}"

    def resolved_webhook_secret(self) -> str:
        """NEWSLETTER_WEBHOOK_SECRET; the documented DEMO_WEBHOOK_SECRET only while every
        configured audience is served by the embedded sandbox."""
        secret = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
        real = sorted({a.provider for a in self.audiences if not self.uses_sandbox(a.provider)})
        if real and secret in ("", DEMO_WEBHOOK_SECRET):
            raise ValueError(
                "NEWSLETTER_WEBHOOK_SECRET is required (and must not be the public demo secret): "
                f"the webhook receiver serves audiences of real providers ({', '.join(real)} "
                "API key set)"
            )
        if secret and len(secret) < WEBHOOK_SECRET_MIN_LENGTH:
            raise ValueError(
                f"NEWSLETTER_WEBHOOK_SECRET must have at least {WEBHOOK_SECRET_MIN_LENGTH} "
                "characters"
            )
        return secret or DEMO_WEBHOOK_SECRET

    def upgrades_state_database(self) -> bool:
        """True in the embedded deployment: the state database's schema is upgraded on first
        use. In production `python -m newsletter_pipelines.state upgrade` does it."""
        return self.deployment == "embedded"

    def uses_embedded_crm(self) -> bool:
        """True when no CRM URL is configured and the demo CRM is used."""
        return self.crm_database_url is None
