"""The training run loop: data, progress bar, periodic eval, metrics, figures, checkpoints,
resume, Ctrl-C and non-finite losses. The math of a step is in :mod:`jaxformer.training.steps`.

Metrics are fetched from the device only at logging, eval and checkpoint steps, so the host
keeps dispatching steps while the device computes.
"""
from __future__ import annotations

import contextlib
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxformer.config import Config
from jaxformer.data.batches import TokenData, get_batch, prefetch
from jaxformer.errors import CheckpointError, ConfigError
from jaxformer.model.modules import model_class
from jaxformer.runfolder import append_metrics, read_metrics
from jaxformer.training.checkpoint import checkpoint_steps, restore_checkpoint, save_checkpoint
from jaxformer.training.init_from import InitSource, load_init_params, open_init_source
from jaxformer.training.parallel import (init_program, make_mesh, make_sharded_train_step, process_rows,
                                         put_batch, shard)
from jaxformer.training.run_setup import open_run_folder, prepare_run
from jaxformer.training.steps import (NonFiniteLossError, abstract_params, compute_config, evaluate,
                                      init_params, make_eval_step, make_optimizer, make_train_step,
                                      micro_batches, step_kernels)
from jaxformer.training.stop_flag import StopFlag
from jaxformer.viz.plots import loss_curves

LOSS_FIGURE = "loss.png"


@dataclass
class TrainResult:
    """What :func:`train` returns. ``metrics`` are the records written to ``metrics.jsonl``
    by this call; ``interrupted`` is True when the run stopped early (Ctrl-C / ``stop_after``)."""

    model: Any
    params: dict
    opt_state: Any
    metrics: list
    run_dir: pathlib.Path
    step: int
    config: Config
    tokenizer: Any
    interrupted: bool = False
    final_val_loss: Optional[float] = None
    extra: dict = field(default_factory=dict)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`train` at once (before the loop began, or a second Ctrl-C in
    it). ``step``: the last completed step (None before the run's position was known),
    ``start``: the step this call began from, ``checkpoint``: the latest complete checkpoint
    step (None if there is none), ``run_dir``: the run folder."""

    def __init__(self, run_dir, step: Optional[int], start: Optional[int], checkpoint: Optional[int]):
        super().__init__(f"training in {str(run_dir)!r} interrupted")
        self.run_dir, self.step, self.start, self.checkpoint = pathlib.Path(run_dir), step, start, checkpoint


@dataclass
class _Position:
    """How far a :func:`train` call got (read when Ctrl-C stops it at once)."""

    start: Optional[int] = None
    step: Optional[int] = None
    checkpoint: Optional[int] = None


def _mesh(config: Config):
    """The device mesh of ``config.mesh``, or None for a single device (one device present,
    or every mesh axis set to 1)."""
    m = config.mesh
    if jax.device_count() == 1 or (m.data, m.fsdp, m.tensor) == (1, 1, 1):
        return None
    return make_mesh(m)


def _like(x, sharding):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def train(config: Config, out_dir, *, resume: bool = False, progress: bool = True,
          data_text: Optional[str] = None, stop_after: Optional[int] = None,
          log: Optional[Callable[[str], None]] = None, init_from=None,
          init_step: Optional[int] = None) -> TrainResult:
    """Train ``config`` into the run folder ``out_dir`` and return a :class:`TrainResult`.

    - ``resume``: continue from the folder's latest checkpoint (exactly: data order and
      dropout keys are functions of the step). Without it, a folder that already holds
      checkpoints is an error.
    - ``init_from``: a run folder; the new run starts from its checkpoint (the latest, or
      ``init_step``) instead of a random init, at step 0 with a fresh optimizer state, and
      encodes the data with its tokenizer. ``config.model`` may change only fields that keep
      the parameter shapes (:func:`jaxformer.training.init_from.init_from_config` builds such a
      config); ``init_from.json`` and checkpoint meta record the run and step.
    - ``data_text``: train on this text instead of ``config.data.path``.
    - ``stop_after``: stop after this many steps as if interrupted (checkpoint, then return).
    - Ctrl-C during the steps saves a checkpoint and returns with ``interrupted=True``. Ctrl-C
      before the first step, or a second Ctrl-C, raises :class:`TrainingInterrupted` (a
      ``KeyboardInterrupt`` saying how far the run got); a checkpoint being written when it
      comes is completed first.
    - A non-finite loss raises :class:`NonFiniteLossError` naming the step (with
      ``train.on_nonfinite="stop"``); checkpoints are only written after every loss before
      them was checked, so the last checkpoint is a good one.
    """
    run_dir = pathlib.Path(out_dir)
    if init_from is not None and resume:
        raise ConfigError("init_from and resume=True cannot be combined: init_from starts a new run, "
                          "resume=True continues the one in out_dir")
    if init_step is not None and init_from is None:
        raise ConfigError(f"init_step={init_step!r} needs init_from, the run whose checkpoint it names")
    source = open_init_source(init_from, init_step) if init_from is not None else None
    at = _Position()
    try:
        return _train(config, run_dir, at, resume=resume, progress=progress, data_text=data_text,
                      stop_after=stop_after, log=log, source=source)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:
        if at.checkpoint is None:
            at.checkpoint = (checkpoint_steps(run_dir) or [None])[-1]
        raise TrainingInterrupted(run_dir, at.step, at.start, at.checkpoint) from None


def _train(config: Config, run_dir: pathlib.Path, at: _Position, *, resume: bool, progress: bool,
           data_text: Optional[str], stop_after: Optional[int],
           log: Optional[Callable[[str], None]], source: Optional[InitSource]) -> TrainResult:
    """The run: set up (data, state, run folder), the first eval, then the steps; see :func:`train`."""
    config, tokenizer, data, source, origin = prepare_run(config, run_dir, resume, data_text, source)
    tc = config.train
    restoring = resume and bool(checkpoint_steps(run_dir))
    prog = _program(config, data, source, restoring)
    start = 0
    if restoring:
        start = at.checkpoint = _restore(run_dir, prog)
    main = jax.process_index() == 0   # process 0 alone writes the run folder's files
    open_run_folder(run_dir, config, tokenizer, origin, resume=resume, restoring=restoring,
                    start=start, main=main)
    out = _Reporter(run_dir, config, main=main, progress=progress and main, log=log, elapsed0=prog.elapsed0)
    val_loss = lambda: evaluate(prog.params, config.model, data.val, batch_size=tc.batch_size,  # noqa: E731
                                steps=tc.eval_steps, seed=tc.seed, eval_step=prog.eval_step)
    at.start = start
    if start == 0:
        out.record({"step": 0, "val_loss": val_loss(), "lr": 0.0, "elapsed_s": out.elapsed()})
    at.step, pending, interrupted = start, [], False
    out.open_bar(tc.max_steps, start)
    # Batches are built and copied to the device by a background thread, two steps ahead.
    batches = prefetch(prog.make_batch(s) for s in range(start, tc.max_steps))
    with StopFlag() as stop, contextlib.closing(batches), contextlib.closing(out.bar):
        for s, batch in zip(range(start, tc.max_steps), batches):
            prog.params, prog.opt_state, m = prog.step_fn(prog.params, prog.opt_state, batch, np.int32(s))
            pending.append(m)
            done = at.step = s + 1
            out.bar.update(1)
            interrupted = stop.requested or (stop_after is not None and done >= stop_after)
            do_log, do_eval, do_ckpt = _due(done, tc, interrupted)
            if not do_log:
                continue
            host, pending = jax.device_get(pending), []
            rec = out.log_step(done, host, val_loss if do_eval else None, stop, at.checkpoint)
            if stop.requested and not interrupted:   # Ctrl-C came during the eval: stop now
                interrupted = do_ckpt = True
            if do_ckpt:
                with stop.hold():   # a second Ctrl-C waits until the checkpoint is complete
                    _save(run_dir, done, prog, config, origin, rec["elapsed_s"])
                    at.checkpoint = done
            out.restart_window()
            if interrupted:
                break
    return _finish(out, prog, config, tokenizer, at.step, interrupted)


@dataclass
class _Program:
    """What the steps run: the state (``params``, ``opt_state``), the jitted ``step_fn`` and
    ``eval_step``, ``make_batch(s)`` (the device batch of step ``s``) and the seconds the
    run had taken before this call (``elapsed0``, from the restored checkpoint)."""

    params: Any
    opt_state: Any
    step_fn: Callable
    eval_step: Callable
    make_batch: Callable
    elapsed0: float = 0.0


def _program(config: Config, data: TokenData, source: Optional[InitSource], restoring: bool) -> _Program:
    """The state and steps of a run on one device or on the mesh of ``config.mesh``: a fresh
    init, ``source``'s parameters, or (``restoring``) shapes to restore a checkpoint into."""
    optimizer = make_optimizer(config.train, abstract_params(config))   # the weight-decay mask needs names only
    mesh = _mesh(config)
    # The kernels are chosen once, for the devices the steps run on (see jaxformer.model.kernels).
    kernels = step_kernels(compute_config(config), mesh)
    eval_step = make_eval_step(compute_config(config), kernels)
    if mesh is None:
        return _one_device(config, optimizer, kernels, eval_step, data, source, restoring)
    return _on_mesh(config, optimizer, mesh, eval_step, data, source, restoring)


def _one_device(config, optimizer, kernels, eval_step, data, source, restoring) -> _Program:
    tc, mc = config.train, config.model
    B, T, K = tc.batch_size, mc.max_len, tc.grad_accum
    params = load_init_params(source, mc) if source is not None and not restoring else init_params(config)

    def make_batch(s):
        return jnp.asarray(micro_batches(get_batch(data.train, B, T, seed=tc.seed, step=s), K))
    return _Program(params, optimizer.init(params), make_train_step(config, optimizer, kernels=kernels),
                    eval_step, make_batch)


def _on_mesh(config, optimizer, mesh, eval_step, data, source, restoring) -> _Program:
    """Params, optimizer state and batches created in their shardings on ``mesh``."""
    tc, mc = config.train, config.model
    B, T, K = tc.batch_size, mc.max_len, tc.grad_accum
    init, p_sh, s_sh = init_program(config, optimizer, mesh)
    shapes = jax.eval_shape(init)
    step_fn, _, _, b_sh = make_sharded_train_step(config, optimizer, mesh, *shapes)
    if restoring:   # restored shard by shard: nothing to initialise
        params, opt_state = jax.tree.map(_like, shapes, (p_sh, s_sh))
    elif source is not None:
        params = shard(load_init_params(source, mc, shardings=p_sh), p_sh)
        opt_state = jax.jit(optimizer.init, out_shardings=s_sh)(params)
    else:
        params, opt_state = init()
    shape = (K, B // K, T + 1)
    rows = process_rows(b_sh, shape)   # every row with one process, its own with several

    def make_batch(s):
        rows_KbT1 = micro_batches(get_batch(data.train, B, T, seed=tc.seed, step=s, rows=rows), K)
        return put_batch(rows_KbT1, b_sh, shape)
    return _Program(params, opt_state, step_fn, eval_step, make_batch)


def _restore(run_dir: pathlib.Path, prog: _Program) -> int:
    """Load the latest checkpoint into ``prog`` (shard-wise onto a mesh); its step."""
    ck = restore_checkpoint(run_dir, params_like=prog.params, opt_state_like=prog.opt_state)
    if ck["opt_state"] is None:
        raise CheckpointError(f"checkpoint step {ck['step']} of {str(run_dir)!r} has no optimizer "
                              "state (parameters only): it cannot be resumed")
    prog.params, prog.opt_state = ck["params"], ck["opt_state"]
    prog.elapsed0 = float((ck["meta"] or {}).get("elapsed_s", 0.0))
    return ck["step"]


def _due(done: int, tc, interrupted: bool) -> tuple[bool, bool, bool]:
    """After step ``done``: (log a metrics record, evaluate, save a checkpoint)."""
    last = done == tc.max_steps
    do_eval = done % tc.eval_interval == 0 or last
    do_ckpt = done % tc.checkpoint_interval == 0 or last or interrupted
    return done % tc.log_interval == 0 or do_eval or do_ckpt, do_eval, do_ckpt


def _save(run_dir: pathlib.Path, done: int, prog: _Program, config: Config, origin: Optional[dict],
          elapsed_s: float) -> None:
    tc = config.train
    save_checkpoint(run_dir, done, prog.params, prog.opt_state, keep=tc.keep_checkpoints,
                    extra={"seed": tc.seed, "elapsed_s": elapsed_s,
                           "tokens_seen": done * tc.batch_size * config.model.max_len,
                           "config": config.to_dict(), **({"init_from": origin} if origin else {})})


def _step_record(done: int, host: list, tokens: int, seconds: float) -> dict:
    """The metrics record of step ``done`` from the host copies of the steps since the last one."""
    losses = [float(h["loss"]) for h in host if bool(h["finite"])]
    return {"step": done,
            "train_loss": float(np.mean(losses)) if losses else None,
            "lr": float(host[-1]["lr"]), "grad_norm": float(host[-1]["grad_norm"]),
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}


class _Reporter:
    """What a run shows and writes as it goes: metrics records (``metrics.jsonl``, process 0
    only), the progress bar, messages (``log``, else above the bar) and the loss figure."""

    def __init__(self, run_dir: pathlib.Path, config: Config, *, main: bool, progress: bool,
                 log: Optional[Callable[[str], None]], elapsed0: float):
        self.run_dir, self.main, self.progress, self.tc = run_dir, main, progress, config.train
        self.tokens_per_step = config.train.batch_size * config.model.max_len
        self.say = log or (lambda msg: tqdm.write(msg) if progress else None)
        self.records: list = []
        self.last_val: Optional[float] = None
        self.bar = None
        self.elapsed0, self.t_begin = elapsed0, time.perf_counter()

    def elapsed(self) -> float:
        return round(self.elapsed0 + time.perf_counter() - self.t_begin, 3)

    def record(self, rec: dict) -> None:
        if self.main:
            append_metrics(self.run_dir, rec)
        self.records.append(rec)

    def figure(self) -> None:
        if self.main:
            loss_curves(read_metrics(self.run_dir), path=self.run_dir / LOSS_FIGURE)

    def open_bar(self, total: int, start: int) -> None:
        self.bar = tqdm(total=total, initial=start, disable=not self.progress, unit="step",
                        dynamic_ncols=True, desc="train")
        self.restart_window()

    def restart_window(self) -> None:
        """Tokens per second are measured from here to the next record."""
        self.t_last = time.perf_counter()

    def check_finite(self, done: int, host: list, last_ckpt: Optional[int]) -> None:
        for i, h in enumerate(host):
            if bool(h["finite"]):
                continue
            bad = done - len(host) + i
            if self.tc.on_nonfinite == "stop":
                self.bar.close()
                where = (f"the last good checkpoint is step {last_ckpt} in {self.run_dir}"
                         if last_ckpt is not None else "no checkpoint was written")
                raise NonFiniteLossError(f"loss became non-finite ({float(h['loss'])}) at step {bad}; "
                                         f"training stopped and {where}")
            self.say(f"step {bad}: non-finite loss, update skipped")

    def log_step(self, done: int, host: list, val_loss: Optional[Callable[[], float]], stop: "StopFlag",
                 last_ckpt: Optional[int]) -> dict:
        """Check the losses of the steps since the last record, evaluate (``val_loss``) and
        write the record of step ``done`` (a second Ctrl-C waits until it is written)."""
        now = time.perf_counter()
        self.check_finite(done, host, last_ckpt)
        rec = _step_record(done, host, len(host) * self.tokens_per_step, now - self.t_last)
        if val_loss is not None:
            self.last_val = rec["val_loss"] = val_loss()
        rec["elapsed_s"] = self.elapsed()
        with stop.hold():
            self.record(rec)
        post = {"loss": f"{rec['train_loss']:.4f}" if rec["train_loss"] is not None else "nan",
                "tok/s": f"{rec['tokens_per_s']:.0f}"}
        if self.last_val is not None:
            post["val"] = f"{self.last_val:.4f}"
        self.bar.set_postfix(post, refresh=False)
        if val_loss is not None:
            self.say(f"step {done}: train loss {rec['train_loss']:.4f}, val loss {self.last_val:.4f}")
            self.figure()
        return rec


def _finish(out: _Reporter, prog: _Program, config: Config, tokenizer, step: int,
            interrupted: bool) -> TrainResult:
    out.bar.close()
    if interrupted:
        out.say(f"stopped at step {step}; checkpoint saved, continue with resume=True")
    if out.records:
        out.figure()
    return TrainResult(model=model_class(config.model).from_params(config.model, prog.params), params=prog.params,
                       opt_state=prog.opt_state, metrics=out.records, run_dir=out.run_dir, step=step,
                       config=config, tokenizer=tokenizer, interrupted=interrupted,
                       final_val_loss=out.last_val)
