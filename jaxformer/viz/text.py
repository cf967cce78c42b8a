"""Legible text in figures, whatever the text and however many tokens there are.

Two jobs, used by every figure in :mod:`jaxformer.viz.plots`:

- **Fonts.** :func:`font_chain` is the per-glyph fallback list given to matplotlib: the
  user's own ``font.family`` first, then whichever CJK and symbol/emoji fonts are installed
  (Noto Sans CJK, Source Han Sans, WenQuanYi, Droid Sans Fallback, Noto Emoji, Symbola, ...).
  :func:`displayable` rewrites every character that no font in the chain can draw as
  ``<U+4F60>``, so a figure never shows an empty box nor logs a ``Glyph ... missing`` warning;
  :func:`make_displayable` does that for every text of a finished figure.
- **Token axes.** :func:`token_axis` puts one label per token on an axis at a fixed, legible
  size (:data:`TOKEN_PT`, never below :data:`MIN_PT` points at the saved size) and, when the
  tokens are too close for that, shows every k-th label (always the first and the last, each
  prefixed by its position) instead of shrinking the font. k is chosen at draw time from the
  axis length, so it is right at any figure size or dpi.

And one job for every view of tokens: :func:`token_labels`, a readable label per token id.
matplotlib is imported by the functions that draw, not with this module.
"""
from __future__ import annotations

import functools
import math
import unicodedata
from typing import List, Optional, Sequence, Tuple

__all__ = ["MIN_PT", "TOKEN_PT", "FALLBACK_FONTS", "font_chain", "displayable", "escape_char",
           "make_displayable", "token_axis", "thinned_positions", "label_texts", "wrap_text",
           "text_width_pt", "token_labels"]

MIN_PT = 7.0            # the smallest text any figure draws, in points at the saved size
TOKEN_PT = 8.0          # token tick labels
MAX_LABEL_CHARS = 14    # longer token labels are cut with an ellipsis

# Tried in this order after the user's own font.family. Only outline (scalable) fonts:
# matplotlib cannot draw colour-bitmap emoji fonts such as Noto Color Emoji.
FALLBACK_FONTS = (
    "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
    "Source Han Sans", "Source Han Sans SC", "Source Han Sans JP",
    "Noto Sans SC", "Noto Sans JP", "Noto Sans TC", "Noto Sans KR",
    "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
    "Microsoft YaHei", "SimHei", "PingFang SC", "Hiragino Sans", "Hiragino Sans GB", "Malgun Gothic",
    "Arial Unicode MS", "Noto Sans", "Noto Sans Symbols", "Noto Sans Symbols 2", "Noto Emoji",
    "Symbola", "Segoe UI Emoji", "Segoe UI Symbol", "DejaVu Sans",
)


def _installed() -> Tuple[int, int]:
    """A cache key that changes when fonts are added (``fontManager.addfont``) or rescanned."""
    from matplotlib import font_manager as fm
    return id(fm.fontManager), len(fm.fontManager.ttflist)


def font_chain() -> Tuple[str, ...]:
    """The font families a figure's text is drawn with, in fallback order: the current
    ``rcParams["font.family"]`` followed by the installed fonts of :data:`FALLBACK_FONTS`.
    Install, for example, Debian's ``fonts-noto-cjk`` (or ``fonts-wqy-microhei``) and
    ``fonts-symbola`` to see Chinese, Japanese, Korean and emoji tokens drawn as glyphs."""
    from matplotlib import rcParams
    base = rcParams["font.family"]
    base = (base,) if isinstance(base, str) else tuple(base)
    return _chain(base, tuple(FALLBACK_FONTS), _installed())


@functools.lru_cache(maxsize=16)
def _chain(base: Tuple[str, ...], fallbacks: Tuple[str, ...], installed) -> Tuple[str, ...]:
    from matplotlib import font_manager as fm
    names = {f.name for f in fm.fontManager.ttflist}
    return base + tuple(f for f in fallbacks if f in names and f not in base)


@functools.lru_cache(maxsize=64)
def _fonts(families: Tuple[str, ...], style: str, weight, stretch, installed) -> tuple:
    """The font files matplotlib draws ``families`` with (one per family, as its per-glyph
    fallback does), loaded once."""
    from matplotlib import font_manager as fm
    from matplotlib.font_manager import FontProperties
    out, seen = [], set()
    for fam in families:
        prop = FontProperties(family=fam, style=style, weight=weight, stretch=stretch)
        try:
            path = fm.fontManager.findfont(prop, fallback_to_default=False)
        except ValueError:
            continue
        key = (str(path), getattr(path, "face_index", 0))
        if key not in seen:
            seen.add(key)
            out.append(fm.get_font(path))
    if not out:
        out.append(fm.get_font(fm.fontManager.findfont(FontProperties())))
    return tuple(out)


@functools.lru_cache(maxsize=65536)
def _has_glyph(fonts: tuple, ch: str) -> bool:
    cp = ord(ch)
    return any(f.get_char_index(cp) != 0 for f in fonts)


def escape_char(ch: str) -> str:
    """How a character no font can draw is written instead: ``<U+4F60>``."""
    return f"<U+{ord(ch):04X}>"


def displayable(text: str, families: Optional[Sequence[str]] = None, *,
                prop=None) -> str:
    """``text`` with every character that no font of ``families`` (default
    :func:`font_chain`) has a glyph for written as ``<U+XXXX>``. Newlines are kept. ``prop``:
    the ``FontProperties`` of the text (style, weight, stretch), default matplotlib's."""
    from matplotlib.font_manager import FontProperties
    if prop is None:
        prop = FontProperties()
    fams = font_chain() if families is None else families
    fams = (fams,) if isinstance(fams, str) else tuple(fams)
    fonts = _fonts(fams, prop.get_style(), prop.get_weight(), prop.get_stretch(), _installed())
    if all(ch == "\n" or _has_glyph(fonts, ch) for ch in text):
        return text
    return "".join(ch if ch == "\n" or _has_glyph(fonts, ch) else escape_char(ch) for ch in text)


def make_displayable(fig) -> None:
    """Rewrite, in place, every text of ``fig`` (titles, axis labels, cell annotations,
    legends) that has characters its own fonts cannot draw (see :func:`displayable`)."""
    from matplotlib.text import Text
    for t in fig.findobj(lambda a: isinstance(a, Text)):
        s = t.get_text()
        if s and not s.isascii():
            fixed = displayable(s, t.get_fontfamily(), prop=t.get_fontproperties())
            if fixed != s:
                t.set_text(fixed)


def text_width_pt(text: str, fontsize: float) -> float:
    """A width estimate in points (about 0.62 em per narrow character, 1 em per wide one)."""
    em = sum(1.0 if unicodedata.east_asian_width(c) in "WF" else 0.62 for c in text)
    return em * fontsize


def wrap_text(text: str, width_pt: float, fontsize: float) -> str:
    """Break ``text`` at spaces (or anywhere, for a word that is too long) into lines of at
    most ``width_pt`` points, estimated by :func:`text_width_pt`."""
    lines: List[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            cand = f"{line} {word}" if line else word
            if text_width_pt(cand, fontsize) <= width_pt or not line:
                line = cand
            else:
                lines.append(line)
                line = word
            while text_width_pt(line, fontsize) > width_pt and len(line) > 1:
                cut = max(1, int(len(line) * width_pt / text_width_pt(line, fontsize)))
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- token axes
def _short(label: str) -> str:
    label = str(label)
    return label if len(label) <= MAX_LABEL_CHARS else label[:MAX_LABEL_CHARS - 1] + "\u2026"


def thinned_positions(n: int, k: int) -> List[int]:
    """Every ``k``-th position of ``range(n)``, always with the first and the last (the one
    before the last dropped when it would sit closer than ``k`` to it)."""
    if n <= 0:
        return []
    ticks = list(range(0, n, max(1, k)))
    if ticks[-1] != n - 1:
        if len(ticks) > 1 and n - 1 - ticks[-1] < k:
            ticks[-1] = n - 1
        elif len(ticks) > 1 or n - 1 >= k:
            ticks.append(n - 1)
    return ticks


def _label_text(labels, i: int, k: int, numbered: bool = True) -> str:
    """The label of token ``i``, prefixed by its position when every ``k``-th is shown (k > 1)."""
    return f"{i} {labels[i]}" if k > 1 and numbered else labels[i]


# matplotlib's Locator and Formatter for token axes are subclassed on first use, so that
# importing this module does not import matplotlib.
@functools.lru_cache(maxsize=1)
def _token_ticks():
    """The ``Locator`` class of token axes."""
    from matplotlib.ticker import Locator

    class _TokenTicks(Locator):
        """One tick per token when they fit at the label size, otherwise every k-th token."""

        def __init__(self, labels: Sequence[str], fontsize: float, along: bool, numbered: bool):
            self.labels = list(labels)
            self.fontsize = fontsize
            self.along = along          # True: the labels' text runs along the axis (x, unrotated)
            self.numbered = numbered    # thinned labels get their position in front
            self.k = 1

        def _pitch_pt(self) -> float:
            ax = self.axis.axes
            a, b = ax.transData.transform([(0.0, 0.0), (1.0, 1.0)])
            i = 0 if self.axis is ax.xaxis else 1
            return abs(b[i] - a[i]) * 72.0 / ax.figure.dpi

        def _need_pt(self, k: int) -> float:
            gap = 0.45 * self.fontsize
            if not self.along:
                return 1.2 * self.fontsize + gap
            shown = (_label_text(self.labels, i, k, self.numbered) for i in thinned_positions(len(self.labels), k))
            return max((text_width_pt(s, self.fontsize) for s in shown), default=0.0) + gap

        def _k(self, pitch: float) -> int:
            n, k = len(self.labels), 1
            while k < n and pitch * k < self._need_pt(k):
                k = max(k + 1, math.ceil(self._need_pt(k) / pitch))
            return min(k, max(n, 1))

        def __call__(self):
            pitch = max(self._pitch_pt(), 1e-9)
            k = self._k(pitch)
            if self.along and k > 1:
                # Side by side they would need thinning: stand them up instead (for good, so the
                # layout's passes agree), which packs them closer.
                self.along = False
                self.axis.set_tick_params(which="major", labelrotation=90)
                k = self._k(pitch)
            self.k = k
            return thinned_positions(len(self.labels), k)

        def tick_values(self, vmin, vmax):
            return self()

    return _TokenTicks


@functools.lru_cache(maxsize=1)
def _token_labels():
    """The ``Formatter`` class of token axes: the label of the token at a tick, prefixed by its
    position when labels are thinned."""
    from matplotlib.ticker import Formatter

    class _TokenLabels(Formatter):
        def __init__(self, labels: Sequence[str], locator, numbered: bool):
            self.labels = list(labels)
            self.locator = locator
            self.numbered = numbered

        def __call__(self, x, pos=None):
            i = int(round(x))
            if not 0 <= i < len(self.labels):
                return ""
            return _label_text(self.labels, i, self.locator.k, self.numbered)

    return _TokenLabels


def token_axis(ax, labels: Optional[Sequence[str]], which: str = "x", *, n: Optional[int] = None,
               fontsize: float = TOKEN_PT, rotation: Optional[float] = None, show: bool = True) -> None:
    """Label the ``which`` (``"x"`` or ``"y"``) axis of ``ax`` with one label per token at
    positions ``0 .. n-1``, legible at any length.

    ``labels``: one string per position (see :func:`token_labels`), or
    ``None`` for the positions themselves. Labels are cut to 14 characters, made drawable
    (:func:`displayable`, ``$`` kept literal) and drawn at ``fontsize`` points (at least
    :data:`MIN_PT`). When they would overlap, every k-th is shown, with the first and the last,
    each prefixed by its position. x labels are horizontal while they fit side by side
    unthinned (single characters, or a few short words), otherwise vertical, unless
    ``rotation`` says. ``show=False`` keeps the ticks but hides the labels (inner panels of a
    grid). ``n`` is the number of positions when ``labels`` is ``None``.
    """
    if which not in ("x", "y"):
        raise ValueError(f"which={which!r} must be 'x' or 'y'")
    numbered = labels is not None
    if labels is None:
        if n is None:
            raise ValueError("token_axis needs labels or n")
        labels = [str(i) for i in range(n)]
    from matplotlib.font_manager import FontProperties
    from matplotlib.ticker import NullLocator
    fontsize = max(float(fontsize), MIN_PT)
    chain = list(font_chain())
    prop = FontProperties(family=chain, size=fontsize)
    shown = [displayable(_short(s), chain, prop=prop).replace("$", r"\$") for s in labels]
    if which == "x" and rotation is None:
        # Upright while they fit side by side (the locator stands them up if they stop fitting).
        rotation = 0 if max(map(len, shown), default=0) <= 3 or sum(len(s) + 1 for s in shown) <= 36 else 90
    along = which == "x" and not rotation
    axis = ax.xaxis if which == "x" else ax.yaxis
    loc = _token_ticks()(shown, fontsize, along, numbered)
    axis.set_major_locator(loc)
    axis.set_major_formatter(_token_labels()(shown, loc, numbered))
    axis.set_minor_locator(NullLocator())
    kw = dict(labelfontfamily=chain, labelsize=fontsize)
    if which == "x":
        kw.update(labelrotation=rotation or 0, labelbottom=show)
    else:
        kw.update(labelleft=show)
    ax.tick_params(axis=which, which="major", **kw)


def label_texts(ax, which: str = "x") -> list:
    """The visible, non-empty tick labels of an axis after a draw (for checks)."""
    labels = ax.get_xticklabels() if which == "x" else ax.get_yticklabels()
    return [t for t in labels if t.get_visible() and t.get_text()]


# ----------------------------------------------------------------------------- token labels
def token_labels(tokenizer, ids: Sequence[int]) -> List[str]:
    """One readable label per token id, as the tokenizer split the text: each id decoded
    alone, spaces shown as ``␣``, newlines as ``↵``, tabs as ``⇥``; a byte that is not a
    whole UTF-8 character alone (byte-level tokenizers) and control characters as ``<c3>``."""
    out = []
    for i in ids:
        i = int(i)
        try:
            s = tokenizer.decode([i])
        except Exception:  # noqa: BLE001 - any tokenizer failure -> show the id
            s = "\ufffd"
        if "\ufffd" in s or s == "":
            s = _raw_label(tokenizer, i)
        s = s.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5")
        out.append("".join(ch if ch.isprintable() else f"<{ord(ch):02x}>" for ch in s))
    return out


def _raw_label(tokenizer, i: int) -> str:
    """A label for a token that is not a whole character on its own."""
    if type(tokenizer).__name__ == "ByteTokenizer" and 0 <= i < 256:
        return f"<{i:02x}>"
    tk = getattr(tokenizer, "tk", None)           # BPETokenizer wraps a tokenizers.Tokenizer
    piece = tk.id_to_token(i) if tk is not None else None
    return piece if piece else f"#{i}"
