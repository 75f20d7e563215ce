// The web page's logic: plain DOM and fetch, no build step. Paths are relative, so the
// page also works when the service is mounted under a prefix.
"use strict";

const K = 12; // neighbours shown
const $ = (id) => document.getElementById(id);
let modelVersion = null;
let indexSize = 0;
let hasClassifier = true; // false for a model trained without labels: no classes panel, no /classify
let latest = 0; // only the newest search may draw its answer

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function uploadForm(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  return { method: "POST", body: form };
}

async function loadModel() {
  const model = await api("model");
  modelVersion = model.model_version;
  indexSize = model.index.size;
  hasClassifier = model.has_classifier !== false;
  $("classes").hidden = !hasClassifier;
  if (!hasClassifier) $("predictions").replaceChildren();
  $("model-version").textContent = modelVersion;
  $("index-size").textContent = indexSize.toLocaleString();
  $("random").disabled = indexSize === 0;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function showQuery(src, caption, query) {
  const img = $("query-image");
  img.src = src;
  img.alt = caption;
  img.hidden = false;
  $("query-caption").textContent = caption;
  $("query").dataset.query = query;
}

function showPredictions(predictions) {
  $("predictions").replaceChildren(
    ...predictions.map((p) => {
      const li = document.createElement("li");
      const percent = (100 * p.probability).toFixed(1);
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = p.label;
      const meter = document.createElement("meter");
      meter.min = 0;
      meter.max = 1;
      meter.value = p.probability;
      meter.setAttribute("aria-label", `${p.label}: ${percent}%`);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = `${percent}%`;
      li.append(label, meter, value);
      return li;
    }),
  );
}

function showNeighbors(neighbors) {
  $("neighbors").replaceChildren(
    ...neighbors.map((n) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.id = n.id;
      button.title = `Search from image #${n.id}`;
      const img = document.createElement("img");
      img.src = `images/${n.id}?size=96`;
      img.alt = `Indexed image #${n.id}${n.label ? `, ${n.label}` : ""}`;
      img.width = img.height = 96;
      img.loading = "lazy";
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = n.label ?? "unlabelled";
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = n.score.toFixed(3);
      button.append(img, label, score);
      button.addEventListener("click", () => searchById(n.id));
      li.append(button);
      return li;
    }),
  );
}

// Runs one search: its neighbours, and its classes when the model has a classifier (classify()
// answers null when it has not); draws the answers only if no newer search started meanwhile.
async function search(describe, classify, neighbours) {
  const mine = ++latest;
  status(`Searching ${describe}…`);
  try {
    const [classified, found] = await Promise.all([hasClassifier ? classify() : null, neighbours()]);
    if (mine !== latest) return;
    showNeighbors(found.neighbors);
    if (classified) {
      showPredictions(classified.predictions);
      status(`Top ${classified.predictions.length} classes and ${found.neighbors.length} nearest neighbours of ${describe}.`);
    } else {
      status(`${found.neighbors.length} nearest neighbours of ${describe}.`);
    }
    if (found.model_version !== modelVersion) await loadModel(); // a new model was published meanwhile
  } catch (err) {
    if (mine === latest) status(`Could not search: ${err.message}`, true);
  }
}

function searchById(id) {
  showQuery(`images/${id}?size=96`, `Indexed image #${id}`, String(id));
  return search(
    `image #${id}`,
    // Classify the indexed image's own pixels (lossless PNG), as if uploaded.
    () => fetch(`images/${id}`).then((r) => r.blob()).then((png) => api("classify", uploadForm(png, `${id}.png`))),
    () => api(`neighbors?id=${id}&k=${K}`),
  );
}

function searchByUpload(file) {
  showQuery(URL.createObjectURL(file), `Uploaded ${file.name}`, "upload");
  return search(
    file.name,
    () => api("classify", uploadForm(file, file.name)),
    () => api(`neighbors?k=${K}`, uploadForm(file, file.name)),
  );
}

$("random").addEventListener("click", () => searchById(Math.floor(Math.random() * indexSize)));
$("file").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file) searchByUpload(file);
});
loadModel().catch((err) => status(`No model is served yet: ${err.message}`, true));
