// Retrieval playground: one query under one or two configurations (mode, top_k, filters, fusion and its
// weights), with each chunk's dense and BM25 scores and ranks side by side, and the relevance threshold
// drawn as a line over the dense similarities.
import { $, api, el, mountShell, showMessage } from "./console.js";

const CONFIGS = {
  A: { mode: "hybrid", top_k: 5, fusion: "convex", dense_weight: 0.55, bm25_weight: 0.45, rrf_k: 60 },
  B: { mode: "bm25", top_k: 5, fusion: "convex", dense_weight: 0.55, bm25_weight: 0.45, rrf_k: 60 },
};
const FILTER_FIELDS = ["doc_id", "source", "title"];

function field(name, id, control) {
  return el("label", { for: id }, name, control);
}

function configPanel(name, defaults) {
  const id = (key) => `cfg-${name}-${key}`;
  const select = (key, options) => {
    const node = el("select", { id: id(key) }, options.map((value) => el("option", { value }, value)));
    node.value = defaults[key];
    return node;
  };
  const number = (key, attributes) => el("input", { id: id(key), type: "number", value: defaults[key], ...attributes });
  return el("fieldset", { class: "config", id: `config-${name}` },
    el("legend", {}, `Configuration ${name}`),
    field("Mode", id("mode"), select("mode", ["hybrid", "dense", "bm25"])),
    field("top_k", id("top_k"), number("top_k", { min: 1, max: 50, step: 1 })),
    field("Fusion", id("fusion"), select("fusion", ["convex", "rrf"])),
    field("Dense weight", id("dense_weight"), number("dense_weight", { min: 0, max: 1, step: 0.05 })),
    field("BM25 weight", id("bm25_weight"), number("bm25_weight", { min: 0, max: 1, step: 0.05 })),
    field("RRF k", id("rrf_k"), number("rrf_k", { min: 1, max: 1000, step: 1 })),
    el("div", {}, FILTER_FIELDS.map((key) => field(`Filter ${key}`, id(`filter-${key}`),
      el("input", { id: id(`filter-${key}`), type: "text", size: 18, placeholder: "exact value" })))));
}

function request(name) {
  const value = (key) => $(`cfg-${name}-${key}`).value;
  const filters = {};
  for (const key of FILTER_FIELDS) if (value(`filter-${key}`).trim()) filters[key] = value(`filter-${key}`).trim();
  return {
    query: $("pg-query").value, mode: value("mode"), top_k: Number(value("top_k")), filters, explain: true,
    fusion: value("fusion"), dense_weight: Number(value("dense_weight")), bm25_weight: Number(value("bm25_weight")),
    rrf_k: Number(value("rrf_k")),
  };
}

const fmt = (score) => (score === null || score === undefined ? "—" : score.toFixed(3));
const ranked = (score, rank) => (rank ? `${fmt(score)} (#${rank})` : "not found");

// The dense similarity of each chunk as a bar, the threshold as a vertical line: below it, the answer
// says the documents do not contain the answer.
function thresholdChart(chunks, threshold) {
  const width = 420, rowHeight = 18, left = 28, height = chunks.length * rowHeight + 22;
  const x = (value) => left + Math.max(0, Math.min(1, value)) * (width - left - 8);
  const bars = chunks.map((chunk, i) => {
    const score = chunk.scores?.dense_score;
    const y = 4 + i * rowHeight;
    return [
      el("text", { x: 2, y: y + 12, "font-size": 11 }, `#${i + 1}`),
      score === null || score === undefined
        ? el("text", { x: left, y: y + 12, "font-size": 11, fill: "#868e96" }, "no dense score")
        : el("rect", { x: left, y, width: Math.max(1, x(score) - left), height: rowHeight - 5,
            fill: threshold !== null && score < threshold ? "#ffa8a8" : "#74c0fc" }),
    ];
  });
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", threshold === null ? "Dense similarity per chunk"
    : `Dense similarity per chunk; relevance threshold ${threshold}`);
  const parts = bars.flat();
  if (threshold !== null) {
    parts.push(el("line", { class: "threshold", x1: x(threshold), x2: x(threshold), y1: 0, y2: height - 16,
      stroke: "#c92a2a", "stroke-width": 2, "stroke-dasharray": "4 3" }));
    parts.push(el("text", { x: Math.min(x(threshold) + 3, width - 110), y: height - 4, "font-size": 11, fill: "#c92a2a" },
      `threshold ${threshold}`));
  }
  for (const part of parts) svg.append(svgNode(part));
  return svg;
}

// `el` makes HTML elements; SVG needs its namespace.
function svgNode(node) {
  if (!(node instanceof Element)) return node;
  const made = document.createElementNS("http://www.w3.org/2000/svg", node.tagName.toLowerCase());
  for (const { name, value } of node.attributes) made.setAttribute(name, value);
  made.textContent = node.textContent;
  return made;
}

function resultPanel(name, sent, result, shared) {
  // The relevance threshold is read defensively: a server without one draws no line.
  const threshold = typeof result.relevance_threshold === "number" ? result.relevance_threshold : null;
  const fusion = result.fusion
    ? `${result.fusion.method}, dense ${result.fusion.dense_weight} / BM25 ${result.fusion.bm25_weight}`
      + (result.fusion.method === "rrf" ? `, k ${result.fusion.rrf_k}` : "")
    : "";
  const rows = result.chunks.map((chunk, i) => el("tr", {
      class: shared.has(chunk.chunk_id) ? "hit shared" : "hit", "data-chunk-id": chunk.chunk_id },
    el("td", { class: "num" }, i + 1),
    el("td", {}, el("div", {}, chunk.title || chunk.source), el("div", { class: "muted" }, chunk.source),
      el("div", { class: "snippet" }, chunk.text)),
    el("td", { class: "num fused" }, fmt(chunk.score)),
    el("td", { class: `num dense${threshold !== null && (chunk.scores?.dense_score ?? 1) < threshold ? " below" : ""}` },
      ranked(chunk.scores?.dense_score, chunk.scores?.dense_rank)),
    el("td", { class: "num bm25" }, ranked(chunk.scores?.bm25_score, chunk.scores?.bm25_rank))));
  return el("section", { class: "result", id: `result-${name}`, "aria-label": `Results of configuration ${name}` },
    el("h3", {}, `Configuration ${name}: ${sent.mode}, top ${sent.top_k}`),
    el("p", { class: "muted" }, fusion, sent.mode === "hybrid" ? "" : " (fusion applies to hybrid only)",
      ` · ${Object.values(result.timings_ms || {}).reduce((a, b) => a + b, 0).toFixed(1)} ms`),
    thresholdChart(result.chunks, threshold),
    el("p", { class: "muted threshold-note" }, threshold === null
      ? "This server reports no relevance threshold."
      : `Relevance threshold ${threshold} on the dense similarity (best here: ${fmt(result.relevance)}).`),
    el("table", {},
      el("thead", {}, el("tr", {}, ["#", "Chunk", "Score", "Dense (rank)", "BM25 (rank)"].map(
        (title) => el("th", { scope: "col" }, title)))),
      el("tbody", {}, rows)));
}

async function run(event) {
  event.preventDefault();
  const names = $("pg-compare").checked ? ["A", "B"] : ["A"];
  const sent = Object.fromEntries(names.map((name) => [name, request(name)]));
  showMessage("pg-message", "Retrieving…");
  let results;
  try {
    results = await Promise.all(names.map((name) => api("/v1/retrieve", { method: "POST", body: sent[name] })));
  } catch (error) {
    showMessage("pg-message", error.message, "error");
    return;
  }
  const ids = results.map((result) => new Set(result.chunks.map((chunk) => chunk.chunk_id)));
  const shared = names.length > 1 ? new Set([...ids[0]].filter((id) => ids[1].has(id))) : new Set();
  $("results").replaceChildren(...names.map((name, i) => resultPanel(name, sent[name], results[i], shared)));
  showMessage("pg-message", names.length > 1
    ? `${shared.size} chunk(s) in both top lists (marked at the left edge).` : "Retrieved.", "ok");
}

$("configs").append(configPanel("A", CONFIGS.A), configPanel("B", CONFIGS.B));
$("pg-compare").addEventListener("change", () => { $("config-B").hidden = !$("pg-compare").checked; });
$("playground-form").addEventListener("submit", run);
mountShell(() => {});
