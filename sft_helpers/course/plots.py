"""Figures the notebooks show. Each returns a matplotlib Figure already closed in pyplot, so it
appears exactly once where a notebook cell ends with it (not again by the inline backend), and a
script can `savefig` it."""

from __future__ import annotations


def plot_length_histogram(lengths: list[int], title: str = "Conversation length", marks=(50, 95)):
    """Histogram of token lengths with percentile lines (where a max length would cut)."""
    import matplotlib.pyplot as plt

    from .report import length_percentiles

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.hist(lengths, bins=60, color="tab:blue", alpha=0.8)
    for q, v in length_percentiles(lengths, marks).items():
        ax.axvline(v, color="tab:red", ls="--", lw=1)
        ax.text(v, ax.get_ylim()[1] * 0.9, f" p{q}={v}", color="tab:red", fontsize=8)
    ax.set_xlabel("tokens (chat template applied)")
    ax.set_ylabel("conversations")
    ax.set_yscale("log")
    ax.set_title(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def percent(share: float) -> str:
    """A share as a bar label: whole percents, one decimal where rounding would reach 0% or 100% from
    the other side (a 99.6% bar must not read 100%).

    >>> percent(0.996), percent(1.0), percent(0.42), percent(0.003)
    ('99.6%', '100%', '42%', '0.3%')
    """
    text = f"{share:.0%}"
    if (text == "100%" and share < 1) or (text == "0%" and share > 0):
        text = f"{share:.1%}"
    return text


def plot_rates(rates: dict[str, dict[str, float]], title: str = ""):
    """Grouped bars: for each label (e.g. 'cloze', 'chat') a bar per metric it has, values in [0, 1].
    A metric a label does not have gets no bar (not a misleading 0%)."""
    import matplotlib.pyplot as plt

    labels = list(rates)
    metrics = list(dict.fromkeys(m for r in rates.values() for m in r))
    colors = dict(zip(metrics, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(metrics)
    for i, lab in enumerate(labels):
        for j, m in enumerate(metrics):
            if m not in rates[lab]:
                continue
            x, v = i + j * width, rates[lab][m]
            ax.bar(x, v, width, color=colors[m], label=m if m not in ax.get_legend_handles_labels()[1] else None)
            ax.text(x, v + 0.02, percent(v), ha="center", fontsize=8)
    ax.set_xticks([i + width * (len(metrics) - 1) / 2 for i in range(len(labels))], labels)
    if len(labels) > 5:  # long family names would overlap
        ax.tick_params(axis="x", labelrotation=20)
    ax.set_ylim(0, 1.15)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_overfitting(histories: dict[str, list[dict]], title: str = ""):
    """Training loss (dashed) and validation loss (solid) of each run on one axis, the lowest
    validation loss of each run marked: where the curves part is where memorising starts, and the
    mark is the step early stopping keeps. Log y-axis."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, (label, history) in zip(colors, histories.items()):
        train = [(h["step"], h["loss"]) for h in history if "loss" in h]
        val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
        ax.plot(*zip(*train), ls="--", color=color, label=f"{label}: training")
        ax.plot(*zip(*val), marker="o", ms=3, color=color, label=f"{label}: validation")
        best = min(val, key=lambda p: p[1])
        ax.plot(*best, marker="*", ms=14, color=color, mec="black", zorder=5)
        ax.annotate(f"best: step {best[0]}", best, textcoords="offset points", xytext=(4, 8), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss on response tokens")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_batch_layout(rows: list[list[int]], width: int, title: str = ""):
    """A batch as it sits in memory: one horizontal bar per row, each sample a coloured segment
    (lengths from `rows`, in order), the rest of the row up to `width` grey padding."""
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1))
    k = 0
    for r, lengths in enumerate(rows):
        start = 0
        for n in lengths:
            ax.barh(r, n, left=start, color=colors[k % len(colors)], edgecolor="white", height=0.8)
            start, k = start + n, k + 1
        if start < width:
            ax.barh(r, width - start, left=start, color="lightgrey", height=0.8)
    real = sum(map(sum, rows))
    ax.set_title(f"{title} ({real / (width * len(rows)):.0%} real tokens, grey = padding)")
    ax.set_xlabel("token slot")
    ax.set_ylabel("row")
    ax.invert_yaxis()
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_attention_mask(mask, title: str = "who attends to whom"):
    """A boolean `[T, T]` attention mask as a picture: row = query token, column = key token, dark =
    may attend (e.g. `attention.block_diagonal_mask(position_ids)`)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(mask, cmap="Blues", vmin=0, vmax=1.3)
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
    ax.set_title(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_throughput(rows: list[dict], title: str = "padded vs packed vs padding-free"):
    """Two bar charts from `bench.throughput_table` rows: real (non-pad) tokens per second, and peak
    memory during training."""
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, key, label in ((axes[0], "tokens_per_s", "real tokens / s"), (axes[1], "peak_mem_mb", "peak memory (MB)")):
        values = [r[key] for r in rows]
        ax.bar(names, values, color=["tab:grey", "tab:blue", "tab:cyan", "tab:green"][:len(rows)])
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_memory_breakdown(estimates: dict[str, dict], gpus: dict[str, float] | None = None, title: str = ""):
    """Stacked bars of `memory.estimate_memory` results (one bar per label: weights, adapters,
    gradients, optimizer, activations, logits, overhead, in GiB), with dashed lines at GPU sizes."""
    import matplotlib.pyplot as plt

    parts = ["weights", "weight_copies", "adapters", "gradients", "optimizer", "activations", "logits", "overhead"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = list(estimates)
    bottom = [0.0] * len(labels)
    for part in parts:
        values = [estimates[k].get(part, 0.0) for k in labels]
        ax.bar(labels, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:.1f}", ha="center", va="bottom", fontsize=8)
    for name, size in (gpus or {}).items():
        ax.axhline(size, color="grey", ls="--", lw=0.8)
        ax.text(len(labels) - 0.5, size, f" {name}", va="bottom", ha="right", fontsize=7, color="grey")
    ax.set_ylabel("GiB")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_threshold_curve(curves: dict[str, list[dict]] | list[dict], chosen: float | None = None, title: str = ""):
    """Precision and recall against the threshold, from `dedup.threshold_curve` rows (one curve, or a
    dict of labelled curves: one colour per label, precision solid, recall dashed), with a dotted line
    at the `chosen` threshold."""
    import matplotlib.pyplot as plt

    curves = curves if isinstance(curves, dict) else {"": curves}
    fig, ax = plt.subplots(figsize=(7, 3))
    for (label, rows), color in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        t = [r["threshold"] for r in rows]
        ax.plot(t, [r["precision"] for r in rows], color=color, marker="o", ms=3, label=f"{label} precision".strip())
        ax.plot(t, [r["recall"] for r in rows], color=color, ls="--", marker="s", ms=3, label=f"{label} recall".strip())
    if chosen is not None:
        ax.axvline(chosen, color="grey", ls=":", lw=1)
        ax.text(chosen, 0.02, f" {chosen:g}", color="grey", fontsize=8)
    ax.set_xlabel("threshold (pairs scoring at least this are duplicates)")
    ax.set_ylabel("precision / recall")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_lr_sweep(stored: dict[str, list[dict]], live: dict[str, list[dict]] | None = None, title: str = ""):
    """Validation loss against learning rate (log x) for each method: the stored sweep's seeds as
    lines, the live runs as large dots. Where each line bottoms out is that method's best rate.
    Names are "method lr" (`hyperparameters.lr_settings`)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors = dict(zip(("full", "lora"), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    label = {"full": "full fine-tuning", "lora": "LoRA"}
    for method, color in colors.items():
        points = [(float(n.split()[1]), runs) for n, runs in stored.items() if n.split()[0] == method]
        for seed in range(len(points[0][1]) if points else 0):
            ax.plot([lr for lr, _ in points], [runs[seed]["val_loss"] for _, runs in points], color=color,
                    marker="o", ms=3, alpha=0.6, ls="-" if seed == 0 else ":",
                    label=f"{label[method]}, seed {seed} (stored)")
        for name, runs in (live or {}).items():
            if name.split()[0] == method:
                ax.plot(float(name.split()[1]), runs[0]["val_loss"], "o", ms=9, color=color, mec="black")
    ax.plot([], [], "o", ms=9, color="white", mec="black", label="this notebook's runs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss (responses)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_schedules(runs: dict[str, dict], title: str = ""):
    """Training loss of each run (top) over its learning rate (bottom), step by step: a spike in the
    loss lines up with the rate it happened at. `runs` maps a name to a `run_hp` summary."""
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.2), sharex=True, height_ratios=(2, 1))
    for name, run in runs.items():
        top.plot(*zip(*run["train_loss"]), label=name)
        bottom.plot(*zip(*run["lr"]), label=name)
    top.set_yscale("log")
    top.set_ylabel("training loss")
    top.set_title(title)
    top.legend(fontsize=7)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("step")
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_epochs(runs: dict[str, dict], title: str = ""):
    """Training loss (dashed, the mean of each epoch) and validation loss (solid, at each epoch's
    end) on the left, test exact match on the right, for each run (`run_hp` summaries): the epoch
    where the validation loss turns up while the training loss keeps falling is where more epochs
    start to hurt."""
    import matplotlib.pyplot as plt

    from .hyperparameters import train_loss_by_epoch

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    for name, run in runs.items():
        val = run["eval_loss"][1:]  # the first is before training
        line, = left.plot(range(1, len(val) + 1), [v for _, v in val], marker="o", ms=3, label=name)
        train = train_loss_by_epoch(run)
        left.plot(range(1, len(train) + 1), train, ls="--", color=line.get_color(), lw=1)
        right.plot(range(1, len(run["exact_curve"]) + 1), [v for _, v in run["exact_curve"]], marker="o", ms=3,
                   label=name)
    left.set_xlabel("epoch")
    left.set_ylabel("loss (dashed: training)")
    right.set_xlabel("epoch")
    right.set_ylabel("test exact match")
    left.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_data_card(card: dict, title: str = "data card"):
    """Four panels from `data_strategy.data_report`: records per task family, last-reply length per
    family (box plots), duplicates and refusals, and the language of replies."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    fams = list(card["families"])
    axes[0, 0].barh(fams[::-1], [card["families"][f] for f in fams[::-1]], color="tab:blue")
    axes[0, 0].set_title("records per task family", fontsize=9)
    axes[0, 1].boxplot([card["lengths"][f] for f in fams], vert=False, tick_labels=fams, showfliers=False)
    axes[0, 1].invert_yaxis()
    axes[0, 1].set_xscale("log")
    unit = next(iter(card["reply_length"].values()))["unit"]
    axes[0, 1].set_title(f"last-reply length ({unit}, log scale)", fontsize=9)
    n = card["records"] - card["skipped"]
    shares = {"exact duplicates": card["duplicates"]["exact"] / n, "near duplicates": card["duplicates"]["near"] / n,
              "refusals": card["refusal_share"]}
    bars = axes[1, 0].bar(list(shares), list(shares.values()), color=["tab:red", "tab:orange", "tab:grey"])
    for bar, v in zip(bars, shares.values()):
        axes[1, 0].text(bar.get_x() + bar.get_width() / 2, v, percent(v), ha="center", va="bottom", fontsize=8)
    axes[1, 0].set_title("share of records", fontsize=9)
    langs = card["languages"]
    axes[1, 1].bar(list(langs), [v / n for v in langs.values()], color="tab:green")
    for i, v in enumerate(langs.values()):
        axes[1, 1].text(i, v / n, percent(v / n), ha="center", va="bottom", fontsize=8)
    axes[1, 1].set_title("language of replies", fontsize=9)
    fig.suptitle(f"{title}: {card['records']:,} records, {card['skipped']} skipped")
    fig.tight_layout()
    plt.close(fig)
    return fig
