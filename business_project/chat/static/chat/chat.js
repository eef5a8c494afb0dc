// The chat page. It speaks the websocket protocol of docs/chat-protocol.md (/ws/chat/, subprotocol
// autobot.chat.v1, session cookie) and reads conversations over REST. The server is the only writer:
// this page shows what the events say and never saves a transcript itself.
"use strict";
(function () {
  const app = document.getElementById("app");
  const PROTOCOL = app.dataset.protocol;
  const CAN_WRITE = app.dataset.canWrite === "true";
  const $ = (id) => document.getElementById(id);
  const els = {
    sidebar: $("sidebar"),
    list: $("conversations"),
    title: $("chat-title"),
    thread: $("thread"),
    messages: $("messages"),
    empty: $("empty"),
    input: $("input"),
    send: $("send"),
    stop: $("stop"),
    composer: $("composer"),
    banner: $("banner"),
    bannerText: $("banner-text"),
    picker: $("model-picker"),
    connection: $("connection"),
    exportMd: $("export-md"),
    exportJson: $("export-json"),
  };
  const LOGO = document.querySelector(".brand-link img").getAttribute("src");

  const state = {
    conversations: [],
    current: null, // the open conversation {id, title, provider, model} or null for a new chat
    messages: new Map(), // every message this page knows, by id (also of conversations not shown)
    pending: new Map(), // client_ref -> {el, content}: sent, waiting for message_start
    receiving: new Set(), // message ids this socket receives events for
    choice: { provider: "", model: "" }, // the picker's value for a new chat
    socket: null,
    retry: 0,
  };

  // ------------------------------------------------------------------------------------------------
  // REST

  const csrf = () => (document.cookie.match(/(?:^|; )autobot_csrftoken=([^;]+)/) || [])[1] || "";

  async function api(path, options = {}) {
    const response = await fetch(path, {
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() },
      ...options,
    });
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      if (response.status === 401 || body.code === "not_authenticated") location.href = "/accounts/login/?next=/chat/";
      throw new Error(body.message || "Not allowed.");
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.message || `The server answered ${response.status}.`);
    }
    return response.status === 204 ? null : response.json();
  }

  // ------------------------------------------------------------------------------------------------
  // The socket

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/chat/`, [PROTOCOL]);
    state.socket = socket;
    setConnection("connecting");
    socket.addEventListener("open", () => {
      state.retry = 0;
      state.receiving.clear();
      setConnection("online");
      resumeStreaming();
    });
    socket.addEventListener("message", (event) => handleEvent(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      if (state.socket !== socket) return;
      state.receiving.clear();
      setConnection("offline");
      if (event.code === 4401) {
        location.href = "/accounts/login/?next=/chat/";
        return;
      }
      const delay = Math.min(10000, 500 * 2 ** state.retry++);
      setTimeout(connect, delay);
    });
  }

  function setConnection(value) {
    els.connection.dataset.state = value;
    els.connection.title = { online: "Connected", offline: "Reconnecting…", connecting: "Connecting…" }[value];
  }

  function sendFrame(frame) {
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
      showBanner("Not connected to the server; reconnecting…");
      return false;
    }
    state.socket.send(JSON.stringify(frame));
    return true;
  }

  // After a reconnect, every answer still streaming continues from the last event this page has.
  function resumeStreaming() {
    for (const message of state.messages.values()) {
      if (message.status === "streaming" && !state.receiving.has(message.id)) {
        state.receiving.add(message.id);
        sendFrame({ type: "resume", message_id: message.id, after_seq: message.seq });
      }
    }
  }

  // ------------------------------------------------------------------------------------------------
  // Events

  function handleEvent(event) {
    if (event.type === "message_start") onStart(event);
    else if (event.type === "delta") onDelta(event);
    else if (event.type === "message_end") onEnd(event);
    else if (event.type === "error") onError(event);
  }

  function onStart(event) {
    state.receiving.add(event.message_id);
    const pending = event.client_ref && state.pending.get(event.client_ref);
    if (pending) {
      state.pending.delete(event.client_ref);
      pending.el.dataset.id = event.parent_id;
      if (!state.current) {
        state.current = { id: event.conversation_id, title: titleFrom(pending.content), provider: "", model: "" };
        showConversationHeader();
        history.replaceState(null, "", `#${event.conversation_id}`);
      }
      loadConversations();
    }
    if (state.messages.has(event.message_id)) return; // a replayed start of a message shown already
    const message = {
      id: event.message_id,
      conversation: event.conversation_id,
      role: "assistant",
      content: "",
      status: "streaming",
      seq: 1,
      error: null,
      stopReason: "",
    };
    state.messages.set(message.id, message);
    if (!isOpen(message.conversation)) return;
    if (event.regenerates_id) {
      const old = state.messages.get(event.regenerates_id);
      if (old && old.el) old.el.remove();
    }
    addMessageElement(message);
    updateComposer();
  }

  function onDelta(event) {
    const message = state.messages.get(event.message_id);
    if (!message || event.seq <= message.seq) return;
    message.seq = event.seq;
    message.content += event.text;
    scheduleRender(message);
  }

  function onEnd(event) {
    state.receiving.delete(event.message_id);
    const message = state.messages.get(event.message_id);
    if (!message) return;
    message.seq = event.seq;
    message.status = event.status;
    message.stopReason = event.stop_reason;
    message.model = event.model;
    renderMessage(message);
    updateComposer();
    loadConversations();
  }

  function onError(event) {
    const message = event.message_id && state.messages.get(event.message_id);
    if (message) {
      message.error = event.message;
      renderMessage(message);
      return;
    }
    const pending = event.client_ref && state.pending.get(event.client_ref);
    if (pending) {
      // Nothing was stored: take the bubble back and give the text back to the composer.
      state.pending.delete(event.client_ref);
      pending.el.remove();
      if (!els.input.value) els.input.value = pending.content;
      autosize();
      updateEmpty();
    }
    let text = event.message;
    if (event.reset_at) text += ` (resets at ${new Date(event.reset_at).toLocaleTimeString()})`;
    showBanner(text);
    updateComposer();
  }

  // ------------------------------------------------------------------------------------------------
  // Rendering

  const isOpen = (conversationId) => state.current && state.current.id === conversationId;
  const titleFrom = (text) => {
    const line = text.split(/\s+/).join(" ").trim();
    return line.length > 80 ? `${line.slice(0, 79)}…` : line;
  };

  function addMessageElement(message) {
    const el = document.createElement("article");
    el.className = `message ${message.role}`;
    el.dataset.id = message.id;
    if (message.role === "assistant") {
      el.innerHTML =
        `<img class="avatar-bot" src="${LOGO}" alt="">` +
        `<div class="bubble"><div class="content"></div><div class="meta"></div></div>`;
    } else {
      el.innerHTML = `<div class="bubble"></div>`;
    }
    message.el = el;
    els.messages.append(el);
    renderMessage(message);
    updateEmpty();
    scrollToEnd(true);
    return el;
  }

  const scheduled = new Set();
  function scheduleRender(message) {
    if (!message.el || scheduled.has(message)) return;
    scheduled.add(message);
    requestAnimationFrame(() => {
      scheduled.delete(message);
      renderMessage(message);
    });
  }

  function renderMessage(message) {
    const el = message.el;
    if (!el || !el.isConnected) return;
    const stick = nearEnd();
    if (message.role !== "assistant") {
      el.querySelector(".bubble").textContent = message.content;
      return;
    }
    el.dataset.status = message.status;
    el.classList.toggle("streaming", message.status === "streaming" && !!message.content);
    const content = el.querySelector(".content");
    content.innerHTML =
      message.content || message.status !== "streaming"
        ? window.AutoBotMarkdown.render(message.content)
        : '<span class="typing" aria-label="Thinking"><span></span><span></span><span></span></span>';
    const meta = el.querySelector(".meta");
    meta.replaceChildren();
    if (message.status === "stopped") meta.append(note("Stopped"));
    if (message.status === "error") meta.append(note("Failed", "error"));
    if (message.error) {
      let box = el.querySelector(".error-box");
      if (!box) {
        box = document.createElement("div");
        box.className = "error-box";
        box.setAttribute("role", "alert");
        content.after(box);
      }
      box.textContent = message.error;
    }
    if (message.status !== "streaming") {
      meta.append(iconButton("Copy", COPY_ICON, () => navigator.clipboard.writeText(message.content)));
      if (CAN_WRITE && isLastAnswer(message)) {
        meta.append(iconButton("Regenerate", REGENERATE_ICON, () => regenerate(message), "regenerate"));
      }
      if (message.model) {
        const model = document.createElement("span");
        model.textContent = message.model;
        meta.append(model);
      }
    }
    if (stick) scrollToEnd();
  }

  function note(text, kind = "") {
    const span = document.createElement("span");
    span.className = `note ${kind}`;
    span.textContent = text;
    return span;
  }

  const COPY_ICON =
    '<svg width="15" height="15" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2"><rect x="9" y="9" width="12" height="12" rx="2"/><path d="M5 15V5a2 2 0 0 1 2-2h10"/></svg>';
  const REGENERATE_ICON =
    '<svg width="15" height="15" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2"><path d="M21 12a9 9 0 1 1-3-6.7L21 8M21 3v5h-5"/></svg>';
  const TRASH_ICON =
    '<svg width="15" height="15" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2"><path d="M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3"/></svg>';
  const EDIT_ICON =
    '<svg width="15" height="15" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2"><path d="M4 20h4L19 9l-4-4L4 16v4z"/></svg>';

  function iconButton(label, icon, onClick, name = "") {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "icon-button";
    button.title = label;
    button.setAttribute("aria-label", label);
    if (name) button.dataset.action = name;
    button.innerHTML = icon;
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      onClick();
    });
    return button;
  }

  function shownMessages() {
    return [...state.messages.values()].filter((m) => m.el && m.el.isConnected);
  }

  function isLastAnswer(message) {
    const shown = shownMessages();
    return shown.length > 0 && shown[shown.length - 1] === message;
  }

  function streamingMessage() {
    return shownMessages().find((m) => m.role === "assistant" && m.status === "streaming");
  }

  function updateComposer() {
    const streaming = streamingMessage();
    els.stop.hidden = !streaming;
    els.send.hidden = !!streaming;
    els.send.disabled = !CAN_WRITE;
    for (const message of shownMessages()) if (message.role === "assistant") renderMessageMeta(message);
  }

  function renderMessageMeta(message) {
    // The regenerate button belongs to the last answer only.
    const has = message.el.querySelector('[data-action="regenerate"]');
    if (!!has !== (CAN_WRITE && message.status !== "streaming" && isLastAnswer(message))) renderMessage(message);
  }

  function updateEmpty() {
    els.empty.hidden = els.messages.querySelector(".message") !== null;
  }

  function nearEnd() {
    const t = els.thread;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 120;
  }

  function scrollToEnd(force = false) {
    if (force || nearEnd()) els.thread.scrollTop = els.thread.scrollHeight;
  }

  function showBanner(text) {
    els.bannerText.textContent = text;
    els.banner.hidden = false;
  }

  // ------------------------------------------------------------------------------------------------
  // Actions

  function submit() {
    const content = els.input.value;
    if (!content.trim() || streamingMessage() || !CAN_WRITE) return;
    const ref = `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;
    const frame = { type: "send", content, client_ref: ref };
    if (state.current) {
      frame.conversation_id = state.current.id;
    } else if (state.choice.provider) {
      frame.provider = state.choice.provider;
      frame.model = state.choice.model;
    }
    if (!sendFrame(frame)) return;
    els.banner.hidden = true;
    const el = document.createElement("article");
    el.className = "message user";
    el.innerHTML = '<div class="bubble"></div>';
    el.querySelector(".bubble").textContent = content;
    els.messages.append(el);
    state.pending.set(ref, { el, content });
    els.input.value = "";
    autosize();
    updateEmpty();
    scrollToEnd(true);
  }

  function stop() {
    const message = streamingMessage();
    if (message) sendFrame({ type: "stop", message_id: message.id });
  }

  function regenerate(message) {
    if (streamingMessage()) return;
    els.banner.hidden = true;
    message.error = null;
    sendFrame({ type: "regenerate", message_id: message.id });
  }

  // ------------------------------------------------------------------------------------------------
  // Conversations

  async function loadConversations() {
    try {
      const page = await api("/api/conversations/?page_size=200");
      state.conversations = page.results;
    } catch (error) {
      showBanner(error.message);
      return;
    }
    renderConversations();
  }

  function renderConversations() {
    els.list.replaceChildren();
    const groups = new Map();
    const today = new Date().toDateString();
    const yesterday = new Date(Date.now() - 864e5).toDateString();
    for (const conversation of state.conversations) {
      const day = new Date(conversation.updated_at).toDateString();
      const label = day === today ? "Today" : day === yesterday ? "Yesterday" : "Earlier";
      if (!groups.has(label)) groups.set(label, []);
      groups.get(label).push(conversation);
    }
    for (const [label, conversations] of groups) {
      const heading = document.createElement("div");
      heading.className = "group";
      heading.textContent = label;
      els.list.append(heading);
      for (const conversation of conversations) els.list.append(conversationItem(conversation));
    }
  }

  function conversationItem(conversation) {
    const item = document.createElement("div");
    item.className = "conversation";
    item.dataset.id = conversation.id;
    item.classList.toggle("active", isOpen(conversation.id));
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = conversation.title || "Untitled";
    item.append(title);
    const live = [...state.messages.values()].some((m) => m.conversation === conversation.id && m.status === "streaming");
    if (live) {
      const dot = document.createElement("span");
      dot.className = "live";
      dot.title = "Answering…";
      item.append(dot);
    }
    const actions = document.createElement("span");
    actions.className = "actions";
    if (CAN_WRITE) {
      actions.append(iconButton("Rename", EDIT_ICON, () => rename(conversation)));
      actions.append(iconButton("Delete", TRASH_ICON, () => remove(conversation)));
    }
    item.append(actions);
    item.addEventListener("click", () => openConversation(conversation.id));
    return item;
  }

  async function rename(conversation) {
    const title = prompt("Rename the conversation", conversation.title);
    if (title === null) return;
    try {
      await api(`/api/conversations/${conversation.id}/`, { method: "PATCH", body: JSON.stringify({ title }) });
    } catch (error) {
      showBanner(error.message);
    }
    if (isOpen(conversation.id)) {
      state.current.title = title;
      showConversationHeader();
    }
    loadConversations();
  }

  async function remove(conversation) {
    if (!confirm(`Delete “${conversation.title || "Untitled"}”? This cannot be undone.`)) return;
    try {
      await api(`/api/conversations/${conversation.id}/`, { method: "DELETE" });
    } catch (error) {
      showBanner(error.message);
      return;
    }
    if (isOpen(conversation.id)) newChat();
    loadConversations();
  }

  function clearThread() {
    for (const el of els.messages.querySelectorAll(".message")) el.remove();
    for (const message of state.messages.values()) message.el = null;
    state.pending.clear();
    updateEmpty();
  }

  function newChat() {
    state.current = null;
    clearThread();
    history.replaceState(null, "", location.pathname);
    showConversationHeader();
    renderConversations();
    updateComposer();
    els.input.focus();
    els.sidebar.classList.remove("open");
  }

  async function openConversation(id) {
    const conversation = state.conversations.find((c) => c.id === id) || (await api(`/api/conversations/${id}/`));
    state.current = { ...conversation };
    clearThread();
    showConversationHeader();
    renderConversations();
    history.replaceState(null, "", `#${id}`);
    els.sidebar.classList.remove("open");
    let page;
    try {
      page = await api(`/api/conversations/${id}/messages/?page_size=500`);
    } catch (error) {
      showBanner(error.message);
      return;
    }
    if (!isOpen(id)) return;
    for (const row of page.results) {
      // A message this page has followed live is newer than its last checkpoint in the database.
      const known = state.messages.get(row.id);
      const message =
        known && known.seq >= row.last_seq
          ? known
          : {
              id: row.id,
              conversation: id,
              role: row.role,
              content: row.content,
              status: row.status,
              seq: row.last_seq,
              stopReason: row.stop_reason,
              model: row.model,
              error: row.status === "error" ? errorText(row.error_code) : null,
            };
      state.messages.set(message.id, message);
      addMessageElement(message);
    }
    resumeStreaming();
    updateComposer();
    scrollToEnd(true);
  }

  function errorText(code) {
    return code ? `The answer failed (${code}).` : "The answer failed.";
  }

  function showConversationHeader() {
    const current = state.current;
    els.title.textContent = current ? current.title || "Untitled" : "New chat";
    document.title = `${current ? current.title || "Untitled" : "New chat"} · AutoBot`;
    for (const [link, extension] of [
      [els.exportMd, "md"],
      [els.exportJson, "json"],
    ]) {
      link.hidden = !current;
      if (current) link.href = `/api/conversations/${current.id}/export.${extension}`;
    }
    const value = current ? pickerValue(current.provider, current.model) : pickerValue(state.choice.provider, state.choice.model);
    els.picker.value = [...els.picker.options].some((o) => o.value === value) ? value : "";
  }

  // ------------------------------------------------------------------------------------------------
  // Provider and model picker

  const pickerValue = (provider, model) => (provider ? `${provider}|${model || ""}` : "");

  async function loadProviders() {
    let providers;
    try {
      providers = await api("/api/llm/providers/");
    } catch {
      return; // the picker keeps "Automatic"
    }
    for (const provider of providers) {
      const group = document.createElement("optgroup");
      group.label = `${provider.name}${provider.status && provider.status !== "healthy" ? ` (${provider.status})` : ""}`;
      const models = provider.models.length ? provider.models : [{ name: "", display_name: "default model" }];
      for (const model of models) {
        const option = document.createElement("option");
        option.value = pickerValue(provider.id, model.name);
        option.textContent = model.display_name || model.name;
        group.append(option);
      }
      els.picker.append(group);
    }
    showConversationHeader();
  }

  els.picker.addEventListener("change", async () => {
    const [provider, model] = els.picker.value ? els.picker.value.split("|") : ["", ""];
    if (!state.current) {
      state.choice = { provider, model };
      return;
    }
    try {
      const updated = await api(`/api/conversations/${state.current.id}/`, {
        method: "PATCH",
        body: JSON.stringify({ provider, model }),
      });
      Object.assign(state.current, updated);
    } catch (error) {
      showBanner(error.message);
    }
  });

  // ------------------------------------------------------------------------------------------------
  // Wiring

  function autosize() {
    els.input.style.height = "auto";
    els.input.style.height = `${Math.min(els.input.scrollHeight, 220)}px`;
  }

  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  els.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  els.input.addEventListener("input", autosize);
  els.stop.addEventListener("click", stop);
  $("new-chat").addEventListener("click", newChat);
  $("banner-close").addEventListener("click", () => (els.banner.hidden = true));
  $("sidebar-open").addEventListener("click", () => els.sidebar.classList.add("open"));
  $("sidebar-close").addEventListener("click", () => els.sidebar.classList.remove("open"));
  els.messages.addEventListener("click", (event) => {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    navigator.clipboard.writeText(button.closest(".code").querySelector("code").textContent);
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1200);
  });

  connect();
  loadProviders();
  loadConversations().then(() => {
    const id = location.hash.slice(1);
    if (id && state.conversations.some((c) => c.id === id)) openConversation(id);
  });
  els.input.focus();
})();
