// The gateway browser console: speaks gateway.v1.json over /ws.
// Plain script, no build step, no network but this page's own origin.
"use strict";

(function () {
  const SUBPROTOCOL = "gateway.v1.json";
  const TRY_AGAIN_LATER = 1013;
  const REFUSED_RETRY_S = 5;
  const BACKOFF_S = [1, 2, 4, 8, 15, 30];
  const MAX_BLOCKS = 200;
  const HISTORY_KEY = "gateway.history";
  const TOKEN_KEY = "gateway.token"; // kept for this tab's session only
  const AUTH_ID = "auth";

  const $ = (id) => document.getElementById(id);
  const output = $("output");
  const input = $("command");
  const statusBox = $("status");
  const statusText = $("status-text");
  const reconnectButton = $("reconnect");
  const tokenForm = $("token-form");
  const tokenInput = $("token");
  const tokenError = $("token-error");

  let socket = null;
  let nextId = 1;
  let attempt = 0;
  let retryTimer = null;
  let countdownTimer = null;
  let stopped = false; // the user typed exit: no automatic reconnect
  const running = new Map(); // id -> block
  const resuming = []; // follows cut by a lost connection: sent again after their cursor

  // -- history (kept for this tab's session)
  let history = [];
  try {
    history = JSON.parse(sessionStorage.getItem(HISTORY_KEY) || "[]");
  } catch (e) {
    history = [];
  }
  let cursor = history.length;
  let draft = "";

  function remember(line) {
    if (history[history.length - 1] !== line) history.push(line);
    if (history.length > 100) history = history.slice(-100);
    cursor = history.length;
    try {
      sessionStorage.setItem(HISTORY_KEY, JSON.stringify(history));
    } catch (e) {
      /* storage full or disabled: history stays in memory */
    }
  }

  // -- little DOM helpers (text only: nothing from the server becomes markup)
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function atBottom() {
    return output.scrollHeight - output.scrollTop - output.clientHeight < 40;
  }

  function keepScrolled(wasAtBottom) {
    if (wasAtBottom) output.scrollTop = output.scrollHeight;
  }

  function append(node) {
    const stick = atBottom();
    output.appendChild(node);
    const blocks = output.querySelectorAll(".cmd, .notice");
    for (let i = 0; i < blocks.length - MAX_BLOCKS; i++) blocks[i].remove();
    keepScrolled(stick);
  }

  function notice(text, bad) {
    append(el("p", bad ? "notice bad" : "notice", text));
  }

  // -- connection state
  function setStatus(state, text) {
    statusBox.dataset.state = state;
    statusText.textContent = text;
    reconnectButton.hidden = state === "connected" || state === "connecting";
  }

  function clearTimers() {
    clearTimeout(retryTimer);
    clearInterval(countdownTimer);
    retryTimer = countdownTimer = null;
  }

  function scheduleReconnect(seconds, state, why) {
    clearTimers();
    let left = seconds;
    const show = () => setStatus(state, `${why} — retrying in ${left} s`);
    show();
    countdownTimer = setInterval(() => {
      left -= 1;
      if (left > 0) show();
    }, 1000);
    retryTimer = setTimeout(connect, seconds * 1000);
  }

  function connect() {
    clearTimers();
    stopped = false;
    if (socket && socket.readyState <= WebSocket.OPEN) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    setStatus("connecting", "Connecting…");
    let opened = false;
    const ws = new WebSocket(`${scheme}//${location.host}/ws`, SUBPROTOCOL);
    socket = ws;
    ws.onopen = () => {
      opened = true;
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) ws.send(JSON.stringify({ id: AUTH_ID, auth: token }));
      resume(ws);
    };
    ws.onmessage = (event) => {
      if (!opened) return;
      if (statusBox.dataset.state !== "connected") {
        attempt = 0;
        setStatus("connected", "Connected");
      }
      let reply;
      try {
        reply = JSON.parse(event.data);
      } catch (e) {
        notice(`Unreadable message from the server: ${String(event.data).slice(0, 200)}`, true);
        return;
      }
      handle(reply);
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      for (const block of running.values()) {
        if (block._live) {
          block._parts.badge.textContent = "reconnecting";
          resuming.push(block);
        } else {
          finish(block, "error", "connection lost");
        }
      }
      running.clear();
      if (event.code === TRY_AGAIN_LATER) {
        const reason = event.reason || "Too many connections";
        notice(`Refused by the server: ${reason}`, true);
        scheduleReconnect(REFUSED_RETRY_S, "refused", "Too many connections");
        return;
      }
      if (stopped) {
        setStatus("disconnected", "Session closed");
        return;
      }
      const wait = BACKOFF_S[Math.min(attempt, BACKOFF_S.length - 1)];
      attempt += 1;
      scheduleReconnect(wait, "disconnected", opened ? "Disconnected" : "Cannot connect");
    };
    // A connection that opens and is then refused (quota) sends nothing;
    // call it connected only once the server has answered something or
    // stayed open for a moment.
    setTimeout(() => {
      if (socket === ws && ws.readyState === WebSocket.OPEN && statusBox.dataset.state !== "connected") {
        attempt = 0;
        setStatus("connected", "Connected");
      }
    }, 400);
  }

  // -- commands
  function newBlock(line) {
    const block = el("section", "cmd");
    block.dataset.state = "running";
    const head = el("header");
    head.appendChild(el("span", "line-in", line));
    const badge = el("span", "badge", "running");
    head.appendChild(badge);
    const cancel = el("button", "cancel", "cancel");
    cancel.type = "button";
    cancel.title = "Cancel this command (Ctrl+C)";
    head.appendChild(cancel);
    block.appendChild(head);
    const pre = el("pre");
    block.appendChild(pre);
    const foot = el("div", "foot");
    block.appendChild(foot);
    block._parts = { badge, cancel, pre, foot, progress: null };
    append(block);
    return block;
  }

  function finish(block, state, label) {
    block.dataset.state = state;
    block._parts.badge.textContent = label;
    block._parts.cancel.remove();
    if (block._parts.progress) block._parts.progress.remove();
  }

  function run(line) {
    line = line.trim();
    if (!line) return;
    remember(line);
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      notice(`Not connected — “${line}” was not sent.`, true);
      return;
    }
    const id = nextId++;
    const block = newBlock(line);
    block._line = line;
    block._parts.cancel.addEventListener("click", () => {
      cancel(id);
      input.focus();
    });
    running.set(id, block);
    if (/^exit\b/i.test(line)) stopped = true;
    socket.send(JSON.stringify({ id, line }));
  }

  // A follow cut by a lost connection goes on right after the last line it
  // showed: the same command, with --after its cursor; no line twice.
  function resume(ws) {
    while (resuming.length) {
      const block = resuming.shift();
      const id = nextId++;
      running.set(id, block);
      const [name, ...rest] = block._line.split(" ");
      const again = block._cursor ? [name, "--after", block._cursor, ...rest] : [name, ...rest];
      ws.send(JSON.stringify({ id, line: again.join(" ") }));
      block._parts.badge.textContent = "following";
      const cancelButton = block._parts.cancel;
      const fresh = cancelButton.cloneNode(true);
      cancelButton.replaceWith(fresh);
      block._parts.cancel = fresh;
      fresh.addEventListener("click", () => {
        cancel(id);
        input.focus();
      });
    }
  }

  function cancel(id) {
    if (socket && socket.readyState === WebSocket.OPEN && running.has(id)) {
      socket.send(JSON.stringify({ id, cancel: true }));
    }
  }

  function cancelNewest() {
    const ids = [...running.keys()];
    if (ids.length) cancel(ids[ids.length - 1]);
  }

  function formatBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function showProgress(block, done, total, filesDone, filesTotal) {
    const parts = block._parts;
    if (!parts.progress) {
      const box = el("div", "progress");
      const track = el("div", "track");
      track.setAttribute("role", "progressbar");
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "100");
      const fill = el("div", "fill");
      track.appendChild(fill);
      box.appendChild(track);
      const label = el("span", "label");
      box.appendChild(label);
      block.insertBefore(box, parts.foot);
      parts.progress = box;
      parts.fill = fill;
      parts.track = track;
      parts.label = label;
    }
    const pct = total ? Math.min(100, (100 * done) / total) : 100;
    parts.fill.style.width = `${pct.toFixed(1)}%`;
    parts.track.setAttribute("aria-valuenow", pct.toFixed(0));
    let label = `${formatBytes(done)} of ${formatBytes(total)}`;
    if (filesTotal != null) {
      // a tree counts bytes and files; a manifest check counts its entries
      const files = `${filesDone} of ${filesTotal} files`;
      label = done === filesDone && total === filesTotal ? files : `${files}, ${label}`;
    }
    parts.label.textContent = `${label} (${pct.toFixed(0)}%)`;
  }

  function copyButton(text) {
    const button = el("button", "copy", "Copy");
    button.type = "button";
    button.addEventListener("click", async () => {
      let ok = false;
      try {
        await navigator.clipboard.writeText(text);
        ok = true;
      } catch (e) {
        const area = el("textarea");
        area.value = text;
        document.body.appendChild(area);
        area.select();
        ok = document.execCommand("copy");
        area.remove();
      }
      button.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(() => (button.textContent = "Copy"), 1500);
      input.focus();
    });
    return button;
  }

  // Any command's result, shown the same way: its text form (the lines after
  // any streamed ones), a copy button for the block's whole output, and the
  // one-line summary.  No command is special here.
  function showResult(block, result) {
    const parts = block._parts;
    const text = Array.isArray(result.text) ? result.text : [];
    if (text.length) parts.pre.appendChild(document.createTextNode(text.join("\n") + "\n"));
    if (typeof result.summary === "string" && result.summary) {
      parts.foot.appendChild(el("span", "summary", result.summary));
    }
    const output = parts.pre.textContent;
    if (output) parts.foot.appendChild(copyButton(output.replace(/\n$/, "")));
  }

  // -- the token, when the gateway asks for one
  function askForToken(message) {
    tokenForm.hidden = false;
    tokenError.textContent = message || "";
    tokenInput.focus();
  }

  function handleAuth(reply) {
    if (reply.type === "result") {
      tokenForm.hidden = true;
      tokenError.textContent = "";
      notice("Signed in.");
      input.focus();
    } else {
      sessionStorage.removeItem(TOKEN_KEY);
      askForToken(reply.message);
    }
  }

  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = tokenInput.value.trim();
    tokenInput.value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ id: AUTH_ID, auth: token }));
    }
  });

  function handle(reply) {
    if (reply.id === AUTH_ID) {
      handleAuth(reply);
      return;
    }
    if (reply.type === "error" && reply.code === "unauthorized") {
      askForToken("");
    }
    const block = running.get(reply.id);
    if (!block) {
      if (reply.type === "error") notice(`${reply.message} (${reply.code})`, true);
      return;
    }
    const parts = block._parts;
    const stick = atBottom();
    switch (reply.type) {
      case "line":
        parts.pre.appendChild(document.createTextNode(`${reply.text}\n`));
        if (reply.cursor) block._cursor = reply.cursor;
        break;
      case "following":
        block._live = true;
        parts.badge.textContent = "following";
        parts.cancel.textContent = "stop";
        parts.cancel.title = "Stop following (Ctrl+C)";
        break;
      case "dropped":
        parts.pre.appendChild(
          document.createTextNode(`... ${reply.count} lines dropped (not read in time) ...\n`),
        );
        break;
      case "stale":
        parts.pre.appendChild(
          document.createTextNode("... lines may be missing (older than what this follow may replay) ...\n"),
        );
        break;
      case "notice":
        parts.pre.appendChild(document.createTextNode(`${reply.text}\n`));
        break;
      case "progress":
        showProgress(block, reply.done, reply.total, reply.files_done, reply.files_total);
        break;
      case "result":
        running.delete(reply.id);
        finish(block, "ok", "done");
        showResult(block, reply.result || {});
        break;
      case "error": {
        running.delete(reply.id);
        finish(block, "error", "error");
        const line = el("div", "error");
        line.appendChild(el("code", "", reply.code));
        line.appendChild(document.createTextNode(reply.message));
        block.insertBefore(line, parts.foot);
        break;
      }
      case "cancelled":
        running.delete(reply.id);
        finish(block, "cancelled", "cancelled");
        break;
      default:
        break;
    }
    keepScrolled(stick);
  }

  // -- keyboard and buttons
  $("prompt").addEventListener("submit", (event) => {
    event.preventDefault();
    const line = input.value;
    input.value = "";
    draft = "";
    run(line);
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "ArrowUp") {
      if (cursor === history.length) draft = input.value;
      if (cursor > 0) {
        cursor -= 1;
        input.value = history[cursor];
      }
      event.preventDefault();
    } else if (event.key === "ArrowDown") {
      if (cursor < history.length) {
        cursor += 1;
        input.value = cursor === history.length ? draft : history[cursor];
      }
      event.preventDefault();
    } else if (event.key === "Escape") {
      input.value = "";
      cursor = history.length;
    } else if (
      event.ctrlKey &&
      event.key.toLowerCase() === "c" &&
      input.selectionStart === input.selectionEnd // with a selection, Ctrl+C copies
    ) {
      cancelNewest();
      event.preventDefault();
    } else if (event.ctrlKey && event.key.toLowerCase() === "l") {
      clearOutput();
      event.preventDefault();
    }
  });

  function clearOutput() {
    for (const node of [...output.children]) {
      if (!(node._parts && [...running.values()].includes(node))) node.remove();
    }
    input.focus();
  }

  $("clear").addEventListener("click", clearOutput);
  for (const button of document.querySelectorAll("[data-run]")) {
    button.addEventListener("click", () => {
      run(button.dataset.run);
      input.focus();
    });
  }
  reconnectButton.addEventListener("click", () => {
    attempt = 0;
    connect();
    input.focus();
  });

  connect();
})();
