"""The CTP_* environment variables: each one's name, meaning and default, read through this module only.

Deployments configure the programs through them (docker-compose.yml, deploy/k8s); every command that a
variable concerns honours it the same way: a value given on the command line or in a config wins, then the
variable, then the default. An empty variable counts as unset. When a variable decides something the
command would otherwise do differently (a Redis URL that turns a pretraining run into one fed by replicas,
a token every RPC now needs), the command says so in one log line that names the variable. (Compose's own
knobs, such as CTP_IMAGE or CTP_RUN_NAME, are interpolated by Compose and documented in .env; no program
reads them.)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import textwrap
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    default: str | None = None
    secret: bool = False  # never shown in a log line

    def value(self) -> str | None:
        """The variable's value; None when unset or empty."""
        return os.environ.get(self.name) or None

    def get(self) -> str | None:
        """The value, else the default."""
        return self.value() or self.default

    def resolve(self, given: str | None, consequence: str) -> str | None:
        """`given` (a flag or config value) when set, else the variable, else the default. When the variable
        decides, one log line names it and says what it does here (`consequence`)."""
        if given:
            return given
        value = self.value()
        if value is None:
            return self.default
        shown = "(set)" if self.secret else redact(value)
        log.info("%s=%s from the environment: %s", self.name, shown, consequence, extra={"variable": self.name})
        return value


REDIS_URL = Variable(
    "CTP_REDIS_URL",
    "the control plane, redis://[user:password@]host:port/db: replicas register there, the trainer, "
    "`ctp-datagen status/pull` and the deploy/bin gates find them there; a `ctp-train pretrain` with it set "
    "takes its samples from those replicas instead of generating them itself",
)
NAMESPACE = Variable("CTP_NAMESPACE", "key prefix of a fleet in Redis: one per fleet sharing a Redis", "ctp")
DATAGEN_TOKEN = Variable(
    "CTP_DATAGEN_TOKEN",
    "shared token of the replicas: a replica with it rejects every RPC that does not carry it, clients send it",
    secret=True,
)
CACHE_DIR = Variable(
    "CTP_CACHE_DIR",
    "folder of the per-video packet indexes (made on a video's first clip), shared by the processes of a host "
    "(default $XDG_CACHE_HOME/ctp-video, else ~/.cache/ctp-video)",
)
GPU_HOST = Variable(
    "CTP_GPU_HOST",
    "name of the host whose GPUs ctp-gpu-slot leases, where replicas of several hosts share one Redis",
)

VARIABLES = (REDIS_URL, NAMESPACE, DATAGEN_TOKEN, CACHE_DIR, GPU_HOST)


def redact(url: str) -> str:
    """The URL with its password replaced, fit for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def describe() -> str:
    """Every variable with its meaning and default: the epilog of the commands' --help."""
    lines = ["environment (a flag or config value wins over the variable; common/env.py):"]
    for v in VARIABLES:
        default = f" (default {v.default})" if v.default else ""
        lines += textwrap.wrap(f"{v.name}: {v.meaning}{default}", 100, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)
