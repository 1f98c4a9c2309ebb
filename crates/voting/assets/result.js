// Live results from /events (Server-Sent Events): bars, percentages, the total, a chart of
// votes per second, and a connection indicator. The server sends the current results on every
// (re)connect, so the page is right again as soon as it reconnects.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const list = $("results");
  const live = $("live");
  const total = $("total");
  const rate = $("rate");
  const peak = $("peak");
  const line = $("chart-line");
  const area = $("chart-area");
  if (!list || !live || !total) return;

  const SAMPLES = 300; // one a second: five minutes
  const W = 600;
  const H = 150;
  const samples = new Array(SAMPLES).fill(0);
  let counts = null; // votes per option at the last sample
  let latest = null; // the latest results received

  const setLive = (state, text) => {
    live.dataset.state = state;
    live.textContent = text;
  };

  const row = (option) => {
    let item = list.querySelector(`li[data-option="${CSS.escape(option.id)}"]`);
    if (item) return item;
    // An option the page was not rendered with: add its row.
    item = document.createElement("li");
    item.dataset.option = option.id;
    const head = document.createElement("div");
    head.className = "row";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = option.label;
    const figures = document.createElement("span");
    figures.className = "figures";
    const votes = document.createElement("span");
    votes.className = "votes";
    const pct = document.createElement("span");
    pct.className = "pct";
    figures.append(votes, " ", pct);
    head.append(label, figures);
    const bar = document.createElement("progress");
    bar.className = "bar";
    bar.setAttribute("aria-label", option.label);
    item.append(head, bar);
    list.append(item);
    return item;
  };

  const render = (results) => {
    const sum = results.total;
    for (const option of results.options) {
      const item = row(option);
      item.querySelector(".votes").textContent = option.votes;
      item.querySelector(".pct").textContent = sum ? `${Math.round((option.votes * 100) / sum)}%` : "0%";
      const bar = item.querySelector(".bar");
      bar.max = Math.max(sum, 1);
      bar.value = option.votes;
    }
    total.textContent = sum;
  };

  // Votes received in the last second: the sum of the increases per option, so a voter who
  // changes their mind counts although the total stays the same.
  const sample = () => {
    let received = 0;
    if (latest) {
      const now = new Map(latest.options.map((o) => [o.id, o.votes]));
      if (counts) for (const [id, votes] of now) received += Math.max(0, votes - (counts.get(id) || 0));
      counts = now;
    }
    samples.shift();
    samples.push(received);
    draw();
  };

  const draw = () => {
    if (!line || !area) return;
    const top = Math.max(...samples);
    const scale = top > 0 ? (H - 8) / top : 0;
    const step = W / (SAMPLES - 1);
    let d = "";
    samples.forEach((v, i) => {
      d += `${i ? "L" : "M"}${(i * step).toFixed(1)} ${(H - 1 - v * scale).toFixed(1)}`;
    });
    line.setAttribute("d", d);
    area.setAttribute("d", `${d}L${W} ${H}L0 ${H}Z`);
    if (rate) rate.textContent = samples[SAMPLES - 1];
    if (peak) peak.textContent = top;
  };

  let source = null;
  let retryDelay = 1000;
  const connect = () => {
    source = new EventSource("/events");
    source.onopen = () => {
      retryDelay = 1000;
      setLive("live", "live");
    };
    source.onmessage = (event) => {
      try {
        latest = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      setLive("live", "live");
      render(latest);
    };
    source.onerror = () => {
      setLive("reconnecting", "reconnecting…");
      // The browser retries by itself unless the server answered with something that is not
      // an event stream (a proxy's error page); then start again, backing off.
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 10000);
      }
    };
  };

  connect();
  setInterval(sample, 1000);
  draw();
})();
