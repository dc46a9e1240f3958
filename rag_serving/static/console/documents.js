// Knowledge base: the tenant's documents with status, upload by drag and drop, delete and re-index.
// While a document is pending or its Dagster run is going, the list refreshes itself.
import { $, api, el, formatBytes, formatTime, mountShell, showMessage } from "./console.js";

const PAGE_SIZE = 20;
const LIVE_EVERY_MS = 2000;
const RUNNING = new Set(["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]);
let offset = 0;
let liveTimer = null;

async function load() {
  clearTimeout(liveTimer);
  const query = new URLSearchParams({ offset, limit: PAGE_SIZE });
  if ($("doc-search").value.trim()) query.set("name", $("doc-search").value.trim());
  if ($("doc-status").value) query.set("status", $("doc-status").value);
  let page;
  try {
    page = await api(`/v1/documents?${query}`);
  } catch (error) {
    showMessage("docs-message", error.message, "error");
    return;
  }
  $("documents").replaceChildren(...page.documents.map(row));
  if (!page.documents.length) {
    $("documents").append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, "No documents match.")));
  }
  const last = Math.min(page.offset + page.documents.length, page.total);
  $("page-info").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "0 documents";
  $("prev-page").disabled = page.offset === 0;
  $("next-page").disabled = last >= page.total;
  const busy = page.documents.some((d) => d.status === "pending" || d.status === "stale" || RUNNING.has(d.run?.status));
  $("live").textContent = busy ? "Indexing in progress — refreshing every 2 s" : "";
  if (busy) liveTimer = setTimeout(load, LIVE_EVERY_MS);
}

function row(doc) {
  const status = el("span", { class: `status status-${doc.status}` }, doc.status);
  const reason = doc.reason ? el("div", { class: "muted reason" }, doc.reason) : null;
  const run = doc.run
    ? el("a", { href: doc.run.url, target: "_blank", rel: "noopener", class: "run-link" },
        `${doc.run.run_id.slice(0, 8)} · ${doc.run.status.toLowerCase()}`)
    : el("span", { class: "muted" }, "none yet");
  return el("tr", { "data-doc-id": doc.doc_id },
    el("td", {}, el("div", { class: "source" }, doc.source), el("code", { class: "muted" }, doc.doc_id)),
    el("td", {}, status, reason),
    el("td", { class: "num" }, doc.chunks),
    el("td", { class: "num" }, formatBytes(doc.bytes)),
    el("td", {}, formatTime(doc.modified_at)),
    el("td", {}, doc.index_version || el("span", { class: "muted" }, "not served")),
    el("td", {}, run),
    el("td", {},
      el("button", { type: "button", class: "reindex", "aria-label": `Re-index ${doc.source}`,
        onclick: () => reindex(doc) }, "Re-index"), " ",
      el("button", { type: "button", class: "danger delete", "aria-label": `Delete ${doc.source}`,
        onclick: () => remove(doc) }, "Delete")));
}

async function reindex(doc) {
  try {
    await api(`/v1/documents/${encodeURIComponent(doc.doc_id)}/reindex`, { method: "POST" });
    showMessage("docs-message", `${doc.source} is marked stale: the sensor re-indexes it.`, "ok");
  } catch (error) {
    showMessage("docs-message", error.message, "error");
  }
  load();
}

async function remove(doc) {
  if (!confirm(`Delete ${doc.source}? Its vectors are removed by the next sensor run.`)) return;
  try {
    await api(`/v1/documents/${encodeURIComponent(doc.doc_id)}`, { method: "DELETE" });
    showMessage("docs-message", `Deleted ${doc.source}.`, "ok");
  } catch (error) {
    showMessage("docs-message", error.message, "error");
  }
  load();
}

async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  showMessage("docs-message", `Uploading ${files.length} file(s)…`);
  try {
    const result = await api("/v1/documents", { method: "POST", body: form });
    const names = result.documents.map((d) => d.source).join(", ");
    showMessage("docs-message", `Uploaded ${names}: pending until the sensor indexes it.`, "ok");
  } catch (error) {
    showMessage("docs-message", error.message, "error");
  }
  offset = 0;
  load();
}

function wireUpload() {
  const zone = $("dropzone");
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    upload([...event.dataTransfer.files]);
  });
  $("file-input").addEventListener("change", (event) => upload([...event.target.files]));
}

$("doc-filters").addEventListener("submit", (event) => { event.preventDefault(); offset = 0; load(); });
$("prev-page").addEventListener("click", () => { offset = Math.max(0, offset - PAGE_SIZE); load(); });
$("next-page").addEventListener("click", () => { offset += PAGE_SIZE; load(); });
wireUpload();
mountShell(load);
