"""The one LightningCLI configuration of facenas.

``facenas fit/validate/test/predict``, ``facenas probe``, an in-process search trial and a
subprocess or Dask trial all build their trainer, model and data through :class:`FaceNASCLI`,
so a trial trains exactly as ``facenas fit`` would.
"""

from __future__ import annotations

import inspect
import os
import re
import signal
import sys
import types
import zipfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from facenas.core import signals
from facenas.core.errors import Interrupted, UserError, config_file_error, config_files, one_line_parse_error

CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"

# trainer keys with a lower bound, checked when the command line is parsed (Lightning checks
# some of them only when training starts, after the run folder exists, and some never)
TRAINER_MINIMUMS: dict[str, tuple[float, str]] = {
    "max_epochs": (-1, "an integer >= 0, or -1 for no limit"),
    "min_epochs": (0, "an integer >= 0"),
    "max_steps": (-1, "an integer >= 0, or -1 for no limit"),
    "min_steps": (0, "an integer >= 0"),
    "limit_train_batches": (0, "a fraction in [0, 1] or a number of batches >= 0"),
    "limit_val_batches": (0, "a fraction in [0, 1] or a number of batches >= 0"),
    "limit_test_batches": (0, "a fraction in [0, 1] or a number of batches >= 0"),
    "limit_predict_batches": (0, "a fraction in [0, 1] or a number of batches >= 0"),
    "check_val_every_n_epoch": (1, "an integer >= 1, or null"),
    "log_every_n_steps": (0, "an integer >= 0"),
    "accumulate_grad_batches": (1, "an integer >= 1"),
    "num_sanity_val_steps": (-1, "an integer >= 0, or -1 for the whole validation set"),
    "reload_dataloaders_every_n_epochs": (0, "an integer >= 0"),
    "gradient_clip_val": (0, "a number >= 0, or null"),
}


class FaceNASCLI(LightningCLI):
    """LightningCLI over ``model`` and ``data`` in subclass mode, with facenas's defaults:

    * CSV logs and checkpoints under ``runs/<name>/version_<n>/``, where ``<name>`` is the stem
      of the first config file that sets ``model`` (so two models never share a folder);
    * a ``last.ckpt`` rewritten every epoch and a ``best-<epoch>.ckpt`` by the model's
      ``monitor`` (when an evaluation callback is configured); a rich progress bar;
    * ``--ckpt_path last|best`` found across the run's versions, and a checkpoint that cannot be
      read is one :class:`UserError` naming the file;
    * SIGTERM or SIGINT stops the run between two batches; ``fit`` then saves a resumable
      ``last.ckpt`` (``--ckpt_path last`` continues from it) and the command raises
      :class:`facenas.core.errors.Interrupted` (exit code 143 or 130);
    * ``fit`` tests the best checkpoint afterwards (``--test_after_fit``) and prints the final
      metrics (``--metrics_table``);
    * a constructor's ``ValueError`` becomes one :class:`UserError` naming the config key.

    Args:
        args: the command line after ``facenas`` (``["fit", "--config", "x.yaml"]``); with
            ``run=False``, without the subcommand.
        run: run the subcommand (``fit``, ...) or only instantiate (``facenas probe``).
        extra_arguments: adds options of a verb built on this configuration (``probe``).
        **kwargs: passed to :class:`LightningCLI` (``trainer_defaults``, ...).
    """

    def __init__(
        self, args: Sequence[str], run: bool = True, extra_arguments: Callable[[Any], None] | None = None, **kwargs: Any
    ) -> None:
        self._extra_arguments = extra_arguments
        self._instantiate_only = not run
        parser_kwargs = {
            "prog": "facenas",
            "exit_on_error": False,
            "description": "Train and evaluate facenas models with YAML configs.",
        }
        parser_kwargs.update(kwargs.pop("parser_kwargs", {}))
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        self._graceful: GracefulStop | None = None
        try:
            with signals.handle_signals() if run else nullcontext() as outermost:
                try:
                    super().__init__(
                        LightningModule,
                        LightningDataModule,
                        subclass_mode_model=True,
                        subclass_mode_data=True,
                        args=list(args),
                        run=run,
                        parser_kwargs=parser_kwargs,
                        **kwargs,
                    )
                except SIGTERMException:  # Lightning's own SIGTERM handling (a SystemExit with code 0)
                    raise self._interrupted(signal.SIGTERM) from None
                except Interrupted as exc:
                    raise self._interrupted(exc.signum) from None
                if outermost and signals.requested() is not None:  # the signal came as the command finished
                    raise self._interrupted(signals.requested())
        finally:
            if run:  # one command, one W&B run: closed also when the command fails
                finish_loggers(getattr(self, "trainer", None))

    # ------------------------------------------------------------------ parsing

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="fit: when training ends, test the best checkpoint on the data's test split",
        )
        parser.add_argument(
            "--metrics_table", type=bool, default=True, help="print the final metrics as a table when the command ends"
        )
        parser.add_argument(
            "--allow_random_weights",
            type=bool,
            default=False,
            help="predict: run a model that has no trained weights (no ckpt_path, no weights or pretrained "
            "argument); refused otherwise",
        )
        parser.set_defaults(
            {
                "trainer.logger": {"class_path": CSV_LOGGER, "init_args": {"save_dir": "runs", "name": None}},
                "trainer.default_root_dir": "runs",
            }
        )
        if self._extra_arguments is not None:
            self._extra_arguments(parser)
        if self._instantiate_only:
            # a run's saved config.yaml (written by fit) has fit's own keys; a verb that only
            # instantiates its model and data (probe) takes that file as it is
            for key, kind in (("ckpt_path", str | None), ("weights_only", bool | None)):
                if f"--{key}" not in parser._option_string_actions:  # unless the verb has its own
                    help_text = f"fit's {key}: read and not used here"
                    parser.add_argument(f"--{key}", type=kind, default=None, help=help_text)

    def parse_arguments(self, parser, args) -> None:
        for path in config_files(list(args or [])):  # an empty or broken file, by its name
            problem = config_file_error(path)
            if problem is not None:
                raise UserError(problem)
        try:
            super().parse_arguments(parser, args)
        except Exception as exc:  # jsonargparse's ArgumentError and the errors of config files it reads
            if type(exc).__name__ != "ArgumentError":
                raise
            raise UserError(one_line_parse_error(str(exc))) from None
        subcommand = self.config.get("subcommand")
        check_trainer_values((self.config[subcommand] if subcommand else self.config).get("trainer"))
        # LightningCLI reads the hyper-parameters of a ckpt_path file right after parsing
        wanted = self.config[subcommand].get("ckpt_path") if subcommand else None
        if wanted not in (None, "last", "best") and Path(wanted).is_file():
            check_checkpoint(wanted)

    def _section(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._section()
        if self.subcommand == "predict":
            problem = predict_problem(config)
            if problem is not None:
                raise UserError(problem)
        logger = config.get("trainer", {}).get("logger")
        if isinstance(logger, dict) or hasattr(logger, "class_path"):
            init = logger.get("init_args") if isinstance(logger, dict) else logger.init_args
            if logger.get("class_path") == CSV_LOGGER and init is not None and init.get("name") is None:
                init["name"] = run_name(config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except MisconfigurationException as exc:  # the Trainer refused a value: name the trainer key
            message = " ".join(str(exc).split())
            trainer = self._section().get("trainer")
            keys = [k for k in inspect.signature(Trainer.__init__).parameters if k != "self"]
            named = [k for k in keys if re.search(rf"\b{k}\b", message)]
            # else the key whose text value the message quotes (max_time: "`Timer(duration='soon')` ...")
            valued = [k for k in keys if isinstance(v := trainer.get(k), str) and repr(v) in message] if trainer else []
            key = (named or valued or [None])[0]
            raise UserError(f"trainer.{key}: {message}" if key else message) from None
        except ValueError as exc:  # a constructor refused a value: name the key, no traceback
            # jsonargparse wraps the constructor's error in its own; the original is in the chain
            chain: list[BaseException] = [exc]
            while (cause := _cause(chain[-1])) is not None and len(chain) < 10:
                chain.append(cause)
            for error in reversed(chain):
                key = config_key(error)
                if key is not None:
                    raise UserError(f"{key}: {error}") from None
            raise UserError(str(chain[-1])) from None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        configured = trainer_cfg.get("callbacks") or []
        callbacks = list(configured if isinstance(configured, list) else [configured])
        if trainer_cfg.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(RichProgressBar())
        if trainer_cfg.get("enable_checkpointing", True) is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            callbacks.extend(default_checkpoints(self.model, callbacks))
        self._graceful = next((c for c in callbacks if isinstance(c, GracefulStop)), None)
        if self._graceful is None:
            self._graceful = GracefulStop()
            callbacks.append(self._graceful)
        # passing callbacks replaces the configured list, so it carries those too
        return super().instantiate_trainer(**kwargs, callbacks=callbacks)

    def _interrupted(self, signum: int) -> Interrupted:
        """The one-line :class:`Interrupted` of a stopped command: where it stopped and what was saved."""
        name = signal.Signals(signum).name
        trainer = getattr(self, "trainer", None)
        graceful = self._graceful
        if trainer is None or self.subcommand != "fit":
            return Interrupted(signum, f"stopped by {name}")
        where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"
        if graceful is not None and graceful.saved is not None:
            resume = "resume: the same command with --ckpt_path last"
            return Interrupted(signum, f"stopped by {name} {where}; saved {graceful.saved} ({resume})")
        if trainer.global_step == 0:
            return Interrupted(signum, f"stopped by {name} before the first training step; nothing to save")
        last = find_checkpoint(trainer, "last")
        saved = f"the newest checkpoint is {last}" if last is not None else "no checkpoint was saved"
        return Interrupted(signum, f"stopped by {name} {where}; {saved}")

    # ------------------------------------------------------------------ subcommands

    def _resolve_ckpt(self) -> None:
        cfg = self.config_init[self.subcommand]
        wanted = cfg.get("ckpt_path")
        if wanted not in ("last", "best"):
            if wanted is not None and not Path(wanted).is_file():
                raise UserError(f"checkpoint not found: {wanted}")
            if wanted is not None:
                check_checkpoint(wanted)
            return
        found = find_checkpoint(self.trainer, wanted)
        if found is None:
            if self.subcommand == "fit" and wanted == "last":
                print(
                    f"facenas: no last checkpoint under {run_root(self.trainer)}; starting from scratch",
                    file=sys.stderr,
                )
                cfg["ckpt_path"] = None
                return
            raise UserError(f"no '{wanted}' checkpoint found under {run_root(self.trainer)}")
        check_checkpoint(found)
        if self.trainer.is_global_zero:
            print(f"facenas: using {wanted} checkpoint {found}", file=sys.stderr)
        cfg["ckpt_path"] = str(found)

    def before_fit(self) -> None:
        self._resolve_ckpt()

    def _print_once(self) -> None:
        """With facenas's own metrics table, Lightning's results table is not printed as well."""
        cfg = self.config_init[self.subcommand]
        if cfg.get("metrics_table", True) and "verbose" in cfg:
            cfg["verbose"] = False

    def before_validate(self) -> None:
        self._resolve_ckpt()
        self._print_once()

    def before_test(self) -> None:
        self._resolve_ckpt()
        self._print_once()

    def before_predict(self) -> None:
        self._resolve_ckpt()

    def after_fit(self) -> None:
        trainer = self.trainer
        cfg = self.config_init["fit"]
        if cfg.get("test_after_fit") and not trainer.interrupted and has_test_split(self.datamodule):
            best = next(
                (c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor and c.best_model_path), ""
            )
            fitted = dict(trainer.callback_metrics)
            trainer.test(
                self.model,
                datamodule=self.datamodule,
                ckpt_path=best or None,
                weights_only=False,
                verbose=not cfg.get("metrics_table", True),  # the metrics are printed once, below
            )
            trainer.callback_metrics.update({k: v for k, v in fitted.items() if k not in trainer.callback_metrics})
        self._finish("final metrics")

    def after_validate(self) -> None:
        self._finish("validation metrics")

    def after_test(self) -> None:
        self._finish("test metrics")

    def _finish(self, title: str) -> None:
        if self.config_init[self.subcommand].get("metrics_table", True):
            print_metrics(self.trainer, title)


class GracefulStop(Callback):
    """Stops a run between two batches when the process received SIGTERM or SIGINT
    (:mod:`facenas.core.signals`) and, in ``fit``, saves a resumable ``last.ckpt`` first (written to a
    temporary file and renamed, so a kill during the save keeps the previous one).

    With several processes (DDP) it leaves SIGTERM to Lightning, which agrees on it across the
    ranks (every rank then saves through the same collective ``save_checkpoint``), and lets
    SIGINT interrupt at once without a checkpoint.
    """

    def __init__(self) -> None:
        self.saved: Path | None = None
        self._deferred: tuple[int, ...] = ()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()
        self._deferred = (signal.SIGTERM, signal.SIGINT) if trainer.world_size == 1 else (signal.SIGTERM,)
        signals.defer(*self._deferred)

    def _release(self) -> None:
        signals.undefer(*self._deferred)
        self._deferred = ()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()

    def _check(self, trainer: Trainer) -> None:
        if trainer.world_size == 1:
            signals.check()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._check(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._check(trainer)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._check(trainer)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._check(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._release()
        stopped = isinstance(exception, SIGTERMException) or (isinstance(exception, Interrupted) and exception.safe)
        if not stopped or trainer.state.fn != "fit" or trainer.global_step == 0:
            return
        path = last_checkpoint_path(trainer)
        if path is None:  # checkpointing is disabled
            return
        partial = path.with_name(path.name + ".part")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, path)
        self.saved = path


def check_trainer_values(trainer: Any) -> None:
    """Raise one :class:`UserError` naming the key when a trainer value is below its lower bound
    (:data:`TRAINER_MINIMUMS`: ``trainer.max_epochs: must be an integer >= 0, or -1 for no limit,
    got -5``), before anything is instantiated or written."""
    if trainer is None or not hasattr(trainer, "get"):
        return
    for key, (minimum, wanted) in TRAINER_MINIMUMS.items():
        value = trainer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value >= minimum:
            raise UserError(f"trainer.{key}: must be {wanted}, got {value}")


def _init_args(section: Any) -> dict[str, Any]:
    """The ``init_args`` of a ``model`` or ``data`` section of a parsed config, as a dict."""
    args = section.get("init_args") if hasattr(section, "get") else None
    if args is None:
        return {}
    return dict(vars(args)) if not isinstance(args, dict) else dict(args)


def predict_problem(config: Any) -> str | None:
    """Why ``facenas predict`` refuses this parsed config (one line), or None. Refused before
    anything is instantiated or written, so that predict never guesses:

    * a model with no trained weights (no ``ckpt_path``, and none of the ``weights``,
      ``pretrained`` or ``remap_from`` arguments) unless ``allow_random_weights``;
    * data that would fall back to its generated synthetic set (no ``format``, ``domain``,
      ``images`` or ``predict_images``) for a model whose weights come from elsewhere (given
      ``weights`` or ``pretrained``, no ``ckpt_path`` of a run trained on that set): the
      shipped detector's config without ``images``. (Untrained weights on the synthetic test
      split, with ``allow_random_weights``, is a smoke test and allowed.)
    """
    model, data = _init_args(config.get("model")), _init_args(config.get("data"))
    trained = config.get("ckpt_path") is not None
    given = [k for k in ("weights", "pretrained", "remap_from") if model.get(k) is not None]
    if not trained and not given and not config.get("allow_random_weights"):
        return (
            "the model has no trained weights: give --ckpt_path FILE|best|last (or the model's weights or pretrained "
            "argument); --allow_random_weights true predicts with untrained weights"
        )
    sources = ("format", "domain", "images", "predict_images")
    synthetic = any(k.startswith("synthetic_") for k in data) and all(data.get(k) is None for k in sources)
    if synthetic and not trained and given:
        key = "predict_images" if "predict_images" in data else "images"
        what = "face crops" if key == "predict_images" else "photo, folder of photos or video"
        return (
            f"data.init_args.{key} is not set: give the {what} to predict on (without it predict would run on "
            "the data module's generated synthetic images)"
        )
    return None


def last_checkpoint_path(trainer: Trainer) -> Path | None:
    """Where ``last.ckpt`` goes: the folder of the run's ``last`` checkpoint callback (else of
    its first checkpoint callback); None when checkpointing is disabled."""
    callbacks = [c for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)]
    if not callbacks:
        return None
    chosen = next((c for c in callbacks if c.filename == "last"), callbacks[0])
    return Path(chosen.dirpath) / f"last{chosen.FILE_EXTENSION}"


def check_checkpoint(path: str | Path) -> None:
    """Raise one :class:`UserError` naming ``path`` when it is not a readable checkpoint
    (truncated, garbled, or not a checkpoint at all), before Lightning or torch fail on it
    with a traceback. Zip checkpoints (every ``torch.save`` since 1.6) are checked member by
    member against their CRCs, then unpickled without reading the tensors."""
    import torch

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise UserError(f"corrupt checkpoint {path}: {bad} fails its checksum")
            state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        else:
            state = torch.load(path, map_location="cpu", weights_only=False)
    except UserError:
        raise
    except Exception as exc:  # zipfile, pickle and torch all have their own errors for a bad file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"corrupt or unreadable checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict in it)")


class DefinedBestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose best is never an undefined value. Lightning stores a NaN monitor
    value as -inf (mode max) or +inf (min) and keeps it while it has fewer than ``save_top_k``
    checkpoints, so a metric that is undefined at every validation (a group AP without a counted
    face) made the first validated epoch "best", and the test after fit ran on it. Here a NaN
    value saves nothing: with no defined value there is no best checkpoint, and the test after
    fit uses the final weights."""

    def check_monitor_top_k(self, trainer: Trainer, current: Any = None) -> bool:
        if current is not None and bool(current.isnan()):  # metrics are synced: every rank agrees
            return False
        return super().check_monitor_top_k(trainer, current)

    def _generate_state_key(self, **kwargs: Any) -> str:
        # ModelCheckpoint's key, so that checkpoints written before this class resume its state
        return f"ModelCheckpoint{kwargs!r}"


def default_checkpoints(model: LightningModule, callbacks: list[Callback]) -> list[ModelCheckpoint]:
    """``last.ckpt`` every epoch, and ``best-<epoch>.ckpt`` by ``model.monitor`` when a
    configured callback logs metrics (without one, the monitored key would never appear)."""
    from facenas.callbacks.evaluation import MetricCallback

    # "last" is its own unmonitored checkpoint, rewritten every epoch: Lightning's save_last
    # only refreshes it when the monitored metric improves
    # (save_on_train_epoch_end: without it Lightning saves it only on epochs that validate)
    out = [ModelCheckpoint(filename="last", save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True)]
    monitor = getattr(model, "monitor", None)
    if monitor and any(isinstance(c, MetricCallback) for c in callbacks):
        out.append(
            DefinedBestCheckpoint(
                monitor=monitor,
                mode=getattr(model, "monitor_mode", "min"),
                save_top_k=1,
                filename="best-{epoch:03d}",
                auto_insert_metric_name=False,
            )
        )
    return out


def run_name(config: Any) -> str:
    """The run folder's name: the stem of the first config file that sets ``model``, else the
    model class's name in lower case."""
    for path in config.get("config") or []:
        path = Path(str(path))
        try:
            content = yaml.safe_load(path.read_text()) if path.is_file() else None
        except yaml.YAMLError:
            content = None
        if isinstance(content, dict) and "model" in content:
            return path.stem
    model = config.get("model")
    class_path = model.get("class_path") if hasattr(model, "get") else None
    return str(class_path or "model").rpartition(".")[2].lower()


def _cause(exc: BaseException) -> BaseException | None:
    """The error ``exc`` was raised from (``raise ... from None`` ends the chain)."""
    return exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def config_key(exc: BaseException) -> str | None:
    """The config key a constructor error is about: the outermost ``__init__`` of a model,
    data module, callback or logger in the traceback, and the argument of that constructor
    whose name (or else value) the message mentions."""
    message = str(exc)
    for frame, _ in _frames(exc.__traceback__):
        if frame.f_code.co_name != "__init__":
            continue
        owner = frame.f_locals.get("self")
        group = (
            "model"
            if isinstance(owner, LightningModule)
            else "data"
            if isinstance(owner, LightningDataModule)
            else "trainer.callbacks"
            if isinstance(owner, Callback)
            else "trainer.logger"
            if isinstance(owner, Logger)
            else None
        )
        if group is None:
            continue
        code = frame.f_code
        names = [n for n in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount] if n != "self"]
        named = [n for n in names if re.search(rf"\b{re.escape(n)}\b", message)]
        valued = [
            n
            for n in names
            if isinstance(frame.f_locals.get(n), (str, int, float))
            and not isinstance(frame.f_locals.get(n), bool)
            and repr(frame.f_locals[n]) in message
        ]
        # a quoted text value before a number, whose digits may be anywhere in the message (a path)
        valued.sort(key=lambda n: not isinstance(frame.f_locals[n], str))
        arg = (named or valued or [None])[0]
        prefix = f"{group}.init_args" if group in ("model", "data") else f"{group} ({type(owner).__name__})"
        return f"{prefix}.{arg}" if arg else prefix
    return None


def _frames(tb: types.TracebackType | None):
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next


def has_test_split(datamodule: LightningDataModule | None) -> bool:
    """Whether the data module has a non-empty test loader."""
    if datamodule is None or not callable(getattr(datamodule, "test_dataloader", None)):
        return False
    try:
        return len(datamodule.test_dataloader()) > 0
    except (NotImplementedError, TypeError, KeyError, AttributeError):
        return False


def run_root(trainer: Trainer) -> Path:
    """The folder holding a run's versions (``runs/<name>`` for the CSV logger)."""
    logger = trainer.logger
    if logger is not None and getattr(logger, "root_dir", None):
        return Path(logger.root_dir)
    if logger is not None and getattr(logger, "save_dir", None):
        return Path(logger.save_dir)
    return Path(trainer.default_root_dir)


def find_checkpoint(trainer: Trainer, which: str) -> Path | None:
    """The newest ``last*.ckpt`` or ``best*.ckpt`` below the run's folder."""
    root = run_root(trainer)
    if not root.is_dir():
        return None
    found = sorted(root.rglob(f"{which}*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def print_metrics(trainer: Trainer, title: str) -> None:
    """The trainer's last logged metrics as a table (rank 0 only)."""
    if not trainer.is_global_zero or not trainer.callback_metrics:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(trainer.callback_metrics.items()):
        table.add_row(key, f"{float(value):.4f}")
    Console().print(table)


def finish_loggers(trainer: Trainer | None) -> None:
    """Close the runs of a trainer's loggers that keep one open (W&B): one command, one run."""
    if trainer is None:
        return
    for logger in trainer.loggers:
        finish = getattr(logger, "finish", None)
        if callable(finish):
            finish()
