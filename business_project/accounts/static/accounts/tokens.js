// The API tokens page: list, create (the secret is shown once), revoke — through /api/auth/tokens/.
"use strict";
(function () {
  const csrf = () => (document.cookie.match(/(?:^|; )autobot_csrftoken=([^;]+)/) || [])[1] || "";
  const api = (path, options = {}) =>
    fetch(path, {
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() },
      ...options,
    });
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");

  async function load() {
    const response = await api("/api/auth/tokens/");
    const tokens = await response.json();
    const body = document.querySelector("#token-table tbody");
    body.replaceChildren();
    for (const token of tokens) {
      const row = document.createElement("tr");
      const live = !token.revoked_at && !(token.expires_at && new Date(token.expires_at) < new Date());
      const cells = [token.name, token.scopes.join(", "), when(token.expires_at), when(token.last_used_at)];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      const state = document.createElement("td");
      state.innerHTML = `<span class="badge ${live ? "badge-live" : ""}">${live ? "active" : token.revoked_at ? "revoked" : "expired"}</span>`;
      row.append(state);
      const actions = document.createElement("td");
      if (!token.revoked_at) {
        const revoke = document.createElement("button");
        revoke.className = "button button-danger";
        revoke.textContent = "Revoke";
        revoke.onclick = async () => {
          if (!confirm(`Revoke “${token.name}”? Clients using it are refused at once.`)) return;
          await api(`/api/auth/tokens/${token.id}/`, { method: "DELETE" });
          load();
        };
        actions.append(revoke);
      }
      row.append(actions);
      body.append(row);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("token-form");
    const error = document.getElementById("token-error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const data = new FormData(form);
      const days = data.get("expires_in_days");
      const response = await api("/api/auth/tokens/", {
        method: "POST",
        body: JSON.stringify({
          name: data.get("name"),
          scopes: data.getAll("scopes"),
          expires_in_days: days ? Number(days) : null,
        }),
      });
      const body = await response.json();
      if (!response.ok) {
        const fields = Object.entries(body.fields || {}).map(([k, v]) => `${k}: ${v.join(" ")}`);
        error.textContent = [body.message, ...fields].join(" ");
        error.hidden = false;
        return;
      }
      document.getElementById("token-value").textContent = body.token;
      document.getElementById("token-created").hidden = false;
      form.reset();
      load();
    });
    document.getElementById("token-copy").addEventListener("click", () => {
      navigator.clipboard.writeText(document.getElementById("token-value").textContent);
    });
    load();
  });
})();
