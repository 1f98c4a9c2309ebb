// The ballot without a page reload: intercepts the form's submit, posts JSON to /api/vote and
// reports the outcome in the status line. Without JavaScript the plain form still works.
(() => {
  "use strict";
  const form = document.getElementById("ballot");
  const status = document.getElementById("status");
  const retry = document.getElementById("retry");
  if (!form || !status || !retry || !window.fetch) return;
  const choices = Array.from(form.querySelectorAll("button.choice"));
  let failed = null; // the vote to send again on "Try again"
  let sending = false;

  const show = (message, kind) => {
    status.textContent = message;
    status.className = kind;
  };

  const mark = (id) => {
    for (const button of choices) {
      const chosen = button.value === id;
      button.classList.toggle("chosen", chosen);
      button.setAttribute("aria-pressed", String(chosen));
    }
  };

  const refusal = async (response) => {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") return body.error;
    } catch (_) { /* not JSON: a proxy's page */ }
    return `Your vote was refused (HTTP ${response.status}).`;
  };

  async function send(button) {
    const id = button.value;
    const label = button.textContent.trim();
    failed = null;
    sending = true;
    retry.hidden = true;
    button.classList.add("sending");
    form.setAttribute("aria-busy", "true");
    show(`Sending your vote for ${label}…`, "");
    let response = null;
    try {
      response = await fetch("/api/vote", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify({ vote: id }),
      });
    } catch (_) { /* network error: response stays null */ }
    sending = false;
    button.classList.remove("sending");
    form.removeAttribute("aria-busy");
    if (response && response.ok) {
      await response.text().catch(() => ""); // read to the end: frees the connection
      mark(id);
      show(`Your vote for ${label} is recorded.`, "ok");
    } else if (response && response.status >= 400 && response.status < 500) {
      show(await refusal(response), "error");
    } else {
      failed = button;
      show(response
        ? "Votes cannot be recorded right now, so yours was not counted. Please try again."
        : "The vote service cannot be reached, so your vote was not counted. Please try again.", "error");
      retry.hidden = false;
    }
  }

  form.addEventListener("submit", (event) => {
    const button = event.submitter;
    if (!button || !choices.includes(button)) return; // let the browser post the form
    event.preventDefault();
    if (!sending) send(button);
  });
  retry.addEventListener("click", () => {
    if (failed && !sending) send(failed);
  });
})();
