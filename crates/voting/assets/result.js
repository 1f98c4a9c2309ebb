// Live results from /events; EventSource reconnects by itself.
(() => {
  const live = document.getElementById("live");
  const total = document.getElementById("total");
  const source = new EventSource("/events");
  source.onopen = () => { live.textContent = "live"; };
  source.onerror = () => { live.textContent = "reconnecting…"; };
  source.onmessage = (event) => {
    const results = JSON.parse(event.data);
    for (const option of results.options) {
      const row = document.querySelector(`[data-option="${CSS.escape(option.id)}"] .votes`);
      if (row) row.textContent = option.votes;
    }
    total.textContent = results.total;
  };
})();
