// Logs & feedback: the tenant's query log with filters, and the feedback analytics drawn as SVG charts.
import { $, api, el, formatTime, mountShell, showMessage } from "./console.js";

const PAGE_SIZE = 25;
const SVG = "http://www.w3.org/2000/svg";
let offset = 0;

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

// A horizontal bar chart: one labelled bar per [label, value], scaled to `max`, the value printed beside it.
function barChart(title, bars, max, format) {
  const rowHeight = 26;
  const height = Math.max(1, bars.length) * rowHeight + 8;
  const chart = svg("svg", { viewBox: `0 0 400 ${height}`, role: "img", "aria-label": title });
  bars.forEach(([label, value], index) => {
    const y = 4 + index * rowHeight;
    const width = max > 0 && value !== null ? Math.max(2, (200 * value) / max) : 0;
    chart.append(
      svg("text", { x: 0, y: y + 15, "font-size": 11, fill: "#333" }, label.length > 22 ? `${label.slice(0, 21)}…` : label),
      svg("rect", { x: 130, y, width, height: 18, fill: "#4c6ef5", rx: 2, class: "bar" }),
      svg("text", { x: 130 + width + 4, y: y + 14, "font-size": 11, fill: "#333" }, value === null ? "n/a" : format(value)),
    );
  });
  return el("figure", { class: "chart" }, el("h3", {}, title), chart);
}

const percent = (value) => `${Math.round(value * 100)} %`;

async function loadAnalytics(page) {
  let analytics;
  try {
    analytics = await api("/v1/feedback/analytics");
  } catch (error) {
    showMessage("logs-message", error.message, "error");
    return;
  }
  const charts = [
    barChart("Feedback", [
      ["Queries with feedback", analytics.feedback_rate],
      ["Judged relevant", analytics.relevance_rate],
      ["Mean rating (of 5)", analytics.mean_rating === null ? null : analytics.mean_rating / 5],
    ], 1, percent),
    barChart("Lowest-rated questions (mean rating)",
      analytics.worst_queries.map((q) => [q.question, q.mean_rating]), 5, (v) => `${v.toFixed(1)} / 5`),
  ];
  charts.push(latencyChart(page.queries));
  $("totals").textContent = `${analytics.queries} queries, ${analytics.feedback} feedback entries in all`;
  $("charts").replaceChildren(...charts);
}

// Mean milliseconds per stage over the queries on this page of the log.
function latencyChart(queries) {
  const sums = {};
  for (const query of queries) {
    for (const [stage, ms] of Object.entries(query.timings_ms)) {
      sums[stage] = sums[stage] || [0, 0];
      sums[stage][0] += ms;
      sums[stage][1] += 1;
    }
  }
  const bars = Object.entries(sums).map(([stage, [total, count]]) => [stage, total / count]);
  const max = Math.max(1, ...bars.map(([, value]) => value));
  return barChart("Mean latency per stage (this page)", bars, max, (v) => `${v.toFixed(1)} ms`);
}

function filters() {
  const query = new URLSearchParams({ offset, limit: PAGE_SIZE });
  const day = (value, next) => {
    const date = new Date(`${value}T00:00`);  // the user's local midnight
    if (next) date.setDate(date.getDate() + 1);
    return date.toISOString();
  };
  if ($("log-since").value) query.set("since", day($("log-since").value, false));
  if ($("log-until").value) query.set("until", day($("log-until").value, true));
  if ($("log-degraded").value) query.set("degraded", $("log-degraded").value);
  if ($("log-rated").value) query.set("rated", $("log-rated").value);
  if ($("log-text").value.trim()) query.set("text", $("log-text").value.trim());
  return query;
}

function feedbackCell(feedback) {
  if (!feedback.length) return el("span", { class: "muted" }, "none");
  return el("ul", { class: "feedback" }, feedback.map((given) => el("li", {},
    [given.rating !== null ? `rating ${given.rating}/5` : null,
     given.is_relevant === null ? null : given.is_relevant ? "relevant" : "not relevant",
     given.comment ? `“${given.comment}”` : null].filter(Boolean).join(", "))));
}

function row(query) {
  const stages = Object.entries(query.timings_ms).map(([stage, ms]) => `${stage} ${ms.toFixed(1)} ms`);
  return el("tr", { "data-query-id": query.query_id },
    el("td", {}, formatTime(query.created_at)),
    el("td", {}, el("div", { class: "question" }, query.question),
      el("details", {}, el("summary", {}, `${query.chunk_ids.length} chunks · ${query.mode}, top ${query.top_k}`),
        el("ul", {}, query.chunk_ids.map((id) => el("li", {}, el("code", {}, id)))))),
    el("td", {}, el("ul", { class: "stages" }, stages.map((stage) => el("li", {}, stage)))),
    el("td", {}, query.model || el("span", { class: "muted" }, "retrieval only")),
    el("td", {}, query.index_version),
    el("td", {}, query.degraded ? el("span", { class: "status status-pending" }, "degraded")
      : el("span", { class: "status status-indexed" }, query.cached ? "full (cached)" : "full")),
    el("td", {}, feedbackCell(query.feedback)),
    el("td", {}, query.trace_url ? el("a", { href: query.trace_url, target: "_blank", rel: "noopener" }, "MLflow trace")
      : el("span", { class: "muted" }, "none")));
}

async function load() {
  let page;
  try {
    page = await api(`/v1/logs?${filters()}`);
  } catch (error) {
    showMessage("logs-message", error.message, "error");
    return;
  }
  showMessage("logs-message", "");
  $("queries").replaceChildren(...page.queries.map(row));
  if (!page.queries.length) {
    $("queries").append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No queries match.")));
  }
  const last = Math.min(page.offset + page.queries.length, page.total);
  $("page-info").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "0 queries";
  $("prev-page").disabled = page.offset === 0;
  $("next-page").disabled = last >= page.total;
  await loadAnalytics(page);
}

$("log-filters").addEventListener("submit", (event) => { event.preventDefault(); offset = 0; load(); });
$("prev-page").addEventListener("click", () => { offset = Math.max(0, offset - PAGE_SIZE); load(); });
$("next-page").addEventListener("click", () => { offset += PAGE_SIZE; load(); });
mountShell(load);
