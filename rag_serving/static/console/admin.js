// Admin: API keys per tenant behind the admin key. A new key's secret is shown once, right after it is
// created, and kept nowhere: the list (like the API) never has it.
import { $, api, el, formatTime, mountShell, showMessage } from "./console.js";

const ADMIN_KEY = "rag-console-admin-key";

function adminApi(path, options = {}) {
  const headers = { "X-Admin-Key": sessionStorage.getItem(ADMIN_KEY) || "" };
  return api(path, { ...options, headers });
}

function hideSecret() {
  $("secret-value").textContent = "";
  $("new-secret").hidden = true;
}

async function load() {
  const tenant = $("filter-tenant").value.trim();
  let listed;
  try {
    listed = await adminApi(`/v1/admin/keys${tenant ? `?tenant=${encodeURIComponent(tenant)}` : ""}`);
  } catch (error) {
    $("keys").replaceChildren();
    showMessage("admin-message", error.message, "error");
    return;
  }
  $("keys").replaceChildren(...listed.keys.map(row));
  if (!listed.keys.length) $("keys").append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No keys.")));
}

function row(key) {
  return el("tr", { "data-key-id": key.key_id },
    el("td", {}, el("code", {}, key.key_id)),
    el("td", {}, key.tenant),
    el("td", {}, key.name),
    el("td", {}, formatTime(key.created_at)),
    el("td", {}, el("span", { class: `status ${key.revoked ? "status-quarantined" : "status-indexed"}` },
      key.revoked ? "revoked" : "active")),
    el("td", {}, key.revoked ? null : el("button", { type: "button", class: "danger revoke",
      "aria-label": `Revoke key ${key.key_id}`, onclick: () => revoke(key) }, "Revoke")));
}

async function revoke(key) {
  hideSecret();
  try {
    await adminApi(`/v1/admin/keys/${key.key_id}`, { method: "DELETE" });
    showMessage("admin-message", `Revoked key ${key.key_id} of ${key.tenant}.`, "ok");
  } catch (error) {
    showMessage("admin-message", error.message, "error");
  }
  load();
}

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  hideSecret();
  try {
    const created = await adminApi("/v1/admin/keys", {
      method: "POST", body: { tenant: $("new-tenant").value.trim(), name: $("new-name").value.trim() },
    });
    $("secret-value").textContent = created.key;
    $("new-secret").hidden = false;
    showMessage("admin-message", `Created key ${created.key_id} for ${created.tenant}.`, "ok");
  } catch (error) {
    showMessage("admin-message", error.message, "error");
  }
  load();
});

$("admin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(ADMIN_KEY, $("admin-key").value.trim());
  hideSecret();
  load();
});
$("key-filter").addEventListener("submit", (event) => { event.preventDefault(); hideSecret(); load(); });
$("admin-key").value = sessionStorage.getItem(ADMIN_KEY) || "";
mountShell(() => {});
if (sessionStorage.getItem(ADMIN_KEY)) load();
