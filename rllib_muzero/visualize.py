"""Headless pictures of what a MuZero agent did and believed: search trees (Graphviz DOT, PNG where ``dot``
exists; from :mod:`rllib_muzero.tree_dot`), rendered games (GIF) and per-step summary plots (PNG). Files only, no
windows.

Optional dependencies, imported only by the function that needs them (``pip install rllib-muzero[viz]``):
Pillow for GIFs, matplotlib (its Agg canvas, no pyplot, no global backend change) for plots, and the Graphviz
``dot`` program for PNGs of trees (DOT text is always written).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from rllib_muzero.tree_dot import dot_to_png, tree_to_dot

if TYPE_CHECKING:
    from rllib_muzero.play import EvaluationResult, GameTrace

__all__ = ["dot_to_png", "gif_captions", "plot_summary", "resize_frames", "save_gif", "side_by_side", "tree_to_dot"]

def save_gif(
    frames: Sequence[np.ndarray],
    path: str,
    *,
    frame_duration_s: float,
    captions: Sequence[str] | None = None,
) -> str:
    """Writes rgb frames ([H, W, 3] uint8) as a looping GIF with Pillow; returns ``path``.

    ``captions`` (one per frame) are drawn in the top-left corner. GIF writers merge identical consecutive frames;
    a caption that differs per frame (e.g. the step number) keeps every frame, so the file has ``len(frames)``
    frames. GIF timing has a 10 ms resolution.
    """
    from PIL import Image

    if not frames:
        raise ValueError("`frames` is empty: nothing to write")
    images = [Image.fromarray(_captioned(frame, captions[k] if captions is not None else None), mode="RGB")
              for k, frame in enumerate(frames)]
    duration_ms = max(10, int(round(frame_duration_s * 100)) * 10)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def resize_frames(frames: Sequence[np.ndarray], scale: float) -> list[np.ndarray]:
    """The rgb frames resized by ``scale`` (Pillow's area-averaging filter), e.g. for small GIFs; captions are drawn
    afterwards, so their text keeps its size."""
    from PIL import Image

    if scale == 1.0:
        return list(frames)
    out = []
    for frame in frames:
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8)[..., :3], mode="RGB")
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        out.append(np.asarray(image.resize(size, Image.Resampling.BOX)))
    return out


def _captioned(frame: np.ndarray, caption: str | None) -> np.ndarray:
    """The rgb frame ([H, W, 3] uint8) under a white band with ``caption`` in it (Pillow), or the frame as it is
    when ``caption`` is None. The band goes above the frame, not over it: Atari games show their score at the top.
    Every caption, the empty one too, gets the same band, so the frames of a captioned GIF keep one size."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.asarray(frame, dtype=np.uint8)[..., :3], mode="RGB")
    if caption is None:
        return np.asarray(image)
    band = _caption_band_height()
    out = Image.new("RGB", (image.width, image.height + band), (255, 255, 255))
    out.paste(image, (0, band))
    ImageDraw.Draw(out).text((4, 2), caption, fill=(0, 0, 0))
    return np.asarray(out)


@functools.cache
def _caption_band_height() -> int:
    """Pixels of the caption band: the default font's full line height (the same for every caption, so every frame
    of a GIF has the same size) and a margin."""
    from PIL import Image, ImageDraw

    _, _, _, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((4, 2), "Agjy|")
    return int(bottom) + 3


def side_by_side(
    panels: Sequence[tuple[Sequence[np.ndarray], Sequence[str]]], *, gap: int = 4
) -> list[np.ndarray]:
    """One GIF's frames showing several games next to each other (e.g. a random agent beside the trained one).

    ``panels``: per game, its rgb frames and one caption per frame (drawn on that panel). Frame ``k`` of the result
    holds frame ``k`` of every game, left to right with ``gap`` white pixels between them; a game that ended earlier
    shows its last frame (and caption) until the longest one ends, so each game's end stays visible. Captions go
    in a white band above the frames. Panels of different heights are padded with white at the bottom.
    """
    if not panels or any(len(frames) == 0 for frames, _ in panels):
        raise ValueError("`panels` must hold at least one game, each with at least one frame")
    length = max(len(frames) for frames, _ in panels)
    band = _caption_band_height() if any(captions for _, captions in panels) else 0
    height = max(np.asarray(frames[0]).shape[0] for frames, _ in panels) + band
    out = []
    for k in range(length):
        parts = []
        for i, (frames, captions) in enumerate(panels):
            j = min(k, len(frames) - 1)
            # An uncaptioned panel beside captioned ones gets an empty band: its frames stay level with theirs.
            image = _captioned(frames[j], captions[j] if captions else ("" if band else None))
            if image.shape[0] < height:
                image = np.pad(image, ((0, height - image.shape[0]), (0, 0), (0, 0)), constant_values=255)
            if i:
                parts.append(np.full((height, gap, 3), 255, dtype=np.uint8))
            parts.append(image)
        out.append(np.concatenate(parts, axis=1))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Summary plot.


def _per_step(games: Sequence[GameTrace], metric) -> np.ndarray:
    """[G, T_max] of ``metric(game)`` ([T] each), NaN past each game's end."""
    t_max = max((g.length for g in games), default=0)
    out = np.full((len(games), t_max), np.nan)
    for k, g in enumerate(games):
        out[k, :g.length] = metric(g)
    return out


def _nan_stat(values: np.ndarray, fn) -> np.ndarray:
    """Column statistic over the games still playing at each step (NaN where none has a number)."""
    out = np.full(values.shape[1], np.nan)
    for t in range(values.shape[1]):
        column = values[:, t]
        column = column[~np.isnan(column)]
        if column.size:
            out[t] = fn(column)
    return out


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` steps, averaging only the numbers present (edges, NaNs)."""
    window = min(window, x.size)  # np.convolve's "same" output is as long as the longer input
    if window <= 1:
        return x
    kernel = np.ones(window)
    present = ~np.isnan(x)
    total = np.convolve(np.where(present, x, 0.0), kernel, mode="same")
    count = np.convolve(present.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present, total / count, np.nan)


def _run_label(result: EvaluationResult, detailed: bool) -> str:
    o = result.options
    label = f"{result.label} T={o.temperature:g}"
    if o.mode != "mcts":
        label += f" {o.mode}-only"
    if detailed:
        s = result.summary()
        parts = [f"{result.num_simulations} sims"] if o.mode == "mcts" else []
        parts += [f"{s['num_games']} games", f"return {s['return_mean']:.1f}±{s['return_std']:.1f}"]
        if o.apply_mcts_steps > 1:
            parts.append(f"{o.apply_mcts_steps} steps/search")
        if o.use_exploration_noise:
            parts.append("noise")
        label += " (" + ", ".join(parts) + ")"
    return label


def plot_summary(
    results: Sequence[EvaluationResult],
    path: str,
    *,
    include_policy: bool = False,
    include_bounds: bool = False,
    smooth: int = 0,
    detailed_label: bool = False,
) -> str:
    """Per-step summary of one or more evaluations as a PNG (matplotlib's Agg canvas); returns ``path``.

    Panels, each a curve per evaluation, averaged over the games still playing at that step:
    1. return so far (solid) and the model's predicted return, the sum of its predicted rewards (dashed);
    2. actual discounted value to go (solid), the network's value of the state acted from (dashed) and the search
       value (dotted; the lookahead max Q in value-only mode);
    3. search depth;
    4. with ``include_policy``: one panel per evaluation with the mean share of each action (visit shares for the
       search; the prior or lookahead distribution otherwise).

    ``include_bounds`` shades the 25-75 % range across games (needs several games); ``smooth`` > 1 applies a
    centred moving average over that many steps; ``detailed_label`` adds simulations, games and return to the legend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        raise ValueError("`results` is empty: nothing to plot")
    n_rows = 3 + (len(results) if include_policy else 0)
    fig = Figure(figsize=(11, 2.6 * n_rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, 1, sharex=True, squeeze=False)[:, 0]
    colors = [f"C{k % 10}" for k in range(len(results))]
    steps_max = 0

    def curve(ax, values: np.ndarray, color: str, style: str, label: str | None) -> None:
        mean = _smooth(_nan_stat(values, np.mean), smooth)
        if np.isnan(mean).all():
            return
        x = np.arange(mean.size)
        ax.plot(x, mean, style, color=color, label=label, linewidth=1.4)
        if include_bounds and values.shape[0] > 1:
            lo = _smooth(_nan_stat(values, lambda c: np.percentile(c, 25)), smooth)
            hi = _smooth(_nan_stat(values, lambda c: np.percentile(c, 75)), smooth)
            ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0)

    for k, result in enumerate(results):
        games, color = result.games, colors[k]
        label = _run_label(result, detailed_label)
        steps_max = max(steps_max, max((g.length for g in games), default=0))
        # One legend entry per evaluation (its colour); the line styles are explained in each panel's title.
        curve(axes[0], _per_step(games, lambda g: g.returns_so_far()), color, "-", label)
        curve(axes[0], _per_step(games, lambda g: g.predicted_returns()), color, "--", None)
        curve(axes[1], _per_step(games, lambda g, d=result.discount: g.values_to_go(d)), color, "-", label)
        curve(axes[1], _per_step(games, lambda g: g.network_values), color, "--", None)
        curve(axes[1], _per_step(games, lambda g: g.search_values), color, ":", None)
        curve(axes[2], _per_step(games, lambda g: g.search_depths.astype(np.float64)), color, "-", label)
        if include_policy:
            ax = axes[3 + k]
            num_actions = games[0].policies.shape[1] if games else 0
            for a in range(num_actions):
                shares = _per_step(games, lambda g, a=a: g.policies[:, a])
                mean = _smooth(_nan_stat(shares, np.mean), smooth)
                ax.plot(np.arange(mean.size), mean, color=f"C{a % 10}", linewidth=1.2, label=f"action {a}")
                if include_bounds and shares.shape[0] > 1:
                    lo = _smooth(_nan_stat(shares, lambda c: np.percentile(c, 25)), smooth)
                    hi = _smooth(_nan_stat(shares, lambda c: np.percentile(c, 75)), smooth)
                    ax.fill_between(np.arange(mean.size), lo, hi, color=f"C{a % 10}", alpha=0.15, linewidth=0)
            ax.set_ylim(-0.02, 1.02)
            kind = "visit share" if result.options.mode == "mcts" else "action probability"
            ax.set_ylabel(kind)
            ax.set_title(f"policy: {label}", fontsize=9, loc="left")
            if num_actions <= 12:
                ax.legend(fontsize=7, ncol=min(num_actions, 6), loc="upper right")
    axes[0].set_ylabel("return")
    axes[0].set_title("return so far (solid) vs predicted return (dashed)", fontsize=9, loc="left")
    axes[1].set_ylabel("value")
    axes[1].set_title("actual discounted value to go (solid), network value (dashed), search value (dotted)",
                      fontsize=9, loc="left")
    axes[2].set_ylabel("search depth")
    axes[-1].set_xlabel("step")
    for ax in axes[:3]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    if steps_max:
        axes[-1].set_xlim(0, max(steps_max - 1, 1))
    fig.savefig(path, dpi=100)
    return path


def gif_captions(trace: GameTrace, prefix: str = "") -> list[str]:
    """One caption per frame of a rendered game: ``prefix`` (e.g. the agent's name), step number, return so far, and
    the action just played."""
    returns = np.concatenate([[0.0], trace.returns_so_far()])
    captions = [f"{prefix}step 0  return {returns[0]:g}"]
    for t in range(trace.length):
        captions.append(f"{prefix}step {t + 1}  return {returns[t + 1]:g}  action {int(trace.actions[t])}")
    return captions
