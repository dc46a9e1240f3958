// Conversations: multi-turn chat with a history per user. The API condenses each follow-up with the earlier
// turns into a standalone query (shown under the question); the sentences an answer cites are highlighted in
// its source cards; every answer takes thumbs, a 1–5 rating and a comment (POST /v1/feedback).
import { $, api, el, mountShell, showMessage } from "./console.js";

let current = null;  // the open conversation's id
const THUMB = "M2 21h4V9H2v12zm20-11c0-1.1-.9-2-2-2h-6.3l1-4.6v-.3c0-.4-.2-.8-.4-1.1L13.2 1 6.6 7.6C6.2 8 6 8.5 6 9v10"
  + "c0 1.1.9 2 2 2h9c.8 0 1.5-.5 1.8-1.2l3-7c.1-.3.2-.5.2-.8v-2z";

const user = () => $("chat-user").value.trim() || "console";
const scoped = (path) => `${path}${path.includes("?") ? "&" : "?"}user=${encodeURIComponent(user())}`;

async function loadList() {
  let listed;
  try {
    listed = await api(scoped("/v1/conversations"));
  } catch (error) {
    showMessage("chat-message", error.message, "error");
    return;
  }
  $("conversation-list").replaceChildren(...listed.conversations.map((conversation) => el("li", {},
    el("button", { type: "button", "aria-current": conversation.conversation_id === current ? "true" : null,
      onclick: () => open(conversation.conversation_id) }, conversation.title || "(empty conversation)"))));
}

async function open(conversationId) {
  try {
    const conversation = await api(scoped(`/v1/conversations/${conversationId}`));
    current = conversationId;
    $("turns").replaceChildren(...conversation.turns.map(renderTurn));
    showMessage("chat-message", "");
  } catch (error) {
    showMessage("chat-message", error.message, "error");
  }
  loadList();
}

async function start() {
  const conversation = await api(scoped("/v1/conversations"), { method: "POST", body: {} });
  current = conversation.conversation_id;
  $("turns").replaceChildren();
  loadList();
  return current;
}

// The source's text with the cited spans marked.
function citedText(text, spans) {
  const nodes = [];
  let last = 0;
  for (const span of [...spans].sort((a, b) => a.start_char - b.start_char)) {
    if (span.start_char < last) continue;
    nodes.push(text.slice(last, span.start_char), el("mark", { class: "cited" }, text.slice(span.start_char, span.end_char)));
    last = span.end_char;
  }
  nodes.push(text.slice(last));
  return nodes;
}

// The answer with each [n] a link to its source card.
function answerText(turn, cards) {
  const nodes = [];
  let last = 0;
  for (const match of turn.answer.matchAll(/\[(\d+)\]/g)) {
    const number = Number(match[1]);
    nodes.push(turn.answer.slice(last, match.index));
    nodes.push(cards[number - 1]
      ? el("a", { href: "#", class: "cite", "data-source": number, "aria-label": `Source ${number}`,
          onclick: (event) => { event.preventDefault(); flash(cards[number - 1]); } }, match[0])
      : match[0]);
    last = match.index + match[0].length;
  }
  nodes.push(turn.answer.slice(last));
  return nodes;
}

function flash(card) {
  card.classList.add("flash");
  card.scrollIntoView({ block: "nearest" });
  setTimeout(() => card.classList.remove("flash"), 1500);
}

function renderTurn(turn) {
  const cards = turn.sources.map((source, i) => {
    const spans = turn.cited.filter((span) => span.number === i + 1);
    return el("div", { class: "card", "data-number": i + 1, "data-doc-id": source.doc_id },
      el("strong", {}, `[${i + 1}] ${source.title || source.source}`),
      el("div", { class: "muted" }, `${source.source} · characters ${source.start_char}–${source.end_char}`),
      el("p", {}, citedText(source.text, spans)));
  });
  const searched = turn.standalone_query !== turn.question
    ? el("div", { class: "muted standalone" }, "Searched as: ", el("q", {}, turn.standalone_query)) : null;
  return el("article", { class: "turn", "data-query-id": turn.query_id },
    el("div", { class: "asked" }, "You: ", turn.question), searched,
    el("div", { class: "answer" }, answerText(turn, cards)),
    turn.degraded ? el("div", { class: "muted" }, `Degraded: ${turn.reason}`) : null,
    el("details", { open: true }, el("summary", {}, `Sources (${cards.length})`), el("div", { class: "cards" }, cards)),
    feedbackForm(turn));
}

// A thumb drawn inline (an emoji needs a font the machine may lack); the button's text says what it means.
function thumb(down) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  if (down) svg.setAttribute("transform", "rotate(180)");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", THUMB);
  svg.append(path);
  return svg;
}

function feedbackForm(turn) {
  let relevant = null;
  const up = el("button", { type: "button", class: "thumb-up", "aria-pressed": "false" }, thumb(false), "Helpful");
  const down = el("button", { type: "button", class: "thumb-down", "aria-pressed": "false" }, thumb(true), "Not helpful");
  const pick = (value) => {
    relevant = value;
    up.setAttribute("aria-pressed", String(value === true));
    down.setAttribute("aria-pressed", String(value === false));
  };
  up.addEventListener("click", () => pick(true));
  down.addEventListener("click", () => pick(false));
  const id = `fb-${turn.query_id}`;
  const rating = el("select", { id: `${id}-rating`, class: "rating" }, el("option", { value: "" }, "no rating"),
    [1, 2, 3, 4, 5].map((n) => el("option", { value: n }, `${n} of 5`)));
  const comment = el("textarea", { id: `${id}-comment`, class: "comment", maxlength: 4000,
    placeholder: "What was right or wrong?" });
  const status = el("span", { class: "feedback-status muted", role: "status" });
  const send = el("button", { type: "submit", class: "send-feedback" }, "Send feedback");
  const form = el("form", { class: "feedback", "aria-label": "Feedback on this answer" },
    up, down, el("label", { for: `${id}-rating` }, "Rating", rating),
    el("label", { for: `${id}-comment`, class: "muted" }, "Comment"), comment, send, status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { query_id: turn.query_id, comment: comment.value };
    if (relevant !== null) body.is_relevant = relevant;
    if (rating.value) body.rating = Number(rating.value);
    try {
      await api("/v1/feedback", { method: "POST", body });
      status.textContent = "Thanks: feedback saved.";
      send.disabled = true;
    } catch (error) {
      status.textContent = error.message;
    }
  });
  return form;
}

async function ask(event) {
  event.preventDefault();
  const question = $("chat-question").value.trim();
  if (!question) return;
  $("chat-ask").disabled = true;
  showMessage("chat-message", "Answering…");
  try {
    const conversationId = current || (await start());
    const turn = await api(scoped(`/v1/conversations/${conversationId}/messages`),
      { method: "POST", body: { question } });
    $("turns").append(renderTurn(turn));
    $("chat-question").value = "";
    showMessage("chat-message", "");
    loadList();
  } catch (error) {
    showMessage("chat-message", error.message, "error");
  } finally {
    $("chat-ask").disabled = false;
  }
}

$("ask-form").addEventListener("submit", ask);
$("new-conversation").addEventListener("click", () => start().catch(
  (error) => showMessage("chat-message", error.message, "error")));
$("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  current = null;
  $("turns").replaceChildren();
  loadList();
});
mountShell(loadList);
