"""The report's HTML: what :mod:`.build` computed, as one page in one language.

The page is ``page.html`` with the styles (``report.css``), the script (``report.js``) and the
data inline; pictures are ``img/*.png`` beside it. The script only moves the sliders: each
slider (a *scrubber*) shows frame k of a list of PNGs and writes the k-th entry of each of its
read-outs, all precomputed here. A Content-Security-Policy forbids every request except the
page's own files and ``data:`` URIs, so the page cannot reach the network even by mistake.
"""

from __future__ import annotations

import json
import math
import re
from html import escape
from pathlib import Path
from typing import Any

from .strings import STRINGS

GENERATOR = "ddpmlab report"
HERE = Path(__file__).parent

ABAR = "&alpha;&#x304;"        # alpha-bar
XHAT = "x&#x302;"              # x-hat


def _read(name: str) -> str:
    return (HERE / name).read_text(encoding="utf-8")


class Raw(str):
    """An HTML fragment of ours, put into a placeholder as it is."""


class _Text:
    """The strings of one language; placeholders are filled with escaped values (:class:`Raw`
    ones as they are)."""

    def __init__(self, lang: str) -> None:
        self.s = STRINGS[lang]

    def __call__(self, key: str, **kw: Any) -> Raw:
        return Raw(self.s[key].format(**{k: v if isinstance(v, Raw) else escape(str(v))
                                        for k, v in kw.items()}))


def num(v: float, digits: int = 4) -> str:
    """``v`` with ``digits`` significant digits (scientific below 1e-3 and from 1e4 on)."""
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 1e4 or a < 1e-3:
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def _img(src: str, alt: str, id_: str | None = None, cls: str = "px") -> str:
    ident = f' id="{id_}"' if id_ else ""
    return f'<img{ident} class="{cls}" src="{escape(src)}" alt="{escape(alt)}">'


def _fig(img: str, caption: str) -> str:
    return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def _note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{text}</p>'


def _sub(name: str, t: str) -> str:
    return f"{name}<sub>{t}</sub>"


def _sqrt(inner: str) -> str:
    return f'&radic;<span class="rad">{inner}</span>'


# ============================================================================ the schedule plot
def _schedule_svg(a: list[float], s: list[float], ts: list[int], k0: int, T: int,
                  text: _Text) -> tuple[str, dict[str, dict[str, list[str]]]]:
    """An inline SVG of sqrt(abar_t) and sqrt(1 - abar_t) against t, with a marker at the
    slider's t; returns (svg, the marker's attributes per frame)."""
    W, H, L, R, TOP, B = 420, 210, 40, 12, 12, 36
    pw, ph = W - L - R, H - TOP - B

    def X(t: float) -> float:
        return L + (t / max(1, T - 1)) * pw

    def Y(v: float) -> float:
        return TOP + (1.0 - v) * ph

    stride = max(1, T // 300)
    idx = list(range(0, T, stride)) + ([T - 1] if (T - 1) % stride else [])

    def line(vals: list[float]) -> str:
        return " ".join(f"{X(t):.1f},{Y(vals[t]):.1f}" for t in idx)

    ticks_x = sorted({0, (T - 1) // 2, T - 1})
    parts = [f'<svg id="fwd-curve" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
             f'role="img" aria-label="schedule">',
             f'<rect x="{L}" y="{TOP}" width="{pw}" height="{ph}" class="frame"/>']
    for v in (0.0, 0.5, 1.0):
        parts.append(f'<line x1="{L}" x2="{L + pw}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" '
                     f'class="grid"/><text x="{L - 6}" y="{Y(v) + 4:.1f}" '
                     f'text-anchor="end">{v:g}</text>')
    for t in ticks_x:
        parts.append(f'<text x="{X(t):.1f}" y="{TOP + ph + 16}" text-anchor="middle">{t}</text>')
    parts.append(f'<text x="{L + pw / 2:.1f}" y="{H - 4}" text-anchor="middle">t</text>')
    parts.append(f'<polyline class="ca" points="{line(a)}"/>')
    parts.append(f'<polyline class="cs" points="{line(s)}"/>')
    t0 = ts[k0]
    parts.append(f'<line id="fwd-marker" class="marker" x1="{X(t0):.1f}" x2="{X(t0):.1f}" '
                 f'y1="{TOP}" y2="{TOP + ph}"/>')
    parts.append(f'<circle id="fwd-dot-a" class="da" r="4" cx="{X(t0):.1f}" '
                 f'cy="{Y(a[t0]):.1f}"/>')
    parts.append(f'<circle id="fwd-dot-s" class="ds" r="4" cx="{X(t0):.1f}" '
                 f'cy="{Y(s[t0]):.1f}"/>')
    lx, ly = L + pw - 150, TOP + ph / 2 - 10
    parts.append(f'<line class="ca" x1="{lx}" x2="{lx + 18}" y1="{ly}" y2="{ly}"/>'
                 f'<text x="{lx + 24}" y="{ly + 4}">&radic;{ABAR}<tspan baseline-shift="sub" '
                 f'font-size="9">t</tspan> {text("img_coef")}</text>')
    parts.append(f'<line class="cs" x1="{lx}" x2="{lx + 18}" y1="{ly + 18}" y2="{ly + 18}"/>'
                 f'<text x="{lx + 24}" y="{ly + 22}">&radic;(1&minus;{ABAR}<tspan '
                 f'baseline-shift="sub" font-size="9">t</tspan>) {text("noise_coef")}</text>')
    parts.append("</svg>")
    xs = [f"{X(t):.1f}" for t in ts]
    attrs = {"fwd-marker": {"x1": xs, "x2": xs},
             "fwd-dot-a": {"cx": xs, "cy": [f"{Y(a[t]):.1f}" for t in ts]},
             "fwd-dot-s": {"cx": xs, "cy": [f"{Y(s[t]):.1f}" for t in ts]}}
    return "".join(parts), attrs


# ============================================================================ sections
def _guidance(d: dict, text: _Text) -> Raw:
    return text("v_guidance", w=f"{d['guidance']:g}") if d["conditional"] else Raw("")


def _header(d: dict, text: _Text) -> str:
    how = (text("v_conditional", k=d["classes"]) if d["conditional"]
           else text("v_unconditional"))
    facts = [("k_data", escape(d["data"])),
             ("k_model", text("v_model", params=f"{d['params'] / 1e6:.2f}", how=how)),
             ("k_diffusion", text("v_diffusion", schedule=d["schedule"], T=d["T"],
                                  prediction=d["prediction"])),
             ("k_sampler", text("v_sampler", sampler=d["sampler"], steps=d["steps"],
                                guidance=_guidance(d, text))),
             ("k_checkpoint", text("v_checkpoint", path=d["checkpoint"], step=d["step"]))]
    rows = "".join(f"<dt>{text(k)}</dt><dd>{v}</dd>" for k, v in facts)
    nav = "".join(f'<a href="#{sec}">{text("nav_" + sec)}</a>'
                  for sec in ("forward", "reverse", "objective", "training", "sampling",
                              "evaluation", "editing"))
    return (f'<header><h1>{text("title", run=Path(d["run"]).name or d["run"])}</h1>'
            f'<p class="intro">{text("intro", run=d["run"])}</p><dl class="facts">{rows}</dl>'
            f"<nav>{nav}</nav></header>")


def _forward(d: dict, text: _Text, scrub: dict) -> str:
    head = f'<section id="forward"><h2>{text("forward_h")}</h2>'
    formula = (f'<div class="formula">{_sub("x", "t")} = {_sqrt(_sub(ABAR, "t"))} '
               f'{_sub("x", "0")} + {_sqrt("1 &minus; " + _sub(ABAR, "t"))} &epsilon;, '
               f'&ensp; &epsilon; ~ N(0, I), &ensp; {_sub(ABAR, "t")} = '
               f'&prod;<sub>s&le;t</sub> (1 &minus; &beta;<sub>s</sub>), &ensp; '
               f'SNR<sub>t</sub> = {_sub(ABAR, "t")} / (1 &minus; {_sub(ABAR, "t")})</div>')
    f = d.get("forward")
    if f is None:
        return (head + f"<p>{text('forward_p', n=0)}</p>" + formula
                + _note(text("data_missing", why=d["data_error"]), "missing") + "</section>")
    ts, k0 = f["ts"], f["start"]
    svg, attrs = _schedule_svg(f["curve_a"], f["curve_s"], ts, k0, d["T"], text)
    scrub["forward"] = {
        "image": "fwd-img", "frames": f["frames"],
        "fields": {"fwd-t": [str(t) for t in ts],
                   "fwd-a": [num(v) for v in f["sqrt_ab"]],
                   "fwd-s": [num(v) for v in f["sqrt_1mab"]],
                   "fwd-snr": [num(v) for v in f["snr"]],
                   "fwd-logsnr": [num(math.log(v)) if v > 0 else "-inf" for v in f["snr"]]},
        "attrs": attrs, "start": k0}
    fl = scrub["forward"]["fields"]
    readout = (
        '<table class="readout">'
        f'<tr><th>{_sqrt(_sub(ABAR, "t"))} <span class="what">{text("img_coef")}</span></th>'
        f'<td id="fwd-a">{fl["fwd-a"][k0]}</td></tr>'
        f'<tr><th>{_sqrt("1 &minus; " + _sub(ABAR, "t"))} <span class="what">'
        f'{text("noise_coef")}</span></th><td id="fwd-s">{fl["fwd-s"][k0]}</td></tr>'
        f'<tr><th>SNR<sub>t</sub> <span class="what">{text("snr")}</span></th>'
        f'<td id="fwd-snr">{fl["fwd-snr"][k0]}</td></tr>'
        f'<tr><th>log SNR<sub>t</sub></th><td id="fwd-logsnr">{fl["fwd-logsnr"][k0]}</td></tr>'
        "</table>")
    body = (
        f"<p>{text('forward_p', n=f['n'])}</p>{formula}"
        f'<div class="row">{_fig(_img(f["x0"], "x0"), text("forward_x0"))}'
        f'{_fig(_img(f["eps"], "eps"), text("forward_eps"))}</div>'
        f'<div class="scrubber"><label class="slider">{text("t_label")} = '
        f'<b id="fwd-t">{ts[k0]}</b> <input type="range" class="scrub" id="fwd-slider" '
        f'data-scrubber="forward" min="0" max="{len(ts) - 1}" step="1" value="{k0}" '
        f'aria-label="t"></label>'
        f'<div class="row">{_fig(_img(f["frames"][k0], "x_t", "fwd-img"), text("forward_xt"))}'
        f'<div>{readout}<figure class="curve">{svg}<figcaption>'
        f'{text("forward_curve", schedule=d["schedule"])}</figcaption></figure></div></div></div>')
    return head + body + "</section>"


def _x0_formula(prediction: str) -> str:
    if prediction == "eps":
        return (f"{_sub(XHAT, '0')} = ({_sub('x', 't')} &minus; {_sqrt('1 &minus; ' + _sub(ABAR, 't'))}"
                f" &epsilon;&#x302;<sub>&theta;</sub>({_sub('x', 't')}, t)) / "
                f"{_sqrt(_sub(ABAR, 't'))}")
    if prediction == "v":
        return (f"{_sub(XHAT, '0')} = {_sqrt(_sub(ABAR, 't'))} {_sub('x', 't')} &minus; "
                f"{_sqrt('1 &minus; ' + _sub(ABAR, 't'))} v&#x302;<sub>&theta;</sub>"
                f"({_sub('x', 't')}, t)")
    return f"{_sub(XHAT, '0')} = f<sub>&theta;</sub>({_sub('x', 't')}, t)"


def _scrubber(key: str, prefix: str, chain: dict, caption: str, text: _Text,
              noise_line: str | None, scrub: dict) -> str:
    k0 = chain["start"]
    last = len(chain["frames"]) - 1
    t_vals = [t if t is not None else text("output") for t in chain["t"]]
    fields = {f"{prefix}-step": chain["step"], f"{prefix}-t": t_vals}
    noise_html = ""
    if chain["sigma"] is not None:
        fields[f"{prefix}-sigma"] = [
            "\u2014" if v is None else (text("no_noise_last") if v == "0" else v)
            for v in chain["sigma"]]
        noise_html = (f'<div class="readline">{text("noise_added")}: <b id="{prefix}-sigma">'
                      f'{escape(fields[prefix + "-sigma"][k0])}</b></div>')
    elif noise_line:
        noise_html = f'<div class="readline">{noise_line}</div>'
    scrub[key] = {"image": f"{prefix}-img", "frames": chain["frames"], "fields": fields,
                  "start": k0}
    return (
        f'<div class="scrubber"><h3>{caption}</h3>'
        f'<label class="slider">{text("step_label")} <b id="{prefix}-step">'
        f'{escape(chain["step"][k0])}</b> <input type="range" class="scrub" id="{prefix}-slider" '
        f'data-scrubber="{key}" min="0" max="{last}" step="1" value="{k0}" '
        f'aria-label="{escape(key)}"></label> <button type="button" class="play" '
        f'data-scrubber="{key}" data-play="{text("play")}" data-pause="{text("pause")}">'
        f'{text("play")}</button>'
        f'<div class="readline">t = <b id="{prefix}-t">{escape(t_vals[k0])}</b></div>'
        f"{noise_html}"
        f'{_fig(_img(chain["frames"][k0], key, f"{prefix}-img"), text("rows_note"))}</div>')


def _reverse(d: dict, text: _Text, scrub: dict) -> str:
    guidance = _guidance(d, text)
    formula = (f'<div class="formula">{_x0_formula(d["prediction"])}<br>'
               f'{_sub("x", "t&minus;1")} = &mu;&#x303;<sub>t</sub>({_sub("x", "t")}, '
               f'{_sub(XHAT, "0")}) + &sigma;<sub>t</sub> z, &ensp; z ~ N(0, I), &ensp; '
               f'{text("last_step_z")}</div>')
    run, anc = d["chain_run"], d["chain_ddpm"]
    stoch, eta = run["stochastic"], run.get("eta")
    if stoch == "no" or eta == 0:
        line = text("deterministic") + ("" if eta is None else " (eta = 0)")
    else:
        line = text("stochastic", what=stoch) + ("" if eta is None else f" (eta = {eta:g})")
    return (f'<section id="reverse"><h2>{text("reverse_h")}</h2>'
            f'<p>{text("reverse_p", n=d["chain_n"], T=d["T"])}</p>{formula}'
            + _scrubber("chain-run", "run", run,
                        text("reverse_run", sampler=d["sampler"], steps=d["steps"],
                             guidance=guidance), text, line, scrub)
            + _scrubber("chain-ddpm", "ddpm", anc,
                        text("reverse_ddpm", T=d["T"], guidance=guidance,
                             k=len(anc["frames"]), states=anc["states"]), text, None, scrub)
            + "</section>")


def _objective(d: dict, text: _Text) -> str:
    formula = (f'<div class="formula">&minus;log p<sub>&theta;</sub>({_sub("x", "0")}) &le; '
               f'L<sub>T</sub> + &sum;<sub>t&gt;1</sub> L<sub>t&minus;1</sub> + L<sub>0</sub>,'
               f'<br>L<sub>T</sub> = KL(q({_sub("x", "T")} | {_sub("x", "0")}) &Vert; N(0, I)),'
               f' &ensp; L<sub>t&minus;1</sub> = KL(q({_sub("x", "t&minus;1")} | '
               f'{_sub("x", "t")}, {_sub("x", "0")}) &Vert; p<sub>&theta;</sub>'
               f'({_sub("x", "t&minus;1")} | {_sub("x", "t")})), &ensp; L<sub>0</sub> = '
               f'&minus;log p<sub>&theta;</sub>({_sub("x", "0")} | {_sub("x", "1")}),'
               f'<br>bits/dim = (L<sub>T</sub> + &sum; L<sub>t&minus;1</sub> + L<sub>0</sub>) '
               f'/ (D ln 2)</div>')
    head = f'<section id="objective"><h2>{text("objective_h")}</h2>'
    o = d.get("objective")
    if o is None:
        why = (text("data_missing", why=d["data_error"]) if d["data_error"] else
               text("objective_undefined", objective=d["objective_name"]))
        return head + formula + _note(why, "missing") + "</section>"
    ev = None
    res = d["eval"]["results"]
    if res is not None and not d["eval"]["summary_only"] and res.get("bits_per_dim"):
        ev = res["bits_per_dim"]
    cols = [text("this_report") + "<br><small>" + text("images_timesteps", n=o["n"], k=o["k"])
            + "</small>"]
    if ev:
        cols.append(text("eval_column") + "<br><small>" + text(
            "images_timesteps", n=ev.get("images", "?"),
            k=ev.get("timesteps_evaluated", "?")) + "</small>")
    rows = []
    for key, name in (("prior", "prior"), ("diffusion", "diffusion_terms"),
                      ("decoder", "decoder"), ("total", "total")):
        cells = f"<td>{num(o[key])}</td>"
        if ev:
            cells += f"<td>{num(float(ev[key]))}</td>"
        cls = ' class="total"' if key == "total" else ""
        rows.append(f"<tr{cls}><th>{text(name)}</th>{cells}</tr>")
    table = (f'<table class="numbers"><tr><th>{text("term")}</th>'
             + "".join(f"<th>{c}</th>" for c in cols) + "</tr>" + "".join(rows) + "</table>")
    strip = "".join(_fig(_img(src, "x0"), num(v, 3))
                    for src, v in zip(o["images"], o["per_image"], strict=True))
    notes = text("objective_note_cond") if d["conditional"] else ""
    if not o["separate"]:
        notes += " " + text("objective_train_only")
    return (head + f'<p>{text("objective_p", D=o["D"], n=o["n"], k=o["k"], T=d["T"])} {notes}'
            f"</p>{formula}"
            f'<div class="row">{_img(o["plot"], "L_t", cls="plot")}'
            f"{table}</div><h3>{text('objective_heldout')}</h3>"
            f'<div class="row strip">{strip}</div></section>')


def _training(d: dict, text: _Text) -> str:
    pred = d["prediction"]
    target = {"eps": "&epsilon;", "v": "v", "x0": _sub("x", "0")}.get(pred, pred)
    net = {"eps": "&epsilon;<sub>&theta;</sub>", "v": "v<sub>&theta;</sub>",
           "x0": f"{_sub(XHAT, '0')}"}.get(pred, "f<sub>&theta;</sub>")
    formula = (f'<div class="formula">L<sub>simple</sub> = E<sub>t, {_sub("x", "0")}, '
               f'&epsilon;</sub> &Vert; {target} &minus; {net}({_sqrt(_sub(ABAR, "t"))} '
               f'{_sub("x", "0")} + {_sqrt("1 &minus; " + _sub(ABAR, "t"))} &epsilon;, t) '
               f'&Vert;&sup2;'
               + (f', &ensp; v = {_sqrt(_sub(ABAR, "t"))} &epsilon; &minus; '
                  f'{_sqrt("1 &minus; " + _sub(ABAR, "t"))} {_sub("x", "0")}'
                  if pred == "v" else "")
               + f'<br>&theta;<sub>EMA</sub> &larr; {d["ema"]:g} &theta;<sub>EMA</sub> + '
               f'{1 - d["ema"]:.3g} &theta;</div>')
    tr, loss = d["training"], d["loss"]
    ema = f"{d['ema']:g}"
    parts = [f'<section id="training"><h2>{text("training_h")}</h2>'
             f'<p>{text("training_p", prediction=pred, ema=ema)}</p>{formula}']
    if "missing" in loss:
        parts.append(_note(text("loss_missing", why=loss["missing"]), "missing"))
    else:
        parts.append(_fig(_img(loss["plot"], "loss", cls="plot"),
                          text("loss_caption", n=loss["n"], loss=num(loss["last"]),
                               step=loss["step"])))
    parts.append(_protection(d, text))
    classes = text("ckpt_classes") if d["conditional"] else ""
    unguided = text("ckpt_unguided") if tr["autoguided"] else ""
    parts.append(f"<p>{text('ckpt_p', classes=classes)}{unguided}</p>")
    if tr["saved"] == 1:
        parts.append(_note(text("ckpt_one", keep=tr["keep_last"], every=tr["ckpt_every"]),
                           "missing"))
    elif len(tr["rows"]) < tr["saved"]:
        parts.append(_note(text("ckpt_capped", shown=len(tr["rows"]), total=tr["saved"])))
    rows = "".join(f'<tr><th>{text("step_n", step=r["step"])}</th><td>'
                   f'{_img(r["image"], "step " + str(r["step"]))}</td></tr>' for r in tr["rows"])
    parts.append(f'<table class="images" id="checkpoints">{rows}</table>')
    if tr["grids"]:
        parts.append(f"<p>{text('train_grids', every=tr['sample_every'], path=tr['grids_path'])}"
                     "</p>")
        parts.append('<div class="row">' + "".join(
            _fig(_img(g["image"], g["name"], cls="plot"), escape(g["name"]))
            for g in tr["grids"]) + "</div>")
    parts.append("</section>")
    return "".join(parts)


def _protection(d: dict, text: _Text) -> str:
    """The non-leaking augmentation the run trained with, and the copy watch's table (share of
    near-copies per checkpoint beside the held-out images' own; the rows where it warned)."""
    parts = []
    aug = d.get("augment") or {}
    if aug.get("p"):
        parts.append(f"<p>{text('augment_p', p=num(aug['p']))}</p>")
    elif aug.get("dim"):
        parts.append(f"<p>{text('augment_off')}</p>")
    rows = d.get("watch") or []
    if rows:
        rise = ' class="rise"'
        body = "".join(
            f'<tr{rise if r["rise"] else ""}><td>{int(r["step"])}</td>'
            f'<td>{int(r["n"])}</td><td>{100 * r["share"]:.1f}%</td>'
            f'<td>{100 * r["heldout_share"]:.1f}%</td>'
            f'<td>{text("watch_rise") if r["rise"] else ""}</td></tr>' for r in rows)
        head = "".join(f"<th>{text(k)}</th>" for k in
                       ("watch_step", "watch_n", "watch_share", "watch_heldout", "watch_flag"))
        parts.append(f"<p>{text('watch_p')}</p>"
                     f'<table class="numbers" id="copy-watch"><tr>{head}</tr>{body}</table>')
    return "".join(parts)


def _sampling(d: dict, text: _Text) -> str:
    sm = d["sampling"]
    parts = [f'<section id="sampling"><h2>{text("sampling_h")}</h2>']
    if d["conditional"]:
        w_run = f"{d['guidance']:g}"
        parts.append(f"<p>{text('sampling_p_cond', w=w_run)}</p>")
        parts.append('<div class="formula">&epsilon;&#x303; = &epsilon;<sub>&theta;</sub>'
                     f'({_sub("x", "t")}, &empty;) + w (&epsilon;<sub>&theta;</sub>'
                     f'({_sub("x", "t")}, y) &minus; &epsilon;<sub>&theta;</sub>'
                     f'({_sub("x", "t")}, &empty;))</div>')
        if sm["rows"] < d["classes"]:
            parts.append(_note(text("classes_capped", shown=sm["rows"], total=d["classes"])))
        parts.append(_fig(_img(sm["grid"], "classes", cls="plot"), ""))
        ws = [f"{r['w']:g}" for r in sm["sweep"]]
        parts.append(f"<h3>{text('guidance_h', lo=ws[0], hi=ws[-1])}</h3>"
                     f"<p class=\"note\">{text('sweep_columns', names=', '.join(sm['names']))}"
                     "</p>")
        rows = "".join(f"<tr><th>w = {w}</th><td>{_img(r['image'], 'w=' + w)}</td></tr>"
                       for w, r in zip(ws, sm["sweep"], strict=True))
        parts.append(f'<table class="images" id="guidance">{rows}</table>')
    else:
        parts.append(f"<p>{text('sampling_p_uncond', n=sm['n'])}</p>")
        parts.append(_fig(_img(sm["grid"], "samples"), ""))
    nfe = d["nfe"]
    guided = (text("nfe_guided") if d["conditional"] and d["guidance"] not in (0.0, 1.0)
              else Raw(""))
    parts.append(f"<h3>{text('nfe_h')}</h3>"
                 f"<p>{text('nfe_p', n=d['chain_n'], T=d['T'], guided=guided)}</p>")
    rows = []
    for r in nfe["rows"]:
        cells = "".join(_fig(_img(c["image"], f"{r['sampler']} {c['nfe']}"),
                             text("nfe_cell", nfe=c["nfe"])) for c in r["cells"])
        rows.append(f'<tr><th>{escape(r["sampler"])}</th><td><div class="row tight">{cells}'
                    "</div></td></tr>")
    ref = _fig(_img(nfe["reference"], "reference"), text("nfe_cell", nfe=d["T"]))
    rows.append(f'<tr><th>{text("reference", T=d["T"])}</th><td>{ref}</td></tr>')
    parts.append(f'<table class="images" id="nfe">{"".join(rows)}</table></section>')
    return "".join(parts)


def _evaluation(d: dict, text: _Text) -> str:
    e = d["eval"]
    parts = [f'<section id="evaluation"><h2>{text("evaluation_h")}</h2>']
    r = e["results"]
    run = d["run"]
    if r is None:
        parts.append(_note(text("eval_missing", run=run), "missing"))
    else:
        rows = []

        def add(key: str, value: str, **kw: Any) -> None:
            rows.append(f"<tr><th>{text(key, **kw)}</th><td>{value}</td></tr>")

        if e["summary_only"]:
            parts.append(_note(text("eval_summary_only", run=run)))
            add("m_samples", escape(str(r.get("n", "?"))))
            for key, name in (("fid", "m_fid"), ("kid_mean", "m_kid"),
                              ("precision", "m_precision"), ("recall", "m_recall")):
                if isinstance(r.get(key), (int, float)):
                    add(name, num(float(r[key])))
            if isinstance(r.get("memorization_share"), (int, float)):
                add("m_memorization", f"{100 * r['memorization_share']:.2f}%", thr="1/3")
            if isinstance(r.get("bits_per_dim"), (int, float)):
                add("m_bpd", num(float(r["bits_per_dim"])))
        else:
            ck = r.get("checkpoint", "?")
            parts.append(f"<p>{text('eval_p', checkpoint=ck)}</p>")
            if ck != d["checkpoint"]:
                parts.append(_note(text("eval_old_checkpoint", old=ck, new=d["checkpoint"])))
            add("m_samples", escape(str(r.get("samples", r.get("n", "?")))))
            b = r.get("baseline")
            extra = (" &ensp;<small>(" + text("m_baseline", v=num(b["fid_mean"])) + ")</small>"
                     if b else "")
            add("m_fid", num(float(r["fid"])) + extra)
            add("m_kid", f"{num(float(r['kid_mean']))} &plusmn; {num(float(r['kid_std']))}")
            add("m_precision", num(float(r["precision"])))
            add("m_recall", num(float(r["recall"])))
            c = r.get("classifier")
            if c:
                real = c.get("real_confident_share")
                extra = (" &ensp;<small>(" + text("m_real", v=f"{100 * real:.1f}%")
                         + ")</small>" if real is not None else "")
                add("m_confident", f"{100 * c['confident_share']:.1f}%" + extra,
                    c=c["confidence"])
            mm = r.get("memorization") or {}
            if "share" in mm:
                ref = mm.get("reference_share")
                extra = (" &ensp;<small>(" + text("m_real", v=f"{100 * ref:.2f}%")
                         + ")</small>" if isinstance(ref, (int, float)) else "")
                add("m_memorization", f"{100 * mm['share']:.2f}%" + extra,
                    thr=f"{mm.get('threshold', 1 / 3):.2f}")
            bpd = r.get("bits_per_dim")
            if bpd:
                add("m_bpd", num(float(bpd["total"])))
        parts.append(f'<table class="numbers" id="eval-table"><tr><th>{text("metric")}</th>'
                     f'<th>{text("value")}</th></tr>{"".join(rows)}</table>')
    parts.append(f"<h3>{text('nearest_h')}</h3>")
    if e.get("figure"):
        n = r.get("n", "?") if r else "?"
        parts.append(f"<p>{text('nearest_eval', n=n)}</p>" + _fig(_img(e["figure"], "nearest"),
                                                                    ""))
    nr = d.get("nearest")
    if nr is not None:
        thr = f"{nr['threshold']:.2f}"
        parts.append(f"<p>{text('nearest_report', n=nr['n'], flagged=nr['flagged'], thr=thr)}"
                     "</p>" + _fig(_img(nr["image"], "nearest"), ""))
    elif not e.get("figure"):
        parts.append(_note(text("data_missing", why=d["data_error"]), "missing"))
    parts.append("</section>")
    return "".join(parts)


def _editing(d: dict, text: _Text) -> str:
    e = d.get("editing")
    parts = [f'<section id="editing"><h2>{text("editing_h")}</h2>']
    if e is None:
        parts.append(_note(text("data_missing", why=d["data_error"]), "missing"))
        return "".join(parts) + "</section>"
    guided = text("edit_guided", w=f"{d['guidance']:g}") if e["guided"] else Raw("")
    parts.append(f"<p>{text('editing_p', run=d['run'], guided=guided)}</p>")
    for r in e["rows"]:
        caption = text("edit_" + r["key"], sampler=r["sampler"], steps=r["steps"], nfe=r["nfe"],
                       j=r["j"], r=r["r"], strength=f"{r['strength']:g}", t=r["t"],
                       psnr=num(r.get("psnr", 0.0), 3), run=d["run"],
                       classes=", ".join(map(str, r["classes"])))
        parts.append(_fig(_img(r["image"], r["key"]), caption))
    parts.append("</section>")
    return "".join(parts)


# ============================================================================ the page
def render(d: dict, lang: str) -> str:
    """The whole ``index.html`` for the computed report ``d`` in ``lang``."""
    text = _Text(lang)
    d = {**d, "lang": lang}
    scrub: dict[str, Any] = {}
    seconds = f"{d['seconds']:.0f}"
    body = "".join([
        _header(d, text),
        "<main>",
        _forward(d, text, scrub),
        _reverse(d, text, scrub),
        _objective(d, text),
        _training(d, text),
        _sampling(d, text),
        _evaluation(d, text),
        _editing(d, text),
        "</main>",
        f"<footer>{text('footer', seconds=seconds, device=d['device'], run=d['run'])}</footer>",
    ])
    blob = json.dumps({"scrubbers": scrub}, ensure_ascii=False, separators=(",", ":"))
    blob = blob.replace("</", "<\\/")   # never close the script element early
    page = _read("page.html")
    values = {"lang": "zh-CN" if lang == "zh" else "en", "generator": GENERATOR,
              "title": escape(STRINGS[lang]["title"].format(run=Path(d["run"]).name or d["run"])),
              "css": _read("report.css"), "body": body, "data": blob, "js": _read("report.js")}
    # One pass over the template: a value is never searched again, so a class name or a run
    # path that spells "{{data}}" or "{{js}}" stays text (sequential replaces pasted the page's
    # data or script into it)
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values.get(m.group(1), m.group(0)), page)
