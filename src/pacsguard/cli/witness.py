"""`pacsguard witness serve`: run only the witness service of the configuration's `witness:` section."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

from pacsguard.cli.app import App
from pacsguard.cli.common import CONFIG_OPTION, LogLevel, config_path, fail, log_level_option, quiet_libraries

app = App(name="witness", no_args_is_help=True,
          help="Checkpoints held outside the host: be a witness for other pacsguards' logs.")


@app.command("serve")
def serve(config: Path | None = CONFIG_OPTION,
          log_level: LogLevel = log_level_option(LogLevel.info)) -> None:
    """Serve the `witness:` section until Ctrl-C, SIGTERM or a hang-up (SIGHUP on a
    terminal; ignored without one): take the checkpoints of the
    pinned logs, check each extends the one held (RFC 9162 consistency proof), store and
    countersign it."""
    from pacsguard.cli.config import tls_problems
    from pacsguard.cli.serve import show_banner
    from pacsguard.config.loader import ConfigError, load_config
    from pacsguard.runtime.outputs import open_configured_outputs
    from pacsguard.runtime.part import ServiceContext
    from pacsguard.runtime.registry import Registry
    from pacsguard.runtime.services import run_foreground
    from pacsguard.witness.service import WitnessService

    logging.basicConfig(level=log_level.value.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    loaded = load_config(config_path(config), Registry.default().config_model())
    section = loaded.section("witness")
    if not section.enabled:
        raise fail(f"{loaded.path}: witness.enabled is false; set it and list the logs to witness")
    # The TLS files of what this command opens (the witness service, the store's witnesses, the
    # sinks), each problem named by its key, as `config check` and `serve` name them.
    tls = [p for p in tls_problems(loaded) if p.key.split(".", 1)[0] in ("witness", "store", "sinks")]
    if tls:
        raise ConfigError(str(config_path(config)), tls)
    with ExitStack() as stack:
        outputs = open_configured_outputs(stack, loaded)
        assert outputs.store is not None
        service = WitnessService(ServiceContext(loaded, section, outputs.bus, outputs.store))
        run_foreground([service], show_banner, [("store", outputs.store.name, "this witness's own events")])
