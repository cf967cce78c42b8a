"""``jaxformer attention``: attention maps of a trained run for a text, as an interactive HTML
explorer (``--out FILE.html``) or a PNG figure (``--out FILE.png``)."""
import argparse
import os

HELP = "show where a trained model attends on a text: interactive HTML explorer or PNG figure"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder written by `jaxformer train`")
    p.add_argument("--text", required=True, help="the text to run through the model")
    p.add_argument("--out", required=True,
                   help="output file: .html (interactive explorer) or .png (figure)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--layer", type=int, default=None,
                   help="PNG only: draw all heads of this layer (default: every layer x head, "
                        "or the last layer when that grid would be too large)")
    p.add_argument("--head", type=int, default=None,
                   help="PNG only, needs --layer: one head as a labelled heatmap")


def run(args) -> int:
    from jaxformer.runfolder import check_run_folder

    check_run_folder(args.run)   # a wrong folder answers before JAX starts
    from jaxformer.viz import attention_figures
    from jaxformer.training.checkpoint import load_run
    from jaxformer.errors import ConfigError, DataError
    from jaxformer.viz.explorer import write_attention_explorer
    from jaxformer.interp.activations import attention_maps
    from jaxformer.viz.text import token_labels

    ext = os.path.splitext(args.out)[1].lower()
    if ext not in (".html", ".png"):
        raise ConfigError(f"--out={args.out!r} must end in .html or .png")
    if args.head is not None and args.layer is None:
        raise ConfigError(f"--head={args.head} needs --layer: pass --layer L --head H to draw one "
                          "head, or --layer L alone for all heads of a layer")
    run_ = load_run(args.run, step=args.step)
    cfg = run_.config.model
    ids = run_.tokenizer.encode(args.text)
    if not ids:
        raise DataError("--text is empty after tokenization: give at least one token")
    if len(ids) > cfg.max_len:
        raise DataError(f"--text is {len(ids)} tokens long; the model's context max_len={cfg.max_len}")
    weights_LHTT = attention_maps(run_.model, [ids])[0]
    labels = token_labels(run_.tokenizer, ids)
    L, H = cfg.n_layer, cfg.n_head
    where = f"{os.path.basename(os.path.normpath(str(run_.path)))} step {run_.step}"
    for name, value, limit in (("--layer", args.layer, L), ("--head", args.head, H)):
        if value is not None and not 0 <= value < limit:
            raise ConfigError(f"{name}={value} is out of range: the model has {limit} ({name[2:]}s 0..{limit - 1})")
    if ext == ".html":
        write_attention_explorer(args.out, labels, weights_LHTT, title=f"attention: {where}",
                                 subtitle=f"{L} layers x {H} heads, {len(ids)} tokens")
        drawn = f"an interactive explorer of all {L} layers x {H} heads"
    elif args.layer is not None and args.head is not None:
        attention_figures.attention_heatmap(weights_LHTT[args.layer, args.head], labels,
                                            title=f"{where}: layer {args.layer}, head {args.head}", path=args.out)
        drawn = f"attention of layer {args.layer}, head {args.head}"
    elif args.layer is not None or L * H > 48:
        layer = L - 1 if args.layer is None else args.layer
        attention_figures.head_grid(weights_LHTT[layer], labels, layer=layer,
                                    title=f"{where}: layer {layer}, all {H} heads", path=args.out)
        drawn = f"attention of layer {layer}, all {H} heads" + ("" if args.layer is not None else
                                                   f" (the last layer: {L} x {H} is too many to draw)")
    else:
        attention_figures.layer_head_grid(weights_LHTT, labels,
                                          title=f"{where}: every layer (rows) x head (columns)", path=args.out)
        drawn = f"attention of all layers and heads ({L} x {H})"
    print(f"wrote {args.out}: {drawn}, {len(ids)} tokens")
    if ext == ".png":
        _note_missing_glyphs(labels)
    return 0


def _note_missing_glyphs(labels) -> None:
    """One line on stderr when some token characters have no installed font and were drawn
    as ``<U+XXXX>``, naming the fonts that would draw them."""
    import sys

    from jaxformer.viz.text import displayable

    missing = sorted({ch for s in labels for ch in s if displayable(ch) != ch})
    if missing:
        shown = " ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        print(f"note: {len(missing)} character(s) of the text ({shown}) have no glyph in the installed "
              "fonts and are drawn as <U+XXXX>; install a CJK / emoji font (Debian: fonts-noto-cjk, "
              "fonts-symbola) to see them", file=sys.stderr)
