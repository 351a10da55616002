// The status page's live parts: a running run's log, and the pipeline list as runs start and end.
// Log text only ever goes in as textContent: a line is never parsed as HTML. No inline script (the CSP):
// what this needs comes in data- attributes.
"use strict";

// A log line, "TIME STREAM| TEXT", shown as the page shows the lines it was rendered with.
const LINE = /^(\S+) ([a-z]+)\s*\| ?([\s\S]*)$/;

function logLine(data) {
  const line = document.createElement("span");
  const parts = LINE.exec(data);
  line.className = "line live" + (parts ? " stream-" + parts[2] : "");
  if (parts) {
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = parts[1];
    line.append(time, " " + parts[3]);
  } else {
    line.textContent = data;
  }
  return line;
}

function followLog(live) {
  const state = document.getElementById("live-state");
  let log = document.getElementById("log");
  if (!log) {
    // A queued run has no log yet: it starts here.
    log = document.createElement("pre");
    log.className = "log";
    log.id = "log";
    log.dataset.offset = "0";
    const none = document.getElementById("no-log");
    if (none) {
      none.replaceWith(log);
    } else {
      live.after(log);
    }
  }
  // Where the page's log ends: the stream goes on from there (and a reconnect from its last event).
  const url = new URL(live.dataset.logStream, window.location.href);
  url.searchParams.set("from", log.dataset.offset || "0");
  const source = new EventSource(url);
  const say = (text) => {
    if (state) state.textContent = text;
    live.dataset.live = text;
  };
  source.onopen = () => say("live");
  source.onmessage = (event) => {
    log.append(logLine(event.data), "\n");
    log.dataset.offset = event.lastEventId;
  };
  source.addEventListener("end", (event) => {
    source.close();
    let ended = "ended";
    try {
      ended = "ended: " + JSON.parse(event.data).status;
    } catch (_) {}
    say(ended);
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) say("not followed");
    else say("reconnecting");
  };
}

function followPipelines(list) {
  const source = new EventSource(new URL(list.dataset.events, window.location.href));
  // One fetch at a time; an event during it fetches once more after it (a run that ends while its start
  // is being fetched must still show as ended).
  let fetching = false;
  let again = false;
  source.addEventListener("run", async () => {
    if (fetching) {
      again = true;
      return;
    }
    fetching = true;
    try {
      do {
        again = false;
        const answer = await fetch(window.location.href, { credentials: "same-origin" });
        if (!answer.ok) return;
        // The page as the server rendered it (escaped there), parsed inert: its scripts never run.
        const page = new DOMParser().parseFromString(await answer.text(), "text/html");
        const fresh = page.getElementById(list.id);
        if (fresh) {
          fresh.dataset.events = list.dataset.events;
          list.replaceWith(document.importNode(fresh, true));
          list = document.getElementById(fresh.id);
        }
      } while (again);
    } finally {
      fetching = false;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && live.dataset.logStream && ["queued", "running"].includes(live.dataset.status)) followLog(live);
  const list = document.querySelector("[data-events]");
  if (list) followPipelines(list);
});
