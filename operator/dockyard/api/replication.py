"""The `ReplicationPolicy` kind (dockyard.dev/v1alpha1): spec and status models.

A policy copies images between two registries: a Dockyard `Registry` in the cluster
(`registryRef`) or any OCI registry by URL. Field names are the public contract;
`make crds` generates the CRD from these classes (see docs/architecture.md, "Layers").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dockyard.api import cron_grammar
from dockyard.api.patterns import (
    PATTERNS_MAX_ITEMS,
    PLATFORM_PATTERN,
    REPOSITORY_GLOB_MAX_LENGTH,
    SEMVER_RANGE_PATTERN,
    URL_MAX_LENGTH,
    URL_PATTERN,
    glob_error,
    pattern_error,
    platform_error,
    semver_range_error,
)
from dockyard.api.registry import Condition, quantity_value
from dockyard.api.schema import (
    CRON_BACKWARDS_PATTERN,
    CRON_MAX_LENGTH,
    CRON_PATTERN,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    DURATION_MAX_LENGTH,
    DURATION_PATTERN,
    Int64,
    Model,
    Quantity,
    Rule,
    cel_string,
    meta,
    pattern_matches,
)

BANDWIDTH_MESSAGE = ("spec.limits.bandwidth must be at least 1 byte per second, e.g. 50Mi "
                     "(0 or a fraction such as 1m does not mean no limit); omit the field for no limit")
TAG_PATTERN_MAX_LENGTH = 256
"""Tags are at most 128 characters; a /regex/ may be longer."""

# Every string of `spec.filters` is read by the copy engine (dockyard.replication.filters), and
# every one is checked here by that same code, so a policy the engine cannot run is refused when
# it is read (the operator reports Stalled naming the field, `dockyard render` fails) instead of
# killing the Job at start-up without a status:
#
# * semverRange and platforms: a schema `pattern` (the engine's own grammar, which the API server
#   checks too) plus the engine's parser;
# * tag and repository patterns: the engine compiles them with RE2, linear-time whatever the
#   pattern. The API server cannot compile a regex or a glob's character class in a schema check,
#   so admission only bounds their length; the operator refuses one RE2 cannot compile
#   (backreferences such as `/(a)\1/`, lookarounds such as `/(?!rc)/`, a class such as `[z-a]`).


@dataclass(frozen=True)
class RegistryRef(Model):
    DOC = "A Dockyard Registry in the cluster."
    name: str = field(metadata=meta("Registry name.", **DNS_LABEL))
    namespace: str | None = field(
        default=None, metadata=meta("Registry namespace; the policy's namespace when unset.", **DNS_LABEL))


@dataclass(frozen=True)
class SecretRef(Model):
    name: str = field(metadata=meta("Secret name, in the policy's namespace.", **DNS_SUBDOMAIN))


@dataclass(frozen=True)
class Endpoint(Model):
    DOC = "One side of a replication: a Dockyard Registry (registryRef) or any registry by URL."
    RULES = (
        Rule(
            cel="(has(self.registryRef) ? 1 : 0) + (has(self.url) ? 1 : 0) == 1",
            message="exactly one of registryRef or url must be set",
            check=lambda e: (e.registry_ref is not None) + (e.url is not None) == 1,
        ),
    )
    registry_ref: RegistryRef | None = field(default=None, metadata=meta("A Dockyard Registry."))
    url: str | None = field(
        default=None,
        metadata=meta("Registry base URL; http:// means plain HTTP, https:// TLS.", pattern=URL_PATTERN,
                      max_length=URL_MAX_LENGTH))
    secret_ref: SecretRef | None = field(
        default=None,
        metadata=meta("Credentials: a kubernetes.io/dockerconfigjson Secret or a kubernetes.io/basic-auth "
                      "Secret (username, password)."))
    insecure: bool = field(default=False, metadata=meta("Skip TLS certificate verification on https://."))
    ca_secret_ref: SecretRef | None = field(
        default=None, metadata=meta("Secret whose ca.crt verifies the registry's certificate."))


@dataclass(frozen=True)
class RepositoryFilter(Model):
    DOC = "Repository name globs: `*` stays within one path segment, `**` crosses segments."
    include: tuple[str, ...] = field(
        default=(), metadata=meta("Repositories to copy; every repository of the catalog when empty.",
                                  max_items=PATTERNS_MAX_ITEMS, item_max_length=REPOSITORY_GLOB_MAX_LENGTH,
                                  item_check=glob_error))
    exclude: tuple[str, ...] = field(
        default=(), metadata=meta("Repositories never copied.", max_items=PATTERNS_MAX_ITEMS,
                                  item_max_length=REPOSITORY_GLOB_MAX_LENGTH, item_check=glob_error))


@dataclass(frozen=True)
class TagFilter(Model):
    DOC = ("Tag patterns are globs unless written as /regex/ (searched, anchor it yourself). Regexes use "
           "RE2 syntax (no backreferences or lookarounds) and match in linear time.")
    include: tuple[str, ...] = field(
        default=(), metadata=meta("Tags to copy; every tag when empty.", max_items=PATTERNS_MAX_ITEMS,
                                  item_max_length=TAG_PATTERN_MAX_LENGTH, item_check=pattern_error))
    exclude: tuple[str, ...] = field(
        default=(), metadata=meta("Tags never copied.", max_items=PATTERNS_MAX_ITEMS,
                                  item_max_length=TAG_PATTERN_MAX_LENGTH, item_check=pattern_error))
    semver_range: str | None = field(
        default=None,
        metadata=meta("Only tags that are versions inside this range, e.g. `>=1.25.0 <2`, `^1.2`, `~1.2`, "
                      "`1.x`, `1.2 - 1.4`; `||` separates alternatives. Tags that are not versions never match.",
                      max_length=256, pattern=SEMVER_RANGE_PATTERN, check=semver_range_error))


@dataclass(frozen=True)
class Filters(Model):
    DOC = "What to copy."
    repositories: RepositoryFilter = field(default_factory=RepositoryFilter, metadata=meta("Repositories."))
    tags: TagFilter = field(default_factory=TagFilter, metadata=meta("Tags."))
    platforms: tuple[str, ...] = field(
        default=(),
        metadata=meta("Keep only these platforms (os/arch[/variant]) of image indexes; the copied index is "
                      "then a new index with its own digest. Empty keeps indexes byte for byte.",
                      max_items=64, item_max_length=64, item_pattern=PLATFORM_PATTERN, item_check=platform_error))
    latest: int | None = field(
        default=None, metadata=meta("Keep the newest N selected tags per repository: by image creation time "
                                    "when the configs carry one, else by version order.",
                                    minimum=1))


@dataclass(frozen=True)
class DestinationPath(Model):
    DOC = "Rewriting of repository names: stripPrefix is removed first, then prefix is prepended."
    prefix: str = field(
        default="", metadata=meta("Prepended to every destination repository name.", max_length=256))
    strip_prefix: str = field(
        default="", metadata=meta("Removed from source names that start with it.", max_length=256))


@dataclass(frozen=True)
class Trigger(Model):
    DOC = "When the policy runs, besides the dockyard.dev/sync-requested-at annotation."
    RULES = (
        Rule(
            cel=f"!has(self.schedule) || self.schedule.matches({cel_string(CRON_PATTERN)})",
            message=("trigger.schedule must be a cron expression with five fields (minute 0-59, hour 0-23, "
                     "day of month 1-31, month 1-12 or JAN-DEC, day of week 0-6 or SUN-SAT) or a macro "
                     "such as @daily, e.g. '0 */6 * * *'"),
            check=lambda t: t.schedule is None or pattern_matches(CRON_PATTERN, t.schedule),
            field_path=".schedule",
        ),
        Rule(
            cel=f"!has(self.schedule) || !self.schedule.matches({cel_string(CRON_BACKWARDS_PATTERN)})",
            message="trigger.schedule has a range that runs backwards, e.g. '20-10' instead of '10-20'",
            check=lambda t: t.schedule is None or not pattern_matches(CRON_BACKWARDS_PATTERN, t.schedule),
            field_path=".schedule",
        ),
    )
    schedule: str | None = field(
        default=None, metadata=meta("Cron schedule of the CronJob.", max_length=CRON_MAX_LENGTH,
                      check=cron_grammar.schedule_error))
    on_push: bool = field(
        default=False, metadata=meta("Run when a tag is pushed to the source (Dockyard sources only)."))


@dataclass(frozen=True)
class Retry(Model):
    DOC = "Retries of failed requests: exponential backoff from `backoff`, honouring Retry-After."
    max: int = field(default=5, metadata=meta("Retries per request.", minimum=0, maximum=100))
    backoff: str = field(
        default="2s", metadata=meta("First backoff delay.", pattern=DURATION_PATTERN, max_length=DURATION_MAX_LENGTH))


@dataclass(frozen=True)
class Limits(Model):
    DOC = "Politeness and resource limits of one run."
    RULES = (
        Rule(
            # isQuantity: a value the pattern refuses is reported once, by the pattern.
            cel="!has(self.bandwidth) || !isQuantity(self.bandwidth) || "
                "quantity(self.bandwidth).compareTo(quantity('1')) >= 0",
            message=BANDWIDTH_MESSAGE,
            check=lambda limits: limits.bandwidth is None or quantity_value(limits.bandwidth) >= 1,
            field_path=".bandwidth",
        ),
    )
    concurrency: int = field(default=4, metadata=meta("Artifacts copied at once.", minimum=1, maximum=256))
    requests_per_second: int | None = field(
        default=None, metadata=meta("Requests per second to each registry.", minimum=1))
    bandwidth: Quantity | None = field(
        default=None, metadata=meta("Bytes per second moved, e.g. 50Mi; at least 1. Omit it for no limit."))
    retry: Retry = field(default_factory=Retry, metadata=meta("Retries."))


def _same_side(a: Endpoint, b: Endpoint) -> bool:
    if a.url is not None and b.url is not None:
        return a.url == b.url
    if a.registry_ref is not None and b.registry_ref is not None:
        return (a.registry_ref.name, a.registry_ref.namespace or "") == \
            (b.registry_ref.name, b.registry_ref.namespace or "")
    return False


@dataclass(frozen=True)
class ReplicationPolicySpec(Model):
    DOC = "The desired state of a replication policy."
    # `namespace` is a word CEL reserves: rules name the field `__namespace__`. Written plainly it
    # still compiles, but the API server's cost estimate then cannot find the field's maxLength
    # and assumes a string of 3 MiB, which puts the rule 100x over its budget.
    RULES = (
        Rule(
            cel="!(has(self.source.url) && has(self.destination.url) && self.source.url == self.destination.url)"
                " && !(has(self.source.registryRef) && has(self.destination.registryRef) && "
                "self.source.registryRef.name == self.destination.registryRef.name && "
                "(has(self.source.registryRef.__namespace__) ? self.source.registryRef.__namespace__ : '') == "
                "(has(self.destination.registryRef.__namespace__) ? self.destination.registryRef.__namespace__ : ''))",
            message="source and destination must be different registries",
            check=lambda s: not _same_side(s.source, s.destination),
        ),
    )
    source: Endpoint = field(metadata=meta("Where images are copied from."))
    destination: Endpoint = field(metadata=meta("Where images are copied to."))
    filters: Filters = field(default_factory=Filters, metadata=meta("What to copy."))
    destination_path: DestinationPath = field(
        default_factory=DestinationPath, metadata=meta("Repository name rewriting."))
    trigger: Trigger = field(default_factory=Trigger, metadata=meta("When to run."))
    conflict: Literal["overwrite", "skip"] = field(
        default="overwrite", metadata=meta("When a destination tag points elsewhere: overwrite it or skip it."))
    deletion: Literal["none", "mirror"] = field(
        default="none",
        metadata=meta("mirror: delete destination tags the source no longer has (only tags the filters "
                      "select)."))
    referrers: bool = field(
        default=True, metadata=meta("Copy signatures and SBOMs attached through the referrers API or the "
                                    "sha256-<hex> tag fallback."))
    limits: Limits = field(default_factory=Limits, metadata=meta("Concurrency, rate, bandwidth, retries."))
    suspend: bool = field(default=False, metadata=meta("Pause scheduled runs."))


@dataclass(frozen=True)
class LastRun(Model):
    DOC = "The outcome of the latest completed run."
    start_time: str | None = field(default=None, metadata=meta("When the run started (RFC 3339)."))
    completion_time: str | None = field(default=None, metadata=meta("When the run ended (RFC 3339)."))
    result: Literal["Succeeded", "PartiallyFailed", "Failed"] | None = field(
        default=None, metadata=meta("Succeeded, PartiallyFailed (some artifacts failed) or Failed."))
    artifacts_copied: int = field(default=0, metadata=meta("Tags and referrers copied."))
    artifacts_skipped: int = field(default=0, metadata=meta("Tags already up to date or kept by conflict: skip."))
    artifacts_failed: int = field(default=0, metadata=meta("Tags and referrers that failed."))
    artifacts_deleted: int = field(default=0, metadata=meta("Destination tags deleted by deletion: mirror."))
    bytes_copied: Int64 = field(default=Int64(0), metadata=meta("Blob bytes transferred."))
    message: str | None = field(default=None, metadata=meta("Notes of the run, e.g. rewritten indexes."))


@dataclass(frozen=True)
class FailedItem(Model):
    DOC = "An artifact that failed; it is tried first on the next run."
    repository: str = field(metadata=meta("Source repository."))
    tag: str = field(metadata=meta("Source tag (or digest of a referrer)."))
    error: str = field(default="", metadata=meta("Why it failed.", max_length=1024))


@dataclass(frozen=True)
class ReplicationPolicyStatus(Model):
    observed_generation: int | None = field(default=None, metadata=meta("Last generation handled."))
    conditions: tuple[Condition, ...] = field(default=(), metadata=meta("kstatus conditions."))
    last_run: LastRun | None = field(default=None, metadata=meta("The latest completed run."))
    next_run: str | None = field(default=None, metadata=meta("When the schedule runs next (RFC 3339)."))
    failed_items: tuple[FailedItem, ...] = field(
        default=(), metadata=meta("Artifacts that failed in the latest run (at most 100)."))
    last_successful_time: str | None = field(
        default=None, metadata=meta("Completion time of the latest run without failures."))
    last_sync_request: str | None = field(
        default=None, metadata=meta("The last dockyard.dev/sync-requested-at value that started a run.",
                                    max_length=1024))
