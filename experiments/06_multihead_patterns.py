"""Lab 6: every head of a trained model on a few sentences, one of them not English, with a
short automatic description of each head (previous-token, first-token, self, diffuse or
mixed, from its entropy and mean attended offset), plus an interactive HTML explorer.

    python experiments/06_multihead_patterns.py [--out DIR] [--small] [--run RUN_DIR]

Without --run a tiny byte-level model (3 layers x 4 heads) is trained first.
"""
from __future__ import annotations

import numpy as np

from common import Report, add_run_args, parse, trained_model

SENTENCES = [
    "To be, or not to be, that is the question.",
    "the cat sat on the mat and the dog sat too.",
    "Der Bär schläft unter dem großen Baum.",          # German: ä, ß are two bytes each
]


def main(argv=None) -> dict:
    args = parse(__file__, __doc__.splitlines()[0], argv, add_run_args)
    from jaxformer import attention_maps, plots
    from jaxformer.explorer import write_attention_explorer
    from jaxformer.inspect import describe_heads, head_statistics, token_labels

    report = Report(args.out)
    model, tok, _ = trained_model(args, report, n_layer=3, steps=500)
    cfg = model.config
    L, H = cfg.n_layer, cfg.n_head
    sentences = [s[: cfg.max_len] for s in SENTENCES]
    stats = []
    for k, text in enumerate(sentences):
        ids = tok.encode(text)[: cfg.max_len]
        labels = token_labels(tok, ids)
        w = np.asarray(attention_maps(model, [ids]))[0]               # [L, H, T, T]
        stats.append(head_statistics(w))
        report(f"sentence {k}: {text!r} -> {len(ids)} tokens: {' '.join(labels)}")
        path = args.out / f"sentence{k}_all_heads.png"
        plots.layer_head_grid(w, labels if len(ids) <= 16 else None,
                              title=f"{text!r}: every layer (rows) x head (columns)", path=path)
        report.figure(path)
        path = args.out / f"sentence{k}_layer{L - 1}.png"
        plots.head_grid(w[L - 1], labels, layer=L - 1, path=path)
        report.figure(path)
        path = args.out / f"sentence{k}_explorer.html"
        write_attention_explorer(path, labels, w, title=f"attention explorer: {text}")
        report(f"  interactive explorer: {path}")

    mean = {key: np.mean([s[key] for s in stats], axis=0) for key in stats[0]}
    report("heads (averaged over the sentences):")
    for layer, row in enumerate(describe_heads(mean)):
        for h, desc in enumerate(row):
            report(f"  layer {layer} head {h}: {desc}; weight on previous token {mean['prev'][layer, h]:.2f}, "
                   f"first token {mean['first'][layer, h]:.2f}, itself {mean['self'][layer, h]:.2f}")
    names = [f"L{layer} H{h}" for layer in range(L) for h in range(H)]
    table = np.stack([mean[k].reshape(-1) for k in ("prev", "first", "self", "norm_entropy")], 1)
    path = args.out / "head_summary.png"
    plots.matrix_heatmap(table, xlabels=["previous", "first", "self", "norm. entropy"], ylabels=names,
                         vmin=0, vmax=1, cmap="viridis", xlabel="statistic (mean over query rows)",
                         ylabel="layer, head", cbar_label="value", title="what each head does", path=path)
    report.figure(path)
    report.save()
    return {"descriptions": describe_heads(mean)}


if __name__ == "__main__":
    main()
