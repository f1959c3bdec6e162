"""Rendering of boot scripts from the Jinja2 templates in `boot_templates/`.
Pure: inputs in, text out; nothing is written to disk (scripts are rendered
per request)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from provisioner.core.mac import mac_hexhyp
from provisioner.core.policy import BootDecision, Discover, Exit, Hold

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "boot_templates"
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class BootContext:
    base: str  # http://appliance:port
    mac: str  # canonical colon form
    attempt: int = 1
    token: str | None = None  # one-time token for the agent, if one is booted
    agent_kernel_args: str = ""


@lru_cache(maxsize=4)
def environment(template_dir: Path = TEMPLATE_DIR) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        autoescape=False,
    )


def script_url(base: str, mac: str) -> str:
    return f"{base}/boot/ipxe?mac={mac_hexhyp(mac)}"


def agent_cmdline(ctx: BootContext, mode: str) -> str:
    parts = [
        "initrd=agent.cpio",
        "initrd=modules.cpio",
        f"provisioner.url={ctx.base}",
        f"provisioner.token={ctx.token}",
        f"provisioner.mode={mode}",
        f"BOOTIF=01-{mac_hexhyp(ctx.mac)}",
    ]
    if ctx.agent_kernel_args:
        parts.append(ctx.agent_kernel_args)
    return " ".join(parts)


def render_boot_script(decision: BootDecision, ctx: BootContext, template_dir: Path = TEMPLATE_DIR) -> str:
    env = environment(template_dir)
    common = {
        "base": ctx.base,
        "mac": ctx.mac,
        "reason": decision.reason,
        "script_url": script_url(ctx.base, ctx.mac),
        "attempt": ctx.attempt,
        "max_attempts": MAX_ATTEMPTS,
    }
    match decision:
        case Discover():
            if not ctx.token:
                raise ValueError("a discovery boot needs a token")
            return env.get_template("discover.ipxe.j2").render(cmdline=agent_cmdline(ctx, "discover"), **common)
        case Hold(retry_seconds=retry):
            return env.get_template("hold.ipxe.j2").render(retry_seconds=retry, **common)
        case Exit():
            return env.get_template("exit.ipxe.j2").render(**common)
    raise TypeError(f"no template for {decision!r}")


def render_chain_script(base: str, template_dir: Path = TEMPLATE_DIR) -> str:
    return environment(template_dir).get_template("chain.ipxe.j2").render(base=base)
