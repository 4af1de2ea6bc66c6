// The page's charts, drawn as plain SVG: best error per generation (lines), candidates
// (scatter: error against per-block sparsity spread, and error against achieved sparsity with
// the exports' held-out perplexity) and one candidate's per-block bars.

import { s } from "./dom.js";
import { fmt, pct } from "./format.js";

const W = 520;
const H = 300;
const M = { top: 16, right: 18, bottom: 44, left: 64 };

function extent(values, { zero = false } = {}) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (zero) lo = Math.min(lo, 0);
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 0.01;
    return [zero && lo >= 0 ? 0 : lo - pad, hi + pad];
  }
  const pad = (hi - lo) * 0.08;
  return [zero && lo >= 0 ? Math.max(0, lo - pad) : lo - pad, hi + pad];
}

function padLeft([lo, hi]) {
  // Room between the y axis and points at the domain's start, so they never hide its labels.
  return [lo - (hi - lo) * 0.04, hi];
}

function ticks([lo, hi], count = 5) {
  const step0 = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => (hi - lo) / st <= count) ?? 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function frame(xDomain, yDomain, xLabel, yLabel, { xTicks, m = M } = {}) {
  const x = (v) => m.left + ((v - xDomain[0]) / (xDomain[1] - xDomain[0])) * (W - m.left - m.right);
  const y = (v) => H - m.bottom - ((v - yDomain[0]) / (yDomain[1] - yDomain[0])) * (H - m.top - m.bottom);
  const g = s("g", { class: "axes" });
  for (const t of ticks(yDomain)) {
    g.append(
      s("line", { class: "grid", x1: m.left, x2: W - m.right, y1: y(t), y2: y(t) }),
      s("text", { x: m.left - 6, y: y(t) + 4, "text-anchor": "end" }, fmt(t, 3)),
    );
  }
  for (const t of xTicks ?? ticks(xDomain)) {
    g.append(
      s("line", { class: "tick", x1: x(t), x2: x(t), y1: H - m.bottom, y2: H - m.bottom + 4 }),
      s("text", { x: x(t), y: H - m.bottom + 17, "text-anchor": "middle" }, fmt(t, 3)),
    );
  }
  g.append(
    s("line", { class: "axis", x1: m.left, x2: W - m.right, y1: H - m.bottom, y2: H - m.bottom }),
    s("line", { class: "axis", x1: m.left, x2: m.left, y1: m.top, y2: H - m.bottom }),
    s("text", { class: "label", x: (m.left + W - m.right) / 2, y: H - 6, "text-anchor": "middle" }, xLabel),
    s("text", { class: "label", transform: `translate(14 ${(m.top + H - m.bottom) / 2}) rotate(-90)`, "text-anchor": "middle" }, yLabel),
  );
  return { x, y, g };
}

/** A second y axis on the right of a frame drawn with margins `m`; returns its scale. */
function rightAxis(yDomain, label, m) {
  const y = (v) => H - m.bottom - ((v - yDomain[0]) / (yDomain[1] - yDomain[0])) * (H - m.top - m.bottom);
  const g = s("g", { class: "axes right-axis" });
  const ax = W - m.right;
  for (const t of ticks(yDomain)) {
    g.append(
      s("line", { class: "tick", x1: ax, x2: ax + 4, y1: y(t), y2: y(t) }),
      s("text", { x: ax + 7, y: y(t) + 4, "text-anchor": "start" }, fmt(t, 3)),
    );
  }
  g.append(
    s("line", { class: "axis", x1: ax, x2: ax, y1: m.top, y2: H - m.bottom }),
    s("text", { class: "label", transform: `translate(${W - 12} ${(m.top + H - m.bottom) / 2}) rotate(90)`, "text-anchor": "middle" }, label),
  );
  return { y, g };
}

function svgRoot(label, id) {
  return s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label, id });
}

/** Standard deviation of a plan's per-block sparsity: 0 for a uniform plan. */
export function spread(ratios) {
  // Every candidate meets the target exactly (gap 0), so this, not the gap, tells plans apart.
  if (!ratios.length) return 0;
  const mean = ratios.reduce((a, r) => a + r, 0) / ratios.length;
  return Math.sqrt(ratios.reduce((a, r) => a + (r - mean) ** 2, 0) / ratios.length);
}

/** Best error per generation (GET .../generations, at least one), one line per stage. */
export function progressChart(gens) {
  const xs = gens.map((g) => g.number);
  const xDomain = padLeft(xs.length === 1 ? [xs[0] - 1, xs[0] + 1] : [xs[0], xs.at(-1)]);
  const yDomain = extent(gens.map((g) => g.best_error));
  const step = Math.max(1, Math.ceil(xs.length / 10));
  const xTicks = xs.filter((_, i) => i % step === 0);
  const { x, y, g } = frame(xDomain, yDomain, "generation", "best error", { xTicks });
  const svg = svgRoot("best error per generation", "progress-chart");
  svg.append(g);
  // Stage boundaries: the layer-wise stage starts over from the metric stage's winner.
  const stages = [];
  gens.forEach((gen, i) => {
    if (i === 0 || gen.stage !== gens[i - 1].stage) stages.push(gen);
  });
  for (const st of stages) {
    const sx = st === gens[0] ? x(xDomain[0]) : x(st.number - 0.5);
    if (st !== gens[0]) svg.append(s("line", { class: "stage-line", x1: sx, x2: sx, y1: M.top, y2: H - M.bottom }));
    svg.append(s("text", { class: "stage-label", x: sx + 4, y: M.top + 10 }, st.stage));
  }
  for (const stage of new Set(gens.map((g2) => g2.stage))) {
    const pts = gens.filter((g2) => g2.stage === stage);
    svg.append(
      s("polyline", {
        class: `line stage-${stage}`,
        points: pts.map((g2) => `${x(g2.number)},${y(g2.best_error)}`).join(" "),
      }),
    );
  }
  for (const gen of gens) {
    svg.append(
      s(
        "circle",
        { class: `gen-point stage-${gen.stage}`, cx: x(gen.number), cy: y(gen.best_error), r: 4, "data-generation": gen.number },
        s("title", {}, `generation ${gen.number} (${gen.stage} ${gen.stage_generation}): best error ${fmt(gen.best_error)}, ${gen.evaluations} evaluations, ${fmt(gen.seconds, 3)} s`),
      ),
    );
  }
  return svg;
}

/**
 * Scored candidates (all of the API's one shape): the population in grey, the baselines as
 * diamonds and the front's members as clickable points, the recommended one on top.
 */
export function frontChart({ members, candidates, baselines, selectedId, onChoose }) {
  const all = [...members, ...candidates, ...baselines];
  const xDomain = padLeft(extent(all.map((c) => spread(c.block_sparsity)), { zero: true }));
  const yDomain = extent(all.map((c) => c.objectives.error));
  const { x, y, g } = frame(xDomain, yDomain, "per-block sparsity spread (std across blocks)", "reconstruction error");
  const svg = svgRoot("Candidates: reconstruction error against the spread of per-block sparsity", "front-chart");
  svg.append(g);
  for (const m of members) {
    svg.append(
      s(
        "circle",
        { class: `pop-point${m.on_front ? " on-front" : ""}`, cx: x(spread(m.block_sparsity)), cy: y(m.objectives.error), r: 4, "data-key": m.key },
        s("title", {}, `${m.genome.formula}\nerror ${fmt(m.objectives.error)}, spread ${fmt(spread(m.block_sparsity))}, gap ${fmt(m.objectives.gap)}${m.on_front ? " (front)" : ""}`),
      ),
    );
  }
  for (const b of baselines) {
    const bs = spread(b.block_sparsity);
    svg.append(baselineMarker(b, x(bs), y(b.objectives.error), `spread ${fmt(bs)}`, M));
  }
  // The recommended point is drawn last so that it stays on top.
  for (const c of recommendedLast(candidates)) {
    svg.append(frontPoint(c, x(spread(c.block_sparsity)), y(c.objectives.error), selectedId, onChoose));
  }
  return svg;
}

function baselineMarker(b, bx, by, where, m) {
  return s(
    "g",
    { class: "baseline", "data-baseline": b.name },
    s("path", { d: `M${bx},${by - 7} L${bx + 7},${by} L${bx},${by + 7} L${bx - 7},${by} Z` }),
    // Near the right edge the label goes to the marker's left, so it is never cut off.
    bx > W - m.right - 90
      ? s("text", { x: bx - 10, y: by + 4, "text-anchor": "end" }, b.name)
      : s("text", { x: bx + 10, y: by + 4 }, b.name),
    s("title", {}, `${b.name}: error ${fmt(b.objectives.error)}, ${where}, gap ${fmt(b.objectives.gap)}`),
  );
}

function recommendedLast(candidates) {
  return [...candidates].sort((a, b) => Number(a.recommended) - Number(b.recommended));
}

/** A front member: a point that chooses it (click, Enter or Space). */
function frontPoint(c, cx, cy, selectedId, onChoose) {
  return s(
    "g",
    {
      class: `point${c.recommended ? " recommended" : ""}${c.id === selectedId ? " selected" : ""}`,
      "data-candidate": c.id,
      "data-sparsity": c.sparsity,
      tabindex: 0,
      role: "button",
      "aria-label": `candidate ${c.key}: error ${fmt(c.objectives.error)}, sparsity ${pct(c.sparsity)}`,
      onclick: () => onChoose(c.id),
      onkeydown: (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          onChoose(c.id);
        }
      },
    },
    s("circle", { cx, cy, r: c.recommended ? 8 : 6 }),
    c.recommended ? s("text", { x: cx + 11, y: cy - 8, class: "rec-label" }, "recommended") : null,
    s("title", {}, `${c.genome.formula}\nerror ${fmt(c.objectives.error)}, gap ${fmt(c.objectives.gap)}, sparsity ${pct(c.sparsity)}`),
  );
}

/** Succeeded exports with both measurements (GET .../checkpoints). */
export function measuredExports(exports) {
  return exports.filter((e) => e.status === "succeeded" && e.perplexity !== null && e.sparsity !== null);
}

/**
 * Error against achieved sparsity (x): the population in grey, the baselines as diamonds and
 * the front's members as clickable points, joined in order of sparsity when they differ (a
 * front across sparsities). The held-out perplexity of the succeeded exports goes on the right
 * axis at their measured sparsity; an export of a front member chooses that member.
 */
export function sparsityChart({ members, candidates, baselines, exports, selectedId, onChoose }) {
  const scored = [...members, ...candidates, ...baselines];
  const measured = measuredExports(exports);
  const xDomain = padLeft(extent([...scored.map((c) => c.sparsity), ...measured.map((e) => e.sparsity)]));
  const yDomain = extent(scored.map((c) => c.objectives.error));
  const m = measured.length ? { ...M, right: 60 } : M;
  const { x, y, g } = frame(xDomain, yDomain, "achieved sparsity", "reconstruction error", { m });
  const svg = svgRoot("Reconstruction error and exports' held-out perplexity against achieved sparsity", "sparsity-chart");
  svg.append(g);
  for (const p of members) {
    svg.append(
      s(
        "circle",
        { class: `pop-point${p.on_front ? " on-front" : ""}`, cx: x(p.sparsity), cy: y(p.objectives.error), r: 4, "data-key": p.key },
        s("title", {}, `${p.genome.formula}\nerror ${fmt(p.objectives.error)}, sparsity ${pct(p.sparsity)}${p.on_front ? " (front)" : ""}`),
      ),
    );
  }
  for (const b of baselines) svg.append(baselineMarker(b, x(b.sparsity), y(b.objectives.error), `sparsity ${pct(b.sparsity)}`, m));
  const bySparsity = [...candidates].sort((a, b) => a.sparsity - b.sparsity);
  if (new Set(bySparsity.map((c) => c.sparsity)).size > 1) {
    svg.append(s("polyline", { class: "front-line", points: bySparsity.map((c) => `${x(c.sparsity)},${y(c.objectives.error)}`).join(" ") }));
  }
  for (const c of recommendedLast(candidates)) svg.append(frontPoint(c, x(c.sparsity), y(c.objectives.error), selectedId, onChoose));
  if (!measured.length) return svg;
  const right = rightAxis(extent(measured.map((e) => e.perplexity)), "held-out perplexity (exports)", m);
  svg.append(right.g);
  const byMeasured = [...measured].sort((a, b) => a.sparsity - b.sparsity);
  if (byMeasured.length > 1) {
    svg.append(s("polyline", { class: "ppl-line", points: byMeasured.map((e) => `${x(e.sparsity)},${right.y(e.perplexity)}`).join(" ") }));
  }
  const onFront = new Set(candidates.map((c) => c.id));
  for (const e of byMeasured) {
    const ex = x(e.sparsity);
    const ey = right.y(e.perplexity);
    const choosable = onFront.has(e.candidate_id);
    svg.append(
      s(
        "g",
        {
          class: `export-point${choosable ? " choosable" : ""}`,
          "data-checkpoint": e.id,
          "data-candidate": e.candidate_id,
          onclick: choosable ? () => onChoose(e.candidate_id) : null,
        },
        s("rect", { x: ex - 5, y: ey - 5, width: 10, height: 10 }),
        s("title", {}, `export of ${e.candidate_key}: held-out perplexity ${fmt(e.perplexity)} at measured sparsity ${pct(e.sparsity)}`),
      ),
    );
  }
  return svg;
}

/** One bar per block with the target (or another reference, named `label`) as a line. */
export function blockChart(values, targetValue, label = "target") {
  const n = values.length;
  const yDomain = [0, Math.max(1e-9, ...values, targetValue) * 1.1];
  const xDomain = [0, n];
  const step = Math.max(1, Math.ceil(n / 12));
  const xTicks = Array.from({ length: n }, (_, i) => i).filter((i) => i % step === 0).map((i) => i + 0.5);
  const { x, y, g } = frame(xDomain, yDomain, "block", "sparsity", { xTicks: [] });
  const svg = svgRoot("per-block sparsity", "block-chart");
  svg.append(g);
  for (const t of xTicks) {
    svg.append(s("text", { class: "axes-text", x: x(t), y: H - M.bottom + 17, "text-anchor": "middle" }, String(t - 0.5)));
  }
  const bw = (x(1) - x(0)) * 0.8;
  values.forEach((v, i) => {
    svg.append(
      s(
        "rect",
        { class: "block-bar", x: x(i + 0.5) - bw / 2, y: y(v), width: bw, height: Math.max(0, y(0) - y(v)), "data-block": i },
        s("title", {}, `block ${i}: ${pct(v)}`),
      ),
    );
  });
  svg.append(
    s("line", { class: "target-line", x1: M.left, x2: W - M.right, y1: y(targetValue), y2: y(targetValue) }),
    s("text", { class: "target-label", x: W - M.right - 4, y: y(targetValue) - 5, "text-anchor": "end" }, `${label} ${pct(targetValue)}`),
  );
  return svg;
}
