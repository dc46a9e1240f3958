// The console's shell: the navigation (defined here, once), the API key prompt and the JSON API helper.
// Every page is a module that imports from this file; nothing is fetched from anywhere but the API itself.

// The pages of the console, in menu order. A new page appends itself here: {title, href}.
export const NAV = [
  { title: "Knowledge base", href: "/console/" },
  { title: "Logs & feedback", href: "/console/logs.html" },
  { title: "Admin", href: "/console/admin.html" },
  { title: "Chunk viewer", href: "/console/chunks.html" },
  { title: "Retrieval playground", href: "/console/playground.html" },
  { title: "Conversations", href: "/console/conversations.html" },
];

const API_KEY = "rag-console-api-key";

export const $ = (id) => document.getElementById(id);

// An element with attributes and children (strings become text nodes: never parsed as HTML).
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

export function apiKey() {
  return sessionStorage.getItem(API_KEY) || "";
}

// A call to the JSON API with the caller's key; the error names what the API said.
export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const sent = { ...headers };
  if (apiKey()) sent["X-API-Key"] = apiKey();
  if (body !== undefined && !(body instanceof FormData)) {
    sent["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers: sent, body });
  const text = await response.text();
  const payload = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, (payload && payload.detail) || response.statusText);
  return payload;
}

export function showMessage(id, text, kind = "") {
  const node = $(id);
  node.textContent = text;
  node.className = `message ${kind}`;
}

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

export function formatTime(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

// The page frame: header with the navigation and the API key form; `onKey` runs with a key in place.
export function mountShell(onKey) {
  const here = location.pathname.replace(/index\.html$/, "");
  const nav = el("nav", { "aria-label": "Console" },
    el("ul", {}, NAV.map((page) => el("li", {},
      el("a", { href: page.href, "aria-current": page.href === here ? "page" : null }, page.title)))));
  const keyInput = el("input", {
    id: "api-key", type: "password", autocomplete: "off", placeholder: "API key", "aria-label": "API key",
  });
  keyInput.value = apiKey();
  const keyForm = el("form", { id: "key-form" },
    el("label", { for: "api-key" }, "API key"), keyInput,
    el("button", { type: "submit", id: "use-key" }, "Use key"));
  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(API_KEY, keyInput.value.trim());
    onKey();
  });
  document.body.prepend(el("header", {}, el("a", { class: "brand", href: "/" }, "RAG console"), nav, keyForm));
  if (apiKey()) onKey();
}
