"""The training run loop: data, progress bar, periodic eval, metrics, figures, checkpoints,
resume, Ctrl-C and non-finite losses. The math of a step is in :mod:`jaxformer.training.steps`.

Metrics are fetched from the device only at logging, eval and checkpoint steps, so the host
keeps dispatching steps while the device computes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer.runfolder import (CONFIG_FILE, METRICS_FILE, TOKENIZER_FILE, append_metrics,
                                 truncate_metrics)
from jaxformer.training.checkpoint import (checkpoint_steps, restore_checkpoint, save_checkpoint,
                                           save_run_folder)
from jaxformer.config import Config, load_config
from jaxformer.data.batches import TokenData, encode_corpus, get_batch, prefetch
from jaxformer.data.tokenizers import build_tokenizer, load_tokenizer
from jaxformer.data.texts import load_corpus
from jaxformer.errors import CheckpointError, ConfigError, DataError, RunExistsError
from jaxformer.runfolder import INIT_FILE
from jaxformer.training.init_from import (InitSource, check_init_compatible, load_init_params,
                                          open_init_source, read_init_record, write_init_record)
from jaxformer.viz.plots import loss_curves
from jaxformer.data.shards import TokenShards, is_prepared
from jaxformer.training.steps import (NonFiniteLossError, abstract_params, compute_config, evaluate,
                                      init_params, make_eval_step, make_optimizer, make_train_step,
                                      micro_batches, step_kernels)

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


def resolve_config(config: Config, tokenizer) -> Config:
    """``config`` with ``model.vocab_size`` set to the tokenizer's vocabulary size."""
    if config.model.vocab_size == tokenizer.vocab_size:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=tokenizer.vocab_size))


def prepared_config(config: Config, shards: TokenShards) -> Config:
    """``config`` with the ``data.tokenizer``, ``data.val_fraction`` (and a BPE ``data.vocab_size``) of a folder written by
    :func:`jaxformer.data.prepare` (its tokenizer and split are the data's)."""
    m = shards.manifest
    kind = m["tokenizer"]["type"]
    vocab = shards.tokenizer.vocab_size if kind == "bpe" else config.data.vocab_size
    data = dataclasses.replace(config.data, tokenizer=kind, val_fraction=m["val_fraction"], vocab_size=vocab)
    return config if data == config.data else dataclasses.replace(config, data=data)


def _check_same_run(saved: Config, config: Config, run_dir) -> None:
    for section in ("model", "data"):
        a, b = getattr(saved, section), getattr(config, section)
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                raise CheckpointError(
                    f"cannot resume {str(run_dir)!r}: {section}.{f.name}={getattr(b, f.name)!r} differs "
                    f"from the run's {getattr(a, f.name)!r}")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`train` at once (before the loop began, or a second Ctrl-C in
    it). ``step``: the last completed step (None before the run's position was known),
    ``start``: the step this call began from, ``checkpoint``: the latest complete checkpoint
    step (None if there is none), ``run_dir``: the run folder."""

    def __init__(self, run_dir, step: Optional[int], start: Optional[int], checkpoint: Optional[int]):
        super().__init__(f"training in {str(run_dir)!r} interrupted")
        self.run_dir, self.step, self.start, self.checkpoint = pathlib.Path(run_dir), step, start, checkpoint


class _StopFlag:
    """First Ctrl-C sets ``requested`` (the loop saves and stops); a second one raises
    KeyboardInterrupt, except inside :meth:`hold` (a checkpoint save, a metrics line), where
    it is raised when the block is complete, so nothing is left half-written."""

    def __init__(self):
        self.requested, self._old, self._held, self._deferred = False, None, 0, False

    def __enter__(self):
        # Only the main thread may set handlers; an ignored SIGINT (a background job) stays ignored.
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.requested:
            self.requested = True
        elif self._held:
            self._deferred = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def hold(self):
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if self._deferred and not self._held:
            self._deferred = False
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


@dataclass
class _Position:
    """How far a :func:`train` call got (read when Ctrl-C stops it at once)."""

    start: Optional[int] = None
    step: Optional[int] = None
    checkpoint: Optional[int] = None


def _prepare(config: Config, run_dir: pathlib.Path, resume: bool, data_text: Optional[str],
             source: Optional[InitSource]):
    """Tokenizer, resolved config, token data, the run to take the initial parameters from
    (``source``; on resume, the recorded one when no checkpoint was written yet) and the
    ``init_from`` record of the run (None for a run with a random init). The tokenizer is
    the run's own on resume, ``source``'s for a new run started from it."""
    has_run = (run_dir / CONFIG_FILE).is_file() and (run_dir / TOKENIZER_FILE).is_file()
    if not resume and checkpoint_steps(run_dir):
        raise RunExistsError(run_dir)
    record = source.record() if source is not None else read_init_record(run_dir) if resume and has_run else None
    if source is None and record is not None and not checkpoint_steps(run_dir):
        source = open_init_source(record["run"], record["step"])   # stopped before its first checkpoint
    shards = TokenShards(config.data.path) if data_text is None and is_prepared(config.data.path) else None
    if shards is not None:     # a prepared folder: its shards, tokenizer and split
        config = prepared_config(config, shards)
        text = None
    else:
        text = data_text if data_text is not None else load_corpus(config.data.path)
    if resume and has_run:
        tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
        if record is None:   # a started-from run keeps its source's vocab_size
            config = resolve_config(config, tokenizer)
        _check_same_run(load_config(run_dir / CONFIG_FILE), config, run_dir)
    elif source is not None:
        check_init_compatible(config, source)
        tokenizer = source.tokenizer
    else:
        tokenizer = shards.tokenizer if shards is not None else \
            build_tokenizer(config.data.tokenizer, text, config.data.vocab_size)
        config = resolve_config(config, tokenizer)
    if shards is not None:
        if tokenizer.to_dict() != shards.tokenizer.to_dict():
            whose = f"the run started from init_from={record['run']!r}" if record is not None else "the run"
            raise DataError(f"data.path={config.data.path!r} was prepared with another tokenizer than {whose}'s; "
                            "prepare the data with that tokenizer (tokenizer 'hf:RUN_FOLDER')")
        return config, tokenizer, TokenData(shards.split("train"), shards.split("val")), source, record
    try:
        data = encode_corpus(text, tokenizer, val_fraction=config.data.val_fraction, folder=run_dir / "data")
    except DataError as e:
        if record is None:
            raise
        raise DataError(f"{e}; the data of a run started from init_from={record['run']!r} is encoded "
                        "with that run's tokenizer") from None
    return config, tokenizer, data, source, record


def _mesh(config: Config):
    """The device mesh of ``config.mesh``, or None for a single device (one device present,
    or every mesh axis set to 1)."""
    m = config.mesh
    if jax.device_count() == 1 or (m.data, m.fsdp, m.tensor) == (1, 1, 1):
        return None
    from jaxformer.training.parallel import make_mesh
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
    config, tokenizer, data, source, origin = _prepare(config, run_dir, resume, data_text, source)
    tc, mc = config.train, config.model
    B, T, K = tc.batch_size, mc.max_len, tc.grad_accum
    from tqdm.auto import tqdm

    restoring = resume and bool(checkpoint_steps(run_dir))
    optimizer = make_optimizer(tc, abstract_params(config))   # the weight-decay mask needs names only
    mesh = _mesh(config)
    # The kernels are chosen once, for the devices the steps run on (see jaxformer.model.kernels).
    kernels = step_kernels(compute_config(config), mesh)
    eval_step = make_eval_step(compute_config(config), kernels)
    if mesh is None:
        params = load_init_params(source, mc) if source is not None and not restoring else init_params(config)
        opt_state = optimizer.init(params)
        step_fn = make_train_step(config, optimizer, kernels=kernels)
        make_batch = lambda s: jnp.asarray(micro_batches(get_batch(data.train, B, T, seed=tc.seed, step=s), K))  # noqa: E731
    else:  # several devices: params, optimizer state and batches are created in their shardings
        from jaxformer.training import parallel
        init, p_sh, s_sh = parallel.init_program(config, optimizer, mesh)
        shapes = jax.eval_shape(init)
        step_fn, _, _, b_sh = parallel.make_sharded_train_step(config, optimizer, mesh, *shapes)
        if restoring:   # restored shard by shard below: nothing to initialise
            params, opt_state = jax.tree.map(_like, shapes, (p_sh, s_sh))
        elif source is not None:
            params = parallel.shard(load_init_params(source, mc, shardings=p_sh), p_sh)
            opt_state = jax.jit(optimizer.init, out_shardings=s_sh)(params)
        else:
            params, opt_state = init()
        shape = (K, B // K, T + 1)
        rows = parallel.process_rows(b_sh, shape)   # every row with one process, its own with several
        make_batch = lambda s: parallel.put_batch(  # noqa: E731
            micro_batches(get_batch(data.train, B, T, seed=tc.seed, step=s, rows=rows), K), b_sh, shape)
    start, elapsed0 = 0, 0.0
    if restoring:
        ck = restore_checkpoint(run_dir, params_like=params, opt_state_like=opt_state)
        if ck["opt_state"] is None:
            raise CheckpointError(f"checkpoint step {ck['step']} of {str(run_dir)!r} has no optimizer "
                                  "state (parameters only): it cannot be resumed")
        params, opt_state = ck["params"], ck["opt_state"]  # restored shard-wise onto the mesh
        start = at.checkpoint = ck["step"]
        elapsed0 = float((ck["meta"] or {}).get("elapsed_s", 0.0))
    # In a multi-host job every process trains, and process 0 alone writes the run folder's
    # files (config, tokenizer, metrics, figures); checkpoints are written collectively.
    main = jax.process_index() == 0
    progress = progress and main
    if restoring:
        if main:
            truncate_metrics(run_dir, start)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        if main:
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
    if main:
        save_run_folder(run_dir, config, tokenizer)
        if origin is not None:
            write_init_record(run_dir, origin)
        elif not resume:
            (run_dir / INIT_FILE).unlink(missing_ok=True)   # left by an earlier attempt in this folder
    say = log or (lambda msg: tqdm.write(msg) if progress else None)
    figure = (lambda: loss_curves(all_records(), path=run_dir / LOSS_FIGURE)) if main else (lambda: None)

    def run_eval(p):
        return evaluate(p, mc, data.val, batch_size=B, steps=tc.eval_steps, seed=tc.seed, eval_step=eval_step)

    records: list = []

    def record(rec):
        if main:
            append_metrics(run_dir, rec)
        records.append(rec)

    all_records = lambda: _read_all(run_dir)  # noqa: E731
    last_ckpt = checkpoint_steps(run_dir)[-1] if start else None
    t_begin = time.perf_counter()
    elapsed = lambda: round(elapsed0 + time.perf_counter() - t_begin, 3)  # noqa: E731
    at.start = start
    if start == 0:
        record({"step": 0, "val_loss": run_eval(params), "lr": 0.0, "elapsed_s": elapsed()})
    at.step = start

    pending, interrupted, last_val, completed = [], False, None, start
    n_since, t_last = 0, time.perf_counter()
    bar = tqdm(total=tc.max_steps, initial=start, disable=not progress, unit="step",
               dynamic_ncols=True, desc="train")
    # Batches are built and copied to the device by a background thread, two steps ahead.
    batches = prefetch(make_batch(s) for s in range(start, tc.max_steps))
    with _StopFlag() as stop, contextlib.closing(batches), contextlib.closing(bar):
        for s, batch in zip(range(start, tc.max_steps), batches):
            params, opt_state, m = step_fn(params, opt_state, batch, np.int32(s))
            pending.append(m)
            n_since += 1
            done = completed = at.step = s + 1
            bar.update(1)
            interrupted = stop.requested or (stop_after is not None and done >= stop_after)
            last = done == tc.max_steps
            do_eval = done % tc.eval_interval == 0 or last
            do_ckpt = done % tc.checkpoint_interval == 0 or last or interrupted
            if not (done % tc.log_interval == 0 or do_eval or do_ckpt):
                continue
            host = jax.device_get(pending)
            pending = []
            now = time.perf_counter()
            for i, h in enumerate(host):
                if not bool(h["finite"]):
                    bad = done - len(host) + i
                    if tc.on_nonfinite == "stop":
                        bar.close()
                        where = (f"the last good checkpoint is step {last_ckpt} in {run_dir}"
                                 if last_ckpt is not None else "no checkpoint was written")
                        raise NonFiniteLossError(
                            f"loss became non-finite ({float(h['loss'])}) at step {bad}; training "
                            f"stopped and {where}")
                    say(f"step {bad}: non-finite loss, update skipped")
            losses = [float(h["loss"]) for h in host if bool(h["finite"])]
            rec = {"step": done,
                   "train_loss": float(np.mean(losses)) if losses else None,
                   "lr": float(host[-1]["lr"]), "grad_norm": float(host[-1]["grad_norm"]),
                   "tokens_per_s": round(n_since * B * T / max(now - t_last, 1e-9), 1)}
            if do_eval:
                last_val = rec["val_loss"] = run_eval(params)
            rec["elapsed_s"] = elapsed()
            with stop.hold():
                record(rec)
            post = {"loss": f"{rec['train_loss']:.4f}" if rec["train_loss"] is not None else "nan",
                    "tok/s": f"{rec['tokens_per_s']:.0f}"}
            if last_val is not None:
                post["val"] = f"{last_val:.4f}"
            bar.set_postfix(post, refresh=False)
            if do_eval:
                say(f"step {done}: train loss {rec['train_loss']:.4f}, val loss {last_val:.4f}")
                figure()
            if stop.requested and not interrupted:   # Ctrl-C came during the eval: stop now
                interrupted = do_ckpt = True
            if do_ckpt:
                with stop.hold():   # a second Ctrl-C waits until the checkpoint is complete
                    save_checkpoint(run_dir, done, params, opt_state, keep=tc.keep_checkpoints,
                                    extra={"seed": tc.seed, "elapsed_s": rec["elapsed_s"],
                                           "tokens_seen": done * B * T, "config": config.to_dict(),
                                           **({"init_from": origin} if origin else {})})
                    last_ckpt = at.checkpoint = done
            n_since, t_last = 0, time.perf_counter()
            if interrupted:
                break
    bar.close()
    if interrupted:
        say(f"stopped at step {completed}; checkpoint saved, continue with resume=True")
    if records:
        figure()
    from jaxformer.model.modules import GPT
    model = GPT.from_params(mc, params)
    return TrainResult(model=model, params=params, opt_state=opt_state, metrics=records,
                       run_dir=run_dir, step=completed, config=config, tokenizer=tokenizer,
                       interrupted=interrupted, final_val_loss=last_val)


def _read_all(run_dir):
    from jaxformer.runfolder import read_metrics
    return read_metrics(run_dir)
