// A small, safe Markdown renderer for answers: the text is HTML-escaped first, then code fences,
// headings, lists, quotes, paragraphs, inline code, bold, italics and http(s) links become elements.
// It runs on every delta, so an unclosed fence (mid-stream) renders as the code seen so far.
"use strict";
(function () {
  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ESCAPES[c]);

  function inline(text) {
    return escapeHtml(text)
      .split(/(`[^`\n]+`)/)
      .map((part) => {
        if (/^`[^`\n]+`$/.test(part)) return `<code>${part.slice(1, -1)}</code>`;
        return part
          .replace(/\*\*([^*\n]+)\*\*/g, "<strong>$1</strong>")
          .replace(/(^|[^*\w])\*([^*\n]+)\*(?!\w)/g, "$1<em>$2</em>")
          .replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g, '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>');
      })
      .join("");
  }

  function codeBlock(language, lines) {
    const label = language ? escapeHtml(language) : "code";
    return (
      `<div class="code"><div class="code-head"><span>${label}</span><button type="button" data-copy>Copy</button></div>` +
      `<pre><code>${escapeHtml(lines.join("\n"))}</code></pre></div>`
    );
  }

  function render(source) {
    const lines = source.replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = line.match(/^\s*```\s*([\w#+.-]*)\s*$/);
      if (fence) {
        const body = [];
        i += 1;
        while (i < lines.length && !/^\s*```\s*$/.test(lines[i])) body.push(lines[i++]);
        i += 1; // the closing fence (or the end of an unfinished one)
        out.push(codeBlock(fence[1], body));
        continue;
      }
      const heading = line.match(/^(#{1,6})\s+(.*)$/);
      if (heading) {
        const level = Math.min(5, heading[1].length + 2);
        out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
        i += 1;
        continue;
      }
      const list = line.match(/^\s*([-*+]|\d+[.)])\s+/);
      if (list) {
        const ordered = /\d/.test(list[1]);
        const pattern = ordered ? /^\s*\d+[.)]\s+(.*)$/ : /^\s*[-*+]\s+(.*)$/;
        const items = [];
        while (i < lines.length && pattern.test(lines[i])) items.push(`<li>${inline(lines[i++].match(pattern)[1])}</li>`);
        const tag = ordered ? "ol" : "ul";
        out.push(`<${tag}>${items.join("")}</${tag}>`);
        continue;
      }
      if (/^>\s?/.test(line)) {
        const quoted = [];
        while (i < lines.length && /^>\s?/.test(lines[i])) quoted.push(inline(lines[i++].replace(/^>\s?/, "")));
        out.push(`<blockquote>${quoted.join("<br>")}</blockquote>`);
        continue;
      }
      if (!line.trim()) {
        i += 1;
        continue;
      }
      const paragraph = [];
      while (
        i < lines.length &&
        lines[i].trim() &&
        !/^\s*```/.test(lines[i]) &&
        !/^(#{1,6})\s+/.test(lines[i]) &&
        !/^\s*([-*+]|\d+[.)])\s+/.test(lines[i]) &&
        !/^>\s?/.test(lines[i])
      ) {
        paragraph.push(inline(lines[i++]));
      }
      out.push(`<p>${paragraph.join("<br>")}</p>`);
    }
    return out.join("");
  }

  window.AutoBotMarkdown = { render, escapeHtml };
})();
