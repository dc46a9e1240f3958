// Chunk viewer: a document's chunks in order, their character ranges highlighted in the document text, token
// counts and PII-redaction marks; each chunk can be disabled (kept in the index, never retrieved) or enabled.
import { $, api, el, mountShell, showMessage } from "./console.js";

const PII = /\[REDACTED_[A-Z_]+\]/g;
let selected = null;
let shown = { docId: null, record: 0 };  // kept across a toggle's reload

async function loadDocuments() {
  try {
    const page = await api("/v1/documents?status=indexed&limit=200");
    $("doc-select").replaceChildren(el("option", { value: "" }, "choose an indexed document"),
      ...page.documents.map((doc) => el("option", { value: doc.doc_id }, `${doc.source} (${doc.chunks} chunks)`)));
  } catch (error) {
    showMessage("chunks-message", error.message, "error");
  }
  const wanted = new URLSearchParams(location.search).get("doc");
  if (wanted) {
    $("doc-id").value = wanted;
    show(wanted);
  }
}

async function show(docId) {
  let view;
  try {
    view = await api(`/v1/documents/${encodeURIComponent(docId)}/chunks`);
  } catch (error) {
    showMessage("chunks-message", error.message, "error");
    $("records").replaceChildren();
    $("summary").textContent = "";
    return;
  }
  showMessage("chunks-message", "");
  if (shown.docId !== docId) shown = { docId, record: 0 };
  history.replaceState(null, "", `?doc=${encodeURIComponent(docId)}`);
  const total = view.documents.reduce((sum, record) => sum + record.chunks.length, 0);
  $("summary").textContent = `${view.source} · ${total} chunks, ${view.disabled} disabled · index ${view.index_version}`;
  showRecords(view);
}

// A .jsonl source holds many records: one at a time, chosen in a list.
function showRecords(view) {
  if (view.documents.length === 1) {
    $("records").replaceChildren(renderRecord(view, view.documents[0]));
    return;
  }
  const choice = el("select", { id: "record-select" }, view.documents.map((record, i) =>
    el("option", { value: i }, `${record.title || record.doc_id} (${record.chunks.length} chunks)`)));
  choice.value = String(Math.min(shown.record, view.documents.length - 1));
  const area = el("div");
  const render = () => {
    shown.record = Number(choice.value);
    area.replaceChildren(renderRecord(view, view.documents[shown.record]));
  };
  choice.addEventListener("change", render);
  $("records").replaceChildren(
    el("div", { class: "toolbar" }, el("label", { for: "record-select" }, `Record (${view.documents.length})`, choice)),
    area);
  render();
}

// The text cut at every chunk boundary; each piece knows which chunks cover it (chunks overlap).
function segments(record) {
  const cuts = new Set([0, record.text.length]);
  for (const chunk of record.chunks) { cuts.add(chunk.start_char); cuts.add(chunk.end_char); }
  const points = [...cuts].sort((a, b) => a - b);
  const pieces = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const [start, end] = [points[i], points[i + 1]];
    const covering = record.chunks.filter((c) => c.start_char <= start && c.end_char >= end);
    pieces.push({ start, end, covering });
  }
  return pieces;
}

function withPiiMarks(text) {
  const nodes = [];
  let last = 0;
  for (const match of text.matchAll(PII)) {
    nodes.push(text.slice(last, match.index), el("span", { class: "pii", title: "PII redacted at indexing" }, match[0]));
    last = match.index + match[0].length;
  }
  nodes.push(text.slice(last));
  return nodes;
}

function renderText(record) {
  return el("div", { class: "source-text", "aria-label": `Text of ${record.title || record.doc_id}` },
    segments(record).map(({ start, end, covering }) => {
      const text = record.text.slice(start, end);
      if (!covering.length) return text;
      const kind = covering.length > 1 ? "overlap"
        : covering[0].enabled ? `c${covering[0].position % 2}` : "disabled";
      return el("span", {
        class: `seg ${kind}`, "data-chunks": covering.map((c) => c.position).join(" "),
        title: covering.map((c) => `chunk ${c.position}: ${c.start_char}–${c.end_char}`).join("; "),
      }, withPiiMarks(text));
    }));
}

function chunkRow(view, record, chunk, text) {
  const kinds = [...new Set(chunk.redactions.map((r) => r.kind.toLowerCase()))];
  const toggle = el("button", {
    type: "button", class: chunk.enabled ? "danger toggle" : "toggle",
    "aria-label": `${chunk.enabled ? "Disable" : "Enable"} chunk ${chunk.position}`,
    onclick: (event) => { event.stopPropagation(); setEnabled(view, chunk, !chunk.enabled); },
  }, chunk.enabled ? "Disable" : "Enable");
  const row = el("tr", { class: `chunk${chunk.enabled ? "" : " disabled"}`, "data-chunk-id": chunk.chunk_id,
      "data-position": chunk.position, tabindex: 0 },
    el("td", { class: "num" }, chunk.position),
    el("td", { class: "offsets" }, `${chunk.start_char}–${chunk.end_char}`),
    el("td", { class: "num tokens" }, chunk.tokens),
    el("td", { class: "pii-count" }, chunk.redactions.length ? `${chunk.redactions.length} (${kinds.join(", ")})` : "none"),
    el("td", {}, el("span", { class: chunk.enabled ? "state-enabled" : "state-disabled" },
      chunk.enabled ? "enabled" : "disabled"), " ", toggle));
  const select = () => selectChunk(row, text, chunk.position);
  row.addEventListener("click", select);
  row.addEventListener("keydown", (event) => { if (event.key === "Enter") select(); });
  return row;
}

function selectChunk(row, text, position) {
  if (selected) selected.classList.remove("selected");
  selected = row;
  row.classList.add("selected");
  let first = null;
  for (const seg of text.querySelectorAll(".seg")) {
    const hit = seg.dataset.chunks.split(" ").includes(String(position));
    seg.classList.toggle("selected", hit);
    if (hit && !first) first = seg;
  }
  if (first) first.scrollIntoView({ block: "nearest" });
}

function renderRecord(view, record) {
  const text = renderText(record);
  const rows = record.chunks.map((chunk) => chunkRow(view, record, chunk, text));
  const table = el("table", { "aria-label": `Chunks of ${record.title || record.doc_id}` },
    el("thead", {}, el("tr", {}, ["#", "Characters", "Tokens", "PII marks", "Retrieval"].map(
      (name) => el("th", { scope: "col" }, name)))),
    el("tbody", {}, rows));
  return el("section", { class: "record" },
    el("h2", {}, record.title || record.doc_id, " ", el("code", { class: "muted" }, record.doc_id)),
    el("div", { class: "split" }, text, table));
}

async function setEnabled(view, chunk, enabled) {
  try {
    await api(`/v1/documents/${encodeURIComponent(view.doc_id)}/chunks/${encodeURIComponent(chunk.chunk_id)}`,
      { method: "PATCH", body: { enabled } });
    showMessage("chunks-message",
      `Chunk ${chunk.position} ${enabled ? "enabled: retrieval finds it again" : "disabled: retrieval leaves it out"}.`,
      "ok");
  } catch (error) {
    showMessage("chunks-message", error.message, "error");
    return;
  }
  const message = $("chunks-message").textContent;
  await show(view.doc_id);
  showMessage("chunks-message", message, "ok");
}

$("doc-select").addEventListener("change", () => { $("doc-id").value = $("doc-select").value; });
$("doc-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const docId = $("doc-id").value.trim() || $("doc-select").value;
  if (docId) show(docId);
  else showMessage("chunks-message", "Choose a document, or paste its id from the knowledge base.", "error");
});
mountShell(loadDocuments);
