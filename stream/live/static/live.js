// The live sightings page: one EventSource, each "snapshot" event re-renders the page.
// Record data only ever reaches the page through textContent and attributes, never as HTML.
"use strict";

(function () {
  const root = document.body.dataset.root || "";
  const cards = new Map(); // crop id -> card element, so a crop's <img> loads once

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function identityText(s) {
    if (!s.decision) return "not identified yet";
    if (s.decision === "known") return "individual " + s.individual_id;
    if (s.decision === "new_candidate") return "new individual?";
    return "too little coat texture";
  }

  function card(s) {
    const figure = el("figure", "sighting");
    figure.dataset.cropId = s.crop_id;
    const img = el("img", "crop");
    img.src = s.url;
    img.alt = "snow leopard at " + s.camera_id;
    img.dataset.cropId = s.crop_id;
    figure.appendChild(img);
    const caption = el("figcaption");
    caption.appendChild(el("span", "camera", s.camera_id));
    caption.appendChild(el("span", "time"));
    caption.appendChild(el("span", "score"));
    caption.appendChild(el("span", "individual"));
    figure.appendChild(caption);
    return figure;
  }

  function fill(figure, s) {
    figure.querySelector(".time").textContent = s.capture_time || s.seen_at;
    figure.querySelector(".score").textContent = "score " + Number(s.score).toFixed(2);
    const who = figure.querySelector(".individual");
    who.textContent = identityText(s);
    who.dataset.decision = s.decision || "";
  }

  function renderSightings(sightings) {
    const list = document.getElementById("sightings");
    const keep = new Set(sightings.map((s) => s.crop_id));
    for (const [id, figure] of cards) {
      if (!keep.has(id)) {
        figure.remove();
        cards.delete(id);
      }
    }
    sightings.forEach((s, i) => {
      let figure = cards.get(s.crop_id);
      if (!figure) {
        figure = card(s);
        cards.set(s.crop_id, figure);
      }
      fill(figure, s);
      if (list.children[i] !== figure) list.insertBefore(figure, list.children[i] || null);
    });
    document.getElementById("no-sightings").hidden = sightings.length > 0;
  }

  function renderRows(tableId, rows, columns) {
    const body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren(
      ...rows.map((row) => {
        const tr = el("tr");
        for (const column of columns) tr.appendChild(el("td", column, row[column]));
        return tr;
      })
    );
  }

  function renderStatus(kafka) {
    const status = document.getElementById("status");
    let text;
    if (kafka.error) text = kafka.error;
    else if (!kafka.connected) text = "connecting to Kafka...";
    else if (!kafka.caught_up) text = "catching up: " + kafka.records + " records read";
    else text = "live: " + kafka.records + " records read";
    status.textContent = text;
    status.dataset.state = kafka.error ? "error" : kafka.caught_up ? "live" : "loading";
  }

  function render(state) {
    renderStatus(state.kafka);
    renderSightings(state.sightings);
    document.getElementById("window-hours").textContent = state.window_hours;
    renderRows("cameras", state.cameras, ["camera_id", "images", "leopard_images", "crops"]);
    document.getElementById("deadletter-total").textContent = state.deadletters.total;
    renderRows("deadletters", state.deadletters.by_reason, ["stage", "reason", "count"]);
    renderRows("bad-records", state.bad_records, ["topic", "reason", "count"]);
    document.getElementById("bad-records-section").hidden = state.bad_records.length === 0;
    document.body.dataset.version = state.version;
  }

  const events = new EventSource(root + "/events");
  events.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  events.onerror = () => {
    const status = document.getElementById("status");
    status.textContent = "page server unreachable, retrying...";
    status.dataset.state = "error";
  };
})();
